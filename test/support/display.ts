// Fixtures for the display gateway's integration tests: a booted demo VM with its VNC socket, an
// RFB viewer of our own (built on the codec, decoding Raw into RGBA), a PNG reader (to check what a
// third-party client captured), and noVNC in Debian's Chromium through playwright-core. Everything
// started here has a close/dispose that tests call from `after` hooks.
import { createServer, type Server } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { inflateSync } from 'node:zlib';
import { chromium, type Browser, type Page } from 'playwright-core';
import { REPO_ROOT, type TestSite } from './fixtures.ts';
import { VmHandle } from '../../src/migrator/qemu/vm.ts';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import type { VmPaths, VmSpec } from '../../src/migrator/qemu/common/spec.ts';
import {
  QEMU_DEFAULT_PIXEL_FORMAT,
  RfbClientHandshake,
  RfbEncoding,
  RfbServerMessageDecoder,
  encodeClientMessage,
  pixelsToRgba,
  type PixelFormat,
  type RfbClientMessage,
  type ServerInit,
} from '../../src/display/common/rfb.ts';

export async function waitUntil(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 20_000, everyMs = 100): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Small VMs: the machines have two cores, shared with other QEMU tests. */
export const SMALL_VM = { memoryMiB: 128, memWorkloadMiB: 8, diskWorkloadBlocks: 256 } as const;

/** A running demo VM at one site, its guest ready (its shell on the VGA console is up). */
export interface DisplayVm {
  site: TestSite;
  spec: VmSpec;
  paths: VmPaths;
  vm: VmHandle;
}

export async function bootDisplayVm(site: TestSite, name: string): Promise<DisplayVm> {
  await site.createDemoVm(name, SMALL_VM);
  const spec = await site.library.load(name);
  const paths = site.library.paths(name);
  const vm = await VmHandle.start(spec, paths, { accel: 'tcg' });
  const channel = await GuestChannel.connect(name, paths.control, { retryUntilMs: 10_000 });
  try {
    await channel.waitFor((r) => r.type === 'ready', { timeoutMs: 90_000, what: 'the guest ready report' });
  } finally {
    channel.close();
  }
  // `ready` comes from sbctl, started just before the shell on tty1: give the shell a moment.
  await new Promise((r) => setTimeout(r, 1500));
  return { site, spec, paths, vm };
}

/** The guest's serial console (ttyS0) so far. */
export async function serialLog(paths: VmPaths): Promise<string> {
  return readFile(paths.serialLog, 'utf8').catch(() => '');
}

// ---------------------------------------------------------------------------------------------
// An RFB viewer of our own, over TCP.

export interface TestViewerOptions {
  pixelFormat?: PixelFormat;
  encodings?: number[];
}

/**
 * The client side of the RFB handshake (security None) on a connected socket. Resolves with the
 * ServerInit and the bytes that came after it, the socket paused (resume it to read on).
 */
export function rfbClientHandshake(socket: Socket, why: () => string = () => 'no error'): Promise<{ serverInit: ServerInit; rest: Uint8Array }> {
  return new Promise((resolve, reject) => {
    const handshake = new RfbClientHandshake({ shared: true });
    const onData = (chunk: Buffer): void => {
      for (const event of handshake.feed(chunk)) {
        if (event.kind === 'send') socket.write(event.bytes);
        else if (event.kind === 'error') reject(new Error(event.error.message));
        else if (event.kind === 'server-init') {
          socket.pause();
          socket.off('data', onData);
          resolve({ serverInit: event.serverInit, rest: event.rest.slice() });
          return;
        }
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`the server closed the connection during the handshake (${why()})`)));
  });
}

/** Connects, handshakes, asks for updates forever and paints them (Raw only) into `rgba`. */
export class RfbTestViewer {
  readonly socket: Socket;
  width = 0;
  height = 0;
  name = '';
  /** RGBA, width × height × 4. */
  rgba = new Uint8Array(0);
  /** FramebufferUpdates that carried pixels. */
  pixelUpdates = 0;
  /** Every desktop name the viewer saw (ServerInit's first). */
  readonly names: string[] = [];
  readonly closed: Promise<string>;
  #pf: PixelFormat = { ...QEMU_DEFAULT_PIXEL_FORMAT };
  #decoder: RfbServerMessageDecoder | undefined;
  error: string | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.on('close', () => resolve(this.error ?? 'closed')));
    socket.on('error', (e) => (this.error ??= e.message));
  }

  static connect(port: number, options: TestViewerOptions = {}): Promise<RfbTestViewer> {
    return RfbTestViewer.#open(netConnect(port, '127.0.0.1'), options);
  }

  /** The same viewer on a unix socket: QEMU's own VNC server (`-vnc unix:PATH`), as a reference. */
  static connectPath(path: string, options: TestViewerOptions = {}): Promise<RfbTestViewer> {
    return RfbTestViewer.#open(netConnect(path), options);
  }

  static async #open(socket: Socket, options: TestViewerOptions): Promise<RfbTestViewer> {
    const viewer = new RfbTestViewer(socket);
    const { serverInit, rest } = await rfbClientHandshake(socket, () => viewer.error ?? 'no error');
    viewer.#begin(serverInit.width, serverInit.height, serverInit.name, options);
    socket.on('data', (c: Buffer) => viewer.#onData(c));
    if (rest.length > 0) viewer.#onData(rest);
    socket.resume();
    return viewer;
  }

  #begin(width: number, height: number, name: string, options: TestViewerOptions): void {
    this.#resize(width, height);
    this.name = name;
    this.names.push(name);
    if (options.pixelFormat !== undefined) {
      this.#pf = options.pixelFormat;
      this.send({ type: 'set-pixel-format', pixelFormat: options.pixelFormat });
    }
    this.#decoder = new RfbServerMessageDecoder(this.#pf);
    this.send({ type: 'set-encodings', encodings: options.encodings ?? [RfbEncoding.Raw, RfbEncoding.DesktopSize, RfbEncoding.DesktopName] });
    this.send({ type: 'framebuffer-update-request', incremental: false, x: 0, y: 0, width, height });
  }

  send(m: RfbClientMessage): void {
    this.socket.write(encodeClientMessage(m));
  }

  #resize(width: number, height: number): void {
    this.width = width;
    this.height = height;
    this.rgba = new Uint8Array(width * height * 4);
  }

  #onData(chunk: Uint8Array): void {
    if (this.#decoder === undefined) return;
    for (const item of this.#decoder.feed(chunk)) {
      if (item.kind === 'error') {
        this.error = `viewer could not read the gateway: ${item.error.message}`;
        this.socket.destroy();
        return;
      }
      if (item.message.type !== 'framebuffer-update') continue;
      let pixels = false;
      for (const rect of item.message.rects) {
        if (rect.encoding === RfbEncoding.DesktopSize || rect.encoding === RfbEncoding.ExtendedDesktopSize) this.#resize(rect.width, rect.height);
        else if (rect.encoding === RfbEncoding.DesktopName) this.names.push(new TextDecoder().decode(rect.data.subarray(4)));
        else if (rect.encoding === RfbEncoding.Raw) {
          pixels = true;
          const converted = pixelsToRgba(this.#pf, rect.data, rect.width * rect.height);
          if (!converted.ok) throw new Error(converted.error.message);
          for (let row = 0; row < rect.height; row++) {
            const from = row * rect.width * 4;
            this.rgba.set(converted.rgba.subarray(from, from + rect.width * 4), ((rect.y + row) * this.width + rect.x) * 4);
          }
        } else if (rect.encoding >= 0) {
          throw new Error(`the gateway sent encoding ${rect.encoding}, not Raw`);
        }
      }
      if (pixels) this.pixelUpdates += 1;
      this.send({ type: 'framebuffer-update-request', incremental: true, x: 0, y: 0, width: this.width, height: this.height });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Pixels that are not black (the console's background). */
export function litPixels(rgba: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < rgba.length; i += 4) if ((rgba[i] ?? 0) + (rgba[i + 1] ?? 0) + (rgba[i + 2] ?? 0) > 48) n++;
  return n;
}

/** Share of pixels whose RGB differ by more than `tolerance` per channel. */
export function differingShare(a: Uint8Array, b: Uint8Array, tolerance = 8): number {
  if (a.length !== b.length) return 1;
  let n = 0;
  for (let i = 0; i < a.length; i += 4) {
    for (let c = 0; c < 3; c++) {
      if (Math.abs((a[i + c] ?? 0) - (b[i + c] ?? 0)) > tolerance) {
        n++;
        break;
      }
    }
  }
  return n / (a.length / 4);
}

// ---------------------------------------------------------------------------------------------
// PNG (8-bit RGB or RGBA, non-interlaced: what gvnccapture writes via gdk-pixbuf) → RGBA.

export function decodePng(png: Uint8Array): { width: number; height: number; rgba: Uint8Array } {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (!signature.every((b, i) => png[i] === b)) throw new Error('not a PNG file');
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let at = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Uint8Array[] = [];
  while (at + 8 <= png.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + length);
    if (type === 'IHDR') {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      const depth = data[8];
      const colour = data[9];
      if (depth !== 8 || (colour !== 2 && colour !== 6) || data[12] !== 0) throw new Error(`PNG depth ${depth} colour ${colour} interlace ${data[12]} not handled`);
      channels = colour === 6 ? 4 : 3;
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    at += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const pixels = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? (pixels[y * stride + x - channels] ?? 0) : 0;
      const b = y > 0 ? (pixels[(y - 1) * stride + x] ?? 0) : 0;
      const c = x >= channels && y > 0 ? (pixels[(y - 1) * stride + x - channels] ?? 0) : 0;
      let predictor = 0;
      if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      pixels[y * stride + x] = ((line[x] ?? 0) + predictor) & 0xff;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    rgba[i * 4] = pixels[i * channels] ?? 0;
    rgba[i * 4 + 1] = pixels[i * channels + 1] ?? 0;
    rgba[i * 4 + 2] = pixels[i * channels + 2] ?? 0;
    rgba[i * 4 + 3] = channels === 4 ? (pixels[i * channels + 3] ?? 255) : 255;
  }
  return { width, height, rgba };
}

// ---------------------------------------------------------------------------------------------
// noVNC in Chromium.

const NOVNC_DIR = join(REPO_ROOT, 'node_modules', '@novnc', 'novnc');

/** The test page: noVNC's RFB module on a div, connected to `?ws=URL`; its events land in `window.sb`. */
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>snowbird display test</title>
<style>body { margin: 0; background: #333 } #screen { width: 1024px; height: 768px }</style>
<div id="screen"></div>
<script type="module">
import RFB from '/novnc/core/rfb.js';
const url = new URLSearchParams(location.search).get('ws');
const sb = (window.sb = { connects: 0, disconnects: [], names: [], errors: [] });
window.addEventListener('error', (e) => sb.errors.push(String(e.message)));
const rfb = new RFB(document.getElementById('screen'), url);
rfb.addEventListener('connect', () => sb.connects++);
rfb.addEventListener('disconnect', (e) => sb.disconnects.push(e.detail));
rfb.addEventListener('desktopname', (e) => sb.names.push(e.detail.name));
window.rfb = rfb;
</script>`;

const TYPES: Record<string, string> = { '.js': 'text/javascript', '.html': 'text/html' };

export interface NoVncState {
  connects: number;
  disconnects: unknown[];
  names: string[];
  errors: string[];
}

export interface CanvasSnapshot {
  width: number;
  height: number;
  lit: number;
  hash: number;
}

/** Serves the page and noVNC's modules on loopback, and runs Chromium headless. */
export class NoVncBrowser {
  readonly #server: Server;
  readonly #port: number;
  readonly browser: Browser;

  private constructor(server: Server, port: number, browser: Browser) {
    this.#server = server;
    this.#port = port;
    this.browser = browser;
  }

  static async launch(): Promise<NoVncBrowser> {
    const server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path === '/') {
        res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
        return;
      }
      const file = normalize(join(NOVNC_DIR, path.replace(/^\/novnc\//, '')));
      if (!path.startsWith('/novnc/') || !file.startsWith(NOVNC_DIR)) {
        res.writeHead(404).end();
        return;
      }
      readFile(file).then(
        (body) => res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(body),
        () => res.writeHead(404).end(),
      );
    });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
    });
    try {
      const browser = await chromium.launch({
        executablePath: '/usr/bin/chromium',
        args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      });
      return new NoVncBrowser(server, port, browser);
    } catch (error) {
      server.close();
      throw error;
    }
  }

  /** A page whose noVNC connects to `wsUrl`. */
  async open(wsUrl: string): Promise<Page> {
    const page = await this.browser.newPage({ viewport: { width: 1100, height: 800 } });
    await page.goto(`http://127.0.0.1:${this.#port}/?ws=${encodeURIComponent(wsUrl)}`);
    // The page's module script defines window.sb once noVNC's modules have loaded.
    await page.waitForFunction('window.sb !== undefined', undefined, { timeout: 20_000 });
    return page;
  }

  async close(): Promise<void> {
    await this.browser.close().catch(() => undefined);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

export function noVncState(page: Page): Promise<NoVncState> {
  return page.evaluate('window.sb') as Promise<NoVncState>;
}

/** Runs in the page (a string: this side is type-checked without the DOM library). */
const SNAPSHOT = `(() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width === 0) return undefined;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0x811c9dc5;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i], g = data[i + 1], b = data[i + 2];
    if (r + g + b > 48) lit++;
    hash = Math.imul(hash ^ r ^ (g << 8) ^ (b << 16), 0x01000193) >>> 0;
  }
  return { width: canvas.width, height: canvas.height, lit, hash };
})()`;

/** noVNC's canvas: its size, how many pixels are lit, and a hash of its pixels. */
export function canvasSnapshot(page: Page): Promise<CanvasSnapshot | undefined> {
  return page.evaluate(SNAPSHOT) as Promise<CanvasSnapshot | undefined>;
}

/**
 * Types into noVNC's canvas. Only characters of an unshifted US layout plus '>' (sent as
 * Shift+Period: noVNC forwards scancodes to QEMU, so a shifted character needs a real Shift).
 */
export async function typeIntoCanvas(page: Page, text: string): Promise<void> {
  await page.evaluate('window.rfb.focus()');
  for (const ch of text) {
    if (ch === '>') await page.keyboard.press('Shift+Period');
    else if (/^[a-z0-9 \-/.=]$/.test(ch)) await page.keyboard.press(ch === ' ' ? 'Space' : ch);
    else throw new Error(`typeIntoCanvas: ${JSON.stringify(ch)} is not handled`);
    await new Promise((r) => setTimeout(r, 15));
  }
}

/** Types `echo WORD >/dev/console` + Enter and waits for WORD on the guest's serial console. */
export async function typeAndSeeOnConsole(page: Page, paths: () => VmPaths, word: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; Date.now() < deadline; attempt++) {
    await typeIntoCanvas(page, `echo ${word} >/dev/console`);
    await page.keyboard.press('Enter');
    const until = Math.min(deadline, Date.now() + 10_000);
    while (Date.now() < until) {
      if ((await serialLog(paths())).includes(word)) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`"${word}" typed through noVNC never reached the guest's console (${paths().serialLog})`);
}

// ---------------------------------------------------------------------------------------------
// Typing through an RFB viewer: KeyEvents with X keysyms (what a VNC client without QEMU's
// extended key events sends; QEMU maps each keysym to a scancode through its en-us keymap).

const XK_SHIFT_L = 0xffe1;
const XK_RETURN = 0xff0d;

async function pressKeysym(viewer: RfbTestViewer, keysym: number): Promise<void> {
  viewer.send({ type: 'key-event', down: true, keysym });
  viewer.send({ type: 'key-event', down: false, keysym });
  // The guest's PS/2 keyboard queue is short: give it time to read each key.
  await new Promise((r) => setTimeout(r, 15));
}

/**
 * Types `text` then Return as KeyEvents. Only characters of an unshifted US layout plus '>', sent
 * with a real Shift around it: QEMU picks the keymap entry that matches the Shift state, so '>'
 * without Shift would arrive as '.'.
 */
export async function typeViaRfb(viewer: RfbTestViewer, text: string): Promise<void> {
  for (const ch of text) {
    if (ch === '>') {
      viewer.send({ type: 'key-event', down: true, keysym: XK_SHIFT_L });
      await pressKeysym(viewer, ch.charCodeAt(0));
      viewer.send({ type: 'key-event', down: false, keysym: XK_SHIFT_L });
    } else if (/^[a-z0-9 \-/.=]$/.test(ch)) {
      await pressKeysym(viewer, ch.charCodeAt(0));
    } else {
      throw new Error(`typeViaRfb: ${JSON.stringify(ch)} is not handled`);
    }
  }
  await pressKeysym(viewer, XK_RETURN);
}

/** Types `echo WORD >/dev/console` + Return through an RFB viewer and waits for WORD on the guest's serial console. */
export async function typeViaRfbAndSeeOnConsole(viewer: RfbTestViewer, paths: VmPaths, word: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    await typeViaRfb(viewer, `echo ${word} >/dev/console`);
    const until = Math.min(deadline, Date.now() + 10_000);
    while (Date.now() < until) {
      if ((await serialLog(paths)).includes(word)) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`"${word}" typed through an RFB viewer never reached the guest's console (${paths.serialLog})`);
}
