// Fuzzing the RFB codec: 100,000 seeded cases of random bytes and mutated valid streams (bit flips,
// truncations, duplications, splices, huge length fields) from the message samples and the QEMU
// captures, fed in random chunks to both decoders and both handshakes. Nothing may throw, every
// result is a message or a typed error (never "internal"), a decoder holds at most its cap, and the
// heap does not grow with the number of cases. The seed is fixed, so a failure replays exactly: the
// assertion message names the case number.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  DEFAULT_RFB_LIMITS,
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbClientHandshake,
  RfbClientMessageDecoder,
  RfbServerHandshake,
  RfbServerMessageDecoder,
  encodeClientMessage,
  encodeServerMessage,
  type PixelFormat,
  type RfbErrorCode,
  type RfbLimits,
  type RfbProtocolError,
} from '../../src/display/common/rfb.ts';
import {
  CAPTURES,
  CLIENT_SAMPLES,
  NOVNC_PIXEL_FORMAT,
  RGB565_BIG_ENDIAN,
  SERVER_SAMPLES,
  ascii,
  bytes,
  concat,
  loadCapture,
  mulberry32,
  randomInt,
  u32,
} from './rfb-test-support.ts';

const CASES = 100_000;
const SEED = 0x5eed2024;
const CODES: ReadonlySet<RfbErrorCode> = new Set(['malformed', 'too-large', 'unsupported', 'refused', 'state']);

const rand = mulberry32(SEED);
const int = (lo: number, hi: number): number => randomInt(rand, lo, hi);
const pick = <T>(items: readonly T[]): T => items[int(0, items.length - 1)] as T;

// ---- corpora: valid streams per target --------------------------------------------------------

const captures = CAPTURES.map(loadCapture);
const HANDSHAKE_S2C = 46; // version, security list, result, 24-byte ServerInit head, "QEMU"

/** Slices of a capture's message stream starting at message boundaries (found by decoding it once). */
function messageWindows(stream: Uint8Array, decode: (b: Uint8Array) => { kind: string; bytes?: Uint8Array }[]): Uint8Array[] {
  const sizes = decode(stream).flatMap((i) => (i.bytes === undefined ? [] : [i.bytes.length]));
  const windows: Uint8Array[] = [];
  let off = 0;
  for (const size of sizes) {
    // A window of a few messages from here, capped so one case stays cheap.
    let end = off;
    for (let k = 0, at = off; k < 4 && at < stream.length; k++) at = end = Math.min(stream.length, at + (sizes[windows.length + k] ?? 0));
    windows.push(stream.subarray(off, Math.min(end, off + 8192)));
    off += size;
  }
  return windows;
}

const clientStreams: Uint8Array[] = [
  ...CLIENT_SAMPLES.map(encodeClientMessage),
  concat(CLIENT_SAMPLES.map(encodeClientMessage)),
  ...captures.flatMap(({ c2s }) => messageWindows(c2s.subarray(14), (b) => new RfbClientMessageDecoder().feed(b))),
];
const serverStreams: Uint8Array[] = [
  ...SERVER_SAMPLES.map(encodeServerMessage),
  concat(SERVER_SAMPLES.slice(3).map(encodeServerMessage)),
  ...captures.flatMap(({ s2c }) => messageWindows(s2c.subarray(HANDSHAKE_S2C), (b) => new RfbServerMessageDecoder(QEMU_DEFAULT_PIXEL_FORMAT).feed(b))),
];
const serverHandshakeStreams: Uint8Array[] = [
  ...captures.map(({ c2s }) => c2s.subarray(0, 200)),
  concat([ascii('RFB 003.008\n'), bytes(1, 0), encodeClientMessage({ type: 'key-event', down: true, keysym: 0x61 })]),
  ascii('RFB 003.003\n'),
  ascii('RFB 003.007\n'),
];
const clientHandshakeStreams: Uint8Array[] = [
  ...captures.map(({ s2c }) => s2c.subarray(0, HANDSHAKE_S2C + 300)),
  concat([ascii('RFB 003.008\n'), bytes(1, 2), new Uint8Array(16), bytes(...u32(1), ...u32(6)), ascii('denied')]),
  concat([ascii('RFB 003.008\n'), bytes(0, ...u32(8)), ascii('too many')]),
];

// ---- mutations --------------------------------------------------------------------------------

const HUGE_U32 = [0xffffffff, 0x7fffffff, 0x80000000, 0x04000000, 0x00ffffff, 0x00010000, 0x00001001];
const INTERESTING_BYTES = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe, 0x10, 0x20];

function mutate(input: Uint8Array, corpus: readonly Uint8Array[]): Uint8Array {
  let b: Uint8Array = input.slice();
  for (let n = int(1, 4); n > 0; n--) {
    const at = b.length === 0 ? 0 : int(0, b.length - 1);
    switch (int(0, 8)) {
      case 0: // bit flip
        if (b.length > 0) b[at] = (b[at] ?? 0) ^ (1 << int(0, 7));
        break;
      case 1: // interesting byte
        if (b.length > 0) b[at] = rand() < 0.5 ? pick(INTERESTING_BYTES) : int(0, 255);
        break;
      case 2: // truncation
        b = b.subarray(0, int(0, b.length));
        break;
      case 3: {
        // duplication of a slice, inserted somewhere
        const from = int(0, b.length);
        const slice = b.slice(from, Math.min(b.length, from + int(1, 64)));
        const to = int(0, b.length);
        b = concat([b.subarray(0, to), slice, b.subarray(to)]);
        break;
      }
      case 4: {
        // splice with another stream of the same kind
        const other = pick(corpus);
        b = concat([b.subarray(0, int(0, b.length)), other.subarray(int(0, other.length))]);
        break;
      }
      case 5: // a huge 32-bit length field
        if (b.length >= 4) new DataView(b.buffer, b.byteOffset).setUint32(int(0, b.length - 4), pick(HUGE_U32), false);
        break;
      case 6: // a huge 16-bit count or dimension
        if (b.length >= 2) new DataView(b.buffer, b.byteOffset).setUint16(int(0, b.length - 2), pick([0xffff, 0x4001, 0x8000, 0x0101]), false);
        break;
      case 7: // deletion
        b = concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + int(1, 16)))]);
        break;
      default: {
        // random insertion
        const junk = Uint8Array.from({ length: int(1, 16) }, () => int(0, 255));
        b = concat([b.subarray(0, at), junk, b.subarray(at)]);
      }
    }
  }
  return b;
}

function randomStream(firstBytes: readonly number[]): Uint8Array {
  const b = Uint8Array.from({ length: int(0, 300) }, () => int(0, 255));
  if (b.length > 0 && rand() < 0.7) b[0] = pick(firstBytes);
  return b;
}

function chunked(b: Uint8Array): Uint8Array[] {
  const max = pick([1, 3, 8, 64, 1024, b.length + 1]);
  const out: Uint8Array[] = [];
  for (let off = 0; off < b.length; ) {
    const n = int(1, max);
    out.push(b.subarray(off, off + n));
    off += n;
  }
  if (rand() < 0.1) out.splice(int(0, out.length), 0, new Uint8Array(0));
  return out;
}

// ---- checks -----------------------------------------------------------------------------------

const TIGHT_LIMITS: Partial<RfbLimits> = { maxMessageBytes: 64 * 1024, maxCutTextBytes: 4096, maxEncodings: 16, maxRects: 100, maxNameBytes: 64, maxReasonBytes: 64, maxDimension: 2048, maxAudioBytes: 1024 };
const PIXEL_FORMATS: readonly PixelFormat[] = [QEMU_DEFAULT_PIXEL_FORMAT, NOVNC_PIXEL_FORMAT, RGB565_BIG_ENDIAN, { ...QEMU_DEFAULT_PIXEL_FORMAT, bitsPerPixel: 8, depth: 8 }];

let caseNo = 0;
const stats = { messages: 0, errors: new Map<string, number>(), maxBuffered: 0 };

function checkError(error: RfbProtocolError): void {
  assert.ok(CODES.has(error.code), `case ${caseNo}: error code ${error.code}: ${error.message}`);
  assert.ok(error.where.length > 0 && error.message.startsWith(error.where), `case ${caseNo}: ${JSON.stringify(error)}`);
  stats.errors.set(error.code, (stats.errors.get(error.code) ?? 0) + 1);
}

/** Items of one feed: messages, then at most one error. */
function checkItems(items: readonly { kind: string; error?: RfbProtocolError }[], limit: number, buffered: number): void {
  assert.ok(Array.isArray(items));
  items.forEach((item, k) => {
    if (item.kind === 'error') {
      assert.equal(k, items.length - 1, `case ${caseNo}: error is not last`);
      if (item.error === undefined) assert.fail(`case ${caseNo}: error item without error`);
      checkError(item.error);
    } else {
      assert.equal(item.kind, 'message', `case ${caseNo}: item kind ${item.kind}`);
      stats.messages += 1;
    }
  });
  assert.ok(buffered <= limit, `case ${caseNo}: buffered ${buffered} > ${limit}`);
  stats.maxBuffered = Math.max(stats.maxBuffered, buffered);
}

/** A failed decoder or handshake answers the next feed with the very same error, and is then left alone. */
function checkRepeats(feed: (c: Uint8Array) => readonly { kind: string; error?: RfbProtocolError }[], error: RfbProtocolError | undefined): void {
  assert.deepEqual(feed(bytes(0, 1, 2)), [{ kind: 'error', error }], `case ${caseNo}`);
}

function runClientDecoder(input: Uint8Array, limits: Readonly<RfbLimits>): void {
  const decoder = new RfbClientMessageDecoder(limits);
  for (const c of chunked(input)) {
    if (decoder.failed) return checkRepeats((b) => decoder.feed(b), decoder.error);
    const items = decoder.feed(c);
    checkItems(items, limits.maxMessageBytes, decoder.bufferedBytes);
    for (const item of items) {
      if (item.kind !== 'message') continue;
      // Value round trip (bytes may differ from the input in padding and in flags other than 0/1).
      const encoded = encodeClientMessage(item.message);
      assert.equal(encoded.length, item.bytes.length, `case ${caseNo}`);
      assert.deepEqual(new RfbClientMessageDecoder().feed(encoded), [{ kind: 'message', message: item.message, bytes: encoded }], `case ${caseNo}`);
    }
  }
}

function runServerDecoder(input: Uint8Array, limits: Readonly<RfbLimits>, pf: PixelFormat): void {
  const decoder = new RfbServerMessageDecoder(pf, limits);
  for (const c of chunked(input)) {
    if (decoder.failed) return checkRepeats((b) => decoder.feed(b), decoder.error);
    const items = decoder.feed(c);
    checkItems(items, limits.maxMessageBytes, decoder.bufferedBytes);
    for (const item of items) {
      if (item.kind !== 'message') continue;
      const encoded = encodeServerMessage(item.message);
      assert.equal(encoded.length, item.bytes.length, `case ${caseNo}`);
      if (item.message.type === 'framebuffer-update') {
        // Rectangles are re-encoded verbatim; the header's padding is canonical, and an update ended
        // by LastRect gets its real count instead of the placeholder.
        assert.deepEqual(encoded.subarray(4), item.bytes.subarray(4), `case ${caseNo}`);
        assert.ok(item.summary !== undefined);
      } else {
        const again = new RfbServerMessageDecoder(pf).feed(encoded);
        assert.deepEqual(again, [{ kind: 'message', message: item.message, bytes: encoded }], `case ${caseNo}`);
      }
    }
  }
}

const handshakeCap = (limits: RfbLimits): number => Math.max(limits.maxNameBytes, limits.maxReasonBytes, 255);

/** The gateway's QEMU side: client handshake, then the server-message decoder on what follows. */
function runClientHandshake(input: Uint8Array, limits: Readonly<RfbLimits>): void {
  const hs = new RfbClientHandshake({ shared: rand() < 0.5, vncAuth: rand() < 0.5, limits });
  let decoder: RfbServerMessageDecoder | undefined;
  for (const c of chunked(input)) {
    if (decoder !== undefined) {
      if (decoder.failed) return;
      checkItems(decoder.feed(c), limits.maxMessageBytes, decoder.bufferedBytes);
      continue;
    }
    if (hs.state === 'failed') return checkRepeats((b) => hs.feed(b), hs.error);
    let events = hs.feed(c);
    if (hs.state === 'vnc-auth-response') events = [...events, ...hs.respondToChallenge(new Uint8Array(16))];
    checkItems(
      events.map((e) => (e.kind === 'error' ? e : { kind: 'message' })),
      handshakeCap(limits),
      hs.bufferedBytes,
    );
    const init = events.find((e) => e.kind === 'server-init');
    if (init?.kind === 'server-init') {
      decoder = new RfbServerMessageDecoder(init.serverInit.pixelFormat, limits);
      checkItems(decoder.feed(init.rest), limits.maxMessageBytes, decoder.bufferedBytes);
    }
  }
}

/** The gateway's viewer side: server handshake, our ServerInit, then the client-message decoder. */
function runServerHandshake(input: Uint8Array, limits: Readonly<RfbLimits>): void {
  const hs = new RfbServerHandshake({ limits });
  hs.start();
  let decoder: RfbClientMessageDecoder | undefined;
  for (const c of chunked(input)) {
    if (decoder !== undefined) {
      if (decoder.failed) return;
      checkItems(decoder.feed(c), limits.maxMessageBytes, decoder.bufferedBytes);
      continue;
    }
    if (hs.state === 'failed') return checkRepeats((b) => hs.feed(b), hs.error);
    const events = hs.feed(c);
    checkItems(events.map((e) => (e.kind === 'error' ? e : { kind: 'message' })), handshakeCap(limits), hs.bufferedBytes);
    const init = events.find((e) => e.kind === 'client-init');
    if (init?.kind === 'client-init') {
      const sent = hs.sendServerInit({ width: 720, height: 400, pixelFormat: QEMU_DEFAULT_PIXEL_FORMAT, name: 'QEMU' });
      assert.deepEqual(sent.map((e) => e.kind), ['send']);
      decoder = new RfbClientMessageDecoder(limits);
      checkItems(decoder.feed(init.rest), limits.maxMessageBytes, decoder.bufferedBytes);
    }
  }
}

function gcAndMeasure(gc: () => void): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

test(`fuzz: ${CASES} seeded cases against both decoders and both handshakes`, () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const started = performance.now();
  const heapBefore = gcAndMeasure(gc);
  let heapMid = 0;
  const defaults = DEFAULT_RFB_LIMITS;
  const tight = { ...DEFAULT_RFB_LIMITS, ...TIGHT_LIMITS };
  const targets = { client: 0, server: 0, clientHandshake: 0, serverHandshake: 0 };

  for (caseNo = 0; caseNo < CASES; caseNo++) {
    if (caseNo === CASES / 2) heapMid = gcAndMeasure(gc);
    const limits = rand() < 0.7 ? defaults : tight;
    const random = rand() < 0.25;
    const which = int(0, 9);
    if (which < 4) {
      targets.client += 1;
      runClientDecoder(random ? randomStream([0, 2, 3, 4, 5, 6, 150, 248, 251, 255]) : mutate(pick(clientStreams), clientStreams), limits);
    } else if (which < 8) {
      targets.server += 1;
      runServerDecoder(random ? randomStream([0, 1, 2, 3, 150, 248, 255]) : mutate(pick(serverStreams), serverStreams), limits, pick(PIXEL_FORMATS));
    } else if (which === 8) {
      targets.clientHandshake += 1;
      runClientHandshake(random ? concat([ascii('RFB 003.008\n'), randomStream([0, 1, 2])]) : mutate(pick(clientHandshakeStreams), clientHandshakeStreams), limits);
    } else {
      targets.serverHandshake += 1;
      runServerHandshake(random ? concat([ascii('RFB 003.008\n'), randomStream([1])]) : mutate(pick(serverHandshakeStreams), serverHandshakeStreams), limits);
    }
  }

  const heapAfter = gcAndMeasure(gc);
  const seconds = (performance.now() - started) / 1000;
  const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);
  console.log(
    `rfb fuzz: ${CASES} cases in ${seconds.toFixed(1)} s; targets ${JSON.stringify(targets)}; ${stats.messages} messages; errors ${JSON.stringify(Object.fromEntries(stats.errors))}; ` +
      `max buffered ${stats.maxBuffered} B; heap ${mib(heapBefore)} → ${mib(heapMid)} → ${mib(heapAfter)} MiB`,
  );
  // Both outcomes must be common, or the fuzzer is not reaching the parsers' depths.
  assert.ok(stats.messages > CASES, `only ${stats.messages} messages decoded`);
  assert.ok((stats.errors.get('too-large') ?? 0) > 1000 && (stats.errors.get('malformed') ?? 0) > 1000 && (stats.errors.get('unsupported') ?? 0) > 1000);
  // Nothing is retained between cases: the second half of the run may not grow the heap further.
  assert.ok(heapAfter - heapMid < 16 * 1024 * 1024, `heap grew ${mib(heapAfter - heapMid)} MiB in the second half`);
  assert.ok(heapAfter - heapBefore < 32 * 1024 * 1024, `heap grew ${mib(heapAfter - heapBefore)} MiB`);
});
