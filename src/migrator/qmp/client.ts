// QMP client over a unix socket: negotiation, id-matched replies, per-call timeouts, and event fan-out.
// Framing and message classification live in ./common (pure); this file owns the socket and the timers.

import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { clearTimeout, setTimeout } from 'node:timers';
import { AsyncQueue } from './common/async-queue.ts';
import { QmpDecoder } from './common/framing.ts';
import { encodeQmpCommand, type QmpEvent, type QmpGreeting, type QmpInbound } from './common/messages.ts';
import {
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpEventOverflowError,
  QmpProtocolError,
  QmpTimeoutError,
} from './errors.ts';
import type { ArgsFor, QmpCallOptions, QmpCommandName, QmpCommands } from './common/types.ts';

export interface QmpConnectOptions {
  /** Connect + greeting + qmp_capabilities, once the socket exists. Default 5000. */
  timeoutMs?: number;
  /** Capabilities to enable (e.g. ['oob']); those the server does not offer are left out. */
  capabilities?: string[];
  /**
   * Keep retrying while the socket is missing (ENOENT) or refuses (ECONNREFUSED) until this many ms after
   * connect() was called: QEMU creates its socket a moment after spawn. Default 0 (fail at once).
   */
  retryUntilMs?: number;
}

export interface WaitForEventOptions {
  /** Default 30000. */
  timeoutMs?: number;
  predicate?: (event: QmpEvent) => boolean;
  signal?: AbortSignal;
}

export interface QmpClientEvents {
  event: [event: QmpEvent];
  /** `error` is set when the socket failed, undefined for an orderly close (ours or QEMU's). */
  close: [error?: Error];
  /** Something the server sent could not be used; the connection stays up. */
  protocolError: [error: QmpProtocolError];
}

const DEFAULT_CALL_TIMEOUT_MS = 30_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** Per events() subscriber; QEMU emits a few events per second at most, so this is minutes of backlog. */
const EVENT_QUEUE_LIMIT = 10_000;
const RETRY_FIRST_DELAY_MS = 20;
const RETRY_MAX_DELAY_MS = 250;

interface PendingCall {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** An events() subscription or a waitForEvent() call. */
interface Watcher {
  onEvent(event: QmpEvent): void;
  onClose(): void;
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  readonly greeting: QmpGreeting;
  readonly #socket: Socket;
  readonly #decoder: QmpDecoder;
  readonly #pending = new Map<number, PendingCall>();
  /** The `oob` capability is on: `exec-oob` commands may be sent. */
  #oob = false;
  /** Ids whose caller gave up; their replies are dropped quietly rather than reported as unknown. */
  readonly #timedOut = new Set<number>();
  readonly #watchers = new Set<Watcher>();
  #nextId = 1;
  #closed = false;
  readonly #closedPromise: Promise<void>;

  private constructor(socket: Socket, decoder: QmpDecoder, greeting: QmpGreeting) {
    super();
    this.#socket = socket;
    this.#decoder = decoder;
    this.greeting = greeting;
    const closed = Promise.withResolvers<undefined>();
    this.#closedPromise = closed.promise;
    let socketError: Error | undefined;
    socket.on('data', (chunk: Buffer) => {
      for (const message of this.#decoder.push(chunk)) {
        // An 'event' listener may have closed us; the rest of the chunk is moot.
        if (this.#closed) return;
        this.#dispatch(message);
      }
    });
    socket.on('error', (err) => {
      socketError = err;
    });
    socket.on('close', () => {
      this.#shutDown(socketError);
      closed.resolve(undefined);
    });
    // readGreeting paused the socket so nothing was lost between its listener and ours.
    socket.resume();
  }

  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const retryDeadline = performance.now() + (opts.retryUntilMs ?? 0);
    const { socket, deadline } = await openSocket(socketPath, timeoutMs, retryDeadline);
    const remainingMs = (): number => Math.max(1, deadline - performance.now());
    const decoder = new QmpDecoder();
    let client: QmpClient;
    try {
      client = new QmpClient(socket, decoder, await readGreeting(socket, socketPath, decoder, remainingMs()));
    } catch (err) {
      socket.destroy();
      throw err;
    }
    const enable = (opts.capabilities ?? []).filter((c) => client.greeting.capabilities.includes(c));
    try {
      await client.execute('qmp_capabilities', enable.length > 0 ? { enable } : undefined, { timeoutMs: remainingMs() });
      client.#oob = enable.includes('oob');
    } catch (err) {
      await client.close();
      throw new QmpConnectError(socketPath, `QMP capabilities negotiation on ${socketPath} failed: ${(err as Error).message}`, err);
    }
    return client;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether out-of-band commands (`{ oob: true }`) can be sent on this connection. */
  get oob(): boolean {
    return this.#oob;
  }

  execute<K extends QmpCommandName>(command: K, ...args: ArgsFor<K>): Promise<QmpCommands[K]['ret']> {
    const [commandArgs, opts] = args as [Record<string, unknown> | undefined, QmpCallOptions | undefined];
    return this.executeRaw(command, commandArgs, opts) as Promise<QmpCommands[K]['ret']>;
  }

  /** Any command, untyped. Rejects with QmpError, QmpTimeoutError or QmpDisconnectedError. */
  executeRaw(command: string, args?: Record<string, unknown>, opts: QmpCallOptions = {}): Promise<unknown> {
    if (this.#closed) {
      return Promise.reject(new QmpDisconnectedError(`QMP connection is closed; cannot run ${command}`, command));
    }
    const id = this.#nextId++;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    const call: PendingCall = { command, resolve, reject, timer: undefined };
    // Infinity would overflow setTimeout into an immediate timeout.
    if (timeoutMs !== Infinity) {
      call.timer = setTimeout(() => {
        this.#pending.delete(id);
        this.#timedOut.add(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
    }
    this.#pending.set(id, call);
    if (opts.oob && !this.#oob) {
      clearTimeout(call.timer);
      this.#pending.delete(id);
      return Promise.reject(new QmpProtocolError(`${command} out of band needs the QMP 'oob' capability, which this connection did not enable (QEMU did not offer it)`));
    }
    this.#socket.write(encodeQmpCommand(id, command, args, opts.oob));
    return promise;
  }

  /**
   * Events from now on, optionally only those named. Each call is an independent subscription; it ends
   * (done) when the client closes, and `break` unsubscribes. A consumer more than EVENT_QUEUE_LIMIT events
   * behind gets QmpEventOverflowError after draining what was queued.
   */
  events(filter?: string | string[]): AsyncIterableIterator<QmpEvent> {
    const names = filter === undefined ? undefined : new Set(typeof filter === 'string' ? [filter] : filter);
    const watcher: Watcher = {
      onEvent: (event) => {
        if (!names || names.has(event.event)) queue.push(event);
      },
      onClose: () => queue.end(),
    };
    const queue = new AsyncQueue<QmpEvent>({
      limit: EVENT_QUEUE_LIMIT,
      overflowError: (limit) => new QmpEventOverflowError(limit),
      onDone: () => this.#watchers.delete(watcher),
    });
    if (this.#closed) queue.end();
    else this.#watchers.add(watcher);
    return queue;
  }

  /**
   * The next event named `name` (and matching `predicate`) from now on. Call it before the command that
   * causes the event: QEMU sends e.g. RESUME before cont's reply. Rejects with QmpTimeoutError,
   * QmpDisconnectedError, the signal's reason, or whatever `predicate` throws.
   */
  waitForEvent(name: string, opts: WaitForEventOptions = {}): Promise<QmpEvent> {
    const { timeoutMs = DEFAULT_CALL_TIMEOUT_MS, predicate, signal } = opts;
    if (this.#closed) {
      return Promise.reject(new QmpDisconnectedError(`QMP connection is closed; cannot wait for event ${name}`));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = Promise.withResolvers<QmpEvent>();
    const settle = (outcome: () => void): void => {
      clearTimeout(timer);
      this.#watchers.delete(watcher);
      signal?.removeEventListener('abort', onAbort);
      outcome();
    };
    const watcher: Watcher = {
      onEvent: (event) => {
        if (event.event !== name) return;
        try {
          if (predicate && !predicate(event)) return;
        } catch (err) {
          settle(() => reject(err));
          return;
        }
        settle(() => resolve(event));
      },
      onClose: () =>
        settle(() => reject(new QmpDisconnectedError(`QMP connection closed while waiting for event ${name}`))),
    };
    const onAbort = (): void => settle(() => reject(signal?.reason));
    const timer = setTimeout(() => settle(() => reject(new QmpTimeoutError(`event ${name}`, timeoutMs))), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#watchers.add(watcher);
    return promise;
  }

  /** Rejects pending calls with QmpDisconnectedError and drops the socket. Idempotent. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#shutDown(undefined);
      this.#socket.destroy();
    }
    return this.#closedPromise;
  }

  #dispatch(message: QmpInbound): void {
    switch (message.type) {
      case 'event':
        for (const watcher of [...this.#watchers]) watcher.onEvent(message.event);
        this.emit('event', message.event);
        return;
      case 'return':
      case 'error':
        this.#settleReply(message);
        return;
      case 'greeting':
        this.#protocolError('unexpected second QMP greeting');
        return;
      case 'invalid':
        this.#protocolError(message.reason);
        return;
    }
  }

  #settleReply(reply: Extract<QmpInbound, { type: 'return' | 'error' }>): void {
    const { id } = reply;
    if (typeof id === 'number' && this.#timedOut.delete(id)) return;
    const call = typeof id === 'number' ? this.#pending.get(id) : undefined;
    if (typeof id !== 'number' || !call) {
      const what = reply.type === 'error' ? `error reply (${reply.errorClass}: ${reply.desc})` : 'reply';
      this.#protocolError(id === undefined ? `${what} without an id` : `${what} with unknown id ${JSON.stringify(id)}`);
      return;
    }
    this.#pending.delete(id);
    clearTimeout(call.timer);
    if (reply.type === 'return') call.resolve(reply.value);
    else call.reject(new QmpError(call.command, reply.errorClass, reply.desc));
  }

  #protocolError(reason: string): void {
    const error = new QmpProtocolError(reason);
    // Never throw from the socket's data handler; make sure it is seen somewhere.
    if (this.listenerCount('protocolError') > 0) this.emit('protocolError', error);
    else process.emitWarning(error);
  }

  /** Runs once, on close() or when the socket closes under us. */
  #shutDown(socketError: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    const calls = [...this.#pending.values()];
    this.#pending.clear();
    this.#timedOut.clear();
    for (const call of calls) {
      clearTimeout(call.timer);
      call.reject(
        new QmpDisconnectedError(`QMP connection closed while ${call.command} was pending`, call.command, socketError),
      );
    }
    for (const watcher of [...this.#watchers]) watcher.onClose();
    this.#watchers.clear();
    this.emit('close', socketError);
  }
}

/**
 * Connects, retrying ENOENT/ECONNREFUSED until retryDeadline (a performance.now() value). The returned
 * deadline ends the timeoutMs budget that started with the successful attempt.
 */
async function openSocket(
  socketPath: string,
  timeoutMs: number,
  retryDeadline: number,
): Promise<{ socket: Socket; deadline: number }> {
  for (let delay = RETRY_FIRST_DELAY_MS; ; delay = Math.min(delay * 2, RETRY_MAX_DELAY_MS)) {
    const deadline = performance.now() + timeoutMs;
    try {
      return { socket: await connectOnce(socketPath, timeoutMs), deadline };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const retryable = code === 'ENOENT' || code === 'ECONNREFUSED';
      const left = retryDeadline - performance.now();
      if (!retryable || left <= 0) {
        throw new QmpConnectError(socketPath, connectFailureMessage(socketPath, code, err), err);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)));
    }
  }
}

function connectOnce(socketPath: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path: socketPath });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect did not complete within ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

function connectFailureMessage(socketPath: string, code: string | undefined, err: unknown): string {
  switch (code) {
    case 'ENOENT':
      return `QMP socket ${socketPath} does not exist: is QEMU running with -qmp unix:${socketPath},server=on,wait=off? If it was just spawned, pass retryUntilMs.`;
    case 'ECONNREFUSED':
      return `Nothing is listening on QMP socket ${socketPath}: QEMU has exited and left a stale socket, or is not listening yet (pass retryUntilMs).`;
    case 'EACCES':
      return `No permission to open QMP socket ${socketPath}: run as the user that started QEMU.`;
    default:
      return `Could not connect to QMP socket ${socketPath}: ${(err as Error).message}`;
  }
}

/** Waits for the server's first line, which must be the greeting. */
function readGreeting(socket: Socket, socketPath: string, decoder: QmpDecoder, timeoutMs: number): Promise<QmpGreeting> {
  return new Promise((resolve, reject) => {
    const fail = (message: string, cause: unknown): void => {
      cleanup();
      reject(new QmpConnectError(socketPath, message, cause));
    };
    const onData = (chunk: Buffer): void => {
      const [first, ...rest] = decoder.push(chunk);
      if (!first) return;
      if (first.type !== 'greeting') {
        const reason = first.type === 'invalid' ? first.reason : `a ${first.type} message`;
        fail(`${socketPath} did not start with a QMP greeting (got ${reason}): is it a QMP socket (-qmp, not -monitor)?`, first);
      } else if (rest.length > 0) {
        // The server stays silent until negotiation; anything more is not QMP as we know it.
        fail(`QMP server on ${socketPath} sent messages before capabilities negotiation`, rest);
      } else {
        cleanup();
        socket.pause();
        resolve(first.greeting);
      }
    };
    const onError = (err: Error): void => fail(`QMP socket ${socketPath} failed before the greeting: ${err.message}`, err);
    const onClose = (): void =>
      fail(`QEMU closed ${socketPath} before sending the QMP greeting: is QEMU shutting down?`, undefined);
    const timer = setTimeout(
      () =>
        fail(
          `No QMP greeting on ${socketPath} within ${timeoutMs} ms: QEMU serves one QMP client per socket, so another client is probably connected (or QEMU is stuck).`,
          undefined,
        ),
      timeoutMs,
    );
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}
