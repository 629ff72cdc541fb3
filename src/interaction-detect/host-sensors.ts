// Host-side sensors for one QEMU process: GPU (DRM fdinfo, else nvidia-smi), vCPUs (vCPU thread
// times) and disk (/proc/PID/io), each a rate since the previous read. The parsing and the arithmetic
// are pure, in common/host-sensors.ts; this file reads /proc and runs nvidia-smi.
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, readdir, readFile, readlink } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  carryDrmMaxima,
  diskBytesPerSFrom,
  gpuBusyFromDrm,
  gpuBusyFromNvidia,
  parseDrmFdinfo,
  parseNvidiaSmiPmon,
  parseCpuMax,
  parseProcIo,
  parseThreadStat,
  vcpuBusyFrom,
  vcpuBusyUnderQuota,
  vcpuCount,
  type DrmClient,
  type NvidiaPmonRow,
  type ProcIo,
  type ThreadStat,
} from './common/host-sensors.ts';

/** Where the GPU reading comes from; `unavailable` means gpuBusy is null (`gpuSourceReason` says why). */
export type GpuSource = 'drm' | 'nvidia' | 'unavailable';

/** One reading: the sensor fields of an InteractionSample this process can fill. */
export interface HostSensorReading {
  /** When it was read, ms since the epoch. */
  at: number;
  /** Host GPU busy fraction 0..1 of the process; null where the host does not expose it. */
  gpuBusy: number | null;
  /** vCPUs busy, 0..vcpus. */
  vcpuBusy: number | null;
  /** Host storage bytes per second the process caused (see diskBytesPerSFrom for what that counts). */
  diskBytesPerS: number | null;
  /**
   * Always null here: the demo VM has no NIC. With one, read its tap device's counters
   * (/sys/class/net/<tap>/statistics/{rx,tx}_bytes), not the QEMU process's socket I/O.
   */
  netBytesPerS: null;
}

export interface ProcessSensorsOptions {
  /** Root of the proc filesystem (tests point it at recorded files). Default `/proc`. */
  procRoot?: string;
  /** Where cgroup v2 is mounted (tests point it at fixtures). Default /sys/fs/cgroup. */
  cgroupRoot?: string;
  /** nvidia-smi to run (a name looked up on PATH, or a path), or false to never run it. Default `nvidia-smi`. */
  nvidiaSmi?: string | false;
  /** Run nvidia-smi at most this often (it samples for about a second each time). Default 2000 ms. */
  nvidiaIntervalMs?: number;
  /** Kill an nvidia-smi run after this long. Default 5000 ms. */
  nvidiaTimeoutMs?: number;
  /** Don't use an nvidia-smi result older than this. Default 6000 ms. */
  nvidiaMaxAgeMs?: number;
  /** USER_HZ, the unit of thread CPU times (`getconf CLK_TCK`). Default 100. */
  ticksPerS?: number;
  /** Told once per distinct reason a sensor fails (a missing tool, a timeout, a refused read). */
  log?: (message: string) => void;
  /** Monotonic clock in ms, for the intervals. Default `performance.now`. */
  monotonicMs?: () => number;
}

interface Snapshot {
  atMono: number;
  threads: Map<number, ThreadStat> | undefined;
  io: ProcIo | undefined;
  drm: DrmClient[] | undefined;
}

interface DrmScan {
  clients: DrmClient[];
  /** fds open on /dev/dri/* (clients or not). */
  driFds: number;
  /** Drivers of /dev/dri fds that keep no usage statistics. */
  silentDrivers: Set<string>;
}

/**
 * The host-side sensors of one QEMU process. `read()` returns rates since the previous `read()` (the
 * first returns null rates: there is no interval yet); unavailable sensors read null, never zero.
 * Not safe for overlapping `read()` calls: await one before starting the next.
 */
export class ProcessSensors {
  readonly pid: number;
  /** Where gpuBusy came from at the last read. */
  gpuSource: GpuSource = 'unavailable';
  /** Why, in words the UI can show (for every source, not only `unavailable`). */
  gpuSourceReason = 'not read yet';

  private readonly procDir: string;
  private readonly opts: Required<Omit<ProcessSensorsOptions, 'log' | 'procRoot' | 'cgroupRoot'>> & Pick<ProcessSensorsOptions, 'log'>;
  private readonly cgroupRoot: string;
  private previous: Snapshot | undefined;
  private readonly logged = new Set<string>();
  private nvidiaPath: string | null | undefined; // undefined: not looked up yet; null: none
  private nvidiaRows: { rows: NvidiaPmonRow[]; atMono: number } | undefined;
  private nvidiaError: string | undefined;
  private nvidiaInFlight: Promise<void> | undefined;
  private nvidiaLastStart = Number.NEGATIVE_INFINITY;
  private readonly abort = new AbortController();

  constructor(pid: number, options: ProcessSensorsOptions = {}) {
    if (!Number.isInteger(pid) || pid <= 0) throw new RangeError(`not a pid: ${pid}`);
    this.pid = pid;
    this.procDir = join(options.procRoot ?? '/proc', String(pid));
    this.cgroupRoot = options.cgroupRoot ?? '/sys/fs/cgroup';
    this.opts = {
      nvidiaSmi: options.nvidiaSmi ?? 'nvidia-smi',
      nvidiaIntervalMs: options.nvidiaIntervalMs ?? 2_000,
      nvidiaTimeoutMs: options.nvidiaTimeoutMs ?? 5_000,
      nvidiaMaxAgeMs: options.nvidiaMaxAgeMs ?? 6_000,
      ticksPerS: options.ticksPerS ?? 100,
      monotonicMs: options.monotonicMs ?? (() => performance.now()),
      log: options.log,
    };
    if (this.opts.nvidiaSmi === false) this.nvidiaPath = null;
  }

  async read(): Promise<HostSensorReading> {
    const at = Date.now();
    const atMono = this.opts.monotonicMs();
    const [threads, io, drmScan, allowedCores] = await Promise.all([this.readThreads(), this.readIo(), this.readDrm(), this.readCpuQuota()]);
    const next: Snapshot = { atMono, threads, io, drm: drmScan?.clients };
    const prev = this.previous;
    const elapsedMs = prev ? atMono - prev.atMono : 0;

    const busy = prev?.threads && threads ? vcpuBusyFrom(prev.threads, threads, elapsedMs, this.opts.ticksPerS) : null;
    const vcpuBusy = busy === null || threads === undefined ? null : vcpuBusyUnderQuota(busy, vcpuCount(threads), allowedCores);
    const diskBytesPerS = prev?.io && io ? diskBytesPerSFrom(prev.io, io, elapsedMs) : null;
    const gpuBusy = await this.gpu(prev, next, drmScan, elapsedMs);

    // Keep each DRM counter's maximum so a driver's brief dip is not counted twice (drm-usage-stats).
    this.previous = { ...next, drm: prev?.drm && next.drm ? carryDrmMaxima(prev.drm, next.drm) : next.drm };
    return { at, gpuBusy, vcpuBusy, diskBytesPerS, netBytesPerS: null };
  }

  /** Stops an nvidia-smi run in flight; later reads don't start new ones. */
  close(): void {
    this.nvidiaPath = null;
    this.abort.abort();
  }

  // -- GPU ----------------------------------------------------------------------------------------

  private async gpu(prev: Snapshot | undefined, next: Snapshot, scan: DrmScan | undefined, elapsedMs: number): Promise<number | null> {
    const pid = this.pid;
    if (!scan) return this.setGpu('unavailable', `cannot list process ${pid}'s open files (gone, or not ours)`, null);
    const prevDrm = prev?.drm ?? [];
    if (scan.clients.length > 0 || prevDrm.length > 0) {
      const drivers = [...new Set([...scan.clients, ...prevDrm].map((c) => c.driver))].join(', ');
      // No rate without a previous scan (first read, or the previous listing failed).
      const busy = prev?.drm ? gpuBusyFromDrm(prev.drm, scan.clients, elapsedMs * 1e6) : null;
      return this.setGpu('drm', `${drivers} engine time of the process's DRM clients (/proc/${pid}/fdinfo)`, busy);
    }
    const drmNote =
      scan.silentDrivers.size > 0
        ? `its /dev/dri driver (${[...scan.silentDrivers].join(', ')}) keeps no per-client engine statistics`
        : scan.driFds > 0
          ? 'its /dev/dri files show no engine statistics'
          : 'it has no /dev/dri device open';

    await this.lookUpNvidiaSmi();
    if (this.nvidiaPath === null) return this.setGpu('unavailable', `${drmNote}, and nvidia-smi is not installed`, null);
    this.refreshNvidia();
    const fresh = this.nvidiaRows && next.atMono - this.nvidiaRows.atMono <= this.opts.nvidiaMaxAgeMs ? this.nvidiaRows : undefined;
    if (!fresh) {
      const why = this.nvidiaError ? `nvidia-smi failed (${this.nvidiaError})` : 'waiting for nvidia-smi';
      return this.setGpu('unavailable', `${drmNote}; ${why}`, null);
    }
    const busy = gpuBusyFromNvidia(fresh.rows, pid);
    if (busy === null) return this.setGpu('unavailable', `${drmNote}, and nvidia-smi pmon does not list it`, null);
    return this.setGpu('nvidia', 'SM share of the process from nvidia-smi pmon', busy);
  }

  private setGpu(source: GpuSource, reason: string, busy: number | null): number | null {
    this.gpuSource = source;
    this.gpuSourceReason = reason;
    return busy;
  }

  /** The process's DRM clients, from the fdinfo of its fds that point into /dev/dri. */
  private async readDrm(): Promise<DrmScan | undefined> {
    let fds: string[];
    try {
      fds = await readdir(join(this.procDir, 'fd'));
    } catch (err) {
      this.note(`cannot list ${join(this.procDir, 'fd')}: ${errorText(err)}`);
      return undefined;
    }
    const scan: DrmScan = { clients: [], driFds: 0, silentDrivers: new Set() };
    await Promise.all(
      fds.map(async (fd) => {
        const target = await readlink(join(this.procDir, 'fd', fd)).catch(() => undefined);
        if (!target?.startsWith('/dev/dri/')) return;
        scan.driFds += 1;
        const text = await readFile(join(this.procDir, 'fdinfo', fd), 'utf8').catch(() => undefined);
        if (text === undefined) return;
        const client = parseDrmFdinfo(text);
        if (client) {
          scan.clients.push({ ...client, clientId: client.clientId ?? `fd${fd}` });
        } else {
          const driver = /^drm-driver:\s*(\S+)/m.exec(text)?.[1];
          if (driver) scan.silentDrivers.add(driver);
        }
      }),
    );
    return scan;
  }

  private async lookUpNvidiaSmi(): Promise<void> {
    if (this.nvidiaPath !== undefined) return;
    const name = this.opts.nvidiaSmi;
    if (name === false) return;
    const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, name));
    for (const path of candidates) {
      try {
        await access(path, constants.X_OK);
        this.nvidiaPath = path;
        return;
      } catch {
        // next candidate
      }
    }
    this.nvidiaPath = null;
  }

  /** Starts `nvidia-smi pmon -c 1 -s u` in the background, at most every nvidiaIntervalMs. */
  private refreshNvidia(): void {
    const path = this.nvidiaPath;
    const now = this.opts.monotonicMs();
    if (!path || this.nvidiaInFlight || now - this.nvidiaLastStart < this.opts.nvidiaIntervalMs) return;
    this.nvidiaLastStart = now;
    this.nvidiaInFlight = new Promise<void>((resolve) => {
      execFile(
        path,
        ['pmon', '-c', '1', '-s', 'u'],
        { timeout: this.opts.nvidiaTimeoutMs, maxBuffer: 1 << 20, signal: this.abort.signal, env: { ...process.env, LC_ALL: 'C' } },
        (err, stdout, stderr) => {
          this.nvidiaInFlight = undefined;
          if (this.abort.signal.aborted) {
            resolve();
            return;
          }
          if (err) {
            const said = stderr.trim().split('\n')[0] ?? '';
            const reason = err.killed
              ? `no answer in ${this.opts.nvidiaTimeoutMs} ms`
              : typeof err.code === 'number'
                ? `exit ${err.code}${said ? `: ${said.slice(0, 200)}` : ''}`
                : errorText(err);
            this.nvidiaError = reason;
            this.note(`nvidia-smi pmon: ${reason}`);
          } else if (!/^\s*#/m.test(stdout)) {
            this.nvidiaError = 'unexpected output';
            this.note(`nvidia-smi pmon: unexpected output: ${stdout.slice(0, 200)}`);
          } else {
            this.nvidiaError = undefined;
            this.nvidiaRows = { rows: parseNvidiaSmiPmon(stdout), atMono: this.opts.monotonicMs() };
          }
          resolve();
        },
      );
    });
  }

  // -- vCPUs and disk -----------------------------------------------------------------------------

  private async readThreads(): Promise<Map<number, ThreadStat> | undefined> {
    let tids: string[];
    try {
      tids = await readdir(join(this.procDir, 'task'));
    } catch (err) {
      this.note(`cannot list ${join(this.procDir, 'task')}: ${errorText(err)}`);
      return undefined;
    }
    const threads = new Map<number, ThreadStat>();
    await Promise.all(
      tids.map(async (tid) => {
        // A thread may exit between the listing and the read: it is left out.
        const text = await readFile(join(this.procDir, 'task', tid, 'stat'), 'utf8').catch(() => undefined);
        const stat = text === undefined ? undefined : parseThreadStat(text);
        if (stat) threads.set(Number(tid), stat);
      }),
    );
    return threads;
  }

  /**
   * The cores the process's cgroups allow (the tightest limit from its group up to the root), or
   * null when none limits it or cgroups cannot be read. cgroup v2: `cpu.max`; v1 (hybrid hosts):
   * `cpu.cfs_quota_us` / `cpu.cfs_period_us` under the cpu controller's mount.
   */
  private async readCpuQuota(): Promise<number | null> {
    const text = await readFile(join(this.procDir, 'cgroup'), 'utf8').catch(() => undefined);
    const lines = text?.split('\n') ?? [];
    const v1 = lines.map((line) => /^\d+:([^:]*):(.*)$/.exec(line)).find((m) => m?.[1]?.split(',').includes('cpu'));
    const v2 = lines.find((line) => line.startsWith('0::'))?.slice(3).trim();
    const [mount, path, read] =
      v1?.[2] !== undefined
        ? [join(this.cgroupRoot, 'cpu'), v1[2], (dir: string) => readCpuCfs(dir)]
        : [this.cgroupRoot, v2, async (dir: string) => parseCpuMax(await readFile(join(dir, 'cpu.max'), 'utf8'))];
    if (path === undefined) return null;
    let allowed: number | null = null;
    for (let dir = path; dir !== '/' && dir !== ''; dir = dirname(dir)) {
      const cores = await read(join(mount, dir)).catch(() => null);
      if (cores !== null) allowed = allowed === null ? cores : Math.min(allowed, cores);
    }
    return allowed;
  }

  private async readIo(): Promise<ProcIo | undefined> {
    try {
      return parseProcIo(await readFile(join(this.procDir, 'io'), 'utf8'));
    } catch (err) {
      // /proc/PID/io needs ptrace-read access: the same user (or CAP_SYS_PTRACE).
      this.note(`cannot read ${join(this.procDir, 'io')}: ${errorText(err)}`);
      return undefined;
    }
  }

  private note(message: string): void {
    if (this.logged.has(message)) return;
    this.logged.add(message);
    this.opts.log?.(message);
  }
}

function errorText(err: unknown): string {
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return err instanceof Error ? err.message : String(err);
}

/** cgroup v1's CPU limit in cores: cfs_quota_us / cfs_period_us; null when the quota is -1 (none). */
async function readCpuCfs(dir: string): Promise<number | null> {
  const [quota, period] = await Promise.all([readFile(join(dir, 'cpu.cfs_quota_us'), 'utf8'), readFile(join(dir, 'cpu.cfs_period_us'), 'utf8')]);
  return parseCpuMax(`${quota.trim() === '-1' ? 'max' : quota.trim()} ${period.trim()}`);
}
