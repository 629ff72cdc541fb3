// The dedup transport on a real link (src/migrator/dedup/link.ts), without QEMU: a local client writes a
// VM-like stream into a dedupBridgeListener on one site, a handler target on the other site
// (PeerLink.exposeHandler + dedupStreamHandler) rebuilds it into a unix socket that checks it byte for
// byte. Both ways, with stores: the way back sends references to what the first way left behind; a
// damaged store still gives the exact stream; a destination that stops reading, and a peer that speaks
// garbage, end the source's local connection at once (the latter as a fault of the transport). With a
// return path, a conversation shaped like QEMU's post-copy: small requests from the destination answered
// at once, the destination closing first when it has read the stream's end, the source after it.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PeerLink } from '../../src/migrator/link/peer-link.ts';
import { dedupBridgeListener, dedupStreamHandler, type DedupBridge } from '../../src/migrator/dedup/link.ts';
import { DedupProtocolError } from '../../src/migrator/dedup/errors.ts';
import { ChunkStore } from '../../src/migrator/dedup/store.ts';
import { measureSenderThroughput } from '../../src/migrator/dedup/calibrate.ts';
import { exposeLinkProbe, probeLink } from '../../src/migrator/link/probe.ts';
import { mulberry32, mutateRuns, vmLikeData } from '../support/dedup.ts';
import { startTestSites, type TestSites } from '../support/link-testing.ts';

const MiB = 1024 * 1024;

/** A unix server standing in for the destination QEMU: digests what it reads; `closeAfter` bytes, it closes. */
async function sink(path: string, closeAfter = Infinity): Promise<{ server: Server; streams: Promise<{ bytes: number; sha256: string }>[] }> {
  const streams: Promise<{ bytes: number; sha256: string }>[] = [];
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    streams.push(
      new Promise((resolve) => {
        const hash = createHash('sha256');
        let bytes = 0;
        socket.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          hash.update(chunk);
          if (bytes >= closeAfter) socket.destroy();
        });
        socket.on('close', () => resolve({ bytes, sha256: hash.digest('hex') }));
        socket.on('end', () => socket.end());
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { server, streams };
}

/** Connects to the bridge as the source QEMU does, writes `data`, ends; resolves when the bridge closed the connection. */
async function send(path: string, data: Buffer): Promise<{ closedMs: number }> {
  const socket: Socket = createConnection({ path, allowHalfOpen: true });
  socket.on('error', () => {});
  await once(socket, 'connect');
  // (events.once would reject on 'error': a reset is one of the outcomes here.)
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.resume();
  for (let at = 0; at < data.length && !socket.destroyed; at += 256 * 1024) {
    if (!socket.write(data.subarray(at, at + 256 * 1024))) await Promise.race([new Promise((resolve) => socket.once('drain', resolve)), closed]);
  }
  const started = Date.now();
  if (!socket.destroyed) socket.end();
  await closed;
  return { closedMs: Date.now() - started };
}

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

describe('dedup on the link', { timeout: 120_000 }, () => {
  let s: TestSites & { edge: PeerLink; core: PeerLink };
  const stores: ChunkStore[] = [];
  const servers: Server[] = [];
  const bridges: DedupBridge[] = [];
  let n = 0;

  before(async () => {
    const sites = await startTestSites();
    s = Object.assign(sites, await sites.connect());
  });
  after(async () => {
    for (const b of bridges) await b.close();
    for (const server of servers) server.close();
    for (const store of stores) await store.close();
    await s.dispose();
  });

  const openStore = async (site: 'edge' | 'core'): Promise<ChunkStore> => {
    const store = await ChunkStore.open(join(s.root, site, 'chunks', 'vm'), { maxBytes: 128 * MiB });
    stores.push(store);
    return store;
  };

  /** One stream from `from` to the other site through dedup; returns the bridge's stats and what the sink got. */
  async function move(from: PeerLink, to: PeerLink, fromStore: ChunkStore | undefined, toStore: ChunkStore | undefined, data: Buffer, closeAfter?: number) {
    const id = n++;
    const target = sink(join(s.root, `sink-${id}.sock`), closeAfter);
    const { server, streams } = await target;
    servers.push(server);
    const results: ({ error: Error } | { stats: unknown })[] = [];
    to.exposeHandler(`t${id}`, dedupStreamHandler(join(s.root, `sink-${id}.sock`), { store: async () => toStore, onDone: (r) => results.push(r) }));
    const bridge = await dedupBridgeListener(from, join(s.root, `bridge-${id}.sock`), `t${id}`, { store: async () => fromStore });
    bridges.push(bridge);
    const sent = await send(bridge.path, data);
    for (let i = 0; i < 100 && (streams.length === 0 || bridge.stats.active > 0); i++) await sleep(20);
    const got = streams[0] === undefined ? undefined : await streams[0];
    return { stats: bridge.stats, got, sent, results };
  }

  test('edge → core → edge with stores: exact both ways; the way back sends references to what the edge sent', async () => {
    const data = vmLikeData(mulberry32(7), 24 * MiB);
    const edgeStore = await openStore('edge');
    const coreStore = await openStore('core');
    const out = await move(s.edge, s.core, edgeStore, coreStore, data);
    assert.deepEqual(out.got, { bytes: data.length, sha256: sha(data) });
    assert.equal(out.stats.rawBytes, data.length);
    assert.equal(out.stats.fault, undefined);
    assert.ok(out.stats.wireOut < data.length * 0.8, `first way: ${out.stats.wireOut} bytes on the wire for ${data.length}`);

    // The VM changed a little while away; it comes back from the core (whose receiver stored the chunks).
    const changed = mutateRuns(mulberry32(8), data, 0.02);
    await edgeStore.flush();
    await coreStore.flush();
    const back = await move(s.core, s.edge, coreStore, edgeStore, changed);
    assert.deepEqual(back.got, { bytes: changed.length, sha256: sha(changed) });
    assert.ok(back.stats.sender.refBytes > changed.length * 0.5, `refs: ${back.stats.sender.refBytes} of ${changed.length}`);
    assert.ok(back.stats.wireOut + back.stats.wireIn < changed.length * 0.25, `way back: ${back.stats.wireOut} + ${back.stats.wireIn} bytes on the wire for ${changed.length}`);
  });

  test('a damaged store at the destination still gives the exact stream (damaged chunks are asked for again)', async () => {
    const data = vmLikeData(mulberry32(9), 8 * MiB);
    const edgeStore = await openStore('edge');
    const coreStore = await openStore('core');
    await move(s.edge, s.core, edgeStore, coreStore, data);
    await coreStore.flush();
    // Flip a byte in every 10th chunk file the core holds.
    let damaged = 0;
    const root = join(coreStore.dir, 'chunks');
    for (const dir of await readdir(root)) {
      for (const name of await readdir(join(root, dir))) {
        if (damaged++ % 10 !== 0) continue;
        const file = join(root, dir, name);
        const bytes = await readFile(file);
        bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] as number) ^ 0xff;
        await writeFile(file, bytes);
      }
    }
    assert.ok(damaged > 10);
    const again = await move(s.edge, s.core, edgeStore, coreStore, data);
    assert.deepEqual(again.got, { bytes: data.length, sha256: sha(data) });
    assert.ok(again.stats.sender.needs > 0, 'some refs came back as needs');
    assert.equal(again.stats.fault, undefined);
    assert.ok(coreStore.stats.corrupt > 0);
  });

  test('a destination that stops reading ends the source connection at once, as a cancel (not a fault)', async () => {
    const data = vmLikeData(mulberry32(10), 16 * MiB);
    const out = await move(s.edge, s.core, undefined, undefined, data, 2 * MiB);
    assert.ok(out.sent.closedMs < 5000);
    assert.ok((out.got?.bytes ?? 0) < data.length);
    assert.equal(out.stats.fault, undefined);
    assert.ok(out.stats.lastError !== undefined);
    assert.ok(out.results.some((r) => 'error' in r));
  });

  test('with a return path: answers to small requests come at once, and the destination may close first, as QEMU does', async () => {
    // The destination asks for "pages" by number (4-byte requests); the source answers each with the page
    // (4 KiB, far below a content-defined chunk boundary's reach) between bulk data. The destination reads
    // until the END marker, writes BYE and closes; the source closes once it reads BYE.
    const page = (i: number) => vmLikeData(mulberry32(1000 + i), 4096);
    const bulk = vmLikeData(mulberry32(12), 6 * MiB);
    const END = Buffer.from('\nEND-OF-STREAM\n');
    const destination = join(s.root, 'duplex-dest.sock');
    const received: Buffer[] = [];
    const served = new Promise<void>((resolve) => {
      const server = createServer({ allowHalfOpen: true }, (socket) => {
        socket.on('error', () => {});
        let asked = 0;
        const ask = () => socket.write(Buffer.from(Uint32Array.of(asked).buffer));
        ask();
        let seen = Buffer.alloc(0);
        socket.on('data', (chunk: Buffer) => {
          received.push(chunk);
          seen = Buffer.concat([seen, chunk]);
          // Each answered page lets the next request go (the guest faulting on its next page).
          while (asked < 20 && seen.includes(page(asked))) {
            seen = seen.subarray(seen.indexOf(page(asked)) + 4096);
            asked += 1;
            if (asked < 20) ask();
          }
          if (asked === 20 && Buffer.concat(received).subarray(-END.length).equals(END)) {
            socket.end('BYE');
            resolve();
          }
        });
      });
      servers.push(server);
      server.listen(destination);
    });
    await once(servers.at(-1) as Server, 'listening');
    const results: ({ error: Error } | { stats: unknown })[] = [];
    s.core.exposeHandler('duplex', dedupStreamHandler(destination, { returnPath: true, onDone: (r) => results.push(r) }));
    const bridge = await dedupBridgeListener(s.edge, join(s.root, 'bridge-duplex.sock'), 'duplex', { returnPath: true });
    bridges.push(bridge);

    const source = createConnection({ path: bridge.path, allowHalfOpen: true });
    await once(source, 'connect');
    const sent: Buffer[] = [];
    const write = (b: Buffer) => {
      sent.push(b);
      source.write(b);
    };
    let answered = 0;
    let back = Buffer.alloc(0);
    const bye = new Promise<void>((resolve) => {
      source.on('data', (chunk: Buffer) => {
        back = Buffer.concat([back, chunk]);
        while (back.length >= 4 && answered < 20) {
          const i = back.readUInt32LE(0);
          back = back.subarray(4);
          write(bulk.subarray(answered * 64 * 1024, (answered + 1) * 64 * 1024));
          write(page(i));
          answered += 1;
          if (answered === 20) write(END);
        }
        if (back.toString() === 'BYE') resolve();
      });
    });
    await served;
    await bye;
    const closed = once(source, 'close');
    source.end();
    await closed;
    for (let i = 0; i < 100 && results.length === 0; i++) await sleep(20);
    assert.ok(Buffer.concat(received).equals(Buffer.concat(sent)), 'the destination got the source\'s bytes exactly');
    assert.deepEqual(results.map((r) => ('error' in r ? r.error.message : 'ok')), ['ok']);
    assert.equal(bridge.stats.fault, undefined);
    assert.equal(bridge.stats.sender.returnBytes, 20 * 4 + 3);
  });

  test('the link probe measures what the peer confirms it received; the sender calibration gives a rate', async () => {
    exposeLinkProbe(s.core);
    exposeLinkProbe(s.edge);
    for (const [from, to] of [[s.edge, 'core'], [s.core, 'edge']] as const) {
      const probe = await probeLink(from, { durationMs: 200 });
      assert.ok(probe.bytes > 0 && probe.bytes % MiB === 0, `→ ${to}: ${probe.bytes} bytes confirmed`);
      assert.ok(probe.ms >= 200 && Number.isFinite(probe.bitsPerSecond) && probe.bitsPerSecond > 0, `→ ${to}: ${JSON.stringify(probe)}`);
    }
    const capped = await probeLink(s.edge, { durationMs: 60_000, maxBytes: 4 * MiB });
    assert.equal(capped.bytes, 4 * MiB, 'maxBytes ends the probe');
    const rate = await measureSenderThroughput(4 * MiB);
    assert.ok(Number.isFinite(rate) && rate > 0, String(rate));
  });

  test('a peer that speaks garbage fails the stream as a fault of the transport; the source connection is closed', async () => {
    s.core.exposeHandler('garbage', (stream) => {
      stream.on('error', () => {});
      stream.resume();
      stream.write(Buffer.from('this is not a dedup header at all'));
    });
    const bridge = await dedupBridgeListener(s.edge, join(s.root, 'bridge-garbage.sock'), 'garbage');
    bridges.push(bridge);
    const sent = await send(bridge.path, vmLikeData(mulberry32(11), 4 * MiB));
    assert.ok(sent.closedMs < 5000);
    assert.ok(bridge.stats.fault instanceof DedupProtocolError, String(bridge.stats.fault));
  });
});
