import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';

test('a connection reset by the other end closes the channel instead of throwing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sb-gc-'));
  const path = join(dir, 'ctl.sock');
  let peer: Socket | undefined;
  // Nothing is read from the server's end: closing it with the channel's ping unread resets the connection.
  const server = createServer({ pauseOnConnect: true }, (s) => (peer = s));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  try {
    const channel = await GuestChannel.connect('vm', path);
    const closed = new Promise<void>((resolve) => channel.once('close', resolve));
    while (peer === undefined) await new Promise((r) => setTimeout(r, 10));
    peer.write('{"type":"pong","uptime_ms":5}\n');
    await channel.waitFor((r) => r.type === 'pong', { timeoutMs: 5000 });
    channel.send({ type: 'ping' });
    await new Promise((r) => setTimeout(r, 50));
    peer.destroy(); // what a QEMU that exits with unread input on its socket does: the channel reads ECONNRESET
    await closed;
    assert.equal(channel.connected, false);
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
