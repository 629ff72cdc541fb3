// FastCDC chunking (src/migrator/dedup/common/chunker.ts): the same boundaries however the stream is
// split into feeds, sizes within bounds, a fixed gear table, and boundaries that follow content.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { AVG_CHUNK_BYTES, Chunker, GEAR, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, chunkBoundaries, fastcdcMask32 } from '../../src/migrator/dedup/common/chunker.ts';
import { mulberry32, randomBytes, randomInt, vmLikeData } from '../support/dedup.ts';

function feedSplit(data: Uint8Array, rand: () => number, maxPiece: number): number[] {
  const chunker = new Chunker();
  const cuts: number[] = [];
  for (let at = 0; at < data.length; ) {
    const n = randomInt(rand, 0, maxPiece);
    cuts.push(...chunker.feed(data.subarray(at, at + n)));
    at += n;
  }
  cuts.push(...chunker.end());
  return cuts;
}

function sizes(cuts: number[]): number[] {
  return cuts.map((end, i) => end - (cuts[i - 1] ?? 0));
}

describe('chunker', () => {
  test('the same boundaries for any split of the input into feeds', () => {
    for (let seed = 1; seed <= 12; seed += 1) {
      const rand = mulberry32(seed);
      const data = seed % 2 === 0 ? randomBytes(rand, 1 << 20) : vmLikeData(rand, (1 << 20) + seed * 777);
      const whole = chunkBoundaries(data);
      assert.equal(whole.at(-1), data.length);
      for (const maxPiece of [1 << 16, 5000, 100]) {
        assert.deepEqual(feedSplit(data, rand, maxPiece), whole, `seed ${seed}, pieces up to ${maxPiece}`);
      }
    }
    // Byte by byte.
    const small = randomBytes(mulberry32(99), 100_000);
    const chunker = new Chunker();
    const cuts: number[] = [];
    for (let i = 0; i < small.length; i += 1) cuts.push(...chunker.feed(small.subarray(i, i + 1)));
    cuts.push(...chunker.end());
    assert.deepEqual(cuts, chunkBoundaries(small));
  });

  test('chunk sizes: min 1 KiB, max 16 KiB, average near 4 KiB on random data', () => {
    const data = randomBytes(mulberry32(5), 8 << 20);
    const s = sizes(chunkBoundaries(data));
    const body = s.slice(0, -1);
    assert.ok(Math.min(...body) >= MIN_CHUNK_BYTES);
    assert.ok(Math.max(...s) <= MAX_CHUNK_BYTES);
    const avg = data.length / s.length;
    // Cut-point skipping adds the minimum to a geometric tail: FastCDC's mean lands a little above 4 KiB.
    assert.ok(avg > AVG_CHUNK_BYTES * 0.9 && avg < AVG_CHUNK_BYTES * 1.4, `average ${avg}`);
    // Normalized chunking: few chunks far from the average.
    const far = body.filter((n) => n < 2048 || n > 8192).length / body.length;
    assert.ok(far < 0.15, `${(far * 100).toFixed(1)}% of chunks below 2 KiB or above 8 KiB`);
  });

  test('runs of one byte value cut at the maximum; an empty stream has no chunks; end() flushes the tail', () => {
    assert.deepEqual(chunkBoundaries(new Uint8Array(40_000)), [16384, 32768, 40_000]);
    assert.deepEqual(chunkBoundaries(new Uint8Array(0)), []);
    assert.deepEqual(chunkBoundaries(new Uint8Array(10)), [10]);
    const chunker = new Chunker();
    assert.deepEqual(chunker.feed(new Uint8Array(500)), []);
    assert.equal(chunker.pending, 500);
    assert.deepEqual(chunker.end(), [500]);
    assert.deepEqual(chunker.end(), []);
  });

  test('the gear table and the masks are fixed: same chunks on every machine and run', () => {
    assert.deepEqual([...GEAR.subarray(0, 4)].map((g) => (g >>> 0).toString(16)), ['7ff6ba8a', '5e3e90f8', '8923726', '12911cbe']);
    // The paper's masks (bits 16..47 of a 64-bit hash) moved down 16 bits: 14 bits before the normal size, 10 after.
    assert.equal(fastcdcMask32(14) >>> 0, 0xd9070353);
    assert.equal(fastcdcMask32(10) >>> 0, 0x59000353);
    const popcount = (x: number) => [...(x >>> 0).toString(2)].filter((b) => b === '1').length;
    assert.equal(popcount(fastcdcMask32(14)), 14);
    assert.equal(popcount(fastcdcMask32(10)), 10);
    // Golden boundaries of a fixed stream: a change here changes every chunk (bump the protocol version).
    const cuts = chunkBoundaries(randomBytes(mulberry32(2024), 1 << 20));
    const digest = createHash('sha256').update(cuts.join(',')).digest('hex').slice(0, 16);
    assert.deepEqual({ count: cuts.length, first: cuts.slice(0, 4), digest }, GOLDEN);
  });

  test('boundaries follow content: an insertion moves only the chunks around it', () => {
    const rand = mulberry32(11);
    const data = randomBytes(rand, 2 << 20);
    const edited = Buffer.concat([data.subarray(0, 1_000_000), randomBytes(rand, 37), data.subarray(1_000_000)]);
    const before = new Set(chunkBoundaries(data).map((c) => (c > 1_000_000 ? c + 37 : c)));
    const after = chunkBoundaries(edited);
    const shared = after.filter((c) => before.has(c)).length;
    assert.ok(after.length - shared <= 3, `${after.length - shared} of ${after.length} boundaries moved`);
  });

  test('options are checked', () => {
    assert.throws(() => new Chunker({ avgSize: 3000 }), RangeError);
    assert.throws(() => new Chunker({ minSize: 8192, avgSize: 4096 }), RangeError);
    assert.throws(() => fastcdcMask32(30), RangeError);
  });
});

const GOLDEN = { count: 228, first: [4272, 8629, 12843, 15765], digest: '37111cb074760f40' };
