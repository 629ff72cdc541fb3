// Client → server messages (RFC 6143 §7.5, plus the extensions noVNC sends to QEMU): their values,
// a streaming decoder (the gateway as a server, reading a viewer) and serializers (the gateway as a
// client, writing to QEMU). parse(encode(m)) deep-equals m for every message.

import { resolveLimits, rfbError, tooLarge, RfbEncodeError, type RfbLimits, type RfbProtocolError } from './rfb-errors.ts';
import { checkPixelFormat, decodePixelFormat, PIXEL_FORMAT_BYTES, writePixelFormat, type PixelFormat } from './rfb-pixels.ts';
import {
  ByteWriter,
  decodeLatin1,
  encodeLatin1,
  fail,
  MessageStream,
  ok,
  type ByteReader,
  type MessageReader,
  type ReadOutcome,
  type StreamItem,
} from './rfb-wire.ts';

export const ClientMessageType = {
  SetPixelFormat: 0,
  SetEncodings: 2,
  FramebufferUpdateRequest: 3,
  KeyEvent: 4,
  PointerEvent: 5,
  ClientCutText: 6,
  EnableContinuousUpdates: 150,
  ClientFence: 248,
  SetDesktopSize: 251,
  Qemu: 255,
} as const;

/** One screen of ExtendedDesktopSize / SetDesktopSize. */
export interface RfbScreen {
  id: number;
  x: number;
  y: number;
  width: number;
  height: number;
  flags: number;
}

export type QemuAudioFormat = 'u8' | 's8' | 'u16' | 's16' | 'u32' | 's32';
const AUDIO_FORMATS: readonly QemuAudioFormat[] = ['u8', 's8', 'u16', 's16', 'u32', 's32'];

/** Fence payloads are at most 64 bytes (rfbproto). */
export const MAX_FENCE_PAYLOAD = 64;

export type RfbClientMessage =
  | { type: 'set-pixel-format'; pixelFormat: PixelFormat }
  | { type: 'set-encodings'; encodings: number[] }
  | { type: 'framebuffer-update-request'; incremental: boolean; x: number; y: number; width: number; height: number }
  /** `keysym` is an X11 keysym. */
  | { type: 'key-event'; down: boolean; keysym: number }
  /** Bit n of `buttonMask` is button n + 1 (1 left, 2 middle, 4 right, 8/16 wheel). */
  | { type: 'pointer-event'; buttonMask: number; x: number; y: number }
  /** Text in ISO 8859-1. */
  | { type: 'client-cut-text'; text: string }
  /**
   * The extended-clipboard form (negative length): `flags` then `data` (zlib-compressed for a
   * provide, sizes for caps). Framed, not interpreted.
   */
  | { type: 'client-cut-text-extended'; flags: number; data: Uint8Array }
  | { type: 'enable-continuous-updates'; enable: boolean; x: number; y: number; width: number; height: number }
  | { type: 'client-fence'; flags: number; payload: Uint8Array }
  | { type: 'set-desktop-size'; width: number; height: number; screens: RfbScreen[] }
  /** QEMU's extended key event: the keysym plus the XT scancode (what makes non-US layouts work). */
  | { type: 'qemu-extended-key-event'; down: boolean; keysym: number; keycode: number }
  | { type: 'qemu-audio'; operation: 'enable' | 'disable' }
  | { type: 'qemu-audio-set-format'; format: QemuAudioFormat; channels: number; frequency: number };

/** Human names for errors: the RFC's message names. */
const NAMES: Record<number, string> = {
  0: 'SetPixelFormat',
  2: 'SetEncodings',
  3: 'FramebufferUpdateRequest',
  4: 'KeyEvent',
  5: 'PointerEvent',
  6: 'ClientCutText',
  150: 'EnableContinuousUpdates',
  248: 'ClientFence',
  251: 'SetDesktopSize',
  255: 'QemuClientMessage',
};

function* readScreens(r: ByteReader, count: number): Generator<number, RfbScreen[], void> {
  yield 16 * count;
  const screens: RfbScreen[] = [];
  for (let i = 0; i < count; i++) {
    screens.push({ id: r.u32(), x: r.u16(), y: r.u16(), width: r.u16(), height: r.u16(), flags: r.u32() });
  }
  return screens;
}

/**
 * Cut text, either form. A negative length announces the extended clipboard: |length| bytes of
 * flags + data. Shared with ServerCutText, whose layout is the same.
 */
export function* readCutText(
  r: ByteReader,
  name: string,
  limits: RfbLimits,
): Generator<number, ReadOutcome<{ text: string } | { flags: number; data: Uint8Array }>, void> {
  r.where = name;
  yield 7;
  r.skip(3);
  const length = r.s32();
  const size = Math.abs(length);
  if (size > limits.maxCutTextBytes) return fail(tooLarge(`${name}.length`, size, limits.maxCutTextBytes));
  if (length < 0) {
    if (size < 4) return fail(rfbError('malformed', `${name}.length`, `extended clipboard payload of ${size} bytes has no flags`));
    yield size;
    const flags = r.u32();
    return ok({ flags, data: r.bytes(size - 4) });
  }
  yield size;
  return ok({ text: decodeLatin1(r.bytes(size)) });
}

function* readClientMessage(r: ByteReader, limits: RfbLimits): MessageReader<RfbClientMessage> {
  r.where = 'client message';
  yield 1;
  const type = r.u8();
  const name = NAMES[type];
  if (name === undefined) return fail(rfbError('unsupported', 'client message', `unknown message type ${type}`));
  r.where = name;
  switch (type) {
    case ClientMessageType.SetPixelFormat: {
      yield 3 + PIXEL_FORMAT_BYTES;
      r.skip(3);
      const pixelFormat = decodePixelFormat(r.bytes(PIXEL_FORMAT_BYTES));
      const bad = checkPixelFormat(pixelFormat, 'SetPixelFormat.pixel-format');
      return bad === undefined ? ok({ type: 'set-pixel-format', pixelFormat }) : fail(bad);
    }
    case ClientMessageType.SetEncodings: {
      yield 3;
      r.skip(1);
      const count = r.u16();
      if (count > limits.maxEncodings) return fail(tooLarge('SetEncodings.number-of-encodings', count, limits.maxEncodings));
      yield 4 * count;
      const encodings: number[] = [];
      for (let i = 0; i < count; i++) encodings.push(r.s32());
      return ok({ type: 'set-encodings', encodings });
    }
    case ClientMessageType.FramebufferUpdateRequest: {
      yield 9;
      const incremental = r.u8() !== 0;
      return ok({ type: 'framebuffer-update-request', incremental, x: r.u16(), y: r.u16(), width: r.u16(), height: r.u16() });
    }
    case ClientMessageType.KeyEvent: {
      yield 7;
      const down = r.u8() !== 0;
      r.skip(2);
      return ok({ type: 'key-event', down, keysym: r.u32() });
    }
    case ClientMessageType.PointerEvent: {
      yield 5;
      return ok({ type: 'pointer-event', buttonMask: r.u8(), x: r.u16(), y: r.u16() });
    }
    case ClientMessageType.ClientCutText: {
      const cut = yield* readCutText(r, name, limits);
      if (!cut.ok) return cut;
      return ok('text' in cut.value ? { type: 'client-cut-text', text: cut.value.text } : { type: 'client-cut-text-extended', ...cut.value });
    }
    case ClientMessageType.EnableContinuousUpdates: {
      yield 9;
      const enable = r.u8() !== 0;
      return ok({ type: 'enable-continuous-updates', enable, x: r.u16(), y: r.u16(), width: r.u16(), height: r.u16() });
    }
    case ClientMessageType.ClientFence: {
      yield 8;
      r.skip(3);
      const flags = r.u32();
      const length = r.u8();
      if (length > MAX_FENCE_PAYLOAD) return fail(tooLarge('ClientFence.length', length, MAX_FENCE_PAYLOAD));
      yield length;
      return ok({ type: 'client-fence', flags, payload: r.bytes(length) });
    }
    case ClientMessageType.SetDesktopSize: {
      yield 7;
      r.skip(1);
      const width = r.u16();
      const height = r.u16();
      const count = r.u8();
      r.skip(1);
      if (width > limits.maxDimension) return fail(tooLarge('SetDesktopSize.width', width, limits.maxDimension));
      if (height > limits.maxDimension) return fail(tooLarge('SetDesktopSize.height', height, limits.maxDimension));
      const screens = yield* readScreens(r, count);
      return ok({ type: 'set-desktop-size', width, height, screens });
    }
    default: {
      // 255: QEMU's client messages, a sub-type byte first.
      yield 1;
      const sub = r.u8();
      if (sub === 0) {
        r.where = 'QemuExtendedKeyEvent';
        yield 10;
        const down = r.u16() !== 0;
        return ok({ type: 'qemu-extended-key-event', down, keysym: r.u32(), keycode: r.u32() });
      }
      if (sub !== 1) return fail(rfbError('unsupported', 'QemuClientMessage.submessage-type', `unknown QEMU sub-message ${sub}`));
      r.where = 'QemuAudio';
      yield 2;
      const operation = r.u16();
      if (operation === 0) return ok({ type: 'qemu-audio', operation: 'enable' });
      if (operation === 1) return ok({ type: 'qemu-audio', operation: 'disable' });
      if (operation !== 2) return fail(rfbError('unsupported', 'QemuAudio.operation', `unknown audio operation ${operation}`));
      yield 6;
      const format = AUDIO_FORMATS[r.u8()];
      const channels = r.u8();
      const frequency = r.u32();
      if (format === undefined) return fail(rfbError('malformed', 'QemuAudio.format', 'not one of u8, s8, u16, s16, u32, s32'));
      if (channels !== 1 && channels !== 2) return fail(rfbError('malformed', 'QemuAudio.channels', `${channels} is not 1 or 2`));
      return ok({ type: 'qemu-audio-set-format', format, channels, frequency });
    }
  }
}

export type ClientStreamItem = StreamItem<RfbClientMessage>;

/**
 * A viewer's messages, from bytes in arbitrary chunks. Each message comes with its exact bytes.
 * Unknown message types are errors: RFB gives no way to skip them, so the viewer must be dropped.
 */
export class RfbClientMessageDecoder {
  readonly limits: Readonly<RfbLimits>;
  readonly #stream: MessageStream<RfbClientMessage>;

  constructor(limits?: Partial<RfbLimits>) {
    this.limits = resolveLimits(limits);
    this.#stream = new MessageStream((r) => readClientMessage(r, this.limits), this.limits.maxMessageBytes, 'client message');
  }

  /** The complete messages (and at most one error, last) that this chunk finishes. */
  feed(chunk: Uint8Array): ClientStreamItem[] {
    return this.#stream.feed(chunk);
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

function rect(w: ByteWriter, m: { x: number; y: number; width: number; height: number }): void {
  w.u16('x-position', m.x).u16('y-position', m.y).u16('width', m.width).u16('height', m.height);
}

/** Cut text in either form, for ClientCutText (type 6) and ServerCutText (type 3). */
export function encodeCutText(type: number, name: string, m: { text: string } | { flags: number; data: Uint8Array }): Uint8Array {
  if ('text' in m) {
    const text = encodeLatin1(m.text, `${name}.text`);
    return new ByteWriter(8 + text.length, name).u8('message-type', type).pad(3).u32('length', text.length).raw(text).done();
  }
  const w = new ByteWriter(12 + m.data.length, name).u8('message-type', type).pad(3);
  return w.s32('length', -(4 + m.data.length)).u32('flags', m.flags).raw(m.data).done();
}

export function encodeClientMessage(m: RfbClientMessage): Uint8Array {
  switch (m.type) {
    case 'set-pixel-format': {
      const w = new ByteWriter(20, 'SetPixelFormat').u8('message-type', ClientMessageType.SetPixelFormat).pad(3);
      writePixelFormat(w, m.pixelFormat);
      return w.done();
    }
    case 'set-encodings': {
      const w = new ByteWriter(4 + 4 * m.encodings.length, 'SetEncodings').u8('message-type', ClientMessageType.SetEncodings).pad(1);
      w.u16('number-of-encodings', m.encodings.length);
      m.encodings.forEach((e, i) => w.s32(`encodings[${i}]`, e));
      return w.done();
    }
    case 'framebuffer-update-request': {
      const w = new ByteWriter(10, 'FramebufferUpdateRequest').u8('message-type', ClientMessageType.FramebufferUpdateRequest).flag(m.incremental);
      rect(w, m);
      return w.done();
    }
    case 'key-event':
      return new ByteWriter(8, 'KeyEvent').u8('message-type', ClientMessageType.KeyEvent).flag(m.down).pad(2).u32('key', m.keysym).done();
    case 'pointer-event':
      return new ByteWriter(6, 'PointerEvent')
        .u8('message-type', ClientMessageType.PointerEvent)
        .u8('button-mask', m.buttonMask)
        .u16('x-position', m.x)
        .u16('y-position', m.y)
        .done();
    case 'client-cut-text':
      return encodeCutText(ClientMessageType.ClientCutText, 'ClientCutText', { text: m.text });
    case 'client-cut-text-extended':
      return encodeCutText(ClientMessageType.ClientCutText, 'ClientCutText', { flags: m.flags, data: m.data });
    case 'enable-continuous-updates': {
      const w = new ByteWriter(10, 'EnableContinuousUpdates').u8('message-type', ClientMessageType.EnableContinuousUpdates).flag(m.enable);
      rect(w, m);
      return w.done();
    }
    case 'client-fence':
      return encodeFence(ClientMessageType.ClientFence, 'ClientFence', m.flags, m.payload);
    case 'set-desktop-size': {
      const w = new ByteWriter(8 + 16 * m.screens.length, 'SetDesktopSize').u8('message-type', ClientMessageType.SetDesktopSize).pad(1);
      w.u16('width', m.width).u16('height', m.height).u8('number-of-screens', m.screens.length).pad(1);
      writeScreens(w, m.screens);
      return w.done();
    }
    case 'qemu-extended-key-event':
      return new ByteWriter(12, 'QemuExtendedKeyEvent')
        .u8('message-type', ClientMessageType.Qemu)
        .u8('submessage-type', 0)
        .u16('down-flag', m.down ? 1 : 0)
        .u32('keysym', m.keysym)
        .u32('keycode', m.keycode)
        .done();
    case 'qemu-audio':
      return new ByteWriter(4, 'QemuAudio')
        .u8('message-type', ClientMessageType.Qemu)
        .u8('submessage-type', 1)
        .u16('operation', m.operation === 'enable' ? 0 : 1)
        .done();
    case 'qemu-audio-set-format':
      return new ByteWriter(10, 'QemuAudio')
        .u8('message-type', ClientMessageType.Qemu)
        .u8('submessage-type', 1)
        .u16('operation', 2)
        .u8('format', AUDIO_FORMATS.indexOf(m.format))
        .u8('channels', m.channels)
        .u32('frequency', m.frequency)
        .done();
  }
}

export function writeScreens(w: ByteWriter, screens: readonly RfbScreen[]): void {
  screens.forEach((s, i) => {
    w.u32(`screens[${i}].id`, s.id).u16(`screens[${i}].x`, s.x).u16(`screens[${i}].y`, s.y);
    w.u16(`screens[${i}].width`, s.width).u16(`screens[${i}].height`, s.height).u32(`screens[${i}].flags`, s.flags);
  });
}

/** ClientFence (248) and ServerFence (248 too, the other direction) share a layout. */
export function encodeFence(type: number, name: string, flags: number, payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_FENCE_PAYLOAD) throw new RfbEncodeError(`${name}.payload`, `${payload.length} bytes; at most ${MAX_FENCE_PAYLOAD}`);
  return new ByteWriter(9 + payload.length, name).u8('message-type', type).pad(3).u32('flags', flags).u8('length', payload.length).raw(payload).done();
}
