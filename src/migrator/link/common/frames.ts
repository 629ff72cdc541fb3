// Frames: a 4-byte big-endian payload length, then that many bytes of UTF-8 JSON. The length is checked
// as soon as the 4 header bytes are in, so an oversize frame is refused from its header alone and its
// body is never buffered. Frames are taken one at a time, so a stream connection can switch from frames
// to raw bytes right after its hello and hand the bytes already read over to the byte stream.

import { parseMessage, type ErrorBody, type LinkMessage } from './protocol.ts';

export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;
/** Before a peer has authenticated, frames are bounded much lower: a hello is a few hundred bytes. */
export const HANDSHAKE_MAX_FRAME_BYTES = 16 * 1024;
export const FRAME_HEADER_BYTES = 4;

export type DecodedFrame =
  | { kind: 'message'; message: LinkMessage }
  | { kind: 'malformed'; error: ErrorBody; requestId?: number }
  /** Fatal: the decoder stops; the connection must be closed. */
  | { kind: 'too-large'; length: number; limit: number };

export class FrameDecoder {
  maxFrameBytes: number;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  /** Payload length of the frame being read, once its header is complete. */
  #length: number | undefined;
  #failed = false;

  constructor(maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Bytes held (never more than one header + maxFrameBytes). */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  get failed(): boolean {
    return this.#failed;
  }

  push(chunk: Uint8Array): void {
    if (this.#failed || chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /** The next complete frame, or undefined until more bytes arrive. After `too-large`, always undefined. */
  next(): DecodedFrame | undefined {
    if (this.#failed) return undefined;
    if (this.#length === undefined) {
      if (this.#buffered < FRAME_HEADER_BYTES) return undefined;
      const header = this.#take(FRAME_HEADER_BYTES);
      const length = new DataView(header.buffer, header.byteOffset, header.byteLength).getUint32(0, false);
      if (length > this.maxFrameBytes) {
        this.#failed = true;
        this.#chunks = [];
        this.#buffered = 0;
        return { kind: 'too-large', length, limit: this.maxFrameBytes };
      }
      this.#length = length;
    }
    if (this.#buffered < this.#length) return undefined;
    const payload = this.#take(this.#length);
    this.#length = undefined;
    if (payload.length === 0) return { kind: 'malformed', error: { code: 'malformed', message: 'empty frame' } };
    const parsed = parseMessage(payload);
    if (parsed.ok) return { kind: 'message', message: parsed.message };
    return parsed.requestId === undefined
      ? { kind: 'malformed', error: parsed.error }
      : { kind: 'malformed', error: parsed.error, requestId: parsed.requestId };
  }

  /**
   * Everything buffered beyond the frames taken so far, for a connection that switches to raw bytes.
   * Only valid between frames (a partially read header is returned as raw bytes too).
   */
  takeRemainder(): Uint8Array {
    const rest = this.#length === undefined ? this.#take(this.#buffered) : new Uint8Array(0);
    this.#chunks = [];
    this.#buffered = 0;
    return rest;
  }

  #take(n: number): Uint8Array {
    const first = this.#chunks[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#buffered -= n;
      return out;
    }
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[0];
      if (chunk === undefined) throw new Error('FrameDecoder: internal length mismatch');
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

/** Our own message would exceed the frame limit (e.g. a handler's result is too big). */
export class FrameTooLargeError extends Error {
  override readonly name = 'FrameTooLargeError';
  readonly length: number;
  readonly limit: number;

  constructor(length: number, limit: number) {
    super(`message of ${length} bytes exceeds the ${limit}-byte frame limit`);
    this.length = length;
    this.limit = limit;
  }
}

const encoder = new TextEncoder();

/** Header + JSON. Throws FrameTooLargeError over the limit, TypeError for values JSON cannot hold. */
export function encodeFrame(message: LinkMessage, maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES): Uint8Array {
  const payload = encoder.encode(JSON.stringify(message));
  if (payload.length > maxFrameBytes) throw new FrameTooLargeError(payload.length, maxFrameBytes);
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length, false);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}
