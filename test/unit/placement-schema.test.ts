// The placement contracts: samples (null = unavailable), parameters and their defaults, past
// migrations from history records, and JSON-lines traces with line-numbered errors.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_POLICY_PARAMS,
  interactionSampleSchema,
  pastMigrationOf,
  placementDecisionSchema,
  policyParamsSchema,
} from '../../src/shared/placement.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';
import { TraceParseError, formatTrace, parseTrace } from '../../src/interaction-detect/common/trace.ts';
import { quietSample } from '../support/trace-gen.ts';

const minimal = { at: 1000, site: 'edge', migrating: false, vcpus: 2, memoryMiB: 512 };

describe('interaction samples', () => {
  test('a sensor left out is unavailable (null), not zero', () => {
    const s = interactionSampleSchema.parse(minimal);
    assert.equal(s.gpuBusy, null);
    assert.equal(s.keysPerS, null);
    assert.equal(s.vcpuBusy, null);
    assert.equal(s.linkBytesPerS, null);
    assert.equal(s.mode, undefined);
  });

  test('zero and null are different readings', () => {
    assert.equal(interactionSampleSchema.parse({ ...minimal, gpuBusy: 0 }).gpuBusy, 0);
    assert.equal(interactionSampleSchema.parse({ ...minimal, gpuBusy: null }).gpuBusy, null);
  });

  test('refuses unknown fields (a typo is an error, not a silent null), negative rates and a GPU over 100 %', () => {
    assert.equal(interactionSampleSchema.safeParse({ ...minimal, gpubusy: 0.5 }).success, false);
    assert.equal(interactionSampleSchema.safeParse({ ...minimal, keysPerS: -1 }).success, false);
    assert.equal(interactionSampleSchema.safeParse({ ...minimal, gpuBusy: 1.5 }).success, false);
    assert.equal(interactionSampleSchema.safeParse({ ...minimal, site: 'moon' }).success, false);
    assert.equal(interactionSampleSchema.safeParse({ ...minimal, mode: 'keep-edge' }).success, true);
  });
});

describe('policy parameters', () => {
  test('defaults', () => {
    assert.equal(DEFAULT_POLICY_PARAMS.intensity.windowMs, 5_000);
    assert.equal(DEFAULT_POLICY_PARAMS.minCrunchMs, 15_000);
    assert.equal(DEFAULT_POLICY_PARAMS.coreSpeedup, 3);
    assert.equal(DEFAULT_POLICY_PARAMS.costMargin, 1.5);
    assert.equal(DEFAULT_POLICY_PARAMS.minDwellMs, 30_000);
    assert.equal(DEFAULT_POLICY_PARAMS.maxMoves, 6);
    assert.equal(DEFAULT_POLICY_PARAMS.rateWindowMs, 600_000);
  });

  test('a partial set keeps the other defaults, nested ones included', () => {
    const p = policyParamsSchema.parse({ minDwellMs: 0, intensity: { windowMs: 8_000 } });
    assert.equal(p.minDwellMs, 0);
    assert.equal(p.intensity.windowMs, 8_000);
    assert.equal(p.intensity.crunchEnter, DEFAULT_POLICY_PARAMS.intensity.crunchEnter);
    assert.equal(p.coreSpeedup, 3);
  });

  test('hysteresis must go the right way; a margin below 1 is refused', () => {
    assert.equal(policyParamsSchema.safeParse({ intensity: { crunchEnter: 0.4, crunchStay: 0.5 } }).success, false);
    assert.equal(policyParamsSchema.safeParse({ costMargin: 0.5 }).success, false);
  });
});

describe('past migrations', () => {
  const record: MigrationRecord = {
    migrationId: 'm1',
    vm: 'demo',
    from: 'edge',
    to: 'core',
    strategy: 'precopy',
    outcome: 'committed',
    startedAt: '2026-01-01T00:00:00.000Z',
    totalMs: 4200,
    downtimeMs: 80,
    phaseMs: {},
    phaseBytes: { memory: 300e6 },
    streamBytes: { migration: 310e6, nbd: 20e6 },
  };

  test('a committed record gives direction, time, downtime and bytes on the link', () => {
    assert.deepEqual(pastMigrationOf(record), {
      to: 'core',
      at: Date.UTC(2026, 0, 1),
      totalMs: 4200,
      downtimeMs: 80,
      bytes: 330e6,
      strategy: 'precopy',
    });
  });

  test('without stream figures, the phase bytes; an aborted or undated record gives nothing', () => {
    assert.equal(pastMigrationOf({ ...record, streamBytes: {} })?.bytes, 300e6);
    assert.equal(pastMigrationOf({ ...record, outcome: 'aborted' }), null);
    assert.equal(pastMigrationOf({ ...record, startedAt: 'yesterday' }), null);
  });
});

describe('decisions', () => {
  test('a migrate decision needs its destination and strategy', () => {
    const base = { at: 1, site: 'edge', rule: 'crunch', phase: 'crunch', confidence: 0.9, reasons: ['x 1'], figures: {} };
    assert.equal(placementDecisionSchema.safeParse({ ...base, action: 'migrate' }).success, false);
    assert.equal(placementDecisionSchema.safeParse({ ...base, action: 'migrate', to: 'core', strategy: 'precopy' }).success, true);
    assert.equal(placementDecisionSchema.safeParse({ ...base, action: 'stay', reasons: [] }).success, false);
  });
});

describe('traces', () => {
  test('written and read back unchanged; blank lines are skipped', () => {
    const samples = [quietSample(1000), quietSample(1250, { keysPerS: 4, gpuBusy: null })];
    assert.deepEqual(parseTrace(`\n${formatTrace(samples)}\n\n`), samples);
  });

  test('every bad line is reported with its number', () => {
    const good = JSON.stringify(minimal);
    const text = [good, '{not json', good, JSON.stringify({ ...minimal, keysPerS: 'many' }), '', JSON.stringify({ ...minimal, extra: 1 })].join('\n');
    assert.throws(
      () => parseTrace(text),
      (error: unknown) => {
        assert.ok(error instanceof TraceParseError);
        assert.deepEqual(
          error.errors.map((e) => e.line),
          [2, 4, 6],
        );
        assert.match(error.errors[0]?.message ?? '', /not JSON/);
        assert.match(error.errors[1]?.message ?? '', /^keysPerS: /);
        assert.match(error.errors[2]?.message ?? '', /extra/);
        assert.match(error.message, /line 4: keysPerS/);
        return true;
      },
    );
  });
});
