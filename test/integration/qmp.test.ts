// QmpClient against a real QEMU (TCG, no guest): one paused machine carried through the steps in order.

import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { QmpClient } from '../../src/migrator/qmp/client.ts';
import { QmpError } from '../../src/migrator/qmp/errors.ts';
import type { QmpEvent } from '../../src/migrator/qmp/common/types.ts';

const QEMU = 'qemu-system-x86_64';
const hasQemu = spawnSync(QEMU, ['--version']).status === 0;

describe('QmpClient against QEMU', { skip: hasQemu ? false : `${QEMU} is not installed` }, () => {
  let dir: string;
  let qemu: ChildProcess;
  let qemuStderr = '';
  let client: QmpClient;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qmp-it-'));
    const socket = join(dir, 'qmp.sock');
    qemu = spawn(
      QEMU,
      ['-accel', 'tcg', '-M', 'pc', '-m', '64', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${socket},server=on,wait=off`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    qemu.stderr?.on('data', (chunk: Buffer) => (qemuStderr += chunk.toString()));
    try {
      client = await QmpClient.connect(socket, { retryUntilMs: 10_000, capabilities: ['oob'] });
    } catch (err) {
      throw new Error(`could not connect to QEMU (stderr: ${qemuStderr.trim() || 'empty'})`, { cause: err });
    }
  });

  after(async () => {
    await client?.close();
    if (qemu && qemu.exitCode === null && qemu.signalCode === null) {
      const exited = once(qemu, 'exit');
      qemu.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  });

  test('the greeting names QEMU 7+ and offers oob', () => {
    assert.ok(client.greeting.version.qemu.major >= 7);
    assert.ok(client.greeting.capabilities.includes('oob'));
  });

  test('query-version matches the greeting', async () => {
    const version = await client.execute('query-version');
    assert.deepEqual(version, client.greeting.version);
  });

  test('query-status: -S leaves the machine in prelaunch, not running', async () => {
    const status = await client.execute('query-status');
    assert.equal(status.running, false);
    assert.ok(['prelaunch', 'paused'].includes(status.status), status.status);
  });

  test('cont emits RESUME, stop emits STOP', async () => {
    const resumed = client.waitForEvent('RESUME', { timeoutMs: 5000 });
    assert.deepEqual(await client.execute('cont'), {});
    await resumed;
    assert.equal((await client.execute('query-status')).status, 'running');

    const stopped = client.waitForEvent('STOP', { timeoutMs: 5000 });
    await client.execute('stop');
    await stopped;
    const status = await client.execute('query-status');
    assert.equal(status.status, 'paused');
    assert.equal(status.running, false);
  });

  test('an unknown command is a QmpError of class CommandNotFound', async () => {
    const err = await client.executeRaw('no-such-command').catch((e: unknown) => e);
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'CommandNotFound');
    assert.match(err.desc, /no-such-command/);
  });

  test('bad arguments are a GenericError naming the parameter', async () => {
    const err = await client.executeRaw('query-status', { bogus: 1 }).catch((e: unknown) => e);
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'GenericError');
    assert.match(err.desc, /bogus/);
  });

  test('quit: SHUTDOWN, then the reply, then QEMU closes the socket and exits', async () => {
    const events: QmpEvent[] = [];
    const shutdown = client.waitForEvent('SHUTDOWN', { timeoutMs: 5000 });
    const collecting = (async () => {
      for await (const e of client.events()) events.push(e);
    })();
    const closed = once(client, 'close');
    const exited = once(qemu, 'exit');

    assert.deepEqual(await client.execute('quit'), {});
    assert.deepEqual((await shutdown).data, { guest: false, reason: 'host-qmp-quit' });
    const [closeError] = await closed;
    assert.equal(closeError, undefined);
    assert.equal(client.closed, true);
    await collecting;
    assert.deepEqual(events.map((e) => e.event), ['SHUTDOWN']);
    const [code] = await exited;
    assert.equal(code, 0);
  });
});
