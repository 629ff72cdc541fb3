// The intensity model: a rolling window of interaction samples → how hard the VM computes (intensity,
// 0..1), how much the user interacts with it (interaction, 0..1), the phase (interactive, crunch, idle)
// and a confidence. Pure: time comes from the samples, so recorded traces give the same answers.
//
// Windows are by time, not by sample count. Each sample's rates describe the interval since the
// previous sample, so a sample weighs as much as the time it covers: jittered, late or doubled-up
// samples weigh correctly. A sample vouches for at most `maxSampleSpanMs` before it; the rest of a gap
// is unknown time, which lowers coverage and so confidence. A sensor that is null (unavailable) adds
// nothing to the averages and lowers its coverage: missing data is never read as zero activity.
import type { IntensityParams, InteractionSample, Phase } from '../../shared/placement.ts';

/** Share (0..1) of the window for which each sensor group reported a value. */
export interface Coverage {
  /** Key and pointer event counts (each counts half). */
  input: number;
  /** System idle time from the desktop shell. */
  presence: number;
  /** Changed pixels. */
  display: number;
  cpu: number;
  gpu: number;
  /** Guest network or disk rates. */
  io: number;
}

/** Time-weighted averages over the window; null when no sample in it had the sensor. */
export interface WindowFeatures {
  windowMs: number;
  /** Time of the window covered by samples (gaps beyond `maxSampleSpanMs` excluded). */
  coveredMs: number;
  /** Share of the input-known time with at least one key or pointer event. */
  inputActive: number | null;
  keysPerS: number | null;
  pointerPerS: number | null;
  /** The latest system idle time in the window. */
  userIdleS: number | null;
  /** Busy vCPUs / vCPUs, 0..1. */
  cpu: number | null;
  /** Host GPU busy fraction, 0..1. */
  gpu: number | null;
  /** Guest network + disk, bytes per second. */
  ioBytesPerS: number | null;
  screenChangePerS: number | null;
  coverage: Coverage;
}

export interface IntensityAssessment {
  /** The window's end (the latest sample's time). */
  at: number;
  phase: Phase;
  /** How far the sensors support the phase, 0..1: evidence coverage × margin from the thresholds. */
  confidence: number;
  /** How hard the VM computes, 0..1 (see `intensityOf`). */
  intensity: number;
  /** How much the user interacts, 0..1 (share of time with input); null when no input sensor reported. */
  interaction: number | null;
  /** The user is away from the laptop (system idle ≥ awayIdleS); null when unknown. */
  away: boolean | null;
  features: WindowFeatures;
}

const clamp01 = (x: number): number => (x < 0 ? 0 : x > 1 ? 1 : x);

/**
 * How much of the window (now − windowMs, now] sample `i` covers: the interval since the previous
 * sample, capped at `maxSampleSpanMs` (the first sample of a history is taken to cover one nominal
 * period). Samples must be in ascending time order; a sample not later than its predecessor covers
 * nothing.
 */
function coveredBy(samples: readonly InteractionSample[], i: number, now: number, p: IntensityParams): number {
  const s = samples[i];
  if (s === undefined || s.at > now) return 0;
  const prev = samples[i - 1];
  const interval = prev === undefined ? p.nominalPeriodMs : Math.min(Math.max(s.at - prev.at, 0), p.maxSampleSpanMs);
  const start = Math.max(s.at - interval, now - p.windowMs);
  return Math.max(0, s.at - start);
}

/** A time-weighted mean of one reading. */
class Mean {
  weight = 0;
  total = 0;
  add(value: number | null, w: number): void {
    if (value === null || w <= 0) return;
    this.weight += w;
    this.total += value * w;
  }
  value(): number | null {
    return this.weight > 0 ? this.total / this.weight : null;
  }
}

/** Averages over the window ending at `now`, from samples in ascending time order. */
export function windowFeatures(samples: readonly InteractionSample[], now: number, p: IntensityParams): WindowFeatures {
  const keys = new Mean();
  const pointer = new Mean();
  const active = new Mean();
  const cpu = new Mean();
  const gpu = new Mean();
  const io = new Mean();
  const screen = new Mean();
  let presenceMs = 0;
  let coveredMs = 0;
  let userIdleS: number | null = null;
  // Only samples after the window's start reach into it (each reads its predecessor's time).
  let first = samples.length;
  while (first > 0 && (samples[first - 1]?.at ?? 0) > now - p.windowMs) first -= 1;
  for (let i = first; i < samples.length; i += 1) {
    const s = samples[i];
    const w = coveredBy(samples, i, now, p);
    if (s === undefined || w <= 0) continue;
    coveredMs += w;
    keys.add(s.keysPerS, w);
    pointer.add(s.pointerPerS, w);
    if (s.keysPerS !== null || s.pointerPerS !== null) active.add((s.keysPerS ?? 0) + (s.pointerPerS ?? 0) > 0 ? 1 : 0, w);
    cpu.add(s.vcpuBusy === null ? null : clamp01(s.vcpuBusy / s.vcpus), w);
    gpu.add(s.gpuBusy, w);
    io.add(s.netBytesPerS === null && s.diskBytesPerS === null ? null : (s.netBytesPerS ?? 0) + (s.diskBytesPerS ?? 0), w);
    screen.add(s.screenChangePerS, w);
    if (s.userIdleS !== null) {
      presenceMs += w;
      userIdleS = s.userIdleS;
    }
  }
  const share = (ms: number): number => clamp01(ms / p.windowMs);
  return {
    windowMs: p.windowMs,
    coveredMs,
    inputActive: active.value(),
    keysPerS: keys.value(),
    pointerPerS: pointer.value(),
    userIdleS,
    cpu: cpu.value(),
    gpu: gpu.value(),
    ioBytesPerS: io.value(),
    screenChangePerS: screen.value(),
    coverage: {
      input: share((keys.weight + pointer.weight) / 2),
      presence: share(presenceMs),
      display: share(screen.weight),
      cpu: share(cpu.weight),
      gpu: share(gpu.weight),
      io: share(io.weight),
    },
  };
}

/**
 * Intensity, 0..1: a "soft OR" of the resources the VM keeps busy,
 *
 *   intensity = 1 − (1 − cpu) · (1 − gpuWeight · gpu) · (1 − ioWeight · (1 − e^(−io / ioRef)))
 *
 * Why an OR and not a mean: one saturated resource is enough to make a job compute-bound; a mean would
 * let an idle GPU dilute a saturated CPU. Why these weights: the CPU counts fully, because it is what
 * the core's speedup is measured on; the GPU counts half (0.5), because the core may have no GPU, or a
 * different one, so GPU-bound work may gain less there; guest I/O counts little (0.2), because a build
 * reads and writes as it compiles, but I/O alone is a copy or a download, which the core does not
 * speed up: its term stays below the crunch threshold on its own. A sensor that is unavailable adds
 * nothing here; its absence shows in the confidence instead.
 */
export function intensityOf(f: WindowFeatures, p: IntensityParams): number {
  const cpu = clamp01(f.cpu ?? 0);
  const gpu = p.gpuWeight * clamp01(f.gpu ?? 0);
  const io = p.ioWeight * (1 - Math.exp(-(f.ioBytesPerS ?? 0) / p.ioRefBytesPerS));
  return clamp01(1 - (1 - cpu) * (1 - gpu) * (1 - io));
}

/** 0 at the threshold, 1 halfway from the threshold to 1. */
function sepAbove(x: number, threshold: number): number {
  return threshold >= 1 ? 0 : clamp01((x - threshold) / ((1 - threshold) / 2));
}
/** 0 at the threshold, 1 at half the threshold and below. */
function sepBelow(x: number, threshold: number): number {
  return threshold <= 0 ? (x <= 0 ? 1 : 0) : clamp01((threshold - x) / (threshold / 2));
}

/**
 * Classifies a window. Interaction wins over compute (a user at work wants the VM local, whatever it
 * computes); then intensity decides between crunch and idle. Hysteresis: staying in the previous phase
 * uses the lower "stay" threshold, entering a new one the higher "enter" threshold.
 *
 * Interaction is the share of time with at least one key or pointer event, not an event rate: a drag
 * sends hundreds of pointer events, a typist a few keys a second, and both are "interacting"; a stray
 * event now and then (a nudged mouse) stays a small share.
 *
 * Confidence = evidence × (0.5 + 0.5 × margin). Margin (0..1) is how clearly the figures sit on their
 * side of the thresholds (0 on a threshold, 1 halfway to the extreme). Evidence (0..1) is the coverage
 * of the sensors that phase rests on, weighted:
 *   interactive: input 0.8, display 0.2 (input events are the evidence);
 *   crunch:      input 0.5 (to rule out interaction), CPU 0.4, GPU 0.1 (a CPU-bound crunch is still
 *                one without a GPU sensor, so a missing GPU costs little);
 *   idle:        input 0.4, CPU 0.3, GPU 0.2, display 0.1 (every silent sensor could hide activity).
 * Where no input sensor reports, a desktop shell that says the user has been away stands in for it.
 * So a window with no input sensor can never be a confident crunch (evidence ≤ 0.5): the user may be
 * interacting, and the model does not pretend otherwise.
 */
export function assessWindow(
  samples: readonly InteractionSample[],
  now: number,
  p: IntensityParams,
  previous: Phase | null = null,
): IntensityAssessment {
  const f = windowFeatures(samples, now, p);
  const intensity = intensityOf(f, p);
  const away = f.userIdleS === null ? null : f.userIdleS >= p.awayIdleS;
  const interaction = f.inputActive === null ? (away === true ? 0 : null) : f.inputActive;
  const c = f.coverage;
  const inputEvidence = Math.max(c.input, away === true ? c.presence : 0);

  const interactiveAt = previous === 'interactive' ? p.interactiveStay : p.interactiveEnter;
  const crunchAt = previous === 'crunch' ? p.crunchStay : p.crunchEnter;
  const x = interaction ?? 0;
  let phase: Phase;
  let evidence: number;
  let margin: number;
  if (interaction !== null && interaction >= interactiveAt) {
    phase = 'interactive';
    evidence = 0.8 * c.input + 0.2 * c.display;
    margin = sepAbove(interaction, interactiveAt);
  } else if (intensity >= crunchAt) {
    phase = 'crunch';
    evidence = 0.5 * inputEvidence + 0.4 * c.cpu + 0.1 * c.gpu;
    margin = Math.min(sepAbove(intensity, crunchAt), sepBelow(x, interactiveAt));
  } else {
    phase = 'idle';
    evidence = 0.4 * inputEvidence + 0.3 * c.cpu + 0.2 * c.gpu + 0.1 * c.display;
    margin = Math.min(sepBelow(intensity, crunchAt), sepBelow(x, interactiveAt));
  }
  return { at: now, phase, confidence: clamp01(evidence * (0.5 + 0.5 * margin)), intensity, interaction, away, features: f };
}
