// Live plots of the VM's last minutes, as the placement policy sees it: input, display activity,
// vCPU/GPU, guest I/O, and the intensity model's own curves; moves are shaded on every plot.
// uPlot draws; a gap in a line is a sensor that was unavailable (never a zero).
import { useEffect, useMemo, useRef, useState } from 'react';
import uPlot from 'uplot';
import { useUi } from '../hooks.ts';
import { migrationMarkers, plotColumns, type Marker, type PlotColumns } from '../series.ts';
import { SAMPLE_WINDOW_MS } from '../state.ts';
import { DEFAULT_POLICY_PARAMS } from '../../shared/placement.ts';
import type { InteractionSample } from '../../shared/placement.ts';
import type { MigrationRecord } from '../../shared/migration.ts';

interface PanelSpec {
  id: string;
  title: string;
  unit: string;
  series: { label: string; column: Exclude<keyof PlotColumns, 't'>; color: string }[];
  /** Fixed y range (otherwise from 0 to the data's maximum). */
  range?: [number, number];
}

const PANELS: PanelSpec[] = [
  { id: 'input', title: 'Input', unit: 'events/s', series: [{ label: 'keys/s', column: 'keysPerS', color: '#1f77b4' }, { label: 'pointer/s', column: 'pointerPerS', color: '#ff7f0e' }] },
  { id: 'display', title: 'Display activity', unit: '', series: [{ label: 'screen changed %/s', column: 'screenChangePct', color: '#2ca02c' }, { label: 'updates/s', column: 'fbUpdatesPerS', color: '#9467bd' }] },
  { id: 'compute', title: 'vCPU and GPU', unit: '%', range: [0, 100], series: [{ label: 'vCPU busy %', column: 'vcpuPct', color: '#d62728' }, { label: 'GPU busy %', column: 'gpuPct', color: '#8c564b' }] },
  { id: 'io', title: 'Guest I/O', unit: 'MB/s', series: [{ label: 'disk MB/s', column: 'diskMBps', color: '#17becf' }, { label: 'net MB/s', column: 'netMBps', color: '#bcbd22' }] },
  { id: 'intensity', title: 'Intensity model', unit: '0..1', range: [0, 1], series: [{ label: 'intensity', column: 'intensity', color: '#e377c2' }, { label: 'interaction', column: 'interaction', color: '#1f77b4' }] },
];

const MARKER_FILL = { committed: 'rgba(255, 165, 0, 0.22)', aborted: 'rgba(214, 39, 40, 0.22)', cancelled: 'rgba(128, 128, 128, 0.18)', running: 'rgba(255, 165, 0, 0.35)' } as const;
const EMPTY_SAMPLES: InteractionSample[] = [];
const EMPTY_RECORDS: MigrationRecord[] = [];

export function Plots({ vm }: { vm: string }) {
  const samples = useUi((s) => s.samples[vm] ?? EMPTY_SAMPLES);
  const records = useUi((s) => s.history[vm] ?? EMPTY_RECORDS);
  // The window slides with the clock, not only with new samples.
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  const columns = useMemo(() => plotColumns(samples, DEFAULT_POLICY_PARAMS.intensity), [samples]);
  const fromS = (now - SAMPLE_WINDOW_MS) / 1000;
  const toS = now / 1000;
  const markers = useMemo(() => migrationMarkers(records, samples, fromS), [records, samples, fromS]);
  const last = samples.at(-1);
  return (
    <section className="panel plots">
      <h2>
        Last {SAMPLE_WINDOW_MS / 60_000} minutes <span className="muted">({samples.length} samples{last ? `; the VM at the ${last.site}` : ''}; shaded: moves)</span>
      </h2>
      <div className="plot-grid" data-testid="plots" data-samples={samples.length} data-markers={markers.length}>
        {PANELS.map((panel) => (
          <Plot key={panel.id} spec={panel} columns={columns} markers={markers} fromS={fromS} toS={toS} />
        ))}
      </div>
    </section>
  );
}

/** The legend at the last sample: what the plot says now. */
function showLatest(u: uPlot): void {
  const last = (u.data[0]?.length ?? 0) - 1;
  if (last >= 0) u.setLegend({ idx: last });
}

function Plot({ spec, columns, markers, fromS, toS }: { spec: PanelSpec; columns: PlotColumns; markers: Marker[]; fromS: number; toS: number }) {
  const container = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const latest = useRef({ markers, fromS, toS });
  latest.current = { markers, fromS, toS };

  useEffect(() => {
    const element = container.current;
    if (element === null) return;
    const options: uPlot.Options = {
      width: Math.max(200, element.clientWidth),
      height: 150,
      scales: {
        x: { time: true, range: () => [latest.current.fromS, latest.current.toS] },
        y: spec.range ? { range: spec.range } : { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      // Ticks at least 90 px apart: time labels that do not run into each other at 1280 px.
      axes: [{ stroke: '#555', grid: { stroke: '#eee' }, space: 90 }, { stroke: '#555', grid: { stroke: '#eee' }, size: 48, label: spec.unit || undefined, labelSize: spec.unit ? 14 : 0 }],
      series: [{}, ...spec.series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, spanGaps: false, points: { show: false } }))],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      hooks: {
        // Off the plot, the legend shows the latest values (uPlot's own shows "--").
        setCursor: [
          (u: uPlot) => {
            if (u.cursor.idx == null) showLatest(u);
          },
        ],
        draw: [
          (u: uPlot) => {
            const { ctx } = u;
            const { left, top, width, height } = u.bbox;
            ctx.save();
            ctx.beginPath();
            ctx.rect(left, top, width, height);
            ctx.clip();
            ctx.font = `${Math.round(11 * devicePixelRatio)}px sans-serif`;
            // Labels go on the first line where they do not overprint an earlier one (moves close together).
            const lineEnds: number[] = [];
            for (const m of [...latest.current.markers].sort((a, b) => a.start - b.start)) {
              const x0 = u.valToPos(m.start, 'x', true);
              const x1 = Math.max(u.valToPos(m.end, 'x', true), x0 + 2 * devicePixelRatio);
              ctx.fillStyle = MARKER_FILL[m.kind];
              ctx.fillRect(x0, top, x1 - x0, height);
              const w = ctx.measureText(m.label).width;
              // Right of the band, or left of it near the plot's right edge.
              const tx = x0 + 3 + w > left + width ? Math.max(left, x0 - 3 - w) : x0 + 3;
              let line = lineEnds.findIndex((end) => end < tx);
              if (line < 0) line = lineEnds.length;
              lineEnds[line] = tx + w + 4 * devicePixelRatio;
              ctx.fillStyle = '#7a4a00';
              ctx.fillText(m.label, tx, top + (12 + 13 * line) * devicePixelRatio);
            }
            ctx.restore();
          },
        ],
      },
    };
    const u = new uPlot(options, [[]], element);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(200, element.clientWidth), height: 150 }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [spec]);

  useEffect(() => {
    const u = plot.current;
    if (u === null) return;
    u.setData([columns.t, ...spec.series.map((s) => columns[s.column])]);
    if (u.cursor.idx == null) showLatest(u);
  }, [columns, spec, markers, fromS, toS]);

  return (
    <div className="plot" data-testid={`plot-${spec.id}`}>
      <h3>{spec.title}</h3>
      <div ref={container} />
    </div>
  );
}
