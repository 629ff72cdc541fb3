// noVNC in Debian's Chromium, through the display gateway, on the demo guest's real QEMU VNC server:
// the canvas shows the guest's console, typed keys reach the guest (it echoes a word to its serial
// console), the WebSocket wants the per-run token, and the activity taps count what happened.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { WebSocket } from 'ws';
import { TestSite } from '../support/fixtures.ts';
import { bootDisplayVm, canvasSnapshot, NoVncBrowser, noVncState, typeAndSeeOnConsole, waitUntil, type DisplayVm } from '../support/display.ts';
import { DisplayGateway, unixSocketConnector } from '../../src/display/gateway.ts';
import { displayActivitySchema, type DisplayActivity } from '../../src/shared/display.ts';

describe('display gateway: noVNC in Chromium on the demo guest', () => {
  let site: TestSite | undefined;
  let dvm: DisplayVm | undefined;
  let gateway: DisplayGateway | undefined;
  let browser: NoVncBrowser | undefined;
  let page: Page;
  const logs: string[] = [];
  const activity: DisplayActivity[] = [];

  before(async () => {
    site = await TestSite.create();
    dvm = await bootDisplayVm(site, 'novnc');
    gateway = await DisplayGateway.start({ connect: unixSocketConnector(dvm.paths.vnc), source: 'novnc', log: (l) => logs.push(l) });
    gateway.on('activity', (a) => activity.push(a));
    await gateway.waitConnected();
    browser = await NoVncBrowser.launch();
    page = await browser.open(gateway.webSocketUrl ?? '');
  });

  after(async () => {
    await browser?.close();
    await gateway?.close();
    await dvm?.vm.kill().catch(() => undefined);
    await site?.dispose();
  });

  test('the canvas shows the guest console at the VM screen size', async () => {
    await waitUntil('noVNC to connect', async () => (await noVncState(page)).connects === 1);
    const size = gateway?.screenSize;
    assert.ok(size !== undefined);
    await waitUntil('the console on the canvas', async () => {
      const snap = await canvasSnapshot(page);
      return snap !== undefined && snap.width === size.width && snap.height === size.height && snap.lit > 2000;
    });
    const snap = await canvasSnapshot(page);
    // The text console: a black screen with a few thousand lit pixels of text (banner, prompt).
    assert.ok(snap !== undefined && snap.lit < snap.width * snap.height / 2, `lit ${snap?.lit}`);
    assert.deepEqual((await noVncState(page)).errors, []);
  });

  test('keys typed into the canvas reach the guest: it echoes them to its serial console', async () => {
    const before = await canvasSnapshot(page);
    const word = `sbtyped${Date.now() % 100000}`;
    const paths = dvm?.paths;
    assert.ok(paths !== undefined);
    await typeAndSeeOnConsole(page, () => paths, word);
    // The shell also echoed the command on the VGA console, so the canvas changed.
    await waitUntil('the typed command on the canvas', async () => (await canvasSnapshot(page))?.hash !== before?.hash);
    assert.deepEqual((await noVncState(page)).disconnects, []);
  });

  test('activity records count the keys and the updates, with latency samples', async () => {
    await new Promise((r) => setTimeout(r, 600));
    for (const record of activity) displayActivitySchema.parse(record);
    const keys = activity.reduce((n, a) => n + a.keyEvents, 0);
    const updates = activity.reduce((n, a) => n + a.fbUpdates, 0);
    const latency = activity.flatMap((a) => a.latencyMs);
    // "echo sbtypedNNNNN >/dev/console" and Enter, presses and releases, Shift included.
    assert.ok(keys >= 2 * 30, `key events ${keys}`);
    assert.ok(updates > 0);
    assert.ok(latency.length > 0 && latency.every((ms) => ms >= 0 && ms < 10_000), JSON.stringify(latency));
    const last = activity.at(-1);
    assert.ok(last !== undefined);
    assert.equal(last.width, gateway?.screenSize?.width);
    assert.equal(last.viewers, 1);
    assert.equal(last.upstream, 'connected');
    assert.equal(last.source, 'novnc');
  });

  test('a WebSocket without the token, or with a wrong one, is refused with 401 and a logged reason', async () => {
    const port = gateway?.webSocketPort;
    for (const [path, reason] of [['/vnc', 'no token'], ['/vnc?token=nope', 'wrong token']] as const) {
      const status = await new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
        ws.on('unexpected-response', (_req, res) => {
          resolve(res.statusCode ?? 0);
          ws.terminate();
        });
        ws.on('open', () => reject(new Error('the gateway accepted a WebSocket without the right token')));
        ws.on('error', () => undefined);
      });
      assert.equal(status, 401);
      assert.ok(logs.some((l) => l.includes('refused a WebSocket viewer') && l.includes(reason)), logs.join('\n'));
    }
    assert.equal(gateway?.viewers().length, 1);
    assert.deepEqual((await noVncState(page)).disconnects, []);
  });
});
