// Live migration with real QEMU and the demo guest, between two site data directories on this
// machine. The DestinationSite is implemented in-process by the destination functions; every
// socket it answers is put behind a unix-socket bridge in this file (as the agents' TLS link will
// be): the bridges count the bytes per stream and can be cut to inject link failures.
//
// One VM makes several round trips A→B→A… with its memory and disk workloads running; after every
// trip and every injected failure, the guest's own checkers must report zero violations, its
// uptime must never go backwards and it must never say `ready` again (no reboot).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { access, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestSite, waitForHeartbeats } from '../support/fixtures.ts';
import { VmHandle } from '../../src/migrator/qemu/vm.ts';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';
import type { VmSpec } from '../../src/migrator/qemu/common/spec.ts';
import { LayerStore } from '../../src/migrator/layers/store.ts';
import { ImageStore } from '../../src/migrator/layers/images.ts';
import { MigrationDestination } from '../../src/migrator/orchestrator/destination.ts';
import { migrateVm, type MigrateVmInput } from '../../src/migrator/orchestrator/source.ts';
import { recoverMigration } from '../../src/migrator/orchestrator/recover.ts';
import { readSourceJournal, writeSourceJournal } from '../../src/migrator/orchestrator/journal.ts';
import { diskRoot } from '../../src/migrator/orchestrator/qemu-ops.ts';
import { sha256File } from '../../src/migrator/layers/images.ts';
import { MigrationError, type MigrationPhase, type MigrationProgress, type MigrationResult } from '../../src/migrator/orchestrator/common/types.ts';
import type { DestinationSite, MigrationOptions, PlanReply, PlanRequest, PrepareReply, PrepareRequest, SwitchoverRequest } from '../../src/migrator/site.ts';

const run = promisify(execFile);
const VM = 'mig';
const MiB = 1024 * 1024;
/** Data written below the guest's workload region before the first boot: it travels once. */
const PREFILL = { offset: 8 * MiB, length: 24 * MiB };
/** The guest's disk workload: 1024 blocks of 4 KiB from offset 0, rewritten every pass. */
const WORKLOAD_BYTES = 1024 * 4096;

/** A unix-socket forwarder standing in for the agents' link: counts bytes, can be cut. */
class Bridge {
  bytes = 0;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  private constructor(server: Server) {
    this.#server = server;
  }

  static async open(listen: string, target: string): Promise<Bridge> {
    await rm(listen, { force: true });
    const holder: { bridge?: Bridge } = {};
    const server = createServer((client) => {
      const upstream = connect(target);
      const b = holder.bridge as Bridge;
      for (const s of [client, upstream]) {
        b.#sockets.add(s);
        s.on('close', () => b.#sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.on('data', (chunk: Buffer) => (b.bytes += chunk.length));
      upstream.on('data', (chunk: Buffer) => (b.bytes += chunk.length));
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    const bridge = new Bridge(server);
    holder.bridge = bridge;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listen, () => resolve());
    });
    return bridge;
  }

  /** Breaks every connection (a link failure); new connections are still accepted. */
  cut(): void {
    for (const s of this.#sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

interface Site {
  name: string;
  test: TestSite;
  layers: LayerStore;
  images: ImageStore;
  destination: MigrationDestination;
  vm: VmHandle | undefined;
  spec: VmSpec | undefined;
  channel: GuestChannel | undefined;
}

type Fault =
  | { at: 'plan' | 'prepare' | 'switchover-before' | 'switchover-after' | 'commit'; kind: 'throw' }
  | { at: 'disk' | 'memory'; kind: 'kill-destination-qemu' };

/** The in-process DestinationSite: the destination's functions behind bridges, with fault injection. */
class TestLink implements DestinationSite {
  readonly to: Site;
  readonly bridgeDir: string;
  readonly fault: Fault | undefined;
  nbd: Bridge | undefined;
  memory: Bridge[] = [];
  channel: GuestChannel | undefined;
  #bytesDone = { disk: 0, memory: 0 };

  constructor(to: Site, bridgeDir: string, fault?: Fault) {
    this.to = to;
    this.bridgeDir = bridgeDir;
    this.fault = fault;
  }

  #maybeThrow(at: Fault['at']): void {
    if (this.fault?.at === at && this.fault.kind === 'throw') throw new Error(`injected failure at ${at}`);
  }

  wireBytes(): { disk: number; memory: number } {
    return { disk: this.#bytesDone.disk + (this.nbd?.bytes ?? 0), memory: this.#bytesDone.memory + this.memory.reduce((n, b) => n + b.bytes, 0) };
  }

  async plan(request: PlanRequest): Promise<PlanReply> {
    this.#maybeThrow('plan');
    return this.to.destination.plan(request);
  }

  uploadImage(sha256: string, data: AsyncIterable<Uint8Array>): Promise<void> {
    return this.to.destination.uploadImage(sha256, data);
  }

  async prepare(request: PrepareRequest): Promise<PrepareReply> {
    const reply = await this.to.destination.prepare(request);
    this.#maybeThrow('prepare');
    this.nbd = await Bridge.open(join(this.bridgeDir, 'nbd.sock'), reply.nbdSocket);
    this.memory.push(await Bridge.open(join(this.bridgeDir, 'mig0.sock'), reply.migrationSocket));
    // Listen to the guest where it will run before it runs there (lines are not queued by QEMU).
    this.channel = await GuestChannel.connect(VM, join(this.to.test.dataDir, 'vms', VM, 'control.sock'));
    return { ...reply, nbdSocket: join(this.bridgeDir, 'nbd.sock'), migrationSocket: join(this.bridgeDir, 'mig0.sock') };
  }

  async switchover(request: SwitchoverRequest): Promise<{ resumedAtMs: number }> {
    this.#maybeThrow('switchover-before');
    const reply = await this.to.destination.switchover(request);
    this.#maybeThrow('switchover-after');
    return reply;
  }

  async recoverPostcopy(request: { migrationId: string }): Promise<{ migrationSocket: string }> {
    const reply = await this.to.destination.recoverPostcopy(request);
    const path = join(this.bridgeDir, `mig${this.memory.length}.sock`);
    this.memory.push(await Bridge.open(path, reply.migrationSocket));
    return { migrationSocket: path };
  }

  async commit(request: { migrationId: string }): Promise<void> {
    this.#maybeThrow('commit');
    return this.to.destination.commit(request);
  }

  abort(request: { migrationId: string; reason: string }): Promise<void> {
    return this.to.destination.abort(request);
  }

  async close(): Promise<void> {
    await this.nbd?.close();
    for (const b of this.memory) await b.close();
  }
}

async function openSite(name: string): Promise<Site> {
  const test = await TestSite.create();
  const layers = await LayerStore.open(join(test.dataDir, 'layers'));
  const images = await ImageStore.open(join(test.dataDir, 'images'));
  const site: Site = { name, test, layers, images, vm: undefined, spec: undefined, channel: undefined, destination: undefined as unknown as MigrationDestination };
  site.destination = new MigrationDestination({
    layers,
    images,
    vmsDir: join(test.dataDir, 'vms'),
    onCommitted: (incoming) => {
      site.vm = incoming.handle;
      site.spec = incoming.spec;
    },
  });
  return site;
}

async function destinationLeftovers(site: Site): Promise<string[]> {
  const found: string[] = [];
  const vmDir = join(site.test.dataDir, 'vms', VM);
  const pid = await readPidFile(join(vmDir, 'qemu.pid'));
  if (pid !== undefined && (await isAlive(pid))) found.push(`QEMU ${pid}`);
  for (const name of await readdir(vmDir).catch(() => [] as string[])) {
    if (/^(incoming-.*\.json|disk\.qcow2|.*\.sock)$/.test(name)) found.push(`${vmDir}/${name}`);
  }
  for (const name of await readdir(join(site.layers.dir, 'pending'))) found.push(`pending/${name}`);
  const recorded = new Set(site.layers.list().map((l) => `${l.id}.qcow2`));
  for (const name of await readdir(join(site.layers.dir, 'by-id'))) if (!recorded.has(name)) found.push(`by-id/${name} (unrecorded)`);
  return found;
}

describe('live migration with disk, A ⇄ B', { timeout: 600_000 }, () => {
  let A: Site;
  let B: Site;
  let bridgeRoot: string;
  let lastUptime = 0;
  const results: MigrationResult[] = [];
  const links: TestLink[] = [];

  before(async () => {
    A = await openSite('A');
    B = await openSite('B');
    bridgeRoot = await mkdtemp(join(tmpdir(), 'sb-br-'));
    await A.test.createDemoVm(VM);
    const spec = await A.test.library.load(VM);
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0xa5 ${PREFILL.offset} ${PREFILL.length}`, spec.disk]);
    const paths = A.test.library.paths(VM);
    A.vm = await VmHandle.start(spec, paths, { accel: 'tcg' });
    A.spec = spec;
    A.channel = await GuestChannel.connect(VM, paths.control);
    await A.channel.waitFor((r) => r.type === 'ready', { timeoutMs: 120_000, what: 'ready report' });
    const integrity = await waitForHeartbeats(A.channel, 2);
    assert.equal(integrity.memory.violations + integrity.disk.violations, 0);
    lastUptime = integrity.uptimeMs;
    // The first trip must carry the whole workload region: wait until the guest wrote it once (pass 1
    // done), which takes longer than two heartbeats on a loaded machine.
    const deadline = Date.now() + 120_000;
    while (A.channel.integrity.disk.pass < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.ok(A.channel.integrity.disk.pass >= 2, `the disk workload did not finish its first pass: ${JSON.stringify(A.channel.integrity)}`);
  });

  after(async () => {
    for (const link of links) {
      link.channel?.close();
      await link.close().catch(() => undefined);
    }
    for (const site of [A, B]) {
      site?.channel?.close();
      await site?.vm?.detach().catch(() => undefined);
      await site?.test.dispose();
    }
    if (bridgeRoot) await rm(bridgeRoot, { recursive: true, force: true });
  });

  /** Checks the guest at `site`: healthy workloads, no reboot, uptime continuous. */
  async function checkGuest(site: Site, what: string): Promise<void> {
    const channel = site.channel;
    assert.ok(channel, `no guest channel at ${site.name}`);
    const integrity = await waitForHeartbeats(channel, 2, 60_000);
    assert.equal(integrity.memory.violations, 0, `${what}: memory violations ${JSON.stringify(integrity.memory)}`);
    assert.equal(integrity.disk.violations, 0, `${what}: disk violations ${JSON.stringify(integrity.disk)}`);
    assert.deepEqual(integrity.errors, [], `${what}: guest errors`);
    assert.equal(integrity.rebooted, false, `${what}: the guest rebooted`);
    assert.ok(integrity.uptimeMs >= lastUptime, `${what}: uptime went backwards (${integrity.uptimeMs} < ${lastUptime})`);
    lastUptime = integrity.uptimeMs;
  }

  async function trip(from: Site, to: Site, options: MigrationOptions, extra: Partial<MigrateVmInput> & { fault?: Fault; duringCommit?: (link: TestLink) => void } = {}): Promise<MigrationResult> {
    const { fault, duringCommit, ...rest } = extra;
    assert.ok(from.vm && from.spec, `the VM is not at ${from.name}`);
    const dir = await mkdtemp(join(bridgeRoot, `${from.name}${to.name}-`));
    const link = new TestLink(to, dir, fault);
    links.push(link);
    const progress: MigrationProgress[] = [];
    let injected = false;
    let committing = false;
    const vm = from.vm;
    const result = await migrateVm({
      vm,
      spec: from.spec,
      layers: from.layers,
      destination: link,
      options,
      from: from.name,
      to: to.name,
      wireBytes: () => link.wireBytes(),
      maxChainDepth: 3,
      onProgress: (p) => {
        progress.push(p);
        if (!injected && fault?.kind === 'kill-destination-qemu' && p.phase === fault.at && p.phaseElapsedMs > 100) {
          injected = true;
          void readPidFile(join(to.test.dataDir, 'vms', VM, 'qemu.pid')).then((pid) => pid !== undefined && process.kill(pid, 'SIGKILL'));
        }
        if (!committing && p.phase === 'commit' && duringCommit) {
          committing = true;
          duringCommit(link);
        }
      },
      ...rest,
    });
    // The VM moved: the source QEMU is gone, the guest runs at the destination.
    assert.equal(await isAlive(vm.pid), false, 'the source QEMU still runs');
    assert.ok(progress.some((p) => p.phase === 'memory'));
    from.channel?.close();
    from.channel = undefined;
    from.vm = undefined;
    from.spec = undefined;
    to.channel = link.channel;
    link.channel = undefined;
    await link.close();
    results.push(result);
    const summary = JSON.stringify({ strategy: result.strategy, downtime: result.downtime, passes: result.qemu.ram?.['dirty-sync-count'], xbzrle: result.qemu['xbzrle-cache'], phasesMs: result.phasesMs });
    await checkGuest(to, `after ${from.name}→${to.name} ${summary}`);
    return result;
  }

  /** A migration that must fail at `phase` and leave the VM running at `from`, untouched. */
  async function failedTrip(from: Site, to: Site, phase: MigrationPhase, fault: Fault, options: MigrationOptions = { strategy: 'precopy' }): Promise<MigrationError> {
    const vm = from.vm;
    const chainBefore = from.layers.chainOf(VM);
    let error: unknown;
    try {
      await trip(from, to, options, { fault });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof MigrationError, `expected a MigrationError, got ${String(error)}`);
    assert.equal(error.phase, phase, error.message);
    assert.equal(error.outcome, 'rolled-back', error.message);
    assert.equal(from.vm, vm);
    assert.ok(vm && (await isAlive(vm.pid)));
    assert.equal((await vm.status()).state, 'running');
    assert.deepEqual(from.layers.chainOf(VM), chainBefore);
    await access(from.spec?.disk ?? '');
    await checkGuest(from, `after the failure injected at ${fault.at}`);
    assert.deepEqual(await destinationLeftovers(to), []);
    const link = links.at(-1);
    link?.channel?.close();
    return error;
  }

  test('A→B pre-copy: the first trip sends the disk top (prefill + workload) and the memory', async () => {
    const r = await trip(A, B, { strategy: 'precopy' });
    assert.equal(r.disk.mode, 'top');
    assert.equal(r.disk.backingLayer, null);
    assert.equal(r.strategy.used, 'precopy');
    assert.ok(r.bytes.disk.sync >= PREFILL.length + WORKLOAD_BYTES, `disk sync ${r.bytes.disk.sync}`);
    assert.ok(r.bytes.wire && r.bytes.wire.disk >= PREFILL.length, `wire ${JSON.stringify(r.bytes.wire)}`);
    assert.ok(r.bytes.memory.total > 0);
    assert.ok(r.downtime.observedMs > 0 && r.downtime.observedMs < 5000, `downtime ${JSON.stringify(r.downtime)}`);
    assert.equal(r.qemu.status, 'completed');
    assert.deepEqual(A.layers.chainOf(VM), [r.disk.layerId]);
    assert.deepEqual(B.layers.chainOf(VM), [r.disk.receivedLayerId]);
    assert.equal(A.layers.get(r.disk.layerId)?.checksum, B.layers.get(r.disk.layerId)?.checksum);
    console.log('trip 1', JSON.stringify({ phasesMs: r.phasesMs, downtime: r.downtime, bytes: r.bytes }));
  });

  test('B→A pre-copy: only the blocks written at B travel', async () => {
    const first = results[0] as MigrationResult;
    const r = await trip(B, A, { strategy: 'precopy' });
    assert.equal(r.disk.mode, 'top');
    assert.equal(r.disk.backingLayer, first.disk.layerId);
    // The workload rewrote its 4 MiB region (64 clusters) while the VM was at B; nothing else changed.
    assert.ok(r.bytes.disk.sync >= WORKLOAD_BYTES && r.bytes.disk.sync <= WORKLOAD_BYTES + 2 * MiB, `disk sync ${r.bytes.disk.sync}`);
    assert.ok(r.bytes.disk.sync < first.bytes.disk.sync / 4);
    assert.equal(A.layers.get(r.disk.layerId)?.checksum, B.layers.get(r.disk.layerId)?.checksum);
    console.log('trip 2', JSON.stringify({ phasesMs: r.phasesMs, downtime: r.downtime, bytes: r.bytes }));
  });

  describe('failures before commit roll back: the VM keeps running at the source', () => {
    test('the destination throws while planning', async () => {
      const e = await failedTrip(A, B, 'plan', { at: 'plan', kind: 'throw' });
      assert.match(e.message, /planning.*injected failure at plan/);
    });

    test('the destination throws after it prepared (its QEMU is torn down)', async () => {
      const e = await failedTrip(A, B, 'prepare', { at: 'prepare', kind: 'throw' });
      assert.match(e.message, /preparing the destination/);
    });

    test('the destination QEMU dies during disk sync', async () => {
      const e = await failedTrip(A, B, 'disk', { at: 'disk', kind: 'kill-destination-qemu' }, { strategy: 'precopy', maxBandwidth: 2 * MiB });
      assert.match(e.message, /disk sync/);
    });

    test('the destination QEMU dies during the memory transfer', async () => {
      const e = await failedTrip(A, B, 'memory', { at: 'memory', kind: 'kill-destination-qemu' }, { strategy: 'precopy', maxBandwidth: 16 * MiB });
      assert.match(e.message, /memory transfer/);
    });

    test('the destination throws when asked to resume the guest', async () => {
      const e = await failedTrip(A, B, 'switchover', { at: 'switchover-before', kind: 'throw' });
      assert.match(e.message, /switchover/);
    });

    test('the destination resumed the guest but its answer is lost: it is stopped, the source resumes', async () => {
      await failedTrip(A, B, 'switchover', { at: 'switchover-after', kind: 'throw' });
    });
  });

  test('A→B hybrid: one pre-copy pass, then post-copy', async () => {
    const r = await trip(A, B, { strategy: 'hybrid', maxBandwidth: 48 * MiB });
    assert.equal(r.strategy.used, 'postcopy', JSON.stringify(r.strategy));
    assert.equal(r.strategy.postcopyAtPass, 2);
    assert.ok(r.bytes.memory.postcopy > 0);
    assert.ok(r.bytes.disk.sync <= WORKLOAD_BYTES + 2 * MiB, `disk sync ${r.bytes.disk.sync}`);
    console.log('trip 3 (hybrid)', JSON.stringify({ phasesMs: r.phasesMs, downtime: r.downtime, bytes: r.bytes, strategy: r.strategy }));
  });

  test('B→A post-copy; B compacts its chain to depth 3 afterwards', async () => {
    const r = await trip(B, A, { strategy: 'postcopy' });
    assert.equal(r.strategy.used, 'postcopy');
    assert.equal(r.disk.compaction.length, 1, JSON.stringify(r.disk));
    assert.equal(B.layers.chainOf(VM).length, 3);
    assert.equal(A.layers.chainOf(VM).length, 4);
    console.log('trip 4 (postcopy)', JSON.stringify({ phasesMs: r.phasesMs, downtime: r.downtime, bytes: r.bytes, strategy: r.strategy }));
  });

  test('A→B pre-copy onto the compacted chain: B recognises it and only the top travels', async () => {
    const r = await trip(A, B, { strategy: 'precopy' });
    assert.equal(r.disk.mode, 'top');
    assert.ok(r.bytes.disk.sync <= WORKLOAD_BYTES + 2 * MiB, `disk sync ${r.bytes.disk.sync}`);
    assert.ok(B.layers.chainOf(VM).some((id) => id.startsWith('m-')), JSON.stringify(B.layers.chainOf(VM)));
    assert.ok(r.disk.compaction.length >= 1);
    // Every layer both sites hold under the same id holds the same content.
    for (const layer of A.layers.list()) {
      const other = B.layers.get(layer.id);
      if (other) assert.equal(other.checksum, layer.checksum, layer.id);
    }
  });

  test('B→A post-copy survives a link cut after switchover (migrate-pause / migrate-recover)', async () => {
    const r = await trip(B, A, { strategy: 'postcopy', maxBandwidth: 24 * MiB }, { duringCommit: (link) => setTimeout(() => link.memory[0]?.cut(), 300) });
    assert.equal(r.strategy.used, 'postcopy');
    assert.ok(r.strategy.decisions.some((d) => d.includes('resumed')), JSON.stringify(r.strategy));
    assert.equal(r.qemu.status, 'completed');
    console.log('trip 6 (postcopy, link cut)', JSON.stringify({ phasesMs: r.phasesMs, downtime: r.downtime, bytes: r.bytes, strategy: r.strategy, warnings: r.warnings }));
  });

  test('A→B when B lost a layer: a full copy into a standalone layer; B→A afterwards sends only the top again', async () => {
    const bottom = B.layers.chainOf(VM)[0];
    assert.ok(bottom);
    await B.layers.remove(bottom);
    const full = await trip(A, B, { strategy: 'precopy' });
    assert.equal(full.disk.mode, 'full');
    assert.equal(full.disk.receivedLayerId, `f-${full.disk.layerId}`);
    assert.ok((full.bytes.wire?.disk ?? 0) >= PREFILL.length, JSON.stringify(full.bytes));
    assert.deepEqual(B.layers.chainOf(VM), [full.disk.receivedLayerId]);
    assert.equal(B.layers.get(full.disk.receivedLayerId)?.parent, null);
    const back = await trip(B, A, { strategy: 'precopy' });
    assert.equal(back.disk.mode, 'top');
    assert.equal(back.disk.backingLayer, full.disk.layerId);
    assert.ok(back.bytes.disk.sync <= WORKLOAD_BYTES + 2 * MiB, `disk sync ${back.bytes.disk.sync}`);
  });

  test('recovery after the destination missed the commit: recoverMigration finishes it from the journal', async () => {
    const r = await trip(A, B, { strategy: 'precopy' }, { fault: { at: 'commit', kind: 'throw' } });
    assert.match(r.warnings.join(' '), /did not acknowledge the commit/);
    const vmDir = join(A.test.dataDir, 'vms', VM);
    const journal = await readSourceJournal(vmDir);
    assert.equal(journal?.step, 'source-released');
    assert.equal(B.vm, undefined, 'B must not own the VM before the commit');
    const recovered = await recoverMigration({ journal: journal as NonNullable<typeof journal>, vm: undefined, layers: A.layers, destination: B.destination, vmDir, maxChainDepth: 3 });
    assert.equal(recovered.kind, 'committed', JSON.stringify(recovered));
    assert.equal(await readSourceJournal(vmDir), undefined);
    assert.ok(B.vm, 'B owns the VM after the commit');
    assert.equal(B.layers.chainOf(VM).at(-1), r.disk.receivedLayerId);
    await checkGuest(B, 'after the recovered commit');
  });

  test('recovery after the source agent stopped mid-migration and the destination agent restarted: both roll back', async () => {
    // Recreate what a crashed source agent leaves behind: an incoming QEMU prepared at A, a disk
    // mirror and a memory stream running at B, and B's journal at the memory step.
    assert.ok(B.vm && B.spec);
    const migrationId = '00000000-0000-4000-8000-00000000c0de';
    const chain = B.layers.describeChain(VM);
    const plan = await A.destination.plan({ migrationId, vm: VM, chain, bootImages: [] });
    assert.equal(plan.complete, true);
    const root = await diskRoot(B.vm.qmp);
    const boot = { kernel: await sha256File(B.spec.boot.kernel), initrd: await sha256File(B.spec.boot.initrd) };
    const prepared = await A.destination.prepare({ migrationId, spec: B.spec, bootImages: boot, backingLayer: plan.heldLayers.at(-1) ?? null, virtualSize: root.virtualSize, postcopy: false, accel: 'tcg' });
    const qmp = B.vm.qmp;
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB });
    await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': 'sb-nbd-crash', server: { type: 'unix', path: prepared.nbdSocket }, export: prepared.nbdExport });
    await qmp.execute('blockdev-mirror', { 'job-id': 'sb-mirror-crash', device: root.node, target: 'sb-nbd-crash', sync: 'top', 'copy-mode': 'write-blocking' });
    await qmp.execute('migrate', { uri: `unix:${prepared.migrationSocket}` });
    const vmDir = join(B.test.dataDir, 'vms', VM);
    const now = new Date().toISOString();
    await writeSourceJournal(vmDir, {
      version: 1, role: 'source', migrationId, vm: VM, step: 'memory', startedAt: now, updatedAt: now, topFile: B.spec.disk,
      chain: chain.map((l) => l.id), layerId: 'l-crash', nbdNode: 'sb-nbd-crash', mirrorJob: 'sb-mirror-crash', postcopy: false, postcopyStarted: false, sourceWasRunning: true,
    });
    // A's agent restarts first: the incoming VM never resumed, so it is torn down.
    const restarted = new MigrationDestination({ layers: A.layers, images: A.images, vmsDir: join(A.test.dataDir, 'vms') });
    assert.deepEqual(await restarted.recoverIncoming(), []);
    assert.deepEqual(await destinationLeftovers(A), []);
    // Then B's agent: the journal says memory, so it rolls back.
    const journal = await readSourceJournal(vmDir);
    assert.ok(journal);
    const recovered = await recoverMigration({ journal, vm: B.vm, layers: B.layers, destination: restarted, vmDir });
    assert.equal(recovered.kind, 'rolled-back', JSON.stringify(recovered));
    assert.equal(await readSourceJournal(vmDir), undefined);
    assert.deepEqual(await qmp.execute('query-block-jobs'), []);
    assert.equal((await B.vm.status()).state, 'running');
    await checkGuest(B, 'after the rolled-back recovery');
  });

  test('post-copy: after the switch a destination that will not resume the guest is not rolled back (QEMU 7.2 cannot); recoverMigration finishes the move', async () => {
    const vm = B.vm;
    assert.ok(vm);
    let error: unknown;
    try {
      await trip(B, A, { strategy: 'postcopy' }, { fault: { at: 'switchover-before', kind: 'throw' } });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof MigrationError, String(error));
    assert.equal(error.phase, 'switchover', error.message);
    assert.equal(error.outcome, 'postcopy-unfinished', error.message);
    assert.ok(await isAlive(vm.pid), 'the source QEMU must be kept');
    const vmDir = join(B.test.dataDir, 'vms', VM);
    const journal = await readSourceJournal(vmDir);
    assert.equal(journal?.step, 'switchover');
    assert.equal(journal?.postcopyStarted, true);
    const link = links.at(-1) as TestLink;
    const recovered = await recoverMigration({ journal: journal as NonNullable<typeof journal>, vm, layers: B.layers, destination: A.destination, vmDir, maxChainDepth: 3 });
    assert.equal(recovered.kind, 'committed', JSON.stringify(recovered));
    assert.equal(await isAlive(vm.pid), false);
    assert.ok(A.vm, 'A owns the VM');
    B.channel?.close();
    B.channel = undefined;
    B.vm = undefined;
    B.spec = undefined;
    A.channel = link.channel;
    link.channel = undefined;
    await checkGuest(A, 'after the post-copy switch finished by recovery');
  });
});
