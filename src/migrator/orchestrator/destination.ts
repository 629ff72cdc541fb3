// The destination side of a migration: what a site agent calls to serve plan / prepare /
// switchover / commit / abort for an incoming VM (it implements DestinationSite, so tests use it
// in-process and the agent puts it behind the peer link).
//
// prepare:    paused QEMU (`-incoming defer`) on a new overlay (layers/pending/<id>.qcow2) over the
//             layers shared with the source, the same argv as the source but for disk and boot
//             paths; capabilities as the source; an NBD export of the overlay; `migrate-incoming`.
// switchover: wait until the device state is in (status completed, or postcopy-active), drop the
//             export, rename the received overlay into by-id/<layerId>.qcow2, create the VM's new
//             top (<vm>/disk.qcow2) over it, `blockdev-snapshot` it over the received node while
//             paused, `cont`, wait for RESUME.
// commit:     record the received layer (checksum), set the VM's chain, hand the VM to the agent.
// abort:      kill QEMU, delete every file prepare/switchover made. Valid in every state before commit.
//
// Each incoming migration keeps a journal (<vm>/incoming-<id>.json) so a restarted agent can adopt
// or clean up (`recoverIncoming`).
import { mkdir, rename, rm } from 'node:fs/promises';
import { pathExists, socketAccepts } from '../local-io.ts';
import { dirname, join, relative } from 'node:path';
import { VmHandle } from '../qemu/vm.ts';
import { checkVmName, DISK_NODE, vmPaths, type VmSpec } from '../qemu/common/spec.ts';
import { kvmUsable } from '../qemu/accel.ts';
import { commandLineOf, isAlive, waitForExit } from '../qemu/process-info.ts';
import { assertId, assertSha256 } from '../layers/common/ids.ts';
import { migrationHolder } from '../layers/common/model.ts';
import type { LayerStore } from '../layers/store.ts';
import type { ImageStore } from '../layers/images.ts';
import { createImage } from '../layers/qemu-img.ts';
import type { DestinationSite, PlanReply, PlanRequest, PrepareReply, PrepareRequest, SwitchoverRequest } from '../site.ts';
import { IncomingJournalSchema, type IncomingJournal } from './common/journal.ts';
import { incomingJournalPath, readIncomingJournals, removeFile, writeIncomingJournal } from './journal.ts';
import { diskRoot, retryWhileBusy, setCapabilities, QemuWatch } from './qemu-ops.ts';
import { QmpError, QmpTimeoutError } from '../qmp/errors.ts';

export class DestinationError extends Error {
  override readonly name = 'DestinationError';
}

/** A VM whose incoming migration was committed: the agent now owns it. */
export interface IncomingVm {
  migrationId: string;
  name: string;
  /** The VM's spec at this site: disk = its new top, boot files = this site's image store. */
  spec: VmSpec;
  handle: VmHandle;
}

export interface DestinationOptions {
  layers: LayerStore;
  images: ImageStore;
  /** The folder holding one folder per VM (`<data>/vms`); a VM's sockets, top and journals go in its folder. */
  vmsDir: string;
  /** Called once a migration is committed. Without it the VM's QMP connection is closed (QEMU keeps running). */
  onCommitted?: (vm: IncomingVm) => void | Promise<void>;
  /** How long switchover waits for the device state to arrive. Default 60 s. */
  switchoverWaitMs?: number;
}

interface Incoming {
  journal: IncomingJournal;
  vm: VmHandle | undefined;
  /** Serializes requests for one migration. */
  lock: Promise<unknown>;
}

const TOP_FILE = 'disk.qcow2';
/** Post-copy recovery asks QEMU's migration status this long before it assumes a blocked main thread. */
const RECOVER_STATUS_TIMEOUT_MS = 2000;

function short(migrationId: string): string {
  return migrationId.replaceAll('-', '').slice(0, 8);
}

export class MigrationDestination implements DestinationSite {
  readonly #o: DestinationOptions;
  readonly #incoming = new Map<string, Incoming>();

  constructor(options: DestinationOptions) {
    this.#o = options;
  }

  vmDir(name: string): string {
    const problem = checkVmName(name);
    if (problem !== undefined) throw new DestinationError(problem);
    return join(this.#o.vmsDir, name);
  }

  /** Incoming migrations this object knows of (after recoverIncoming, those from journals too). */
  active(): IncomingJournal[] {
    return [...this.#incoming.values()].map((i) => structuredClone(i.journal));
  }

  async plan(request: PlanRequest): Promise<PlanReply> {
    assertId('migration', request.migrationId);
    if (checkVmName(request.vm) !== undefined) throw new DestinationError(checkVmName(request.vm) ?? '');
    for (const layer of request.chain) {
      assertId('layer', layer.id);
      for (const leaf of layer.leaves) assertId('layer', leaf);
    }
    const match = await this.#o.layers.match(request.chain);
    const missingImages: string[] = [];
    for (const sha of request.bootImages) {
      if (!(await this.#o.images.has(assertSha256(sha)))) missingImages.push(sha);
    }
    return { heldLayers: match.layers, complete: match.complete, missingImages };
  }

  async uploadImage(sha256: string, data: AsyncIterable<Uint8Array>): Promise<void> {
    await this.#o.images.put(assertSha256(sha256), data);
  }

  async prepare(request: PrepareRequest): Promise<PrepareReply> {
    const migrationId = assertId('migration', request.migrationId);
    const name = request.spec.name;
    const vmDir = this.vmDir(name);
    if (request.backingLayer !== null) assertId('layer', request.backingLayer);
    const kernelSha = assertSha256(request.bootImages.kernel);
    const initrdSha = assertSha256(request.bootImages.initrd);
    if (!Number.isSafeInteger(request.virtualSize) || request.virtualSize <= 0) throw new DestinationError(`invalid disk size ${request.virtualSize}`);
    if (this.#incoming.has(migrationId)) throw new DestinationError(`migration ${migrationId} is already being prepared here`);
    for (const other of [...this.#incoming.values()]) {
      // The journal is the truth: an entry whose journal is gone was cleaned up by another instance.
      if (!(await pathExists(incomingJournalPath(dirname(other.journal.topFile), other.journal.migrationId)))) {
        this.#incoming.delete(other.journal.migrationId);
        continue;
      }
      if (other.journal.vm === name) throw new DestinationError(`VM "${name}" is already arriving here (migration ${other.journal.migrationId}); abort that one first`);
    }
    const paths = vmPaths(vmDir);
    if (await socketAccepts(paths.qmp)) throw new DestinationError(`VM "${name}" is already running at this site; a VM cannot arrive where it runs`);
    const topFile = join(vmDir, TOP_FILE);
    if (await pathExists(topFile)) {
      throw new DestinationError(`${topFile} exists: this site still holds a disk top for VM "${name}" (it runs or ran here and was not migrated away); remove the VM here first`);
    }
    if (request.accel === 'kvm' && !(await kvmUsable())) {
      throw new DestinationError(`VM "${name}" runs under KVM at its source, and this site cannot use KVM (/dev/kvm is missing or not accessible): a KVM guest can only move to a site with KVM`);
    }
    for (const sha of [kernelSha, initrdSha]) {
      if (!(await this.#o.images.has(sha))) throw new DestinationError(`boot image ${sha} is missing here; upload it before prepare`);
    }
    const ancestry = request.backingLayer === null ? [] : this.#o.layers.resolve(request.backingLayer);
    const tag = short(migrationId);
    const nbdSocket = join(vmDir, `nbd-${tag}.sock`);
    const migrationSocket = join(vmDir, `mig-${tag}.sock`);
    const spec: VmSpec = {
      name,
      memoryMiB: request.spec.memoryMiB,
      vcpus: request.spec.vcpus,
      accel: request.accel,
      boot: { kernel: this.#o.images.path(kernelSha), initrd: this.#o.images.path(initrdSha), append: request.spec.boot.append },
      disk: this.#o.layers.pendingPath(migrationId),
      // A CPU limit is a property of a site (the cgroup is named after the VM): not carried over.
    };
    const now = new Date().toISOString();
    const journal: IncomingJournal = IncomingJournalSchema.parse({
      version: 1,
      role: 'destination',
      migrationId,
      vm: name,
      step: 'preparing',
      startedAt: now,
      updatedAt: now,
      backingLayer: request.backingLayer,
      ancestry,
      pendingFile: spec.disk,
      topFile,
      qmpSocket: paths.qmp,
      sockets: [nbdSocket, migrationSocket],
      spec,
    });
    // The entry is locked until prepare ends: an abort that arrives meanwhile (the source cancelled
    // while its prepare call was out) waits, then tears down the QEMU prepare started. Without the
    // lock it removed the journal and pid file before QEMU existed, and QEMU was orphaned.
    const preparing = Promise.withResolvers<undefined>();
    const entry: Incoming = { journal, vm: undefined, lock: preparing.promise };
    this.#incoming.set(migrationId, entry);
    try {
      await mkdir(vmDir, { recursive: true, mode: 0o700 });
      await this.#o.layers.pin(migrationHolder(migrationId), ancestry);
      await writeIncomingJournal(vmDir, journal);
      await this.#o.layers.createPending(migrationId, { virtualSize: request.virtualSize, over: request.backingLayer });
      await Promise.all(journal.sockets.map((s) => rm(s, { force: true })));
      const vm = await VmHandle.start(spec, paths, { accel: request.accel, incoming: true });
      entry.vm = vm;
      journal.pid = vm.pid;
      await writeIncomingJournal(vmDir, journal);
      await setCapabilities(vm.qmp, { events: true, 'postcopy-ram': request.postcopy });
      await vm.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
      await vm.qmp.execute('block-export-add', { type: 'nbd', id: `sb-export-${tag}`, 'node-name': DISK_NODE, writable: true, name: 'disk' });
      await vm.qmp.execute('migrate-incoming', { uri: `unix:${migrationSocket}` });
      journal.step = 'prepared';
      await writeIncomingJournal(vmDir, journal);
      return { nbdSocket, nbdExport: 'disk', migrationSocket };
    } catch (error) {
      await this.#teardown(entry).catch(() => undefined);
      throw new DestinationError(`could not prepare VM "${name}" to arrive: ${(error as Error).message}`, { cause: error });
    } finally {
      preparing.resolve(undefined);
    }
  }

  async switchover(request: SwitchoverRequest): Promise<{ resumedAtMs: number }> {
    const entry = await this.#entry(request.migrationId);
    return this.#serial(entry, async () => {
      const { journal } = entry;
      const layerId = assertId('layer', request.layerId);
      const leaves = request.layerLeaves.map((l) => assertId('layer', l));
      if (leaves.length === 0) throw new DestinationError('switchover: the received layer must name at least one leaf');
      if (journal.step === 'resumed') {
        if (journal.layer?.id !== layerId) throw new DestinationError(`migration ${journal.migrationId} already switched over as layer ${journal.layer?.id}`);
        return { resumedAtMs: Date.now() };
      }
      // 'switching': an earlier attempt stopped midway; every step below is done once (journal flags).
      if (journal.step !== 'prepared' && journal.step !== 'switching') throw new DestinationError(`migration ${journal.migrationId} is not ready to switch over (it is ${journal.step})`);
      if (journal.step === 'switching' && journal.layer?.id !== layerId) throw new DestinationError(`migration ${journal.migrationId} is switching over as layer ${journal.layer?.id}, not ${layerId}`);
      if (this.#o.layers.get(layerId) !== undefined) throw new DestinationError(`layer ${layerId} already exists here; layer ids are never reused`);
      const vm = this.#vm(entry);
      const vmDir = dirname(journal.topFile);
      const watch = new QemuWatch(vm.qmp);
      try {
        // The device state is in once QEMU left `inmigrate` (completed, or postcopy-active and paused).
        let arrived = false;
        await watch.until('the device state to arrive', () => (arrived ? true : undefined), {
          timeoutMs: this.#o.switchoverWaitMs ?? 60_000,
          pollMs: 10,
          poll: async () => {
            const [status, migration] = await Promise.all([vm.qmp.execute('query-status'), vm.qmp.execute('query-migrate')]);
            if (migration.status === 'failed' || migration.status === 'cancelled') {
              throw new DestinationError(`the incoming migration ${migration.status}${migration['error-desc'] ? `: ${migration['error-desc']}` : ''}`);
            }
            arrived = status.status !== 'inmigrate' && (migration.status === 'completed' || migration.status === 'postcopy-active');
          },
        });
        journal.step = 'switching';
        journal.layer = { id: layerId, leaves };
        await writeIncomingJournal(vmDir, journal);

        // The source dropped its NBD client before it let the migration finish; "still in use" can linger a moment.
        const exportId = `sb-export-${short(journal.migrationId)}`;
        if ((await vm.qmp.executeRaw('query-block-exports') as { id: string }[]).some((e) => e.id === exportId)) {
          await retryWhileBusy(() => vm.qmp.execute('block-export-del', { id: exportId }), 5000);
        }
        await vm.qmp.execute('nbd-server-stop').catch(() => undefined);

        const layerFile = this.#o.layers.layerPath(layerId);
        if (!journal.layerFileMoved) {
          await rename(journal.pendingFile, layerFile);
          journal.layerFileMoved = true;
          await writeIncomingJournal(vmDir, journal);
        }
        const root = await diskRoot(vm.qmp);
        const topNode = `sb-top-${short(journal.migrationId)}`;
        if (root.node !== topNode) {
          if (!journal.topCreated) {
            await createImage(journal.topFile, root.virtualSize, relative(vmDir, layerFile));
            journal.topCreated = true;
            await writeIncomingJournal(vmDir, journal);
          }
          const nodes = await vm.qmp.execute('query-named-block-nodes', { flat: true });
          if (!nodes.some((n) => n['node-name'] === topNode)) {
            await vm.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': topNode, file: { driver: 'file', filename: journal.topFile }, backing: null });
          }
          await vm.qmp.execute('blockdev-snapshot', { node: root.node, overlay: topNode });
        }
        let resumedAtMs = Date.now();
        if ((await vm.qmp.execute('query-status')).status !== 'running') {
          const resumed = vm.qmp.waitForEvent('RESUME', { timeoutMs: 10_000 });
          await vm.qmp.execute('cont');
          const event = await resumed;
          resumedAtMs = event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000;
        }
        journal.step = 'resumed';
        await writeIncomingJournal(vmDir, journal);
        return { resumedAtMs };
      } finally {
        watch.dispose();
      }
    });
  }

  async recoverPostcopy(request: { migrationId: string }): Promise<{ migrationSocket: string }> {
    const entry = await this.#entry(request.migrationId);
    return this.#serial(entry, async () => {
      const { journal } = entry;
      const vm = this.#vm(entry);
      // QEMU's main thread may be waiting on a page that is behind the broken stream (the display,
      // a device touching guest RAM): in-band commands then go unanswered, so the status is asked
      // with a short timeout, and pause and recover go out of band.
      const oob = { oob: vm.qmp.oob };
      const status = await vm.qmp.execute('query-migrate', undefined, { timeoutMs: RECOVER_STATUS_TIMEOUT_MS }).then(
        (info) => info.status,
        (error: unknown) => {
          if (error instanceof QmpTimeoutError && vm.qmp.oob) return undefined; // blocked on a page: in post-copy
          throw error;
        },
      );
      if (status === 'completed') throw new DestinationError('the incoming migration already completed; nothing to recover');
      // Still listening from an earlier attempt whose resume never connected: offer the same socket.
      const listening = journal.sockets.at(-1);
      if (status === 'postcopy-recover' && listening !== undefined && journal.sockets.length > 2) return { migrationSocket: listening };
      if (status !== undefined && status !== 'postcopy-active' && status !== 'postcopy-paused') {
        throw new DestinationError(`the incoming migration is ${status}, not in post-copy; only a post-copy stream can be recovered`);
      }
      // The source saw the stream break first: make this side notice too (refused, harmlessly, when it did).
      if (status !== 'postcopy-paused') await vm.qmp.execute('migrate-pause', undefined, oob).catch(() => undefined);
      const migrationSocket = join(dirname(journal.topFile), `mig-${short(journal.migrationId)}-r${journal.sockets.length}.sock`);
      journal.sockets.push(migrationSocket);
      await writeIncomingJournal(dirname(journal.topFile), journal);
      await rm(migrationSocket, { force: true });
      // Accepted once QEMU is postcopy-paused, which follows migrate-pause within moments.
      const deadline = performance.now() + 10_000;
      for (;;) {
        try {
          await vm.qmp.execute('migrate-recover', { uri: `unix:${migrationSocket}` }, oob);
          return { migrationSocket };
        } catch (error) {
          if (!(error instanceof QmpError) || performance.now() > deadline) throw error;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    });
  }

  async commit(request: { migrationId: string }): Promise<void> {
    assertId('migration', request.migrationId);
    const entry = await this.#entry(request.migrationId).catch(() => undefined);
    // Unknown: already committed (commit is retried by the source until it hears back).
    if (entry === undefined) return;
    await this.#serial(entry, async () => {
      const { journal } = entry;
      if (journal.step !== 'resumed' || journal.layer === undefined) {
        throw new DestinationError(`migration ${journal.migrationId} cannot be committed: the guest has not resumed here (it is ${journal.step})`);
      }
      const vm = this.#vm(entry);
      // The source commits after its QEMU quit, i.e. after post-copy completed: this is quick.
      const watch = new QemuWatch(vm.qmp);
      try {
        await watch.until('the incoming migration to complete', () => (watch.migrationStatus === 'completed' ? true : undefined), {
          timeoutMs: 30_000,
          pollMs: 50,
          poll: async () => {
            watch.migrationStatus = (await vm.qmp.execute('query-migrate')).status;
          },
        });
      } finally {
        watch.dispose();
      }
      const layers = this.#o.layers;
      await layers.freeze(layers.layerPath(journal.layer.id), { id: journal.layer.id, parent: journal.backingLayer, leaves: journal.layer.leaves, inUse: true });
      await layers.setChain(journal.vm, [...journal.ancestry, journal.layer.id]);
      await layers.unpin(migrationHolder(journal.migrationId));
      await Promise.all(journal.sockets.map((s) => rm(s, { force: true })));
      await removeFile(incomingJournalPath(dirname(journal.topFile), journal.migrationId));
      this.#incoming.delete(journal.migrationId);
      const spec = { ...(journal.spec as VmSpec), disk: journal.topFile };
      const incoming: IncomingVm = { migrationId: journal.migrationId, name: journal.vm, spec, handle: vm };
      await layers.gc().catch(() => undefined);
      if (this.#o.onCommitted) await this.#o.onCommitted(incoming);
      else await vm.detach();
    });
  }

  async abort(request: { migrationId: string; reason: string }): Promise<void> {
    assertId('migration', request.migrationId);
    const entry = await this.#entry(request.migrationId).catch(() => undefined);
    if (entry === undefined) return;
    await this.#serial(entry, () => this.#teardown(entry));
  }

  /**
   * After the agent restarted: reads the incoming journals. Migrations that had not resumed the
   * guest are torn down (the source rolls back when it loses us). Those whose guest runs here are
   * adopted and wait for the source's commit or abort; they are returned.
   */
  async recoverIncoming(): Promise<IncomingJournal[]> {
    const waiting: IncomingJournal[] = [];
    for (const journal of await readIncomingJournals(this.#o.vmsDir)) {
      if (this.#incoming.has(journal.migrationId)) continue;
      const entry: Incoming = { journal, vm: undefined, lock: Promise.resolve() };
      this.#incoming.set(journal.migrationId, entry);
      const vm = await this.#adopt(journal);
      entry.vm = vm;
      let running = false;
      if (vm && (journal.step === 'resumed' || journal.step === 'switching')) {
        running = (await vm.status().catch(() => undefined))?.state === 'running';
      }
      if (running) {
        if (journal.step !== 'resumed') {
          journal.step = 'resumed';
          await writeIncomingJournal(dirname(journal.topFile), journal);
        }
        waiting.push(structuredClone(journal));
      } else {
        await this.#serial(entry, () => this.#teardown(entry));
      }
    }
    return waiting;
  }

  async #adopt(journal: IncomingJournal): Promise<VmHandle | undefined> {
    if (journal.pid === undefined || !(await isAlive(journal.pid))) return undefined;
    const cmdline = await commandLineOf(journal.pid);
    if (!cmdline?.some((arg) => arg.includes(journal.qmpSocket))) return undefined;
    try {
      return await VmHandle.adopt(journal.vm, vmPaths(dirname(journal.topFile)));
    } catch {
      return undefined;
    }
  }

  async #entry(migrationId: string): Promise<Incoming> {
    assertId('migration', migrationId);
    const known = this.#incoming.get(migrationId);
    if (known) return known;
    // Not in memory (the agent restarted): look for its journal.
    const journal = (await readIncomingJournals(this.#o.vmsDir)).find((j) => j.migrationId === migrationId);
    if (journal === undefined) throw new DestinationError(`no incoming migration ${migrationId} here`);
    const entry: Incoming = { journal, vm: await this.#adopt(journal), lock: Promise.resolve() };
    this.#incoming.set(migrationId, entry);
    return entry;
  }

  #vm(entry: Incoming): VmHandle {
    if (entry.vm === undefined || entry.vm.qmp.closed) throw new DestinationError(`the QEMU of incoming migration ${entry.journal.migrationId} is gone`);
    return entry.vm;
  }

  #serial<T>(entry: Incoming, fn: () => Promise<T>): Promise<T> {
    const next = entry.lock.then(fn, fn);
    entry.lock = next.catch(() => undefined);
    return next;
  }

  /** Kills QEMU and deletes everything the migration made here. */
  async #teardown(entry: Incoming): Promise<void> {
    const { journal } = entry;
    const vmDir = dirname(journal.topFile);
    if (entry.vm) {
      await entry.vm.kill().catch(() => undefined);
    } else if (journal.pid !== undefined && (await isAlive(journal.pid))) {
      const cmdline = await commandLineOf(journal.pid);
      if (cmdline?.some((arg) => arg.includes(journal.qmpSocket))) {
        try {
          process.kill(journal.pid, 'SIGKILL');
        } catch {
          // gone
        }
        await waitForExit(journal.pid, 10_000);
      }
    }
    const paths = vmPaths(vmDir);
    const files = [journal.pendingFile, ...journal.sockets, paths.qmp, paths.vnc, paths.control, paths.pidFile];
    if (journal.topCreated) files.push(journal.topFile);
    if (journal.layerFileMoved && journal.layer && this.#o.layers.get(journal.layer.id) === undefined) {
      files.push(this.#o.layers.layerPath(journal.layer.id));
    }
    await Promise.all(files.map((f) => rm(f, { force: true })));
    await this.#o.layers.unpin(migrationHolder(journal.migrationId));
    await removeFile(incomingJournalPath(vmDir, journal.migrationId));
    this.#incoming.delete(journal.migrationId);
  }
}
