// The dedup transport's wire format (pure). Each direction of a dedup stream starts with a 12-byte header,
// then carries frames: a 4-byte big-endian body length, then the body, whose first byte is the frame type.
//
//   header   'SBDD' | version u8 | role u8 (1 sender, 2 receiver) | flags u16 (1: return path) | window u32
//   literal  1 | flags u8 (1 compressed, 2 answer) | n u8 | n × (hash[16] | length u16) | payload
//   ref      2 | hash[16] | length u16
//   need     3 | hash[16]
//   end      4 | chunks u64 | bytes u64
//   have     5 | last u8 | n u16 | n × hash[16]
//   ack      6 | chunks u64
//   abort    7 | code u8 | length u16 | UTF-8 message
//   return   8 | raw bytes (1..64 KiB)
//   return-end 9 | bytes u64
//
// Sender → receiver: literal, ref, end, abort. Receiver → sender: have, ack, need, end, abort, return,
// return-end. With the `return path` flag (both headers must carry the same), the receiver also carries
// its local end's bytes back to the sender, plainly (`return` frames, then `return-end` with their count):
// for streams whose far end talks back, such as QEMU's post-copy stream with its page requests.
// A literal carries 1..64 consecutive chunks (at most 64 KiB raw) whose bytes, concatenated, are the
// payload: zstd-compressed as one frame when `compressed`, else raw. An `answer` literal is not part of
// the stream: it supplies chunks the receiver asked for with `need`. u64 values stay below 2^53.
//
// Every size is bounded before its bytes are buffered: a frame body is at most MAX_FRAME_BODY_BYTES,
// checked from its 4-byte length, and the decoder never allocates more than that for one frame.
// Malformed input yields an error value; the decoder then stops. Nothing here throws on input.
// Hashing is not done here (no node:crypto in pure code): hashes are opaque 16-byte strings.

import { MAX_CHUNK_BYTES } from './chunker.ts';

export const DEDUP_PROTOCOL_VERSION = 1;
export const MAGIC = Uint8Array.of(0x53, 0x42, 0x44, 0x44); // "SBDD"
export const HEADER_BYTES = 12;
export const FRAME_PREFIX_BYTES = 4;
/** SHA-256 truncated to 128 bits. */
export const HASH_BYTES = 16;
export const MAX_BATCH_CHUNKS = 64;
export const MAX_BATCH_BYTES = 64 * 1024;
export const MAX_HAVE_HASHES = 1024;
export const MAX_ABORT_MESSAGE_BYTES = 1024;
/** The largest frame body: a full literal batch sent raw. */
export const MAX_FRAME_BODY_BYTES = 3 + MAX_BATCH_CHUNKS * (HASH_BYTES + 2) + MAX_BATCH_BYTES;
export { MAX_CHUNK_BYTES };

const TYPE = { literal: 1, ref: 2, need: 3, end: 4, have: 5, ack: 6, abort: 7, return: 8, 'return-end': 9 } as const;
const HEADER_RETURN_PATH = 1;
const LITERAL_COMPRESSED = 1;
const LITERAL_ANSWER = 2;
const U64_HI_LIMIT = 2 ** 21; // hi word below 2^21: the value is below 2^53

export type Role = 'sender' | 'receiver';

export interface StreamHeader {
  version: number;
  role: Role;
  /** Sender: the most raw bytes it sends ahead of the receiver's acks. Receiver: 0. */
  windowBytes: number;
  /** The receiver carries its local end's bytes back (`return` frames). */
  returnPath: boolean;
}

export const ABORT_CODES = ['literal-unavailable', 'protocol', 'cancelled', 'internal'] as const;
export type AbortCode = (typeof ABORT_CODES)[number];

export interface ChunkRef {
  hash: Uint8Array;
  length: number;
}

export type Frame =
  | { type: 'literal'; answer: boolean; compressed: boolean; chunks: ChunkRef[]; payload: Uint8Array }
  | { type: 'ref'; hash: Uint8Array; length: number }
  | { type: 'need'; hash: Uint8Array }
  | { type: 'end'; chunks: number; bytes: number }
  | { type: 'have'; last: boolean; hashes: Uint8Array[] }
  | { type: 'ack'; chunks: number }
  | { type: 'abort'; code: AbortCode; message: string }
  | { type: 'return'; payload: Uint8Array }
  | { type: 'return-end'; bytes: number };

export type FrameType = Frame['type'];

const SENT_BY: Record<Role, ReadonlySet<FrameType>> = {
  sender: new Set<FrameType>(['literal', 'ref', 'end', 'abort']),
  receiver: new Set<FrameType>(['have', 'ack', 'need', 'end', 'abort', 'return', 'return-end']),
};

export type ProtocolErrorCode = 'bad-magic' | 'unsupported-version' | 'wrong-role' | 'too-large' | 'malformed' | 'unknown-frame' | 'unexpected-frame';

export interface ProtocolFault {
  code: ProtocolErrorCode;
  message: string;
}

export type Decoded = { kind: 'header'; header: StreamHeader } | { kind: 'frame'; frame: Frame } | { kind: 'error'; error: ProtocolFault };

// ------------------------------------------------------------------------------------------ encoding

function frame(type: number, bodyLength: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(FRAME_PREFIX_BYTES + bodyLength);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, bodyLength, false);
  bytes[FRAME_PREFIX_BYTES] = type;
  return { bytes, view };
}

function checkHash(hash: Uint8Array): void {
  if (hash.length !== HASH_BYTES) throw new RangeError(`a hash is ${HASH_BYTES} bytes, not ${hash.length}`);
}

function checkLength(length: number): void {
  if (!Number.isInteger(length) || length < 1 || length > MAX_CHUNK_BYTES) throw new RangeError(`chunk length ${length} is outside 1..${MAX_CHUNK_BYTES}`);
}

function setU64(view: DataView, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${value} is not a count`);
  view.setUint32(offset, Math.floor(value / 2 ** 32), false);
  view.setUint32(offset + 4, value >>> 0, false);
}

export function encodeHeader(header: Omit<StreamHeader, 'version' | 'returnPath'> & { version?: number; returnPath?: boolean }): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES);
  bytes.set(MAGIC, 0);
  bytes[4] = header.version ?? DEDUP_PROTOCOL_VERSION;
  bytes[5] = header.role === 'sender' ? 1 : 2;
  const view = new DataView(bytes.buffer);
  view.setUint16(6, header.returnPath === true ? HEADER_RETURN_PATH : 0, false);
  view.setUint32(8, header.windowBytes >>> 0, false);
  return bytes;
}

/** One literal frame for 1..64 chunks whose bytes (concatenated, compressed or not) are `payload`. */
export function encodeLiteral(chunks: readonly ChunkRef[], payload: Uint8Array, options: { compressed: boolean; answer?: boolean }): Uint8Array {
  if (chunks.length < 1 || chunks.length > MAX_BATCH_CHUNKS) throw new RangeError(`a literal carries 1..${MAX_BATCH_CHUNKS} chunks, not ${chunks.length}`);
  let total = 0;
  for (const c of chunks) {
    checkHash(c.hash);
    checkLength(c.length);
    total += c.length;
  }
  if (total > MAX_BATCH_BYTES) throw new RangeError(`a literal carries at most ${MAX_BATCH_BYTES} bytes, not ${total}`);
  if (options.compressed ? payload.length < 1 || payload.length > total : payload.length !== total) {
    throw new RangeError(`literal payload of ${payload.length} bytes for ${total} chunk bytes (compressed: ${options.compressed})`);
  }
  const entries = chunks.length * (HASH_BYTES + 2);
  const { bytes, view } = frame(TYPE.literal, 3 + entries + payload.length);
  let at = FRAME_PREFIX_BYTES + 1;
  bytes[at++] = (options.compressed ? LITERAL_COMPRESSED : 0) | (options.answer === true ? LITERAL_ANSWER : 0);
  bytes[at++] = chunks.length;
  for (const c of chunks) {
    bytes.set(c.hash, at);
    view.setUint16(at + HASH_BYTES, c.length, false);
    at += HASH_BYTES + 2;
  }
  bytes.set(payload, at);
  return bytes;
}

export function encodeRef(hash: Uint8Array, length: number): Uint8Array {
  checkHash(hash);
  checkLength(length);
  const { bytes, view } = frame(TYPE.ref, 1 + HASH_BYTES + 2);
  bytes.set(hash, FRAME_PREFIX_BYTES + 1);
  view.setUint16(FRAME_PREFIX_BYTES + 1 + HASH_BYTES, length, false);
  return bytes;
}

export function encodeNeed(hash: Uint8Array): Uint8Array {
  checkHash(hash);
  const { bytes } = frame(TYPE.need, 1 + HASH_BYTES);
  bytes.set(hash, FRAME_PREFIX_BYTES + 1);
  return bytes;
}

export function encodeEnd(chunks: number, totalBytes: number): Uint8Array {
  const { bytes, view } = frame(TYPE.end, 17);
  setU64(view, FRAME_PREFIX_BYTES + 1, chunks);
  setU64(view, FRAME_PREFIX_BYTES + 9, totalBytes);
  return bytes;
}

export function encodeHave(hashes: readonly Uint8Array[], last: boolean): Uint8Array {
  if (hashes.length > MAX_HAVE_HASHES) throw new RangeError(`a have frame carries at most ${MAX_HAVE_HASHES} hashes`);
  const { bytes, view } = frame(TYPE.have, 4 + hashes.length * HASH_BYTES);
  bytes[FRAME_PREFIX_BYTES + 1] = last ? 1 : 0;
  view.setUint16(FRAME_PREFIX_BYTES + 2, hashes.length, false);
  let at = FRAME_PREFIX_BYTES + 4;
  for (const h of hashes) {
    checkHash(h);
    bytes.set(h, at);
    at += HASH_BYTES;
  }
  return bytes;
}

export function encodeAck(chunks: number): Uint8Array {
  const { bytes, view } = frame(TYPE.ack, 9);
  setU64(view, FRAME_PREFIX_BYTES + 1, chunks);
  return bytes;
}

/** Bytes of the receiver's local end, carried back as they are (1..64 KiB). */
export function encodeReturn(payload: Uint8Array): Uint8Array {
  if (payload.length < 1 || payload.length > MAX_BATCH_BYTES) throw new RangeError(`a return frame carries 1..${MAX_BATCH_BYTES} bytes, not ${payload.length}`);
  const { bytes } = frame(TYPE.return, 1 + payload.length);
  bytes.set(payload, FRAME_PREFIX_BYTES + 1);
  return bytes;
}

/** The end of the return path, with the number of bytes it carried. */
export function encodeReturnEnd(totalBytes: number): Uint8Array {
  const { bytes, view } = frame(TYPE['return-end'], 9);
  setU64(view, FRAME_PREFIX_BYTES + 1, totalBytes);
  return bytes;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8');

/** The message is cut to MAX_ABORT_MESSAGE_BYTES (at a character boundary). */
export function encodeAbort(code: AbortCode, message: string): Uint8Array {
  let text = utf8Encoder.encode(message);
  if (text.length > MAX_ABORT_MESSAGE_BYTES) {
    let end = MAX_ABORT_MESSAGE_BYTES;
    while (end > 0 && ((text[end] as number) & 0xc0) === 0x80) end -= 1;
    text = text.subarray(0, end);
  }
  const { bytes, view } = frame(TYPE.abort, 4 + text.length);
  bytes[FRAME_PREFIX_BYTES + 1] = ABORT_CODES.indexOf(code) + 1;
  view.setUint16(FRAME_PREFIX_BYTES + 2, text.length, false);
  bytes.set(text, FRAME_PREFIX_BYTES + 4);
  return bytes;
}

// ------------------------------------------------------------------------------------------ decoding

const fault = (code: ProtocolErrorCode, message: string): Decoded => ({ kind: 'error', error: { code, message } });

/**
 * Incremental decoder of one direction: `push()` bytes as they come, take results with `next()` until it
 * returns undefined. `peer` is the role of the side that sends what is decoded: its header must say so,
 * and only its frame types are accepted. The first error is final. Decoded hashes are copies; a literal's
 * payload is a view into the pushed bytes (or into one frame-sized copy when the frame spans pushes).
 */
export class DedupDecoder {
  readonly peer: Role;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #header: StreamHeader | undefined;
  /** Body length of the frame being read, once its prefix is in. */
  #length: number | undefined;
  #failed = false;
  #largestAllocation = 0;

  constructor(peer: Role) {
    this.peer = peer;
  }

  get header(): StreamHeader | undefined {
    return this.#header;
  }

  get failed(): boolean {
    return this.#failed;
  }

  /** Bytes pushed and not yet decoded. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /** The largest buffer this decoder allocated (to join a frame spanning pushes); never above MAX_FRAME_BODY_BYTES. */
  get largestAllocation(): number {
    return this.#largestAllocation;
  }

  push(bytes: Uint8Array): void {
    if (this.#failed || bytes.length === 0) return;
    this.#chunks.push(bytes);
    this.#buffered += bytes.length;
  }

  next(): Decoded | undefined {
    if (this.#failed) return undefined;
    const result = this.#next();
    if (result?.kind === 'error') {
      this.#failed = true;
      this.#chunks = [];
      this.#buffered = 0;
    }
    return result;
  }

  #next(): Decoded | undefined {
    if (this.#header === undefined) {
      if (this.#buffered < HEADER_BYTES) return undefined;
      const h = this.#take(HEADER_BYTES);
      for (let i = 0; i < MAGIC.length; i += 1) {
        if (h[i] !== MAGIC[i]) return fault('bad-magic', 'not a dedup stream (bad magic)');
      }
      const version = h[4] as number;
      if (version !== DEDUP_PROTOCOL_VERSION) {
        return fault('unsupported-version', `dedup protocol version ${version} is not supported (this side speaks ${DEDUP_PROTOCOL_VERSION})`);
      }
      const roleByte = h[5] as number;
      const role: Role | undefined = roleByte === 1 ? 'sender' : roleByte === 2 ? 'receiver' : undefined;
      if (role !== this.peer) return fault('wrong-role', `expected a ${this.peer}'s header, got role byte ${roleByte}`);
      const view = new DataView(h.buffer, h.byteOffset, h.byteLength);
      const flags = view.getUint16(6, false);
      if ((flags & ~HEADER_RETURN_PATH) !== 0) return fault('malformed', 'unknown header flags');
      this.#header = { version, role, windowBytes: view.getUint32(8, false), returnPath: (flags & HEADER_RETURN_PATH) !== 0 };
      return { kind: 'header', header: this.#header };
    }
    if (this.#length === undefined) {
      if (this.#buffered < FRAME_PREFIX_BYTES) return undefined;
      const p = this.#take(FRAME_PREFIX_BYTES);
      const length = new DataView(p.buffer, p.byteOffset, 4).getUint32(0, false);
      if (length > MAX_FRAME_BODY_BYTES) return fault('too-large', `frame of ${length} bytes exceeds the ${MAX_FRAME_BODY_BYTES}-byte limit`);
      if (length === 0) return fault('malformed', 'empty frame');
      this.#length = length;
    }
    if (this.#buffered < this.#length) return undefined;
    const body = this.#take(this.#length);
    this.#length = undefined;
    return this.#parse(body);
  }

  #parse(body: Uint8Array): Decoded {
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    const type = body[0] as number;
    const n = body.length;
    const hashAt = (at: number) => body.slice(at, at + HASH_BYTES);
    const u64At = (at: number): number | undefined => {
      const hi = view.getUint32(at, false);
      return hi >= U64_HI_LIMIT ? undefined : hi * 2 ** 32 + view.getUint32(at + 4, false);
    };
    let decoded: Frame;
    switch (type) {
      case TYPE.literal: {
        if (n < 3) return fault('malformed', 'short literal frame');
        const flags = body[1] as number;
        if ((flags & ~(LITERAL_COMPRESSED | LITERAL_ANSWER)) !== 0) return fault('malformed', `unknown literal flags ${flags}`);
        const count = body[2] as number;
        if (count < 1 || count > MAX_BATCH_CHUNKS) return fault('malformed', `literal with ${count} chunks`);
        const payloadAt = 3 + count * (HASH_BYTES + 2);
        if (n < payloadAt) return fault('malformed', 'literal frame shorter than its chunk list');
        const chunks: ChunkRef[] = [];
        let total = 0;
        for (let i = 0, at = 3; i < count; i += 1, at += HASH_BYTES + 2) {
          const length = view.getUint16(at + HASH_BYTES, false);
          if (length < 1 || length > MAX_CHUNK_BYTES) return fault('malformed', `literal chunk of ${length} bytes`);
          total += length;
          chunks.push({ hash: hashAt(at), length });
        }
        if (total > MAX_BATCH_BYTES) return fault('malformed', `literal of ${total} bytes exceeds ${MAX_BATCH_BYTES}`);
        const compressed = (flags & LITERAL_COMPRESSED) !== 0;
        const payload = body.subarray(payloadAt);
        if (compressed ? payload.length < 1 || payload.length > total : payload.length !== total) {
          return fault('malformed', `literal payload of ${payload.length} bytes for ${total} chunk bytes`);
        }
        decoded = { type: 'literal', answer: (flags & LITERAL_ANSWER) !== 0, compressed, chunks, payload };
        break;
      }
      case TYPE.ref: {
        if (n !== 1 + HASH_BYTES + 2) return fault('malformed', 'ref frame of wrong size');
        const length = view.getUint16(1 + HASH_BYTES, false);
        if (length < 1 || length > MAX_CHUNK_BYTES) return fault('malformed', `ref to a chunk of ${length} bytes`);
        decoded = { type: 'ref', hash: hashAt(1), length };
        break;
      }
      case TYPE.need:
        if (n !== 1 + HASH_BYTES) return fault('malformed', 'need frame of wrong size');
        decoded = { type: 'need', hash: hashAt(1) };
        break;
      case TYPE.end: {
        if (n !== 17) return fault('malformed', 'end frame of wrong size');
        const chunks = u64At(1);
        const bytes = u64At(9);
        if (chunks === undefined || bytes === undefined) return fault('malformed', 'end frame count out of range');
        decoded = { type: 'end', chunks, bytes };
        break;
      }
      case TYPE.have: {
        if (n < 4) return fault('malformed', 'short have frame');
        const last = body[1] as number;
        if (last > 1) return fault('malformed', 'have frame with a bad flag');
        const count = view.getUint16(2, false);
        if (count > MAX_HAVE_HASHES || n !== 4 + count * HASH_BYTES) return fault('malformed', 'have frame of wrong size');
        const hashes: Uint8Array[] = [];
        for (let i = 0; i < count; i += 1) hashes.push(hashAt(4 + i * HASH_BYTES));
        decoded = { type: 'have', last: last === 1, hashes };
        break;
      }
      case TYPE.ack: {
        if (n !== 9) return fault('malformed', 'ack frame of wrong size');
        const chunks = u64At(1);
        if (chunks === undefined) return fault('malformed', 'ack count out of range');
        decoded = { type: 'ack', chunks };
        break;
      }
      case TYPE.abort: {
        if (n < 4) return fault('malformed', 'short abort frame');
        const code = ABORT_CODES[(body[1] as number) - 1];
        const length = view.getUint16(2, false);
        if (code === undefined) return fault('malformed', `unknown abort code ${body[1]}`);
        if (length > MAX_ABORT_MESSAGE_BYTES || n !== 4 + length) return fault('malformed', 'abort frame of wrong size');
        decoded = { type: 'abort', code, message: utf8Decoder.decode(body.subarray(4)) };
        break;
      }
      case TYPE.return:
        if (n < 2 || n > 1 + MAX_BATCH_BYTES) return fault('malformed', `return frame of ${n - 1} bytes`);
        decoded = { type: 'return', payload: body.subarray(1) };
        break;
      case TYPE['return-end']: {
        if (n !== 9) return fault('malformed', 'return-end frame of wrong size');
        const bytes = u64At(1);
        if (bytes === undefined) return fault('malformed', 'return-end count out of range');
        decoded = { type: 'return-end', bytes };
        break;
      }
      default:
        return fault('unknown-frame', `unknown frame type ${type}`);
    }
    if (!SENT_BY[this.peer].has(decoded.type)) return fault('unexpected-frame', `a ${this.peer} does not send ${decoded.type} frames`);
    return { kind: 'frame', frame: decoded };
  }

  #take(n: number): Uint8Array {
    const first = this.#chunks[0] as Uint8Array;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#buffered -= n;
      return out;
    }
    const out = new Uint8Array(n);
    if (n > this.#largestAllocation) this.#largestAllocation = n;
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[0] as Uint8Array;
      const part = Math.min(chunk.length, n - filled);
      out.set(chunk.subarray(0, part), filled);
      filled += part;
      if (part === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(part);
    }
    this.#buffered -= n;
    return out;
  }
}

/** Lower-case hex of a hash (pure; the Node side uses Buffer). */
export function hashHex(hash: Uint8Array): string {
  let s = '';
  for (const b of hash) s += b.toString(16).padStart(2, '0');
  return s;
}
