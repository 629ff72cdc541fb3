// The recovery rule: before the destination confirmed, roll back; after, finish the commit.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decideRecovery, JOURNAL_STEPS, SourceJournalSchema, type SourceJournal } from '../../src/migrator/orchestrator/common/journal.ts';
import { MigrationError } from '../../src/migrator/orchestrator/common/types.ts';

const base: SourceJournal = {
  version: 1,
  role: 'source',
  migrationId: '6e2c4a1e-0b7d-4f7e-9d6a-1c2b3d4e5f60',
  vm: 'demo',
  step: 'planning',
  startedAt: '2026-01-01T00:00:00.000Z',
  updatedAt: '2026-01-01T00:00:00.000Z',
  topFile: '/data/vms/demo/disk.qcow2',
  chain: ['l-a'],
  layerId: 'l-b',
  postcopy: false,
  postcopyStarted: false,
  sourceWasRunning: true,
};

describe('migration journal', () => {
  test('every step before the switchover rolls back and resumes the source at once', () => {
    for (const step of ['planning', 'preparing', 'disk-sync', 'memory'] as const) {
      assert.deepEqual(decideRecovery({ ...base, step }), { kind: 'roll-back', resumeSource: 'now' }, step);
    }
  });

  test('during switchover the source resumes only once the destination confirmed its abort', () => {
    assert.deepEqual(decideRecovery({ ...base, step: 'switchover' }), { kind: 'roll-back', resumeSource: 'after-destination-abort' });
  });

  test('once QEMU switched to post-copy there is no way back (QEMU 7.2): recovery finishes the switchover', () => {
    assert.deepEqual(decideRecovery({ ...base, step: 'switchover', postcopy: true, postcopyStarted: true }), { kind: 'finish-switchover' });
    // Post-copy allowed but not started yet: still a rollback.
    assert.equal(decideRecovery({ ...base, step: 'switchover', postcopy: true, postcopyStarted: false }).kind, 'roll-back');
  });

  test('once the destination runs the guest, recovery finishes the commit (waiting for post-copy if it started)', () => {
    assert.deepEqual(decideRecovery({ ...base, step: 'destination-running', postcopyStarted: true }), { kind: 'finish-commit', waitForPostcopy: true, freezeTop: true });
    assert.deepEqual(decideRecovery({ ...base, step: 'source-released' }), { kind: 'finish-commit', waitForPostcopy: false, freezeTop: true });
  });

  test('the steps are ordered and every one has a decision', () => {
    assert.deepEqual(JOURNAL_STEPS.slice(-2), ['destination-running', 'source-released']);
    for (const step of JOURNAL_STEPS) assert.ok(decideRecovery({ ...base, step }));
  });

  test('the schema refuses ids that could leave the store', () => {
    assert.equal(SourceJournalSchema.safeParse(base).success, true);
    assert.equal(SourceJournalSchema.safeParse({ ...base, layerId: '../x' }).success, false);
    assert.equal(SourceJournalSchema.safeParse({ ...base, chain: ['ok', 'A'] }).success, false);
    assert.equal(SourceJournalSchema.safeParse({ ...base, step: 'bogus' }).success, false);
  });

  test('a MigrationError names the phase and says what became of the VM', () => {
    const e = new MigrationError({ phase: 'disk', migrationId: base.migrationId, vm: 'demo', outcome: 'rolled-back', detail: 'the disk mirror stopped.' });
    assert.equal(e.phase, 'disk');
    assert.match(e.message, /^migration of VM "demo" failed during disk sync: the disk mirror stopped\. The VM keeps running here/);
  });
});
