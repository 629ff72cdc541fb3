// Boot images (kernel, initrd) by content: `<data>/images/<sha256>`. A VM's spec names its boot
// files by path; across sites they are identified by sha256, sent once, verified on arrival and cached.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { assertSha256 } from './common/ids.ts';
import { LayerStoreError } from './qemu-img.ts';

/** sha256 of a file, cached by path, size and mtime. */
const hashCache = new Map<string, { size: number; mtimeMs: number; sha256: string }>();

export async function sha256File(path: string): Promise<string> {
  const st = await stat(path);
  const cached = hashCache.get(path);
  if (cached && cached.size === st.size && cached.mtimeMs === st.mtimeMs) return cached.sha256;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  const sha256 = hash.digest('hex');
  hashCache.set(path, { size: st.size, mtimeMs: st.mtimeMs, sha256 });
  return sha256;
}

export class ImageStore {
  readonly dir: string;
  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens (creating if needed) the store in `dir` (conventionally `<data>/images`). */
  static async open(dir: string): Promise<ImageStore> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    return new ImageStore(dir);
  }

  path(sha256: string): string {
    return join(this.dir, assertSha256(sha256));
  }

  async has(sha256: string): Promise<boolean> {
    try {
      return (await stat(this.path(sha256))).isFile();
    } catch {
      return false;
    }
  }

  /** Stores an image, checking that its content hashes to `sha256`; at most `maxBytes` are accepted. */
  async put(sha256: string, data: AsyncIterable<Uint8Array>, options: { maxBytes?: number } = {}): Promise<string> {
    const target = this.path(sha256);
    if (await this.has(sha256)) {
      // Drain the stream so the sender is not left blocked.
      for await (const _ of data) void _;
      return target;
    }
    const maxBytes = options.maxBytes ?? 1024 * 1024 * 1024;
    const tmp = `${target}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.part`;
    const hash = createHash('sha256');
    const handle = await open(tmp, 'w', 0o600);
    let size = 0;
    try {
      for await (const chunk of data) {
        size += chunk.byteLength;
        if (size > maxBytes) throw new LayerStoreError(`boot image ${sha256} is larger than the ${maxBytes}-byte limit`);
        hash.update(chunk);
        await handle.write(chunk);
      }
      await handle.sync();
    } catch (error) {
      await handle.close();
      await rm(tmp, { force: true });
      throw error;
    }
    await handle.close();
    const got = hash.digest('hex');
    if (got !== sha256) {
      await rm(tmp, { force: true });
      throw new LayerStoreError(`boot image upload does not match its name: expected sha256 ${sha256}, received ${got} (${size} bytes)`);
    }
    await rename(tmp, target);
    return target;
  }
}
