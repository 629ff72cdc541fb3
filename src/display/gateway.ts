// The display gateway: one RFB session to the VM's VNC server (wherever the VM runs), any number of
// viewers (noVNC over a loopback WebSocket with a per-run token, and any VNC client over a loopback
// TCP port), seamless handoff between VNC servers when the VM migrates, and the activity taps.
//
// Design (src/display/README.md has the long form): the gateway keeps its own copy of the screen.
// It asks the VNC server for one pixel format and Raw/CopyRect only, applies every update to that
// copy, and serves each viewer from it in the viewer's own pixel format, Raw, as fast as that viewer
// reads. A slow viewer's changes pile up as a dirty region (coalesced), never as queued frames, so it
// cannot stall the VM or the other viewers. A handoff opens a session to the destination's server,
// waits for its first full frame, and swaps it in: viewers get the tiles that differ (and a
// DesktopSize when the size changed), never a disconnect.
import { EventEmitter } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import { connect as netConnect, createServer as createNetServer, isIP, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { WebSocketServer } from 'ws';
import type { DisplayActivity, DisplayStatus, DisplayUpstreamState } from '../shared/display.ts';
import {
  RfbEncoding,
  desktopNameRect,
  desktopSizeRect,
  encodeClientMessage,
  encodeServerMessage,
  extendedDesktopSizeRect,
  type RfbClientMessage,
  type RfbRect,
} from './common/rfb.ts';
import { differingTiles, encodeRawUpdate, viewerPixelFormatProblem, type Framebuffer, type Rect } from './common/framebuffer.ts';
import { UpstreamError, UpstreamSession, type UpstreamConnector, type UpstreamHandler, type UpstreamUpdate } from './upstream.ts';
import { tcpTransport, Viewer, webSocketTransport, type ViewerKind, type ViewerTransport } from './viewer.ts';

export type { UpstreamConnector } from './upstream.ts';

export interface GatewayRetryOptions {
  /** First delay after a failed attempt, doubled each time. Default 100 ms. */
  initialMs?: number;
  /** Longest delay between attempts. Default 5000 ms. */
  maxMs?: number;
  /** Failing this long turns `reconnecting` into `unreachable` (retries go on). Default 10000 ms. */
  unreachableAfterMs?: number;
}

export interface DisplayGatewayOptions {
  /** Opens a stream to the VM's VNC server (see `unixSocketConnector`). */
  connect: UpstreamConnector;
  /** What this gateway serves, usually the VM name: in logs and activity records. */
  source?: string;
  /** The desktop name viewers see. Default: the VNC server's (QEMU: the VM name). */
  desktopName?: string;
  /** Listen address: loopback only (viewers get security None). Default 127.0.0.1. */
  host?: string;
  /** Plain RFB port; 0 = any free port, false = none. Default 0. */
  rfbPort?: number | false;
  /** WebSocket port for noVNC; 0 = any free port, false = none. Default 0. */
  webSocketPort?: number | false;
  /** The WebSocket token. Default: 32 random bytes, base64url (one per gateway, i.e. per run). */
  token?: string;
  /** One line per event worth a log (viewers refused, dropped and gone; upstream lost and back). */
  log?: (line: string) => void;
  /** Activity record interval. Default 250 ms. */
  activityIntervalMs?: number;
  /** Viewers at once. Default 16. */
  maxViewers?: number;
  /** A viewer whose unsent bytes would exceed this is dropped. Default 64 MiB. */
  viewerQueueBytes?: number;
  /** A viewer gets its next update only once its unsent bytes are below this. Default 1 MiB. */
  viewerLowWaterBytes?: number;
  /** A viewer with unsent bytes and no write completing for this long is dropped. Default 30000 ms. */
  viewerStallMs?: number;
  /** A viewer must finish its handshake within this. Default 10000 ms. */
  viewerHandshakeMs?: number;
  /** Connect + handshake with the VNC server. Default 10000 ms. */
  upstreamTimeoutMs?: number;
  /** A new session is swapped in at its first full frame, or after this at the latest. Default 3000 ms. */
  firstFrameTimeoutMs?: number;
  retry?: GatewayRetryOptions;
  /** Input held during a switch is replayed only if the switch took less than this. Default 5000 ms. */
  inputHoldMs?: number;
}

export interface ViewerInfo {
  id: number;
  kind: ViewerKind;
  remote: string;
}

export interface ViewerClosed extends ViewerInfo {
  reason: string;
  /** True when the gateway dropped it (malformed bytes, too slow, refused format, …). */
  dropped: boolean;
}

export interface DisplayGatewayEvents {
  status: [status: DisplayStatus];
  activity: [record: DisplayActivity];
  'viewer-connected': [viewer: ViewerInfo];
  'viewer-closed': [viewer: ViewerClosed];
  /** A connection turned away before it became a viewer (bad token, too many viewers). */
  'viewer-refused': [refused: { kind: ViewerKind; remote: string; reason: string }];
  /** A new upstream session is now the one viewers see. */
  switched: [screen: { width: number; height: number; name: string }];
}

/** Connects to a VNC server listening on a unix socket (QEMU's `-vnc unix:PATH`). */
export function unixSocketConnector(path: string): UpstreamConnector {
  return () =>
    new Promise<Duplex>((resolve, reject) => {
      const socket = netConnect(path);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(socket);
      });
    });
}

export class GatewaySwitchError extends Error {
  override readonly name = 'GatewaySwitchError';
}

const MAX_HELD_INPUT = 512;
const MAX_EARLY_BYTES = 64 * 1024;
const ACTIVITY_BACKLOG = 240;
/** Pointer motion is dropped (buttons never are) while this much input waits for the VNC server. */
const POINTER_COALESCE_BACKLOG = 256 * 1024;
/** RFB fence flags: the request bit, and the three behaviour bits a response may echo. */
const FENCE_REQUEST = 0x80000000;
const FENCE_BEHAVIOUR = 0x7;

function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

function listen(server: NetServer | HttpServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: NetServer | HttpServer | undefined): Promise<void> {
  return new Promise((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
}

interface HeldInput {
  message: RfbClientMessage;
  at: number;
}

export class DisplayGateway extends EventEmitter<DisplayGatewayEvents> {
  readonly token: string;
  readonly host: string;
  readonly #options: DisplayGatewayOptions;
  readonly #log: (line: string) => void;
  readonly #viewers = new Map<number, Viewer>();
  #nextViewerId = 1;
  #tcp: NetServer | undefined;
  #http: HttpServer | undefined;
  #wss: WebSocketServer | undefined;
  #rfbPort: number | undefined;
  #webSocketPort: number | undefined;
  #closed = false;
  readonly #timers: NodeJS.Timeout[] = [];

  // Upstream.
  #connector: UpstreamConnector;
  /** Bumped by every switchUpstream; the session of the newest generation is the one wanted. */
  #generation = 0;
  #current: UpstreamSession | undefined;
  #currentGeneration = -1;
  /** The screen viewers are served from: the current session's, or the last one's while none is. */
  #screen: Framebuffer | undefined;
  #serverName = '';
  #status: DisplayStatus = { state: 'reconnecting', reason: 'connecting to the VNC server', since: Date.now(), attempts: 0 };
  #wake: (() => void) | undefined;
  readonly #switchWaiters: { generation: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  /** Input waits here while a switch is under way or no session is up. */
  #held: HeldInput[] = [];
  #heldDropped = 0;
  #switching = false;
  #lastPointerMask = 0;

  // Taps.
  #keyEvents = 0;
  #pointerEvents = 0;
  #fbUpdates = 0;
  #changedPixels = 0;
  #latency: number[] = [];
  #inputAt: number | undefined;
  #intervalStart = performance.now();

  private constructor(options: DisplayGatewayOptions, host: string) {
    super();
    this.#options = options;
    this.#connector = options.connect;
    this.host = host;
    this.token = options.token ?? randomBytes(32).toString('base64url');
    const prefix = `display gateway${options.source === undefined ? '' : ` (${options.source})`}: `;
    const log = options.log ?? (() => {});
    this.#log = (line) => log(prefix + line);
  }

  /** Listens for viewers and starts connecting to the VNC server (see `status` and the events). */
  static async start(options: DisplayGatewayOptions): Promise<DisplayGateway> {
    const host = options.host ?? '127.0.0.1';
    if (!isLoopback(host)) {
      throw new Error(`the display gateway listens on loopback only (its viewers use RFB security None): ${host} is not a loopback address`);
    }
    const gateway = new DisplayGateway(options, host);
    try {
      await gateway.#listen();
    } catch (error) {
      await gateway.close();
      throw error;
    }
    gateway.#startTimers();
    void gateway.#run();
    return gateway;
  }

  /** The plain RFB port, when enabled. */
  get rfbPort(): number | undefined {
    return this.#rfbPort;
  }

  get webSocketPort(): number | undefined {
    return this.#webSocketPort;
  }

  /** The URL noVNC connects to (with the token), when the WebSocket side is enabled. */
  get webSocketUrl(): string | undefined {
    if (this.#webSocketPort === undefined) return undefined;
    const host = this.host.includes(':') ? `[${this.host}]` : this.host;
    return `ws://${host}:${this.#webSocketPort}/vnc?token=${encodeURIComponent(this.token)}`;
  }

  get status(): DisplayStatus {
    return { ...this.#status };
  }

  /** The framebuffer size viewers see (undefined before the first connection). */
  get screenSize(): { width: number; height: number } | undefined {
    return this.#screen === undefined ? undefined : { width: this.#screen.width, height: this.#screen.height };
  }

  viewers(): ViewerInfo[] {
    return [...this.#viewers.values()].map((v) => this.#info(v));
  }

  /** Resolves once a session to the VNC server is up (now, if one is). */
  waitConnected(timeoutMs = 30_000): Promise<void> {
    if (this.#current !== undefined && this.#currentGeneration === this.#generation) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('switched', onSwitched);
        reject(new Error(`display gateway: no VNC session within ${timeoutMs} ms (${this.#status.state}: ${this.#status.reason ?? ''})`));
      }, timeoutMs);
      const onSwitched = (): void => {
        if (this.#currentGeneration !== this.#generation) return;
        clearTimeout(timer);
        this.off('switched', onSwitched);
        resolve();
      };
      this.on('switched', onSwitched);
    });
  }

  /**
   * The handoff: from now on the VNC server is the one `connect` reaches. Opens a session to it,
   * completes its handshake, sets the gateway's pixel format and encodings, asks for a full frame,
   * and swaps it in once that frame is here; viewers stay connected throughout. Input typed
   * meanwhile is held and replayed to the new server. If the server cannot be reached the gateway
   * keeps retrying (status `reconnecting`, then `unreachable`) and viewers keep the last frame.
   * Resolves when the new session is in; rejects if a later switch supersedes it or the gateway closes.
   */
  switchUpstream(connect: UpstreamConnector): Promise<void> {
    if (this.#closed) return Promise.reject(new GatewaySwitchError('the display gateway is closed'));
    const generation = ++this.#generation;
    this.#connector = connect;
    this.#switching = true;
    for (const waiter of this.#switchWaiters.splice(0)) waiter.reject(new GatewaySwitchError('superseded by a later switch'));
    this.#log('switching to a new VNC server');
    const done = new Promise<void>((resolve, reject) => this.#switchWaiters.push({ generation, resolve, reject }));
    this.#wake?.();
    return done;
  }

  /** Activity records as an async iterable (the latest ACTIVITY_BACKLOG are kept for a slow reader). */
  activity(signal?: AbortSignal): AsyncIterable<DisplayActivity> {
    return { [Symbol.asyncIterator]: () => this.#activityRecords(signal) };
  }

  async *#activityRecords(signal: AbortSignal | undefined): AsyncGenerator<DisplayActivity> {
    const queue: DisplayActivity[] = [];
    let notify: (() => void) | undefined;
    const onRecord = (record: DisplayActivity): void => {
      queue.push(record);
      if (queue.length > ACTIVITY_BACKLOG) queue.shift();
      notify?.();
    };
    const stop = (): void => notify?.();
    this.on('activity', onRecord);
    signal?.addEventListener('abort', stop);
    try {
      while (signal?.aborted !== true && !this.#closed) {
        const record = queue.shift();
        if (record !== undefined) {
          yield record;
          continue;
        }
        await new Promise<void>((resolve) => (notify = resolve));
        notify = undefined;
      }
    } finally {
      this.off('activity', onRecord);
      signal?.removeEventListener('abort', stop);
    }
  }

  /** Stops listening, closes every viewer and the upstream session. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const timer of this.#timers) clearInterval(timer);
    for (const waiter of this.#switchWaiters.splice(0)) waiter.reject(new GatewaySwitchError('the display gateway is closed'));
    this.#wake?.();
    this.#current?.close();
    this.#current = undefined;
    for (const viewer of this.#viewers.values()) {
      viewer.phase = 'closed';
      viewer.transport.destroy();
    }
    this.#viewers.clear();
    this.#wss?.close();
    this.#http?.closeAllConnections();
    await Promise.all([closeServer(this.#tcp), closeServer(this.#http)]);
    this.emit('activity', this.#takeActivity()); // wakes iterators so they end
  }

  // ---------------------------------------------------------------------------------------------
  // Listening.

  async #listen(): Promise<void> {
    const { rfbPort = 0, webSocketPort = 0 } = this.#options;
    if (rfbPort !== false) {
      this.#tcp = createNetServer((socket) => this.#accept(tcpTransport(socket)));
      this.#rfbPort = await listen(this.#tcp, rfbPort, this.host);
    }
    if (webSocketPort !== false) {
      const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false, maxPayload: 4 * 1024 * 1024 });
      this.#wss = wss;
      this.#http = createHttpServer((_req, res) => {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('snowbird display gateway: connect with a WebSocket\n');
      });
      this.#http.on('clientError', (_error, socket) => socket.destroy());
      this.#http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
        socket.on('error', () => {});
        const remote = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? 0}`;
        const problem = this.#tokenProblem(req.url ?? '/');
        if (problem !== undefined) {
          this.#refuse('websocket', remote, problem);
          const body = `snowbird display gateway: ${problem}\n`;
          socket.end(`HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
          return;
        }
        wss.handleUpgrade(req, socket, head, (ws) => this.#accept(webSocketTransport(ws, remote)));
      });
      this.#webSocketPort = await listen(this.#http, webSocketPort, this.host);
    }
  }

  /** The token comes as `?token=T` (any path) or as the path `/vnc/T`. */
  #tokenProblem(rawUrl: string): string | undefined {
    let url: URL;
    try {
      url = new URL(rawUrl, 'http://gateway');
    } catch {
      return 'unparsable request URL';
    }
    const segment = /^\/vnc\/([^/]+)$/.exec(url.pathname)?.[1];
    let given = url.searchParams.get('token') ?? undefined;
    if (given === undefined && segment !== undefined) {
      try {
        given = decodeURIComponent(segment);
      } catch {
        return 'unparsable token in the path';
      }
    }
    if (given === undefined || given.length === 0) return 'no token in the URL';
    const a = Buffer.from(given);
    const b = Buffer.from(this.token);
    if (a.length !== b.length || !timingSafeEqual(a, b)) return 'wrong token';
    return undefined;
  }

  #refuse(kind: ViewerKind, remote: string, reason: string): void {
    this.#log(`refused a ${kind === 'rfb' ? 'RFB' : 'WebSocket'} viewer from ${remote}: ${reason}`);
    this.emit('viewer-refused', { kind, remote, reason });
  }

  #startTimers(): void {
    const interval = this.#options.activityIntervalMs ?? 250;
    this.#timers.push(setInterval(() => this.emit('activity', this.#takeActivity()), interval).unref());
    this.#timers.push(setInterval(() => this.#housekeeping(), 500).unref());
  }

  // ---------------------------------------------------------------------------------------------
  // Upstream: the connect loop, priming a new session, promoting it.

  async #run(): Promise<void> {
    const retry = this.#options.retry ?? {};
    const initialMs = retry.initialMs ?? 100;
    const maxMs = retry.maxMs ?? 5000;
    const unreachableAfterMs = retry.unreachableAfterMs ?? 10_000;
    let attempts = 0;
    let failingSince: number | undefined;
    let attemptGeneration = this.#generation;
    while (!this.#closed) {
      if (this.#current !== undefined && this.#currentGeneration === this.#generation) {
        await this.#sleep();
        continue;
      }
      const generation = this.#generation;
      if (generation !== attemptGeneration) {
        // A new switch: a fresh start for the back-off.
        attemptGeneration = generation;
        attempts = 0;
        failingSince = undefined;
      }
      try {
        const session = await UpstreamSession.open(this.#connector, { timeoutMs: this.#options.upstreamTimeoutMs ?? 10_000 });
        if (this.#closed || generation !== this.#generation) {
          session.close();
          continue;
        }
        await this.#prime(session);
        if (this.#closed || generation !== this.#generation) {
          session.close();
          continue;
        }
        this.#promote(session, generation);
        attempts = 0;
        failingSince = undefined;
      } catch (error) {
        if (this.#closed) break;
        if (generation !== this.#generation) continue;
        attempts += 1;
        failingSince ??= Date.now();
        const reason = error instanceof UpstreamError ? error.message : `unexpected: ${(error as Error).message}`;
        const state: DisplayUpstreamState = Date.now() - failingSince >= unreachableAfterMs ? 'unreachable' : 'reconnecting';
        if (attempts === 1 || state !== this.#status.state) this.#log(`VNC server ${state === 'unreachable' ? 'unreachable' : 'not reachable yet'} (attempt ${attempts}): ${reason}`);
        this.#setStatus(state, this.#switching && this.#current !== undefined ? `switching to the new VNC server: ${reason}` : reason, attempts);
        await this.#sleep(Math.min(maxMs, initialMs * 2 ** (attempts - 1)));
      }
    }
  }

  /** Waits for `#wake` (a switch, a lost session, close), or `ms`. */
  #sleep(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => done(), ms);
      const done = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      this.#wake = done;
    });
  }

  /** Starts reading the new session and waits for its first full frame (or the time limit). */
  #prime(session: UpstreamSession): Promise<void> {
    const limit = this.#options.firstFrameTimeoutMs ?? 3000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, limit);
      const full = (): boolean => session.coveredPixels >= session.fb.width * session.fb.height;
      session.start({
        update: () => {
          if (!full()) return;
          clearTimeout(timer);
          resolve();
        },
        extendedKeyEvents: () => {},
        cutText: () => {},
        bell: () => {},
        closed: (reason) => {
          clearTimeout(timer);
          reject(new UpstreamError(reason));
        },
      });
    });
  }

  #promote(session: UpstreamSession, generation: number): void {
    const old = this.#current;
    const previous = this.#screen;
    this.#current = session;
    this.#currentGeneration = generation;
    old?.close();
    this.#screen = session.fb;
    this.#serverName = session.serverInit.name;
    this.#inputAt = undefined;
    const { width, height } = session.fb;
    const changed = previous === undefined ? [{ x: 0, y: 0, width, height }] : differingTiles(previous, session.fb);
    session.start(this.#liveHandler(session));
    this.#switching = false;
    this.#setStatus('connected', `VNC server ${width}x${height} "${session.serverInit.name}"`, 0);
    for (const viewer of this.#viewers.values()) {
      if (viewer.phase === 'awaiting-init') this.#sendServerInit(viewer);
      else if (viewer.phase === 'ready') {
        for (const rect of changed) viewer.dirty.add(rect);
        if (viewer.extKeyAcked || !viewer.wants(RfbEncoding.QemuExtendedKeyEvent)) viewer.pendingExtKeyAck = false;
        else viewer.pendingExtKeyAck = session.extendedKeyEvents;
        this.#flush(viewer);
      }
    }
    this.#replayHeldInput();
    this.#log(`${old === undefined && previous === undefined ? 'connected to' : 'now serving'} the VNC server: ${width}x${height} "${session.serverInit.name}"${previous === undefined ? '' : `, ${changed.length} tiles differ`}`);
    for (const waiter of this.#switchWaiters.splice(0)) {
      if (waiter.generation <= generation) waiter.resolve();
      else this.#switchWaiters.push(waiter);
    }
    this.emit('switched', { width, height, name: session.serverInit.name });
  }

  #liveHandler(session: UpstreamSession): UpstreamHandler {
    return {
      update: (update) => this.#onUpdate(update),
      extendedKeyEvents: () => {
        for (const viewer of this.#readyViewers()) {
          if (viewer.wants(RfbEncoding.QemuExtendedKeyEvent) && !viewer.extKeyAcked) {
            viewer.pendingExtKeyAck = true;
            this.#flush(viewer);
          }
        }
      },
      cutText: (text) => {
        const bytes = encodeServerMessage({ type: 'server-cut-text', text });
        for (const viewer of this.#readyViewers()) this.#send(viewer, bytes);
      },
      bell: () => {
        const bytes = encodeServerMessage({ type: 'bell' });
        for (const viewer of this.#readyViewers()) this.#send(viewer, bytes);
      },
      closed: (reason) => {
        if (this.#current !== session) return;
        this.#current = undefined;
        this.#log(`lost the VNC server: ${reason}; viewers keep the last frame while the gateway reconnects`);
        this.#setStatus('reconnecting', reason, 0);
        this.#wake?.();
      },
    };
  }

  #onUpdate(update: UpstreamUpdate): void {
    const screen = this.#screen;
    if (screen === undefined) return;
    if (update.summary.changedPixels > 0) {
      this.#fbUpdates += 1;
      this.#changedPixels += update.summary.changedPixels;
      if (this.#inputAt !== undefined) {
        if (this.#latency.length < 1024) this.#latency.push(Math.round((performance.now() - this.#inputAt) * 10) / 10);
        this.#inputAt = undefined;
      }
    }
    const rects = update.resized ? [{ x: 0, y: 0, width: screen.width, height: screen.height }] : update.changed;
    if (rects.length === 0) return;
    for (const viewer of this.#readyViewers()) {
      for (const rect of rects) viewer.dirty.add(rect);
      this.#flush(viewer);
    }
  }

  #setStatus(state: DisplayUpstreamState, reason: string, attempts: number): void {
    const previous = this.#status;
    if (previous.state === state && previous.reason === reason && previous.attempts === attempts) return;
    this.#status = { state, reason, since: previous.state === state ? previous.since : Date.now(), attempts };
    this.emit('status', this.status);
    // Viewers that take DesktopName see the state in their title.
    const name = this.#displayName();
    for (const viewer of this.#readyViewers()) {
      if (viewer.wants(RfbEncoding.DesktopName) && viewer.shownName !== name) {
        viewer.pendingName = name;
        this.#flush(viewer);
      }
    }
  }

  /** The desktop name viewers see: the server's (or the configured one), with the state when not connected. */
  #displayName(): string {
    const base = this.#options.desktopName ?? (this.#serverName || this.#options.source || 'snowbird');
    switch (this.#status.state) {
      case 'connected':
        return base;
      case 'reconnecting':
        return `${base} (display reconnecting…)`;
      case 'unreachable':
        return `${base} (display unreachable: ${this.#status.reason ?? 'unknown'})`.slice(0, 1024);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Viewers.

  #info(viewer: Viewer): ViewerInfo {
    return { id: viewer.id, kind: viewer.transport.kind, remote: viewer.transport.remote };
  }

  *#readyViewers(): Generator<Viewer> {
    for (const viewer of this.#viewers.values()) if (viewer.phase === 'ready') yield viewer;
  }

  #accept(transport: ViewerTransport): void {
    const max = this.#options.maxViewers ?? 16;
    if (this.#closed || this.#viewers.size >= max) {
      this.#refuse(transport.kind, transport.remote, this.#closed ? 'the gateway is closing' : `already ${max} viewers`);
      transport.destroy();
      return;
    }
    const viewer = new Viewer(this.#nextViewerId++, transport, performance.now());
    this.#viewers.set(viewer.id, viewer);
    transport.onData((chunk) => this.#onViewerData(viewer, chunk));
    transport.onClose((reason) => this.#viewerGone(viewer, reason));
    this.#log(`${viewer.label} connected`);
    this.emit('viewer-connected', this.#info(viewer));
    this.#handshakeEvents(viewer, viewer.handshake.start());
  }

  #handshakeEvents(viewer: Viewer, events: ReturnType<Viewer['handshake']['feed']>): void {
    for (const event of events) {
      if (viewer.phase === 'closed') return;
      switch (event.kind) {
        case 'send':
          this.#send(viewer, event.bytes);
          break;
        case 'error':
          // The handshake already queued the reason for the viewer where RFB has a place for one.
          this.#drop(viewer, `handshake: ${event.error.message}`, true);
          return;
        case 'client-init':
          viewer.early.push(event.rest.slice());
          if (this.#screen === undefined) {
            viewer.phase = 'awaiting-init';
            this.#log(`${viewer.label} waits for the first connection to the VNC server`);
          } else {
            this.#sendServerInit(viewer);
          }
          return;
        default:
          break;
      }
    }
  }

  #sendServerInit(viewer: Viewer): void {
    const screen = this.#screen;
    if (screen === undefined) return;
    const init = viewer.serverInit(screen.width, screen.height, this.#displayName());
    for (const event of viewer.handshake.sendServerInit(init)) {
      if (event.kind === 'send') this.#send(viewer, event.bytes);
      else if (event.kind === 'error') {
        this.#drop(viewer, `ServerInit: ${event.error.message}`);
        return;
      }
    }
    if (viewer.phase === 'closed') return;
    viewer.phase = 'ready';
    const early = viewer.early;
    viewer.early = [];
    for (const chunk of early) if (chunk.length > 0) this.#onViewerMessages(viewer, chunk);
  }

  #onViewerData(viewer: Viewer, chunk: Uint8Array): void {
    switch (viewer.phase) {
      case 'handshake':
        this.#handshakeEvents(viewer, viewer.handshake.feed(chunk));
        return;
      case 'awaiting-init': {
        viewer.early.push(chunk.slice());
        const held = viewer.early.reduce((n, c) => n + c.length, 0);
        if (held > MAX_EARLY_BYTES) this.#drop(viewer, `sent ${held} bytes before the gateway could answer its ClientInit`);
        return;
      }
      case 'ready':
        this.#onViewerMessages(viewer, chunk);
        return;
      case 'closed':
        return;
    }
  }

  #onViewerMessages(viewer: Viewer, chunk: Uint8Array): void {
    for (const item of viewer.decoder.feed(chunk)) {
      if (viewer.phase !== 'ready') return;
      if (item.kind === 'error') {
        this.#drop(viewer, `malformed RFB from the viewer: ${item.error.message}`);
        return;
      }
      this.#onViewerMessage(viewer, item.message);
    }
  }

  #onViewerMessage(viewer: Viewer, m: RfbClientMessage): void {
    switch (m.type) {
      case 'set-pixel-format': {
        const problem = viewerPixelFormatProblem(m.pixelFormat);
        if (problem !== undefined) {
          this.#drop(viewer, `SetPixelFormat: ${problem}`);
          return;
        }
        viewer.pixelFormat = m.pixelFormat;
        return;
      }
      case 'set-encodings': {
        viewer.encodings = new Set(m.encodings);
        if (viewer.wants(RfbEncoding.QemuExtendedKeyEvent) && !viewer.extKeyAcked && this.#current?.extendedKeyEvents === true) viewer.pendingExtKeyAck = true;
        const name = this.#displayName();
        if (viewer.wants(RfbEncoding.DesktopName) && viewer.shownName !== name) viewer.pendingName = name;
        this.#flush(viewer);
        return;
      }
      case 'framebuffer-update-request':
        viewer.requested = true;
        if (!m.incremental) viewer.dirty.add(m);
        this.#flush(viewer);
        return;
      case 'key-event':
      case 'qemu-extended-key-event':
        this.#keyEvents += 1;
        if (m.down) this.#inputAt ??= performance.now();
        this.#forward(m);
        return;
      case 'pointer-event':
        this.#pointerEvents += 1;
        if (m.buttonMask !== this.#lastPointerMask) this.#inputAt ??= performance.now();
        this.#forward(m);
        return;
      case 'client-cut-text':
        this.#forward(m);
        return;
      case 'client-fence':
        if ((m.flags & FENCE_REQUEST) !== 0) {
          this.#send(viewer, encodeServerMessage({ type: 'server-fence', flags: m.flags & FENCE_BEHAVIOUR, payload: m.payload }));
        }
        return;
      case 'set-desktop-size':
        // The VM's display decides its size; a viewer that asks is told no (status 1: prohibited).
        if (viewer.wants(RfbEncoding.ExtendedDesktopSize)) {
          viewer.pendingResizeRefusal = true;
          this.#flush(viewer);
        }
        return;
      case 'client-cut-text-extended':
      case 'enable-continuous-updates':
      case 'qemu-audio':
      case 'qemu-audio-set-format':
        // Not offered to viewers (no extended clipboard caps, no EndOfContinuousUpdates, no audio
        // acknowledgement), so a viewer has no business sending them: ignored.
        return;
    }
  }

  /** Input for the VNC server: sent now, or held while a switch is under way or no session is up. */
  #forward(m: RfbClientMessage): void {
    const session = this.#current;
    if (session === undefined || this.#switching) {
      if (this.#held.length >= MAX_HELD_INPUT) {
        this.#held.shift();
        this.#heldDropped += 1;
      }
      this.#held.push({ message: m, at: performance.now() });
      return;
    }
    this.#sendInput(session, m);
  }

  #sendInput(session: UpstreamSession, m: RfbClientMessage): void {
    if (m.type === 'pointer-event') {
      // Motion can be dropped when the server is behind (the next event says where the pointer is); buttons cannot.
      if (m.buttonMask === this.#lastPointerMask && session.backlog > POINTER_COALESCE_BACKLOG) return;
      this.#lastPointerMask = m.buttonMask;
    }
    if (m.type === 'qemu-extended-key-event' && !session.extendedKeyEvents) {
      // A server that does not take scancodes (yet, or at all) gets the keysym.
      session.send(encodeClientMessage({ type: 'key-event', down: m.down, keysym: m.keysym }));
      return;
    }
    session.send(encodeClientMessage(m));
  }

  #replayHeldInput(): void {
    const session = this.#current;
    const held = this.#held;
    const dropped = this.#heldDropped;
    this.#held = [];
    this.#heldDropped = 0;
    if (session === undefined || held.length === 0) return;
    const oldest = held[0]?.at ?? performance.now();
    const limit = this.#options.inputHoldMs ?? 5000;
    if (performance.now() - oldest > limit) {
      this.#log(`discarded ${held.length + dropped} input events held for more than ${limit} ms while the VNC server was away`);
      return;
    }
    if (dropped > 0) this.#log(`${dropped} input events were lost while the VNC server was away (more than ${MAX_HELD_INPUT} held)`);
    for (const { message } of held) this.#sendInput(session, message);
  }

  /** Sends the viewer an update if it asked for one, has something to see and is keeping up. */
  #flush(viewer: Viewer): void {
    const screen = this.#screen;
    if (viewer.phase !== 'ready' || !viewer.requested || screen === undefined) return;
    if (viewer.queuedBytes > (this.#options.viewerLowWaterBytes ?? 1024 * 1024)) return;
    const { width, height } = screen;
    const pseudo: RfbRect[] = [];
    if (viewer.width !== width || viewer.height !== height) {
      if (!viewer.wantsDesktopSize) {
        this.#drop(viewer, `the screen is now ${width}x${height} and the viewer does not take DesktopSize`);
        return;
      }
      pseudo.push(
        viewer.wants(RfbEncoding.ExtendedDesktopSize)
          ? extendedDesktopSizeRect({ reason: 0, status: 0, width, height, screens: [{ id: 0, x: 0, y: 0, width, height, flags: 0 }] })
          : desktopSizeRect(width, height),
      );
      viewer.width = width;
      viewer.height = height;
      viewer.dirty.clear();
      viewer.dirty.add({ x: 0, y: 0, width, height });
    }
    if (viewer.pendingResizeRefusal) {
      viewer.pendingResizeRefusal = false;
      pseudo.push(extendedDesktopSizeRect({ reason: 1, status: 1, width, height, screens: [{ id: 0, x: 0, y: 0, width, height, flags: 0 }] }));
    }
    if (viewer.pendingName !== undefined) {
      pseudo.push(desktopNameRect(viewer.pendingName));
      viewer.shownName = viewer.pendingName;
      viewer.pendingName = undefined;
    }
    if (viewer.pendingExtKeyAck) {
      viewer.pendingExtKeyAck = false;
      viewer.extKeyAcked = true;
      pseudo.push({ x: 0, y: 0, width, height, encoding: RfbEncoding.QemuExtendedKeyEvent, data: new Uint8Array(0) });
    }
    const rects: Rect[] = viewer.dirty.take(width, height);
    if (pseudo.length === 0 && rects.length === 0) return;
    viewer.requested = false;
    this.#send(viewer, encodeRawUpdate(screen, pseudo, rects, viewer.pixelFormat));
  }

  #send(viewer: Viewer, bytes: Uint8Array): void {
    if (viewer.phase === 'closed') return;
    const max = this.#options.viewerQueueBytes ?? 64 * 1024 * 1024;
    if (viewer.queuedBytes + bytes.length > max) {
      this.#drop(viewer, `its outbound queue would exceed ${max} bytes (${viewer.queuedBytes} unsent): the viewer is not reading`);
      return;
    }
    if (viewer.queuedBytes === 0) viewer.lastProgress = performance.now();
    viewer.queuedBytes += bytes.length;
    viewer.transport.write(bytes, () => {
      viewer.queuedBytes -= bytes.length;
      viewer.lastProgress = performance.now();
      if (viewer.phase === 'ready') this.#flush(viewer);
    });
  }

  #housekeeping(): void {
    const now = performance.now();
    const stallMs = this.#options.viewerStallMs ?? 30_000;
    const handshakeMs = this.#options.viewerHandshakeMs ?? 10_000;
    for (const viewer of [...this.#viewers.values()]) {
      if (viewer.phase === 'handshake' && now - viewer.connectedAt > handshakeMs) {
        this.#drop(viewer, `no complete handshake within ${handshakeMs} ms`);
      } else if (viewer.queuedBytes > 0 && now - viewer.lastProgress > stallMs) {
        this.#drop(viewer, `stopped reading: ${viewer.queuedBytes} bytes unsent for ${Math.round((now - viewer.lastProgress) / 1000)} s`);
      }
    }
  }

  /** The gateway ends a viewer: logged with the reason. `graceful` lets queued bytes (a refusal reason) go out first. */
  #drop(viewer: Viewer, reason: string, graceful = false): void {
    if (viewer.phase === 'closed') return;
    viewer.phase = 'closed';
    this.#viewers.delete(viewer.id);
    this.#log(`dropped ${viewer.label}: ${reason}`);
    if (graceful) viewer.transport.end();
    else viewer.transport.destroy();
    this.emit('viewer-closed', { ...this.#info(viewer), reason, dropped: true });
  }

  #viewerGone(viewer: Viewer, reason: string): void {
    if (viewer.phase === 'closed') return;
    viewer.phase = 'closed';
    this.#viewers.delete(viewer.id);
    this.#log(`${viewer.label} left: ${reason}`);
    this.emit('viewer-closed', { ...this.#info(viewer), reason, dropped: false });
  }

  // ---------------------------------------------------------------------------------------------
  // Taps.

  #takeActivity(): DisplayActivity {
    const now = performance.now();
    const record: DisplayActivity = {
      at: Date.now(),
      intervalMs: Math.round(now - this.#intervalStart),
      keyEvents: this.#keyEvents,
      pointerEvents: this.#pointerEvents,
      fbUpdates: this.#fbUpdates,
      changedPixels: this.#changedPixels,
      width: this.#screen?.width ?? 0,
      height: this.#screen?.height ?? 0,
      latencyMs: this.#latency,
      viewers: this.#viewers.size,
      upstream: this.#status.state,
    };
    if (this.#options.source !== undefined) record.source = this.#options.source;
    this.#intervalStart = now;
    this.#keyEvents = 0;
    this.#pointerEvents = 0;
    this.#fbUpdates = 0;
    this.#changedPixels = 0;
    this.#latency = [];
    return record;
  }
}
