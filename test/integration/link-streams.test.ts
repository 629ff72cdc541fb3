// Byte streams across the link: local unix client → bridgeListener → TLS → exposed unix server on the
// other site, opened by either side; exact byte counts, half-close, close/error propagation, cut().
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { after, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PeerDisconnectedError, PeerRequestError } from '../../src/migrator/link/errors.ts';
import type { PeerLink } from '../../src/migrator/link/peer-link.ts';
import { bridgeListener, type BridgeListener } from '../../src/migrator/link/streams.ts';
import { startTestSites, type TestSites } from '../support/link-testing.ts';

const MiB = 1024 * 1024;
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function sites(): Promise<TestSites & { edge: PeerLink; core: PeerLink }> {
  const s = await startTestSites();
  cleanups.push(() => s.dispose());
  return Object.assign(s, await s.connect());
}

/** A unix socket server standing in for QEMU's (migration incoming, NBD export, VNC). */
interface UnixTarget {
  path: string;
  connections: Socket[];
  nextConnection(): Promise<Socket>;
}

async function unixTarget(path: string, onConnection: (socket: Socket) => void): Promise<UnixTarget> {
  const connections: Socket[] = [];
  const waiting: ((s: Socket) => void)[] = [];
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    connections.push(socket);
    waiting.shift()?.(socket);
    onConnection(socket);
  });
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const c of connections) c.destroy();
        server.close(() => r());
      }),
  );
  return {
    path,
    connections,
    nextConnection: () => new Promise((r) => waiting.push(r)),
  };
}

const echo = (socket: Socket) => socket.pipe(socket);

/** Reads everything; on EOF answers with `<bytes> <sha256>` and ends. */
const digestSink = (socket: Socket) => {
  const hash = createHash('sha256');
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  socket.on('end', () => socket.end(`${bytes} ${hash.digest('hex')}`));
};

async function bridge(link: PeerLink, path: string, target: string): Promise<BridgeListener> {
  const b = await bridgeListener(link, path, target);
  cleanups.push(() => b.close());
  return b;
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path, allowHalfOpen: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.on('error', () => {}); // tests look at end/close
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Writes `total` random bytes (with backpressure) then ends; returns their sha256. */
async function writeRandom(stream: Duplex, total: number): Promise<string> {
  const hash = createHash('sha256');
  const block = randomBytes(MiB);
  for (let sent = 0, i = 0; sent < total; i++) {
    const chunk = Buffer.from(block.subarray(0, Math.min(MiB, total - sent)));
    chunk.writeUInt32BE(i, 0); // no two chunks alike
    hash.update(chunk);
    sent += chunk.length;
    if (!stream.write(chunk)) await once(stream, 'drain');
  }
  stream.end();
  return hash.digest('hex');
}

/** Reads to EOF; returns byte count and sha256. */
async function readAll(stream: Duplex): Promise<{ bytes: number; sha256: string; text: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let head = '';
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    hash.update(chunk);
    if (head.length < 200) head += chunk.toString('latin1');
  }
  return { bytes, sha256: hash.digest('hex'), text: head };
}

/**
 * Resolves with how long it took until `socket` saw EOF, an error or its close (what QEMU would notice),
 * rejects after `ms`. A unix peer cannot be made to see more than EOF: closing with an error and
 * closing cleanly look the same from the other end of a unix socket.
 */
async function noticesWithin(socket: Duplex, ms: number, what: string): Promise<number> {
  const started = Date.now();
  if (socket.destroyed || socket.readableEnded) return 0;
  // (events.once would reject on 'error'; here an error is one of the outcomes looked for.)
  await Promise.race([
    new Promise((resolve) => socket.once('end', resolve)),
    new Promise((resolve) => socket.once('close', resolve)),
    new Promise((resolve) => socket.once('error', resolve)),
    sleep(ms).then(() => {
      throw new Error(`${what} saw no EOF, error or close within ${ms} ms`);
    }),
  ]);
  return Date.now() - started;
}

async function closesWithin(socket: Duplex, ms: number, what: string): Promise<void> {
  if (socket.destroyed) return;
  await Promise.race([
    new Promise((resolve) => socket.once('close', resolve)),
    sleep(ms).then(() => {
      throw new Error(`${what} still open after ${ms} ms`);
    }),
  ]);
}

async function settled(link: PeerLink, target: string): Promise<void> {
  for (let i = 0; i < 100 && (link.streamStats()[target]?.active ?? 0) > 0; i++) await sleep(10);
}

describe('streams', () => {
  test('edge-initiated: bridge on the edge → TLS → echo on the core, 64 MiB round trip with exact counts', async (t: TestContext) => {
    const s = await sites();
    const target = await unixTarget(join(s.root, 'echo.sock'), echo);
    s.core.exposeTarget('echo', target.path);
    const b = await bridge(s.edge, join(s.root, 'bridge.sock'), 'echo');
    assert.equal((await stat(b.path)).mode & 0o777, 0o600);

    const size = 64 * MiB;
    const client = await connectUnix(b.path);
    const started = performance.now();
    const [sent, got] = await Promise.all([writeRandom(client, size), readAll(client)]);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(got.bytes, size);
    assert.equal(got.sha256, sent);
    t.diagnostic(`64 MiB echoed (both directions at once) in ${seconds.toFixed(2)} s: ${(size / MiB / seconds).toFixed(0)} MiB/s each way`);

    await settled(s.edge, 'echo');
    await settled(s.core, 'echo');
    const counts = { bytesIn: size, bytesOut: size, connections: 1, active: 0 };
    assert.deepEqual(s.edge.streamStats(), { echo: counts });
    assert.deepEqual(s.core.streamStats(), { echo: counts });
    const stats = b.stats;
    assert.deepEqual([stats.connections, stats.active, stats.failed, stats.bytesOut, stats.bytesIn], [1, 0, 0, size, size]);
  });

  test('core-initiated: bridge on the core → the edge dials back → echo on the edge', async () => {
    const s = await sites();
    const target = await unixTarget(join(s.root, 'vnc.sock'), echo);
    s.edge.exposeTarget('vnc', target.path);
    const b = await bridge(s.core, join(s.root, 'core-bridge.sock'), 'vnc');
    const size = 16 * MiB;
    const client = await connectUnix(b.path);
    const [sent, got] = await Promise.all([writeRandom(client, size), readAll(client)]);
    assert.equal(got.bytes, size);
    assert.equal(got.sha256, sent);
    await settled(s.core, 'vnc');
    await settled(s.edge, 'vnc');
    assert.deepEqual(s.core.streamStats().vnc, { bytesIn: size, bytesOut: size, connections: 1, active: 0 });
    assert.deepEqual(s.edge.streamStats().vnc, { bytesIn: size, bytesOut: size, connections: 1, active: 0 });

    // openStream directly, several at once.
    const streams = await Promise.all([1, 2, 3].map(() => s.core.openStream('vnc')));
    const replies = await Promise.all(
      streams.map(async (st, i) => {
        st.end(`stream ${i}`);
        return (await readAll(st)).text;
      }),
    );
    assert.deepEqual(replies, ['stream 0', 'stream 1', 'stream 2']);
  });

  test('throughput of one stream through the bridge, each direction', async (t: TestContext) => {
    const s = await sites();
    const size = 256 * MiB;
    // edge → core: what a migration from the edge looks like.
    const sink = await unixTarget(join(s.root, 'sink.sock'), digestSink);
    s.core.exposeTarget('sink', sink.path);
    const toCore = await bridge(s.edge, join(s.root, 'to-core.sock'), 'sink');
    let client = await connectUnix(toCore.path);
    let started = performance.now();
    const [sent, answer] = await Promise.all([writeRandom(client, size), readAll(client)]);
    let seconds = (performance.now() - started) / 1000;
    assert.equal(answer.text, `${size} ${sent}`);
    const up = size / 1e6 / seconds;

    // core → edge: a migration back to the edge, the core's QEMU writing into a bridge on the core.
    const sinkAtEdge = await unixTarget(join(s.root, 'edge-sink.sock'), digestSink);
    s.edge.exposeTarget('sink', sinkAtEdge.path);
    const toEdge = await bridge(s.core, join(s.root, 'to-edge.sock'), 'sink');
    client = await connectUnix(toEdge.path);
    started = performance.now();
    const [sent2, answer2] = await Promise.all([writeRandom(client, size), readAll(client)]);
    seconds = (performance.now() - started) / 1000;
    assert.equal(answer2.text, `${size} ${sent2}`);
    const down = size / 1e6 / seconds;
    t.diagnostic(`one stream over loopback TLS, 256 MiB: edge→core ${up.toFixed(0)} MB/s, core→edge ${down.toFixed(0)} MB/s`);
  });

  test('a target that speaks first (as an NBD server does) is heard, in both directions', async () => {
    const s = await sites();
    const greet = (name: string) => (socket: Socket) => {
      socket.write(`NBDMAGIC from ${name}\n`);
      socket.pipe(socket);
    };
    s.core.exposeTarget('nbd', (await unixTarget(join(s.root, 'nbd-core.sock'), greet('core'))).path);
    s.edge.exposeTarget('nbd', (await unixTarget(join(s.root, 'nbd-edge.sock'), greet('edge'))).path);
    for (const [link, expected] of [
      [s.edge, 'core'],
      [s.core, 'edge'],
    ] as const) {
      const stream = await link.openStream('nbd');
      const [first] = (await once(stream, 'data')) as [Buffer];
      assert.equal(first.toString(), `NBDMAGIC from ${expected}\n`);
      stream.end('bye');
      assert.equal((await readAll(stream)).text, 'bye');
    }
  });

  test('half-close: the opener finishes sending and still gets the answer', async () => {
    const s = await sites();
    const counter = (socket: Socket) => {
      let n = 0;
      socket.on('data', (c: Buffer) => (n += c.length));
      socket.on('end', () => setTimeout(() => socket.end(`received ${n}`), 50));
    };
    s.core.exposeTarget('count', (await unixTarget(join(s.root, 'count-core.sock'), counter)).path);
    s.edge.exposeTarget('count', (await unixTarget(join(s.root, 'count-edge.sock'), counter)).path);
    const viaBridge = await bridge(s.edge, join(s.root, 'count-bridge.sock'), 'count');
    const client = await connectUnix(viaBridge.path);
    client.end(Buffer.alloc(100_000));
    assert.equal((await readAll(client)).text, 'received 100000');
    const fromCore = await s.core.openStream('count');
    fromCore.end(Buffer.alloc(12345));
    assert.equal((await readAll(fromCore)).text, 'received 12345');

    // The other way round: the target finishes first (says its piece, sends EOF) and keeps reading.
    const received: Promise<number>[] = [];
    const speaker = (socket: Socket) => {
      socket.end('done talking');
      received.push(
        new Promise((resolve) => {
          let n = 0;
          socket.on('data', (c: Buffer) => (n += c.length));
          socket.on('end', () => resolve(n));
        }),
      );
    };
    s.core.exposeTarget('speaker', (await unixTarget(join(s.root, 'speaker.sock'), speaker)).path);
    const listener = await s.edge.openStream('speaker');
    assert.equal((await readAll(listener)).text, 'done talking');
    listener.end(Buffer.alloc(54321)); // still writable after the peer's EOF
    assert.equal(await received[0], 54321);
    await closesWithin(listener, 1000, 'stream after both sides finished');
  });

  test('handler targets: each stream is handed to a function in process, whichever side opens; counted; a throwing handler closes the opener\'s stream', async () => {
    const s = await sites();
    // Answers with the digest of what it read, as digestSink does on a unix socket.
    const digestHandler = (stream: Duplex) => {
      stream.on('error', () => {});
      const hash = createHash('sha256');
      let bytes = 0;
      stream.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      stream.on('end', () => stream.end(`${bytes} ${hash.digest('hex')}`));
    };
    const undoCore = s.core.exposeHandler('digest', digestHandler);
    s.edge.exposeHandler('digest', digestHandler);
    assert.deepEqual(s.core.exposedTargets(), ['digest']);

    // Edge opens through a bridge (as the source QEMU would), then the core opens (the edge dials back).
    const viaBridge = await bridge(s.edge, join(s.root, 'digest-bridge.sock'), 'digest');
    const size = 8 * MiB;
    const client = await connectUnix(viaBridge.path);
    const [sent, got] = await Promise.all([writeRandom(client, size), readAll(client)]);
    assert.equal(got.text, `${size} ${sent}`);
    const fromCore = await s.core.openStream('digest');
    const [sentBack, gotBack] = await Promise.all([writeRandom(fromCore, size), readAll(fromCore)]);
    assert.equal(gotBack.text, `${size} ${sentBack}`);
    await settled(s.core, 'digest');
    await settled(s.edge, 'digest');
    // One stream each way: each side got `size` bytes and a reply, and sent the same.
    const both = size + got.text.length;
    assert.deepEqual(s.core.streamStats().digest, { bytesIn: both, bytesOut: both, connections: 2, active: 0 });
    assert.deepEqual(s.edge.streamStats().digest, { bytesIn: both, bytesOut: both, connections: 2, active: 0 });

    // A handler that throws, or destroys its stream: the opener notices at once (as when a unix target closes).
    s.core.exposeHandler('throws', () => {
      throw new Error('handler bug');
    });
    s.core.exposeHandler('drops', (stream) => stream.destroy());
    for (const target of ['throws', 'drops']) {
      const stream = await s.edge.openStream(target);
      stream.on('error', () => {});
      stream.resume();
      await noticesWithin(stream, 1000, `stream to the ${target} handler`);
    }

    // Undo: the target is gone; a unix target of the same name replaces a handler.
    undoCore();
    await assert.rejects(s.edge.openStream('digest'), (e: unknown) => e instanceof PeerRequestError && e.code === 'unknown-target');
    s.core.exposeTarget('digest', (await unixTarget(join(s.root, 'digest-core.sock'), digestSink)).path);
    const plain = await s.edge.openStream('digest');
    plain.end('abc');
    assert.match((await readAll(plain)).text, /^3 [0-9a-f]{64}$/);
    assert.throws(() => s.core.exposeHandler('../escape', () => {}), TypeError);
  });

  test('closing one end closes the other, whichever end and whichever side opened', async () => {
    const s = await sites();
    const atCore = await unixTarget(join(s.root, 'hold-core.sock'), () => {});
    const atEdge = await unixTarget(join(s.root, 'hold-edge.sock'), () => {});
    s.core.exposeTarget('hold', atCore.path);
    s.edge.exposeTarget('hold', atEdge.path);
    const edgeBridge = await bridge(s.edge, join(s.root, 'hold-bridge.sock'), 'hold');

    // Local client (source QEMU) goes away → the target's connection sees EOF; when the target closes
    // in turn (as QEMU does on EOF), everything in between is torn down.
    let remote = atCore.nextConnection();
    let local: Duplex = await connectUnix(edgeBridge.path);
    let far = await remote;
    local.destroy();
    await noticesWithin(far, 1000, 'core-side target connection');
    far.end();
    await closesWithin(far, 1000, 'core-side target connection');

    // The target (destination QEMU) goes away → the local client sees EOF.
    remote = atCore.nextConnection();
    local = await connectUnix(edgeBridge.path);
    far = await remote;
    far.destroy();
    await noticesWithin(local, 1000, 'edge-side bridge client');
    local.end();
    await closesWithin(local, 1000, 'edge-side bridge client');

    // Same for a stream the core opened.
    remote = atEdge.nextConnection();
    local = await s.core.openStream('hold');
    far = await remote;
    local.destroy();
    await noticesWithin(far, 1000, 'edge-side target connection');
    far.end();
    await closesWithin(far, 1000, 'edge-side target connection');

    remote = atEdge.nextConnection();
    local = await s.core.openStream('hold');
    local.on('error', () => {});
    local.resume(); // EOF reaches a stream's reader once it reads
    far = await remote;
    far.destroy();
    await noticesWithin(local, 1000, 'core-side stream');
    local.end();
    await closesWithin(local, 1000, 'core-side stream');

    await settled(s.edge, 'hold');
    await settled(s.core, 'hold');
    assert.equal(s.edge.streamStats().hold?.connections, 4);
    assert.equal(s.edge.streamStats().hold?.active, 0);
  });

  for (const who of ['edge', 'core'] as const) {
    test(`${who}.cut() closes both ends of every open stream promptly`, async (t: TestContext) => {
      const s = await sites();
      const atCore = await unixTarget(join(s.root, 'c.sock'), echo);
      const atEdge = await unixTarget(join(s.root, 'e.sock'), echo);
      s.core.exposeTarget('t', atCore.path);
      s.edge.exposeTarget('t', atEdge.path);
      const edgeBridge = await bridge(s.edge, join(s.root, 'eb.sock'), 't');
      const coreBridge = await bridge(s.core, join(s.root, 'cb.sock'), 't');

      const coreConn = atCore.nextConnection();
      const idleClient = await connectUnix(edgeBridge.path);
      const idleFar = await coreConn;
      const edgeConn = atEdge.nextConnection();
      const busyClient = await connectUnix(coreBridge.path);
      const busyFar = await edgeConn;
      busyClient.on('error', () => {});
      busyClient.resume();
      // Keep bytes flowing on one of them while the link is cut.
      let writing = true;
      void (async () => {
        const chunk = Buffer.alloc(64 * 1024);
        while (writing && !busyClient.destroyed) {
          if (!busyClient.write(chunk)) {
            await new Promise((resolve) => {
              busyClient.once('drain', resolve);
              busyClient.once('close', resolve);
            });
          }
        }
      })();
      await sleep(100);
      assert.ok((s.core.streamStats().t?.bytesOut ?? 0) > 0, 'bytes were flowing');

      const link = who === 'edge' ? s.edge : s.core;
      const other = who === 'edge' ? s.core : s.edge;
      link.cut();
      const ends: [Duplex, string][] = [
        [idleClient, 'idle bridge client on the edge'],
        [idleFar, 'idle target connection on the core'],
        [busyClient, 'busy bridge client on the core'],
        [busyFar, 'busy target connection on the edge'],
      ];
      const times = await Promise.all(ends.map(([sock, what]) => noticesWithin(sock, 2000, what)));
      writing = false;
      t.diagnostic(`after ${who}.cut(), stream ends noticed within ${Math.max(...times)} ms`);
      assert.ok((await link.whenClosed()) instanceof PeerDisconnectedError);
      assert.ok((await other.whenClosed()) instanceof PeerDisconnectedError, 'the other side notices too');
      await assert.rejects(link.openStream('t'), PeerDisconnectedError);
    });
  }

  test('unknown or unavailable targets: clear errors; the bridge drops the local connection at once', async () => {
    const s = await sites();
    for (const link of [s.edge, s.core]) {
      await assert.rejects(link.openStream('missing'), (e: unknown) => {
        assert.ok(e instanceof PeerRequestError);
        assert.equal(e.code, 'unknown-target');
        assert.equal(e.method, 'openStream');
        assert.match(e.message, /exposes no stream target "missing"/);
        return true;
      });
    }
    await assert.rejects(s.edge.openStream('../../etc/passwd'), (e: unknown) => e instanceof PeerRequestError && e.code === 'unknown-target');
    assert.throws(() => s.core.exposeTarget('../escape', '/tmp/x.sock'), TypeError);
    assert.throws(() => s.core.exposeTarget('ok', 'relative.sock'), TypeError);

    s.core.exposeTarget('dead', join(s.root, 'nobody-listens.sock'));
    s.edge.exposeTarget('dead', join(s.root, 'nobody-listens.sock'));
    for (const link of [s.edge, s.core]) {
      await assert.rejects(link.openStream('dead'), (e: unknown) => e instanceof PeerRequestError && e.code === 'target-unavailable' && /ENOENT/.test(e.message));
    }

    const errors: Error[] = [];
    const b = await bridgeListener(s.edge, join(s.root, 'missing-bridge.sock'), 'missing', { onError: (e) => errors.push(e) });
    cleanups.push(() => b.close());
    const client = await connectUnix(b.path);
    client.on('error', () => {});
    await noticesWithin(client, 1000, 'bridge client of an unknown target');
    assert.equal(b.stats.failed, 1);
    assert.equal((b.stats.lastError as PeerRequestError | undefined)?.code, 'unknown-target');
    assert.equal(errors.length, 1);
  });

  test('a once-bridge carries its first connection and refuses the next at connect()', async () => {
    const s = await sites();
    s.core.exposeTarget('echo', (await unixTarget(join(s.root, 'echo-once.sock'), echo)).path);
    const b = await bridgeListener(s.edge, join(s.root, 'once.sock'), 'echo', { once: true });
    cleanups.push(() => b.close());
    const first = await connectUnix(b.path);
    // A reconnecting client (QEMU's NBD client after a failed move) gets ENOENT, not a new stream.
    await assert.rejects(connectUnix(b.path), { code: 'ENOENT' });
    const [sent, got] = await Promise.all([writeRandom(first, MiB), readAll(first)]);
    assert.equal(got.sha256, sent, 'the first connection is still bridged');
    assert.equal(b.stats.connections, 1);
    await b.close();
  });

  test('a stale socket file at the bridge path is replaced; a live one or a regular file is not', async () => {
    const s = await sites();
    const path = join(s.root, 'stale.sock');
    // A process that dies while listening leaves its socket file behind.
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    await once(child, 'exit');
    assert.ok((await stat(path)).isSocket());
    const b = await bridge(s.edge, path, 'x');
    assert.equal(b.path, path);
    await assert.rejects(bridgeListener(s.edge, path, 'x'), { code: 'EADDRINUSE' }, 'in use by a live listener');
    await writeFile(join(s.root, 'not-a-socket'), 'x');
    await assert.rejects(bridgeListener(s.edge, join(s.root, 'not-a-socket'), 'x'), { code: 'EADDRINUSE' });
  });
});
