// Layer and migration ids become file names: only [a-z0-9-], so none can leave its folder.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assertId, assertSha256, checkId, InvalidIdError } from '../../src/migrator/layers/common/ids.ts';

describe('layer and migration ids', () => {
  test('accepts lowercase letters, digits and dashes', () => {
    for (const id of ['a', '0', 'l-2f1c', 'm-0123456789abcdef', '6e2c4a1e-0b7d-4f7e-9d6a-1c2b3d4e5f60', 'x'.repeat(64)]) {
      assert.equal(checkId('layer', id), undefined, id);
      assert.equal(assertId('migration', id), id);
    }
  });

  test('rejects anything that could name another path, and other alphabets', () => {
    const bad: unknown[] = ['', '.', '..', '../etc', 'a/b', '/abs', 'a\\b', '-lead', 'Upper', 'a_b', 'a.qcow2', 'a b', 'é', 'a\0b', 'x'.repeat(65), 42, null, undefined, {}];
    for (const id of bad) {
      assert.match(checkId('layer', id) ?? '', /layer id/, String(id));
      assert.throws(() => assertId('layer', id), (e: unknown) => e instanceof InvalidIdError && e.kind === 'layer');
    }
  });

  test('the message says what is allowed', () => {
    assert.match(checkId('migration', '../x') ?? '', /a-z, 0-9 and "-"/);
  });

  test('boot images are named by a sha256 in lowercase hex', () => {
    const sha = 'ab'.repeat(32);
    assert.equal(assertSha256(sha), sha);
    for (const bad of ['AB'.repeat(32), 'ab'.repeat(31), `../${'a'.repeat(61)}`, 'g'.repeat(64)]) assert.throws(() => assertSha256(bad), InvalidIdError);
  });
});
