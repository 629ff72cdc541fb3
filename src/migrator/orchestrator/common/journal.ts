// The source's migration journal (a small JSON file in the VM's folder, written durably at every
// step) and the rule that decides, after a restart, whether to roll a migration back or finish it.
// Pure.
import { z } from 'zod';

/**
 * Steps, in order. Up to `switchover` the source's VM is the VM: a failure rolls back. From
 * `destination-running` on (the destination confirmed the guest runs) it only ever moves forward.
 */
export const JOURNAL_STEPS = ['planning', 'preparing', 'disk-sync', 'memory', 'switchover', 'destination-running', 'source-released'] as const;
export type JournalStep = (typeof JOURNAL_STEPS)[number];

const id = z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/);

export const SourceJournalSchema = z.object({
  version: z.literal(1),
  role: z.literal('source'),
  migrationId: id,
  vm: z.string(),
  step: z.enum(JOURNAL_STEPS),
  startedAt: z.string(),
  updatedAt: z.string(),
  /** The VM's top image at the source (frozen as `layerId` on commit). */
  topFile: z.string(),
  /** The source's chain before the migration (bottom first). */
  chain: z.array(id),
  layerId: id,
  received: z.object({ id, leaves: z.array(id) }).optional(),
  diskMode: z.enum(['top', 'full']).optional(),
  nbdNode: z.string().optional(),
  mirrorJob: z.string().optional(),
  postcopy: z.boolean(),
  /** True once QEMU switched to post-copy: the source's RAM is then needed until the stream completes. */
  postcopyStarted: z.boolean().default(false),
  /** Whether the guest was running at the source when the migration started (a rollback resumes it). */
  sourceWasRunning: z.boolean(),
  destinationResumedAtMs: z.number().optional(),
});
export type SourceJournal = z.infer<typeof SourceJournalSchema>;

export type RecoveryAction =
  /** Before the switchover: cancel at the source, resume it if it was running, abort the destination. */
  | { kind: 'roll-back'; resumeSource: 'now' }
  /** During switchover: the destination may have resumed; resume the source only once the destination confirms its abort. */
  | { kind: 'roll-back'; resumeSource: 'after-destination-abort' }
  /** Post-copy started but the destination has not confirmed: ask it to resume the guest (recovering the stream if needed), then finish the commit. */
  | { kind: 'finish-switchover' }
  /** The destination runs the guest: quit the source (after post-copy completes), freeze its top, commit. */
  | { kind: 'finish-commit'; waitForPostcopy: boolean; freezeTop: boolean };

export function stepIndex(step: JournalStep): number {
  return JOURNAL_STEPS.indexOf(step);
}

export function decideRecovery(journal: SourceJournal): RecoveryAction {
  switch (journal.step) {
    case 'planning':
    case 'preparing':
    case 'disk-sync':
    case 'memory':
      return { kind: 'roll-back', resumeSource: 'now' };
    case 'switchover':
      // QEMU 7.2 cannot resume a source that entered post-copy: only forward.
      if (journal.postcopyStarted) return { kind: 'finish-switchover' };
      return { kind: 'roll-back', resumeSource: 'after-destination-abort' };
    case 'destination-running':
      return { kind: 'finish-commit', waitForPostcopy: journal.postcopyStarted, freezeTop: true };
    case 'source-released':
      return { kind: 'finish-commit', waitForPostcopy: false, freezeTop: true };
  }
}

/** The destination's record of an incoming migration (in the destination VM's folder). */
export const INCOMING_STEPS = ['preparing', 'prepared', 'switching', 'resumed'] as const;
export type IncomingStep = (typeof INCOMING_STEPS)[number];

export const IncomingJournalSchema = z.object({
  version: z.literal(1),
  role: z.literal('destination'),
  migrationId: id,
  vm: z.string(),
  step: z.enum(INCOMING_STEPS),
  startedAt: z.string(),
  updatedAt: z.string(),
  backingLayer: id.nullable(),
  /** Layers this migration holds (the backing layer's ancestry). */
  ancestry: z.array(id),
  pendingFile: z.string(),
  /** Set at switchover: the received overlay's layer id and leaves, and whether files were created. */
  layer: z.object({ id, leaves: z.array(id) }).optional(),
  layerFileMoved: z.boolean().default(false),
  topCreated: z.boolean().default(false),
  topFile: z.string(),
  pid: z.number().int().optional(),
  qmpSocket: z.string(),
  sockets: z.array(z.string()),
  /** The spec QEMU was started with here (disk: the pending overlay). */
  spec: z.unknown(),
});
export type IncomingJournal = z.infer<typeof IncomingJournalSchema>;
