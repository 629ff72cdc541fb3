// Finishing or rolling back a migration after the source's agent restarted, from its journal
// (<vm>/migration.json). The rule (common/journal.ts decideRecovery): before the destination
// confirmed that the guest runs there, roll back (the source keeps the VM); after, finish the
// commit (the destination owns the VM).
import type { VmHandle } from '../qemu/vm.ts';
import type { LayerStore } from '../layers/store.ts';
import type { DestinationSite } from '../site.ts';
import { decideRecovery, type SourceJournal } from './common/journal.ts';
import { DEFAULT_MAX_CHAIN_DEPTH } from './common/types.ts';
import { readSourceJournal, removeFile, sourceJournalPath, writeSourceJournal } from './journal.ts';
import { QemuWatch, stopOutgoingStreams } from './qemu-ops.ts';

export interface RecoverMigrationInput {
  journal: SourceJournal;
  /** The VM's QEMU at this site if it still runs (VmHandle.adopt), else undefined. */
  vm: VmHandle | undefined;
  layers: LayerStore;
  destination: DestinationSite;
  /** The VM's folder at this site (where the journal lives). */
  vmDir: string;
  maxChainDepth?: number;
  /** Each destination call. Default 30 s. */
  destinationCallMs?: number;
  /** How long to wait for a post-copy stream to complete (recovering it if it broke). Default 120 s. */
  postcopyMs?: number;
}

export type RecoveryResult =
  /** The source keeps the VM (running if it was); the destination was told to clean up. */
  | { kind: 'rolled-back'; sourceRunning: boolean; destinationConfirmed: boolean; notes: string[] }
  /** The destination may run the guest and could not be reached: the source stays as it is; the journal is kept, try again later. */
  | { kind: 'in-doubt'; notes: string[] }
  /** The destination owns the VM; the source's top was frozen as the shared layer. */
  | { kind: 'committed'; layerId: string; destinationConfirmed: boolean; notes: string[] };

/** Reads the journal of the VM in `vmDir`, if a migration of it was under way when the agent stopped. */
export { readSourceJournal };

async function withTimeout<T>(what: string, promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} got no answer within ${Math.round(ms / 1000)} s`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

export async function recoverMigration(input: RecoverMigrationInput): Promise<RecoveryResult> {
  const { journal } = input;
  const action = decideRecovery(journal);
  switch (action.kind) {
    case 'roll-back':
      return rollBack(input, action.resumeSource);
    case 'finish-switchover':
      return finishSwitchover(input);
    case 'finish-commit':
      return finishCommit(input, action.waitForPostcopy);
  }
}

/**
 * Post-copy had started but the destination never confirmed that the guest runs: QEMU 7.2 cannot
 * resume the source, so the only way is forward. Recover the stream if it broke, ask the
 * destination to resume the guest (idempotent), then finish the commit.
 */
async function finishSwitchover(input: RecoverMigrationInput): Promise<RecoveryResult> {
  const { journal, vm, destination } = input;
  const notes: string[] = [];
  const callMs = input.destinationCallMs ?? 30_000;
  if (journal.received === undefined) return { kind: 'in-doubt', notes: ['the journal does not say which layer the destination receives'] };
  if (vm === undefined || vm.qmp.closed || !(await vm.alive())) {
    notes.push('the source QEMU is gone after the switch to post-copy: the VM is lost; boot it again from its disk');
    return { kind: 'in-doubt', notes };
  }
  try {
    if ((await vm.qmp.execute('query-migrate')).status === 'postcopy-paused') {
      const { migrationSocket } = await withTimeout('post-copy recovery', destination.recoverPostcopy({ migrationId: journal.migrationId }), callMs);
      await vm.qmp.execute('migrate', { uri: `unix:${migrationSocket}`, resume: true });
      notes.push('resumed the broken post-copy stream');
    }
    await withTimeout('destination switchover', destination.switchover({ migrationId: journal.migrationId, layerId: journal.received.id, layerLeaves: journal.received.leaves }), callMs);
  } catch (error) {
    notes.push(`the destination could not resume the guest: ${(error as Error).message}; run recovery again`);
    return { kind: 'in-doubt', notes };
  }
  await writeSourceJournal(input.vmDir, { ...journal, step: 'destination-running' });
  const result = await finishCommit({ ...input, journal: { ...journal, step: 'destination-running' } }, true);
  return result.kind === 'committed' ? { ...result, notes: [...notes, ...result.notes] } : result;
}

async function rollBack(input: RecoverMigrationInput, resume: 'now' | 'after-destination-abort'): Promise<RecoveryResult> {
  const { journal, vm, destination } = input;
  const notes: string[] = [];
  const callMs = input.destinationCallMs ?? 30_000;
  const alive = vm !== undefined && !vm.qmp.closed && (await vm.alive());
  if (alive) {
    const qmp = vm.qmp;
    const watch = new QemuWatch(qmp);
    try {
      notes.push(...(await stopOutgoingStreams(watch, { mirrorJob: journal.mirrorJob, nbdNode: journal.nbdNode, migration: true })));
    } finally {
      watch.dispose();
    }
  }
  let destinationConfirmed = false;
  try {
    await withTimeout('destination abort', destination.abort({ migrationId: journal.migrationId, reason: 'the source agent restarted before the switchover and rolls the migration back' }), callMs);
    destinationConfirmed = true;
  } catch (error) {
    notes.push(`the destination could not be told to abort: ${(error as Error).message}`);
  }
  if (resume === 'after-destination-abort' && !destinationConfirmed) {
    // The destination may run the guest: resuming here could run it twice.
    return { kind: 'in-doubt', notes };
  }
  let sourceRunning = false;
  if (alive) {
    const state = (await vm.status()).state;
    if (journal.sourceWasRunning && state !== 'running') {
      await vm.resume();
      notes.push('resumed the source');
    }
    sourceRunning = (await vm.status()).state === 'running';
  } else {
    notes.push("the source QEMU is not running: the VM is stopped, its disk intact here; start it again");
  }
  await removeFile(sourceJournalPath(input.vmDir));
  return { kind: 'rolled-back', sourceRunning, destinationConfirmed, notes };
}

async function finishCommit(input: RecoverMigrationInput, waitForPostcopy: boolean): Promise<RecoveryResult> {
  const { journal, vm, destination, layers } = input;
  const notes: string[] = [];
  const callMs = input.destinationCallMs ?? 30_000;
  if (vm !== undefined && !vm.qmp.closed && (await vm.alive())) {
    if (waitForPostcopy) {
      // The source's RAM holds pages the destination may still need: quit only once the stream completed.
      const qmp = vm.qmp;
      const deadline = performance.now() + (input.postcopyMs ?? 120_000);
      {
        for (;;) {
          const status = (await qmp.execute('query-migrate')).status;
          if (status === 'completed' || status === undefined) break;
          if (performance.now() > deadline) {
            notes.push(`post-copy has not completed (${status}); the source QEMU is kept`);
            return { kind: 'in-doubt', notes };
          }
          if (status === 'postcopy-paused') {
            try {
              const { migrationSocket } = await withTimeout('post-copy recovery', destination.recoverPostcopy({ migrationId: journal.migrationId }), callMs);
              await qmp.execute('migrate', { uri: `unix:${migrationSocket}`, resume: true });
              notes.push('resumed the broken post-copy stream');
            } catch (error) {
              notes.push(`post-copy recovery failed: ${(error as Error).message}`);
            }
          }
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    }
    // Quit only the QEMU that sent this guest away: after a completed migration it sits in
    // `postmigrate`. A QEMU that runs the guest (restarted here since) is never quit on a journal's word.
    const status = await vm.status();
    const migration = (await vm.qmp.execute('query-migrate')).status;
    if (status.qemuStatus !== 'postmigrate' && migration !== 'completed') {
      notes.push(`the QEMU here (${status.qemuStatus}, migration ${migration ?? 'none'}) is not the source of migration ${journal.migrationId}: kept running; check where the VM runs with 'snowbird status' before moving it`);
      return { kind: 'in-doubt', notes };
    }
    await vm.quit();
    notes.push('quit the source QEMU');
  }
  if (journal.step !== 'source-released') await writeSourceJournal(input.vmDir, { ...journal, step: 'source-released' });
  const parent = journal.chain.at(-1) ?? null;
  if (layers.get(journal.layerId) === undefined) {
    try {
      await layers.freeze(journal.topFile, { id: journal.layerId, parent, leaves: [journal.layerId] });
      await layers.setChain(journal.vm, [...journal.chain, journal.layerId]);
      notes.push(`froze the top as layer ${journal.layerId}`);
    } catch (error) {
      notes.push(`freezing the top failed (the next migration back copies the whole disk): ${(error as Error).message}`);
    }
  }
  let destinationConfirmed = false;
  try {
    await withTimeout('destination commit', destination.commit({ migrationId: journal.migrationId }), callMs);
    destinationConfirmed = true;
  } catch (error) {
    notes.push(`the destination did not acknowledge the commit: ${(error as Error).message}; run recovery again`);
  }
  if (destinationConfirmed) {
    try {
      await layers.compact(journal.vm, { maxDepth: input.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH });
      await layers.gc();
    } catch (error) {
      notes.push(`compaction failed: ${(error as Error).message}`);
    }
    await removeFile(sourceJournalPath(input.vmDir));
  }
  return { kind: 'committed', layerId: journal.layerId, destinationConfirmed, notes };
}
