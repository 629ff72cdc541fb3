// The few qemu-img operations the layer store needs, run offline on image files. A failure becomes
// a LayerStoreError carrying qemu-img's own message.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export class LayerStoreError extends Error {
  override readonly name = 'LayerStoreError';
}

async function qemuImg(args: string[], what: string): Promise<string> {
  try {
    const { stdout } = await run('qemu-img', args, { maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (cause) {
    const e = cause as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') {
      throw new LayerStoreError(`qemu-img was not found on PATH (needed to ${what}). Install it: sudo apt-get install -y qemu-utils`, { cause });
    }
    throw new LayerStoreError(`qemu-img could not ${what}: ${(e.stderr ?? e.message).trim()}`, { cause });
  }
}

/** Creates an empty qcow2 image; `backing` is the string written into its header (relative to the image's folder), or null. */
export async function createImage(file: string, virtualSize: number, backing: string | null): Promise<void> {
  const args = ['create', '-q', '-f', 'qcow2'];
  // -u: do not open the backing file (it may not be at that path yet, or be in use by QEMU).
  if (backing !== null) args.push('-F', 'qcow2', '-u', '-b', backing);
  args.push(file, String(virtualSize));
  await qemuImg(args, `create ${file}`);
}

/** Rewrites the backing file name in the image header only (`rebase -u`); the content is untouched. */
export async function setBackingName(file: string, backing: string | null): Promise<void> {
  const args = backing === null ? ['rebase', '-q', '-u', '-b', '', file] : ['rebase', '-q', '-u', '-F', 'qcow2', '-b', backing, file];
  await qemuImg(args, `rewrite the backing file name of ${file}`);
}

/** Writes the image's allocated clusters into its backing image (`qemu-img commit`). */
export async function commitIntoBacking(file: string): Promise<void> {
  await qemuImg(['commit', '-q', '-d', file], `commit ${file} into its backing image`);
}

export interface ImageInfo {
  virtualSize: number;
  backingFilename: string | undefined;
  actualSize: number | undefined;
}

export async function imageInfo(file: string, options: { forceShare?: boolean } = {}): Promise<ImageInfo> {
  const args = ['info', '--output=json'];
  if (options.forceShare) args.push('-U');
  args.push(file);
  const info = JSON.parse(await qemuImg(args, `read ${file}`)) as { 'virtual-size': number; 'backing-filename'?: string; 'actual-size'?: number };
  return { virtualSize: info['virtual-size'], backingFilename: info['backing-filename'], actualSize: info['actual-size'] };
}

export interface MapEntry {
  start: number;
  length: number;
  /** Allocated in this image (false = reads through to the backing image). */
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Where the range's data lies in the image file, when it maps there directly. */
  offset?: number;
}

/** The allocation map of `file` alone (its backing image is not opened). */
export async function layerMap(file: string): Promise<MapEntry[]> {
  const json = JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: file } });
  return JSON.parse(await qemuImg(['map', '--output=json', '-U', `json:${json}`], `map ${file}`)) as MapEntry[];
}
