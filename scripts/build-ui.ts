// `npm run build:ui`: bundles the renderer (src/renderer/) into dist/ui/ with esbuild — app.js (React,
// noVNC, uPlot, the shared contract), app.css, index.html — which the edge agent serves (src/main/ui-server.ts).
// dist/ is built, never committed; `npm test` runs this first.
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const source = join(root, 'src', 'renderer');
const out = join(root, 'dist', 'ui');

const started = Date.now();
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const result = await build({
  absWorkingDir: root,
  // app.js and app.css (uPlot's styles and ours).
  entryPoints: [{ in: join(source, 'main.tsx'), out: 'app' }, { in: join(source, 'styles.css'), out: 'app' }],
  outdir: out,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  // Chromium (the app's window), and noVNC uses top-level await.
  target: ['chrome120'],
  jsx: 'automatic',
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
  metafile: true,
});
await copyFile(join(source, 'index.html'), join(out, 'index.html'));
const bytes = Object.entries(result.metafile.outputs).filter(([file]) => !file.endsWith('.map')).reduce((total, [, o]) => total + o.bytes, 0);
process.stdout.write(`built the app into ${out} (${(bytes / 1024).toFixed(0)} KiB) in ${Date.now() - started} ms\n`);
