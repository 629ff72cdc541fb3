// What the migration orchestrator (running at the source site) needs from the destination site.
// The agent implements it over the peer link (RPC + bridged streams); tests may implement it by
// calling the destination-side functions (orchestrator/destination.ts) in-process. Every path in a
// reply is a unix socket on the SOURCE side's filesystem, already bridged to the destination when
// the sites are apart. Every request is validated by the destination (ids: [a-z0-9-]).
import type { Accel, VmSpec } from './qemu/common/spec.ts';
import type { LayerDescriptor } from './layers/common/model.ts';

export type { LayerDescriptor } from './layers/common/model.ts';
export type { MemoryStrategy, MigrationOptions } from './orchestrator/common/types.ts';

export interface PlanRequest {
  migrationId: string;
  vm: string;
  /** The source's immutable disk layers, bottom first (the top overlay is not in it). */
  chain: LayerDescriptor[];
  /** sha256 of the boot files (kernel, initrd) the VM needs. */
  bootImages: string[];
}

export interface PlanReply {
  /**
   * The destination's own layers, bottom first, that together hold exactly the content of the
   * requested chain (matched by leaves, so a chain compacted differently still matches), verified.
   * Empty when the chain is empty or when no match was found.
   */
  heldLayers: string[];
  /** True if `heldLayers` reproduce the whole chain: only the top needs to travel. */
  complete: boolean;
  /** Boot images the destination lacks; the source sends them before prepare. */
  missingImages: string[];
}

export interface PrepareRequest {
  migrationId: string;
  /** The source's spec; the destination substitutes its own disk and boot-file paths. */
  spec: VmSpec;
  /** sha256 of spec.boot.kernel and spec.boot.initrd (the destination's copies are named by them). */
  bootImages: { kernel: string; initrd: string };
  /** Top-most held layer to put the new overlay on; null = a standalone overlay (full disk copy). */
  backingLayer: string | null;
  /** The disk's virtual size in bytes. */
  virtualSize: number;
  /** The destination must enable postcopy-ram as the source does. */
  postcopy: boolean;
  /**
   * The accelerator the source QEMU runs under. The destination uses the same one: the guest's RAM
   * size (see TCG_RAM_PAD_KIB) and CPU state depend on it.
   */
  accel: Accel;
}

export interface PrepareReply {
  nbdSocket: string;
  nbdExport: string;
  migrationSocket: string;
}

export interface SwitchoverRequest {
  migrationId: string;
  /**
   * The id the received overlay takes as an immutable layer. When only the top was mirrored the
   * source freezes its top under the same id; after a full copy the received layer stands for the
   * whole chain (id `f-<top's id>`, leaves = every leaf of the chain + the top's).
   */
  layerId: string;
  /** What the received layer holds, as leaf ids (see layers/common/model.ts). */
  layerLeaves: string[];
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
  /**
   * Post-copy only, after switchover: the memory stream broke (both QEMUs are `postcopy-paused`).
   * The destination listens again (`migrate-recover`) and answers the (bridged) socket the source
   * resumes the stream on.
   */
  recoverPostcopy(request: { migrationId: string }): Promise<{ migrationSocket: string }>;
  /** The source has released its copy: the destination's ownership of the VM is final. */
  commit(request: { migrationId: string }): Promise<void>;
  /** Tear down everything `prepare` made. Idempotent; valid in every state before commit. */
  abort(request: { migrationId: string; reason: string }): Promise<void>;
}
