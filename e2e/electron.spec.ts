// The Electron shell end to end: two real agents (test/support/agents.ts) with the demo guest at the
// edge, and the built shell (dist/electron/, built here; dist/ui/ from `npm run build:ui`) launched
// through Playwright's Electron driver against the edge agent's data directory. The window loads
// the app from app://snowbird/ with the secure settings (no Node in the page, only `window.snowbird`),
// cannot navigate, open windows or fetch beyond the CSP, shows the VM's badge, screen and samples
// through the IPC bridge, and a move started from it reaches the cloud.
//
// Runs only where the Electron binary is present: Electron downloads it on first launch, and these
// machines have no network. It is found as node_modules/electron/index.js finds it, minus the download
// (findElectronBinary, which `npm start` uses too).
import { test } from '@playwright/test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { _electron as electron, type ElectronApplication, type Page } from '@playwright/test';
import { AgentPair } from '../test/support/agents.ts';
import { REPO_ROOT } from '../test/support/fixtures.ts';
import { findElectronBinary } from '../src/main/app-launcher.ts';
import { canvasSnapshot, waitUntil } from '../test/support/display.ts';

const RESULTS = join(REPO_ROOT, 'test-results');
const APP_URL = 'app://snowbird/index.html';
const VM = 'shellvm';

const SKIP = (await findElectronBinary()) === undefined
  ? 'no Electron binary (node_modules/electron/path.txt and dist/ are absent, ELECTRON_OVERRIDE_DIST_PATH is unset): Electron '
    + 'downloads it on first launch, which this machine cannot do (no network). On a machine with network, `npx electron --version` fetches it.'
  : false;

function run(script: string): void {
  const r = spawnSync(join(REPO_ROOT, 'node_modules', '.bin', 'node'), [join(REPO_ROOT, 'scripts', script)], { cwd: REPO_ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, `${script}: ${r.stdout}${r.stderr}`);
}

const attr = (page: Page, testId: string, name: string): Promise<string | null> =>
  page.getByTestId(testId).first().getAttribute(name, { timeout: 5_000 }).catch(() => null);

test.describe.serial('the Electron shell: the app in its own window, over the local API', () => {
  test.skip(SKIP !== false, SKIP || '');
  let pair: AgentPair | undefined;
  let shell: ElectronApplication | undefined;
  let page: Page;
  let configDir: string | undefined;
  const mainLog: string[] = [];
  /** What the page must not show: page errors, CSP refusals (except the one a test provokes). */
  const problems: string[] = [];
  const refusals: string[] = [];

  test.beforeAll(async () => {
    await mkdir(RESULTS, { recursive: true });
    if (!existsSync(join(REPO_ROOT, 'dist', 'ui', 'index.html'))) run('build-ui.ts');
    run('build-electron.ts');
    pair = await AgentPair.start();
    await pair.createVmAtEdge(VM);
    await pair.waitGuestReady(VM);
    // Electron keeps its profile under $XDG_CONFIG_HOME: a scratch one, not the user's.
    configDir = await mkdtemp(join(tmpdir(), 'sb-electron-'));
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env[key] = value;
    Object.assign(env, { SNOWBIRD_DATA: pair.edgeLibrary.dataDir, XDG_CONFIG_HOME: configDir });
    const headless = !process.env['DISPLAY'] && !process.env['WAYLAND_DISPLAY'];
    // No executablePath: playwright then requires `electron`, which finds the binary findElectronBinary() found, without a download.
    shell = await electron.launch({
      args: [...(headless ? ['--ozone-platform=headless'] : []), join(REPO_ROOT, 'dist', 'electron', 'main.js')],
      env,
      timeout: 60_000,
    });
    shell.process().stderr?.on('data', (chunk: Buffer) => mainLog.push(...chunk.toString().split('\n').filter(Boolean)));
    page = await shell.firstWindow();
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' && /Content.Security.Policy|Refused to/i.test(message.text())) refusals.push(message.text());
    });
  });

  test.afterAll(async () => {
    await shell?.close().catch(() => undefined);
    await pair?.dispose();
    if (configDir !== undefined) await rm(configDir, { recursive: true, force: true });
  });

  test('the window loads the app from its own origin, sandboxed and isolated, with only the bridge exposed', async () => {
    assert.ok(shell !== undefined);
    await page.waitForLoadState('domcontentloaded');
    assert.equal(page.url(), APP_URL);
    // What the window was made with: Electron's getLastWebPreferences, present at run time though no longer typed.
    const preferences = await shell.evaluate(({ BrowserWindow }) => {
      const contents = BrowserWindow.getAllWindows()[0]?.webContents;
      const read: unknown = contents && Reflect.get(contents, 'getLastWebPreferences');
      if (typeof read !== 'function') throw new Error('this Electron has no webContents.getLastWebPreferences: check the window\'s settings another way');
      const p = Reflect.apply(read, contents, []) as Record<string, unknown>;
      return { contextIsolation: p['contextIsolation'], sandbox: p['sandbox'], nodeIntegration: p['nodeIntegration'], webSecurity: p['webSecurity'] };
    });
    assert.deepEqual(preferences, { contextIsolation: true, sandbox: true, nodeIntegration: false, webSecurity: true });
    // No Node in the page; and contextBridge, which works only with contextIsolation, exposed exactly the bridge.
    const globals = await page.evaluate(`({
      require: typeof require, process: typeof process, module: typeof module, buffer: typeof Buffer,
      bridge: Object.keys(window.snowbird ?? {}).sort(),
    })`);
    assert.deepEqual(globals, { require: 'undefined', process: 'undefined', module: 'undefined', buffer: 'undefined', bridge: ['onConnection', 'onPush', 'request'] });
  });

  test('the main process checks every command, as the agent\'s other transports do', async () => {
    const unknown = (await page.evaluate(`window.snowbird.request({ cmd: 'launch-missiles' })`)) as { ok: boolean; error?: { code: string } };
    assert.equal(unknown.ok, false);
    assert.equal(unknown.error?.code, 'unknown-command');
    const invalid = (await page.evaluate(`window.snowbird.request({ cmd: 'migrate', vm: '../etc', to: 'core' })`)) as { ok: boolean; error?: { code: string } };
    assert.equal(invalid.ok, false);
    assert.equal(invalid.error?.code, 'invalid');
    const status = (await page.evaluate(`window.snowbird.request({ cmd: 'status' })`)) as { ok: boolean; result?: { role: string; vms: { name: string }[] } };
    assert.equal(status.ok, true);
    assert.equal(status.result?.role, 'edge');
    assert.deepEqual(status.result?.vms.map((v) => v.name), [VM]);
  });

  test('the window shows the VM on the laptop, its screen and its samples', async () => {
    await waitUntil('the agent connection', async () => (await attr(page, 'connection', 'data-state')) === 'open', 60_000);
    await waitUntil('the location badge to say edge', async () => (await attr(page, 'location', 'data-location')) === 'edge', 30_000);
    await waitUntil('noVNC to connect', async () => (await attr(page, 'display-state', 'data-state')) === 'connected', 30_000);
    await waitUntil('the console on the screen', async () => ((await canvasSnapshot(page))?.lit ?? 0) > 2000, 30_000);
    await waitUntil('some samples in the plots', async () => Number(await attr(page, 'plots', 'data-samples')) > 5, 30_000);
    await page.screenshot({ path: join(RESULTS, 'electron-edge.png') });
    assert.deepEqual(problems, []);
    assert.deepEqual(refusals, []);
    // The shell found the test's agent and did not start one of its own.
    assert.ok(!mainLog.some((line) => /started an edge agent/.test(line)), mainLog.join('\n'));
  });

  test('the page cannot navigate away, open windows or connect beyond the CSP', async () => {
    assert.equal(await page.evaluate(`window.open('https://example.com/') === null`), true);
    await page.evaluate(`location.href = 'https://example.com/'`);
    await sleep(1_000);
    assert.equal(page.url(), APP_URL);
    assert.equal(await page.evaluate(`fetch('http://127.0.0.1:9/').then(() => 'fetched', (error) => error.name)`), 'TypeError');
    await waitUntil('the CSP refusal in the console', () => refusals.some((r) => /connect-src/.test(r) && r.includes('127.0.0.1:9')), 5_000);
  });

  test('Send to cloud from the window: the badge follows the move to the core', async () => {
    await page.getByTestId('send-to-cloud').click();
    await waitUntil('the badge to say moving', async () => (await attr(page, 'location', 'data-location')) === 'moving', 20_000, 50);
    await waitUntil('the badge to say core', async () => (await attr(page, 'location', 'data-location')) === 'core', 5 * 60_000, 200);
    assert.equal(await attr(page, 'display-state', 'data-state'), 'connected');
    await page.screenshot({ path: join(RESULTS, 'electron-core.png') });
    assert.deepEqual(problems, []);
  });
});
