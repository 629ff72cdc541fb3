// The Electron shell's bridge between its main process and the app's page: what the preload
// (electron/preload.ts) exposes as `window.snowbird`, and the IPC channels behind it. It carries the
// local API contract (./local-api.ts) unchanged, as the browser's WebSocket does. Types and channel
// names only: the main process, the preload and the renderer all import it.
import type { LocalCommand, LocalError, LocalReplies, UiPush } from './local-api.ts';
import type { MigrationProgress } from './migration.ts';

/** The page's connection to the edge agent (in Electron: the main process's connection to it). */
export type ConnectionState = 'connecting' | 'open' | 'closed';

/**
 * A reply as it crosses the bridge: the local API's response envelope, the same as on the wire.
 * A failed command resolves with `ok: false` rather than rejecting, because an Error thrown across
 * contextBridge arrives with its message only and the page needs the code.
 */
export type BridgeResponse<T = unknown> = { id: number; ok: true; result: T } | { id: number; ok: false; error: LocalError };

/** `window.snowbird` in the Electron shell; absent in a plain browser. */
export interface SnowbirdBridge {
  /** One local API command to the edge agent; progress (migrations) arrives through `onProgress`. */
  request<C extends LocalCommand>(command: C, onProgress?: (progress: MigrationProgress) => void): Promise<BridgeResponse<LocalReplies[C['cmd']]>>;
  /**
   * The agent's pushes (status on change, new samples every second). The first listener of either
   * kind starts them: the current connection state, the latest status and the last minutes of
   * samples follow at once. Returns the function that removes the listener.
   */
  onPush(listener: (push: UiPush) => void): () => void;
  /** The connection to the agent: the current state once listening starts, then every change. */
  onConnection(listener: (state: ConnectionState, detail?: string) => void): () => void;
}

/** The IPC channels between electron/main.ts and electron/preload.ts. */
export const BRIDGE_CHANNELS = {
  /** invoke, page → main: `{id, command}`; resolves with a BridgeResponse. */
  request: 'snowbird:request',
  /** send, page → main: start (or stop) pushes and connection events to this page. */
  subscribe: 'snowbird:subscribe',
  unsubscribe: 'snowbird:unsubscribe',
  /** main → page: a UiPush. */
  push: 'snowbird:push',
  /** main → page: (state, detail?). */
  connection: 'snowbird:connection',
} as const;

/** main → page: the progress of request `id`, on its own channel so only its caller listens. */
export function progressChannel(id: number): string {
  return `snowbird:progress:${id}`;
}
