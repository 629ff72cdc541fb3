// Pairing state, one JSON file (mode 0600) in the site's data directory, validated when loaded.
// Core side: one-time pairing tokens (only their SHA-256 is kept) and the paired peers (certificate
// fingerprint + SHA-256 of the credential issued to them). Edge side: the paired core (address, pinned
// fingerprint, credential). A site normally uses one side, but nothing stops it from using both.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { issuesText } from './common/protocol.ts';
import { TrustStoreError } from './errors.ts';
import { writePrivate } from './identity.ts';

export const TRUST_FILE = 'link-trust.json';
export const DEFAULT_TOKEN_TTL_MS = 60 * 60 * 1000;
/** Outstanding tokens kept at most; creating one more drops the oldest. */
export const MAX_TOKENS = 64;

const fingerprintSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/);
const hexHash = z.string().regex(/^[0-9a-f]{64}$/);
const isoDate = z.iso.datetime();

const pairedPeerSchema = z.object({
  name: z.string().min(1).max(128),
  certFingerprint: fingerprintSchema,
  credentialHash: hexHash,
  pairedAt: isoDate,
});
export type PairedPeer = z.infer<typeof pairedPeerSchema>;

const corePairingSchema = z.object({
  /** host:port of the core's link listener (IPv6 hosts in brackets). */
  url: z.string().min(3).max(300),
  fingerprint: fingerprintSchema,
  credential: z.string().min(16).max(512),
  /** The core's site name, as it told us at pairing. */
  name: z.string().min(1).max(128),
  pairedAt: isoDate,
});
export type CorePairing = z.infer<typeof corePairingSchema>;

const tokenSchema = z.object({ hash: hexHash, createdAt: isoDate, expiresAt: isoDate });
type StoredToken = z.infer<typeof tokenSchema>;

const fileSchema = z.object({
  version: z.literal(1),
  tokens: z.array(tokenSchema).max(1000),
  peers: z.array(pairedPeerSchema).max(10_000),
  core: corePairingSchema.nullable(),
});
type TrustFile = z.infer<typeof fileSchema>;

export interface PairingTokenInfo {
  /** First 12 hex digits of the token's SHA-256: enough to tell tokens apart, useless to pair with. */
  id: string;
  createdAt: Date;
  expiresAt: Date;
}

export type CredentialCheck =
  | { ok: true; peer: PairedPeer }
  | { ok: false; reason: 'not-paired' }
  | { ok: false; reason: 'unauthorized'; peer: PairedPeer };

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** A fresh random secret (32 bytes, base64url): credentials and generated tokens. */
export function randomSecret(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}

export class TrustStore {
  readonly path: string;
  #state: TrustFile;
  /** Mutations run one at a time, each persisted before the next starts. */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(path: string, state: TrustFile) {
    this.path = path;
    this.#state = state;
  }

  /** Reads `<dataDir>/link-trust.json` (an empty store if it does not exist yet). */
  static async load(dataDir: string): Promise<TrustStore> {
    const path = join(dataDir, TRUST_FILE);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        return new TrustStore(path, { version: 1, tokens: [], peers: [], core: null });
      }
      throw new TrustStoreError(path, `cannot read pairing state ${path}: ${(error as Error).message}`, error);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (error) {
      throw corrupt(path, `not JSON (${(error as Error).message})`, error);
    }
    const parsed = fileSchema.safeParse(json);
    if (!parsed.success) throw corrupt(path, issuesText(parsed.error), parsed.error);
    return new TrustStore(path, parsed.data);
  }

  // ---- core side: tokens ----

  /**
   * A one-time pairing token, valid for `ttlMs` (default 1 h). `token` lets the caller choose it (e.g.
   * the edge that starts an embedded core hands one over); otherwise a random one is made. The token
   * itself is returned once and never stored.
   */
  async createToken(options: { ttlMs?: number; token?: string; now?: Date } = {}): Promise<{ token: string } & PairingTokenInfo> {
    const token = options.token ?? randomSecret(18);
    if (token.length < 16 || token.length > 256) throw new RangeError('a pairing token must be 16-256 characters');
    const now = options.now ?? new Date();
    const ttlMs = options.ttlMs ?? DEFAULT_TOKEN_TTL_MS;
    if (!(ttlMs > 0)) throw new RangeError('token ttlMs must be positive');
    const stored: StoredToken = {
      hash: sha256Hex(token),
      createdAt: now.toISOString(),
      expiresAt: new Date(now.getTime() + ttlMs).toISOString(),
    };
    await this.#mutate((state) => {
      const tokens = live(state.tokens, now).filter((t) => t.hash !== stored.hash);
      tokens.push(stored);
      return { ...state, tokens: tokens.slice(-MAX_TOKENS) };
    });
    return { token, ...tokenInfo(stored) };
  }

  /** Unexpired tokens, oldest first. */
  listTokens(now: Date = new Date()): PairingTokenInfo[] {
    return live(this.#state.tokens, now).map(tokenInfo);
  }

  async revokeTokens(): Promise<void> {
    await this.#mutate((state) => ({ ...state, tokens: [] }));
  }

  /**
   * Pairing: finds an unexpired token for which `matches(sha256HexOfToken)` holds, consumes it and
   * records `peer` (replacing an earlier pairing of the same certificate), persisted together.
   * False when no token matched (unknown, expired or already used).
   */
  async redeemToken(matches: (tokenHash: string) => boolean, peer: PairedPeer, now: Date = new Date()): Promise<boolean> {
    let redeemed = false;
    await this.#mutate((state) => {
      const tokens = live(state.tokens, now);
      const index = tokens.findIndex((t) => matches(t.hash));
      if (index === -1) return undefined;
      redeemed = true;
      tokens.splice(index, 1);
      const peers = state.peers.filter((p) => p.certFingerprint !== peer.certFingerprint);
      peers.push(pairedPeerSchema.parse(peer));
      return { ...state, tokens, peers };
    });
    return redeemed;
  }

  // ---- core side: peers ----

  peers(): PairedPeer[] {
    return this.#state.peers.map((p) => ({ ...p }));
  }

  findPeer(certFingerprint: string): PairedPeer | undefined {
    const peer = this.#state.peers.find((p) => p.certFingerprint === certFingerprint);
    return peer === undefined ? undefined : { ...peer };
  }

  /** Forgets a peer by certificate fingerprint or name; returns how many were removed. */
  async removePeer(fingerprintOrName: string): Promise<number> {
    let removed = 0;
    await this.#mutate((state) => {
      const peers = state.peers.filter((p) => p.certFingerprint !== fingerprintOrName && p.name !== fingerprintOrName);
      removed = state.peers.length - peers.length;
      return removed === 0 ? undefined : { ...state, peers };
    });
    return removed;
  }

  /** Is `credential` the one issued to the peer with this certificate? Constant-time comparison. */
  checkCredential(certFingerprint: string, credential: string | undefined): CredentialCheck {
    const peer = this.findPeer(certFingerprint);
    if (peer === undefined) return { ok: false, reason: 'not-paired' };
    if (credential === undefined) return { ok: false, reason: 'unauthorized', peer };
    const given = createHash('sha256').update(credential, 'utf8').digest();
    const expected = Buffer.from(peer.credentialHash, 'hex');
    return timingSafeEqual(given, expected) ? { ok: true, peer } : { ok: false, reason: 'unauthorized', peer };
  }

  // ---- edge side ----

  get core(): CorePairing | undefined {
    return this.#state.core === null ? undefined : { ...this.#state.core };
  }

  async setCore(pairing: CorePairing): Promise<void> {
    const core = corePairingSchema.parse(pairing);
    await this.#mutate((state) => ({ ...state, core }));
  }

  async forgetCore(): Promise<void> {
    await this.#mutate((state) => ({ ...state, core: null }));
  }

  /** Applies `change` (undefined = nothing to do) and persists the result before the next mutation. */
  #mutate(change: (state: TrustFile) => TrustFile | undefined): Promise<void> {
    const run = this.#queue.then(async () => {
      const next = change(structuredClone(this.#state));
      if (next === undefined) return;
      await mkdir(join(this.path, '..'), { recursive: true, mode: 0o700 });
      try {
        await writePrivate(this.path, `${JSON.stringify(next, null, 2)}\n`);
      } catch (error) {
        throw new TrustStoreError(this.path, `cannot write pairing state ${this.path}: ${(error as Error).message}`, error);
      }
      this.#state = next;
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

function corrupt(path: string, detail: string, cause: unknown): TrustStoreError {
  return new TrustStoreError(
    path,
    `pairing state ${path} is corrupt (${detail}). Fix the file, or move it away to start over ` +
      `(this site then forgets its pairings and every peer must pair again).`,
    cause,
  );
}

function live(tokens: StoredToken[], now: Date): StoredToken[] {
  return tokens.filter((t) => Date.parse(t.expiresAt) > now.getTime());
}

function tokenInfo(t: StoredToken): PairingTokenInfo {
  return { id: t.hash.slice(0, 12), createdAt: new Date(t.createdAt), expiresAt: new Date(t.expiresAt) };
}
