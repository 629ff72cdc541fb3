// The app's own origin, app://snowbird/: the built renderer (dist/ui/) served by a protocol handler
// with a strict Content-Security-Policy on every response. A real origin (unlike file://) lets the
// main process tell the app's page from anything else, confines what the page can load to dist/ui/,
// and carries the CSP as a header, as the agent's HTTP server does for the browser.
import { protocol } from 'electron';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { contentTypeOf } from '../src/shared/app-files.ts';

export const APP_SCHEME = 'app';
export const APP_HOST = 'snowbird';
export const APP_URL = `${APP_SCHEME}://${APP_HOST}/index.html`;

/** Whether a frame URL is the app's own page (a custom scheme has no web origin to compare: Node calls it "null"). */
export function isAppUrl(url: string): boolean {
  const parsed = URL.parse(url);
  return parsed !== null && parsed.protocol === `${APP_SCHEME}:` && parsed.host === APP_HOST;
}

const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  // noVNC draws the guest's cursor as a data: URL.
  "img-src 'self' data: blob:",
  "font-src 'self'",
  // The agent is reached through the preload's bridge, not the network; the display gateways
  // (noVNC's WebSockets) are on loopback ports.
  "connect-src ws://127.0.0.1:*",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

/**
 * Must run before the app is ready: a standard, secure scheme gets an origin, relative URLs and a
 * secure context (what module scripts and noVNC expect of a page).
 */
export function registerAppScheme(): void {
  protocol.registerSchemesAsPrivileged([{ scheme: APP_SCHEME, privileges: { standard: true, secure: true } }]);
}

/** Serves `root` (dist/ui/) at app://snowbird/; anything outside it, or another host, is a 404. */
export function serveApp(root: string): void {
  protocol.handle(APP_SCHEME, async (request) => {
    const url = new URL(request.url);
    if (url.host !== APP_HOST) return respond(404, 'not found');
    if (request.method !== 'GET' && request.method !== 'HEAD') return respond(405, 'only GET and HEAD');
    let path: string;
    try {
      path = url.pathname === '/' ? 'index.html' : decodeURIComponent(url.pathname);
    } catch {
      return respond(400, 'bad path');
    }
    const file = normalize(join(root, path));
    if (!file.startsWith(root + sep) || file.includes('\0')) return respond(404, 'not found');
    let body: Buffer;
    try {
      body = await readFile(file);
    } catch {
      return file === join(root, 'index.html')
        ? respond(503, `the app is not built (no ${file}): run npm run build:ui`)
        : respond(404, 'not found');
    }
    return new Response(request.method === 'HEAD' ? null : new Uint8Array(body), {
      status: 200,
      headers: { ...SECURITY_HEADERS, 'content-type': contentTypeOf(extname(file)) },
    });
  });
}

function respond(status: number, text: string): Response {
  return new Response(`snowbird: ${text}\n`, { status, headers: { ...SECURITY_HEADERS, 'content-type': 'text/plain; charset=utf-8' } });
}
