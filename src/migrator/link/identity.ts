// The site's TLS identity: a self-signed ECDSA P-256 certificate (CN = site name, 10 years) and its
// private key, created on first run and kept as PEM files (mode 0600) in a private directory. Peers pin
// the certificate by the SHA-256 of its DER, so losing or replacing these files means pairing again.
// @peculiar/x509's dependency tsyringe needs the Reflect metadata API.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash, createPrivateKey, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NAME_PATTERN } from './common/protocol.ts';
import { SiteIdentityError } from './errors.ts';

export const KEY_FILE = 'site.key';
export const CERT_FILE = 'site.crt';
const VALIDITY_YEARS = 10;

export interface SiteIdentity {
  /** The certificate's common name (the site name at creation). */
  name: string;
  certPem: string;
  keyPem: string;
  /** `sha256:` + hex of the certificate's DER. */
  fingerprint: string;
  notAfter: Date;
}

/** `sha256:` + lowercase hex of the certificate's DER (given as PEM text or as DER bytes). */
export function fingerprint(cert: string | Uint8Array): string {
  const der = typeof cert === 'string' ? pemToDer(cert) : cert;
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

/** A fingerprint as users may type it: `sha256:` prefix optional, colons and case ignored. */
export function normalizeFingerprint(text: string): string {
  const hex = text.trim().toLowerCase().replace(/^sha256:/, '').replaceAll(':', '');
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new TypeError(`not a SHA-256 fingerprint: "${text.slice(0, 120)}"`);
  return `sha256:${hex}`;
}

function pemToDer(pem: string): Uint8Array {
  const match = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/.exec(pem);
  if (match?.[1] === undefined) throw new TypeError('not a PEM certificate');
  return Buffer.from(match[1].replace(/\s+/g, ''), 'base64');
}

/** Loads the identity in `dir`, creating it (and `dir`, mode 0700) on first run. */
export async function loadOrCreateIdentity(dir: string, siteName: string): Promise<SiteIdentity> {
  const existing = await readIdentityFiles(dir);
  if (existing !== undefined) return existing;
  return createIdentity(dir, siteName);
}

/** Loads an existing identity; SiteIdentityError if there is none or it is broken. */
export async function loadIdentity(dir: string): Promise<SiteIdentity> {
  const existing = await readIdentityFiles(dir);
  if (existing === undefined) {
    throw new SiteIdentityError(join(dir, CERT_FILE), `no site identity in ${dir}: start the agent once to create one`);
  }
  return existing;
}

async function readIdentityFiles(dir: string): Promise<SiteIdentity | undefined> {
  const keyPath = join(dir, KEY_FILE);
  const certPath = join(dir, CERT_FILE);
  const [keyPem, certPem] = await Promise.all([readIfExists(keyPath), readIfExists(certPath)]);
  if (certPem === undefined) {
    // A key without a certificate is a creation cut short: nobody can have pinned it, so start over.
    return undefined;
  }
  if (keyPem === undefined) {
    throw new SiteIdentityError(
      keyPath,
      `${certPath} exists but its private key ${keyPath} is missing: restore the key, or delete ${certPath} ` +
        `to create a new identity (every peer must then pair with this site again)`,
    );
  }
  // The key must stay owner-only even if someone loosened it.
  const mode = (await stat(keyPath)).mode & 0o777;
  if ((mode & 0o077) !== 0) await chmod(keyPath, 0o600);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) {
      throw new Error('the private key does not belong to the certificate');
    }
  } catch (error) {
    throw new SiteIdentityError(
      certPath,
      `site identity in ${dir} is unreadable (${error instanceof Error ? error.message : String(error)}): ` +
        `restore ${KEY_FILE} and ${CERT_FILE}, or delete both to create a new identity (peers must then pair again)`,
      error,
    );
  }
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? '';
  return { name: cn, certPem, keyPem, fingerprint: fingerprint(new Uint8Array(cert.raw)), notAfter: new Date(cert.validTo) };
}

async function createIdentity(dir: string, siteName: string): Promise<SiteIdentity> {
  if (!NAME_PATTERN.test(siteName)) {
    throw new TypeError(`site name "${siteName.slice(0, 80)}" must be 1-128 letters, digits, ".", "_", ":" or "-"`);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const crypto = webcrypto as unknown as NonNullable<Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[1]>;
  const algorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await crypto.subtle.generateKey(algorithm, true, ['sign', 'verify']);
  const notBefore = new Date(Date.now() - 5 * 60_000);
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + VALIDITY_YEARS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
      name: `CN=${siteName}`,
      notBefore,
      notAfter,
      signingAlgorithm: algorithm,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      ],
    },
    crypto,
  );
  const pkcs8 = await crypto.subtle.exportKey('pkcs8', keys.privateKey);
  const keyPem = x509.PemConverter.encode(pkcs8, 'PRIVATE KEY');
  const certPem = cert.toString('pem');
  // Key first, certificate last, each through a temp file: a crash leaves either nothing or a key
  // without a certificate, which the next run replaces.
  await writePrivate(join(dir, KEY_FILE), `${keyPem.trim()}\n`);
  await writePrivate(join(dir, CERT_FILE), `${certPem.trim()}\n`);
  return { name: siteName, certPem: `${certPem.trim()}\n`, keyPem: `${keyPem.trim()}\n`, fingerprint: fingerprint(new Uint8Array(cert.rawData)), notAfter };
}

/** Writes `text` to `path` with mode 0600 via a temp file and rename. */
export async function writePrivate(path: string, text: string): Promise<void> {
  const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, text, { mode: 0o600, flag: 'wx' });
    await chmod(temp, 0o600);
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SiteIdentityError(path, `cannot read ${path}: ${(error as Error).message}`, error);
  }
}
