// Pairing state: tokens, paired peers, the paired core; persistence and validation.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { TrustStoreError } from '../../src/migrator/link/errors.ts';
import { TRUST_FILE, TrustStore, sha256Hex, type PairedPeer } from '../../src/migrator/link/trust.ts';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sbl-trust-'));
  dirs.push(dir);
  return dir;
}
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

const FP = `sha256:${'1'.repeat(64)}`;
const FP2 = `sha256:${'2'.repeat(64)}`;

function peer(fingerprint: string, credential: string, name = 'edge'): PairedPeer {
  return { name, certFingerprint: fingerprint, credentialHash: sha256Hex(credential), pairedAt: new Date().toISOString() };
}

/** Redeems `token` the way a plain comparison would (the server compares proofs instead). */
const byToken = (token: string) => (hash: string) => hash === sha256Hex(token);

describe('trust store', () => {
  test('a missing file is an empty store; nothing is written until something changes', async () => {
    const dir = await tempDir();
    const store = await TrustStore.load(dir);
    assert.deepEqual(store.peers(), []);
    assert.deepEqual(store.listTokens(), []);
    assert.equal(store.core, undefined);
    await assert.rejects(stat(join(dir, TRUST_FILE)), { code: 'ENOENT' });
  });

  test('tokens: stored as hashes (file 0600), listed without the secret, redeemed once', async () => {
    const dir = await tempDir();
    const store = await TrustStore.load(dir);
    const { token, id, expiresAt } = await store.createToken();
    assert.ok(token.length >= 20);
    assert.ok(Math.abs(expiresAt.getTime() - Date.now() - 3600_000) < 5_000);
    const text = await readFile(join(dir, TRUST_FILE), 'utf8');
    assert.ok(!text.includes(token), 'the token itself is never stored');
    assert.equal((await stat(join(dir, TRUST_FILE))).mode & 0o777, 0o600);
    assert.deepEqual(store.listTokens().map((t) => t.id), [id]);

    assert.equal(await store.redeemToken(byToken('not-the-token-at-all'), peer(FP, 'cred-aaaaaaaaaaaaaaaa')), false);
    assert.equal(await store.redeemToken(byToken(token), peer(FP, 'cred-aaaaaaaaaaaaaaaa')), true);
    assert.equal(await store.redeemToken(byToken(token), peer(FP2, 'cred-bbbbbbbbbbbbbbbb')), false, 'used once');
    assert.deepEqual(store.listTokens(), []);
    assert.deepEqual(store.peers().map((p) => p.certFingerprint), [FP]);
  });

  test('tokens expire', async () => {
    const store = await TrustStore.load(await tempDir());
    const { token } = await store.createToken({ ttlMs: 60_000 });
    const later = new Date(Date.now() + 61_000);
    assert.deepEqual(store.listTokens(later), []);
    assert.equal(await store.redeemToken(byToken(token), peer(FP, 'cred-aaaaaaaaaaaaaaaa'), later), false);
    assert.equal(store.listTokens().length, 1, 'still valid now');
  });

  test('a caller-chosen token works (the embedded core gets its token from the edge)', async () => {
    const store = await TrustStore.load(await tempDir());
    await store.createToken({ token: 'handed-over-token-123' });
    assert.equal(await store.redeemToken(byToken('handed-over-token-123'), peer(FP, 'cred-aaaaaaaaaaaaaaaa')), true);
    await assert.rejects(store.createToken({ token: 'short' }), RangeError);
  });

  test('credentials: constant-time check, not-paired vs unauthorized; re-pairing replaces', async () => {
    const store = await TrustStore.load(await tempDir());
    const t1 = await store.createToken();
    await store.redeemToken(byToken(t1.token), peer(FP, 'first-credential-xxxx'));
    assert.equal(store.checkCredential(FP, 'first-credential-xxxx').ok, true);
    assert.deepEqual(store.checkCredential(FP, 'wrong-credential-xxxx'), { ok: false, reason: 'unauthorized', peer: store.findPeer(FP) });
    assert.equal(store.checkCredential(FP, undefined).ok, false);
    assert.deepEqual(store.checkCredential(FP2, 'first-credential-xxxx'), { ok: false, reason: 'not-paired' });

    const t2 = await store.createToken();
    await store.redeemToken(byToken(t2.token), peer(FP, 'second-credential-xxx'));
    assert.equal(store.peers().length, 1);
    assert.equal(store.checkCredential(FP, 'first-credential-xxxx').ok, false);
    assert.equal(store.checkCredential(FP, 'second-credential-xxx').ok, true);
    assert.equal(await store.removePeer(FP), 1);
    assert.equal(store.checkCredential(FP, 'second-credential-xxx').ok, false);
  });

  test('everything survives a reload', async () => {
    const dir = await tempDir();
    const store = await TrustStore.load(dir);
    const t = await store.createToken();
    const other = await store.createToken();
    await store.redeemToken(byToken(t.token), peer(FP, 'persisted-credential'));
    await store.setCore({ url: 'core.example:7390', fingerprint: FP2, credential: 'edge-side-credential-1', name: 'core', pairedAt: new Date().toISOString() });

    const reloaded = await TrustStore.load(dir);
    assert.equal(reloaded.checkCredential(FP, 'persisted-credential').ok, true);
    assert.deepEqual(reloaded.listTokens().map((x) => x.id), [other.id]);
    assert.equal(reloaded.core?.credential, 'edge-side-credential-1');
    assert.equal(reloaded.core?.url, 'core.example:7390');
    await reloaded.forgetCore();
    assert.equal((await TrustStore.load(dir)).core, undefined);
  });

  test('concurrent changes are all kept', async () => {
    const dir = await tempDir();
    const store = await TrustStore.load(dir);
    await Promise.all(Array.from({ length: 10 }, () => store.createToken()));
    assert.equal(store.listTokens().length, 10);
    assert.equal((await TrustStore.load(dir)).listTokens().length, 10);
  });

  test('a corrupt file is a clear TrustStoreError, never a silent reset', async () => {
    const dir = await tempDir();
    const path = join(dir, TRUST_FILE);
    await writeFile(path, '{"version":1,"tokens":[],"peers":[');
    await assert.rejects(TrustStore.load(dir), (error: Error) => {
      assert.ok(error instanceof TrustStoreError);
      assert.equal(error.path, path);
      assert.match(error.message, /is corrupt \(not JSON/);
      assert.match(error.message, /move it away to start over/);
      return true;
    });
    await writeFile(path, JSON.stringify({ version: 1, tokens: [], peers: [{ name: 'x', certFingerprint: 'md5:00', credentialHash: 'zz', pairedAt: 'yesterday' }], core: null }));
    await assert.rejects(TrustStore.load(dir), /peers\.0\.certFingerprint/);
  });

  test('sha256Hex is plain SHA-256', () => {
    assert.equal(sha256Hex('abc'), createHash('sha256').update('abc').digest('hex'));
  });
});
