// The settings file: its schema and messages (src/shared/config.ts), and the service that loads,
// watches and updates it (src/main/config-service.ts) on a temp directory — valid changes apply and
// are announced, invalid ones keep the last good settings and say where they went wrong, updates are
// validated before anything is written and land atomically, and an editor's replace-by-rename is seen.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bandwidthCapBytesPerS,
  configReplySchema,
  effectivePolicyParams,
  mergePatch,
  parseConfigFile,
  patchAt,
} from '../../src/shared/config.ts';
import { DEFAULT_POLICY_PARAMS } from '../../src/shared/placement.ts';
import { ConfigError, ConfigService, locateJsonError, type ConfigChange } from '../../src/main/config-service.ts';

describe('the config schema', () => {
  test('accepts the documented settings and keeps only what is set', () => {
    const parsed = parseConfigFile({ migration: { bandwidthCapMbit: 40, dedup: 'on', chunkStoreMiB: 2048 }, policy: { minDwellMs: 60_000, costMargin: 2 } });
    assert.deepEqual(parsed, { ok: true, config: { migration: { bandwidthCapMbit: 40, dedup: 'on', chunkStoreMiB: 2048 }, policy: { minDwellMs: 60_000, costMargin: 2 } } });
    assert.deepEqual(parseConfigFile({}), { ok: true, config: {} });
  });

  test('says per field what is wrong, in words a user can act on', () => {
    const parsed = parseConfigFile({
      migration: { bandwidthCapMbit: -5, dedup: 'always', chunkStoreMiB: 0.5 },
      policy: { minConfidence: 1.5, maxMoves: 2.5, minDwelMs: 1, gapToleranceMs: 'soon' },
      core: { url: 'x' },
      colour: 'blue',
    });
    assert.ok(!parsed.ok);
    assert.equal(parsed.fields['migration.bandwidthCapMbit'], 'must be more than 0');
    assert.equal(parsed.fields['migration.dedup'], 'must be one of auto, on, off');
    assert.equal(parsed.fields['migration.chunkStoreMiB'], 'must be a whole number');
    assert.equal(parsed.fields['policy.minConfidence'], 'must be at most 1');
    assert.equal(parsed.fields['policy.maxMoves'], 'must be a whole number');
    assert.equal(parsed.fields['policy.gapToleranceMs'], 'must be a number');
    assert.match(parsed.fields['policy.minDwelMs'] ?? '', /^unknown setting; known here: .*minDwellMs/);
    assert.match(parsed.fields['colour'] ?? '', /^unknown setting; known here: migration, policy$/);
    assert.match(parsed.fields['core'] ?? '', /snowbird pair/);
    assert.match(parseConfigFile({ policy: 3 }).ok ? '' : (parseConfigFile({ policy: 3 }) as { fields: Record<string, string> }).fields['policy'] ?? '', /must be an object/);
  });

  test('merge patches: objects merge, null removes, the rest replaces', () => {
    assert.deepEqual(mergePatch({ migration: { bandwidthCapMbit: 40 }, policy: { minDwellMs: 1 } }, { migration: null, policy: { costMargin: 2 } }), { policy: { minDwellMs: 1, costMargin: 2 } });
    assert.deepEqual(patchAt('migration.bandwidthCapMbit', 40), { migration: { bandwidthCapMbit: 40 } });
    assert.throws(() => patchAt('migration..x', 1), /not a setting's key/);
  });

  test('what the agent takes from it: the bandwidth default in bytes/s and the policy over its defaults', () => {
    assert.equal(bandwidthCapBytesPerS({ migration: { bandwidthCapMbit: 40 } }), 5_000_000);
    assert.equal(bandwidthCapBytesPerS({}), undefined);
    const params = effectivePolicyParams({ policy: { minDwellMs: 5_000 } });
    assert.equal(params.minDwellMs, 5_000);
    assert.equal(params.costMargin, DEFAULT_POLICY_PARAMS.costMargin);
    assert.deepEqual(params.intensity, DEFAULT_POLICY_PARAMS.intensity);
  });

  test('JSON errors are located by line and column, with or without V8 naming the position', () => {
    const locate = (text: string): string => {
      try {
        JSON.parse(text);
      } catch (error) {
        const { line, column } = locateJsonError(text, error as Error);
        return `${line}:${column}`;
      }
      return 'valid';
    };
    assert.equal(locate('{\n  "migration": {\n    "bandwidthCapMbit": }\n}'), '3:25'); // "Unexpected token '}'" names no position
    assert.equal(locate('{\n  "a": 1\n  "b": 2\n}'), '3:3'); // V8 names it
    assert.equal(locate('{\n  "a": tru\n}'), '2:11');
  });
});

/** Resolves when `probe` holds, checking every 20 ms. */
async function eventually(what: string, probe: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the config service', () => {
  const dirs: string[] = [];
  const services: ConfigService[] = [];
  after(async () => {
    for (const service of services) await service.close();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  async function open(options: { create?: string; subdir?: boolean } = {}): Promise<{ service: ConfigService; path: string; dir: string; changes: ConfigChange[]; log: string[] }> {
    const dir = await mkdtemp(join(tmpdir(), 'sb-config-'));
    dirs.push(dir);
    const path = options.subdir ? join(dir, 'snowbird', 'config.json') : join(dir, 'config.json');
    if (options.create !== undefined) await writeFile(path, options.create);
    const log: string[] = [];
    const service = await ConfigService.open({ path, log: (line) => log.push(line) });
    services.push(service);
    const changes: ConfigChange[] = [];
    service.onChange((change) => changes.push(change));
    return { service, path, dir, changes, log };
  }

  test('a missing file is the defaults, not an error', async () => {
    const { service } = await open();
    assert.deepEqual(service.current(), {});
    assert.equal(service.error(), undefined);
    assert.equal(effectivePolicyParams(service.current()).minDwellMs, DEFAULT_POLICY_PARAMS.minDwellMs);
  });

  test('a valid change applies and fires onChange once; an invalid one keeps the last good settings and says where', async () => {
    const { service, path, changes, log } = await open({ create: '{"migration": {"bandwidthCapMbit": 40}}' });
    assert.deepEqual(service.current(), { migration: { bandwidthCapMbit: 40 } });

    await writeFile(path, '{"migration": {"bandwidthCapMbit": 60}, "policy": {"minDwellMs": 5000}}');
    await eventually('the change', () => changes.length === 1);
    assert.deepEqual(changes[0]?.config, { migration: { bandwidthCapMbit: 60 }, policy: { minDwellMs: 5000 } });
    assert.equal(changes[0]?.error, undefined);

    // Bad JSON: the last good settings stay; the error names the file, line and column.
    await writeFile(path, '{\n  "migration": {"bandwidthCapMbit": 60},\n  "policy": {"minDwellMs": }\n}\n');
    await eventually('the JSON error', () => changes.length === 2);
    assert.deepEqual(service.current(), { migration: { bandwidthCapMbit: 60 }, policy: { minDwellMs: 5000 } });
    const jsonError = service.error();
    assert.ok(jsonError instanceof ConfigError);
    assert.equal(jsonError.code, 'invalid-config');
    assert.match(jsonError.message, new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3:28: not valid JSON: Unexpected token '}'$`));
    assert.ok(log.some((line) => line.includes('the last good settings stay in force')), log.join('\n'));

    // A schema error: same, with the field.
    await writeFile(path, '{"migration": {"bandwidthCapMbit": -1}}');
    await eventually('the schema error', () => changes.length === 3);
    assert.deepEqual(service.current(), { migration: { bandwidthCapMbit: 60 }, policy: { minDwellMs: 5000 } });
    assert.deepEqual(service.error()?.fields, { 'migration.bandwidthCapMbit': 'must be more than 0' });
    assert.match(service.error()?.message ?? '', /config\.json: migration\.bandwidthCapMbit: must be more than 0$/);
    const reply = configReplySchema.parse(service.reply({ url: '127.0.0.1:7443', name: 'core' }));
    assert.equal(reply.config.migration?.bandwidthCapMbit, 60);
    assert.equal(reply.config.core?.url, '127.0.0.1:7443');
    assert.deepEqual(reply.error?.fields, { 'migration.bandwidthCapMbit': 'must be more than 0' });

    // Fixed: the error clears and the new settings apply.
    await writeFile(path, '{"migration": {"bandwidthCapMbit": 25}}');
    await eventually('the fix', () => changes.length === 4);
    assert.deepEqual(service.current(), { migration: { bandwidthCapMbit: 25 } });
    assert.equal(service.error(), undefined);
    assert.equal(changes[3]?.error, undefined);
  });

  test('an editor\'s save by rename (write a temp file, rename it over) is picked up', async () => {
    const { service, path, dir, changes } = await open({ create: '{}' });
    const temporary = join(dir, '.config.json.swp-like');
    await writeFile(temporary, '{"policy": {"costMargin": 2}}');
    await rename(temporary, path);
    await eventually('the replaced file', () => changes.length === 1);
    assert.deepEqual(service.current(), { policy: { costMargin: 2 } });
    // And again on the new inode.
    await writeFile(temporary, '{"policy": {"costMargin": 3}}');
    await rename(temporary, path);
    await eventually('the second replacement', () => changes.length === 2);
    assert.deepEqual(service.current(), { policy: { costMargin: 3 } });
  });

  test('a file created later, in a directory that did not exist, is picked up; removing it goes back to the defaults', async () => {
    const { service, path, changes } = await open({ subdir: true });
    await (await import('node:fs/promises')).mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, '{"migration": {"bandwidthCapMbit": 8}}');
    await eventually('the new file', () => changes.length === 1, 10_000);
    assert.equal(service.current().migration?.bandwidthCapMbit, 8);
    await rm(path);
    await eventually('the removal', () => changes.length === 2);
    assert.deepEqual(service.current(), {});
  });

  test('update validates before writing, writes atomically, and announces the change once', async () => {
    const { service, path, dir, changes } = await open({ create: '{"policy": {"minDwellMs": 1000}}' });
    const before = await stat(path);

    const refused = await service.update({ migration: { bandwidthCapMbit: 0 }, policy: { nope: 1 } });
    assert.ok(!refused.ok);
    assert.equal(refused.error.code, 'invalid-config');
    assert.deepEqual(Object.keys(refused.error.fields ?? {}).sort(), ['migration.bandwidthCapMbit', 'policy.nope']);
    assert.equal(await readFile(path, 'utf8'), '{"policy": {"minDwellMs": 1000}}', 'nothing written');

    const done = await service.update({ migration: { bandwidthCapMbit: 40 }, policy: { minDwellMs: null } });
    assert.ok(done.ok);
    assert.deepEqual(service.current(), { migration: { bandwidthCapMbit: 40 }, policy: {} });
    assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), { migration: { bandwidthCapMbit: 40 }, policy: {} });
    // A new file renamed into place (another inode), and no temporary file left behind.
    assert.notEqual((await stat(path)).ino, before.ino);
    assert.deepEqual(await readdir(dir), ['config.json']);
    // The watcher sees our own write: no second announcement.
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(changes.length, 1);
  });

  test('update refuses to overwrite a file that is invalid on disk (it may be half an edit)', async () => {
    const { service, path } = await open({ create: '{"policy": ' });
    assert.match(service.error()?.message ?? '', /config\.json:1:12: not valid JSON/);
    const refused = await service.update({ migration: { bandwidthCapMbit: 10 } });
    assert.ok(!refused.ok);
    assert.match(refused.error.message, /fix the file \(or remove it\) before changing settings here/);
    assert.equal(await readFile(path, 'utf8'), '{"policy": ');
  });
});
