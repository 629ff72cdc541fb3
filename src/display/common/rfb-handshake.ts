// The RFB 3.8 handshake (RFC 6143 §7.1, §7.3) as two explicit state machines:
//   RfbClientHandshake: we are the client (the gateway dialling QEMU's VNC server);
//   RfbServerHandshake: we are the server (a viewer dialling the gateway).
// Each is fed the peer's bytes and answers with events in order; `send` events are the bytes to
// write back. Neither does I/O or keeps time. Bytes that arrive after the handshake's last message
// belong to the message stream and are handed back as `rest` with the final event.

import { rfbError, resolveLimits, tooLarge, RfbEncodeError, type RfbLimits, type RfbProtocolError } from './rfb-errors.ts';
import { checkPixelFormat, decodePixelFormat, writePixelFormat, type PixelFormat } from './rfb-pixels.ts';
import { ByteWriter, decodeUtf8, encodeUtf8, StepBuffer } from './rfb-wire.ts';

export interface RfbVersion {
  major: number;
  minor: number;
}

export const RFB_VERSION_3_8: Readonly<RfbVersion> = Object.freeze({ major: 3, minor: 8 });
export const PROTOCOL_VERSION_BYTES = 12;

export const SecurityType = {
  Invalid: 0,
  None: 1,
  VncAuthentication: 2,
} as const;

export const VNC_AUTH_CHALLENGE_BYTES = 16;

export interface ServerInit {
  width: number;
  height: number;
  pixelFormat: PixelFormat;
  name: string;
}

/** Width, height, pixel format and name length: the fixed part of ServerInit. */
const SERVER_INIT_FIXED_BYTES = 24;

const VERSION_PATTERN = /^RFB (\d{3})\.(\d{3})\n$/;

/** "RFB 003.008\n" → {3, 8}; undefined when the 12 bytes are not a ProtocolVersion. */
export function parseProtocolVersion(bytes: Uint8Array): RfbVersion | undefined {
  if (bytes.length !== PROTOCOL_VERSION_BYTES) return undefined;
  const match = VERSION_PATTERN.exec(String.fromCharCode(...bytes));
  if (match === null) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]) };
}

export function encodeProtocolVersion(version: RfbVersion): Uint8Array {
  const { major, minor } = version;
  for (const [field, value] of [['major', major], ['minor', minor]] as const) {
    if (!Number.isInteger(value) || value < 0 || value > 999) throw new RfbEncodeError(`ProtocolVersion.${field}`, `${value} is not in [0, 999]`);
  }
  const text = `RFB ${String(major).padStart(3, '0')}.${String(minor).padStart(3, '0')}\n`;
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

export function formatVersion(version: RfbVersion): string {
  return `${version.major}.${version.minor}`;
}

/** The server's list of security types (3.7+). An empty list must come with a reason: use `encodeConnectionFailed`. */
export function encodeSecurityTypes(types: readonly number[]): Uint8Array {
  if (types.length === 0 || types.length > 255) throw new RfbEncodeError('SecurityTypes.number-of-security-types', `${types.length} is not in [1, 255]`);
  const w = new ByteWriter(1 + types.length, 'SecurityTypes');
  w.u8('number-of-security-types', types.length);
  types.forEach((t, i) => w.u8(`security-types[${i}]`, t));
  return w.done();
}

/** SecurityResult (3.8): OK, or failed with a reason. */
export function encodeSecurityResult(result: { ok: true } | { ok: false; reason: string }): Uint8Array {
  if (result.ok) return new ByteWriter(4, 'SecurityResult').u32('status', 0).done();
  const reason = encodeUtf8(result.reason);
  return new ByteWriter(8 + reason.length, 'SecurityResult').u32('status', 1).u32('reason-length', reason.length).raw(reason).done();
}

/**
 * A server refusing the connection right after the versions, in the form the client's version
 * expects: 3.3 reads a u32 security type (0 = failed), 3.7 and 3.8 a u8 count of types (0 = failed);
 * both then read a reason string.
 */
export function encodeConnectionFailed(clientVersion: RfbVersion, reason: string): Uint8Array {
  const text = encodeUtf8(reason);
  const threeThree = !(clientVersion.major === 3 && (clientVersion.minor === 7 || clientVersion.minor === 8));
  const head = threeThree ? 4 : 1;
  const w = new ByteWriter(head + 4 + text.length, 'ConnectionFailed');
  if (threeThree) w.u32('security-type', SecurityType.Invalid);
  else w.u8('number-of-security-types', 0);
  return w.u32('reason-length', text.length).raw(text).done();
}

export function encodeClientInit(shared: boolean): Uint8Array {
  return Uint8Array.of(shared ? 1 : 0);
}

export function encodeServerInit(init: ServerInit): Uint8Array {
  const name = encodeUtf8(init.name);
  const w = new ByteWriter(SERVER_INIT_FIXED_BYTES + name.length, 'ServerInit');
  w.u16('framebuffer-width', init.width).u16('framebuffer-height', init.height);
  writePixelFormat(w, init.pixelFormat);
  return w.u32('name-length', name.length).raw(name).done();
}

/** Checks a ServerInit against the limits; used on what we receive and on what we are asked to send. */
function checkServerInit(init: ServerInit, nameBytes: number, limits: RfbLimits): RfbProtocolError | undefined {
  if (init.width > limits.maxDimension) return tooLarge('ServerInit.framebuffer-width', init.width, limits.maxDimension);
  if (init.height > limits.maxDimension) return tooLarge('ServerInit.framebuffer-height', init.height, limits.maxDimension);
  if (nameBytes > limits.maxNameBytes) return tooLarge('ServerInit.name-length', nameBytes, limits.maxNameBytes);
  return checkPixelFormat(init.pixelFormat, 'ServerInit.pixel-format');
}

function readU32(bytes: Uint8Array, at = 0): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(at, false);
}

function readU16(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint16(at, false);
}

// ---------------------------------------------------------------------------------------------
// Client side: the gateway talking to QEMU.

export type ClientHandshakeState =
  /** Waiting for the server's ProtocolVersion. */
  | 'protocol-version'
  /** Waiting for the list of security types (or the reason the server refuses us). */
  | 'security-types'
  /** Waiting for the 16-byte VNC authentication challenge. */
  | 'vnc-auth-challenge'
  /** Waiting for the caller to answer the challenge (`respondToChallenge`). */
  | 'vnc-auth-response'
  | 'security-result'
  | 'server-init'
  | 'done'
  | 'failed';

export type ClientHandshakeEvent =
  | { kind: 'server-version'; version: RfbVersion }
  | { kind: 'security-types'; types: number[] }
  /** Answer with `respondToChallenge(DES(password, challenge))`. */
  | { kind: 'vnc-auth-challenge'; challenge: Uint8Array }
  | { kind: 'security-result'; ok: true }
  /** The handshake is over; `rest` is the start of the message stream (usually empty). */
  | { kind: 'server-init'; serverInit: ServerInit; rest: Uint8Array }
  | { kind: 'send'; bytes: Uint8Array }
  | { kind: 'error'; error: RfbProtocolError };

export interface ClientHandshakeOptions {
  /** ClientInit's shared flag: true lets other viewers of the same server stay connected. */
  shared: boolean;
  /** Also accept VNC authentication when the server does not offer None (the caller answers the challenge). */
  vncAuth?: boolean;
  limits?: Partial<RfbLimits>;
}

type StepPart = 'head' | 'list' | 'reason-length' | 'reason' | 'name';

export class RfbClientHandshake {
  readonly #shared: boolean;
  readonly #vncAuth: boolean;
  readonly #limits: Readonly<RfbLimits>;
  readonly #step = new StepBuffer();
  #state: ClientHandshakeState = 'protocol-version';
  /** What the bytes being collected are, within the state (a reason string follows its length). */
  #part: StepPart = 'head';
  #pendingInit: Omit<ServerInit, 'name'> | undefined;
  #serverInit: ServerInit | undefined;
  #error: RfbProtocolError | undefined;

  constructor(options: ClientHandshakeOptions) {
    this.#shared = options.shared;
    this.#vncAuth = options.vncAuth ?? false;
    this.#limits = resolveLimits(options.limits);
    this.#step.expect(PROTOCOL_VERSION_BYTES);
  }

  get state(): ClientHandshakeState {
    return this.#state;
  }

  get error(): RfbProtocolError | undefined {
    return this.#error;
  }

  /** The ServerInit once the handshake is done. */
  get serverInit(): ServerInit | undefined {
    return this.#serverInit;
  }

  /** Bytes held for the step in progress: at most the larger of the name and reason limits, or 255 (a list of security types). */
  get bufferedBytes(): number {
    return this.#step.bufferedBytes;
  }

  feed(chunk: Uint8Array): ClientHandshakeEvent[] {
    if (this.#error !== undefined) return [{ kind: 'error', error: this.#error }];
    const events: ClientHandshakeEvent[] = [];
    if (this.#state === 'done' || this.#state === 'vnc-auth-response') {
      if (chunk.length === 0) return events;
      const detail =
        this.#state === 'done'
          ? 'the handshake is over: feed the server-message decoder'
          : `${chunk.length} bytes from the server before we answered its challenge`;
      return this.#fail(events, rfbError(this.#state === 'done' ? 'state' : 'malformed', 'handshake', detail));
    }
    let off = 0;
    while (this.#reading()) {
      off = this.#step.fill(chunk, off);
      if (!this.#step.ready) break;
      this.#advance(this.#step.take(), events);
    }
    if (this.state === 'done' && this.#serverInit !== undefined) {
      events.push({ kind: 'server-init', serverInit: this.#serverInit, rest: chunk.subarray(off) });
    } else if (this.state === 'vnc-auth-response' && off < chunk.length) {
      this.#fail(events, rfbError('malformed', 'handshake', `${chunk.length - off} bytes from the server right after its challenge`));
    }
    return events;
  }

  /** The answer to a VNC authentication challenge (16 bytes: the challenge DES-encrypted with the password). */
  respondToChallenge(response: Uint8Array): ClientHandshakeEvent[] {
    if (this.#error !== undefined) return [{ kind: 'error', error: this.#error }];
    if (this.#state !== 'vnc-auth-response') {
      return this.#fail([], rfbError('state', 'VncAuthentication.response', `no challenge to answer in state ${this.#state}`));
    }
    if (response.length !== VNC_AUTH_CHALLENGE_BYTES) {
      return this.#fail([], rfbError('state', 'VncAuthentication.response', `${response.length} bytes, expected ${VNC_AUTH_CHALLENGE_BYTES}`));
    }
    this.#expect('security-result', 'head', 4);
    return [{ kind: 'send', bytes: response.slice() }];
  }

  #reading(): boolean {
    return this.#error === undefined && this.#state !== 'done' && this.#state !== 'vnc-auth-response';
  }

  #expect(state: ClientHandshakeState, part: StepPart, n: number): void {
    this.#state = state;
    this.#part = part;
    this.#step.expect(n);
  }

  #fail(events: ClientHandshakeEvent[], error: RfbProtocolError): ClientHandshakeEvent[] {
    this.#error = error;
    this.#state = 'failed';
    this.#step.expect(0);
    events.push({ kind: 'error', error });
    return events;
  }

  /** A reason string's length has arrived: collect the string, or fail if it is over the limit. */
  #reasonLength(where: string, bytes: Uint8Array, events: ClientHandshakeEvent[]): void {
    const length = readU32(bytes);
    if (length > this.#limits.maxReasonBytes) {
      this.#fail(events, tooLarge(`${where}.reason-length`, length, this.#limits.maxReasonBytes));
      return;
    }
    this.#expect(this.#state, 'reason', length);
  }

  #advance(bytes: Uint8Array, events: ClientHandshakeEvent[]): void {
    switch (this.#state) {
      case 'protocol-version': {
        const version = parseProtocolVersion(bytes);
        if (version === undefined) {
          this.#fail(events, rfbError('malformed', 'ProtocolVersion', `not "RFB xxx.yyy\\n": ${JSON.stringify(String.fromCharCode(...bytes))}`));
          return;
        }
        events.push({ kind: 'server-version', version });
        // A server may offer a later version; the client answers with the highest it speaks (§7.1.1).
        if (version.major < 3 || (version.major === 3 && version.minor < 8)) {
          this.#fail(events, rfbError('unsupported', 'ProtocolVersion', `server speaks RFB ${formatVersion(version)}; we need 3.8`));
          return;
        }
        events.push({ kind: 'send', bytes: encodeProtocolVersion(RFB_VERSION_3_8) });
        this.#expect('security-types', 'head', 1);
        return;
      }
      case 'security-types': {
        if (this.#part === 'head') {
          const count = bytes[0] ?? 0;
          if (count === 0) this.#expect('security-types', 'reason-length', 4);
          else this.#expect('security-types', 'list', count);
          return;
        }
        if (this.#part === 'reason-length') {
          this.#reasonLength('SecurityTypes', bytes, events);
          return;
        }
        if (this.#part === 'reason') {
          const reason = decodeUtf8(bytes);
          this.#fail(events, rfbError('refused', 'SecurityTypes', `server refused the connection: ${reason}`, reason));
          return;
        }
        const types = [...bytes];
        events.push({ kind: 'security-types', types });
        if (types.includes(SecurityType.None)) {
          events.push({ kind: 'send', bytes: Uint8Array.of(SecurityType.None) });
          this.#expect('security-result', 'head', 4);
        } else if (this.#vncAuth && types.includes(SecurityType.VncAuthentication)) {
          events.push({ kind: 'send', bytes: Uint8Array.of(SecurityType.VncAuthentication) });
          this.#expect('vnc-auth-challenge', 'head', VNC_AUTH_CHALLENGE_BYTES);
        } else {
          this.#fail(events, rfbError('unsupported', 'SecurityTypes', `no security type we speak among [${types.join(', ')}]`));
        }
        return;
      }
      case 'vnc-auth-challenge':
        events.push({ kind: 'vnc-auth-challenge', challenge: bytes });
        this.#state = 'vnc-auth-response';
        this.#step.expect(0);
        return;
      case 'security-result': {
        if (this.#part === 'head') {
          const status = readU32(bytes);
          if (status === 0) {
            events.push({ kind: 'security-result', ok: true });
            events.push({ kind: 'send', bytes: encodeClientInit(this.#shared) });
            this.#expect('server-init', 'head', SERVER_INIT_FIXED_BYTES);
          } else {
            // 1 is "failed"; some servers use 2 for "too many attempts". 3.8 always sends a reason.
            this.#expect('security-result', 'reason-length', 4);
          }
          return;
        }
        if (this.#part === 'reason-length') {
          this.#reasonLength('SecurityResult', bytes, events);
          return;
        }
        const reason = decodeUtf8(bytes);
        this.#fail(events, rfbError('refused', 'SecurityResult', `security handshake failed: ${reason}`, reason));
        return;
      }
      case 'server-init': {
        if (this.#part === 'head') {
          const init = { width: readU16(bytes, 0), height: readU16(bytes, 2), pixelFormat: decodePixelFormat(bytes, 4) };
          const nameLength = readU32(bytes, 20);
          const bad = checkServerInit({ ...init, name: '' }, nameLength, this.#limits);
          if (bad !== undefined) {
            this.#fail(events, bad);
            return;
          }
          this.#pendingInit = init;
          this.#expect('server-init', 'name', nameLength);
          return;
        }
        if (this.#pendingInit === undefined) throw new Error('ServerInit name without its head');
        this.#serverInit = { ...this.#pendingInit, name: decodeUtf8(bytes) };
        this.#state = 'done';
        this.#step.expect(0);
        return;
      }
      case 'vnc-auth-response':
      case 'done':
      case 'failed':
        return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Server side: a viewer talking to the gateway. We offer security type None only: the gateway
// listens on loopback and behind the desktop app's token, not on a network.

export type ServerHandshakeState =
  /** Constructed; `start()` gives the ProtocolVersion to send. */
  | 'start'
  | 'protocol-version'
  | 'security-type'
  | 'client-init'
  /** Waiting for the caller's `sendServerInit` (typically the size and format cached from QEMU). */
  | 'server-init'
  | 'done'
  | 'failed';

export type ServerHandshakeEvent =
  | { kind: 'client-version'; version: RfbVersion }
  | { kind: 'security-type'; type: number }
  /**
   * The viewer is done; answer with `sendServerInit`. `rest` is the start of the viewer's message
   * stream (a viewer may pipeline messages after ClientInit): feed it to the client-message decoder.
   */
  | { kind: 'client-init'; shared: boolean; rest: Uint8Array }
  | { kind: 'send'; bytes: Uint8Array }
  | { kind: 'error'; error: RfbProtocolError };

export class RfbServerHandshake {
  readonly #limits: Readonly<RfbLimits>;
  readonly #step = new StepBuffer();
  #state: ServerHandshakeState = 'start';
  #error: RfbProtocolError | undefined;

  constructor(options: { limits?: Partial<RfbLimits> } = {}) {
    this.#limits = resolveLimits(options.limits);
  }

  get state(): ServerHandshakeState {
    return this.#state;
  }

  get error(): RfbProtocolError | undefined {
    return this.#error;
  }

  get bufferedBytes(): number {
    return this.#step.bufferedBytes;
  }

  /** The server speaks first: our ProtocolVersion. */
  start(): ServerHandshakeEvent[] {
    if (this.#error !== undefined) return [{ kind: 'error', error: this.#error }];
    if (this.#state !== 'start') return this.#fail([], rfbError('state', 'handshake', `start() in state ${this.#state}`));
    this.#state = 'protocol-version';
    this.#step.expect(PROTOCOL_VERSION_BYTES);
    return [{ kind: 'send', bytes: encodeProtocolVersion(RFB_VERSION_3_8) }];
  }

  feed(chunk: Uint8Array): ServerHandshakeEvent[] {
    if (this.#error !== undefined) return [{ kind: 'error', error: this.#error }];
    const events: ServerHandshakeEvent[] = [];
    if (this.#state === 'start' || this.#state === 'server-init' || this.#state === 'done') {
      if (chunk.length === 0) return events;
      const detail =
        this.#state === 'start' ? 'bytes before start()' : 'the viewer has finished its handshake: feed the client-message decoder';
      return this.#fail(events, rfbError('state', 'handshake', detail));
    }
    let off = 0;
    while (this.#error === undefined && (this.#state === 'protocol-version' || this.#state === 'security-type' || this.#state === 'client-init')) {
      off = this.#step.fill(chunk, off);
      if (!this.#step.ready) break;
      const bytes = this.#step.take();
      if (this.#state === 'client-init') {
        this.#state = 'server-init';
        this.#step.expect(0);
        events.push({ kind: 'client-init', shared: bytes[0] !== 0, rest: chunk.subarray(off) });
        break;
      }
      this.#advance(bytes, events);
    }
    return events;
  }

  /** Our ServerInit, after the viewer's ClientInit. Checked against the limits like a received one. */
  sendServerInit(init: ServerInit): ServerHandshakeEvent[] {
    if (this.#error !== undefined) return [{ kind: 'error', error: this.#error }];
    if (this.#state !== 'server-init') return this.#fail([], rfbError('state', 'ServerInit', `not expected in state ${this.#state}`));
    const bad = checkServerInit(init, encodeUtf8(init.name).length, this.#limits);
    if (bad !== undefined) return this.#fail([], bad);
    this.#state = 'done';
    return [{ kind: 'send', bytes: encodeServerInit(init) }];
  }

  #fail(events: ServerHandshakeEvent[], error: RfbProtocolError): ServerHandshakeEvent[] {
    this.#error = error;
    this.#state = 'failed';
    this.#step.expect(0);
    events.push({ kind: 'error', error });
    return events;
  }

  #advance(bytes: Uint8Array, events: ServerHandshakeEvent[]): void {
    if (this.#state === 'protocol-version') {
      const version = parseProtocolVersion(bytes);
      if (version === undefined) {
        this.#fail(events, rfbError('malformed', 'ProtocolVersion', `not "RFB xxx.yyy\\n": ${JSON.stringify(String.fromCharCode(...bytes))}`));
        return;
      }
      events.push({ kind: 'client-version', version });
      if (version.major !== 3 || version.minor !== 8) {
        // Tell the viewer why, in the form its version reads, before we hang up.
        const reason = `this server speaks RFB 3.8 only, not ${formatVersion(version)}`;
        events.push({ kind: 'send', bytes: encodeConnectionFailed(version, reason) });
        this.#fail(events, rfbError('unsupported', 'ProtocolVersion', `viewer speaks RFB ${formatVersion(version)}; we need 3.8`));
        return;
      }
      events.push({ kind: 'send', bytes: encodeSecurityTypes([SecurityType.None]) });
      this.#state = 'security-type';
      this.#step.expect(1);
      return;
    }
    // security-type
    const type = bytes[0] ?? SecurityType.Invalid;
    events.push({ kind: 'security-type', type });
    if (type !== SecurityType.None) {
      events.push({ kind: 'send', bytes: encodeSecurityResult({ ok: false, reason: `security type ${type} was not offered` }) });
      this.#fail(events, rfbError('malformed', 'SecurityType', `viewer chose ${type}, which we did not offer`));
      return;
    }
    events.push({ kind: 'send', bytes: encodeSecurityResult({ ok: true }) });
    this.#state = 'client-init';
    this.#step.expect(1);
  }
}
