// Shared by the dedup tests: a seeded PRNG, VM-memory-like test data, mutations, and a transfer between a
// DedupSender and a DedupReceiver joined in process (optionally through a tap that sees or alters frames).
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import { chunkBoundaries } from '../../src/migrator/dedup/common/chunker.ts';
import { DedupReceiver, type DedupReceiverOptions, type DedupReceiverStats } from '../../src/migrator/dedup/decoder.ts';
import { DedupSender, type DedupSenderOptions, type DedupSenderStats } from '../../src/migrator/dedup/encoder.ts';
import { chunkHash, hashKey } from '../../src/migrator/dedup/hash.ts';
import type { ChunkStore } from '../../src/migrator/dedup/store.ts';

export type Rand = () => number;

/** mulberry32: the same sequence on every machine for a given seed; floats in [0, 1). */
export function mulberry32(seed: number): Rand {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomInt(rand: Rand, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

export function randomBytes(rand: Rand, n: number): Buffer {
  const out = Buffer.alloc(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) out.writeUInt32LE(Math.floor(rand() * 4294967296), i);
  for (; i < n; i += 1) out[i] = Math.floor(rand() * 256);
  return out;
}

const PAGE = 4096;

/**
 * Something like a RAM image: 4 KiB pages, a third random (compressed data, keys), a quarter zero, the
 * rest copies of a few hundred recurring pages (code, page tables, repeated structures) and text.
 */
export function vmLikeData(rand: Rand, bytes: number): Buffer {
  const pages = Math.ceil(bytes / PAGE);
  const recurring = Array.from({ length: 256 }, () => randomBytes(rand, PAGE));
  const words = ['the', 'qemu', 'page', 'migrate', 'snowbird', 'edge', 'core', 'dirty', 'kernel', 'socket', '\n', 'of', 'and'];
  const out = Buffer.alloc(pages * PAGE);
  for (let p = 0; p < pages; p += 1) {
    const at = p * PAGE;
    const r = rand();
    if (r < 0.34) randomBytes(rand, PAGE).copy(out, at);
    else if (r < 0.59) continue; // zero page
    else if (r < 0.85) (recurring[randomInt(rand, 0, recurring.length - 1)] as Buffer).copy(out, at);
    else {
      let text = '';
      while (text.length < PAGE) text += `${words[randomInt(rand, 0, words.length - 1)]} `;
      out.write(text.slice(0, PAGE), at, 'latin1');
    }
  }
  return out.subarray(0, bytes);
}

/** A copy with about `fraction` of its bytes changed, in runs of 1..4096 bytes at random places. */
export function mutateRuns(rand: Rand, data: Buffer, fraction: number): Buffer {
  const out = Buffer.from(data);
  let budget = Math.round(data.length * fraction);
  while (budget > 0) {
    const length = Math.min(budget, randomInt(rand, 1, 4096));
    const at = randomInt(rand, 0, out.length - length);
    for (let i = 0; i < length; i += 1) out[at + i] = ((out[at + i] as number) + 1 + randomInt(rand, 0, 254)) & 0xff;
    budget -= length;
  }
  return out;
}

/** A copy with `count` insertions and `count` deletions of 1..`maxLength` bytes at random places. */
export function insertDelete(rand: Rand, data: Buffer, count: number, maxLength: number): Buffer {
  let out = Buffer.from(data);
  for (let i = 0; i < count; i += 1) {
    const at = randomInt(rand, 0, out.length);
    out = Buffer.concat([out.subarray(0, at), randomBytes(rand, randomInt(rand, 1, maxLength)), out.subarray(at)]);
    const from = randomInt(rand, 0, out.length - maxLength);
    out = Buffer.concat([out.subarray(0, from), out.subarray(from + randomInt(rand, 1, maxLength))]);
  }
  return out;
}

/** Puts every chunk of `data` into `store`, as a receiver that received it would hold it. */
export async function storeChunks(store: ChunkStore, data: Uint8Array): Promise<number> {
  let start = 0;
  const puts: Promise<boolean>[] = [];
  for (const end of chunkBoundaries(data)) {
    const chunk = data.subarray(start, end);
    puts.push(store.put(hashKey(chunkHash(chunk)), Uint8Array.from(chunk)));
    start = end;
  }
  await Promise.all(puts);
  return puts.length;
}

export interface TransferOptions {
  sender?: DedupSenderOptions;
  receiver?: DedupReceiverOptions;
  /** Writes to the sender's input are cut at random sizes from this PRNG (default: 64 KiB writes). */
  splitRand?: Rand;
  /** Sees every byte chunk going sender → receiver; returns what to pass on. */
  toReceiver?: (bytes: Buffer) => Buffer;
  /** Sees every byte chunk going receiver → sender; returns what to pass on. */
  toSender?: (bytes: Buffer) => Buffer;
  /** Reads the output slowly: pauses for a tick every so many chunks. */
  slowOutput?: boolean;
}

export interface TransferResult {
  output: Buffer;
  sender: DedupSenderStats;
  receiver: DedupReceiverStats;
  /** Bytes that crossed the link, each way. */
  wireToReceiver: number;
  wireToSender: number;
}

/** Pipes `from`'s readable side into `to`'s writable side through `tap`, with backpressure. */
function join(from: Duplex, to: Duplex, tap: ((b: Buffer) => Buffer) | undefined, count: (n: number) => void): void {
  from.on('data', (chunk: Buffer) => {
    const passed = tap === undefined ? chunk : tap(chunk);
    count(passed.length);
    if (!to.write(passed)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
  from.on('end', () => to.end());
}

/** Runs one transfer of `data`; rejects with the first side's error if it fails. */
export async function transfer(data: Buffer, options: TransferOptions = {}): Promise<TransferResult> {
  const sender = new DedupSender(options.sender);
  const receiver = new DedupReceiver(options.receiver);
  const parts: Buffer[] = [];
  let wireToReceiver = 0;
  let wireToSender = 0;
  join(sender.wire, receiver.wire, options.toReceiver, (n) => (wireToReceiver += n));
  join(receiver.wire, sender.wire, options.toSender, (n) => (wireToSender += n));
  const errors: Error[] = [];
  sender.input.on('error', (e) => errors.push(e));
  receiver.output.on('error', (e) => errors.push(e));
  sender.wire.on('error', (e) => errors.push(e));
  receiver.wire.on('error', (e) => errors.push(e));
  let n = 0;
  receiver.output.on('data', (chunk: Buffer) => {
    parts.push(chunk);
    if (options.slowOutput === true && ++n % 50 === 0) {
      receiver.output.pause();
      setTimeout(() => receiver.output.resume(), 1);
    }
  });
  const outputEnded = new Promise<void>((resolve) => receiver.output.once('end', resolve));

  const writing = (async () => {
    const rand = options.splitRand;
    for (let at = 0; at < data.length; ) {
      const size = rand === undefined ? 65536 : randomInt(rand, 1, rand() < 0.1 ? 200_000 : 20_000);
      const ok = sender.input.write(data.subarray(at, at + size));
      at += size;
      if (!ok) await once(sender.input, 'drain');
    }
    sender.input.end();
  })();
  writing.catch(() => {});
  const [senderStats, receiverStats] = await Promise.all([sender.done, receiver.done]);
  await outputEnded;
  await writing;
  return { output: Buffer.concat(parts), sender: senderStats, receiver: receiverStats, wireToReceiver, wireToSender };
}
