// `npm run bench:migration`: snowbird's live migration (disk layers, pre-copy out, hybrid back) against
// plain QEMU with a full disk copy (what `virsh migrate --live --copy-storage-all` does), in the same
// run, over an emulated WAN: the core side lives in its own network namespace behind a veth pair that
// tbf limits to 100 Mbit/s. Both move the same demo guest (512 MiB RAM, 1 GiB disk with a written
// working set) edge → core → edge (ours: a first round trip, a later one, and a later one whose return
// is post-copy, for reference); then the guest dirties memory fast (the busy VM, moved with the default
// strategy: no --strategy, as the app's buttons and the policy move it), one trip each way.
// Bytes on the wire come from the veth counters for both; downtime is QEMU's own figure for both.
// The guest checks its memory and disk after every trip: a corrupted guest is reported, not hidden.
//
// Prints progress on stderr, then the table and the summary lines
//   round-trip bytes ratio: X / round-trip time ratio: X / downtime ratio: X   (ours / baseline)
// on stdout. Everything it starts (agents, QEMUs, the namespace, temp dirs) is removed on success,
// failure and Ctrl-C. Needs root (network namespaces), QEMU 7.2+, and the demo guest's build tools.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseBenchOptions, usageError as benchUsageError } from './support/options.ts';
import { createWan, type Wan } from './support/wan.ts';
import type { Cleanup } from './support/cleanup.ts';
import { runBenchmark } from './support/cleanup.ts';
import { checkGuest, guestCommands, readWire, wireDelta, type GuestCheck } from './support/measure.ts';
import { plainMigrate, startPlainVm, stopPlainVm, type PlainSite, type PlainTrip, type PlainVm } from './support/plain-qemu.ts';
import { REPO_ROOT, runCli, SnowbirdSites } from './support/snowbird.ts';
import { formatRatio, markdownTable, mebibytes, millis, ratio, seconds } from './support/table.ts';
import type { MemoryStrategy, MigrationRecord } from '../src/shared/migration.ts';
import { formatStrategy } from '../src/shared/format.ts';
import type { VmSpec } from '../src/migrator/qemu/common/spec.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const VM = 'bench';

const usageError: (message: string) => never = (message) => benchUsageError('bench:migration', message);

const OPTIONS = {
  rate: { type: 'string', default: '100' },
  memory: { type: 'string', default: '512' },
  'disk-size': { type: 'string', default: '1G' },
  'working-set': { type: 'string', default: '768' },
  'mem-workload': { type: 'string', default: '2' },
  'disk-workload': { type: 'string', default: '1024' },
  'converge-mem': { type: 'string', default: '256' },
  'converge-timeout': { type: 'string', default: '150' },
  'no-convergence': { type: 'boolean', default: false },
  'skip-baseline': { type: 'boolean', default: false },
  json: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

const opts = parseBenchOptions('bench:migration', OPTIONS);

if (opts.help) {
  process.stdout.write(`usage: node bench/migration.ts [options]   (as root)
  --rate MBIT           WAN bandwidth, tbf on both ends of the veth pair (default 100)
  --memory MIB          guest RAM (default 512)
  --disk-size SIZE      virtual disk, qemu-img syntax (default 1G)
  --working-set MIB     data written on the disk before boot, from offset 64 MiB (default 768)
  --mem-workload MIB    memory the guest keeps rewriting in the normal runs (default 2)
  --disk-workload N     4 KiB disk blocks the guest keeps rewriting (default 1024)
  --converge-mem MIB    memory the guest rewrites in the convergence case (default 256)
  --converge-timeout S  give up on a plain pre-copy that has not converged after S s (default 150)
  --no-convergence      skip the convergence case
  --skip-baseline       measure ours only (no ratios; for working on our side)
  --json FILE           also write every raw figure to FILE
`);
  process.exit(0);
}

function positive(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!(n > 0)) usageError(`--${name} must be a positive number, got "${value}"`);
  return n;
}

function sizeBytes(text: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(text.trim());
  if (!m?.[1]) usageError(`--disk-size "${text}": use a size like 1G or 1536M`);
  const unit = { '': 1, K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB }[(m[2] ?? '').toUpperCase()] ?? 1;
  return Number(m[1]) * unit;
}

const config = {
  rateMbit: positive('rate', opts.rate),
  memoryMiB: positive('memory', opts.memory),
  diskSize: opts['disk-size'],
  diskSizeBytes: sizeBytes(opts['disk-size']),
  workingSetMiB: positive('working-set', opts['working-set']),
  workingSetOffsetMiB: 64,
  memWorkloadMiB: positive('mem-workload', opts['mem-workload']),
  diskWorkloadBlocks: positive('disk-workload', opts['disk-workload']),
  convergeMemMiB: positive('converge-mem', opts['converge-mem']),
  convergeTimeoutMs: positive('converge-timeout', opts['converge-timeout']) * 1000,
  convergence: !opts['no-convergence'],
};
if (config.diskWorkloadBlocks * 4096 > config.workingSetOffsetMiB * MiB) usageError('--disk-workload must fit below the working set (at most 16384 blocks)');
if ((config.workingSetOffsetMiB + config.workingSetMiB) * MiB > config.diskSizeBytes) usageError(`the working set (${config.workingSetMiB} MiB from offset ${config.workingSetOffsetMiB} MiB) does not fit on a ${config.diskSize} disk`);

const benchStart = Date.now();
function log(line: string): void {
  const s = Math.round((Date.now() - benchStart) / 1000);
  process.stderr.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}\n`);
}

/** One move, as either side measured it. */
interface Trip {
  /** false: it failed or did not converge; `detail` says what happened. */
  done: boolean;
  wallMs?: number;
  /** QEMU's own downtime figure (query-migrate `downtime` at the source). */
  qemuDowntimeMs?: number;
  /** Source STOP to "the guest runs at the destination". */
  observedDowntimeMs?: number;
  wireBytes?: number;
  /** From the start of the move until the guest runs at the destination. */
  ttiMs?: number;
  check?: GuestCheck;
  detail: string;
  /** The source QEMU's final query-migrate (ours: with snowbird's own figures), for --json. */
  qemu?: unknown;
}

interface Results {
  config: typeof config;
  machine: string;
  baseline: { out?: Trip; back?: Trip; convergeOut?: Trip; convergeBack?: Trip; error?: string };
  ours: { out1?: Trip; back1?: Trip; out2?: Trip; back2?: Trip; out3?: Trip; back3?: Trip; convergeOut?: Trip; convergeBack?: Trip; error?: string };
}

// ── the working set: written before the first boot, kept (never rewritten) by the guest ─────────
async function prefill(disk: string): Promise<void> {
  // A non-zero pattern per 64 MiB piece: real data for every copy mechanism (nothing here compresses).
  for (let off = 0; off < config.workingSetMiB; off += 64) {
    const len = Math.min(64, config.workingSetMiB - off);
    const pattern = `0x${(0x11 + ((off / 64) % 0xee)).toString(16)}`;
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${config.workingSetOffsetMiB + off}M ${len}M`, disk]);
  }
}

// ── baseline ────────────────────────────────────────────────────────────────────────────────────
function plainTrip(t: PlainTrip, check: GuestCheck | undefined): Trip {
  const detail = t.converged
    ? `mirror ${mebibytes(t.diskJobBytes)} ready after ${seconds(t.diskSyncMs)}, memory ${mebibytes(t.memoryBytes)} in ${t.passes} passes / ${seconds(t.memoryMs)}, observed downtime ${millis(t.observedDowntimeMs)}`
    : `did not converge in ${Math.round(config.convergeTimeoutMs / 1000)} s of pre-copy (after a ${seconds(t.diskSyncMs)} disk copy): ${mebibytes(t.memoryBytes)} of memory sent in ${t.passes} passes, then migrate_cancel (the guest kept running at the source)`;
  return {
    done: t.converged,
    wallMs: t.wallMs,
    ...(t.qemuDowntimeMs === undefined ? {} : { qemuDowntimeMs: t.qemuDowntimeMs }),
    ...(t.observedDowntimeMs === undefined ? {} : { observedDowntimeMs: t.observedDowntimeMs }),
    wireBytes: t.wire.total,
    ...(t.timeToInteractiveMs === undefined ? {} : { ttiMs: t.timeToInteractiveMs }),
    ...(check ? { check } : {}),
    detail,
    qemu: t.final,
  };
}

async function runBaseline(root: string, wan: Wan, spec: VmSpec, cleanup: Cleanup, results: Results): Promise<void> {
  const edge: PlainSite = { name: 'edge', address: wan.edgeAddress, execPrefix: [] };
  const core: PlainSite = { name: 'core', address: wan.coreAddress, execPrefix: wan.execPrefix };
  const dir = (name: string): string => join(root, 'baseline', name);
  await mkdir(dir('e0'), { recursive: true });
  const disk = join(dir('e0'), 'disk.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(config.diskSizeBytes)]);
  log(`baseline: writing the ${config.workingSetMiB} MiB working set`);
  await prefill(disk);
  let vm: PlainVm = await startPlainVm({ ...spec, disk }, dir('e0'), edge, { incoming: false, cleanup });
  let uptime = 0;
  try {
    log('baseline: booting the guest at the edge');
    const boot = await checkGuest(VM, vm.paths.control, 0);
    if (!boot.ok) throw new Error(`the baseline guest is not healthy after boot: ${boot.summary}`);
    uptime = boot.uptimeMs;
    const common = { diskSizeBytes: config.diskSizeBytes, hostInterface: wan.hostInterface, ports: { nbd: 10809, migration: 4444 }, cleanup, log };
    const trip = async (to: PlainSite, name: string, label: string, memoryTimeoutMs: number): Promise<Trip> => {
      log(`baseline ${label}: plain QEMU, full disk copy`);
      const t = await plainMigrate(vm, to, { ...common, dir: dir(name), memoryTimeoutMs, label: `baseline ${label}` });
      vm = t.vm;
      const check = await checkGuest(VM, vm.paths.control, uptime);
      uptime = Math.max(uptime, check.uptimeMs);
      const result = plainTrip(t, check);
      log(`baseline ${label}: ${t.converged ? `${seconds(t.wallMs)}, downtime ${millis(t.qemuDowntimeMs)}, ${mebibytes(t.wire.total)} on the wire` : 'did not converge'}; guest ${check.summary}`);
      return result;
    };
    const normalTimeout = 30 * 60_000;
    results.baseline.out = await trip(core, 'c1', 'edge→core', normalTimeout);
    results.baseline.back = await trip(edge, 'e2', 'core→edge', normalTimeout);
    if (config.convergence) {
      log(`baseline convergence case: the guest now rewrites ${config.convergeMemMiB} MiB continuously`);
      await guestCommands(VM, vm.paths.control, [{ type: 'mem-stop' }, { type: 'mem-start', mib: config.convergeMemMiB }]);
      results.baseline.convergeOut = await trip(core, 'c3', 'edge→core (fast dirtying)', config.convergeTimeoutMs);
      if (results.baseline.convergeOut.done) results.baseline.convergeBack = await trip(edge, 'e4', 'core→edge (fast dirtying)', config.convergeTimeoutMs);
    }
  } finally {
    await stopPlainVm(vm);
  }
}

// ── ours ────────────────────────────────────────────────────────────────────────────────────────
function oursTrip(record: MigrationRecord, cli: { startedAt: number; endedAt: number }, wireBytes: number, check: GuestCheck | undefined): Trip {
  const snowbird = (record.qemu?.['snowbird'] ?? {}) as { disk?: { mode?: string }; decisions?: string[] };
  const phases = record.phaseMs;
  const untilRunning = (phases.plan ?? 0) + (phases.prepare ?? 0) + (phases.disk ?? 0) + (phases.memory ?? 0) + (phases.switchover ?? 0);
  const committed = record.outcome === 'committed';
  const streams = Object.entries(record.streamBytes).map(([k, v]) => `${k} ${mebibytes(v)}`).join(' + ');
  const detail = committed
    ? `${formatStrategy(record)}${record.memory?.postcopyMs === undefined ? '' : ` (post-copy ${millis(record.memory.postcopyMs)})`}, disk ${snowbird.disk?.mode ?? '?'}; link streams ${streams}; phases ${['plan', 'prepare', 'disk', 'memory', 'switchover', 'commit'].map((p) => ((phases as Record<string, number | undefined>)[p] ?? 0) / 1000).map((s) => s.toFixed(1)).join('/')} s; observed downtime ${millis(record.downtimeMs)}${snowbird.decisions?.length ? `; watch: ${snowbird.decisions.join('; ')}` : ''}`
    : `FAILED in ${record.failedPhase ?? '?'}: ${record.error ?? '?'}`;
  return {
    done: committed,
    wallMs: cli.endedAt - cli.startedAt,
    ...(record.qemuDowntimeMs === undefined ? {} : { qemuDowntimeMs: record.qemuDowntimeMs }),
    ...(record.downtimeMs === undefined ? {} : { observedDowntimeMs: record.downtimeMs }),
    wireBytes,
    ...(committed ? { ttiMs: Date.parse(record.startedAt) - cli.startedAt + untilRunning } : {}),
    ...(check ? { check } : {}),
    detail,
    qemu: record.qemu,
  };
}

async function runOurs(sites: SnowbirdSites, wan: Wan, results: Results): Promise<void> {
  log('ours: starting the core agent (in the namespace) and the edge agent, pairing them');
  await sites.start({ autoPlacement: false }); // manual moves only: the policy must not move the VM under the measurement
  log('ours: booting the guest at the edge');
  await sites.startVm(VM);
  const boot = await checkGuest(VM, sites.controlSocket(VM, 'edge'), 0);
  if (!boot.ok) throw new Error(`the guest is not healthy after boot: ${boot.summary}`);
  let uptime = boot.uptimeMs;
  const trip = async (to: 'core' | 'edge', label: string, strategy?: MemoryStrategy): Promise<Trip> => {
    log(`ours ${label}: snowbird migrate ${VM} --to ${to}${strategy ? ` --strategy ${strategy}` : ''}`);
    const before = await readWire(wan.hostInterface);
    const { record, cli } = await sites.migrate(VM, to, strategy);
    const wire = wireDelta(before, await readWire(wan.hostInterface));
    const committed = record.outcome === 'committed';
    const at = committed ? to : to === 'core' ? 'edge' : 'core';
    const check = await checkGuest(VM, sites.controlSocket(VM, at), uptime).catch((error: unknown) => ({
      ok: false, memoryViolations: 0, diskViolations: 0, rebooted: false, uptimeMs: 0, summary: `cannot read the guest's report: ${(error as Error).message}`,
    }));
    uptime = Math.max(uptime, check.uptimeMs);
    const result = oursTrip(record, cli, wire.total, check);
    log(`ours ${label}: ${committed ? `${seconds(result.wallMs)}, downtime ${millis(result.qemuDowntimeMs)}, ${mebibytes(wire.total)} on the wire` : result.detail}; guest ${check.summary}`);
    if (!committed) throw new Error(`ours ${label}: ${result.detail}\n${sites.logTail()}`);
    return result;
  };
  results.ours.out1 = await trip('core', 'edge→core #1');
  results.ours.back1 = await trip('edge', 'core→edge #1', 'hybrid');
  results.ours.out2 = await trip('core', 'edge→core #2');
  results.ours.back2 = await trip('edge', 'core→edge #2', 'hybrid');
  // For reference: the same later round trip with the return in pure post-copy (resume at once).
  results.ours.out3 = await trip('core', 'edge→core #3');
  results.ours.back3 = await trip('edge', 'core→edge #3', 'postcopy');
  if (config.convergence) {
    log(`ours convergence case: the guest now rewrites ${config.convergeMemMiB} MiB continuously`);
    await guestCommands(VM, sites.controlSocket(VM, 'edge'), [{ type: 'mem-stop' }, { type: 'mem-start', mib: config.convergeMemMiB }]);
    // No --strategy: what the Send to cloud button and the policy do (auto out, hybrid back).
    results.ours.convergeOut = await trip('core', 'edge→core (busy VM, default strategy)');
    results.ours.convergeBack = await trip('edge', 'core→edge (busy VM, default strategy)');
  }
}

// ── the report ──────────────────────────────────────────────────────────────────────────────────
function roundTrip(out: Trip | undefined, back: Trip | undefined): Trip | undefined {
  if (!out?.done || !back?.done) return undefined;
  const sum = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined ? undefined : a + b);
  return {
    done: true,
    ...(sum(out.wallMs, back.wallMs) === undefined ? {} : { wallMs: sum(out.wallMs, back.wallMs) as number }),
    ...(sum(out.qemuDowntimeMs, back.qemuDowntimeMs) === undefined ? {} : { qemuDowntimeMs: sum(out.qemuDowntimeMs, back.qemuDowntimeMs) as number }),
    ...(sum(out.observedDowntimeMs, back.observedDowntimeMs) === undefined ? {} : { observedDowntimeMs: sum(out.observedDowntimeMs, back.observedDowntimeMs) as number }),
    ...(sum(out.wireBytes, back.wireBytes) === undefined ? {} : { wireBytes: sum(out.wireBytes, back.wireBytes) as number }),
    ...(back.ttiMs === undefined ? {} : { ttiMs: back.ttiMs }),
    detail: '',
  };
}

function guestCell(t: Trip | undefined): string {
  if (t?.check === undefined) return '—';
  return t.check.ok ? 'ok' : 'VIOLATED';
}

function downtimeCell(t: Trip | undefined): string {
  if (t?.qemuDowntimeMs === undefined) return '—';
  return `${millis(t.qemuDowntimeMs)} (${t.observedDowntimeMs === undefined ? '—' : Math.round(t.observedDowntimeMs)})`;
}

function row(name: string, ours: Trip | undefined, base: Trip | undefined, showGuest = true): string[] {
  const baseWall = base && !base.done ? `no conv. (${seconds(base.wallMs)})` : seconds(base?.wallMs);
  const observed = formatRatio(ratio(ours?.observedDowntimeMs, base?.observedDowntimeMs));
  return [
    name,
    seconds(ours?.wallMs), baseWall, formatRatio(ratio(ours?.wallMs, base?.done ? base.wallMs : undefined)),
    downtimeCell(ours), downtimeCell(base), `${formatRatio(ratio(ours?.qemuDowntimeMs, base?.qemuDowntimeMs))}${observed === '—' ? '' : ` (${observed})`}`,
    mebibytes(ours?.wireBytes), mebibytes(base?.wireBytes), formatRatio(ratio(ours?.wireBytes, base?.done ? base.wireBytes : undefined)),
    seconds(ours?.ttiMs), seconds(base?.ttiMs), formatRatio(ratio(ours?.ttiMs, base?.ttiMs)),
    showGuest ? `${guestCell(ours)} / ${guestCell(base)}` : '',
  ];
}

function report(results: Results): { text: string; ok: boolean } {
  const b = results.baseline;
  const o = results.ours;
  const header = ['trip', 'wall ours', 'wall base', '×', 'downtime ours', 'downtime base', '×', 'wire ours', 'wire base', '×', 'TTI ours', 'TTI base', '×', 'guest ours / base'];
  const bRt = roundTrip(b.out, b.back);
  const rows: string[][] = [
    ['**first round trip** (ours: the core holds no layer yet)', ...Array<string>(13).fill('')],
    row('edge→core', o.out1, b.out),
    row('core→edge (return)', o.back1, b.back),
    row('round trip', roundTrip(o.out1, o.back1), bRt, false),
    ['**later round trip** (ours: layers shared; baseline: same trips)', ...Array<string>(13).fill('')],
    row('edge→core', o.out2, b.out),
    row('core→edge (return)', o.back2, b.back),
    row('round trip', roundTrip(o.out2, o.back2), bRt, false),
    ['**later round trip, return in post-copy** (ours: `--strategy postcopy` back)', ...Array<string>(13).fill('')],
    row('edge→core', o.out3, b.out),
    row('core→edge (return)', o.back3, b.back),
    row('round trip', roundTrip(o.out3, o.back3), bRt, false),
  ];
  if (config.convergence) {
    rows.push(
      [`**busy VM, default strategy** (the guest rewrites ${config.convergeMemMiB} MiB; ours: no \`--strategy\`, so auto out and hybrid back)`, ...Array<string>(13).fill('')],
      row('edge→core', o.convergeOut, b.convergeOut),
      row('core→edge (return)', o.convergeBack, b.convergeBack),
    );
  }
  const lines = [markdownTable(header, rows), ''];
  lines.push('wall: the whole move (ours: the `snowbird migrate` command, start to exit). downtime: QEMU\'s `downtime` from query-migrate,');
  lines.push('  in parentheses the pause observed from the source\'s STOP to the guest running at the destination (round trip: both moves).');
  lines.push('wire: bytes through the veth pair, both directions. TTI: until the guest runs at the destination (round trip: the return).');
  lines.push('×: ours / baseline. The baseline keeps no state between trips, so both round trips are compared with its one round trip.');
  lines.push('');
  lines.push('Per trip:');
  const detail = (name: string, t: Trip | undefined): void => {
    if (t === undefined) return;
    lines.push(`- ${name}: ${t.detail}${t.check && !t.check.ok ? ` — GUEST: ${t.check.summary}` : ''}`);
  };
  detail('baseline edge→core', b.out);
  detail('baseline core→edge', b.back);
  detail('baseline edge→core, fast dirtying', b.convergeOut);
  detail('baseline core→edge, fast dirtying', b.convergeBack);
  detail('ours edge→core #1', o.out1);
  detail('ours core→edge #1', o.back1);
  detail('ours edge→core #2', o.out2);
  detail('ours core→edge #2', o.back2);
  detail('ours edge→core #3', o.out3);
  detail('ours core→edge #3 (post-copy)', o.back3);
  detail('ours edge→core, fast dirtying', o.convergeOut);
  detail('ours core→edge, fast dirtying', o.convergeBack);
  if (b.error) lines.push(`- baseline stopped: ${b.error}`);
  if (o.error) lines.push(`- ours stopped: ${o.error}`);
  const all = [b.out, b.back, b.convergeOut, b.convergeBack, o.out1, o.back1, o.out2, o.back2, o.out3, o.back3, o.convergeOut, o.convergeBack];
  const ok = !b.error && !o.error && all.every((t) => t === undefined || t.check === undefined || t.check.ok);
  lines.push('');
  const first = roundTrip(o.out1, o.back1);
  lines.push(`first round trip, for reference: bytes ratio ${formatRatio(ratio(first?.wireBytes, bRt?.wireBytes))}, time ratio ${formatRatio(ratio(first?.wallMs, bRt?.wallMs))}, downtime ratio ${formatRatio(ratio(first?.qemuDowntimeMs, bRt?.qemuDowntimeMs))} (observed ${formatRatio(ratio(first?.observedDowntimeMs, bRt?.observedDowntimeMs))})`);
  const later = roundTrip(o.out2, o.back2);
  lines.push(`later round trip, observed-pause ratio: ${formatRatio(ratio(later?.observedDowntimeMs, bRt?.observedDowntimeMs))} (the three lines below: the later round trip, QEMU's downtime)`);
  lines.push(`round-trip bytes ratio: ${formatRatio(ratio(later?.wireBytes, bRt?.wireBytes))}`);
  lines.push(`round-trip time ratio: ${formatRatio(ratio(later?.wallMs, bRt?.wallMs))}`);
  lines.push(`downtime ratio: ${formatRatio(ratio(later?.qemuDowntimeMs, bRt?.qemuDowntimeMs))}`);
  return { text: lines.join('\n'), ok };
}

async function main(cleanup: Cleanup): Promise<boolean> {
  if (process.getuid?.() !== 0) throw new Error('run as root: the benchmark creates a network namespace and a veth pair');
  const root = await mkdtemp('/tmp/sbm-');
  cleanup.add(`remove ${root}`, () => rm(root, { recursive: true, force: true }));
  const qemu = (await run('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0] ?? '?';
  const results: Results = { config, machine: `${(await run('nproc')).stdout.trim()} cores, TCG, ${qemu}`, baseline: {}, ours: {} };
  log(`machine: ${results.machine}; WAN ${config.rateMbit} Mbit/s; guest ${config.memoryMiB} MiB RAM, ${config.diskSize} disk, ${config.workingSetMiB} MiB working set, sb.mem=${config.memWorkloadMiB} sb.disk=${config.diskWorkloadBlocks}`);

  log('building the demo guest (cached)');
  const build = await runCli(['guest', 'build']);
  if (build.code !== 0) throw new Error(`snowbird guest build failed: ${build.stderr}`);

  const wan = await createWan({ rateMbit: config.rateMbit });
  cleanup.add(`remove the network namespace ${wan.namespace}`, () => wan.dispose());
  log(`WAN: namespace ${wan.namespace}, edge ${wan.edgeAddress} ⇄ core ${wan.coreAddress}, tbf ${config.rateMbit} Mbit/s on ${wan.hostInterface} and its peer`);

  // The VM as snowbird knows it; the baseline boots the very same spec (kernel, initrd, command line).
  const sites = new SnowbirdSites(join(root, 'ours'), wan, 7443, cleanup);
  await sites.createVm(VM, { memoryMiB: config.memoryMiB, diskSize: config.diskSize, memWorkloadMiB: config.memWorkloadMiB, diskWorkloadBlocks: config.diskWorkloadBlocks, cache: join(REPO_ROOT, '.cache') });
  const spec = await sites.edgeLibrary.load(VM);

  try {
    if (!opts['skip-baseline']) await runBaseline(root, wan, spec, cleanup, results);
  } catch (error) {
    results.baseline.error = (error as Error).message;
    log(`baseline failed: ${(error as Error).stack ?? String(error)}`);
  }

  if (cleanup.interrupted) return false;
  try {
    log(`ours: writing the ${config.workingSetMiB} MiB working set`);
    await prefill(spec.disk);
    await runOurs(sites, wan, results);
  } catch (error) {
    results.ours.error = (error as Error).message;
    log(`ours failed: ${(error as Error).stack ?? String(error)}`);
  }

  const { text, ok } = report(results);
  if (opts.json) await writeFile(opts.json, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`\n## Live migration: snowbird vs plain QEMU (${config.rateMbit} Mbit/s, ${results.machine})\n\n${text}\n`);
  return ok;
}

await runBenchmark(log, main);
