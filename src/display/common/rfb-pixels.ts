// PIXEL_FORMAT (RFC 6143 §7.4) and the little pixel arithmetic the gateway needs: how many bytes a
// pixel takes on the wire (to frame Raw, RRE, Hextile, Cursor and Tight), and Raw pixels → RGBA.

import { rfbError, RfbEncodeError, type RfbProtocolError } from './rfb-errors.ts';
import type { ByteWriter } from './rfb-wire.ts';

export interface PixelFormat {
  /** 8, 16 or 32. */
  bitsPerPixel: number;
  depth: number;
  bigEndian: boolean;
  /** False: pixels are indices into a colour map (SetColourMapEntries). */
  trueColour: boolean;
  redMax: number;
  greenMax: number;
  blueMax: number;
  redShift: number;
  greenShift: number;
  blueShift: number;
}

export const PIXEL_FORMAT_BYTES = 16;

/** What QEMU announces in ServerInit (on a little-endian host): 32 bpp, depth 24, xRGB. */
export const QEMU_DEFAULT_PIXEL_FORMAT: Readonly<PixelFormat> = Object.freeze({
  bitsPerPixel: 32,
  depth: 24,
  bigEndian: false,
  trueColour: true,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
});

/** Reads 16 bytes at `offset` (the caller has checked they are there). Padding is ignored. */
export function decodePixelFormat(bytes: Uint8Array, offset = 0): PixelFormat {
  const v = new DataView(bytes.buffer, bytes.byteOffset + offset, PIXEL_FORMAT_BYTES);
  return {
    bitsPerPixel: v.getUint8(0),
    depth: v.getUint8(1),
    bigEndian: v.getUint8(2) !== 0,
    trueColour: v.getUint8(3) !== 0,
    redMax: v.getUint16(4, false),
    greenMax: v.getUint16(6, false),
    blueMax: v.getUint16(8, false),
    redShift: v.getUint8(10),
    greenShift: v.getUint8(11),
    blueShift: v.getUint8(12),
  };
}

/** Writes the 16 bytes (3 of them padding). */
export function writePixelFormat(w: ByteWriter, pf: PixelFormat): void {
  if (checkPixelFormat(pf, '') !== undefined) {
    throw new RfbEncodeError('PixelFormat.bits-per-pixel', `${pf.bitsPerPixel} is not 8, 16 or 32`);
  }
  w.u8('bits-per-pixel', pf.bitsPerPixel).u8('depth', pf.depth).flag(pf.bigEndian).flag(pf.trueColour);
  w.u16('red-max', pf.redMax).u16('green-max', pf.greenMax).u16('blue-max', pf.blueMax);
  w.u8('red-shift', pf.redShift).u8('green-shift', pf.greenShift).u8('blue-shift', pf.blueShift).pad(3);
}

/** RFC 6143: bits-per-pixel must be 8, 16 or 32 (QEMU drops a client that says otherwise). */
export function checkPixelFormat(pf: PixelFormat, where: string): RfbProtocolError | undefined {
  if (pf.bitsPerPixel !== 8 && pf.bitsPerPixel !== 16 && pf.bitsPerPixel !== 32) {
    return rfbError('malformed', `${where}.bits-per-pixel`, `${pf.bitsPerPixel} is not 8, 16 or 32`);
  }
  return undefined;
}

export function bytesPerPixel(pf: PixelFormat): number {
  return pf.bitsPerPixel >> 3;
}

/**
 * Tight's TPIXEL / ZRLE's CPIXEL: 3 bytes instead of 4 when the pixel is 32 bits with 8-bit
 * channels. The spec also asks for true colour and depth 24; QEMU (the only server we frame) tests
 * just bits-per-pixel and the three maxima, so we follow QEMU. For every format a viewer actually
 * uses (noVNC: 32/24 true colour) the two rules agree.
 */
export function tightPixelBytes(pf: PixelFormat): number {
  return pf.bitsPerPixel === 32 && pf.redMax === 255 && pf.greenMax === 255 && pf.blueMax === 255 ? 3 : bytesPerPixel(pf);
}

/**
 * Raw pixels (w×h in `pf`) as RGBA, 4 bytes a pixel, alpha 255. A colour-mapped format needs the
 * map from SetColourMapEntries (16-bit red, green, blue per entry, starting at entry 0).
 */
export function pixelsToRgba(
  pf: PixelFormat,
  data: Uint8Array,
  pixelCount: number,
  colourMap?: Uint16Array,
): { ok: true; rgba: Uint8Array } | { ok: false; error: RfbProtocolError } {
  const bad = checkPixelFormat(pf, 'PixelFormat');
  if (bad !== undefined) return { ok: false, error: bad };
  const bpp = bytesPerPixel(pf);
  if (data.length !== pixelCount * bpp) {
    return { ok: false, error: rfbError('malformed', 'Raw.pixels', `${data.length} bytes for ${pixelCount} pixels of ${bpp} bytes`) };
  }
  if (!pf.trueColour && colourMap === undefined) {
    return { ok: false, error: rfbError('unsupported', 'Raw.pixels', 'colour-mapped pixels need the colour map') };
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const rgba = new Uint8Array(pixelCount * 4);
  const little = !pf.bigEndian;
  const channel = (pixel: number, shift: number, max: number): number =>
    max === 0 || shift > 31 ? 0 : Math.round((((pixel >>> shift) & max) * 255) / max);
  for (let i = 0; i < pixelCount; i++) {
    const at = i * bpp;
    const pixel = bpp === 1 ? view.getUint8(at) : bpp === 2 ? view.getUint16(at, little) : view.getUint32(at, little);
    const o = i * 4;
    if (pf.trueColour) {
      rgba[o] = channel(pixel, pf.redShift, pf.redMax);
      rgba[o + 1] = channel(pixel, pf.greenShift, pf.greenMax);
      rgba[o + 2] = channel(pixel, pf.blueShift, pf.blueMax);
    } else if (colourMap !== undefined && pixel * 3 + 2 < colourMap.length) {
      rgba[o] = (colourMap[pixel * 3] ?? 0) >> 8;
      rgba[o + 1] = (colourMap[pixel * 3 + 1] ?? 0) >> 8;
      rgba[o + 2] = (colourMap[pixel * 3 + 2] ?? 0) >> 8;
    }
    rgba[o + 3] = 255;
  }
  return { ok: true, rgba };
}
