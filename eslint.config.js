// Layering rules: each runtime may import only what it can run. A wrong import fails `npm run lint`
// (and the browser tsconfig), not a review. See docs/architecture.md, "Runtimes and layering".
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';

const nodeBuiltins = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];

/** Modules that do I/O: banned in pure code (`src/shared`, any `common/` folder) and the renderer. */
const ioModules = [...nodeBuiltins, 'pino', 'commander', 'electron'];

const banned = (names, message) => names.map((name) => ({ name, message }));

export default tseslint.config(
  { ignores: ['node_modules/**', '.cache/**', 'test/fixtures/**', 'guest/out/**'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    files: ['**/*.ts', '**/*.tsx'],
    rules: {
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/renderer/**'],
    rules: {
      'no-restricted-imports': ['error', {
        paths: banned(ioModules, 'The renderer runs in a browser sandbox: no Node built-ins or I/O modules. Go through the API in src/shared.'),
        patterns: [{ group: ['**/main/**', '**/migrator/**', '**/display/**', '**/interaction-detect/**', '!**/common/**'], message: 'The renderer may import only src/shared and pure common/ modules.' }],
      }],
    },
  },
  {
    files: ['src/shared/**', 'src/**/common/**'],
    rules: {
      'no-restricted-imports': ['error', {
        paths: banned(ioModules, 'Pure modules (src/shared, common/ folders) do no I/O, so they can be tested on recorded data and run in any runtime.'),
        patterns: [{ group: ['**/main/**', '**/renderer/**', '**/migrator/*', '**/display/*', '**/interaction-detect/*', '!**/common/**', '!**/shared/**'], message: 'Pure modules may import only other pure modules (src/shared, common/).' }],
      }],
    },
  },
  {
    files: ['src/migrator/**', 'src/display/**', 'src/interaction-detect/**'],
    ignores: ['src/**/common/**'],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [{ group: ['**/main/**', '**/renderer/**'], message: 'Libraries below the agent never import the agent (src/main) or the renderer.' }],
      }],
    },
  },
);
