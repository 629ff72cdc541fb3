// The trace library: every committed trace replays to exactly its expected moves (direction and time
// window) and no others; replay is deterministic; every decision is valid and explains itself.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseTrace, formatTrace, replay } from '../../src/interaction-detect/common/trace.ts';
import { DEFAULT_POLICY_PARAMS, placementDecisionSchema, type InteractionSample } from '../../src/shared/placement.ts';
import type { SiteRole } from '../../src/shared/migration.ts';
import { TRACE_DIR, TRACE_LIBRARY, TRACE_START, libraryTrace } from '../support/trace-gen.ts';

interface ExpectedMove {
  to: SiteRole;
  /** Seconds after the trace's start (TRACE_START) within which the move is decided. */
  from: number;
  until: number;
}

// With the defaults and no history (512 MiB, 1 Gbit/s, crunch dirtying ~30 MB/s), a round trip is
// estimated at ~12.6 s, so a crunch pays for it (gain = age × 2/3 > 12.6 × 1.5) at an age of ~28 s;
// the crunch phase is recognised ~3 s after the crunch starts (the 5 s window must fill past the 0.6
// threshold). A move to the core thus comes ~31–34 s into a crunch. A move back comes once
// interaction has lasted 3 s, recognised ~1–2 s after typing starts: 4–6 s into the typing.
const EXPECTED: Record<string, ExpectedMove[]> = {
  // reading pauses and idle stretches in between: never a crunch
  'interactive-only': [],
  // crunch 20–140 s
  'long-crunch': [{ to: 'core', from: 45, until: 60 }],
  // crunches of 5–10 s: never sustained 15 s, never moved
  'short-bursts': [],
  // crunch 20–120, typing 120–165, crunch 165–265, typing 265–310, crunch 310–400
  alternating: [
    { to: 'core', from: 45, until: 60 },
    { to: 'edge', from: 120, until: 130 },
    { to: 'core', from: 190, until: 205 },
    { to: 'edge', from: 265, until: 275 },
    { to: 'core', from: 335, until: 350 },
  ],
  // crunch 30–150, typing 150–190; stray input, CPU noise and dropouts, lost samples, null readings
  'noisy-sensors': [
    { to: 'core', from: 55, until: 72 },
    { to: 'edge', from: 150, until: 160 },
  ],
  // crunch 20–120, typing 120–150, with no GPU and no presence sensor
  'missing-gpu-sensor': [
    { to: 'core', from: 45, until: 60 },
    { to: 'edge', from: 120, until: 130 },
  ],
  // pinned to the edge through a 150 s crunch
  'user-pinned': [],
  // (crunch 40 s, typing 15 s) × 8 from 0 s: the dwell time swallows every first typing burst after
  // an arrival at the core, and after 6 moves the rate limit (6 per 10 min) stops the rest.
  'adversarial-flapping': [
    { to: 'core', from: 28, until: 38 },
    { to: 'edge', from: 95, until: 105 },
    { to: 'core', from: 138, until: 148 },
    { to: 'edge', from: 205, until: 215 },
    { to: 'core', from: 248, until: 258 },
    { to: 'edge', from: 315, until: 325 },
  ],
};

const load = (name: string): InteractionSample[] => parseTrace(readFileSync(resolve(TRACE_DIR, `${name}.jsonl`), 'utf8'));

describe('trace library', () => {
  test('every trace in the library has its expectations, and every fixture file is in the library', () => {
    const files = readdirSync(TRACE_DIR).filter((f) => f.endsWith('.jsonl')).map((f) => f.slice(0, -'.jsonl'.length));
    assert.deepEqual(files.sort(), Object.keys(TRACE_LIBRARY).sort());
    assert.deepEqual(Object.keys(EXPECTED).sort(), Object.keys(TRACE_LIBRARY).sort());
  });

  test('the committed fixtures are what the generator makes (no drift)', () => {
    for (const name of Object.keys(TRACE_LIBRARY)) {
      assert.equal(readFileSync(resolve(TRACE_DIR, `${name}.jsonl`), 'utf8'), libraryTrace(name), `${name}: run node test/support/trace-gen.ts`);
    }
  });

  for (const [name, expected] of Object.entries(EXPECTED)) {
    test(`${name}: ${expected.length === 0 ? 'no moves' : expected.map((m) => `→ ${m.to} at ${m.from}–${m.until} s`).join(', ')}, and no others`, () => {
      const { moves } = replay(load(name), DEFAULT_POLICY_PARAMS, []);
      const actual = moves.map((m) => ({ to: m.to, atS: (m.at - TRACE_START) / 1000 }));
      assert.equal(actual.length, expected.length, `moves: ${JSON.stringify(actual)}`);
      expected.forEach((e, i) => {
        const m = actual[i];
        assert.ok(m !== undefined && m.to === e.to && m.atS >= e.from && m.atS <= e.until, `move ${i}: expected → ${e.to} in ${e.from}–${e.until} s, got ${JSON.stringify(m)}`);
      });
      // Moves alternate, as they must: there is only one other site.
      moves.forEach((m, i) => assert.notEqual(m.to, m.site, `move ${i} goes nowhere`));
    });
  }
});

describe('replay', () => {
  test('is deterministic: the same trace twice gives the same decisions, state included', () => {
    for (const name of Object.keys(TRACE_LIBRARY)) {
      const samples = load(name);
      assert.deepEqual(replay(samples, DEFAULT_POLICY_PARAMS, []), replay(samples, DEFAULT_POLICY_PARAMS, []), name);
    }
  });

  test('a trace written and read back replays the same', () => {
    const samples = load('alternating');
    const again = parseTrace(formatTrace(samples));
    assert.deepEqual(again, samples);
    assert.deepEqual(replay(again, DEFAULT_POLICY_PARAMS, []).decisions, replay(samples, DEFAULT_POLICY_PARAMS, []).decisions);
  });

  test('one decision per sample; every decision is valid against the shared schema and has reasons', () => {
    for (const name of Object.keys(TRACE_LIBRARY)) {
      const samples = load(name);
      const { decisions } = replay(samples, DEFAULT_POLICY_PARAMS, []);
      assert.equal(decisions.length, samples.length);
      for (const d of decisions) {
        assert.deepEqual(placementDecisionSchema.parse(d), d);
        assert.ok(d.reasons.length > 0 && d.reasons.every((r) => r.length > 0));
        for (const v of Object.values(d.figures)) assert.ok(Number.isFinite(v));
      }
    }
  });

  test('reasons carry their numbers', () => {
    const { decisions, moves } = replay(load('alternating'), DEFAULT_POLICY_PARAMS, []);
    for (const d of decisions) {
      if (d.rule === 'ignored') continue;
      assert.match(d.reasons.join(' '), /\d/, `${d.rule} decision without a number: ${d.reasons.join(' | ')}`);
    }
    const toCore = moves.find((m) => m.to === 'core');
    assert.ok(toCore !== undefined);
    const text = toCore.reasons.join('\n');
    assert.match(text, /crunch for \d+\.\d s/);
    assert.match(text, /expected \d+\.\d s more/);
    assert.match(text, /×3 core speedup saves \d+\.\d s > estimated round trip \d+\.\d s × 1\.5 = \d+\.\d s/);
    assert.ok(toCore.figures.gainS !== undefined && toCore.figures.neededS !== undefined && toCore.figures.gainS > toCore.figures.neededS);
    const toEdge = moves.find((m) => m.to === 'edge');
    assert.ok(toEdge !== undefined);
    assert.equal(toEdge.strategy, 'hybrid');
    assert.match(toEdge.reasons.join('\n'), /interaction for \d+\.\d s \(input in \d+ % of the last 5\.0 s/);
  });
});
