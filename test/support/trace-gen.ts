// Deterministic generator of synthetic interaction traces (seeded PRNG, no clock), and the trace
// library the placement tests replay. The library is also committed as JSON lines in
// test/fixtures/traces/; `node test/support/trace-gen.ts` rewrites those files, `--check` only
// compares them (test/unit/placement-traces.test.ts does the same).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { InteractionSample, PlacementMode } from '../../src/shared/placement.ts';
import { formatTrace } from '../../src/interaction-detect/common/trace.ts';

/**
 * What the user and the VM do for a stretch of time:
 * - `typing`: input in ~75 % of 250 ms intervals (keys, some pointer), light CPU, screen echoes;
 * - `reading`: an occasional scroll (~6 % of intervals), light CPU;
 * - `crunch`: no input, all vCPUs ~88–100 % busy, disk I/O, a progress bar's worth of screen change;
 * - `idle`: nothing at all.
 */
export type SegmentKind = 'typing' | 'reading' | 'crunch' | 'idle';
export interface Segment {
  kind: SegmentKind;
  /** Duration in seconds. */
  s: number;
}

export interface Noise {
  /** Relative standard deviation of the vCPU reading. */
  cpu: number;
  /** Per-sample chance that the vCPU reading drops to 10 % (a scheduling blip). */
  dropout: number;
  /** Per-sample chance of one stray pointer event outside typing. */
  spuriousInput: number;
  /** Per-sample, per-sensor chance that the reading is unavailable (null). */
  nullRate: number;
  /** Per-sample chance that the next 2–6 samples are lost (a gap of 0.5–1.5 s). */
  gapRate: number;
}

export interface TraceSpec {
  seed: number;
  segments: Segment[];
  /** Start time, ms since the epoch. */
  start?: number;
  periodMs?: number;
  /** Uniform timestamp jitter, ± ms. */
  jitterMs?: number;
  vcpus?: number;
  memoryMiB?: number;
  linkBytesPerS?: number;
  mode?: PlacementMode;
  /** Whether the host reports GPU busy time (else gpuBusy is null throughout). */
  gpu?: boolean;
  /** Whether the desktop shell reports system idle time (else userIdleS is null throughout). */
  presence?: boolean;
  noise?: Noise;
}

export const TRACE_START = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/** mulberry32: a small, fast, well-mixed 32-bit PRNG; the same seed gives the same sequence anywhere. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const round = (x: number, digits: number): number => {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

/** Generates a trace: one sample every `periodMs` (± jitter), each sensor drawn for its segment's kind. */
export function generateTrace(spec: TraceSpec): InteractionSample[] {
  const rand = mulberry32(spec.seed);
  const between = (lo: number, hi: number): number => lo + (hi - lo) * rand();
  const chance = (p: number): boolean => rand() < p;
  /** Approximately standard normal (Irwin–Hall, 4 uniforms): no transcendental functions. */
  const normal = (): number => (rand() + rand() + rand() + rand() - 2) * Math.sqrt(3);
  const start = spec.start ?? TRACE_START;
  const period = spec.periodMs ?? 250;
  const jitter = spec.jitterMs ?? 30;
  const vcpus = spec.vcpus ?? 2;
  const noise = spec.noise;
  const samples: InteractionSample[] = [];
  let lastInputAt = start;
  let skip = 0;
  let k = 0;
  for (const segment of spec.segments) {
    const count = Math.round((segment.s * 1000) / period);
    for (let j = 0; j < count; j += 1, k += 1) {
      const nominal = start + (k + 1) * period;
      const at = Math.round(nominal + between(-jitter, jitter));
      const dt = period / 1000;
      let keys = 0;
      let pointer = 0;
      let cpu: number;
      let screen: number;
      let updates: number;
      let gpu: number;
      let net: number;
      let disk: number;
      let dirty: number;
      switch (segment.kind) {
        case 'typing': {
          const input = chance(0.75);
          if (input && chance(0.85)) keys = 1 + Math.floor(between(0, 4));
          if (input && (keys === 0 || chance(0.3))) pointer = 1 + Math.floor(between(0, 10));
          cpu = between(0.15, 0.4);
          screen = input ? between(0.01, 0.08) : between(0, 0.002);
          updates = input ? between(10, 30) : between(1, 3);
          gpu = between(0.05, 0.15);
          net = between(2e3, 42e3);
          disk = between(0, 50e3);
          dirty = between(1e6, 4e6);
          break;
        }
        case 'reading': {
          if (chance(0.06)) pointer = 1 + Math.floor(between(0, 4));
          cpu = between(0.05, 0.15);
          screen = pointer > 0 ? between(0.05, 0.2) : 0;
          updates = pointer > 0 ? between(5, 15) : between(0, 1);
          gpu = between(0.02, 0.07);
          net = between(0, 10e3);
          disk = between(0, 10e3);
          dirty = between(0.3e6, 0.8e6);
          break;
        }
        case 'crunch': {
          cpu = vcpus * between(0.88, 1);
          screen = between(0.001, 0.005);
          updates = between(1, 4);
          gpu = between(0.02, 0.08);
          net = between(0, 10e3);
          disk = between(2e6, 20e6);
          dirty = between(20e6, 40e6);
          break;
        }
        case 'idle': {
          cpu = between(0.01, 0.04);
          screen = 0;
          updates = between(0, 0.4);
          gpu = between(0, 0.02);
          net = between(0, 2e3);
          disk = between(0, 10e3);
          dirty = between(0.1e6, 0.3e6);
          break;
        }
      }
      if (noise !== undefined) {
        cpu = Math.min(vcpus, Math.max(0, cpu * (1 + noise.cpu * normal())));
        if (chance(noise.dropout)) cpu = 0.1 * vcpus;
        if (segment.kind !== 'typing' && chance(noise.spuriousInput)) pointer += 1;
      }
      if (keys + pointer > 0) lastInputAt = at;
      if (skip > 0) {
        skip -= 1;
        continue;
      }
      if (noise !== undefined && chance(noise.gapRate)) skip = 2 + Math.floor(between(0, 5));
      const maybe = (x: number | null): number | null => (x !== null && noise !== undefined && chance(noise.nullRate) ? null : x);
      const sample: InteractionSample = {
        at,
        site: 'edge',
        migrating: false,
        ...(spec.mode === undefined ? {} : { mode: spec.mode }),
        vcpus,
        memoryMiB: spec.memoryMiB ?? 512,
        keysPerS: maybe(round(keys / dt, 2)),
        pointerPerS: maybe(round(pointer / dt, 2)),
        userIdleS: spec.presence === false ? null : maybe(round((at - lastInputAt) / 1000, 2)),
        screenChangePerS: maybe(round(screen, 4)),
        fbUpdatesPerS: maybe(round(updates, 2)),
        gpuBusy: spec.gpu === false ? null : maybe(round(gpu, 3)),
        vcpuBusy: maybe(round(cpu, 3)),
        netBytesPerS: maybe(Math.round(net)),
        diskBytesPerS: maybe(Math.round(disk)),
        dirtyBytesPerS: maybe(Math.round(dirty)),
        linkBytesPerS: spec.linkBytesPerS ?? 125e6,
      };
      samples.push(sample);
    }
  }
  return samples;
}

/** A sample with every sensor present and quiet (an idle VM at the edge); tests override what they need. */
export function quietSample(at: number, overrides: Partial<InteractionSample> = {}): InteractionSample {
  return {
    at,
    site: 'edge',
    migrating: false,
    vcpus: 2,
    memoryMiB: 512,
    keysPerS: 0,
    pointerPerS: 0,
    userIdleS: 0,
    screenChangePerS: 0,
    fbUpdatesPerS: 0,
    gpuBusy: 0,
    vcpuBusy: 0,
    netBytesPerS: 0,
    diskBytesPerS: 0,
    dirtyBytesPerS: 0,
    linkBytesPerS: 125e6,
    ...overrides,
  };
}

/** Samples every `periodMs` in [fromMs, toMs) after `start`, each from `make(at)`. */
export function series(
  fromMs: number,
  toMs: number,
  periodMs: number,
  make: (at: number) => Partial<InteractionSample>,
  start = TRACE_START,
): InteractionSample[] {
  const out: InteractionSample[] = [];
  for (let t = fromMs; t < toMs; t += periodMs) out.push(quietSample(start + t, make(start + t)));
  return out;
}

const repeat = (times: number, segments: Segment[]): Segment[] => Array.from({ length: times }, () => segments).flat();

/**
 * The trace library. All run a 2-vCPU, 512 MiB VM on a 1 Gbit/s link, so with no history a round trip
 * is estimated at ~13 s (model) and a crunch pays for it after ~30 s (see the README's formulas).
 */
export const TRACE_LIBRARY: Record<string, TraceSpec> = {
  'interactive-only': {
    seed: 1,
    segments: [
      { kind: 'typing', s: 40 },
      { kind: 'reading', s: 15 },
      { kind: 'typing', s: 30 },
      { kind: 'idle', s: 10 },
      { kind: 'typing', s: 40 },
      { kind: 'reading', s: 20 },
      { kind: 'typing', s: 25 },
    ],
  },
  'long-crunch': {
    seed: 2,
    segments: [
      { kind: 'typing', s: 20 },
      { kind: 'crunch', s: 120 },
      { kind: 'idle', s: 20 },
    ],
  },
  'short-bursts': {
    seed: 3,
    segments: [
      { kind: 'typing', s: 20 },
      { kind: 'crunch', s: 6 },
      { kind: 'typing', s: 15 },
      { kind: 'crunch', s: 9 },
      { kind: 'reading', s: 20 },
      { kind: 'crunch', s: 7 },
      { kind: 'typing', s: 15 },
      { kind: 'crunch', s: 10 },
      { kind: 'idle', s: 20 },
      { kind: 'crunch', s: 8 },
      { kind: 'typing', s: 20 },
      { kind: 'crunch', s: 5 },
      { kind: 'typing', s: 15 },
    ],
  },
  alternating: {
    seed: 4,
    segments: [
      { kind: 'typing', s: 20 },
      { kind: 'crunch', s: 100 },
      { kind: 'typing', s: 45 },
      { kind: 'crunch', s: 100 },
      { kind: 'typing', s: 45 },
      { kind: 'crunch', s: 90 },
      { kind: 'idle', s: 10 },
    ],
  },
  'noisy-sensors': {
    seed: 5,
    jitterMs: 100,
    noise: { cpu: 0.2, dropout: 0.03, spuriousInput: 0.02, nullRate: 0.03, gapRate: 0.01 },
    segments: [
      { kind: 'typing', s: 30 },
      { kind: 'crunch', s: 120 },
      { kind: 'typing', s: 40 },
    ],
  },
  'missing-gpu-sensor': {
    seed: 6,
    gpu: false,
    presence: false,
    segments: [
      { kind: 'typing', s: 20 },
      { kind: 'crunch', s: 100 },
      { kind: 'typing', s: 30 },
    ],
  },
  'user-pinned': {
    seed: 7,
    mode: 'keep-edge',
    segments: [
      { kind: 'typing', s: 20 },
      { kind: 'crunch', s: 150 },
      { kind: 'typing', s: 20 },
    ],
  },
  /** Crunch long enough to move, typing long enough to come back, over and over: a ping-pong bait. */
  'adversarial-flapping': {
    seed: 8,
    segments: repeat(8, [
      { kind: 'crunch', s: 40 },
      { kind: 'typing', s: 15 },
    ]),
  },
};

export const TRACE_DIR = resolve(import.meta.dirname, '..', 'fixtures', 'traces');

export function libraryTrace(name: string): string {
  const spec = TRACE_LIBRARY[name];
  if (spec === undefined) throw new Error(`no trace "${name}" in the library`);
  return formatTrace(generateTrace(spec));
}

if (import.meta.main) {
  const check = process.argv.includes('--check');
  let stale = 0;
  mkdirSync(TRACE_DIR, { recursive: true });
  for (const name of Object.keys(TRACE_LIBRARY)) {
    const file = resolve(TRACE_DIR, `${name}.jsonl`);
    const text = libraryTrace(name);
    if (check) {
      let current: string | null;
      try {
        current = readFileSync(file, 'utf8');
      } catch {
        current = null;
      }
      if (current !== text) {
        stale += 1;
        process.stdout.write(`stale: ${file}\n`);
      }
    } else {
      writeFileSync(file, text);
      process.stdout.write(`wrote ${file} (${text.split('\n').length - 1} samples)\n`);
    }
  }
  if (stale > 0) process.exitCode = 1;
}
