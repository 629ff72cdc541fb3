// The link's wire format (pure): framing, message validation, addresses.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeFrame, FrameDecoder, FrameTooLargeError, type DecodedFrame } from '../../src/migrator/link/common/frames.ts';
import { messageSchema, parseMessage, type LinkMessage } from '../../src/migrator/link/common/protocol.ts';
import { formatAddress, parseAddress } from '../../src/migrator/link/handshake.ts';

const enc = new TextEncoder();

function rawFrame(payload: Uint8Array | string, declaredLength?: number): Uint8Array {
  const bytes = typeof payload === 'string' ? enc.encode(payload) : payload;
  const frame = new Uint8Array(4 + bytes.length);
  new DataView(frame.buffer).setUint32(0, declaredLength ?? bytes.length, false);
  frame.set(bytes, 4);
  return frame;
}

function drain(decoder: FrameDecoder): DecodedFrame[] {
  const out: DecodedFrame[] = [];
  for (let f = decoder.next(); f !== undefined; f = decoder.next()) out.push(f);
  return out;
}

const samples: LinkMessage[] = [
  { type: 'hello', version: 1, mode: 'control', name: 'edge', credential: 'c'.repeat(43) },
  { type: 'hello', version: 1, mode: 'stream', credential: 'c'.repeat(43), stream: { link: 'L1', target: 'nbd:vm1' } },
  { type: 'hello', version: 1, mode: 'stream', credential: 'c'.repeat(43), stream: { link: 'L1', id: 'one-time' } },
  { type: 'hello', version: 1, mode: 'pair', name: 'edge', token: 'proof' },
  { type: 'request', id: 7, method: 'vm.list', params: { a: [1, 'ü', null] } },
  { type: 'response', id: 7, ok: true, result: { vms: [] } },
  { type: 'response', id: 0, ok: false, error: { code: 'not-paired', message: 'pair first' } },
  { type: 'event', name: 'migration.progress', payload: { pct: 50 } },
  { type: 'error', error: { code: 'malformed', message: 'bad' } },
  { type: 'ping', seq: 3 },
  { type: 'pong', seq: 3 },
];

describe('frames', () => {
  test('every message type round-trips, also when fed one byte at a time', () => {
    const all = samples.map((m) => encodeFrame(m));
    const whole = new FrameDecoder();
    for (const f of all) whole.push(f);
    assert.deepEqual(drain(whole), samples.map((message) => ({ kind: 'message', message })));

    const bytewise = new FrameDecoder();
    const got: DecodedFrame[] = [];
    for (const f of all) {
      for (const byte of f) {
        bytewise.push(Uint8Array.of(byte));
        got.push(...drain(bytewise));
      }
    }
    assert.deepEqual(got, samples.map((message) => ({ kind: 'message', message })));
    assert.equal(bytewise.bufferedBytes, 0);
  });

  test('the header is big-endian length + UTF-8 JSON', () => {
    const frame = encodeFrame({ type: 'ping', seq: 1 });
    const json = '{"type":"ping","seq":1}';
    assert.deepEqual([...frame.subarray(0, 4)], [0, 0, 0, json.length]);
    assert.equal(new TextDecoder().decode(frame.subarray(4)), json);
  });

  test('an oversize frame is refused from its 4-byte header alone and nothing is buffered', () => {
    const decoder = new FrameDecoder(1024);
    decoder.push(rawFrame(new Uint8Array(0), 1025).subarray(0, 4));
    assert.deepEqual(decoder.next(), { kind: 'too-large', length: 1025, limit: 1024 });
    assert.equal(decoder.failed, true);
    decoder.push(new Uint8Array(4096));
    assert.equal(decoder.bufferedBytes, 0);
    assert.equal(decoder.next(), undefined);
  });

  test('a frame of exactly the limit is accepted', () => {
    const message: LinkMessage = { type: 'event', name: 'x', payload: 'y'.repeat(100) };
    const frame = encodeFrame(message);
    const decoder = new FrameDecoder(frame.length - 4);
    decoder.push(frame);
    assert.deepEqual(decoder.next(), { kind: 'message', message });
  });

  test('malformed payloads are reported and decoding goes on', () => {
    const decoder = new FrameDecoder();
    decoder.push(rawFrame('{not json'));
    decoder.push(rawFrame(Uint8Array.of(0xff, 0xfe, 0x7b)));
    decoder.push(rawFrame(''));
    decoder.push(rawFrame('{"type":"request","id":5,"method":""}'));
    decoder.push(rawFrame('{"type":"request","id":-1,"method":"x"}'));
    decoder.push(rawFrame('{"type":"teleport"}'));
    decoder.push(rawFrame('[1,2]'));
    decoder.push(encodeFrame({ type: 'ping', seq: 9 }));
    const frames = drain(decoder);
    assert.equal(frames.length, 8);
    for (const f of frames.slice(0, 7)) {
      assert.equal(f.kind, 'malformed');
      if (f.kind === 'malformed') assert.equal(f.error.code, 'malformed');
    }
    // A request with a usable id can be answered; others cannot.
    assert.equal(frames[3]?.kind === 'malformed' && frames[3].requestId, 5);
    assert.equal(frames[4]?.kind === 'malformed' && frames[4].requestId, undefined);
    assert.match(frames[5]?.kind === 'malformed' ? frames[5].error.message : '', /unknown frame type "teleport"/);
    assert.deepEqual(frames[7], { kind: 'message', message: { type: 'ping', seq: 9 } });
  });

  test('takeRemainder returns the bytes after the last frame taken (stream hand-over)', () => {
    const decoder = new FrameDecoder();
    const hello = encodeFrame(samples[1] as LinkMessage);
    const raw = enc.encode('NBDMAGIC raw bytes');
    const chunk = new Uint8Array(hello.length + raw.length);
    chunk.set(hello);
    chunk.set(raw, hello.length);
    decoder.push(chunk.subarray(0, 10));
    decoder.push(chunk.subarray(10));
    assert.equal(decoder.next()?.kind, 'message');
    assert.deepEqual(new TextDecoder().decode(decoder.takeRemainder()), 'NBDMAGIC raw bytes');
    assert.equal(decoder.bufferedBytes, 0);
  });

  test('encodeFrame refuses to produce an oversize frame', () => {
    assert.throws(() => encodeFrame({ type: 'event', name: 'big', payload: 'x'.repeat(2000) }, 1000), FrameTooLargeError);
  });

  test('schemas: hello modes, versions, stream forms', () => {
    assert.equal(parseMessage(enc.encode('{"type":"hello","version":1,"mode":"admin"}')).ok, false);
    assert.equal(parseMessage(enc.encode('{"type":"hello","version":2,"mode":"control"}')).ok, true); // checked by the server
    assert.equal(parseMessage(enc.encode('{"type":"hello","version":1,"mode":"stream","stream":{"link":"L"}}')).ok, false);
    // Target names are looked up in a map, never used as paths; the schema just bounds them.
    assert.equal(messageSchema.safeParse({ type: 'hello', version: 1, mode: 'stream', stream: { link: 'L', target: '../../etc/passwd' } }).success, true);
    assert.equal(parseMessage(enc.encode('{"type":"response","id":1,"ok":false,"error":{"code":"bad code!","message":"x"}}')).ok, false);
  });
});

describe('addresses', () => {
  test('parseAddress accepts https://, snowbird://, bare host:port and IPv6', () => {
    assert.deepEqual(parseAddress('https://core.example:7390'), { host: 'core.example', port: 7390 });
    assert.deepEqual(parseAddress('https://10.0.0.2:443/'), { host: '10.0.0.2', port: 443 });
    assert.deepEqual(parseAddress(' snowbird://core:1 '), { host: 'core', port: 1 });
    assert.deepEqual(parseAddress('127.0.0.1:5000'), { host: '127.0.0.1', port: 5000 });
    assert.deepEqual(parseAddress('https://[::1]:5000'), { host: '::1', port: 5000 });
  });

  test('parseAddress refuses what is not HOST:PORT', () => {
    for (const bad of ['https://core', 'core', 'https://core:0', 'https://core:70000', 'https://u@core:1', 'https://core:1/path', '']) {
      assert.throws(() => parseAddress(bad), TypeError, bad);
    }
  });

  test('formatAddress brackets IPv6', () => {
    assert.equal(formatAddress({ host: '::1', port: 9 }), '[::1]:9');
    assert.equal(formatAddress({ host: 'core', port: 9 }), 'core:9');
  });
});
