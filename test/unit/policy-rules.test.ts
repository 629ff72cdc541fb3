// The placement policy's rules one by one: pins win, manual moves are respected, nothing is decided
// while a migration runs, the cost model (history, link, dirty rate), the strategies, ordered moves
// that never start, and a rate limit that never strands the user at the core.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { estimateMoveMs, initialPolicyState, step } from '../../src/interaction-detect/common/policy.ts';
import { replay } from '../../src/interaction-detect/common/trace.ts';
import {
  DEFAULT_POLICY_PARAMS,
  policyParamsSchema,
  type InteractionSample,
  type PastMigration,
  type PlacementDecision,
  type PlacementMode,
} from '../../src/shared/placement.ts';
import type { SiteRole } from '../../src/shared/migration.ts';
import { TRACE_START, generateTrace, quietSample, type Segment } from '../support/trace-gen.ts';

const P = DEFAULT_POLICY_PARAMS;
const atS = (d: { at: number }): number => (d.at - TRACE_START) / 1000;
const trace = (segments: Segment[], seed = 11): InteractionSample[] => generateTrace({ seed, segments });
const longCrunch = trace([
  { kind: 'typing', s: 20 },
  { kind: 'crunch', s: 120 },
]);
const typing = (s: number): InteractionSample[] => trace([{ kind: 'typing', s }]);
/** Rewrites samples from `fromS` seconds on (and before `untilS`). */
const patch = (samples: InteractionSample[], fromS: number, untilS: number, change: Partial<InteractionSample>): InteractionSample[] =>
  samples.map((s) => (atS(s) >= fromS && atS(s) < untilS ? { ...s, ...change } : s));
const past = (to: SiteRole, atMs: number, totalMs: number, bytes = 0): PastMigration => ({ to, at: TRACE_START + atMs, totalMs, downtimeMs: null, bytes });
const texts = (ds: readonly PlacementDecision[]): string => ds.flatMap((d) => d.reasons).join('\n');

describe('pins win', () => {
  test('"keep at edge" holds the VM at the edge through a long crunch, and says what it would have done', () => {
    const { moves, decisions } = replay(longCrunch, P, [], { mode: 'keep-edge' });
    assert.deepEqual(moves, []);
    assert.ok(decisions.every((d) => d.rule === 'pin'));
    const late = decisions.filter((d) => atS(d) > 60);
    assert.match(texts(late), /pinned to the edge by the user \("keep at edge"\): it stays/);
    assert.match(texts(late), /without the pin it would move to the core:\n.*crunch for \d+\.\d s/);
  });

  test('"keep in cloud" at the edge moves at once, even while the user types, and stays there', () => {
    const { moves } = replay(typing(60), P, [], { mode: 'keep-core' });
    assert.equal(moves.length, 1);
    const [move] = moves;
    assert.ok(move !== undefined);
    assert.equal(move.to, 'core');
    assert.equal(move.rule, 'pin');
    assert.equal(move.strategy, 'auto');
    assert.equal(move.at, typing(60)[0]?.at);
  });

  test('"keep at edge" at the core brings it back at once, with the hybrid strategy', () => {
    const atCore = longCrunch.map((s) => ({ ...s, site: 'core' as const }));
    const { moves } = replay(atCore, P, [], { mode: 'keep-edge' });
    assert.equal(moves.length, 1);
    assert.equal(moves[0]?.to, 'edge');
    assert.equal(moves[0]?.strategy, 'hybrid');
  });

  test('a pin set during the dwell time acts at once (dwell and rate limit are for automatic moves)', () => {
    const { moves: auto } = replay(longCrunch, P, []);
    const arrival = (auto[0]?.at ?? 0) + 7_000;
    const pinnedAt = (arrival - TRACE_START) / 1000 + 2;
    const { moves } = replay(patch(longCrunch, pinnedAt, Infinity, { mode: 'keep-edge' }), policyParamsSchema.parse({ maxMoves: 2 }), []);
    assert.deepEqual(
      moves.map((m) => [m.to, m.rule]),
      [
        ['core', 'crunch'],
        ['edge', 'pin'],
      ],
    );
    assert.ok(atS(moves[1] ?? { at: 0 }) - pinnedAt < 0.5);
  });

  test('the latest action wins: a manual move after the pin is not undone; setting the pin again applies it', () => {
    let samples = patch(typing(100), 0, Infinity, { mode: 'keep-edge' });
    samples = patch(samples, 20, 26, { migrating: true }); // the user sends it to the cloud by hand
    samples = patch(samples, 26, Infinity, { site: 'core' });
    samples = patch(samples, 60, 62, { mode: 'keep-core' }); // then pins it to the cloud...
    samples = patch(samples, 62, Infinity, { mode: 'keep-edge' }); // ...and back to the edge
    const { moves, decisions } = replay(samples, P, []);
    assert.deepEqual(
      moves.map((m) => [m.to, m.rule]),
      [['edge', 'pin']],
    );
    assert.ok(atS(moves[0] ?? { at: 0 }) >= 62 && atS(moves[0] ?? { at: 0 }) < 62.5);
    assert.match(texts(decisions.filter((d) => atS(d) > 27 && atS(d) < 60)), /moved to the core by hand since: the latest action wins/);
  });
});

describe('manual moves and migrations in progress', () => {
  test('no decision while a migration runs; a manual move is respected for the dwell time', () => {
    let samples = typing(100);
    samples = patch(samples, 20, 25, { migrating: true });
    samples = patch(samples, 25, Infinity, { site: 'core' });
    const { moves, decisions } = replay(samples, P, []);
    const during = decisions.filter((d) => atS(d) >= 20 && atS(d) < 25);
    assert.ok(during.length > 0 && during.every((d) => d.rule === 'migrating' && d.action === 'stay'));
    assert.match(texts(during), /a migration the policy did not order is under way/);
    // The user types at the core all along; the policy waits out the dwell (30 s from arrival at ~25 s).
    assert.equal(moves.length, 1);
    const back = moves[0];
    assert.ok(back !== undefined);
    assert.equal(back.to, 'edge');
    assert.equal(back.rule, 'interaction');
    assert.ok(atS(back) >= 55 && atS(back) < 56, `back at ${atS(back)} s`);
    assert.ok(decisions.some((d) => d.rule === 'dwell' && /came to rest \d+\.\d s ago/.test(d.reasons[0] ?? '')));
  });

  test('a sample older than the previous one is ignored, the state untouched', () => {
    const first = step(initialPolicyState(), quietSample(TRACE_START + 1000), { params: P, pastMigrations: [] });
    const late = step(first.state, quietSample(TRACE_START + 900), { params: P, pastMigrations: [] });
    assert.equal(late.decision.rule, 'ignored');
    assert.equal(late.state, first.state);
  });

  test('an ordered move that never starts is given up, then retried after the dwell time', () => {
    // `recorded` sites: the trace never shows the VM moving, as if the agent could not move it.
    const { moves, decisions } = replay(longCrunch, P, [], { sites: 'recorded' });
    assert.ok(moves.length >= 2);
    const [first, second] = moves;
    assert.ok(first !== undefined && second !== undefined);
    assert.ok(decisions.some((d) => d.rule === 'pending'));
    assert.match(texts(decisions), /the move to the core ordered 30\.\d s ago never started; deciding afresh/);
    assert.ok(second.at - first.at >= P.pendingTimeoutMs + P.minDwellMs);
  });
});

describe('cost model', () => {
  const sample = quietSample(TRACE_START + 1_000_000, { dirtyBytesPerS: 25e6, linkBytesPerS: 125e6 });
  const memMs = (512 * 1024 * 1024) / 125e6 * 1000;

  test('without history: setup + memory / link × 1 / (1 − dirty / link)', () => {
    const e = estimateMoveMs('core', sample, [], P);
    assert.equal(e.source, 'model');
    assert.ok(Math.abs(e.ms - (1000 + memMs * 1.25)) < 1e-6);
    assert.match(e.basis, /512 MiB over 125 MB\/s, dirty 25 MB\/s: ×1\.25/);
  });

  test('an unknown dirty rate takes the worst case (×2); an unknown link the assumed 100 Mbit/s', () => {
    assert.ok(Math.abs(estimateMoveMs('core', { ...sample, dirtyBytesPerS: null }, [], P).ms - (1000 + memMs * 2)) < 1e-6);
    const noLink = estimateMoveMs('core', { ...sample, linkBytesPerS: null }, [], P);
    assert.ok(Math.abs(noLink.ms - (1000 + (512 * 1024 * 1024) / 12.5e6 * 1000 * 2)) < 1e-6);
    assert.match(noLink.basis, /an assumed 12\.5 MB\/s/);
  });

  test('with history: the median of the latest moves that way (an outlier does not set the price)', () => {
    const history = [
      past('core', 1000, 4000),
      past('core', 2000, 5000),
      past('core', 3000, 100_000),
      past('core', 4000, 4500),
      past('edge', 5000, 2000),
      past('core', 2_000_000, 1), // after the sample: not known yet
    ];
    const e = estimateMoveMs('core', sample, history, P);
    assert.equal(e.source, 'history');
    assert.equal(e.ms, 4750);
    assert.match(e.basis, /median of the last 4 moves to the core/);
    assert.equal(estimateMoveMs('edge', sample, history, P).ms, 2000);
    assert.equal(estimateMoveMs('core', sample, history, policyParamsSchema.parse({ historyLimit: 2 })).ms, (100_000 + 4500) / 2);
  });

  test('a past move made on a faster link is scaled to today\'s slower link', () => {
    const history = [past('core', 1000, 4000, 500e6)]; // 125 MB/s then
    const e = estimateMoveMs('core', { ...sample, linkBytesPerS: 62.5e6 }, history, P);
    assert.equal(e.ms, 8000);
    assert.match(e.basis, /×2\.00 for a slower link now/);
    assert.equal(estimateMoveMs('core', { ...sample, linkBytesPerS: 250e6 }, history, P).ms, 4000);
  });

  test('cheap past moves: a long crunch moves as soon as it is sustained (15 s)', () => {
    const history = [past('core', -3_600_000, 2000), past('edge', -3_500_000, 2000)];
    const { moves } = replay(longCrunch, P, history);
    assert.equal(moves.length, 1);
    assert.ok(atS(moves[0] ?? { at: 0 }) > 35 && atS(moves[0] ?? { at: 0 }) < 42, `at ${atS(moves[0] ?? { at: 0 })}`);
    assert.match(texts(moves), /median of the last|the last move to the core/);
  });

  test('expensive past moves: not worth it, and the reasons say by how much', () => {
    const history = [past('core', -3_600_000, 60_000), past('edge', -3_500_000, 60_000)];
    const { moves, decisions } = replay(longCrunch, P, history);
    assert.deepEqual(moves, []);
    const last = decisions.at(-1);
    assert.equal(last?.rule, 'not-worth-it');
    assert.match(texts([last as PlacementDecision]), /saves \d+\.\d s ≤ estimated round trip 120 s × 1\.5 = 180 s/);
  });

  test('a core no faster than the edge is never worth a move', () => {
    assert.deepEqual(replay(longCrunch, policyParamsSchema.parse({ coreSpeedup: 1 }), []).moves, []);
  });
});

describe('strategies', () => {
  test('to the core: the default (auto), which chooses during the move; the reasons say what to expect', () => {
    const history = [past('core', -3_600_000, 2000), past('edge', -3_500_000, 2000)];
    const calm = replay(longCrunch, P, history).moves[0];
    assert.equal(calm?.strategy, 'auto');
    assert.match(texts([calm as PlacementDecision]), /strategy auto: the guest dirties 27\.2 MB\/s, the link carries 125 MB\/s: expect pre-copy to converge/);
    const dirty = longCrunch.map((s) => ({ ...s, dirtyBytesPerS: 40e6, linkBytesPerS: 60e6 }));
    const busy = replay(dirty, P, history).moves[0];
    assert.equal(busy?.strategy, 'auto');
    assert.match(texts([busy as PlacementDecision]), /dirties 40 MB\/s, over half the link's 60 MB\/s: expect post-copy/);
  });
});

describe('rate limit', () => {
  const alternating = trace([
    { kind: 'typing', s: 20 },
    { kind: 'crunch', s: 100 },
    { kind: 'typing', s: 45 },
    { kind: 'crunch', s: 100 },
    { kind: 'typing', s: 45 },
  ]);

  for (const maxMoves of [2, 3]) {
    test(`a move to the core keeps room for its way back (max ${maxMoves})`, () => {
      const { moves, decisions } = replay(alternating, policyParamsSchema.parse({ maxMoves }), []);
      assert.deepEqual(
        moves.map((m) => m.to),
        ['core', 'edge'],
      );
      const held = decisions.filter((d) => d.rule === 'rate-limit');
      assert.ok(held.length > 0);
      assert.match(held[0]?.reasons[0] ?? '', new RegExp(`2 moves in the last 600 s already, of at most ${maxMoves} \\(a move to the core keeps room for its way back\\)`));
    });
  }
});

describe('modes on samples', () => {
  test('the sample\'s own mode is used; a replay option overrides it', () => {
    const pinned = patch(longCrunch, 0, Infinity, { mode: 'keep-edge' as PlacementMode });
    assert.deepEqual(replay(pinned, P, []).moves, []);
    assert.equal(replay(pinned, P, [], { mode: 'auto' }).moves.length, 1);
  });
});
