// A site's disk layer store: `<data>/layers/`.
//
//   index.json            metadata (LayerIndexSchema): layers, their parents, leaves, checksums,
//                         reference holders; each VM's chain at this site
//   by-id/<id>.qcow2      immutable layers
//   pending/<name>.qcow2  overlays being received by an incoming migration
//   tmp/                  scratch space for compaction
//
// Every layer file names its parent as "../by-id/<parent>.qcow2": the same string is valid from
// by-id/, pending/ and tmp/, so a received overlay becomes a layer by a rename, with no header
// rewrite while QEMU still has it open. A VM's top (in its own folder) names its layer by the
// relative path from that folder.
import { copyFile, mkdir, open, readFile, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { pathExists } from '../local-io.ts';
import { createHash } from 'node:crypto';
import { dirname, join, relative } from 'node:path';
import { z } from 'zod';
import { assertId } from './common/ids.ts';
import { emptyIndex, LayerIndexSchema, vmHolder, type LayerDescriptor, type LayerIndex, type LayerRecord } from './common/model.ts';
import { compactionPlan, matchChain, type ChainMatch, type HeldLayer, type MergeStep } from './common/planner.ts';
import { layerChecksum } from './checksum.ts';
import { commitIntoBacking, createImage, imageInfo, LayerStoreError, setBackingName } from './qemu-img.ts';
import { checkVmName } from '../qemu/common/spec.ts';

export { LayerStoreError } from './qemu-img.ts';

/** Merged layers are named by their two parts, so every site names a merge the same way. */
export function mergedLayerId(lower: string, upper: string): string {
  return `m-${createHash('sha256').update(`${lower}+${upper}`).digest('hex').slice(0, 40)}`;
}

export interface CompactionReport {
  steps: MergeStep[];
  chain: string[];
  skipped?: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Whether the content was read (false: unchanged file since the last verification). */
  reread: boolean;
  reason?: string;
}

/** Writes a file and its directory entry durably: temp file, fsync, rename, fsync the folder. */
export async function writeFileDurable(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.tmp`;
  const handle = await open(tmp, 'w', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, file);
  const dir = await open(dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

function checkVm(vm: string): string {
  const problem = checkVmName(vm);
  if (problem !== undefined) throw new LayerStoreError(problem);
  return vm;
}

export class LayerStore {
  readonly dir: string;
  #index: LayerIndex;
  #lock: Promise<unknown> = Promise.resolve();

  private constructor(dir: string, index: LayerIndex) {
    this.dir = dir;
    this.#index = index;
  }

  /** Opens (creating if needed) the store in `dir` (conventionally `<data>/layers`). */
  static async open(dir: string): Promise<LayerStore> {
    for (const sub of ['by-id', 'pending', 'tmp']) await mkdir(join(dir, sub), { recursive: true, mode: 0o700 });
    const file = join(dir, 'index.json');
    let index: LayerIndex;
    let raw: string | undefined;
    try {
      raw = await readFile(file, 'utf8');
    } catch {
      raw = undefined;
    }
    if (raw === undefined) index = emptyIndex();
    else {
      let json: unknown;
      try {
        json = JSON.parse(raw);
      } catch (cause) {
        throw new LayerStoreError(`${file} is not valid JSON; restore it from a backup or move it away to start an empty store`, { cause });
      }
      const parsed = LayerIndexSchema.safeParse(json);
      if (!parsed.success) throw new LayerStoreError(`${file} is not a valid layer index: ${z.prettifyError(parsed.error)}`);
      index = parsed.data;
    }
    // Leftovers of an interrupted compaction are never referenced.
    for (const name of await readdir(join(dir, 'tmp'))) await rm(join(dir, 'tmp', name), { force: true, recursive: true });
    return new LayerStore(dir, index);
  }

  layerPath(id: string): string {
    return join(this.dir, 'by-id', `${assertId('layer', id)}.qcow2`);
  }

  pendingPath(name: string): string {
    return join(this.dir, 'pending', `${assertId('migration', name)}.qcow2`);
  }

  /** The backing file name a layer file records for `parent`. */
  static layerBackingName(parent: string): string {
    return `../by-id/${assertId('layer', parent)}.qcow2`;
  }

  /** The backing file name an image in `folder` records for layer `id`. */
  backingNameFrom(folder: string, id: string): string {
    return relative(folder, this.layerPath(id));
  }

  get(id: string): LayerRecord | undefined {
    const r = this.#index.layers[id];
    return r === undefined ? undefined : structuredClone(r);
  }

  list(): LayerRecord[] {
    return Object.values(this.#index.layers).map((r) => structuredClone(r));
  }

  chainOf(vm: string): string[] {
    return [...(this.#index.chains[checkVm(vm)] ?? [])];
  }

  /** The VM's chain here as the destination of a migration needs to see it, bottom first. */
  describeChain(vm: string): LayerDescriptor[] {
    return this.chainOf(vm).map((id) => {
      const r = this.#index.layers[id];
      if (r === undefined) throw new LayerStoreError(`the chain of VM "${vm}" names layer ${id}, which is not in the store ${this.dir}`);
      return { id, leaves: [...r.leaves], checksum: r.checksum, virtualSize: r.virtualSize };
    });
  }

  heldLayers(): HeldLayer[] {
    return Object.values(this.#index.layers).map((r) => ({ id: r.id, parent: r.parent, leaves: [...r.leaves], checksum: r.checksum, virtualSize: r.virtualSize }));
  }

  /** Ancestry of a layer, bottom first, ending with `id`. */
  resolve(id: string): string[] {
    const chain: string[] = [];
    for (let cur: string | null = id; cur !== null; ) {
      const r: LayerRecord | undefined = this.#index.layers[cur];
      if (r === undefined) throw new LayerStoreError(`layer ${cur} (in the ancestry of ${id}) is not in the store ${this.dir}`);
      if (chain.includes(cur)) throw new LayerStoreError(`layer ${id} has a cyclic ancestry in ${this.dir}`);
      chain.unshift(cur);
      cur = r.parent;
    }
    return chain;
  }

  /**
   * The destination's side of planning: which of our layers reproduce `source` exactly. The
   * matched layers are verified (checksum, re-read only if the file changed since the last time);
   * a layer that fails is left out and matching runs again without it.
   */
  async match(source: LayerDescriptor[]): Promise<ChainMatch & { failedVerification: string[] }> {
    const failed: string[] = [];
    for (;;) {
      const held = this.heldLayers().filter((l) => !failed.includes(l.id));
      const result = matchChain(source, held);
      let allOk = true;
      for (const id of result.layers) {
        const v = await this.verify(id);
        if (!v.ok) {
          failed.push(id);
          allOk = false;
        }
      }
      if (allOk) return { ...result, failedVerification: failed };
    }
  }

  /** Creates an empty top: standalone (`over: null`) or over layer `over`. */
  async createTop(file: string, options: { virtualSize: number; over: string | null }): Promise<void> {
    if (options.over !== null && this.#index.layers[options.over] === undefined) {
      throw new LayerStoreError(`cannot put a top over layer ${options.over}: it is not in the store ${this.dir}`);
    }
    if (await pathExists(file)) throw new LayerStoreError(`${file} already exists; refusing to overwrite a disk image`);
    await mkdir(dirname(file), { recursive: true });
    await createImage(file, options.virtualSize, options.over === null ? null : this.backingNameFrom(dirname(file), options.over));
  }

  /** Creates the overlay an incoming migration writes into (pending/<name>.qcow2). */
  async createPending(name: string, options: { virtualSize: number; over: string | null }): Promise<string> {
    const file = this.pendingPath(name);
    await rm(file, { force: true });
    if (options.over !== null && this.#index.layers[options.over] === undefined) {
      throw new LayerStoreError(`cannot receive over layer ${options.over}: it is not in the store ${this.dir}`);
    }
    await createImage(file, options.virtualSize, options.over === null ? null : LayerStore.layerBackingName(options.over));
    return file;
  }

  /**
   * Makes `file` the immutable layer `id`. The file is moved to by-id/ (unless it is already there)
   * and, unless `inUse` (QEMU has it open: its header already names "../by-id/<parent>.qcow2"),
   * its backing name is rewritten for by-id/. Idempotent for a layer already recorded identically.
   */
  async freeze(file: string, layer: { id: string; parent: string | null; leaves: string[]; inUse?: boolean; checksum?: boolean }): Promise<LayerRecord> {
    assertId('layer', layer.id);
    for (const leaf of layer.leaves) assertId('layer', leaf);
    return this.#exclusive(async () => {
      const target = this.layerPath(layer.id);
      const existing = this.#index.layers[layer.id];
      if (existing !== undefined) {
        if (existing.parent === layer.parent && existing.leaves.join(',') === layer.leaves.join(',') && (await pathExists(target))) {
          if (file !== target) await rm(file, { force: true });
          return structuredClone(existing);
        }
        throw new LayerStoreError(`layer ${layer.id} already exists in ${this.dir} with different content; layer ids are never reused`);
      }
      if (layer.parent !== null && this.#index.layers[layer.parent] === undefined) {
        throw new LayerStoreError(`cannot freeze ${layer.id} over ${layer.parent}: the parent layer is not in the store ${this.dir}`);
      }
      if (file !== target) {
        try {
          await rename(file, target);
        } catch (cause) {
          if ((cause as NodeJS.ErrnoException).code !== 'EXDEV') throw cause;
          await copyFile(file, target);
          await unlink(file);
        }
      }
      if (!layer.inUse) await setBackingName(target, layer.parent === null ? null : LayerStore.layerBackingName(layer.parent));
      const info = await imageInfo(target, { forceShare: true });
      const record: LayerRecord = {
        id: layer.id,
        parent: layer.parent,
        leaves: [...layer.leaves],
        virtualSize: info.virtualSize,
        checksum: layer.checksum === false ? null : await layerChecksum(target),
        createdAt: new Date().toISOString(),
        refs: [],
      };
      if (record.checksum !== null) record.verified = await this.#stamp(target);
      this.#index.layers[layer.id] = record;
      await this.#save();
      return structuredClone(record);
    });
  }

  /** Checks a layer's content against its recorded checksum (recording it if there was none). */
  async verify(id: string, options: { force?: boolean } = {}): Promise<VerifyResult> {
    return this.#exclusive(async () => {
      const record = this.#index.layers[id];
      if (record === undefined) return { ok: false, reread: false, reason: `layer ${id} is not in the store` };
      const file = this.layerPath(id);
      let st;
      try {
        st = await stat(file);
      } catch {
        return { ok: false, reread: false, reason: `${file} is missing` };
      }
      if (!options.force && record.checksum !== null && record.verified && record.verified.size === st.size && record.verified.mtimeMs === st.mtimeMs) {
        return { ok: true, reread: false };
      }
      let sum: string;
      try {
        sum = await layerChecksum(file);
      } catch (cause) {
        return { ok: false, reread: true, reason: (cause as Error).message };
      }
      if (record.checksum !== null && record.checksum !== sum) {
        return { ok: false, reread: true, reason: `${file} does not match its checksum (recorded ${record.checksum}, found ${sum})` };
      }
      record.checksum = sum;
      record.verified = { size: st.size, mtimeMs: st.mtimeMs, at: new Date().toISOString() };
      await this.#save();
      return { ok: true, reread: true };
    });
  }

  /** Sets the VM's chain at this site (bottom first) and moves its references accordingly. */
  async setChain(vm: string, chain: string[]): Promise<void> {
    checkVm(vm);
    await this.#exclusive(async () => {
      for (const id of chain) if (this.#index.layers[id] === undefined) throw new LayerStoreError(`cannot set the chain of "${vm}": layer ${id} is not in the store`);
      this.#setHolder(vmHolder(vm), chain);
      const { [vm]: _old, ...others } = this.#index.chains;
      this.#index.chains = chain.length === 0 ? others : { ...others, [vm]: [...chain] };
      await this.#save();
    });
  }

  /** Holds layers for something other than a VM chain (an incoming migration); `unpin` lets go. */
  async pin(holder: string, ids: string[]): Promise<void> {
    await this.#exclusive(async () => {
      this.#setHolder(holder, ids.filter((id) => this.#index.layers[id] !== undefined));
      await this.#save();
    });
  }

  async unpin(holder: string): Promise<void> {
    await this.pin(holder, []);
  }

  /**
   * Applies the compaction rule (planner.ts: while deeper than `maxDepth`, merge the two oldest
   * layers above the bottom) to the VM's chain here. Offline only: run it where the VM is not
   * running. Immutable files are never modified in place: the merged layer is built from copies
   * (`cp`, `qemu-img rebase -u`, `qemu-img commit`) and the layer above it gets a new backing name.
   * `top`, if given, is the VM's (stopped) top image, rebased when it sits on a merged layer.
   */
  async compact(vm: string, options: { maxDepth: number; top?: string }): Promise<CompactionReport> {
    checkVm(vm);
    const chain = this.chainOf(vm);
    const plan = compactionPlan(chain, options.maxDepth, mergedLayerId);
    if (plan.steps.length === 0) return { steps: [], chain };
    // Layers above the bottom are rewritten (their backing name); only do it if this VM alone holds them.
    const shared = chain.slice(1).filter((id) => (this.#index.layers[id]?.refs ?? []).some((h) => h !== vmHolder(vm)));
    if (shared.length > 0) return { steps: [], chain, skipped: `layers ${shared.join(', ')} are also held by ${[...new Set(shared.flatMap((id) => this.#index.layers[id]?.refs ?? []))].join(', ')}` };
    let working = [...chain];
    for (const step of plan.steps) {
      const lower = this.#index.layers[step.lower];
      const upper = this.#index.layers[step.upper];
      if (lower === undefined || upper === undefined || upper.parent !== lower.id) {
        throw new LayerStoreError(`cannot compact the chain of "${vm}": ${step.upper} does not sit on ${step.lower} in ${this.dir}`);
      }
      if (this.#index.layers[step.merged] === undefined) {
        const tmpMerged = join(this.dir, 'tmp', `${step.merged}.qcow2`);
        const tmpUpper = join(this.dir, 'tmp', `${step.merged}-upper.qcow2`);
        try {
          await copyFile(this.layerPath(lower.id), tmpMerged, fsConstants.COPYFILE_FICLONE);
          await copyFile(this.layerPath(upper.id), tmpUpper, fsConstants.COPYFILE_FICLONE);
          await setBackingName(tmpUpper, `${step.merged}.qcow2`);
          await commitIntoBacking(tmpUpper);
        } finally {
          await rm(tmpUpper, { force: true });
        }
        // tmpMerged still names lower's parent as "../by-id/<parent>.qcow2".
        await this.#exclusive(async () => {
          await rename(tmpMerged, this.layerPath(step.merged));
          const target = this.layerPath(step.merged);
          const sum = await layerChecksum(target);
          this.#index.layers[step.merged] = {
            id: step.merged,
            parent: lower.parent,
            leaves: [...lower.leaves, ...upper.leaves],
            virtualSize: lower.virtualSize,
            checksum: sum,
            createdAt: new Date().toISOString(),
            refs: [],
            verified: await this.#stamp(target),
          };
          await this.#save();
        });
      }
      const at = working.indexOf(step.upper);
      const child = working[at + 1];
      if (child !== undefined) {
        await setBackingName(this.layerPath(child), LayerStore.layerBackingName(step.merged));
        await this.#exclusive(async () => {
          const c = this.#index.layers[child];
          if (c !== undefined) {
            c.parent = step.merged;
            c.verified = await this.#stamp(this.layerPath(child));
          }
          await this.#save();
        });
      } else if (options.top !== undefined) {
        await setBackingName(options.top, this.backingNameFrom(dirname(options.top), step.merged));
      }
      working = [...working.slice(0, at - 1), step.merged, ...working.slice(at + 1)];
      await this.setChain(vm, working);
    }
    return { steps: plan.steps, chain: working };
  }

  /** Deletes layers nobody holds and no layer sits on; returns their ids. */
  async gc(): Promise<string[]> {
    return this.#exclusive(async () => {
      const deleted: string[] = [];
      for (let changed = true; changed; ) {
        changed = false;
        const parents = new Set(Object.values(this.#index.layers).map((r) => r.parent).filter((p): p is string => p !== null));
        for (const record of Object.values(this.#index.layers)) {
          if (record.refs.length > 0 || parents.has(record.id)) continue;
          await rm(this.layerPath(record.id), { force: true });
          this.#dropRecord(record.id);
          deleted.push(record.id);
          changed = true;
        }
      }
      if (deleted.length > 0) await this.#save();
      return deleted;
    });
  }

  /** Forgets a layer and deletes its file, whoever holds it (repairs and tests). Layers on top of it lose their ancestry. */
  async remove(id: string): Promise<void> {
    await this.#exclusive(async () => {
      await rm(this.layerPath(id), { force: true });
      this.#dropRecord(id);
      for (const [vm, chain] of Object.entries(this.#index.chains)) {
        if (chain.includes(id)) this.#index.chains[vm] = chain.filter((c) => c !== id);
      }
      await this.#save();
    });
  }

  #dropRecord(id: string): void {
    const { [id]: _dropped, ...rest } = this.#index.layers;
    this.#index.layers = rest;
  }

  #setHolder(holder: string, ids: string[]): void {
    for (const record of Object.values(this.#index.layers)) {
      const has = record.refs.includes(holder);
      const should = ids.includes(record.id);
      if (has && !should) record.refs = record.refs.filter((h) => h !== holder);
      if (!has && should) record.refs = [...record.refs, holder];
    }
  }

  async #stamp(file: string): Promise<{ size: number; mtimeMs: number; at: string }> {
    const st = await stat(file);
    return { size: st.size, mtimeMs: st.mtimeMs, at: new Date().toISOString() };
  }

  async #save(): Promise<void> {
    await writeFileDurable(join(this.dir, 'index.json'), `${JSON.stringify(this.#index, null, 2)}\n`);
  }

  /** Serializes index updates within this process (one agent per site). */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#lock.then(fn, fn);
    this.#lock = next.catch(() => undefined);
    return next;
  }
}
