// What the plots draw, from a VM's interaction samples and its migrations: one column per figure
// (null = the sensor was unavailable: a gap, never a zero) and the migration markers. The intensity
// and interaction curves are the placement policy's own model (src/interaction-detect/common/),
// evaluated at each sample over the model's rolling window.
import { assessWindow } from '../interaction-detect/common/intensity.ts';
import type { MigrationRecord, SiteRole } from '../shared/migration.ts';
import type { IntensityParams, InteractionSample } from '../shared/placement.ts';

export type Column = (number | null)[];

export interface PlotColumns {
  /** Sample times, seconds since the epoch (uPlot's time unit). */
  t: number[];
  keysPerS: Column;
  pointerPerS: Column;
  /** Share of the screen redrawn per second, in percent. */
  screenChangePct: Column;
  fbUpdatesPerS: Column;
  /** Busy vCPUs, in percent of the VM's vCPUs. */
  vcpuPct: Column;
  gpuPct: Column;
  diskMBps: Column;
  netMBps: Column;
  /** The intensity model, 0..1. */
  intensity: Column;
  interaction: Column;
}

export interface Marker {
  /** Seconds since the epoch. */
  start: number;
  end: number;
  label: string;
  kind: 'committed' | 'aborted' | 'cancelled' | 'running';
}

const pct = (x: number | null): number | null => (x === null ? null : x * 100);
const mbps = (x: number | null): number | null => (x === null ? null : x / 1e6);

export function plotColumns(samples: readonly InteractionSample[], params: IntensityParams): PlotColumns {
  const columns: PlotColumns = {
    t: [],
    keysPerS: [],
    pointerPerS: [],
    screenChangePct: [],
    fbUpdatesPerS: [],
    vcpuPct: [],
    gpuPct: [],
    diskMBps: [],
    netMBps: [],
    intensity: [],
    interaction: [],
  };
  let lo = 0;
  const reach = params.windowMs + params.maxSampleSpanMs;
  samples.forEach((s, i) => {
    columns.t.push(s.at / 1000);
    columns.keysPerS.push(s.keysPerS);
    columns.pointerPerS.push(s.pointerPerS);
    columns.screenChangePct.push(pct(s.screenChangePerS));
    columns.fbUpdatesPerS.push(s.fbUpdatesPerS);
    columns.vcpuPct.push(s.vcpuBusy === null ? null : (100 * s.vcpuBusy) / s.vcpus);
    columns.gpuPct.push(pct(s.gpuBusy));
    columns.diskMBps.push(mbps(s.diskBytesPerS));
    columns.netMBps.push(mbps(s.netBytesPerS));
    while ((samples[lo]?.at ?? s.at) < s.at - reach) lo++;
    const assessment = assessWindow(samples.slice(lo, i + 1), s.at, params);
    columns.intensity.push(assessment.features.coveredMs > 0 ? assessment.intensity : null);
    columns.interaction.push(assessment.interaction);
  });
  return columns;
}

/**
 * Migration markers within [fromS, toS]: each past move from its start to its end, and the moves
 * the samples show under way (`migrating`) that have no record yet.
 */
export function migrationMarkers(records: readonly MigrationRecord[], samples: readonly InteractionSample[], fromS: number): Marker[] {
  const markers: Marker[] = [];
  for (const r of records) {
    const start = Date.parse(r.startedAt) / 1000;
    if (!Number.isFinite(start)) continue;
    const end = start + r.totalMs / 1000;
    if (end < fromS) continue;
    const by = r.trigger?.by ?? 'user';
    markers.push({ start, end, kind: r.outcome, label: `${r.outcome === 'committed' ? '' : r.outcome === 'cancelled' ? '⊘ ' : '✗ '}→${r.to === 'core' ? 'cloud' : 'laptop'} (${by})` });
  }
  // A move under way: the samples flagged `migrating` after the last recorded move.
  const lastEnd = Math.max(fromS, ...markers.map((m) => m.end));
  let run: { start: number; end: number; to: SiteRole } | undefined;
  for (const s of samples) {
    const t = s.at / 1000;
    if (t <= lastEnd) continue;
    if (s.migrating) {
      if (run === undefined) run = { start: t, end: t, to: s.site === 'edge' ? 'core' : 'edge' };
      else run.end = t;
    } else if (run !== undefined) {
      run = undefined;
    }
  }
  if (run !== undefined) markers.push({ start: run.start, end: run.end, kind: 'running', label: `→${run.to === 'core' ? 'cloud' : 'laptop'}…` });
  return markers;
}
