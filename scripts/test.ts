// `npm test`: type-check, lint, build the app (dist/ui, which the e2e tests load), then unit and
// integration tests (node:test) and the app's e2e tests (Playwright's runner, e2e/), ending with one
// summary line
// "N passed, N failed, N skipped" (steps that are not test files count as one test each).
import { spawnSync } from 'node:child_process';
import { glob } from 'node:fs/promises';
import { readFileSync, rmSync } from 'node:fs';
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { resolve } from 'node:path';
import { finished } from 'node:stream/promises';

const root = resolve(import.meta.dirname, '..');
const bin = (name: string): string => resolve(root, 'node_modules', '.bin', name);

let passed = 0;
let failed = 0;
let skipped = 0;

function step(title: string, command: string, args: string[]): void {
  process.stdout.write(`\n▶ ${title}: ${[command.replace(`${root}/`, ''), ...args].join(' ')}\n`);
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' });
  if (result.status === 0) {
    passed += 1;
    process.stdout.write(`✔ ${title}\n`);
  } else {
    failed += 1;
    process.stdout.write(`✖ ${title} failed\n`);
  }
}

step('type-check (node)', bin('tsc'), ['-p', 'tsconfig.json', '--noEmit']);
step('type-check (browser)', bin('tsc'), ['-p', 'tsconfig.browser.json', '--noEmit']);
step('lint', bin('eslint'), ['.']);
step('build the app', process.execPath, [resolve(root, 'scripts', 'build-ui.ts')]);

// Arguments pick files: node:test patterns, and e2e/ specs for Playwright.
const only = process.argv.slice(2);
const e2eOnly = only.filter((pattern) => pattern.startsWith('e2e/'));
const patterns = only.length > 0 ? only.filter((pattern) => !pattern.startsWith('e2e/')) : ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'];
const files: string[] = [];
for (const pattern of patterns) {
  for await (const file of glob(pattern, { cwd: root })) files.push(resolve(root, file));
}
files.sort();

if (files.length > 0) await nodeTests(files);
if (only.length === 0 || e2eOnly.length > 0) e2eTests(e2eOnly);

process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
process.exitCode = failed === 0 ? 0 : 1;

async function nodeTests(files: string[]): Promise<void> {
  process.stdout.write(`\n▶ tests: ${files.length} files\n`);
  // One file at a time: integration tests boot QEMU guests under TCG and the machine has two cores.
  const stream = run({ files, concurrency: 1, cwd: root });
  stream.on('test:pass', (data) => {
    // A skipped suite (e.g. the Electron shell's where no Electron binary is installed) counts once.
    if (data.details.type === 'suite') {
      if (data.skip) skipped += 1;
      return;
    }
    if (data.skip || data.todo) skipped += 1;
    else passed += 1;
  });
  stream.on('test:fail', (data) => {
    // A suite fails when a test inside fails (already counted) or when its own hook fails (count it).
    const error = data.details.error as { failureType?: string };
    if (data.details.type === 'suite' && error.failureType === 'subtestsFailed') return;
    failed += 1;
  });
  const report = stream.compose(spec);
  report.pipe(process.stdout, { end: false });
  await finished(report);
}

/** The app's e2e specs under Playwright's runner; its JSON report gives the counts. */
function e2eTests(specs: string[]): void {
  const results = resolve(root, 'test-results', 'e2e', 'results.json');
  rmSync(results, { force: true });
  process.stdout.write(`\n▶ e2e (Playwright): ${specs.length > 0 ? specs.join(' ') : 'e2e/'}\n`);
  const run = spawnSync(process.execPath, [resolve(root, 'node_modules', '@playwright', 'test', 'cli.js'), 'test', ...specs], { cwd: root, stdio: 'inherit' });
  let stats: { expected: number; unexpected: number; flaky: number; skipped: number } | undefined;
  try {
    stats = (JSON.parse(readFileSync(results, 'utf8')) as { stats: typeof stats }).stats;
  } catch {
    stats = undefined;
  }
  if (stats === undefined) {
    failed += 1;
    process.stdout.write(`✖ e2e: Playwright wrote no report (exit ${run.status})\n`);
    return;
  }
  passed += stats.expected + stats.flaky;
  failed += stats.unexpected + (run.status !== 0 && stats.unexpected === 0 ? 1 : 0);
  skipped += stats.skipped;
}
