// Migration figures that cross process boundaries: progress while a move runs, and the record kept
// in history and shown by the CLI and the app.
import { z } from 'zod';

export const SITE_ROLES = ['edge', 'core'] as const;
export type SiteRole = (typeof SITE_ROLES)[number];

/**
 * `auto` (the default towards the core) decides during the move: pre-copy while it converges,
 * auto-converge where throttling is safe, else post-copy; see docs/migration.md.
 */
export const MEMORY_STRATEGIES = ['auto', 'precopy', 'hybrid', 'postcopy'] as const;
export type MemoryStrategy = (typeof MEMORY_STRATEGIES)[number];
/**
 * Whether a move's memory stream goes through the dedup transport: `auto` (the default) when the link,
 * not the transport, is the bottleneck (measured; see docs/migration.md), or always `on`, or `off`.
 */
export const DEDUP_MODES = ['auto', 'on', 'off'] as const;
export type DedupMode = (typeof DEDUP_MODES)[number];

export const MIGRATION_PHASES = ['plan', 'prepare', 'disk', 'memory', 'switchover', 'commit'] as const;
export type MigrationPhase = (typeof MIGRATION_PHASES)[number];

export const migrationProgressSchema = z.object({
  migrationId: z.string(),
  vm: z.string(),
  from: z.enum(SITE_ROLES),
  to: z.enum(SITE_ROLES),
  phase: z.enum(MIGRATION_PHASES),
  /** Bytes sent so far in this phase. */
  bytes: z.number().nonnegative(),
  /** Bytes still to send in this phase, when known. */
  remainingBytes: z.number().nonnegative().optional(),
  /** Current rate in bytes per second. */
  rate: z.number().nonnegative(),
  etaSeconds: z.number().nonnegative().optional(),
  elapsedMs: z.number().nonnegative(),
});
export type MigrationProgress = z.infer<typeof migrationProgressSchema>;

export const migrationRecordSchema = z.object({
  migrationId: z.string(),
  vm: z.string(),
  from: z.enum(SITE_ROLES),
  to: z.enum(SITE_ROLES),
  strategy: z.enum(MEMORY_STRATEGIES),
  /** `cancelled`: the user (or the policy) cancelled it and the VM stayed where it ran; `aborted`: it failed, the VM stayed. */
  outcome: z.enum(['committed', 'aborted', 'cancelled']),
  /** When aborted: the phase that failed and what happened. */
  failedPhase: z.enum(MIGRATION_PHASES).optional(),
  error: z.string().optional(),
  startedAt: z.string(),
  totalMs: z.number().nonnegative(),
  /** Guest paused at the source until it ran at the destination, as measured by the agents. */
  downtimeMs: z.number().nonnegative().optional(),
  /** QEMU's own downtime figure. */
  qemuDowntimeMs: z.number().nonnegative().optional(),
  phaseMs: z.partialRecord(z.enum(MIGRATION_PHASES), z.number().nonnegative()),
  /** Bytes per phase (disk = block mirror, memory = RAM + device state). */
  phaseBytes: z.partialRecord(z.enum(MIGRATION_PHASES), z.number().nonnegative()),
  /** Bytes on the link per bridged stream (migration, nbd, ...). */
  streamBytes: z.record(z.string(), z.number().nonnegative()),
  /**
   * The memory stream's dedup transport: whether it carried the stream and why. `streamBytes.migration`
   * is what crossed the link either way; `rawBytes` is what QEMU's migration stream carried.
   */
  dedup: z
    .object({
      /** The memory stream went through it. */
      used: z.boolean(),
      /** How it was chosen (`auto`: the link's and the transport's measured speeds), or why it was not used. */
      reason: z.string().optional(),
      /** Bytes QEMU wrote to its migration stream (before dedup and compression). */
      rawBytes: z.number().nonnegative(),
      /** Of those, sent as references to chunks the destination already held. */
      refBytes: z.number().nonnegative().optional(),
      /** References the destination could not resolve from its store (missing or damaged), answered with the bytes. */
      needs: z.number().nonnegative().optional(),
      /** The dedup transport itself failed, which failed the move: with `--dedup off` the stream goes plain. */
      failed: z.string().optional(),
    })
    .optional(),
  /** How the memory moved (`strategy` is what was asked for), and why. */
  memory: z
    .object({
      used: z.enum(['precopy', 'postcopy']),
      autoConverge: z.boolean(),
      reason: z.string(),
      /** Post-copy's risk window: the guest ran at the destination while some of its pages were only at the source. */
      postcopyMs: z.number().nonnegative().optional(),
    })
    .optional(),
  /** QEMU's final query-migrate statistics, as reported. */
  qemu: z.record(z.string(), z.unknown()).optional(),
  /** Who asked for the move: the user, or the placement policy (a pin, or its own rules) with its reasons. */
  trigger: z.object({ by: z.enum(['user', 'policy', 'pin']), reasons: z.array(z.string()).max(32) }).optional(),
});
export type MigrationRecord = z.infer<typeof migrationRecordSchema>;
