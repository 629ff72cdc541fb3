// The app's end of the local API, over one of two transports with the same contract as the CLI's
// node-ipc client (src/main/local-api/client.ts): {id, command} out; {id, ok, result | error} and
// {id, progress} back; plus the agent's pushes (status, samples).
// - `ApiClient`, in a browser: the edge agent's WebSocket `/api`. Reconnects with back-off; requests
//   in flight when the connection drops fail with code `disconnected`.
// - `BridgeClient`, in the Electron shell: `window.snowbird` (electron/preload.ts), whose main process
//   holds the connection to the agent, reconnects and fails requests in flight the same way.
import { localProgressSchema, localResponseSchema, uiPushSchema, type LocalCommand, type LocalReplies, type UiPush } from '../shared/local-api.ts';
import { migrationProgressSchema, type MigrationProgress } from '../shared/migration.ts';
import type { ConnectionState, SnowbirdBridge } from '../shared/app-bridge.ts';

export type { ConnectionState } from '../shared/app-bridge.ts';

declare global {
  interface Window {
    /** The Electron shell's bridge (electron/preload.ts); undefined in a browser. */
    readonly snowbird?: SnowbirdBridge;
  }
}

export class ApiError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
  }
}

export interface ApiClientEvents {
  push(push: UiPush): void;
  connection(state: ConnectionState, detail?: string): void;
}

/** What the controller needs of a connection to the agent, whichever the transport. */
export interface AgentTransport {
  /** Starts connecting; progress and pushes go to the events the transport was made with. */
  connect(): void;
  request<C extends LocalCommand>(command: C, onProgress?: (p: MigrationProgress) => void): Promise<LocalReplies[C['cmd']]>;
  close(): void;
}

/** Makes the transport, given where its events go (the controller's handlers). */
export type TransportFactory = (events: ApiClientEvents) => AgentTransport;

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  progress?: (p: MigrationProgress) => void;
}

export class ApiClient implements AgentTransport {
  readonly #url: string;
  readonly #events: ApiClientEvents;
  readonly #pending = new Map<number, Pending>();
  #socket: WebSocket | undefined;
  #nextId = 1;
  #backoffMs = 500;
  #closed = false;
  #retry: ReturnType<typeof setTimeout> | undefined;

  constructor(url: string, events: ApiClientEvents) {
    this.#url = url;
    this.#events = events;
  }

  /** The `/api` URL of the page's own origin, with the page's token. */
  static urlFor(location: Location, token: string): string {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/api?token=${encodeURIComponent(token)}`;
  }

  connect(): void {
    if (this.#closed) return;
    this.#events.connection('connecting');
    const socket = new WebSocket(this.#url);
    this.#socket = socket;
    socket.addEventListener('open', () => {
      this.#backoffMs = 500;
      this.#events.connection('open');
    });
    socket.addEventListener('message', (event: MessageEvent<unknown>) => {
      if (typeof event.data === 'string') this.#onMessage(event.data);
    });
    socket.addEventListener('close', (event) => {
      if (this.#socket !== socket) return;
      this.#socket = undefined;
      this.#failAll(new ApiError('disconnected', 'the connection to the agent dropped (did it stop?)'));
      if (this.#closed) return;
      this.#events.connection('closed', event.reason || `the agent closed the connection (code ${event.code}); retrying`);
      this.#retry = setTimeout(() => this.connect(), this.#backoffMs);
      this.#backoffMs = Math.min(this.#backoffMs * 2, 5_000);
    });
  }

  request<C extends LocalCommand>(command: C, onProgress?: (p: MigrationProgress) => void): Promise<LocalReplies[C['cmd']]> {
    const socket = this.#socket;
    if (socket === undefined || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ApiError('disconnected', 'not connected to the agent'));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...(onProgress ? { progress: onProgress } : {}) });
      socket.send(JSON.stringify({ id, command }));
    });
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
    this.#socket?.close();
    this.#failAll(new ApiError('disconnected', 'closed'));
  }

  #onMessage(text: string): void {
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof data === 'object' && data !== null && 'push' in data) {
      const push = uiPushSchema.safeParse(data);
      if (push.success) this.#events.push(push.data);
      return;
    }
    if (typeof data === 'object' && data !== null && 'progress' in data) {
      const progress = localProgressSchema.safeParse(data);
      if (progress.success) this.#pending.get(progress.data.id)?.progress?.(progress.data.progress);
      return;
    }
    const response = localResponseSchema.safeParse(data);
    if (!response.success) return;
    const entry = this.#pending.get(response.data.id);
    if (entry === undefined) return;
    this.#pending.delete(response.data.id);
    if (response.data.ok) entry.resolve(response.data.result);
    else entry.reject(new ApiError(response.data.error.code, response.data.error.message));
  }

  #failAll(error: Error): void {
    for (const entry of this.#pending.values()) entry.reject(error);
    this.#pending.clear();
  }
}

/**
 * The local API through the Electron shell's bridge. The main process validates each command and
 * owns the connection; this end checks what comes back with the same schemas as the WebSocket client.
 */
export class BridgeClient implements AgentTransport {
  readonly #bridge: SnowbirdBridge;
  readonly #events: ApiClientEvents;
  #unsubscribe: (() => void)[] = [];
  #closed = false;

  constructor(bridge: SnowbirdBridge, events: ApiClientEvents) {
    this.#bridge = bridge;
    this.#events = events;
  }

  connect(): void {
    if (this.#closed || this.#unsubscribe.length > 0) return;
    this.#unsubscribe = [
      this.#bridge.onConnection((state, detail) => this.#events.connection(state, detail)),
      this.#bridge.onPush((data) => {
        const push = uiPushSchema.safeParse(data);
        if (push.success) this.#events.push(push.data);
      }),
    ];
  }

  async request<C extends LocalCommand>(command: C, onProgress?: (p: MigrationProgress) => void): Promise<LocalReplies[C['cmd']]> {
    if (this.#closed) throw new ApiError('disconnected', 'closed');
    const forwardProgress = onProgress === undefined ? undefined : (data: unknown): void => {
      const progress = migrationProgressSchema.safeParse(data);
      if (progress.success) onProgress(progress.data);
    };
    const response = localResponseSchema.safeParse(await this.#bridge.request(command, forwardProgress));
    if (!response.success) throw new ApiError('malformed', `the app shell sent an unreadable reply to "${command.cmd}"`);
    if (!response.data.ok) throw new ApiError(response.data.error.code, response.data.error.message);
    return response.data.result as LocalReplies[C['cmd']];
  }

  close(): void {
    this.#closed = true;
    for (const unsubscribe of this.#unsubscribe) unsubscribe();
    this.#unsubscribe = [];
  }
}
