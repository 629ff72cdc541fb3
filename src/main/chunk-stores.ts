// The dedup chunk stores of a site, one per VM (`<data>/chunks/<vm>/`): opened when a migration of the
// VM first needs one, kept open while the agent runs (a VM that leaves and comes back finds what it
// left in memory as well as on disk), closed with the agent (which writes each store's index).
import { join } from 'node:path';
import { ChunkStore } from '../migrator/dedup/store.ts';

/** A VM's store holds at most this many times its RAM. */
export const CHUNK_STORE_RAM_FACTOR = 2;

const MiB = 1024 * 1024;

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
   * The store of `vm`, bounded to CHUNK_STORE_RAM_FACTOR × its RAM (the bound of the first open holds
   * while the agent runs). Undefined if it cannot be opened: dedup then runs without a store (still
   * correct, only less saved), and the next migration tries again.
   */
  get(vm: string, memoryMiB: number): Promise<ChunkStore | undefined> {
    if (this.#closed) return Promise.resolve(undefined);
    let store = this.#open.get(vm);
    if (store === undefined) {
      store = ChunkStore.open(join(this.dir, vm), { maxBytes: Math.max(1, Math.round(CHUNK_STORE_RAM_FACTOR * memoryMiB)) * MiB }).catch((error: unknown) => {
        this.#log(`the dedup chunk store of ${vm} could not be opened (this migration goes without it): ${(error as Error).message}`);
        this.#open.delete(vm);
        return undefined;
      });
      this.#open.set(vm, store);
    }
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
