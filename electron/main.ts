// The Electron shell's main process and its one composition root: one window showing the app (the
// same renderer a browser gets, from dist/ui/ at app://snowbird/), a tray icon that says where the
// VM is, notifications when a VM changes site, and the connection to the edge agent (started here
// if none runs). The page reaches the agent only through the preload's bridge: each request is
// checked here (the sender must be the app's own page in its window, the command must parse) before
// it goes to the agent over the local API, as the CLI's would.
//
// Run: npm run build:ui && npm run build:electron && npx electron dist/electron/main.js [--data DIR]
import { BrowserWindow, app, ipcMain, session, type IpcMainEvent, type IpcMainInvokeEvent } from 'electron';
import { join, resolve } from 'node:path';
import { parseLocalRequest } from '../src/shared/local-api.ts';
import { BRIDGE_CHANNELS, progressChannel, type BridgeResponse } from '../src/shared/app-bridge.ts';
import { AgentConnection, dataDirFrom } from './agent-connection.ts';
import { APP_URL, isAppUrl, registerAppScheme, serveApp } from './app-protocol.ts';
import { LocationTray } from './tray.ts';

/** This file runs as dist/electron/main.js (scripts/build-electron.ts), two levels below the repository. */
const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
const UI_ROOT = join(REPO_ROOT, 'dist', 'ui');
const PRELOAD = join(import.meta.dirname, 'preload.cjs');
const CLI = join(REPO_ROOT, 'bin', 'snowbird');

const log = (line: string): void => void process.stderr.write(`snowbird app: ${line}\n`);

// Before the app is ready: the app's scheme privileged. (Not app.enableSandbox(): it also drops
// --no-sandbox, so the shell would not start where Chromium's OS sandbox cannot be set up; the
// window asks for `sandbox: true` itself.)
app.setName('snowbird');
registerAppScheme();

let window: BrowserWindow | undefined;
/** Whether the page asked for pushes (its bridge has listeners). */
let pageListening = false;
let tray: LocationTray | undefined;

function sendToPage(channel: string, ...args: unknown[]): void {
  if (!pageListening || window === undefined || window.isDestroyed()) return;
  window.webContents.send(channel, ...args);
}

const agent = new AgentConnection({
  dataDir: dataDirFrom(process.argv.slice(1), process.env),
  cli: CLI,
  log,
  onConnection: (state, detail) => {
    tray?.connection(state === 'open', detail);
    sendToPage(BRIDGE_CHANNELS.connection, state, detail);
  },
  onPush: (push) => {
    if (push.push === 'status') tray?.status(push.status);
    sendToPage(BRIDGE_CHANNELS.push, push);
  },
});

/** Only the app's own page, top frame, in the app's window may use the agent: no other frame, page or origin. */
function fromAppPage(event: IpcMainEvent | IpcMainInvokeEvent): boolean {
  const frame = event.senderFrame;
  return window !== undefined && !window.isDestroyed() && event.sender === window.webContents && frame !== null && frame.parent === null && isAppUrl(frame.url);
}

ipcMain.handle(BRIDGE_CHANNELS.request, async (event, data: unknown): Promise<BridgeResponse> => {
  if (!fromAppPage(event)) {
    log(`refused a request from ${event.senderFrame?.url ?? 'a frame that is gone'}: not the app's page`);
    return { id: -1, ok: false, error: { code: 'forbidden', message: 'only the app\'s own page may use the agent' } };
  }
  // The command union again, as on every other transport: the page is not trusted to have checked.
  const request = parseLocalRequest(data);
  if ('error' in request) return { id: request.id, ok: false, error: request.error };
  const { id, command } = request;
  const sender = event.sender;
  try {
    const result = await agent.request(command, (progress) => {
      if (!sender.isDestroyed()) sender.send(progressChannel(id), progress);
    });
    return { id, ok: true, result };
  } catch (error) {
    const err = error as Error & { code?: unknown };
    return { id, ok: false, error: { code: typeof err.code === 'string' ? err.code : err.name, message: err.message } };
  }
});

ipcMain.on(BRIDGE_CHANNELS.subscribe, (event) => {
  if (!fromAppPage(event)) return;
  pageListening = true;
  // What a page that just started listening needs at once: as the WebSocket gives a new client.
  const { state, detail } = agent.connection;
  sendToPage(BRIDGE_CHANNELS.connection, state, detail);
  if (state === 'open' && agent.status !== undefined) sendToPage(BRIDGE_CHANNELS.push, { push: 'status', status: agent.status });
  agent.resendSamples();
});

ipcMain.on(BRIDGE_CHANNELS.unsubscribe, (event) => {
  if (fromAppPage(event)) pageListening = false;
});

// No page of this shell navigates, opens windows or embeds webviews: the app is one page.
app.on('web-contents-created', (_event, contents) => {
  contents.on('will-navigate', (event) => event.preventDefault());
  contents.on('will-attach-webview', (event) => event.preventDefault());
  contents.setWindowOpenHandler(() => ({ action: 'deny' }));
});

function openWindow(): BrowserWindow {
  const opened = new BrowserWindow({
    width: 1400,
    height: 1000,
    title: 'snowbird',
    webPreferences: {
      preload: PRELOAD,
      // The page gets no Node, runs in Chromium's sandbox, and sees the preload only through contextBridge.
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      webSecurity: true,
      webviewTag: false,
    },
  });
  opened.on('closed', () => {
    if (window === opened) {
      window = undefined;
      pageListening = false;
    }
  });
  opened.loadURL(APP_URL).catch((error: unknown) => log(`loading ${APP_URL}: ${(error as Error).message}`));
  return opened;
}

function showWindow(): void {
  if (window === undefined || window.isDestroyed()) {
    window = openWindow();
    return;
  }
  window.show();
  window.focus();
}

app.on('window-all-closed', () => app.quit());
// macOS: a click on the dock icon with no window open.
app.on('activate', () => showWindow());
// The agent keeps running (it hosts the VMs); only this shell's connection to it ends.
app.on('before-quit', () => {
  agent.stop();
  tray?.destroy();
});

/**
 * The one permission the app's page gets: reaching loopback, where the display gateways are (newer
 * Chromium asks for it before a page of another origin opens a loopback WebSocket). The CSP still
 * limits connections to ws://127.0.0.1. Everything else (camera, notifications, clipboard…) is denied.
 */
const LOOPBACK_PERMISSIONS: ReadonlySet<string> = new Set(['loopback-network', 'local-network-access']);
const permitted = (permission: string, requestingUrl: string | undefined): boolean =>
  LOOPBACK_PERMISSIONS.has(permission) && requestingUrl !== undefined && isAppUrl(requestingUrl);

void app.whenReady().then(() => {
  session.defaultSession.setPermissionRequestHandler((_contents, permission, callback, details) => {
    const granted = permitted(permission, details.requestingUrl);
    if (!granted) log(`denied the page the permission "${permission}"`);
    callback(granted);
  });
  session.defaultSession.setPermissionCheckHandler((_contents, permission, requestingOrigin) => permitted(permission, requestingOrigin));
  serveApp(UI_ROOT);
  try {
    tray = new LocationTray(showWindow);
  } catch (error) {
    log(`no tray icon (this desktop may have no system tray): ${(error as Error).message}`);
  }
  showWindow();
  agent.start();
});
