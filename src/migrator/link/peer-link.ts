// One authenticated control connection between two sites, the same class on both sides: symmetric RPC
// (requests answered by handlers whose params are schema-checked), one-way events, keepalive, and the
// byte streams that belong to the link. Streams are separate TLS connections, always dialed by the
// side that dialed the control connection (the edge): when the listening side (the core) wants one, it
// asks over the control connection and the dialer calls back with a one-time stream id.
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { duplexPair, type Duplex } from 'node:stream';
import { clearInterval, clearTimeout, setInterval, setTimeout } from 'node:timers';
import type { TLSSocket } from 'node:tls';
import type { z } from 'zod';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameTooLargeError, type FrameDecoder } from './common/frames.ts';
import {
  DIAL_METHOD,
  dialParamsSchema,
  ERROR_CODE_PATTERN,
  issuesText,
  NAME_PATTERN,
  RESERVED_METHOD_PREFIX,
  type ErrorBody,
  type LinkMessage,
  type RequestFrame,
  type ResponseFrame,
  type StreamHello,
} from './common/protocol.ts';
import { LinkError, PeerDisconnectedError, PeerProtocolError, PeerRequestError } from './errors.ts';
import { handOverRemainder, refuse, sendFrame } from './handshake.ts';
import { connectUnix, splice } from './streams.ts';
import { randomSecret } from './trust.ts';

export interface PeerInfo {
  name: string;
  /** `sha256:` fingerprint of the site's certificate. */
  fingerprint: string;
}

export interface PeerLinkOptions {
  /** Largest frame accepted or sent on the control connection. Default 1 MiB. */
  maxFrameBytes?: number;
  /** How often a ping is sent. Default 2000. */
  keepaliveIntervalMs?: number;
  /** The link is declared dead when no pong came for this long. Default 8000 (so ≤ 10 s to notice). */
  keepaliveTimeoutMs?: number;
  /** Default timeout of request(). Default 30000. */
  requestTimeoutMs?: number;
  /** How long openStream() waits for the stream connection. Default 15000. */
  streamOpenTimeoutMs?: number;
}

export interface RequestOptions {
  /** Default: the link's requestTimeoutMs; 0 or Infinity = no timeout. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface StreamOptions {
  /**
   * Listener side (core): how long to wait for the dialer's call-back connection (default
   * streamOpenTimeoutMs). The dialer (edge) side is bounded by its client's connectTimeoutMs.
   */
  timeoutMs?: number;
}

export interface HandlerContext {
  link: PeerLink;
  method: string;
  /** Aborted when the link closes. */
  signal: AbortSignal;
}

export type Handler<S extends z.ZodType> = (params: z.output<S>, context: HandlerContext) => unknown;

export interface StreamTargetStats {
  /** Bytes received from the peer for this target. */
  bytesIn: number;
  /** Bytes sent to the peer for this target. */
  bytesOut: number;
  /** Streams opened for this target (by either side), in total. */
  connections: number;
  /** Of those, currently open. */
  active: number;
}

export interface PeerLinkEvents {
  /** A one-way notification from the peer. */
  event: [name: string, payload: unknown];
  /** Once. `error` is undefined only for a local close(). */
  close: [error?: Error];
  /** The peer sent something unusable (malformed frame) or reported an error; the link stays up. */
  protocolError: [error: PeerProtocolError];
}

/** @internal What server.ts and client.ts hand over once a control connection is authenticated. */
export interface PeerLinkInit {
  id: string;
  socket: TLSSocket;
  /** Holds any frames that arrived right after the hello exchange. */
  decoder: FrameDecoder;
  local: PeerInfo;
  peer: PeerInfo;
  /** The dialer (edge) opens every TCP connection; the listener (core) asks it to. */
  role: 'dialer' | 'listener';
  /** The peer's address, for messages. */
  address: string;
  /** Dialer only: opens and authenticates a new stream connection. */
  dialStream?: (stream: StreamHello) => Promise<TLSSocket>;
  options?: PeerLinkOptions;
}

interface PendingRequest {
  method: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  cleanup: () => void;
}

interface AwaitedStream {
  target: string;
  resolve: (socket: TLSSocket) => void;
  reject: (error: Error) => void;
}

/**
 * What serves a stream target: a local unix socket (connected per stream), or a function in this
 * process that takes each stream as a duplex.
 */
type StreamTarget = { kind: 'unix'; path: string } | { kind: 'handler'; handler: StreamHandler };

/** Serves one incoming stream of an exposed target (see PeerLink.exposeHandler). */
export type StreamHandler = (stream: Duplex) => void;

interface HandlerEntry {
  schema: z.ZodType;
  handler: (params: unknown, context: HandlerContext) => unknown;
}

/** Control frames queued beyond this mean the peer stopped reading: the link is closed. */
const MAX_QUEUED_CONTROL_BYTES = 64 * 1024 * 1024;
const CLOSE_LINGER_MS = 2_000;

export class PeerLink {
  /** Same on both sides (chosen by the listener). Stream connections name it. */
  readonly id: string;
  readonly local: PeerInfo;
  readonly peer: PeerInfo;
  readonly role: 'dialer' | 'listener';
  readonly address: string;
  readonly maxFrameBytes: number;
  readonly keepaliveIntervalMs: number;
  readonly keepaliveTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly streamOpenTimeoutMs: number;

  readonly #socket: TLSSocket;
  readonly #decoder: FrameDecoder;
  readonly #dialStream: ((stream: StreamHello) => Promise<TLSSocket>) | undefined;
  readonly #events = new EventEmitter();
  readonly #handlers = new Map<string, HandlerEntry>();
  readonly #builtins = new Map<string, HandlerEntry>();
  readonly #pending = new Map<number, PendingRequest>();
  readonly #targets = new Map<string, StreamTarget>();
  readonly #stats = new Map<string, StreamTargetStats>();
  readonly #streamSockets = new Set<Socket>();
  readonly #awaitedStreams = new Map<string, AwaitedStream>();
  readonly #abort = new AbortController();
  readonly #closedPromise: Promise<Error | undefined>;
  #resolveClosed: (error: Error | undefined) => void = () => {};
  #nextId = 1;
  #pingSeq = 0;
  #lastPongAt = 0;
  #keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  #started = false;
  #closed = false;
  #closeError: Error | undefined;

  /** @internal Links are made by LinkServer and LinkClient. */
  constructor(init: PeerLinkInit) {
    const options = init.options ?? {};
    this.id = init.id;
    this.local = init.local;
    this.peer = init.peer;
    this.role = init.role;
    this.address = init.address;
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.keepaliveIntervalMs = options.keepaliveIntervalMs ?? 2_000;
    this.keepaliveTimeoutMs = options.keepaliveTimeoutMs ?? 8_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.streamOpenTimeoutMs = options.streamOpenTimeoutMs ?? 15_000;
    this.#socket = init.socket;
    this.#decoder = init.decoder;
    this.#decoder.maxFrameBytes = this.maxFrameBytes;
    this.#dialStream = init.dialStream;
    this.#closedPromise = new Promise((resolve) => (this.#resolveClosed = resolve));
    if (this.role === 'dialer') {
      this.#builtins.set(DIAL_METHOD, {
        schema: dialParamsSchema,
        handler: (params) => this.#answerDial(params as z.output<typeof dialParamsSchema>),
      });
    }
  }

  /** @internal Starts reading and the keepalive; called after the owner's setup registered handlers. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    const socket = this.#socket;
    socket.on('data', (chunk: Buffer) => {
      this.#decoder.push(chunk);
      this.#drainFrames();
    });
    socket.on('end', () => this.#fail(new PeerDisconnectedError(`${this.#peerText()} closed the link`)));
    socket.on('error', (error: Error) =>
      this.#fail(new PeerDisconnectedError(`link to ${this.#peerText()} failed: ${error.message}`, undefined, error)),
    );
    socket.on('close', () => this.#fail(new PeerDisconnectedError(`link to ${this.#peerText()} closed`)));
    if (socket.destroyed) {
      this.#fail(new PeerDisconnectedError(`link to ${this.#peerText()} closed`));
      return;
    }
    this.#lastPongAt = Date.now();
    this.#keepaliveTimer = setInterval(() => this.#keepalive(), this.keepaliveIntervalMs);
    this.#keepaliveTimer.unref();
    this.#drainFrames();
    if (!this.#closed) socket.resume();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Resolves when the link has closed, with the reason (undefined after a local close()). */
  whenClosed(): Promise<Error | undefined> {
    return this.#closedPromise;
  }

  on<E extends keyof PeerLinkEvents>(event: E, listener: (...args: PeerLinkEvents[E]) => void): this {
    this.#events.on(event, listener as (...args: unknown[]) => void);
    return this;
  }

  once<E extends keyof PeerLinkEvents>(event: E, listener: (...args: PeerLinkEvents[E]) => void): this {
    this.#events.once(event, listener as (...args: unknown[]) => void);
    return this;
  }

  off<E extends keyof PeerLinkEvents>(event: E, listener: (...args: PeerLinkEvents[E]) => void): this {
    this.#events.off(event, listener as (...args: unknown[]) => void);
    return this;
  }

  // ---------------------------------------------------------------- RPC

  /** Calls `method` at the peer. Rejects with PeerRequestError (the peer's code, or `timeout`), PeerDisconnectedError, or the signal's reason. */
  request<T = unknown>(method: string, params: unknown = {}, options: RequestOptions = {}): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new PeerDisconnectedError(`link to ${this.#peerText()} is closed`, method, this.#closeError));
    }
    if (options.signal?.aborted === true) return Promise.reject(options.signal.reason as Error);
    const id = this.#nextId++;
    let frame: Uint8Array;
    try {
      frame = encodeFrame({ type: 'request', id, method, params }, this.maxFrameBytes);
    } catch (error) {
      const code = error instanceof FrameTooLargeError ? 'too-large' : 'invalid-params';
      return Promise.reject(new PeerRequestError(code, method, `${method}: cannot send params: ${(error as Error).message}`));
    }
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
      const signal = options.signal;
      const timer =
        Number.isFinite(timeoutMs) && timeoutMs > 0
          ? setTimeout(() => {
              cleanup();
              reject(new PeerRequestError('timeout', method, `${method}: no answer from ${this.#peerText()} within ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
      const onAbort = () => {
        cleanup();
        reject(signal?.reason as Error);
      };
      const cleanup = () => {
        this.#pending.delete(id);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pending.set(id, { method, resolve: resolve as (value: unknown) => void, reject, cleanup });
      this.#write(frame);
    });
  }

  /**
   * Answers `method` with `handler`; params are checked with `schema` first (failure → `invalid-params`,
   * the handler does not run). What the handler returns (or resolves to) is the result; what it throws
   * goes back as `{code, message}` (code from the error's `code` if it has one, else `internal`).
   * Returns a function that removes the handler.
   */
  handle<S extends z.ZodType>(method: string, schema: S, handler: Handler<S>): () => void {
    if (method.startsWith(RESERVED_METHOD_PREFIX)) throw new TypeError(`method names starting with "${RESERVED_METHOD_PREFIX}" belong to the link`);
    if (this.#handlers.has(method)) throw new TypeError(`a handler for "${method}" is already registered`);
    const entry: HandlerEntry = { schema, handler: handler as HandlerEntry['handler'] };
    this.#handlers.set(method, entry);
    return () => {
      if (this.#handlers.get(method) === entry) this.#handlers.delete(method);
    };
  }

  /** Sends a one-way notification; false if the link is closed (dropped). Throws FrameTooLargeError. */
  emit(name: string, payload?: unknown): boolean {
    if (this.#closed) return false;
    this.#write(encodeFrame({ type: 'event', name, payload }, this.maxFrameBytes));
    return true;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Orderly close: the control connection is ended, pending requests and open streams fail. */
  async close(): Promise<void> {
    if (!this.#closed) this.#fail(undefined, true);
    await this.#closedPromise;
  }

  /** Immediate teardown with `error` as the reason. */
  destroy(error?: Error): void {
    this.#fail(error ?? new PeerDisconnectedError(`link to ${this.#peerText()} was destroyed`));
  }

  /** Test hook: cuts the control connection and every stream of this link at once, as a network cut would. */
  cut(): void {
    this.#fail(new PeerDisconnectedError(`link to ${this.#peerText()} was cut`));
  }

  // ---------------------------------------------------------------- streams

  /** Lets the peer open streams to `targetId`, served by the unix socket at `unixSocketPath`. Returns an undo function. */
  exposeTarget(targetId: string, unixSocketPath: string): () => void {
    checkTargetName(targetId);
    if (!unixSocketPath.startsWith('/')) throw new TypeError(`stream target "${targetId}": the socket path must be absolute`);
    return this.#expose(targetId, { kind: 'unix', path: unixSocketPath });
  }

  /**
   * Lets the peer open streams to `targetId`, each handed to `handler` as a duplex (bytes from the peer
   * in, bytes to the peer out; counted in streamStats() like any stream) instead of joined to a unix
   * socket. The handler owns the stream: give it an 'error' listener; destroying it closes the peer's
   * end; ending it half-closes. If the handler throws, the stream is destroyed. Returns an undo function.
   */
  exposeHandler(targetId: string, handler: StreamHandler): () => void {
    return this.#expose(targetId, { kind: 'handler', handler });
  }

  #expose(targetId: string, target: StreamTarget): () => void {
    checkTargetName(targetId);
    this.#targets.set(targetId, target);
    return () => {
      if (this.#targets.get(targetId) === target) this.#targets.delete(targetId);
    };
  }

  unexposeTarget(targetId: string): boolean {
    return this.#targets.delete(targetId);
  }

  exposedTargets(): string[] {
    return [...this.#targets.keys()];
  }

  /** Byte counters per target (both directions), since the link was made. */
  streamStats(): Record<string, StreamTargetStats> {
    return Object.fromEntries([...this.#stats].map(([target, s]) => [target, { ...s }]));
  }

  /**
   * A byte stream to the target the peer exposes as `targetId`. Unknown target → PeerRequestError with
   * code `unknown-target`; the peer's socket refusing → `target-unavailable`; link closed →
   * PeerDisconnectedError. `end()` half-closes (the peer's answer still arrives); if the link or the
   * far end fails, the stream is destroyed with an error, so give it an 'error' listener.
   */
  async openStream(targetId: string, options: StreamOptions = {}): Promise<Duplex> {
    const socket = await this.#openStreamSocket(targetId, options);
    const [user, inner] = duplexPair({ allowHalfOpen: true });
    const stats = this.#statsFor(targetId);
    splice(inner, socket, {
      label: `stream to ${this.peer.name}:${targetId}`,
      aToB: (n) => (stats.bytesOut += n),
      bToA: (n) => (stats.bytesIn += n),
      onError: (error) => user.destroy(error),
    });
    return user;
  }

  /** Joins an existing local duplex (e.g. an accepted unix connection) to a new stream to `targetId`. */
  async attachStream(targetId: string, local: Duplex, options: StreamOptions = {}): Promise<void> {
    const socket = await this.#openStreamSocket(targetId, options);
    if (local.destroyed) {
      socket.destroy();
      throw new PeerDisconnectedError(`the local end of stream ${targetId} closed before the stream opened`);
    }
    const stats = this.#statsFor(targetId);
    splice(local, socket, {
      label: `stream to ${this.peer.name}:${targetId}`,
      aToB: (n) => (stats.bytesOut += n),
      bToA: (n) => (stats.bytesIn += n),
    });
  }

  /**
   * @internal LinkServer hands over an authenticated stream connection of this link. Answers its hello
   * (refusing unknown targets and stream ids) and joins it to the target's socket or the waiting
   * openStream().
   */
  async acceptStream(socket: TLSSocket, decoder: FrameDecoder, stream: StreamHello): Promise<void> {
    if ('target' in stream) {
      const target = this.#targets.get(stream.target);
      if (target === undefined) {
        refuse(socket, { code: 'unknown-target', message: `site ${this.local.name} exposes no stream target "${clip(stream.target)}"` });
        return;
      }
      let unix: Socket | undefined;
      if (target.kind === 'unix') {
        try {
          unix = await connectUnix(target.path);
        } catch (error) {
          refuse(socket, { code: 'target-unavailable', message: this.#unavailableText(stream.target, error) });
          return;
        }
      }
      if (this.#closed || socket.destroyed) {
        unix?.destroy();
        socket.destroy();
        return;
      }
      sendFrame(socket, { type: 'response', id: 0, ok: true, result: {} });
      handOverRemainder(socket, decoder);
      if (unix !== undefined) this.#joinStream(stream.target, unix, socket);
      else if (target.kind === 'handler') this.#handStream(stream.target, target.handler, socket);
      return;
    }
    const awaited = this.#awaitedStreams.get(stream.id);
    if (awaited === undefined) {
      refuse(socket, { code: 'unknown-stream', message: `no stream with this id is awaited on link ${this.id} (expired or already used)` });
      return;
    }
    this.#awaitedStreams.delete(stream.id);
    sendFrame(socket, { type: 'response', id: 0, ok: true, result: {} });
    handOverRemainder(socket, decoder);
    awaited.resolve(socket);
  }

  async #openStreamSocket(targetId: string, options: StreamOptions): Promise<TLSSocket> {
    const method = 'openStream';
    if (this.#closed) throw new PeerDisconnectedError(`link to ${this.#peerText()} is closed`, method, this.#closeError);
    if (!NAME_PATTERN.test(targetId)) {
      throw new PeerRequestError('unknown-target', method, `"${clip(targetId)}" is not a valid stream target name`);
    }
    const timeoutMs = options.timeoutMs ?? this.streamOpenTimeoutMs;
    let socket: TLSSocket;
    if (this.#dialStream !== undefined) {
      socket = await this.#dialStream({ link: this.id, target: targetId });
    } else {
      socket = await this.#requestStream(targetId, timeoutMs);
    }
    if (this.#closed) {
      socket.destroy();
      throw new PeerDisconnectedError(`link to ${this.#peerText()} closed while stream ${targetId} was opening`, method, this.#closeError);
    }
    this.#adoptStream(targetId, socket);
    return socket;
  }

  /** Listener side: ask the dialer to call back with a stream connection carrying a one-time id. */
  #requestStream(targetId: string, timeoutMs: number): Promise<TLSSocket> {
    const id = randomSecret(18);
    return new Promise<TLSSocket>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#awaitedStreams.delete(id)) {
          reject(new PeerRequestError('timeout', 'openStream', `stream ${targetId}: ${this.#peerText()} did not call back within ${timeoutMs} ms`));
        }
      }, timeoutMs);
      this.#awaitedStreams.set(id, {
        target: targetId,
        resolve: (socket) => {
          clearTimeout(timer);
          resolve(socket);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.request(DIAL_METHOD, { id, target: targetId }, { timeoutMs }).catch((error: unknown) => {
        const awaited = this.#awaitedStreams.get(id);
        if (awaited === undefined) return;
        this.#awaitedStreams.delete(id);
        awaited.reject(
          error instanceof PeerRequestError ? new PeerRequestError(error.code, 'openStream', error.message) : (error as Error),
        );
      });
    });
  }

  /** Dialer side of the built-in `link.dial`: connect to our target, then call back with the stream id. */
  async #answerDial(params: z.output<typeof dialParamsSchema>): Promise<object> {
    const target = this.#targets.get(params.target);
    if (target === undefined) throw new LinkError('unknown-target', `site ${this.local.name} exposes no stream target "${clip(params.target)}"`);
    let unix: Socket | undefined;
    if (target.kind === 'unix') {
      try {
        unix = await connectUnix(target.path);
      } catch (error) {
        throw new LinkError('target-unavailable', this.#unavailableText(params.target, error));
      }
    }
    let socket: TLSSocket;
    try {
      if (this.#dialStream === undefined) throw new LinkError('internal', 'this side cannot dial');
      socket = await this.#dialStream({ link: this.id, id: params.id });
    } catch (error) {
      unix?.destroy();
      throw error;
    }
    if (this.#closed) {
      unix?.destroy();
      socket.destroy();
      throw new PeerDisconnectedError('link closed');
    }
    this.#adoptStream(params.target, socket);
    if (unix !== undefined) this.#joinStream(params.target, unix, socket);
    else if (target.kind === 'handler') this.#handStream(params.target, target.handler, socket);
    return {};
  }

  /** Tracks a stream connection so that closing the link closes it; counts it. */
  #adoptStream(targetId: string, socket: TLSSocket): void {
    const stats = this.#statsFor(targetId);
    stats.connections += 1;
    stats.active += 1;
    this.#streamSockets.add(socket);
    socket.once('close', () => {
      stats.active -= 1;
      this.#streamSockets.delete(socket);
    });
    socket.setNoDelay(true);
  }

  #joinStream(targetId: string, unix: Socket, socket: TLSSocket): void {
    if (!this.#streamSockets.has(socket)) this.#adoptStream(targetId, socket);
    const stats = this.#statsFor(targetId);
    splice(unix, socket, {
      label: `stream ${targetId} with ${this.peer.name}`,
      aToB: (n) => (stats.bytesOut += n),
      bToA: (n) => (stats.bytesIn += n),
    });
  }

  /** A stream for a handler target: the handler gets one end of a pair whose other end is joined to the socket. */
  #handStream(targetId: string, handler: StreamHandler, socket: TLSSocket): void {
    if (!this.#streamSockets.has(socket)) this.#adoptStream(targetId, socket);
    const stats = this.#statsFor(targetId);
    const [user, inner] = duplexPair({ allowHalfOpen: true });
    splice(inner, socket, {
      label: `stream ${targetId} with ${this.peer.name}`,
      aToB: (n) => (stats.bytesOut += n),
      bToA: (n) => (stats.bytesIn += n),
      onError: (error) => user.destroy(error),
    });
    try {
      handler(user);
    } catch {
      // The handler had no chance to listen for errors: just close, the peer sees its stream end abruptly.
      user.destroy();
    }
  }

  #statsFor(targetId: string): StreamTargetStats {
    let stats = this.#stats.get(targetId);
    if (stats === undefined) {
      stats = { bytesIn: 0, bytesOut: 0, connections: 0, active: 0 };
      this.#stats.set(targetId, stats);
    }
    return stats;
  }

  #unavailableText(targetId: string, error: unknown): string {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    return `stream target "${clip(targetId)}" on site ${this.local.name} does not accept connections (${code}): is the process behind it running?`;
  }

  // ---------------------------------------------------------------- frames in

  #drainFrames(): void {
    while (!this.#closed) {
      const frame = this.#decoder.next();
      if (frame === undefined) return;
      switch (frame.kind) {
        case 'too-large':
          this.#writeQuietly({
            type: 'error',
            error: { code: 'too-large', message: `frame of ${frame.length} bytes exceeds the ${frame.limit}-byte limit; closing the link` },
          });
          this.#fail(new PeerProtocolError('too-large', `${this.#peerText()} sent a frame of ${frame.length} bytes (limit ${frame.limit}); link closed`), true);
          return;
        case 'malformed':
          if (frame.requestId !== undefined) this.#respond(frame.requestId, '?', { error: frame.error });
          else this.#writeQuietly({ type: 'error', error: frame.error });
          this.#events.emit('protocolError', new PeerProtocolError('malformed', `${this.#peerText()} sent a malformed frame: ${frame.error.message}`));
          break;
        case 'message':
          this.#onMessage(frame.message);
          break;
      }
    }
  }

  #onMessage(message: LinkMessage): void {
    switch (message.type) {
      case 'request':
        void this.#onRequest(message);
        return;
      case 'response':
        this.#onResponse(message);
        return;
      case 'event':
        this.#events.emit('event', message.name, message.payload);
        return;
      case 'ping':
        this.#writeQuietly({ type: 'pong', seq: message.seq });
        return;
      case 'pong':
        this.#lastPongAt = Date.now();
        return;
      case 'error':
        this.#events.emit('protocolError', new PeerProtocolError(message.error.code, `${this.#peerText()} reported: ${message.error.message}`));
        return;
      case 'hello': {
        const error = { code: 'malformed', message: 'hello is only valid as the first frame of a connection' };
        this.#writeQuietly({ type: 'error', error });
        this.#events.emit('protocolError', new PeerProtocolError(error.code, `${this.#peerText()} sent a second hello`));
        return;
      }
    }
  }

  #onResponse(message: ResponseFrame): void {
    const pending = this.#pending.get(message.id);
    if (pending === undefined) return; // timed out or aborted here; the answer is moot
    pending.cleanup();
    if (message.ok) pending.resolve(message.result);
    else pending.reject(new PeerRequestError(message.error.code, pending.method, message.error.message));
  }

  async #onRequest(request: RequestFrame): Promise<void> {
    const entry = this.#builtins.get(request.method) ?? this.#handlers.get(request.method);
    if (entry === undefined) {
      this.#respond(request.id, request.method, {
        error: { code: 'unknown-method', message: `site ${this.local.name} has no method "${clip(request.method)}"` },
      });
      return;
    }
    const parsed = entry.schema.safeParse(request.params);
    if (!parsed.success) {
      this.#respond(request.id, request.method, {
        error: { code: 'invalid-params', message: `${clip(request.method)}: invalid params: ${issuesText(parsed.error)}` },
      });
      return;
    }
    try {
      const result = await entry.handler(parsed.data, { link: this, method: request.method, signal: this.#abort.signal });
      this.#respond(request.id, request.method, { result });
    } catch (error) {
      this.#respond(request.id, request.method, { error: errorBody(error) });
    }
  }

  #respond(id: number, method: string, outcome: { result: unknown } | { error: ErrorBody }): void {
    if (this.#closed) return;
    const message: LinkMessage =
      'error' in outcome ? { type: 'response', id, ok: false, error: outcome.error } : { type: 'response', id, ok: true, result: outcome.result };
    let frame: Uint8Array;
    try {
      frame = encodeFrame(message, this.maxFrameBytes);
    } catch (error) {
      const code = error instanceof FrameTooLargeError ? 'too-large' : 'internal';
      frame = encodeFrame({ type: 'response', id, ok: false, error: { code, message: `${clip(method)}: the result cannot be sent: ${(error as Error).message}` } });
    }
    this.#write(frame);
  }

  // ---------------------------------------------------------------- frames out, keepalive, teardown

  #write(frame: Uint8Array): void {
    if (this.#closed) return;
    this.#socket.write(frame);
    if (this.#socket.writableLength > MAX_QUEUED_CONTROL_BYTES) {
      this.#fail(new PeerDisconnectedError(`${this.#peerText()} stopped reading the link (${this.#socket.writableLength} bytes queued)`));
    }
  }

  #writeQuietly(message: LinkMessage): void {
    try {
      this.#write(encodeFrame(message, this.maxFrameBytes));
    } catch {
      // only our own error reports go through here; they are small
    }
  }

  #keepalive(): void {
    const silentMs = Date.now() - this.#lastPongAt;
    if (silentMs > this.keepaliveTimeoutMs) {
      this.#fail(
        new PeerDisconnectedError(
          `no keepalive answer from ${this.#peerText()} for ${silentMs} ms: the peer or the network is down`,
        ),
      );
      return;
    }
    this.#writeQuietly({ type: 'ping', seq: this.#pingSeq++ });
  }

  #fail(error: Error | undefined, flush = false): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = error;
    if (this.#keepaliveTimer !== undefined) clearInterval(this.#keepaliveTimer);
    const socket = this.#socket;
    socket.on('error', () => {});
    if (flush) {
      socket.end();
      setTimeout(() => socket.destroy(), CLOSE_LINGER_MS).unref();
    } else {
      socket.destroy();
    }
    const reason = error ?? new PeerDisconnectedError(`link to ${this.#peerText()} was closed`);
    for (const pending of [...this.#pending.values()]) {
      pending.cleanup();
      pending.reject(new PeerDisconnectedError(`link to ${this.#peerText()} closed before ${pending.method} was answered`, pending.method, reason));
    }
    for (const awaited of this.#awaitedStreams.values()) {
      awaited.reject(new PeerDisconnectedError(`link to ${this.#peerText()} closed before stream ${awaited.target} opened`, 'openStream', reason));
    }
    this.#awaitedStreams.clear();
    for (const stream of this.#streamSockets) {
      stream.destroy(new PeerDisconnectedError(`stream closed with its link: ${reason.message}`, undefined, reason));
    }
    this.#abort.abort(reason);
    this.#events.emit('close', error);
    this.#resolveClosed(error);
  }

  #peerText(): string {
    return `${this.peer.name} (${this.address})`;
  }
}

function errorBody(error: unknown): ErrorBody {
  const code = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  return {
    code: typeof code === 'string' && ERROR_CODE_PATTERN.test(code) ? code : 'internal',
    message: message.length > 8000 ? `${message.slice(0, 8000)}…` : message,
  };
}

function checkTargetName(targetId: string): void {
  if (!NAME_PATTERN.test(targetId)) {
    throw new TypeError(`stream target "${targetId.slice(0, 80)}" must be 1-128 letters, digits, ".", "_", ":" or "-" (no leading dot)`);
  }
}

function clip(text: string): string {
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}
