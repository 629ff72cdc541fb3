// The screen stays on the edge while the VM moves: two real agents, the edge agent's display gateway
// (opened with `snowbird display`), noVNC in Chromium and a plain-RFB viewer attached to it, and the
// demo guest moved edge → core → edge twice. No viewer is disconnected; after each move the keys
// typed into noVNC reach the guest where it now runs and the canvas shows them.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { AgentPair } from '../support/agents.ts';
import { runCli } from '../support/fixtures.ts';
import { canvasSnapshot, NoVncBrowser, noVncState, RfbTestViewer, typeAndSeeOnConsole, waitUntil } from '../support/display.ts';
import { displayReplySchema, type DisplayReply } from '../../src/shared/local-api.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';

const VM = 'screen';

describe('the display follows the VM across migrations without a disconnect', { timeout: 20 * 60_000 }, () => {
  let pair: AgentPair | undefined;
  let browser: NoVncBrowser | undefined;
  let rfbViewer: RfbTestViewer | undefined;
  let page: Page;
  let display: DisplayReply;

  before(async () => {
    pair = await AgentPair.start();
    await pair.createVmAtEdge(VM);
    await pair.waitGuestReady(VM);
    const r = await runCli(['--data', pair.edgeLibrary.dataDir, 'display', VM, '--json']);
    assert.equal(r.code, 0, r.stderr);
    display = displayReplySchema.parse(JSON.parse(r.stdout));
    browser = await NoVncBrowser.launch();
    page = await browser.open(display.webSocketUrl);
    rfbViewer = await RfbTestViewer.connect(Number(display.rfbAddress.split(':').at(-1)));
  });

  after(async () => {
    rfbViewer?.close();
    await browser?.close();
    await pair?.dispose();
  });

  test('snowbird display names the gateway: a tokened WebSocket URL and a loopback RFB port, at the edge', () => {
    assert.equal(display.at, 'edge');
    assert.match(display.webSocketUrl, /^ws:\/\/127\.0\.0\.1:\d+\/vnc\?token=[\w-]{20,}$/);
    assert.match(display.rfbAddress, /^127\.0\.0\.1:\d+$/);
  });

  test('two round trips: noVNC never disconnects, and typed keys reach the guest at each site', async () => {
    const p = pair;
    assert.ok(p !== undefined);
    await waitUntil('noVNC to connect', async () => (await noVncState(page)).connects === 1, 30_000);
    await waitUntil('the console on the canvas', async () => ((await canvasSnapshot(page))?.lit ?? 0) > 2000, 30_000);
    for (const [move, to] of (['core', 'edge', 'core', 'edge'] as const).entries()) {
      const r = await runCli(['--data', p.edgeLibrary.dataDir, 'migrate', VM, '--to', to, '--json']);
      const record = JSON.parse(r.stdout) as MigrationRecord;
      assert.equal(record.outcome, 'committed', `move ${move + 1} → ${to}: ${record.error}`);
      const library = to === 'core' ? p.coreLibrary : p.edgeLibrary;
      const before = await canvasSnapshot(page);
      // Frames resume from the new site: what the guest echoes there shows on the same canvas.
      await typeAndSeeOnConsole(page, () => library.paths(VM), `moved${move + 1}to${to}`, 60_000);
      await waitUntil(`the canvas to change after move ${move + 1}`, async () => (await canvasSnapshot(page))?.hash !== before?.hash, 30_000);
      const state = await noVncState(page);
      assert.equal(state.connects, 1, `move ${move + 1}: noVNC connected again`);
      assert.deepEqual(state.disconnects, [], `move ${move + 1}: noVNC saw a disconnect`);
      assert.deepEqual(state.errors, []);
    }
    // The plain-RFB viewer rode along too: still connected, and it got the frames of every site.
    assert.equal(rfbViewer?.error, undefined);
    assert.equal(rfbViewer?.socket.destroyed, false);
    const status = displayReplySchema.parse(JSON.parse((await runCli(['--data', p.edgeLibrary.dataDir, 'display', VM, '--json'])).stdout));
    assert.equal(status.at, 'edge');
    assert.equal(status.status.state, 'connected');
    assert.equal(status.viewers, 2);
  });
});
