// The convergence watch: given the query-migrate samples of a running migration, decide whether to
// keep waiting, switch to post-copy or throttle the guest (auto-converge). Pure, so it is tested on
// recorded samples.
import type { MemoryStrategy, QemuMigrationStats } from './types.ts';

export interface MigrationSample {
  atMs: number;
  status: string;
  /** QEMU's dirty-sync-count: 1 during the first (bulk) pass, +1 at every later pass. */
  dirtySyncCount: number;
  /** Bytes still dirty in the current pass. */
  remaining: number;
  transferred: number;
  expectedDowntimeMs: number | undefined;
  dirtyPagesRate: number;
  /** Current transfer rate in Mbit/s. */
  mbps: number;
}

export function sampleOf(info: QemuMigrationStats, atMs: number): MigrationSample | undefined {
  if (info.status === undefined || info.ram === undefined) return undefined;
  return {
    atMs,
    status: info.status,
    dirtySyncCount: info.ram['dirty-sync-count'],
    remaining: info.ram.remaining,
    transferred: info.ram.transferred,
    expectedDowntimeMs: info['expected-downtime'],
    dirtyPagesRate: info.ram['dirty-pages-rate'],
    mbps: info.ram.mbps,
  };
}

export interface ConvergenceConfig {
  strategy: MemoryStrategy;
  downtimeLimitMs: number;
  /**
   * Whether auto-converge (vCPU throttling) may be used. KVM only: under TCG a throttled 32 MiB
   * working set did not converge at 5 MiB/s within 9 minutes (see docs/migration.md).
   */
  throttleAvailable: boolean;
  /** Without throttling, a stalled pre-copy may raise downtime-limit up to this. */
  downtimeCeilingMs: number;
  /** hybrid: switch to post-copy once this many passes are complete. */
  hybridPrecopyPasses: number;
  /** Do not judge convergence before this pass (the first passes move the bulk). */
  judgeFromPass: number;
  /** Compare the dirty set now with the one this many passes ago... */
  stallPasses: number;
  /** ...and call it stalled unless it shrank by at least this fraction. */
  minShrink: number;
  /** Stop waiting after this many passes whatever the trend; pre-copy gives up here once it has no lever left. */
  maxPasses: number;
  /**
   * auto: whether post-copy may be its last lever (the user can forbid it; then a move that cannot
   * converge throttles, accepts a longer pause, or gives up).
   */
  postcopyAllowed: boolean;
  /** auto: the guest dirtying at least this fraction of what the stream carries cannot converge. */
  autoMaxDirtyRatio: number;
}

export const DEFAULT_CONVERGENCE: Omit<ConvergenceConfig, 'strategy' | 'downtimeLimitMs' | 'throttleAvailable' | 'downtimeCeilingMs'> = {
  hybridPrecopyPasses: 1,
  judgeFromPass: 4,
  stallPasses: 2,
  minShrink: 0.2,
  maxPasses: 30,
  postcopyAllowed: true,
  autoMaxDirtyRatio: 0.8,
};

export interface ConvergenceState {
  postcopyStarted: boolean;
  autoConverge: boolean;
  /** The pass at which auto-converge was made to bite: it gets `stallPasses` passes to work. */
  autoConvergeAtPass?: number;
  /** The downtime-limit in force now (it may have been raised). */
  downtimeLimitMs: number;
}

export type ConvergenceAction =
  | { kind: 'wait' }
  | { kind: 'start-postcopy'; reason: string }
  | { kind: 'enable-auto-converge'; reason: string }
  | { kind: 'raise-downtime-limit'; toMs: number; reason: string }
  /** Pre-copy cannot converge and nothing is left to try: abort (the VM stays at the source). */
  | { kind: 'give-up'; reason: string };

/** The expected downtime QEMU reports, or remaining / rate when it does not say. */
export function expectedDowntime(sample: MigrationSample): number | undefined {
  if (sample.expectedDowntimeMs !== undefined) return sample.expectedDowntimeMs;
  const bytesPerMs = sample.mbps * 125;
  return bytesPerMs > 0 ? sample.remaining / bytesPerMs : undefined;
}

/** The dirty set at the start of each pass: the largest `remaining` seen during that pass. */
export function dirtySetByPass(samples: readonly MigrationSample[]): Map<number, number> {
  const byPass = new Map<number, number>();
  for (const s of samples) {
    if (s.status !== 'active') continue;
    byPass.set(s.dirtySyncCount, Math.max(byPass.get(s.dirtySyncCount) ?? 0, s.remaining));
  }
  return byPass;
}

export function convergenceDecision(samples: readonly MigrationSample[], config: ConvergenceConfig, state: ConvergenceState): ConvergenceAction {
  const last = samples.at(-1);
  if (last === undefined || last.status !== 'active' || state.postcopyStarted) return { kind: 'wait' };
  const pass = last.dirtySyncCount;
  if (config.strategy === 'postcopy') {
    return { kind: 'start-postcopy', reason: 'post-copy strategy: switching as soon as the migration is under way' };
  }
  if (config.strategy === 'hybrid' && pass >= 1 + config.hybridPrecopyPasses) {
    return { kind: 'start-postcopy', reason: `hybrid strategy: ${config.hybridPrecopyPasses} pre-copy pass(es) done, switching to post-copy for a fast resume` };
  }
  if (config.strategy === 'auto') return autoDecision(samples, config, state);
  if (pass < config.judgeFromPass) return { kind: 'wait' };
  const expected = expectedDowntime(last);
  if (expected !== undefined && expected <= state.downtimeLimitMs) return { kind: 'wait' };

  const byPass = dirtySetByPass(samples);
  const now = byPass.get(pass);
  let before: number | undefined;
  for (let p = pass - config.stallPasses; p >= 1 && before === undefined; p--) before = byPass.get(p);
  const stalled = now !== undefined && before !== undefined && now > before * (1 - config.minShrink);
  const tooLong = pass >= config.maxPasses;
  if (!stalled && !tooLong) return { kind: 'wait' };
  const why = tooLong
    ? `still ${fmtBytes(last.remaining)} dirty after ${pass} passes`
    : `the dirty set is not shrinking (${fmtBytes(before ?? 0)} → ${fmtBytes(now ?? 0)} over ${config.stallPasses} passes)`;
  const reason = `${why}; expected downtime ${expected === undefined ? 'unknown' : `${Math.round(expected)} ms`} > limit ${state.downtimeLimitMs} ms`;
  if (config.strategy !== 'precopy') return { kind: 'start-postcopy', reason };
  const leversLeft = config.throttleAvailable ? !state.autoConverge : state.downtimeLimitMs < config.downtimeCeilingMs;
  if (!leversLeft) {
    if (!tooLong) return { kind: 'wait' };
    const rates = last.dirtyPagesRate > 0 ? `: the guest dirties ${fmtBytes(last.dirtyPagesRate * 4096)}/s, the stream carries ${fmtBytes(last.mbps * 125_000)}/s` : '';
    return { kind: 'give-up', reason: `pre-copy cannot converge (${reason}${rates}); move it with --strategy hybrid or postcopy, or allow more --bandwidth or --downtime` };
  }
  if (config.throttleAvailable) return { kind: 'enable-auto-converge', reason };
  // No throttling (TCG): accept a longer pause, step by step, up to the ceiling.
  const toMs = Math.min(config.downtimeCeilingMs, Math.max(state.downtimeLimitMs * 2, Math.ceil((expected ?? 0) * 1.25)));
  return { kind: 'raise-downtime-limit', toMs, reason: `${reason}; throttling is unavailable under TCG` };
}

/**
 * What the guest dirties and what the stream carries, in bytes/s: QEMU's dirty rate, and the bytes
 * sent since the migration started, dirty syncs included (QEMU's own mbps is a moment's figure: 0
 * during a sync, which takes seconds under TCG with the RAM pad), or its mbps when the samples span
 * too little.
 */
export function rates(samples: readonly MigrationSample[]): { dirty: number; stream: number } {
  const last = samples.at(-1);
  const first = samples[0];
  if (last === undefined || first === undefined) return { dirty: 0, stream: 0 };
  const spanMs = last.atMs - first.atMs;
  const stream = spanMs >= 500 ? ((last.transferred - first.transferred) * 1000) / spanMs : last.mbps * 125_000;
  return { dirty: last.dirtyPagesRate * PAGE_BYTES, stream };
}

const PAGE_BYTES = 4096;

/**
 * The default towards the core: pre-copy while it converges, judged from the first pass on (the
 * guest's dirty rate against the stream's rate, and whether the dirty set shrinks from one pass to
 * the next); else auto-converge where throttling is safe; else post-copy (unless forbidden); else,
 * under TCG, a longer pause up to the ceiling; else give up.
 */
function autoDecision(samples: readonly MigrationSample[], config: ConvergenceConfig, state: ConvergenceState): ConvergenceAction {
  const last = samples.at(-1);
  if (last === undefined) return { kind: 'wait' };
  const pass = last.dirtySyncCount;
  if (pass < 2) return { kind: 'wait' };
  const expected = expectedDowntime(last);
  if (expected !== undefined && expected <= state.downtimeLimitMs) return { kind: 'wait' };
  if (state.autoConverge && pass < (state.autoConvergeAtPass ?? 0) + config.stallPasses) return { kind: 'wait' };

  const { dirty, stream } = rates(samples);
  const byPass = dirtySetByPass(samples);
  const now = byPass.get(pass);
  const before = byPass.get(pass - 1);
  const outpaced = dirty > 0 && stream > 0 && dirty >= stream * config.autoMaxDirtyRatio;
  const stalled = pass >= 3 && now !== undefined && before !== undefined && now > before * (1 - config.minShrink);
  const tooLong = pass >= config.maxPasses;
  if (!outpaced && !stalled && !tooLong) return { kind: 'wait' };

  const figures = dirty > 0 && stream > 0 ? `the guest dirties ${fmtBytes(dirty)}/s, the stream carries ${fmtBytes(stream)}/s` : `the dirty set is not shrinking (${fmtBytes(before ?? 0)} → ${fmtBytes(now ?? 0)})`;
  const why = `${figures}; ${last.remaining > 0 ? `${fmtBytes(last.remaining)} dirty, ` : ''}expected downtime ${expected === undefined ? 'unknown' : `${Math.round(expected)} ms`} > limit ${state.downtimeLimitMs} ms`;
  if (config.throttleAvailable && !state.autoConverge) return { kind: 'enable-auto-converge', reason: `pre-copy cannot converge as it is (${why}): throttling the guest` };
  if (config.postcopyAllowed) {
    const seconds = stream > 0 ? ` for ~${(last.remaining / stream).toFixed(1)} s` : '';
    return { kind: 'start-postcopy', reason: `pre-copy cannot converge (${why}): post-copy${seconds}` };
  }
  if (!config.throttleAvailable && state.downtimeLimitMs < config.downtimeCeilingMs) {
    const toMs = Math.min(config.downtimeCeilingMs, Math.max(state.downtimeLimitMs * 2, Math.ceil((expected ?? 0) * 1.25)));
    return { kind: 'raise-downtime-limit', toMs, reason: `${why}; post-copy is off in the settings and throttling is unavailable under TCG` };
  }
  if (!tooLong) return { kind: 'wait' };
  return { kind: 'give-up', reason: `pre-copy cannot converge (${why}) and post-copy towards this site is off in the settings (migration.postcopyToCore); allow it, or allow more --bandwidth or --downtime` };
}

function fmtBytes(n: number): string {
  return n >= 1024 * 1024 ? `${(n / (1024 * 1024)).toFixed(1)} MiB` : `${Math.round(n / 1024)} KiB`;
}
