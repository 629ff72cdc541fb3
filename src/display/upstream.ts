// One RFB session from the gateway to a VM's VNC server (QEMU's, on a unix socket or through the
// agents' bridged stream). It does the client handshake, asks for pixels in GATEWAY_PIXEL_FORMAT as
// Raw or CopyRect (what the gateway can apply to its copy of the screen), keeps one incremental
// update request outstanding, and applies every update to its own Framebuffer. The gateway decides
// when a session becomes the one viewers see.
import type { Duplex } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import {
  RfbClientHandshake,
  RfbEncoding,
  RfbServerMessageDecoder,
  encodeClientMessage,
  encodingName,
  isPixelEncoding,
  type ServerInit,
  type UpdateSummary,
} from './common/rfb.ts';
import { Framebuffer, GATEWAY_PIXEL_FORMAT, isAppliedEncoding, type Rect } from './common/framebuffer.ts';

/** Opens a byte stream to a VNC server (`net.connect(<vm dir>/vnc.sock)`, or a bridged link stream). */
export type UpstreamConnector = () => Promise<Duplex>;

/**
 * What the gateway asks the server for. Raw and CopyRect only: the gateway applies every rectangle
 * to its copy of the screen, and Raw costs the server nothing to produce on a local socket. The
 * pseudo-encodings: size changes, LastRect (allowed by the decoder, harmless), and QEMU's extended
 * key events (scancodes, so non-US layouts work for viewers that send them).
 */
export const UPSTREAM_ENCODINGS: readonly number[] = [
  RfbEncoding.CopyRect,
  RfbEncoding.Raw,
  RfbEncoding.DesktopSize,
  RfbEncoding.LastRect,
  RfbEncoding.QemuExtendedKeyEvent,
];

export interface UpstreamUpdate {
  /** Parts of the screen whose pixels changed (clipped to the screen). */
  changed: Rect[];
  summary: UpdateSummary;
  /** The update resized the framebuffer (a DesktopSize rectangle): the whole screen is new. */
  resized: boolean;
}

/** What a session tells its owner; replaced when the gateway promotes a session to current. */
export interface UpstreamHandler {
  update(update: UpstreamUpdate): void;
  /** The server acknowledged QEMU extended key events. */
  extendedKeyEvents(): void;
  cutText(text: string): void;
  bell(): void;
  /** The session ended by itself (the server closed, or sent bytes we cannot read). */
  closed(reason: string): void;
}

const NO_HANDLER: UpstreamHandler = { update() {}, extendedKeyEvents() {}, cutText() {}, bell() {}, closed() {} };

export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
}

export interface UpstreamOpenOptions {
  /** Connect plus handshake. Default 10000. */
  timeoutMs?: number;
}

export class UpstreamSession {
  readonly serverInit: ServerInit;
  readonly fb: Framebuffer;
  /** Pixels received since the session started: the first full frame is in once this covers the screen. */
  coveredPixels = 0;
  /** The server acknowledged QEMU extended key events (for this session; a new server may not). */
  extendedKeyEvents = false;
  readonly #stream: Duplex;
  readonly #decoder = new RfbServerMessageDecoder(GATEWAY_PIXEL_FORMAT);
  #handler: UpstreamHandler = NO_HANDLER;
  #pending: Uint8Array;
  #closed = false;
  /** Why it ended by itself, for a handler that starts after the fact. */
  #endReason: string | undefined;
  #reading = false;

  private constructor(stream: Duplex, serverInit: ServerInit, rest: Uint8Array) {
    this.#stream = stream;
    this.serverInit = serverInit;
    this.fb = new Framebuffer(serverInit.width, serverInit.height);
    this.#pending = rest;
  }

  /** Connects and completes the handshake; the session reads nothing more until `start`. */
  static async open(connect: UpstreamConnector, options: UpstreamOpenOptions = {}): Promise<UpstreamSession> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const abort = new AbortController();
    const timeout = delay(timeoutMs, undefined, { signal: abort.signal, ref: false }).then(
      () => {
        throw new UpstreamError(`no VNC handshake within ${timeoutMs} ms`);
      },
      () => undefined as never,
    );
    let stream: Duplex | undefined;
    try {
      stream = await Promise.race([connect(), timeout]);
      return await Promise.race([UpstreamSession.#handshake(stream), timeout]);
    } catch (error) {
      stream?.destroy();
      if (error instanceof UpstreamError) throw error;
      throw new UpstreamError((error as Error).message, { cause: error });
    } finally {
      abort.abort();
    }
  }

  static #handshake(stream: Duplex): Promise<UpstreamSession> {
    return new Promise((resolve, reject) => {
      const handshake = new RfbClientHandshake({ shared: true });
      const cleanup = (): void => {
        stream.off('data', onData);
        stream.off('close', onClose);
        stream.off('error', onError);
      };
      const onError = (error: Error): void => {
        cleanup();
        reject(new UpstreamError(`VNC server: ${error.message}`, { cause: error }));
      };
      const onClose = (): void => {
        cleanup();
        reject(new UpstreamError('the VNC server closed the connection during the handshake'));
      };
      const onData = (chunk: Buffer): void => {
        for (const event of handshake.feed(chunk)) {
          if (event.kind === 'send') stream.write(event.bytes);
          else if (event.kind === 'error') {
            cleanup();
            reject(new UpstreamError(`VNC handshake: ${event.error.message}`));
            return;
          } else if (event.kind === 'server-init') {
            cleanup();
            stream.pause();
            // `rest` is a view into this chunk: keep a copy, the chunk may be reused.
            const session = new UpstreamSession(stream, event.serverInit, event.rest.slice());
            session.#begin();
            resolve(session);
            return;
          }
        }
      };
      stream.on('data', onData);
      stream.on('close', onClose);
      stream.on('error', onError);
    });
  }

  /** Our pixel format and encodings, then a full-screen, non-incremental update request. */
  #begin(): void {
    const { width, height } = this.serverInit;
    // Watched from now on, so an error before `start` is not an unhandled 'error' event.
    this.#stream.on('error', (error: Error) => this.#end(`VNC server connection: ${error.message}`));
    this.#stream.on('close', () => this.#end('the VNC server closed the connection'));
    if ('setNoDelay' in this.#stream && typeof this.#stream.setNoDelay === 'function') this.#stream.setNoDelay(true);
    this.#stream.write(encodeClientMessage({ type: 'set-pixel-format', pixelFormat: { ...GATEWAY_PIXEL_FORMAT } }));
    this.#stream.write(encodeClientMessage({ type: 'set-encodings', encodings: [...UPSTREAM_ENCODINGS] }));
    this.#stream.write(encodeClientMessage({ type: 'framebuffer-update-request', incremental: false, x: 0, y: 0, width, height }));
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes written to the server and not yet handed to the OS. */
  get backlog(): number {
    return this.#stream.writableLength;
  }

  /** Starts (or goes on) reading the server's messages with this handler. */
  start(handler: UpstreamHandler): void {
    if (this.#closed) {
      if (this.#endReason !== undefined) handler.closed(this.#endReason);
      return;
    }
    this.#handler = handler;
    if (!this.#reading) {
      this.#reading = true;
      this.#stream.on('data', (chunk: Buffer) => this.#onData(chunk));
      const pending = this.#pending;
      this.#pending = new Uint8Array(0);
      if (pending.length > 0) this.#onData(pending);
      this.#stream.resume();
    }
  }

  /** A client message (input, cut text) for the server. */
  send(bytes: Uint8Array): void {
    if (!this.#closed) this.#stream.write(bytes);
  }

  /** Ends the session; its handler hears nothing more. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#handler = NO_HANDLER;
    this.#stream.destroy();
  }

  #end(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#endReason = reason;
    this.#stream.destroy();
    const handler = this.#handler;
    this.#handler = NO_HANDLER;
    handler.closed(reason);
  }

  #onData(chunk: Uint8Array): void {
    for (const item of this.#decoder.feed(chunk)) {
      if (this.#closed) return;
      if (item.kind === 'error') {
        this.#end(`unreadable bytes from the VNC server: ${item.error.message}`);
        return;
      }
      const m = item.message;
      switch (m.type) {
        case 'framebuffer-update': {
          const changed: Rect[] = [];
          let resized = false;
          let ackedKeys = false;
          for (const rect of m.rects) {
            if (isPixelEncoding(rect.encoding)) {
              if (!isAppliedEncoding(rect.encoding)) {
                this.#end(`the VNC server sent ${encodingName(rect.encoding)}, which the gateway did not ask for`);
                return;
              }
              const c = this.fb.apply(rect);
              if (c !== undefined) {
                changed.push(c);
                this.coveredPixels += c.width * c.height;
              }
            } else if (rect.encoding === RfbEncoding.DesktopSize) {
              if (rect.width === 0 || rect.height === 0) continue;
              this.fb.resize(rect.width, rect.height);
              this.coveredPixels = 0;
              changed.length = 0;
              resized = true;
            } else if (rect.encoding === RfbEncoding.QemuExtendedKeyEvent) {
              ackedKeys = !this.extendedKeyEvents;
              this.extendedKeyEvents = true;
            }
          }
          // The next update: QEMU answers an incremental request when something changed.
          this.#stream.write(
            encodeClientMessage({ type: 'framebuffer-update-request', incremental: true, x: 0, y: 0, width: this.fb.width, height: this.fb.height }),
          );
          if (ackedKeys) this.#handler.extendedKeyEvents();
          if (item.summary !== undefined) this.#handler.update({ changed, summary: item.summary, resized });
          break;
        }
        case 'server-cut-text':
          this.#handler.cutText(m.text);
          break;
        case 'bell':
          this.#handler.bell();
          break;
        default:
          // Colour maps (we asked for true colour), fences, continuous updates and audio were not
          // negotiated: a server that sends them anyway is read past and ignored.
          break;
      }
    }
  }
}
