// `npm run bench:dedup`: the return trip of a VM whose memory mostly stayed the same while it was away,
// over the 100 Mbit/s namespace link of bench:migration (support/wan.ts), in the same run for:
//   plain QEMU     QEMU's own migration between two QEMUs, no agents (support/plain-qemu.ts: NBD +
//                  `blockdev-mirror sync=full` + pre-copy `migrate tcp:` with QEMU's defaults)
//   ours           `snowbird migrate --strategy precopy --dedup off` (the memory stream plain through the link)
//   ours + dedup   `snowbird migrate --strategy precopy --dedup on` (src/migrator/dedup)
//   floor          the zstd-compressed size of the chunks that really changed (below)
//
// The guest: the demo guest with a fill region (`fill MIB` on its control channel, guest/src/sbctl.c):
// a few hundred MiB of non-zero data that stays put (a quarter of its pages text-like, a quarter sparse,
// half random: zstd -3 takes it to ~77 %). Its memory checker runs small (sbmem 1 MiB, rewritten all the
// time) and its disk checker is stopped after boot (`disk stop`: the disk stays put; this is about
// memory, and a disk rewritten all along would make plain QEMU's mirror copy it again and again), so
// little else in memory changes. For each fraction (0, 2, 10, 50 %), each contender moves the VM edge →
// core, the guest rewrites that share of the fill's pages with new data (`fill change P`: a spread-out
// pseudo-random selection, the same pages for every contender, content never seen before), and the VM
// comes back core → edge: that return is what is measured. Ours runs the dedup round and the plain round
// on the same VM and agents, one after the other, after a first round trip that is not measured (it
// carries one-time transfers: the boot images go to each site once, ~14 MiB; it runs with the default,
// `--dedup auto`, and the run stops if that does not choose dedup on this link); plain QEMU boots its own
// VM from the same spec and does the same. After every return the guest verifies the whole fill (`fill
// check`) and the memory checker's reports (no violation, no reboot).
//
// Measured per return: bytes through the veth pair (both directions, all overhead, as bench:migration),
// the whole move's time (ours: the `snowbird migrate` command; plain: destination start to the source
// gone), and the memory stream's bytes (ours: the record's `streamBytes.migration`, which through dedup
// counts frames one way and the inventory, acks and needs the other; plain: the stream's raw bytes).
//
// The floor: the plain baseline's source migrates to a tap on the edge end of the link
// (support/stream-tap.ts), which forwards the bytes unchanged and cuts each stream into the dedup
// transport's own chunks (same FastCDC chunker, same hash). The chunks of the return stream that are
// not among the outgoing stream's chunks (each counted once) are the chunks that really changed —
// exactly what a chunk-level transport whose destination kept the outgoing stream cannot avoid sending;
// the floor is their size through one zstd stream at level 3 (zstd's default). "Dedup × floor"
// compares ours + dedup's memory-stream bytes with it (and the whole wire, in brackets).
//
// Transport throughput: the tap also saves the outgoing and return streams of one fraction (10 % when
// it runs, else the last); once every VM and agent is gone, a DedupSender (support/dedup-sender.ts, the
// stand-in receiver of dedup-throughput.ts) takes each in on the main thread, i.e. one core: the return
// stream with the outgoing stream's chunks as the receiver's inventory (the measured case), and the
// outgoing stream with nothing known (a first move). Best of 3, wall clock; `transport Mbit/s` is the
// lower of the two.
//
// --xbzrle-compare adds ours + dedup with QEMU's XBZRLE off (`--no-xbzrle`) at each fraction, and a table
// of the two: the measurement behind keeping XBZRLE on with dedup (docs/migration.md).
//
// Prints progress on stderr, then the tables and the lines
//   return bytes ratio vs plain at 2%: X / bytes vs floor at 10%: X / transport Mbit/s: X
// on stdout. Exit status 1 if a move failed or a guest check failed; missed targets are results.
// Everything it starts (agents, QEMUs, taps, the namespace, temp dirs) is removed on success, failure and
// Ctrl-C. Needs root (network namespaces), QEMU 7.2+, and the demo guest's build tools.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { parseBenchOptions, usageError as benchUsageError } from './support/options.ts';
import { createWan, type Wan } from './support/wan.ts';
import type { Cleanup } from './support/cleanup.ts';
import { runBenchmark } from './support/cleanup.ts';
import { checkGuest, readWire, wireDelta } from './support/measure.ts';
import { plainMigrate, startPlainVm, stopPlainVm, type PlainSite, type PlainTrip, type PlainVm } from './support/plain-qemu.ts';
import { REPO_ROOT, runCli, SnowbirdSites } from './support/snowbird.ts';
import { startTap, FLOOR_ZSTD_LEVEL, type TapResult } from './support/stream-tap.ts';
import { bestSenderRun, mbitPerSecond, type SenderRun } from './support/dedup-sender.ts';
import { formatRatio, markdownTable, mebibytes, millis, ratio, seconds } from './support/table.ts';
import { GuestChannel } from '../src/migrator/qemu/guest-channel.ts';
import { keyBytes } from '../src/migrator/dedup/hash.ts';
import { ackName, type GuestAck, type GuestCommand, type GuestReport } from '../src/shared/guest-protocol.ts';
import type { MigrationRecord } from '../src/shared/migration.ts';
import type { VmSpec } from '../src/migrator/qemu/common/spec.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const VM = 'dedup';
const PORTS = { nbd: 10829, migration: 4464, tap: 4465, agent: 7463 };
/** `fill` and `fill check` run in the guest's control agent, under TCG, on a shared machine. */
const FILL_TIMEOUT_MS = 300_000;
const TARGETS = { plainRatioAtMost2: 0.05, floorRatio: 1.5, transportMbit: 1000 };

const usageError: (message: string) => never = (message) => benchUsageError('bench:dedup', message);

const OPTIONS = {
  quick: { type: 'boolean', default: false },
  rate: { type: 'string', default: '100' },
  memory: { type: 'string' },
  fill: { type: 'string' },
  fractions: { type: 'string' },
  'mem-workload': { type: 'string', default: '1' },
  'disk-size': { type: 'string', default: '64M' },
  'disk-workload': { type: 'string', default: '256' },
  'xbzrle-compare': { type: 'boolean', default: false },
  json: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

const opts = parseBenchOptions('bench:dedup', OPTIONS);

if (opts.help) {
  process.stdout.write(`usage: node bench/dedup.ts [options]   (as root)
  --quick               validation run: --memory 256 --fill 128 --fractions 2 (~5 min)
  --rate MBIT           WAN bandwidth, tbf on both ends of the veth pair (default 100)
  --memory MIB          guest RAM (default 512)
  --fill MIB            non-zero memory the guest keeps (its fill region; default 320)
  --fractions LIST      % of the fill's pages rewritten while at the core, comma-separated (default 0,2,10,50)
  --mem-workload MIB    memory the guest's checker keeps rewriting (default 1)
  --disk-size SIZE      virtual disk, qemu-img syntax (default 64M)
  --disk-workload N     4 KiB disk blocks the guest's checker keeps rewriting (default 256)
  --xbzrle-compare      also run ours + dedup with QEMU's XBZRLE off (\`--no-xbzrle\`) at each fraction
  --json FILE           also write every raw figure to FILE
`);
  process.exit(0);
}

function positive(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!(n > 0) || !Number.isInteger(n)) usageError(`--${name} must be a positive integer, got "${value}"`);
  return n;
}

function fractionList(text: string): number[] {
  const list = text.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (list.length === 0 || list.some((p) => !Number.isInteger(p) || p < 0 || p > 100)) usageError(`--fractions "${text}": integers from 0 to 100, comma-separated`);
  return [...new Set(list)];
}

const quick = opts.quick;
const config = {
  quick,
  rateMbit: positive('rate', opts.rate),
  memoryMiB: positive('memory', opts.memory ?? (quick ? '256' : '512')),
  fillMiB: positive('fill', opts.fill ?? (quick ? '128' : '320')),
  fractions: fractionList(opts.fractions ?? (quick ? '2' : '0,2,10,50')),
  memWorkloadMiB: positive('mem-workload', opts['mem-workload']),
  diskSize: opts['disk-size'],
  diskWorkloadBlocks: positive('disk-workload', opts['disk-workload']),
  xbzrleCompare: opts['xbzrle-compare'],
};
if (config.fillMiB + config.memWorkloadMiB + 112 > config.memoryMiB) usageError(`--fill ${config.fillMiB} does not leave the guest ~112 MiB of its ${config.memoryMiB} MiB (kernel, initramfs, checkers)`);
/** The fraction whose streams are kept for the throughput measurement. */
const capturePercent = config.fractions.includes(10) ? 10 : (config.fractions.at(-1) as number);

function diskBytes(text: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(text.trim());
  if (!m?.[1]) usageError(`--disk-size "${text}": use a size like 64M or 1G`);
  const unit = { '': 1, K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB }[(m[2] ?? '').toUpperCase()] ?? 1;
  return Number(m[1]) * unit;
}
const diskSizeBytes = diskBytes(config.diskSize);
if (config.diskWorkloadBlocks * 4096 > diskSizeBytes) usageError('--disk-workload does not fit on the disk');

const benchStart = Date.now();
function log(line: string): void {
  const s = Math.round((Date.now() - benchStart) / 1000);
  process.stderr.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}\n`);
}

// ── results ─────────────────────────────────────────────────────────────────────────────────────
interface GuestState {
  ok: boolean;
  summary: string;
}

/** One move as measured. */
interface Leg {
  wallMs: number;
  /** Bytes through the veth pair, both directions. */
  wireBytes: number;
  /** The memory stream's bytes on the link (see the header). */
  memoryBytes: number;
  qemuDowntimeMs?: number;
  detail: string;
  guest?: GuestState;
}

interface Contender {
  /** The guest's answer to `fill change`. */
  changed?: string;
  out?: Leg;
  back?: Leg;
  error?: string;
}

interface FractionResult {
  percent: number;
  plain: Contender & {
    outStream?: { bytes: number; chunks: number };
    backStream?: { bytes: number; chunks: number };
    /** The chunks of the return stream not in the outgoing one, and the floor (their zstd size). */
    floor?: { chunks: number; rawBytes: number; bytes: number };
  };
  ours: Contender;
  dedup: Contender & { raw?: { rawBytes: number; refBytes: number; needs: number } };
  /** With --xbzrle-compare: ours + dedup with QEMU's XBZRLE off. */
  dedupNoXbzrle?: Contender;
}

interface Throughput {
  percent: number;
  /** Host load average (1 min) before the measurement: other work on the machine slows the wall clock. */
  loadAverage?: number;
  /** The return stream, the receiver holding the outgoing stream's chunks. */
  back?: { rawBytes: number; run: SenderRun };
  /** The outgoing stream, the receiver holding nothing. */
  out?: { rawBytes: number; run: SenderRun };
  error?: string;
}

interface Results {
  config: typeof config;
  machine: string;
  fractions: FractionResult[];
  fill?: string;
  /** Ours' first round trip (with dedup), not measured. */
  warmup?: { out?: Leg; back?: Leg };
  throughput?: Throughput;
  errors: string[];
}

// ── the guest ───────────────────────────────────────────────────────────────────────────────────
/** One command on the guest's control channel; its ack (ok or not). */
async function guestRequest(control: string, command: GuestCommand, timeoutMs = FILL_TIMEOUT_MS): Promise<GuestAck> {
  const channel = await GuestChannel.connect(VM, control, { retryUntilMs: 10_000 });
  try {
    const name = ackName(command);
    const ack = channel.waitFor((r: GuestReport): r is GuestAck => r.type === 'ack' && r.cmd === name, { timeoutMs, what: `the ack of "${name}"` });
    channel.send(command);
    return await ack;
  } finally {
    channel.close();
  }
}

async function guestMust(control: string, command: GuestCommand): Promise<string> {
  const ack = await guestRequest(control, command);
  if (!ack.ok) throw new Error(`the guest refused "${ack.cmd}": ${ack.detail}${ack.detail === 'unknown command' ? ' (a guest built before `fill` existed? run `node src/main/cli.ts guest build`)' : ''}`);
  return ack.detail;
}

/**
 * After a return: the memory checker's reports (two heartbeats, no violation, no reboot: the disk
 * checker is stopped, see the header) and the whole fill verified.
 */
async function checkAfterReturn(control: string, uptime: { ms: number }): Promise<GuestState> {
  const problems: string[] = [];
  try {
    const channel = await GuestChannel.connect(VM, control, { retryUntilMs: 10_000 });
    try {
      const deadline = Date.now() + 90_000;
      while (Date.now() < deadline && channel.integrity.memory.heartbeats < 2) await sleep(100);
      const s = channel.integrity;
      if (s.memory.heartbeats < 2) problems.push(`no memory heartbeats within 90 s (${s.memory.heartbeats})`);
      if (s.memory.violations > 0) problems.push(`${s.memory.violations} memory violation(s)${s.memory.lastViolation ? ` (last: ${s.memory.lastViolation})` : ''}`);
      if (s.rebooted || s.uptimeMs < uptime.ms) problems.push(`the guest rebooted (uptime ${s.uptimeMs} ms, was ${uptime.ms} ms)`);
      if (s.errors.length > 0) problems.push(`guest errors: ${s.errors.join('; ')}`);
      uptime.ms = Math.max(uptime.ms, s.uptimeMs);
    } finally {
      channel.close();
    }
  } catch (error) {
    problems.push(`cannot read the guest's reports: ${(error as Error).message}`);
  }
  try {
    const fill = await guestRequest(control, { type: 'fill-check' });
    if (!fill.ok) problems.push(`fill check: ${fill.detail}`);
  } catch (error) {
    problems.push(`fill check: ${(error as Error).message}`);
  }
  return { ok: problems.length === 0, summary: problems.length === 0 ? 'ok' : problems.join('; ') };
}

// ── plain QEMU, with the taps ───────────────────────────────────────────────────────────────────
function plainLeg(t: PlainTrip, stream: TapResult, guest?: GuestState): Leg {
  return {
    wallMs: t.wallMs,
    wireBytes: t.wire.total,
    memoryBytes: stream.bytes,
    ...(t.qemuDowntimeMs === undefined ? {} : { qemuDowntimeMs: t.qemuDowntimeMs }),
    detail: `mirror ${mebibytes(t.diskJobBytes)} ready after ${seconds(t.diskSyncMs)}, memory stream ${mebibytes(stream.bytes)} (${stream.chunks} chunks) in ${t.passes} passes / ${seconds(t.memoryMs)}, downtime ${millis(t.qemuDowntimeMs)}`,
    ...(guest ? { guest } : {}),
  };
}

interface Captured {
  outFile: string;
  backFile: string;
  outKeys: string[];
}

async function runBaseline(root: string, wan: Wan, spec: VmSpec, cleanup: Cleanup, results: Results): Promise<Captured | undefined> {
  const edge: PlainSite = { name: 'edge', address: wan.edgeAddress, execPrefix: [] };
  const core: PlainSite = { name: 'core', address: wan.coreAddress, execPrefix: wan.execPrefix };
  const dir = (name: string): string => join(root, 'baseline', name);
  await mkdir(dir('e0'), { recursive: true });
  const disk = join(dir('e0'), 'disk.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(diskSizeBytes)]);
  let vm: PlainVm = await startPlainVm({ ...spec, disk }, dir('e0'), edge, { incoming: false, cleanup });
  let captured: Captured | undefined;
  try {
    log('plain QEMU: booting the guest at the edge');
    const boot = await checkGuest(VM, vm.paths.control, 0);
    if (!boot.ok) throw new Error(`the guest is not healthy after boot: ${boot.summary}`);
    const uptime = { ms: boot.uptimeMs };
    await guestMust(vm.paths.control, { type: 'disk-stop' });
    log(`plain QEMU: disk checker stopped; fill ${config.fillMiB}: ${await guestMust(vm.paths.control, { type: 'fill', mib: config.fillMiB })}`);
    const common = { diskSizeBytes, hostInterface: wan.hostInterface, ports: { nbd: PORTS.nbd, migration: PORTS.migration }, memoryTimeoutMs: 30 * 60_000, cleanup, log };
    const viaTap = `tcp:${wan.edgeAddress}:${PORTS.tap}`;
    for (const [i, r] of results.fractions.entries()) {
      if (cleanup.interrupted) return captured;
      const p = r.plain;
      const keep = r.percent === capturePercent;
      const files = { out: join(root, 'stream-out.bin'), back: join(root, 'stream-back.bin') };
      try {
        log(`plain QEMU ${r.percent} %: edge→core`);
        const tapOut = await startTap({ listen: { host: wan.edgeAddress, port: PORTS.tap }, target: { host: wan.coreAddress, port: PORTS.migration }, ...(keep ? { saveTo: files.out } : {}), cleanup });
        const out = await plainMigrate(vm, core, { ...common, dir: dir(`c${i}`), label: `plain ${r.percent} % edge→core`, migrateUri: viaTap });
        vm = out.vm;
        const outStream = await tapOut.result(60_000);
        await tapOut.close();
        if (!out.converged) throw new Error('edge→core did not converge');
        p.out = plainLeg(out, outStream);
        p.outStream = { bytes: outStream.bytes, chunks: outStream.chunks };
        p.changed = await guestMust(vm.paths.control, { type: 'fill-change', percent: r.percent });
        log(`plain QEMU ${r.percent} %: at the core, fill change: ${p.changed}; core→edge`);
        const tapBack = await startTap({ listen: { host: wan.edgeAddress, port: PORTS.tap }, target: { host: wan.edgeAddress, port: PORTS.migration }, known: outStream.keys, ...(keep ? { saveTo: files.back } : {}), cleanup });
        const back = await plainMigrate(vm, edge, { ...common, dir: dir(`e${i + 1}`), label: `plain ${r.percent} % core→edge`, migrateUri: viaTap });
        vm = back.vm;
        const backStream = await tapBack.result(60_000);
        await tapBack.close();
        if (!back.converged) throw new Error('core→edge did not converge');
        const guest = await checkAfterReturn(vm.paths.control, uptime);
        p.back = plainLeg(back, backStream, guest);
        p.backStream = { bytes: backStream.bytes, chunks: backStream.chunks };
        const changed = backStream.changed ?? { chunks: 0, bytes: 0, zstdBytes: 0 };
        p.floor = { chunks: changed.chunks, rawBytes: changed.bytes, bytes: changed.zstdBytes };
        if (keep) captured = { outFile: files.out, backFile: files.back, outKeys: [...outStream.keys] };
        log(`plain QEMU ${r.percent} %: return ${seconds(back.wallMs)}, ${mebibytes(back.wire.total)} on the wire; changed chunks ${changed.chunks} (${mebibytes(changed.bytes)}), floor ${mebibytes(changed.zstdBytes)}; guest ${guest.summary}`);
      } catch (error) {
        p.error = (error as Error).message;
        throw error;
      }
    }
  } finally {
    await stopPlainVm(vm);
  }
  return captured;
}

// ── ours ────────────────────────────────────────────────────────────────────────────────────────
/** `auto`: the default, which measures the link and the transport before each move. */
async function move(sites: SnowbirdSites, wan: Wan, to: 'core' | 'edge', dedup: 'on' | 'off' | 'auto', extra: string[] = []): Promise<{ leg: Leg; record: MigrationRecord }> {
  const before = await readWire(wan.hostInterface);
  const r = await runCli(['--data', sites.edgeDir, 'migrate', VM, '--to', to, '--strategy', 'precopy', '--json', ...(dedup === 'auto' ? [] : ['--dedup', dedup]), ...extra]);
  const wire = wireDelta(before, await readWire(wan.hostInterface));
  if (r.code !== 0 && r.code !== 2) throw new Error(`snowbird migrate ${VM} --to ${to} failed (exit ${r.code}): ${r.stderr.trim()}\n${sites.logTail()}`);
  const record = JSON.parse(r.stdout) as MigrationRecord;
  if (record.outcome !== 'committed') throw new Error(`snowbird migrate --to ${to} --dedup ${dedup}: ${record.failedPhase ?? '?'}: ${record.error ?? '?'}\n${sites.logTail()}`);
  if (dedup === 'on' && !record.dedup?.used) throw new Error(`snowbird migrate --dedup did not use dedup: ${record.dedup?.reason ?? 'no dedup report'}`);
  const streams = Object.entries(record.streamBytes).map(([k, v]) => `${k} ${mebibytes(v)}`).join(' + ');
  const phases = ['plan', 'prepare', 'disk', 'memory', 'switchover', 'commit'].map((ph) => (((record.phaseMs as Record<string, number | undefined>)[ph] ?? 0) / 1000).toFixed(1)).join('/');
  const d = record.dedup;
  const leg: Leg = {
    wallMs: r.endedAt - r.startedAt,
    wireBytes: wire.total,
    memoryBytes: record.streamBytes['migration'] ?? 0,
    ...(record.qemuDowntimeMs === undefined ? {} : { qemuDowntimeMs: record.qemuDowntimeMs }),
    detail: `link streams ${streams}${d?.used ? `; QEMU wrote ${mebibytes(d.rawBytes)}, ${mebibytes(d.refBytes)} as refs, ${d.needs ?? 0} needs` : ''}; XBZRLE ${mebibytes(record.qemu?.['xbzrle-cache'] === undefined ? undefined : Number((record.qemu['xbzrle-cache'] as { bytes?: number }).bytes ?? 0))}; phases plan/prepare/disk/memory/switchover/commit ${phases} s; downtime ${millis(record.qemuDowntimeMs)}`,
  };
  return { leg, record };
}

async function runOurs(sites: SnowbirdSites, wan: Wan, results: Results, cleanup: Cleanup): Promise<void> {
  log('ours: starting the core agent (in the namespace) and the edge agent, pairing them');
  await sites.start({ autoPlacement: false });
  log('ours: booting the guest at the edge');
  await sites.startVm(VM);
  const boot = await checkGuest(VM, sites.controlSocket(VM, 'edge'), 0);
  if (!boot.ok) throw new Error(`the guest is not healthy after boot: ${boot.summary}`);
  const uptime = { ms: boot.uptimeMs };
  await guestMust(sites.controlSocket(VM, 'edge'), { type: 'disk-stop' });
  results.fill = await guestMust(sites.controlSocket(VM, 'edge'), { type: 'fill', mib: config.fillMiB });
  log(`ours: disk checker stopped; fill ${config.fillMiB}: ${results.fill}`);
  // Not measured: the first moves to each site also carry one-time transfers (the boot images).
  // With the default (auto): on this link it must choose dedup, or the default does not win where it should.
  log('ours: a first round trip with the default dedup choice (auto; not measured)');
  const out = await move(sites, wan, 'core', 'auto');
  const back = await move(sites, wan, 'edge', 'auto');
  for (const leg of [out, back]) log(`ours: default dedup choice ${leg.record.from}→${leg.record.to}: ${leg.record.dedup?.reason ?? '?'}`);
  if (!out.record.dedup?.used || !back.record.dedup?.used) throw new Error(`the default (auto) did not choose dedup on the ${config.rateMbit} Mbit/s link: ${out.record.dedup?.reason} / ${back.record.dedup?.reason}`);
  results.warmup = { out: out.leg, back: back.leg };
  log(`ours: first round trip: ${mebibytes(out.leg.wireBytes)} out, ${mebibytes(back.leg.wireBytes)} back on the wire`);
  for (const r of results.fractions) {
    const contenders: [string, 'on' | 'off', string[], Contender][] = [
      ['ours + dedup', 'on', [], r.dedup],
      ['ours', 'off', [], r.ours],
      ...(config.xbzrleCompare ? [['ours + dedup, no XBZRLE', 'on', ['--no-xbzrle'], (r.dedupNoXbzrle = {})] as [string, 'on', string[], Contender]] : []),
    ];
    for (const [name, dedup, extra, c] of contenders) {
      if (cleanup.interrupted) return;
      try {
        log(`${name} ${r.percent} %: edge→core`);
        c.out = (await move(sites, wan, 'core', dedup, extra)).leg;
        c.changed = await guestMust(sites.controlSocket(VM, 'core'), { type: 'fill-change', percent: r.percent });
        log(`${name} ${r.percent} %: at the core, fill change: ${c.changed}; core→edge`);
        const back = await move(sites, wan, 'edge', dedup, extra);
        back.leg.guest = await checkAfterReturn(sites.controlSocket(VM, 'edge'), uptime);
        c.back = back.leg;
        const d = back.record.dedup;
        if (c === r.dedup && d) r.dedup.raw = { rawBytes: d.rawBytes, refBytes: d.refBytes ?? 0, needs: d.needs ?? 0 };
        log(`${name} ${r.percent} %: return ${seconds(c.back.wallMs)}, ${mebibytes(c.back.wireBytes)} on the wire (memory stream ${mebibytes(c.back.memoryBytes)}); guest ${c.back.guest?.summary}`);
      } catch (error) {
        c.error = (error as Error).message;
        throw error;
      }
    }
  }
}

// ── the sender's throughput on the captured streams ────────────────────────────────────────────
async function measureThroughput(streams: { out: Buffer; back: Buffer; outKeys: string[] }, t: Throughput): Promise<void> {
  const known = streams.outKeys.map(keyBytes);
  t.loadAverage = loadavg()[0] ?? 0;
  log(`throughput: the return stream at ${t.percent} % (${mebibytes(streams.back.length)}), the receiver holding the outgoing stream's ${known.length} chunks; best of 3`);
  t.back = { rawBytes: streams.back.length, run: await bestSenderRun(streams.back, known) };
  log(`throughput: the outgoing stream (${mebibytes(streams.out.length)}), the receiver holding nothing; best of 3`);
  t.out = { rawBytes: streams.out.length, run: await bestSenderRun(streams.out, []) };
}

// ── the report ──────────────────────────────────────────────────────────────────────────────────
const pct = (p: number): string => `${p} %`;

function guestCell(c: Contender): string {
  if (c.error) return 'FAILED';
  if (c.back?.guest === undefined) return '—';
  return c.back.guest.ok ? 'ok' : 'VIOLATED';
}

function floorRatio(r: FractionResult): number | undefined {
  return ratio(r.dedup.back?.memoryBytes, r.plain.floor?.bytes);
}

function report(results: Results): { text: string; ok: boolean } {
  const header = ['changed', 'plain QEMU', 'time', 'ours', 'time', 'ours + dedup', 'time', 'floor', 'dedup × plain', 'dedup × floor (wire)', 'guest plain / ours / dedup'];
  const rows = results.fractions.map((r) => [
    pct(r.percent),
    mebibytes(r.plain.back?.wireBytes), seconds(r.plain.back?.wallMs),
    mebibytes(r.ours.back?.wireBytes), seconds(r.ours.back?.wallMs),
    mebibytes(r.dedup.back?.wireBytes), seconds(r.dedup.back?.wallMs),
    mebibytes(r.plain.floor?.bytes),
    formatRatio(ratio(r.dedup.back?.wireBytes, r.plain.back?.wireBytes)),
    `${formatRatio(floorRatio(r))} (${formatRatio(ratio(r.dedup.back?.wireBytes, r.plain.floor?.bytes))})`,
    `${guestCell(r.plain)} / ${guestCell(r.ours)} / ${guestCell(r.dedup)}`,
  ]);
  const lines = [markdownTable(header, rows), ''];
  lines.push('changed: share of the fill\'s pages rewritten while the VM was at the core. The return trip (core→edge) of each contender:');
  lines.push(`  bytes through the veth pair (both directions, all overhead) and the whole move's time. floor: zstd -${FLOOR_ZSTD_LEVEL} of the return stream's`);
  lines.push('  chunks that were not in the outgoing stream (plain QEMU\'s streams, cut by the dedup chunker). dedup × plain: wire / wire.');
  lines.push('  dedup × floor: ours + dedup\'s memory stream on the link / floor (in brackets: its whole wire / floor).');
  lines.push('');
  if (config.xbzrleCompare) {
    lines.push(markdownTable(['changed', 'ours + dedup: memory on the link', 'wire', 'time', 'the same, XBZRLE off: memory on the link', 'wire', 'time'], results.fractions.map((r) => [
      pct(r.percent),
      mebibytes(r.dedup.back?.memoryBytes), mebibytes(r.dedup.back?.wireBytes), seconds(r.dedup.back?.wallMs),
      mebibytes(r.dedupNoXbzrle?.back?.memoryBytes), mebibytes(r.dedupNoXbzrle?.back?.wireBytes), seconds(r.dedupNoXbzrle?.back?.wallMs),
    ])));
    lines.push('QEMU\'s XBZRLE sends the dirty pages of later pre-copy passes as deltas against the page sent before; off, they go whole (return trips).');
    lines.push('');
  }
  const t = results.throughput;
  if (t?.back && t.out) {
    const cell = (x: { rawBytes: number; run: SenderRun }): string[] => [
      mebibytes(x.rawBytes),
      mbitPerSecond(x.rawBytes, x.run.wallMs).toFixed(0),
      mbitPerSecond(x.rawBytes, x.run.cpuMs).toFixed(0),
      `${x.run.stats.refChunks} / ${x.run.stats.literalChunks}`,
      `${((x.run.wireBytes / x.rawBytes) * 100).toFixed(2)} %`,
    ];
    lines.push(markdownTable(['DedupSender, one core, a captured plain QEMU stream', 'raw', 'Mbit/s (wall)', 'Mbit/s (cpu)', 'refs / literals', 'wire / raw'], [
      [`return at ${pct(t.percent)}, receiver holds the outgoing stream`, ...cell(t.back)],
      ['outgoing, receiver holds nothing (a first move)', ...cell(t.out)],
    ]));
    lines.push(`Best of 3 by wall clock; Mbit/s of QEMU's raw stream taken in (10^6 bit/s); cpu: the same over process CPU time. Host load average before: ${t.loadAverage?.toFixed(2) ?? '?'}.`);
    lines.push('');
  } else if (t?.error) {
    lines.push(`throughput: not measured: ${t.error}`, '');
  }

  lines.push('Per return trip:');
  for (const r of results.fractions) {
    const p = r.plain;
    lines.push(`- ${pct(r.percent)}: guest: ${p.changed ?? r.dedup.changed ?? '—'}`);
    if (p.back) lines.push(`  - plain QEMU: ${p.back.detail}${p.floor ? `; changed chunks ${p.floor.chunks} of ${p.backStream?.chunks ?? '?'} (${mebibytes(p.floor.rawBytes)} raw of ${mebibytes(p.backStream?.bytes)}) → floor ${mebibytes(p.floor.bytes)}` : ''}`);
    if (r.ours.back) lines.push(`  - ours: ${r.ours.back.detail}`);
    if (r.dedup.back) lines.push(`  - ours + dedup: ${r.dedup.back.detail}${r.dedup.raw ? ` (literals ${mebibytes(r.dedup.raw.rawBytes - r.dedup.raw.refBytes)} raw)` : ''}`);
    if (r.dedupNoXbzrle?.back) lines.push(`  - ours + dedup, no XBZRLE: ${r.dedupNoXbzrle.back.detail}`);
    for (const [name, c] of [['plain QEMU', p], ['ours', r.ours], ['ours + dedup', r.dedup], ['ours + dedup, no XBZRLE', r.dedupNoXbzrle ?? {}]] as const) {
      if (c.error) lines.push(`  - ${name} FAILED: ${c.error.split('\n')[0]}`);
      if (c.back?.guest && !c.back.guest.ok) lines.push(`  - ${name} GUEST: ${c.back.guest.summary}`);
    }
  }
  for (const e of results.errors) lines.push(`- stopped: ${e.split('\n')[0]}`);
  lines.push('');

  // Targets (results, not failures).
  const at = (p: number): FractionResult | undefined => results.fractions.find((r) => r.percent === p);
  const small = results.fractions.filter((r) => r.percent <= 2);
  const plainRatios = small.map((r) => ({ p: r.percent, v: ratio(r.dedup.back?.wireBytes, r.plain.back?.wireBytes) }));
  const floorRatios = results.fractions.map((r) => ({ p: r.percent, v: floorRatio(r) }));
  const verdict = (xs: { v: number | undefined }[], ok: (v: number) => boolean): string =>
    xs.length === 0 || xs.some((x) => x.v === undefined) ? 'not measured' : xs.every((x) => ok(x.v as number)) ? 'met' : 'missed';
  const list = (xs: { p: number; v: number | undefined }[]): string => xs.map((x) => `${pct(x.p)} ${formatRatio(x.v)}`).join(', ');
  const transport = t?.back && t.out ? Math.min(mbitPerSecond(t.back.rawBytes, t.back.run.wallMs), mbitPerSecond(t.out.rawBytes, t.out.run.wallMs)) : undefined;
  lines.push('Targets:');
  lines.push(`- return bytes ≤ ${TARGETS.plainRatioAtMost2}× plain QEMU with ≤ 2 % changed: ${list(plainRatios) || '—'}: ${verdict(plainRatios, (v) => v <= TARGETS.plainRatioAtMost2)}`);
  lines.push(`- bytes ≤ ${TARGETS.floorRatio}× the floor at every fraction: ${list(floorRatios)}: ${verdict(floorRatios, (v) => v <= TARGETS.floorRatio)}`);
  lines.push(`- transport ≥ ${TARGETS.transportMbit} Mbit/s per stream: ${transport === undefined ? '—' : transport.toFixed(0)}: ${transport === undefined ? 'not measured' : transport >= TARGETS.transportMbit ? 'met' : 'missed'}`);
  lines.push('');
  lines.push(`return bytes ratio vs plain at 2%: ${formatRatio(ratio(at(2)?.dedup.back?.wireBytes, at(2)?.plain.back?.wireBytes))}`);
  lines.push(`bytes vs floor at 10%: ${formatRatio(at(10) ? floorRatio(at(10) as FractionResult) : undefined)}`);
  lines.push(`transport Mbit/s: ${transport === undefined ? '—' : transport.toFixed(0)}`);

  const contenders = results.fractions.flatMap((r) => [r.plain, r.ours, r.dedup, ...(r.dedupNoXbzrle ? [r.dedupNoXbzrle] : [])]);
  const ok = results.errors.length === 0 && !t?.error && contenders.every((c) => !c.error && c.back !== undefined && c.back.guest?.ok === true);
  return { text: lines.join('\n'), ok };
}

async function main(cleanup: Cleanup): Promise<boolean> {
  if (process.getuid?.() !== 0) throw new Error('run as root: the benchmark creates a network namespace and a veth pair');
  const root = await mkdtemp('/tmp/sbd-');
  cleanup.add(`remove ${root}`, () => rm(root, { recursive: true, force: true }));
  const qemu = (await run('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0] ?? '?';
  const results: Results = {
    config,
    machine: `${(await run('nproc')).stdout.trim()} cores, TCG, ${qemu}, node ${process.version}`,
    fractions: config.fractions.map((percent) => ({ percent, plain: {}, ours: {}, dedup: {} })),
    errors: [],
  };
  log(`machine: ${results.machine}; WAN ${config.rateMbit} Mbit/s; guest ${config.memoryMiB} MiB RAM with a ${config.fillMiB} MiB fill, ${config.diskSize} disk, sb.mem=${config.memWorkloadMiB} sb.disk=${config.diskWorkloadBlocks}; fractions ${config.fractions.map(pct).join(', ')}${quick ? ' (--quick)' : ''}`);

  log('building the demo guest (cached)');
  const build = await runCli(['guest', 'build']);
  if (build.code !== 0) throw new Error(`snowbird guest build failed: ${build.stderr}`);

  const wan = await createWan({ rateMbit: config.rateMbit });
  cleanup.add(`remove the network namespace ${wan.namespace}`, () => wan.dispose());
  log(`WAN: namespace ${wan.namespace}, edge ${wan.edgeAddress} ⇄ core ${wan.coreAddress}, tbf ${config.rateMbit} Mbit/s`);

  const sites = new SnowbirdSites(join(root, 'ours'), wan, PORTS.agent, cleanup);
  await sites.createVm(VM, { memoryMiB: config.memoryMiB, diskSize: config.diskSize, memWorkloadMiB: config.memWorkloadMiB, diskWorkloadBlocks: config.diskWorkloadBlocks, cache: join(REPO_ROOT, '.cache') });
  const spec = await sites.edgeLibrary.load(VM);

  let captured: Captured | undefined;
  try {
    captured = await runBaseline(root, wan, spec, cleanup, results);
  } catch (error) {
    results.errors.push(`plain QEMU: ${(error as Error).message}`);
    log(`plain QEMU failed: ${(error as Error).stack ?? String(error)}`);
  }
  if (!cleanup.interrupted) {
    try {
      await runOurs(sites, wan, results, cleanup);
    } catch (error) {
      results.errors.push(`ours: ${(error as Error).message}`);
      log(`ours failed: ${(error as Error).stack ?? String(error)}`);
    }
  }

  if (!cleanup.interrupted) {
    results.throughput = { percent: capturePercent };
    try {
      if (captured === undefined) throw new Error('no stream was captured (the plain QEMU run did not get that far)');
      const streams = { out: await readFile(captured.outFile), back: await readFile(captured.backFile), outKeys: captured.outKeys };
      log('stopping the agents, QEMUs and the namespace before measuring the sender on one core');
      await cleanup.runAll();
      await measureThroughput(streams, results.throughput);
    } catch (error) {
      results.throughput.error = (error as Error).message;
      log(`throughput failed: ${(error as Error).stack ?? String(error)}`);
    }
  }

  const { text, ok } = report(results);
  if (opts.json) await writeFile(opts.json, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`\n## Return trip with a controlled share of memory changed: plain QEMU vs ours vs ours + dedup (${config.rateMbit} Mbit/s, ${config.memoryMiB} MiB guest, ${config.fillMiB} MiB fill${quick ? ', --quick' : ''}; ${results.machine})\n\n${text}\n`);
  return ok;
}

await runBenchmark(log, main);
