// The intensity model: time-based windows (jitter, bursts, gaps), the intensity formula, phases with
// hysteresis, and confidence that drops when sensors are missing instead of reading them as zero.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assessWindow, intensityOf, windowFeatures } from '../../src/interaction-detect/common/intensity.ts';
import { DEFAULT_POLICY_PARAMS, type InteractionSample } from '../../src/shared/placement.ts';
import { TRACE_START, mulberry32, quietSample, series } from '../support/trace-gen.ts';

const P = DEFAULT_POLICY_PARAMS.intensity;
const END = 10_000; // windows below end at TRACE_START + END
const now = TRACE_START + END;
const close = (actual: number | null, expected: number, tolerance = 0.02): void => {
  assert.ok(actual !== null && Math.abs(actual - expected) <= tolerance, `${actual} ≉ ${expected} ± ${tolerance}`);
};
const crunch = { vcpuBusy: 2, userIdleS: 30 };
const typing = { keysPerS: 8, vcpuBusy: 0.3, screenChangePerS: 0.05 };

describe('intensity formula', () => {
  const features = (cpu: number | null, gpu: number | null, io: number | null) => ({
    ...windowFeatures([], now, P),
    cpu,
    gpu,
    ioBytesPerS: io,
  });

  test('a saturated CPU is full intensity, whatever the GPU does (soft OR, not a mean)', () => {
    assert.equal(intensityOf(features(1, 0, 0), P), 1);
    assert.equal(intensityOf(features(1, null, null), P), 1);
  });

  test('the GPU counts half, and combines with the CPU as an OR', () => {
    close(intensityOf(features(0, 1, 0), P), 0.5, 1e-9);
    close(intensityOf(features(0.5, 1, 0), P), 1 - 0.5 * 0.5, 1e-9);
  });

  test('I/O alone never reaches the crunch threshold', () => {
    const io = intensityOf(features(0, 0, 1e12), P);
    close(io, 0.2, 1e-9);
    assert.ok(io < P.crunchEnter);
  });
});

describe('windows are by time, not by sample count', () => {
  // The last 3 s of the window crunching, the 2 s before idle: the CPU average is 0.6 whatever the
  // sampling (a sample's reading describes the interval that ends at it).
  const busyLate = (at: number): Partial<InteractionSample> => ({ vcpuBusy: at > now - 3_000 ? 2 : 0 });

  test('the same activity sampled every 250 ms, every 1 s, or with ±100 ms jitter reads the same', () => {
    const every250 = series(0, END + 1, 250, busyLate);
    const every1000 = series(0, END + 1, 1000, busyLate);
    const rand = mulberry32(42);
    const jittered = every250.map((s, i) => (i === every250.length - 1 ? s : { ...s, at: s.at + Math.round((rand() - 0.5) * 200) }));
    for (const samples of [every250, every1000, jittered]) {
      const f = windowFeatures(samples, now, P);
      close(f.cpu, 0.6, 0.05);
      close(f.coverage.cpu, 1, 0.001);
    }
  });

  test('a burst of samples a millisecond apart weighs only the time it covers', () => {
    const base = series(0, END + 1, 250, () => ({}));
    const burst = Array.from({ length: 20 }, (_, i) => quietSample(now - 3_000 + i + 1, { vcpuBusy: 2 }));
    const samples = [...base, ...burst].sort((a, b) => a.at - b.at);
    const f = windowFeatures(samples, now, P);
    assert.ok((f.cpu ?? 1) < 0.01, `cpu ${f.cpu}`);
  });

  test('a gap is unknown time: it lowers coverage and confidence, it is not read as idle', () => {
    const full = series(0, END + 1, 250, () => crunch);
    const gapped = full.filter((s) => s.at <= now - 4_000 || s.at > now - 1_000);
    const f = windowFeatures(gapped, now, P);
    // No samples from now − 4 s to now − 0.75 s: the one after the gap vouches for 1 s of those
    // 3.25 s, the other 2.25 s of the 5 s window stay unknown.
    close(f.coverage.cpu, 0.55, 0.001);
    close(f.cpu, 1, 1e-9);
    const withGap = assessWindow(gapped, now, P);
    const without = assessWindow(full, now, P);
    assert.equal(withGap.phase, 'crunch');
    assert.ok(withGap.confidence < without.confidence);
  });

  test('a window that has barely started is not a confident judgement', () => {
    const one = [quietSample(now, crunch)];
    const a = assessWindow(one, now, P);
    assert.equal(a.phase, 'crunch');
    assert.ok(a.confidence < 0.1, `confidence ${a.confidence}`);
  });

  test('samples after "now" are not used', () => {
    const samples = [...series(0, END + 1, 250, () => ({})), ...series(END + 250, END + 5_000, 250, () => crunch)];
    assert.equal(windowFeatures(samples, now, P).cpu, 0);
  });
});

describe('phases', () => {
  const window = (make: (at: number) => Partial<InteractionSample>): InteractionSample[] => series(0, END + 1, 250, make);

  test('busy vCPUs and no input: crunch, confidently', () => {
    const a = assessWindow(window(() => crunch), now, P);
    assert.equal(a.phase, 'crunch');
    close(a.intensity, 1, 1e-9);
    assert.equal(a.interaction, 0);
    assert.ok(a.confidence > 0.95);
  });

  test('typing: interactive, even while the VM computes (the user wants it local)', () => {
    const a = assessWindow(window((at) => ({ ...typing, vcpuBusy: 2, keysPerS: Math.floor(at / 250) % 4 === 0 ? 0 : 8 })), now, P);
    assert.equal(a.phase, 'interactive');
    close(a.interaction, 0.75, 0.06);
    assert.ok(a.confidence > 0.8);
  });

  test('nothing happening: idle', () => {
    const a = assessWindow(window(() => ({ vcpuBusy: 0.04 })), now, P);
    assert.equal(a.phase, 'idle');
    assert.ok(a.confidence > 0.95);
  });

  test('a stray pointer event now and then is not interaction', () => {
    const a = assessWindow(window((at) => ({ ...crunch, pointerPerS: Math.floor(at / 250) % 25 === 0 ? 4 : 0 })), now, P);
    assert.equal(a.phase, 'crunch');
    assert.ok((a.interaction ?? 1) < 0.1);
  });

  test('hysteresis: between the thresholds, the previous phase holds', () => {
    // intensity 0.5: below crunchEnter (0.6), above crunchStay (0.45)
    const middling = window(() => ({ vcpuBusy: 1 }));
    assert.equal(assessWindow(middling, now, P, null).phase, 'idle');
    assert.equal(assessWindow(middling, now, P, 'idle').phase, 'idle');
    assert.equal(assessWindow(middling, now, P, 'crunch').phase, 'crunch');
    // input in 15 % of the time: below interactiveEnter (0.2), above interactiveStay (0.1)
    const someInput = window((at) => ({ keysPerS: Math.floor(at / 250) % 20 < 3 ? 4 : 0 }));
    assert.equal(assessWindow(someInput, now, P, 'idle').phase, 'idle');
    assert.equal(assessWindow(someInput, now, P, 'interactive').phase, 'interactive');
  });
});

describe('missing sensors lower confidence; they are not zero activity', () => {
  const window = (make: (at: number) => Partial<InteractionSample>): InteractionSample[] => series(0, END + 1, 250, make);

  test('no GPU sensor: the same crunch, a little less sure (0.9), still above the policy\'s 0.6', () => {
    const withGpu = assessWindow(window(() => ({ ...crunch, gpuBusy: 0 })), now, P);
    const noGpu = assessWindow(window(() => ({ ...crunch, gpuBusy: null })), now, P);
    assert.equal(noGpu.phase, 'crunch');
    assert.equal(noGpu.intensity, withGpu.intensity);
    assert.equal(noGpu.features.gpu, null);
    assert.equal(noGpu.features.coverage.gpu, 0);
    close(noGpu.confidence, 0.9, 1e-9);
    assert.ok(withGpu.confidence > noGpu.confidence);
    assert.ok(noGpu.confidence >= DEFAULT_POLICY_PARAMS.minConfidence);
  });

  test('no input sensor: a busy VM is not a confident crunch (the user may be typing)', () => {
    const a = assessWindow(window(() => ({ ...crunch, keysPerS: null, pointerPerS: null, userIdleS: null })), now, P);
    assert.equal(a.phase, 'crunch');
    assert.equal(a.interaction, null);
    assert.ok(a.confidence <= 0.5, `confidence ${a.confidence}`);
    assert.ok(a.confidence < DEFAULT_POLICY_PARAMS.minConfidence);
  });

  test('no input sensor, but the desktop shell says the user is away: a confident crunch again', () => {
    const a = assessWindow(window(() => ({ ...crunch, keysPerS: null, pointerPerS: null, userIdleS: 300 })), now, P);
    assert.equal(a.phase, 'crunch');
    assert.equal(a.away, true);
    assert.equal(a.interaction, 0);
    assert.ok(a.confidence > 0.9);
  });

  test('no sensors at all: nothing is known, confidence 0', () => {
    const nothing = window(() => ({
      keysPerS: null,
      pointerPerS: null,
      userIdleS: null,
      screenChangePerS: null,
      fbUpdatesPerS: null,
      gpuBusy: null,
      vcpuBusy: null,
      netBytesPerS: null,
      diskBytesPerS: null,
    }));
    const a = assessWindow(nothing, now, P);
    assert.equal(a.confidence, 0);
    assert.equal(a.interaction, null);
  });

  test('a missing CPU reading is left out of the average, not counted as an idle vCPU', () => {
    const samples = window((at) => ({ vcpuBusy: Math.floor(at / 250) % 2 === 0 ? null : 2 }));
    const f = windowFeatures(samples, now, P);
    close(f.cpu, 1, 1e-9);
    close(f.coverage.cpu, 0.5, 0.01);
  });
});
