// One progress model for every view of a move (the CLI's bar, the app's panel): the agent's progress
// events folded into a view that only moves forward. Phases go in order (a late event of an earlier
// phase is dropped), bytes never fall, a phase's total never falls (a total that grows, as memory
// passes re-send what the guest dirtied, is flagged as growing), the rate comes from the bytes over
// a moving window, and an unknown total stays unknown. Pure: the browser imports it too.
import { MIGRATION_PHASES, type MigrationPhase, type MigrationProgress, type SiteRole } from './migration.ts';

/** The rate is the bytes sent over this much of the move (elapsed time). */
export const RATE_WINDOW_MS = 3000;

export interface ProgressView {
  migrationId: string;
  vm: string;
  from: SiteRole;
  to: SiteRole;
  phase: MigrationPhase;
  /** 1-based position of the phase, of `phaseCount`. */
  phaseNumber: number;
  phaseCount: number;
  elapsedMs: number;
  /** Bytes sent so far (disk and memory), never less than before. */
  bytes: number;
  /** What this phase will have sent in all, when known; never less than before within the phase. */
  total: number | undefined;
  /** The total went up during this phase (memory passes re-send pages the guest dirtied). */
  totalGrowing: boolean;
  /** Bytes/s over the last RATE_WINDOW_MS, or the agent's own figure until the window fills. */
  rate: number;
  etaSeconds: number | undefined;
  /** Recent (elapsed, bytes) points for the rate. */
  window: { atMs: number; bytes: number }[];
}

/** The view after `p`; `prev` is returned unchanged for an event that would move it backwards. */
export function nextProgressView(prev: ProgressView | undefined, p: MigrationProgress): ProgressView {
  const phaseIndex = MIGRATION_PHASES.indexOf(p.phase);
  const same = prev !== undefined && prev.migrationId === p.migrationId;
  if (same && (phaseIndex < prev.phaseNumber - 1 || p.elapsedMs < prev.elapsedMs)) return prev;
  const samePhase = same && phaseIndex === prev.phaseNumber - 1;
  const bytes = same ? Math.max(prev.bytes, p.bytes) : p.bytes;
  const reported = p.remainingBytes === undefined ? undefined : bytes + p.remainingBytes;
  const before = samePhase ? prev.total : undefined;
  const total = reported === undefined ? before : Math.max(before ?? 0, reported);
  const totalGrowing = samePhase && (prev.totalGrowing || (before !== undefined && total !== undefined && total > before));
  const window = [...(same ? prev.window : []), { atMs: p.elapsedMs, bytes }].filter((point) => point.atMs >= p.elapsedMs - RATE_WINDOW_MS);
  const first = window[0];
  const spanMs = first === undefined ? 0 : p.elapsedMs - first.atMs;
  const rate = spanMs >= RATE_WINDOW_MS / 3 && first !== undefined ? ((bytes - first.bytes) * 1000) / spanMs : p.rate;
  const left = total === undefined ? undefined : Math.max(0, total - bytes);
  return {
    migrationId: p.migrationId,
    vm: p.vm,
    from: p.from,
    to: p.to,
    phase: p.phase,
    phaseNumber: phaseIndex + 1,
    phaseCount: MIGRATION_PHASES.length,
    elapsedMs: p.elapsedMs,
    bytes,
    total,
    totalGrowing,
    rate,
    etaSeconds: left !== undefined && rate > 0 ? left / rate : undefined,
    window,
  };
}
