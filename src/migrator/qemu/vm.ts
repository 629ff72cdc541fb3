// The local lifecycle of one QEMU VM: start (normal or as a migration destination), adopt after the
// managing process restarted, pause/resume, graceful shutdown, kill. QEMU is driven only through QMP
// on a unix socket; it runs daemonized so it outlives the agent or CLI that started it.
import { spawn } from 'node:child_process';
import { mkdir, rm, access } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { QmpClient } from '../qmp/client.ts';
import { QmpError, QmpDisconnectedError, QmpTimeoutError } from '../qmp/errors.ts';
import { buildQemuArgv, type Accel, type VmPaths, type VmSpec } from './common/spec.ts';
import { QemuNotFoundError, VmAdoptError, VmControlError, VmSocketInUseError, VmStartError, VmStopError } from './errors.ts';
import { commandLineOf, isAlive, readPidFile, waitForExit } from './process-info.ts';
import { applyCpuLimit, removeCpuLimit } from './cpu-limit.ts';
import { socketAccepts } from '../local-io.ts';

/** Out-of-band commands: post-copy recovery must reach a QEMU whose main thread waits on a missing page. */
const QMP_CAPABILITIES = ['oob'];

export const QEMU_BINARY = 'qemu-system-x86_64';

export interface StartOptions {
  accel: Accel;
  /** Start as a migration destination (`-incoming defer -S`). */
  incoming?: boolean;
  /** Start with the vCPUs stopped. */
  paused?: boolean;
}

export type { RunState } from '../../shared/vm-status.ts';
import type { RunState } from '../../shared/vm-status.ts';

export interface VmStatus {
  state: RunState;
  /** QEMU's own status word (`running`, `paused`, `inmigrate`, `postmigrate`, ...). */
  qemuStatus: string;
  pid: number;
}

/** Finds an executable on PATH the way a shell would. */
export async function findExecutable(name: string): Promise<string | undefined> {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir.length === 0) continue;
    const candidate = join(dir, name);
    try {
      await access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

function classify(qemuStatus: string): RunState {
  switch (qemuStatus) {
    case 'running':
      return 'running';
    case 'paused':
    case 'prelaunch':
    case 'postmigrate':
    case 'suspended':
    case 'io-error':
    case 'watchdog':
    case 'guest-panicked':
      return 'paused';
    case 'inmigrate':
      return 'incoming';
    case 'finish-migrate':
    case 'postmigrate-paused':
      return 'migrating';
    case 'shutdown':
      return 'shutdown';
    default:
      return 'other';
  }
}

export class VmHandle {
  readonly name: string;
  readonly pid: number;
  readonly paths: VmPaths;
  readonly qmp: QmpClient;

  private constructor(name: string, pid: number, paths: VmPaths, qmp: QmpClient) {
    this.name = name;
    this.pid = pid;
    this.paths = paths;
    this.qmp = qmp;
  }

  /** Starts QEMU for `spec`. Resolves once QEMU's sockets listen and QMP is negotiated. */
  static async start(spec: VmSpec, paths: VmPaths, options: StartOptions): Promise<VmHandle> {
    const binary = await findExecutable(QEMU_BINARY);
    if (binary === undefined) throw new QemuNotFoundError(QEMU_BINARY);

    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    if (await socketAccepts(paths.qmp)) {
      throw new VmSocketInUseError(paths.qmp, await readPidFile(paths.pidFile));
    }
    // Leftovers of a QEMU that died: QEMU refuses to bind over an existing socket file.
    await Promise.all([paths.qmp, paths.vnc, paths.control, paths.pidFile].map((p) => rm(p, { force: true })));

    const argv = buildQemuArgv(spec, paths, options);
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(binary, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        if (err.length < 64 * 1024) err += chunk;
      });
      child.on('error', reject);
      // With -daemonize the parent exits once the VM is set up: 0 means QEMU is up and listening.
      child.on('close', (exitCode) => resolve({ code: exitCode, stderr: err }));
    }).catch((cause: unknown) => {
      throw new VmStartError(spec.name, `spawning ${binary} failed: ${(cause as Error).message}`, { cause });
    });
    if (code !== 0) {
      throw new VmStartError(spec.name, `QEMU exited with code ${code}: ${stderr.trim() || '(no message)'} — see ${paths.qemuLog}`);
    }
    const pid = await readPidFile(paths.pidFile);
    if (pid === undefined) throw new VmStartError(spec.name, `QEMU started but wrote no pid file at ${paths.pidFile}`);

    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(paths.qmp, { timeoutMs: 10_000, retryUntilMs: 10_000, capabilities: QMP_CAPABILITIES });
    } catch (cause) {
      process.kill(pid, 'SIGKILL');
      throw new VmStartError(spec.name, `QEMU did not answer on its QMP socket ${paths.qmp}`, { cause });
    }
    const vm = new VmHandle(spec.name, pid, paths, qmp);
    if (spec.cpuLimitPercent !== undefined) {
      try {
        await applyCpuLimit(spec.name, pid, spec.cpuLimitPercent);
      } catch (cause) {
        await vm.kill();
        throw new VmStartError(spec.name, (cause as Error).message, { cause });
      }
    }
    return vm;
  }

  /** Takes over a QEMU that is already running (after the managing process restarted). */
  static async adopt(name: string, paths: VmPaths): Promise<VmHandle> {
    const pid = await readPidFile(paths.pidFile);
    if (pid === undefined || !(await isAlive(pid))) {
      throw new VmAdoptError(name, `no running QEMU (pid file ${paths.pidFile} is missing or stale); start the VM instead`);
    }
    const cmdline = await commandLineOf(pid);
    if (cmdline === undefined || !cmdline.includes(`unix:${paths.qmp},server=on,wait=off`)) {
      throw new VmAdoptError(name, `process ${pid} is not this VM's QEMU (its command line does not use ${paths.qmp})`);
    }
    try {
      const qmp = await QmpClient.connect(paths.qmp, { timeoutMs: 5000, capabilities: QMP_CAPABILITIES });
      return new VmHandle(name, pid, paths, qmp);
    } catch (cause) {
      throw new VmAdoptError(name, `QEMU (pid ${pid}) does not answer on ${paths.qmp}; kill it with 'snowbird vm stop ${name} --force'`, { cause });
    }
  }

  async status(): Promise<VmStatus> {
    const s = await this.control('query-status', () => this.qmp.execute('query-status'));
    return { state: classify(s.status), qemuStatus: s.status, pid: this.pid };
  }

  async pause(): Promise<void> {
    await this.control('pause', () => this.qmp.execute('stop'));
  }

  async resume(): Promise<void> {
    await this.control('resume', () => this.qmp.execute('cont'));
  }

  /**
   * Stops the VM cleanly: asks the guest to power off (ACPI), and if it has not within `graceMs`,
   * tells QEMU to quit (QEMU flushes its disk images on quit). Kills only if QEMU itself hangs.
   */
  async shutdown(options: { graceMs?: number; requestGuestPoweroff?: () => Promise<void> } = {}): Promise<void> {
    const graceMs = options.graceMs ?? 15_000;
    try {
      if (options.requestGuestPoweroff) await options.requestGuestPoweroff();
      else await this.qmp.execute('system_powerdown');
    } catch (cause) {
      if (!(cause instanceof QmpDisconnectedError)) {
        throw new VmStopError(this.name, `asking the guest to power off failed: ${(cause as Error).message}`, { cause });
      }
    }
    if (await waitForExit(this.pid, graceMs)) return this.cleanup();
    try {
      await this.qmp.execute('quit');
    } catch (cause) {
      if (!(cause instanceof QmpDisconnectedError)) {
        throw new VmStopError(this.name, `QEMU refused to quit: ${(cause as Error).message}`, { cause });
      }
    }
    if (await waitForExit(this.pid, 10_000)) return this.cleanup();
    await this.kill();
  }

  /**
   * Tells QEMU to quit without asking the guest (QEMU flushes its images): for a migration source
   * whose guest now runs elsewhere, or a destination being torn down. Kills QEMU if it hangs.
   */
  async quit(options: { timeoutMs?: number } = {}): Promise<void> {
    try {
      await this.qmp.execute('quit', undefined, { timeoutMs: options.timeoutMs ?? 10_000 });
    } catch (cause) {
      if (!(cause instanceof QmpDisconnectedError) && !(cause instanceof QmpError) && !(cause instanceof QmpTimeoutError)) throw cause;
    }
    if (await waitForExit(this.pid, options.timeoutMs ?? 10_000)) return this.cleanup();
    await this.kill();
  }

  /** True while the QEMU process exists (not a zombie). */
  async alive(): Promise<boolean> {
    return isAlive(this.pid);
  }

  /** Ends QEMU at once (SIGKILL). The guest gets no chance to flush; used for failures and tests. */
  async kill(): Promise<void> {
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    if (!(await waitForExit(this.pid, 10_000))) {
      throw new VmStopError(this.name, `QEMU (pid ${this.pid}) survived SIGKILL; check 'ps -p ${this.pid}'`);
    }
    await this.cleanup();
  }

  /** Lets go of QMP without stopping QEMU (the VM keeps running; another process may adopt it). */
  async detach(): Promise<void> {
    await this.qmp.close();
  }

  private async cleanup(): Promise<void> {
    await this.qmp.close();
    await removeCpuLimit(this.name);
    await Promise.all([this.paths.qmp, this.paths.vnc, this.paths.control, this.paths.pidFile].map((p) => rm(p, { force: true })));
  }

  private async control<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (cause) {
      if (cause instanceof QmpError || cause instanceof QmpDisconnectedError) {
        throw new VmControlError(this.name, `${what} failed: ${cause.message}`, { cause });
      }
      throw cause;
    }
  }
}
