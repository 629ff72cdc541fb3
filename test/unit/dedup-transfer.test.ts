// Dedup transfers end to end (src/migrator/dedup/encoder.ts, decoder.ts, store.ts), sender and receiver
// joined in process: seeded property tests on VM-like streams and mutated copies (0/2/10/50% of bytes
// changed, insertions and deletions) against a receiver holding the first stream's chunks, with random
// write sizes, small windows, a slow reader, evictions and damaged stores; the output is always the input,
// byte for byte. With a return path: both directions exact, a request/answer exchange that never waits
// for a chunk boundary, a local end closing early. Then the failure paths: a need the sender cannot
// answer, a bad literal, garbage, a cut.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chunkBoundaries } from '../../src/migrator/dedup/common/chunker.ts';
import { encodeHeader, encodeNeed, encodeRef } from '../../src/migrator/dedup/common/protocol.ts';
import { DedupReceiver } from '../../src/migrator/dedup/decoder.ts';
import { DedupSender } from '../../src/migrator/dedup/encoder.ts';
import { DedupAbortedError, DedupError, DedupLiteralUnavailableError, DedupProtocolError } from '../../src/migrator/dedup/errors.ts';
import { ChunkStore } from '../../src/migrator/dedup/store.ts';
import { insertDelete, mulberry32, mutateRuns, randomBytes, randomInt, storeChunks, transfer, vmLikeData, type Rand } from '../support/dedup.ts';

const MiB = 1024 * 1024;

describe('dedup transfer', () => {
  let root: string;
  let n = 0;
  const openStore = (maxBytes = 256 * MiB) => ChunkStore.open(join(root, `s${n++}`), { maxBytes });

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'sb-dedup-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('an empty stream, and a stream into an empty receiver', async () => {
    const empty = await transfer(Buffer.alloc(0));
    assert.equal(empty.output.length, 0);
    assert.deepEqual([empty.sender.chunks, empty.receiver.chunks], [0, 0]);
    const data = vmLikeData(mulberry32(1), 3 * MiB + 123);
    const result = await transfer(data);
    assert.ok(result.output.equals(data));
    assert.equal(result.receiver.needs, 0);
    // Zero pages and text compress; random pages do not.
    assert.ok(result.wireToReceiver < data.length * 0.8, `${result.wireToReceiver} bytes on the wire for ${data.length}`);
  });

  test('the first transfer fills both stores; the same bytes again, either way, go as refs', async () => {
    const data = vmLikeData(mulberry32(2), 4 * MiB);
    const receiverStore = await openStore();
    const senderStore = await openStore();
    const first = await transfer(data, { receiver: { store: receiverStore }, sender: { store: senderStore } });
    assert.ok(first.output.equals(data));
    await receiverStore.flush();
    await senderStore.flush();
    assert.ok(receiverStore.stats.chunks > 0);
    assert.deepEqual(new Set(senderStore.keys()), new Set(receiverStore.keys()));

    const again = await transfer(data, { receiver: { store: receiverStore } });
    assert.ok(again.output.equals(data));
    assert.equal(again.sender.literalChunks, 0);
    assert.ok(again.wireToReceiver < data.length * 0.01, `${again.wireToReceiver} bytes on the wire`);
    // The VM comes back: the old sender is now the receiver, its store holds what it sent.
    const back = await transfer(data, { receiver: { store: senderStore, cacheBytes: 0 } });
    assert.ok(back.output.equals(data));
    assert.equal(back.sender.literalChunks, 0);
    assert.ok(back.receiver.storeHits > 0);
    for (const s of [receiverStore, senderStore]) await s.close();
  });

  test('the sender stores what it sends as refs too: a VM that leaves a site it never sent from finds its chunks there on return', async () => {
    const data = vmLikeData(mulberry32(3), 3 * MiB);
    const receiverStore = await openStore();
    const held = await storeChunks(receiverStore, data);
    const senderStore = await openStore();
    const result = await transfer(data, { receiver: { store: receiverStore }, sender: { store: senderStore } });
    assert.ok(result.output.equals(data));
    assert.equal(result.sender.literalChunks, 0, 'every chunk went as a ref');
    await senderStore.flush();
    assert.equal(new Set(senderStore.keys()).size, new Set(receiverStore.keys()).size);
    assert.deepEqual(new Set(senderStore.keys()), new Set(receiverStore.keys()));
    assert.ok(held > 0);
    // Back the other way: everything goes as refs from the old sender's store.
    const back = await transfer(data, { receiver: { store: senderStore, cacheBytes: 0 } });
    assert.ok(back.output.equals(data));
    assert.equal(back.sender.literalChunks, 0);
    for (const s of [receiverStore, senderStore]) await s.close();
  });

  const variants: [string, (rand: Rand, first: Buffer) => Buffer][] = [
    ['0% changed', (_r, first) => first],
    ['2% changed', (r, first) => mutateRuns(r, first, 0.02)],
    ['10% changed', (r, first) => mutateRuns(r, first, 0.1)],
    ['50% changed', (r, first) => mutateRuns(r, first, 0.5)],
    ['insertions and deletions', (r, first) => insertDelete(r, first, 30, 5000)],
    ['unrelated', (r, first) => randomBytes(r, first.length)],
  ];

  for (const [name, mutate] of variants) {
    test(`property: ${name}, random writes and windows, rebuilt byte for byte`, async () => {
      for (const seed of [11, 12]) {
        const rand = mulberry32(seed);
        const first = vmLikeData(rand, 4 * MiB + randomInt(rand, 0, 5000));
        const second = mutate(rand, first);
        const store = await openStore();
        await storeChunks(store, first);
        const result = await transfer(second, {
          receiver: { store, cacheBytes: rand() < 0.5 ? 0 : 8 * MiB },
          sender: { windowBytes: randomInt(rand, 64 * 1024, 4 * MiB) },
          splitRand: rand,
          slowOutput: seed === 12,
        });
        assert.ok(result.output.equals(second), `seed ${seed}: output differs`);
        assert.equal(result.receiver.bytes, second.length);
        if (name === '0% changed') assert.ok(result.wireToReceiver < second.length * 0.01, `seed ${seed}: ${result.wireToReceiver}`);
        if (name === '2% changed') {
          // 2% of bytes in runs of up to 4 KiB touch ~6% of chunks: the rest go as 19-byte refs.
          assert.ok(result.wireToReceiver < second.length * 0.15, `seed ${seed}: ${result.wireToReceiver} bytes on the wire for ${second.length}`);
          assert.ok(result.sender.refBytes > second.length * 0.85);
        }
        if (name === 'insertions and deletions') assert.ok(result.wireToReceiver < second.length * 0.15, `seed ${seed}: ${result.wireToReceiver}`);
        await store.close();
      }
    });
  }

  test('property: evictions during the transfer turn refs into needs, answered by the sender', async () => {
    let needs = 0;
    for (const seed of [21, 22, 23]) {
      const rand = mulberry32(seed);
      const first = vmLikeData(rand, 4 * MiB);
      const second = mutateRuns(rand, first, [0.02, 0.1, 0.5][seed % 3] as number);
      // The store holds a quarter of the first stream; new literals push out chunks the inventory offered.
      const store = await openStore(MiB);
      await storeChunks(store, first);
      const result = await transfer(second, {
        receiver: { store, cacheBytes: 0, readAhead: randomInt(rand, 1, 8) },
        sender: { windowBytes: randomInt(rand, 64 * 1024, 2 * MiB) },
        splitRand: rand,
      });
      assert.ok(result.output.equals(second), `seed ${seed}: output differs`);
      assert.equal(result.sender.needs, result.receiver.needs);
      needs += result.receiver.needs;
      assert.ok(store.stats.evicted > 0);
      await store.close();
    }
    assert.ok(needs > 0, 'no ref ever missed');
  });

  test('property: damaged stores (flipped bytes, truncated and deleted chunks) still rebuild exactly', async () => {
    for (const seed of [31, 32, 33]) {
      const rand = mulberry32(seed);
      const first = vmLikeData(rand, 4 * MiB);
      const second = mutateRuns(rand, first, 0.02);
      const store = await openStore();
      await storeChunks(store, first);
      await store.flush();
      let damaged = 0;
      for (const key of store.keys()) {
        const r = rand();
        if (r > 0.3) continue;
        damaged += 1;
        const path = store.pathOf(key);
        if (r < 0.2) {
          const bytes = await readFile(path);
          const at = randomInt(rand, 0, bytes.length - 1);
          bytes[at] = (bytes[at] as number) ^ (1 << randomInt(rand, 0, 7));
          await writeFile(path, bytes);
        } else if (r < 0.25) await writeFile(path, (await readFile(path)).subarray(0, 100));
        else await rm(path);
      }
      const result = await transfer(second, { receiver: { store, cacheBytes: 0 }, splitRand: rand });
      assert.ok(result.output.equals(second), `seed ${seed}: output differs`);
      assert.ok(result.receiver.needs > 0 && result.receiver.needs <= damaged, `seed ${seed}: ${result.receiver.needs} needs, ${damaged} damaged`);
      assert.ok(store.stats.corrupt > 0);
      // The answers replaced the damaged chunks: after a restart, the same stream needs nothing.
      await store.close();
      const reopened = await ChunkStore.open(store.dir, { maxBytes: 256 * MiB });
      const again = await transfer(second, { receiver: { store: reopened, cacheBytes: 0 } });
      assert.ok(again.output.equals(second));
      assert.equal(again.receiver.needs, 0, `seed ${seed}`);
      assert.equal(again.sender.literalChunks, 0, `seed ${seed}`);
      await reopened.close();
    }
  });

  test('a need the sender cannot answer fails both sides with DedupLiteralUnavailableError (retry plain)', async () => {
    const data = vmLikeData(mulberry32(4), 2 * MiB);
    let injected = false;
    const failure = await transfer(data, {
      toSender: (bytes) => {
        if (injected) return bytes;
        injected = true;
        return Buffer.concat([bytes, encodeNeed(new Uint8Array(16).fill(0xab))]);
      },
    }).then(
      () => assert.fail('the transfer succeeded'),
      (error: unknown) => error,
    );
    assert.ok(failure instanceof DedupLiteralUnavailableError, String(failure));
    assert.ok(failure instanceof DedupError && failure.retryPlain);
    assert.equal(failure.hash, 'ab'.repeat(16));
  });

  test('a literal that does not match its hash fails the receiver; the sender hears why', async () => {
    const data = randomBytes(mulberry32(5), 2 * MiB);
    const sender = new DedupSender({ compress: false });
    const receiver = new DedupReceiver();
    let flipped = false;
    sender.wire.on('data', (bytes: Buffer) => {
      if (!flipped && bytes.length > 10_000) {
        flipped = true;
        bytes = Buffer.from(bytes);
        bytes[bytes.length - 1] = (bytes.at(-1) as number) ^ 1;
      }
      receiver.wire.write(bytes);
    });
    receiver.wire.pipe(sender.wire);
    receiver.output.on('error', () => {});
    sender.input.on('error', () => {});
    receiver.output.resume();
    sender.input.end(data);
    await assert.rejects(receiver.done, (e: unknown) => e instanceof DedupProtocolError && e.code === 'bad-literal');
    await assert.rejects(sender.done, (e: unknown) => e instanceof DedupAbortedError && e.remote && e.code === 'protocol');
  });

  test('garbage on the wire is a DedupProtocolError on either side, never a throw', async () => {
    const rand = mulberry32(6);
    for (let i = 0; i < 200; i += 1) {
      const garbage = randomBytes(rand, randomInt(rand, 1, 3000));
      if (i % 2 === 0) garbage.write('SBDD', 0, 'latin1');
      if (i % 4 === 0) garbage[4] = 1;
      const side = i % 3 === 0 ? new DedupSender() : new DedupReceiver();
      side.wire.resume();
      if (side instanceof DedupSender) side.input.on('error', () => {});
      else side.output.on('error', () => {});
      side.wire.write(garbage);
      side.wire.end();
      await assert.rejects(side.done, (e: unknown) => e instanceof DedupProtocolError, `case ${i}`);
    }
  });

  test('a sender that runs past its window is refused', async () => {
    const receiver = new DedupReceiver();
    receiver.wire.resume();
    receiver.output.on('error', () => {});
    const refs = Array.from({ length: 10 }, (_, i) => encodeRef(new Uint8Array(16).fill(i), 16384));
    receiver.wire.write(Buffer.concat([encodeHeader({ role: 'sender', windowBytes: 64 * 1024 }), ...refs]));
    await assert.rejects(receiver.done, (e: unknown) => e instanceof DedupProtocolError && e.code === 'window-exceeded');
  });

  test('a wire closed mid-transfer fails both sides as truncated', async () => {
    const sender = new DedupSender();
    const receiver = new DedupReceiver();
    let seen = 0;
    sender.wire.on('data', (bytes: Buffer) => {
      seen += bytes.length;
      if (seen > 500_000) {
        receiver.wire.destroy();
        sender.wire.destroy();
        return;
      }
      receiver.wire.write(bytes);
    });
    receiver.wire.pipe(sender.wire);
    receiver.output.on('error', () => {});
    sender.input.on('error', () => {});
    receiver.output.resume();
    sender.input.end(randomBytes(mulberry32(7), 2 * MiB));
    await assert.rejects(receiver.done, (e: unknown) => e instanceof DedupProtocolError && e.code === 'truncated');
    await assert.rejects(sender.done, (e: unknown) => e instanceof DedupProtocolError && e.code === 'truncated');
  });

  /** A sender and a receiver with a return path, joined in process, both ends' streams given error listeners. */
  function duplexPair(options: { sender?: ConstructorParameters<typeof DedupSender>[0]; receiver?: ConstructorParameters<typeof DedupReceiver>[0] } = {}) {
    const sender = new DedupSender({ returnPath: true, ...options.sender });
    const receiver = new DedupReceiver({ returnPath: true, ...options.receiver });
    sender.wire.pipe(receiver.wire);
    receiver.wire.pipe(sender.wire);
    for (const stream of [sender.input, sender.output, receiver.input, receiver.output]) stream.on('error', () => {});
    return { sender, receiver };
  }

  const collect = (stream: NodeJS.ReadableStream): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      const parts: Buffer[] = [];
      stream.on('data', (b: Buffer) => parts.push(b));
      stream.once('end', () => resolve(Buffer.concat(parts)));
      stream.once('error', reject);
    });

  async function writeAll(stream: NodeJS.WritableStream, data: Buffer, rand: Rand): Promise<void> {
    for (let at = 0; at < data.length; ) {
      const size = randomInt(rand, 1, 100_000);
      if (!stream.write(data.subarray(at, at + size))) await once(stream as NodeJS.EventEmitter, 'drain');
      at += size;
    }
    stream.end();
  }

  test('property: with a return path, both directions are rebuilt byte for byte, whichever ends first', async () => {
    for (const seed of [21, 22, 23, 24]) {
      const rand = mulberry32(seed);
      const forward = vmLikeData(rand, 3 * MiB + randomInt(rand, 0, 9999));
      const back = randomBytes(rand, randomInt(rand, 0, 512 * 1024));
      const store = await openStore();
      await storeChunks(store, mutateRuns(rand, forward, 0.05));
      const { sender, receiver } = duplexPair({ sender: { windowBytes: randomInt(rand, 64 * 1024, 2 * MiB) }, receiver: { store } });
      const gotForward = collect(receiver.output);
      const gotBack = collect(sender.output);
      const forwardFirst = seed % 2 === 0;
      await writeAll(forwardFirst ? sender.input : receiver.input, forwardFirst ? forward : back, rand);
      await writeAll(forwardFirst ? receiver.input : sender.input, forwardFirst ? back : forward, rand);
      const [senderStats, receiverStats] = await Promise.all([sender.done, receiver.done]);
      assert.ok((await gotForward).equals(forward), `seed ${seed}: forward bytes differ`);
      assert.ok((await gotBack).equals(back), `seed ${seed}: return bytes differ`);
      assert.equal(senderStats.returnBytes, back.length);
      assert.equal(receiverStats.returnBytes, back.length);
      assert.ok(senderStats.refBytes > forward.length / 2, `seed ${seed}: dedup still works (${senderStats.refBytes} ref bytes)`);
      await store.close();
    }
  });

  test('with a return path, a request the far end must answer is sent without waiting for a chunk boundary', async () => {
    // Ping-pong: each request is a few hundred bytes, far below a chunk; the next one is written only
    // after the answer came back. Without the idle flush the first request would wait forever.
    const { sender, receiver } = duplexPair();
    const rand = mulberry32(31);
    const requests = Array.from({ length: 50 }, () => randomBytes(rand, randomInt(rand, 1, 600)));
    receiver.output.on('data', (request: Buffer) => receiver.input.write(Buffer.concat([Buffer.from('re:'), request])));
    const answers: Buffer[] = [];
    for (const request of requests) {
      sender.input.write(request);
      const [answer] = (await once(sender.output, 'data')) as [Buffer];
      answers.push(answer);
    }
    sender.input.end();
    receiver.input.end();
    await Promise.all([sender.done, receiver.done]);
    assert.deepEqual(answers, requests.map((r) => Buffer.concat([Buffer.from('re:'), r])));
  });

  test('with a return path, a slow link adds no cuts: input waiting for the wire is not idle', async () => {
    // The wire is read in bursts with pauses far longer than the idle flush; the writer keeps the input
    // full. Every cut must be a content-defined one, as for the whole stream chunked at once.
    const data = vmLikeData(mulberry32(32), 6 * MiB);
    const sender = new DedupSender({ returnPath: true, windowBytes: 64 * 1024 * 1024 });
    const receiver = new DedupReceiver({ returnPath: true });
    for (const stream of [sender.input, sender.output, receiver.input, receiver.output]) stream.on('error', () => {});
    receiver.wire.pipe(sender.wire);
    let frames = 0;
    sender.wire.on('data', (bytes: Buffer) => {
      receiver.wire.write(bytes);
      if (++frames % 8 === 0) {
        sender.wire.pause();
        setTimeout(() => sender.wire.resume(), 5);
      }
    });
    const got = collect(receiver.output);
    sender.output.resume();
    await writeAll(sender.input, data, mulberry32(33));
    receiver.input.end();
    const [stats] = await Promise.all([sender.done, receiver.done]);
    assert.ok((await got).equals(data));
    assert.equal(stats.chunks, chunkBoundaries(data).length);
  });

  test('the two ends must agree on the return path', async () => {
    const sender = new DedupSender({ returnPath: true });
    const receiver = new DedupReceiver();
    sender.wire.pipe(receiver.wire);
    receiver.wire.pipe(sender.wire);
    sender.input.on('error', () => {});
    receiver.output.on('error', () => {});
    sender.input.end(randomBytes(mulberry32(9), 1000));
    await assert.rejects(receiver.done, (e: unknown) => e instanceof DedupProtocolError && e.code === 'return-path-mismatch');
    await assert.rejects(sender.done, (e: unknown) => e instanceof DedupProtocolError && e.code === 'return-path-mismatch');
  });

  test('a local end that closes with everything delivered is fine; bytes that come after it fail the transfer', async () => {
    const clean = duplexPair();
    clean.receiver.output.resume();
    clean.sender.output.resume();
    clean.sender.input.write(randomBytes(mulberry32(10), 10_000));
    await once(clean.receiver.output, 'data');
    await new Promise((resolve) => setTimeout(resolve, 20));
    clean.receiver.consumerClosed();
    clean.receiver.input.end();
    clean.sender.input.end();
    await Promise.all([clean.sender.done, clean.receiver.done]);

    const late = duplexPair();
    late.receiver.output.resume();
    late.sender.output.resume();
    late.receiver.consumerClosed();
    late.sender.input.write(randomBytes(mulberry32(11), 10_000));
    await assert.rejects(late.receiver.done, (e: unknown) => e instanceof DedupAbortedError && e.code === 'cancelled');
    await assert.rejects(late.sender.done, (e: unknown) => e instanceof DedupAbortedError && e.remote);
  });

  test('abort() tells the peer', async () => {
    const sender = new DedupSender();
    const receiver = new DedupReceiver();
    sender.wire.pipe(receiver.wire);
    receiver.wire.pipe(sender.wire);
    receiver.output.on('error', () => {});
    sender.input.on('error', () => {});
    receiver.output.resume();
    sender.input.write(randomBytes(mulberry32(8), 100_000));
    await new Promise((resolve) => setTimeout(resolve, 20));
    sender.abort();
    await assert.rejects(sender.done, (e: unknown) => e instanceof DedupAbortedError && e.code === 'cancelled' && !e.remote);
    await assert.rejects(receiver.done, (e: unknown) => e instanceof DedupAbortedError && e.code === 'cancelled' && e.remote);
  });
});

