// The dedup chunk store (src/migrator/dedup/store.ts) on a temp directory: bounded LRU, checksums on read,
// restart from the index, rebuild from the chunk files when the index is damaged or missing (a crash).
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chunkHash, hashKey } from '../../src/migrator/dedup/hash.ts';
import { ChunkStore } from '../../src/migrator/dedup/store.ts';
import { mulberry32, randomBytes } from '../support/dedup.ts';

const rand = mulberry32(42);
const chunk = (n = 4096) => {
  const bytes = randomBytes(rand, n);
  return { key: hashKey(chunkHash(bytes)), bytes };
};

describe('dedup chunk store', () => {
  let root: string;
  let n = 0;
  const freshDir = () => join(root, `s${n++}`);

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'sb-dedup-store-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('put, get, has; a chunk is one file named by its hash under a fan-out', async () => {
    const dir = freshDir();
    const store = await ChunkStore.open(dir, { maxBytes: 1 << 20 });
    const a = chunk();
    assert.equal(store.has(a.key), false);
    assert.equal(await store.get(a.key), undefined);
    assert.equal(await store.put(a.key, a.bytes), true);
    assert.equal(store.has(a.key), true);
    assert.deepEqual(Buffer.from((await store.get(a.key)) ?? []), a.bytes);
    assert.deepEqual(await readFile(join(dir, 'chunks', a.key.slice(0, 2), a.key)), a.bytes);
    assert.equal(await store.put('not-a-hash', a.bytes), false);
    assert.deepEqual({ chunks: store.stats.chunks, bytes: store.stats.bytes, hits: store.stats.hits, misses: store.stats.misses }, { chunks: 1, bytes: 4096, hits: 1, misses: 1 });
    await store.close();
  });

  test('bounded in bytes, least recently used out first', async () => {
    const store = await ChunkStore.open(freshDir(), { maxBytes: 10 * 4096 });
    const chunks = Array.from({ length: 10 }, () => chunk());
    for (const c of chunks) await store.put(c.key, c.bytes);
    // Use the oldest: it becomes the most recent.
    assert.ok(await store.get((chunks[0] as { key: string }).key));
    const more = Array.from({ length: 3 }, () => chunk());
    for (const c of more) await store.put(c.key, c.bytes);
    await store.flush();
    assert.equal(store.stats.bytes, 10 * 4096);
    assert.equal(store.stats.evicted, 3);
    assert.deepEqual(
      chunks.map((c) => store.has(c.key)),
      [true, false, false, false, true, true, true, true, true, true],
    );
    assert.deepEqual(store.keys().slice(0, 4), [...more.map((c) => c.key).reverse(), (chunks[0] as { key: string }).key]);
    for (const c of chunks.slice(1, 4)) assert.equal(await store.get(c.key), undefined);
    // Evicted files are gone from disk.
    const files = (await Promise.all(Array.from({ length: 256 }, (_, i) => readdir(join(store.dir, 'chunks', i.toString(16).padStart(2, '0')))))).flat();
    assert.equal(files.length, 10);
    await store.close();
  });

  test('a new bound is in force at once: a smaller one evicts least recently used chunks', async () => {
    const store = await ChunkStore.open(freshDir(), { maxBytes: 10 * 4096 });
    const chunks = Array.from({ length: 10 }, () => chunk());
    for (const c of chunks) await store.put(c.key, c.bytes);
    store.setMaxBytes(4 * 4096);
    assert.equal(store.maxBytes, 4 * 4096);
    assert.equal(store.stats.bytes, 4 * 4096);
    assert.deepEqual(chunks.map((c) => store.has(c.key)), [...new Array<boolean>(6).fill(false), true, true, true, true]);
    store.setMaxBytes(8 * 4096);
    for (const c of chunks.slice(0, 4)) await store.put(c.key, c.bytes);
    assert.equal(store.stats.chunks, 8);
    assert.throws(() => store.setMaxBytes(0), RangeError);
    await store.close();
  });

  test('a damaged chunk (flipped byte, truncated, emptied) reads as missing and is deleted', async () => {
    const store = await ChunkStore.open(freshDir(), { maxBytes: 1 << 20 });
    const [a, b, c, d] = [chunk(), chunk(), chunk(), chunk()];
    for (const x of [a, b, c, d]) await store.put(x.key, x.bytes);
    const flipped = Buffer.from(a.bytes);
    flipped[100] = (flipped[100] as number) ^ 0x10;
    await writeFile(store.pathOf(a.key), flipped);
    await truncate(store.pathOf(b.key), 1000);
    await writeFile(store.pathOf(c.key), '');
    for (const x of [a, b, c]) {
      assert.equal(await store.get(x.key), undefined);
      assert.equal(store.has(x.key), false);
    }
    assert.equal(store.stats.corrupt, 3);
    await store.flush();
    await assert.rejects(readFile(store.pathOf(a.key)), { code: 'ENOENT' });
    assert.deepEqual(Buffer.from((await store.get(d.key)) ?? []), d.bytes);
    // A chunk deleted behind the store's back reads as missing too.
    await rm(store.pathOf(d.key));
    assert.equal(await store.get(d.key), undefined);
    assert.equal(store.has(d.key), false);
    await store.close();
  });

  test('survives a restart: from its index, LRU order kept', async () => {
    const dir = freshDir();
    const store = await ChunkStore.open(dir, { maxBytes: 1 << 20 });
    const chunks = Array.from({ length: 20 }, () => chunk(randomBytesLength()));
    for (const c of chunks) await store.put(c.key, c.bytes);
    await store.get((chunks[3] as { key: string }).key);
    const order = store.keys();
    await store.close();
    const again = await ChunkStore.open(dir, { maxBytes: 1 << 20 });
    assert.equal(again.stats.openedFrom, 'index');
    assert.deepEqual(again.keys(), order);
    assert.equal(again.stats.bytes, chunks.reduce((s, c) => s + c.bytes.length, 0));
    for (const c of chunks) assert.deepEqual(Buffer.from((await again.get(c.key)) ?? []), c.bytes);
    await again.close();
    // A smaller bound on reopening evicts down to it.
    const smaller = await ChunkStore.open(dir, { maxBytes: 20_000 });
    assert.ok(smaller.stats.bytes <= 20_000);
    await smaller.close();
  });

  test('a damaged or missing index (a crash) is rebuilt from the chunk files', async () => {
    const dir = freshDir();
    const store = await ChunkStore.open(dir, { maxBytes: 1 << 20 });
    const chunks = Array.from({ length: 12 }, () => chunk());
    for (const c of chunks) await store.put(c.key, c.bytes);
    await store.close();
    const index = await readFile(join(dir, 'index'));
    index[20] = (index[20] as number) ^ 1;
    await writeFile(join(dir, 'index'), index);
    await writeFile(join(dir, 'chunks', '00', 'stray.tmp'), 'x');
    const rebuilt = await ChunkStore.open(dir, { maxBytes: 1 << 20 });
    assert.equal(rebuilt.stats.openedFrom, 'scan');
    assert.deepEqual(new Set(rebuilt.keys()), new Set(chunks.map((c) => c.key)));
    assert.equal(rebuilt.stats.bytes, 12 * 4096);
    await assert.rejects(readFile(join(dir, 'chunks', '00', 'stray.tmp')), { code: 'ENOENT' });
    // No close(): as after a crash. The index was removed when the store opened.
    const extra = chunk();
    await rebuilt.put(extra.key, extra.bytes);
    await assert.rejects(readFile(join(dir, 'index')), { code: 'ENOENT' });
    const afterCrash = await ChunkStore.open(dir, { maxBytes: 1 << 20 });
    assert.equal(afterCrash.stats.openedFrom, 'scan');
    assert.equal(afterCrash.has(extra.key), true);
    assert.equal(afterCrash.stats.chunks, 13);
    await afterCrash.close();
  });

  test('writes in flight: readable at once, skipped beyond the in-flight bound, deduplicated', async () => {
    const store = await ChunkStore.open(freshDir(), { maxBytes: 1 << 20, maxPendingBytes: 3 * 4096 });
    const chunks = Array.from({ length: 5 }, () => chunk());
    const puts = chunks.map((c) => store.put(c.key, c.bytes));
    const again = store.put((chunks[0] as { key: string }).key, (chunks[0] as { bytes: Buffer }).bytes);
    assert.deepEqual(Buffer.from((await store.get((chunks[1] as { key: string }).key)) ?? []), (chunks[1] as { bytes: Buffer }).bytes);
    assert.deepEqual(await Promise.all(puts), [true, true, true, false, false]);
    assert.equal(await again, true);
    assert.equal(store.stats.skipped, 2);
    assert.equal(store.stats.written, 3);
    await store.close();
  });
});

function randomBytesLength(): number {
  return 1024 + Math.floor(rand() * 15_000);
}
