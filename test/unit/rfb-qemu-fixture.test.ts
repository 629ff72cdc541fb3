// Real bytes from QEMU 7.2's VNC server (test/fixtures/rfb/, see its README): the handshake, the
// acknowledgements QEMU sends for pseudo-encodings, a full 720×400 VGA text frame and incremental
// updates while text is typed, in ZRLE, Tight (noVNC's exact encodings and pixel format), Hextile
// and Raw. Every byte must be framed, with nothing left over, however it is chunked.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbClientHandshake,
  RfbClientMessageDecoder,
  RfbEncoding,
  RfbServerHandshake,
  RfbServerMessageDecoder,
  encodeClientMessage,
  encodeServerMessage,
  encodingName,
  pixelsToRgba,
  type RfbClientMessage,
  type ServerStreamItem,
} from '../../src/display/common/rfb.ts';
import { CAPTURES, NOVNC_PIXEL_FORMAT, chunks, concat, loadCapture, mulberry32 } from './rfb-test-support.ts';

interface Session {
  clientMessages: RfbClientMessage[];
  items: ServerStreamItem[];
  /** Server bytes after the handshake. */
  stream: Uint8Array;
}

/** Replays one capture through both handshakes and both decoders, the way the gateway would. */
function replay(name: string, how: Parameters<typeof chunks>[1]): Session {
  const { s2c, c2s } = loadCapture(name);

  // Our side of the capture, read as a viewer's: server handshake, then client messages.
  const server = new RfbServerHandshake();
  server.start();
  const viewerStream: Uint8Array[] = [];
  for (const c of chunks(c2s, how)) {
    if (server.state === 'server-init') {
      viewerStream.push(c);
      continue;
    }
    for (const e of server.feed(c)) {
      assert.notEqual(e.kind, 'error');
      if (e.kind === 'client-init') viewerStream.push(e.rest);
    }
  }
  const clientDecoder = new RfbClientMessageDecoder();
  const clientItems = viewerStream.flatMap((c) => clientDecoder.feed(c));
  const clientMessages = clientItems.map((i) => {
    assert.ok(i.kind === 'message', JSON.stringify(i));
    assert.deepEqual(encodeClientMessage(i.message), i.bytes);
    return i.message;
  });
  assert.deepEqual(concat(clientItems.flatMap((i) => (i.kind === 'message' ? [i.bytes] : []))), concat(viewerStream));

  // QEMU's side: client handshake, then server messages in the pixel format the client set.
  const handshake = new RfbClientHandshake({ shared: true });
  const parts = chunks(s2c, how);
  let i = 0;
  let rest: Uint8Array | undefined;
  for (; i < parts.length && rest === undefined; i++) {
    for (const e of handshake.feed(parts[i] ?? new Uint8Array(0))) {
      assert.notEqual(e.kind, 'error');
      if (e.kind === 'server-init') {
        assert.deepEqual(e.serverInit, { width: 720, height: 400, pixelFormat: QEMU_DEFAULT_PIXEL_FORMAT, name: 'QEMU' });
        rest = e.rest;
      }
    }
  }
  assert.ok(rest !== undefined);
  const decoder = new RfbServerMessageDecoder(handshake.serverInit?.pixelFormat ?? QEMU_DEFAULT_PIXEL_FORMAT);
  const setPf = clientMessages.find((m) => m.type === 'set-pixel-format');
  if (setPf?.type === 'set-pixel-format') assert.equal(decoder.setPixelFormat(setPf.pixelFormat), undefined);
  const items = [rest, ...parts.slice(i)].flatMap((c) => decoder.feed(c));
  assert.equal(decoder.bufferedBytes, 0, 'bytes left over');
  return { clientMessages, items, stream: concat([rest, ...parts.slice(i)]) };
}

function updates(items: readonly ServerStreamItem[]): { encodings: string[]; rects: number; changedPixels: number }[] {
  return items.flatMap((i) => {
    assert.ok(i.kind === 'message', JSON.stringify(i.kind === 'error' && i.error));
    if (i.message.type !== 'framebuffer-update' || i.summary === undefined) return [];
    const encodings = [...new Set(i.message.rects.map((r) => encodingName(r.encoding)))];
    return [{ encodings, rects: i.summary.rects, changedPixels: i.summary.changedPixels }];
  });
}

describe('recorded QEMU 7.2 sessions', () => {
  for (const name of CAPTURES) {
    test(`${name}: framed completely, identically whole / byte by byte / in random chunks, and re-encodes to the same bytes`, () => {
      const whole = replay(name, 'whole');
      assert.deepEqual(replay(name, 'bytes').items, whole.items);
      assert.deepEqual(replay(name, { rand: mulberry32(name.length), maxChunk: 1500 }).items, whole.items);
      for (const item of whole.items) {
        assert.ok(item.kind === 'message');
        assert.deepEqual(encodeServerMessage(item.message), item.bytes);
      }
      assert.deepEqual(concat(whole.items.flatMap((i) => (i.kind === 'message' ? [i.bytes] : []))), whole.stream);
    });
  }

  test('ZRLE: QEMU acknowledges pseudo-encodings with unrequested updates, then sends the screen as one rectangle', () => {
    const { clientMessages, items } = replay('qemu-zrle', 'whole');
    assert.deepEqual(clientMessages[0], {
      type: 'set-encodings',
      encodings: [16, 5, 0, -223, -308, -224, -258, -257, -261, -239],
    });
    const got = updates(items);
    assert.deepEqual(got.slice(0, 5), [
      { encodings: ['QemuExtendedKeyEvent'], rects: 1, changedPixels: 0 },
      { encodings: ['PointerTypeChange'], rects: 1, changedPixels: 0 },
      { encodings: ['LedState'], rects: 1, changedPixels: 0 },
      { encodings: ['ExtendedDesktopSize'], rects: 1, changedPixels: 0 },
      { encodings: ['ZRLE'], rects: 1, changedPixels: 720 * 400 },
    ]);
    assert.equal(got.length, 11);
    assert.ok(got.slice(5).every((u) => u.encodings.join() === 'ZRLE' && u.changedPixels > 0 && u.changedPixels < 720 * 400));
    const eds = items[3];
    assert.ok(eds?.kind === 'message');
    assert.deepEqual(eds.summary?.desktopSize, { width: 720, height: 400 });
  });

  test("Tight with noVNC's encodings: extended clipboard caps first, then the screen in 49 Tight rectangles", () => {
    const { clientMessages, items } = replay('qemu-novnc-tight', 'whole');
    assert.deepEqual(clientMessages[0], { type: 'set-pixel-format', pixelFormat: NOVNC_PIXEL_FORMAT });
    const caps = items[0];
    assert.ok(caps?.kind === 'message');
    // Caps | request | notify | provide for text, and a 0 size limit for text.
    assert.deepEqual(caps.message, { type: 'server-cut-text-extended', flags: 0x1b000001, data: new Uint8Array(4) });
    const got = updates(items);
    assert.deepEqual(got.slice(0, 4), [
      { encodings: ['QemuExtendedKeyEvent'], rects: 1, changedPixels: 0 },
      { encodings: ['LedState'], rects: 1, changedPixels: 0 },
      { encodings: ['ExtendedDesktopSize'], rects: 1, changedPixels: 0 },
      { encodings: ['Tight'], rects: 49, changedPixels: 720 * 400 },
    ]);
    // QEMU used fill and basic (palette) compression for this text screen.
    const modes = new Set(
      items.flatMap((i) => (i.kind === 'message' && i.message.type === 'framebuffer-update' ? i.message.rects : []))
        .filter((r) => r.encoding === RfbEncoding.Tight)
        .map((r) => (r.data[0] ?? 0) >> 4),
    );
    assert.ok(modes.has(0x8), 'fill');
    assert.ok([...modes].some((m) => m < 8), 'basic');
  });

  test('Hextile: the whole screen in one rectangle (45 × 25 tiles)', () => {
    const got = updates(replay('qemu-hextile', 'whole').items);
    assert.deepEqual(got[0], { encodings: ['Hextile'], rects: 1, changedPixels: 720 * 400 });
    assert.equal(got.length, 7);
  });

  test('Raw: after switching encodings, updates come Raw and decode to VGA colours', () => {
    const { clientMessages, items } = replay('qemu-hextile-then-raw', 'whole');
    assert.deepEqual(
      clientMessages.filter((m) => m.type === 'set-encodings'),
      [
        { type: 'set-encodings', encodings: [5, -223] },
        { type: 'set-encodings', encodings: [0, -223] },
      ],
    );
    const got = updates(items);
    assert.deepEqual(got[0], { encodings: ['Hextile'], rects: 1, changedPixels: 720 * 400 });
    const raw = items.flatMap((i) => (i.kind === 'message' && i.message.type === 'framebuffer-update' ? i.message.rects : [])).filter((r) => r.encoding === RfbEncoding.Raw);
    assert.ok(raw.length >= 20);
    const channels = new Set<number>();
    for (const r of raw) {
      const decoded = pixelsToRgba(QEMU_DEFAULT_PIXEL_FORMAT, r.data, r.width * r.height);
      assert.ok(decoded.ok);
      decoded.rgba.forEach((v, k) => (k % 4 === 3 ? assert.equal(v, 255) : channels.add(v)));
    }
    // The VGA DAC has 6 bits a channel: QEMU scales 0x00, 0x15, 0x2a, 0x3f to 0x00, 0x54, 0xa8, 0xfc.
    assert.ok([...channels].every((v) => [0x00, 0x54, 0xa8, 0xfc].includes(v)), [...channels].join());
    assert.ok(channels.has(0xa8), 'the grey of VGA text');
  });
});
