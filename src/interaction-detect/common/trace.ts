// Traces: interaction samples as JSON lines (one `InteractionSample` per line), and their replay
// through the policy. Pure, so `snowbird policy replay FILE`, the app and the tests share it.
import {
  interactionSampleSchema,
  type InteractionSample,
  type InteractionSampleInput,
  type MigrateDecision,
  type PastMigration,
  type PlacementDecision,
  type PlacementMode,
  type PolicyParams,
} from '../../shared/placement.ts';
import type { SiteRole } from '../../shared/migration.ts';
import { estimateMoveMs, fmtS, initialPolicyState, step, type PolicyState } from './policy.ts';

export interface TraceLineError {
  /** 1-based line number in the file. */
  line: number;
  message: string;
}

const MAX_REPORTED = 20;

export class TraceParseError extends Error {
  readonly errors: readonly TraceLineError[];
  constructor(errors: readonly TraceLineError[]) {
    const shown = errors.slice(0, MAX_REPORTED).map((e) => `line ${e.line}: ${e.message}`);
    if (errors.length > MAX_REPORTED) shown.push(`…and ${errors.length - MAX_REPORTED} more`);
    super(`invalid trace:\n${shown.join('\n')}`);
    this.name = 'TraceParseError';
    this.errors = errors;
  }
}

/**
 * Parses a JSON-lines trace; blank lines are skipped. Every line is checked against the sample schema
 * (absent sensor fields read as unavailable, unknown fields are refused); all bad lines are reported
 * together, by line number, in a `TraceParseError`.
 */
export function parseTrace(text: string): InteractionSample[] {
  const samples: InteractionSample[] = [];
  const errors: TraceLineError[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i += 1) {
    const raw = (lines[i] ?? '').trim();
    if (raw === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (error) {
      errors.push({ line: i + 1, message: `not JSON (${(error as Error).message})` });
      continue;
    }
    const parsed = interactionSampleSchema.safeParse(value);
    if (parsed.success) samples.push(parsed.data);
    else {
      const issues = parsed.error.issues.map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(line)'}: ${issue.message}`);
      errors.push({ line: i + 1, message: issues.join('; ') });
    }
  }
  if (errors.length > 0) throw new TraceParseError(errors);
  return samples;
}

/** Writes samples as JSON lines (one per line, newline-terminated). */
export function formatTrace(samples: readonly InteractionSampleInput[]): string {
  return samples.map((s) => `${JSON.stringify(s)}\n`).join('');
}

export interface ReplayOptions {
  /** Overrides the trace's placement mode ("what if it had been pinned"). */
  mode?: PlacementMode;
  /**
   * Where the VM is during the replay:
   * - `simulated` (default): the trace's first sample gives the start site; a migrate decision takes
   *   the VM to its destination after `moveMs`, with `migrating` set meanwhile. Where the trace itself
   *   records a move (its site changes between two samples) or a migration (`migrating` true), the
   *   trace wins: that happened (a manual move, or the recording of one), so the replay follows it.
   *   With the parameters it was recorded under, a trace from the agent replays to the same decisions.
   * - `recorded`: the trace's `site` and `migrating` as recorded; decisions change nothing (an audit of
   *   what the policy would have said at each moment of what really happened).
   */
  sites?: 'simulated' | 'recorded';
  /** How long a simulated move takes; default: the policy's own estimate for it at that moment. */
  moveMs?: number;
}

export interface ReplayResult {
  /** One decision per sample, in order. */
  decisions: PlacementDecision[];
  /** The migrate decisions alone. */
  moves: MigrateDecision[];
  state: PolicyState;
}

/** Runs the policy over a trace. Deterministic: the same trace and parameters give the same decisions. */
export function replay(
  samples: readonly InteractionSample[],
  params: PolicyParams,
  pastMigrations: readonly PastMigration[] = [],
  options: ReplayOptions = {},
): ReplayResult {
  const ctx = { params, pastMigrations, ...(options.mode === undefined ? {} : { mode: options.mode }) };
  const simulate = (options.sites ?? 'simulated') === 'simulated';
  let state = initialPolicyState();
  const decisions: PlacementDecision[] = [];
  const moves: MigrateDecision[] = [];
  let site: SiteRole | undefined = samples[0]?.site;
  let recordedSite = site;
  let flight: { to: SiteRole; until: number } | null = null;
  for (const sample of samples) {
    let seen = sample;
    if (simulate) {
      if (sample.site !== recordedSite) {
        site = sample.site;
        flight = null;
      }
      recordedSite = sample.site;
      if (flight !== null && sample.at >= flight.until) {
        site = flight.to;
        flight = null;
      }
      seen = { ...sample, site: site ?? sample.site, migrating: sample.migrating || flight !== null };
    }
    const result = step(state, seen, ctx);
    state = result.state;
    decisions.push(result.decision);
    if (result.decision.action === 'migrate') {
      moves.push(result.decision);
      if (simulate) {
        const to = result.decision.to;
        const ms = options.moveMs ?? estimateMoveMs(to, seen, pastMigrations, params).ms;
        flight = { to, until: sample.at + ms };
      }
    }
  }
  return { decisions, moves, state };
}

/**
 * The decisions worth printing: every move, and every stay whose rule differs from the decision
 * before it (so a long steady stretch prints once).
 */
export function decisionChanges(decisions: readonly PlacementDecision[]): PlacementDecision[] {
  return decisions.filter((d, i) => d.action === 'migrate' || i === 0 || decisions[i - 1]?.rule !== d.rule);
}

/** One decision as text, its time relative to `origin` (the trace's first sample), reasons indented. */
export function describeDecision(d: PlacementDecision, origin: number): string {
  const when = `+${fmtS(d.at - origin)}`.padEnd(9);
  const head = d.action === 'migrate' ? `migrate ${d.site} → ${d.to} (${d.strategy})` : `stay at ${d.site}`;
  return [`${when} ${head} [${d.rule}, ${d.phase} ${d.confidence.toFixed(2)}]`, ...d.reasons.map((r) => `           ${r}`)].join('\n');
}
