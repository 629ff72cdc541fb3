// Host-side sensors for one QEMU process, the pure half: parsers for what Linux and nvidia-smi print,
// and the rates computed from two snapshots. The Node reader (../host-sensors.ts) reads the files and
// runs the tools; everything here is tested on recorded text (test/fixtures/sensors/).
//
// Every result follows the sample contract (src/shared/placement.ts): null means "this host cannot
// say", never "zero activity". A parser returns undefined for text that is not what it reads.

// ---------------------------------------------------------------------------------------------
// GPU through DRM fdinfo (Documentation/gpu/drm-usage-stats.rst)
// ---------------------------------------------------------------------------------------------

/** One DRM client (one open `struct drm_file`) as its fdinfo shows it. */
export interface DrmClient {
  /** `drm-driver`: i915, xe, amdgpu, msm, panfrost… */
  driver: string;
  /**
   * `drm-client-id`: several fds (dup'ed or passed between processes) may show the same client; it is
   * counted once. Undefined where the driver prints none (the reader then names the client by its fd).
   */
  clientId: string | undefined;
  /** `drm-pdev`: where present, client ids are unique per device only. */
  pdev: string | undefined;
  /** `drm-engine-<name>`: time the engine spent busy on this client's work, in ns, since it opened. */
  engines: Record<string, number>;
  /** `drm-engine-capacity-<name>`: identical engines behind one name (absent = 1). */
  capacities: Record<string, number>;
  /**
   * `drm-cycles-<name>` with `drm-total-cycles-<name>` (xe): busy cycles and the GPU timestamp they
   * are measured against, so the busy share is Δbusy / Δtotal, on the GPU's own clock.
   */
  cycles: Record<string, { busy: number; total: number }>;
}

/**
 * Drivers that print a `drm-engine-<name>` line only once that engine has done work for the client
 * (amdgpu skips zero usage: `if (!usage[hw_ip]) continue;` in amdgpu_fdinfo.c). For them a client
 * without engine lines is a client with zero engine time; for other drivers it means the driver
 * keeps no engine statistics at all (unavailable).
 */
const OMITS_IDLE_ENGINES = new Set(['amdgpu']);

/** The leading unsigned integer of a value (`346249 ns`, `800000000 Hz`, `2`), or undefined. */
function leadingUint(value: string): number | undefined {
  const m = /^(\d+)/.exec(value);
  if (!m?.[1]) return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * One `/proc/PID/fdinfo/N` file's text → the DRM client it describes, or undefined when the fd is not
 * a DRM client with engine accounting: no `drm-driver`, or neither `drm-engine-*` nor
 * `drm-cycles-*` keys (a driver without usage stats, such as virtio-gpu or nouveau, gives no reading).
 * amdgpu is the exception: it omits idle engines, so its clients always count (see above).
 * Keys and values are separated by a colon and any whitespace (the kernel prints tabs; published
 * examples often show spaces).
 */
export function parseDrmFdinfo(text: string): DrmClient | undefined {
  let driver: string | undefined;
  let clientId: string | undefined;
  let pdev: string | undefined;
  const engines: Record<string, number> = {};
  const capacities: Record<string, number> = {};
  const busyCycles: Record<string, number> = {};
  const totalCycles: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const key = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (!key.startsWith('drm-')) continue;
    if (key === 'drm-driver') driver = value;
    else if (key === 'drm-client-id') clientId = value;
    else if (key === 'drm-pdev') pdev = value;
    else if (key.startsWith('drm-engine-capacity-')) {
      const n = leadingUint(value);
      if (n !== undefined && n > 0) capacities[key.slice('drm-engine-capacity-'.length)] = n;
    } else if (key.startsWith('drm-engine-')) {
      const n = leadingUint(value);
      const name = key.slice('drm-engine-'.length);
      // amdgpu prints two IP blocks under one name on some parts ("dec": UVD and VCN); keep the larger.
      if (n !== undefined) engines[name] = Math.max(engines[name] ?? 0, n);
    } else if (key.startsWith('drm-total-cycles-')) {
      const n = leadingUint(value);
      if (n !== undefined) totalCycles[key.slice('drm-total-cycles-'.length)] = n;
    } else if (key.startsWith('drm-cycles-')) {
      const n = leadingUint(value);
      if (n !== undefined) busyCycles[key.slice('drm-cycles-'.length)] = n;
    }
  }
  if (driver === undefined) return undefined;
  const cycles: DrmClient['cycles'] = {};
  for (const [name, busy] of Object.entries(busyCycles)) {
    const total = totalCycles[name];
    // drm-cycles without drm-total-cycles (msm, panfrost) pairs with drm-maxfreq instead: a measure
    // of clock-scaled utilisation that those drivers also give as drm-engine time, which is used.
    if (total !== undefined && engines[name] === undefined) cycles[name] = { busy, total };
  }
  const accounted = Object.keys(engines).length > 0 || Object.keys(cycles).length > 0;
  if (!accounted && !OMITS_IDLE_ENGINES.has(driver)) return undefined;
  return { driver, clientId, pdev, engines, capacities, cycles };
}

/** The identity one client keeps across fds and snapshots. */
export function drmClientKey(client: DrmClient): string {
  return `${client.driver}\u0000${client.pdev ?? ''}\u0000${client.clientId ?? ''}`;
}

/** Clients by key, each counted once (fds of one client show the same counters; keep the largest). */
function byClient(clients: readonly DrmClient[]): Map<string, DrmClient> {
  const map = new Map<string, DrmClient>();
  for (const c of clients) {
    const key = drmClientKey(c);
    const seen = map.get(key);
    map.set(key, seen ? maxCounters(seen, c) : c);
  }
  return map;
}

/** Per-counter maximum of two readings of one client. */
function maxCounters(a: DrmClient, b: DrmClient): DrmClient {
  const engines = { ...a.engines };
  for (const [name, ns] of Object.entries(b.engines)) engines[name] = Math.max(engines[name] ?? 0, ns);
  const cycles = { ...a.cycles };
  for (const [name, c] of Object.entries(b.cycles)) {
    const seen = cycles[name];
    cycles[name] = seen ? { busy: Math.max(seen.busy, c.busy), total: Math.max(seen.total, c.total) } : c;
  }
  return { ...b, engines, capacities: { ...a.capacities, ...b.capacities }, cycles };
}

/**
 * The snapshot to keep for the next interval. The spec lets a driver's counter dip briefly ("userspace
 * is expected to stay with that larger previous value until a monotonic update is seen"), so each
 * client's counters carry forward their maximum; a dip then reads as no progress instead of a later
 * double count. Clients gone from `next` are dropped (their fds closed).
 */
export function carryDrmMaxima(prev: readonly DrmClient[], next: readonly DrmClient[]): DrmClient[] {
  const before = byClient(prev);
  return [...byClient(next)].map(([key, c]) => {
    const old = before.get(key);
    return old ? maxCounters(old, c) : c;
  });
}

/**
 * GPU busy fraction 0..1 between two snapshots of one process's DRM clients, `elapsedNs` apart: per
 * engine (per device), the busy time all the process's clients added over the interval divided by
 * elapsed × capacity; the busiest engine is the reading (one saturated engine makes a GPU-bound job,
 * an idle video decoder must not dilute a busy renderer). xe's cycle counters give Δbusy/Δtotal.
 * A client that appears in `next` only was opened during the interval and counts from zero; when all
 * clients are gone the reading is 0. null when neither snapshot has a DRM client (no GPU use this
 * sensor can see), when the only clients are new ones with cycle counters alone, or `elapsedNs` ≤ 0.
 */
export function gpuBusyFromDrm(prev: readonly DrmClient[], next: readonly DrmClient[], elapsedNs: number): number | null {
  if (!(elapsedNs > 0)) return null;
  if (prev.length === 0 && next.length === 0) return null;
  const before = byClient(prev);
  const busyByEngine = new Map<string, number>();
  const add = (engineKey: string, share: number): void => {
    busyByEngine.set(engineKey, (busyByEngine.get(engineKey) ?? 0) + Math.max(0, share));
  };
  // Whether anything was measured: all clients gone reads 0 (nothing can run), but a client met for the
  // first time with only cycle counters (xe) has no earlier GPU timestamp, so it cannot say yet.
  let measured = next.length === 0;
  for (const [key, client] of byClient(next)) {
    const old = before.get(key);
    const device = `${client.driver}\u0000${client.pdev ?? ''}`;
    if (OMITS_IDLE_ENGINES.has(client.driver)) measured = true;
    for (const [name, ns] of Object.entries(client.engines)) {
      measured = true;
      const capacity = client.capacities[name] ?? 1;
      add(`${device}\u0000${name}`, (ns - (old?.engines[name] ?? 0)) / (elapsedNs * capacity));
    }
    for (const [name, c] of Object.entries(client.cycles)) {
      const was = old?.cycles[name];
      if (!was) continue; // no earlier GPU timestamp to measure against
      const span = c.total - was.total;
      measured = true;
      if (span > 0) add(`${device}\u0000${name}`, (c.busy - was.busy) / (span * (client.capacities[name] ?? 1)));
    }
  }
  if (!measured) return null;
  let busiest = 0;
  for (const share of busyByEngine.values()) busiest = Math.max(busiest, share);
  return Math.min(1, busiest);
}

// ---------------------------------------------------------------------------------------------
// GPU through nvidia-smi (the proprietary driver keeps no DRM fdinfo statistics)
// ---------------------------------------------------------------------------------------------

/** One row of `nvidia-smi pmon -c 1 -s u`. */
export interface NvidiaPmonRow {
  /** GPU index. */
  gpu: number;
  pid: number;
  /** C (compute), G (graphics), C+G, M (MPS)… */
  type: string;
  /** Streaming-multiprocessor utilisation, percent; null where pmon printed '-' (no sample). */
  smPercent: number | null;
  /** Process name as pmon prints it (truncated to 15 characters). */
  command: string;
}

/** The columns of older drivers' pmon when no header line is found. */
const PMON_DEFAULT_COLUMNS = ['gpu', 'pid', 'type', 'sm', 'mem', 'enc', 'dec', 'command'];

/**
 * `nvidia-smi pmon -c 1 -s u` output → its process rows. Header lines start with '#': the first names
 * the columns (`# gpu pid type sm mem enc dec [jpg ofa] command`; newer drivers add jpg and ofa, `-s
 * um` adds fb/ccpm), so columns are found by name, not position. A GPU without processes prints a row
 * of '-', which is skipped. The command is the last column and may contain spaces.
 */
export function parseNvidiaSmiPmon(text: string): NvidiaPmonRow[] {
  let columns = PMON_DEFAULT_COLUMNS;
  let headerSeen = false;
  const rows: NvidiaPmonRow[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.length === 0) continue;
    if (line.startsWith('#')) {
      const names = line.slice(1).trim().split(/\s+/);
      if (!headerSeen && names.includes('pid') && names.includes('sm')) {
        columns = names;
        headerSeen = true;
      }
      continue;
    }
    const fields = line.split(/\s+/);
    const at = (name: string): string | undefined => {
      const i = columns.indexOf(name);
      return i < 0 ? undefined : fields[i];
    };
    const pid = Number(at('pid'));
    const gpu = Number(at('gpu'));
    if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(gpu)) continue;
    const sm = at('sm');
    const smNumber = sm === undefined || sm === '-' ? null : Number(sm);
    const commandAt = columns.indexOf('command');
    rows.push({
      gpu,
      pid,
      type: at('type') ?? '',
      smPercent: smNumber !== null && Number.isFinite(smNumber) ? smNumber : null,
      command: commandAt < 0 ? '' : fields.slice(commandAt).join(' '),
    });
  }
  return rows;
}

/**
 * The busy fraction (0..1) pmon gives a process: its busiest GPU's SM share. null when the pid is not
 * listed (not a client of any NVIDIA GPU). A listed process whose SM column is '-' reads 0: pmon
 * prints '-' when NVML holds no utilisation sample for the process in its window, and NVML takes
 * samples only while the process's work runs, so a listed client without samples ran nothing.
 */
export function gpuBusyFromNvidia(rows: readonly NvidiaPmonRow[], pid: number): number | null {
  const mine = rows.filter((r) => r.pid === pid);
  if (mine.length === 0) return null;
  const busiest = Math.max(...mine.map((r) => r.smPercent ?? 0));
  return Math.min(1, Math.max(0, busiest / 100));
}

// ---------------------------------------------------------------------------------------------
// vCPUs through /proc/PID/task/TID/stat
// ---------------------------------------------------------------------------------------------

/** The fields of a thread's stat line the vCPU sensor needs. */
export interface ThreadStat {
  /** Thread name (comm), at most 15 characters. */
  comm: string;
  /** Time scheduled in user and kernel mode, in clock ticks (USER_HZ). */
  utimeTicks: number;
  stimeTicks: number;
}

/**
 * A `/proc/PID/task/TID/stat` (or `/proc/PID/stat`) line → comm and CPU times. comm sits in
 * parentheses and may itself contain spaces and parentheses, so fields are counted from the LAST ')':
 * after it come state (field 3) … utime (field 14) and stime (field 15), see proc(5).
 */
export function parseThreadStat(text: string): ThreadStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const rest = text.slice(close + 1).trim().split(/\s+/);
  const utimeTicks = Number(rest[11]);
  const stimeTicks = Number(rest[12]);
  if (!Number.isSafeInteger(utimeTicks) || !Number.isSafeInteger(stimeTicks)) return undefined;
  return { comm: text.slice(open + 1, close), utimeTicks, stimeTicks };
}

/**
 * QEMU's vCPU threads, named when it runs with `-name …,debug-threads=on` (src/migrator/qemu/common/
 * spec.ts sets it): `CPU <n>/<accel>` (KVM, TCG, HVF, WHPX, NVMM…), or `ALL CPUs/TCG` for
 * single-threaded TCG. Without debug-threads every thread is called after the binary and the sensor
 * reads null.
 */
export function isVcpuThread(comm: string): boolean {
  return /^(CPU \d+|ALL CPUs)\/[A-Za-z]+$/.test(comm);
}

/**
 * vCPUs busy (0..n) between two snapshots of a process's threads (by tid), `elapsedMs` apart: the
 * CPU time the vCPU threads were scheduled, over the elapsed time. A vCPU thread that appears in `next`
 * only started during the interval and counts from zero; one that is gone is left out. `ticksPerS` is
 * USER_HZ (`getconf CLK_TCK`), 100 on Linux builds in practice. Time a vCPU thread spends in the host
 * kernel on the guest's behalf counts (stime, KVM's guest time is part of it).
 * null when `next` has no vCPU threads (QEMU without debug-threads, or gone) or `elapsedMs` ≤ 0.
 */
export function vcpuBusyFrom(
  prevThreads: ReadonlyMap<number, ThreadStat>,
  nextThreads: ReadonlyMap<number, ThreadStat>,
  elapsedMs: number,
  ticksPerS = 100,
): number | null {
  if (!(elapsedMs > 0)) return null;
  let vcpus = 0;
  let ticks = 0;
  for (const [tid, t] of nextThreads) {
    if (!isVcpuThread(t.comm)) continue;
    vcpus += 1;
    const old = prevThreads.get(tid);
    const before = old && old.comm === t.comm ? old.utimeTicks + old.stimeTicks : 0;
    ticks += Math.max(0, t.utimeTicks + t.stimeTicks - before);
  }
  if (vcpus === 0) return null;
  const busy = ticks / ticksPerS / (elapsedMs / 1000);
  return Math.min(vcpus, busy);
}

/**
 * The CPU a cgroup v2 `cpu.max` allows, in cores ("QUOTA PERIOD" → QUOTA/PERIOD); null for "max"
 * (no limit) or an unreadable line.
 */
export function parseCpuMax(text: string): number | null {
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || quota === 'max') return null;
  const q = Number(quota);
  const p = Number(period ?? 100_000);
  return Number.isFinite(q) && Number.isFinite(p) && q > 0 && p > 0 ? q / p : null;
}

/**
 * Busy vCPUs against what the VM may use: a QEMU whose cgroup allows fewer cores than it has vCPUs
 * can never show more busy time than the quota, yet at the quota it is as busy as it can be. So
 * busy time is scaled by vcpus / allowed cores (capped at vcpus); without a quota it is unchanged.
 */
export function vcpuBusyUnderQuota(busy: number, vcpus: number, allowedCores: number | null): number {
  if (allowedCores === null || allowedCores >= vcpus || vcpus <= 0) return busy;
  return Math.min(vcpus, (busy * vcpus) / allowedCores);
}

/** The vCPU threads among a process's threads. */
export function vcpuCount(threads: ReadonlyMap<number, ThreadStat>): number {
  let n = 0;
  for (const t of threads.values()) if (isVcpuThread(t.comm)) n += 1;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Disk through /proc/PID/io
// ---------------------------------------------------------------------------------------------

/** `/proc/PID/io` (proc(5)), bytes since the process started, all its threads together. */
export interface ProcIo {
  /** Bytes passed to read()-like calls (any fd: files, sockets, pipes; page-cache hits included). */
  rchar: number;
  /** Bytes passed to write()-like calls. */
  wchar: number;
  /** Bytes the process caused to be fetched from the storage layer. */
  readBytes: number;
  /** Bytes the process caused to be sent to the storage layer (counted when pages are dirtied). */
  writeBytes: number;
  /** Dirtied bytes never written because the file was truncated or deleted first. */
  cancelledWriteBytes: number;
}

/** `/proc/PID/io` text → its counters, or undefined when a field is missing. */
export function parseProcIo(text: string): ProcIo | undefined {
  const fields = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s*(\d+)\s*$/.exec(line.trim());
    if (m?.[1] && m[2]) fields.set(m[1], Number(m[2]));
  }
  const get = (name: string): number | undefined => fields.get(name);
  const rchar = get('rchar');
  const wchar = get('wchar');
  const readBytes = get('read_bytes');
  const writeBytes = get('write_bytes');
  if (rchar === undefined || wchar === undefined || readBytes === undefined || writeBytes === undefined) {
    return undefined;
  }
  return { rchar, wchar, readBytes, writeBytes, cancelledWriteBytes: get('cancelled_write_bytes') ?? 0 };
}

/**
 * Disk bytes per second (reads + writes) between two `/proc/PID/io` readings `elapsedMs` apart.
 *
 * Why read_bytes + write_bytes, not rchar + wchar: QEMU's read()/write() calls also move the VNC
 * stream, QMP, the guest channel, eventfds and (during a move) the migration stream, all of which
 * rchar/wchar count; read_bytes/write_bytes count only what reaches the block layer, which for a VM
 * is mostly its disk image. Caveats, so read it as "host storage traffic QEMU causes":
 * - QEMU's own host-side I/O counts too (loading firmware and ROMs at start, writing a snapshot);
 * - the host page cache hides reads: with the default cache mode (writeback, as the VM spec uses) a
 *   guest re-reading data the host has cached reads 0 here; `cache=none` (O_DIRECT) would make it exact;
 * - writes count when QEMU dirties page-cache pages, not when they reach the disk (writeback comes
 *   later), and dirtied pages later truncated are not subtracted (cancelled_write_bytes);
 * - on filesystems without block accounting (tmpfs, some network filesystems) it reads 0.
 * QMP `query-blockstats` counts the guest's own disk requests exactly; this sensor needs no QMP.
 * null when `elapsedMs` ≤ 0.
 */
export function diskBytesPerSFrom(prev: ProcIo, next: ProcIo, elapsedMs: number): number | null {
  if (!(elapsedMs > 0)) return null;
  const bytes = next.readBytes - prev.readBytes + (next.writeBytes - prev.writeBytes);
  return Math.max(0, bytes) / (elapsedMs / 1000);
}
