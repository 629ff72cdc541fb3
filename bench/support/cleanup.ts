// Everything a benchmark starts (agents, QEMUs, the network namespace, temp dirs) is registered here
// as it is started, and undone in reverse order on success, on failure and on Ctrl-C / SIGTERM.
import { setTimeout as sleep } from 'node:timers/promises';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';

interface Task {
  what: string;
  run: () => Promise<void>;
}

export class Cleanup {
  readonly #tasks: Task[] = [];
  #running: Promise<void> | undefined;
  readonly #log: (line: string) => void;
  #interrupted = false;

  constructor(log: (line: string) => void) {
    this.#log = log;
  }

  /** True once Ctrl-C / SIGTERM arrived: callers stop starting new work. */
  get interrupted(): boolean {
    return this.#interrupted;
  }

  /** Registers an undo step; the returned function removes it (once the thing is gone already). */
  add(what: string, run: () => Promise<void>): () => void {
    const task = { what, run };
    this.#tasks.push(task);
    return () => {
      const index = this.#tasks.indexOf(task);
      if (index >= 0) this.#tasks.splice(index, 1);
    };
  }

  /** Runs every step, newest first; a failing step is reported and the rest still run. Idempotent. */
  runAll(): Promise<void> {
    this.#running ??= (async () => {
      while (this.#tasks.length > 0) {
        const task = this.#tasks.pop() as Task;
        try {
          await Promise.race([task.run(), sleep(30_000).then(() => Promise.reject(new Error('timed out after 30 s')))]);
        } catch (error) {
          this.#log(`cleanup: ${task.what}: ${(error as Error).message}`);
        }
      }
    })();
    return this.#running;
  }

  /** Ctrl-C and SIGTERM clean up, then exit 130 / 143. */
  installSignalHandlers(): void {
    for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      process.once(signal, () => {
        this.#interrupted = true;
        this.#log(`\n${signal}: cleaning up (agents, QEMUs, network namespace, temp dirs)…`);
        void this.runAll().finally(() => process.exit(code));
      });
    }
  }
}

/** SIGKILLs a process if it still runs and waits (briefly) until it is gone. */
export async function killPid(pid: number | undefined): Promise<void> {
  if (pid === undefined || !(await isAlive(pid))) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 100 && (await isAlive(pid)); i++) await sleep(50);
}

/** Kills the QEMU whose pid file is at `pidFile`, if it runs. */
export async function killQemuByPidFile(pidFile: string): Promise<void> {
  await killPid(await readPidFile(pidFile));
}

/**
 * Runs a benchmark's `main` with a Cleanup that undoes everything it started — on success, failure,
 * Ctrl-C and a crash (an unhandled 'error' event, say) — and sets the exit code from its verdict.
 */
export async function runBenchmark(log: (line: string) => void, main: (cleanup: Cleanup) => Promise<boolean>): Promise<void> {
  const cleanup = new Cleanup(log);
  cleanup.installSignalHandlers();
  process.once('uncaughtException', (error) => {
    log(`benchmark crashed: ${error.stack ?? String(error)}`);
    void cleanup.runAll().finally(() => process.exit(1));
  });
  let ok = false;
  try {
    ok = await main(cleanup);
  } catch (error) {
    log(`benchmark failed: ${(error as Error).stack ?? String(error)}`);
  } finally {
    log('cleaning up');
    await cleanup.runAll();
    log('cleaned up');
  }
  process.exitCode = ok ? 0 : 1;
}
