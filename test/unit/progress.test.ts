// The one progress model (src/shared/progress.ts) on event sequences shaped like the ones the issue
// saw: a late event of an earlier phase, a switchover event reporting fewer bytes than were sent,
// memory passes whose total grows, an unknown total, and the rate over a window.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { nextProgressView, RATE_WINDOW_MS, type ProgressView } from '../../src/shared/progress.ts';
import type { MigrationProgress } from '../../src/shared/migration.ts';
import { formatProgress } from '../../src/main/format.ts';

const MiB = 1024 * 1024;
const event = (over: Partial<MigrationProgress>): MigrationProgress => ({ migrationId: 'm1', vm: 'demo', from: 'edge', to: 'core', phase: 'memory', bytes: 0, rate: 0, elapsedMs: 0, ...over });
const fold = (events: MigrationProgress[]): ProgressView[] => {
  const views: ProgressView[] = [];
  let view: ProgressView | undefined;
  for (const e of events) {
    view = nextProgressView(view, e);
    views.push(view);
  }
  return views;
};

describe('progress view', () => {
  test('phases only go forward: a late event of an earlier phase changes nothing', () => {
    const [, memory, late] = fold([event({ phase: 'disk', bytes: 4 * MiB, remainingBytes: 0, elapsedMs: 1000 }), event({ phase: 'memory', bytes: 10 * MiB, elapsedMs: 1200 }), event({ phase: 'disk', bytes: 4 * MiB, remainingBytes: 0, elapsedMs: 1300 })]);
    assert.equal(late, memory);
    assert.equal(late?.phase, 'memory');
    assert.equal(late?.phaseNumber, 4);
  });

  test('bytes never fall: a switchover event with only the disk\'s bytes keeps what memory sent', () => {
    const views = fold([event({ bytes: 229 * MiB, remainingBytes: 3 * MiB, elapsedMs: 5000 }), event({ phase: 'switchover', bytes: 16 * MiB, elapsedMs: 5100 })]);
    assert.equal(views.at(-1)?.bytes, 229 * MiB);
    assert.equal(views.at(-1)?.total, undefined, 'a new phase with no total says it does not know');
  });

  test('a total that grows (memory passes) is shown growing, never shrinking', () => {
    const views = fold([
      event({ bytes: 100 * MiB, remainingBytes: 100 * MiB, elapsedMs: 1000 }),
      event({ bytes: 180 * MiB, remainingBytes: 20 * MiB, elapsedMs: 2000 }),
      event({ bytes: 190 * MiB, remainingBytes: 60 * MiB, elapsedMs: 3000 }), // a dirty sync: 50 MiB more to send
      event({ bytes: 240 * MiB, remainingBytes: 5 * MiB, elapsedMs: 4000 }), // zero pages skipped: it would shrink
    ]);
    assert.deepEqual(views.map((v) => v.total && v.total / MiB), [200, 200, 250, 250]);
    assert.deepEqual(views.map((v) => v.totalGrowing), [false, false, true, true]);
    assert.match(formatProgress(views[2] as ProgressView), /edge→core memory \(4\/6\) +\[.*\] +76% 190\.0 MiB of 250\.0 MiB \(growing: the guest keeps writing\)/);
  });

  test('an unknown total is shown as unknown, not as a bar of question marks or 100 %', () => {
    const [view] = fold([event({ phase: 'prepare', bytes: 0, elapsedMs: 10 })]);
    assert.equal(view?.total, undefined);
    assert.equal(formatProgress(view as ProgressView), 'edge→core prepare (2/6)    0 B sent');
  });

  test('the rate comes from the bytes over a moving window, and the ETA from it', () => {
    // QEMU's own figure says 0 right after a dirty sync; the window does not.
    const views = fold([
      event({ bytes: 0, remainingBytes: 100 * MiB, rate: 0, elapsedMs: 0 }),
      event({ bytes: 10 * MiB, remainingBytes: 90 * MiB, rate: 0, elapsedMs: 1000 }),
      event({ bytes: 20 * MiB, remainingBytes: 80 * MiB, rate: 0, elapsedMs: 2000 }),
      event({ bytes: 40 * MiB, remainingBytes: 60 * MiB, rate: 0, elapsedMs: 2000 + RATE_WINDOW_MS }),
    ]);
    assert.equal(views[2]?.rate, 10 * MiB);
    assert.equal(views[2]?.etaSeconds, 8);
    // Older points leave the window: 20 MiB over the last 3 s.
    assert.equal(Math.round((views[3]?.rate ?? 0) / 1024), Math.round((20 * MiB) / 3 / 1024));
  });

  test('a new move starts a new view', () => {
    const views = fold([event({ bytes: 50 * MiB, elapsedMs: 9000 }), event({ migrationId: 'm2', phase: 'plan', bytes: 0, elapsedMs: 5 })]);
    assert.equal(views[1]?.bytes, 0);
    assert.equal(views[1]?.phase, 'plan');
  });
});
