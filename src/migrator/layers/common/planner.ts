// Which disk layers two sites share, what has to be mirrored, and how chains are compacted. Pure:
// both sites run the same functions on the same inputs, so they reach the same answers.
import type { LayerDescriptor } from './model.ts';

/** What a site knows about one of its layers, enough to match chains. */
export interface HeldLayer {
  id: string;
  parent: string | null;
  leaves: string[];
  checksum: string | null;
  virtualSize: number;
}

export interface ChainMatch {
  /** True if `layers` reproduce the source's whole chain (every leaf, in order). */
  complete: boolean;
  /** The destination's own layer ids, bottom first: the ancestry of the best match (empty if none). */
  layers: string[];
  /** How many of the source chain's leaves `layers` cover (all of them when complete). */
  leavesCovered: number;
  /** Layers the destination holds under the same id but with a different checksum (treated as missing). */
  checksumMismatch: string[];
}

function sameSequence(a: readonly string[], b: readonly string[], length = a.length): boolean {
  if (a.length !== length || b.length < length) return false;
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The source chain's content as one leaf sequence, bottom first. */
export function chainLeaves(chain: readonly Pick<LayerDescriptor, 'leaves'>[]): string[] {
  return chain.flatMap((layer) => layer.leaves);
}

/**
 * Run at the destination: finds the destination layer whose full ancestry holds exactly the content
 * of the source's chain. Layers whose checksum disagrees with the source's for the same id, whose
 * virtual size differs, or whose ancestry is broken do not count. Among equal matches the shallower
 * ancestry wins; with no complete match, the longest matching prefix is reported (informational).
 */
export function matchChain(source: readonly LayerDescriptor[], held: readonly HeldLayer[]): ChainMatch {
  const target = chainLeaves(source);
  const virtualSize = source.at(-1)?.virtualSize;
  const byId = new Map(held.map((l) => [l.id, l]));
  const sourceById = new Map(source.map((l) => [l.id, l]));
  const checksumMismatch = held
    .filter((l) => {
      const s = sourceById.get(l.id);
      return s !== undefined && s.checksum !== null && l.checksum !== null && s.checksum !== l.checksum;
    })
    .map((l) => l.id);
  const bad = new Set(checksumMismatch);

  // Full leaf expansion and ancestry of each held layer (memoized; broken or cyclic ancestry = undefined).
  const memo = new Map<string, { leaves: string[]; ancestry: string[] } | undefined>();
  const expand = (id: string, depth: number): { leaves: string[]; ancestry: string[] } | undefined => {
    if (memo.has(id)) return memo.get(id);
    const layer = byId.get(id);
    let result: { leaves: string[]; ancestry: string[] } | undefined;
    if (layer !== undefined && !bad.has(id) && depth <= byId.size && (virtualSize === undefined || layer.virtualSize === virtualSize)) {
      if (layer.parent === null) result = { leaves: [...layer.leaves], ancestry: [id] };
      else {
        const below = expand(layer.parent, depth + 1);
        if (below !== undefined) result = { leaves: [...below.leaves, ...layer.leaves], ancestry: [...below.ancestry, id] };
      }
    }
    memo.set(id, result);
    return result;
  };

  if (target.length === 0) return { complete: true, layers: [], leavesCovered: 0, checksumMismatch };
  let best: { leaves: string[]; ancestry: string[] } | undefined;
  let complete = false;
  for (const layer of held) {
    const e = expand(layer.id, 0);
    if (e === undefined || e.leaves.length > target.length || !sameSequence(e.leaves, target, e.leaves.length)) continue;
    const isComplete = e.leaves.length === target.length;
    if (
      best === undefined ||
      (isComplete && !complete) ||
      (isComplete === complete && (e.leaves.length > best.leaves.length || (e.leaves.length === best.leaves.length && e.ancestry.length < best.ancestry.length)))
    ) {
      best = e;
      complete = isComplete;
    }
  }
  return {
    complete,
    layers: complete && best ? best.ancestry : [],
    leavesCovered: best?.leaves.length ?? 0,
    checksumMismatch,
  };
}

export type DiskSyncMode = 'top' | 'full';

export interface DiskSyncPlan {
  /**
   * `top`: the destination holds the whole chain below the top; its new overlay goes over
   * `backingLayer` (null when the chain is empty) and only the top's allocated clusters travel
   * (`blockdev-mirror sync=top`). `full`: it does not; the overlay is standalone and the whole
   * disk travels (`sync=full`).
   */
  mode: DiskSyncMode;
  backingLayer: string | null;
  /** The layer the destination's received overlay becomes, and the leaves it stands for. */
  received: { id: string; parent: string | null; leaves: string[] };
  reason: string;
}

/**
 * Run at the source with the destination's answer. `layerId` is the id the source's top will be
 * frozen under. In `full` mode the destination's received layer holds the whole chain flattened,
 * so it gets its own id (`f-` + layerId) and lists every leaf of the chain plus the new one.
 */
export function planDiskSync(
  chain: readonly LayerDescriptor[],
  reply: { heldLayers: readonly string[]; complete: boolean },
  layerId: string,
): DiskSyncPlan {
  if (chain.length === 0) {
    return { mode: 'top', backingLayer: null, received: { id: layerId, parent: null, leaves: [layerId] }, reason: 'the disk has no layers below its top: the top alone is the whole disk' };
  }
  const backing = reply.heldLayers.at(-1);
  if (reply.complete && backing !== undefined) {
    return {
      mode: 'top',
      backingLayer: backing,
      received: { id: layerId, parent: backing, leaves: [layerId] },
      reason: `the destination holds all ${chain.length} layer(s) below the top (as ${reply.heldLayers.length} layer(s) there)`,
    };
  }
  return {
    mode: 'full',
    backingLayer: null,
    received: { id: fullLayerId(layerId), parent: null, leaves: [...chainLeaves(chain), layerId] },
    reason: 'the destination lacks some layers below the top: the whole disk is copied into a standalone overlay',
  };
}

export function fullLayerId(layerId: string): string {
  return `f-${layerId}`.slice(0, 64);
}

export interface MergeStep {
  /** The older of the two layers (its parent becomes the merged layer's parent). */
  lower: string;
  upper: string;
  merged: string;
}

/**
 * The compaction rule, applied after every migration at the site the VM left (its chain is offline
 * there): while the chain is deeper than `maxDepth`, merge the two oldest layers above the bottom
 * one. The bottom layer (usually a big base image shared by VMs) is never rewritten. The merged id
 * is `mergeId(lower, upper)`, a deterministic function, so the rule is a left fold: compacting a
 * chain, appending layers and compacting again gives the same ids and content as compacting once,
 * at either site, whenever it runs.
 */
export function compactionPlan(chain: readonly string[], maxDepth: number, mergeId: (lower: string, upper: string) => string): { steps: MergeStep[]; result: string[] } {
  if (!Number.isInteger(maxDepth) || maxDepth < 2) throw new RangeError(`maxDepth must be an integer >= 2, got ${maxDepth}`);
  const result = [...chain];
  const steps: MergeStep[] = [];
  while (result.length > maxDepth) {
    const [lower, upper] = [result[1], result[2]];
    if (lower === undefined || upper === undefined) break;
    const merged = mergeId(lower, upper);
    steps.push({ lower, upper, merged });
    result.splice(1, 2, merged);
  }
  return { steps, result };
}
