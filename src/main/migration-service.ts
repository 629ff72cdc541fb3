// Migrations as the agent runs them. Outbound: the orchestrator (src/migrator/orchestrator) runs at
// the site the VM leaves, with a DestinationSite that talks to the peer over the link and bridges
// QEMU's migration and NBD streams through it. Inbound: the peer's requests are served by a
// MigrationDestination. Every migration, either way, ends up in the edge's history.
import { createReadStream } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { PeerLink } from '../migrator/link/index.ts';
import { bridgeListener, PeerDisconnectedError, type BridgeListener } from '../migrator/link/index.ts';
import { displayTarget } from './display-service.ts';
import { LayerStore } from '../migrator/layers/store.ts';
import { ImageStore } from '../migrator/layers/images.ts';
import {
  MigrationDestination,
  MigrationError,
  migrateVm,
  readSourceJournal,
  recoverMigration,
  type IncomingVm,
  type MigrationProgress as OrchestratorProgress,
  type MigrationResult,
} from '../migrator/orchestrator/index.ts';
import type { DestinationSite, MigrationOptions, PlanReply, PlanRequest, PrepareReply, PrepareRequest, SwitchoverRequest } from '../migrator/site.ts';
import { VmHandle } from '../migrator/qemu/vm.ts';
import { isAlive } from '../migrator/qemu/process-info.ts';
import { applyCpuLimit } from '../migrator/qemu/cpu-limit.ts';
import { IMAGE_CHUNK_BYTES, PEER_EVENT_PROGRESS, peerMethods, type PeerParams } from '../shared/peer-api.ts';
import { MIGRATION_PHASES, migrationProgressSchema, type DedupMode, type MigrationProgress, type MigrationRecord, type SiteRole } from '../shared/migration.ts';
import type { CancelReply, LocalCommand } from '../shared/local-api.ts';
import { LocalApiError } from './local-api/server.ts';
import type { History } from './history.ts';
import type { AgentStore } from './store.ts';
import type { VmLibrary } from './vm-library.ts';
import { ChunkStores, chunkStoreMiB } from './chunk-stores.ts';
import { chooseDedup, type DedupChoice } from '../migrator/dedup/common/choice.ts';
import { measureSenderThroughput } from '../migrator/dedup/calibrate.ts';
import { exposeLinkProbe, probeLink } from '../migrator/link/probe.ts';
import { dedupBridgeListener, dedupStreamHandler, type DedupBridge } from '../migrator/dedup/link.ts';

const STREAM_MIGRATION = 'migration';
const STREAM_NBD = 'nbd';
/** The memory stream through the dedup transport (with a return path for post-copy: see docs/migration.md). */
const STREAM_MIGRATION_DEDUP = 'migration-dd';
/** How long a move whose link dropped waits for the peer to be back (post-copy recovery waits 120 s in all). */
const RELINK_WAIT_MS = 60_000;
/** How long the edge waits for the core's answer on a move back whose link dropped. */
const AWAIT_CORE_MOVE_MS = 5 * 60_000;
/** How long the core keeps the record of a move back to the edge for `vm.await-migration`. */
const OUTGOING_RECORD_TTL_MS = 10 * 60_000;
/** Switchover waits for the device state and a guest resume: generous, the stream may be slow. */
const SWITCHOVER_TIMEOUT_MS = 10 * 60_000;

interface PrepareWireReply {
  nbdTarget: string;
  nbdExport: string;
  migrationTarget: string;
  /** The same stream through the dedup transport. */
  migrationDedupTarget?: string;
}

function targetIds(migrationId: string): { nbd: string; migration: string; dedup: string } {
  return { nbd: `${migrationId}.${STREAM_NBD}`, migration: `${migrationId}.${STREAM_MIGRATION}`, dedup: `${migrationId}.${STREAM_MIGRATION_DEDUP}` };
}

type DedupReport = NonNullable<MigrationRecord['dedup']>;

/** A DestinationSite on the other end of the link. */
class RemoteDestination implements DestinationSite {
  /** The link the move started on; replaced by `relink()`'s when it dropped (after switchover the move goes on). */
  private link: PeerLink;
  private readonly relink: () => Promise<PeerLink>;
  private readonly runDir: string;
  /** Set when the memory stream should go through the dedup transport. */
  private readonly chunkStores: ChunkStores | undefined;
  /** How dedup was chosen, or why not (for the record). */
  private readonly dedupChoice: DedupChoice;
  /** The chunk store bound the edge's settings ask for (MiB), passed on to the destination. */
  private readonly chunkStoreSetting: number | undefined;
  private bridges: { nbd: BridgeListener; migration: BridgeListener | undefined } | undefined;
  private readonly extraBridges: BridgeListener[] = [];
  /** The memory stream's bridge when it goes through dedup (kept after close: its counters stay). */
  private dedupBridge: DedupBridge | undefined;
  private dedupSkipped: string | undefined;
  /** Bytes of plain bridges already closed (their counters are kept after close). */
  private closedBytes = { disk: 0, memory: 0 };

  constructor(link: PeerLink, relink: () => Promise<PeerLink>, runDir: string, dedup: { choice: DedupChoice; stores: ChunkStores; chunkStoreMiB?: number | undefined }) {
    this.link = link;
    this.relink = relink;
    this.runDir = runDir;
    this.dedupChoice = dedup.choice;
    this.chunkStores = dedup.choice.use ? dedup.stores : undefined;
    this.chunkStoreSetting = dedup.chunkStoreMiB;
  }

  plan(request: PlanRequest): Promise<PlanReply> {
    return this.link.request<PlanReply>('migration.plan', request);
  }

  async uploadImage(sha256: string, data: AsyncIterable<Uint8Array>): Promise<void> {
    let offset = 0;
    let pending = Buffer.alloc(0);
    const send = async (chunk: Buffer, last: boolean): Promise<void> => {
      await this.link.request('migration.image-chunk', { migrationId: 'image', sha256, offset, data: chunk.toString('base64'), last });
      offset += chunk.length;
    };
    for await (const piece of data) {
      pending = Buffer.concat([pending, piece]);
      while (pending.length > IMAGE_CHUNK_BYTES) {
        await send(pending.subarray(0, IMAGE_CHUNK_BYTES), false);
        pending = pending.subarray(IMAGE_CHUNK_BYTES);
      }
    }
    await send(pending, true);
  }

  async prepare(request: PrepareRequest): Promise<PrepareReply> {
    const setting = this.chunkStoreSetting;
    const reply = await this.link.request<PrepareWireReply>('migration.prepare', { ...request, ...(setting === undefined ? {} : { chunkStoreMiB: setting }) }, { timeoutMs: 120_000 });
    const short = request.migrationId.slice(0, 8);
    await mkdir(this.runDir, { recursive: true, mode: 0o700 });
    const nbd = await bridgeListener(this.link, join(this.runDir, `${short}-nbd.sock`), reply.nbdTarget, { once: true });
    const migrationPath = join(this.runDir, `${short}-mig.sock`);
    const stores = this.chunkStores;
    if (stores !== undefined && reply.migrationDedupTarget !== undefined) {
      const { name, memoryMiB } = request.spec;
      this.bridges = { nbd, migration: undefined };
      // Post-copy's page requests come back on the same connection: the return path carries them.
      this.dedupBridge = await dedupBridgeListener(this.link, migrationPath, reply.migrationDedupTarget, {
        store: () => stores.get(name, chunkStoreMiB(memoryMiB, setting)),
        returnPath: request.postcopy,
      });
    } else {
      if (stores !== undefined) this.dedupSkipped = 'the destination does not offer it (an older snowbird)';
      this.bridges = { nbd, migration: await bridgeListener(this.link, migrationPath, reply.migrationTarget, { once: true }) };
    }
    return { nbdSocket: nbd.path, nbdExport: reply.nbdExport, migrationSocket: migrationPath };
  }

  switchover(request: SwitchoverRequest): Promise<{ resumedAtMs: number }> {
    return this.link.request('migration.switchover', request, { timeoutMs: SWITCHOVER_TIMEOUT_MS });
  }

  /** The link to the destination now: the same one, or the peer's new one after a drop. */
  private async live(): Promise<PeerLink> {
    if (this.link.closed) this.link = await this.relink();
    return this.link;
  }

  /** Post-copy broke after switchover (a dropped link, too): the destination listens again; bridge its new socket here. */
  async recoverPostcopy(request: { migrationId: string }): Promise<{ migrationSocket: string }> {
    const link = await this.live();
    const reply = await link.request<{ migrationTarget: string }>('migration.recover-postcopy', request, { timeoutMs: 60_000 });
    const bridge = await bridgeListener(link, join(this.runDir, `${request.migrationId.slice(0, 8)}-r${Date.now() % 100000}.sock`), reply.migrationTarget, { once: true });
    this.extraBridges.push(bridge);
    return { migrationSocket: bridge.path };
  }

  async commit(request: { migrationId: string }): Promise<void> {
    await (await this.live()).request('migration.commit', request, { timeoutMs: 120_000 });
    await this.closeBridges();
  }

  async abort(request: { migrationId: string; reason: string }): Promise<void> {
    try {
      // On the move's own link: a destination that lost it has torn its side down already.
      await this.link.request('migration.abort', request, { timeoutMs: 60_000 });
    } finally {
      await this.closeBridges();
    }
  }

  /** Bytes that crossed the link per stream, counted by the bridges (through dedup: what it sent and got back). */
  wireBytes(): { disk: number; memory: number } {
    const plain = this.plainBytes();
    const dedup = this.dedupBridge?.stats;
    return { disk: plain.disk, memory: plain.memory + (dedup ? dedup.wireOut + dedup.wireIn : 0) };
  }

  private plainBytes(): { disk: number; memory: number } {
    const count = (b: BridgeListener | undefined): number => (b ? b.stats.bytesIn + b.stats.bytesOut : 0);
    return {
      disk: this.closedBytes.disk + count(this.bridges?.nbd),
      memory: this.closedBytes.memory + count(this.bridges?.migration) + this.extraBridges.reduce((sum, b) => sum + count(b), 0),
    };
  }

  /** For the record: used or why not, QEMU's raw bytes, and its failure if it failed. */
  dedupReport(): DedupReport {
    const plain = this.plainBytes().memory;
    const stats = this.dedupBridge?.stats;
    if (stats === undefined) return { used: false, reason: this.dedupSkipped ?? this.dedupChoice.reason, rawBytes: plain };
    return {
      used: true,
      reason: this.dedupChoice.reason,
      rawBytes: stats.rawBytes + plain,
      refBytes: stats.sender.refBytes,
      needs: stats.sender.needs,
      ...(stats.fault ? { failed: stats.fault.message } : {}),
    };
  }

  async closeBridges(): Promise<void> {
    this.closedBytes = this.plainBytes();
    const bridges = this.bridges;
    this.bridges = undefined;
    await bridges?.nbd.close();
    await bridges?.migration?.close();
    await this.dedupBridge?.close();
    for (const bridge of this.extraBridges.splice(0)) await bridge.close();
  }
}

export function toRecord(result: MigrationResult, from: SiteRole, to: SiteRole, streamBytes: Record<string, number>, dedup?: DedupReport): MigrationRecord {
  return {
    migrationId: result.migrationId,
    vm: result.vm,
    from,
    to,
    strategy: result.strategy.requested,
    memory: {
      used: result.strategy.used,
      autoConverge: result.strategy.autoConverge,
      reason: result.strategy.reason,
      ...(result.strategy.postcopyMs === undefined ? {} : { postcopyMs: result.strategy.postcopyMs }),
    },
    outcome: 'committed',
    startedAt: result.startedAt,
    totalMs: result.totalMs,
    downtimeMs: result.downtime.observedMs,
    ...(result.downtime.qemuMs === undefined ? {} : { qemuDowntimeMs: result.downtime.qemuMs }),
    phaseMs: result.phasesMs,
    phaseBytes: result.bytes.perPhase,
    streamBytes,
    ...(dedup === undefined ? {} : { dedup }),
    qemu: { ...result.qemu, snowbird: { strategyUsed: result.strategy.used, autoConverge: result.strategy.autoConverge, decisions: result.strategy.decisions, disk: result.disk } } as Record<string, unknown>,
  };
}

function toProgress(p: OrchestratorProgress, from: SiteRole, to: SiteRole): MigrationProgress {
  return {
    migrationId: p.migrationId,
    vm: p.vm,
    from,
    to,
    phase: p.phase,
    bytes: p.bytes.disk + p.bytes.memory,
    ...(p.remainingBytes === null ? {} : { remainingBytes: p.remainingBytes }),
    rate: p.rateBytesPerSec,
    ...(p.etaMs === null ? {} : { etaSeconds: p.etaMs / 1000 }),
    elapsedMs: p.elapsedMs,
  };
}

export type MigrationTrigger = NonNullable<MigrationRecord['trigger']>;

export interface MigrationServiceDeps {
  role: SiteRole;
  dataDir: string;
  library: VmLibrary;
  store: AgentStore;
  history: History;
  log: (line: string) => void;
  /** The guest now runs at `site` (a migration reached commit): the edge's display follows it. */
  onSwitched?: (vm: string, site: SiteRole) => void;
  /** The memory stream cap (bytes/s) for moves that set none: the settings file's, read at each move. */
  defaultMaxBandwidth?: () => number | undefined;
  /** The dedup mode for moves that set none: the settings file's, read at each move (else auto). */
  defaultDedup?: () => DedupMode | undefined;
  /** Each VM's dedup chunk store bound (MiB): the settings file's, read at each move (else twice its RAM). */
  chunkStoreMiB?: () => number | undefined;
  /** The settings' `migration.postcopyToCore` (undefined: allowed). */
  postcopyToCore?: () => boolean | undefined;
}

/** How long a measurement of the link or of the dedup sender stands for the `auto` dedup choice. */
const DEDUP_MEASUREMENT_TTL_MS = 5 * 60_000;

export class MigrationService {
  private readonly deps: MigrationServiceDeps;
  private readonly inFlight = new Set<string>();
  /** Cancels the orchestrator runs this site drives, by VM. */
  private readonly cancels = new Map<string, { migrationId: string; controller: AbortController }>();
  private coreLink: (() => Promise<PeerLink>) | undefined;
  private stores: Promise<{ layers: LayerStore; images: ImageStore; destination: MigrationDestination }> | undefined;
  /** Per-VM dedup chunk stores (`<data>/chunks/<vm>/`), used by either end of a memory stream. */
  private readonly chunkStores: ChunkStores;
  /** The latest measurements for the `auto` dedup choice: per link, and of this machine's dedup sender. */
  private readonly linkThroughput = new WeakMap<PeerLink, { at: number; bitsPerSecond: number | undefined }>();
  private senderThroughput: { at: number; bitsPerSecond: number | undefined } | undefined;
  /** The newest link from each peer, by certificate fingerprint: a move whose link dropped goes on over it. */
  private readonly peerLinks = new Map<string, PeerLink>();
  /** The core's moves back to the edge, by migration id, kept a while after they end (`vm.await-migration`). */
  private readonly outgoing = new Map<string, { vm: string; record: Promise<MigrationRecord> }>();

  constructor(deps: MigrationServiceDeps) {
    this.deps = deps;
    this.chunkStores = new ChunkStores(join(deps.dataDir, 'chunks'), deps.log);
  }

  /** With the agent: writes the chunk stores' indexes. */
  async close(): Promise<void> {
    await this.chunkStores.close();
  }

  private get peerRole(): SiteRole {
    return this.deps.role === 'edge' ? 'core' : 'edge';
  }

  private get runDir(): string {
    return join(this.deps.dataDir, 'run');
  }

  private open(): Promise<{ layers: LayerStore; images: ImageStore; destination: MigrationDestination }> {
    this.stores ??= (async () => {
      const layers = await LayerStore.open(join(this.deps.dataDir, 'layers'));
      const images = await ImageStore.open(join(this.deps.dataDir, 'images'));
      const destination = new MigrationDestination({
        layers,
        images,
        vmsDir: join(this.deps.dataDir, 'vms'),
        onCommitted: (vm) => this.adoptIncoming(vm),
      });
      return { layers, images, destination };
    })();
    return this.stores;
  }

  /** The edge tells the service how to reach its core. */
  setCoreLink(get: () => Promise<PeerLink>): void {
    this.coreLink = get;
  }

  /** Finishes or rolls back what a previous run of this agent left half done. */
  async recover(): Promise<void> {
    const { destination } = await this.open();
    const incoming = await destination.recoverIncoming();
    for (const journal of incoming) this.deps.log(`recovered incoming migration ${journal.migrationId}`);
  }

  /** Registers the peer API on a new link (both roles). */
  attach(link: PeerLink): void {
    const handle = <M extends keyof typeof peerMethods>(method: M, handler: (params: PeerParams<M>) => Promise<unknown>): void => {
      link.handle(method, peerMethods[method], (params) => handler(params as PeerParams<M>));
    };
    exposeLinkProbe(link);
    this.peerLinks.set(link.peer.fingerprint, link);
    const uploads = new Map<string, { file: string; size: number }>();
    handle('migration.plan', async (p) => (await this.open()).destination.plan(p));
    handle('migration.image-chunk', async (p) => {
      const file = join(this.deps.dataDir, 'images', `.upload-${p.sha256}`);
      const upload = uploads.get(p.sha256) ?? { file, size: 0 };
      if (p.offset !== upload.size) throw new LocalApiError('invalid-params', `image chunk at ${p.offset}, expected ${upload.size}`);
      const data = Buffer.from(p.data, 'base64');
      const fh = await open(file, p.offset === 0 ? 'w' : 'a', 0o600);
      await fh.write(data);
      await fh.close();
      upload.size += data.length;
      uploads.set(p.sha256, upload);
      if (p.last) {
        uploads.delete(p.sha256);
        try {
          await (await this.open()).destination.uploadImage(p.sha256, createReadStream(file));
        } finally {
          await rm(file, { force: true });
        }
      }
      return {};
    });
    handle('migration.prepare', async (p) => {
      const reply = await (await this.open()).destination.prepare(p);
      link.exposeTarget(displayTarget(p.spec.name), this.deps.library.paths(p.spec.name).vnc);
      const targets = targetIds(p.migrationId);
      link.exposeTarget(targets.nbd, reply.nbdSocket);
      link.exposeTarget(targets.migration, reply.migrationSocket);
      // The source may send the stream through dedup instead (its choice); post-copy's return path comes back through it.
      const { name, memoryMiB } = p.spec;
      link.exposeHandler(targets.dedup, dedupStreamHandler(reply.migrationSocket, {
        store: () => this.chunkStores.get(name, chunkStoreMiB(memoryMiB, this.chunkStoreSetting(p.chunkStoreMiB))),
        returnPath: p.postcopy,
        onDone: (result) => {
          if ('error' in result) this.deps.log(`incoming dedup memory stream of ${name} (migration ${p.migrationId}) failed: ${result.error.message}`);
        },
      }));
      this.deps.store.getState().setVm({ name, location: 'moving', state: 'incoming' });
      return { nbdTarget: targets.nbd, nbdExport: reply.nbdExport, migrationTarget: targets.migration, migrationDedupTarget: targets.dedup } satisfies PrepareWireReply;
    });
    handle('migration.switchover', async (p) => (await this.open()).destination.switchover(p));
    handle('migration.recover-postcopy', async (p) => {
      const { migrationSocket } = await (await this.open()).destination.recoverPostcopy(p);
      const target = `${targetIds(p.migrationId).migration}.r${Date.now() % 100000}`;
      link.exposeTarget(target, migrationSocket);
      return { migrationTarget: target };
    });
    handle('migration.commit', async (p) => {
      await (await this.open()).destination.commit(p);
      this.unexpose(link, p.migrationId);
      return {};
    });
    handle('migration.abort', async (p) => {
      await (await this.open()).destination.abort(p);
      this.unexpose(link, p.migrationId);
      return {};
    });
    handle('vm.list', async () => this.localVms());
    handle('vm.cancel-migration', async (p) => this.cancelHere(p.vm, p.migrationId));
    handle('vm.migrate-out', async (p) => {
      const { dedup, chunkStoreMiB, ...options } = p.options;
      const peer = link.peer.fingerprint;
      // Progress goes to the peer's newest link: the move outlives a dropped one.
      const emit = (progress: MigrationProgress): void => void (this.peerLinks.get(peer) ?? link).emit(PEER_EVENT_PROGRESS, progress);
      let migrationId: string | undefined;
      const record = this.migrateOut(p.vm, link, options, emit, dedup ?? 'auto', chunkStoreMiB, (id) => {
        migrationId = id;
        this.outgoing.set(id, { vm: p.vm, record });
      });
      void record.finally(() => {
        if (migrationId !== undefined) setTimeout(() => this.outgoing.delete(migrationId ?? ''), OUTGOING_RECORD_TTL_MS).unref();
      }).catch(() => undefined);
      return record;
    });
    handle('vm.await-migration', async (p) => {
      const move = this.outgoing.get(p.migrationId);
      if (move === undefined || move.vm !== p.vm) throw new LocalApiError('not-found', `no move ${p.migrationId} of "${p.vm}" is known here (it ended over ${OUTGOING_RECORD_TTL_MS / 60_000} min ago, or this agent restarted)`);
      return move.record;
    });
    // A link that drops before the guest resumed here leaves the VM at the source: tear down what
    // we prepared. After the resume the guest is ours, whatever the source heard.
    void link.whenClosed().then(async () => {
      const { destination } = await this.open();
      for (const journal of destination.active()) {
        if (journal.step === 'resumed' || journal.step === 'switching') continue;
        await destination.abort({ migrationId: journal.migrationId, reason: 'the link to the source closed' }).catch((error: unknown) => this.deps.log(`cleaning up migration ${journal.migrationId}: ${(error as Error).message}`));
      }
    });
    void this.recoverOutgoing(link);
    void this.exposeDisplays(link);
    link.on('event', (name, payload) => {
      if (name !== PEER_EVENT_PROGRESS) return;
      const progress = migrationProgressSchema.safeParse(payload);
      if (progress.success) this.onProgress?.(progress.data);
    });
  }

  private onProgress: ((p: MigrationProgress) => void) | undefined;

  /**
   * Migrations this site was sending when its agent stopped: finish or roll them back now that the
   * peer is reachable again (the journal decides; see orchestrator/recover.ts).
   */
  private async recoverOutgoing(link: PeerLink): Promise<void> {
    const { layers } = await this.open();
    for (const name of await this.deps.library.list()) {
      const vmDir = this.deps.library.vmDir(name);
      if ((await readSourceJournal(vmDir)) === undefined || this.inFlight.has(name)) continue;
      this.inFlight.add(name);
      // Read again now that the VM is ours: a move that ended meanwhile removed its journal.
      const journal = await readSourceJournal(vmDir);
      if (journal === undefined) {
        this.inFlight.delete(name);
        continue;
      }
      // Recovery moves no memory stream of its own (a post-copy resumes over a plain bridge).
      const destination = new RemoteDestination(link, this.relinkTo(link), this.runDir, { choice: chooseDedup({ mode: 'off' }), stores: this.chunkStores });
      let vm: VmHandle | undefined;
      try {
        vm = await VmHandle.adopt(name, this.deps.library.paths(name)).catch(() => undefined);
        const result = await recoverMigration({ journal, vm, layers, destination, vmDir });
        this.deps.log(`recovered the interrupted migration ${journal.migrationId} of ${name}: ${result.kind}${result.notes.length ? ` (${result.notes.join('; ')})` : ''}`);
      } catch (error) {
        this.deps.log(`could not recover the interrupted migration of ${name} yet: ${(error as Error).message}`);
      } finally {
        await destination.closeBridges();
        await vm?.detach().catch(() => undefined);
        this.inFlight.delete(name);
      }
    }
    await this.refreshVms();
  }

  /** The peer's display gateway reaches each VM's VNC socket here as link target `display.<vm>`. */
  private async exposeDisplays(link: PeerLink): Promise<void> {
    for (const name of await this.deps.library.list()) link.exposeTarget(displayTarget(name), this.deps.library.paths(name).vnc);
  }

  private unexpose(link: PeerLink, migrationId: string): void {
    const targets = targetIds(migrationId);
    link.unexposeTarget(targets.nbd);
    link.unexposeTarget(targets.migration);
    link.unexposeTarget(targets.dedup);
  }

  /** A VM that arrived here: record its spec and runtime so this site's `vm` commands see it. */
  private async adoptIncoming(vm: IncomingVm): Promise<void> {
    // A CPU limit belongs to a site (the destination starts the VM without one): a VM coming back
    // keeps this site's own limit, applied again to the QEMU that now runs it.
    const ownLimit = (await this.deps.library.load(vm.name).catch(() => undefined))?.cpuLimitPercent;
    await this.deps.library.save(ownLimit === undefined ? vm.spec : { ...vm.spec, cpuLimitPercent: ownLimit });
    if (ownLimit !== undefined) {
      await applyCpuLimit(vm.name, vm.handle.pid, ownLimit).catch((error: unknown) => this.deps.log(`VM "${vm.name}" runs without its ${ownLimit} % CPU limit: ${(error as Error).message}`));
    }
    await this.deps.library.saveRuntime(vm.name, { pid: vm.handle.pid, accel: vm.spec.accel === 'kvm' ? 'kvm' : 'tcg', accelReason: `arrived by migration ${vm.migrationId}, as it ran at the source`, startedAt: new Date().toISOString() });
    this.deps.store.getState().setVm({ name: vm.name, location: this.deps.role, state: 'running' });
    await vm.handle.detach();
  }

  /** VMs whose QEMU runs at this site. */
  private async localVms(): Promise<{ name: string; state: string }[]> {
    const running: { name: string; state: string }[] = [];
    for (const name of await this.deps.library.list()) {
      const runtime = await this.deps.library.loadRuntime(name);
      if (runtime && (await isAlive(runtime.pid))) running.push({ name, state: 'running' });
    }
    return running;
  }

  /** Rebuilds the store's VM list: local VMs, and at the edge the ones the core runs. */
  async refreshVms(): Promise<void> {
    const local = new Map((await this.localVms()).map((v) => [v.name, v]));
    let remote = new Map<string, { name: string; state: string }>();
    if (this.deps.role === 'edge' && this.deps.store.getState().peer.connected && this.coreLink) {
      try {
        const link = await this.coreLink();
        remote = new Map((await link.request<{ name: string; state: string }[]>('vm.list', {}, { timeoutMs: 5000 })).map((v) => [v.name, v]));
      } catch {
        // The core is away: its VMs show as stopped until it returns.
      }
    }
    const moving = new Set(Object.values(this.deps.store.getState().migrations).map((m) => m.vm));
    const names = new Set([...(await this.deps.library.list()), ...remote.keys()]);
    const vms = [...names].map((name) => {
      if (moving.has(name)) return { name, location: 'moving' as const, state: 'migrating' };
      const here = local.get(name);
      if (here) return { name, location: this.deps.role, state: here.state };
      const there = remote.get(name);
      if (there) return { name, location: this.peerRole, state: there.state };
      return { name, location: 'stopped' as const, state: 'stopped' };
    });
    this.deps.store.setState({ vms: Object.fromEntries(vms.map((v) => [v.name, v])) });
  }

  /** The local API's `migrate`: from here to the peer, or (at the edge) asks the core to send it back. */
  async migrate(command: Extract<LocalCommand, { cmd: 'migrate' }>, progress: (p: MigrationProgress) => void, trigger: MigrationTrigger = { by: 'user', reasons: [] }): Promise<MigrationRecord> {
    if (this.deps.role !== 'edge' || !this.coreLink) throw new LocalApiError('wrong-role', 'migrations are started from the edge agent');
    const link = await this.coreLink();
    const maxBandwidth = command.maxBandwidth ?? this.deps.defaultMaxBandwidth?.();
    // Towards the edge, hybrid: the user waits for it, and post-copy gives it back soonest. Towards
    // the core, auto: whatever converges, measured during the move (convergence.ts).
    const strategy = command.strategy ?? (command.to === 'edge' ? 'hybrid' : 'auto');
    const postcopyToCore = this.deps.postcopyToCore?.() ?? true;
    if (command.to === 'core' && !postcopyToCore && (strategy === 'hybrid' || strategy === 'postcopy')) {
      throw new LocalApiError('invalid-params', `--strategy ${strategy} uses post-copy, which the settings forbid towards the core (migration.postcopyToCore is false); use precopy or auto, or \`snowbird config set migration.postcopyToCore true\``);
    }
    await this.checkMovable(command.vm, command.to, link);
    const options: MigrationOptions = {
      strategy,
      ...(command.to === 'core' && !postcopyToCore ? { allowPostcopy: false } : {}),
      ...(maxBandwidth ? { maxBandwidth } : {}),
      ...(command.downtimeLimitMs ? { downtimeLimitMs: command.downtimeLimitMs } : {}),
      ...(command.xbzrle === undefined ? {} : { xbzrle: command.xbzrle }),
    };
    const dedup = command.dedup ?? this.deps.defaultDedup?.() ?? 'auto';
    let switched = false;
    const publish = (p: MigrationProgress): void => {
      this.deps.store.getState().setProgress(p);
      if (p.phase === 'commit' && !switched) {
        switched = true;
        this.deps.onSwitched?.(p.vm, p.to);
      }
      progress(p);
    };
    let record: MigrationRecord;
    if (command.to === 'core') {
      record = await this.migrateOut(command.vm, link, options, publish, dedup, undefined);
    } else {
      if (this.inFlight.has(command.vm)) throw new LocalApiError('busy', `VM "${command.vm}" is already moving`);
      this.inFlight.add(command.vm);
      let migrationId: string | undefined;
      this.onProgress = (p) => {
        migrationId = p.migrationId;
        publish(p);
      };
      try {
        record = await link.request<MigrationRecord>('vm.migrate-out', { vm: command.vm, to: 'edge', options: { ...options, dedup, ...this.chunkStoreOption() } }, { timeoutMs: 0 });
      } catch (error) {
        // The link dropped under the move: the core carries on (it rolls back, or a post-copy recovers
        // on the new link). Ask it how the move ended once it is back.
        if (!(error instanceof PeerDisconnectedError) || migrationId === undefined) throw error;
        this.deps.log(`link to the core dropped while it moved "${command.vm}" here; waiting for the outcome of ${migrationId}`);
        record = await this.awaitCoreMove(command.vm, migrationId);
      } finally {
        this.onProgress = undefined;
        this.inFlight.delete(command.vm);
      }
    }
    for (const id of Object.keys(this.deps.store.getState().migrations)) this.deps.store.getState().endMigration(id);
    if (record.outcome === 'committed' && !switched) this.deps.onSwitched?.(record.vm, record.to);
    record = { ...record, trigger };
    this.deps.history.addMigration(record);
    await this.refreshVms();
    return record;
  }

  /** Refuses a move that cannot start, saying where the VM really is. */
  private async checkMovable(vm: string, to: SiteRole, link: PeerLink): Promise<void> {
    if (this.inFlight.has(vm)) throw new LocalApiError('busy', `VM "${vm}" is already moving`);
    const here = (await this.localVms()).some((v) => v.name === vm);
    const there = here ? false : (await link.request<{ name: string }[]>('vm.list', {}, { timeoutMs: 10_000 })).some((v) => v.name === vm);
    const where = here ? 'edge' : there ? 'core' : undefined;
    if (where === to) throw new LocalApiError('already-there', `VM "${vm}" already runs at the ${to}`);
    if (where !== undefined) return;
    if (!(await this.deps.library.exists(vm))) throw new LocalApiError('no-vm', `there is no VM named "${vm}" (\`snowbird vm list\` shows them; \`snowbird vm create ${vm}\` makes one)`);
    throw new LocalApiError('not-running', `VM "${vm}" is stopped: start it with \`snowbird vm start ${vm}\`, then move it`);
  }

  /** The record of the core's move back, asked again over each new link until it answers. */
  private async awaitCoreMove(vm: string, migrationId: string): Promise<MigrationRecord> {
    const deadline = Date.now() + AWAIT_CORE_MOVE_MS;
    for (;;) {
      try {
        const link = await this.coreLinkOrThrow();
        return await link.request<MigrationRecord>('vm.await-migration', { vm, migrationId }, { timeoutMs: 0 });
      } catch (error) {
        if (!(error instanceof PeerDisconnectedError || error instanceof LocalApiError) || Date.now() > deadline) {
          throw new LocalApiError('peer-lost', `the link to the core dropped while it moved "${vm}" here, and the core could not be asked how the move ended (${(error as Error).message}); \`snowbird status\` shows where the VM runs once the core is back`);
        }
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  }

  private coreLinkOrThrow(): Promise<PeerLink> {
    if (!this.coreLink) throw new LocalApiError('wrong-role', 'migrations are started from the edge agent');
    return this.coreLink();
  }

  /** The local API's `cancel`: the orchestrator runs where the VM runs, so a move back is cancelled at the core. */
  async cancel(vm: string, migrationId?: string): Promise<CancelReply> {
    if (this.cancels.has(vm) || this.deps.role !== 'edge' || !this.coreLink) return this.cancelHere(vm, migrationId);
    if (!this.inFlight.has(vm)) return { requested: false, detail: `VM "${vm}" is not moving` };
    return (await this.coreLink()).request<CancelReply>('vm.cancel-migration', { vm, ...(migrationId ? { migrationId } : {}) }, { timeoutMs: 30_000 });
  }

  /** `migrationId`, when given, must be the move under way: a late cancel never hits the next move. */
  private cancelHere(vm: string, migrationId?: string): CancelReply {
    const running = this.cancels.get(vm);
    if (running === undefined) return { requested: false, detail: `VM "${vm}" is not moving from the ${this.deps.role}` };
    if (migrationId !== undefined && running.migrationId !== migrationId) return { requested: false, detail: `migration ${migrationId} of "${vm}" is over; another one is under way (cancel it by the VM's name alone)` };
    const controller = running.controller;
    controller.abort(new Error('cancelled by the user'));
    return { requested: true, detail: `cancelling the migration of "${vm}": it rolls back unless the guest already switched over` };
  }

  /**
   * Whether this move's memory stream goes through dedup (see dedup/common/choice.ts). `auto` measures
   * this machine's dedup sender (~0.1 s) and the link (~0.3 s), one after the other so that neither
   * slows the other, and keeps the figures for a few minutes.
   */
  private async chooseDedup(link: PeerLink, mode: DedupMode, capBytesPerSecond: number | undefined): Promise<DedupChoice> {
    if (mode !== 'auto') return chooseDedup({ mode });
    const now = Date.now();
    const fresh = (m: { at: number } | undefined): boolean => m !== undefined && now - m.at < DEDUP_MEASUREMENT_TTL_MS;
    let sender = this.senderThroughput;
    if (!fresh(sender)) {
      sender = { at: now, bitsPerSecond: await measureSenderThroughput().catch(() => undefined) };
      this.senderThroughput = sender;
    }
    let measured = this.linkThroughput.get(link);
    if (!fresh(measured)) {
      const probe = await probeLink(link).catch((error: unknown) => {
        this.deps.log(`could not measure the link to ${link.peer.name}: ${(error as Error).message}`);
        return undefined;
      });
      measured = { at: now, bitsPerSecond: probe?.bitsPerSecond };
      this.linkThroughput.set(link, measured);
    }
    return chooseDedup({ mode, linkBitsPerSecond: measured?.bitsPerSecond, senderBitsPerSecond: sender?.bitsPerSecond, capBytesPerSecond });
  }

  /** Runs the orchestrator for a VM that runs here, towards the peer on `link`. */
  /** The chunk store bound in force here: this site's settings (the edge's), else what the peer passed on. */
  private chunkStoreSetting(fromPeer?: number): number | undefined {
    return this.deps.chunkStoreMiB?.() ?? fromPeer;
  }

  private chunkStoreOption(): { chunkStoreMiB?: number } {
    const setting = this.chunkStoreSetting();
    return setting === undefined ? {} : { chunkStoreMiB: setting };
  }

  /** The peer's link now: the same one, or the one it reconnected on (the edge dials; the core waits for it). */
  private relinkTo(link: PeerLink): () => Promise<PeerLink> {
    const peer = link.peer.fingerprint;
    return async () => {
      if (this.deps.role === 'edge' && this.coreLink) return this.coreLink();
      const deadline = Date.now() + RELINK_WAIT_MS;
      for (;;) {
        const now = this.peerLinks.get(peer);
        if (now !== undefined && !now.closed) return now;
        if (Date.now() > deadline) throw new PeerDisconnectedError(`${link.peer.name} did not reconnect within ${RELINK_WAIT_MS / 1000} s`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    };
  }

  private async migrateOut(name: string, link: PeerLink, options: MigrationOptions, progress: (p: MigrationProgress) => void, dedup: DedupMode, chunkStoreFromPeer: number | undefined, started?: (migrationId: string) => void): Promise<MigrationRecord> {
    if (this.inFlight.has(name)) throw new LocalApiError('busy', `VM "${name}" is already moving`);
    // Marked busy before the first await: a recovery or a second move cannot slip in between.
    this.inFlight.add(name);
    const runtime = await this.deps.library.loadRuntime(name).catch(() => undefined);
    if (!runtime || !(await isAlive(runtime.pid))) {
      this.inFlight.delete(name);
      throw new LocalApiError('not-running', `VM "${name}" is not running at the ${this.deps.role}`);
    }
    const migrationId = randomUUID();
    started?.(migrationId);
    const cancel = new AbortController();
    this.cancels.set(name, { migrationId, controller: cancel });
    const from = this.deps.role;
    const to = this.peerRole;
    const startedAt = new Date().toISOString();
    const choice = await this.chooseDedup(link, dedup, options.maxBandwidth);
    this.deps.log(`migration of ${name} ${from}→${to}: dedup ${choice.reason}`);
    const destination = new RemoteDestination(link, this.relinkTo(link), this.runDir, { choice, stores: this.chunkStores, chunkStoreMiB: this.chunkStoreSetting(chunkStoreFromPeer) });
    let vm: VmHandle | undefined;
    try {
      const { layers } = await this.open();
      const spec = await this.deps.library.load(name);
      vm = await VmHandle.adopt(name, this.deps.library.paths(name));
      const result = await migrateVm({
        vm,
        spec,
        layers,
        destination,
        options,
        migrationId,
        signal: cancel.signal,
        from,
        to,
        wireBytes: () => destination.wireBytes(),
        onProgress: (p) => progress(toProgress(p, from, to)),
      });
      const wire = destination.wireBytes();
      return toRecord(result, from, to, { [STREAM_NBD]: wire.disk, [STREAM_MIGRATION]: wire.memory }, destination.dedupReport());
    } catch (error) {
      await destination.closeBridges();
      const failure = error instanceof MigrationError ? error : undefined;
      const wire = destination.wireBytes();
      const dedupReport = destination.dedupReport();
      // The dedup transport broke the memory stream (the orchestrator saw QEMU's stream fail): say so, and how to do without.
      const message = dedupReport.failed === undefined
        ? (error as Error).message
        : `${(error as Error).message} The memory stream failed in the dedup transport (${dedupReport.failed}); \`snowbird migrate --dedup off\` sends it plain.`;
      const cancelled = cancel.signal.aborted && failure?.outcome !== undefined && failure.outcome.startsWith('rolled-back');
      this.deps.log(`migration of ${name} ${from}→${to} ${cancelled ? 'cancelled' : 'failed'}: ${message}`);
      return {
        migrationId,
        vm: name,
        from,
        to,
        strategy: options.strategy,
        outcome: cancelled ? 'cancelled' : 'aborted',
        failedPhase: failure?.phase ?? MIGRATION_PHASES[0],
        error: message,
        startedAt,
        totalMs: Date.now() - Date.parse(startedAt),
        phaseMs: {},
        phaseBytes: {},
        streamBytes: { [STREAM_NBD]: wire.disk, [STREAM_MIGRATION]: wire.memory },
        dedup: dedupReport,
      };
    } finally {
      await vm?.detach().catch(() => undefined);
      this.cancels.delete(name);
      this.inFlight.delete(name);
    }
  }
}
