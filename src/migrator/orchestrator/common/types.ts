// The migration's phases, progress events, result record and errors. Pure.
import type { MigrationInfo } from '../../qmp/common/types.ts';
import type { DiskSyncMode } from '../../layers/common/planner.ts';

/**
 * `auto` is the default towards the core: pre-copy while it converges, then auto-converge where
 * throttling is safe, then post-copy (unless `allowPostcopy` is false); see convergence.ts.
 */
export type MemoryStrategy = 'auto' | 'precopy' | 'hybrid' | 'postcopy';

export interface MigrationOptions {
  strategy: MemoryStrategy;
  /**
   * Cap in bytes/s for each stream: QEMU's max-bandwidth (and max-postcopy-bandwidth) for memory,
   * the mirror job's speed for the disk's background copy. Undefined = unlimited.
   */
  maxBandwidth?: number;
  /** QEMU's downtime-limit in ms. Default 300. */
  downtimeLimitMs?: number;
  /** hybrid: complete dirty-sync passes before switching to post-copy. Default 1 (the bulk pass). */
  hybridPrecopyPasses?: number;
  /**
   * pre-copy under TCG (no auto-converge, see docs/migration.md): how far the convergence watch may
   * raise downtime-limit when the migration stalls. Default 4 × downtimeLimitMs.
   */
  downtimeCeilingMs?: number;
  /**
   * QEMU's XBZRLE for the dirty pages of later pre-copy passes (a delta against the page as sent
   * before). Default true; see docs/migration.md for why it stays on with dedup.
   */
  xbzrle?: boolean;
  /** auto: whether post-copy may finish a move that pre-copy cannot. Default true. */
  allowPostcopy?: boolean;
}

/** QMP query-migrate as QEMU 7.2 answers it (fields omitted by state). */
export type QemuMigrationStats = MigrationInfo;

export type MigrationPhase = 'plan' | 'prepare' | 'disk' | 'memory' | 'switchover' | 'commit';
export const PHASES: readonly MigrationPhase[] = ['plan', 'prepare', 'disk', 'memory', 'switchover', 'commit'];

const PHASE_WORDS: Record<MigrationPhase, string> = {
  plan: 'planning',
  prepare: 'preparing the destination',
  disk: 'disk sync',
  memory: 'memory transfer',
  switchover: 'switchover',
  commit: 'commit',
};

export function phaseWords(phase: MigrationPhase): string {
  return PHASE_WORDS[phase];
}

/**
 * What became of the VM when a migration failed:
 * - `rolled-back`: it runs at the source as before; the destination was torn down.
 * - `rolled-back-destination-unconfirmed`: it runs at the source; the destination did not confirm
 *   its teardown (unreachable): its leftovers go when it recovers or is asked again.
 * - `source-paused-in-doubt`: the destination may have resumed the guest and could not be reached to
 *   stop it, so the source stays paused (never both running). Run recovery when the peer is back.
 * - `source-lost`: the source QEMU died before the destination had the whole state; the VM is
 *   stopped, its disk intact at the source (boot it again).
 * - `postcopy-unfinished`: QEMU had switched to post-copy (the guest's memory is split between the
 *   sites) and the switch could not be finished: the destination did not resume the guest, or the
 *   stream could not be recovered. QEMU 7.2 cannot return a source that entered post-copy to
 *   running, so nothing is rolled back: the source QEMU and the journal are kept and
 *   recoverMigration finishes the move once the destination is reachable. If the destination QEMU
 *   is gone the VM is lost and must be booted again from its disk.
 */
export type FailureOutcome =
  | 'rolled-back'
  | 'rolled-back-destination-unconfirmed'
  | 'source-paused-in-doubt'
  | 'source-lost'
  | 'postcopy-unfinished';

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  readonly phase: MigrationPhase;
  readonly migrationId: string;
  readonly vm: string;
  readonly outcome: FailureOutcome;

  constructor(init: { phase: MigrationPhase; migrationId: string; vm: string; outcome: FailureOutcome; detail: string; cause?: unknown }) {
    super(`migration of VM "${init.vm}" failed during ${phaseWords(init.phase)}: ${init.detail} ${outcomeAdvice(init.outcome)}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.phase = init.phase;
    this.migrationId = init.migrationId;
    this.vm = init.vm;
    this.outcome = init.outcome;
  }
}

function outcomeAdvice(outcome: FailureOutcome): string {
  switch (outcome) {
    case 'rolled-back':
      return 'The VM keeps running here, untouched, and the destination was cleaned up; fix the cause and try again.';
    case 'rolled-back-destination-unconfirmed':
      return 'The VM keeps running here, untouched; the destination could not confirm its cleanup and will remove its leftovers when it is reachable again.';
    case 'source-paused-in-doubt':
      return 'The VM is paused here because the destination could not be reached to learn whether it resumed the guest; run recovery (recoverMigration) once the peer is reachable.';
    case 'source-lost':
      return "The VM's QEMU at this site exited, so the VM is stopped; its disk is intact here: start it again.";
    case 'postcopy-unfinished':
      return "Post-copy had started, so the move can only go forward: the source QEMU and the journal are kept; run recovery (recoverMigration) once the destination is reachable. If the destination's QEMU is gone, the VM is lost and must be started again from its disk.";
  }
}

/** Sent about every 250 ms while a migration runs, and at every phase change. */
export interface MigrationProgress {
  migrationId: string;
  vm: string;
  phase: MigrationPhase;
  elapsedMs: number;
  phaseElapsedMs: number;
  /** Bytes sent so far: disk (mirror job) and memory (QEMU's RAM counters). */
  bytes: { disk: number; memory: number };
  /** Current rate of the active stream, bytes/s. */
  rateBytesPerSec: number;
  /** Bytes left in the active stream's current pass (disk: job len - offset; memory: QEMU's remaining); null when unknown. */
  remainingBytes: number | null;
  /** remaining / rate; null when unknown. Memory passes re-dirty pages, so it is a lower bound. */
  etaMs: number | null;
  memory?: { status: string; pass: number; expectedDowntimeMs: number | undefined; dirtyPagesRate: number; postcopy: boolean; autoConverge: boolean; cpuThrottlePercent: number };
  message?: string;
}

export interface MigrationResult {
  migrationId: string;
  vm: string;
  /** Site labels given by the caller (e.g. edge → core). */
  from: string | undefined;
  to: string | undefined;
  startedAt: string;
  finishedAt: string;
  totalMs: number;
  strategy: {
    requested: MemoryStrategy;
    /** `postcopy` if QEMU switched to post-copy, else `precopy`. */
    used: 'precopy' | 'postcopy';
    /** Whether the watch made auto-converge throttle the guest (KVM only). */
    autoConverge: boolean;
    /** The downtime-limit in force at the end (raised by the watch when pre-copy stalled under TCG). */
    downtimeLimitMs: number;
    /** Dirty-sync pass at which post-copy started, if it did. */
    postcopyAtPass: number | undefined;
    /** Why the convergence watch acted, if it did. */
    decisions: string[];
    /** Why the memory moved the way it did, in one line (the CLI and the app show it). */
    reason: string;
    /**
     * Post-copy's risk window: how long the guest ran at the destination while some of its pages
     * were still only at the source (a source lost then loses the VM). Undefined without post-copy.
     */
    postcopyMs: number | undefined;
  };
  disk: {
    mode: DiskSyncMode;
    backingLayer: string | null;
    /** The id the source's top was frozen under. */
    layerId: string;
    /** The id of the layer the destination made of what it received. */
    receivedLayerId: string;
    chainAfter: string[];
    compaction: string[];
  };
  phasesMs: Record<MigrationPhase, number>;
  downtime: {
    /** QEMU's own figure (query-migrate `downtime`). */
    qemuMs: number | undefined;
    /** From the source's STOP event to the destination's answer that the guest runs, as seen here. */
    observedMs: number;
  };
  bytes: {
    disk: { sync: number; duringMemory: number; total: number };
    memory: { precopy: number; downtime: number; postcopy: number; total: number; xbzrle: number };
    perPhase: Record<MigrationPhase, number>;
    /** Bytes that crossed the link per stream, when the transport counts them. */
    wire: { disk: number; memory: number } | undefined;
  };
  /** QEMU's final query-migrate at the source. */
  qemu: QemuMigrationStats;
  /** Things that went wrong after the point of no return, without undoing the migration. */
  warnings: string[];
}

export interface MigrationTimeouts {
  /** Each call to the destination (plan, prepare, switchover, commit, abort). */
  destinationCallMs: number;
  /** Disk sync: fail if the mirror makes no progress for this long. */
  diskStallMs: number;
  /** Memory: fail if QEMU transfers nothing for this long. */
  memoryStallMs: number;
  /** Memory: fail if the migration has not reached the switchover point after this long. */
  memoryTotalMs: number;
  /** Post-copy: how long to keep trying to recover a broken stream after switchover. */
  postcopyRecoveryMs: number;
}

export const DEFAULT_TIMEOUTS: MigrationTimeouts = {
  destinationCallMs: 60_000,
  diskStallMs: 60_000,
  memoryStallMs: 60_000,
  memoryTotalMs: 30 * 60_000,
  postcopyRecoveryMs: 120_000,
};

export const DEFAULT_DOWNTIME_LIMIT_MS = 300;
/** QEMU 7.2 defaults max-bandwidth to 32 MiB/s; "unlimited" has to be said explicitly. */
export const UNLIMITED_BANDWIDTH = 1024 * 1024 * 1024 * 1024;
export const DEFAULT_MAX_CHAIN_DEPTH = 4;
