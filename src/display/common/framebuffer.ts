// The display gateway's copy of the screen (its "shadow framebuffer"), the dirty region it keeps per
// viewer, and the Raw FramebufferUpdate it writes to a viewer in that viewer's pixel format. Pure:
// no I/O, no timers.
//
// The gateway asks QEMU for pixels in one format (GATEWAY_PIXEL_FORMAT, QEMU's own: 32 bits,
// little-endian xRGB) and only in Raw and CopyRect, which it can apply here; every viewer is then
// served from this copy, whatever format it chose (see src/display/README.md, "The gateway").

import { RfbEncoding } from './rfb-encodings.ts';
import { RfbEncodeError } from './rfb-errors.ts';
import { QEMU_DEFAULT_PIXEL_FORMAT, bytesPerPixel, type PixelFormat } from './rfb-pixels.ts';
import type { RfbRect } from './rfb-server-messages.ts';

/** The one format the gateway asks of every upstream server: QEMU's native xRGB (bytes B, G, R, x). */
export const GATEWAY_PIXEL_FORMAT: Readonly<PixelFormat> = QEMU_DEFAULT_PIXEL_FORMAT;

const GATEWAY_BPP = 4;
const RECT_HEADER_BYTES = 12;

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

export function rectArea(r: Rect): number {
  return r.width * r.height;
}

/** r clipped to [0, width) × [0, height); undefined when nothing is left. */
export function clipRect(r: Rect, width: number, height: number): Rect | undefined {
  const x0 = Math.max(0, r.x);
  const y0 = Math.max(0, r.y);
  const x1 = Math.min(width, r.x + r.width);
  const y1 = Math.min(height, r.y + r.height);
  if (x1 <= x0 || y1 <= y0) return undefined;
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

function union(a: Rect, b: Rect): Rect {
  const x = Math.min(a.x, b.x);
  const y = Math.min(a.y, b.y);
  return { x, y, width: Math.max(a.x + a.width, b.x + b.width) - x, height: Math.max(a.y + a.height, b.y + b.height) - y };
}

function contains(outer: Rect, inner: Rect): boolean {
  return inner.x >= outer.x && inner.y >= outer.y && inner.x + inner.width <= outer.x + outer.width && inner.y + inner.height <= outer.y + outer.height;
}

/**
 * What a viewer has not seen yet. A list of rectangles that collapses to their bounding box past
 * `maxRects`: a viewer that falls behind gets one larger rectangle, never a growing backlog. This is
 * where a slow viewer's frames are coalesced.
 */
export class DirtyRegion {
  readonly #maxRects: number;
  #rects: Rect[] = [];

  constructor(maxRects = 64) {
    this.#maxRects = maxRects;
  }

  get isEmpty(): boolean {
    return this.#rects.length === 0;
  }

  get rects(): readonly Rect[] {
    return this.#rects;
  }

  add(rect: Rect): void {
    if (rect.width <= 0 || rect.height <= 0) return;
    if (this.#rects.some((r) => contains(r, rect))) return;
    this.#rects = this.#rects.filter((r) => !contains(rect, r));
    this.#rects.push({ ...rect });
    if (this.#rects.length > this.#maxRects) {
      this.#rects = [this.#rects.reduce(union)];
    }
  }

  clear(): void {
    this.#rects = [];
  }

  /** The rectangles clipped to the screen, and the region emptied. */
  take(width: number, height: number): Rect[] {
    const out: Rect[] = [];
    for (const r of this.#rects) {
      const c = clipRect(r, width, height);
      if (c !== undefined) out.push(c);
    }
    this.#rects = [];
    return out;
  }
}

/** The screen in GATEWAY_PIXEL_FORMAT, 4 bytes a pixel, rows without padding. */
export class Framebuffer {
  #width: number;
  #height: number;
  #data: Uint8Array;

  constructor(width: number, height: number) {
    this.#width = width;
    this.#height = height;
    this.#data = new Uint8Array(width * height * GATEWAY_BPP);
  }

  get width(): number {
    return this.#width;
  }

  get height(): number {
    return this.#height;
  }

  /** The pixels (B, G, R, x per pixel); a view, valid until the next resize. */
  get data(): Uint8Array {
    return this.#data;
  }

  /** A new size; the content is cleared to black (the server repaints after a resize). */
  resize(width: number, height: number): void {
    this.#width = width;
    this.#height = height;
    this.#data = new Uint8Array(width * height * GATEWAY_BPP);
  }

  /**
   * Applies one rectangle of a FramebufferUpdate read in GATEWAY_PIXEL_FORMAT. Returns the
   * rectangle of the screen it changed, or undefined (a pseudo-rectangle). Throws nothing: a Raw
   * rectangle's length was checked by the decoder; a rectangle partly off screen is clipped.
   * `undefined` for an encoding the gateway did not ask for (the caller treats that as a protocol
   * error): see `isAppliedEncoding`.
   */
  apply(rect: RfbRect): Rect | undefined {
    if (rect.encoding === RfbEncoding.Raw) {
      this.#putRaw(rect, rect.data);
      return clipRect(rect, this.#width, this.#height);
    }
    if (rect.encoding === RfbEncoding.CopyRect && rect.data.length === 4) {
      const v = new DataView(rect.data.buffer, rect.data.byteOffset, 4);
      this.#copy(rect, v.getUint16(0, false), v.getUint16(2, false));
      return clipRect(rect, this.#width, this.#height);
    }
    return undefined;
  }

  #putRaw(r: Rect, pixels: Uint8Array): void {
    const c = clipRect(r, this.#width, this.#height);
    if (c === undefined) return;
    const srcStride = r.width * GATEWAY_BPP;
    const rowBytes = c.width * GATEWAY_BPP;
    for (let row = 0; row < c.height; row++) {
      const src = (c.y - r.y + row) * srcStride + (c.x - r.x) * GATEWAY_BPP;
      const dst = ((c.y + row) * this.#width + c.x) * GATEWAY_BPP;
      this.#data.set(pixels.subarray(src, src + rowBytes), dst);
    }
  }

  /** CopyRect: the source may overlap the destination, so rows are copied in the safe order. */
  #copy(dst: Rect, srcX: number, srcY: number): void {
    const src = clipRect({ x: srcX, y: srcY, width: dst.width, height: dst.height }, this.#width, this.#height);
    const d = clipRect(dst, this.#width, this.#height);
    if (src === undefined || d === undefined) return;
    const width = Math.min(src.width, d.width);
    const height = Math.min(src.height, d.height);
    const stride = this.#width * GATEWAY_BPP;
    const rows = srcY < dst.y ? [...Array(height).keys()].reverse() : [...Array(height).keys()];
    for (const row of rows) {
      const from = (srcY + row) * stride + srcX * GATEWAY_BPP;
      this.#data.copyWithin((d.y + row) * stride + d.x * GATEWAY_BPP, from, from + width * GATEWAY_BPP);
    }
  }
}

/** The tiles where two screens differ (all of `b` when the sizes differ): what a handoff repaints. */
export function differingTiles(a: Framebuffer, b: Framebuffer, tile = 64): Rect[] {
  if (a.width !== b.width || a.height !== b.height) return [{ x: 0, y: 0, width: b.width, height: b.height }];
  const out: Rect[] = [];
  const stride = a.width * GATEWAY_BPP;
  for (let ty = 0; ty < a.height; ty += tile) {
    for (let tx = 0; tx < a.width; tx += tile) {
      const w = Math.min(tile, a.width - tx);
      const h = Math.min(tile, a.height - ty);
      for (let row = 0; row < h; row++) {
        if (!sameBytes(a.data, b.data, (ty + row) * stride + tx * GATEWAY_BPP, w * GATEWAY_BPP)) {
          out.push({ x: tx, y: ty, width: w, height: h });
          break;
        }
      }
    }
  }
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array, at: number, n: number): boolean {
  for (let i = at; i < at + n; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** True for the pixel encodings the gateway asks the upstream server for and applies itself. */
export function isAppliedEncoding(encoding: number): boolean {
  return encoding === RfbEncoding.Raw || encoding === RfbEncoding.CopyRect;
}

/** The pixel formats a viewer may choose: true colour, 8/16/32 bits (colour maps are refused). */
export function viewerPixelFormatProblem(pf: PixelFormat): string | undefined {
  if (!pf.trueColour) return 'colour-mapped pixel formats are not supported by the gateway; use true colour';
  if (pf.redMax === 0 || pf.greenMax === 0 || pf.blueMax === 0) return 'a colour channel has a maximum of 0';
  for (const [name, max, shift] of [['red', pf.redMax, pf.redShift], ['green', pf.greenMax, pf.greenShift], ['blue', pf.blueMax, pf.blueShift]] as const) {
    if (shift + Math.ceil(Math.log2(max + 1)) > pf.bitsPerPixel) return `the ${name} channel (max ${max}, shift ${shift}) does not fit in ${pf.bitsPerPixel} bits`;
  }
  return undefined;
}

type Converter = (src: Uint8Array, srcAt: number, dst: Uint8Array, dstAt: number, pixels: number) => void;

function isGatewayFormat(pf: PixelFormat): boolean {
  const g = GATEWAY_PIXEL_FORMAT;
  return (
    pf.bitsPerPixel === 32 &&
    !pf.bigEndian &&
    pf.trueColour &&
    pf.redMax === 255 &&
    pf.greenMax === 255 &&
    pf.blueMax === 255 &&
    pf.redShift === g.redShift &&
    pf.greenShift === g.greenShift &&
    pf.blueShift === g.blueShift
  );
}

/** How a row of gateway pixels becomes a row in `pf`: a copy, a byte swap, or the general formula. */
function converterFor(pf: PixelFormat): Converter {
  if (isGatewayFormat(pf)) {
    return (src, srcAt, dst, dstAt, n) => dst.set(src.subarray(srcAt, srcAt + n * 4), dstAt);
  }
  const bpp = bytesPerPixel(pf);
  if (bpp === 4 && pf.redMax === 255 && pf.greenMax === 255 && pf.blueMax === 255 && pf.redShift % 8 === 0 && pf.greenShift % 8 === 0 && pf.blueShift % 8 === 0) {
    // 8-bit channels on byte boundaries (noVNC's R, G, B, x among them): move bytes.
    const at = (shift: number): number => (pf.bigEndian ? 3 - shift / 8 : shift / 8);
    const r = at(pf.redShift);
    const g = at(pf.greenShift);
    const b = at(pf.blueShift);
    return (src, srcAt, dst, dstAt, n) => {
      for (let i = 0; i < n; i++) {
        const s = srcAt + i * 4;
        const d = dstAt + i * 4;
        dst[d] = 0;
        dst[d + 1] = 0;
        dst[d + 2] = 0;
        dst[d + 3] = 0;
        dst[d + r] = src[s + 2] ?? 0;
        dst[d + g] = src[s + 1] ?? 0;
        dst[d + b] = src[s] ?? 0;
      }
    };
  }
  const scale = (max: number): Uint32Array => Uint32Array.from({ length: 256 }, (_, v) => Math.round((v * max) / 255));
  const red = scale(pf.redMax);
  const green = scale(pf.greenMax);
  const blue = scale(pf.blueMax);
  return (src, srcAt, dst, dstAt, n) => {
    const view = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
    for (let i = 0; i < n; i++) {
      const s = srcAt + i * 4;
      const pixel =
        (((red[src[s + 2] ?? 0] ?? 0) << pf.redShift) | ((green[src[s + 1] ?? 0] ?? 0) << pf.greenShift) | ((blue[src[s] ?? 0] ?? 0) << pf.blueShift)) >>> 0;
      const d = dstAt + i * bpp;
      if (bpp === 4) view.setUint32(d, pixel, !pf.bigEndian);
      else if (bpp === 2) view.setUint16(d, pixel & 0xffff, !pf.bigEndian);
      else view.setUint8(d, pixel & 0xff);
    }
  };
}

/** Bytes of a FramebufferUpdate carrying `pseudo` rectangles first, then `rects` of `fb` in Raw. */
export function rawUpdateSize(pseudo: readonly RfbRect[], rects: readonly Rect[], pf: PixelFormat): number {
  const bpp = bytesPerPixel(pf);
  let size = 4;
  for (const p of pseudo) size += RECT_HEADER_BYTES + p.data.length;
  for (const r of rects) size += RECT_HEADER_BYTES + r.width * r.height * bpp;
  return size;
}

/**
 * A FramebufferUpdate for one viewer: its pseudo-rectangles (DesktopSize, DesktopName, …) first,
 * then each of `rects` (already clipped to the screen) read from `fb` and written Raw in `pf`.
 * Written straight into one buffer: a full 1080p frame is 8 MB and is not copied twice.
 */
export function encodeRawUpdate(fb: Framebuffer, pseudo: readonly RfbRect[], rects: readonly Rect[], pf: PixelFormat): Uint8Array {
  const count = pseudo.length + rects.length;
  if (count > 0xffff) throw new RfbEncodeError('FramebufferUpdate.number-of-rectangles', `${count} is above 65535`);
  const out = new Uint8Array(rawUpdateSize(pseudo, rects, pf));
  const view = new DataView(out.buffer);
  view.setUint8(0, 0);
  view.setUint16(2, count, false);
  let at = 4;
  const header = (r: Rect, encoding: number): void => {
    view.setUint16(at, r.x, false);
    view.setUint16(at + 2, r.y, false);
    view.setUint16(at + 4, r.width, false);
    view.setUint16(at + 6, r.height, false);
    view.setInt32(at + 8, encoding, false);
    at += RECT_HEADER_BYTES;
  };
  for (const p of pseudo) {
    header(p, p.encoding);
    out.set(p.data, at);
    at += p.data.length;
  }
  const convert = converterFor(pf);
  const bpp = bytesPerPixel(pf);
  const stride = fb.width * GATEWAY_BPP;
  for (const r of rects) {
    if (r.x + r.width > fb.width || r.y + r.height > fb.height) {
      throw new RfbEncodeError('FramebufferUpdate.rect', `${r.width}x${r.height}+${r.x}+${r.y} is outside the ${fb.width}x${fb.height} screen`);
    }
    header(r, RfbEncoding.Raw);
    for (let row = 0; row < r.height; row++) {
      convert(fb.data, (r.y + row) * stride + r.x * GATEWAY_BPP, out, at, r.width);
      at += r.width * bpp;
    }
  }
  return out;
}
