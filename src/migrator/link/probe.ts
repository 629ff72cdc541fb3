// The link's throughput to the peer, measured: one stream to the peer's probe target, filled with
// incompressible bytes for a short while, timed until the peer confirms how many it received (so
// bytes still in buffers are not counted as sent). Short on purpose: it runs before a move. On a
// long-distance link TCP's slow start makes it read low, which errs towards saving link bytes.
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { PeerLink } from './peer-link.ts';

/** The stream target every agent exposes for probes. */
export const LINK_PROBE_TARGET = 'link-probe';
const MiB = 1024 * 1024;

export interface LinkProbe {
  bytes: number;
  ms: number;
  bitsPerSecond: number;
}

/** Serves the peer's probes: counts what arrives and, at its end, answers with the count (8 bytes). */
export function exposeLinkProbe(link: PeerLink): () => void {
  return link.exposeHandler(LINK_PROBE_TARGET, (stream) => {
    stream.on('error', () => {});
    let received = 0;
    stream.on('data', (chunk: Buffer) => (received += chunk.length));
    stream.once('end', () => {
      const answer = Buffer.alloc(8);
      answer.writeBigUInt64BE(BigInt(received));
      stream.end(answer);
    });
  });
}

let filler: Buffer | undefined;

function drainOrClose(stream: Duplex): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}

/** Sends for `durationMs` (or `maxBytes`, whichever first) and returns what the peer confirmed. */
export async function probeLink(link: PeerLink, options: { durationMs?: number; maxBytes?: number } = {}): Promise<LinkProbe> {
  const durationMs = options.durationMs ?? 300;
  const maxBytes = options.maxBytes ?? 256 * MiB;
  filler ??= randomBytes(MiB);
  const stream: Duplex = await link.openStream(LINK_PROBE_TARGET);
  const started = performance.now();
  const answer = new Promise<number>((resolve, reject) => {
    const parts: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => parts.push(chunk));
    stream.once('end', () => {
      const all = Buffer.concat(parts);
      if (all.length === 8) resolve(Number(all.readBigUInt64BE(0)));
      else reject(new Error(`the peer's link probe answered ${all.length} bytes, not 8`));
    });
    stream.once('error', reject);
    stream.once('close', () => reject(new Error('the link probe stream closed before the peer answered')));
  });
  answer.catch(() => {});
  try {
    let sent = 0;
    while (sent < maxBytes && performance.now() - started < durationMs && !stream.destroyed) {
      sent += filler.length;
      if (!stream.write(filler)) await drainOrClose(stream);
    }
    stream.end();
    const bytes = await answer;
    const ms = performance.now() - started;
    return { bytes, ms, bitsPerSecond: (bytes * 8) / (ms / 1000) };
  } finally {
    stream.destroy();
  }
}
