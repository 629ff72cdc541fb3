// The settings file, end to end: two real agents (test/support/agents.ts, with a config.json of the
// test's own), the demo VM, and the app in Debian's Chromium. A valid edit of the file shows in the
// Settings panel at once; an invalid one (bad JSON, then a bad value) shows the banner while nothing
// else changes — the form keeps the last good value, the VM keeps running where it was, `snowbird
// config` exits 1 — and a valid edit, saved the way editors do (temp file + rename), clears it. Then
// the form itself: a bad value is refused next to its field before anything is sent; a good one is
// written to the file. The banner's picture goes to test-results/ui-config-error.png.
import { test } from '@playwright/test';
import assert from 'node:assert/strict';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Page } from '@playwright/test';
import { AgentPair } from '../test/support/agents.ts';
import { REPO_ROOT, runCli } from '../test/support/fixtures.ts';
import { waitUntil } from '../test/support/display.ts';
import { configReplySchema } from '../src/shared/config.ts';

const RESULTS = join(REPO_ROOT, 'test-results');
const VM = 'cfgvm';
const CAP = 'setting-migration.bandwidthCapMbit';

test.describe.serial('the settings file and the app\'s Settings panel', () => {
  let pair: AgentPair | undefined;
  let page: Page;
  const problems: string[] = [];

  const p = (): AgentPair => {
    assert.ok(pair !== undefined);
    return pair;
  };
  const cli = (...args: string[]): ReturnType<typeof runCli> => runCli(['--data', p().edgeLibrary.dataDir, '--config', p().configPath, ...args]);
  const attr = (testId: string, name: string): Promise<string | null> => page.getByTestId(testId).first().getAttribute(name, { timeout: 5_000 }).catch(() => null);
  const capField = (): Promise<string> => page.getByTestId(CAP).inputValue({ timeout: 5_000 });
  const banner = (): Promise<number> => page.getByTestId('config-error').count();
  const vmLocation = async (): Promise<string | undefined> => {
    const r = await cli('status', '--json');
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { vms: { name: string; location: string }[] }).vms.find((v) => v.name === VM)?.location;
  };

  test.beforeAll(async ({ browser }) => {
    await mkdir(RESULTS, { recursive: true });
    pair = await AgentPair.start();
    await pair.createVmAtEdge(VM);
    await pair.waitGuestReady(VM);
    const open = await cli('open', '--no-browser');
    assert.equal(open.code, 0, open.stderr);
    page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' && /Content.Security.Policy|Refused to/i.test(message.text())) problems.push(`console: ${message.text()}`);
    });
    assert.equal((await page.goto(open.stdout.trim()))?.status(), 200);
  });

  test.afterAll(async () => {
    await page?.context().close().catch(() => undefined);
    await pair?.dispose();
  });

  test('an invalid edit of config.json shows the banner and changes nothing; a valid one clears it', async () => {
    await waitUntil('the badge to say edge', async () => (await attr('location', 'data-location')) === 'edge', 30_000);
    await page.getByTestId('settings-toggle').click();
    assert.match((await attr('paired-core', 'data-url')) ?? '', /127\.0\.0\.1:\d+/);

    // A valid edit applies live.
    const path = p().configPath;
    await writeFile(path, '{\n  "migration": { "bandwidthCapMbit": 40 }\n}\n');
    await waitUntil('the form to show the new cap', async () => (await capField()) === '40', 10_000);
    assert.equal(await banner(), 0);

    // Bad JSON: the banner names the file and line; the form and the VM stay as they were.
    await writeFile(path, '{\n  "migration": { "bandwidthCapMbit": 40 },\n  "policy": { "minDwellMs": }\n}\n');
    await waitUntil('the banner', async () => (await banner()) > 0, 10_000);
    assert.match(await page.getByTestId('config-error').innerText(), /config\.json is invalid: .*config\.json:3:\d+: not valid JSON.* the last good config stays in force/);
    assert.equal(await capField(), '40');

    // A bad value: the banner names the field.
    await writeFile(path, '{\n  "migration": { "bandwidthCapMbit": -5 }\n}\n');
    await waitUntil('the banner to name the field', async () => /migration\.bandwidthCapMbit: must be more than 0/.test(await page.getByTestId('config-error').innerText().catch(() => '')), 10_000);
    assert.equal(await capField(), '40');
    assert.equal(await page.getByTestId('settings-save').isDisabled(), true);
    assert.equal(await attr('location', 'data-location'), 'edge');
    assert.equal(await vmLocation(), 'edge');
    await page.screenshot({ path: join(RESULTS, 'ui-config-error.png'), fullPage: true });

    // The CLI says the same, and exits 1; the settings in force are still the last good ones.
    const shown = await cli('config', '--json');
    assert.equal(shown.code, 1, shown.stdout);
    const reply = configReplySchema.parse(JSON.parse(shown.stdout));
    assert.equal(reply.path, path);
    assert.equal(reply.config.migration?.bandwidthCapMbit, 40);
    assert.deepEqual(reply.error?.fields, { 'migration.bandwidthCapMbit': 'must be more than 0' });
    assert.ok(p().edge.log.some((line) => /config: .*the last good settings stay in force/.test(line)), p().edge.log.join('\n'));

    // Fixed the way editors save (a temp file renamed over it): the banner goes, the new value shows.
    await writeFile(`${path}.swp-new`, '{\n  "migration": { "bandwidthCapMbit": 60 }\n}\n');
    await rename(`${path}.swp-new`, path);
    await waitUntil('the banner to go', async () => (await banner()) === 0, 10_000);
    await waitUntil('the form to show the fixed cap', async () => (await capField()) === '60', 10_000);
    assert.equal((await cli('config')).code, 0);
    assert.equal(await vmLocation(), 'edge');
    assert.deepEqual(problems, []);
  });

  test('the form checks each field with the shared schema, and saves a valid change to the file', async () => {
    await page.getByTestId(CAP).fill('-1');
    assert.equal(await page.getByTestId('setting-error-migration.bandwidthCapMbit').innerText(), 'must be more than 0');
    assert.equal(await page.getByTestId('settings-save').isDisabled(), true);
    await page.getByTestId('setting-policy.minDwellMs').fill('soon');
    assert.equal(await page.getByTestId('setting-error-policy.minDwellMs').innerText(), 'must be a number');

    await page.getByTestId(CAP).fill('25');
    await page.getByTestId('setting-policy.minDwellMs').fill('45000');
    assert.equal(await page.getByTestId('setting-error-migration.bandwidthCapMbit').count(), 0);
    await page.getByTestId('settings-save').click();
    await waitUntil('the file to hold the saved settings', async () => (await readFile(p().configPath, 'utf8')).includes('45000'), 10_000);
    assert.deepEqual(JSON.parse(await readFile(p().configPath, 'utf8')), { migration: { bandwidthCapMbit: 25 }, policy: { minDwellMs: 45000 } });
    await waitUntil('the form to show the saved cap', async () => (await capField()) === '25', 10_000);
    assert.equal(await page.getByTestId('errors').count(), 0);
    assert.deepEqual(problems, []);
  });
});
