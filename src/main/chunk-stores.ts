// The dedup chunk stores of a site, one per VM (`<data>/chunks/<vm>/`): opened when a migration of the
// VM first needs one, kept open while the agent runs (a VM that leaves and comes back finds what it
// left in memory as well as on disk), closed with the agent (which writes each store's index).
import { join } from 'node:path';
import { ChunkStore } from '../migrator/dedup/store.ts';

/**
 * By default a VM's store holds at most this many times its RAM: what dedup carries is the memory
 * stream, and twice the RAM keeps the last two generations of the VM's memory, enough for a VM that
 * comes back to find what it left even after the pages it rewrote while away.
 */
export const CHUNK_STORE_RAM_FACTOR = 2;

const MiB = 1024 * 1024;

/** A VM's store bound in MiB: the one set (settings file `migration.chunkStoreMiB`), else the default from its RAM. */
export function chunkStoreMiB(memoryMiB: number, setMiB?: number): number {
  return setMiB ?? Math.max(1, Math.round(CHUNK_STORE_RAM_FACTOR * memoryMiB));
}

export class ChunkStores {
  readonly dir: string;
  readonly #log: (line: string) => void;
  readonly #open = new Map<string, Promise<ChunkStore | undefined>>();
  #closed = false;

  constructor(dir: string, log: (line: string) => void) {
    this.dir = dir;
    this.#log = log;
  }

  /**
   * The store of `vm`, bounded to `maxMiB` (a store already open takes the new bound, evicting if it
   * shrank). Undefined if it cannot be opened: dedup then runs without a store (still correct, only
   * less saved), and the next migration tries again.
   */
  async get(vm: string, maxMiB: number): Promise<ChunkStore | undefined> {
    if (this.#closed) return undefined;
    let opening = this.#open.get(vm);
    if (opening === undefined) {
      opening = ChunkStore.open(join(this.dir, vm), { maxBytes: maxMiB * MiB }).catch((error: unknown) => {
        this.#log(`the dedup chunk store of ${vm} could not be opened (this migration goes without it): ${(error as Error).message}`);
        this.#open.delete(vm);
        return undefined;
      });
      this.#open.set(vm, opening);
    }
    const store = await opening;
    if (store !== undefined && store.maxBytes !== maxMiB * MiB) store.setMaxBytes(maxMiB * MiB);
    return store;
  }

  /** Flushes and closes every open store; later get()s answer undefined. */
  async close(): Promise<void> {
    this.#closed = true;
    const stores = [...this.#open.entries()];
    this.#open.clear();
    for (const [vm, pending] of stores) {
      const store = await pending;
      await store?.close().catch((error: unknown) => this.#log(`closing the dedup chunk store of ${vm}: ${(error as Error).message}`));
    }
  }
}
