// `node bench/dedup-throughput.ts [--mb 64] [--level=1]`: one-core throughput of the dedup sender
// (src/migrator/dedup/encoder.ts) on generated data, and where its time goes. Stages, each on the same bytes:
//   chunk           FastCDC boundaries only (common/chunker.ts)
//   chunk+hash      plus SHA-256/128 of every chunk
//   zstd            zstd of the bytes in 64 KiB batches (what literals cost), no chunking
//   sender          the whole DedupSender (chunk, hash, ref-or-literal, zstd batches, frames) against a
//                   stand-in receiver that holds nothing (every chunk a literal) and acks nothing (huge window)
//   sender (known)  the same bytes a second time, the receiver holding all of them (every chunk a ref)
// Everything runs on the main thread (zstdCompressSync), so MB/s is per core; best of 3 runs, wall clock, with
// process CPU time in brackets (what counts on a shared machine). Datasets: `vm` (4 KiB pages:
// 34% random, 25% zero, 26% copies of 256 recurring pages, 15% text), `random`, `zero`, `text`.
import { parseArgs } from 'node:util';
import { constants as zlibConstants, zstdCompressSync } from 'node:zlib';
import { Chunker, chunkBoundaries } from '../src/migrator/dedup/common/chunker.ts';
import { runSender, type SenderRun } from './support/dedup-sender.ts';
import { chunkHash } from '../src/migrator/dedup/hash.ts';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '64' }, level: { type: 'string', default: '1' } } });
const MB = Number(values.mb);
const LEVEL = Number(values.level);
const SIZE = MB * 1024 * 1024;
const PAGE = 4096;

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

function randomFill(next: () => number, out: Buffer, at: number, n: number): void {
  for (let i = 0; i < n; i += 4) out.writeUInt32LE(next(), at + i);
}

function textPage(next: () => number): string {
  const words = ['the', 'qemu', 'page', 'migrate', 'snowbird', 'edge', 'core', 'dirty', 'kernel', 'socket', '\n', 'of', 'and'];
  let text = '';
  while (text.length < PAGE) text += `${words[next() % words.length]} `;
  return text.slice(0, PAGE);
}

function dataset(name: string): Buffer {
  const next = prng(7);
  const out = Buffer.alloc(SIZE);
  if (name === 'zero') return out;
  if (name === 'random') {
    randomFill(next, out, 0, SIZE);
    return out;
  }
  const recurring = Array.from({ length: 256 }, () => {
    const b = Buffer.alloc(PAGE);
    randomFill(next, b, 0, PAGE);
    return b;
  });
  for (let at = 0; at < SIZE; at += PAGE) {
    const r = (next() % 100) / 100;
    if (name === 'text' || (r >= 0.85 && name === 'vm')) out.write(textPage(next), at, 'latin1');
    else if (r < 0.34) randomFill(next, out, at, PAGE);
    else if (r < 0.59) continue;
    else (recurring[next() % 256] as Buffer).copy(out, at);
  }
  return out;
}

function time(fn: () => void): { ms: number; cpuMs: number } {
  const cpu = process.cpuUsage();
  const t = performance.now();
  fn();
  const ms = performance.now() - t;
  const used = process.cpuUsage(cpu);
  return { ms, cpuMs: (used.user + used.system) / 1000 };
}

const timing = (run: SenderRun): { ms: number; cpuMs: number } => ({ ms: run.wallMs, cpuMs: run.cpuMs });
const rate = (ms: number) => (SIZE / 1e6 / (ms / 1000)).toFixed(0).padStart(6);

console.log(`dedup sender throughput, ${MB} MiB per dataset, zstd level ${LEVEL}, node ${process.version}; MB/s = 10^6 bytes/s (wall; cpu in brackets)`);
console.log(`${'dataset'.padEnd(8)} ${'chunk'.padStart(13)} ${'chunk+hash'.padStart(13)} ${'zstd 64K'.padStart(13)} ${'sender'.padStart(13)} ${'sender known'.padStart(13)}  wire/raw (first, known)`);
for (const name of ['vm', 'random', 'zero', 'text']) {
  const data = dataset(name);
  const best = (runs: { ms: number; cpuMs: number }[]) => runs.reduce((a, b) => (b.ms < a.ms ? b : a));
  const chunkRuns = [0, 1, 2].map(() => time(() => chunkBoundaries(data)));
  const hashRuns = [0, 1, 2].map(() =>
    time(() => {
      const chunker = new Chunker();
      let start = 0;
      for (const end of [...chunker.feed(data), ...chunker.end()]) {
        chunkHash(data.subarray(start, end));
        start = end;
      }
    }),
  );
  const zstdRuns = [0, 1, 2].map(() =>
    time(() => {
      for (let at = 0; at < SIZE; at += 65536) {
        zstdCompressSync(data.subarray(at, at + 65536), { pledgedSrcSize: 65536, params: { [zlibConstants.ZSTD_c_compressionLevel]: LEVEL } });
      }
    }),
  );
  const firstRuns: SenderRun[] = [];
  for (let i = 0; i < 3; i += 1) firstRuns.push(await runSender(data, [], LEVEL));
  const first = firstRuns[0] as SenderRun;
  const senderRuns = firstRuns.map(timing);
  const known: Uint8Array[] = [];
  let start = 0;
  const seen = new Set<string>();
  for (const end of chunkBoundaries(data)) {
    const h = chunkHash(data.subarray(start, end));
    const k = h.toString('hex');
    if (!seen.has(k)) known.push(h);
    seen.add(k);
    start = end;
  }
  const secondRuns: SenderRun[] = [];
  for (let i = 0; i < 3; i += 1) secondRuns.push(await runSender(data, known, LEVEL));
  const second = secondRuns[0] as SenderRun;
  const knownRuns = secondRuns.map(timing);
  const cell = (r: { ms: number; cpuMs: number }) => `${rate(r.ms)} (${rate(r.cpuMs)})`;
  console.log(
    `${name.padEnd(8)} ${cell(best(chunkRuns))} ${cell(best(hashRuns))} ${cell(best(zstdRuns))} ${cell(best(senderRuns))} ${cell(best(knownRuns))}  ${((first.wireBytes / SIZE) * 100).toFixed(1)}%, ${((second.wireBytes / SIZE) * 100).toFixed(2)}%`,
  );
}
