// The dedup wire format (src/migrator/dedup/common/protocol.ts): every frame round-trips however the bytes
// are split, bad headers and malformed frames are error values, sizes are refused from the length prefix,
// and a fuzz of a few thousand seeded cases never throws and never allocates beyond one frame.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DedupDecoder,
  HEADER_BYTES,
  MAX_BATCH_BYTES,
  MAX_FRAME_BODY_BYTES,
  encodeAbort,
  encodeAck,
  encodeEnd,
  encodeHave,
  encodeHeader,
  encodeLiteral,
  encodeNeed,
  encodeRef,
  encodeReturn,
  encodeReturnEnd,
  type Decoded,
  type Frame,
  type ProtocolErrorCode,
  type Role,
} from '../../src/migrator/dedup/common/protocol.ts';
import { mulberry32, randomBytes, randomInt, type Rand } from '../support/dedup.ts';

const h = (n: number) => new Uint8Array(16).fill(n);

function drain(decoder: DedupDecoder): Decoded[] {
  const out: Decoded[] = [];
  for (let d = decoder.next(); d !== undefined; d = decoder.next()) out.push(d);
  return out;
}

function decodeAll(peer: Role, bytes: Uint8Array, rand?: Rand): Decoded[] {
  const decoder = new DedupDecoder(peer);
  const out: Decoded[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = rand === undefined ? bytes.length : randomInt(rand, 1, 3000);
    decoder.push(bytes.subarray(at, at + n));
    out.push(...drain(decoder));
    at += n;
  }
  return out;
}

const concat = (parts: Uint8Array[]) => Buffer.concat(parts);
const senderHeader = encodeHeader({ role: 'sender', windowBytes: 1 << 20 });
const receiverHeader = encodeHeader({ role: 'receiver', windowBytes: 0, returnPath: true });

const payload = randomBytes(mulberry32(1), 5000);
const senderFrames: [Uint8Array, Frame][] = [
  [
    encodeLiteral([{ hash: h(1), length: 5000 }], payload, { compressed: false }),
    { type: 'literal', answer: false, compressed: false, chunks: [{ hash: h(1), length: 5000 }], payload },
  ],
  [
    encodeLiteral(
      [
        { hash: h(2), length: 3000 },
        { hash: h(3), length: 2000 },
      ],
      payload.subarray(0, 100),
      { compressed: true, answer: true },
    ),
    {
      type: 'literal',
      answer: true,
      compressed: true,
      chunks: [
        { hash: h(2), length: 3000 },
        { hash: h(3), length: 2000 },
      ],
      payload: payload.subarray(0, 100),
    },
  ],
  [encodeRef(h(4), 16384), { type: 'ref', hash: h(4), length: 16384 }],
  [encodeEnd(2 ** 40 + 5, 2 ** 52), { type: 'end', chunks: 2 ** 40 + 5, bytes: 2 ** 52 }],
  [encodeAbort('literal-unavailable', 'chunk ab: gone'), { type: 'abort', code: 'literal-unavailable', message: 'chunk ab: gone' }],
];
const receiverFrames: [Uint8Array, Frame][] = [
  [encodeHave([h(5), h(6)], false), { type: 'have', last: false, hashes: [h(5), h(6)] }],
  [encodeHave([], true), { type: 'have', last: true, hashes: [] }],
  [encodeAck(77), { type: 'ack', chunks: 77 }],
  [encodeNeed(h(7)), { type: 'need', hash: h(7) }],
  [encodeEnd(0, 0), { type: 'end', chunks: 0, bytes: 0 }],
  [encodeReturn(payload.subarray(0, 1)), { type: 'return', payload: payload.subarray(0, 1) }],
  [encodeReturn(randomBytes(mulberry32(2), MAX_BATCH_BYTES)), { type: 'return', payload: randomBytes(mulberry32(2), MAX_BATCH_BYTES) }],
  [encodeReturnEnd(2 ** 33 + 1), { type: 'return-end', bytes: 2 ** 33 + 1 }],
  [encodeAbort('protocol', 'ü'.repeat(600)), { type: 'abort', code: 'protocol', message: 'ü'.repeat(512) }],
];

/** Normalizes Uint8Array subclasses (Buffer views) for deepEqual. */
function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return [...value];
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

function flipBit(bytes: Uint8Array, at: number, bit: number): void {
  bytes[at] = (bytes[at] as number) ^ (1 << bit);
}

function frameBytes(body: number[]): Uint8Array {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, false);
  out.set(body, 4);
  return out;
}

function errorOf(peer: Role, bytes: Uint8Array): ProtocolErrorCode | undefined {
  const got = decodeAll(peer, bytes).find((d) => d.kind === 'error');
  return got?.kind === 'error' ? got.error.code : undefined;
}

describe('dedup protocol', () => {
  test('every frame round-trips, whole and in random pieces', () => {
    for (const [peer, header, frames] of [
      ['sender', senderHeader, senderFrames],
      ['receiver', receiverHeader, receiverFrames],
    ] as const) {
      const stream = concat([header, ...frames.map(([bytes]) => bytes)]);
      const expected = [
        { kind: 'header', header: { version: 1, role: peer, windowBytes: peer === 'sender' ? 1 << 20 : 0, returnPath: peer === 'receiver' } },
        ...frames.map(([, frame]) => ({ kind: 'frame', frame })),
      ].map((d) => plain(d as Decoded));
      assert.deepEqual(decodeAll(peer, stream).map(plain), expected);
      const rand = mulberry32(3);
      for (let i = 0; i < 20; i += 1) assert.deepEqual(decodeAll(peer, stream, rand).map(plain), expected);
      const bytewise = new DedupDecoder(peer);
      const got: Decoded[] = [];
      for (const b of stream) {
        bytewise.push(Uint8Array.of(b));
        got.push(...drain(bytewise));
      }
      assert.deepEqual(got.map(plain), expected);
      assert.equal(bytewise.bufferedBytes, 0);
    }
  });

  test('headers: magic, version, role and flags are checked', () => {
    const bad = (mutate: (b: Uint8Array) => void) => {
      const b = Uint8Array.from(senderHeader);
      mutate(b);
      return b;
    };
    assert.equal(errorOf('sender', bad((b) => (b[0] = 0x47))), 'bad-magic');
    assert.equal(errorOf('sender', bad((b) => (b[4] = 2))), 'unsupported-version');
    assert.equal(errorOf('sender', bad((b) => (b[5] = 9))), 'wrong-role');
    assert.equal(errorOf('receiver', senderHeader), 'wrong-role');
    assert.equal(errorOf('sender', bad((b) => (b[7] = 2))), 'malformed');
    assert.equal(errorOf('sender', bad((b) => (b[6] = 1))), 'malformed');
    assert.equal(errorOf('sender', bad((b) => (b[7] = 1))), undefined, 'flag 1 is the return path');
    assert.equal(new DedupDecoder('sender').next(), undefined);
  });

  test('frames a side does not send are refused', () => {
    assert.equal(errorOf('sender', concat([senderHeader, encodeNeed(h(1))])), 'unexpected-frame');
    assert.equal(errorOf('sender', concat([senderHeader, encodeHave([], true)])), 'unexpected-frame');
    assert.equal(errorOf('receiver', concat([receiverHeader, encodeRef(h(1), 10)])), 'unexpected-frame');
    assert.equal(errorOf('receiver', concat([receiverHeader, frameBytes([99])])), 'unknown-frame');
    assert.equal(errorOf('sender', concat([senderHeader, encodeReturn(Uint8Array.of(1))])), 'unexpected-frame');
  });

  test('an oversize frame is refused from its length prefix, and nothing more is buffered', () => {
    const decoder = new DedupDecoder('sender');
    decoder.push(senderHeader);
    const prefix = new Uint8Array(4);
    new DataView(prefix.buffer).setUint32(0, MAX_FRAME_BODY_BYTES + 1, false);
    decoder.push(prefix);
    const got = drain(decoder);
    assert.equal(got.at(-1)?.kind, 'error');
    assert.equal(decoder.failed, true);
    decoder.push(new Uint8Array(100_000));
    assert.equal(decoder.bufferedBytes, 0);
    assert.equal(decoder.next(), undefined);
    // The largest legal frame (64 raw chunks of a full batch) fits.
    const chunks = Array.from({ length: 64 }, (_, i) => ({ hash: h(i), length: MAX_BATCH_BYTES / 64 }));
    const biggest = encodeLiteral(chunks, new Uint8Array(MAX_BATCH_BYTES), { compressed: false });
    assert.equal(biggest.length - 4, MAX_FRAME_BODY_BYTES);
    assert.equal(decodeAll('sender', concat([senderHeader, biggest]))[1]?.kind, 'frame');
  });

  test('malformed frames are error values', () => {
    const cases: [Role, number[]][] = [
      ['sender', []], // empty frame
      ['sender', [1, 0, 1]], // literal shorter than its chunk list
      ['sender', [1, 4, 1, ...h(1), 0, 1, 0]], // unknown flag
      ['sender', [1, 0, 0]], // no chunks
      ['sender', [1, 0, 65, ...new Array(65 * 18).fill(1)]], // too many chunks
      ['sender', [1, 0, 1, ...h(1), 0, 0]], // zero-length chunk
      ['sender', [1, 0, 1, ...h(1), 0x40, 1]], // chunk above the maximum
      ['sender', [1, 0, 1, ...h(1), 0, 2, 7]], // raw payload shorter than the chunk
      ['sender', [1, 1, 1, ...h(1), 0, 2, 7, 7, 7]], // compressed payload longer than the chunk
      ['sender', [1, 1, 1, ...h(1), 0, 2]], // compressed payload empty
      ['sender', [2, ...h(1), 0]], // short ref
      ['sender', [2, ...h(1), 0, 0]], // ref to nothing
      ['sender', [4, ...new Array(15).fill(0)]], // short end
      ['sender', [4, 0, 0x20, 0, 0, 0, 0, 0, 0, ...new Array(8).fill(0)]], // end count ≥ 2^53
      ['sender', [7, 9, 0, 0]], // unknown abort code
      ['sender', [7, 1, 0, 5, 1]], // abort shorter than its message
      ['receiver', [5, 1, 0, 1]], // have shorter than its list
      ['receiver', [5, 2, 0, 0]], // have with a bad flag
      ['receiver', [5, 0, 0x04, 0x01, ...new Array(16 * 1025).fill(0)]], // too many hashes
      ['receiver', [6, 0, 0, 0]], // short ack
      ['receiver', [3, 1, 2, 3]], // short need
      ['receiver', [8]], // empty return
      ['receiver', [8, ...new Array(MAX_BATCH_BYTES + 1).fill(1)]], // return above 64 KiB
      ['receiver', [9, 0, 0, 0, 0, 0, 0, 0]], // short return-end
      ['receiver', [9, 0, 0x20, 0, 0, 0, 0, 0, 0]], // return-end count ≥ 2^53
    ];
    for (const [i, [peer, body]] of cases.entries()) {
      const header = peer === 'sender' ? senderHeader : receiverHeader;
      assert.equal(errorOf(peer, concat([header, frameBytes(body)])), 'malformed', `case ${i}`);
    }
  });

  test('encoders refuse what the decoder would refuse', () => {
    assert.throws(() => encodeRef(h(1), 0), RangeError);
    assert.throws(() => encodeRef(new Uint8Array(15), 10), RangeError);
    assert.throws(() => encodeLiteral([], new Uint8Array(0), { compressed: false }), RangeError);
    assert.throws(() => encodeLiteral([{ hash: h(1), length: 10 }], new Uint8Array(9), { compressed: false }), RangeError);
    assert.throws(() => encodeLiteral([{ hash: h(1), length: 10 }], new Uint8Array(11), { compressed: true }), RangeError);
    assert.throws(() => encodeHave(new Array<Uint8Array>(1025).fill(h(1)), true), RangeError);
    assert.throws(() => encodeEnd(-1, 0), RangeError);
    assert.throws(() => encodeAck(2 ** 53), RangeError);
    assert.throws(() => encodeReturn(new Uint8Array(0)), RangeError);
    assert.throws(() => encodeReturn(new Uint8Array(MAX_BATCH_BYTES + 1)), RangeError);
    assert.throws(() => encodeReturnEnd(-1), RangeError);
  });

  test('fuzz: 5000 seeded cases of random and mutated streams never throw or over-allocate', () => {
    const rand = mulberry32(0xdedf);
    const validSender = concat([senderHeader, ...senderFrames.map(([b]) => b)]);
    const validReceiver = concat([receiverHeader, ...receiverFrames.map(([b]) => b)]);
    for (let i = 0; i < 5000; i += 1) {
      const peer: Role = rand() < 0.5 ? 'sender' : 'receiver';
      const base = Buffer.from(peer === 'sender' ? validSender : validReceiver);
      let input: Buffer;
      const kind = i % 5;
      if (kind === 0) {
        input = randomBytes(rand, randomInt(rand, 0, 4000));
        if (rand() < 0.5) input = Buffer.concat([peer === 'sender' ? senderHeader : receiverHeader, input]);
      } else if (kind === 1) {
        input = base;
        for (let k = randomInt(rand, 1, 8); k > 0; k -= 1) flipBit(input, randomInt(rand, 0, input.length - 1), randomInt(rand, 0, 7));
      } else if (kind === 2) {
        input = base.subarray(0, randomInt(rand, 0, base.length));
      } else if (kind === 3) {
        // A huge or odd length field somewhere after the header.
        input = base;
        const at = randomInt(rand, HEADER_BYTES, input.length - 4);
        input.writeUInt32BE(rand() < 0.5 ? 0xffffffff : randomInt(rand, 0, MAX_FRAME_BODY_BYTES + 10), at);
      } else {
        // Splices of two valid streams.
        const other = peer === 'sender' ? validSender : validReceiver;
        const a = randomInt(rand, 0, base.length);
        input = Buffer.concat([base.subarray(0, a), other.subarray(randomInt(rand, 0, other.length))]);
      }
      const decoder = new DedupDecoder(peer);
      let results: Decoded[];
      try {
        results = [];
        for (let at = 0; at < input.length; ) {
          const n = randomInt(rand, 1, 700);
          decoder.push(input.subarray(at, at + n));
          results.push(...drain(decoder));
          at += n;
        }
      } catch (error) {
        assert.fail(`case ${i}: decoder threw ${String(error)}`);
      }
      assert.ok(decoder.largestAllocation <= MAX_FRAME_BODY_BYTES, `case ${i}: allocated ${decoder.largestAllocation}`);
      assert.ok(decoder.bufferedBytes <= input.length, `case ${i}`);
      const firstError = results.findIndex((r) => r.kind === 'error');
      if (firstError >= 0) assert.equal(firstError, results.length - 1, `case ${i}: results after an error`);
      for (const r of results) {
        if (r.kind === 'frame' && r.frame.type === 'literal') assert.ok(r.frame.payload.length <= MAX_BATCH_BYTES, `case ${i}`);
        if (r.kind === 'frame' && r.frame.type === 'have') assert.ok(r.frame.hashes.every((x) => x.length === 16), `case ${i}`);
      }
    }
  });
});
