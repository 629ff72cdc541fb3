// Site identity: the self-signed certificate and key, created once, loaded later, fingerprinted.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { SiteIdentityError } from '../../src/migrator/link/errors.ts';
import { fingerprint, loadIdentity, loadOrCreateIdentity, normalizeFingerprint } from '../../src/migrator/link/identity.ts';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sbl-id-'));
  dirs.push(dir);
  return dir;
}
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('site identity', () => {
  test('first run creates an ECDSA P-256 self-signed certificate (CN = site name, 10 years), files 0600', async () => {
    const dir = join(await tempDir(), 'id');
    const id = await loadOrCreateIdentity(dir, 'laptop-1');
    assert.equal(id.name, 'laptop-1');
    assert.equal((await stat(join(dir, 'site.key'))).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, 'site.crt'))).mode & 0o777, 0o600);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    const cert = new X509Certificate(await readFile(join(dir, 'site.crt')));
    assert.equal(cert.subject, 'CN=laptop-1');
    assert.equal(cert.issuer, 'CN=laptop-1');
    assert.equal(cert.publicKey.asymmetricKeyType, 'ec');
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal(cert.verify(cert.publicKey), true);
    const years = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / (365.25 * 24 * 3600 * 1000);
    assert.ok(Math.abs(years - 10) < 0.01, `validity ${years} years`);
    // Our fingerprint is the SHA-256 of the DER, as OpenSSL and Node compute it.
    assert.equal(id.fingerprint, normalizeFingerprint(cert.fingerprint256));
    assert.equal(fingerprint(id.certPem), id.fingerprint);
    assert.equal(fingerprint(new Uint8Array(cert.raw)), id.fingerprint);
  });

  test('later runs load the same identity (the name given then does not matter)', async () => {
    const dir = await tempDir();
    const first = await loadOrCreateIdentity(dir, 'core');
    const again = await loadOrCreateIdentity(dir, 'renamed');
    assert.equal(again.fingerprint, first.fingerprint);
    assert.equal(again.name, 'core');
    assert.equal(again.keyPem, first.keyPem);
    assert.equal((await loadIdentity(dir)).fingerprint, first.fingerprint);
  });

  test('a key loosened to 0644 is tightened back to 0600 on load', async () => {
    const dir = await tempDir();
    await loadOrCreateIdentity(dir, 'core');
    await chmod(join(dir, 'site.key'), 0o644);
    await loadIdentity(dir);
    assert.equal((await stat(join(dir, 'site.key'))).mode & 0o777, 0o600);
  });

  test('missing or broken identities give a SiteIdentityError that says what to do', async () => {
    const empty = await tempDir();
    await assert.rejects(loadIdentity(empty), SiteIdentityError);

    const noKey = await tempDir();
    await loadOrCreateIdentity(noKey, 'core');
    await rm(join(noKey, 'site.key'));
    await assert.rejects(loadOrCreateIdentity(noKey, 'core'), (error: Error) => {
      assert.ok(error instanceof SiteIdentityError);
      assert.match(error.message, /private key .* is missing/);
      assert.match(error.message, /pair with this site again/);
      return true;
    });

    const wrongKey = await tempDir();
    const other = await tempDir();
    await loadOrCreateIdentity(wrongKey, 'a');
    await loadOrCreateIdentity(other, 'b');
    await writeFile(join(wrongKey, 'site.key'), await readFile(join(other, 'site.key')));
    await assert.rejects(loadIdentity(wrongKey), /does not belong to the certificate/);
  });

  test('a key without a certificate (creation cut short) is replaced', async () => {
    const dir = await tempDir();
    const first = await loadOrCreateIdentity(dir, 'core');
    await rm(join(dir, 'site.crt'));
    const second = await loadOrCreateIdentity(dir, 'core');
    assert.notEqual(second.fingerprint, first.fingerprint);
  });

  test('site names must be safe', async () => {
    const dir = await tempDir();
    await assert.rejects(loadOrCreateIdentity(join(dir, 'x'), '../evil'), TypeError);
    await assert.rejects(loadOrCreateIdentity(join(dir, 'y'), 'CN=x,O=y'), TypeError);
  });

  test('normalizeFingerprint accepts the usual spellings', () => {
    const hex = 'ab'.repeat(32);
    assert.equal(normalizeFingerprint(`sha256:${hex}`), `sha256:${hex}`);
    assert.equal(normalizeFingerprint(hex.toUpperCase()), `sha256:${hex}`);
    assert.equal(normalizeFingerprint(hex.match(/../g)?.join(':') ?? ''), `sha256:${hex}`);
    assert.throws(() => normalizeFingerprint('sha256:abcd'), TypeError);
  });
});
