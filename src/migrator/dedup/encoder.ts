// The sending end of a dedup stream. Raw bytes written to `input` are cut into content-defined chunks
// and hashed; a chunk the receiver is known to hold goes out as a `ref`, any other in a zstd-compressed
// `literal` batch. `wire` is the duplex to join to the link stream: frames go out of it, and the
// receiver's frames (inventory, acks, needs, end) come into it.
//
// What the receiver holds: its inventory (`have` frames) at the start, plus every chunk sent since.
// That is a belief, not a promise (the receiver's store is a bounded cache), so every ref can come back
// as a `need`. The sender sends at most `windowBytes` raw bytes beyond the receiver's acks and keeps a
// copy of every unacknowledged ref's bytes, so it can always answer; a need for anything else fails the
// transfer with DedupLiteralUnavailableError.
//
// With `returnPath`, the receiver also carries its local end's bytes back, plainly, and they come out of
// `output`; the transfer is done when both directions have ended. The chunker then also cuts a chunk
// that has waited IDLE_FLUSH_MS for more input: the far end may be waiting for those bytes before it
// answers (a post-copy page it asked for), so they must not wait for a content-defined boundary.
import { Duplex, Readable, Writable } from 'node:stream';
import { constants as zlibConstants, zstdCompressSync } from 'node:zlib';
import { Chunker } from './common/chunker.ts';
import { Serial } from './common/serial.ts';
import {
  DedupDecoder,
  MAX_BATCH_BYTES,
  MAX_BATCH_CHUNKS,
  encodeAbort,
  encodeEnd,
  encodeHeader,
  encodeLiteral,
  encodeRef,
  type Frame,
  type StreamHeader,
} from './common/protocol.ts';
import { abortCodeOf, DedupAbortedError, DedupLiteralUnavailableError, DedupProtocolError, internalError, remoteAbort } from './errors.ts';
import { chunkHash, hashKey } from './hash.ts';
import type { ChunkStore } from './store.ts';

export const DEFAULT_WINDOW_BYTES = 16 * 1024 * 1024;
export const DEFAULT_ZSTD_LEVEL = 1;
/** With a return path: how long a partial chunk waits for more input before it is sent as it is. */
export const IDLE_FLUSH_MS = 1;

export interface DedupSenderOptions {
  /** Raw bytes sent beyond the receiver's acks (bounds both sides' memory). Default 16 MiB, at least 64 KiB. */
  windowBytes?: number;
  /** zstd level of literals (negative levels are faster). Default 1. */
  level?: number;
  /** Compress literals. Default true. */
  compress?: boolean;
  /**
   * This site's store for the VM: every chunk sent, as a literal or as a ref, is also put there (best
   * effort), so that when the VM comes back this side holds what it sent away, most recent first.
   */
  store?: ChunkStore;
  /** The receiver carries its local end's bytes back, out of `output` (the receiver must agree). Default false. */
  returnPath?: boolean;
}

export interface DedupSenderStats {
  /** Chunks and raw bytes taken from `input`. */
  chunks: number;
  bytes: number;
  literalChunks: number;
  literalBytes: number;
  refChunks: number;
  refBytes: number;
  /** Literal payload bytes on the wire (after compression). */
  literalWireBytes: number;
  /** All bytes sent on the wire (header and frames). */
  wireBytes: number;
  /** Hashes in the receiver's inventory. */
  inventory: number;
  /** Needs answered with a literal. */
  needs: number;
  /** Bytes that came back on the return path. */
  returnBytes: number;
}

interface Unacked {
  length: number;
  /** Set for refs: the key of the retained bytes. */
  key: string | undefined;
}

interface BatchChunk {
  hash: Uint8Array;
  bytes: Uint8Array;
  length: number;
}

/** A sender's counters before it has sent anything. */
export function emptySenderStats(): DedupSenderStats {
  return { chunks: 0, bytes: 0, literalChunks: 0, literalBytes: 0, refChunks: 0, refBytes: 0, literalWireBytes: 0, wireBytes: 0, inventory: 0, needs: 0, returnBytes: 0 };
}

export class DedupSender {
  /** Raw bytes to send. 'finish' once every byte is on the wire; see `done` for the receiver's confirmation. */
  readonly input: Writable;
  /** Join to the link stream: frames out, the receiver's frames in. */
  readonly wire: Duplex;
  /**
   * The return path's bytes (with `returnPath`); ends with it. Without a return path it ends, empty, once
   * the transfer is done. Destroyed if the transfer fails (without the error, which `done` carries).
   */
  readonly output: Readable;
  /**
   * Resolves once the receiver confirmed every byte (and, with a return path, ended it); rejects with a
   * DedupError (or the wire's error).
   */
  readonly done: Promise<DedupSenderStats>;

  readonly windowBytes: number;
  readonly returnPath: boolean;
  readonly level: number;
  readonly compress: boolean;
  readonly #store: ChunkStore | undefined;

  #resolve!: (stats: DedupSenderStats) => void;
  #reject!: (error: Error) => void;
  #settled = false;
  #failed = false;
  #error: Error | undefined;
  readonly #serial = new Serial((error) => this.#fail(internalError(error), true));

  readonly #decoder = new DedupDecoder('receiver');
  readonly #chunker = new Chunker();
  /** Hashes (hex) the receiver is believed to hold. */
  readonly #known = new Set<string>();
  #ready = false;

  // input side
  #carry: Uint8Array[] = [];
  /** Stream offset of the first byte in #carry. */
  #carryStart = 0;
  #queue: Uint8Array[] = [];
  #queueHead = 0;
  #writeCallback: ((error?: Error | null) => void) | undefined;
  #inputEnded = false;
  #finalCallback: ((error?: Error | null) => void) | undefined;
  #endSent = false;
  /** With a return path: the timer that cuts a partial chunk after IDLE_FLUSH_MS without input. */
  #idleFlush: NodeJS.Timeout | undefined;

  // wire side
  #wireBlocked = false;
  /** push(null) done: nothing more may be pushed. */
  #wireEnded = false;
  #batch: BatchChunk[] = [];
  #batchBytes = 0;
  /** The batch's bytes when its chunks lie back to back in one buffer (they usually do): no copy needed. */
  #batchView: Uint8Array | undefined;
  /** Small frames (refs above all), pushed together. */
  #small: Uint8Array[] = [];
  #smallBytes = 0;
  #unacked: Unacked[] = [];
  #unackedHead = 0;
  #unackedBytes = 0;
  #sentChunks = 0;
  #ackedChunks = 0;
  /** Bytes of unacknowledged refs, by key, with how many unacked refs use them. */
  #retained = new Map<string, { bytes: Uint8Array; count: number }>();
  /** The receiver confirmed the forward bytes (its `end`). */
  #confirmed = false;
  /** The return path ended (its `return-end`), or there is none. */
  #returnEnded: boolean;

  #stats: DedupSenderStats = emptySenderStats();

  constructor(options: DedupSenderOptions = {}) {
    this.windowBytes = options.windowBytes ?? DEFAULT_WINDOW_BYTES;
    if (!Number.isSafeInteger(this.windowBytes) || this.windowBytes < MAX_BATCH_BYTES || this.windowBytes > 0xffffffff) {
      throw new RangeError(`windowBytes must be from ${MAX_BATCH_BYTES} to 2^32 - 1`);
    }
    this.level = options.level ?? DEFAULT_ZSTD_LEVEL;
    this.compress = options.compress ?? true;
    this.#store = options.store;
    this.returnPath = options.returnPath ?? false;
    this.#returnEnded = !this.returnPath;
    // Return bytes come as they come (the wire is never stopped, see below); a source end that stops reading
    // them fails the transfer past a window's worth (see #onFrame).
    this.output = new Readable({ highWaterMark: 256 * 1024, read: () => {} });
    this.done = new Promise<DedupSenderStats>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {}); // a caller that only watches the streams must not get an unhandled rejection

    this.input = new Writable({
      highWaterMark: 256 * 1024,
      write: (chunk: Buffer, _encoding, callback) =>
        this.#run(() => {
          if (this.#failed) return callback(this.#error);
          this.#accept(chunk);
          this.#writeCallback = callback;
          this.#pump();
        }),
      writev: (chunks, callback) =>
        this.#run(() => {
          if (this.#failed) return callback(this.#error);
          for (const { chunk } of chunks) this.#accept(chunk as Buffer);
          this.#writeCallback = callback;
          this.#pump();
        }),
      final: (callback) =>
        this.#run(() => {
          if (this.#failed) return callback(this.#error);
          this.#inputEnded = true;
          this.#disarmIdleFlush();
          this.#cut(this.#chunker.end());
          this.#finalCallback = callback;
          this.#pump();
        }),
    });

    this.wire = new Duplex({
      allowHalfOpen: true,
      readableHighWaterMark: 1024 * 1024,
      read: () =>
        this.#run(() => {
          this.#wireBlocked = false;
          this.#pump();
        }),
      write: (chunk: Buffer, _encoding, callback) => {
        this.#run(() => {
          if (!this.#settled) this.#receive(chunk);
        });
        callback();
      },
      final: (callback) => {
        this.#serial.run(() => {
          if (!this.#settled) this.#fail(new DedupProtocolError('truncated', 'the dedup receiver closed its side before confirming the transfer'), false);
        });
        callback();
      },
    });
    this.wire.on('close', () =>
      this.#run(() => {
        if (!this.#settled) this.#fail(new DedupProtocolError('truncated', 'the dedup stream closed before the transfer completed'), false);
      }),
    );
    this.#push(encodeHeader({ role: 'sender', windowBytes: this.windowBytes, returnPath: this.returnPath }));
    this.#flushSmall();
  }

  get stats(): DedupSenderStats {
    return { ...this.#stats };
  }

  /** Ends the transfer: the receiver is told, `done` rejects and `input` is destroyed with `reason`. */
  abort(reason: Error = new DedupAbortedError('cancelled', 'the dedup transfer was cancelled', false)): void {
    this.#run(() => this.#fail(reason, true));
  }

  // ------------------------------------------------------------------------------------------ input

  #accept(data: Uint8Array): void {
    if (this.#failed || data.length === 0) return;
    this.#carry.push(data);
    this.#cut(this.#chunker.feed(data));
  }

  /**
   * With a return path: cut what the chunker holds if no input comes for IDLE_FLUSH_MS after the queue
   * drained. Not while input waits for the wire or the window: then more bytes are coming anyway, and
   * cutting at each stall would cost dedup on a slow link.
   */
  #armIdleFlush(): void {
    if (!this.returnPath || this.#failed || this.#inputEnded || this.#chunker.pending === 0) return;
    if (this.#idleFlush === undefined) {
      this.#idleFlush = setTimeout(() => this.#run(() => this.#flushIdle()), IDLE_FLUSH_MS);
      this.#idleFlush.unref();
    } else this.#idleFlush.refresh();
  }

  /** Input since the timer was armed either drained (and armed it again) or waits for the wire (a pending write). */
  #flushIdle(): void {
    if (this.#failed || this.#inputEnded || this.#chunker.pending === 0 || this.#writeCallback !== undefined) return;
    this.#cut(this.#chunker.end());
    this.#pump();
  }

  #disarmIdleFlush(): void {
    clearTimeout(this.#idleFlush);
    this.#idleFlush = undefined;
  }

  /** Moves the bytes up to each cut from #carry into the queue of chunks. */
  #cut(cuts: number[]): void {
    for (const end of cuts) {
      const length = end - this.#carryStart;
      const first = this.#carry[0] as Uint8Array;
      let chunk: Uint8Array;
      if (first.length >= length) {
        chunk = first.subarray(0, length);
        if (first.length === length) this.#carry.shift();
        else this.#carry[0] = first.subarray(length);
      } else {
        chunk = new Uint8Array(length);
        let filled = 0;
        while (filled < length) {
          const part = this.#carry[0] as Uint8Array;
          const take = Math.min(part.length, length - filled);
          chunk.set(part.subarray(0, take), filled);
          filled += take;
          if (take === part.length) this.#carry.shift();
          else this.#carry[0] = part.subarray(take);
        }
      }
      this.#carryStart = end;
      this.#queue.push(chunk);
    }
  }

  // ------------------------------------------------------------------------------------------ sending

  #push(frame: Uint8Array): void {
    if (this.#wireEnded) return;
    this.#stats.wireBytes += frame.length;
    if (frame.length < 1024) {
      this.#small.push(frame);
      this.#smallBytes += frame.length;
      if (this.#smallBytes >= 16 * 1024) this.#flushSmall();
      return;
    }
    this.#flushSmall();
    if (!this.wire.push(frame)) this.#wireBlocked = true;
  }

  #flushSmall(): void {
    if (this.#small.length === 0 || this.#wireEnded) return;
    const frames = this.#small.length === 1 ? (this.#small[0] as Uint8Array) : Buffer.concat(this.#small, this.#smallBytes);
    this.#small = [];
    this.#smallBytes = 0;
    if (!this.wire.push(frames)) this.#wireBlocked = true;
  }

  #endWire(): void {
    this.#flushSmall();
    if (this.#wireEnded) return;
    this.#wireEnded = true;
    if (!this.wire.destroyed) this.wire.push(null);
  }

  /** Runs a handler after any running one (see Serial), then sends the small frames it left. */
  #run(handler: () => void): void {
    this.#serial.run(() => {
      handler();
      this.#flushSmall();
    });
  }

  /** Sends queued chunks while the inventory is in, the window has room and the wire takes more. */
  #pump(): void {
    if (this.#failed || !this.#ready) return;
    while (!this.#wireBlocked) {
      const chunk = this.#queue[this.#queueHead];
      if (chunk === undefined) break;
      if (this.#unackedBytes > 0 && this.#unackedBytes + chunk.length > this.windowBytes) break;
      this.#queue[this.#queueHead] = EMPTY;
      this.#queueHead += 1;
      this.#send(chunk);
      if (this.#failed) return;
    }
    // Whatever stopped us (no input, full window, full wire), the receiver must get the batch to make progress.
    this.#flushBatch();
    if (this.#queueHead === this.#queue.length) {
      this.#queue = [];
      this.#queueHead = 0;
      const callback = this.#writeCallback;
      this.#writeCallback = undefined;
      callback?.();
      // Everything taken in is sent but the chunker's tail: if nothing more comes, send that too.
      this.#armIdleFlush();
      if (this.#inputEnded && !this.#endSent && this.#carry.length === 0) {
        this.#endSent = true;
        this.#push(encodeEnd(this.#stats.chunks, this.#stats.bytes));
        const final = this.#finalCallback;
        this.#finalCallback = undefined;
        final?.();
      }
    } else if (this.#queueHead > 4096 && this.#queueHead * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#queueHead);
      this.#queueHead = 0;
    }
  }

  #send(chunk: Uint8Array): void {
    const hash = chunkHash(chunk);
    const key = hashKey(hash);
    const length = chunk.length;
    this.#stats.chunks += 1;
    this.#stats.bytes += length;
    this.#sentChunks += 1;
    this.#unackedBytes += length;
    if (this.#known.has(key)) {
      this.#flushBatch();
      this.#push(encodeRef(hash, length));
      let retained = this.#retained.get(key);
      if (retained === undefined) {
        retained = { bytes: Uint8Array.from(chunk), count: 1 };
        this.#retained.set(key, retained);
      } else retained.count += 1;
      // The receiver holds it; so should we, for the VM's way back (a chunk held already just gets recent).
      if (this.#store !== undefined) void this.#store.put(key, retained.bytes);
      this.#unacked.push({ length, key });
      this.#stats.refChunks += 1;
      this.#stats.refBytes += length;
      return;
    }
    if (this.#batch.length === MAX_BATCH_CHUNKS || this.#batchBytes + length > MAX_BATCH_BYTES) this.#flushBatch();
    const view = this.#batchView;
    if (this.#batch.length === 0) this.#batchView = chunk;
    else if (view !== undefined && chunk.buffer === view.buffer && chunk.byteOffset === view.byteOffset + view.length) {
      this.#batchView = new Uint8Array(view.buffer, view.byteOffset, view.length + length);
    } else this.#batchView = undefined;
    this.#batch.push({ hash, bytes: chunk, length });
    this.#batchBytes += length;
    this.#known.add(key);
    this.#unacked.push({ length, key: undefined });
    this.#stats.literalChunks += 1;
    this.#stats.literalBytes += length;
    if (this.#store !== undefined) void this.#store.put(key, Uint8Array.from(chunk));
  }

  #flushBatch(): void {
    if (this.#batch.length === 0) return;
    const batch = this.#batch;
    const raw = this.#batchView ?? Buffer.concat(batch.map((c) => c.bytes), this.#batchBytes);
    this.#batch = [];
    this.#batchBytes = 0;
    this.#batchView = undefined;
    this.#push(this.#literal(batch, raw, false));
  }

  #literal(chunks: BatchChunk[], raw: Uint8Array, answer: boolean): Uint8Array {
    let payload: Uint8Array = raw;
    let compressed = false;
    if (this.compress) {
      const packed = zstdCompressSync(raw, {
        pledgedSrcSize: raw.length,
        params: { [zlibConstants.ZSTD_c_compressionLevel]: this.level, [zlibConstants.ZSTD_c_checksumFlag]: 0 },
      });
      if (packed.length < raw.length) {
        payload = packed;
        compressed = true;
      }
    }
    this.#stats.literalWireBytes += payload.length;
    return encodeLiteral(chunks, payload, { compressed, answer });
  }

  // ------------------------------------------------------------------------------------------ receiving

  #receive(data: Uint8Array): void {
    this.#decoder.push(data);
    for (let item = this.#decoder.next(); item !== undefined && !this.#settled; item = this.#decoder.next()) {
      if (item.kind === 'error') {
        this.#fail(new DedupProtocolError(item.error.code, `dedup receiver: ${item.error.message}`), true);
        return;
      }
      if (item.kind === 'header') this.#onHeader(item.header);
      else this.#onFrame(item.frame);
    }
  }

  #onHeader(header: StreamHeader): void {
    if (header.returnPath !== this.returnPath) {
      this.#fail(new DedupProtocolError('return-path-mismatch', `the dedup receiver ${header.returnPath ? 'carries' : 'does not carry'} a return path, this sender ${this.returnPath ? 'needs one' : 'has none'}`), true);
    }
  }

  /** Both directions are over: the transfer is done. */
  #settleIfDone(): void {
    if (!this.#confirmed || !this.#returnEnded) return;
    this.#settled = true;
    this.#disarmIdleFlush();
    if (!this.returnPath) this.output.push(null);
    this.#endWire();
    this.#resolve(this.stats);
  }

  #onFrame(frame: Frame): void {
    switch (frame.type) {
      case 'have':
        if (this.#ready) return this.#fail(new DedupProtocolError('bad-state', 'inventory after its last frame'), true);
        for (const hash of frame.hashes) this.#known.add(hashKey(hash));
        this.#stats.inventory += frame.hashes.length;
        if (frame.last) {
          this.#ready = true;
          this.#pump();
        }
        return;
      case 'ack': {
        if (frame.chunks < this.#ackedChunks || frame.chunks > this.#sentChunks) {
          return this.#fail(new DedupProtocolError('bad-state', `ack of ${frame.chunks} chunks (acked ${this.#ackedChunks}, sent ${this.#sentChunks})`), true);
        }
        for (; this.#ackedChunks < frame.chunks; this.#ackedChunks += 1) {
          const entry = this.#unacked[this.#unackedHead] as Unacked;
          this.#unackedHead += 1;
          this.#unackedBytes -= entry.length;
          if (entry.key !== undefined) {
            const retained = this.#retained.get(entry.key);
            if (retained !== undefined && --retained.count === 0) this.#retained.delete(entry.key);
          }
        }
        if (this.#unackedHead > 4096 && this.#unackedHead * 2 > this.#unacked.length) {
          this.#unacked = this.#unacked.slice(this.#unackedHead);
          this.#unackedHead = 0;
        }
        this.#pump();
        return;
      }
      case 'need': {
        const key = hashKey(frame.hash);
        const retained = this.#retained.get(key);
        if (retained === undefined) return this.#fail(new DedupLiteralUnavailableError(key), true);
        this.#stats.needs += 1;
        this.#push(this.#literal([{ hash: frame.hash, bytes: retained.bytes, length: retained.bytes.length }], retained.bytes, true));
        return;
      }
      case 'end':
        if (!this.#endSent || this.#confirmed) return this.#fail(new DedupProtocolError('bad-state', 'the receiver ended before the sender'), true);
        if (frame.chunks !== this.#stats.chunks || frame.bytes !== this.#stats.bytes) {
          return this.#fail(
            new DedupProtocolError('count-mismatch', `the receiver rebuilt ${frame.chunks} chunks / ${frame.bytes} bytes of ${this.#stats.chunks} / ${this.#stats.bytes}`),
            true,
          );
        }
        this.#confirmed = true;
        this.#retained.clear();
        return this.#settleIfDone();
      case 'return':
        if (!this.returnPath || this.#returnEnded) return this.#fail(new DedupProtocolError('bad-state', 'return bytes on a stream without a return path, or after its end'), true);
        this.#stats.returnBytes += frame.payload.length;
        this.output.push(Buffer.from(frame.payload));
        if (this.output.readableLength > this.windowBytes) {
          return this.#fail(new DedupProtocolError('window-exceeded', `${this.output.readableLength} bytes of the return path are waiting for the local end to read them`), true);
        }
        return;
      case 'return-end':
        if (!this.returnPath || this.#returnEnded) return this.#fail(new DedupProtocolError('bad-state', 'a return-end on a stream without a return path, or twice'), true);
        if (frame.bytes !== this.#stats.returnBytes) {
          return this.#fail(new DedupProtocolError('count-mismatch', `the receiver sent ${frame.bytes} return bytes, but ${this.#stats.returnBytes} arrived`), true);
        }
        this.#returnEnded = true;
        this.output.push(null);
        return this.#settleIfDone();
      case 'abort':
        return this.#fail(remoteAbort(frame.code, frame.message), false);
      default:
        // The decoder admits only frames a receiver sends.
        return;
    }
  }

  #fail(error: Error, tellPeer: boolean): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#failed = true;
    this.#error = error;
    this.#disarmIdleFlush();
    this.#retained.clear();
    this.#queue = [];
    this.#carry = [];
    this.#batch = [];
    if (tellPeer) this.#push(encodeAbort(abortCodeOf(error), error.message));
    this.#endWire();
    this.#reject(error);
    const callback = this.#writeCallback ?? this.#finalCallback;
    this.#writeCallback = undefined;
    this.#finalCallback = undefined;
    if (callback !== undefined) callback(error);
    else if (!this.input.destroyed) this.input.destroy(error);
    // Without the error: `done` carries it, and a one-way stream's output has no reader to take it.
    if (!this.output.destroyed) this.output.destroy();
  }
}

const EMPTY = new Uint8Array(0);
