// A per-VM chunk store on disk: one file per chunk, named by the chunk's hash, under a 256-way fan-out
// (`chunks/ab/ab…`), bounded in bytes with exact LRU eviction. It is a cache: writing may be skipped
// (too many writes in flight, disk errors) and a chunk may vanish; callers fall back to asking the peer.
//
// Checksums: a chunk's name is its hash (SHA-256/128 of its bytes), so every read re-hashes the bytes and
// compares. A chunk that fails (torn write, bit rot, truncation) is treated as missing and deleted.
// Files are written in place, not via rename: a torn write is caught by that check.
//
// Restart: the index (`index`: hash and size of every chunk in LRU order, with a SHA-256 trailer) is written
// by flush()/close() and removed by open() once loaded, so after a crash there is no index and the store
// is rebuilt from the chunk files (size from stat, recency from mtime). A damaged index is rebuilt the same
// way. A chunk listed in a valid index but missing on disk is dropped when first read.
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkHash, hashKey } from './hash.ts';

const INDEX_MAGIC = Buffer.from('SBCI');
const INDEX_VERSION = 1;
const INDEX_ENTRY_BYTES = 16 + 4;
const KEY_PATTERN = /^[0-9a-f]{32}$/;

export interface ChunkStoreOptions {
  /** The most bytes of chunk data kept (pending writes included). */
  maxBytes: number;
  /** put() skips (returns false) while this many bytes are being written. Default 64 MiB. */
  maxPendingBytes?: number;
}

export interface ChunkStoreStats {
  chunks: number;
  bytes: number;
  hits: number;
  misses: number;
  /** Chunks that failed their checksum on read (and were deleted). */
  corrupt: number;
  evicted: number;
  written: number;
  /** put() calls skipped because too much was in flight. */
  skipped: number;
  writeErrors: number;
  /** How the store was opened: from its index, or rebuilt from the chunk files. */
  openedFrom: 'index' | 'scan';
}

interface Pending {
  bytes: Uint8Array;
  done: Promise<boolean>;
}

export class ChunkStore {
  readonly dir: string;
  readonly maxPendingBytes: number;
  #maxBytes: number;
  /** Written chunks: key → size, least recently used first. */
  #lru = new Map<string, number>();
  #bytes = 0;
  #pending = new Map<string, Pending>();
  #pendingBytes = 0;
  /** Deletions in flight, by key: a put of the same key waits for them. */
  #unlinks = new Map<string, Promise<void>>();
  #closed = false;
  #stats: Omit<ChunkStoreStats, 'chunks' | 'bytes'>;

  private constructor(dir: string, options: ChunkStoreOptions, openedFrom: 'index' | 'scan') {
    this.dir = dir;
    this.#maxBytes = options.maxBytes;
    this.maxPendingBytes = options.maxPendingBytes ?? 64 * 1024 * 1024;
    this.#stats = { hits: 0, misses: 0, corrupt: 0, evicted: 0, written: 0, skipped: 0, writeErrors: 0, openedFrom };
  }

  /** Opens (creating if needed) the store in `dir`, from its index or, if that is missing or damaged, from a scan. */
  static async open(dir: string, options: ChunkStoreOptions): Promise<ChunkStore> {
    checkMaxBytes(options.maxBytes);
    await mkdir(join(dir, 'chunks'), { recursive: true, mode: 0o700 });
    await Promise.all(Array.from({ length: 256 }, (_, i) => mkdir(join(dir, 'chunks', i.toString(16).padStart(2, '0')), { recursive: true })));
    const indexPath = join(dir, 'index');
    const entries = await readIndex(indexPath);
    const store = new ChunkStore(dir, options, entries === undefined ? 'scan' : 'index');
    for (const [key, size] of entries ?? (await scan(join(dir, 'chunks')))) {
      if (store.#lru.has(key)) continue;
      store.#lru.set(key, size);
      store.#bytes += size;
    }
    // From here until close() the index on disk would be stale: remove it, so a crash means a rescan.
    await unlink(indexPath).catch(ignoreMissing);
    store.#evict();
    return store;
  }

  /** The most bytes of chunk data kept. */
  get maxBytes(): number {
    return this.#maxBytes;
  }

  /** A new bound, in force at once: a smaller one evicts least recently used chunks until it holds. */
  setMaxBytes(maxBytes: number): void {
    checkMaxBytes(maxBytes);
    this.#maxBytes = maxBytes;
    this.#evict();
  }

  get stats(): ChunkStoreStats {
    return { ...this.#stats, chunks: this.#lru.size + this.#pending.size, bytes: this.#bytes + this.#pendingBytes };
  }

  /** Whether the store (probably) holds `key`: a read may still find it damaged. */
  has(key: string): boolean {
    return this.#lru.has(key) || this.#pending.has(key);
  }

  /** Every key held, most recently used first. */
  keys(): string[] {
    const keys = [...this.#pending.keys(), ...[...this.#lru.keys()].reverse()];
    return keys;
  }

  pathOf(key: string): string {
    return join(this.dir, 'chunks', key.slice(0, 2), key);
  }

  /** The chunk's bytes if held and intact (then it becomes the most recently used); otherwise undefined. */
  async get(key: string): Promise<Uint8Array | undefined> {
    const pending = this.#pending.get(key);
    if (pending !== undefined) {
      this.#stats.hits += 1;
      return pending.bytes;
    }
    const size = this.#lru.get(key);
    if (size === undefined || !KEY_PATTERN.test(key)) {
      this.#stats.misses += 1;
      return undefined;
    }
    let bytes: Buffer;
    try {
      bytes = await readFile(this.pathOf(key));
    } catch {
      this.#forget(key);
      this.#stats.misses += 1;
      return undefined;
    }
    if (this.#lru.get(key) !== size) {
      // Evicted or replaced while we read.
      this.#stats.misses += 1;
      return undefined;
    }
    if (bytes.length !== size || hashKey(chunkHash(bytes)) !== key) {
      this.#stats.corrupt += 1;
      this.#stats.misses += 1;
      this.#forget(key);
      this.#unlink(key);
      return undefined;
    }
    this.#lru.delete(key);
    this.#lru.set(key, size);
    this.#stats.hits += 1;
    return bytes;
  }

  /**
   * Stores a chunk whose hash the caller has computed (or verified) as `key`. Best effort: resolves true
   * once written, false if skipped (too much in flight, larger than the store, closed, or a disk error).
   * Holding it already just makes it the most recently used.
   */
  put(key: string, bytes: Uint8Array): Promise<boolean> {
    const size = this.#lru.get(key);
    if (size !== undefined) {
      this.#lru.delete(key);
      this.#lru.set(key, size);
      return Promise.resolve(true);
    }
    const pending = this.#pending.get(key);
    if (pending !== undefined) return pending.done;
    if (this.#closed || bytes.length === 0 || bytes.length > this.#maxBytes || !KEY_PATTERN.test(key)) return Promise.resolve(false);
    if (this.#pendingBytes + bytes.length > this.maxPendingBytes) {
      this.#stats.skipped += 1;
      return Promise.resolve(false);
    }
    this.#pendingBytes += bytes.length;
    const unlinking = this.#unlinks.get(key) ?? Promise.resolve();
    const done = unlinking.then(() => writeFile(this.pathOf(key), bytes)).then(
      () => {
        this.#pending.delete(key);
        this.#pendingBytes -= bytes.length;
        this.#lru.set(key, bytes.length);
        this.#bytes += bytes.length;
        this.#stats.written += 1;
        this.#evict();
        return true;
      },
      () => {
        this.#pending.delete(key);
        this.#pendingBytes -= bytes.length;
        this.#stats.writeErrors += 1;
        this.#unlink(key);
        return false;
      },
    );
    this.#pending.set(key, { bytes, done });
    this.#evict();
    return done;
  }

  /** Removes a chunk (e.g. one the caller found wrong). */
  async delete(key: string): Promise<void> {
    await this.#pending.get(key)?.done;
    if (this.#forget(key)) this.#unlink(key);
    await this.#settle();
  }

  /** Waits for writes and deletions in flight, then writes the index. */
  async flush(): Promise<void> {
    await this.#settle();
    const entries = [...this.#lru];
    const body = Buffer.alloc(12 + entries.length * INDEX_ENTRY_BYTES);
    INDEX_MAGIC.copy(body, 0);
    body[4] = INDEX_VERSION;
    body.writeUInt32BE(entries.length, 8);
    let at = 12;
    for (const [key, size] of entries) {
      body.write(key, at, 'hex');
      body.writeUInt32BE(size, at + 16);
      at += INDEX_ENTRY_BYTES;
    }
    const sum = createHash('sha256').update(body).digest();
    const tmp = join(this.dir, 'index.tmp');
    await writeFile(tmp, Buffer.concat([body, sum]));
    await rename(tmp, join(this.dir, 'index'));
  }

  /** Flushes; later puts are skipped. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.flush();
  }

  async #settle(): Promise<void> {
    while (this.#pending.size > 0 || this.#unlinks.size > 0) {
      await Promise.all([...[...this.#pending.values()].map((p) => p.done), ...this.#unlinks.values()]);
    }
  }

  #forget(key: string): boolean {
    const size = this.#lru.get(key);
    if (size === undefined) return false;
    this.#lru.delete(key);
    this.#bytes -= size;
    return true;
  }

  #unlink(key: string): void {
    const before = this.#unlinks.get(key) ?? Promise.resolve();
    const p: Promise<void> = before
      .then(() => unlink(this.pathOf(key)))
      .catch(() => {}) // gone already, or it stays behind: the checksum catches a wrong one
      .finally(() => {
        if (this.#unlinks.get(key) === p) this.#unlinks.delete(key);
      });
    this.#unlinks.set(key, p);
  }

  /** Drops least recently used written chunks until the bound holds (pending writes count, but stay). */
  #evict(): void {
    for (const [key, size] of this.#lru) {
      if (this.#bytes + this.#pendingBytes <= this.#maxBytes) break;
      this.#lru.delete(key);
      this.#bytes -= size;
      this.#stats.evicted += 1;
      this.#unlink(key);
    }
  }
}

function checkMaxBytes(maxBytes: number): void {
  if (!(Number.isSafeInteger(maxBytes) && maxBytes > 0)) throw new RangeError(`maxBytes must be a positive integer`);
}

function ignoreMissing(error: unknown): void {
  if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
}

/** The index's entries (least recently used first), or undefined if it is missing or damaged. */
async function readIndex(path: string): Promise<[string, number][] | undefined> {
  let data: Buffer;
  try {
    data = await readFile(path);
  } catch {
    return undefined;
  }
  if (data.length < 12 + 32) return undefined;
  const body = data.subarray(0, data.length - 32);
  if (!createHash('sha256').update(body).digest().equals(data.subarray(data.length - 32))) return undefined;
  if (!body.subarray(0, 4).equals(INDEX_MAGIC) || body[4] !== INDEX_VERSION) return undefined;
  const count = body.readUInt32BE(8);
  if (body.length !== 12 + count * INDEX_ENTRY_BYTES) return undefined;
  const entries: [string, number][] = [];
  for (let at = 12; at < body.length; at += INDEX_ENTRY_BYTES) {
    const size = body.readUInt32BE(at + 16);
    if (size === 0) return undefined;
    entries.push([body.toString('hex', at, at + 16), size]);
  }
  return entries;
}

/** Every chunk file (least recently written first); stray files (not a hash, empty) are removed. */
async function scan(root: string): Promise<[string, number][]> {
  const found: { key: string; size: number; mtime: number }[] = [];
  for (let i = 0; i < 256; i += 1) {
    const dir = join(root, i.toString(16).padStart(2, '0'));
    const names = await readdir(dir).catch(() => [] as string[]);
    await Promise.all(
      names.map(async (name) => {
        const path = join(dir, name);
        const info = await stat(path).catch(() => undefined);
        if (info === undefined) return;
        if (!KEY_PATTERN.test(name) || !name.startsWith(dir.slice(-2)) || !info.isFile() || info.size === 0) {
          if (info.isFile()) await unlink(path).catch(() => {});
          return;
        }
        found.push({ key: name, size: info.size, mtime: info.mtimeMs });
      }),
    );
  }
  found.sort((a, b) => a.mtime - b.mtime || (a.key < b.key ? -1 : 1));
  return found.map((f) => [f.key, f.size]);
}
