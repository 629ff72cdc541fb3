// Placement contracts: the interaction samples the sensors produce (and traces record), the decisions
// the placement policy takes, its parameters, and the past migrations it learns costs from. Shared by
// the agent (sensors, policy), the CLI (`snowbird policy replay`) and the app (why it moved).
// The model and the policy themselves are pure code in src/interaction-detect/common/.
import { z } from 'zod';
import { MEMORY_STRATEGIES, SITE_ROLES, type MigrationRecord } from './migration.ts';

/** What the VM is doing, as the intensity model sees it. */
export const PHASES = ['interactive', 'crunch', 'idle'] as const;
export type Phase = (typeof PHASES)[number];

/** The user's placement mode: `auto` lets the policy move the VM; a pin keeps it at one site. */
export const PLACEMENT_MODES = ['auto', 'keep-edge', 'keep-core'] as const;
export type PlacementMode = (typeof PLACEMENT_MODES)[number];

/** A sensor reading: a number, or null when the sensor is unavailable (never read as zero). */
const reading = z.number().nonnegative().nullable().default(null);

/**
 * One interaction sample, taken about every 250 ms. Rates (`…PerS`) are averages over the interval
 * since the previous sample, so samples taken at uneven times still weigh correctly. Every sensor field
 * is `number | null`: null (or absent in a trace line) means "unavailable", which lowers the model's
 * confidence; it is never read as zero activity.
 */
export const interactionSampleSchema = z.strictObject({
  /** When the sample was taken, in ms since the epoch; the only clock the policy knows. */
  at: z.number().nonnegative(),
  /** Optional VM name (traces recorded by the agent carry it). */
  vm: z.string().max(63).optional(),
  /** Where the VM runs now. */
  site: z.enum(SITE_ROLES),
  /** A migration of this VM (automatic or manual) is under way. */
  migrating: z.boolean(),
  /** The user's placement mode when the sample was taken; absent means `auto`. */
  mode: z.enum(PLACEMENT_MODES).optional(),
  /** The VM's vCPU count (normalises `vcpuBusy`). */
  vcpus: z.number().int().min(1).max(256),
  /** The VM's memory size in MiB (the migration cost model's fallback). */
  memoryMiB: z.number().int().min(1).max(1024 * 1024),

  // input, through the display gateway and the desktop shell
  /** Key events (presses and releases) per second through the display gateway. */
  keysPerS: reading,
  /** Pointer events (motion, buttons, wheel) per second through the display gateway. */
  pointerPerS: reading,
  /** Seconds since the user last touched the laptop at all (system idle time), when the shell supplies it. */
  userIdleS: reading,

  // display
  /** Share of the framebuffer's pixels changed per second (1 = one full-screen redraw each second; may exceed 1). */
  screenChangePerS: reading,
  /** Framebuffer updates per second through the gateway. */
  fbUpdatesPerS: reading,
  /** Host GPU busy fraction (0..1) of the QEMU process; null where the host does not expose it. */
  gpuBusy: z.number().min(0).max(1).nullable().default(null),

  // compute and I/O
  /** vCPUs busy, 0..vcpus, from QEMU's vCPU thread times. */
  vcpuBusy: reading,
  /** Guest network traffic, both directions, bytes per second. */
  netBytesPerS: reading,
  /** Guest disk reads and writes, bytes per second. */
  diskBytesPerS: reading,

  // what a migration would cost now
  /** Guest memory dirty rate, bytes per second (QEMU's dirty-rate measurement), when known. */
  dirtyBytesPerS: reading,
  /** The link's usable bandwidth to the peer, bytes per second, as last measured. */
  linkBytesPerS: z.number().positive().nullable().default(null),
});
export type InteractionSample = z.infer<typeof interactionSampleSchema>;
/** A sample as written: sensor fields may be left out (= unavailable). */
export type InteractionSampleInput = z.input<typeof interactionSampleSchema>;

/** What the host that runs the VM measures of its QEMU process (the core answers `vm.sensors` with it). */
export const hostReadingSchema = z.object({
  gpuBusy: z.number().min(0).max(1).nullable(),
  vcpuBusy: z.number().nonnegative().nullable(),
  diskBytesPerS: z.number().nonnegative().nullable(),
  netBytesPerS: z.number().nonnegative().nullable(),
});
export type HostReading = z.infer<typeof hostReadingSchema>;

/**
 * A past migration of this VM, as the policy's cost model needs it. `pastMigrationOf` derives one from
 * a history record.
 */
export const pastMigrationSchema = z.object({
  /** Direction: the site it moved to. */
  to: z.enum(SITE_ROLES),
  /** When it started, ms since the epoch. */
  at: z.number().nonnegative(),
  /** Wall time from start to commit. */
  totalMs: z.number().nonnegative(),
  /** Guest paused, when measured. */
  downtimeMs: z.number().nonnegative().nullable(),
  /** Bytes that crossed the link (all streams). */
  bytes: z.number().nonnegative(),
  strategy: z.enum(MEMORY_STRATEGIES).optional(),
});
export type PastMigration = z.infer<typeof pastMigrationSchema>;

/** A committed history record → the figures the cost model uses; null for aborted or undated records. */
export function pastMigrationOf(record: MigrationRecord): PastMigration | null {
  if (record.outcome !== 'committed') return null;
  const at = Date.parse(record.startedAt);
  if (!Number.isFinite(at)) return null;
  const sum = (values: Record<string, number | undefined>): number =>
    Object.values(values).reduce<number>((total, v) => total + (v ?? 0), 0);
  const streams = sum(record.streamBytes);
  return {
    to: record.to,
    at,
    totalMs: record.totalMs,
    downtimeMs: record.downtimeMs ?? null,
    bytes: streams > 0 ? streams : sum(record.phaseBytes),
    strategy: record.strategy,
  };
}

/**
 * Parameters of the intensity model (src/interaction-detect/common/intensity.ts explains the formula).
 * Defaults are the values the trace library is tested with.
 */
export const intensityParamsSchema = z
  .object({
    /** Rolling window the phase is judged on: long enough to span typing pauses, short enough to react in seconds. */
    windowMs: z.number().positive().default(5_000),
    /** Sampling period the sensors aim for; the first sample of a history is taken to cover this much. */
    nominalPeriodMs: z.number().positive().default(250),
    /** A sample vouches for at most this much time before it; longer gaps count as unknown time. */
    maxSampleSpanMs: z.number().positive().default(1_000),
    /** Enter the crunch phase when intensity reaches this... */
    crunchEnter: z.number().min(0).max(1).default(0.6),
    /** ...and stay in it while intensity stays above this (hysteresis). */
    crunchStay: z.number().min(0).max(1).default(0.45),
    /** Enter the interactive phase when the share of time with input reaches this... */
    interactiveEnter: z.number().min(0).max(1).default(0.2),
    /** ...and stay in it while it stays above this. */
    interactiveStay: z.number().min(0).max(1).default(0.1),
    /** Weight of the GPU in the intensity (the core's speedup is measured on CPUs; it may have no GPU). */
    gpuWeight: z.number().min(0).max(1).default(0.5),
    /** Weight of guest I/O in the intensity: below the crunch threshold alone. */
    ioWeight: z.number().min(0).max(1).default(0.2),
    /** Guest I/O (net + disk) at which the I/O term reaches 63 %, bytes per second. */
    ioRefBytesPerS: z.number().positive().default(20e6),
    /** The user counts as away from the laptop after this many idle seconds. */
    awayIdleS: z.number().positive().default(60),
  })
  .refine((p) => p.crunchStay <= p.crunchEnter && p.interactiveStay <= p.interactiveEnter, {
    message: 'a phase\'s "stay" threshold must not exceed its "enter" threshold',
  });
export type IntensityParams = z.infer<typeof intensityParamsSchema>;

/** Parameters of the placement policy (src/interaction-detect/README.md explains each rule). */
export const policyParamsSchema = z.object({
  intensity: intensityParamsSchema.prefault({}),
  /** A phase judgement counts only at or above this confidence. */
  minConfidence: z.number().min(0).max(1).default(0.6),
  /** A phase survives interruptions shorter than this (a typing pause, a blip of I/O wait). */
  gapToleranceMs: z.number().nonnegative().default(3_000),
  /** A crunch must have lasted this long before it may move the VM (sustained, not a burst). */
  minCrunchMs: z.number().nonnegative().default(15_000),
  /** Interaction at the core must have lasted this long before the VM comes back. */
  interactiveSustainMs: z.number().nonnegative().default(3_000),
  /**
   * Expected remaining crunch = lindyFactor × how long it has lasted (Lindy: for a heavy-tailed
   * duration with tail exponent α, the expected remainder is age / (α − 1); 1 is α = 2).
   */
  lindyFactor: z.number().nonnegative().default(1),
  /** Cap on the expected remaining crunch. */
  maxRemainingMs: z.number().positive().default(30 * 60_000),
  /** How much faster the VM runs at the core than at the edge (measure it per deployment). */
  coreSpeedup: z.number().positive().default(3),
  /** Move to the core only if the time saved exceeds the round trip's cost × this (hysteresis on gain). */
  costMargin: z.number().min(1).default(1.5),
  /** After arriving anywhere (or a failed move), stay at least this long before an automatic move. */
  minDwellMs: z.number().nonnegative().default(30_000),
  /**
   * At most this many moves in any `rateWindowMs` (a pin's moves count but are never held back); a move
   * to the core needs room for its way back.
   */
  maxMoves: z.number().int().min(2).default(6),
  rateWindowMs: z.number().positive().default(10 * 60_000),
  /** Cost model: use at most this many of the latest past moves per direction (their median). */
  historyLimit: z.number().int().min(1).default(5),
  /** Cost model fallback: fixed cost of a move (connect, device state, disk sync setup). */
  setupMs: z.number().nonnegative().default(1_000),
  /** Cost model fallback: link bandwidth when the sample does not say, bytes per second (100 Mbit/s). */
  assumedLinkBytesPerS: z.number().positive().default(12.5e6),
  /** An ordered move that has not started after this long is given up. */
  pendingTimeoutMs: z.number().positive().default(30_000),
});
export type PolicyParams = z.infer<typeof policyParamsSchema>;
export type PolicyParamsInput = z.input<typeof policyParamsSchema>;

export const DEFAULT_POLICY_PARAMS: PolicyParams = policyParamsSchema.parse({});

/**
 * Which rule settled a decision:
 * - `pin`: the user's pin (moves to, or keeps the VM at, the pinned site);
 * - `crunch`: to the core, a sustained crunch worth the round trip;
 * - `interaction`: back to the edge, sustained interaction;
 * - `migrating` / `pending`: a move is under way or ordered, nothing is decided;
 * - `dwell` / `rate-limit`: a move was warranted but held back (anti ping-pong);
 * - `not-worth-it`: sustained crunch, but the predicted gain does not beat the cost;
 * - `not-sustained`: the phase has not lasted long enough yet;
 * - `uncertain`: the sensors do not support a confident judgement;
 * - `steady`: the VM is where its phase wants it;
 * - `ignored`: a sample older than the previous one.
 */
export const DECISION_RULES = [
  'pin',
  'crunch',
  'interaction',
  'migrating',
  'pending',
  'dwell',
  'rate-limit',
  'not-worth-it',
  'not-sustained',
  'uncertain',
  'steady',
  'ignored',
] as const;
export type DecisionRule = (typeof DECISION_RULES)[number];

const decisionBase = z.object({
  /** The sample time the decision was taken at. */
  at: z.number(),
  /** Where the VM was when the decision was taken. */
  site: z.enum(SITE_ROLES),
  rule: z.enum(DECISION_RULES),
  phase: z.enum(PHASES),
  /** Confidence of the phase judgement, 0..1. */
  confidence: z.number().min(0).max(1),
  /** Plain-words reasons, with their numbers, most important first. */
  reasons: z.array(z.string()).min(1),
  /** The numbers behind the reasons, by name (units in the name: …S seconds, …BytesPerS). */
  figures: z.record(z.string(), z.number()),
});

export const placementDecisionSchema = z.discriminatedUnion('action', [
  decisionBase.extend({ action: z.literal('stay') }),
  decisionBase.extend({
    action: z.literal('migrate'),
    to: z.enum(SITE_ROLES),
    strategy: z.enum(MEMORY_STRATEGIES),
  }),
]);
export type PlacementDecision = z.infer<typeof placementDecisionSchema>;
export type MigrateDecision = Extract<PlacementDecision, { action: 'migrate' }>;
