// The receiving end of a dedup stream: rebuilds the sender's bytes exactly, in order, on `output`.
// `wire` is the duplex to join to the link stream: the sender's frames come in, and out go this side's
// inventory (what its store holds, at the start), acks (chunks delivered, which open the sender's window),
// needs (refs it could not resolve) and, last, its end (what it rebuilt).
//
// A ref is resolved from the in-memory cache of recent chunks, else from the store (verified there); if
// neither has it, a `need` goes back and the sender answers with the literal. Output stops at the first
// unresolved chunk until it is resolved, so the order is always the sender's. Every literal is checked
// against its hash before it is used or stored.
//
// With `returnPath`, bytes written to `input` (what the local end says back) go to the sender as they
// are, in `return` frames, and the input's end as `return-end`; the transfer is done when both
// directions have ended.
import { Duplex, Readable, Writable } from 'node:stream';
import { zstdDecompressSync } from 'node:zlib';
import {
  DedupDecoder,
  MAX_CHUNK_BYTES,
  MAX_HAVE_HASHES,
  encodeAbort,
  encodeAck,
  encodeEnd,
  encodeHave,
  encodeHeader,
  encodeNeed,
  encodeReturn,
  encodeReturnEnd,
  MAX_BATCH_BYTES,
  type Frame,
} from './common/protocol.ts';
import { Serial } from './common/serial.ts';
import { abortCodeOf, DedupAbortedError, DedupProtocolError, internalError, remoteAbort } from './errors.ts';
import { chunkHash, hashKey, keyBytes } from './hash.ts';
import type { ChunkStore } from './store.ts';

export const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;
export const DEFAULT_READ_AHEAD = 32;

export interface DedupReceiverOptions {
  /** This site's store for the VM: its chunks are offered to the sender, and new chunks are put there. */
  store?: ChunkStore;
  /** In-memory cache of recent chunks (repeats within a transfer). Default 32 MiB. */
  cacheBytes?: number;
  /** Store reads in flight at most. Default 32. */
  readAhead?: number;
  /** Carry `input` back to the sender (the sender must agree). Default false. */
  returnPath?: boolean;
}

export interface DedupReceiverStats {
  /** Chunks and bytes delivered on `output`. */
  chunks: number;
  bytes: number;
  literalChunks: number;
  refChunks: number;
  cacheHits: number;
  storeHits: number;
  /** Needs sent (refs neither the cache nor the store could resolve). */
  needs: number;
  /** Hashes offered in the inventory. */
  inventory: number;
  /** All bytes sent on the wire (to the sender). */
  wireBytes: number;
  /** Bytes carried back from `input`. */
  returnBytes: number;
}

interface Entry {
  key: string;
  length: number;
  bytes: Uint8Array | undefined;
}

export class DedupReceiver {
  /** Join to the link stream: the sender's frames in, this side's frames out. */
  readonly wire: Duplex;
  /** The rebuilt bytes. Destroyed with the error if the transfer fails. */
  readonly output: Readable;
  /** With `returnPath`: the local end's bytes for the sender; end it when the local end ends. */
  readonly input: Writable;
  readonly returnPath: boolean;
  /** Resolves once every byte was delivered to `output` and the sender was told; rejects with a DedupError. */
  readonly done: Promise<DedupReceiverStats>;

  readonly #store: ChunkStore | undefined;
  readonly #cacheBytes: number;
  readonly #readAhead: number;
  #resolve!: (stats: DedupReceiverStats) => void;
  #reject!: (error: Error) => void;
  #settled = false;
  readonly #serial = new Serial((error) => this.#fail(internalError(error), true));

  readonly #decoder = new DedupDecoder('sender');
  #window = 0;
  #inventory: string[] | undefined;
  #inventoryAt = 0;

  #entries: (Entry | undefined)[] = [];
  #head = 0;
  /** Bytes received and not yet delivered. */
  #queuedBytes = 0;
  /** Unresolved refs by key (store read in flight, or need sent). */
  #waiting = new Map<string, Entry[]>();
  #needed = new Set<string>();
  #reads: string[] = [];
  #readsHead = 0;
  #readsInFlight = 0;
  #cache = new Map<string, Uint8Array>();
  #cachedBytes = 0;

  #outputBlocked = false;
  /** push(null) done on the wire: nothing more may be pushed. */
  #wireEnded = false;
  #ackedBytes = 0;
  #ackedChunks = 0;
  #end: { chunks: number; bytes: number } | undefined;
  /** Every forward byte was delivered and the sender told. */
  #forwardDone = false;
  /** `return-end` sent, or no return path. */
  #returnEnded: boolean;
  /** A write to `input` waiting for the wire to take more. */
  #inputCallback: ((error?: Error | null) => void) | undefined;
  /** The local end closed (consumerClosed()): no more forward bytes can be delivered. */
  #consumerGone = false;

  #stats: DedupReceiverStats = { chunks: 0, bytes: 0, literalChunks: 0, refChunks: 0, cacheHits: 0, storeHits: 0, needs: 0, inventory: 0, wireBytes: 0, returnBytes: 0 };

  constructor(options: DedupReceiverOptions = {}) {
    this.#store = options.store;
    this.#cacheBytes = options.cacheBytes ?? DEFAULT_CACHE_BYTES;
    this.#readAhead = Math.max(1, options.readAhead ?? DEFAULT_READ_AHEAD);
    this.returnPath = options.returnPath ?? false;
    this.#returnEnded = !this.returnPath;
    this.done = new Promise<DedupReceiverStats>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {});

    this.output = new Readable({
      highWaterMark: 1024 * 1024,
      read: () =>
        this.#serial.run(() => {
          this.#outputBlocked = false;
          this.#deliver();
        }),
    });

    this.input = new Writable({
      highWaterMark: 256 * 1024,
      write: (chunk: Buffer, _encoding, callback) => this.#serial.run(() => this.#sendBack(chunk, callback)),
      final: (callback) =>
        this.#serial.run(() => {
          if (this.#settled) return callback();
          if (!this.returnPath) return callback();
          this.#push(encodeReturnEnd(this.#stats.returnBytes));
          this.#returnEnded = true;
          callback();
          this.#settleIfDone();
        }),
    });

    this.wire = new Duplex({
      allowHalfOpen: true,
      read: () =>
        this.#serial.run(() => {
          this.#sendInventory();
          const callback = this.#inputCallback;
          this.#inputCallback = undefined;
          callback?.();
        }),
      write: (chunk: Buffer, _encoding, callback) => {
        this.#serial.run(() => {
          if (!this.#settled) this.#receive(chunk);
        });
        callback();
      },
      final: (callback) => {
        this.#serial.run(() => {
          if (!this.#settled) this.#fail(new DedupProtocolError('truncated', 'the dedup sender closed its side before the end of the transfer'), false);
        });
        callback();
      },
    });
    this.wire.on('close', () =>
      this.#serial.run(() => {
        if (!this.#settled) this.#fail(new DedupProtocolError('truncated', 'the dedup stream closed before the transfer completed'), false);
      }),
    );

    this.#inventory = this.#store?.keys() ?? [];
    this.#push(encodeHeader({ role: 'receiver', windowBytes: 0, returnPath: this.returnPath }));
  }

  get stats(): DedupReceiverStats {
    return { ...this.#stats };
  }

  /** Ends the transfer: the sender is told, `done` rejects and `output` is destroyed with `reason`. */
  abort(reason: Error = new DedupAbortedError('cancelled', 'the dedup transfer was cancelled', false)): void {
    this.#serial.run(() => this.#fail(reason, true));
  }

  /**
   * The local end closed: nothing more can be delivered. Fine if everything was (a far end that talks back
   * may close before the sender's end frame comes); the transfer fails if bytes are waiting or still come.
   * `undeliveredBytes`: what the local end's own buffer still held.
   */
  consumerClosed(undeliveredBytes = 0): void {
    this.#serial.run(() => {
      this.#consumerGone = true;
      if (this.#settled) return;
      if (undeliveredBytes > 0 || this.#queuedBytes > 0 || this.output.readableLength > 0) this.#failConsumerGone();
    });
  }

  #failConsumerGone(): void {
    this.#fail(new DedupAbortedError('cancelled', 'the destination closed its socket before the end of the stream (QEMU stopped receiving)', false), true);
  }

  /** Return path: the local end's bytes, in frames of at most 64 KiB; the write completes when the wire takes them. */
  #sendBack(data: Uint8Array, callback: (error?: Error | null) => void): void {
    if (this.#settled) return callback();
    if (!this.returnPath) return callback(new DedupProtocolError('bad-state', 'bytes written to the input of a receiver without a return path'));
    let more = true;
    for (let at = 0; at < data.length; at += MAX_BATCH_BYTES) {
      const piece = data.subarray(at, at + MAX_BATCH_BYTES);
      this.#stats.returnBytes += piece.length;
      more = this.#push(encodeReturn(piece));
    }
    if (more) callback();
    else this.#inputCallback = callback;
  }

  #push(frame: Uint8Array): boolean {
    if (this.#wireEnded || this.wire.destroyed) return false;
    this.#stats.wireBytes += frame.length;
    return this.wire.push(frame);
  }

  #endWire(): void {
    if (this.#wireEnded) return;
    this.#wireEnded = true;
    if (!this.wire.destroyed) this.wire.push(null);
  }

  /** The inventory, as `have` frames, as fast as the wire takes them. */
  #sendInventory(): void {
    const inventory = this.#inventory;
    if (inventory === undefined || this.#settled) return;
    for (;;) {
      const batch = inventory.slice(this.#inventoryAt, this.#inventoryAt + MAX_HAVE_HASHES);
      this.#inventoryAt += batch.length;
      const last = this.#inventoryAt >= inventory.length;
      this.#stats.inventory += batch.length;
      const more = this.#push(encodeHave(batch.map(keyBytes), last));
      if (last) {
        this.#inventory = undefined;
        return;
      }
      if (!more) return;
    }
  }

  // ------------------------------------------------------------------------------------------ frames in

  #receive(data: Uint8Array): void {
    this.#decoder.push(data);
    for (let item = this.#decoder.next(); item !== undefined && !this.#settled; item = this.#decoder.next()) {
      if (item.kind === 'error') return this.#fail(new DedupProtocolError(item.error.code, `dedup sender: ${item.error.message}`), true);
      if (item.kind === 'header') {
        if (item.header.returnPath !== this.returnPath) {
          return this.#fail(
            new DedupProtocolError('return-path-mismatch', `the dedup sender ${item.header.returnPath ? 'needs' : 'has no'} return path, this receiver ${this.returnPath ? 'carries one' : 'carries none'}`),
            true,
          );
        }
        this.#window = item.header.windowBytes;
        if (this.#window < 64 * 1024) return this.#fail(new DedupProtocolError('malformed', `window of ${this.#window} bytes is below 64 KiB`), true);
      } else this.#onFrame(item.frame);
    }
    this.#deliver();
  }

  #onFrame(frame: Frame): void {
    // After the end, only answers to needs may come.
    if (this.#end !== undefined && !(frame.type === 'literal' && frame.answer)) {
      return this.#fail(new DedupProtocolError('bad-state', `${frame.type} frame after the end`), true);
    }
    switch (frame.type) {
      case 'literal':
        return this.#onLiteral(frame);
      case 'ref': {
        const key = hashKey(frame.hash);
        const entry: Entry = { key, length: frame.length, bytes: undefined };
        this.#enqueue(entry);
        this.#stats.refChunks += 1;
        const cached = this.#cache.get(key);
        if (cached !== undefined) {
          this.#touch(key, cached);
          this.#stats.cacheHits += 1;
          this.#fill(entry, cached);
          return;
        }
        const waiters = this.#waiting.get(key);
        if (waiters !== undefined) {
          waiters.push(entry);
          return;
        }
        this.#waiting.set(key, [entry]);
        if (this.#store?.has(key) === true) {
          this.#reads.push(key);
          this.#startReads();
        } else this.#need(key);
        return;
      }
      case 'end':
        this.#end = { chunks: frame.chunks, bytes: frame.bytes };
        return;
      case 'abort':
        return this.#fail(remoteAbort(frame.code, frame.message), false);
      default:
        return;
    }
  }

  #onLiteral(frame: Extract<Frame, { type: 'literal' }>): void {
    const total = frame.chunks.reduce((sum, c) => sum + c.length, 0);
    let raw: Uint8Array;
    if (frame.compressed) {
      try {
        raw = zstdDecompressSync(frame.payload, { maxOutputLength: total });
      } catch (error) {
        return this.#fail(new DedupProtocolError('bad-literal', `a literal does not decompress: ${(error as Error).message}`), true);
      }
      if (raw.length !== total) return this.#fail(new DedupProtocolError('bad-literal', `a literal decompressed to ${raw.length} bytes, not ${total}`), true);
    } else {
      raw = frame.payload;
    }
    let at = 0;
    for (const chunk of frame.chunks) {
      // A copy: the cache and the store must not pin the whole frame.
      const bytes = Buffer.from(raw.subarray(at, at + chunk.length));
      at += chunk.length;
      const key = hashKey(chunk.hash);
      if (hashKey(chunkHash(bytes)) !== key) return this.#fail(new DedupProtocolError('bad-literal', `literal chunk ${key} does not match its hash`), true);
      if (frame.answer) {
        // Supplies what we asked for; a duplicate answer (asked twice, e.g. after a late store read) is dropped.
        if (!this.#needed.delete(key)) continue;
      } else {
        this.#stats.literalChunks += 1;
        this.#enqueue({ key, length: chunk.length, bytes });
      }
      this.#remember(key, bytes);
      this.#resolveWaiters(key, bytes);
      if (this.#settled) return;
    }
  }

  #enqueue(entry: Entry): void {
    if (this.#consumerGone) return this.#failConsumerGone();
    this.#entries.push(entry);
    this.#queuedBytes += entry.length;
    if (this.#queuedBytes > this.#window + MAX_CHUNK_BYTES) {
      this.#fail(new DedupProtocolError('window-exceeded', `the sender sent ${this.#queuedBytes} bytes ahead, beyond its ${this.#window}-byte window`), true);
    }
  }

  #fill(entry: Entry, bytes: Uint8Array): void {
    if (bytes.length !== entry.length) {
      this.#fail(new DedupProtocolError('bad-state', `chunk ${entry.key} is ${bytes.length} bytes, but a ref says ${entry.length}`), true);
      return;
    }
    entry.bytes = bytes;
  }

  #resolveWaiters(key: string, bytes: Uint8Array): void {
    const waiters = this.#waiting.get(key);
    if (waiters === undefined) return;
    this.#waiting.delete(key);
    for (const entry of waiters) this.#fill(entry, bytes);
  }

  #need(key: string): void {
    if (this.#needed.has(key)) return;
    this.#needed.add(key);
    this.#stats.needs += 1;
    this.#push(encodeNeed(keyBytes(key)));
  }

  #startReads(): void {
    const store = this.#store;
    if (store === undefined) return;
    while (this.#readsInFlight < this.#readAhead && this.#readsHead < this.#reads.length) {
      const key = this.#reads[this.#readsHead] as string;
      this.#readsHead += 1;
      this.#readsInFlight += 1;
      store.get(key).then(
        (bytes) => this.#serial.run(() => this.#onRead(key, bytes)),
        () => this.#serial.run(() => this.#onRead(key, undefined)),
      );
    }
    if (this.#readsHead === this.#reads.length) {
      this.#reads = [];
      this.#readsHead = 0;
    }
  }

  #onRead(key: string, bytes: Uint8Array | undefined): void {
    this.#readsInFlight -= 1;
    if (this.#settled) return;
    if (this.#waiting.has(key)) {
      if (bytes === undefined) this.#need(key);
      else {
        this.#stats.storeHits += 1;
        this.#remember(key, bytes);
        this.#resolveWaiters(key, bytes);
      }
    }
    this.#startReads();
    this.#deliver();
  }

  // ------------------------------------------------------------------------------------------ cache

  /** Keeps a verified chunk: in the cache, and in the store (best effort) for later transfers. */
  #remember(key: string, bytes: Uint8Array): void {
    void this.#store?.put(key, bytes);
    if (this.#cacheBytes <= 0 || this.#cache.has(key)) return;
    this.#cache.set(key, bytes);
    this.#cachedBytes += bytes.length;
    for (const [old, value] of this.#cache) {
      if (this.#cachedBytes <= this.#cacheBytes) break;
      this.#cache.delete(old);
      this.#cachedBytes -= value.length;
    }
  }

  #touch(key: string, bytes: Uint8Array): void {
    this.#cache.delete(key);
    this.#cache.set(key, bytes);
  }

  // ------------------------------------------------------------------------------------------ output

  #deliver(): void {
    if (this.#settled) return;
    while (!this.#outputBlocked) {
      const entry = this.#entries[this.#head];
      if (entry?.bytes === undefined) break;
      this.#entries[this.#head] = undefined;
      this.#head += 1;
      this.#queuedBytes -= entry.length;
      this.#stats.chunks += 1;
      this.#stats.bytes += entry.length;
      if (!this.output.push(entry.bytes)) this.#outputBlocked = true;
    }
    if (this.#head > 4096 && this.#head * 2 > this.#entries.length) {
      this.#entries = this.#entries.slice(this.#head);
      this.#head = 0;
    }
    const caughtUp = this.#head === this.#entries.length;
    // Ack every quarter window (the sender stalls only with a full window, so that always comes).
    if (this.#stats.bytes > this.#ackedBytes && this.#stats.bytes - this.#ackedBytes >= this.#window / 4 && !this.#outputBlocked) {
      this.#ackedBytes = this.#stats.bytes;
      this.#ackedChunks = this.#stats.chunks;
      this.#push(encodeAck(this.#ackedChunks));
    }
    if (caughtUp && this.#end !== undefined && !this.#forwardDone) this.#finish(this.#end);
  }

  #finish(end: { chunks: number; bytes: number }): void {
    if (end.chunks !== this.#stats.chunks || end.bytes !== this.#stats.bytes) {
      return this.#fail(
        new DedupProtocolError('count-mismatch', `the sender sent ${end.chunks} chunks / ${end.bytes} bytes, but ${this.#stats.chunks} / ${this.#stats.bytes} arrived`),
        true,
      );
    }
    this.#forwardDone = true;
    this.#cache.clear();
    this.output.push(null);
    this.#push(encodeEnd(this.#stats.chunks, this.#stats.bytes));
    this.#settleIfDone();
  }

  /** Both directions are over: the transfer is done. */
  #settleIfDone(): void {
    if (!this.#forwardDone || !this.#returnEnded || this.#settled) return;
    this.#settled = true;
    this.#endWire();
    this.#resolve(this.stats);
  }

  #fail(error: Error, tellPeer: boolean): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#entries = [];
    this.#waiting.clear();
    this.#cache.clear();
    this.#inventory = undefined;
    if (tellPeer) this.#push(encodeAbort(abortCodeOf(error), error.message));
    this.#endWire();
    this.#reject(error);
    if (!this.output.destroyed) this.output.destroy(error);
    // Without the error (`done` carries it): a one-way receiver's input has nobody watching it.
    this.#inputCallback = undefined;
    if (!this.input.destroyed) this.input.destroy();
  }
}
