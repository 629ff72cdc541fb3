// The source side of a live migration: one state machine, owned by the site the VM leaves.
//
//   plan → prepare → disk → memory → switchover ─(destination confirms the guest runs)→ commit
//     \________\_______\______\__________\___ any failure: roll back (source keeps the VM)
//
// Until the destination confirms that the guest runs there, the source's VM is *the* VM: every
// failure (either QEMU dying, a timeout, the destination throwing, the caller's AbortSignal) rolls
// back: migrate_cancel and mirror cancel here, `cont` if we paused it, destination.abort(). Once the
// destination confirmed, the migration only moves forward: the source waits for post-copy to finish
// (recovering a broken stream if it can), quits its QEMU, freezes its top as the layer the
// destination made of what it received, and commits. A journal (<vm>/migration.json, fsync'd at
// every step) lets a restarted agent finish or roll back (recover.ts).
import { createReadStream } from 'node:fs';
import { randomUUID } from 'node:crypto';
import type { VmHandle } from '../qemu/vm.ts';
import type { Accel, VmSpec } from '../qemu/common/spec.ts';
import { QmpDisconnectedError } from '../qmp/errors.ts';
import type { DestinationSite, MigrationOptions, PrepareReply } from '../site.ts';
import type { LayerStore } from '../layers/store.ts';
import { sha256File } from '../layers/images.ts';
import { assertId } from '../layers/common/ids.ts';
import type { LayerDescriptor } from '../layers/common/model.ts';
import { planDiskSync, type DiskSyncPlan } from '../layers/common/planner.ts';
import {
  DEFAULT_DOWNTIME_LIMIT_MS,
  DEFAULT_MAX_CHAIN_DEPTH,
  DEFAULT_TIMEOUTS,
  MigrationError,
  PHASES,
  UNLIMITED_BANDWIDTH,
  type FailureOutcome,
  type MigrationPhase,
  type MigrationProgress,
  type MigrationResult,
  type MigrationTimeouts,
  type QemuMigrationStats,
} from './common/types.ts';
import { convergenceDecision, DEFAULT_CONVERGENCE, rates, sampleOf, type ConvergenceConfig, type MigrationSample } from './common/convergence.ts';
import type { JournalStep, SourceJournal } from './common/journal.ts';
import { removeFile, sourceJournalPath, writeSourceJournal } from './journal.ts';
import { diskRoot, QemuGoneError, QemuWatch, RUNNING_MIGRATION, setCapabilities, stopOutgoingStreams, WaitTimeoutError } from './qemu-ops.ts';

export interface MigrateVmInput {
  /** The running VM at this site. */
  vm: VmHandle;
  spec: VmSpec;
  layers: LayerStore;
  destination: DestinationSite;
  options: MigrationOptions;
  /** Default: a random UUID. */
  migrationId?: string;
  /** Aborts the migration while it can still be rolled back; ignored once the destination runs the guest. */
  signal?: AbortSignal;
  onProgress?: (progress: MigrationProgress) => void;
  /** Site labels for the result (e.g. 'edge', 'core'). */
  from?: string;
  to?: string;
  /** Bytes that crossed the link per stream so far, if the transport counts them. */
  wireBytes?: () => { disk: number; memory: number };
  timeouts?: Partial<MigrationTimeouts>;
  /** Compaction bound for the VM's chain at this site after the migration. Default 4. */
  maxChainDepth?: number;
  /** Convergence-watch tuning. */
  convergence?: Partial<Omit<ConvergenceConfig, 'strategy' | 'downtimeLimitMs'>>;
}

/** Thrown inside a phase with the message a user reads; `outcome` overrides the default rollback outcome. */
class PhaseFailure extends Error {
  override readonly name = 'PhaseFailure';
}

/** How long a new migration waits for QEMU to finish cancelling the previous one. */
const CANCELLING_WAIT_MS = 30_000;
/** Migrates `vm` to `destination`. Resolves with the result record; rejects with MigrationError. */
export async function migrateVm(input: MigrateVmInput): Promise<MigrationResult> {
  return new SourceMigration(input).run();
}

class SourceMigration {
  readonly #in: MigrateVmInput;
  readonly #id: string;
  readonly #vm: VmHandle;
  readonly #timeouts: MigrationTimeouts;
  readonly #watch: QemuWatch;
  readonly #tag: string;
  readonly #nbdNode: string;
  readonly #jobId: string;
  readonly #layerId: string;
  readonly #startedAt = new Date();
  readonly #t0 = performance.now();
  readonly #phaseMs: Record<MigrationPhase, number> = { plan: 0, prepare: 0, disk: 0, memory: 0, switchover: 0, commit: 0 };
  readonly #warnings: string[] = [];
  readonly #decisions: string[] = [];
  readonly #samples: MigrationSample[] = [];
  #phase: MigrationPhase = 'plan';
  #phaseStart = performance.now();
  #journal: SourceJournal | undefined;
  #chain: LayerDescriptor[] = [];
  #rootNode = '';
  #virtualSize = 0;
  #boot = { kernel: '', initrd: '' };
  #plan: DiskSyncPlan | undefined;
  #prepared: PrepareReply | undefined;
  #nbdAdded = false;
  #mirrorStarted = false;
  #migrateStarted = false;
  #switchoverRequested = false;
  /** migrate-start-postcopy was issued. */
  #postcopyRequested = false;
  /** QEMU reached postcopy-active: the source's RAM is needed until the stream completes. */
  #postcopyStarted = false;
  #postcopyAtPass: number | undefined;
  /** When QEMU entered postcopy-active, and when post-copy completed: the risk window. */
  #postcopyActiveAt: number | undefined;
  #postcopyDoneAt: number | undefined;
  #autoConverge = false;
  #autoConvergeAtPass: number | undefined;
  /** The latest lever the convergence watch pulled, in its words. */
  #strategyAction: string | undefined;
  /** auto-converge is usable: KVM only (QEMU 7.2 corrupts TCG guests it throttles). */
  /** The accelerator this QEMU runs under: the destination uses the same; throttling needs KVM. */
  #accel: Accel = 'tcg';
  #downtimeLimitMs = DEFAULT_DOWNTIME_LIMIT_MS;
  #sourceWasRunning = true;
  #diskAtReady = 0;
  #diskAtPreSwitchover = 0;
  #diskTotal = 0;
  #stop: { qemuMs: number; localMs: number } | undefined;
  #observedDowntimeMs = 0;
  #finalInfo: QemuMigrationStats = {};
  #wireAtStart: { disk: number; memory: number } | undefined;
  #chainAfter: string[] = [];
  /** The bytes the last progress event reported: later ones never report fewer. */
  #bytesSent = { disk: 0, memory: 0 };
  #compaction: string[] = [];

  constructor(input: MigrateVmInput) {
    this.#in = input;
    this.#id = assertId('migration', input.migrationId ?? randomUUID());
    this.#vm = input.vm;
    this.#timeouts = { ...DEFAULT_TIMEOUTS, ...input.timeouts };
    this.#watch = new QemuWatch(input.vm.qmp);
    this.#tag = this.#id.replaceAll('-', '').slice(0, 8);
    this.#nbdNode = `sb-nbd-${this.#tag}`;
    this.#jobId = `sb-mirror-${this.#tag}`;
    this.#layerId = `l-${randomUUID()}`;
  }

  get #strategy(): MigrationOptions['strategy'] {
    return this.#in.options.strategy;
  }

  /** Whether QEMU gets the postcopy-ram capability: `auto` keeps post-copy as its last lever unless it is forbidden. */
  get #usesPostcopy(): boolean {
    if (this.#strategy === 'auto') return this.#in.options.allowPostcopy ?? true;
    return this.#strategy !== 'precopy';
  }

  get #vmDir(): string {
    return this.#vm.paths.dir;
  }

  async run(): Promise<MigrationResult> {
    this.#wireAtStart = this.#in.wireBytes?.();
    try {
      try {
        await this.#enter('plan', () => this.#doPlan());
        await this.#enter('prepare', () => this.#doPrepare());
        await this.#enter('disk', () => this.#doDisk());
        await this.#enter('memory', () => this.#doMemory());
        await this.#enter('switchover', () => this.#doSwitchover());
      } catch (error) {
        // Once QEMU entered post-copy the source cannot run the guest again (QEMU 7.2): forward only.
        if (this.#postcopyStarted) throw this.#postcopyUnfinished(error);
        throw await this.#rollBack(error);
      }
      // The destination runs the guest: from here on, forward only.
      await this.#enter('commit', () => this.#doCommit());
      return this.#result();
    } finally {
      this.#watch.dispose();
    }
  }

  async #enter(phase: MigrationPhase, body: () => Promise<void>): Promise<void> {
    this.#phase = phase;
    this.#phaseStart = performance.now();
    this.#emit({ message: `${phase} started` });
    try {
      if (phase !== 'commit') this.#in.signal?.throwIfAborted();
      await body();
    } finally {
      this.#phaseMs[phase] = performance.now() - this.#phaseStart;
    }
  }

  async #step(step: JournalStep, extra: Partial<SourceJournal> = {}): Promise<void> {
    const now = new Date().toISOString();
    this.#journal = {
      ...(this.#journal ?? {
        version: 1,
        role: 'source',
        migrationId: this.#id,
        vm: this.#in.spec.name,
        startedAt: this.#startedAt.toISOString(),
        topFile: this.#in.spec.disk,
        chain: this.#chain.map((l) => l.id),
        layerId: this.#layerId,
        postcopy: this.#usesPostcopy,
        postcopyStarted: false,
        sourceWasRunning: this.#sourceWasRunning,
      }),
      ...extra,
      step,
      updatedAt: now,
    } as SourceJournal;
    this.#journal.postcopyStarted = this.#postcopyStarted;
    await writeSourceJournal(this.#vmDir, this.#journal);
  }

  /** A destination call with the phase's timeout, and the AbortSignal before the point of no return. */
  async #call<T>(what: string, fn: () => Promise<T>, options: { abortable?: boolean; timeoutMs?: number } = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.#timeouts.destinationCallMs;
    const signal = options.abortable === false ? undefined : this.#in.signal;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort: (() => void) | undefined;
    try {
      return await Promise.race([
        fn().catch((error: unknown) => {
          throw new PhaseFailure(`the destination could not ${what}: ${(error as Error).message}`, { cause: error });
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new PhaseFailure(`the destination did not ${what} within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
        }),
        ...(signal
          ? [
              new Promise<never>((_, reject) => {
                onAbort = () => reject(signal.reason);
                if (signal.aborted) onAbort();
                else signal.addEventListener('abort', onAbort, { once: true });
              }),
            ]
          : []),
      ]);
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
  }

  // ── plan ──────────────────────────────────────────────────────────────────────────────────────
  async #doPlan(): Promise<void> {
    const { spec, layers } = this.#in;
    const status = await this.#vm.status();
    if (status.state !== 'running' && status.state !== 'paused') {
      throw new PhaseFailure(`the VM is ${status.qemuStatus}, not running or paused; only a running or paused VM can be migrated`);
    }
    this.#sourceWasRunning = status.state === 'running';
    let migration = await this.#vm.qmp.execute('query-migrate');
    // A cancelled migration winds down in the background: give it time before calling QEMU busy.
    for (const deadline = performance.now() + CANCELLING_WAIT_MS; migration.status === 'cancelling' && performance.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 100));
      migration = await this.#vm.qmp.execute('query-migrate');
    }
    if (migration.status !== undefined && RUNNING_MIGRATION.has(migration.status)) {
      throw new PhaseFailure(`QEMU already has a migration in progress (${migration.status}); wait for it or cancel it`);
    }
    this.#chain = layers.describeChain(spec.name);
    const root = await diskRoot(this.#vm.qmp);
    if (root.backingDepth !== this.#chain.length) {
      throw new PhaseFailure(`the layer store records ${this.#chain.length} layer(s) under VM "${spec.name}" but its disk has ${root.backingDepth} backing image(s); repair the layer store (${layers.dir}) before migrating`);
    }
    this.#rootNode = root.node;
    this.#virtualSize = root.virtualSize;
    this.#boot = { kernel: await sha256File(spec.boot.kernel), initrd: await sha256File(spec.boot.initrd) };
    await this.#step('planning');
    const reply = await this.#call('plan the migration', () =>
      this.#in.destination.plan({ migrationId: this.#id, vm: spec.name, chain: this.#chain, bootImages: [this.#boot.kernel, this.#boot.initrd] }),
    );
    for (const id of reply.heldLayers) assertId('layer', id);
    for (const sha of new Set(reply.missingImages)) {
      const path = sha === this.#boot.kernel ? spec.boot.kernel : sha === this.#boot.initrd ? spec.boot.initrd : undefined;
      if (path === undefined) throw new PhaseFailure(`the destination asked for an image (${sha}) this VM does not use`);
      this.#emit({ message: `sending boot image ${path}` });
      await this.#call(`store boot image ${path}`, () => this.#in.destination.uploadImage(sha, createReadStream(path)));
    }
    this.#plan = planDiskSync(this.#chain, reply, this.#layerId);
    this.#emit({ message: `disk: ${this.#plan.mode} (${this.#plan.reason})` });
  }

  // ── prepare ───────────────────────────────────────────────────────────────────────────────────
  async #doPrepare(): Promise<void> {
    const plan = this.#need(this.#plan);
    await this.#step('preparing', { received: { id: plan.received.id, leaves: plan.received.leaves }, diskMode: plan.mode });
    this.#accel = (await this.#vm.qmp.execute('query-kvm')).enabled ? 'kvm' : 'tcg';
    this.#prepared = await this.#call('prepare to receive the VM', () =>
      this.#in.destination.prepare({
        migrationId: this.#id,
        spec: this.#in.spec,
        bootImages: this.#boot,
        backingLayer: plan.backingLayer,
        virtualSize: this.#virtualSize,
        postcopy: this.#usesPostcopy,
        accel: this.#accel,
      }),
    );
    const { options } = this.#in;
    const qmp = this.#vm.qmp;
    this.#downtimeLimitMs = options.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS;
    // Pre-copy under KVM keeps auto-converge armed but dormant (threshold 100 %): the convergence
    // watch makes it bite, since capabilities cannot change while a migration runs. Never under
    // TCG: QEMU 7.2 loses guest writes when it throttles a TCG vCPU during migration.
    const armThrottle = (this.#strategy === 'precopy' || this.#strategy === 'auto') && this.#accel === 'kvm';
    await setCapabilities(qmp, {
      events: true,
      xbzrle: options.xbzrle ?? true,
      'pause-before-switchover': true,
      'postcopy-ram': this.#usesPostcopy,
      'auto-converge': armThrottle,
    });
    await qmp.execute('migrate-set-parameters', {
      'downtime-limit': this.#downtimeLimitMs,
      'max-bandwidth': options.maxBandwidth ?? UNLIMITED_BANDWIDTH,
      'max-postcopy-bandwidth': options.maxBandwidth ?? 0,
      ...(armThrottle ? { 'throttle-trigger-threshold': 100, 'cpu-throttle-initial': 20, 'cpu-throttle-increment': 10 } : {}),
    });
  }

  // ── disk ──────────────────────────────────────────────────────────────────────────────────────
  async #doDisk(): Promise<void> {
    const plan = this.#need(this.#plan);
    const prepared = this.#need(this.#prepared);
    await this.#step('disk-sync', { nbdNode: this.#nbdNode, mirrorJob: this.#jobId });
    const qmp = this.#vm.qmp;
    await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': this.#nbdNode, server: { type: 'unix', path: prepared.nbdSocket }, export: prepared.nbdExport });
    this.#nbdAdded = true;
    await qmp.execute('blockdev-mirror', {
      'job-id': this.#jobId,
      device: this.#rootNode,
      target: this.#nbdNode,
      sync: plan.mode,
      'copy-mode': 'write-blocking',
      ...(this.#in.options.maxBandwidth === undefined ? {} : { speed: this.#in.options.maxBandwidth }),
    });
    this.#mirrorStarted = true;
    let lastOffset = -1;
    let lastProgressAt = performance.now();
    let lastRate = { at: performance.now(), offset: 0, rate: 0 };
    const job = await this.#watch.until(
      'the disk mirror to be ready',
      () => {
        const j = this.#watch.jobs.get(this.#jobId);
        if (j?.ended) throw new PhaseFailure(`the disk mirror stopped before it was ready${j.ended.error ? `: ${j.ended.error}` : ''} (the NBD connection to the destination broke?)`);
        if (j?.ready) return j;
        if (performance.now() - lastProgressAt > this.#timeouts.diskStallMs) {
          throw new PhaseFailure(`the disk mirror made no progress for ${Math.round(this.#timeouts.diskStallMs / 1000)} s (at ${j?.offset ?? 0} of ${j?.len ?? '?'} bytes)`);
        }
        return undefined;
      },
      {
        timeoutMs: 24 * 3600_000,
        signal: this.#in.signal,
        pollMs: 250,
        poll: async () => {
          await this.#watch.pollJobs();
          const j = this.#watch.jobs.get(this.#jobId);
          if (j === undefined) return;
          const now = performance.now();
          if (j.offset !== lastOffset) {
            lastOffset = j.offset;
            lastProgressAt = now;
          }
          if (now - lastRate.at >= 200) lastRate = { at: now, offset: j.offset, rate: ((j.offset - lastRate.offset) * 1000) / (now - lastRate.at) };
          const remaining = Math.max(0, j.len - j.offset);
          this.#emit({ bytes: { disk: j.offset, memory: 0 }, rateBytesPerSec: lastRate.rate, remainingBytes: remaining, etaMs: lastRate.rate > 0 ? (remaining / lastRate.rate) * 1000 : null });
        },
      },
    );
    this.#diskAtReady = job.offset;
    this.#emit({ bytes: { disk: job.offset, memory: 0 }, remainingBytes: 0, etaMs: 0, message: 'disk mirror ready' });
  }

  // ── memory ────────────────────────────────────────────────────────────────────────────────────
  async #doMemory(): Promise<void> {
    const prepared = this.#need(this.#prepared);
    await this.#step('memory');
    const qmp = this.#vm.qmp;
    const config: ConvergenceConfig = {
      ...DEFAULT_CONVERGENCE,
      ...(this.#in.options.hybridPrecopyPasses === undefined ? {} : { hybridPrecopyPasses: this.#in.options.hybridPrecopyPasses }),
      ...this.#in.convergence,
      strategy: this.#strategy,
      downtimeLimitMs: this.#downtimeLimitMs,
      throttleAvailable: this.#accel === 'kvm',
      postcopyAllowed: this.#usesPostcopy,
      downtimeCeilingMs: this.#in.options.downtimeCeilingMs ?? this.#downtimeLimitMs * 4,
    };
    await qmp.execute('migrate', { uri: `unix:${prepared.migrationSocket}` });
    this.#migrateStarted = true;
    if (this.#strategy === 'postcopy') {
      // Accepted once the migration started; QEMU switches at its next iteration.
      await qmp.execute('migrate-start-postcopy');
      this.#postcopyRequested = true;
      this.#postcopyAtPass = 1;
      this.#decisions.push('start-postcopy at once: post-copy strategy');
    }
    const started = performance.now();
    let lastTransferred = -1;
    let lastProgressAt = performance.now();
    let acting = false;
    let gaveUp: string | undefined;
    await this.#watch.until(
      'the migration to reach the switchover point',
      () => {
        const status = this.#watch.migrationStatus;
        if (status === 'pre-switchover') return true;
        if (status === 'failed' || status === 'cancelled') throw new PhaseFailure(`QEMU reports the memory stream ${status} (the destination QEMU exited or the link broke)`);
        const j = this.#watch.jobs.get(this.#jobId);
        if (j?.ended) throw new PhaseFailure(`the disk mirror stopped${j.ended.error ? `: ${j.ended.error}` : ''} (the NBD connection to the destination broke?)`);
        if (performance.now() - lastProgressAt > this.#timeouts.memoryStallMs) throw new PhaseFailure(`the memory stream made no progress for ${Math.round(this.#timeouts.memoryStallMs / 1000)} s`);
        if (gaveUp !== undefined) throw new PhaseFailure(gaveUp);
        if (performance.now() - started > this.#timeouts.memoryTotalMs) throw new PhaseFailure(`memory did not converge within ${Math.round(this.#timeouts.memoryTotalMs / 60_000)} min; use post-copy or a higher bandwidth or downtime limit`);
        return undefined;
      },
      {
        timeoutMs: 24 * 3600_000,
        signal: this.#in.signal,
        pollMs: 100,
        poll: async () => {
          const info = await qmp.execute('query-migrate');
          if (info.status !== undefined && this.#watch.migrationStatus !== 'pre-switchover') this.#watch.migrationStatus = info.status;
          const sample = sampleOf(info, performance.now() - this.#t0);
          if (sample === undefined) return;
          this.#samples.push(sample);
          if (sample.transferred !== lastTransferred) {
            lastTransferred = sample.transferred;
            lastProgressAt = performance.now();
          }
          const rate = (sample.mbps * 1e6) / 8;
          this.#emit({
            bytes: { disk: this.#watch.jobs.get(this.#jobId)?.offset ?? this.#diskAtReady, memory: sample.transferred },
            rateBytesPerSec: rate,
            remainingBytes: sample.remaining,
            etaMs: rate > 0 ? (sample.remaining / rate) * 1000 : null,
            memory: {
              status: sample.status,
              pass: sample.dirtySyncCount,
              expectedDowntimeMs: sample.expectedDowntimeMs,
              dirtyPagesRate: sample.dirtyPagesRate,
              postcopy: this.#postcopyRequested,
              autoConverge: this.#autoConverge,
              cpuThrottlePercent: info['cpu-throttle-percentage'] ?? 0,
            },
          });
          if (acting) return;
          const action = convergenceDecision(this.#samples, config, {
            postcopyStarted: this.#postcopyRequested,
            autoConverge: this.#autoConverge,
            ...(this.#autoConvergeAtPass === undefined ? {} : { autoConvergeAtPass: this.#autoConvergeAtPass }),
            downtimeLimitMs: this.#downtimeLimitMs,
          });
          if (action.kind === 'wait') return;
          acting = true;
          try {
            if (action.kind === 'start-postcopy') {
              await qmp.execute('migrate-start-postcopy');
              this.#postcopyRequested = true;
              this.#postcopyAtPass = sample.dirtySyncCount;
            } else if (action.kind === 'give-up') {
              gaveUp = action.reason;
            } else if (action.kind === 'enable-auto-converge') {
              // Make auto-converge bite: throttle as soon as the guest dirties more than 10 % of what is sent.
              await qmp.execute('migrate-set-parameters', { 'throttle-trigger-threshold': 10 });
              this.#autoConverge = true;
              this.#autoConvergeAtPass = sample.dirtySyncCount;
            } else {
              await qmp.execute('migrate-set-parameters', { 'downtime-limit': action.toMs });
              this.#downtimeLimitMs = action.toMs;
            }
            this.#decisions.push(`${action.kind} at pass ${sample.dirtySyncCount}: ${action.reason}`);
            this.#strategyAction = action.reason;
            this.#emit({ message: action.reason });
          } finally {
            acting = false;
          }
        },
      },
    );
  }

  // ── switchover ────────────────────────────────────────────────────────────────────────────────
  async #doSwitchover(): Promise<void> {
    const plan = this.#need(this.#plan);
    const qmp = this.#vm.qmp;
    // The guest is stopped here (STOP came just before pre-switchover): the mirror can be finished
    // consistently. Cancelling a ready mirror completes it without pivoting: the destination's
    // overlay now holds exactly the source's top.
    this.#stop = this.#watch.lastStop;
    if (this.#stop === undefined) throw new PhaseFailure('QEMU reached the switchover point without stopping the guest');
    await this.#step('switchover');
    await this.#watch.pollJobs().catch(() => undefined);
    this.#diskAtPreSwitchover = this.#watch.jobs.get(this.#jobId)?.offset ?? this.#diskAtReady;
    await qmp.execute('block-job-cancel', { device: this.#jobId });
    const job = await this.#watch.until('the disk mirror to finish', () => this.#watch.jobs.get(this.#jobId)?.ended ? this.#watch.jobs.get(this.#jobId) : undefined, {
      timeoutMs: 30_000,
      signal: this.#in.signal,
    });
    if (job.ended?.error) throw new PhaseFailure(`the disk mirror failed while finishing: ${job.ended.error}`);
    this.#mirrorStarted = false;
    this.#diskTotal = job.offset;
    await qmp.execute('blockdev-del', { 'node-name': this.#nbdNode });
    this.#nbdAdded = false;
    await qmp.executeRaw('migrate-continue', { state: 'pre-switchover' });
    const reached = await this.#watch.until(
      'the device state to be sent',
      () => {
        const s = this.#watch.migrationStatus;
        if (s === 'completed' || s === 'postcopy-active') return s;
        if (s === 'failed' || s === 'cancelled') throw new PhaseFailure(`QEMU reports the migration ${s} while sending the device state`);
        return undefined;
      },
      {
        timeoutMs: 120_000,
        signal: this.#in.signal,
        pollMs: 50,
        poll: async () => {
          const info = await qmp.execute('query-migrate');
          if (info.status === 'completed' || info.status === 'failed' || info.status === 'postcopy-active') this.#watch.migrationStatus = info.status;
        },
      },
    );
    const request = { migrationId: this.#id, layerId: plan.received.id, layerLeaves: plan.received.leaves };
    this.#switchoverRequested = true;
    if (reached === 'postcopy-active') {
      // Point of no return for post-copy: part of the memory now lives only at the destination's
      // side of the stream, and QEMU 7.2 cannot resume this source. Ask the destination to resume,
      // retrying (switchover is idempotent); a persistent failure leaves it to recoverMigration.
      this.#postcopyStarted = true;
      this.#postcopyActiveAt = performance.now();
      await this.#step('switchover');
      for (let attempt = 1; ; attempt++) {
        try {
          await this.#call('resume the guest', () => this.#in.destination.switchover(request), { abortable: false });
          break;
        } catch (error) {
          if (attempt >= 3) throw error;
          this.#warnings.push(`switchover attempt ${attempt} failed (${(error as Error).message}); retrying`);
          await new Promise((r) => setTimeout(r, 500 * attempt));
        }
      }
    } else {
      // The destination now has the device state. It resumes the guest and confirms.
      await this.#call('resume the guest', () => this.#in.destination.switchover(request));
    }
    this.#observedDowntimeMs = performance.now() - this.#stop.localMs;
    // ── point of no return ──
    await this.#step('destination-running', { destinationResumedAtMs: Date.now() });
  }

  // ── commit ────────────────────────────────────────────────────────────────────────────────────
  async #doCommit(): Promise<void> {
    const { layers, spec } = this.#in;
    const qmp = this.#vm.qmp;
    if (this.#postcopyStarted) await this.#finishPostcopy();
    this.#finalInfo = await qmp.execute('query-migrate').catch(() => this.#finalInfo);
    await this.#vm.quit().catch((error: unknown) => this.#warnings.push(`quitting the source QEMU: ${(error as Error).message}`));
    await this.#step('source-released');
    const parent = this.#chain.at(-1)?.id ?? null;
    try {
      await layers.freeze(spec.disk, { id: this.#layerId, parent, leaves: [this.#layerId] });
      await layers.setChain(spec.name, [...this.#chain.map((l) => l.id), this.#layerId]);
    } catch (error) {
      this.#warnings.push(`freezing the source's top as layer ${this.#layerId} failed (the next migration back copies the whole disk): ${(error as Error).message}`);
    }
    let committed = false;
    for (let attempt = 0; attempt < 3 && !committed; attempt++) {
      try {
        await this.#call('commit', () => this.#in.destination.commit({ migrationId: this.#id }), { abortable: false });
        committed = true;
      } catch (error) {
        if (attempt === 2) this.#warnings.push(`the destination did not acknowledge the commit (${(error as Error).message}); the journal is kept so recovery retries it`);
        else await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
    try {
      const report = await layers.compact(spec.name, { maxDepth: this.#in.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH });
      this.#compaction = report.steps.map((s) => `${s.lower} + ${s.upper} → ${s.merged}`);
      if (report.skipped) this.#warnings.push(`compaction skipped: ${report.skipped}`);
      await layers.gc();
    } catch (error) {
      this.#warnings.push(`compacting the chain of "${spec.name}" failed: ${(error as Error).message}`);
    }
    this.#chainAfter = layers.chainOf(spec.name);
    if (committed) await removeFile(sourceJournalPath(this.#vmDir));
  }

  /** Post-copy: the source holds the pages the destination still lacks; wait, recovering a broken stream. */
  async #finishPostcopy(): Promise<void> {
    const qmp = this.#vm.qmp;
    const deadline = () => performance.now() + this.#timeouts.postcopyRecoveryMs;
    let recoverBy = deadline();
    for (;;) {
      let status: string;
      try {
        status = await this.#watch.until(
          'post-copy to finish',
          () => {
            const s = this.#watch.migrationStatus;
            return s === 'completed' || s === 'postcopy-paused' || s === 'failed' ? s : undefined;
          },
          {
            timeoutMs: 24 * 3600_000,
            pollMs: 250,
            poll: async () => {
              const info = await qmp.execute('query-migrate');
              if (info.status !== undefined) this.#watch.migrationStatus = info.status;
              const remaining = info.ram?.remaining ?? 0;
              this.#emit({ bytes: { disk: this.#diskTotal, memory: info.ram?.transferred ?? 0 }, remainingBytes: remaining, rateBytesPerSec: ((info.ram?.mbps ?? 0) * 1e6) / 8, etaMs: null, message: `post-copy: ${info.status}` });
            },
          },
        );
      } catch (error) {
        if (error instanceof QemuGoneError) throw this.#lostAfterSwitchover('the source QEMU exited during post-copy, with pages the destination had not received');
        throw error;
      }
      if (status === 'completed') {
        this.#postcopyDoneAt = performance.now();
        return;
      }
      if (status === 'failed' || performance.now() > recoverBy) {
        throw this.#postcopyUnfinished(new PhaseFailure(status === 'failed' ? 'QEMU reports the post-copy stream failed' : `the post-copy stream could not be recovered within ${Math.round(this.#timeouts.postcopyRecoveryMs / 1000)} s`));
      }
      // postcopy-paused: the stream broke. Ask the destination to listen again and resume on it.
      this.#emit({ message: 'post-copy stream broke; recovering' });
      try {
        const { migrationSocket } = await this.#call('listen for the post-copy stream again', () => this.#in.destination.recoverPostcopy({ migrationId: this.#id }), { abortable: false, timeoutMs: 15_000 });
        this.#watch.migrationStatus = 'postcopy-recover';
        await qmp.execute('migrate', { uri: `unix:${migrationSocket}`, resume: true });
        this.#decisions.push('post-copy stream broke after switchover; resumed with migrate-recover / migrate resume=true');
        recoverBy = deadline();
      } catch (error) {
        this.#warnings.push(`post-copy recovery attempt failed: ${(error as Error).message}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** Post-copy started and could not be finished: nothing is rolled back, the journal is kept for recovery. */
  #postcopyUnfinished(cause: unknown): MigrationError {
    if (cause instanceof MigrationError) return cause;
    if (cause instanceof QemuGoneError || this.#vm.qmp.closed) {
      return this.#error(this.#phase, 'source-lost', 'the source QEMU exited after the switch to post-copy, with memory the destination had not received; the VM is lost, boot it again from its disk', cause);
    }
    const attempts = this.#warnings.length > 0 ? ` (${this.#warnings.slice(-3).join('; ')})` : '';
    return this.#error(this.#phase, 'postcopy-unfinished', `${describe(cause, undefined)}${attempts}.`, cause);
  }

  #lostAfterSwitchover(why: string): MigrationError {
    return this.#error('commit', 'source-lost', `${why}; the guest at the destination cannot get its remaining memory`);
  }

  // ── rollback ──────────────────────────────────────────────────────────────────────────────────
  async #rollBack(cause: unknown): Promise<MigrationError> {
    const phase = this.#phase;
    const detail = describe(cause, this.#in.signal);
    const qmp = this.#vm.qmp;
    const sourceAlive = !qmp.closed && (await this.#vm.alive());
    const steps: string[] = [];
    if (sourceAlive) {
      // A write-blocking mirror to a dead destination must be gone before the guest runs again.
      steps.push(...(await stopOutgoingStreams(this.#watch, { mirrorJob: this.#mirrorStarted ? this.#jobId : undefined, nbdNode: this.#nbdAdded ? this.#nbdNode : undefined, migration: this.#migrateStarted })));
    }
    // Tear the destination down. Once it was asked to resume the guest, the source may resume only
    // after the destination confirmed it stopped (never both running).
    let destinationConfirmed = this.#prepared === undefined && phase !== 'prepare';
    try {
      await this.#call('abort', () => this.#in.destination.abort({ migrationId: this.#id, reason: detail }), { abortable: false, timeoutMs: 30_000 });
      destinationConfirmed = true;
    } catch (error) {
      steps.push((error as Error).message);
    }
    let outcome: FailureOutcome;
    if (!sourceAlive) {
      outcome = 'source-lost';
    } else if (this.#switchoverRequested && !destinationConfirmed) {
      outcome = 'source-paused-in-doubt';
    } else {
      outcome = destinationConfirmed ? 'rolled-back' : 'rolled-back-destination-unconfirmed';
      if (this.#sourceWasRunning) {
        try {
          const status = await this.#vm.status();
          if (status.state !== 'running') await qmp.execute('cont');
        } catch (error) {
          steps.push(`resuming the source: ${(error as Error).message}`);
        }
      }
    }
    if (outcome === 'source-paused-in-doubt') {
      await this.#step('switchover').catch(() => undefined);
    } else {
      await removeFile(sourceJournalPath(this.#vmDir)).catch(() => undefined);
    }
    const extra = steps.length > 0 ? ` (during rollback: ${steps.join('; ')})` : '';
    return this.#error(phase, outcome, `${detail}${extra}.`, cause);
  }

  /** One line on how the memory moved, and why: what the CLI, the history and the app show. */
  #strategyReason(): string {
    const strategy = this.#strategy;
    if (strategy !== 'auto') return STRATEGY_WORDS[strategy];
    if (this.#strategyAction !== undefined) return `auto: ${this.#strategyAction}`;
    const active = this.#samples.filter((s) => s.status === 'active');
    const { dirty, stream } = rates(active);
    const figures = active.length === 0 ? '' : `: the guest dirties ${fmtRate(dirty)}, the stream carries ${fmtRate(stream)}`;
    return `auto: pre-copy converged${figures}`;
  }

  #error(phase: MigrationPhase, outcome: FailureOutcome, detail: string, cause?: unknown): MigrationError {
    return new MigrationError({ phase, migrationId: this.#id, vm: this.#in.spec.name, outcome, detail, cause });
  }

  #need<T>(value: T | undefined): T {
    if (value === undefined) throw new Error('internal: migration step out of order');
    return value;
  }

  /**
   * Progress to the listener. Bytes never fall (an emit that carries none, a phase change or a
   * message, repeats the last ones); the rate and what is left are unknown unless the emit says.
   */
  #emit(partial: Partial<MigrationProgress>): void {
    if (!this.#in.onProgress) return;
    const now = performance.now();
    const bytes = { disk: Math.max(this.#bytesSent.disk, partial.bytes?.disk ?? 0), memory: Math.max(this.#bytesSent.memory, partial.bytes?.memory ?? 0) };
    this.#bytesSent = bytes;
    try {
      this.#in.onProgress({
        migrationId: this.#id,
        vm: this.#in.spec.name,
        phase: this.#phase,
        elapsedMs: now - this.#t0,
        phaseElapsedMs: now - this.#phaseStart,
        rateBytesPerSec: 0,
        remainingBytes: null,
        etaMs: null,
        ...partial,
        bytes,
      });
    } catch {
      // A listener's failure is not the migration's.
    }
  }

  #result(): MigrationResult {
    const plan = this.#need(this.#plan);
    const ram = this.#finalInfo.ram;
    const precopy = ram?.['precopy-bytes'] ?? 0;
    const downtimeBytes = ram?.['downtime-bytes'] ?? 0;
    const postcopy = ram?.['postcopy-bytes'] ?? 0;
    const wireEnd = this.#in.wireBytes?.();
    const finishedAt = new Date();
    const perPhase: Record<MigrationPhase, number> = { plan: 0, prepare: 0, disk: 0, memory: 0, switchover: 0, commit: 0 };
    perPhase.disk = this.#diskAtReady;
    perPhase.memory = precopy + (this.#diskAtPreSwitchover - this.#diskAtReady);
    perPhase.switchover = downtimeBytes + (this.#diskTotal - this.#diskAtPreSwitchover);
    perPhase.commit = postcopy;
    return {
      migrationId: this.#id,
      vm: this.#in.spec.name,
      from: this.#in.from,
      to: this.#in.to,
      startedAt: this.#startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      totalMs: performance.now() - this.#t0,
      strategy: {
        requested: this.#strategy,
        used: this.#postcopyStarted ? 'postcopy' : 'precopy',
        autoConverge: this.#autoConverge,
        downtimeLimitMs: this.#downtimeLimitMs,
        postcopyAtPass: this.#postcopyAtPass,
        decisions: [...this.#decisions],
        reason: this.#strategyReason(),
        postcopyMs: this.#postcopyActiveAt === undefined || this.#postcopyDoneAt === undefined ? undefined : Math.round(this.#postcopyDoneAt - this.#postcopyActiveAt),
      },
      disk: {
        mode: plan.mode,
        backingLayer: plan.backingLayer,
        layerId: this.#layerId,
        receivedLayerId: plan.received.id,
        chainAfter: this.#chainAfter,
        compaction: this.#compaction,
      },
      phasesMs: Object.fromEntries(PHASES.map((p) => [p, Math.round(this.#phaseMs[p])])) as Record<MigrationPhase, number>,
      downtime: { qemuMs: this.#finalInfo.downtime, observedMs: Math.round(this.#observedDowntimeMs) },
      bytes: {
        disk: { sync: this.#diskAtReady, duringMemory: this.#diskAtPreSwitchover - this.#diskAtReady, total: this.#diskTotal },
        memory: { precopy, downtime: downtimeBytes, postcopy, total: ram?.transferred ?? 0, xbzrle: this.#finalInfo['xbzrle-cache']?.bytes ?? 0 },
        perPhase,
        wire: wireEnd && this.#wireAtStart ? { disk: wireEnd.disk - this.#wireAtStart.disk, memory: wireEnd.memory - this.#wireAtStart.memory } : undefined,
      },
      qemu: this.#finalInfo,
      warnings: [...this.#warnings],
    };
  }
}

function describe(cause: unknown, signal: AbortSignal | undefined): string {
  if (signal?.aborted && cause === signal.reason) {
    const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
    return `it was cancelled (${reason})`;
  }
  if (cause instanceof PhaseFailure) return cause.message;
  if (cause instanceof QemuGoneError || cause instanceof QmpDisconnectedError) return 'the source QEMU exited';
  if (cause instanceof WaitTimeoutError) return cause.message;
  if (cause instanceof Error) return cause.message;
  return String(cause);
}

const STRATEGY_WORDS = {
  precopy: 'pre-copy: dirty-page rounds until the last ones fit the downtime limit',
  hybrid: 'hybrid: one pre-copy pass, then post-copy (the guest runs at the destination sooner)',
  postcopy: 'post-copy from the start: pages follow on demand',
} as const;

function fmtRate(bytesPerSecond: number): string {
  return `${(bytesPerSecond / (1024 * 1024)).toFixed(1)} MiB/s`;
}
