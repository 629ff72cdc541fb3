// Server → client messages (RFC 6143 §7.6 and the QEMU / community extensions): values, a streaming
// decoder (the gateway as a client, reading QEMU) and serializers (the gateway as a server, writing
// to a viewer).
//
// The decoder frames: it finds where each message ends, so the gateway can forward the bytes as
// they are, and it summarizes updates (rectangles, changed pixels, size changes) for the activity
// taps. It does not decompress or decode pixels; only Raw pixels can be turned into RGBA
// (`pixelsToRgba`). Raw, RRE, Hextile and Cursor lengths depend on the pixel format in effect,
// which the decoder is given and told about (`setPixelFormat`, or a PixelFormatChange rectangle).

import { RfbEncoding, encodingName, isPixelEncoding } from './rfb-encodings.ts';
import { resolveLimits, rfbError, tooLarge, RfbEncodeError, type RfbLimits, type RfbProtocolError } from './rfb-errors.ts';
import { bytesPerPixel, checkPixelFormat, decodePixelFormat, PIXEL_FORMAT_BYTES, tightPixelBytes, type PixelFormat } from './rfb-pixels.ts';
import { encodeCutText, encodeFence, MAX_FENCE_PAYLOAD, readCutText, writeScreens, type RfbScreen } from './rfb-client-messages.ts';
import { ByteWriter, decodeUtf8, encodeUtf8, fail, MessageStream, ok, type ByteReader, type MessageReader } from './rfb-wire.ts';

export const ServerMessageType = {
  FramebufferUpdate: 0,
  SetColourMapEntries: 1,
  Bell: 2,
  ServerCutText: 3,
  EndOfContinuousUpdates: 150,
  ServerFence: 248,
  Qemu: 255,
} as const;

/** One rectangle of a FramebufferUpdate; `data` is its payload exactly as on the wire (after the 12-byte header). */
export interface RfbRect {
  x: number;
  y: number;
  width: number;
  height: number;
  /** A pixel encoding or a pseudo-encoding (see RfbEncoding). */
  encoding: number;
  data: Uint8Array;
}

export type RfbServerMessage =
  | { type: 'framebuffer-update'; rects: RfbRect[] }
  /** `colours` holds red, green, blue (16 bits each) per entry, from `firstColour` on. */
  | { type: 'set-colour-map-entries'; firstColour: number; colours: Uint16Array }
  | { type: 'bell' }
  | { type: 'server-cut-text'; text: string }
  | { type: 'server-cut-text-extended'; flags: number; data: Uint8Array }
  | { type: 'end-of-continuous-updates' }
  | { type: 'server-fence'; flags: number; payload: Uint8Array }
  | { type: 'qemu-audio'; operation: 'end' | 'begin' }
  | { type: 'qemu-audio-data'; data: Uint8Array };

/** What a FramebufferUpdate did to the screen, for the activity taps and the gateway's cached state. */
export interface UpdateSummary {
  /** Rectangles in the message, pseudo-rectangles included. */
  rects: number;
  /** Rectangles that carry pixels (CopyRect included). */
  pixelRects: number;
  /** Σ width × height over the pixel rectangles. */
  changedPixels: number;
  /** The new framebuffer size, from a DesktopSize or successful ExtendedDesktopSize rectangle. */
  desktopSize?: { width: number; height: number };
  /** The pixel format announced by a PixelFormatChange (WMVi) rectangle. */
  pixelFormat?: PixelFormat;
  /** The new desktop name, from a DesktopName rectangle. */
  desktopName?: string;
}

export type ServerStreamItem =
  /** `summary` is present exactly for framebuffer updates. */
  | { kind: 'message'; message: RfbServerMessage; bytes: Uint8Array; summary?: UpdateSummary }
  | { kind: 'error'; error: RfbProtocolError };

const NAMES: Record<number, string> = {
  0: 'FramebufferUpdate',
  1: 'SetColourMapEntries',
  2: 'Bell',
  3: 'ServerCutText',
  150: 'EndOfContinuousUpdates',
  248: 'ServerFence',
  255: 'QemuServerMessage',
};

const RECT_HEADER_BYTES = 12;
/** Tight sends data shorter than this uncompressed and without a length. */
const TIGHT_MIN_TO_COMPRESS = 12;

type Framed = RfbProtocolError | undefined;

/** Tight's 1–3 byte length: 7 bits per byte, high bit = another byte follows (the third has 8 bits). */
function* tightLength(r: ByteReader): Generator<number, number, void> {
  yield 1;
  let byte = r.u8();
  let length = byte & 0x7f;
  if (byte & 0x80) {
    yield 1;
    byte = r.u8();
    length |= (byte & 0x7f) << 7;
    if (byte & 0x80) {
      yield 1;
      length |= r.u8() << 14;
    }
  }
  return length;
}

function* skip(r: ByteReader, n: number): Generator<number, void, void> {
  if (n === 0) return;
  yield n;
  r.skip(n);
}

/** Tight and TightPNG (rfbproto §7.7.6, read as noVNC's tight.js and QEMU's vnc-enc-tight.c do). */
function* frameTight(r: ByteReader, where: string, width: number, height: number, pf: PixelFormat, png: boolean): Generator<number, Framed, void> {
  yield 1;
  // Low nibble: zlib streams to reset. High nibble: the compression.
  const compression = r.u8() >> 4;
  const tpixel = tightPixelBytes(pf);
  if (compression === 0x8) {
    yield* skip(r, tpixel); // FillCompression: one colour
    return undefined;
  }
  if (compression === 0x9 || (compression === 0xa && png)) {
    yield* skip(r, yield* tightLength(r)); // JPEG or PNG image
    return undefined;
  }
  if (compression === 0xa) return rfbError('unsupported', `${where}.compression-control`, 'PNG compression in a Tight (not TightPNG) rectangle');
  if (compression > 0xa) return rfbError('malformed', `${where}.compression-control`, `unknown compression ${compression}`);
  // BasicCompression: bit 2 says a filter id follows (otherwise Copy); bits 0-1 pick the zlib stream.
  let filter = 0;
  if (compression & 0x4) {
    yield 1;
    filter = r.u8();
  }
  let size: number;
  if (filter === 0 || filter === 2) {
    size = width * height * tpixel; // Copy, Gradient
  } else if (filter === 1) {
    yield 1;
    const colours = r.u8() + 1;
    yield* skip(r, colours * tpixel);
    // Two colours: one bit a pixel, rows padded to a byte; otherwise one byte a pixel.
    size = colours === 2 ? ((width + 7) >> 3) * height : width * height;
  } else {
    return rfbError('malformed', `${where}.filter-id`, `unknown filter ${filter}`);
  }
  if (size < TIGHT_MIN_TO_COMPRESS) {
    yield* skip(r, size);
    return undefined;
  }
  yield* skip(r, yield* tightLength(r));
  return undefined;
}

/** Hextile (RFC 6143 §7.7.4): 16×16 tiles in rows, each with a sub-encoding mask. */
function* frameHextile(r: ByteReader, where: string, width: number, height: number, bpp: number): Generator<number, Framed, void> {
  for (let ty = 0; ty < height; ty += 16) {
    const th = Math.min(16, height - ty);
    for (let tx = 0; tx < width; tx += 16) {
      const tw = Math.min(16, width - tx);
      yield 1;
      const mask = r.u8();
      if (mask & 0xe0) return rfbError('malformed', `${where}.subencoding`, `unknown bits in ${mask} (tile at ${tx},${ty})`);
      // Tiles are the hot path (8160 in a 1080p frame): skips are inlined rather than `yield* skip`.
      let n: number;
      if (mask & 0x1) {
        n = tw * th * bpp; // Raw tile; the other bits are ignored
      } else {
        n = (mask & 0x2 ? bpp : 0) + (mask & 0x4 ? bpp : 0); // background, foreground
        if (mask & 0x8) {
          yield n + 1;
          r.skip(n);
          const subrects = r.u8();
          n = subrects * (mask & 0x10 ? bpp + 2 : 2); // coloured or not; x-and-y + width-and-height bytes
        }
      }
      if (n > 0) {
        yield n;
        r.skip(n);
      }
    }
  }
  return undefined;
}

/** The payload of one rectangle, by encoding. The header has been read. */
function* frameRect(
  r: ByteReader,
  where: string,
  encoding: number,
  width: number,
  height: number,
  pf: PixelFormat,
  limits: RfbLimits,
): Generator<number, Framed, void> {
  const bpp = bytesPerPixel(pf);
  switch (encoding) {
    case RfbEncoding.Raw:
      yield* skip(r, width * height * bpp);
      return undefined;
    case RfbEncoding.CopyRect:
      yield* skip(r, 4); // source x, y
      return undefined;
    case RfbEncoding.RRE:
    case RfbEncoding.CoRRE: {
      yield 4 + bpp;
      const subrects = r.u32();
      r.skip(bpp); // background
      const each = bpp + (encoding === RfbEncoding.RRE ? 8 : 4);
      if (subrects * each > limits.maxMessageBytes) return tooLarge(`${where}.number-of-subrectangles`, subrects, Math.floor(limits.maxMessageBytes / each));
      yield* skip(r, subrects * each);
      return undefined;
    }
    case RfbEncoding.Hextile:
      return yield* frameHextile(r, where, width, height, bpp);
    case RfbEncoding.Zlib:
    case RfbEncoding.ZRLE:
    case RfbEncoding.ZYWRLE: {
      yield 4;
      const length = r.u32();
      if (length > limits.maxMessageBytes) return tooLarge(`${where}.length`, length, limits.maxMessageBytes);
      yield* skip(r, length);
      return undefined;
    }
    case RfbEncoding.Tight:
    case RfbEncoding.TightPNG:
      return yield* frameTight(r, where, width, height, pf, encoding === RfbEncoding.TightPNG);
    case RfbEncoding.DesktopSize:
    case RfbEncoding.LastRect:
    case RfbEncoding.PointerTypeChange:
    case RfbEncoding.QemuExtendedKeyEvent:
    case RfbEncoding.QemuAudio:
      return undefined; // acknowledgements and notices: the header says it all
    case RfbEncoding.Cursor:
      yield* skip(r, width * height * bpp + ((width + 7) >> 3) * height); // pixels, then the mask bitmap
      return undefined;
    case RfbEncoding.AlphaCursor: {
      yield 4;
      const inner = r.s32();
      // QEMU sends the RGBA image Raw; other encodings would need their own framing here.
      if (inner !== RfbEncoding.Raw) return rfbError('unsupported', `${where}.encoding`, `alpha cursor in ${encodingName(inner)}`);
      yield* skip(r, width * height * 4);
      return undefined;
    }
    case RfbEncoding.LedState:
      yield* skip(r, 1);
      return undefined;
    case RfbEncoding.DesktopName: {
      yield 4;
      const length = r.u32();
      if (length > limits.maxNameBytes) return tooLarge(`${where}.name-length`, length, limits.maxNameBytes);
      yield* skip(r, length);
      return undefined;
    }
    case RfbEncoding.ExtendedDesktopSize: {
      yield 4;
      const screens = r.u8();
      r.skip(3);
      yield* skip(r, 16 * screens);
      return undefined;
    }
    default:
      return rfbError('unsupported', `${where}.encoding-type`, `unknown encoding ${encoding}`);
  }
}

interface PixelFormatHolder {
  pixelFormat: PixelFormat;
}

function* readFramebufferUpdate(r: ByteReader, holder: PixelFormatHolder, limits: RfbLimits): MessageReader<RfbServerMessage> {
  yield 3;
  r.skip(1);
  const count = r.u16();
  if (count > limits.maxRects) return fail(tooLarge('FramebufferUpdate.number-of-rectangles', count, limits.maxRects));
  const spans: { x: number; y: number; width: number; height: number; encoding: number; start: number; end: number }[] = [];
  for (let i = 0; i < count; i++) {
    r.where = `FramebufferUpdate.rect[${i}]`;
    yield RECT_HEADER_BYTES;
    const x = r.u16();
    const y = r.u16();
    const width = r.u16();
    const height = r.u16();
    const encoding = r.s32();
    const where = `FramebufferUpdate.rect[${i}](${encodingName(encoding)})`;
    r.where = where;
    if (width > limits.maxDimension) return fail(tooLarge(`${where}.width`, width, limits.maxDimension));
    if (height > limits.maxDimension) return fail(tooLarge(`${where}.height`, height, limits.maxDimension));
    const start = r.pos;
    if (encoding === RfbEncoding.PixelFormatChange) {
      yield PIXEL_FORMAT_BYTES;
      const pf = decodePixelFormat(r.bytes(PIXEL_FORMAT_BYTES));
      const bad = checkPixelFormat(pf, `${where}.pixel-format`);
      if (bad !== undefined) return fail(bad);
      holder.pixelFormat = pf; // in effect from the next rectangle on
    } else {
      const error = yield* frameRect(r, where, encoding, width, height, holder.pixelFormat, limits);
      if (error !== undefined) return fail(error);
    }
    spans.push({ x, y, width, height, encoding, start, end: r.pos });
    // LastRect ends an update whose count was a placeholder (65535 in practice).
    if (encoding === RfbEncoding.LastRect) break;
  }
  // Views only now: the buffer is complete and will not move again.
  const rects = spans.map(({ start, end, ...rect }) => ({ ...rect, data: r.view(start, end) }));
  return ok({ type: 'framebuffer-update', rects });
}

function* readServerMessage(r: ByteReader, holder: PixelFormatHolder, limits: RfbLimits): MessageReader<RfbServerMessage> {
  r.where = 'server message';
  yield 1;
  const type = r.u8();
  const name = NAMES[type];
  if (name === undefined) return fail(rfbError('unsupported', 'server message', `unknown message type ${type}`));
  r.where = name;
  switch (type) {
    case ServerMessageType.FramebufferUpdate:
      return yield* readFramebufferUpdate(r, holder, limits);
    case ServerMessageType.SetColourMapEntries: {
      yield 5;
      r.skip(1);
      const firstColour = r.u16();
      const count = r.u16();
      if (firstColour + count > 65536) return fail(rfbError('malformed', 'SetColourMapEntries.number-of-colours', `${count} colours from ${firstColour} run past entry 65535`));
      yield 6 * count;
      const colours = new Uint16Array(3 * count);
      for (let i = 0; i < colours.length; i++) colours[i] = r.u16();
      return ok({ type: 'set-colour-map-entries', firstColour, colours });
    }
    case ServerMessageType.Bell:
      return ok({ type: 'bell' });
    case ServerMessageType.ServerCutText: {
      const cut = yield* readCutText(r, name, limits);
      if (!cut.ok) return cut;
      return ok('text' in cut.value ? { type: 'server-cut-text', text: cut.value.text } : { type: 'server-cut-text-extended', ...cut.value });
    }
    case ServerMessageType.EndOfContinuousUpdates:
      return ok({ type: 'end-of-continuous-updates' });
    case ServerMessageType.ServerFence: {
      yield 8;
      r.skip(3);
      const flags = r.u32();
      const length = r.u8();
      if (length > MAX_FENCE_PAYLOAD) return fail(tooLarge('ServerFence.length', length, MAX_FENCE_PAYLOAD));
      yield* skip(r, length);
      return ok({ type: 'server-fence', flags, payload: r.view(r.pos - length, r.pos) });
    }
    default: {
      // 255: QEMU's server messages; only audio (sub-type 1) exists.
      yield 1;
      const sub = r.u8();
      if (sub !== 1) return fail(rfbError('unsupported', 'QemuServerMessage.submessage-type', `unknown QEMU sub-message ${sub}`));
      r.where = 'QemuAudio';
      yield 2;
      const operation = r.u16();
      if (operation === 0) return ok({ type: 'qemu-audio', operation: 'end' });
      if (operation === 1) return ok({ type: 'qemu-audio', operation: 'begin' });
      if (operation !== 2) return fail(rfbError('unsupported', 'QemuAudio.operation', `unknown audio operation ${operation}`));
      yield 4;
      const length = r.u32();
      if (length > limits.maxAudioBytes) return fail(tooLarge('QemuAudio.length', length, limits.maxAudioBytes));
      yield* skip(r, length);
      return ok({ type: 'qemu-audio-data', data: r.view(r.pos - length, r.pos) });
    }
  }
}

/** The screens of an ExtendedDesktopSize rectangle (whose payload the decoder has already checked). */
export function extendedDesktopSizeScreens(rect: RfbRect): RfbScreen[] {
  const v = new DataView(rect.data.buffer, rect.data.byteOffset, rect.data.byteLength);
  const count = rect.data.length >= 4 ? v.getUint8(0) : 0;
  const screens: RfbScreen[] = [];
  for (let i = 0; i < count && 4 + 16 * (i + 1) <= rect.data.length; i++) {
    const at = 4 + 16 * i;
    screens.push({
      id: v.getUint32(at, false),
      x: v.getUint16(at + 4, false),
      y: v.getUint16(at + 6, false),
      width: v.getUint16(at + 8, false),
      height: v.getUint16(at + 10, false),
      flags: v.getUint32(at + 12, false),
    });
  }
  return screens;
}

export function summarizeUpdate(rects: readonly RfbRect[]): UpdateSummary {
  const summary: UpdateSummary = { rects: rects.length, pixelRects: 0, changedPixels: 0 };
  for (const rect of rects) {
    if (isPixelEncoding(rect.encoding)) {
      summary.pixelRects += 1;
      summary.changedPixels += rect.width * rect.height;
    } else if (rect.encoding === RfbEncoding.DesktopSize) {
      summary.desktopSize = { width: rect.width, height: rect.height };
    } else if (rect.encoding === RfbEncoding.ExtendedDesktopSize && rect.y === 0) {
      // y is the status; non-zero means the request it answers failed and the size is unchanged.
      summary.desktopSize = { width: rect.width, height: rect.height };
    } else if (rect.encoding === RfbEncoding.PixelFormatChange && rect.data.length === PIXEL_FORMAT_BYTES) {
      summary.pixelFormat = decodePixelFormat(rect.data);
    } else if (rect.encoding === RfbEncoding.DesktopName && rect.data.length >= 4) {
      summary.desktopName = decodeUtf8(rect.data.subarray(4));
    }
  }
  return summary;
}

/**
 * QEMU's messages, from bytes in arbitrary chunks. Each message comes with its exact bytes (to
 * forward unchanged) and, for updates, a summary.
 */
export class RfbServerMessageDecoder {
  readonly limits: Readonly<RfbLimits>;
  readonly #stream: MessageStream<RfbServerMessage>;
  /** The format for the next message (a PixelFormatChange rectangle updates it mid-message). */
  readonly #holder: PixelFormatHolder;

  /** `pixelFormat`: ServerInit's, or the one the client has since set with SetPixelFormat. */
  constructor(pixelFormat: PixelFormat, limits?: Partial<RfbLimits>) {
    this.limits = resolveLimits(limits);
    this.#holder = { pixelFormat: { ...pixelFormat } };
    this.#stream = new MessageStream((r) => readServerMessage(r, this.#messageHolder(), this.limits), this.limits.maxMessageBytes, 'server message');
  }

  /**
   * The format one message is read with: the one in effect when it starts (a later setPixelFormat
   * does not reach into it), changed only by its own PixelFormatChange rectangles, which also
   * become the decoder's format for the messages after it.
   */
  #messageHolder(): PixelFormatHolder {
    const decoder = this.#holder;
    let current = decoder.pixelFormat;
    return {
      get pixelFormat() {
        return current;
      },
      set pixelFormat(pf: PixelFormat) {
        current = pf;
        decoder.pixelFormat = pf;
      },
    };
  }

  /** The format the next message will be read with. */
  get pixelFormat(): PixelFormat {
    return { ...this.#holder.pixelFormat };
  }

  /**
   * The client has sent SetPixelFormat: messages that start from now on are read in this format.
   * RFB has no marker for the switch; QEMU applies it to updates it has not started, so set it
   * when the SetPixelFormat goes out and before requesting updates in it (as viewers do).
   */
  setPixelFormat(pf: PixelFormat): RfbProtocolError | undefined {
    const bad = checkPixelFormat(pf, 'SetPixelFormat.pixel-format');
    if (bad === undefined) this.#holder.pixelFormat = { ...pf };
    return bad;
  }

  feed(chunk: Uint8Array): ServerStreamItem[] {
    const items: ServerStreamItem[] = this.#stream.feed(chunk);
    for (const item of items) {
      if (item.kind === 'message' && item.message.type === 'framebuffer-update') item.summary = summarizeUpdate(item.message.rects);
    }
    return items;
  }

  /** Bytes of the message in progress; never more than `limits.maxMessageBytes`. */
  get bufferedBytes(): number {
    return this.#stream.bufferedBytes;
  }

  get failed(): boolean {
    return this.#stream.error !== undefined;
  }

  get error(): RfbProtocolError | undefined {
    return this.#stream.error;
  }
}

/** A DesktopSize pseudo-rectangle: tells a viewer the framebuffer is now width × height. */
export function desktopSizeRect(width: number, height: number): RfbRect {
  return { x: 0, y: 0, width, height, encoding: RfbEncoding.DesktopSize, data: new Uint8Array(0) };
}

/**
 * An ExtendedDesktopSize pseudo-rectangle. `reason`: 0 server-side change, 1 this client's request,
 * 2 another client's; `status`: 0 success (x and y of the header carry these two).
 */
export function extendedDesktopSizeRect(m: { reason: number; status: number; width: number; height: number; screens: RfbScreen[] }): RfbRect {
  const w = new ByteWriter(4 + 16 * m.screens.length, 'ExtendedDesktopSize').u8('number-of-screens', m.screens.length).pad(3);
  writeScreens(w, m.screens);
  return { x: m.reason, y: m.status, width: m.width, height: m.height, encoding: RfbEncoding.ExtendedDesktopSize, data: w.done() };
}

/**
 * Serializes a server message. Rectangle payloads are written as given: for pixel encodings they
 * must already be in the viewer's pixel format (the gateway forwards QEMU's bytes).
 */
export function encodeServerMessage(m: RfbServerMessage): Uint8Array {
  switch (m.type) {
    case 'framebuffer-update': {
      if (m.rects.length > 0xffff) throw new RfbEncodeError('FramebufferUpdate.number-of-rectangles', `${m.rects.length} is above 65535`);
      const size = m.rects.reduce((sum, rect) => sum + RECT_HEADER_BYTES + rect.data.length, 4);
      const w = new ByteWriter(size, 'FramebufferUpdate').u8('message-type', ServerMessageType.FramebufferUpdate).pad(1);
      w.u16('number-of-rectangles', m.rects.length);
      for (const rect of m.rects) {
        w.u16('x-position', rect.x).u16('y-position', rect.y).u16('width', rect.width).u16('height', rect.height);
        w.s32('encoding-type', rect.encoding).raw(rect.data);
      }
      return w.done();
    }
    case 'set-colour-map-entries': {
      if (m.colours.length % 3 !== 0) throw new RfbEncodeError('SetColourMapEntries.colours', `${m.colours.length} values are not red, green, blue triples`);
      const count = m.colours.length / 3;
      const w = new ByteWriter(6 + 2 * m.colours.length, 'SetColourMapEntries').u8('message-type', ServerMessageType.SetColourMapEntries).pad(1);
      w.u16('first-colour', m.firstColour).u16('number-of-colours', count);
      m.colours.forEach((c, i) => w.u16(`colours[${i}]`, c));
      return w.done();
    }
    case 'bell':
      return Uint8Array.of(ServerMessageType.Bell);
    case 'server-cut-text':
      return encodeCutText(ServerMessageType.ServerCutText, 'ServerCutText', { text: m.text });
    case 'server-cut-text-extended':
      return encodeCutText(ServerMessageType.ServerCutText, 'ServerCutText', { flags: m.flags, data: m.data });
    case 'end-of-continuous-updates':
      return Uint8Array.of(ServerMessageType.EndOfContinuousUpdates);
    case 'server-fence':
      return encodeFence(ServerMessageType.ServerFence, 'ServerFence', m.flags, m.payload);
    case 'qemu-audio':
      return new ByteWriter(4, 'QemuAudio')
        .u8('message-type', ServerMessageType.Qemu)
        .u8('submessage-type', 1)
        .u16('operation', m.operation === 'end' ? 0 : 1)
        .done();
    case 'qemu-audio-data':
      return new ByteWriter(8 + m.data.length, 'QemuAudio')
        .u8('message-type', ServerMessageType.Qemu)
        .u8('submessage-type', 1)
        .u16('operation', 2)
        .u32('data-length', m.data.length)
        .raw(m.data)
        .done();
  }
}

/** Turns a name into bytes for a DesktopName rectangle's payload (u32 length + UTF-8). */
export function desktopNameRect(name: string): RfbRect {
  const text = encodeUtf8(name);
  const data = new ByteWriter(4 + text.length, 'DesktopName').u32('name-length', text.length).raw(text).done();
  return { x: 0, y: 0, width: 0, height: 0, encoding: RfbEncoding.DesktopName, data };
}
