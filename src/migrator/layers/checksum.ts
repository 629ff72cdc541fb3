// A layer's content checksum: what the layer itself holds, independent of how the qcow2 file is laid
// out, so the two copies of a layer (the source's frozen top, the destination's received overlay,
// written in a different order by the mirror) hash the same.
//
// Definition: take the ranges the layer allocates (`present` in `qemu-img map` of the layer alone,
// data and zero clusters alike), merge adjacent ones, cut them at 64 KiB boundaries, and hash, for each
// piece in order, the line "<start>-<end>\n" followed by the piece's bytes (zeros for zero clusters).
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { layerMap, LayerStoreError } from './qemu-img.ts';

const PIECE = 64 * 1024;

export async function layerChecksum(file: string): Promise<string> {
  const map = await layerMap(file);
  const hash = createHash('sha256');
  const zeros = Buffer.alloc(PIECE);
  const buffer = Buffer.alloc(PIECE);
  const handle = await open(file, 'r');
  try {
    // Merge adjacent present ranges (data next to zero clusters included) into maximal ranges.
    const runs: { start: number; end: number; parts: typeof map }[] = [];
    for (const entry of map) {
      if (!entry.present) continue;
      const last = runs.at(-1);
      if (last && last.end === entry.start) {
        last.end += entry.length;
        last.parts.push(entry);
      } else runs.push({ start: entry.start, end: entry.start + entry.length, parts: [entry] });
    }
    for (const run of runs) {
      for (let pos = run.start; pos < run.end; ) {
        const end = Math.min(run.end, (Math.floor(pos / PIECE) + 1) * PIECE);
        hash.update(`${pos}-${end}\n`);
        // The piece may span several map entries (it never spans runs).
        for (let p = pos; p < end; ) {
          const part = run.parts.find((e) => e.start <= p && p < e.start + e.length);
          if (part === undefined) throw new LayerStoreError(`inconsistent allocation map for ${file} at ${p}`);
          const partEnd = Math.min(end, part.start + part.length);
          const length = partEnd - p;
          if (part.zero && !part.data) {
            hash.update(zeros.subarray(0, length));
          } else if (part.offset !== undefined) {
            const { bytesRead } = await handle.read(buffer, 0, length, part.offset + (p - part.start));
            if (bytesRead !== length) throw new LayerStoreError(`${file} is shorter than its allocation map says (offset ${part.offset})`);
            hash.update(buffer.subarray(0, length));
          } else {
            throw new LayerStoreError(`${file} has compressed or unmapped clusters at ${p}; layers must be plain qcow2 data clusters`);
          }
          p = partEnd;
        }
        pos = end;
      }
    }
  } finally {
    await handle.close();
  }
  return `sha256:${hash.digest('hex')}`;
}
