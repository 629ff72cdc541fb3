// PeerLink RPC over real TLS: both directions, typed errors, events, timeouts, disconnects, keepalive,
// and what a misbehaving (but authenticated) peer gets for malformed or oversize frames.
import assert from 'node:assert/strict';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { encodeFrame } from '../../src/migrator/link/common/frames.ts';
import { LinkError, PeerDisconnectedError, PeerProtocolError, PeerRequestError } from '../../src/migrator/link/errors.ts';
import type { PeerLink } from '../../src/migrator/link/peer-link.ts';
import { rawControl, startTestSites, type TestSites } from '../support/link-testing.ts';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function sites(options?: Parameters<typeof startTestSites>[0]): Promise<TestSites> {
  const s = await startTestSites(options);
  cleanups.push(() => s.dispose());
  return s;
}

const addSchema = z.object({ a: z.number(), b: z.number() });

function isRequestError(code: string, method?: string): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof PeerRequestError, String(e));
    assert.equal(e.code, code);
    if (method !== undefined) assert.equal(e.method, method);
    return true;
  };
}

describe('RPC', () => {
  test('requests both ways, with schema-checked params and typed errors', async () => {
    const s = await sites();
    const calls: string[] = [];
    const { edge, core } = await s.connect({
      core: (link) => {
        link.handle('add', addSchema, ({ a, b }, ctx) => {
          calls.push(`add from ${ctx.link.peer.name}`);
          return a + b;
        });
        link.handle('vm.get', z.object({ name: z.string() }), async ({ name }) => {
          await sleep(5);
          throw new LinkError('vm-not-found', `no VM named ${name}`);
        });
        link.handle('boom', z.object({}), () => {
          throw new Error('kaput');
        });
      },
      edge: (link) => {
        link.handle('whoami', z.object({}), (_params, ctx) => ({ site: ctx.link.local.name, asker: ctx.link.peer.name }));
      },
    });
    assert.equal(await edge.request<number>('add', { a: 2, b: 40 }), 42);
    assert.deepEqual(await core.request('whoami'), { site: 'edge', asker: 'core' });

    await assert.rejects(edge.request('vm.get', { name: 'nope' }), (e: unknown) => {
      isRequestError('vm-not-found', 'vm.get')(e);
      assert.equal((e as Error).message, 'no VM named nope');
      return true;
    });
    await assert.rejects(edge.request('boom'), (e: unknown) => isRequestError('internal', 'boom')(e) && (e as Error).message === 'kaput');
    await assert.rejects(core.request('add', { a: 1, b: 2 }), isRequestError('unknown-method', 'add'), 'the edge has no add');

    // Unknown method and bad params: refused before any handler runs.
    await assert.rejects(edge.request('shutdown'), (e: unknown) => isRequestError('unknown-method')(e) && /has no method "shutdown"/.test((e as Error).message));
    await assert.rejects(edge.request('add', { a: 'one', b: 2 }), (e: unknown) => isRequestError('invalid-params', 'add')(e) && /a: .*expected number/.test((e as Error).message));
    await assert.rejects(edge.request('add'), isRequestError('invalid-params'));
    assert.deepEqual(calls, ['add from edge']);

    // Many concurrent requests are matched to their answers.
    const sums = await Promise.all(Array.from({ length: 200 }, (_, i) => edge.request<number>('add', { a: i, b: i })));
    assert.deepEqual(sums, Array.from({ length: 200 }, (_, i) => 2 * i));
  });

  test('handler registration rules', async () => {
    const s = await sites();
    const { edge } = await s.connect();
    assert.throws(() => edge.handle('link.dial', z.object({}), () => 0), /belong to the link/);
    const off = edge.handle('x', z.object({}), () => 1);
    assert.throws(() => edge.handle('x', z.object({}), () => 2), /already registered/);
    off();
    edge.handle('x', z.object({}), () => 3);
  });

  test('a result too big for a frame comes back as too-large; the link stays up', async () => {
    const s = await sites({ server: { maxFrameBytes: 64 * 1024 }, client: { maxFrameBytes: 64 * 1024 } });
    const { edge } = await s.connect({ core: (l) => l.handle('big', z.object({}), () => 'x'.repeat(100_000)) });
    await assert.rejects(edge.request('big'), isRequestError('too-large', 'big'));
    await assert.rejects(edge.request('big', { pad: 'y'.repeat(100_000) }), isRequestError('too-large'), 'params too big: refused locally');
    assert.equal(edge.closed, false);
  });

  test('events both ways', async () => {
    const s = await sites();
    const { edge, core } = await s.connect();
    const atCore: unknown[] = [];
    const atEdge: unknown[] = [];
    core.on('event', (name, payload) => atCore.push([name, payload]));
    edge.on('event', (name, payload) => atEdge.push([name, payload]));
    assert.equal(edge.emit('migration.progress', { pct: 10 }), true);
    core.emit('vm.started', { vm: 'a' });
    core.emit('bare');
    // An RPC round trip after the events proves they were delivered (frames are ordered).
    core.handle('sync', z.object({}), () => true);
    edge.handle('sync', z.object({}), () => true);
    await edge.request('sync');
    await core.request('sync');
    assert.deepEqual(atCore, [['migration.progress', { pct: 10 }]]);
    assert.deepEqual(atEdge, [['vm.started', { vm: 'a' }], ['bare', undefined]]);
  });

  test('timeouts and aborts reject the caller; a late answer is ignored', async () => {
    const s = await sites();
    const { edge } = await s.connect({ core: (l) => l.handle('slow', z.object({}), () => sleep(300).then(() => 'late')) });
    await assert.rejects(edge.request('slow', {}, { timeoutMs: 50 }), (e: unknown) => isRequestError('timeout', 'slow')(e) && /within 50 ms/.test((e as Error).message));
    const controller = new AbortController();
    const pending = edge.request('slow', {}, { signal: controller.signal });
    controller.abort(new Error('user gave up'));
    await assert.rejects(pending, /user gave up/);
    await sleep(350);
    assert.equal(edge.closed, false);
    assert.equal(await edge.request('slow'), 'late');
  });

  test('pending requests reject with PeerDisconnectedError when the link drops; both ends report close', async () => {
    const s = await sites();
    let handlerSignal: AbortSignal | undefined;
    const { edge, core } = await s.connect({
      core: (l) =>
        l.handle('hang', z.object({}), (_p, ctx) => {
          handlerSignal = ctx.signal;
          return new Promise(() => {});
        }),
    });
    const pending = edge.request('hang', {}, { timeoutMs: 0 });
    await sleep(50);
    const edgeClosed = edge.whenClosed();
    core.destroy(new Error('core went away'));
    await assert.rejects(pending, (e: unknown) => {
      assert.ok(e instanceof PeerDisconnectedError);
      assert.equal(e.method, 'hang');
      assert.match(e.message, /closed before hang was answered/);
      return true;
    });
    assert.ok((await edgeClosed) instanceof PeerDisconnectedError);
    assert.equal(handlerSignal?.aborted, true, 'handlers learn that their link is gone');
    await assert.rejects(edge.request('anything'), PeerDisconnectedError);
  });

  test('close() is orderly: no error locally, the peer sees the link closed', async () => {
    const s = await sites();
    const { edge, core } = await s.connect();
    const reasons: (Error | undefined)[] = [];
    edge.on('close', (e) => reasons.push(e));
    await edge.close();
    assert.deepEqual(reasons, [undefined]);
    const coreReason = await core.whenClosed();
    assert.ok(coreReason instanceof PeerDisconnectedError);
    assert.equal(edge.emit('late'), false);
  });
});

describe('misbehaving peer on an authenticated link', () => {
  test('malformed frames get a malformed answer and the link stays up', async () => {
    const calls: string[] = [];
    const s = await sites({
      server: {
        setup: (l) =>
          l.handle('add', addSchema, ({ a, b }) => {
            calls.push('add');
            return a + b;
          }),
      },
    });
    const raw = await rawControl(s.url, s.edgeIdentity, s.paired.credential);
    const protocolErrors: PeerProtocolError[] = [];
    s.server.links()[0]?.on('protocolError', (e) => protocolErrors.push(e));

    raw.send(frameOf('{"type":"request","id":9,"method":"add","params":'));
    let reply = await nextNonPing(raw);
    assert.deepEqual(reply, { type: 'error', error: { code: 'malformed', message: reply.type === 'error' ? reply.error.message : '' } });

    raw.send(frameOf('{"type":"request","id":10,"params":{"a":1,"b":2}}'));
    reply = await nextNonPing(raw);
    assert.ok(reply.type === 'response' && reply.id === 10 && !reply.ok && reply.error.code === 'malformed', JSON.stringify(reply));

    raw.send(encodeFrame({ type: 'hello', version: 1, mode: 'control' }));
    reply = await nextNonPing(raw);
    assert.ok(reply.type === 'error' && reply.error.code === 'malformed');

    raw.send(encodeFrame({ type: 'request', id: 11, method: 'add', params: { a: 1, b: 2 } }));
    reply = await nextNonPing(raw);
    assert.deepEqual(reply, { type: 'response', id: 11, ok: true, result: 3 });
    assert.deepEqual(calls, ['add']);
    assert.equal(protocolErrors.length, 3);
  });

  test('a frame over the limit: refused from the header alone, error frame, link closed', async () => {
    const s = await sites({ server: { maxFrameBytes: 1024 * 1024 } });
    const raw = await rawControl(s.url, s.edgeIdentity, s.paired.credential);
    const link = s.server.links()[0];
    assert.ok(link !== undefined);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, 1024 * 1024 + 1, false);
    raw.send(header);
    raw.send(new Uint8Array(1000)); // some body, far from complete
    const reply = await nextNonPing(raw);
    assert.ok(reply.type === 'error' && reply.error.code === 'too-large', JSON.stringify(reply));
    assert.match(reply.error.message, /1048577 bytes exceeds the 1048576-byte limit/);
    const reason = await link.whenClosed();
    assert.ok(reason instanceof PeerProtocolError && reason.code === 'too-large');
    await raw.closed;
  });
});

describe('keepalive', () => {
  test('a peer that stops reading is noticed', async () => {
    const s = await sites({ server: { keepaliveIntervalMs: 100, keepaliveTimeoutMs: 500 } });
    const raw = await rawControl(s.url, s.edgeIdentity, s.paired.credential);
    const link = s.server.links()[0];
    assert.ok(link !== undefined);
    raw.socket.pause(); // alive as far as TCP is concerned, but never answers a ping
    const started = Date.now();
    const reason = await link.whenClosed();
    const elapsed = Date.now() - started;
    assert.ok(reason instanceof PeerDisconnectedError);
    assert.match(reason.message, /no keepalive answer/);
    assert.ok(elapsed >= 450 && elapsed < 1500, `noticed after ${elapsed} ms`);
    raw.socket.destroy();
  });

  test('a black-holed network is noticed by both sides; pending requests fail', async () => {
    const options = { keepaliveIntervalMs: 100, keepaliveTimeoutMs: 500 };
    const s = await sites({ server: options, client: options });
    const proxy = await blackholeProxy(s.server.port);
    cleanups.push(() => proxy.close());
    let core: PeerLink | undefined;
    s.server.once('link', (l) => (core = l));
    const edge = await s.client.connect({ ...s.paired, url: `127.0.0.1:${proxy.port}` }, { setup: () => {} });
    await sleep(300);
    assert.equal(edge.closed, false, 'healthy link stays up across several keepalive rounds');
    assert.ok(core !== undefined);
    const pending = assert.rejects(edge.request('anything', {}, { timeoutMs: 0 }), PeerDisconnectedError);
    const started = Date.now();
    proxy.freeze();
    const [edgeReason, coreReason] = await Promise.all([edge.whenClosed(), core.whenClosed()]);
    const elapsed = Date.now() - started;
    assert.ok(edgeReason instanceof PeerDisconnectedError && coreReason instanceof PeerDisconnectedError);
    assert.ok(elapsed < 1500, `both noticed within ${elapsed} ms`);
    await pending;
  });

  test('defaults notice a dead peer within 10 s', async () => {
    const s = await sites();
    const { edge } = await s.connect();
    assert.ok(edge.keepaliveTimeoutMs + edge.keepaliveIntervalMs <= 10_000);
  });
});

/** Forwards TCP to `port`; freeze() stops forwarding both ways without closing anything. */
async function blackholeProxy(port: number): Promise<{ port: number; freeze(): void; close(): Promise<void> }> {
  const sockets: Socket[] = [];
  let frozen = false;
  const server: Server = createServer((client) => {
    const upstream = createConnection({ port, host: '127.0.0.1' });
    sockets.push(client, upstream);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      from.on('data', (chunk) => {
        if (!frozen) to.write(chunk);
      });
      from.on('error', () => to.destroy());
      from.on('close', () => to.destroy());
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    freeze: () => {
      frozen = true;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

function frameOf(text: string): Uint8Array {
  const body = new TextEncoder().encode(text);
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length, false);
  frame.set(body, 4);
  return frame;
}

/** The next message that is not keepalive traffic. */
async function nextNonPing(raw: Awaited<ReturnType<typeof rawControl>>) {
  for (;;) {
    const frame = await raw.next();
    if (frame.kind !== 'message') throw new Error(`unexpected ${frame.kind}`);
    if (frame.message.type === 'ping') {
      raw.send({ type: 'pong', seq: frame.message.seq });
      continue;
    }
    if (frame.message.type === 'pong') continue;
    return frame.message;
  }
}
