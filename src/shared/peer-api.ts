// The peer API between two site agents: one schema per method, checked by the link before a handler
// runs. Names that end up in paths (VMs, layers, migrations) are restricted to a safe alphabet.
import { z } from 'zod';
import { DEDUP_MODES, MEMORY_STRATEGIES, SITE_ROLES } from './migration.ts';
import { safeId, vmSpecSchema } from './vm-spec.ts';

const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'expected a sha256 hex digest');
/** Layer and migration ids: they name files in the layer store. */
const layerId = z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'ids are 1-64 lowercase letters, digits or "-"');

const layerDescriptorSchema = z.object({
  id: layerId,
  leaves: z.array(layerId).min(1).max(4096),
  checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/).nullable(),
  virtualSize: z.number().int().positive(),
});

export const migrationOptionsSchema = z.object({
  strategy: z.enum(MEMORY_STRATEGIES),
  maxBandwidth: z.number().int().positive().optional(),
  downtimeLimitMs: z.number().int().positive().max(60_000).optional(),
  /** QEMU's XBZRLE for later pre-copy passes. Default true. */
  xbzrle: z.boolean().optional(),
  /** auto: whether post-copy may finish a move pre-copy cannot. Default true. */
  allowPostcopy: z.boolean().optional(),
  /** The memory stream through the dedup transport: auto (the source decides by measuring), on, off. Default auto. */
  dedup: z.enum(DEDUP_MODES).optional(),
  /** The VM's dedup chunk store bound (MiB) the edge's settings ask for; absent: the default from its RAM. */
  chunkStoreMiB: z.number().int().positive().optional(),
});

/** Max bytes of one image chunk (base64 in a JSON frame stays well under the frame limit). */
export const IMAGE_CHUNK_BYTES = 512 * 1024;

export const peerMethods = {
  /** Destination side of a migration. */
  'migration.plan': z.object({ migrationId: layerId, vm: safeId, chain: z.array(layerDescriptorSchema).max(64), bootImages: z.array(sha256).max(8) }),
  'migration.image-chunk': z.object({ migrationId: layerId, sha256, offset: z.number().int().nonnegative(), data: z.string().max(Math.ceil(IMAGE_CHUNK_BYTES / 3) * 4 + 4), last: z.boolean() }),
  'migration.prepare': z.object({
    migrationId: layerId,
    spec: vmSpecSchema,
    bootImages: z.object({ kernel: sha256, initrd: sha256 }),
    backingLayer: layerId.nullable(),
    virtualSize: z.number().int().positive(),
    postcopy: z.boolean(),
    accel: z.enum(['kvm', 'tcg']),
    /** The VM's dedup chunk store bound (MiB) the edge's settings ask for; absent: the default from its RAM. */
    chunkStoreMiB: z.number().int().positive().optional(),
  }),
  'migration.switchover': z.object({ migrationId: layerId, layerId, layerLeaves: z.array(layerId).min(1).max(4096) }),
  'migration.recover-postcopy': z.object({ migrationId: layerId }),
  'migration.commit': z.object({ migrationId: layerId }),
  'migration.abort': z.object({ migrationId: layerId, reason: z.string().max(4000) }),
  /** Edge → core: send the VM back to the edge. */
  'vm.migrate-out': z.object({ vm: safeId, to: z.enum(SITE_ROLES), options: migrationOptionsSchema }),
  /**
   * Edge → core: the record of the core's move `migrationId` of this VM, once it ends. The edge asks
   * when the link dropped under a move back (the core carries on: a post-copy recovers on the new link).
   */
  'vm.await-migration': z.object({ vm: safeId, migrationId: layerId }),
  /** Edge → core: abandon the core's outgoing migration of this VM (see the local API's cancel). */
  'vm.cancel-migration': z.object({ vm: safeId, migrationId: z.string().max(64).optional() }),
  /** Edge → core: `snowbird vm status` of a VM that runs at the core (with the guest's report, sampled this long). */
  'vm.status': z.object({ vm: safeId, sampleMs: z.number().int().nonnegative().max(30_000) }),
  /** Edge → core: `snowbird vm console` of a VM that runs at the core: its serial log from `offset`. */
  'vm.console': z.object({ vm: safeId, offset: z.number().int().nonnegative() }),
  /** Edge → core: boot a VM that stopped at the core (its disk's top is there). */
  'vm.start': z.object({ vm: safeId }),
  /** Edge → core: `snowbird vm stop` of a VM that runs at the core. */
  'vm.stop': z.object({ vm: safeId, force: z.boolean(), graceMs: z.number().int().positive().max(600_000) }),
  /** Either way: the VMs this site runs. */
  'vm.list': z.object({}),
  /** Edge → core: what the core's host measures of this VM's QEMU now (a HostReading; rates since the last call). */
  'vm.sensors': z.object({ vm: safeId }),
} as const;

export type PeerMethod = keyof typeof peerMethods;
export type PeerParams<M extends PeerMethod> = z.infer<(typeof peerMethods)[M]>;

/** One-way notifications. */
export const PEER_EVENT_PROGRESS = 'migration.progress';
