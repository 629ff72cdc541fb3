// Errors and limits of the RFB codec. A peer's bad bytes are never thrown: every parser returns an
// RfbProtocolError value and stays failed, because the gateway's answer to any of them is the same
// (drop that connection) and a throw from deep inside a socket callback would take the agent down.
// Only our own mistakes throw: RfbEncodeError when asked to serialize a value the wire cannot carry.

export type RfbErrorCode =
  /** A field holds a value the protocol does not allow. */
  | 'malformed'
  /** A length or count is above our limit (checked before anything is allocated). */
  | 'too-large'
  /** Valid RFB that this codec does not speak: a version, message type, encoding or sub-message. */
  | 'unsupported'
  /** The peer said no: a refused connection or failed security handshake, with its reason. */
  | 'refused'
  /** The caller used the API out of order (fed a finished handshake, answered twice...). */
  | 'state'
  /** A bug in the codec itself; reported instead of thrown so one bad stream cannot crash the agent. */
  | 'internal';

export interface RfbProtocolError {
  readonly code: RfbErrorCode;
  /** The message (or handshake step) and field, e.g. "ClientCutText.length". */
  readonly where: string;
  /** One line for logs, starting with `where`. */
  readonly message: string;
  /** The peer's own explanation, for `refused`. */
  readonly reason?: string;
}

export function rfbError(code: RfbErrorCode, where: string, detail: string, reason?: string): RfbProtocolError {
  const message = `${where}: ${detail}`;
  return reason === undefined ? { code, where, message } : { code, where, message, reason };
}

export function tooLarge(where: string, value: number, limit: number): RfbProtocolError {
  return rfbError('too-large', where, `${value} exceeds the limit of ${limit}`);
}

/**
 * Every size a peer can declare is checked against one of these before we buffer a byte of it.
 * The defaults fit QEMU and the usual viewers with a wide margin.
 */
export interface RfbLimits {
  /** Bytes of one message, headers included; also the most a message decoder ever buffers. */
  maxMessageBytes: number;
  /** ClientCutText / ServerCutText payload (QEMU refuses more than 1 MiB itself). */
  maxCutTextBytes: number;
  /** Entries in SetEncodings (viewers send ~25; TigerVNC-style level ranges need a few more). */
  maxEncodings: number;
  /** Rectangles in one FramebufferUpdate (the count field is 16 bits). */
  maxRects: number;
  /** Desktop name in ServerInit and in the DesktopName pseudo-rectangle. */
  maxNameBytes: number;
  /** Reason strings of a refused connection or failed security handshake. */
  maxReasonBytes: number;
  /** Width and height of the framebuffer and of any rectangle. */
  maxDimension: number;
  /** One QEMU audio data message. */
  maxAudioBytes: number;
}

export const DEFAULT_RFB_LIMITS: Readonly<RfbLimits> = Object.freeze({
  maxMessageBytes: 64 * 1024 * 1024,
  maxCutTextBytes: 1024 * 1024,
  maxEncodings: 256,
  maxRects: 65535,
  maxNameBytes: 4096,
  maxReasonBytes: 4096,
  maxDimension: 16384,
  maxAudioBytes: 1024 * 1024,
});

export function resolveLimits(limits: Partial<RfbLimits> | undefined): Readonly<RfbLimits> {
  return limits === undefined ? DEFAULT_RFB_LIMITS : Object.freeze({ ...DEFAULT_RFB_LIMITS, ...limits });
}

/** We were asked to serialize something the wire cannot carry (a bug in the caller, not the peer). */
export class RfbEncodeError extends Error {
  override readonly name = 'RfbEncodeError';
  /** The message and field, e.g. "KeyEvent.keysym". */
  readonly field: string;

  constructor(field: string, detail: string) {
    super(`${field}: ${detail}`);
    this.field = field;
  }
}
