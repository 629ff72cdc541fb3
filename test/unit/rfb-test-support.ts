// Shared by the rfb-*.test.ts files: a seeded PRNG, chunked feeding, and one sample of every
// message in both directions (the round-trip, chunking and fuzz tests all start from these).
import { readFileSync } from 'node:fs';
import {
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbEncoding,
  desktopNameRect,
  desktopSizeRect,
  extendedDesktopSizeRect,
  type PixelFormat,
  type RfbClientMessage,
  type RfbRect,
  type RfbServerMessage,
} from '../../src/display/common/rfb.ts';

/** mulberry32: small, fast, and the same sequence on every machine for a given seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomInt(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

/** Splits bytes into chunks: 'whole', 1 byte each, or random sizes in [1, maxChunk]. */
export function chunks(bytes: Uint8Array, how: 'whole' | 'bytes' | { rand: () => number; maxChunk: number }): Uint8Array[] {
  if (how === 'whole') return [bytes];
  const out: Uint8Array[] = [];
  for (let off = 0; off < bytes.length; ) {
    const n = how === 'bytes' ? 1 : randomInt(how.rand, 1, how.maxChunk);
    out.push(bytes.subarray(off, off + n));
    off += n;
  }
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

export function bytes(...values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

export function ascii(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

export function u16(v: number): number[] {
  return [(v >> 8) & 0xff, v & 0xff];
}

export function u32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

export function s32(v: number): number[] {
  return u32(v >>> 0);
}

/** noVNC's SetPixelFormat: 32 bpp, depth 24, little endian, true colour, red in the low byte. */
export const NOVNC_PIXEL_FORMAT: PixelFormat = {
  bitsPerPixel: 32,
  depth: 24,
  bigEndian: false,
  trueColour: true,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 0,
  greenShift: 8,
  blueShift: 16,
};

export const RGB565_BIG_ENDIAN: PixelFormat = {
  bitsPerPixel: 16,
  depth: 16,
  bigEndian: true,
  trueColour: true,
  redMax: 31,
  greenMax: 63,
  blueMax: 31,
  redShift: 11,
  greenShift: 5,
  blueShift: 0,
};

export const CLIENT_SAMPLES: RfbClientMessage[] = [
  { type: 'set-pixel-format', pixelFormat: NOVNC_PIXEL_FORMAT },
  { type: 'set-pixel-format', pixelFormat: RGB565_BIG_ENDIAN },
  { type: 'set-encodings', encodings: [RfbEncoding.Tight, RfbEncoding.ZRLE, RfbEncoding.Raw, RfbEncoding.DesktopSize, -26, RfbEncoding.ExtendedClipboard] },
  { type: 'set-encodings', encodings: [] },
  { type: 'framebuffer-update-request', incremental: false, x: 0, y: 0, width: 720, height: 400 },
  { type: 'framebuffer-update-request', incremental: true, x: 10, y: 20, width: 30, height: 40 },
  { type: 'key-event', down: true, keysym: 0xff0d },
  { type: 'key-event', down: false, keysym: 0x61 },
  { type: 'pointer-event', buttonMask: 0b101, x: 65535, y: 1 },
  { type: 'client-cut-text', text: 'héllo\nwörld ÿ' },
  { type: 'client-cut-text', text: '' },
  { type: 'client-cut-text-extended', flags: 0x1b000001, data: bytes(0, 0, 0, 0) },
  { type: 'enable-continuous-updates', enable: true, x: 0, y: 0, width: 1024, height: 768 },
  { type: 'client-fence', flags: 0x80000003, payload: bytes(1, 2, 3) },
  { type: 'client-fence', flags: 0, payload: new Uint8Array(64) },
  { type: 'set-desktop-size', width: 1280, height: 800, screens: [{ id: 1, x: 0, y: 0, width: 1280, height: 800, flags: 0 }] },
  { type: 'qemu-extended-key-event', down: true, keysym: 0x61, keycode: 0x1e },
  { type: 'qemu-audio', operation: 'enable' },
  { type: 'qemu-audio', operation: 'disable' },
  { type: 'qemu-audio-set-format', format: 's16', channels: 2, frequency: 44100 },
];

function rect(encoding: number, width: number, height: number, data: number[] | Uint8Array, x = 0, y = 0): RfbRect {
  return { x, y, width, height, encoding, data: data instanceof Uint8Array ? data : Uint8Array.from(data) };
}

/**
 * Rectangles whose payloads frame correctly in `QEMU_DEFAULT_PIXEL_FORMAT` (4 bytes a pixel, Tight
 * pixels 3 bytes). Compressed payloads are arbitrary bytes: framing never looks inside them.
 */
export const SAMPLE_RECTS: RfbRect[] = [
  rect(RfbEncoding.Raw, 2, 2, new Uint8Array(16).map((_, i) => i * 7), 5, 6),
  rect(RfbEncoding.Raw, 0, 10, []),
  rect(RfbEncoding.CopyRect, 64, 32, [...u16(100), ...u16(200)], 10, 10),
  // RRE: 2 sub-rectangles: count, background, then (pixel, x, y, w, h) each.
  rect(RfbEncoding.RRE, 50, 50, [...u32(2), 1, 2, 3, 0, 9, 9, 9, 0, ...u16(1), ...u16(2), ...u16(3), ...u16(4), 8, 8, 8, 0, ...u16(5), ...u16(6), ...u16(7), ...u16(8)]),
  rect(RfbEncoding.CoRRE, 50, 50, [...u32(1), 1, 2, 3, 0, 9, 9, 9, 0, 1, 2, 3, 4]),
  // Hextile 20×17: tiles 16×16, 4×16, 16×1, 4×1 with raw, bg+fg+subrects, coloured subrects, empty.
  rect(RfbEncoding.Hextile, 20, 17, [
    0x01, ...new Uint8Array(16 * 16 * 4),
    0x02 | 0x04 | 0x08, 1, 1, 1, 0, 2, 2, 2, 0, 2, 0x00, 0x11, 0x22, 0x33,
    0x08 | 0x10, 1, 5, 5, 5, 0, 0x00, 0x00,
    0x00,
  ]),
  rect(RfbEncoding.Zlib, 8, 8, [...u32(3), 0xaa, 0xbb, 0xcc]),
  rect(RfbEncoding.ZRLE, 720, 400, [...u32(5), 1, 2, 3, 4, 5]),
  rect(RfbEncoding.ZYWRLE, 8, 8, [...u32(0)]),
  // Tight: fill; JPEG with a 2-byte compact length (200 = 0xc8 → 0xc8 0x01); basic copy of 3 pixels
  // (9 bytes < 12, so raw); basic copy with explicit filter and zlib; 2-colour palette; 5-colour
  // palette; gradient.
  rect(RfbEncoding.Tight, 100, 100, [0x80, 1, 2, 3]),
  rect(RfbEncoding.Tight, 100, 100, [0x90, 0xc8, 0x01, ...new Uint8Array(200)]),
  rect(RfbEncoding.Tight, 3, 1, [0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
  rect(RfbEncoding.Tight, 10, 10, [0x4f, 0x00, 4, 1, 2, 3, 4]),
  rect(RfbEncoding.Tight, 16, 2, [0x50, 0x01, 1, 0, 0, 0, 9, 9, 9, 1, 2, 3, 4]),
  rect(RfbEncoding.Tight, 4, 4, [0x60, 0x01, 4, ...new Uint8Array(15), 16, ...new Uint8Array(16)]),
  rect(RfbEncoding.Tight, 10, 10, [0x70, 0x02, 0x81, 0x80, 0x01, ...new Uint8Array(16385)]),
  rect(RfbEncoding.TightPNG, 10, 10, [0xa0, 3, 0x89, 0x50, 0x4e]),
  rect(RfbEncoding.DesktopSize, 1024, 768, []),
  rect(RfbEncoding.Cursor, 9, 2, new Uint8Array(9 * 2 * 4 + 2 * 2), 4, 4),
  rect(RfbEncoding.AlphaCursor, 2, 2, [...s32(0), ...new Uint8Array(16)], 1, 1),
  rect(RfbEncoding.LedState, 1, 1, [0b110]),
  rect(RfbEncoding.PointerTypeChange, 720, 400, [], 1, 0),
  rect(RfbEncoding.QemuExtendedKeyEvent, 720, 400, []),
  rect(RfbEncoding.QemuAudio, 720, 400, []),
  extendedDesktopSizeRect({ reason: 0, status: 0, width: 800, height: 600, screens: [{ id: 7, x: 0, y: 0, width: 800, height: 600, flags: 0 }] }),
  desktopNameRect('Debian — demo'),
  desktopSizeRect(640, 480),
];

export const SERVER_SAMPLES: RfbServerMessage[] = [
  { type: 'framebuffer-update', rects: SAMPLE_RECTS },
  { type: 'framebuffer-update', rects: [] },
  // A PixelFormatChange switches to 16 bpp for the rectangles after it (2×2 Raw = 8 bytes); the
  // stream's next message must then be framed in 16 bpp too, so switch back at the end.
  {
    type: 'framebuffer-update',
    rects: [
      rect(RfbEncoding.PixelFormatChange, 720, 400, [16, 16, 1, 1, ...u16(31), ...u16(63), ...u16(31), 11, 5, 0, 0, 0, 0]),
      rect(RfbEncoding.Raw, 2, 2, [1, 2, 3, 4, 5, 6, 7, 8]),
      rect(RfbEncoding.PixelFormatChange, 720, 400, [32, 24, 0, 1, ...u16(255), ...u16(255), ...u16(255), 16, 8, 0, 0, 0, 0]),
    ],
  },
  { type: 'set-colour-map-entries', firstColour: 16, colours: Uint16Array.of(0xffff, 0, 0x8000, 1, 2, 3) },
  { type: 'bell' },
  { type: 'server-cut-text', text: 'copied © 2024\r\n' },
  { type: 'server-cut-text-extended', flags: 0x1b000001, data: bytes(0, 0, 0, 0) },
  { type: 'end-of-continuous-updates' },
  { type: 'server-fence', flags: 0x80000001, payload: bytes(9, 8, 7) },
  { type: 'qemu-audio', operation: 'begin' },
  { type: 'qemu-audio-data', data: new Uint8Array(100).map((_, i) => i) },
  { type: 'qemu-audio', operation: 'end' },
];

/** The pixel format the server samples are framed in. */
export const SAMPLE_PIXEL_FORMAT = QEMU_DEFAULT_PIXEL_FORMAT;

const FIXTURES = new URL('../fixtures/rfb/', import.meta.url);

/** A recorded QEMU 7.2 session: what the server sent (s2c) and what our capture script sent (c2s). */
export function loadCapture(name: string): { s2c: Uint8Array; c2s: Uint8Array } {
  return {
    s2c: new Uint8Array(readFileSync(new URL(`${name}.s2c.bin`, FIXTURES))),
    c2s: new Uint8Array(readFileSync(new URL(`${name}.c2s.bin`, FIXTURES))),
  };
}

export const CAPTURES = ['qemu-zrle', 'qemu-novnc-tight', 'qemu-hextile', 'qemu-hextile-then-raw'] as const;
