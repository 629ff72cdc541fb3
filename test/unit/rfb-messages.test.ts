// RFB messages in both directions: byte layouts, round trips, chunked feeding, limits, malformed input.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbClientMessageDecoder,
  RfbEncoding,
  RfbServerMessageDecoder,
  encodeClientMessage,
  encodeServerMessage,
  extendedDesktopSizeScreens,
  pixelsToRgba,
  summarizeUpdate,
  supportedEncodings,
  type ClientStreamItem,
  type RfbLimits,
  type RfbServerMessage,
  type ServerStreamItem,
} from '../../src/display/common/rfb.ts';
import {
  CLIENT_SAMPLES,
  NOVNC_PIXEL_FORMAT,
  RGB565_BIG_ENDIAN,
  SAMPLE_PIXEL_FORMAT,
  SAMPLE_RECTS,
  SERVER_SAMPLES,
  bytes,
  chunks,
  concat,
  mulberry32,
  s32,
  u16,
  u32,
} from './rfb-test-support.ts';

function decodeClient(stream: Uint8Array, how: Parameters<typeof chunks>[1] = 'whole', limits?: Partial<RfbLimits>): ClientStreamItem[] {
  const decoder = new RfbClientMessageDecoder(limits);
  return chunks(stream, how).flatMap((c) => decoder.feed(c));
}

function decodeServer(stream: Uint8Array, how: Parameters<typeof chunks>[1] = 'whole', limits?: Partial<RfbLimits>): ServerStreamItem[] {
  const decoder = new RfbServerMessageDecoder(SAMPLE_PIXEL_FORMAT, limits);
  return chunks(stream, how).flatMap((c) => decoder.feed(c));
}

/** The single error a stream ends with. */
function errorOf(items: readonly (ClientStreamItem | ServerStreamItem)[]): { code: string; where: string } {
  const last = items.at(-1);
  assert.ok(last?.kind === 'error', `expected an error, got ${JSON.stringify(last?.kind)}`);
  assert.equal(items.filter((i) => i.kind === 'error').length, 1);
  return { code: last.error.code, where: last.error.where };
}

function rectMessage(encoding: number, width: number, height: number, payload: number[], count = 1): Uint8Array {
  return bytes(0, 0, ...u16(count), ...u16(0), ...u16(0), ...u16(width), ...u16(height), ...s32(encoding), ...payload);
}

describe('client → server messages', () => {
  test('byte layouts follow RFC 6143 §7.5', () => {
    assert.deepEqual(encodeClientMessage({ type: 'key-event', down: true, keysym: 0xff0d }), bytes(4, 1, 0, 0, 0, 0, 0xff, 0x0d));
    assert.deepEqual(encodeClientMessage({ type: 'pointer-event', buttonMask: 5, x: 300, y: 2 }), bytes(5, 5, 1, 44, 0, 2));
    assert.deepEqual(
      encodeClientMessage({ type: 'framebuffer-update-request', incremental: true, x: 1, y: 2, width: 720, height: 400 }),
      bytes(3, 1, 0, 1, 0, 2, 2, 208, 1, 144),
    );
    assert.deepEqual(encodeClientMessage({ type: 'set-encodings', encodings: [16, -223] }), bytes(2, 0, 0, 2, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0x21));
    assert.deepEqual(
      encodeClientMessage({ type: 'set-pixel-format', pixelFormat: NOVNC_PIXEL_FORMAT }),
      bytes(0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0),
    );
    assert.deepEqual(encodeClientMessage({ type: 'client-cut-text', text: 'hé' }), bytes(6, 0, 0, 0, 0, 0, 0, 2, 0x68, 0xe9));
    assert.deepEqual(encodeClientMessage({ type: 'qemu-extended-key-event', down: true, keysym: 0x61, keycode: 0x1e }), bytes(255, 0, 0, 1, ...u32(0x61), ...u32(0x1e)));
  });

  test('every message round-trips: parse(encode(m)) deep-equals m, and the bytes are kept', () => {
    for (const m of CLIENT_SAMPLES) {
      const encoded = encodeClientMessage(m);
      assert.deepEqual(decodeClient(encoded), [{ kind: 'message', message: m, bytes: encoded }], m.type);
    }
  });

  test('whole, 1-byte and random chunks give identical results', () => {
    const stream = concat(CLIENT_SAMPLES.map(encodeClientMessage));
    const expected = decodeClient(stream);
    assert.equal(expected.length, CLIENT_SAMPLES.length);
    assert.deepEqual(decodeClient(stream, 'bytes'), expected);
    const rand = mulberry32(42);
    for (let i = 0; i < 20; i++) assert.deepEqual(decodeClient(stream, { rand, maxChunk: 1 + i * 7 }), expected);
  });

  test('only the message in progress is buffered', () => {
    const decoder = new RfbClientMessageDecoder();
    const cut = encodeClientMessage({ type: 'client-cut-text', text: 'x'.repeat(1000) });
    decoder.feed(cut.subarray(0, 500));
    assert.equal(decoder.bufferedBytes, 500);
    decoder.feed(cut.subarray(500));
    assert.equal(decoder.bufferedBytes, 0);
  });

  test('limits: cut text, encodings, fence payload, desktop size', () => {
    const cut = (n: number): Uint8Array => bytes(6, 0, 0, 0, ...u32(n));
    assert.deepEqual(errorOf(decodeClient(cut(1024 * 1024 + 1))), { code: 'too-large', where: 'ClientCutText.length' });
    assert.deepEqual(errorOf(decodeClient(bytes(6, 0, 0, 0, ...s32(-(1024 * 1024 + 1))))), { code: 'too-large', where: 'ClientCutText.length' });
    assert.equal(decodeClient(concat([cut(10), new Uint8Array(10)]), 'whole', { maxCutTextBytes: 10 })[0]?.kind, 'message');
    assert.deepEqual(errorOf(decodeClient(cut(11), 'whole', { maxCutTextBytes: 10 })), { code: 'too-large', where: 'ClientCutText.length' });

    assert.deepEqual(errorOf(decodeClient(bytes(2, 0, ...u16(257)))), { code: 'too-large', where: 'SetEncodings.number-of-encodings' });
    const many = encodeClientMessage({ type: 'set-encodings', encodings: Array.from({ length: 256 }, (_, i) => i) });
    assert.equal(decodeClient(many)[0]?.kind, 'message');
    assert.deepEqual(errorOf(decodeClient(many, 'whole', { maxEncodings: 64 })), { code: 'too-large', where: 'SetEncodings.number-of-encodings' });

    assert.deepEqual(errorOf(decodeClient(bytes(248, 0, 0, 0, ...u32(0), 65))), { code: 'too-large', where: 'ClientFence.length' });
    assert.deepEqual(errorOf(decodeClient(bytes(251, 0, ...u16(16385), ...u16(100), 0, 0))), { code: 'too-large', where: 'SetDesktopSize.width' });
  });

  test('the message-size cap stops a huge declared length before anything is buffered', () => {
    const decoder = new RfbClientMessageDecoder({ maxMessageBytes: 64, maxCutTextBytes: 1 << 20 });
    const items = decoder.feed(bytes(6, 0, 0, 0, ...u32(100), 1, 2, 3));
    assert.deepEqual(errorOf(items), { code: 'too-large', where: 'ClientCutText (message size)' });
    assert.match(decoder.error?.message ?? '', /108 exceeds the limit of 64/);
    assert.equal(decoder.bufferedBytes, 0);
  });

  test('malformed and unsupported input gives named errors, and the decoder stays failed', () => {
    const cases: [Uint8Array, string, string][] = [
      [bytes(7), 'unsupported', 'client message'],
      [bytes(1, 0, 0, 0), 'unsupported', 'client message'],
      [bytes(0, 0, 0, 0, 24, 24, 0, 1, ...new Uint8Array(12)), 'malformed', 'SetPixelFormat.pixel-format.bits-per-pixel'],
      [bytes(6, 0, 0, 0, ...s32(-3), 0, 0, 0), 'malformed', 'ClientCutText.length'],
      [bytes(255, 9), 'unsupported', 'QemuClientMessage.submessage-type'],
      [bytes(255, 1, 0, 7), 'unsupported', 'QemuAudio.operation'],
      [bytes(255, 1, 0, 2, 6, 2, ...u32(44100)), 'malformed', 'QemuAudio.format'],
      [bytes(255, 1, 0, 2, 3, 3, ...u32(44100)), 'malformed', 'QemuAudio.channels'],
    ];
    for (const [stream, code, where] of cases) {
      const decoder = new RfbClientMessageDecoder();
      const items = decoder.feed(concat([encodeClientMessage({ type: 'key-event', down: true, keysym: 1 }), stream]));
      assert.equal(items[0]?.kind, 'message');
      assert.deepEqual(errorOf(items), { code, where }, where);
      assert.equal(decoder.failed, true);
      assert.equal(decoder.bufferedBytes, 0);
      const again = decoder.feed(encodeClientMessage({ type: 'key-event', down: true, keysym: 1 }));
      assert.deepEqual(again, [{ kind: 'error', error: decoder.error }]);
    }
  });

  test('serializers refuse values the wire cannot carry', () => {
    assert.throws(() => encodeClientMessage({ type: 'pointer-event', buttonMask: 256, x: 0, y: 0 }), { name: 'RfbEncodeError', message: /button-mask/ });
    assert.throws(() => encodeClientMessage({ type: 'key-event', down: true, keysym: -1 }), { name: 'RfbEncodeError' });
    assert.throws(() => encodeClientMessage({ type: 'client-cut-text', text: '€' }), { name: 'RfbEncodeError', message: /ISO 8859-1/ });
    assert.throws(() => encodeClientMessage({ type: 'client-fence', flags: 0, payload: new Uint8Array(65) }), { name: 'RfbEncodeError' });
  });
});

describe('server → client messages', () => {
  test('every message round-trips, with its exact bytes', () => {
    for (const m of SERVER_SAMPLES) {
      const encoded = encodeServerMessage(m);
      const items = decodeServer(encoded);
      assert.equal(items.length, 1, m.type);
      const [item] = items;
      assert.ok(item?.kind === 'message');
      assert.deepEqual(item.message, m, m.type);
      assert.deepEqual(item.bytes, encoded);
    }
  });

  test('whole, 1-byte and random chunks give identical results', () => {
    const stream = concat(SERVER_SAMPLES.map(encodeServerMessage));
    const expected = decodeServer(stream);
    assert.equal(expected.length, SERVER_SAMPLES.length);
    assert.deepEqual(decodeServer(stream, 'bytes'), expected);
    const rand = mulberry32(99);
    for (let i = 0; i < 20; i++) assert.deepEqual(decodeServer(stream, { rand, maxChunk: 1 + i * 97 }), expected);
  });

  test('an update is summarized: rectangles, pixel rectangles, changed pixels, new size', () => {
    const [item] = decodeServer(encodeServerMessage({ type: 'framebuffer-update', rects: SAMPLE_RECTS }));
    assert.ok(item?.kind === 'message');
    const pixelRects = SAMPLE_RECTS.filter((r) => r.encoding >= 0 && r.encoding <= 17 || r.encoding === RfbEncoding.TightPNG);
    assert.deepEqual(item.summary, {
      rects: SAMPLE_RECTS.length,
      pixelRects: pixelRects.length,
      changedPixels: pixelRects.reduce((n, r) => n + r.width * r.height, 0),
      desktopSize: { width: 640, height: 480 },
      desktopName: 'Debian — demo',
    });
    const bell = decodeServer(bytes(2))[0];
    assert.ok(bell?.kind === 'message' && bell.summary === undefined);
    const eds = SAMPLE_RECTS.find((r) => r.encoding === RfbEncoding.ExtendedDesktopSize);
    assert.ok(eds !== undefined);
    assert.deepEqual(extendedDesktopSizeScreens(eds), [{ id: 7, x: 0, y: 0, width: 800, height: 600, flags: 0 }]);
    assert.deepEqual(summarizeUpdate([{ ...eds, y: 3 }]).desktopSize, undefined); // a failed resize changes nothing
  });

  test('LastRect ends an update whose count was a placeholder', () => {
    const stream = concat([
      bytes(0, 0, ...u16(0xffff)),
      bytes(...u16(0), ...u16(0), ...u16(1), ...u16(1), ...s32(RfbEncoding.Raw), 1, 2, 3, 4),
      bytes(...u16(0), ...u16(0), ...u16(0), ...u16(0), ...s32(RfbEncoding.LastRect)),
      bytes(2),
    ]);
    const items = decodeServer(stream, 'bytes');
    assert.equal(items.length, 2);
    assert.ok(items[0]?.kind === 'message' && items[0].message.type === 'framebuffer-update');
    assert.equal(items[0].message.rects.length, 2);
    assert.equal(items[0].bytes.length, 4 + 16 + 12);
    assert.deepEqual(items[1]?.kind === 'message' && items[1].message, { type: 'bell' });
  });

  test('Raw, RRE, Hextile and Cursor are framed in the pixel format in effect', () => {
    const raw16 = rectMessage(RfbEncoding.Raw, 2, 1, [1, 2, 3, 4]);
    const decoder = new RfbServerMessageDecoder(QEMU_DEFAULT_PIXEL_FORMAT);
    assert.equal(decoder.feed(raw16).length, 0); // at 4 bytes a pixel, 4 more are still missing
    assert.equal(decoder.setPixelFormat(RGB565_BIG_ENDIAN), undefined);
    assert.equal(decoder.feed(new Uint8Array(4))[0]?.kind, 'message'); // the started message keeps its format

    const d16 = new RfbServerMessageDecoder(QEMU_DEFAULT_PIXEL_FORMAT);
    d16.setPixelFormat(RGB565_BIG_ENDIAN);
    const items = d16.feed(concat([raw16, rectMessage(RfbEncoding.Hextile, 1, 1, [1, 9, 9])]));
    assert.deepEqual(items.map((i) => i.kind), ['message', 'message']);
    assert.deepEqual(d16.setPixelFormat({ ...RGB565_BIG_ENDIAN, bitsPerPixel: 12 })?.where, 'SetPixelFormat.pixel-format.bits-per-pixel');
    assert.equal(d16.pixelFormat.bitsPerPixel, 16);
  });

  test('a PixelFormatChange rectangle changes the format for the rest of the stream', () => {
    const decoder = new RfbServerMessageDecoder(QEMU_DEFAULT_PIXEL_FORMAT);
    const [wmvi] = decoder.feed(encodeServerMessage(SERVER_SAMPLES[2] as RfbServerMessage));
    assert.ok(wmvi?.kind === 'message');
    assert.deepEqual(wmvi.summary?.pixelFormat, QEMU_DEFAULT_PIXEL_FORMAT);
    const to8 = rectMessage(RfbEncoding.PixelFormatChange, 0, 0, [8, 8, 0, 0, ...new Uint8Array(12)]);
    decoder.feed(to8);
    assert.equal(decoder.pixelFormat.bitsPerPixel, 8);
    assert.equal(decoder.feed(rectMessage(RfbEncoding.Raw, 3, 1, [1, 2, 3]))[0]?.kind, 'message');
  });

  test('limits: rectangles, dimensions, message size, cut text, names, audio, fences', () => {
    const tight: Partial<RfbLimits> = { maxMessageBytes: 1024 };
    assert.deepEqual(errorOf(decodeServer(bytes(0, 0, ...u16(11)), 'whole', { maxRects: 10 })), { code: 'too-large', where: 'FramebufferUpdate.number-of-rectangles' });
    assert.deepEqual(errorOf(decodeServer(rectMessage(RfbEncoding.Raw, 16385, 1, []))), { code: 'too-large', where: 'FramebufferUpdate.rect[0](Raw).width' });
    assert.deepEqual(errorOf(decodeServer(rectMessage(RfbEncoding.Raw, 1, 16385, []))), { code: 'too-large', where: 'FramebufferUpdate.rect[0](Raw).height' });
    // 16384 × 16384 × 4 bytes is a valid size for RFB but not for one message of ours.
    const huge = decodeServer(rectMessage(RfbEncoding.Raw, 16384, 16384, []));
    assert.deepEqual(errorOf(huge), { code: 'too-large', where: 'FramebufferUpdate.rect[0](Raw) (message size)' });
    assert.deepEqual(errorOf(decodeServer(rectMessage(RfbEncoding.Raw, 16, 16, []), 'whole', tight)), { code: 'too-large', where: 'FramebufferUpdate.rect[0](Raw) (message size)' });
    assert.equal(decodeServer(concat([rectMessage(RfbEncoding.Raw, 15, 16, []), new Uint8Array(960)]), 'whole', tight)[0]?.kind, 'message');
    assert.deepEqual(errorOf(decodeServer(rectMessage(RfbEncoding.ZRLE, 8, 8, u32(0xffffffff)))), { code: 'too-large', where: 'FramebufferUpdate.rect[0](ZRLE).length' });
    assert.deepEqual(errorOf(decodeServer(rectMessage(RfbEncoding.RRE, 8, 8, [...u32(0xffffffff), 0, 0, 0, 0]))), { code: 'too-large', where: 'FramebufferUpdate.rect[0](RRE).number-of-subrectangles' });
    assert.deepEqual(errorOf(decodeServer(rectMessage(RfbEncoding.DesktopName, 0, 0, u32(4097)))), { code: 'too-large', where: 'FramebufferUpdate.rect[0](DesktopName).name-length' });
    assert.deepEqual(errorOf(decodeServer(bytes(3, 0, 0, 0, ...u32(0x7fffffff)))), { code: 'too-large', where: 'ServerCutText.length' });
    assert.deepEqual(errorOf(decodeServer(bytes(255, 1, 0, 2, ...u32(1024 * 1024 + 1)))), { code: 'too-large', where: 'QemuAudio.length' });
    assert.deepEqual(errorOf(decodeServer(bytes(248, 0, 0, 0, ...u32(0), 200))), { code: 'too-large', where: 'ServerFence.length' });
    assert.equal(huge.length, 1);
  });

  test('the buffered bytes never exceed the message cap, fed any way', () => {
    const limits = { maxMessageBytes: 4096 };
    const stream = concat([rectMessage(RfbEncoding.Raw, 30, 30, []), new Uint8Array(3600), rectMessage(RfbEncoding.Raw, 40, 40, [])]);
    const decoder = new RfbServerMessageDecoder(QEMU_DEFAULT_PIXEL_FORMAT, limits);
    let max = 0;
    const items: ServerStreamItem[] = [];
    for (const c of chunks(stream, { rand: mulberry32(5), maxChunk: 300 })) {
      items.push(...decoder.feed(c));
      max = Math.max(max, decoder.bufferedBytes);
    }
    assert.ok(max <= 4096, `buffered ${max}`);
    assert.deepEqual(items.map((i) => i.kind), ['message', 'error']);
  });

  test('malformed and unsupported input gives named errors', () => {
    const cases: [Uint8Array, string, string][] = [
      [bytes(4), 'unsupported', 'server message'],
      [rectMessage(12345, 1, 1, []), 'unsupported', 'FramebufferUpdate.rect[0](12345).encoding-type'],
      [rectMessage(RfbEncoding.Hextile, 16, 16, [0x20]), 'malformed', 'FramebufferUpdate.rect[0](Hextile).subencoding'],
      [rectMessage(RfbEncoding.Tight, 4, 4, [0x40, 3]), 'malformed', 'FramebufferUpdate.rect[0](Tight).filter-id'],
      [rectMessage(RfbEncoding.Tight, 4, 4, [0xa0]), 'unsupported', 'FramebufferUpdate.rect[0](Tight).compression-control'],
      [rectMessage(RfbEncoding.Tight, 4, 4, [0xb0]), 'malformed', 'FramebufferUpdate.rect[0](Tight).compression-control'],
      [rectMessage(RfbEncoding.AlphaCursor, 4, 4, s32(RfbEncoding.ZRLE)), 'unsupported', 'FramebufferUpdate.rect[0](AlphaCursor).encoding'],
      [rectMessage(RfbEncoding.PixelFormatChange, 0, 0, [12, 12, ...new Uint8Array(14)]), 'malformed', 'FramebufferUpdate.rect[0](PixelFormatChange).pixel-format.bits-per-pixel'],
      [bytes(1, 0, ...u16(65535), ...u16(2)), 'malformed', 'SetColourMapEntries.number-of-colours'],
      [bytes(3, 0, 0, 0, ...s32(-1), 0), 'malformed', 'ServerCutText.length'],
      [bytes(255, 0), 'unsupported', 'QemuServerMessage.submessage-type'],
      [bytes(255, 1, 0, 9), 'unsupported', 'QemuAudio.operation'],
    ];
    for (const [stream, code, where] of cases) {
      const decoder = new RfbServerMessageDecoder(QEMU_DEFAULT_PIXEL_FORMAT);
      const items = decoder.feed(concat([bytes(2), stream]));
      assert.equal(items[0]?.kind, 'message');
      assert.deepEqual(errorOf(items), { code, where }, where);
      assert.equal(decoder.failed, true);
      assert.deepEqual(decoder.feed(bytes(2)), [{ kind: 'error', error: decoder.error }]);
    }
  });
});

describe('pixels and encodings', () => {
  test('Raw pixels become RGBA in any true-colour format', () => {
    // QEMU's xRGB little endian: bytes B, G, R, x.
    const qemu = pixelsToRgba(QEMU_DEFAULT_PIXEL_FORMAT, bytes(0x30, 0x20, 0x10, 0, 0xa8, 0xa8, 0xa8, 0), 2);
    assert.deepEqual(qemu, { ok: true, rgba: bytes(0x10, 0x20, 0x30, 255, 0xa8, 0xa8, 0xa8, 255) });
    // noVNC's format: bytes R, G, B, x.
    assert.deepEqual(pixelsToRgba(NOVNC_PIXEL_FORMAT, bytes(1, 2, 3, 0), 1), { ok: true, rgba: bytes(1, 2, 3, 255) });
    // RGB565 big endian: pure red, pure green.
    assert.deepEqual(pixelsToRgba(RGB565_BIG_ENDIAN, bytes(0xf8, 0x00, 0x07, 0xe0), 2), { ok: true, rgba: bytes(255, 0, 0, 255, 0, 255, 0, 255) });
    const mapped = { ...QEMU_DEFAULT_PIXEL_FORMAT, bitsPerPixel: 8, trueColour: false };
    assert.deepEqual(pixelsToRgba(mapped, bytes(1), 1, Uint16Array.of(0, 0, 0, 0xffff, 0x8000, 0)), { ok: true, rgba: bytes(255, 128, 0, 255) });
    assert.equal(pixelsToRgba(mapped, bytes(1), 1).ok, false);
    assert.equal(pixelsToRgba(QEMU_DEFAULT_PIXEL_FORMAT, bytes(1, 2, 3), 1).ok, false);
  });

  test('supportedEncodings keeps what we can frame, in order', () => {
    const novnc = [1, 7, -260, 16, 21, 5, 2, 0, -26, -254, -223, -224, -258, -261, -308, -309, -312, -313, -307, -1063131698, -316, 0x574d5664, -239];
    assert.deepEqual(supportedEncodings(novnc), [1, 7, -260, 16, 5, 2, 0, -26, -254, -223, -224, -258, -261, -308, -312, -313, -307, -1063131698, -239]);
  });
});
