// The app in a browser: the edge agent serves the built renderer (dist/ui/) on loopback, and a
// WebSocket `/api` that speaks the local API's contract (src/shared/local-api.ts) as node-ipc does —
// {id, command} in, {id, ok, result | error} and {id, progress} out — plus pushes: the agent's status
// on every store change (throttled), each VM's new interaction samples every second, and the settings
// when the agent says they changed (`pushConfig`).
//
// Access: a token in the URL the CLI prints (`snowbird open`; kept with the port in the owner-only
// run/ui.json so an open tab survives an agent restart, never logged), required for the page and the
// WebSocket, compared in constant time; the built scripts and styles hold nothing secret and load
// without it. Host and Origin must name this server (a DNS-rebinding page has neither the token nor
// the origin). A strict Content-Security-Policy: scripts and styles from this origin only, connections
// to this server and the loopback display gateways (noVNC), nothing else.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import { parseLocalRequest, type LocalError, type UiPush } from '../shared/local-api.ts';
import type { ConfigReply } from '../shared/config.ts';
import type { InteractionSample } from '../shared/placement.ts';
import { MAX_LOCAL_MESSAGE, type LocalHandler } from './local-api/server.ts';
import { statusOf, type AgentStore } from './store.ts';
import { contentTypeOf } from '../shared/app-files.ts';

/** Where `npm run build:ui` (scripts/build-ui.ts) puts the renderer. */
export const DEFAULT_UI_ROOT = resolve(import.meta.dirname, '..', '..', 'dist', 'ui');

export interface UiServerOptions {
  store: AgentStore;
  /** The agent's local API handler: the same one node-ipc calls. */
  handle: LocalHandler;
  /** A VM's samples taken strictly after `after`, oldest first (the history). */
  samples: (vm: string, after: number) => InteractionSample[];
  log: (line: string) => void;
  /** The settings as the `config` command answers them: pushed to each new client and on `pushConfig`. */
  config?: () => ConfigReply;
  /** The built renderer. Default: dist/ui/ in the repository. */
  root?: string;
  /** Loopback only: the page runs the user's VM. Default 127.0.0.1. */
  host?: string;
  /** The port to listen on when it is free (the last run's), else any free one. Default: any. */
  port?: number;
  /** Default: 32 random bytes, base64url. The agent keeps it across its restarts (readUiIdentity). */
  token?: string;
  /** Status pushes at most this often. Default 250 ms. */
  statusThrottleMs?: number;
  /** Sample pushes this often. Default 1000 ms. */
  samplesEveryMs?: number;
  /** A new connection first gets this much of each VM's past samples. Default 5 min. */
  sampleBackfillMs?: number;
}

/** A client whose unsent bytes exceed this gets no pushes until it catches up (its sample cursors wait). */
const PUSH_HIGH_WATER = 4 * 1024 * 1024;

interface Client {
  ws: WebSocket;
  remote: string;
  /** Per VM: the time of the last sample sent. */
  cursors: Map<string, number>;
  lastStatus: string | undefined;
}

function contentSecurityPolicy(): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    // noVNC draws the guest's cursor as a data: URL.
    "img-src 'self' data: blob:",
    "font-src 'self'",
    // 'self' covers this server's WebSocket (same host and port); the display gateways are other loopback ports.
    "connect-src 'self' ws://127.0.0.1:*",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': contentSecurityPolicy(),
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'x-frame-options': 'DENY',
};

function sameSecret(given: string, expected: string): boolean {
  // Hashing first makes the comparison constant-time in the length too.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

export class UiServer {
  readonly host: string;
  readonly token: string;
  readonly #options: UiServerOptions;
  readonly #root: string;
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  readonly #clients = new Set<Client>();
  readonly #timers: NodeJS.Timeout[] = [];
  #port = 0;
  #statusTimer: NodeJS.Timeout | undefined;
  #lastStatusAt = 0;
  #unsubscribe: (() => void) | undefined;

  private constructor(options: UiServerOptions) {
    this.#options = options;
    this.host = options.host ?? '127.0.0.1';
    this.token = options.token ?? randomBytes(32).toString('base64url');
    this.#root = resolve(options.root ?? DEFAULT_UI_ROOT);
    this.#wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false, maxPayload: MAX_LOCAL_MESSAGE });
    this.#http = createServer((req, res) => void this.#serve(req, res));
    this.#http.on('clientError', (_error, socket) => socket.destroy());
    this.#http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#upgrade(req, socket, head));
  }

  /** Listens on `options.port` when given and free, else on any free port. */
  static async start(options: UiServerOptions): Promise<UiServer> {
    const server = new UiServer(options);
    const listen = (port: number): Promise<number> =>
      new Promise<number>((done, fail) => {
        server.#http.once('error', fail);
        server.#http.listen(port, server.host, () => {
          server.#http.off('error', fail);
          done((server.#http.address() as { port: number }).port);
        });
      });
    server.#port = await listen(options.port ?? 0).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || !options.port) throw error;
      options.log(`ui: port ${options.port} is taken; the app moves to another port (\`snowbird open\` prints it)`);
      return listen(0);
    });
    server.#unsubscribe = options.store.subscribe(() => server.#statusChanged());
    server.#timers.push(setInterval(() => server.#pushSamples(), options.samplesEveryMs ?? 1000).unref());
    return server;
  }

  get port(): number {
    return this.#port;
  }

  /** The page, with the run's token: what `snowbird open` prints and opens. */
  get url(): string {
    return `http://${this.host}:${this.#port}/?token=${encodeURIComponent(this.token)}`;
  }

  async close(): Promise<void> {
    this.#unsubscribe?.();
    for (const timer of this.#timers) clearInterval(timer);
    clearTimeout(this.#statusTimer);
    for (const client of this.#clients) client.ws.terminate();
    this.#clients.clear();
    this.#wss.close();
    this.#http.closeAllConnections();
    await new Promise<void>((done) => this.#http.close(() => done()));
  }

  // ---------------------------------------------------------------------------------------------
  // Access checks.

  /** Why a request is refused (undefined: it may go on). `needsToken`: the page and the API. */
  #problem(req: IncomingMessage, url: URL, needsToken: boolean): string | undefined {
    const hosts = [`${this.host}:${this.#port}`, `localhost:${this.#port}`];
    if (!hosts.includes(req.headers.host ?? '')) return `Host "${req.headers.host ?? ''}" is not this server`;
    const origin = req.headers.origin;
    if (origin !== undefined && !hosts.some((h) => origin === `http://${h}`)) return `Origin "${origin}" is not this server`;
    if (!needsToken) return undefined;
    const given = url.searchParams.get('token');
    if (given === null || given.length === 0) return 'no token in the URL';
    if (!sameSecret(given, this.token)) return 'wrong token';
    return undefined;
  }

  #refuse(what: string, req: IncomingMessage, reason: string): void {
    this.#options.log(`ui: refused ${what} from ${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? 0}: ${reason}`);
  }

  // ---------------------------------------------------------------------------------------------
  // Static files.

  async #serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://ui');
    } catch {
      res.writeHead(400, SECURITY_HEADERS).end();
      return;
    }
    const page = url.pathname === '/' || url.pathname === '/index.html';
    const problem = this.#problem(req, url, page);
    if (problem !== undefined) {
      this.#refuse(`${req.method ?? '?'} ${url.pathname}`, req, problem);
      const status = problem.includes('token') ? 401 : 403;
      res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'text/plain; charset=utf-8' }).end(`snowbird: ${problem}; open the URL that \`snowbird open\` prints\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { ...SECURITY_HEADERS, allow: 'GET, HEAD' }).end();
      return;
    }
    let path: string;
    try {
      path = page ? 'index.html' : decodeURIComponent(url.pathname);
    } catch {
      path = '\0';
    }
    const file = normalize(join(this.#root, path));
    if (!file.startsWith(this.#root + sep) || file.includes('\0')) {
      res.writeHead(404, SECURITY_HEADERS).end();
      return;
    }
    let body: Buffer;
    try {
      body = await readFile(file);
    } catch {
      if (page) {
        res.writeHead(503, { ...SECURITY_HEADERS, 'content-type': 'text/plain; charset=utf-8' }).end(`snowbird: the app is not built (no ${file}): run npm run build:ui\n`);
      } else {
        res.writeHead(404, SECURITY_HEADERS).end();
      }
      return;
    }
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': contentTypeOf(extname(file)),
      'content-length': body.length,
      'cache-control': 'no-store',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  // ---------------------------------------------------------------------------------------------
  // The API WebSocket.

  #upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on('error', () => {});
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://ui');
    } catch {
      socket.destroy();
      return;
    }
    const problem = url.pathname === '/api' ? this.#problem(req, url, true) : `no WebSocket at ${url.pathname}`;
    if (problem !== undefined) {
      this.#refuse('a WebSocket', req, problem);
      const body = `snowbird: ${problem}\n`;
      const status = url.pathname !== '/api' ? '404 Not Found' : problem.includes('token') ? '401 Unauthorized' : '403 Forbidden';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? 0}`));
  }

  #accept(ws: WebSocket, remote: string): void {
    const client: Client = { ws, remote, cursors: new Map(), lastStatus: undefined };
    this.#clients.add(client);
    ws.on('error', () => {});
    ws.on('close', () => this.#clients.delete(client));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return this.#send(client, { id: -1, ok: false, error: { code: 'malformed', message: 'requests are JSON text' } });
      let parsed: unknown;
      try {
        parsed = JSON.parse(data.toString());
      } catch {
        return this.#send(client, { id: -1, ok: false, error: { code: 'malformed', message: 'request is not JSON' } });
      }
      void this.#dispatch(client, parsed);
    });
    // The first status is fresh (the `status` command asks the core where its VMs are); the first samples follow at once.
    void this.#options.handle({ cmd: 'status' }, () => {}).then(
      () => {
        this.#pushStatus(client);
        this.#pushSamplesTo(client);
        this.#pushConfigTo(client);
      },
      (error: unknown) => this.#options.log(`ui: status for a new client: ${(error as Error).message}`),
    );
  }

  async #dispatch(client: Client, data: unknown): Promise<void> {
    const request = parseLocalRequest(data);
    if ('error' in request) return this.#send(client, { id: request.id, ok: false, error: request.error });
    const { id, command } = request;
    try {
      const result = await this.#options.handle(command, (progress) => this.#send(client, { id, progress }));
      this.#send(client, { id, ok: true, result });
    } catch (error) {
      const err = error as Error & { code?: unknown };
      const reply: LocalError = { code: typeof err.code === 'string' ? err.code : err.name, message: err.message };
      this.#send(client, { id, ok: false, error: reply });
    }
  }

  #send(client: Client, message: unknown): void {
    if (client.ws.readyState !== client.ws.OPEN) return;
    client.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  // ---------------------------------------------------------------------------------------------
  // Pushes.

  #statusChanged(): void {
    if (this.#statusTimer !== undefined || this.#clients.size === 0) return;
    const throttle = this.#options.statusThrottleMs ?? 250;
    const wait = Math.max(0, this.#lastStatusAt + throttle - Date.now());
    this.#statusTimer = setTimeout(() => {
      this.#statusTimer = undefined;
      this.#lastStatusAt = Date.now();
      for (const client of this.#clients) this.#pushStatus(client);
    }, wait);
  }

  #pushStatus(client: Client): void {
    const push: UiPush = { push: 'status', status: statusOf(this.#options.store.getState()) };
    const text = JSON.stringify(push);
    if (text === client.lastStatus || client.ws.bufferedAmount > PUSH_HIGH_WATER) return;
    client.lastStatus = text;
    this.#send(client, text);
  }

  /** The settings changed (the file, its validity, the pairing): every client gets them. */
  pushConfig(): void {
    for (const client of this.#clients) this.#pushConfigTo(client);
  }

  #pushConfigTo(client: Client): void {
    if (this.#options.config === undefined) return;
    const push: UiPush = { push: 'config', config: this.#options.config() };
    this.#send(client, push);
  }

  #pushSamples(): void {
    for (const client of this.#clients) this.#pushSamplesTo(client);
  }

  #pushSamplesTo(client: Client): void {
    if (client.ws.bufferedAmount > PUSH_HIGH_WATER) return;
    const now = Date.now();
    for (const vm of Object.keys(this.#options.store.getState().vms)) {
      const after = client.cursors.get(vm) ?? now - (this.#options.sampleBackfillMs ?? 5 * 60_000);
      let samples: InteractionSample[];
      try {
        samples = this.#options.samples(vm, after);
      } catch (error) {
        this.#options.log(`ui: samples of ${vm}: ${(error as Error).message}`);
        continue;
      }
      client.cursors.set(vm, samples.at(-1)?.at ?? after);
      if (samples.length === 0) continue;
      const push: UiPush = { push: 'samples', vm, samples };
      this.#send(client, push);
    }
  }
}

/**
 * The app's port and token, kept across the agent's restarts (`run/ui.json`, owner-only) so that an
 * open tab reconnects by itself; `snowbird open` asks the agent for the URL (never a log line).
 */
export interface UiIdentity {
  port: number;
  token: string;
}

export function uiIdentityPath(dataDir: string): string {
  return join(dataDir, 'run', 'ui.json');
}

export async function readUiIdentity(dataDir: string): Promise<UiIdentity | undefined> {
  try {
    const parsed = JSON.parse(await readFile(uiIdentityPath(dataDir), 'utf8')) as Partial<UiIdentity>;
    return typeof parsed.port === 'number' && typeof parsed.token === 'string' && parsed.token.length >= 32 ? { port: parsed.port, token: parsed.token } : undefined;
  } catch {
    return undefined; // none yet, or unreadable: a new one
  }
}

export async function writeUiIdentity(dataDir: string, identity: UiIdentity): Promise<void> {
  const path = uiIdentityPath(dataDir);
  await writeFile(`${path}.tmp`, JSON.stringify(identity), { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}
