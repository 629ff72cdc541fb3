// What the migration orchestrator (running at the source site) needs from the destination site.
// The agent implements it over the peer link (RPC + bridged streams); tests may implement it by
// calling the destination-side functions in-process. Every path in a reply is a unix socket on the
// SOURCE side's filesystem, already bridged to the destination when the sites are apart.
import type { VmSpec } from './qemu/common/spec.ts';

export type MemoryStrategy = 'precopy' | 'hybrid' | 'postcopy';

export interface MigrationOptions {
  strategy: MemoryStrategy;
  /** Cap for the memory stream in bytes/s; undefined = unlimited. */
  maxBandwidth?: number;
  /** QEMU's downtime-limit in ms. */
  downtimeLimitMs?: number;
}

export interface PlanRequest {
  migrationId: string;
  vm: string;
  /** The source's immutable disk layers, bottom first (the top overlay is not in it). */
  chain: string[];
  /** sha256 of the boot files (kernel, initrd) the VM needs. */
  bootImages: string[];
}

export interface PlanReply {
  /** Which of the requested layers the destination holds (verified). */
  heldLayers: string[];
  /** Boot images the destination lacks; the source sends them before prepare. */
  missingImages: string[];
}

export interface PrepareRequest {
  migrationId: string;
  /** The source's spec; the destination substitutes its own disk and boot-file paths. */
  spec: VmSpec;
  /** Top-most held layer to put the new overlay on; null = a standalone overlay (full disk copy). */
  backingLayer: string | null;
  /** The disk's virtual size in bytes. */
  virtualSize: number;
  /** The destination must enable postcopy-ram as the source does. */
  postcopy: boolean;
}

export interface PrepareReply {
  nbdSocket: string;
  nbdExport: string;
  migrationSocket: string;
}

export interface SwitchoverRequest {
  migrationId: string;
  /** The id the received overlay takes as an immutable layer (the source freezes its top under the same id). */
  layerId: string;
}

export interface DestinationSite {
  plan(request: PlanRequest): Promise<PlanReply>;
  /** Stores a boot image (kernel or initrd) identified by its sha256. */
  uploadImage(sha256: string, data: AsyncIterable<Uint8Array>): Promise<void>;
  prepare(request: PrepareRequest): Promise<PrepareReply>;
  /**
   * The device state has reached the destination (pre-copy: migration completed; post-copy: the
   * switch to post-copy happened). The destination drops the NBD export, puts a new empty overlay
   * over the received one, resumes the guest and answers once it runs.
   */
  switchover(request: SwitchoverRequest): Promise<{ resumedAtMs: number }>;
  /** The source has released its copy: the destination's ownership of the VM is final. */
  commit(request: { migrationId: string }): Promise<void>;
  /** Tear down everything `prepare` made. Idempotent; valid in every state before commit. */
  abort(request: { migrationId: string; reason: string }): Promise<void>;
}
