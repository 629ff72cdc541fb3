// One agent per data directory: `run/agent.lock` holds the running agent's pid. A second agent on
// the same directory would share its SQLite history, its QEMUs and its API socket (node-ipc removes
// the socket file it finds when it starts, and its own when it stops), so it refuses to start and
// names the pid that holds the directory. A lock whose process is gone (a crash) is taken over.
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive } from '../migrator/qemu/process-info.ts';

export class AgentLockedError extends Error {
  override readonly name = 'AgentLockedError';
  readonly code = 'agent-running';
  readonly pid: number;

  constructor(dataDir: string, pid: number) {
    super(`another snowbird agent (pid ${pid}) already runs on ${dataDir}; use that one (every snowbird command finds it), stop it first (kill ${pid}), or give this one another --data directory`);
    this.pid = pid;
  }
}

export function agentLockPath(dataDir: string): string {
  return join(dataDir, 'run', 'agent.lock');
}

/** Takes the data directory for this process; the returned function gives it back. */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const path = agentLockPath(dataDir);
  await mkdir(join(dataDir, 'run'), { recursive: true, mode: 0o700 });
  for (let attempt = 1; ; attempt++) {
    try {
      const file = await open(path, 'wx', 0o600);
      await file.writeFile(`${process.pid}\n`);
      await file.close();
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw error;
      const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && (await isAlive(holder))) throw new AgentLockedError(dataDir, holder);
      await rm(path, { force: true }); // stale: its agent is gone
    }
  }
  return async () => {
    // Only our own lock: never a file another agent wrote after ours went missing.
    if ((await readFile(path, 'utf8').catch(() => '')).trim() === String(process.pid)) await rm(path, { force: true });
  };
}
