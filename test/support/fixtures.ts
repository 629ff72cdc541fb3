// Fixtures for integration tests: the demo guest (built once, cached), a throwaway data directory,
// and a booted VM with its control channel. Everything a fixture starts is torn down by `dispose`,
// which tests call from `after` hooks so it runs pass or fail.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawn } from 'node:child_process';
import { buildGuest, type GuestArtifacts } from '../../guest/build.ts';
import { VmLibrary, type CreateVmOptions } from '../../src/main/vm-library.ts';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';
import type { GuestReport } from '../../src/shared/guest-protocol.ts';

export const REPO_ROOT = resolve(import.meta.dirname, '..', '..');

/** The demo guest built from the current sources (a cache hit costs about a second). */
export function demoGuest(): Promise<GuestArtifacts> {
  return buildGuest({ cacheDir: join(REPO_ROOT, '.cache') });
}

/** A data directory under /tmp (short, so unix socket paths stay under the kernel's limit). */
export class TestSite {
  readonly library: VmLibrary;
  private constructor(dir: string) {
    this.library = new VmLibrary(dir);
  }

  static async create(): Promise<TestSite> {
    return new TestSite(await mkdtemp(join(tmpdir(), 'sb-')));
  }

  get dataDir(): string {
    return this.library.dataDir;
  }

  async createDemoVm(name: string, overrides: Partial<CreateVmOptions> = {}): Promise<void> {
    const guest = await demoGuest();
    await this.library.create({
      name,
      memoryMiB: 192,
      vcpus: 1,
      diskSize: '64M',
      accel: 'tcg',
      kernel: guest.kernel,
      initrd: guest.initrd,
      memWorkloadMiB: 32,
      diskWorkloadBlocks: 1024,
      ...overrides,
    });
  }

  /** Kills every QEMU this site's VMs run and deletes the data directory. */
  async dispose(): Promise<void> {
    for (const name of await this.library.list()) {
      const pid = await readPidFile(this.library.paths(name).pidFile);
      if (pid !== undefined && (await isAlive(pid))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    await rm(this.dataDir, { recursive: true, force: true });
  }
}

/** Runs the real CLI in a child process (as a user would) and returns its output. */
export function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(join(REPO_ROOT, 'node_modules', '.bin', 'node'), [join(REPO_ROOT, 'src', 'main', 'cli.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', fail);
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

export function heartbeatOf(kind: 'mem' | 'disk'): (r: GuestReport) => boolean {
  return (r) => r.type === `${kind}-heartbeat`;
}

/** Waits for `count` heartbeats of each workload and returns the channel's integrity summary then. */
export async function waitForHeartbeats(channel: GuestChannel, count: number, timeoutMs = 60_000): Promise<GuestChannel['integrity']> {
  const start = channel.integrity;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const now = channel.integrity;
    if (now.memory.heartbeats - start.memory.heartbeats >= count && now.disk.heartbeats - start.disk.heartbeats >= count) return now;
    await new Promise((r) => setTimeout(r, 100));
  }
  // Ask the guest why: a workload that died while nobody listened says so in its pong.
  const pong = channel.waitFor((r) => r.type === 'pong', { timeoutMs: 5000, what: 'pong' }).catch((e: unknown) => (e as Error).message);
  channel.send({ type: 'ping' });
  throw new Error(`fewer than ${count} memory and disk heartbeats within ${timeoutMs} ms: ${JSON.stringify(channel.integrity)}; guest says ${JSON.stringify(await pong)}`);
}


/**
 * A guest checked after each move: its invariants held (no memory or disk violation) and it never
 * restarted (its uptime only grows). `memory: false` waits for a disk heartbeat only (sbmem stopped).
 */
export class GuestHealth {
  readonly #vm: string;
  #lastUptimeMs = 0;

  constructor(vm: string) {
    this.#vm = vm;
  }

  async assertAt(library: VmLibrary, options: { memory?: boolean } = {}): Promise<void> {
    const channel = await GuestChannel.connect(this.#vm, library.paths(this.#vm).control);
    try {
      let integrity = channel.integrity;
      if (options.memory ?? true) integrity = await waitForHeartbeats(channel, 1, 60_000);
      else {
        const start = integrity.disk.heartbeats;
        const deadline = Date.now() + 60_000;
        while (channel.integrity.disk.heartbeats === start && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        integrity = channel.integrity;
        assert.ok(integrity.disk.heartbeats > start, 'no disk heartbeat within 60 s');
      }
      assert.equal(integrity.memory.violations, 0, `memory violations: ${integrity.memory.lastViolation}`);
      assert.equal(integrity.disk.violations, 0, `disk violations: ${integrity.disk.lastViolation}`);
      assert.ok(integrity.uptimeMs > this.#lastUptimeMs, `guest uptime went from ${this.#lastUptimeMs} to ${integrity.uptimeMs} ms: it restarted`);
      this.#lastUptimeMs = integrity.uptimeMs;
    } finally {
      channel.close();
    }
  }
}

/** Pids of the QEMU processes whose command line names a path under `dir` (pid files or not). */
export async function qemusUnder(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('/usr/bin/qemu-system') || cmdline.includes('qemu-system-x86_64\0')) {
      if (cmdline.split('\0').some((arg) => arg.includes(dir))) pids.push(Number(entry));
    }
  }
  return pids;
}
