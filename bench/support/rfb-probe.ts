// A measuring RFB client for the display benchmark, built on our codec (src/display/common/rfb.ts),
// the shape of test/support/display.ts's RfbTestViewer: it connects over TCP (the gateway's plain-RFB
// port) or a unix socket (QEMU's own VNC server), asks for Raw updates forever, keeps a copy of the
// screen in the server's pixel format and notes, for every FramebufferUpdate, when it arrived and
// whether it changed pixels of that copy. It also types: KeyEvents with X keysyms.
import { connect as netConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import {
  RfbClientHandshake,
  RfbEncoding,
  RfbServerMessageDecoder,
  bytesPerPixel,
  encodeClientMessage,
  type PixelFormat,
  type RfbClientMessage,
} from '../../src/display/common/rfb.ts';

/** performance.now() on the Date.now() scale (ms since the epoch, sub-millisecond). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export class RfbProbe {
  readonly socket: Socket;
  readonly label: string;
  width = 0;
  height = 0;
  /** Bytes read from the socket after the handshake (what the server delivered). */
  bytes = 0;
  /** FramebufferUpdates that changed pixels of the probe's copy of the screen. */
  changedUpdates = 0;
  /** Arrival times (nowMs) of the updates that changed pixels, while `recording`. */
  readonly changeTimes: number[] = [];
  recording = false;
  /** Why the connection ended, once it has. */
  closedReason: string | undefined;
  readonly closed: Promise<string>;
  error: string | undefined;
  #pf: PixelFormat | undefined;
  #bpp = 4;
  #fb = Buffer.alloc(0);
  #decoder: RfbServerMessageDecoder | undefined;
  #waiters: ((at: number) => void)[] = [];
  #listeners: ((at: number) => void)[] = [];
  #onClose: ((reason: string) => void)[] = [];

  private constructor(socket: Socket, label: string) {
    this.socket = socket;
    this.label = label;
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.closedReason = this.error ?? 'closed';
        for (const f of this.#onClose) f(this.closedReason);
        resolve(this.closedReason);
      }),
    );
    socket.on('error', (e) => (this.error ??= e.message));
    socket.setNoDelay?.(true);
  }

  /** The gateway's plain-RFB port on loopback. */
  static tcp(port: number, label: string): Promise<RfbProbe> {
    return RfbProbe.#open(netConnect(port, '127.0.0.1'), label);
  }

  /** QEMU's own VNC server (`-vnc unix:PATH`). */
  static unix(path: string, label: string): Promise<RfbProbe> {
    return RfbProbe.#open(netConnect(path), label);
  }

  static async #open(socket: Socket, label: string): Promise<RfbProbe> {
    const probe = new RfbProbe(socket, label);
    await new Promise<void>((resolve, reject) => {
      const handshake = new RfbClientHandshake({ shared: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`${label}: no RFB handshake within 15 s`));
      }, 15_000);
      const onData = (chunk: Buffer): void => {
        for (const event of handshake.feed(chunk)) {
          if (event.kind === 'send') socket.write(event.bytes);
          else if (event.kind === 'error') {
            clearTimeout(timer);
            socket.destroy();
            reject(new Error(`${label}: ${event.error.message}`));
          } else if (event.kind === 'server-init') {
            clearTimeout(timer);
            socket.off('data', onData);
            probe.#begin(event.serverInit.width, event.serverInit.height, event.serverInit.pixelFormat);
            socket.on('data', (c: Buffer) => probe.#onData(c));
            if (event.rest.length > 0) probe.#onData(event.rest);
            resolve();
          }
        }
      };
      socket.on('data', onData);
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`${label}: ${e.message}`));
      });
      socket.once('close', () => {
        clearTimeout(timer);
        reject(new Error(`${label}: the server closed the connection during the handshake`));
      });
    });
    return probe;
  }

  #begin(width: number, height: number, pf: PixelFormat): void {
    this.#pf = pf;
    this.#bpp = bytesPerPixel(pf);
    this.#resize(width, height);
    this.#decoder = new RfbServerMessageDecoder(pf);
    this.send({ type: 'set-encodings', encodings: [RfbEncoding.Raw, RfbEncoding.DesktopSize] });
    this.send({ type: 'framebuffer-update-request', incremental: false, x: 0, y: 0, width, height });
  }

  #resize(width: number, height: number): void {
    this.width = width;
    this.height = height;
    this.#fb = Buffer.alloc(width * height * this.#bpp);
  }

  send(m: RfbClientMessage): void {
    if (!this.socket.destroyed) this.socket.write(encodeClientMessage(m));
  }

  key(keysym: number, down: boolean): void {
    this.send({ type: 'key-event', down, keysym });
  }

  /** Resolves with the arrival time of the next update that changes pixels. */
  nextChange(timeoutMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const waiter = (at: number): void => {
        clearTimeout(timer);
        resolve(at);
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`${this.label}: no screen change within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** Calls `f` with the arrival time of every update that changes pixels. */
  onChange(f: (at: number) => void): void {
    this.#listeners.push(f);
  }

  /** Whether this probe's copy of the screen equals `other`'s, pixel for pixel (same size and pixel format). */
  sameScreenAs(other: RfbProbe): boolean {
    return this.width === other.width && this.height === other.height && this.#fb.equals(other.#fb);
  }

  onClose(f: (reason: string) => void): void {
    this.#onClose.push(f);
  }

  #onData(chunk: Uint8Array): void {
    const decoder = this.#decoder;
    if (decoder === undefined || this.#pf === undefined) return;
    this.bytes += chunk.length;
    for (const item of decoder.feed(chunk)) {
      if (item.kind === 'error') {
        this.error = `${this.label}: cannot read the server: ${item.error.message}`;
        this.socket.destroy();
        return;
      }
      if (item.message.type !== 'framebuffer-update') continue;
      const at = nowMs();
      let changed = false;
      for (const rect of item.message.rects) {
        if (rect.encoding === RfbEncoding.DesktopSize || rect.encoding === RfbEncoding.ExtendedDesktopSize) {
          // Not a change by itself: the viewer shows nothing new until pixels arrive (QEMU sends them
          // in a later update), and those count as changed against the blank copy.
          if (rect.width !== this.width || rect.height !== this.height) this.#resize(rect.width, rect.height);
        } else if (rect.encoding === RfbEncoding.Raw) {
          if (this.#paint(rect.x, rect.y, rect.width, rect.height, rect.data)) changed = true;
        } else if (rect.encoding >= 0) {
          this.error = `${this.label}: the server sent encoding ${rect.encoding}, not Raw`;
          this.socket.destroy();
          return;
        }
      }
      if (changed) {
        this.changedUpdates += 1;
        if (this.recording) this.changeTimes.push(at);
        const waiters = this.#waiters;
        this.#waiters = [];
        for (const w of waiters) w(at);
        for (const f of this.#listeners) f(at);
      }
      this.send({ type: 'framebuffer-update-request', incremental: true, x: 0, y: 0, width: this.width, height: this.height });
    }
  }

  /** Copies a Raw rectangle into the screen copy; true if any of its pixels differed (row by row, memcmp). */
  #paint(x: number, y: number, width: number, height: number, data: Uint8Array): boolean {
    const bpp = this.#bpp;
    if (x + width > this.width || y + height > this.height) return true;
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const rowBytes = width * bpp;
    let changed = false;
    for (let row = 0; row < height; row++) {
      const from = src.subarray(row * rowBytes, (row + 1) * rowBytes);
      const at = ((y + row) * this.width + x) * bpp;
      const to = this.#fb.subarray(at, at + rowBytes);
      if (!changed && !from.equals(to)) changed = true;
      if (changed) from.copy(to);
    }
    return changed;
  }

  close(): void {
    this.socket.destroy();
  }
}

// ── typing: X keysyms, with a real Shift around shifted characters (QEMU maps each keysym through
// its en-us keymap and picks the entry that matches the Shift state) ─────────────────────────────
export const XK = { BackSpace: 0xff08, Return: 0xff0d, ShiftL: 0xffe1, ControlL: 0xffe3 } as const;
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?'.split(''));

export async function typeText(probe: RfbProbe, text: string, delayMs = 15): Promise<void> {
  for (const ch of text) {
    const code = ch.charCodeAt(0);
    if (code < 0x20 || code > 0x7e) throw new Error(`typeText: ${JSON.stringify(ch)} is not printable ASCII`);
    const shift = SHIFTED.has(ch) || (ch >= 'A' && ch <= 'Z');
    if (shift) probe.key(XK.ShiftL, true);
    probe.key(code, true);
    probe.key(code, false);
    if (shift) probe.key(XK.ShiftL, false);
    // The guest's PS/2 keyboard queue is short: give it time to read each key.
    await new Promise((r) => setTimeout(r, delayMs));
  }
}

export async function pressKey(probe: RfbProbe, keysym: number, delayMs = 15): Promise<void> {
  probe.key(keysym, true);
  probe.key(keysym, false);
  await new Promise((r) => setTimeout(r, delayMs));
}
