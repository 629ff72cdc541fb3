// The app in a browser, end to end: two real agents (test/support/agents.ts), the demo guest, the
// edge agent's UI server, and the built renderer (dist/ui: `npm run build:ui`, which `npm test` and
// `npm run test:e2e` run first) in Debian's Chromium under Playwright's runner. The page needs its
// token; the screen shows the guest's console and takes keys; "Send to cloud" and "Bring back" move
// the VM with a progress bar while noVNC stays connected; both moves land in the history table. In
// auto mode, a crunch in the guest sends it to the cloud, and the decision log says why.
// Screenshots of the main states go to test-results/ (git-ignored); one is kept as docs/ui.png
// (SNOWBIRD_UPDATE_SCREENSHOTS=1 refreshes it).
import { test } from '@playwright/test';
import assert from 'node:assert/strict';
import { access, copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from '@playwright/test';
import { WebSocket } from 'ws';
import { AgentPair } from '../test/support/agents.ts';
import { qemusUnder, REPO_ROOT, runCli } from '../test/support/fixtures.ts';
import { canvasSnapshot, serialLog, waitUntil } from '../test/support/display.ts';
import type { VmPaths } from '../src/migrator/qemu/common/spec.ts';
import { agentStatusSchema, localResponseSchema, uiPushSchema } from '../src/shared/local-api.ts';

const RESULTS = join(REPO_ROOT, 'test-results');

/** The URL `snowbird open` prints (without opening a browser). */
async function uiUrl(pair: AgentPair): Promise<string> {
  const r = await runCli(['--data', pair.edgeLibrary.dataDir, 'open', '--no-browser']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim();
}

/** Opens the page and records what a test must not see: CSP violations, page errors. */
async function openPage(browser: Browser, url: string, problems: string[]): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content.Security.Policy|Refused to/i.test(message.text())) problems.push(`console: ${message.text()}`);
  });
  const response = await page.goto(url);
  assert.equal(response?.status(), 200);
  return page;
}

const attr = (page: Page, testId: string, name: string): Promise<string | null> =>
  page.getByTestId(testId).first().getAttribute(name, { timeout: 5_000 }).catch(() => null);

/** Types into noVNC (focused by a click on the screen): a US layout, lowercase, digits, ' -/.=' and '>'. */
async function typeLine(page: Page, text: string): Promise<void> {
  for (const ch of text) {
    if (ch === '>') await page.keyboard.press('Shift+Period');
    else if (/^[a-z0-9 \-/.=]$/.test(ch)) await page.keyboard.press(ch === ' ' ? 'Space' : ch);
    else throw new Error(`typeLine: ${JSON.stringify(ch)} is not handled`);
    await new Promise((r) => setTimeout(r, 15)); // the guest's PS/2 queue is short
  }
  await page.keyboard.press('Enter');
}

/** Clicks the screen (noVNC takes the keyboard), types `echo WORD >/dev/console` and waits for WORD on the guest's serial console. */
async function typeAndSee(page: Page, paths: VmPaths, word: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    await page.locator('#screen canvas').click({ position: { x: 20, y: 20 } });
    await typeLine(page, `echo ${word} >/dev/console`);
    const until = Math.min(deadline, Date.now() + 10_000);
    while (Date.now() < until) {
      if ((await serialLog(paths)).includes(word)) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`"${word}" typed into the app's screen never reached the guest's console (${paths.serialLog})`);
}

/** Records, in the page, every change of the progress bar and of the display's state (the test reads window.__watch). */
const WATCH = `(() => {
  const w = (window.__watch = { progress: [], display: [], locations: [], startingAfterProgress: false });
  const seen = () => {
    const p = document.querySelector('[data-testid=progress]');
    if (p) {
      const entry = p.dataset.phase + ':' + p.dataset.bytes;
      if (w.progress.at(-1) !== entry) w.progress.push(entry);
    }
    const text = document.querySelector('[data-testid=progress-text]');
    if (text && w.progress.length > 0 && text.textContent.startsWith('Starting the move')) w.startingAfterProgress = true;
    const d = document.querySelector('[data-testid=display-state]');
    if (d && w.display.at(-1) !== d.dataset.state) w.display.push(d.dataset.state);
    const l = document.querySelector('[data-testid=location]');
    if (l && w.locations.at(-1) !== l.dataset.location) w.locations.push(l.dataset.location);
  };
  new MutationObserver(seen).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
  seen();
})()`;

interface Watch {
  progress: string[];
  display: string[];
  locations: string[];
  /** The panel went back to "Starting the move…" after it had shown progress (it flashed after commit). */
  startingAfterProgress: boolean;
}

const VM = 'appvm';

test.describe.serial('the app in a browser: display, moves, history', () => {
  let pair: AgentPair | undefined;
  let browser: Browser | undefined;
  let page: Page;
  let url: string;
  const problems: string[] = [];

  test.beforeAll(async ({ browser: shared }) => {
    browser = shared;
    await mkdir(RESULTS, { recursive: true });
    pair = await AgentPair.start();
    // Busy as `snowbird vm create` makes it: its checker rewrites 64 MiB, faster than pre-copy carries it on loopback here.
    await pair.createVmAtEdge(VM, { memWorkloadMiB: 64 });
    await pair.waitGuestReady(VM);
    url = await uiUrl(pair);
  });

  test.afterAll(async () => {
    await page?.context().close().catch(() => undefined);
    await pair?.dispose();
  });

  const p = (): AgentPair => {
    assert.ok(pair !== undefined);
    return pair;
  };

  test('`snowbird open` prints a loopback URL with a token; the page and the API refuse a wrong one (401)', async () => {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/\?token=[\w-]{20,}$/);
    const wrong = url.replace(/token=[^&]+/, 'token=wrong-token');
    assert.equal((await fetch(wrong)).status, 401);
    assert.equal((await fetch(url.replace(/\?.*$/, ''))).status, 401);
    const good = await fetch(url);
    assert.equal(good.status, 200);
    assert.match(good.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'self'/);
    // The API WebSocket too.
    const api = (token: string): string => `${url.replace(/^http/, 'ws').replace(/\/\?.*$/, '')}/api?token=${token}`;
    const refused = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(api('wrong-token'));
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => reject(new Error('a wrong token opened the API')));
      ws.on('error', () => undefined);
    });
    assert.equal(refused, 401);
    // A page from another origin does not get in, even with the token (a DNS-rebinding page has neither).
    const token = new URL(url).searchParams.get('token') ?? '';
    const foreign = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(api(encodeURIComponent(token)), { origin: 'http://evil.example' });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => reject(new Error('a foreign origin opened the API')));
      ws.on('error', () => undefined);
    });
    assert.equal(foreign, 403);
    await waitUntil('the refusals in the edge log', () => p().edge.log.filter((l) => /ui: refused .*wrong token/.test(l)).length >= 2, 5_000);
  });

  test('the API WebSocket speaks the local API contract, and pushes the status', async () => {
    const token = new URL(url).searchParams.get('token') ?? '';
    const ws = new WebSocket(`${url.replace(/^http/, 'ws').replace(/\/\?.*$/, '')}/api?token=${encodeURIComponent(token)}`);
    const messages: unknown[] = [];
    ws.on('message', (data: Buffer) => messages.push(JSON.parse(data.toString())));
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    try {
      ws.send(JSON.stringify({ id: 1, command: { cmd: 'status' } }));
      ws.send(JSON.stringify({ id: 2, command: { cmd: 'launch-missiles' } }));
      ws.send(JSON.stringify({ id: 3, command: { cmd: 'migrate', vm: '../etc', to: 'core' } }));
      await waitUntil('three replies and a status push', () => messages.filter((m) => localResponseSchema.safeParse(m).success).length >= 3 && messages.some((m) => uiPushSchema.safeParse(m).data?.push === 'status'), 10_000);
      const reply = (id: number): unknown => messages.find((m) => (m as { id?: number }).id === id);
      const status = localResponseSchema.parse(reply(1));
      assert.ok(status.ok);
      assert.deepEqual(agentStatusSchema.parse(status.result).vms.map((v) => v.name), [VM]);
      assert.deepEqual((reply(2) as { ok: boolean; error: { code: string } }).error.code, 'unknown-command');
      assert.deepEqual((reply(3) as { ok: boolean; error: { code: string } }).error.code, 'invalid');
      await waitUntil('the VM\'s samples pushed', () => messages.some((m) => uiPushSchema.safeParse(m).data?.push === 'samples'), 10_000);
    } finally {
      ws.close();
    }
  });

  test('the page shows the guest\'s console, and keys typed into it reach the guest', async () => {
    assert.ok(browser !== undefined);
    page = await openPage(browser, url, problems);
    await waitUntil('the location badge to say edge', async () => (await attr(page, 'location', 'data-location')) === 'edge', 30_000);
    await waitUntil('noVNC to connect', async () => (await attr(page, 'display-state', 'data-state')) === 'connected', 30_000);
    await waitUntil('the console on the screen', async () => ((await canvasSnapshot(page))?.lit ?? 0) > 2000, 30_000);
    await typeAndSee(page, p().edgeLibrary.paths(VM), 'typedinapp1');
    await waitUntil('some samples in the plots', async () => Number(await attr(page, 'plots', 'data-samples')) > 20, 30_000);
    await page.screenshot({ path: join(RESULTS, 'ui-edge.png'), fullPage: true });
    assert.deepEqual(problems, []);
  });

  test('Send to cloud: moving with a progress bar, then in the cloud; the screen never disconnects', async () => {
    await page.evaluate(WATCH);
    await page.getByTestId('send-to-cloud').click();
    await waitUntil('the badge to say moving', async () => (await attr(page, 'location', 'data-location')) === 'moving', 20_000, 50);
    let shotWhileMoving = false;
    await waitUntil('the badge to say core', async () => {
      if (!shotWhileMoving && Number((await attr(page, 'progress', 'data-bytes')) ?? 0) > 0) {
        shotWhileMoving = true;
        await page.screenshot({ path: join(RESULTS, 'ui-moving.png') });
      }
      return (await attr(page, 'location', 'data-location')) === 'core';
    }, 5 * 60_000, 100);
    const watch = (await page.evaluate('window.__watch')) as Watch;
    assert.deepEqual(watch.locations.slice(-2), ['moving', 'core'], JSON.stringify(watch.locations));
    // The bar advanced: more than one reading, bytes growing within a phase or phases moving on.
    assert.ok(watch.progress.length >= 2, `progress readings: ${JSON.stringify(watch.progress)}`);
    const phases = new Set(watch.progress.map((e) => e.split(':')[0]));
    const maxBytes = Math.max(...watch.progress.map((e) => Number(e.split(':')[1])));
    assert.ok(phases.size >= 2 && maxBytes > 0, `progress readings: ${JSON.stringify(watch.progress)}`);
    // One progress model: the bytes never fall, the phases only go forward, no "Starting…" once it moved.
    const bytes = watch.progress.map((e) => Number(e.split(':')[1]));
    assert.deepEqual(bytes, [...bytes].sort((a, b) => a - b), `bytes went backwards: ${JSON.stringify(watch.progress)}`);
    const order = watch.progress.map((e) => ['plan', 'prepare', 'disk', 'memory', 'switchover', 'commit'].indexOf(e.split(':')[0] ?? ''));
    assert.deepEqual(order, [...order].sort((a, b) => a - b), `phases went backwards: ${JSON.stringify(watch.progress)}`);
    assert.equal(watch.startingAfterProgress, false, '"Starting the move…" came back after progress was shown');
    assert.ok(!watch.display.includes('disconnected'), `display states: ${JSON.stringify(watch.display)}`);
    assert.equal(await attr(page, 'display-state', 'data-connects'), '1');
    assert.equal(await attr(page, 'display-state', 'data-disconnects'), '0');
    // The same screen now shows the VM in the cloud, and takes keys there.
    await typeAndSee(page, p().coreLibrary.paths(VM), 'typedincloud2');
    await page.screenshot({ path: join(RESULTS, 'ui-core.png'), fullPage: true });
  });

  test('Bring back: the VM returns to the laptop, still on the same noVNC session', async () => {
    await page.evaluate(WATCH);
    await page.getByTestId('bring-back').click();
    await waitUntil('the badge to say edge', async () => (await attr(page, 'location', 'data-location')) === 'edge', 5 * 60_000, 100);
    const watch = (await page.evaluate('window.__watch')) as Watch;
    assert.ok(watch.locations.includes('moving'), JSON.stringify(watch.locations));
    assert.ok(!watch.display.includes('disconnected'), `display states: ${JSON.stringify(watch.display)}`);
    assert.equal(await attr(page, 'display-state', 'data-connects'), '1');
    assert.equal(await attr(page, 'display-state', 'data-disconnects'), '0');
    await typeAndSee(page, p().edgeLibrary.paths(VM), 'typedathome3');
  });

  test('both moves are in the history table with their figures', async () => {
    const rows = page.locator('[data-testid=history] tbody tr');
    await waitUntil('two rows in the history table', async () => (await rows.count()) === 2, 20_000);
    // Newest first: back to the laptop, then to the cloud.
    assert.deepEqual([await rows.nth(0).getAttribute('data-to'), await rows.nth(1).getAttribute('data-to')], ['edge', 'core']);
    for (let i = 0; i < 2; i++) {
      const row = rows.nth(i);
      assert.equal(await row.getAttribute('data-outcome'), 'committed');
      assert.match(await row.getByTestId('downtime').innerText(), /^\d+(\.\d+)? (ms|s)$/);
      assert.match(await row.getByTestId('bytes').innerText(), /^\d+(\.\d)? (KiB|MiB|GiB)$/);
      assert.match(await row.innerText(), /user/);
      // The buttons move with the default strategy and dedup choice; the strategy cell says which way
      // they went, and on hover why.
      const cell = row.getByTestId('strategy');
      const [why = '', dedup = ''] = ((await cell.getAttribute('title')) ?? '').split('\n');
      if (i === 1) {
        assert.match(await cell.innerText(), /^auto → (pre-copy|post-copy)/);
        assert.match(why, /^auto: .*the guest dirties [\d.]+ [KM]iB\/s, the stream carries [\d.]+ [KM]iB\/s/);
      } else {
        assert.match(await cell.innerText(), /^hybrid/);
        assert.match(why, /^hybrid: one pre-copy pass, then post-copy/);
      }
      assert.match(dedup, /^dedup auto: (on|off), .*link .*dedup /);
      assert.equal(await row.getByTestId('dedup').count(), dedup.startsWith('dedup auto: on') ? 1 : 0);
    }
    await waitUntil('the moves shaded on the plots', async () => Number(await attr(page, 'plots', 'data-markers')) >= 2, 10_000);
    await page.screenshot({ path: join(RESULTS, 'ui-history.png'), fullPage: true });
    // The README's picture: refreshed on demand (it is committed), or made when missing.
    const docsShot = join(REPO_ROOT, 'docs', 'ui.png');
    if (process.env.SNOWBIRD_UPDATE_SCREENSHOTS || !(await access(docsShot).then(() => true, () => false))) await copyFile(join(RESULTS, 'ui-history.png'), docsShot);
    assert.deepEqual(problems, []);
  });

  test('Cancel: the move rolls back, the VM stays on the laptop, and the page says why', async () => {
    await page.getByTestId('send-to-cloud').click();
    await waitUntil('the Cancel button', async () => (await page.getByTestId('cancel').count()) > 0, 20_000, 50);
    await page.getByTestId('cancel').click();
    // A cancel is not a failure: a notice, not an error.
    const notice = page.locator('[data-testid=errors] .notice[data-code=cancelled]');
    await waitUntil('the notice for the cancelled move', async () => (await notice.count()) > 0, 5 * 60_000, 200);
    assert.match(await notice.innerText(), /Send to cloud cancelled.*appvm stayed at the laptop: the move was cancelled during/);
    assert.equal(await page.locator('[data-testid=errors] .error').count(), 0);
    await waitUntil('the badge to say edge', async () => (await attr(page, 'location', 'data-location')) === 'edge', 30_000);
    // Nothing of the move is left at the core, even a QEMU it was still starting when the cancel came.
    await waitUntil('no QEMU left at the core', async () => (await qemusUnder(join(p().root, 'core'))).length === 0, 30_000);
    const rows = page.locator('[data-testid=history] tbody tr');
    await waitUntil('the cancelled move in the history table', async () => (await rows.first().getAttribute('data-outcome')) === 'cancelled', 20_000);
    assert.match(await rows.first().innerText(), /cancelled in/);
    assert.equal(await rows.first().getAttribute('class'), '');
    await page.screenshot({ path: join(RESULTS, 'ui-cancelled.png'), fullPage: true });
    // The banner can be dismissed; the screen is still the same session.
    await notice.getByRole('button', { name: 'Dismiss' }).click();
    assert.equal(await notice.count(), 0);
    assert.equal(await attr(page, 'display-state', 'data-connects'), '1');
    await typeAndSee(page, p().edgeLibrary.paths(VM), 'aftercancel4');
  });

  test('the plots\' legends show the latest values without hovering', async () => {
    await page.mouse.move(0, 0);
    const values = await page.locator('[data-testid=plot-compute] .u-legend .u-value').allInnerTexts();
    assert.ok(values.length >= 2, `legend values: ${JSON.stringify(values)}`);
    assert.ok(values.some((v) => /\d/.test(v)), `the vCPU/GPU legend shows no value: ${JSON.stringify(values)}`);
  });

  test('the agent restarts: the open tab reconnects by itself, at the same URL', async () => {
    await p().killAgent(p().edge);
    await waitUntil('the page to see the agent gone', async () => (await attr(page, 'connection', 'data-state')) !== 'open', 30_000, 100);
    await p().startEdge();
    await waitUntil('the page to reconnect', async () => (await attr(page, 'connection', 'data-state')) === 'open', 60_000, 200);
    assert.equal(await uiUrl(p()), url);
    await waitUntil('the location badge to say edge', async () => (await attr(page, 'location', 'data-location')) === 'edge', 30_000);
  });

  test('Stop asks first, then powers the VM off; Start boots it again', async () => {
    await page.getByTestId('stop').click();
    await page.getByTestId('stop-keep').click();
    assert.equal(await attr(page, 'location', 'data-location'), 'edge');
    await page.getByTestId('stop').click();
    await page.getByTestId('stop-confirm').click();
    await waitUntil('the badge to say stopped', async () => (await attr(page, 'location', 'data-location')) === 'stopped', 60_000, 200);
    await page.getByTestId('start').click();
    await waitUntil('the badge to say edge again', async () => (await attr(page, 'location', 'data-location')) === 'edge', 60_000, 200);
    await p().waitGuestReady(VM);
    assert.deepEqual(problems, []);
  });
});

test.describe.serial('the app in auto mode: a crunch goes to the cloud, and the decision log says why', () => {
  const AUTO_VM = 'autovm';
  let pair: AgentPair | undefined;
  let browser: Browser | undefined;

  test.beforeAll(async ({ browser: shared }) => {
    browser = shared;
    pair = await AgentPair.start({ autoPlacement: true });
    await pair.createVmAtEdge(AUTO_VM);
    await pair.waitGuestReady(AUTO_VM);
    // A quiet guest: its integrity workloads would read as a crunch of their own.
    await pair.guestCommand(AUTO_VM, { type: 'mem-stop' });
    await pair.guestCommand(AUTO_VM, { type: 'disk-stop' });
  });

  test.afterAll(async () => {
    await pair?.dispose();
  });

  test('auto mode is on; crunch → the badge goes to core and the log shows the crunch rule', async () => {
    assert.ok(pair !== undefined && browser !== undefined);
    const problems: string[] = [];
    const page = await openPage(browser, await uiUrl(pair), problems);
    await waitUntil('the mode to show auto', async () => (await attr(page, 'placement-mode', 'data-mode')) === 'auto', 30_000);
    assert.equal(await page.getByRole('radio', { name: 'Auto' }).isChecked(), true);
    // One round trip from the buttons teaches the policy's cost model what a move costs here.
    await waitUntil('Send to cloud to be enabled', () => page.getByTestId('send-to-cloud').isEnabled(), 30_000);
    await page.getByTestId('send-to-cloud').click();
    await waitUntil('the badge to say core', async () => (await attr(page, 'location', 'data-location')) === 'core', 5 * 60_000, 200);
    await page.getByTestId('bring-back').click();
    await waitUntil('the badge to say edge', async () => (await attr(page, 'location', 'data-location')) === 'edge', 5 * 60_000, 200);

    await pair.guestCommand(AUTO_VM, { type: 'crunch', seconds: 180 });
    try {
      await waitUntil('the policy to move the crunching VM to the cloud', async () => (await attr(page, 'location', 'data-location')) === 'core', 240_000, 500);
    } catch (error) {
      await page.screenshot({ path: join(RESULTS, 'ui-auto-failed.png'), fullPage: true });
      const log = await page.getByTestId('decision-log').innerText().catch(() => 'no decision log');
      throw new Error(`${(error as Error).message}; latest: ${await page.getByTestId('latest-decision').innerText().catch(() => '?')}; log:\n${log}`, { cause: error });
    }
    const move = page.locator('[data-testid=decision-log] tbody tr[data-action=migrate][data-rule=crunch]');
    await waitUntil('the crunch move in the decision log', async () => (await move.count()) >= 1, 20_000);
    const text = await move.first().innerText();
    assert.match(text, /cloud/);
    assert.match(text, /crunch/);
    const history = page.locator('[data-testid=history] tbody tr[data-to=core]');
    await waitUntil('the policy\'s move in the history table', async () => (await history.count()) >= 2, 20_000);
    assert.match(await history.first().innerText(), /policy/);
    assert.match((await history.first().locator('td.has-reasons').first().getAttribute('title')) ?? '', /crunch/);
    // The figures stay in view with a policy row, at 1280 px as at 1920: no sideways scroll.
    for (const [width, height] of [[1280, 720], [1920, 1080]] as const) {
      await page.setViewportSize({ width, height });
      const overflow = await page.getByTestId('history').evaluate((t) => t.scrollWidth - t.clientWidth);
      assert.ok(overflow <= 1, `at ${width} px the history table scrolls sideways by ${overflow} px`);
      await page.screenshot({ path: join(RESULTS, `ui-${width}.png`), fullPage: true });
    }
    await page.setViewportSize({ width: 1400, height: 1000 });
    // A pin from the page: keep-edge brings it home.
    await page.getByRole('radio', { name: 'Keep on laptop' }).check();
    await waitUntil('the pin to bring it back', async () => (await attr(page, 'location', 'data-location')) === 'edge', 240_000, 500);
    await page.screenshot({ path: join(RESULTS, 'ui-auto.png'), fullPage: true });
    assert.deepEqual(problems, []);
  });
});
