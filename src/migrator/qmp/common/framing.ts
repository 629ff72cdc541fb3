// Splits the QMP byte stream into lines. QEMU ends every message with "\r\n"; we accept bare "\n" too.
// Bytes are buffered until a newline arrives and only whole lines are decoded, so a UTF-8 sequence split
// across chunks decodes correctly.

import { parseQmpMessage, type QmpInbound } from './messages.ts';

/** Big enough for any reply we ask for (query-named-block-nodes on a long backing chain is the largest). */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;

export type LineResult =
  | { kind: 'line'; text: string }
  /** A line exceeded the limit; its bytes up to the next newline are discarded. */
  | { kind: 'too-long'; limit: number };

const NEWLINE = 0x0a;

export class LineSplitter {
  readonly maxLineBytes: number;
  // Not fatal: a stray invalid byte inside a string should not cost us the whole reply.
  readonly #decoder = new TextDecoder('utf-8');
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  /** Set after an over-long line was reported, until its terminating newline is seen. */
  #discarding = false;

  constructor(maxLineBytes: number = DEFAULT_MAX_LINE_BYTES) {
    this.maxLineBytes = maxLineBytes;
  }

  /** Bytes held for an unterminated line (never more than maxLineBytes). */
  get bufferedBytes(): number {
    return this.#pendingBytes;
  }

  push(chunk: Uint8Array): LineResult[] {
    const out: LineResult[] = [];
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(NEWLINE, start);
      const end = newline === -1 ? chunk.length : newline;
      if (this.#discarding) {
        this.#discarding = newline === -1;
      } else if (this.#pendingBytes + (end - start) > this.maxLineBytes) {
        out.push({ kind: 'too-long', limit: this.maxLineBytes });
        this.#reset();
        this.#discarding = newline === -1;
      } else if (newline === -1) {
        // Copy, so a small remainder does not pin the whole socket chunk in memory.
        this.#pending.push(chunk.slice(start));
        this.#pendingBytes += chunk.length - start;
      } else {
        const text = this.#takeLine(chunk.subarray(start, end));
        if (text !== '') out.push({ kind: 'line', text });
      }
      if (newline === -1) break;
      start = newline + 1;
    }
    return out;
  }

  #takeLine(tail: Uint8Array): string {
    let bytes = tail;
    if (this.#pending.length > 0) {
      bytes = new Uint8Array(this.#pendingBytes + tail.length);
      let offset = 0;
      for (const part of [...this.#pending, tail]) {
        bytes.set(part, offset);
        offset += part.length;
      }
      this.#reset();
    }
    const text = this.#decoder.decode(bytes);
    return text.endsWith('\r') ? text.slice(0, -1) : text;
  }

  #reset(): void {
    this.#pending = [];
    this.#pendingBytes = 0;
  }
}

/** Byte chunks in, classified QMP messages out. */
export class QmpDecoder {
  readonly #lines: LineSplitter;

  constructor(maxLineBytes?: number) {
    this.#lines = new LineSplitter(maxLineBytes);
  }

  push(chunk: Uint8Array): QmpInbound[] {
    return this.#lines.push(chunk).map((line) =>
      line.kind === 'line'
        ? parseQmpMessage(line.text)
        : { type: 'invalid', reason: `line longer than ${line.limit} bytes, discarded` },
    );
  }
}
