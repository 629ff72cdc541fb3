// Several viewers of one display gateway on the demo guest's real QEMU VNC server: a VNC client we
// did not write (gtk-vnc's gvnccapture) sees the screen QEMU shows; viewers that send malformed
// bytes, stop reading, or ask for a pixel format the gateway refuses are dropped with a logged
// reason, and the other viewers keep getting updates (keys typed into the guest change its console).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as netConnect, type Socket } from 'node:net';
import { TestSite } from '../support/fixtures.ts';
import {
  bootDisplayVm,
  decodePng,
  differingShare,
  litPixels,
  rfbClientHandshake,
  RfbTestViewer,
  typeViaRfbAndSeeOnConsole,
  waitUntil,
  type DisplayVm,
} from '../support/display.ts';
import { DisplayGateway, unixSocketConnector, type ViewerClosed } from '../../src/display/gateway.ts';
import { RfbEncoding, encodeClientMessage, type PixelFormat, type ServerInit } from '../../src/display/common/rfb.ts';

/** Resolves with `promise`, or fails after `ms` naming what it waited for. */
async function within<T>(promise: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** How the gateway names a TCP viewer in its log lines and events: its address as the gateway sees it. */
function remoteOf(socket: Socket): string {
  return `127.0.0.1:${socket.localPort ?? 0}`;
}

/** Runs gvnccapture against a plain-RFB port and decodes the PNG it wrote. */
function gvnccapture(port: number, file: string): Promise<{ width: number; height: number; rgba: Uint8Array }> {
  return new Promise((resolve, reject) => {
    // gvnccapture takes HOST:DISPLAY, the port being 5900 + DISPLAY.
    execFile('/usr/bin/gvnccapture', ['--quiet', `127.0.0.1:${port - 5900}`, file], { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error !== null) {
        reject(new Error(`gvnccapture failed (${error.message}): ${stdout}${stderr}`));
        return;
      }
      readFile(file).then((png) => resolve(decodePng(png)), reject);
    });
  });
}

/**
 * A viewer that stops reading: a raw socket that does the RFB handshake by hand, asks for Raw and
 * full frames, then never reads again. It keeps asking for full frames (writing still works), so
 * the gateway always has a frame for it that the socket will not take.
 */
interface StalledViewer {
  socket: Socket;
  remote: string;
  init: ServerInit;
  readonly closed: boolean;
  stop(): void;
}

async function stalledViewer(port: number): Promise<StalledViewer> {
  const socket = netConnect(port, '127.0.0.1');
  let closed = false;
  socket.on('error', () => undefined);
  socket.on('close', () => (closed = true));
  // From the handshake's end nothing is read (the socket stays paused): the gateway's bytes pile up in the kernel's buffers.
  const { serverInit: init } = await within(rfbClientHandshake(socket), 'the stalled viewer handshake');
  const { width, height } = init;
  const request = encodeClientMessage({ type: 'framebuffer-update-request', incremental: false, x: 0, y: 0, width, height });
  socket.write(encodeClientMessage({ type: 'set-encodings', encodings: [RfbEncoding.Raw] }));
  socket.write(request);
  const timer = setInterval(() => {
    if (!socket.destroyed) socket.write(request);
  }, 100);
  return {
    socket,
    remote: remoteOf(socket),
    init,
    get closed() {
      return closed;
    },
    stop() {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

describe('display gateway: several viewers on the demo guest', () => {
  let site: TestSite | undefined;
  let dvm: DisplayVm | undefined;
  let gateway: DisplayGateway | undefined;
  let slowGateway: DisplayGateway | undefined;
  const logs: string[] = [];
  const slowLogs: string[] = [];
  const closedViewers: ViewerClosed[] = [];
  const slowClosedViewers: ViewerClosed[] = [];
  const viewers: RfbTestViewer[] = [];
  const stalled: StalledViewer[] = [];
  // The two well-behaved viewers the later tests share.
  let a: RfbTestViewer | undefined;
  let b: RfbTestViewer | undefined;

  function track(viewer: RfbTestViewer): RfbTestViewer {
    viewers.push(viewer);
    return viewer;
  }

  function vm(): DisplayVm {
    assert.ok(dvm !== undefined, 'the VM did not boot');
    return dvm;
  }

  function rfbPort(g: DisplayGateway | undefined): number {
    const port = g?.rfbPort;
    assert.ok(port !== undefined, 'the gateway has no plain-RFB port');
    return port;
  }

  function pair(): [RfbTestViewer, RfbTestViewer] {
    assert.ok(a !== undefined && b !== undefined, 'the two shared viewers are not connected (the malformed-bytes test failed early)');
    return [a, b];
  }

  /** Types a command into the guest through `typist` and waits for every viewer in `watchers` to get pixels after it. */
  async function changeScreen(typist: RfbTestViewer, watchers: RfbTestViewer[], word: string): Promise<void> {
    const before = watchers.map((v) => ({ updates: v.pixelUpdates, rgba: v.rgba.slice() }));
    await typeViaRfbAndSeeOnConsole(typist, vm().paths, word);
    // The shell echoed the command on the VGA console: every watcher sees the screen change.
    await waitUntil('every viewer to get the typed command', () =>
      // More than a blinking cursor: the command line (35 characters of text) is new.
      watchers.every((v, i) => v.pixelUpdates > (before[i]?.updates ?? 0) && differingShare(v.rgba, before[i]?.rgba ?? new Uint8Array(0)) > 0.001),
    );
  }

  before(async () => {
    site = await TestSite.create();
    dvm = await bootDisplayVm(site, 'viewers');
    gateway = await DisplayGateway.start({ connect: unixSocketConnector(dvm.paths.vnc), source: 'viewers', webSocketPort: false, log: (l) => logs.push(l) });
    gateway.on('viewer-closed', (v) => closedViewers.push(v));
    await gateway.waitConnected();
  });

  after(async () => {
    for (const s of stalled) s.stop();
    for (const v of viewers) v.close();
    await slowGateway?.close();
    await gateway?.close();
    await dvm?.vm.kill().catch(() => undefined);
    await site?.dispose();
  });

  test('gvnccapture through the plain-RFB port captures the screen QEMU shows', async (t) => {
    const port = rfbPort(gateway);
    assert.ok(port >= 5900, `port ${port} has no VNC display number`);
    const size = gateway?.screenSize;
    assert.ok(size !== undefined);
    // The reference: our own viewer on QEMU's VNC socket, not through the gateway.
    const reference = track(await RfbTestViewer.connectPath(vm().paths.vnc));
    assert.deepEqual({ width: reference.width, height: reference.height }, size);
    await waitUntil('the console on the reference viewer', () => reference.pixelUpdates > 0 && litPixels(reference.rgba) > 2000);
    assert.ok(site !== undefined);
    const file = join(site.dataDir, 'gvnccapture.png');
    let last = 'no capture yet';
    let shot: { width: number; height: number; rgba: Uint8Array } | undefined;
    try {
      // The console is static but for the cursor: capture until the screenshot and QEMU's screen agree.
      await waitUntil(
        'a gvnccapture screenshot that matches the reference',
        async () => {
          await rm(file, { force: true });
          shot = await gvnccapture(port, file);
          const share = differingShare(shot.rgba, reference.rgba);
          const differing = Math.round(share * shot.width * shot.height);
          last = `${shot.width}x${shot.height}, ${differing} pixels (${(share * 100).toFixed(3)}%) differ from QEMU's ${reference.width}x${reference.height}`;
          // Under 1% of the screen, and few next to the text: a black screenshot would not do.
          return shot.width === reference.width && shot.height === reference.height && share < 0.01 && differing < litPixels(reference.rgba) / 10;
        },
        90_000,
        500,
      );
    } catch (error) {
      throw new Error(`${(error as Error).message}: ${last}`, { cause: error });
    }
    assert.ok(shot !== undefined);
    t.diagnostic(`${last}; lit: screenshot ${litPixels(shot.rgba)}, reference ${litPixels(reference.rgba)}`);
    assert.equal(shot.width, size.width);
    assert.equal(shot.height, size.height);
    // The text console: a black screen with a few thousand lit pixels of text (banner, prompt).
    const lit = litPixels(shot.rgba);
    assert.ok(lit > 2000 && lit < (shot.width * shot.height) / 2, `lit ${lit}`);
    // gvnccapture left by itself; the gateway dropped nobody.
    await waitUntil('gvnccapture to leave', () => gateway?.viewers().length === 0);
    assert.ok(!logs.some((l) => l.includes('dropped')), logs.join('\n'));
    reference.close();
  });

  test('a viewer sending malformed bytes is dropped with the reason logged; the other two keep getting updates', async () => {
    const port = rfbPort(gateway);
    a = track(await RfbTestViewer.connect(port));
    b = track(await RfbTestViewer.connect(port));
    const [va, vb] = pair();
    await waitUntil('both viewers to get the screen', () => va.pixelUpdates > 0 && vb.pixelUpdates > 0);
    // One sends an unknown message type, the other a SetEncodings with an absurd count.
    const unknownType = track(await RfbTestViewer.connect(port));
    const absurdCount = track(await RfbTestViewer.connect(port));
    const bad = [
      { viewer: unknownType, remote: remoteOf(unknownType.socket), bytes: Uint8Array.of(7, 0, 0, 0), detail: 'unknown message type 7' },
      { viewer: absurdCount, remote: remoteOf(absurdCount.socket), bytes: Uint8Array.of(2, 0, 0xff, 0xff), detail: 'SetEncodings.number-of-encodings' },
    ];
    for (const { viewer, bytes } of bad) viewer.socket.write(bytes);
    for (const { viewer, remote, detail } of bad) {
      await within(viewer.closed, `the gateway to close ${remote}`);
      const line = logs.find((l) => l.includes('dropped') && l.includes(`${remote})`));
      assert.ok(line !== undefined, `no drop logged for ${remote}:\n${logs.join('\n')}`);
      assert.match(line, /malformed/);
      assert.ok(line.includes(detail), line);
      const event = closedViewers.find((v) => v.remote === remote);
      assert.ok(event?.dropped === true, JSON.stringify(event));
    }
    assert.deepEqual(
      gateway?.viewers().map((v) => v.remote).sort(),
      [remoteOf(va.socket), remoteOf(vb.socket)].sort(),
    );
    await changeScreen(va, [va, vb], `sbmalformed${Date.now() % 100000}`);
    assert.ok(va.error === undefined && vb.error === undefined, `${va.error} ${vb.error}`);
    // After the change both show the same screen.
    await waitUntil('both viewers to agree', () => differingShare(va.rgba, vb.rgba) < 0.001);
    assert.equal((await vm().vm.status()).state, 'running');
  });

  test('a viewer that stops reading stalls no one, and is dropped once it has been stuck for viewerStallMs', async () => {
    const [va, vb] = pair();
    // 1. On the shared gateway (default limits: 30 s, 64 MiB) the stuck viewer stays while the others go on.
    const stuck = await stalledViewer(rfbPort(gateway));
    stalled.push(stuck);
    await waitUntil('the gateway to start sending to the stalled viewer', () => stuck.socket.readableLength > 0);
    await changeScreen(vb, [va, vb], `sbstalled${Date.now() % 100000}`);
    assert.ok(
      gateway?.viewers().some((v) => v.remote === stuck.remote),
      `the stalled viewer was dropped before the others got their update:\n${logs.join('\n')}`,
    );
    assert.equal(stuck.closed, false);
    stuck.stop();
    await waitUntil('the stalled viewer to be gone', () => gateway?.viewers().length === 2);

    // 2. A gateway with a short stall limit drops it, with the reason, and its other viewer goes on.
    slowGateway = await DisplayGateway.start({
      connect: unixSocketConnector(vm().paths.vnc),
      source: 'viewers-stall',
      webSocketPort: false,
      viewerStallMs: 2000,
      log: (l) => slowLogs.push(l),
    });
    slowGateway.on('viewer-closed', (v) => slowClosedViewers.push(v));
    await slowGateway.waitConnected();
    const port = rfbPort(slowGateway);
    const other = track(await RfbTestViewer.connect(port));
    await waitUntil('the other viewer to get the screen', () => other.pixelUpdates > 0);
    const stuck2 = await stalledViewer(port);
    stalled.push(stuck2);
    await waitUntil('the stalled viewer to be dropped', () => slowLogs.some((l) => l.includes('dropped') && l.includes(`${stuck2.remote})`)), 60_000);
    const line = slowLogs.find((l) => l.includes('dropped') && l.includes(`${stuck2.remote})`)) ?? '';
    assert.match(line, /stopped reading|not reading/);
    assert.ok(slowClosedViewers.some((v) => v.remote === stuck2.remote && v.dropped), JSON.stringify(slowClosedViewers));
    assert.deepEqual(slowGateway.viewers().map((v) => v.remote), [remoteOf(other.socket)]);
    // Its next request meets a closed connection.
    await waitUntil('the stalled viewer socket to close', () => stuck2.closed);
    await changeScreen(other, [other, va, vb], `sbafterstall${Date.now() % 100000}`);
    assert.ok(!slowLogs.some((l) => l.includes(`${remoteOf(other.socket)})`) && l.includes('dropped')), slowLogs.join('\n'));
    assert.equal(other.error, undefined);
    assert.equal((await vm().vm.status()).state, 'running');
  });

  test('a viewer asking for a pixel format the gateway refuses is dropped with the reason; the others are unaffected', async () => {
    const [va, vb] = pair();
    const port = rfbPort(gateway);
    const refused: { format: PixelFormat; detail: string }[] = [
      {
        format: { bitsPerPixel: 8, depth: 8, bigEndian: false, trueColour: false, redMax: 0, greenMax: 0, blueMax: 0, redShift: 0, greenShift: 0, blueShift: 0 },
        detail: 'colour-mapped',
      },
      {
        format: { bitsPerPixel: 8, depth: 8, bigEndian: false, trueColour: true, redMax: 255, greenMax: 255, blueMax: 255, redShift: 0, greenShift: 8, blueShift: 16 },
        detail: 'does not fit in 8 bits',
      },
    ];
    for (const { format, detail } of refused) {
      const viewer = track(await RfbTestViewer.connect(port));
      const remote = remoteOf(viewer.socket);
      viewer.send({ type: 'set-pixel-format', pixelFormat: format });
      await within(viewer.closed, `the gateway to close ${remote}`);
      const line = logs.find((l) => l.includes('dropped') && l.includes(`${remote})`));
      assert.ok(line !== undefined, `no drop logged for ${remote}:\n${logs.join('\n')}`);
      assert.match(line, /SetPixelFormat/);
      assert.ok(line.includes(detail), line);
      assert.ok(closedViewers.some((v) => v.remote === remote && v.dropped), JSON.stringify(closedViewers));
    }
    assert.deepEqual(
      gateway?.viewers().map((v) => v.remote).sort(),
      [remoteOf(va.socket), remoteOf(vb.socket)].sort(),
    );
    await changeScreen(va, [va, vb], `sbformat${Date.now() % 100000}`);
    assert.ok(va.error === undefined && vb.error === undefined, `${va.error} ${vb.error}`);
    assert.equal((await vm().vm.status()).state, 'running');
  });
});
