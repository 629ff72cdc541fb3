// A tap on a plain QEMU migration stream (bench:dedup): a TCP forwarder on the host (edge) end of the
// WAN that the source QEMU migrates to (`migrate tcp:TAP`, see plain-qemu.ts `migrateUri`). It passes
// every byte on to the destination's incoming address unchanged, both ways, and cuts the source's
// bytes into the dedup transport's chunks as they pass (the same FastCDC chunker and SHA-256/128 hash
// as src/migrator/dedup). It sits on the edge side of the veth pair, so each byte still crosses the
// limited link once, and QEMU talks to QEMU as before.
//
// With `known` (the chunks of the stream that took the VM away), every chunk of this stream that is
// not in it, counted once, is a chunk that really changed: their bytes go through one zstd stream
// (level 3, zstd's default), whose output size is the floor a chunking transport could reach.
// `saveTo` also writes the raw stream to a file (a real stream for the sender's throughput).
import { createWriteStream, type WriteStream } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { constants as zlibConstants, createZstdCompress, type ZstdCompress } from 'node:zlib';
import { Chunker } from '../../src/migrator/dedup/common/chunker.ts';
import { chunkHash, hashKey } from '../../src/migrator/dedup/hash.ts';
import type { Cleanup } from './cleanup.ts';

export const FLOOR_ZSTD_LEVEL = 3;

export interface TapOptions {
  /** Where the source connects (an address on the host end of the WAN). */
  listen: { host: string; port: number };
  /** The destination's incoming address. */
  target: { host: string; port: number };
  /** Chunk keys (hex) the destination side held before this stream: the rest "really changed". */
  known?: ReadonlySet<string>;
  /** Also write the source's bytes to this file. */
  saveTo?: string;
  cleanup: Cleanup;
}

export interface TapResult {
  /** Bytes and chunks the source sent (the first connection). */
  bytes: number;
  chunks: number;
  /** Every chunk key seen. */
  keys: Set<string>;
  /** With `known`: the chunks not in it (each counted once), their raw bytes and their size through zstd. */
  changed?: { chunks: number; bytes: number; zstdBytes: number };
  /** Connections accepted (QEMU's pre-copy makes one; any further ones are forwarded but not tapped). */
  connections: number;
}

export interface StreamTap {
  /** Waits until the tapped connection has closed and everything is counted. */
  result(timeoutMs: number): Promise<TapResult>;
  close(): Promise<void>;
}

/** Cuts a stream into the dedup transport's chunks; `onChunk` gets each one's bytes (valid during the call). */
class ChunkCutter {
  readonly #chunker = new Chunker();
  #carry: Buffer = Buffer.alloc(0);
  readonly #onChunk: (bytes: Buffer) => void;

  constructor(onChunk: (bytes: Buffer) => void) {
    this.#onChunk = onChunk;
  }

  feed(data: Buffer): void {
    const base = this.#chunker.position;
    let from = 0;
    for (const end of this.#chunker.feed(data)) {
      const to = end - base;
      const piece = data.subarray(from, to);
      this.#onChunk(this.#carry.length > 0 ? Buffer.concat([this.#carry, piece]) : piece);
      this.#carry = Buffer.alloc(0);
      from = to;
    }
    if (from < data.length) this.#carry = Buffer.concat([this.#carry, data.subarray(from)]);
  }

  end(): void {
    if (this.#chunker.end().length > 0) this.#onChunk(this.#carry);
    this.#carry = Buffer.alloc(0);
  }
}

export async function startTap(o: TapOptions): Promise<StreamTap> {
  const keys = new Set<string>();
  const changedKeys = new Set<string>();
  const totals = { bytes: 0, chunks: 0, changedChunks: 0, changedBytes: 0, zstdBytes: 0, connections: 0 };
  let zstd: ZstdCompress | undefined;
  if (o.known) {
    zstd = createZstdCompress({ params: { [zlibConstants.ZSTD_c_compressionLevel]: FLOOR_ZSTD_LEVEL } });
    zstd.on('data', (b: Buffer) => (totals.zstdBytes += b.length));
  }
  const known = o.known;
  const cutter = new ChunkCutter((bytes) => {
    totals.chunks += 1;
    const key = hashKey(chunkHash(bytes));
    keys.add(key);
    if (known === undefined || known.has(key) || changedKeys.has(key)) return;
    changedKeys.add(key);
    totals.changedChunks += 1;
    totals.changedBytes += bytes.length;
    zstd?.write(Buffer.from(bytes)); // a copy: `bytes` may be a view of a socket buffer
  });
  let save: WriteStream | undefined;
  if (o.saveTo) save = createWriteStream(o.saveTo);

  const sockets = new Set<Socket>();
  let settle!: (error?: Error) => void;
  const finished = new Promise<void>((resolve, reject) => (settle = (error) => (error ? reject(error) : resolve())));
  finished.catch(() => undefined); // read through result()

  const server: Server = createServer((client) => {
    totals.connections += 1;
    const tapped = totals.connections === 1;
    const upstream = connect(o.target.port, o.target.host);
    sockets.add(client);
    sockets.add(upstream);
    const fail = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail);
    upstream.on('error', fail);
    if (tapped) {
      client.on('data', (data: Buffer) => {
        totals.bytes += data.length;
        cutter.feed(data);
        save?.write(data);
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => {
      sockets.delete(client);
      upstream.end();
      if (!tapped) return;
      cutter.end();
      void (async () => {
        if (zstd) {
          zstd.end();
          await once(zstd, 'end');
        }
        if (save) {
          save.end();
          await once(save, 'close');
        }
      })().then(() => settle(), (error: unknown) => settle(error as Error));
    });
    upstream.on('close', () => sockets.delete(upstream));
  });
  server.listen(o.listen.port, o.listen.host);
  await once(server, 'listening');

  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    zstd?.destroy();
    save?.destroy();
  };
  const forget = o.cleanup.add(`close the stream tap on ${o.listen.host}:${o.listen.port}`, close);

  return {
    async result(timeoutMs: number): Promise<TapResult> {
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          finished,
          new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`the stream tap saw no finished connection within ${Math.round(timeoutMs / 1000)} s (connections: ${totals.connections})`)), timeoutMs))),
        ]);
      } finally {
        clearTimeout(timer);
      }
      return {
        bytes: totals.bytes,
        chunks: totals.chunks,
        keys,
        ...(known ? { changed: { chunks: totals.changedChunks, bytes: totals.changedBytes, zstdBytes: totals.zstdBytes } } : {}),
        connections: totals.connections,
      };
    },
    async close(): Promise<void> {
      await close();
      forget();
    },
  };
}
