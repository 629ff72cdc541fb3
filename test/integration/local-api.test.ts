// The local API transport with real node-ipc sockets: owner-only permissions, schema validation of
// every command, bounded messages. The handler here is a stand-in: the agent's own handlers are
// exercised by the agent tests.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalApiServer, LocalApiError } from '../../src/main/local-api/server.ts';
import { LocalApiClient, LocalApiUnavailableError, LocalCommandError } from '../../src/main/local-api/client.ts';
import type { LocalCommand } from '../../src/shared/local-api.ts';

let dir: string;
let socketPath: string;
let server: LocalApiServer;
const handled: LocalCommand[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sb-api-'));
  socketPath = join(dir, 'run', 'agent.sock');
  server = await LocalApiServer.listen(socketPath, async (command, progress) => {
    handled.push(command);
    if (command.cmd === 'history') throw new LocalApiError('no-history', 'nothing recorded yet');
    if (command.cmd === 'migrate') {
      progress({ migrationId: 'm1', vm: command.vm, from: 'edge', to: 'core', phase: 'memory', bytes: 10, rate: 5, elapsedMs: 2 });
    }
    return { role: 'edge', site: 'test', fingerprint: 'sha256:00', peer: { paired: false, connected: false }, vms: [], migrations: [] } as never;
  });
});

after(async () => {
  server.close();
  await rm(dir, { recursive: true, force: true });
});

test('the socket is owner-only, in an owner-only directory', async () => {
  assert.equal((await stat(socketPath)).mode & 0o777, 0o600);
  assert.equal((await stat(join(dir, 'run'))).mode & 0o777, 0o700);
});

test('a valid command reaches the handler; progress and reply come back', async () => {
  const client = await LocalApiClient.connect(socketPath);
  try {
    const status = await client.request({ cmd: 'status' });
    assert.equal(status.role, 'edge');
    const seen: string[] = [];
    await client.request({ cmd: 'migrate', vm: 'demo', to: 'core' }, (p) => seen.push(p.phase));
    assert.deepEqual(seen, ['memory']);
  } finally {
    client.close();
  }
});

test('typed handler errors keep their code and message', async () => {
  const client = await LocalApiClient.connect(socketPath);
  try {
    await assert.rejects(client.request({ cmd: 'history' }), (e: unknown) => e instanceof LocalCommandError && e.code === 'no-history' && /nothing recorded/.test(e.message));
  } finally {
    client.close();
  }
});

test('unknown commands, bad names and bad shapes are refused before any handler runs', async () => {
  const client = await LocalApiClient.connect(socketPath);
  const before = handled.length;
  try {
    await assert.rejects(client.request({ cmd: 'format-disk' } as never), (e: unknown) => e instanceof LocalCommandError && e.code === 'unknown-command');
    await assert.rejects(client.request({ cmd: 'migrate', vm: '../etc', to: 'core' }), (e: unknown) => e instanceof LocalCommandError && e.code === 'invalid' && /names are 1-63/.test(e.message));
    await assert.rejects(client.request({ cmd: 'migrate', vm: 'demo', to: 'mars' } as never), (e: unknown) => e instanceof LocalCommandError && e.code === 'invalid');
    assert.equal(handled.length, before);
  } finally {
    client.close();
  }
});

test('an oversized or malformed message drops only that client; the server keeps serving', async () => {
  await new Promise<void>((resolve) => {
    const raw = connect(socketPath, () => raw.write(`{"type":"request","data":"${'x'.repeat(400 * 1024)}"}\f`));
    raw.on('close', () => resolve());
    raw.on('error', () => resolve());
  });
  await new Promise<void>((resolve) => {
    const raw = connect(socketPath, () => raw.end('this is not json\f'));
    raw.on('close', () => resolve());
    raw.on('error', () => resolve());
  });
  const client = await LocalApiClient.connect(socketPath);
  try {
    assert.equal((await client.request({ cmd: 'status' })).site, 'test');
  } finally {
    client.close();
  }
});

test('no agent: a clear error that says how to start one', async () => {
  await assert.rejects(LocalApiClient.connect(join(dir, 'nothing.sock')), (e: unknown) => e instanceof LocalApiUnavailableError && /snowbird agent --role edge/.test(e.message));
});
