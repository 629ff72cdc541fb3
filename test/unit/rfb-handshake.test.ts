// RFB 3.8 handshake state machines, both directions, byte-exact against RFC 6143 §7.1–7.3.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbClientHandshake,
  RfbServerHandshake,
  encodeProtocolVersion,
  encodeServerInit,
  parseProtocolVersion,
  type ClientHandshakeEvent,
  type ServerHandshakeEvent,
  type ServerInit,
} from '../../src/display/common/rfb.ts';
import { ascii, bytes, chunks, concat, mulberry32, u16, u32 } from './rfb-test-support.ts';

/** QEMU's ServerInit for a 720×400 VGA text screen, written out by hand from RFC 6143 §7.3.2. */
const QEMU_SERVER_INIT_BYTES = bytes(
  ...u16(720), ...u16(400),
  32, 24, 0, 1, ...u16(255), ...u16(255), ...u16(255), 16, 8, 0, 0, 0, 0,
  ...u32(4), ...ascii('QEMU'),
);
const QEMU_SERVER_INIT: ServerInit = { width: 720, height: 400, pixelFormat: QEMU_DEFAULT_PIXEL_FORMAT, name: 'QEMU' };

/** What a 3.8 server with security None sends, message by message. */
const SERVER_SIDE = [ascii('RFB 003.008\n'), bytes(1, 1), bytes(...u32(0)), QEMU_SERVER_INIT_BYTES];

function feedAll<E>(feed: (b: Uint8Array) => E[], parts: Uint8Array[]): E[] {
  return parts.flatMap((p) => feed(p));
}

function sent(events: readonly (ClientHandshakeEvent | ServerHandshakeEvent)[]): number[][] {
  return events.flatMap((e) => (e.kind === 'send' ? [[...e.bytes]] : []));
}

/** Events without the `rest` views (which depend on how the bytes were chunked). */
function normalize(events: readonly (ClientHandshakeEvent | ServerHandshakeEvent)[]): unknown[] {
  return events.map((e) => ('rest' in e ? { ...e, rest: [...e.rest] } : e));
}

describe('RfbClientHandshake (we dial QEMU)', () => {
  test('the RFC exchange, step by step, byte-exact', () => {
    const hs = new RfbClientHandshake({ shared: true });
    assert.equal(hs.state, 'protocol-version');
    assert.deepEqual(hs.feed(ascii('RFB 003.008\n')), [
      { kind: 'server-version', version: { major: 3, minor: 8 } },
      { kind: 'send', bytes: ascii('RFB 003.008\n') },
    ]);
    assert.equal(hs.state, 'security-types');
    assert.deepEqual(hs.feed(bytes(1, 1)), [
      { kind: 'security-types', types: [1] },
      { kind: 'send', bytes: bytes(1) },
    ]);
    assert.equal(hs.state, 'security-result');
    assert.deepEqual(hs.feed(bytes(0, 0, 0, 0)), [
      { kind: 'security-result', ok: true },
      { kind: 'send', bytes: bytes(1) }, // ClientInit, shared
    ]);
    assert.equal(hs.state, 'server-init');
    const events = hs.feed(QEMU_SERVER_INIT_BYTES);
    assert.deepEqual(events, [{ kind: 'server-init', serverInit: QEMU_SERVER_INIT, rest: new Uint8Array(0) }]);
    assert.equal(hs.state, 'done');
    assert.deepEqual(hs.serverInit, QEMU_SERVER_INIT);
    assert.equal(hs.bufferedBytes, 0);
  });

  test('whole, byte-by-byte and random chunks give the same events; bytes after ServerInit come back as rest', () => {
    const trailing = bytes(2); // a Bell right behind ServerInit
    const stream = concat([...SERVER_SIDE, trailing]);
    const whole = new RfbClientHandshake({ shared: false });
    const expected = normalize(whole.feed(stream));
    assert.deepEqual(expected.at(-1), { kind: 'server-init', serverInit: QEMU_SERVER_INIT, rest: [2] });
    assert.deepEqual(sent(whole.feed(new Uint8Array(0))), []);

    for (const how of ['bytes', { rand: mulberry32(7), maxChunk: 9 }] as const) {
      const hs = new RfbClientHandshake({ shared: false });
      const parts = chunks(stream, how);
      const events: ClientHandshakeEvent[] = [];
      let i = 0;
      for (; i < parts.length && hs.state !== 'done'; i++) events.push(...hs.feed(parts[i] ?? new Uint8Array(0)));
      const last = events.at(-1);
      assert.ok(last?.kind === 'server-init');
      // The rest is what was left of the chunk that completed ServerInit, plus any later chunks.
      const rest = concat([last.rest, ...parts.slice(i)]);
      assert.deepEqual([...rest], [2]);
      assert.deepEqual(normalize(events.slice(0, -1)), expected.slice(0, -1));
    }
    assert.deepEqual(sent(whole.feed(new Uint8Array(0))), []);
  });

  test('a shared=false ClientInit is a 0 byte', () => {
    const hs = new RfbClientHandshake({ shared: false });
    const events = feedAll((b) => hs.feed(b), SERVER_SIDE.slice(0, 3));
    assert.deepEqual(sent(events), [[...ascii('RFB 003.008\n')], [1], [0]]);
  });

  test('3.3 and 3.7 servers are parsed and refused as unsupported', () => {
    for (const minor of [3, 7]) {
      const hs = new RfbClientHandshake({ shared: true });
      const events = hs.feed(ascii(`RFB 003.00${minor}\n`));
      assert.deepEqual(events[0], { kind: 'server-version', version: { major: 3, minor } });
      assert.equal(events.length, 2);
      assert.equal(events[1]?.kind, 'error');
      assert.equal(hs.error?.code, 'unsupported');
      assert.equal(hs.error?.where, 'ProtocolVersion');
      assert.equal(hs.state, 'failed');
    }
  });

  test('a later server version is answered with 3.8 (RFC 6143 §7.1.1)', () => {
    const hs = new RfbClientHandshake({ shared: true });
    assert.deepEqual(sent(hs.feed(ascii('RFB 004.001\n'))), [[...ascii('RFB 003.008\n')]]);
    assert.equal(hs.state, 'security-types');
  });

  test('a garbled ProtocolVersion is malformed', () => {
    const hs = new RfbClientHandshake({ shared: true });
    const events = hs.feed(ascii('HTTP/1.1 400'));
    assert.equal(events.length, 1);
    assert.equal(hs.error?.code, 'malformed');
    assert.equal(hs.error?.where, 'ProtocolVersion');
  });

  test('an empty security list carries the reason the server refuses us', () => {
    const hs = new RfbClientHandshake({ shared: true });
    hs.feed(ascii('RFB 003.008\n'));
    const events = hs.feed(bytes(0, ...u32(7), ...ascii('go away')));
    assert.equal(events.length, 1);
    assert.equal(hs.error?.code, 'refused');
    assert.equal(hs.error?.reason, 'go away');
    assert.equal(hs.error?.where, 'SecurityTypes');
  });

  test('without None we refuse, unless VNC authentication is allowed; then the challenge is a value to answer', () => {
    const refusing = new RfbClientHandshake({ shared: true });
    refusing.feed(ascii('RFB 003.008\n'));
    refusing.feed(bytes(2, 2, 16));
    assert.equal(refusing.error?.code, 'unsupported');
    assert.match(refusing.error?.message ?? '', /\[2, 16\]/);

    const hs = new RfbClientHandshake({ shared: true, vncAuth: true });
    hs.feed(ascii('RFB 003.008\n'));
    assert.deepEqual(sent(hs.feed(bytes(1, 2))), [[2]]);
    const challenge = Uint8Array.from({ length: 16 }, (_, i) => i + 100);
    assert.deepEqual(hs.feed(challenge), [{ kind: 'vnc-auth-challenge', challenge }]);
    assert.equal(hs.state, 'vnc-auth-response');
    const response = Uint8Array.from({ length: 16 }, (_, i) => 255 - i);
    assert.deepEqual(hs.respondToChallenge(response), [{ kind: 'send', bytes: response }]);
    assert.equal(hs.state, 'security-result');
    assert.deepEqual(sent(hs.feed(bytes(0, 0, 0, 0))), [[1]]);
  });

  test('the server speaking before we answered its challenge is malformed; a second answer is a state error', () => {
    const early = new RfbClientHandshake({ shared: true, vncAuth: true });
    early.feed(concat([ascii('RFB 003.008\n'), bytes(1, 2), new Uint8Array(16)]));
    early.feed(bytes(0));
    assert.equal(early.error?.code, 'malformed');
    const sameChunk = new RfbClientHandshake({ shared: true, vncAuth: true });
    const events = sameChunk.feed(concat([ascii('RFB 003.008\n'), bytes(1, 2), new Uint8Array(16), bytes(0)]));
    assert.deepEqual(events.map((e) => e.kind), ['server-version', 'send', 'security-types', 'send', 'vnc-auth-challenge', 'error']);
    assert.equal(sameChunk.error?.code, 'malformed');

    const twice = new RfbClientHandshake({ shared: true, vncAuth: true });
    twice.feed(concat([ascii('RFB 003.008\n'), bytes(1, 2), new Uint8Array(16)]));
    twice.respondToChallenge(new Uint8Array(16));
    const second = twice.respondToChallenge(new Uint8Array(16));
    assert.equal(second[0]?.kind, 'error');
    assert.equal(twice.error?.code, 'state');

    const short = new RfbClientHandshake({ shared: true, vncAuth: true });
    short.feed(concat([ascii('RFB 003.008\n'), bytes(1, 2), new Uint8Array(16)]));
    assert.deepEqual(short.respondToChallenge(new Uint8Array(8)), [{ kind: 'error', error: short.error }]);
    assert.match(short.error?.message ?? '', /8 bytes, expected 16/);
  });

  test('a failed SecurityResult carries its reason', () => {
    const hs = new RfbClientHandshake({ shared: true });
    hs.feed(concat([ascii('RFB 003.008\n'), bytes(1, 1)]));
    hs.feed(bytes(...u32(1), ...u32(21), ...ascii('Authentication failed')));
    assert.equal(hs.error?.code, 'refused');
    assert.equal(hs.error?.where, 'SecurityResult');
    assert.equal(hs.error?.reason, 'Authentication failed');
  });

  test('reason, name and size limits are enforced from the length fields alone', () => {
    const reason = new RfbClientHandshake({ shared: true });
    reason.feed(concat([ascii('RFB 003.008\n'), bytes(0, ...u32(0xffffffff))]));
    assert.equal(reason.error?.code, 'too-large');
    assert.equal(reason.error?.where, 'SecurityTypes.reason-length');
    assert.equal(reason.bufferedBytes, 0);

    const prefix = concat(SERVER_SIDE.slice(0, 3));
    const withInit = (init: Uint8Array, limits = {}): RfbClientHandshake => {
      const hs = new RfbClientHandshake({ shared: true, limits });
      hs.feed(concat([prefix, init]));
      return hs;
    };
    const name = QEMU_SERVER_INIT_BYTES.slice(0, 24);
    name.set(u32(4097), 20);
    assert.equal(withInit(name).error?.where, 'ServerInit.name-length');
    const wide = QEMU_SERVER_INIT_BYTES.slice();
    wide.set(u16(16385), 0);
    assert.equal(withInit(wide).error?.where, 'ServerInit.framebuffer-width');
    assert.equal(withInit(wide).error?.code, 'too-large');
    const tall = QEMU_SERVER_INIT_BYTES.slice();
    tall.set(u16(16385), 2);
    assert.equal(withInit(tall).error?.where, 'ServerInit.framebuffer-height');
    assert.equal(withInit(QEMU_SERVER_INIT_BYTES, { maxDimension: 720 }).error, undefined);
    assert.equal(withInit(QEMU_SERVER_INIT_BYTES, { maxDimension: 719 }).error?.where, 'ServerInit.framebuffer-width');
    const bpp = QEMU_SERVER_INIT_BYTES.slice();
    bpp[4] = 24;
    assert.equal(withInit(bpp).error?.where, 'ServerInit.pixel-format.bits-per-pixel');
    assert.equal(withInit(bpp).error?.code, 'malformed');
  });

  test('a finished handshake refuses more bytes; a failed one repeats its error', () => {
    const hs = new RfbClientHandshake({ shared: true });
    hs.feed(concat(SERVER_SIDE));
    assert.deepEqual(hs.feed(new Uint8Array(0)), []);
    const events = hs.feed(bytes(2));
    assert.equal(events[0]?.kind, 'error');
    assert.equal(hs.error?.code, 'state');
    assert.deepEqual(hs.feed(bytes(1)), [{ kind: 'error', error: hs.error }]);
  });
});

describe('RfbServerHandshake (a viewer dials us)', () => {
  test('the RFC exchange, step by step, byte-exact', () => {
    const hs = new RfbServerHandshake();
    assert.equal(hs.state, 'start');
    assert.deepEqual(hs.start(), [{ kind: 'send', bytes: ascii('RFB 003.008\n') }]);
    assert.deepEqual(hs.feed(ascii('RFB 003.008\n')), [
      { kind: 'client-version', version: { major: 3, minor: 8 } },
      { kind: 'send', bytes: bytes(1, 1) },
    ]);
    assert.deepEqual(hs.feed(bytes(1)), [
      { kind: 'security-type', type: 1 },
      { kind: 'send', bytes: bytes(0, 0, 0, 0) },
    ]);
    assert.deepEqual(hs.feed(bytes(0)), [{ kind: 'client-init', shared: false, rest: new Uint8Array(0) }]);
    assert.equal(hs.state, 'server-init');
    assert.deepEqual(hs.sendServerInit(QEMU_SERVER_INIT), [{ kind: 'send', bytes: QEMU_SERVER_INIT_BYTES }]);
    assert.equal(hs.state, 'done');
  });

  test('messages a viewer pipelines after ClientInit come back as rest', () => {
    const hs = new RfbServerHandshake();
    hs.start();
    const events = hs.feed(concat([ascii('RFB 003.008\n'), bytes(1), bytes(1), bytes(5, 0, 0, 1, 0, 2)]));
    assert.deepEqual(normalize(events).at(-1), { kind: 'client-init', shared: true, rest: [5, 0, 0, 1, 0, 2] });
    // Later bytes go to the client-message decoder; feeding them here is a caller bug.
    hs.feed(bytes(2));
    assert.equal(hs.error?.code, 'state');
  });

  test('1-byte and random chunks give the same events', () => {
    const stream = concat([ascii('RFB 003.008\n'), bytes(1), bytes(1)]);
    const run = (how: Parameters<typeof chunks>[1]): unknown[] => {
      const hs = new RfbServerHandshake();
      return normalize([...hs.start(), ...chunks(stream, how).flatMap((c) => hs.feed(c))]);
    };
    const expected = run('whole');
    assert.deepEqual(run('bytes'), expected);
    assert.deepEqual(run({ rand: mulberry32(3), maxChunk: 5 }), expected);
  });

  test('3.3 and 3.7 viewers are told why, in the form their version reads', () => {
    const v33 = new RfbServerHandshake();
    v33.start();
    const events33 = v33.feed(ascii('RFB 003.003\n'));
    assert.deepEqual(events33[0], { kind: 'client-version', version: { major: 3, minor: 3 } });
    const reason33 = 'this server speaks RFB 3.8 only, not 3.3';
    assert.deepEqual(sent(events33), [[...u32(0), ...u32(reason33.length), ...ascii(reason33)]]);
    assert.equal(v33.error?.code, 'unsupported');

    const v37 = new RfbServerHandshake();
    v37.start();
    const reason37 = 'this server speaks RFB 3.8 only, not 3.7';
    assert.deepEqual(sent(v37.feed(ascii('RFB 003.007\n'))), [[0, ...u32(reason37.length), ...ascii(reason37)]]);
    assert.equal(v37.error?.code, 'unsupported');

    // Apple's 3.889 (and any other odd version) is read as 3.3, as RFC 6143 §7.1.1 says.
    const apple = new RfbServerHandshake();
    apple.start();
    assert.equal(sent(apple.feed(ascii('RFB 003.889\n')))[0]?.length, 4 + 4 + 'this server speaks RFB 3.8 only, not 3.889'.length);
  });

  test('a security type we did not offer gets a failed SecurityResult with a reason', () => {
    const hs = new RfbServerHandshake();
    hs.start();
    hs.feed(ascii('RFB 003.008\n'));
    const events = hs.feed(bytes(2));
    const reason = 'security type 2 was not offered';
    assert.deepEqual(sent(events), [[...u32(1), ...u32(reason.length), ...ascii(reason)]]);
    assert.equal(hs.error?.code, 'malformed');
    assert.equal(hs.error?.where, 'SecurityType');
  });

  test('out-of-order calls are state errors; a bad ServerInit is refused before it is sent', () => {
    const early = new RfbServerHandshake();
    early.feed(ascii('RFB 003.008\n'));
    assert.equal(early.error?.code, 'state');

    const noInit = new RfbServerHandshake();
    noInit.start();
    noInit.sendServerInit(QEMU_SERVER_INIT);
    assert.equal(noInit.error?.code, 'state');

    const big = new RfbServerHandshake();
    big.start();
    big.feed(concat([ascii('RFB 003.008\n'), bytes(1), bytes(1)]));
    const events = big.sendServerInit({ ...QEMU_SERVER_INIT, name: 'x'.repeat(4097) });
    assert.deepEqual(sent(events), []);
    assert.equal(big.error?.where, 'ServerInit.name-length');
  });

  test('our client handshake and our server handshake complete against each other', () => {
    const server = new RfbServerHandshake();
    const client = new RfbClientHandshake({ shared: true });
    const toBytes = (events: readonly (ClientHandshakeEvent | ServerHandshakeEvent)[]): Uint8Array[] =>
      sent(events).map((b) => Uint8Array.from(b));
    let toClient = toBytes(server.start());
    for (let round = 0; round < 10 && client.state !== 'done'; round++) {
      const toServer = toBytes(toClient.flatMap((b) => client.feed(b)));
      const serverEvents = toServer.flatMap((b) => server.feed(b));
      if (serverEvents.some((e) => e.kind === 'client-init')) serverEvents.push(...server.sendServerInit(QEMU_SERVER_INIT));
      toClient = toBytes(serverEvents);
    }
    assert.equal(client.state, 'done');
    assert.equal(server.state, 'done');
    assert.deepEqual(client.serverInit, QEMU_SERVER_INIT);
  });
});

describe('ProtocolVersion and ServerInit values', () => {
  test('parse and encode round-trip', () => {
    for (const v of [{ major: 3, minor: 3 }, { major: 3, minor: 7 }, { major: 3, minor: 8 }, { major: 3, minor: 889 }]) {
      assert.deepEqual(parseProtocolVersion(encodeProtocolVersion(v)), v);
    }
    assert.equal(parseProtocolVersion(ascii('RFB 003.008\r')), undefined);
    assert.equal(parseProtocolVersion(ascii('RFB 3.8\n')), undefined);
    assert.deepEqual(encodeServerInit(QEMU_SERVER_INIT), QEMU_SERVER_INIT_BYTES);
  });

  test('encoding checks its ranges (our bug, so it throws)', () => {
    assert.throws(() => encodeServerInit({ ...QEMU_SERVER_INIT, width: 70000 }), { name: 'RfbEncodeError', message: /framebuffer-width/ });
    assert.throws(() => encodeServerInit({ ...QEMU_SERVER_INIT, pixelFormat: { ...QEMU_DEFAULT_PIXEL_FORMAT, bitsPerPixel: 24 } }), {
      name: 'RfbEncodeError',
    });
  });
});
