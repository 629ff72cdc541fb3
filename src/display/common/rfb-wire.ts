// Byte-level plumbing shared by the RFB parsers and serializers: a resumable message reader, a
// writer, and Latin-1 text. Internal to src/display/common (the public API is in rfb.ts).
//
// A message reader is a generator that yields how many more bytes it needs and reads them once the
// driver has them. RFB has no length prefix on most messages (a FramebufferUpdate's size is only
// known by walking its rectangles), so parsing must be resumable at any byte; a generator lets each
// message be written as straight-line code and still be fed one byte at a time without re-parsing.

import { rfbError, tooLarge, RfbEncodeError, type RfbProtocolError } from './rfb-errors.ts';

export type ReadOutcome<M> = { ok: true; value: M } | { ok: false; error: RfbProtocolError };
/** Yields the number of further bytes it needs; returns the message or an error. */
export type MessageReader<M> = Generator<number, ReadOutcome<M>, void>;

export function ok<M>(value: M): ReadOutcome<M> {
  return { ok: true, value };
}

export function fail<M>(error: RfbProtocolError): ReadOutcome<M> {
  return { ok: false, error };
}

const EMPTY = new Uint8Array(0);
const MIN_CAPACITY = 256;

/**
 * The bytes of the message in progress. Reads are big-endian, as everything in RFB. A reader may
 * only read bytes it has yielded for; views (`view`) are only valid once the message is complete,
 * because the buffer moves when it grows.
 */
export class ByteReader {
  #buf: Uint8Array = EMPTY;
  #view: DataView = new DataView(EMPTY.buffer);
  #length = 0;
  pos = 0;
  /** What is being read, for the "too large" error the driver reports (e.g. "FramebufferUpdate.rect[2]"). */
  where = '';

  get length(): number {
    return this.#length;
  }

  /**
   * Appends chunk[from, from + n). The buffer grows by doubling as bytes arrive, so a declared
   * length alone allocates nothing and the capacity stays under twice what has arrived; never
   * beyond `cap`, the message size limit.
   */
  append(chunk: Uint8Array, from: number, n: number, cap: number): void {
    const needed = this.#length + n;
    if (needed > this.#buf.length) {
      const next = new Uint8Array(Math.min(cap, Math.max(needed, this.#buf.length * 2, MIN_CAPACITY)));
      next.set(this.#buf.subarray(0, this.#length));
      this.#buf = next;
      this.#view = new DataView(next.buffer, next.byteOffset, next.byteLength);
    }
    if (n < 16) {
      // Byte-sized feeds are common (a socket's leftovers, the tests): skip the subarray.
      for (let i = 0; i < n; i++) this.#buf[this.#length + i] = chunk[from + i] ?? 0;
    } else {
      this.#buf.set(chunk.subarray(from, from + n), this.#length);
    }
    this.#length = needed;
  }

  /** Hands the finished message's bytes over (the reader starts a fresh buffer; the caller owns them). */
  finish(): Uint8Array {
    const bytes = this.#buf.subarray(0, this.#length);
    this.reset();
    return bytes;
  }

  reset(): void {
    this.#buf = EMPTY;
    this.#view = new DataView(EMPTY.buffer);
    this.#length = 0;
    this.pos = 0;
    this.where = '';
  }

  #at(n: number): number {
    const at = this.pos;
    if (at + n > this.#length) throw new RangeError(`ByteReader: read of ${n} at ${at} beyond ${this.#length}`);
    this.pos = at + n;
    return at;
  }

  u8(): number {
    return this.#view.getUint8(this.#at(1));
  }

  u16(): number {
    return this.#view.getUint16(this.#at(2), false);
  }

  u32(): number {
    return this.#view.getUint32(this.#at(4), false);
  }

  s32(): number {
    return this.#view.getInt32(this.#at(4), false);
  }

  skip(n: number): void {
    this.#at(n);
  }

  /** The raw bytes [start, end) of the message; only once the message is complete (see class comment). */
  view(start: number, end: number): Uint8Array {
    return this.#buf.subarray(start, end);
  }

  /** Reads n bytes as a view; same caveat as `view`. */
  bytes(n: number): Uint8Array {
    const at = this.#at(n);
    return this.#buf.subarray(at, at + n);
  }
}

export type StreamItem<M> = { kind: 'message'; message: M; bytes: Uint8Array } | { kind: 'error'; error: RfbProtocolError };

/**
 * Drives one message reader after another over a byte stream. Only the bytes of the message in
 * progress are held, and only as many as the reader has asked for, so `bufferedBytes` never exceeds
 * `maxMessageBytes` whatever the chunking. After an error it stays failed and answers every feed
 * with that error.
 */
export class MessageStream<M> {
  readonly #start: (reader: ByteReader) => MessageReader<M>;
  readonly #maxMessageBytes: number;
  readonly #messageName: string;
  readonly #reader = new ByteReader();
  #current: MessageReader<M> | undefined;
  /** The reader's bytes must reach this length before it is resumed. */
  #target = 0;
  #error: RfbProtocolError | undefined;

  constructor(start: (reader: ByteReader) => MessageReader<M>, maxMessageBytes: number, messageName: string) {
    this.#start = start;
    this.#maxMessageBytes = maxMessageBytes;
    this.#messageName = messageName;
  }

  get bufferedBytes(): number {
    return this.#reader.length;
  }

  get error(): RfbProtocolError | undefined {
    return this.#error;
  }

  feed(chunk: Uint8Array): StreamItem<M>[] {
    if (this.#error !== undefined) return [{ kind: 'error', error: this.#error }];
    const out: StreamItem<M>[] = [];
    const r = this.#reader;
    let off = 0;
    try {
      for (;;) {
        if (this.#current === undefined) {
          // Start the next message only when a byte of it is here: nothing is held between messages.
          if (off >= chunk.length) break;
          this.#current = this.#start(r);
          this.#target = 0;
        }
        const missing = this.#target - r.length;
        if (missing > 0) {
          if (off >= chunk.length) break;
          const n = Math.min(missing, chunk.length - off);
          r.append(chunk, off, n, this.#maxMessageBytes);
          off += n;
          if (r.length < this.#target) break;
        }
        const step = this.#current.next();
        if (!step.done) {
          const need = step.value;
          const target = r.pos + need;
          if (!Number.isSafeInteger(need) || need < 0 || r.pos !== r.length) {
            throw new Error(`reader asked for ${need} bytes at ${r.pos} of ${r.length}`);
          }
          if (target > this.#maxMessageBytes) {
            return this.#fail(out, tooLarge(`${r.where || this.#messageName} (message size)`, target, this.#maxMessageBytes));
          }
          this.#target = target;
          continue;
        }
        this.#current = undefined;
        if (!step.value.ok) return this.#fail(out, step.value.error);
        if (r.pos !== r.length) throw new Error(`message ended at ${r.pos} of ${r.length} bytes`);
        out.push({ kind: 'message', message: step.value.value, bytes: r.finish() });
      }
    } catch (err) {
      return this.#fail(out, rfbError('internal', this.#messageName, `codec bug: ${(err as Error).message}`));
    }
    return out;
  }

  #fail(out: StreamItem<M>[], error: RfbProtocolError): StreamItem<M>[] {
    this.#error = error;
    this.#current = undefined;
    this.#reader.reset();
    out.push({ kind: 'error', error });
    return out;
  }
}

/**
 * Collects exactly `n` bytes for one handshake step (handshake steps are small and bounded, so a
 * step's buffer is allocated up front from a length that has already been checked).
 */
export class StepBuffer {
  #buf: Uint8Array = EMPTY;
  #got = 0;

  expect(n: number): void {
    this.#buf = n === 0 ? EMPTY : new Uint8Array(n);
    this.#got = 0;
  }

  get ready(): boolean {
    return this.#got === this.#buf.length;
  }

  get bufferedBytes(): number {
    return this.#got;
  }

  /** Copies what the step still needs from chunk[off...]; returns the new offset. */
  fill(chunk: Uint8Array, off: number): number {
    const n = Math.min(this.#buf.length - this.#got, chunk.length - off);
    if (n <= 0) return off;
    this.#buf.set(chunk.subarray(off, off + n), this.#got);
    this.#got += n;
    return off + n;
  }

  /** The step's bytes (the buffer is not reused, so they stay valid). */
  take(): Uint8Array {
    const bytes = this.#buf;
    this.#buf = EMPTY;
    this.#got = 0;
    return bytes;
  }
}

/** Builds a message of known size; every setter checks its range (see RfbEncodeError). */
export class ByteWriter {
  readonly bytes: Uint8Array;
  readonly #view: DataView;
  readonly #what: string;
  pos = 0;

  constructor(size: number, what: string) {
    this.bytes = new Uint8Array(size);
    this.#view = new DataView(this.bytes.buffer);
    this.#what = what;
  }

  #check(field: string, value: number, min: number, max: number): void {
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new RfbEncodeError(`${this.#what}.${field}`, `${value} is not an integer in [${min}, ${max}]`);
    }
  }

  u8(field: string, value: number): this {
    this.#check(field, value, 0, 0xff);
    this.#view.setUint8(this.pos, value);
    this.pos += 1;
    return this;
  }

  u16(field: string, value: number): this {
    this.#check(field, value, 0, 0xffff);
    this.#view.setUint16(this.pos, value, false);
    this.pos += 2;
    return this;
  }

  u32(field: string, value: number): this {
    this.#check(field, value, 0, 0xffffffff);
    this.#view.setUint32(this.pos, value, false);
    this.pos += 4;
    return this;
  }

  s32(field: string, value: number): this {
    this.#check(field, value, -0x80000000, 0x7fffffff);
    this.#view.setInt32(this.pos, value, false);
    this.pos += 4;
    return this;
  }

  flag(value: boolean): this {
    this.#view.setUint8(this.pos, value ? 1 : 0);
    this.pos += 1;
    return this;
  }

  pad(n: number): this {
    this.pos += n;
    return this;
  }

  raw(data: Uint8Array): this {
    this.bytes.set(data, this.pos);
    this.pos += data.length;
    return this;
  }

  done(): Uint8Array {
    if (this.pos !== this.bytes.length) throw new Error(`ByteWriter(${this.#what}): wrote ${this.pos} of ${this.bytes.length} bytes`);
    return this.bytes;
  }
}

/** RFB text (cut text) is ISO 8859-1: one byte per character, all 256 values meaningful. */
export function decodeLatin1(bytes: Uint8Array): string {
  let text = '';
  // fromCharCode over slices: one call per byte would be slow, one call for 1 MiB overflows the stack.
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

export function encodeLatin1(text: string, field: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff) throw new RfbEncodeError(field, `character U+${c.toString(16).padStart(4, '0')} at ${i} is not ISO 8859-1`);
    out[i] = c;
  }
  return out;
}

const utf8Decoder = new TextDecoder('utf-8');
const utf8Encoder = new TextEncoder();

/** Desktop names: UTF-8 in practice (QEMU writes `-name` as given); bad sequences become U+FFFD. */
export function decodeUtf8(bytes: Uint8Array): string {
  return utf8Decoder.decode(bytes);
}

export function encodeUtf8(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}
