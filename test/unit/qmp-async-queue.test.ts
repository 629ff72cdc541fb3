import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AsyncQueue } from '../../src/migrator/qmp/common/async-queue.ts';

class OverflowError extends Error {}

function queue(limit = 10, onDone?: () => void): AsyncQueue<number> {
  return new AsyncQueue<number>({ limit, overflowError: (n) => new OverflowError(`over ${n}`), ...(onDone ? { onDone } : {}) });
}

test('delivers items pushed before and after the consumer asks', async () => {
  const q = queue();
  q.push(1);
  assert.deepEqual(await q.next(), { done: false, value: 1 });
  const waiting = q.next();
  q.push(2);
  assert.deepEqual(await waiting, { done: false, value: 2 });
});

test('end() lets the consumer drain, then reports done to every waiter', async () => {
  const q = queue();
  q.push(1);
  q.push(2);
  q.end();
  q.push(3);
  const seen: number[] = [];
  for await (const n of q) seen.push(n);
  assert.deepEqual(seen, [1, 2]);

  const idle = queue();
  const a = idle.next();
  const b = idle.next();
  idle.end();
  assert.deepEqual(await Promise.all([a, b]), [
    { done: true, value: undefined },
    { done: true, value: undefined },
  ]);
});

test('a consumer that falls behind gets every queued item, then the overflow error, then done', async () => {
  let done = 0;
  const q = queue(3, () => done++);
  for (let i = 1; i <= 5; i++) q.push(i);
  assert.equal(done, 1, 'overflow stops the subscription at once');
  const seen: number[] = [];
  await assert.rejects(async () => {
    for await (const n of q) seen.push(n);
  }, OverflowError);
  assert.deepEqual(seen, [1, 2, 3]);
  assert.deepEqual(await q.next(), { done: true, value: undefined });
});

test('fail() rejects a waiting consumer once', async () => {
  const q = queue();
  const waiting = q.next();
  q.fail(new Error('boom'));
  await assert.rejects(waiting, /boom/);
  assert.deepEqual(await q.next(), { done: true, value: undefined });
});

test('return() (break in for-await) drops queued items and calls onDone once', async () => {
  let done = 0;
  const q = queue(10, () => done++);
  q.push(1);
  q.push(2);
  for await (const n of q) {
    assert.equal(n, 1);
    break;
  }
  assert.equal(done, 1);
  assert.deepEqual(await q.next(), { done: true, value: undefined });
  q.end();
  assert.equal(done, 1);
});
