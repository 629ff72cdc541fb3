// `--embedded-core`: a core agent on this machine, in its own process, data directory and port, so the
// whole product works with no server. The edge hands it a one-time pairing token through the
// environment and learns its address from the first line it prints.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { join, resolve } from 'node:path';
import { z } from 'zod';

const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
export const PAIRING_TOKEN_ENV = 'SNOWBIRD_PAIRING_TOKEN';

const listeningSchema = z.object({ event: z.literal('listening'), address: z.string(), fingerprint: z.string() });

export interface EmbeddedCore {
  url: string;
  fingerprint: string;
  token: string;
  dataDir: string;
  stop(): Promise<void>;
}

export class EmbeddedCoreError extends Error {
  constructor(message: string) {
    super(`the embedded core agent did not start: ${message}`);
    this.name = 'EmbeddedCoreError';
  }
}

/** The embedded core's own data directory, inside the edge's. */
export function embeddedCoreDataDir(edgeDataDir: string): string {
  return join(edgeDataDir, 'embedded-core');
}

export async function startEmbeddedCore(edgeDataDir: string, log: (line: string) => void): Promise<EmbeddedCore> {
  const dataDir = embeddedCoreDataDir(edgeDataDir);
  const token = randomBytes(18).toString('base64url');
  const child = spawn(
    join(REPO_ROOT, 'node_modules', '.bin', 'node'),
    [join(REPO_ROOT, 'src', 'main', 'cli.ts'), '--data', dataDir, 'agent', '--role', 'core', '--listen', '127.0.0.1:0', '--name', 'embedded-core'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, [PAIRING_TOKEN_ENV]: token } },
  );
  // The embedded core dies with this agent: it would otherwise hold its port and VMs' QMP sockets.
  process.once('exit', () => child.kill('SIGTERM'));
  child.stderr.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line.length > 0) log(`[core] ${line}`);
  });
  const listening = await new Promise<z.infer<typeof listeningSchema>>((done, fail) => {
    const timer = setTimeout(() => fail(new EmbeddedCoreError('no "listening" line within 30 s')), 30_000);
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      try {
        const parsed = listeningSchema.safeParse(JSON.parse(line));
        if (parsed.success) {
          clearTimeout(timer);
          done(parsed.data);
        }
      } catch {
        // not a JSON line
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new EmbeddedCoreError(`it exited with code ${code}`));
    });
  });
  return {
    url: `https://${listening.address}`,
    fingerprint: listening.fingerprint,
    token,
    dataDir,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
