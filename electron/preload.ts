// The preload of the app's window: runs sandboxed, beside the page but in its own JavaScript world
// (contextIsolation), and exposes exactly one object to the page, `window.snowbird` (SnowbirdBridge in
// src/shared/app-bridge.ts). The page never sees ipcRenderer: it can send the local API's commands,
// which the main process validates again, and listen to the agent's pushes, nothing else.
// Sandboxed preloads are CommonJS: scripts/build-electron.ts bundles this file as such.
import { contextBridge, ipcRenderer } from 'electron';
import { BRIDGE_CHANNELS, progressChannel, type ConnectionState, type SnowbirdBridge } from '../src/shared/app-bridge.ts';
import type { LocalCommand, UiPush } from '../src/shared/local-api.ts';
import type { MigrationProgress } from '../src/shared/migration.ts';

type PushListener = (push: UiPush) => void;
type ConnectionListener = (state: ConnectionState, detail?: string) => void;

const pushListeners = new Set<PushListener>();
const connectionListeners = new Set<ConnectionListener>();
let nextRequestId = 1;

ipcRenderer.on(BRIDGE_CHANNELS.push, (_event, push: UiPush) => {
  for (const listener of pushListeners) listener(push);
});
ipcRenderer.on(BRIDGE_CHANNELS.connection, (_event, state: ConnectionState, detail?: string) => {
  for (const listener of connectionListeners) listener(state, detail);
});

const listening = (): boolean => pushListeners.size + connectionListeners.size > 0;

/** Adds a listener; the first one asks the main process for pushes (it answers with the current state at once). */
function listen<L>(listeners: Set<L>, listener: L): () => void {
  const first = !listening();
  listeners.add(listener);
  if (first) ipcRenderer.send(BRIDGE_CHANNELS.subscribe);
  return () => {
    if (!listeners.delete(listener) || listening()) return;
    ipcRenderer.send(BRIDGE_CHANNELS.unsubscribe);
  };
}

async function request(command: LocalCommand, onProgress?: (progress: MigrationProgress) => void): Promise<unknown> {
  const id = nextRequestId++;
  const channel = progressChannel(id);
  const forward = (_event: unknown, progress: MigrationProgress): void => onProgress?.(progress);
  if (onProgress !== undefined) ipcRenderer.on(channel, forward);
  try {
    return await ipcRenderer.invoke(BRIDGE_CHANNELS.request, { id, command });
  } finally {
    ipcRenderer.removeListener(channel, forward);
  }
}

const bridge: SnowbirdBridge = {
  // The main process answers with the response envelope the bridge's type promises.
  request: request as SnowbirdBridge['request'],
  onPush: (listener) => listen(pushListeners, listener),
  onConnection: (listener) => listen(connectionListeners, listener),
};

contextBridge.exposeInMainWorld('snowbird', bridge);
