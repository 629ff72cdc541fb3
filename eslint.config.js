// Lint setup. The `snowbird/layering` rule keeps runtimes apart (as VS Code's code-layering rule does):
// a wrong import fails `npm run lint`, not a review. See docs/architecture.md, "Runtimes and layering".
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';
import { dirname, relative, resolve, sep } from 'node:path';

const root = import.meta.dirname;
const nodeBuiltins = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
/** Packages that do I/O or need a Node/Electron runtime. */
const ioPackages = new Set(['commander', 'electron', 'node-ipc', 'chokidar', 'pino']);

/** Which runtime a repository file belongs to, from its path. */
function layerOf(file) {
  const p = file.split(sep).join('/');
  if (p.startsWith('src/shared/') || /^src\/.*\/common\//.test(p)) return 'pure';
  if (p.startsWith('src/renderer/')) return 'browser';
  if (/^src\/(migrator|display|interaction-detect)\//.test(p)) return 'library';
  if (p.startsWith('electron/')) return 'electron';
  return 'any';
}

/** The agent modules the Electron shell may use: the local API's client and where it finds the agent (it talks to the agent, never runs it). */
const electronAgentClient = new Set(['src/main/local-api/client.ts', 'src/main/local-api/paths.ts']);

const messages = {
  pureIo: 'Pure modules (src/shared, common/ folders) do no I/O, so they run anywhere and are tested on recorded data: "{{source}}" is not allowed here.',
  pureImport: 'Pure modules may import only other pure modules (src/shared, common/ folders): "{{source}}" is {{layer}} code.',
  browserIo: 'The renderer runs in a browser sandbox: no Node built-ins or I/O packages ("{{source}}"). Go through the API contract in src/shared.',
  browserImport: 'The renderer may import only src/shared, pure common/ modules and itself: "{{source}}" is {{layer}} code.',
  libraryUp: 'Libraries below the agent never import the agent (src/main) or the renderer: "{{source}}".',
  electronImport: 'The Electron shell imports only the API contract (src/shared), pure modules and the local API client (src/main/local-api/client.ts, paths.ts): "{{source}}" is {{layer}} code.',
};

const layeringRule = {
  meta: { type: 'problem', schema: [], messages },
  create(context) {
    const fromFile = relative(root, context.filename);
    const from = layerOf(fromFile);
    if (from === 'any') return {};
    const check = (node, source) => {
      if (typeof source !== 'string') return;
      const report = (messageId, data = {}) => context.report({ node, messageId, data: { source, ...data } });
      const relativeSpecifier = source.startsWith('.');
      if (!relativeSpecifier) {
        const pkg = source.startsWith('@') ? source.split('/').slice(0, 2).join('/') : source.split('/')[0];
        const io = nodeBuiltins.has(source) || nodeBuiltins.has(pkg) || ioPackages.has(pkg);
        if (io && from === 'pure') report('pureIo');
        if (io && from === 'browser') report('browserIo');
        return;
      }
      const target = relative(root, resolve(dirname(context.filename), source));
      const to = layerOf(target);
      const toMain = target.startsWith(`src${sep}main`);
      if (from === 'pure' && to !== 'pure') report('pureImport', { layer: toMain ? 'agent' : to });
      if (from === 'browser' && to !== 'pure' && to !== 'browser') report('browserImport', { layer: toMain ? 'agent' : to });
      if (from === 'library' && (toMain || to === 'browser')) report('libraryUp');
      const toAgentClient = electronAgentClient.has(target.split(sep).join('/'));
      if (from === 'electron' && to !== 'pure' && to !== 'electron' && !toAgentClient) report('electronImport', { layer: toMain ? 'agent' : to });
    };
    return {
      ImportDeclaration: (node) => check(node.source, node.source.value),
      ExportNamedDeclaration: (node) => node.source && check(node.source, node.source.value),
      ExportAllDeclaration: (node) => check(node.source, node.source.value),
      ImportExpression: (node) => node.source.type === 'Literal' && check(node.source, node.source.value),
    };
  },
};

export default tseslint.config(
  { ignores: ['node_modules/**', '.cache/**', '.scratch/**', 'test/fixtures/**', 'test-results/**', 'dist/**'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    files: ['**/*.ts', '**/*.tsx'],
    plugins: { snowbird: { rules: { layering: layeringRule } } },
    rules: {
      'snowbird/layering': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
);
