// The baseline: what `virsh migrate --live --copy-storage-all` makes QEMU do, with QEMU's defaults and
// no agents. The destination QEMU starts with the same argv (`-incoming defer`) on an empty qcow2 of
// the disk's size and exports it over NBD on TCP; the source mirrors the whole disk into it
// (`blockdev-mirror sync=full`, background copy), waits until the mirror is READY, then runs a plain
// pre-copy `migrate tcp:` with default parameters (max-bandwidth 32 MiB/s, downtime-limit 300 ms, no
// XBZRLE, no post-copy). As libvirt does, the source has `pause-before-switchover` (the mirror is
// completed while the guest is stopped, before the device state goes) and the destination
// `late-block-activate`; the destination is resumed (`cont`) once everything arrived.
import { spawn, execFile } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient } from '../../src/migrator/qmp/client.ts';
import type { QmpEvent } from '../../src/migrator/qmp/common/messages.ts';
import type { MigrationInfo } from '../../src/migrator/qmp/common/types.ts';
import { buildQemuArgv, DISK_NODE, vmPaths, type VmPaths, type VmSpec } from '../../src/migrator/qemu/common/spec.ts';
import { QEMU_BINARY } from '../../src/migrator/qemu/vm.ts';
import { readPidFile, waitForExit } from '../../src/migrator/qemu/process-info.ts';
import { killPid, type Cleanup } from './cleanup.ts';
import { readWire, wireDelta, type WireCounters } from './measure.ts';

const run = promisify(execFile);

export interface PlainSite {
  name: 'edge' | 'core';
  /** The address QEMU listens on at this site (its end of the veth pair). */
  address: string;
  /** argv prefix that runs a command at this site ([] on the host, `ip netns exec NS` in the namespace). */
  execPrefix: string[];
}

export interface PlainVm {
  site: PlainSite;
  spec: VmSpec;
  paths: VmPaths;
  pid: number;
  qmp: QmpClient;
  /** Removes this QEMU's kill-on-cleanup step. */
  forget: () => void;
}

/** Starts QEMU (daemonized, like the agents do) at `site` and connects to its QMP socket. */
export async function startPlainVm(spec: VmSpec, dir: string, site: PlainSite, options: { incoming: boolean; cleanup: Cleanup }): Promise<PlainVm> {
  const paths = vmPaths(dir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const argv = buildQemuArgv(spec, paths, { accel: 'tcg', incoming: options.incoming });
  const [command, ...args] = [...site.execPrefix, QEMU_BINARY, ...argv] as [string, ...string[]];
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    child.on('error', reject);
    child.on('close', (exitCode) => resolve({ code: exitCode, stderr: err }));
  });
  if (code !== 0) throw new Error(`QEMU at the ${site.name} exited with code ${code}: ${stderr.trim()} (see ${paths.qemuLog})`);
  const pid = await readPidFile(paths.pidFile);
  if (pid === undefined) throw new Error(`QEMU at the ${site.name} wrote no pid file (${paths.pidFile})`);
  const forget = options.cleanup.add(`kill baseline QEMU ${pid} (${site.name})`, () => killPid(pid));
  const qmp = await QmpClient.connect(paths.qmp, { retryUntilMs: 10_000 });
  return { site, spec, paths, pid, qmp, forget };
}

export async function stopPlainVm(vm: PlainVm): Promise<void> {
  await vm.qmp.execute('quit').catch(() => undefined);
  await vm.qmp.close();
  if (!(await waitForExit(vm.pid, 10_000))) await killPid(vm.pid);
  vm.forget();
}

export interface PlainTripOptions {
  /** Folder for the destination's disk, sockets and logs. */
  dir: string;
  diskSizeBytes: number;
  hostInterface: string;
  ports: { nbd: number; migration: number };
  /** Give up (migrate_cancel; the source keeps running) if memory has not converged this long after `migrate`. */
  memoryTimeoutMs: number;
  cleanup: Cleanup;
  log: (line: string) => void;
  label: string;
  /**
   * Where the source sends its migration stream, when not straight to the destination's incoming
   * address (`tcp:TO:PORT`): e.g. a tap that forwards it there (bench/support/stream-tap.ts).
   */
  migrateUri?: string;
}

export interface PlainTrip {
  converged: boolean;
  /** From the start (destination disk and QEMU) to the source QEMU gone. */
  wallMs: number;
  /** From the start until the guest runs at the destination (its RESUME event). */
  timeToInteractiveMs: number | undefined;
  diskSyncMs: number;
  memoryMs: number;
  /** query-migrate `downtime` at the source. */
  qemuDowntimeMs: number | undefined;
  /** Source STOP event to destination RESUME event (QMP timestamps, same host clock). */
  observedDowntimeMs: number | undefined;
  wire: WireCounters & { total: number };
  /** Mirror job length when it completed: what the full copy moved (zeroes written cheaply excluded, data included). */
  diskJobBytes: number;
  /** query-migrate ram.transferred at the source. */
  memoryBytes: number;
  passes: number;
  parameters: { maxBandwidth: number | undefined; downtimeLimitMs: number | undefined };
  /** The source's last query-migrate. */
  final: MigrationInfo;
  /** Where the VM runs afterwards (the destination if converged, else the source). */
  vm: PlainVm;
}

const MIRROR_JOB = 'bl-mirror';
const NBD_NODE = 'bl-nbd';
const EXPORT_ID = 'bl-export';
const EXPORT_NAME = 'disk0';

function eventMs(event: QmpEvent): number {
  return event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000;
}

async function waitUntil<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, pollMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}`);
    await sleep(pollMs);
  }
}

const MiB = 1024 * 1024;

/** One plain-QEMU live migration with a full disk copy from `source` to `to`. */
export async function plainMigrate(source: PlainVm, to: PlainSite, o: PlainTripOptions): Promise<PlainTrip> {
  const t0 = Date.now();
  const wire0 = await readWire(o.hostInterface);
  const src = source.qmp;

  // ── destination: empty disk of the same size, same argv, NBD export, incoming on TCP ──
  await rm(o.dir, { recursive: true, force: true });
  await mkdir(o.dir, { recursive: true, mode: 0o700 });
  const disk = `${o.dir}/disk.qcow2`;
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(o.diskSizeBytes)]);
  const dest = await startPlainVm({ ...source.spec, disk }, o.dir, to, { incoming: true, cleanup: o.cleanup });
  const dst = dest.qmp;
  await dst.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'late-block-activate', state: true }] });
  await dst.execute('nbd-server-start', { addr: { type: 'inet', data: { host: to.address, port: String(o.ports.nbd) } } });
  await dst.execute('block-export-add', { type: 'nbd', id: EXPORT_ID, 'node-name': DISK_NODE, writable: true, name: EXPORT_NAME });
  await dst.execute('migrate-incoming', { uri: `tcp:${to.address}:${o.ports.migration}` });

  // ── source: full mirror to the NBD export, then pre-copy with QEMU's default parameters ──
  await src.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'pause-before-switchover', state: true }] });
  const params = await src.execute('query-migrate-parameters');
  await src.execute('blockdev-add', { driver: 'nbd', 'node-name': NBD_NODE, server: { type: 'inet', host: to.address, port: String(o.ports.nbd) }, export: EXPORT_NAME });
  await src.execute('blockdev-mirror', { 'job-id': MIRROR_JOB, device: DISK_NODE, target: NBD_NODE, sync: 'full' });
  let lastLog = 0;
  const job = await waitUntil('the disk mirror to be ready', 60 * 60_000, async () => {
    const j = (await src.execute('query-block-jobs')).find((b) => b.device === MIRROR_JOB);
    if (j === undefined) throw new Error('the mirror job disappeared before it was ready');
    if (j.error) throw new Error(`the mirror failed: ${j.error}`);
    if (Date.now() - lastLog > 10_000) {
      lastLog = Date.now();
      o.log(`  ${o.label}: disk ${(j.offset / MiB).toFixed(0)}/${(j.len / MiB).toFixed(0)} MiB (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    }
    return j.ready ? j : undefined;
  });
  const diskSyncMs = Date.now() - t0;
  o.log(`  ${o.label}: disk mirror ready after ${(diskSyncMs / 1000).toFixed(1)} s (${(job.len / MiB).toFixed(0)} MiB); starting migrate`);

  let stopAt: number | undefined;
  const onEvent = (event: QmpEvent): void => {
    if (event.event === 'STOP' && stopAt === undefined) stopAt = eventMs(event);
  };
  src.on('event', onEvent);
  const tMigrate = Date.now();
  await src.execute('migrate', { uri: o.migrateUri ?? `tcp:${to.address}:${o.ports.migration}` });
  let info: MigrationInfo = {};
  lastLog = Date.now();
  const reached = await waitUntil('the migration to converge', o.memoryTimeoutMs + 60_000, async () => {
    info = await src.execute('query-migrate');
    if (info.status === 'pre-switchover') return 'pre-switchover';
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
    if (Date.now() - lastLog > 10_000) {
      lastLog = Date.now();
      o.log(`  ${o.label}: memory pass ${info.ram?.['dirty-sync-count'] ?? '?'}, ${((info.ram?.transferred ?? 0) / MiB).toFixed(0)} MiB sent, ${((info.ram?.remaining ?? 0) / MiB).toFixed(1)} MiB dirty, expected downtime ${info['expected-downtime'] ?? '?'} ms`);
    }
    if (Date.now() - tMigrate > o.memoryTimeoutMs) return 'timeout';
    return undefined;
  });

  if (reached === 'timeout') {
    // Did not converge: cancel as a user would; QEMU resumes the source by itself.
    o.log(`  ${o.label}: not converged after ${Math.round(o.memoryTimeoutMs / 1000)} s: migrate_cancel`);
    const passes = info.ram?.['dirty-sync-count'] ?? 0;
    const memoryBytes = info.ram?.transferred ?? 0;
    await src.execute('migrate_cancel');
    await waitUntil('the migration to stop', 30_000, async () => {
      const s = (await src.execute('query-migrate')).status;
      return s === 'cancelled' || s === 'failed' || s === 'completed' ? s : undefined;
    });
    await src.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(() => undefined);
    await waitUntil('the mirror to stop', 30_000, async () => ((await src.execute('query-block-jobs')).some((j) => j.device === MIRROR_JOB) ? undefined : true));
    await src.execute('blockdev-del', { 'node-name': NBD_NODE }).catch(() => undefined);
    if ((await src.execute('query-status')).status !== 'running') await src.execute('cont');
    src.off('event', onEvent);
    await dst.close();
    await killPid(dest.pid);
    dest.forget();
    const wire = wireDelta(wire0, await readWire(o.hostInterface));
    return {
      converged: false,
      wallMs: Date.now() - t0,
      timeToInteractiveMs: undefined,
      diskSyncMs,
      memoryMs: Date.now() - tMigrate,
      qemuDowntimeMs: undefined,
      observedDowntimeMs: undefined,
      wire,
      diskJobBytes: job.len,
      memoryBytes,
      passes,
      parameters: { maxBandwidth: params['max-bandwidth'], downtimeLimitMs: params['downtime-limit'] },
      final: info,
      vm: source,
    };
  }

  // ── switchover: the guest is stopped; complete the mirror, let the device state go, resume there ──
  const finalJob = (await src.execute('query-block-jobs')).find((b) => b.device === MIRROR_JOB);
  await src.execute('block-job-cancel', { device: MIRROR_JOB });
  await waitUntil('the mirror to complete', 120_000, async () => ((await src.execute('query-block-jobs')).some((j) => j.device === MIRROR_JOB) ? undefined : true), 20);
  await src.execute('blockdev-del', { 'node-name': NBD_NODE });
  await src.executeRaw('migrate-continue', { state: 'pre-switchover' });
  info = await waitUntil('the migration to complete', 300_000, async () => {
    const i = await src.execute('query-migrate');
    if (i.status === 'failed' || i.status === 'cancelled') throw new Error(`migration ${i.status}: ${i['error-desc'] ?? ''}`);
    return i.status === 'completed' ? i : undefined;
  }, 20);
  const memoryMs = Date.now() - tMigrate;
  src.off('event', onEvent);
  // QEMU 7.2 says `completed` a moment before it fills in total-time and downtime (0 until then).
  info = await waitUntil('QEMU\'s final migration figures', 10_000, async () => {
    const i = await src.execute('query-migrate');
    return (i['total-time'] ?? 0) > 0 ? i : undefined;
  }, 20).catch(() => info);
  await waitUntil('the destination to receive everything', 120_000, async () => {
    const s = (await dst.execute('query-migrate')).status;
    if (s === 'failed') throw new Error('the destination reports the incoming migration failed');
    return s === 'completed' ? true : undefined;
  }, 20);
  await dst.execute('block-export-del', { id: EXPORT_ID }).catch(() => undefined);
  await dst.execute('nbd-server-stop').catch(() => undefined);
  const resumed = dst.waitForEvent('RESUME', { timeoutMs: 30_000 });
  await dst.execute('cont');
  const resumeEvent = await resumed;
  const timeToInteractiveMs = Date.now() - t0;
  await stopPlainVm(source);
  const wire = wireDelta(wire0, await readWire(o.hostInterface));
  return {
    converged: true,
    wallMs: Date.now() - t0,
    timeToInteractiveMs,
    diskSyncMs,
    memoryMs,
    qemuDowntimeMs: info.downtime,
    observedDowntimeMs: stopAt === undefined ? undefined : eventMs(resumeEvent) - stopAt,
    wire,
    diskJobBytes: finalJob?.len ?? job.len,
    memoryBytes: info.ram?.transferred ?? 0,
    passes: info.ram?.['dirty-sync-count'] ?? 0,
    parameters: { maxBandwidth: params['max-bandwidth'], downtimeLimitMs: params['downtime-limit'] },
    final: info,
    vm: dest,
  };
}
