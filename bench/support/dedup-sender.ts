// The dedup sender alone, on the main thread (so: one core), over a stream held in memory: how fast the
// transport takes a real QEMU stream in. The same stand-in receiver as bench/dedup-throughput.ts (which
// measures generated data): it offers `known` as its inventory, never acks (the window is the whole
// stream) and answers the end; no chunk store on the sender's side.
import { encodeEnd, encodeHave, encodeHeader } from '../../src/migrator/dedup/common/protocol.ts';
import { DedupSender, DEFAULT_ZSTD_LEVEL, type DedupSenderStats } from '../../src/migrator/dedup/encoder.ts';

export interface SenderRun {
  wallMs: number;
  /** Process CPU time (user + system) during the run: what it cost on a shared machine. */
  cpuMs: number;
  /** Bytes the sender put on the wire. */
  wireBytes: number;
  stats: DedupSenderStats;
}

/** One pass of `data` through a DedupSender whose receiver holds `known` (16-byte hashes). */
export async function runSender(data: Uint8Array, known: readonly Uint8Array[], level = DEFAULT_ZSTD_LEVEL): Promise<SenderRun> {
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  const sender = new DedupSender({ windowBytes: 0xffffffff, level });
  let wireBytes = 0;
  sender.wire.on('data', (b: Buffer) => (wireBytes += b.length));
  sender.wire.write(encodeHeader({ role: 'receiver', windowBytes: 0 }));
  for (let i = 0; i < known.length; i += 1024) sender.wire.write(encodeHave(known.slice(i, i + 1024), i + 1024 >= known.length));
  if (known.length === 0) sender.wire.write(encodeHave([], true));
  for (let at = 0; at < data.length; at += 256 * 1024) {
    if (!sender.input.write(data.subarray(at, at + 256 * 1024))) await new Promise((resolve) => sender.input.once('drain', resolve));
  }
  await new Promise<void>((resolve) => sender.input.end(resolve));
  const stats = sender.stats;
  sender.wire.write(encodeEnd(stats.chunks, stats.bytes));
  await sender.done;
  const wallMs = performance.now() - t0;
  const used = process.cpuUsage(cpu);
  return { wallMs, cpuMs: (used.user + used.system) / 1000, wireBytes, stats: sender.stats };
}

/** The fastest (wall clock) of `runs` passes. */
export async function bestSenderRun(data: Uint8Array, known: readonly Uint8Array[], runs = 3): Promise<SenderRun> {
  let best: SenderRun | undefined;
  for (let i = 0; i < runs; i += 1) {
    const run = await runSender(data, known);
    if (best === undefined || run.wallMs < best.wallMs) best = run;
  }
  return best as SenderRun;
}

/** Raw input rate in Mbit/s (10^6 bit/s). */
export function mbitPerSecond(bytes: number, ms: number): number {
  return (bytes * 8) / 1e6 / (ms / 1000);
}
