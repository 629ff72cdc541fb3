// `npm run build:electron`: bundles the Electron shell (electron/) into dist/electron/ with esbuild:
// main.js (ESM, the main process: the shell, the local API client, the shared contract) and
// preload.cjs (CommonJS, because a sandboxed preload cannot be an ES module). `electron` itself stays
// external: Electron provides it at run time. It needs the renderer too (`npm run build:ui`), which
// the window loads from dist/ui/. dist/ is built, never committed. This runs no Electron.
import { build, type BuildOptions } from 'esbuild';
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const source = join(root, 'electron');
const out = join(root, 'dist', 'electron');

const common = {
  absWorkingDir: root,
  bundle: true,
  platform: 'node',
  // Floors below Electron 45's Node and Chromium: what these produce runs there.
  target: ['node22', 'chrome140'],
  external: ['electron'],
  sourcemap: 'linked',
  logLevel: 'warning',
  metafile: true,
} as const satisfies BuildOptions;

const started = Date.now();
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const results = await Promise.all([
  build({ ...common, entryPoints: [join(source, 'main.ts')], outfile: join(out, 'main.js'), format: 'esm' }),
  build({ ...common, entryPoints: [join(source, 'preload.ts')], outfile: join(out, 'preload.cjs'), format: 'cjs' }),
]);
const bytes = results.flatMap((r) => Object.entries(r.metafile.outputs)).filter(([file]) => !file.endsWith('.map')).reduce((total, [, o]) => total + o.bytes, 0);
process.stdout.write(`built the Electron shell into ${out} (${(bytes / 1024).toFixed(0)} KiB) in ${Date.now() - started} ms\n`);
