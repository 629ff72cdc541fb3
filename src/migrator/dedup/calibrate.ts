// How fast the dedup sender runs on this machine, now: it chunks, hashes and compresses a few MiB of
// memory-like bytes (zero pages, text-like pages, random pages) into a discarding wire, timed from the
// first byte in to the end frame out. Used by the `auto` dedup choice (common/choice.ts); a loaded
// machine measures slower, which is the point.
import { randomBytes } from 'node:crypto';
import { encodeHave, encodeHeader } from './common/protocol.ts';
import { DedupSender } from './encoder.ts';

const MiB = 1024 * 1024;
const PAGE = 4096;

/** Pages of a running guest, roughly: a quarter zero, a quarter repetitive text, half random. */
function memoryLike(bytes: number): Buffer {
  const data = randomBytes(bytes);
  const text = Buffer.from('snowbird calibration: the quick brown fox jumps over the lazy dog 0123456789\n');
  for (let page = 0; page * PAGE < bytes; page += 1) {
    const at = page * PAGE;
    if (page % 4 === 0) data.fill(0, at, at + PAGE);
    else if (page % 4 === 1) for (let i = at; i < at + PAGE; i += text.length) text.copy(data, i, 0, Math.min(text.length, at + PAGE - i));
  }
  return data;
}

/** The sender's throughput in bits/s of raw input, over `bytes` (default 16 MiB) of memory-like data. */
export async function measureSenderThroughput(bytes = 16 * MiB): Promise<number> {
  const data = memoryLike(bytes);
  const sender = new DedupSender({ windowBytes: bytes + MiB });
  sender.wire.resume();
  sender.wire.on('error', () => {});
  sender.input.on('error', () => {});
  // A receiver that holds nothing: every chunk goes as a literal, the sender's dearest case.
  sender.wire.write(Buffer.concat([encodeHeader({ role: 'receiver', windowBytes: 0 }), encodeHave([], true)]));
  const started = process.hrtime.bigint();
  const finished = new Promise<void>((resolve, reject) => {
    sender.input.once('finish', resolve);
    sender.input.once('error', reject);
  });
  for (let at = 0; at < bytes; at += 256 * 1024) sender.input.write(data.subarray(at, at + 256 * 1024));
  sender.input.end();
  await finished;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  sender.abort();
  return (bytes * 8) / seconds;
}
