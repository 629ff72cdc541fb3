// `npm run bench:display`: the edge agent's display gateway against QEMU's own VNC server, in the same
// run, on the demo guest's VGA console. Two real agents on loopback (edge and core; `--rate` puts the
// core behind bench/support/wan.ts's tbf-limited namespace instead, as root), a small TCG VM.
//
// 1. Input→echo latency: an RFB client presses a printable key in the guest's shell and times until
//    the next FramebufferUpdate that changes pixels (the echo), then releases it; BackSpace erases it.
//    Samples alternate (ABBA) between a client on QEMU's VNC unix socket (vnc.sock) and a client on
//    the gateway's plain-RFB port (`snowbird display VM --json`), both connected throughout.
// 2. Frame gap during a move: the guest's shell prints a line every ~20 ms (a loop typed into the
//    console); a viewer on the gateway notes every pixel-changing update; per move, the longest
//    interval between consecutive updates within [migrate start, migrate end + 2 s], against the
//    record's downtime, and against the same figure for viewers directly on the source's and the
//    destination's QEMU sockets (merged: what a viewer that jumps between them at no cost sees).
//    Viewer disconnects (its socket closing; it reconnects, as noVNC would) are counted.
// 3. Gateway CPU per MB: an in-process DisplayGateway on the same vnc.sock (the agent's gateway runs
//    inside the edge agent, where its CPU cannot be told apart), a viewer pulling a fully scrolling
//    screen through it for ~10 s: this process's CPU (process.cpuUsage) per MB delivered; then the
//    same viewer directly on QEMU's socket for reference.
//
// Prints progress on stderr, then the table and the summary lines
//   gateway latency ratio: X / frame gap ms: X / downtime ms: X / disconnects: N
// on stdout. Everything it starts (agents, QEMUs, temp dirs, sockets) is removed on success, failure
// and Ctrl-C. Needs QEMU 7.2+ and the demo guest's build tools; root only with --rate.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { parseBenchOptions, usageError as benchUsageError } from './support/options.ts';
import type { Cleanup } from './support/cleanup.ts';
import { runBenchmark } from './support/cleanup.ts';
import { nowMs, pressKey, RfbProbe, typeText, XK } from './support/rfb-probe.ts';
import { REPO_ROOT, runCli, SnowbirdSites } from './support/snowbird.ts';
import { markdownTable } from './support/table.ts';
import { openSitesLink } from './support/wan.ts';
import { DisplayGateway, unixSocketConnector } from '../src/display/gateway.ts';
import { displayReplySchema, type DisplayReply } from '../src/shared/local-api.ts';

const run = promisify(execFile);
const VM = 'bdisp';
const MB = 1_000_000;
/** Typed into the guest's shell for the CPU figure: a line of ~70 characters every ~20 ms, the whole screen scrolls all the time. */
const WIDE_LOOP = `while :; do echo${' $RANDOM'.repeat(12)}; usleep 20000; done`;
/** For the moves: one number per line (the screen changes at the same pace, with a tenth of the pixels). */
const NARROW_LOOP = 'while :; do echo $RANDOM; usleep 20000; done';

const usageError: (message: string) => never = (message) => benchUsageError('bench:display', message);

const OPTIONS = {
  samples: { type: 'string', default: '40' },
  moves: { type: 'string', default: '10' },
  'cpu-seconds': { type: 'string', default: '10' },
  memory: { type: 'string', default: '256' },
  'disk-size': { type: 'string', default: '256M' },
  'mem-workload': { type: 'string', default: '8' },
  'disk-workload': { type: 'string', default: '256' },
  'key-together': { type: 'boolean', default: false },
  strategy: { type: 'string' },
  rate: { type: 'string' },
  json: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

const opts = parseBenchOptions('bench:display', OPTIONS);

if (opts.help) {
  process.stdout.write(`usage: node bench/display.ts [options]
  --samples N          input→echo samples per path (direct to QEMU, through the gateway) (default 40)
  --moves N            migrations while the screen scrolls, edge→core, core→edge, … (default 10)
  --key-together       send each latency key's release right behind its press (default: once its echo shows)
  --cpu-seconds S      how long each CPU-per-MB viewer pulls updates (default 10)
  --memory MIB         guest RAM (default 256)
  --disk-size SIZE     virtual disk, qemu-img syntax (default 256M)
  --mem-workload MIB   memory the guest keeps rewriting (default 8)
  --disk-workload N    4 KiB disk blocks the guest keeps rewriting (default 256)
  --strategy S         memory strategy of every move: precopy, hybrid, postcopy (default: snowbird's choice)
  --rate MBIT          put the core in a network namespace behind a tbf-limited veth pair (as root);
                       default: both agents on loopback, no limit
  --json FILE          also write every raw figure to FILE
`);
  process.exit(0);
}

function positiveInt(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) usageError(`--${name} must be a positive integer, got "${value}"`);
  return n;
}

const strategy = opts.strategy;
if (strategy !== undefined && strategy !== 'precopy' && strategy !== 'hybrid' && strategy !== 'postcopy') usageError(`--strategy must be precopy, hybrid or postcopy, got "${strategy}"`);
const config = {
  samples: positiveInt('samples', opts.samples),
  moves: positiveInt('moves', opts.moves),
  cpuSeconds: positiveInt('cpu-seconds', opts['cpu-seconds']),
  keyTogether: opts['key-together'],
  memoryMiB: positiveInt('memory', opts.memory),
  diskSize: opts['disk-size'],
  memWorkloadMiB: positiveInt('mem-workload', opts['mem-workload']),
  diskWorkloadBlocks: positiveInt('disk-workload', opts['disk-workload']),
  strategy: strategy as 'precopy' | 'hybrid' | 'postcopy' | undefined,
  rateMbit: opts.rate === undefined ? undefined : positiveInt('rate', opts.rate),
};
if (config.rateMbit !== undefined && process.getuid?.() !== 0) usageError('--rate needs root (it creates a network namespace and a veth pair)');

const benchStart = Date.now();
function log(line: string): void {
  const s = Math.round((Date.now() - benchStart) / 1000);
  process.stderr.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}\n`);
}

// ── statistics ──────────────────────────────────────────────────────────────────────────────────
function quantile(values: readonly number[], q: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (pos - lo);
}
const median = (v: readonly number[]): number | undefined => quantile(v, 0.5);
const p95 = (v: readonly number[]): number | undefined => quantile(v, 0.95);
const max = (v: readonly number[]): number | undefined => (v.length === 0 ? undefined : Math.max(...v));
const min = (v: readonly number[]): number | undefined => (v.length === 0 ? undefined : Math.min(...v));
const ms = (v: number | undefined, digits = 0): string => (v === undefined ? '—' : `${v.toFixed(digits)} ms`);
const mean = (v: readonly number[]): number | undefined => (v.length === 0 ? undefined : v.reduce((a, b) => a + b, 0) / v.length);
const ratioOf = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined || b === 0 ? undefined : a / b);
const signedMs = (v: number | undefined): string => (v === undefined ? '—' : `${v < 0 ? '−' : '+'}${ms(Math.abs(v))}`);
const num = (v: number | undefined, digits = 2): string => (v === undefined ? '—' : v.toFixed(digits));

// ── results ─────────────────────────────────────────────────────────────────────────────────────
interface Move {
  n: number;
  direction: 'edge→core' | 'core→edge';
  committed: boolean;
  startedAt: number;
  endedAt: number;
  /** Longest interval between consecutive pixel-changing updates within [start, end + 2 s]. */
  frameGapMs?: number;
  /** Where that gap lies, ms from the migrate command's start. */
  gapFromMs?: number;
  gapToMs?: number;
  /** From the migrate command's start until the end of the switchover phase (the guest runs there). */
  switchedAtMs?: number;
  /** Viewers directly on QEMU: the source's last frame, the destination's first new one. */
  sourceLastMs?: number;
  destFirstNewMs?: number;
  /** The frame gap (same definition) of a viewer that watches the source QEMU, then the destination's, at no cost. */
  qemuGapMs?: number;
  qemuGapFromMs?: number;
  /** Tiles that differed between the old screen and the destination's first frame, as the gateway logged it. */
  tilesDiffer?: number;
  /** The source QEMU's own longest pause between frames while the guest still ran there. */
  sourceStallMs?: number;
  sourceStallFromMs?: number;
  /** From the edge agent's log (when its lines were read): the gateway lost its VNC session, was told to switch, serves the new one. */
  gatewayLostAtMs?: number;
  gatewaySwitchAtMs?: number;
  gatewayServingAtMs?: number;
  downtimeMs?: number;
  qemuDowntimeMs?: number;
  updatesInWindow: number;
  detail: string;
}

interface Results {
  config: typeof config;
  machine: string;
  screen?: { width: number; height: number };
  idleUpdatesPer2s?: number;
  latency: { directMs: number[]; gatewayMs: number[]; misses: number };
  moves: Move[];
  cadenceMs?: number;
  disconnects: number;
  cpu: {
    gateway?: { cpuMs: number; userMs: number; systemMs: number; bytes: number; seconds: number };
    direct?: { cpuMs: number; userMs: number; systemMs: number; bytes: number; seconds: number };
  };
  errors: string[];
}

// ── helpers ─────────────────────────────────────────────────────────────────────────────────────
async function openDisplay(sites: SnowbirdSites): Promise<DisplayReply> {
  const r = await runCli(['--data', sites.edgeDir, 'display', VM, '--json']);
  if (r.code !== 0) throw new Error(`snowbird display ${VM} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return displayReplySchema.parse(JSON.parse(r.stdout));
}

function rfbPort(display: DisplayReply): number {
  return Number(display.rfbAddress.split(':').at(-1));
}

/** Counts pixel-changing updates a viewer gets while nobody types. */
async function idleUpdates(probe: RfbProbe, forMs: number): Promise<number> {
  const before = probe.changedUpdates;
  await sleep(forMs);
  return probe.changedUpdates - before;
}

// ── 1. input → echo ─────────────────────────────────────────────────────────────────────────────
async function measureLatency(direct: RfbProbe, gateway: RfbProbe, results: Results, cleanup: Cleanup): Promise<void> {
  // ABBA: direct, gateway, gateway, direct, … so a drift over the run weighs on both alike.
  const order: ('direct' | 'gateway')[] = [];
  for (let i = 0; i < config.samples; i++) order.push(...(i % 2 === 0 ? (['direct', 'gateway'] as const) : (['gateway', 'direct'] as const)));
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (const [i, path] of order.entries()) {
    if (cleanup.interrupted) return;
    const probe = path === 'direct' ? direct : gateway;
    const sink = path === 'direct' ? results.latency.directMs : results.latency.gatewayMs;
    // A random pause: the key lands at a random phase of QEMU's 30 ms display refresh, for both paths alike.
    await sleep(150 + Math.random() * 150);
    const keysym = letters.charCodeAt(i % letters.length);
    const echo = probe.nextChange(5000);
    const t0 = nowMs();
    probe.key(keysym, true);
    // By default the key is released once its echo is on the screen, as a typist's finger is still on
    // it then; --key-together sends the release right behind the press (see docs/benchmarks.md).
    if (config.keyTogether) probe.key(keysym, false);
    try {
      sink.push((await echo) - t0);
    } catch {
      results.latency.misses += 1;
      log(`latency: no echo within 5 s (${path}); sample dropped`);
    }
    if (!config.keyTogether) probe.key(keysym, false);
    await sleep(40);
    const erased = probe.nextChange(5000);
    await pressKey(probe, XK.BackSpace, 0);
    await erased.catch(() => log(`latency: the BackSpace after sample ${i + 1} showed no change`));
    if ((i + 1) % 20 === 0) log(`latency: ${i + 1}/${order.length} samples (median so far: direct ${ms(median(results.latency.directMs), 1)}, gateway ${ms(median(results.latency.gatewayMs), 1)})`);
  }
}

// ── 3. CPU per MB ───────────────────────────────────────────────────────────────────────────────
async function cpuWindow(probe: RfbProbe, seconds: number): Promise<{ cpuMs: number; userMs: number; systemMs: number; bytes: number; seconds: number }> {
  await sleep(1000); // the first full frame and a steady stream
  const c0 = process.cpuUsage();
  const b0 = probe.bytes;
  const t0 = nowMs();
  await sleep(seconds * 1000);
  const c = process.cpuUsage(c0);
  return { userMs: c.user / 1000, systemMs: c.system / 1000, cpuMs: (c.user + c.system) / 1000, bytes: probe.bytes - b0, seconds: (nowMs() - t0) / 1000 };
}

async function measureCpu(vncSocket: string, results: Results, cleanup: Cleanup): Promise<void> {
  log(`cpu: an in-process DisplayGateway on ${vncSocket}, a viewer pulling updates through it for ${config.cpuSeconds} s`);
  const gateway = await DisplayGateway.start({ connect: unixSocketConnector(vncSocket), source: 'bench', webSocketPort: false, log: (line) => log(`in-process ${line}`) });
  const undoGateway = cleanup.add('close the in-process display gateway', () => gateway.close());
  try {
    await gateway.waitConnected(30_000);
    const viewer = await RfbProbe.tcp(gateway.rfbPort as number, 'cpu viewer (gateway)');
    try {
      results.cpu.gateway = await cpuWindow(viewer, config.cpuSeconds);
    } finally {
      viewer.close();
    }
  } finally {
    await gateway.close();
    undoGateway();
  }
  const g = results.cpu.gateway;
  log(`cpu: through the gateway ${(g.bytes / MB).toFixed(1)} MB in ${g.seconds.toFixed(1)} s, CPU ${g.cpuMs.toFixed(0)} ms (user ${g.userMs.toFixed(0)}, system ${g.systemMs.toFixed(0)})`);
  if (cleanup.interrupted) return;
  log(`cpu: the same viewer directly on QEMU's socket for ${config.cpuSeconds} s`);
  const direct = await RfbProbe.unix(vncSocket, 'cpu viewer (direct)');
  try {
    results.cpu.direct = await cpuWindow(direct, config.cpuSeconds);
  } finally {
    direct.close();
  }
  const d = results.cpu.direct;
  log(`cpu: direct ${(d.bytes / MB).toFixed(1)} MB in ${d.seconds.toFixed(1)} s, CPU ${d.cpuMs.toFixed(0)} ms (user ${d.userMs.toFixed(0)}, system ${d.systemMs.toFixed(0)})`);
}

// ── 2. frame gap during moves ───────────────────────────────────────────────────────────────────
/** The longest interval between consecutive update times that ends within [from, to] (an open gap up to `to` counts too). */
function longestGap(times: readonly number[], from: number, to: number): { gap: number; start: number; end: number; count: number } | undefined {
  let best: { gap: number; start: number; end: number } | undefined;
  let count = 0;
  let previous: number | undefined;
  for (const t of times) {
    if (t > to) break;
    if (t >= from) {
      count += 1;
      if (previous !== undefined && (best === undefined || t - previous > best.gap)) best = { gap: t - previous, start: previous, end: t };
    }
    previous = t;
  }
  if (previous !== undefined && (best === undefined || to - previous > best.gap)) best = { gap: to - previous, start: previous, end: to };
  return best === undefined ? undefined : { ...best, count };
}

/** What QEMU itself shows around one move (times: nowMs), from viewers directly on the source's and the destination's VNC sockets. */
interface QemuSide {
  /** The source QEMU's last pixel-changing update (≈ where the guest stopped). */
  sourceLast?: number;
  /** The longest interval between the source QEMU's updates from `from` until its last one. */
  sourceStall?: { gap: number; start: number };
  /** The destination QEMU's first update after `sourceLast` that shows a screen other than the source's last one. */
  destFirstNew?: number;
  /**
   * The updates of a viewer that watched the source QEMU until its last frame, then the destination
   * QEMU from there on, at no cost: the source's pixel-changing updates, then the destination's from
   * `destFirstNew` on. The reference for the gateway viewer's frame gap.
   */
  merged: number[];
}

/** Connects a recording viewer to the source QEMU now and one to the destination's as soon as it listens. */
async function watchQemus(sourceSocket: string, destSocket: string): Promise<{ stop: (from: number) => Promise<QemuSide> }> {
  const source = await RfbProbe.unix(sourceSocket, 'source QEMU');
  source.recording = true;
  let dest: RfbProbe | undefined;
  const destChanges: { at: number; differs: boolean }[] = [];
  let stopped = false;
  const dialling = (async () => {
    while (!stopped) {
      try {
        const probe = await RfbProbe.unix(destSocket, 'destination QEMU');
        if (stopped) {
          probe.close();
          return;
        }
        dest = probe;
        // Compared with the source's screen at that moment: once the source has stopped changing, its last one.
        probe.onChange((at) => destChanges.push({ at, differs: !probe.sameScreenAs(source) }));
        return;
      } catch {
        await sleep(50); // not started yet, or an old socket file of a QEMU that left
      }
    }
  })();
  return {
    stop: async (from) => {
      stopped = true;
      await dialling;
      dest?.close();
      source.close();
      const times = source.changeTimes;
      const last = times.at(-1);
      if (last === undefined) return { merged: [] };
      const stall = longestGap(times, from, last);
      const first = destChanges.find((c) => c.at > last && c.differs);
      const merged = [...times];
      if (first) merged.push(...destChanges.filter((c) => c.at >= first.at).map((c) => c.at));
      return {
        sourceLast: last,
        ...(stall ? { sourceStall: { gap: stall.gap, start: stall.start } } : {}),
        ...(first ? { destFirstNew: first.at } : {}),
        merged,
      };
    },
  };
}

async function measureMoves(sites: SnowbirdSites, port: number, results: Results, cleanup: Cleanup): Promise<void> {
  let viewer = await RfbProbe.tcp(port, 'frame viewer');
  let moving = true;
  // A viewer whose socket closes counts as a disconnect and comes back, as noVNC's reconnect would.
  const watch = (probe: RfbProbe): void => {
    probe.onClose((reason) => {
      if (!moving || cleanup.interrupted) return;
      results.disconnects += 1;
      log(`frame gap: the viewer was disconnected (${reason}); reconnecting`);
      void (async () => {
        for (let attempt = 0; attempt < 50 && moving; attempt++) {
          await sleep(200);
          try {
            const again = await RfbProbe.tcp(port, 'frame viewer');
            again.recording = true;
            again.changeTimes.push(...viewer.changeTimes);
            viewer = again;
            watch(again);
            return;
          } catch {
            // retry
          }
        }
      })();
    });
  };
  watch(viewer);
  viewer.recording = true;
  await sleep(3000);
  const quiet = viewer.changeTimes.filter((t) => t > nowMs() - 2500);
  const intervals = quiet.slice(1).map((t, i) => t - (quiet[i] as number));
  results.cadenceMs = median(intervals);
  log(`frame gap: the scrolling screen updates every ${ms(results.cadenceMs, 1)} (median over the last 2.5 s, ${quiet.length} updates)`);
  try {
    for (let n = 1; n <= config.moves; n++) {
      if (cleanup.interrupted) return;
      const to = n % 2 === 1 ? 'core' : 'edge';
      const from = to === 'core' ? 'edge' : 'core';
      const direction = to === 'core' ? 'edge→core' : 'core→edge';
      log(`move ${n}/${config.moves}: snowbird migrate ${VM} --to ${to}${config.strategy ? ` --strategy ${config.strategy}` : ''}`);
      const socket = (site: 'edge' | 'core'): string => (site === 'edge' ? sites.edgeLibrary : sites.coreLibrary).paths(VM).vnc;
      const qemus = await watchQemus(socket(from), socket(to));
      const { record, cli } = await sites.migrate(VM, to, config.strategy);
      await sleep(2500); // the window runs until 2 s after the move; then a little quiet before the next
      const qemu = await qemus.stop(cli.startedAt);
      const committed = record.outcome === 'committed';
      const gap = longestGap(viewer.changeTimes, cli.startedAt, cli.endedAt + 2000);
      const phases = record.phaseMs;
      const switchedAt = Date.parse(record.startedAt) + (phases.plan ?? 0) + (phases.prepare ?? 0) + (phases.disk ?? 0) + (phases.memory ?? 0) + (phases.switchover ?? 0);
      const gatewayAt = (pattern: RegExp): number | undefined => {
        const hit = sites.agentLines('edge', cli.startedAt).find((l) => l.line.includes('display gateway') && pattern.test(l.line));
        return hit === undefined ? undefined : hit.at - cli.startedAt;
      };
      const lost = gatewayAt(/lost the VNC server/);
      const switching = gatewayAt(/switching to a new VNC server/);
      const serving = gatewayAt(/now serving the VNC server/);
      const rel = (at: number | undefined): number | undefined => (at === undefined ? undefined : at - cli.startedAt);
      const sourceLast = rel(qemu.sourceLast);
      const destFirstNew = rel(qemu.destFirstNew);
      const qemuGap = qemu.destFirstNew === undefined ? undefined : longestGap(qemu.merged, cli.startedAt, cli.endedAt + 2000);
      const tiles = /now serving the VNC server.*, (\d+) tiles differ/.exec(sites.agentLines('edge', cli.startedAt).map((l) => l.line).join('\n'))?.[1];
      const move: Move = {
        n,
        direction,
        committed,
        startedAt: cli.startedAt,
        endedAt: cli.endedAt,
        ...(gap ? { frameGapMs: gap.gap, gapFromMs: gap.start - cli.startedAt, gapToMs: gap.end - cli.startedAt } : {}),
        ...(committed ? { switchedAtMs: switchedAt - cli.startedAt } : {}),
        ...(lost === undefined ? {} : { gatewayLostAtMs: lost }),
        ...(switching === undefined ? {} : { gatewaySwitchAtMs: switching }),
        ...(serving === undefined ? {} : { gatewayServingAtMs: serving }),
        ...(sourceLast === undefined ? {} : { sourceLastMs: sourceLast }),
        ...(destFirstNew === undefined ? {} : { destFirstNewMs: destFirstNew }),
        ...(qemuGap === undefined ? {} : { qemuGapMs: qemuGap.gap, qemuGapFromMs: qemuGap.start - cli.startedAt }),
        ...(tiles === undefined ? {} : { tilesDiffer: Number(tiles) }),
        ...(qemu.sourceStall === undefined ? {} : { sourceStallMs: qemu.sourceStall.gap, sourceStallFromMs: qemu.sourceStall.start - cli.startedAt }),
        ...(record.downtimeMs === undefined ? {} : { downtimeMs: record.downtimeMs }),
        ...(record.qemuDowntimeMs === undefined ? {} : { qemuDowntimeMs: record.qemuDowntimeMs }),
        updatesInWindow: gap?.count ?? 0,
        detail: committed ? `${record.strategy}, ${((cli.endedAt - cli.startedAt) / 1000).toFixed(1)} s` : `FAILED in ${record.failedPhase ?? '?'}: ${record.error ?? '?'}`,
      };
      results.moves.push(move);
      log(`move ${n}: ${move.detail}; frame gap ${ms(move.frameGapMs)}, downtime ${ms(move.downtimeMs)} (QEMU ${ms(move.qemuDowntimeMs)}); ${timeline(move)}`);
      if (!committed) throw new Error(`move ${n} ${direction}: ${move.detail}\n${sites.logTail()}`);
      // Keep only recent history: the next window starts after now.
      viewer.changeTimes.splice(0, Math.max(0, viewer.changeTimes.length - 200));
    }
  } finally {
    moving = false;
    viewer.close();
  }
}

/** +N / −N (ms from the migrate command's start; a gap may begin before it). */
function signed(at: number): string {
  return `${at < 0 ? '−' : '+'}${Math.abs(Math.round(at))}`;
}

/** Where the gap lies against the move's own events, ms from the migrate command's start. */
function timeline(m: Move): string {
  const events: [string, number | undefined][] = [
    ['last frame before the gap', m.gapFromMs],
    ['source QEMU\'s last frame', m.sourceLastMs],
    ['destination QEMU\'s first new frame', m.destFirstNewMs],
    ['switchover phase done', m.switchedAtMs],
    ['gateway lost its VNC session', m.gatewayLostAtMs],
    ['gateway told to switch', m.gatewaySwitchAtMs],
    [`gateway serving the destination${m.tilesDiffer === undefined ? '' : ` (${m.tilesDiffer} tiles differ)`}`, m.gatewayServingAtMs],
    ['first frame after the gap', m.gapToMs],
  ];
  const stall = m.sourceStallMs === undefined ? '' : `; the source QEMU's longest pause while running: ${Math.round(m.sourceStallMs)} ms from ${signed(m.sourceStallFromMs ?? 0)}`;
  const qemuGap = m.qemuGapMs === undefined ? '' : `; QEMU's own gap ${Math.round(m.qemuGapMs)} ms from ${signed(m.qemuGapFromMs ?? 0)}`;
  return `${events.filter((e): e is [string, number] => e[1] !== undefined).sort((a, b) => a[1] - b[1]).map(([what, at]) => `${what} ${signed(at)}`).join(', ')} ms${qemuGap}${stall}; ${m.updatesInWindow} gateway updates in the window`;
}

// ── the report ──────────────────────────────────────────────────────────────────────────────────
function report(results: Results): { text: string; ok: boolean } {
  const { directMs, gatewayMs } = results.latency;
  const latencyRatio = median(gatewayMs) !== undefined && median(directMs) ? (median(gatewayMs) as number) / (median(directMs) as number) : undefined;
  const p95Ratio = p95(gatewayMs) !== undefined && p95(directMs) ? (p95(gatewayMs) as number) / (p95(directMs) as number) : undefined;
  const rows: string[][] = [
    [`**input→echo latency** (${directMs.length} + ${gatewayMs.length} samples, ABBA)`, '', '', '', ''],
    ['median', ms(median(gatewayMs), 1), `${ms(median(directMs), 1)} direct`, num(latencyRatio), '≤ 1.05'],
    ['p95', ms(p95(gatewayMs), 1), `${ms(p95(directMs), 1)} direct`, num(p95Ratio), ''],
    ['mean', ms(mean(gatewayMs), 1), `${ms(mean(directMs), 1)} direct`, num(ratioOf(mean(gatewayMs), mean(directMs))), ''],
    ['min / max', `${ms(min(gatewayMs), 1)} / ${ms(max(gatewayMs), 1)}`, `${ms(min(directMs), 1)} / ${ms(max(directMs), 1)} direct`, '', ''],
  ];
  rows.push([`**frame gap during a move** (viewer on the gateway; updates every ${ms(results.cadenceMs)} otherwise)`, '', '', '', '']);
  let gapOk = true;
  for (const direction of ['edge→core', 'core→edge'] as const) {
    const moves = results.moves.filter((m) => m.direction === direction && m.committed);
    if (moves.length === 0) continue;
    const gaps = moves.map((m) => m.frameGapMs ?? Infinity);
    const downs = moves.map((m) => m.downtimeMs ?? 0);
    const over = moves.map((m) => (m.frameGapMs ?? Infinity) - (m.downtimeMs ?? 0));
    if (over.some((o) => o > 250)) gapOk = false;
    const qemuGaps = moves.map((m) => m.qemuGapMs).filter((v): v is number => v !== undefined);
    rows.push([`${direction}, median (${moves.length} moves)`, ms(median(gaps)), `${ms(median(downs))} downtime`, signedMs(median(over)), 'gap ≤ downtime + 250 ms']);
    rows.push([`${direction}, max`, ms(max(gaps)), `${ms(max(downs))} downtime`, `${signedMs(max(over))} (worst move)`, '']);
    const added = moves.filter((m) => m.qemuGapMs !== undefined).map((m) => (m.frameGapMs ?? Infinity) - (m.qemuGapMs as number));
    rows.push([`${direction}, QEMU's own gap, median / max`, '', `${ms(median(qemuGaps))} / ${ms(max(qemuGaps))}`, `${signedMs(median(added))} / ${signedMs(max(added))} gateway`, '']);
  }
  rows.push([`viewer disconnects over ${results.moves.length} moves`, String(results.disconnects), '', '', '0']);
  const g = results.cpu.gateway;
  const d = results.cpu.direct;
  const perMb = (c: typeof g): number | undefined => (c === undefined || c.bytes === 0 ? undefined : c.cpuMs / (c.bytes / MB));
  const cpuRatio = perMb(g) !== undefined && perMb(d) ? (perMb(g) as number) / (perMb(d) as number) : undefined;
  rows.push([`**CPU per MB of updates** (this process, ${config.cpuSeconds} s each)`, '', '', '', '']);
  rows.push([
    'CPU ms / MB delivered',
    g ? `${num(perMb(g))} (${(g.bytes / MB / g.seconds).toFixed(1)} MB/s)` : '—',
    d ? `${num(perMb(d))} direct (${(d.bytes / MB / d.seconds).toFixed(1)} MB/s)` : '—',
    num(cpuRatio),
    '—',
  ]);
  rows.push(['gateway\'s own share (gateway − direct)', g && d ? `${num((perMb(g) ?? 0) - (perMb(d) ?? 0))} ms/MB` : '—', '', '', '']);
  const lines = [markdownTable(['measurement', 'through the gateway', 'reference', '×/Δ', 'target'], rows), ''];
  lines.push('Per move (frame gap: longest interval between pixel-changing updates in [migrate start, migrate end + 2 s]; downtime: the record\'s, agents\' STOP → running, QEMU\'s in parentheses;');
  lines.push('  QEMU\'s own gap: the same figure for a viewer that watches the source QEMU\'s socket until its last frame, then the destination QEMU\'s, at no');
  lines.push('  cost (two viewers directly on the sockets, merged); then the move\'s events in ms from the `snowbird migrate` command\'s start, gateway events');
  lines.push('  as the edge agent logged them):');
  for (const m of results.moves) {
    lines.push(`- ${m.n}. ${m.direction}: ${m.detail}; gap ${ms(m.frameGapMs)}, downtime ${ms(m.downtimeMs)} (${ms(m.qemuDowntimeMs)}); ${timeline(m)}`);
  }
  if (g && d) lines.push(`CPU: through the gateway ${g.cpuMs.toFixed(0)} ms (user ${g.userMs.toFixed(0)} + system ${g.systemMs.toFixed(0)}) for ${(g.bytes / MB).toFixed(1)} MB; direct ${d.cpuMs.toFixed(0)} ms (user ${d.userMs.toFixed(0)} + system ${d.systemMs.toFixed(0)}) for ${(d.bytes / MB).toFixed(1)} MB.`);
  if (results.latency.misses > 0) lines.push(`Latency samples dropped (no echo within 5 s): ${results.latency.misses}.`);
  for (const e of results.errors) lines.push(`- stopped: ${e}`);
  lines.push('');
  const gaps = results.moves.map((m) => m.frameGapMs).filter((v): v is number => v !== undefined);
  const downs = results.moves.map((m) => m.downtimeMs).filter((v): v is number => v !== undefined);
  lines.push(`gateway latency ratio: ${num(latencyRatio)}`);
  lines.push(`frame gap ms: ${gaps.length === 0 ? '—' : Math.round(max(gaps) as number)}`);
  lines.push(`downtime ms: ${downs.length === 0 ? '—' : Math.round(max(downs) as number)}`);
  lines.push(`disconnects: ${results.disconnects}`);
  // Targets missed are figures, not failures: the exit status says whether the run itself went through.
  const ok = results.errors.length === 0 && results.moves.length === config.moves && results.moves.every((m) => m.committed) && results.disconnects === 0;
  if (!gapOk) lines.splice(lines.length - 5, 0, 'Frame gap target (gap ≤ downtime + 250 ms) missed by at least one move.');
  return { text: lines.join('\n'), ok };
}

// ── main ────────────────────────────────────────────────────────────────────────────────────────
async function main(cleanup: Cleanup): Promise<boolean> {
  const root = await mkdtemp('/tmp/sbd-');
  cleanup.add(`remove ${root}`, () => rm(root, { recursive: true, force: true }));
  const qemu = (await run('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0] ?? '?';
  const load = (await run('cat', ['/proc/loadavg'])).stdout.split(' ').slice(0, 3).join(' ');
  const results: Results = {
    config,
    machine: `${(await run('nproc')).stdout.trim()} cores, TCG, ${qemu}`,
    latency: { directMs: [], gatewayMs: [], misses: 0 },
    moves: [],
    disconnects: 0,
    cpu: {},
    errors: [],
  };
  log(`machine: ${results.machine}; load average at start ${load}; guest ${config.memoryMiB} MiB RAM, ${config.diskSize} disk, sb.mem=${config.memWorkloadMiB} sb.disk=${config.diskWorkloadBlocks}`);

  log('building the demo guest (cached)');
  const build = await runCli(['guest', 'build']);
  if (build.code !== 0) throw new Error(`snowbird guest build failed: ${build.stderr}`);

  const { wan, port } = await openSitesLink(config.rateMbit, 7444, cleanup, log);
  const sites = new SnowbirdSites(join(root, 'sites'), wan, port, cleanup);
  const probes: RfbProbe[] = [];
  cleanup.add('close the RFB clients', () => {
    for (const p of probes) p.close();
    return Promise.resolve();
  });

  try {
    log(`starting the core agent (${wan.coreAddress}:${port}) and the edge agent, pairing them`);
    await sites.start({ autoPlacement: false }); // manual moves only: the policy must not move the VM under the measurement
    await sites.createVm(VM, { memoryMiB: config.memoryMiB, diskSize: config.diskSize, memWorkloadMiB: config.memWorkloadMiB, diskWorkloadBlocks: config.diskWorkloadBlocks, cache: join(REPO_ROOT, '.cache') });
    log('booting the guest at the edge');
    await sites.startVm(VM);
    const vncSocket = sites.edgeLibrary.paths(VM).vnc;
    await sleep(1500); // `ready` comes from sbctl, started just before the shell on tty1
    const display = await openDisplay(sites);
    log(`display: gateway at ${display.rfbAddress} (VM at the ${display.at}, ${display.status.state}); QEMU's VNC at ${vncSocket}`);

    const direct = await RfbProbe.unix(vncSocket, 'direct');
    probes.push(direct);
    const viaGateway = await RfbProbe.tcp(rfbPort(display), 'gateway');
    probes.push(viaGateway);
    await Promise.all([direct.nextChange(10_000), viaGateway.nextChange(10_000)]);
    results.screen = { width: direct.width, height: direct.height };
    log(`screen ${direct.width}x${direct.height}; hiding the console cursor (its blink would be a screen change of its own)`);
    // A clean line, the cursor hidden (vgacon: DECTCEM off) and the screen cleared.
    await pressKey(viaGateway, XK.Return);
    await typeText(viaGateway, "printf '\\033[?25l'; clear");
    await pressKey(viaGateway, XK.Return);
    await sleep(1500);
    results.idleUpdatesPer2s = await idleUpdates(direct, 2000);
    log(`idle screen: ${results.idleUpdatesPer2s} pixel-changing updates in 2 s (should be 0)`);

    log(`latency: ${config.samples} samples per path, alternating direct / gateway`);
    await measureLatency(direct, viaGateway, results, cleanup);
    log(`latency: direct median ${ms(median(results.latency.directMs), 1)} p95 ${ms(p95(results.latency.directMs), 1)}; gateway median ${ms(median(results.latency.gatewayMs), 1)} p95 ${ms(p95(results.latency.gatewayMs), 1)}`);
    direct.close();
    if (cleanup.interrupted) return false;

    log(`starting the guest's screen loop: ${WIDE_LOOP}`);
    await typeText(viaGateway, WIDE_LOOP);
    await pressKey(viaGateway, XK.Return);
    // Only the measured viewer is in this process from here on.
    viaGateway.close();
    await sleep(2000);

    try {
      await measureCpu(vncSocket, results, cleanup);
    } catch (error) {
      results.errors.push(`cpu: ${(error as Error).message}`);
      log(`cpu failed: ${(error as Error).stack ?? String(error)}`);
    }
    if (cleanup.interrupted) return false;

    log(`Ctrl-C, then the narrower loop for the moves: ${NARROW_LOOP}`);
    const typist = await RfbProbe.unix(vncSocket, 'typist');
    probes.push(typist);
    typist.key(XK.ControlL, true);
    await pressKey(typist, 'c'.charCodeAt(0), 50);
    typist.key(XK.ControlL, false);
    await sleep(500);
    await typeText(typist, NARROW_LOOP);
    await pressKey(typist, XK.Return);
    typist.close();
    await sleep(2000);

    log(`frame gap: ${config.moves} moves with the gateway viewer recording every update`);
    await measureMoves(sites, rfbPort(display), results, cleanup);
  } catch (error) {
    results.errors.push((error as Error).message);
    log(`benchmark failed: ${(error as Error).stack ?? String(error)}`);
  }
  if (cleanup.interrupted) return false;

  const { text, ok } = report(results);
  if (opts.json) await writeFile(opts.json, `${JSON.stringify(results, null, 2)}\n`);
  const link = config.rateMbit === undefined ? 'agents on loopback' : `core behind ${config.rateMbit} Mbit/s`;
  process.stdout.write(`\n## Display gateway vs QEMU's VNC server (${link}, ${results.machine}, screen ${results.screen?.width ?? '?'}x${results.screen?.height ?? '?'})\n\n${text}\n`);
  return ok;
}

await runBenchmark(log, main);
