// Proves the runtime boundaries are enforced by the tools, not by review: a renderer file that
// imports a Node built-in fails both the browser type-check and the lint rules, and so does pure code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..', '..');
const fixture = (name: string): string => join(root, 'test', 'fixtures', 'layering', name);

function typecheckAsBrowser(file: string): { status: number | null; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'snowbird-layering-'));
  try {
    const config = join(dir, 'tsconfig.json');
    writeFileSync(config, JSON.stringify({ extends: join(root, 'tsconfig.browser.json'), include: [], files: [file] }));
    const r = spawnSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', config, '--noEmit'], { encoding: 'utf8' });
    return { status: r.status, output: r.stdout + r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function lintAs(pathInRepo: string, source: string): { status: number | null; output: string } {
  const r = spawnSync(join(root, 'node_modules', '.bin', 'eslint'), ['--stdin', '--stdin-filename', pathInRepo], {
    cwd: root,
    input: source,
    encoding: 'utf8',
  });
  return { status: r.status, output: r.stdout + r.stderr };
}

test('browser type-check rejects a renderer file importing node:fs', () => {
  const bad = typecheckAsBrowser(fixture('renderer-imports-fs.ts'));
  assert.notEqual(bad.status, 0);
  assert.match(bad.output, /node:fs/);
});

test('browser type-check accepts browser-only code (control case)', () => {
  const good = typecheckAsBrowser(fixture('renderer-clean.ts'));
  assert.equal(good.status, 0, good.output);
});

test('lint rejects node:fs in src/renderer', () => {
  const r = lintAs('src/renderer/bad.ts', readFileSync(fixture('renderer-imports-fs.ts'), 'utf8'));
  assert.equal(r.status, 1, r.output);
  assert.match(r.output, /snowbird\/layering/);
  assert.match(r.output, /renderer runs in a browser sandbox/);
});

test('lint rejects I/O modules in pure code (common/ folders and src/shared)', () => {
  for (const path of ['src/display/common/bad.ts', 'src/interaction-detect/common/bad.ts', 'src/shared/bad.ts']) {
    const r = lintAs(path, "import { connect } from 'node:net';\nexport const c = connect;\n");
    assert.equal(r.status, 1, `${path}: ${r.output}`);
    assert.match(r.output, /Pure modules/);
  }
});

test('lint rejects pure code importing an I/O module of its own package', () => {
  const r = lintAs('src/migrator/common/bad.ts', "import { VmHandle } from '../qemu/vm.ts';\nexport const v = VmHandle;\n");
  assert.equal(r.status, 1, r.output);
  assert.match(r.output, /Pure modules may import only other pure modules/);
});

test('lint rejects the migrator importing the agent', () => {
  const r = lintAs('src/migrator/bad.ts', "import { VmLibrary } from '../main/vm-library.ts';\nexport const v = VmLibrary;\n");
  assert.equal(r.status, 1, r.output);
  assert.match(r.output, /never import the agent/);
});

test('lint accepts the clean renderer file (control case)', () => {
  const r = lintAs('src/renderer/clean.ts', readFileSync(fixture('renderer-clean.ts'), 'utf8'));
  assert.equal(r.status, 0, r.output);
});
