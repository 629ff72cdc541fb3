// The slow edge of a one-machine benchmark: every QEMU that runs the VM at the edge goes into a cgroup
// with a CPU quota (src/migrator/qemu/cpu-limit.ts), the core's QEMU is left alone. Snowbird drops a
// spec's CPU limit when a VM migrates (a limit belongs to a site), so a guest that comes back to the
// edge runs in a new QEMU that no limit covers: this watches the edge's pid file and puts each new
// QEMU into the group as soon as it appears. The group has a name of its own (not the agents'
// `snowbird-VM`, which they remove when a QEMU of the VM exits, at either site).
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { applyCpuLimit, removeCpuLimit } from '../../src/migrator/qemu/cpu-limit.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';

export class EdgeThrottle {
  /** The cgroup's own name, passed to cpu-limit.ts as its "VM" (group `snowbird-<name>`). */
  readonly name: string;
  readonly #pidFile: string;
  #percent: number;
  #dir: string | undefined;
  #throttled = new Set<number>();
  #stopped = false;
  #loop: Promise<void> | undefined;
  readonly #log: (line: string) => void;

  constructor(name: string, pidFile: string, percent: number, log: (line: string) => void) {
    this.name = name;
    this.#pidFile = pidFile;
    this.#percent = percent;
    this.#log = log;
  }

  get percent(): number {
    return this.#percent;
  }

  /** The cgroup directory, once a QEMU was put into it. */
  get dir(): string | undefined {
    return this.#dir;
  }

  /** Starts watching the pid file (every 50 ms). */
  start(): void {
    this.#loop ??= (async () => {
      while (!this.#stopped) {
        await this.#check().catch((error: unknown) => this.#log(`edge throttle: ${(error as Error).message}`));
        await sleep(50);
      }
    })();
  }

  async #check(): Promise<void> {
    const pid = await readPidFile(this.#pidFile);
    if (pid === undefined || this.#throttled.has(pid) || !(await isAlive(pid))) return;
    this.#dir = await applyCpuLimit(this.name, pid, this.#percent);
    this.#throttled.add(pid);
    this.#log(`edge throttle: QEMU ${pid} capped at ${this.#percent} % of one CPU (${this.#dir})`);
  }

  /** Changes the quota of the group (and of QEMUs put into it later). */
  async setPercent(percent: number): Promise<void> {
    this.#percent = percent;
    const pid = await readPidFile(this.#pidFile);
    if (pid !== undefined && (await isAlive(pid))) this.#dir = await applyCpuLimit(this.name, pid, percent);
  }

  /** Whether `pid` sits in the throttle's group now (from /proc/PID/cgroup). */
  async covers(pid: number): Promise<boolean> {
    const groups = await readFile(`/proc/${pid}/cgroup`, 'utf8').catch(() => '');
    return groups.split('\n').some((line) => line.endsWith(`/snowbird-${this.name}`));
  }

  /** Stops watching, moves what is still in the group back to its parent, removes the group. */
  async dispose(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
    if (this.#dir !== undefined) {
      const procs = await readFile(join(this.#dir, 'cgroup.procs'), 'utf8').catch(() => '');
      for (const pid of procs.split('\n').filter((l) => l.trim() !== '')) {
        await writeFile(join(dirname(this.#dir), 'cgroup.procs'), pid).catch(() => undefined);
      }
    }
    await removeCpuLimit(this.name);
  }
}
