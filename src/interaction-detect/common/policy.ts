// The placement policy: a reducer over interaction samples. `step(state, sample, context)` returns the
// next state and one decision (stay or migrate, with its reasons in plain words and its figures).
// Pure: the clock is the samples' time, so a recorded trace replays to the same decisions. The rules
// and their formulas are described in src/interaction-detect/README.md.
import type {
  DecisionRule,
  MigrateDecision,
  InteractionSample,
  PastMigration,
  Phase,
  PlacementDecision,
  PlacementMode,
  PolicyParams,
} from '../../shared/placement.ts';
import type { SiteRole } from '../../shared/migration.ts';
import { assessWindow, type IntensityAssessment } from './intensity.ts';

type Strategy = MigrateDecision['strategy'];

/** A phase that has held (confidently) since `since`, last seen at `lastSeen`. */
export interface Episode {
  since: number;
  lastSeen: number;
}

/** A move the policy ordered (automatic or for a pin), kept for the rate limit. */
export interface OrderedMove {
  at: number;
  to: SiteRole;
  by: 'policy' | 'pin';
}

export interface PolicyState {
  /** Recent samples, ascending: the longest window, plus the sample before it. */
  samples: readonly InteractionSample[];
  lastAt: number | null;
  site: SiteRole | null;
  migrating: boolean;
  /** The latest phase judgement (for the model's hysteresis). */
  phase: Phase | null;
  crunch: Episode | null;
  interactive: Episode | null;
  /** When the VM last came to rest: a move ended (committed or not), or an ordered move was given up. */
  settledAt: number | null;
  /** Moves ordered within the rate window. */
  moves: readonly OrderedMove[];
  /** A move ordered and not finished yet; `started` once a sample showed the migration running. */
  pending: { to: SiteRole; at: number; started: boolean } | null;
  /** The placement mode of the previous sample. */
  mode: PlacementMode | null;
  /** The VM was moved by hand away from the pinned site after the pin was set: the pin does not undo it. */
  pinOverridden: boolean;
}

export function initialPolicyState(): PolicyState {
  return {
    samples: [],
    lastAt: null,
    site: null,
    migrating: false,
    phase: null,
    crunch: null,
    interactive: null,
    settledAt: null,
    moves: [],
    pending: null,
    mode: null,
    pinOverridden: false,
  };
}

export interface PolicyContext {
  params: PolicyParams;
  /** This VM's past migrations (only those started before a sample count for it). */
  pastMigrations: readonly PastMigration[];
  /** Overrides the samples' own `mode` (replaying "what if it had been pinned"). */
  mode?: PlacementMode;
}

export interface PolicyStep {
  state: PolicyState;
  decision: PlacementDecision;
  /** The intensity model's view of the window; null for an ignored sample. */
  assessment: IntensityAssessment | null;
}

// ---------------------------------------------------------------------------------------------------
// Words and numbers

const round3 = (x: number): number => Math.round(x * 1000) / 1000;
/** Seconds, one decimal below 100 s. */
export function fmtS(ms: number): string {
  const s = ms / 1000;
  return `${Math.abs(s) < 100 ? s.toFixed(1) : Math.round(s).toString()} s`;
}
function fmtRate(bytesPerS: number): string {
  const mb = bytesPerS / 1e6;
  return `${mb < 100 ? Number(mb.toFixed(1)).toString() : Math.round(mb).toString()} MB/s`;
}
const fmt2 = (x: number): string => x.toFixed(2);
const fmtX = (x: number): string => Number(x.toFixed(2)).toString();
const pct = (x: number): string => `${Math.round(x * 100)} %`;
const siteWords = (site: SiteRole): string => (site === 'core' ? 'the core' : 'the edge');

// ---------------------------------------------------------------------------------------------------
// Cost model

export interface MoveEstimate {
  ms: number;
  /** Where the figure comes from, in words. */
  basis: string;
  source: 'history' | 'model';
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const hi = sorted[mid] ?? 0;
  return sorted.length % 2 === 1 ? hi : ((sorted[mid - 1] ?? hi) + hi) / 2;
}

/**
 * How long a move to `to` would take now.
 *
 * From history, when this VM has moved that way before: the median wall time of the latest
 * `historyLimit` committed moves (the median, because one move that waited on a slow disk sync should
 * not set the price of all the others). A past move whose average rate (bytes / wall time) exceeds
 * the link's bandwidth now is scaled up by that ratio: the same bytes take longer on a slower link.
 *
 * Otherwise from a model: setupMs + memory / bandwidth × f, where f = 1 / (1 − dirty / bandwidth) is
 * pre-copy's geometric series (each pass resends what the last one dirtied), capped at 2: past half
 * the link, the hybrid strategy switches to post-copy after one pass, which sends everything at most
 * about twice. An unknown dirty rate takes that worst case (2); an unknown link takes
 * `assumedLinkBytesPerS`. Disk layers are left out: only what changed since the last sync travels.
 */
export function estimateMoveMs(
  to: SiteRole,
  sample: InteractionSample,
  past: readonly PastMigration[],
  params: PolicyParams,
): MoveEstimate {
  const link = sample.linkBytesPerS;
  const relevant = past
    .filter((m) => m.to === to && m.at <= sample.at)
    .sort((a, b) => b.at - a.at || a.totalMs - b.totalMs)
    .slice(0, params.historyLimit);
  if (relevant.length > 0) {
    let slowest = 1;
    const times = relevant.map((m) => {
      const rate = m.totalMs > 0 ? m.bytes / (m.totalMs / 1000) : 0;
      const factor = link !== null && rate > link ? rate / link : 1;
      slowest = Math.max(slowest, factor);
      return m.totalMs * factor;
    });
    const ms = median(times);
    const moves = relevant.length === 1 ? 'the last move' : `median of the last ${relevant.length} moves`;
    const scaled = slowest > 1 ? `, scaled up to ×${fmt2(slowest)} for a slower link now (${fmtRate(link ?? 0)})` : '';
    return { ms, basis: `${moves} to ${siteWords(to)}${scaled}`, source: 'history' };
  }
  const bandwidth = link ?? params.assumedLinkBytesPerS;
  const memory = sample.memoryMiB * 1024 * 1024;
  const dirty = sample.dirtyBytesPerS;
  const ratio = dirty === null ? 1 : dirty / bandwidth;
  const factor = ratio >= 0.5 ? 2 : 1 / (1 - ratio);
  const ms = params.setupMs + (memory / bandwidth) * factor * 1000;
  const linkWords = link === null ? `an assumed ${fmtRate(bandwidth)}` : fmtRate(bandwidth);
  const dirtyWords = dirty === null ? 'dirty rate unknown: worst case ×2' : `dirty ${fmtRate(dirty)}: ×${fmt2(factor)}`;
  return {
    ms,
    basis: `model: ${sample.memoryMiB} MiB over ${linkWords}, ${dirtyWords}, + ${fmtS(params.setupMs)} setup`,
    source: 'model',
  };
}

/**
 * To the core: the default (auto), as the Send to cloud button and `snowbird migrate` use it: the
 * move itself measures whether pre-copy converges and otherwise finishes in post-copy.
 */
function strategyToCore(sample: InteractionSample, params: PolicyParams): { strategy: Strategy; why: string } {
  const link = sample.linkBytesPerS ?? params.assumedLinkBytesPerS;
  const dirty = sample.dirtyBytesPerS;
  const expectation = dirty === null
    ? 'pre-copy while it converges, else post-copy, judged during the move'
    : dirty >= link / 2
      ? `the guest dirties ${fmtRate(dirty)}, over half the link's ${fmtRate(link)}: expect post-copy`
      : `the guest dirties ${fmtRate(dirty)}, the link carries ${fmtRate(link)}: expect pre-copy to converge`;
  return { strategy: 'auto', why: `strategy auto: ${expectation}` };
}

const HYBRID_BACK = 'strategy hybrid: it runs at the edge again after one pre-copy pass (fast time-to-interactive)';

// ---------------------------------------------------------------------------------------------------
// The reducer

/** What the automatic policy would do; pins are applied on top. */
interface Verdict {
  rule: DecisionRule;
  reasons: string[];
  figures: Record<string, number>;
  move?: { to: SiteRole; strategy: Strategy };
}

const PHASE_WORDS: Record<Phase, string> = { interactive: 'interactive', crunch: 'crunching', idle: 'idle' };

function phaseLine(a: IntensityAssessment): string {
  const interaction = a.interaction === null ? 'input unknown' : `input ${pct(a.interaction)} of the time`;
  return `${PHASE_WORDS[a.phase]} (intensity ${fmt2(a.intensity)}, ${interaction}, confidence ${fmt2(a.confidence)})`;
}

/** Names the sensors whose gaps cost confidence. */
function uncertainLine(a: IntensityAssessment, minConfidence: number): string {
  const f = a.features;
  const missing = (['input', 'cpu', 'gpu', 'display'] as const).filter((k) => f.coverage[k] < 0.5);
  const why =
    f.coveredMs < f.windowMs / 2
      ? `; only ${fmtS(f.coveredMs)} of the last ${fmtS(f.windowMs)} observed`
      : missing.length > 0
        ? `; little or no data from: ${missing.join(', ')}`
        : '; the figures sit near the thresholds';
  return `phase unclear: ${phaseLine(a)} is below the ${fmt2(minConfidence)} needed to act${why}`;
}

function holdBack(
  wanted: Verdict & { move: { to: SiteRole; strategy: Strategy } },
  state: { settledAt: number | null; moves: readonly OrderedMove[] },
  now: number,
  params: PolicyParams,
): Verdict {
  const { to } = wanted.move;
  const figures = { ...wanted.figures };
  if (state.settledAt !== null && now - state.settledAt < params.minDwellMs) {
    const restedMs = now - state.settledAt;
    figures.restedS = round3(restedMs / 1000);
    figures.minDwellS = round3(params.minDwellMs / 1000);
    return {
      rule: 'dwell',
      reasons: [
        `would move to ${siteWords(to)}, but the VM came to rest ${fmtS(restedMs)} ago; it stays at least ${fmtS(params.minDwellMs)} (${fmtS(params.minDwellMs - restedMs)} to go)`,
        ...wanted.reasons,
      ],
      figures,
    };
  }
  // A move to the core implies a move back: it needs room for both in the window.
  const needed = to === 'core' ? 2 : 1;
  const recent = state.moves.length;
  if (recent + needed > params.maxMoves) {
    figures.recentMoves = recent;
    figures.maxMoves = params.maxMoves;
    const roomWords = to === 'core' ? ' (a move to the core keeps room for its way back)' : '';
    return {
      rule: 'rate-limit',
      reasons: [
        `would move to ${siteWords(to)}, but ${recent} moves in the last ${fmtS(params.rateWindowMs)} already, of at most ${params.maxMoves}${roomWords}`,
        ...wanted.reasons,
      ],
      figures,
    };
  }
  return wanted;
}

function atEdge(
  sample: InteractionSample,
  a: IntensityAssessment,
  crunch: Episode | null,
  ctx: PolicyContext,
  base: Record<string, number>,
): Verdict {
  const p = ctx.params;
  const now = sample.at;
  const confident = a.confidence >= p.minConfidence;
  if (!confident) return { rule: 'uncertain', reasons: [uncertainLine(a, p.minConfidence)], figures: base };
  if (a.phase !== 'crunch' || crunch === null) {
    const paused = crunch !== null ? `; a crunch of ${fmtS(crunch.lastSeen - crunch.since)} paused ${fmtS(now - crunch.lastSeen)} ago` : '';
    return { rule: 'steady', reasons: [`${phaseLine(a)} at the edge: it stays${paused}`], figures: base };
  }
  const ageMs = now - crunch.since;
  const figures: Record<string, number> = { ...base, crunchS: round3(ageMs / 1000) };
  if (ageMs < p.minCrunchMs) {
    figures.minCrunchS = round3(p.minCrunchMs / 1000);
    return {
      rule: 'not-sustained',
      reasons: [`crunch for ${fmtS(ageMs)}, not yet the ${fmtS(p.minCrunchMs)} that make it sustained`, phaseLine(a)],
      figures,
    };
  }
  const remainingMs = Math.min(p.lindyFactor * ageMs, p.maxRemainingMs);
  const gainMs = remainingMs * (1 - 1 / p.coreSpeedup);
  const there = estimateMoveMs('core', sample, ctx.pastMigrations, p);
  const back = estimateMoveMs('edge', sample, ctx.pastMigrations, p);
  const roundTripMs = there.ms + back.ms;
  const neededMs = roundTripMs * p.costMargin;
  Object.assign(figures, {
    remainingS: round3(remainingMs / 1000),
    coreSpeedup: p.coreSpeedup,
    gainS: round3(gainMs / 1000),
    toCoreS: round3(there.ms / 1000),
    toEdgeS: round3(back.ms / 1000),
    roundTripS: round3(roundTripMs / 1000),
    costMargin: p.costMargin,
    neededS: round3(neededMs / 1000),
  });
  const reasons = [
    `crunch for ${fmtS(ageMs)} (intensity ${fmt2(a.intensity)}, confidence ${fmt2(a.confidence)})`,
    `expected ${fmtS(remainingMs)} more (Lindy estimate: a crunch that has lasted ${fmtS(ageMs)} is likely to last about ${p.lindyFactor === 1 ? '' : `×${fmtX(p.lindyFactor)} `}as long again)`,
    `×${fmtX(p.coreSpeedup)} core speedup saves ${fmtS(gainMs)} ${gainMs > neededMs ? '>' : '≤'} estimated round trip ${fmtS(roundTripMs)} × ${fmtX(p.costMargin)} = ${fmtS(neededMs)}`,
    `to the core ${fmtS(there.ms)} (${there.basis}); back ${fmtS(back.ms)} (${back.basis})`,
  ];
  if (gainMs <= neededMs) return { rule: 'not-worth-it', reasons, figures };
  const { strategy, why } = strategyToCore(sample, p);
  return { rule: 'crunch', reasons: [...reasons, why], figures, move: { to: 'core', strategy } };
}

function atCore(
  sample: InteractionSample,
  a: IntensityAssessment,
  interactive: Episode | null,
  ctx: PolicyContext,
  base: Record<string, number>,
): Verdict {
  const p = ctx.params;
  const now = sample.at;
  if (a.confidence < p.minConfidence) return { rule: 'uncertain', reasons: [uncertainLine(a, p.minConfidence)], figures: base };
  if (a.phase !== 'interactive' || interactive === null) {
    const tail = a.phase === 'crunch' ? 'it stays' : 'it stays (it comes back when the user interacts)';
    return { rule: 'steady', reasons: [`${phaseLine(a)} at the core: ${tail}`], figures: base };
  }
  const ageMs = now - interactive.since;
  const figures: Record<string, number> = { ...base, interactionS: round3(ageMs / 1000) };
  const line = `interaction for ${fmtS(ageMs)} (input in ${pct(a.interaction ?? 0)} of the last ${fmtS(p.intensity.windowMs)}, confidence ${fmt2(a.confidence)})`;
  if (ageMs < p.interactiveSustainMs) {
    figures.sustainS = round3(p.interactiveSustainMs / 1000);
    return { rule: 'not-sustained', reasons: [`${line}, not yet the ${fmtS(p.interactiveSustainMs)} that bring it back`], figures };
  }
  const back = estimateMoveMs('edge', sample, ctx.pastMigrations, p);
  figures.toEdgeS = round3(back.ms / 1000);
  return {
    rule: 'interaction',
    reasons: [`${line}: the user is at work, back to the edge`, `the move back takes about ${fmtS(back.ms)} (${back.basis})`, HYBRID_BACK],
    figures,
    move: { to: 'edge', strategy: 'hybrid' },
  };
}

/** Keeps the samples the next window needs: those within reach of it, and the one before. */
function pruneSamples(samples: readonly InteractionSample[], now: number, params: PolicyParams): InteractionSample[] {
  const cutoff = now - params.intensity.windowMs - params.intensity.maxSampleSpanMs;
  let first = samples.length;
  while (first > 0 && (samples[first - 1]?.at ?? 0) > cutoff) first -= 1;
  return samples.slice(Math.max(0, first - 1));
}

function updateEpisode(episode: Episode | null, seen: boolean, now: number, toleranceMs: number): Episode | null {
  if (seen) return { since: episode?.since ?? now, lastSeen: now };
  if (episode !== null && now - episode.lastSeen > toleranceMs) return null;
  return episode;
}

/**
 * One sample in, one decision out. Rules, in order:
 * 1. a sample not later than the previous one is ignored;
 * 2. no decision while a migration runs, or while an ordered one has not started (up to
 *    `pendingTimeoutMs`);
 * 3. a pin wins: the VM goes to, or stays at, the pinned site, whatever dwell and rate limit say;
 *    the latest user action wins, so a manual move made after the pin is not undone by it;
 * 4. at the edge: a crunch sustained `minCrunchMs`, confident, whose gain beats the round trip × margin,
 *    goes to the core; at the core: interaction sustained `interactiveSustainMs` comes back (hybrid);
 * 5. such a move waits for `minDwellMs` since the VM last came to rest, and for room under
 *    `maxMoves` per `rateWindowMs`.
 * A move the policy did not order (a manual migrate, in any mode) is respected: it resets the dwell time.
 */
export function step(state: PolicyState, sample: InteractionSample, ctx: PolicyContext): PolicyStep {
  const p = ctx.params;
  const now = sample.at;
  if (state.lastAt !== null && now <= state.lastAt) {
    return {
      state,
      assessment: null,
      decision: {
        at: now,
        site: sample.site,
        action: 'stay',
        rule: 'ignored',
        phase: state.phase ?? 'idle',
        confidence: 0,
        reasons: [`sample at ${now} is not later than the previous one (${state.lastAt}); ignored`],
        figures: { lateByS: round3((state.lastAt - now) / 1000) },
      },
    };
  }

  // Moves: ended, arrived, given up, or made by someone else.
  const notes: string[] = [];
  let settledAt = state.settledAt;
  let pending = state.pending;
  const mode = ctx.mode ?? sample.mode ?? 'auto';
  const pinTarget: SiteRole | null = mode === 'keep-edge' ? 'edge' : mode === 'keep-core' ? 'core' : null;
  let pinOverridden = mode === state.mode ? state.pinOverridden : false;
  const movedByHand = state.site !== null && sample.site !== state.site && pending?.to !== sample.site;
  if (movedByHand) {
    notes.push(`moved to ${siteWords(sample.site)} by someone else (a manual migrate): it rests there at least ${fmtS(p.minDwellMs)}`);
    if (pinTarget !== null && sample.site !== pinTarget) pinOverridden = true;
  }
  if (state.migrating && !sample.migrating) {
    settledAt = now;
    if (pending !== null && sample.site !== pending.to) notes.push(`the move to ${siteWords(pending.to)} ended without arriving`);
    pending = null;
  } else if (state.site !== null && sample.site !== state.site && !sample.migrating) {
    settledAt = now;
    pending = null;
  }
  if (pending !== null && sample.migrating && !pending.started) pending = { ...pending, started: true };
  if (pending !== null && !sample.migrating && sample.site === pending.to) {
    settledAt = now;
    pending = null;
  }
  if (pending !== null && !pending.started && !sample.migrating && now - pending.at > p.pendingTimeoutMs) {
    notes.push(`the move to ${siteWords(pending.to)} ordered ${fmtS(now - pending.at)} ago never started; deciding afresh`);
    settledAt = now;
    pending = null;
  }
  const moves = state.moves.filter((m) => now - m.at < p.rateWindowMs);

  // The model, and the phases' episodes (frozen while a migration runs: moving does not end a crunch).
  const samples = pruneSamples([...state.samples, sample], now, p);
  const a = assessWindow(samples, now, p.intensity, state.phase);
  let crunch = state.crunch;
  let interactive = state.interactive;
  if (sample.migrating) {
    if (crunch !== null) crunch = { ...crunch, lastSeen: now };
    if (interactive !== null) interactive = { ...interactive, lastSeen: now };
  } else {
    const confident = a.confidence >= p.minConfidence;
    crunch = updateEpisode(crunch, confident && a.phase === 'crunch', now, p.gapToleranceMs);
    interactive = updateEpisode(interactive, confident && a.phase === 'interactive', now, p.gapToleranceMs);
  }

  const next: PolicyState = {
    samples,
    lastAt: now,
    site: sample.site,
    migrating: sample.migrating,
    phase: a.phase,
    crunch,
    interactive,
    settledAt,
    moves,
    pending,
    mode,
    pinOverridden,
  };
  const base: Record<string, number> = { intensity: round3(a.intensity), confidence: round3(a.confidence) };
  if (a.interaction !== null) base.interaction = round3(a.interaction);
  const decide = (v: Verdict): PolicyStep => {
    const common = {
      at: now,
      site: sample.site,
      rule: v.rule,
      phase: a.phase,
      confidence: round3(a.confidence),
      reasons: [...v.reasons, ...notes],
      figures: v.figures,
    };
    if (v.move === undefined) return { state: next, assessment: a, decision: { ...common, action: 'stay' } };
    const by = v.rule === 'pin' ? 'pin' : 'policy';
    return {
      state: { ...next, pending: { to: v.move.to, at: now, started: false }, moves: [...moves, { at: now, to: v.move.to, by }] },
      assessment: a,
      decision: { ...common, action: 'migrate', to: v.move.to, strategy: v.move.strategy },
    };
  };

  if (sample.migrating) {
    const what = pending !== null ? `the move to ${siteWords(pending.to)} ordered ${fmtS(now - pending.at)} ago` : 'a migration the policy did not order';
    return decide({ rule: 'migrating', reasons: [`${what} is under way; no decision until it ends`, phaseLine(a)], figures: base });
  }
  if (pending !== null) {
    return decide({
      rule: 'pending',
      reasons: [`waiting for the move to ${siteWords(pending.to)} ordered ${fmtS(now - pending.at)} ago to start`],
      figures: base,
    });
  }

  const auto = sample.site === 'edge' ? atEdge(sample, a, crunch, ctx, base) : atCore(sample, a, interactive, ctx, base);
  if (pinTarget !== null) {
    const pinWords = pinTarget === 'edge' ? 'pinned to the edge by the user ("keep at edge")' : 'pinned to the cloud by the user ("keep in cloud")';
    if (sample.site !== pinTarget && !pinOverridden) {
      const { strategy, why } = pinTarget === 'core' ? strategyToCore(sample, p) : { strategy: 'hybrid' as const, why: HYBRID_BACK };
      return decide({ rule: 'pin', reasons: [`${pinWords}: moving it there`, why], figures: base, move: { to: pinTarget, strategy } });
    }
    if (sample.site !== pinTarget) {
      const byHand = `${pinWords}, but moved to ${siteWords(sample.site)} by hand since: the latest action wins, it stays (set the pin again to apply it)`;
      return decide({ rule: 'pin', reasons: [byHand, phaseLine(a)], figures: base });
    }
    const would = auto.move !== undefined ? [`without the pin it would move to ${siteWords(auto.move.to)}:`, ...auto.reasons] : [];
    return decide({ rule: 'pin', reasons: [`${pinWords}: it stays; ${phaseLine(a)}`, ...would], figures: auto.figures });
  }
  if (auto.move === undefined) return decide(auto);
  return decide(holdBack({ ...auto, move: auto.move }, { settledAt, moves }, now, p));
}
