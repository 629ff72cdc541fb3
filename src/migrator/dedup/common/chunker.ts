// Content-defined chunking (FastCDC with normalized chunking, Xia et al., USENIX ATC 2016 / TPDS 2020).
// Pure and streaming: feed() any split of a stream and the boundaries are the same as for the whole.
//
// A gear hash rolls over the bytes of the current chunk: h = (h << 1) + GEAR[byte]. Bit k of h depends on
// the last k + 1 bytes only, so no window has to be kept. A chunk ends after byte i when the hash has all
// the bits of a mask clear: a harder mask (more bits) before the normal size, an easier one after it
// ("normalized chunking", level 2), which narrows the size distribution around the average. The first
// `minSize` bytes of a chunk are skipped, not hashed (cut-point skipping), and `maxSize` forces a cut.
//
// The hash is 32 bits wide (JavaScript's integer arithmetic; a 64-bit hash costs about twice as much per
// byte), so the paper's 64-bit masks, whose bits lie in bits 16..47, are used shifted right by 16: the
// same bit patterns, each bit seeing a window 16 bytes shorter (the whole mask still sees 32 bytes).

/** Chunk sizes of this transport: 1 KiB minimum, 4 KiB average (normal size), 16 KiB maximum. */
export const MIN_CHUNK_BYTES = 1024;
export const AVG_CHUNK_BYTES = 4096;
export const MAX_CHUNK_BYTES = 16 * 1024;

/**
 * The FastCDC reference code's masks (`g_condition_mask`), indexed by log2 of the expected chunk size;
 * 64-bit values with their set bits spread over bits 16..47.
 */
const FASTCDC_MASKS_64: Readonly<Record<number, bigint>> = {
  6: 0x00001803110n,
  7: 0x000018035100n,
  8: 0x00001800035300n,
  9: 0x000019000353000n,
  10: 0x0000590003530000n,
  11: 0x0000d90003530000n,
  12: 0x0000d90103530000n,
  13: 0x0000d90303530000n,
  14: 0x0000d90703530000n,
  15: 0x0003590703530000n,
  16: 0x0007590703530000n,
  17: 0x0007590713530000n,
};

/** A paper mask for 2^bits, as a 32-bit mask for our 32-bit gear hash. */
export function fastcdcMask32(bits: number): number {
  const mask = FASTCDC_MASKS_64[bits];
  if (mask === undefined) throw new RangeError(`no FastCDC mask for 2^${bits}-byte chunks (6..17)`);
  return Number((mask >> 16n) & 0xffffffffn) | 0;
}

/** Normalization level 2: 2 bits more than log2(avg) before the normal size, 2 fewer after it. */
const NORMALIZATION = 2;

/** Deterministic 32-bit PRNG (mulberry32): integer arithmetic only, the same on every machine. */
function mulberry32(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** The seed of the gear table. Changing it (or the generator) changes every chunk: bump the protocol version. */
export const GEAR_SEED = 0x5b1dde0d;

/** 256 random 32-bit values (as int32), one per byte value, from GEAR_SEED. */
export const GEAR: Int32Array = (() => {
  const next = mulberry32(GEAR_SEED);
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i += 1) table[i] = next() | 0;
  return table;
})();

export interface ChunkerOptions {
  minSize?: number;
  /** A power of two between 2^8 and 2^15 (masks exist for those with normalization level 2). */
  avgSize?: number;
  maxSize?: number;
}

/**
 * Streaming chunker. `feed()` returns the ends of the chunks completed by the bytes fed (absolute stream
 * offsets, exclusive, increasing); `end()` returns the end of the last, short chunk if bytes remain. The
 * chunker keeps no bytes, only its position and the rolling hash: the caller keeps the bytes.
 */
export class Chunker {
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  readonly maskS: number;
  readonly maskL: number;
  /** Bytes fed so far. */
  #offset = 0;
  /** Bytes of the current (open) chunk. */
  #len = 0;
  #hash = 0;

  constructor(options: ChunkerOptions = {}) {
    const minSize = options.minSize ?? MIN_CHUNK_BYTES;
    const avgSize = options.avgSize ?? AVG_CHUNK_BYTES;
    const maxSize = options.maxSize ?? MAX_CHUNK_BYTES;
    const bits = Math.log2(avgSize);
    if (!Number.isInteger(bits) || bits < 8 || bits > 15) throw new RangeError(`avgSize must be a power of two from 256 to 32768, not ${avgSize}`);
    if (!(Number.isInteger(minSize) && Number.isInteger(maxSize) && minSize >= 64 && minSize <= avgSize && avgSize <= maxSize)) {
      throw new RangeError(`chunk sizes must satisfy 64 <= min <= avg <= max (got ${minSize}, ${avgSize}, ${maxSize})`);
    }
    this.minSize = minSize;
    this.avgSize = avgSize;
    this.maxSize = maxSize;
    this.maskS = fastcdcMask32(bits + NORMALIZATION);
    this.maskL = fastcdcMask32(bits - NORMALIZATION);
  }

  /** Bytes fed so far (the stream offset after the last byte fed). */
  get position(): number {
    return this.#offset;
  }

  /** Bytes of the current, not yet completed chunk. */
  get pending(): number {
    return this.#len;
  }

  feed(data: Uint8Array): number[] {
    const cuts: number[] = [];
    const n = data.length;
    const { minSize, avgSize, maxSize, maskS, maskL } = this;
    const gear = GEAR;
    let len = this.#len;
    let h = this.#hash;
    let i = 0;
    while (i < n) {
      if (len < minSize) {
        // Cut-point skipping: the first minSize bytes of a chunk are not hashed.
        const skip = Math.min(minSize - len, n - i);
        i += skip;
        len += skip;
        continue;
      }
      let cut = false;
      if (len < avgSize) {
        const start = i;
        const stop = Math.min(n, i + (avgSize - len));
        while (i < stop) {
          h = ((h << 1) + (gear[data[i] as number] as number)) | 0;
          i += 1;
          if ((h & maskS) === 0) {
            cut = true;
            break;
          }
        }
        len += i - start;
      }
      if (!cut && len >= avgSize && i < n) {
        const start = i;
        const stop = Math.min(n, i + (maxSize - len));
        while (i < stop) {
          h = ((h << 1) + (gear[data[i] as number] as number)) | 0;
          i += 1;
          if ((h & maskL) === 0) {
            cut = true;
            break;
          }
        }
        len += i - start;
      }
      if (cut || len >= maxSize) {
        cuts.push(this.#offset + i);
        len = 0;
        h = 0;
      }
    }
    this.#offset += n;
    this.#len = len;
    this.#hash = h;
    return cuts;
  }

  /** Ends the stream: the end of the last chunk if bytes remain since the last cut, else nothing. Resets. */
  end(): number[] {
    const cuts = this.#len > 0 ? [this.#offset] : [];
    this.#len = 0;
    this.#hash = 0;
    return cuts;
  }
}

/** Chunk boundaries (exclusive ends) of a whole buffer. */
export function chunkBoundaries(data: Uint8Array, options?: ChunkerOptions): number[] {
  const chunker = new Chunker(options);
  return [...chunker.feed(data), ...chunker.end()];
}
