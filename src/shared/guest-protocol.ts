// The demo guest's control protocol, on its second serial port (host side: a unix socket).
//
// guest -> host: one JSON object per line, `type` says which (see GuestReportSchema).
// host -> guest: one command per line, plain words (see GuestCommand / formatGuestCommand); every
// command is answered with an `ack` whose `cmd` is ackName(command), and `ping` also with a `pong`.
//
// The guest side is guest/src/sbctl.c (commands, ready, ack, pong; the benchmarks' fill region),
// guest/src/sbmem.c and guest/src/sbdisk.c (heartbeats, violations), guest/src/crunch.c (crunch-done).
// Pure: no I/O, usable from any runtime.
import { z } from 'zod';

const count = z.number().int().nonnegative();
/** Guest uptime (CLOCK_BOOTTIME, as /proc/uptime) in ms: it only goes back if the guest rebooted. */
const uptime = count;

/** Once per boot, after the workloads were started. 0 means that workload was not started. */
export const ReadyReportSchema = z.object({
  type: z.literal('ready'),
  uptime_ms: uptime,
  mem_mib: count,
  disk_blocks: count,
});

/** About once a second. `pass`: passes completed since sbmem started; `violations`: cumulative. */
export const MemHeartbeatSchema = z.object({
  type: z.literal('mem-heartbeat'),
  uptime_ms: uptime,
  pass: count,
  mib: count,
  violations: count,
});

/** A page whose marker byte was not what the previous pass wrote (at most 16 lines per pass; all are counted). */
export const MemViolationSchema = z.object({
  type: z.literal('mem-violation'),
  uptime_ms: uptime,
  page: count,
  expected: count,
  found: count,
});

/**
 * About once a second. `pass`: the sequence number being written (it persists on the disk, so it
 * keeps growing across reboots); `verified`: blocks verified since sbdisk started; `violations`: cumulative.
 */
export const DiskHeartbeatSchema = z.object({
  type: z.literal('disk-heartbeat'),
  uptime_ms: uptime,
  pass: count,
  blocks: count,
  verified: count,
  violations: count,
});

export const DiskViolationReasonSchema = z.enum(['checksum', 'magic', 'index', 'sequence', 'io']);
export type DiskViolationReason = z.infer<typeof DiskViolationReasonSchema>;

/** A block that failed verification (at most 16 lines per pass; all are counted). */
export const DiskViolationSchema = z.object({
  type: z.literal('disk-violation'),
  uptime_ms: uptime,
  block: count,
  reason: DiskViolationReasonSchema,
});

/** The answer to every command. `cmd` is ackName(command); for an unknown command, the line itself. */
export const AckSchema = z.object({
  type: z.literal('ack'),
  cmd: z.string(),
  ok: z.boolean(),
  detail: z.string(),
});

export const PongSchema = z.object({
  type: z.literal('pong'),
  uptime_ms: uptime,
  /** Each workload: "running", "stopped", or why it last exited on its own. */
  mem: z.string().max(200).optional(),
  disk: z.string().max(200).optional(),
});

/** A workload that failed or exited on its own (source mem/disk), or the agent itself (ctl). */
export const GuestErrorSchema = z.object({
  type: z.literal('error'),
  source: z.enum(['mem', 'disk', 'ctl']),
  detail: z.string(),
});

/**
 * A crunch ended (written by crunch itself, through the control channel sbctl handed it). `pid` is the
 * one in the crunch's ack; `work` the units asked for (0: a timed crunch); `elapsed_ms` is guest
 * CLOCK_MONOTONIC time, which does not advance while the VM is paused (a migration's switchover).
 */
export const CrunchDoneSchema = z.object({
  type: z.literal('crunch-done'),
  uptime_ms: uptime,
  pid: count,
  work: count,
  iterations: count,
  elapsed_ms: count,
});

export const KnownGuestReportSchema = z.discriminatedUnion('type', [
  ReadyReportSchema,
  MemHeartbeatSchema,
  MemViolationSchema,
  DiskHeartbeatSchema,
  DiskViolationSchema,
  AckSchema,
  PongSchema,
  GuestErrorSchema,
  CrunchDoneSchema,
]);

export type KnownGuestReport = z.infer<typeof KnownGuestReportSchema>;
export type ReadyReport = z.infer<typeof ReadyReportSchema>;
export type MemHeartbeat = z.infer<typeof MemHeartbeatSchema>;
export type MemViolation = z.infer<typeof MemViolationSchema>;
export type DiskHeartbeat = z.infer<typeof DiskHeartbeatSchema>;
export type DiskViolation = z.infer<typeof DiskViolationSchema>;
export type GuestAck = z.infer<typeof AckSchema>;
export type GuestPong = z.infer<typeof PongSchema>;
export type GuestError = z.infer<typeof GuestErrorSchema>;
export type CrunchDone = z.infer<typeof CrunchDoneSchema>;

/** A line that is not a valid report: garbage, a line torn by a reconnect, or a newer guest's report. */
export interface UnparsedGuestLine {
  type: 'unparsed';
  line: string;
  /** Why it was not accepted, for logs. */
  error?: string;
}

/** What one line from the guest turns into. */
export type GuestReport = KnownGuestReport | UnparsedGuestLine;

const MAX_LINE = 64 * 1024;

/** Parses one line from the guest (with or without its line ending). Never throws. */
export function parseGuestLine(line: string): GuestReport {
  try {
    const text = line.trim();
    if (text.length === 0) return { type: 'unparsed', line, error: 'empty line' };
    if (text.length > MAX_LINE) return { type: 'unparsed', line, error: 'line too long' };
    const first = parseObject(text);
    if (first.ok) return first.report;
    // A line can start with junk: bytes left over from before the host (re)connected, or the
    // torn start of a line that was cut off. The last report-looking object in it may still be whole.
    const at = text.lastIndexOf('{"type":');
    if (at > 0) {
      const retry = parseObject(text.slice(at));
      if (retry.ok) return retry.report;
    }
    return { type: 'unparsed', line, error: first.error };
  } catch (err) {
    return { type: 'unparsed', line, error: err instanceof Error ? err.message : String(err) };
  }
}

function parseObject(text: string): { ok: true; report: KnownGuestReport } | { ok: false; error: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, error: 'not JSON' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { ok: false, error: 'not a JSON object' };
  const result = KnownGuestReportSchema.safeParse(value);
  if (result.success) return { ok: true, report: result.data };
  return { ok: false, error: result.error.issues.map((i) => `${i.path.join('.') || 'report'}: ${i.message}`).join('; ') };
}

// ---------------------------------------------------------------------------------------------
// host -> guest

/** Largest crunch the guest accepts. */
export const MAX_CRUNCH_SECONDS = 86_400;
/** Largest fixed-work crunch the guest accepts, in units (one unit: 4096 rounds of a 64-bit mix, see guest/src/crunch.c). */
export const MAX_CRUNCH_WORK = 1_000_000_000_000;

export type GuestCommand =
  /** Answered with a pong, then an ack. */
  | { type: 'ping' }
  /** Start sbmem; `mib` defaults to the last size (at boot: sb.mem, else 32). */
  | { type: 'mem-start'; mib?: number }
  | { type: 'mem-stop' }
  /** Start sbdisk; `blocks` defaults to the last size (at boot: sb.disk, else 4096). */
  | { type: 'disk-start'; blocks?: number }
  /** Stops sbdisk after the block in hand, so the on-disk state stays resumable. */
  | { type: 'disk-stop' }
  /** Test hook: flips one byte in sbmem's buffer; a mem-violation must follow within a pass. */
  | { type: 'corrupt-mem' }
  /** Runs `crunch SECONDS` on the VGA console (tty1), in the background; a `crunch-done` report follows when it ends. */
  | { type: 'crunch'; seconds: number; work?: never }
  /** Runs `crunch --work N` (a fixed amount of computation, however long it takes) likewise. */
  | { type: 'crunch'; work: number; seconds?: never }
  /**
   * Benchmarks: maps `mib` MiB in the control agent and fills it with non-zero data that stays put
   * (replacing an earlier fill); acked when done. Each page's bytes follow from its index and generation.
   */
  | { type: 'fill'; mib: number }
  /** Gives `percent` % of the fill's pages new data (a spread-out pseudo-random selection, the same pages for the same percent); acked when done. */
  | { type: 'fill-change'; percent: number }
  /** Regenerates every page of the fill and compares: the ack is ok only if all hold what was last written. */
  | { type: 'fill-check' }
  /** Acked first; then the guest stops sbdisk, syncs and powers off (QEMU exits). */
  | { type: 'poweroff' };

/** The `cmd` the guest's ack for this command carries. */
export function ackName(cmd: GuestCommand): string {
  switch (cmd.type) {
    case 'mem-start':
      return 'mem start';
    case 'mem-stop':
      return 'mem stop';
    case 'disk-start':
      return 'disk start';
    case 'disk-stop':
      return 'disk stop';
    case 'fill-change':
      return 'fill change';
    case 'fill-check':
      return 'fill check';
    default:
      return cmd.type;
  }
}

function positiveInt(what: string, n: number, max = Number.MAX_SAFE_INTEGER): string {
  if (!Number.isSafeInteger(n) || n < 1 || n > max) throw new RangeError(`${what} must be an integer from 1 to ${max}, got ${n}`);
  return String(n);
}

/** The line (without its newline) that sends `cmd`. Throws RangeError for an out-of-range number. */
export function formatGuestCommand(cmd: GuestCommand): string {
  switch (cmd.type) {
    case 'mem-start':
      return cmd.mib === undefined ? 'mem start' : `mem start ${positiveInt('mib', cmd.mib)}`;
    case 'disk-start':
      return cmd.blocks === undefined ? 'disk start' : `disk start ${positiveInt('blocks', cmd.blocks)}`;
    case 'fill':
      return `fill ${positiveInt('mib', cmd.mib, 1_048_575)}`;
    case 'fill-change':
      if (!Number.isSafeInteger(cmd.percent) || cmd.percent < 0 || cmd.percent > 100) throw new RangeError(`percent must be an integer from 0 to 100, got ${cmd.percent}`);
      return `fill change ${cmd.percent}`;
    case 'crunch':
      return cmd.work === undefined ? `crunch ${positiveInt('seconds', cmd.seconds, MAX_CRUNCH_SECONDS)}` : `crunch --work ${positiveInt('work', cmd.work, MAX_CRUNCH_WORK)}`;
    case 'ping':
    case 'mem-stop':
    case 'disk-stop':
    case 'corrupt-mem':
    case 'fill-check':
    case 'poweroff':
      return ackName(cmd);
  }
}

/** True for the ack that answers `cmd`. */
export function isAckFor(report: GuestReport, cmd: GuestCommand): report is GuestAck {
  return report.type === 'ack' && report.cmd === ackName(cmd);
}
