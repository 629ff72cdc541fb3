// Ping-pong: traces built to bait the policy into moving back and forth. Without its guards it does;
// with them, the dwell time spaces moves out and the rate limit caps them.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseTrace, replay } from '../../src/interaction-detect/common/trace.ts';
import { DEFAULT_POLICY_PARAMS, policyParamsSchema, type MigrateDecision, type PastMigration, type PolicyParams } from '../../src/shared/placement.ts';
import { TRACE_DIR, TRACE_START, generateTrace } from '../support/trace-gen.ts';

// (crunch 40 s, typing 15 s) × 8. With cheap past moves (1.5 s each way) every crunch is worth a move
// after the 15 s minimum, and every typing burst asks for the way back.
const flapping = parseTrace(readFileSync(resolve(TRACE_DIR, 'adversarial-flapping.jsonl'), 'utf8'));
const cheap: PastMigration[] = [
  { to: 'core', at: TRACE_START - 3_600_000, totalMs: 1500, downtimeMs: 50, bytes: 200e6 },
  { to: 'edge', at: TRACE_START - 3_500_000, totalMs: 1500, downtimeMs: 50, bytes: 200e6 },
];
const unguarded = policyParamsSchema.parse({ minDwellMs: 0, maxMoves: 1_000_000 });

const movesWith = (params: PolicyParams): MigrateDecision[] => replay(flapping, params, cheap).moves;
const maxInAnyWindow = (moves: readonly MigrateDecision[], windowMs: number): number =>
  Math.max(0, ...moves.map((m) => moves.filter((n) => n.at >= m.at && n.at < m.at + windowMs).length));

describe('ping-pong bait', () => {
  test('without dwell and rate limit the policy is baited: it moves on every phase', () => {
    const moves = movesWith(unguarded);
    assert.ok(moves.length >= 14, `only ${moves.length} moves`);
  });

  test('the dwell time alone: no automatic move within 30 s of the previous one coming to rest', () => {
    const moves = movesWith(policyParamsSchema.parse({ maxMoves: 1_000_000 }));
    assert.ok(moves.length < movesWith(unguarded).length);
    for (let i = 1; i < moves.length; i += 1) {
      const gap = (moves[i]?.at ?? 0) - (moves[i - 1]?.at ?? 0);
      // 1.5 s to move (the simulated move takes the estimate), then 30 s of rest
      assert.ok(gap >= DEFAULT_POLICY_PARAMS.minDwellMs + 1500, `moves ${i - 1} and ${i} only ${gap} ms apart`);
    }
  });

  test('the rate limit alone: at most 6 moves in any 10 minutes, and the last one brings the VM home', () => {
    const moves = movesWith(policyParamsSchema.parse({ minDwellMs: 0 }));
    assert.equal(maxInAnyWindow(moves, 600_000), 6);
    assert.equal(moves.at(-1)?.to, 'edge');
  });

  test('with the defaults: few moves, spaced out, within the limit, alternating', () => {
    const moves = movesWith(DEFAULT_POLICY_PARAMS);
    assert.ok(moves.length <= DEFAULT_POLICY_PARAMS.maxMoves);
    assert.ok(maxInAnyWindow(moves, DEFAULT_POLICY_PARAMS.rateWindowMs) <= DEFAULT_POLICY_PARAMS.maxMoves);
    moves.forEach((m, i) => {
      assert.equal(m.to, i % 2 === 0 ? 'core' : 'edge');
      if (i > 0) assert.ok(m.at - (moves[i - 1]?.at ?? 0) >= DEFAULT_POLICY_PARAMS.minDwellMs);
    });
  });

  test('phases flipping every few seconds never move the VM (sustain times and hysteresis)', () => {
    const segments = Array.from({ length: 40 }, (_, i) => ({ kind: i % 2 === 0 ? ('crunch' as const) : ('typing' as const), s: 4 }));
    const samples = generateTrace({ seed: 99, segments });
    assert.deepEqual(replay(samples, unguarded, cheap).moves, []);
    // Started at the core, the first 4 s of typing (over the 3 s sustain) bring the VM back, once;
    // at the edge, 4 s crunches never count.
    const atCore = samples.map((s) => ({ ...s, site: 'core' as const }));
    assert.deepEqual(
      replay(atCore, unguarded, cheap).moves.map((m) => m.to),
      ['edge'],
    );
  });
});
