// The display gateway's shadow framebuffer (src/display/common/framebuffer.ts): rectangle clipping,
// the per-viewer dirty region, applying upstream Raw/CopyRect rectangles, the handoff diff, the
// viewer pixel formats it accepts, and the Raw update it writes (decoded back with the codec).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DirtyRegion,
  Framebuffer,
  GATEWAY_PIXEL_FORMAT,
  clipRect,
  differingTiles,
  encodeRawUpdate,
  isAppliedEncoding,
  rawUpdateSize,
  rectArea,
  viewerPixelFormatProblem,
  type Rect,
} from '../../src/display/common/framebuffer.ts';
import {
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbEncodeError,
  RfbEncoding,
  RfbServerMessageDecoder,
  desktopNameRect,
  desktopSizeRect,
  encodeServerMessage,
  pixelsToRgba,
  type PixelFormat,
  type RfbRect,
} from '../../src/display/common/rfb.ts';
import { NOVNC_PIXEL_FORMAT, RGB565_BIG_ENDIAN, bytes, mulberry32, randomInt, u16 } from './rfb-test-support.ts';

/** 32 bpp xRGB, big endian: bytes x, R, G, B (the 8-bit-channel byte-moving path, big-endian side). */
const XRGB_BIG_ENDIAN: PixelFormat = { ...QEMU_DEFAULT_PIXEL_FORMAT, bigEndian: true };
const RGB565_LITTLE_ENDIAN: PixelFormat = { ...RGB565_BIG_ENDIAN, bigEndian: false };
/** 8 bpp true colour, BGR233. */
const BGR233: PixelFormat = { bitsPerPixel: 8, depth: 8, bigEndian: false, trueColour: true, redMax: 7, greenMax: 7, blueMax: 3, redShift: 0, greenShift: 3, blueShift: 6 };
/** 32 bpp, 10 bits a channel: not byte-aligned, so the general formula at 4 bytes a pixel. */
const RGB30: PixelFormat = { bitsPerPixel: 32, depth: 30, bigEndian: false, trueColour: true, redMax: 1023, greenMax: 1023, blueMax: 1023, redShift: 20, greenShift: 10, blueShift: 0 };

const VIEWER_FORMATS: [string, PixelFormat][] = [
  ['gateway (QEMU xRGB, little endian)', GATEWAY_PIXEL_FORMAT],
  ['noVNC (32 bpp, red in the low byte)', NOVNC_PIXEL_FORMAT],
  ['32 bpp xRGB big endian', XRGB_BIG_ENDIAN],
  ['RGB565 big endian', RGB565_BIG_ENDIAN],
  ['RGB565 little endian', RGB565_LITTLE_ENDIAN],
  ['BGR233 (8 bpp)', BGR233],
  ['30-bit RGB (32 bpp)', RGB30],
];

/** Writes one pixel in the gateway's byte order (B, G, R, x). */
function setPixel(fb: Framebuffer, x: number, y: number, [r, g, b]: readonly [number, number, number]): void {
  const at = (y * fb.width + x) * 4;
  fb.data.set([b, g, r, 0], at);
}

function pixelAt(fb: Framebuffer, x: number, y: number): number[] {
  const at = (y * fb.width + x) * 4;
  return [...fb.data.subarray(at, at + 4)];
}

/** A w×h framebuffer of seeded random colours (the x byte left 0, as QEMU sends it). */
function randomFramebuffer(width: number, height: number, seed: number): Framebuffer {
  const fb = new Framebuffer(width, height);
  const rand = mulberry32(seed);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) setPixel(fb, x, y, [randomInt(rand, 0, 255), randomInt(rand, 0, 255), randomInt(rand, 0, 255)]);
  }
  return fb;
}

function copyOf(fb: Framebuffer): Framebuffer {
  const out = new Framebuffer(fb.width, fb.height);
  out.data.set(fb.data);
  return out;
}

/** Gateway-format pixels for a Raw rectangle: pixel i is (i, 2i, 3i) mod 256, so every one differs. */
function rawRect(x: number, y: number, width: number, height: number, seed = 1): RfbRect {
  const data = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) data.set([(3 * i + seed) & 0xff, (2 * i + seed) & 0xff, (i + seed) & 0xff, 0], i * 4);
  return { x, y, width, height, encoding: RfbEncoding.Raw, data };
}

function copyRect(x: number, y: number, width: number, height: number, srcX: number, srcY: number): RfbRect {
  return { x, y, width, height, encoding: RfbEncoding.CopyRect, data: bytes(...u16(srcX), ...u16(srcY)) };
}

/** The set of pixels (as "x,y") covered by rects. */
function coverage(rects: readonly Rect[]): Set<string> {
  const out = new Set<string>();
  for (const r of rects) {
    for (let y = r.y; y < r.y + r.height; y++) for (let x = r.x; x < r.x + r.width; x++) out.add(`${x},${y}`);
  }
  return out;
}

/** Decodes one FramebufferUpdate as a viewer in `pf` would; asserts it is exactly one whole message. */
function decodeUpdate(encoded: Uint8Array, pf: PixelFormat): RfbRect[] {
  const items = new RfbServerMessageDecoder(pf).feed(encoded);
  assert.equal(items.length, 1);
  const item = items[0];
  assert.ok(item?.kind === 'message', `expected a message, got ${JSON.stringify(item)}`);
  assert.equal(item.message.type, 'framebuffer-update');
  assert.equal(item.bytes.length, encoded.length);
  assert.ok(item.message.type === 'framebuffer-update');
  return item.message.rects;
}

/** How far a channel of `max` levels may land from the original 8-bit value after a round trip. */
function tolerance(max: number): number {
  return max >= 255 ? 0 : 255 / (2 * max) + 0.5;
}

/** Checks a decoded Raw rectangle against the framebuffer's pixels under it. */
function assertRectMatches(fb: Framebuffer, rect: RfbRect, pf: PixelFormat, label: string): void {
  assert.equal(rect.encoding, RfbEncoding.Raw, label);
  const converted = pixelsToRgba(pf, rect.data, rect.width * rect.height);
  assert.ok(converted.ok, label);
  const rgba = converted.rgba;
  for (let row = 0; row < rect.height; row++) {
    for (let col = 0; col < rect.width; col++) {
      const [b, g, r] = pixelAt(fb, rect.x + col, rect.y + row);
      const o = (row * rect.width + col) * 4;
      const got = [rgba[o], rgba[o + 1], rgba[o + 2]];
      const want = [r, g, b];
      const maxima = [pf.redMax, pf.greenMax, pf.blueMax];
      for (let c = 0; c < 3; c++) {
        const d = Math.abs((got[c] ?? -1000) - (want[c] ?? 1000));
        assert.ok(d <= tolerance(maxima[c] ?? 0), `${label}: pixel (${rect.x + col},${rect.y + row}) channel ${c}: got ${got[c]}, want ${want[c]}`);
      }
    }
  }
}

describe('rectArea and clipRect', () => {
  test('rectArea is width × height, 0 for an empty rectangle', () => {
    assert.equal(rectArea({ x: 5, y: 7, width: 3, height: 4 }), 12);
    assert.equal(rectArea({ x: 0, y: 0, width: 0, height: 10 }), 0);
    assert.equal(rectArea({ x: 0, y: 0, width: 10, height: 0 }), 0);
  });

  test('a rectangle inside the screen comes back as it is', () => {
    assert.deepEqual(clipRect({ x: 2, y: 3, width: 4, height: 5 }, 10, 10), { x: 2, y: 3, width: 4, height: 5 });
    assert.deepEqual(clipRect({ x: 0, y: 0, width: 10, height: 8 }, 10, 8), { x: 0, y: 0, width: 10, height: 8 });
  });

  test('a rectangle partly outside is cut to the screen on every side', () => {
    assert.deepEqual(clipRect({ x: 8, y: 6, width: 5, height: 5 }, 10, 8), { x: 8, y: 6, width: 2, height: 2 });
    assert.deepEqual(clipRect({ x: -3, y: -2, width: 5, height: 4 }, 10, 8), { x: 0, y: 0, width: 2, height: 2 });
    assert.deepEqual(clipRect({ x: -5, y: -5, width: 100, height: 100 }, 10, 8), { x: 0, y: 0, width: 10, height: 8 });
  });

  test('nothing is left of a rectangle outside, touching an edge from outside, or of zero size', () => {
    assert.equal(clipRect({ x: 10, y: 0, width: 5, height: 5 }, 10, 8), undefined);
    assert.equal(clipRect({ x: 0, y: 8, width: 5, height: 5 }, 10, 8), undefined);
    assert.equal(clipRect({ x: 50, y: 50, width: 5, height: 5 }, 10, 8), undefined);
    assert.equal(clipRect({ x: -5, y: 0, width: 5, height: 5 }, 10, 8), undefined);
    assert.equal(clipRect({ x: 0, y: -5, width: 5, height: 5 }, 10, 8), undefined);
    assert.equal(clipRect({ x: 2, y: 2, width: 0, height: 3 }, 10, 8), undefined);
    assert.equal(clipRect({ x: 2, y: 2, width: 3, height: 0 }, 10, 8), undefined);
    assert.equal(clipRect({ x: 0, y: 0, width: 3, height: 3 }, 0, 0), undefined);
  });
});

describe('DirtyRegion', () => {
  test('starts empty; take of an empty region is []', () => {
    const d = new DirtyRegion();
    assert.equal(d.isEmpty, true);
    assert.deepEqual(d.rects, []);
    assert.deepEqual(d.take(100, 100), []);
  });

  test('zero-size and negative-size rectangles are not added', () => {
    const d = new DirtyRegion();
    d.add({ x: 1, y: 1, width: 0, height: 5 });
    d.add({ x: 1, y: 1, width: 5, height: 0 });
    d.add({ x: 1, y: 1, width: -3, height: 5 });
    assert.equal(d.isEmpty, true);
  });

  test('a rectangle already covered is dropped; one covering others replaces them', () => {
    const d = new DirtyRegion();
    d.add({ x: 10, y: 10, width: 20, height: 20 });
    d.add({ x: 12, y: 12, width: 5, height: 5 });
    d.add({ x: 10, y: 10, width: 20, height: 20 });
    assert.deepEqual(d.rects, [{ x: 10, y: 10, width: 20, height: 20 }]);
    d.add({ x: 50, y: 50, width: 4, height: 4 });
    d.add({ x: 0, y: 0, width: 40, height: 40 });
    assert.deepEqual(d.rects, [
      { x: 50, y: 50, width: 4, height: 4 },
      { x: 0, y: 0, width: 40, height: 40 },
    ]);
  });

  test('take returns every dirty pixel once the region is not collapsed, and empties the region', () => {
    const d = new DirtyRegion();
    const added = [
      { x: 0, y: 0, width: 10, height: 10 },
      { x: 5, y: 5, width: 10, height: 10 },
      { x: 30, y: 2, width: 3, height: 7 },
    ];
    for (const r of added) d.add(r);
    assert.equal(d.isEmpty, false);
    const taken = d.take(100, 100);
    assert.deepEqual(coverage(taken), coverage(added));
    assert.equal(d.isEmpty, true);
    assert.deepEqual(d.take(100, 100), []);
  });

  test('take clips to the screen and drops what is wholly off it', () => {
    const d = new DirtyRegion();
    d.add({ x: 60, y: 40, width: 20, height: 20 });
    d.add({ x: 200, y: 200, width: 10, height: 10 });
    d.add({ x: 0, y: 0, width: 5, height: 5 });
    assert.deepEqual(d.take(64, 48), [
      { x: 60, y: 40, width: 4, height: 8 },
      { x: 0, y: 0, width: 5, height: 5 },
    ]);
    assert.equal(d.isEmpty, true);
  });

  test('clear empties the region', () => {
    const d = new DirtyRegion();
    d.add({ x: 0, y: 0, width: 5, height: 5 });
    d.add({ x: 10, y: 10, width: 5, height: 5 });
    d.clear();
    assert.equal(d.isEmpty, true);
    assert.deepEqual(d.take(100, 100), []);
  });

  test('a full-screen rectangle absorbs the rest, before and after it', () => {
    const d = new DirtyRegion();
    for (let i = 0; i < 10; i++) d.add({ x: i * 7, y: i * 3, width: 5, height: 2 });
    d.add({ x: 0, y: 0, width: 80, height: 60 });
    assert.deepEqual(d.rects, [{ x: 0, y: 0, width: 80, height: 60 }]);
    d.add({ x: 3, y: 4, width: 10, height: 10 });
    d.add({ x: 70, y: 50, width: 10, height: 10 });
    assert.deepEqual(d.take(80, 60), [{ x: 0, y: 0, width: 80, height: 60 }]);
  });

  test('add keeps its own copy of the rectangle', () => {
    const d = new DirtyRegion();
    const r = { x: 1, y: 2, width: 3, height: 4 };
    d.add(r);
    r.x = 50;
    r.width = 0;
    assert.deepEqual(d.take(100, 100), [{ x: 1, y: 2, width: 3, height: 4 }]);
  });

  test('past maxRects the region collapses to the bounding box of everything added', () => {
    const d = new DirtyRegion(8);
    for (let i = 0; i < 8; i++) d.add({ x: i * 10, y: i * 5, width: 2, height: 2 });
    assert.equal(d.rects.length, 8);
    d.add({ x: 3, y: 70, width: 1, height: 1 });
    assert.deepEqual(d.rects, [{ x: 0, y: 0, width: 72, height: 71 }]);
  });

  test('many small adds stay within maxRects (64 by default) and lose no dirty pixel', () => {
    const rand = mulberry32(7);
    const d = new DirtyRegion();
    const added: Rect[] = [];
    for (let i = 0; i < 2000; i++) {
      const r = { x: randomInt(rand, 0, 95), y: randomInt(rand, 0, 63), width: randomInt(rand, 1, 4), height: randomInt(rand, 1, 4) };
      added.push(r);
      d.add(r);
      assert.ok(d.rects.length <= 64, `${d.rects.length} rects after ${i + 1} adds`);
    }
    const taken = d.take(96, 64);
    assert.ok(taken.length >= 1 && taken.length <= 64);
    const covered = coverage(taken);
    for (const p of coverage(added.map((r) => clipRect(r, 96, 64)).filter((r) => r !== undefined))) assert.ok(covered.has(p), `pixel ${p} lost`);
  });
});

describe('Framebuffer', () => {
  test('starts black, 4 bytes a pixel, in the gateway format (QEMU xRGB)', () => {
    const fb = new Framebuffer(7, 5);
    assert.equal(fb.width, 7);
    assert.equal(fb.height, 5);
    assert.equal(fb.data.length, 7 * 5 * 4);
    assert.ok(fb.data.every((b) => b === 0));
    assert.deepEqual(GATEWAY_PIXEL_FORMAT, QEMU_DEFAULT_PIXEL_FORMAT);
  });

  test('isAppliedEncoding: Raw and CopyRect only', () => {
    assert.equal(isAppliedEncoding(RfbEncoding.Raw), true);
    assert.equal(isAppliedEncoding(RfbEncoding.CopyRect), true);
    for (const e of [RfbEncoding.Hextile, RfbEncoding.Tight, RfbEncoding.ZRLE, RfbEncoding.DesktopSize, RfbEncoding.Cursor]) assert.equal(isAppliedEncoding(e), false);
  });

  test('apply(Raw) writes the pixels row by row and returns the rectangle', () => {
    const fb = new Framebuffer(8, 6);
    const rect = rawRect(2, 1, 3, 2);
    assert.deepEqual(fb.apply(rect), { x: 2, y: 1, width: 3, height: 2 });
    for (let y = 0; y < 6; y++) {
      for (let x = 0; x < 8; x++) {
        const inside = x >= 2 && x < 5 && y >= 1 && y < 3;
        const i = (y - 1) * 3 + (x - 2);
        assert.deepEqual(pixelAt(fb, x, y), inside ? [...rect.data.subarray(i * 4, i * 4 + 4)] : [0, 0, 0, 0], `(${x},${y})`);
      }
    }
  });

  test('apply(Raw) partly off screen writes the visible part and returns it clipped', () => {
    const fb = new Framebuffer(4, 3);
    const rect = rawRect(2, 1, 4, 3);
    assert.deepEqual(fb.apply(rect), { x: 2, y: 1, width: 2, height: 2 });
    for (let y = 0; y < 3; y++) {
      for (let x = 0; x < 4; x++) {
        const inside = x >= 2 && y >= 1;
        const i = (y - 1) * 4 + (x - 2);
        assert.deepEqual(pixelAt(fb, x, y), inside ? [...rect.data.subarray(i * 4, i * 4 + 4)] : [0, 0, 0, 0], `(${x},${y})`);
      }
    }
  });

  test('apply(Raw) wholly off screen changes nothing and returns undefined', () => {
    const fb = randomFramebuffer(4, 3, 3);
    const before = copyOf(fb);
    assert.equal(fb.apply(rawRect(4, 0, 2, 2)), undefined);
    assert.equal(fb.apply(rawRect(0, 3, 2, 2)), undefined);
    assert.equal(fb.apply(rawRect(1, 1, 0, 0)), undefined);
    assert.deepEqual(fb.data, before.data);
  });

  test('rectangles decoded from an upstream FramebufferUpdate apply as the decoder gives them', () => {
    const fb = new Framebuffer(16, 8);
    const raw = rawRect(0, 0, 4, 4, 9);
    const message = encodeServerMessage({ type: 'framebuffer-update', rects: [raw, copyRect(10, 3, 4, 4, 0, 0)] });
    const items = new RfbServerMessageDecoder(GATEWAY_PIXEL_FORMAT).feed(message);
    const first = items[0];
    assert.ok(first?.kind === 'message' && first.message.type === 'framebuffer-update');
    // The decoder's payloads are views into the message: apply must honour their byte offsets.
    const changed = first.message.rects.map((r) => fb.apply(r));
    assert.deepEqual(changed, [
      { x: 0, y: 0, width: 4, height: 4 },
      { x: 10, y: 3, width: 4, height: 4 },
    ]);
    for (let y = 0; y < 4; y++) {
      for (let x = 0; x < 4; x++) {
        const i = (y * 4 + x) * 4;
        assert.deepEqual(pixelAt(fb, x, y), [...raw.data.subarray(i, i + 4)]);
        assert.deepEqual(pixelAt(fb, 10 + x, 3 + y), [...raw.data.subarray(i, i + 4)]);
      }
    }
  });

  /** CopyRect as RFC 6143 means it: every destination pixel gets the source pixel from before the copy. */
  function copyReference(fb: Framebuffer, dst: Rect, srcX: number, srcY: number): Framebuffer {
    const out = copyOf(fb);
    for (let dy = 0; dy < dst.height; dy++) {
      for (let dx = 0; dx < dst.width; dx++) {
        const [tx, ty, sx, sy] = [dst.x + dx, dst.y + dy, srcX + dx, srcY + dy];
        if (tx >= fb.width || ty >= fb.height || sx >= fb.width || sy >= fb.height) continue;
        const from = (sy * fb.width + sx) * 4;
        out.data.set(fb.data.subarray(from, from + 4), (ty * fb.width + tx) * 4);
      }
    }
    return out;
  }

  const COPY_CASES: [string, Rect, number, number][] = [
    ['disjoint', { x: 20, y: 10, width: 6, height: 5 }, 1, 2],
    ['overlapping, moving down', { x: 4, y: 6, width: 10, height: 8 }, 4, 2],
    ['overlapping, moving up', { x: 4, y: 2, width: 10, height: 8 }, 4, 6],
    ['overlapping, moving right in the same rows', { x: 7, y: 3, width: 12, height: 6 }, 3, 3],
    ['overlapping, moving left in the same rows', { x: 3, y: 3, width: 12, height: 6 }, 7, 3],
    ['overlapping, moving down and left', { x: 2, y: 5, width: 9, height: 9 }, 5, 2],
    ['overlapping, moving up and right', { x: 5, y: 2, width: 9, height: 9 }, 2, 5],
    ['scrolling the whole screen up one row', { x: 0, y: 0, width: 32, height: 19 }, 0, 1],
    ['scrolling the whole screen down one row', { x: 0, y: 1, width: 32, height: 19 }, 0, 0],
    ['destination partly off screen', { x: 28, y: 16, width: 8, height: 8 }, 2, 2],
    ['source partly off screen', { x: 1, y: 1, width: 8, height: 8 }, 28, 16],
    ['onto itself', { x: 5, y: 5, width: 6, height: 6 }, 5, 5],
  ];

  for (const [name, dst, srcX, srcY] of COPY_CASES) {
    test(`apply(CopyRect), ${name}: the destination holds the source as it was, and the clipped destination is returned`, () => {
      const fb = randomFramebuffer(32, 20, 11);
      const want = copyReference(fb, dst, srcX, srcY);
      assert.deepEqual(fb.apply(copyRect(dst.x, dst.y, dst.width, dst.height, srcX, srcY)), clipRect(dst, 32, 20));
      assert.deepEqual(fb.data, want.data);
    });
  }

  test('apply(CopyRect) wholly off screen changes nothing and returns undefined', () => {
    const fb = randomFramebuffer(8, 8, 5);
    const before = copyOf(fb);
    assert.equal(fb.apply(copyRect(8, 0, 4, 4, 0, 0)), undefined);
    assert.deepEqual(fb.data, before.data);
  });

  test('apply returns undefined, and changes nothing, for pseudo-rectangles, other encodings and a malformed CopyRect', () => {
    const fb = randomFramebuffer(8, 8, 6);
    const before = copyOf(fb);
    assert.equal(fb.apply(desktopSizeRect(100, 100)), undefined);
    assert.equal(fb.apply(desktopNameRect('x')), undefined);
    assert.equal(fb.apply({ x: 0, y: 0, width: 4, height: 4, encoding: RfbEncoding.Hextile, data: bytes(1, ...new Array<number>(64).fill(7)) }), undefined);
    assert.equal(fb.apply({ x: 0, y: 0, width: 4, height: 4, encoding: RfbEncoding.CopyRect, data: bytes(0, 0, 0) }), undefined);
    assert.equal(fb.width, 8);
    assert.deepEqual(fb.data, before.data);
  });

  test('resize takes the new size and clears the content to black, even at the same size', () => {
    const fb = randomFramebuffer(6, 4, 2);
    const old = fb.data;
    fb.resize(10, 3);
    assert.equal(fb.width, 10);
    assert.equal(fb.height, 3);
    assert.equal(fb.data.length, 10 * 3 * 4);
    assert.ok(fb.data.every((b) => b === 0));
    assert.notEqual(fb.data, old);
    fb.apply(rawRect(0, 0, 10, 3));
    fb.resize(10, 3);
    assert.ok(fb.data.every((b) => b === 0));
    assert.deepEqual(fb.apply(rawRect(8, 2, 4, 4)), { x: 8, y: 2, width: 2, height: 1 });
  });
});

describe('differingTiles', () => {
  test('identical screens differ nowhere', () => {
    assert.deepEqual(differingTiles(new Framebuffer(200, 130), new Framebuffer(200, 130)), []);
    const a = randomFramebuffer(200, 130, 4);
    assert.deepEqual(differingTiles(a, copyOf(a)), []);
  });

  test('one changed pixel gives exactly the (64×64, edge-clipped) tile around it', () => {
    const a = randomFramebuffer(200, 130, 4);
    const cases: [number, number, Rect][] = [
      [0, 0, { x: 0, y: 0, width: 64, height: 64 }],
      [63, 63, { x: 0, y: 0, width: 64, height: 64 }],
      [64, 0, { x: 64, y: 0, width: 64, height: 64 }],
      [130, 70, { x: 128, y: 64, width: 64, height: 64 }],
      [199, 10, { x: 192, y: 0, width: 8, height: 64 }],
      [10, 129, { x: 0, y: 128, width: 64, height: 2 }],
      [199, 129, { x: 192, y: 128, width: 8, height: 2 }],
    ];
    for (const [x, y, tile] of cases) {
      const b = copyOf(a);
      const [blue = 0, green = 0, red = 0] = pixelAt(b, x, y);
      setPixel(b, x, y, [red ^ 1, green, blue]);
      assert.deepEqual(differingTiles(a, b), [tile], `pixel (${x},${y})`);
    }
  });

  test('several changed tiles come back in row order, once each; the tile size is a parameter', () => {
    const a = new Framebuffer(100, 50);
    const b = copyOf(a);
    setPixel(b, 95, 45, [1, 2, 3]);
    setPixel(b, 5, 5, [1, 2, 3]);
    setPixel(b, 6, 6, [1, 2, 3]);
    setPixel(b, 40, 30, [1, 2, 3]);
    assert.deepEqual(differingTiles(a, b), [
      { x: 0, y: 0, width: 64, height: 50 },
      { x: 64, y: 0, width: 36, height: 50 },
    ]);
    assert.deepEqual(differingTiles(a, b, 32), [
      { x: 0, y: 0, width: 32, height: 32 },
      { x: 32, y: 0, width: 32, height: 32 },
      { x: 64, y: 32, width: 32, height: 18 },
    ]);
  });

  test('screens of different sizes differ everywhere: the whole of the second', () => {
    assert.deepEqual(differingTiles(new Framebuffer(100, 50), new Framebuffer(120, 40)), [{ x: 0, y: 0, width: 120, height: 40 }]);
    assert.deepEqual(differingTiles(new Framebuffer(120, 40), new Framebuffer(100, 50)), [{ x: 0, y: 0, width: 100, height: 50 }]);
  });
});

describe('viewerPixelFormatProblem', () => {
  for (const [name, pf] of VIEWER_FORMATS) {
    test(`accepts ${name}`, () => {
      assert.equal(viewerPixelFormatProblem(pf), undefined);
    });
  }

  test('refuses colour-mapped formats', () => {
    const problem = viewerPixelFormatProblem({ ...QEMU_DEFAULT_PIXEL_FORMAT, bitsPerPixel: 8, depth: 8, trueColour: false });
    assert.match(problem ?? '', /colour-mapped/);
    assert.match(viewerPixelFormatProblem({ ...QEMU_DEFAULT_PIXEL_FORMAT, trueColour: false }) ?? '', /colour-mapped/);
  });

  test('refuses a channel with a maximum of 0', () => {
    for (const channel of ['redMax', 'greenMax', 'blueMax'] as const) {
      assert.match(viewerPixelFormatProblem({ ...QEMU_DEFAULT_PIXEL_FORMAT, [channel]: 0 }) ?? '', /maximum of 0/, channel);
    }
  });

  test('refuses a channel that does not fit in the pixel, naming it', () => {
    // 8-bit channels at 16/8/0 need 24 bits: not in 16.
    assert.match(viewerPixelFormatProblem({ ...QEMU_DEFAULT_PIXEL_FORMAT, bitsPerPixel: 16, depth: 16 }) ?? '', /red channel \(max 255, shift 16\) does not fit in 16 bits/);
    assert.match(viewerPixelFormatProblem({ ...QEMU_DEFAULT_PIXEL_FORMAT, blueShift: 28 }) ?? '', /blue channel .* does not fit in 32 bits/);
    assert.match(viewerPixelFormatProblem({ ...RGB565_BIG_ENDIAN, greenShift: 11 }) ?? '', /green channel .* does not fit in 16 bits/);
    assert.match(viewerPixelFormatProblem({ ...BGR233, blueMax: 7 }) ?? '', /blue channel .* does not fit in 8 bits/);
  });
});

describe('encodeRawUpdate and rawUpdateSize', () => {
  const RECTS: Rect[] = [
    { x: 0, y: 0, width: 23, height: 17 },
    { x: 3, y: 2, width: 5, height: 4 },
    { x: 22, y: 16, width: 1, height: 1 },
    { x: 0, y: 16, width: 23, height: 1 },
    { x: 22, y: 0, width: 1, height: 17 },
  ];

  for (const [name, pf] of VIEWER_FORMATS) {
    test(`${name}: a viewer decodes the framebuffer's own pixels; the size is as announced`, () => {
      const fb = randomFramebuffer(23, 17, 21);
      const encoded = encodeRawUpdate(fb, [], RECTS, pf);
      assert.equal(encoded.length, rawUpdateSize([], RECTS, pf));
      assert.equal(encoded.length, 4 + RECTS.reduce((n, r) => n + 12 + r.width * r.height * (pf.bitsPerPixel / 8), 0));
      const rects = decodeUpdate(encoded, pf);
      assert.deepEqual(
        rects.map(({ x, y, width, height }) => ({ x, y, width, height })),
        RECTS,
      );
      rects.forEach((r, i) => assertRectMatches(fb, r, pf, `${name} rect ${i}`));
    });
  }

  test('byte layouts: one pure-red pixel in each viewer format', () => {
    const fb = new Framebuffer(1, 1);
    setPixel(fb, 0, 0, [255, 0, 0]);
    const payload = (pf: PixelFormat): number[] => [...encodeRawUpdate(fb, [], [{ x: 0, y: 0, width: 1, height: 1 }], pf).subarray(16)];
    assert.deepEqual(payload(GATEWAY_PIXEL_FORMAT), [0, 0, 255, 0]);
    assert.deepEqual(payload(NOVNC_PIXEL_FORMAT), [255, 0, 0, 0]);
    assert.deepEqual(payload(XRGB_BIG_ENDIAN), [0, 255, 0, 0]);
    assert.deepEqual(payload(RGB565_BIG_ENDIAN), [0xf8, 0x00]);
    assert.deepEqual(payload(RGB565_LITTLE_ENDIAN), [0x00, 0xf8]);
    assert.deepEqual(payload(BGR233), [0x07]);
    assert.deepEqual(payload(RGB30), [0x00, 0x00, 0xf0, 0x3f]);
  });

  test('the header: message type 0, a zero pad byte, the rectangle count, then Raw headers', () => {
    const fb = randomFramebuffer(4, 4, 1);
    const encoded = encodeRawUpdate(fb, [], [{ x: 1, y: 2, width: 3, height: 2 }], NOVNC_PIXEL_FORMAT);
    assert.deepEqual([...encoded.subarray(0, 16)], [0, 0, ...u16(1), ...u16(1), ...u16(2), ...u16(3), ...u16(2), 0, 0, 0, 0]);
    assert.deepEqual(encodeRawUpdate(fb, [], [], NOVNC_PIXEL_FORMAT), bytes(0, 0, 0, 0));
    assert.equal(rawUpdateSize([], [], NOVNC_PIXEL_FORMAT), 4);
  });

  test('pseudo-rectangles come first, as given; rawUpdateSize counts their payloads', () => {
    const fb = randomFramebuffer(12, 9, 8);
    const pseudo = [desktopSizeRect(12, 9), desktopNameRect('guest ✓')];
    const rects: Rect[] = [
      { x: 0, y: 0, width: 12, height: 9 },
      { x: 4, y: 4, width: 2, height: 3 },
    ];
    for (const pf of [NOVNC_PIXEL_FORMAT, RGB565_BIG_ENDIAN]) {
      const encoded = encodeRawUpdate(fb, pseudo, rects, pf);
      assert.equal(encoded.length, rawUpdateSize(pseudo, rects, pf));
      const items = new RfbServerMessageDecoder(pf).feed(encoded);
      const item = items[0];
      assert.ok(items.length === 1 && item?.kind === 'message' && item.message.type === 'framebuffer-update');
      assert.deepEqual(item.summary?.desktopSize, { width: 12, height: 9 });
      assert.equal(item.summary?.desktopName, 'guest ✓');
      const decoded = item.message.rects;
      assert.deepEqual(
        decoded.map((r) => r.encoding),
        [RfbEncoding.DesktopSize, RfbEncoding.DesktopName, RfbEncoding.Raw, RfbEncoding.Raw],
      );
      assert.deepEqual(decoded[0], pseudo[0]);
      assert.deepEqual(decoded[1], pseudo[1]);
      decoded.slice(2).forEach((r, i) => assertRectMatches(fb, r, pf, `rect ${i}`));
    }
  });

  test('the screen after applying upstream rectangles is what every viewer decodes', () => {
    const fb = new Framebuffer(20, 10);
    fb.apply(rawRect(0, 0, 20, 10, 3));
    fb.apply(copyRect(5, 2, 10, 6, 0, 0));
    for (const [name, pf] of VIEWER_FORMATS) {
      const rects = decodeUpdate(encodeRawUpdate(fb, [], [{ x: 0, y: 0, width: 20, height: 10 }], pf), pf);
      assert.equal(rects.length, 1);
      const rect = rects[0];
      assert.ok(rect !== undefined);
      assertRectMatches(fb, rect, pf, name);
    }
  });

  test('a rectangle outside the screen is our own mistake: RfbEncodeError', () => {
    const fb = new Framebuffer(10, 10);
    assert.throws(() => encodeRawUpdate(fb, [], [{ x: 5, y: 0, width: 6, height: 1 }], NOVNC_PIXEL_FORMAT), RfbEncodeError);
    assert.throws(() => encodeRawUpdate(fb, [], [{ x: 0, y: 9, width: 1, height: 2 }], NOVNC_PIXEL_FORMAT), RfbEncodeError);
  });

  test('more than 65535 rectangles is refused with RfbEncodeError', () => {
    const fb = new Framebuffer(1, 1);
    const rects: Rect[] = Array.from({ length: 65535 }, () => ({ x: 0, y: 0, width: 1, height: 1 }));
    assert.equal(encodeRawUpdate(fb, [], rects, BGR233).length, rawUpdateSize([], rects, BGR233));
    assert.throws(() => encodeRawUpdate(fb, [desktopSizeRect(1, 1)], rects, BGR233), RfbEncodeError);
  });
});
