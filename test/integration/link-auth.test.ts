// Pairing and authentication of the peer link over real TLS on 127.0.0.1: the happy path, and every
// refusal, each with a clear error and without any handler running.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { z } from 'zod';
import { LinkClient } from '../../src/migrator/link/client.ts';
import { encodeFrame } from '../../src/migrator/link/common/frames.ts';
import { PeerAuthError, PeerConnectError, PeerDisconnectedError, PeerFingerprintError } from '../../src/migrator/link/errors.ts';
import { loadOrCreateIdentity } from '../../src/migrator/link/identity.ts';
import type { PeerLink } from '../../src/migrator/link/peer-link.ts';
import { LinkServer, type RefusedConnection } from '../../src/migrator/link/server.ts';
import { rawConnect, startTestSites, type TestSites } from '../support/link-testing.ts';
import { TrustStore, sha256Hex } from '../../src/migrator/link/trust.ts';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function sites(options?: Parameters<typeof startTestSites>[0]): Promise<TestSites> {
  const s = await startTestSites(options);
  cleanups.push(() => s.dispose());
  return s;
}

/** Counts handler runs on every core link; the refusal tests assert it stays 0. */
function countingSetup(calls: string[]): (link: PeerLink) => void {
  return (link) => {
    link.handle('ping', z.object({}), () => {
      calls.push(`ping from ${link.peer.name}`);
      return 'pong';
    });
  };
}

function refusals(server: LinkServer): RefusedConnection[] {
  const list: RefusedConnection[] = [];
  server.on('refused', (r) => list.push(r));
  return list;
}

describe('pairing', () => {
  test('token → pair → connect; the credential persists across a reload of the trust state', async () => {
    const s = await sites({ pair: false });
    const { token } = await s.coreTrust.createToken();
    const paired = once(s.server, 'paired');
    const pairing = await s.client.pair(s.url, token, { expectedFingerprint: s.coreIdentity.fingerprint });
    assert.deepEqual((await paired)[0], { name: 'edge', fingerprint: s.edgeIdentity.fingerprint });
    assert.equal(pairing.fingerprint, s.coreIdentity.fingerprint);
    assert.equal(pairing.url, s.server.address);
    assert.equal(pairing.name, 'core');
    assert.match(pairing.credential, /^[A-Za-z0-9_-]{43}$/, '32 random bytes, base64url');
    const record = s.coreTrust.findPeer(s.edgeIdentity.fingerprint);
    assert.equal(record?.name, 'edge');
    assert.equal(record?.credentialHash, sha256Hex(pairing.credential));
    assert.deepEqual(s.coreTrust.listTokens(), [], 'the token is spent');
    await s.edgeTrust.setCore(pairing);

    // Both sites restart: fresh trust stores and identities loaded from disk, a new server.
    await s.server.close();
    const coreIdentity = await loadOrCreateIdentity(s.coreDir, 'ignored');
    const edgeIdentity = await loadOrCreateIdentity(s.edgeDir, 'ignored');
    const server = await LinkServer.listen({ identity: coreIdentity, trust: await TrustStore.load(s.coreDir), setup: (l) => l.handle('ping', z.object({}), () => 'pong') });
    cleanups.push(() => server.close());
    const stored = (await TrustStore.load(s.edgeDir)).core;
    assert.ok(stored !== undefined);
    const link = await new LinkClient({ identity: edgeIdentity }).connect({ ...stored, url: server.address });
    assert.equal(await link.request('ping'), 'pong');
    assert.equal(link.peer.name, 'core');
    await link.close();
  });

  test('without a known fingerprint: trust on first use, the token proving both sides', async () => {
    const s = await sites({ pair: false });
    const { token } = await s.coreTrust.createToken();
    const pairing = await s.client.pair(s.url, token);
    assert.equal(pairing.fingerprint, s.coreIdentity.fingerprint);
    s.pairing = pairing;
    const { edge } = await s.connect();
    assert.equal(edge.peer.fingerprint, s.coreIdentity.fingerprint);
  });

  test('pairing again replaces the credential; the old one stops working', async () => {
    const s = await sites();
    const old = s.pairing;
    assert.ok(old !== undefined);
    const { token } = await s.coreTrust.createToken();
    const fresh = await s.client.pair(s.url, token);
    assert.notEqual(fresh.credential, old.credential);
    await assert.rejects(s.client.connect(old), (e: Error) => e instanceof PeerAuthError && e.code === 'unauthorized');
    const link = await s.client.connect(fresh);
    await link.close();
  });
});

describe('refused', () => {
  test('wrong token, reused token, expired token: bad-token, nothing recorded', async () => {
    const calls: string[] = [];
    const s = await sites({ pair: false, server: { setup: countingSetup(calls) } });
    await assert.rejects(s.client.pair(s.url, 'this-is-not-a-valid-token'), (e: Error) => {
      assert.ok(e instanceof PeerAuthError);
      assert.equal(e.code, 'bad-token');
      assert.match(e.message, /rejected the pairing token \(unknown, expired or already used\)/);
      assert.match(e.message, new RegExp(`snowbird pair https://${s.server.address.replaceAll('.', '\\.')} --token`));
      return true;
    });
    assert.deepEqual(s.coreTrust.peers(), []);

    const { token } = await s.coreTrust.createToken();
    await s.client.pair(s.url, token);
    const otherEdge = new LinkClient({ identity: await loadOrCreateIdentity(join(s.root, 'edge2'), 'edge2') });
    await assert.rejects(otherEdge.pair(s.url, token), (e: Error) => e instanceof PeerAuthError && e.code === 'bad-token');
    assert.deepEqual(s.coreTrust.peers().map((p) => p.name), ['edge']);

    const expired = await s.coreTrust.createToken({ ttlMs: 1 });
    await new Promise((r) => setTimeout(r, 5));
    await assert.rejects(otherEdge.pair(s.url, expired.token), (e: Error) => e instanceof PeerAuthError && e.code === 'bad-token');
    assert.deepEqual(calls, []);
  });

  test('pairing with an expected fingerprint that does not match stops before the token is used', async () => {
    const s = await sites({ pair: false });
    const { token, id } = await s.coreTrust.createToken();
    const wrong = `sha256:${'0'.repeat(64)}`;
    await assert.rejects(s.client.pair(s.url, token, { expectedFingerprint: wrong }), (e: Error) => {
      assert.ok(e instanceof PeerFingerprintError);
      assert.equal(e.expected, wrong);
      assert.equal(e.actual, s.coreIdentity.fingerprint);
      return true;
    });
    assert.deepEqual(s.coreTrust.listTokens().map((t) => t.id), [id], 'token still unused');
  });

  test('an unpaired client certificate: not-paired, with what to do', async () => {
    const calls: string[] = [];
    const s = await sites({ server: { setup: countingSetup(calls) } });
    const seen = refusals(s.server);
    const stranger = new LinkClient({ identity: await loadOrCreateIdentity(join(s.root, 'stranger'), 'stranger') });
    // Even holding the paired edge's credential does not help: it is bound to the edge's certificate.
    await assert.rejects(stranger.connect(s.paired), (e: Error) => {
      assert.ok(e instanceof PeerAuthError);
      assert.equal(e.code, 'not-paired');
      assert.match(e.message, /does not know this site/);
      assert.match(e.message, new RegExp(`\`snowbird pair https://${s.server.address.replaceAll('.', '\\.')} --token T\``));
      return true;
    });
    assert.equal(seen[0]?.code, 'not-paired');
    assert.equal(seen[0]?.mode, 'control');
    assert.deepEqual(calls, []);
    assert.equal(s.server.links().length, 0);
  });

  test('a wrong credential: unauthorized', async () => {
    const calls: string[] = [];
    const s = await sites({ server: { setup: countingSetup(calls) } });
    await assert.rejects(s.client.connect({ ...s.paired, credential: 'A'.repeat(43) }), (e: Error) => {
      assert.ok(e instanceof PeerAuthError);
      assert.equal(e.code, 'unauthorized');
      assert.match(e.message, /refused this site's credential: pair again/);
      return true;
    });
    assert.deepEqual(calls, []);
  });

  test('the core presents another certificate than the pinned one: PeerFingerprintError, credential never sent', async () => {
    const calls: string[] = [];
    const s = await sites({ server: { setup: countingSetup(calls) } });
    const seen = refusals(s.server);
    const pinned = `sha256:${'e'.repeat(64)}`;
    await assert.rejects(s.client.connect({ ...s.paired, fingerprint: pinned }), (e: Error) => {
      assert.ok(e instanceof PeerFingerprintError);
      assert.ok(e.message.includes(pinned) && e.message.includes(s.coreIdentity.fingerprint), 'shows both fingerprints');
      assert.match(e.message, /pair again: run `snowbird pair https:\/\//);
      return true;
    });
    await new Promise((r) => setTimeout(r, 100));
    // The client hung up right after the TLS handshake: the server never got a hello (no credential).
    assert.ok(seen.length > 0 && seen.every((r) => r.code === 'tls' || r.code === 'no-hello'), JSON.stringify(seen));
    assert.equal(s.server.links().length, 0);
    assert.deepEqual(calls, []);
  });

  test('nobody listening: PeerConnectError naming host:port', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const s = await sites();
    await assert.rejects(s.client.connect({ ...s.paired, url: `127.0.0.1:${port}` }), (e: Error) => {
      assert.ok(e instanceof PeerConnectError);
      assert.equal(e.host, '127.0.0.1');
      assert.equal(e.port, port);
      assert.match(e.message, new RegExp(`cannot reach 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\)`));
      return true;
    });
  });

  test('malformed hellos are answered with an error and the connection is closed', async () => {
    const calls: string[] = [];
    const s = await sites({ server: { setup: countingSetup(calls) } });
    const cases: { send: Uint8Array; code: string; pattern: RegExp }[] = [
      { send: rawJson('{"type":"hello", nope'), code: 'malformed', pattern: /not UTF-8 JSON/ },
      { send: rawJson('{"type":"hello","version":1,"mode":"root"}'), code: 'malformed', pattern: /mode/ },
      { send: encodeFrame({ type: 'request', id: 1, method: 'ping', params: {} }), code: 'malformed', pattern: /first frame must be a hello/ },
      { send: encodeFrame({ type: 'hello', version: 2, mode: 'control' }), code: 'unsupported-version', pattern: /same snowbird version/ },
      { send: encodeFrame({ type: 'hello', version: 1, mode: 'pair', name: 'x' }), code: 'malformed', pattern: /needs "name" and "token"/ },
    ];
    for (const c of cases) {
      const raw = await rawConnect(s.url, s.edgeIdentity);
      raw.send(c.send);
      const reply = await raw.next();
      assert.ok(reply.kind === 'message' && reply.message.type === 'response' && !reply.message.ok, JSON.stringify(reply));
      assert.equal(reply.message.id, 0);
      assert.equal(reply.message.error.code, c.code);
      assert.match(reply.message.error.message, c.pattern);
      await raw.closed;
    }
    assert.deepEqual(calls, []);
  });

  test('a hello frame over the size limit is refused from its header alone', async () => {
    const s = await sites();
    const raw = await rawConnect(s.url, s.edgeIdentity);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, 5 * 1024 * 1024, false);
    raw.send(header); // and no body at all
    const reply = await raw.next();
    assert.ok(reply.kind === 'message' && reply.message.type === 'error');
    assert.equal(reply.message.error.code, 'too-large');
    await raw.closed;
  });

  test('stream hellos: a path-traversal target is just an unknown target; foreign or missing links are refused', async () => {
    const s = await sites();
    const { edge } = await s.connect();
    const hello = (stream: { link: string; target: string } | { link: string; id: string }, credential = s.paired.credential) =>
      encodeFrame({ type: 'hello', version: 1, mode: 'stream', credential, stream });
    const ask = async (frame: Uint8Array, identity = s.edgeIdentity) => {
      const raw = await rawConnect(s.url, identity);
      raw.send(frame);
      const reply = await raw.next();
      await raw.closed;
      assert.ok(reply.kind === 'message' && reply.message.type === 'response' && !reply.message.ok);
      return reply.message.error;
    };
    const traversal = await ask(hello({ link: edge.id, target: '../../../../etc/passwd' }));
    assert.equal(traversal.code, 'unknown-target');
    assert.match(traversal.message, /exposes no stream target "\.\.\/\.\.\/\.\.\/\.\.\/etc\/passwd"/);
    assert.equal((await ask(hello({ link: edge.id, target: '/etc/passwd' }))).code, 'unknown-target');
    assert.equal((await ask(hello({ link: 'no-such-link', target: 'x' }))).code, 'not-connected');
    assert.equal((await ask(hello({ link: edge.id, id: 'never-issued' }))).code, 'unknown-stream');
    assert.equal((await ask(hello({ link: edge.id, target: 'x' }, 'B'.repeat(43)))).code, 'unauthorized');
    const stranger = await loadOrCreateIdentity(join(s.root, 'stranger2'), 'stranger');
    assert.equal((await ask(hello({ link: edge.id, target: 'x' }), stranger)).code, 'not-paired');
  });

  test('a second control link from the same edge replaces the first', async () => {
    const s = await sites();
    const first = await s.connect();
    const second = await s.connect();
    const reason = await first.core.whenClosed();
    assert.ok(reason instanceof PeerDisconnectedError);
    assert.match(reason.message, /connected again/);
    await first.edge.whenClosed();
    assert.deepEqual(s.server.links(), [second.core]);
  });
});

function rawJson(text: string): Uint8Array {
  const body = new TextEncoder().encode(text);
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length, false);
  frame.set(body, 4);
  return frame;
}
