// The layer store's data model and its on-disk index format (validated with zod on every load). Pure.
//
// A VM's disk at a site is a qcow2 chain `bottom ← … ← layer ← top`. Every layer below the top is
// immutable and named by an id. A layer's *leaves* say what content it holds: a layer made by
// freezing a top has `leaves = [id]`; a layer made by merging two layers (compaction) or by
// receiving a whole chain flattened (full disk sync) lists the leaves of everything it stands for,
// oldest first. Two chains hold the same disk content exactly when their leaves, concatenated
// bottom to top, are equal — whatever the layer boundaries. That is how two sites that compacted
// at different times still recognise what they share.
import { z } from 'zod';

/** A layer as the source describes it to the destination (bottom first in a chain). */
export interface LayerDescriptor {
  id: string;
  leaves: string[];
  /** `sha256:<hex>` of the layer's content (see checksum.ts), or null if not computed yet. */
  checksum: string | null;
  virtualSize: number;
}

const idString = z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/);

export const LayerRecordSchema = z.object({
  id: idString,
  /** The layer below, at this site; null for a standalone layer. */
  parent: idString.nullable(),
  leaves: z.array(idString).min(1),
  virtualSize: z.number().int().positive(),
  checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/).nullable(),
  createdAt: z.string(),
  /**
   * Who holds the layer at this site: `vm:<name>` for each VM whose chain here includes it,
   * `migration:<id>` for an incoming migration building on it. The reference count is its length.
   */
  refs: z.array(z.string()),
  /** The file's size and mtime when its checksum was last verified: unchanged file, no re-read. */
  verified: z.object({ size: z.number(), mtimeMs: z.number(), at: z.string() }).optional(),
});
export type LayerRecord = z.infer<typeof LayerRecordSchema>;

export const LayerIndexSchema = z.object({
  version: z.literal(1),
  layers: z.record(idString, LayerRecordSchema),
  /** Each VM's chain at this site, bottom first (the top overlay is not in it). */
  chains: z.record(z.string(), z.array(idString)),
});
export type LayerIndex = z.infer<typeof LayerIndexSchema>;

export function emptyIndex(): LayerIndex {
  return { version: 1, layers: {}, chains: {} };
}

export function vmHolder(vm: string): string {
  return `vm:${vm}`;
}

export function migrationHolder(migrationId: string): string {
  return `migration:${migrationId}`;
}
