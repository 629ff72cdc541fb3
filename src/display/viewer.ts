// One viewer of the gateway (noVNC over a WebSocket, or any VNC client over plain TCP): its
// transport, its handshake and message decoder, what it negotiated, what it has not seen yet, and
// its outbound queue. The gateway (gateway.ts) decides what to send; this file keeps the accounting.
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import {
  RfbClientMessageDecoder,
  RfbEncoding,
  RfbServerHandshake,
  type PixelFormat,
  type ServerInit,
} from './common/rfb.ts';
import { DirtyRegion, GATEWAY_PIXEL_FORMAT } from './common/framebuffer.ts';

export type ViewerKind = 'rfb' | 'websocket';

/** The byte pipe under a viewer; `write`'s callback runs once the bytes are handed to the OS. */
export interface ViewerTransport {
  readonly kind: ViewerKind;
  /** `127.0.0.1:54321`, for logs. */
  readonly remote: string;
  write(bytes: Uint8Array, done: () => void): void;
  /** Sends what is queued, then closes. */
  end(): void;
  /** Closes now, dropping what is queued. */
  destroy(): void;
  onData(listener: (chunk: Uint8Array) => void): void;
  onClose(listener: (reason: string) => void): void;
}

export function tcpTransport(socket: Socket): ViewerTransport {
  socket.setNoDelay(true);
  let error: Error | undefined;
  socket.on('error', (e) => (error = e));
  return {
    kind: 'rfb',
    remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`,
    write: (bytes, done) => void socket.write(bytes, () => done()),
    end: () => void socket.end(),
    destroy: () => void socket.destroy(),
    onData: (listener) => void socket.on('data', listener),
    onClose: (listener) => void socket.on('close', () => listener(error ? `connection error: ${error.message}` : 'the viewer closed the connection')),
  };
}

export function webSocketTransport(ws: WebSocket, remote: string): ViewerTransport {
  let error: Error | undefined;
  let textFrame = false;
  ws.on('error', (e) => (error = e));
  return {
    kind: 'websocket',
    remote,
    write: (bytes, done) => ws.send(bytes, { binary: true }, () => done()),
    end: () => ws.close(1000),
    destroy: () => ws.terminate(),
    onData: (listener) =>
      void ws.on('message', (data, isBinary) => {
        if (!isBinary) {
          // RFB over WebSocket is binary; a text frame is not ours to interpret.
          textFrame = true;
          ws.terminate();
          return;
        }
        const chunks = Array.isArray(data) ? data : [data instanceof ArrayBuffer ? Buffer.from(data) : data];
        for (const chunk of chunks) listener(chunk);
      }),
    onClose: (listener) =>
      void ws.on('close', (code, reason) => {
        if (textFrame) listener('sent a text WebSocket message (RFB needs binary messages)');
        else if (error) listener(`connection error: ${error.message}`);
        else listener(`the viewer closed the connection (WebSocket ${code}${reason.length > 0 ? ` ${reason.toString()}` : ''})`);
      }),
  };
}

export type ViewerPhase = 'handshake' | 'awaiting-init' | 'ready' | 'closed';

export class Viewer {
  readonly id: number;
  readonly transport: ViewerTransport;
  readonly handshake = new RfbServerHandshake();
  readonly decoder = new RfbClientMessageDecoder();
  phase: ViewerPhase = 'handshake';
  /** Bytes after ClientInit that arrived before the ServerInit could be sent. */
  early: Uint8Array[] = [];
  pixelFormat: PixelFormat = { ...GATEWAY_PIXEL_FORMAT };
  encodings: ReadonlySet<number> = new Set();
  /** The framebuffer size this viewer believes in (ServerInit's, then each DesktopSize we sent). */
  width = 0;
  height = 0;
  /** An update request is waiting for an answer. */
  requested = false;
  readonly dirty = new DirtyRegion();
  /** A DesktopName rectangle to send with the next update. */
  pendingName: string | undefined;
  /** The name the viewer shows now (from ServerInit or the last DesktopName). */
  shownName = '';
  /** QEMU extended key events: acknowledged to the viewer, and acknowledgement still to send. */
  extKeyAcked = false;
  pendingExtKeyAck = false;
  /** Answer to a SetDesktopSize (we refuse them) still to send. */
  pendingResizeRefusal = false;
  /** Bytes handed to the transport and not yet written to the OS. */
  queuedBytes = 0;
  /** Last time a write completed, or the viewer connected (performance.now()). */
  lastProgress: number;
  readonly connectedAt: number;

  constructor(id: number, transport: ViewerTransport, now: number) {
    this.id = id;
    this.transport = transport;
    this.lastProgress = now;
    this.connectedAt = now;
  }

  get label(): string {
    return `viewer #${this.id} (${this.transport.kind === 'rfb' ? 'RFB' : 'WebSocket'} ${this.transport.remote})`;
  }

  wants(encoding: number): boolean {
    return this.encodings.has(encoding);
  }

  get wantsDesktopSize(): boolean {
    return this.wants(RfbEncoding.DesktopSize) || this.wants(RfbEncoding.ExtendedDesktopSize);
  }

  /** Builds the ServerInit this viewer gets, and remembers what it says. */
  serverInit(width: number, height: number, name: string): ServerInit {
    this.width = width;
    this.height = height;
    this.shownName = name;
    return { width, height, pixelFormat: { ...GATEWAY_PIXEL_FORMAT }, name };
  }
}
