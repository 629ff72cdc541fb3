// QmpClient against a scripted fake QMP server on a unix socket: the protocol edge cases real QEMU
// will not produce on demand.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient, type QmpConnectOptions } from '../../src/migrator/qmp/client.ts';
import {
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpProtocolError,
  QmpTimeoutError,
} from '../../src/migrator/qmp/errors.ts';
import type { QmpEvent } from '../../src/migrator/qmp/common/types.ts';

const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] },
};

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id: number;
}

/** The server side of one connection. */
class Peer {
  readonly socket: Socket;
  #buffer = '';
  #commands: Command[] = [];
  #waiters: ((c: Command) => void)[] = [];

  constructor(socket: Socket) {
    this.socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.#buffer += text;
      let newline;
      while ((newline = this.#buffer.indexOf('\n')) !== -1) {
        const command = JSON.parse(this.#buffer.slice(0, newline)) as Command;
        this.#buffer = this.#buffer.slice(newline + 1);
        const waiter = this.#waiters.shift();
        if (waiter) waiter(command);
        else this.#commands.push(command);
      }
    });
    socket.on('error', () => {});
  }

  nextCommand(): Promise<Command> {
    const queued = this.#commands.shift();
    return queued ? Promise.resolve(queued) : new Promise((resolve) => this.#waiters.push(resolve));
  }

  send(message: unknown): void {
    this.socket.write(`${JSON.stringify(message)}\r\n`);
  }

  event(name: string, data?: Record<string, unknown>): void {
    this.send({ timestamp: { seconds: 1, microseconds: 2 }, event: name, ...(data ? { data } : {}) });
  }

  reply(command: Command, value: unknown = {}): void {
    this.send({ return: value, id: command.id });
  }
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'qmp-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A listening fake server; `peers` yields each accepted connection. Nothing is sent unless asked. */
async function fakeServer(t: TestContext, path?: string): Promise<{ path: string; server: Server; nextPeer: () => Promise<Peer> }> {
  const socketPath = path ?? join(await tempDir(t), 'qmp.sock');
  const peers: Peer[] = [];
  const waiters: ((p: Peer) => void)[] = [];
  const server = createServer((socket) => {
    const peer = new Peer(socket);
    const waiter = waiters.shift();
    if (waiter) waiter(peer);
    else peers.push(peer);
  });
  server.listen(socketPath);
  await once(server, 'listening');
  t.after(() => {
    for (const p of peers) p.socket.destroy();
    server.close();
  });
  const nextPeer = (): Promise<Peer> => {
    const queued = peers.shift();
    return queued ? Promise.resolve(queued) : new Promise((resolve) => waiters.push(resolve));
  };
  return { path: socketPath, server, nextPeer };
}

/** Greets and negotiates like QEMU; returns the negotiation command seen. */
async function handshake(peer: Peer): Promise<Command> {
  peer.send(GREETING);
  const negotiation = await peer.nextCommand();
  peer.reply(negotiation);
  return negotiation;
}

async function connected(t: TestContext, opts?: QmpConnectOptions): Promise<{ client: QmpClient; peer: Peer }> {
  const { path, nextPeer } = await fakeServer(t);
  const [client, peer] = await Promise.all([
    QmpClient.connect(path, opts),
    nextPeer().then(async (p) => {
      await handshake(p);
      return p;
    }),
  ]);
  t.after(() => client.close());
  return { client, peer };
}

function collectProtocolErrors(client: QmpClient): QmpProtocolError[] {
  const errors: QmpProtocolError[] = [];
  client.on('protocolError', (e) => errors.push(e));
  return errors;
}

describe('connect', () => {
  test('parses the greeting and negotiates only the capabilities offered', async (t) => {
    const { path, nextPeer } = await fakeServer(t);
    const connecting = QmpClient.connect(path, { capabilities: ['oob', 'made-up'] });
    const negotiation = await handshake(await nextPeer());
    const client = await connecting;
    t.after(() => client.close());
    assert.deepEqual(client.greeting, GREETING.QMP);
    assert.equal(negotiation.execute, 'qmp_capabilities');
    assert.deepEqual(negotiation.arguments, { enable: ['oob'] });
    assert.equal(client.closed, false);
  });

  test('sends qmp_capabilities without arguments by default', async (t) => {
    const { path, nextPeer } = await fakeServer(t);
    const connecting = QmpClient.connect(path);
    const negotiation = await handshake(await nextPeer());
    (await connecting).close();
    assert.equal(negotiation.arguments, undefined);
  });

  test('a missing socket fails at once with advice, or is retried until retryUntilMs', async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'late.sock');
    const err = await QmpClient.connect(path).catch((e: unknown) => e);
    assert.ok(err instanceof QmpConnectError);
    assert.equal(err.socketPath, path);
    assert.match(err.message, /does not exist.*retryUntilMs/);
    assert.equal((err.cause as NodeJS.ErrnoException).code, 'ENOENT');

    const started = performance.now();
    const giveUp = await QmpClient.connect(path, { retryUntilMs: 300 }).catch((e: unknown) => e);
    assert.ok(giveUp instanceof QmpConnectError);
    assert.ok(performance.now() - started >= 250, 'kept retrying for about retryUntilMs');

    const connecting = QmpClient.connect(path, { retryUntilMs: 5000 });
    await sleep(150);
    const { nextPeer } = await fakeServer(t, path);
    await handshake(await nextPeer());
    (await connecting).close();
  });

  test('a path that is not a listening socket gives ECONNREFUSED advice', async (t) => {
    const path = join(await tempDir(t), 'stale.sock');
    await writeFile(path, '');
    const err = await QmpClient.connect(path).catch((e: unknown) => e);
    assert.ok(err instanceof QmpConnectError);
    assert.match(err.message, /Nothing is listening/);
  });

  test('no greeting within timeoutMs explains the one-client-per-socket rule', async (t) => {
    const { path, nextPeer } = await fakeServer(t);
    const err = await QmpClient.connect(path, { timeoutMs: 100 }).catch((e: unknown) => e);
    assert.ok(err instanceof QmpConnectError);
    assert.match(err.message, /No QMP greeting.*another client/);
    await once((await nextPeer()).socket, 'close');
  });

  test('a first line that is not a greeting is rejected', async (t) => {
    const { path, nextPeer } = await fakeServer(t);
    const connecting = QmpClient.connect(path).catch((e: unknown) => e);
    (await nextPeer()).socket.write('(qemu) \r\n');
    const err = await connecting;
    assert.ok(err instanceof QmpConnectError);
    assert.match(err.message, /did not start with a QMP greeting/);
  });

  test('the server closing before its greeting is a connect error', async (t) => {
    const { path, nextPeer } = await fakeServer(t);
    const connecting = QmpClient.connect(path).catch((e: unknown) => e);
    (await nextPeer()).socket.end();
    const err = await connecting;
    assert.ok(err instanceof QmpConnectError);
    assert.match(err.message, /closed .* before sending the QMP greeting/);
  });

  test('a refused negotiation is a connect error carrying the QmpError', async (t) => {
    const { path, nextPeer } = await fakeServer(t);
    const connecting = QmpClient.connect(path).catch((e: unknown) => e);
    const peer = await nextPeer();
    peer.send(GREETING);
    const negotiation = await peer.nextCommand();
    peer.send({ id: negotiation.id, error: { class: 'GenericError', desc: 'no' } });
    const err = await connecting;
    assert.ok(err instanceof QmpConnectError);
    assert.ok(err.cause instanceof QmpError);
    await once(peer.socket, 'close');
  });
});

describe('commands', () => {
  test('events between a command and its reply go to subscribers, not to the caller', async (t) => {
    const { client, peer } = await connected(t);
    const emitted: string[] = [];
    client.on('event', (e) => emitted.push(e.event));
    const subscription = client.events();
    const resumed = client.waitForEvent('RESUME');

    const status = client.execute('query-status');
    const command = await peer.nextCommand();
    assert.equal(command.execute, 'query-status');
    assert.equal(command.arguments, undefined);
    peer.event('RESUME');
    peer.event('BLOCK_JOB_READY', { device: 'mirror0' });
    peer.send({ return: { status: 'running', singlestep: false, running: true }, id: command.id });

    assert.deepEqual(await status, { status: 'running', singlestep: false, running: true });
    assert.equal((await resumed).event, 'RESUME');
    const first = await subscription.next();
    const second = await subscription.next();
    assert.equal(first.value?.event, 'RESUME');
    assert.deepEqual(second.value?.data, { device: 'mirror0' });
    assert.deepEqual(emitted, ['RESUME', 'BLOCK_JOB_READY']);
  });

  test('sends arguments and resolves concurrent calls by id, whatever the reply order', async (t) => {
    const { client, peer } = await connected(t);
    const a = client.execute('migrate', { uri: 'unix:/tmp/m.sock' });
    const b = client.execute('human-monitor-command', { 'command-line': 'info status' });
    const [ca, cb] = [await peer.nextCommand(), await peer.nextCommand()];
    assert.deepEqual(ca.arguments, { uri: 'unix:/tmp/m.sock' });
    assert.notEqual(ca.id, cb.id);
    peer.reply(cb, 'VM status: running\r\n');
    peer.reply(ca);
    assert.equal(await b, 'VM status: running\r\n');
    assert.deepEqual(await a, {});
  });

  test('an error reply rejects with QmpError carrying class and desc', async (t) => {
    const { client, peer } = await connected(t);
    const call = client.executeRaw('nope');
    const command = await peer.nextCommand();
    peer.send({ id: command.id, error: { class: 'CommandNotFound', desc: 'The command nope has not been found' } });
    const err = await call.catch((e: unknown) => e);
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'CommandNotFound');
    assert.equal(err.desc, 'The command nope has not been found');
    assert.equal(err.command, 'nope');
    assert.equal(err.message, 'QMP nope failed (CommandNotFound): The command nope has not been found');
  });

  test('a reply written one byte at a time, with a split UTF-8 character, arrives whole', async (t) => {
    const { client, peer } = await connected(t);
    const call = client.execute('query-name');
    const command = await peer.nextCommand();
    const line = Buffer.from(`${JSON.stringify({ return: { name: 'vm-é🚀' }, id: command.id })}\r\n`);
    for (const byte of line) {
      peer.socket.write(Uint8Array.of(byte));
      await sleep(1);
    }
    assert.deepEqual(await call, { name: 'vm-é🚀' });
  });

  test('a disconnect mid-command rejects every pending call with QmpDisconnectedError', async (t) => {
    const { client, peer } = await connected(t);
    const closeSeen = once(client, 'close');
    const calls = [client.execute('query-status'), client.execute('stop'), client.execute('query-migrate')];
    await peer.nextCommand();
    peer.socket.destroy();
    const results = await Promise.allSettled(calls);
    for (const [i, command] of ['query-status', 'stop', 'query-migrate'].entries()) {
      const result = results[i];
      assert.ok(result?.status === 'rejected' && result.reason instanceof QmpDisconnectedError);
      assert.equal(result.reason.command, command);
    }
    await closeSeen;
    assert.equal(client.closed, true);
    await assert.rejects(client.execute('cont'), QmpDisconnectedError);
  });

  test('a timed-out call rejects with QmpTimeoutError and its late reply is dropped quietly', async (t) => {
    const { client, peer } = await connected(t);
    const protocolErrors = collectProtocolErrors(client);
    const call = client.execute('query-status', undefined, { timeoutMs: 50 });
    const command = await peer.nextCommand();
    const err = await call.catch((e: unknown) => e);
    assert.ok(err instanceof QmpTimeoutError);
    assert.equal(err.command, 'query-status');
    assert.equal(err.timeoutMs, 50);

    peer.send({ return: { status: 'late', running: false }, id: command.id });
    const next = client.execute('query-kvm');
    peer.reply(await peer.nextCommand(), { enabled: false, present: true });
    assert.deepEqual(await next, { enabled: false, present: true });
    assert.deepEqual(protocolErrors, []);
  });

  test('replies with unknown or missing ids and malformed lines are protocol errors, not crashes', async (t) => {
    const { client, peer } = await connected(t);
    const protocolErrors = collectProtocolErrors(client);
    peer.send({ return: {}, id: 999 });
    peer.send({ return: {}, id: 'not-ours' });
    peer.send({ error: { class: 'GenericError', desc: 'JSON parse error' } });
    peer.socket.write('{"return": \r\n');
    const call = client.execute('query-name');
    peer.reply(await peer.nextCommand(), {});
    assert.deepEqual(await call, {});
    assert.equal(protocolErrors.length, 4);
    assert.ok(protocolErrors.every((e) => e instanceof QmpProtocolError));
    assert.match(protocolErrors[0]?.message ?? '', /unknown id 999/);
    assert.match(protocolErrors[2]?.message ?? '', /without an id/);
    assert.match(protocolErrors[3]?.message ?? '', /malformed JSON/);
  });

  test('close() rejects pending calls, resolves when the socket is gone, and is idempotent', async (t) => {
    const { client, peer } = await connected(t);
    const call = client.execute('query-status');
    await peer.nextCommand();
    const closing = client.close();
    assert.equal(client.closed, true);
    await assert.rejects(call, QmpDisconnectedError);
    await Promise.all([closing, client.close()]);
    await once(peer.socket, 'close');
  });
});

describe('events', () => {
  test('events() filters by name and keeps events for a slow consumer', async (t) => {
    const { client, peer } = await connected(t);
    const stops = client.events(['STOP', 'SHUTDOWN']);
    const all = client.events();
    for (let i = 0; i < 200; i++) peer.event(i % 2 === 0 ? 'STOP' : 'RESUME', { i });
    peer.event('SHUTDOWN');
    await client.waitForEvent('SHUTDOWN');
    await client.close();

    const seen: QmpEvent[] = [];
    for await (const e of stops) seen.push(e);
    assert.equal(seen.length, 101);
    assert.ok(seen.slice(0, 100).every((e, n) => e.event === 'STOP' && e.data?.['i'] === n * 2));
    let count = 0;
    for await (const _ of all) count++;
    assert.equal(count, 201);
  });

  test('an events() loop ends when the server disconnects; events() after close is already done', async (t) => {
    const { client, peer } = await connected(t);
    const loop = (async () => {
      const names: string[] = [];
      for await (const e of client.events()) names.push(e.event);
      return names;
    })();
    peer.event('STOP');
    await client.waitForEvent('STOP');
    peer.socket.end();
    assert.deepEqual(await loop, ['STOP']);
    assert.deepEqual(await client.events().next(), { done: true, value: undefined });
  });

  test('waitForEvent honours predicate, timeout, AbortSignal and close', async (t) => {
    const { client, peer } = await connected(t);

    const job = client.waitForEvent('BLOCK_JOB_COMPLETED', { predicate: (e) => e.data?.['device'] === 'b' });
    peer.event('BLOCK_JOB_COMPLETED', { device: 'a' });
    peer.event('BLOCK_JOB_COMPLETED', { device: 'b' });
    assert.deepEqual((await job).data, { device: 'b' });

    const timedOut = await client.waitForEvent('NEVER', { timeoutMs: 30 }).catch((e: unknown) => e);
    assert.ok(timedOut instanceof QmpTimeoutError);
    assert.equal(timedOut.command, 'event NEVER');

    const controller = new AbortController();
    const aborted = client.waitForEvent('NEVER', { signal: controller.signal });
    controller.abort(new Error('user gave up'));
    await assert.rejects(aborted, /user gave up/);
    await assert.rejects(client.waitForEvent('NEVER', { signal: AbortSignal.abort() }), { name: 'AbortError' });

    const throwing = client.waitForEvent('STOP', {
      predicate: () => {
        throw new Error('bad predicate');
      },
    });
    peer.event('STOP');
    await assert.rejects(throwing, /bad predicate/);

    const pending = assert.rejects(client.waitForEvent('NEVER'), QmpDisconnectedError);
    await client.close();
    await pending;
    await assert.rejects(client.waitForEvent('NEVER'), QmpDisconnectedError);
  });
});

// Compile-time checks of execute()'s typing (tsc runs over tests); never called.
export function typingExamples(client: QmpClient): void {
  void client.execute('query-status').then((s) => s.running satisfies boolean);
  void client.execute('stop', undefined, { timeoutMs: 1000 });
  void client.execute('query-named-block-nodes');
  void client.execute('query-named-block-nodes', { flat: true });
  void client.execute('migrate-set-parameters', { 'downtime-limit': 300 });
  void client.execute('nbd-server-start', { addr: { type: 'unix', data: { path: '/tmp/nbd.sock' } } });
  void client.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'disk0', file: 'file0' });
  void client.execute('query-migrate').then((m) => m.ram?.remaining satisfies number | undefined);
  void client.execute('human-monitor-command', { 'command-line': 'info status' }).then((s) => s satisfies string);
  // @ts-expect-error migrate needs its arguments
  void client.execute('migrate');
  // @ts-expect-error query-status takes no arguments
  void client.execute('query-status', { verbose: true });
  // @ts-expect-error unknown commands go through executeRaw
  void client.execute('no-such-command');
}
