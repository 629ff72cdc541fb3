// Builds the snowbird demo guest: a Debian kernel plus a small initramfs (busybox, /init, and the
// static C programs in guest/src) whose workloads check memory and disk invariants and report over
// a serial port. Everything comes from Debian packages and the host's gcc; the result is cached
// under cacheDir/guest/<hash>/ by a hash of all inputs, so a second build is a checksum check.
//
// Run directly: node guest/build.ts [CACHE_DIR] [--force]   (default CACHE_DIR: .cache)

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

export interface GuestArtifacts {
  /** cacheDir/guest/<hash> */
  dir: string;
  /** Absolute path of the kernel image (bzImage). */
  kernel: string;
  /** Absolute path of the gzip-compressed newc initramfs. */
  initrd: string;
  /** `uname -r` of the kernel, e.g. "6.1.0-56-amd64". */
  kernelVersion: string;
  /** The input hash naming `dir`. */
  hash: string;
  /** Absolute path of manifest.json. */
  manifest: string;
}

export interface BuildProgress {
  step: string;
  detail?: string;
  done: number;
  total: number;
}

/** A build failure the user can fix; `command` is the exact command to run, when there is one. */
export class GuestBuildError extends Error {
  readonly command: string | undefined;
  constructor(message: string, command?: string) {
    super(message);
    this.name = 'GuestBuildError';
    this.command = command;
  }
}

/** What manifest.json holds. */
interface Manifest {
  formatVersion: 1;
  hash: string;
  kernelVersion: string;
  kernelPackage: string;
  kernelDeb: string;
  kernelDebSha256: string;
  modules: string[];
  programs: string[];
  builtAt: string;
  files: Record<'vmlinuz' | 'initrd.img', { sha256: string; bytes: number }>;
}

const GUEST_DIR = import.meta.dirname;
const SRC_DIR = path.join(GUEST_DIR, 'src');
const BUSYBOX = '/bin/busybox';
/** Modules the guest needs (with their dependencies, resolved from each .ko's modinfo). */
const ROOT_MODULES = ['virtio_pci', 'virtio_blk'];
/** Preferred load order among equals; bookworm's dependency graph yields exactly this order. */
const MODULE_ORDER = ['virtio_ring', 'virtio', 'virtio_pci_legacy_dev', 'virtio_pci_modern_dev', 'virtio_pci', 'virtio_blk'];
/** Host tools, and the Debian package that provides each. */
const TOOLS: Record<string, string> = {
  'apt-get': 'apt',
  'apt-cache': 'apt',
  dpkg: 'dpkg',
  'dpkg-deb': 'dpkg',
  tar: 'tar',
  gcc: 'gcc',
  cpio: 'cpio',
  gzip: 'gzip',
};
const STEPS = ['check tools', 'resolve kernel', 'download kernel', 'hash inputs', 'unpack', 'modules', 'compile', 'stage initramfs', 'pack initramfs', 'finish'];

export async function buildGuest(opts: {
  cacheDir: string;
  onProgress?: (p: BuildProgress) => void;
  force?: boolean;
}): Promise<GuestArtifacts> {
  const cacheDir = path.resolve(opts.cacheDir);
  const report = (step: string, detail?: string): void => {
    opts.onProgress?.({ step, ...(detail === undefined ? {} : { detail }), done: Math.max(0, STEPS.indexOf(step)), total: STEPS.length });
  };

  report('check tools');
  await checkTools();

  report('resolve kernel');
  const pkg = await resolveKernelPackage();

  const downloads = path.join(cacheDir, 'downloads');
  report('download kernel', pkg.name);
  const deb = await fetchKernelDeb(pkg, downloads, (d) => report('download kernel', d));

  report('hash inputs');
  const hash = await inputHash(deb);
  const guestRoot = path.join(cacheDir, 'guest');
  const finalDir = path.join(guestRoot, hash);
  if (!opts.force) {
    const cached = await verifyBuild(finalDir);
    if (cached) {
      opts.onProgress?.({ step: 'cached', detail: finalDir, done: STEPS.length, total: STEPS.length });
      return cached;
    }
  }

  await fs.mkdir(guestRoot, { recursive: true });
  await removeStale(guestRoot, '.build-');
  const work = path.join(guestRoot, `.build-${hash.slice(0, 12)}-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const out = path.join(work, 'out');
    const root = path.join(work, 'root');
    const unpacked = path.join(work, 'deb');
    await fs.mkdir(out, { recursive: true });

    report('unpack', path.basename(deb.file));
    await mkdirs(unpacked);
    await unpackKernel(deb.file, unpacked);
    const { vmlinuz, kernelVersion, moduleDir, config } = await findKernelFiles(unpacked);

    report('modules');
    await mkdirs(root, 'bin', 'sbin', 'usr/bin', 'usr/sbin', 'lib/modules', 'etc', 'proc', 'sys', 'dev', 'tmp', 'run', 'root');
    const modules = await installModules(moduleDir, config, path.join(root, 'lib/modules'));

    const programs = (await fs.readdir(SRC_DIR)).filter((f) => f.endsWith('.c')).sort();
    for (const [i, file] of programs.entries()) {
      const name = file.slice(0, -2);
      report('compile', `${name} (${i + 1}/${programs.length})`);
      await compile(path.join(SRC_DIR, file), path.join(root, 'bin', name));
    }

    report('stage initramfs');
    await stageBusybox(root, new Set(programs.map((f) => f.slice(0, -2))));
    await fs.copyFile(path.join(GUEST_DIR, 'init'), path.join(root, 'init'));
    await fs.chmod(path.join(root, 'init'), 0o755);

    report('pack initramfs');
    const initrd = path.join(out, 'initrd.img');
    await packInitramfs(root, initrd);
    await fs.copyFile(vmlinuz, path.join(out, 'vmlinuz'));

    report('finish');
    const manifest: Manifest = {
      formatVersion: 1,
      hash,
      kernelVersion,
      kernelPackage: pkg.name,
      kernelDeb: path.basename(deb.file),
      kernelDebSha256: deb.sha256,
      modules,
      programs: programs.map((f) => f.slice(0, -2)),
      builtAt: new Date().toISOString(),
      files: {
        vmlinuz: await fileInfo(path.join(out, 'vmlinuz')),
        'initrd.img': await fileInfo(initrd),
      },
    };
    await fs.writeFile(path.join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');

    // Publish atomically: readers see either no directory or a complete one.
    await fs.rm(finalDir, { recursive: true, force: true });
    try {
      await fs.rename(out, finalDir);
    } catch (err) {
      // A concurrent build of the same inputs got there first; theirs is as good as ours.
      const theirs = await verifyBuild(finalDir);
      if (theirs) return theirs;
      throw err;
    }
    const built = await verifyBuild(finalDir);
    if (!built) throw new GuestBuildError(`The guest build in ${finalDir} did not verify after it was written; delete it and build again.`);
    opts.onProgress?.({ step: 'done', detail: finalDir, done: STEPS.length, total: STEPS.length });
    return built;
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** The newest build under cacheDir/guest whose files match their manifest checksums. */
export async function findBuiltGuest(cacheDir: string): Promise<GuestArtifacts | undefined> {
  const guestRoot = path.join(path.resolve(cacheDir), 'guest');
  let names: string[];
  try {
    names = await fs.readdir(guestRoot);
  } catch {
    return undefined;
  }
  const candidates: { dir: string; builtAt: number }[] = [];
  for (const name of names) {
    if (!/^[0-9a-f]{64}$/.test(name)) continue;
    const manifest = await readManifest(path.join(guestRoot, name));
    if (manifest) candidates.push({ dir: path.join(guestRoot, name), builtAt: Date.parse(manifest.builtAt) || 0 });
  }
  candidates.sort((a, b) => b.builtAt - a.builtAt);
  for (const c of candidates) {
    const ok = await verifyBuild(c.dir);
    if (ok) return ok;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Verification

async function readManifest(dir: string): Promise<Manifest | undefined> {
  try {
    const m = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as Partial<Manifest>;
    if (m.formatVersion !== 1 || typeof m.kernelVersion !== 'string' || typeof m.hash !== 'string' || typeof m.builtAt !== 'string') return undefined;
    if (!m.files?.vmlinuz?.sha256 || !m.files['initrd.img']?.sha256) return undefined;
    return m as Manifest;
  } catch {
    return undefined;
  }
}

async function verifyBuild(dir: string): Promise<GuestArtifacts | undefined> {
  const manifest = await readManifest(dir);
  if (!manifest || manifest.hash !== path.basename(dir)) return undefined;
  for (const [name, want] of Object.entries(manifest.files)) {
    try {
      if ((await sha256File(path.join(dir, name))) !== want.sha256) return undefined;
    } catch {
      return undefined;
    }
  }
  return {
    dir,
    kernel: path.join(dir, 'vmlinuz'),
    initrd: path.join(dir, 'initrd.img'),
    kernelVersion: manifest.kernelVersion,
    hash: manifest.hash,
    manifest: path.join(dir, 'manifest.json'),
  };
}

// ---------------------------------------------------------------------------------------------
// Host tools

async function checkTools(): Promise<void> {
  const sudo = process.getuid?.() === 0 ? '' : 'sudo ';
  if (!(await which('apt-get'))) {
    throw new GuestBuildError('Building the guest needs a Debian or Ubuntu host: apt-get was not found on PATH.');
  }
  const missing = new Set<string>();
  for (const [tool, pkg] of Object.entries(TOOLS)) if (!(await which(tool))) missing.add(pkg);
  if (!(await isStaticElf(BUSYBOX))) missing.add('busybox-static');
  if (missing.size > 0) {
    const pkgs = [...missing].sort().join(' ');
    const why = missing.has('busybox-static') && missing.size === 1
      ? `${BUSYBOX} is missing or not statically linked (the dynamic "busybox" package cannot run in the initramfs).`
      : `Missing host packages: ${pkgs}.`;
    throw new GuestBuildError(`${why} Install them and build again.`, `${sudo}apt-get install -y ${pkgs}`);
  }
}

async function which(tool: string): Promise<string | undefined> {
  for (const dir of (process.env['PATH'] ?? '/usr/bin:/bin').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, tool);
    try {
      await fs.access(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** True for an ELF executable without a PT_INTERP program header, i.e. one that needs no loader. */
async function isStaticElf(file: string): Promise<boolean> {
  let buf: Buffer;
  try {
    buf = await fs.readFile(file);
  } catch {
    return false;
  }
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 /* 64-bit */) return false;
  const phoff = Number(buf.readBigUInt64LE(32));
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > buf.length) return false;
    if (buf.readUInt32LE(off) === 3 /* PT_INTERP */) return false;
  }
  return true;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never rejects for a non-zero exit (the caller decides). */
function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

function tail(text: string, lines = 15): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------
// Kernel package

interface KernelPackage {
  name: string;
  version: string | undefined;
  sha256: string | undefined;
}

/** The real package behind linux-image-amd64 (e.g. linux-image-6.1.0-56-amd64), from apt's local lists. */
async function resolveKernelPackage(): Promise<KernelPackage> {
  const sudo = process.getuid?.() === 0 ? '' : 'sudo ';
  // The candidate metapackage pins the exact image version: "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
  const meta = await run('apt-cache', ['show', '--no-all-versions', 'linux-image-amd64']);
  const dep = /^Depends:.*?\b(linux-image-[0-9][^\s,]*-amd64)(?:\s*\(=\s*([^)\s]+)\))?/m.exec(meta.stdout);
  const name = dep?.[1];
  if (meta.code !== 0 || !name) {
    throw new GuestBuildError(
      'apt does not know the linux-image-amd64 package (empty or stale package lists, or not an amd64 Debian host). Update the lists and build again.',
      `${sudo}apt-get update`,
    );
  }
  let version = dep[2];
  if (!version) version = /Candidate:\s*(\S+)/.exec((await run('apt-cache', ['policy', name])).stdout)?.[1];
  let sha256: string | undefined;
  if (version && version !== '(none)') {
    const show = await run('apt-cache', ['show', `${name}=${version}`]);
    sha256 = /^SHA256:\s*([0-9a-f]{64})$/m.exec(show.stdout)?.[1];
  }
  return { name, version: version === '(none)' ? undefined : version, sha256 };
}

/** apt-get download's file name: name_version_arch.deb, with the epoch's ':' written as %3a. */
function debFileName(pkg: KernelPackage): string | undefined {
  return pkg.version ? `${pkg.name}_${pkg.version.replace(/:/g, '%3a')}_amd64.deb` : undefined;
}

/** The kernel .deb in `downloads`, downloaded only when no verified copy is there. */
async function fetchKernelDeb(
  pkg: KernelPackage,
  downloads: string,
  progress: (detail: string) => void,
): Promise<{ file: string; sha256: string }> {
  await fs.mkdir(downloads, { recursive: true });
  const expected = debFileName(pkg);
  if (expected) {
    const file = path.join(downloads, expected);
    const sha = await sha256File(file).catch(() => undefined);
    if (sha && (!pkg.sha256 || sha === pkg.sha256)) {
      progress(`cached ${expected}`);
      return { file, sha256: sha };
    }
    if (sha) await fs.rm(file, { force: true }); // corrupt or truncated: fetch again
  }

  // Download into a private directory and move the result in, so a partial download never looks cached.
  await removeStale(downloads, '.download-');
  const tmp = await fs.mkdtemp(path.join(downloads, '.download-'));
  try {
    progress(`apt-get download ${pkg.name}`);
    const res = await run('apt-get', ['download', pkg.version ? `${pkg.name}=${pkg.version}` : pkg.name], { cwd: tmp });
    const got = (await fs.readdir(tmp)).filter((f) => f.endsWith('.deb'));
    if (res.code === 0 && got.length === 1 && got[0]) {
      const file = path.join(downloads, got[0]);
      await fs.rename(path.join(tmp, got[0]), file);
      const sha = await sha256File(file);
      if (pkg.sha256 && sha !== pkg.sha256) {
        await fs.rm(file, { force: true });
        throw new GuestBuildError(`Downloaded ${got[0]} does not match the SHA256 in apt's package lists. Update the lists and build again.`, 'sudo apt-get update');
      }
      return { file, sha256: sha };
    }
    // Offline (or the mirror moved on): any kernel we downloaded before is good enough.
    const fallback = await newestCachedDeb(downloads);
    if (fallback) {
      progress(`download failed, using cached ${path.basename(fallback)}`);
      return { file: fallback, sha256: await sha256File(fallback) };
    }
    throw new GuestBuildError(
      `Could not download the kernel package ${pkg.name} (no network, or stale package lists):\n${tail(res.stderr || res.stdout)}`,
      `cd ${shellQuote(downloads)} && apt-get download ${pkg.name}`,
    );
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

async function newestCachedDeb(downloads: string): Promise<string | undefined> {
  let best: { file: string; mtime: number } | undefined;
  for (const f of await fs.readdir(downloads)) {
    if (!/^linux-image-[0-9].*-amd64_.*_amd64\.deb$/.test(f)) continue;
    const file = path.join(downloads, f);
    const st = await fs.stat(file);
    if (!best || st.mtimeMs > best.mtime) best = { file, mtime: st.mtimeMs };
  }
  return best?.file;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Deletes `prefix`* entries in `dir` older than an hour: work directories of builds that were killed. */
async function removeStale(dir: string, prefix: string): Promise<void> {
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue;
    const p = path.join(dir, name);
    const st = await fs.stat(p).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > 3600_000) await fs.rm(p, { recursive: true, force: true }).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Hashing

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file), h);
  return h.digest('hex');
}

async function fileInfo(file: string): Promise<{ sha256: string; bytes: number }> {
  return { sha256: await sha256File(file), bytes: (await fs.stat(file)).size };
}

/** Hash of everything the artifacts are made from: guest sources, /init, this builder, the kernel .deb and busybox. */
async function inputHash(deb: { file: string; sha256: string }): Promise<string> {
  const h = createHash('sha256');
  const add = (label: string, value: string): void => {
    h.update(`${label}\0${value}\n`);
  };
  add('format', '1');
  for (const file of await listFiles(SRC_DIR)) add(`src/${path.relative(SRC_DIR, file)}`, await sha256File(file));
  add('init', await sha256File(path.join(GUEST_DIR, 'init')));
  add('build.ts', await sha256File(path.join(GUEST_DIR, 'build.ts')));
  add('kernel-deb', `${path.basename(deb.file)} ${deb.sha256}`);
  add('busybox', await sha256File(BUSYBOX));
  return h.digest('hex');
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(p)));
    else if (entry.isFile()) out.push(p);
  }
  return out.sort();
}

// ---------------------------------------------------------------------------------------------
// Kernel and modules

async function mkdirs(base: string, ...subdirs: string[]): Promise<void> {
  await fs.mkdir(base, { recursive: true });
  for (const d of subdirs) await fs.mkdir(path.join(base, d), { recursive: true });
}

/**
 * Like `dpkg -x`, but extracts only the kernel image, its config and the virtio modules (~9 MiB
 * instead of ~400 MiB of modules); the .deb is still read and checked by dpkg-deb.
 */
async function unpackKernel(deb: string, dest: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const dpkg = spawn('dpkg-deb', ['--fsys-tarfile', deb], { stdio: ['ignore', 'pipe', 'pipe'] });
    const tar = spawn('tar', ['-x', '-C', dest, '--wildcards', '*/boot/vmlinuz-*', '*/boot/config-*', '*/kernel/drivers/*virtio*'], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let errors = '';
    dpkg.stderr.on('data', (b: Buffer) => (errors += b.toString()));
    tar.stderr.on('data', (b: Buffer) => (errors += b.toString()));
    dpkg.stdout.pipe(tar.stdin);
    let pending = 2;
    let failed = false;
    const done = (who: string) => (code: number | null) => {
      if (code !== 0 && !failed) {
        failed = true;
        reject(new GuestBuildError(`Unpacking ${path.basename(deb)} failed (${who} exited ${code}); delete it so it is downloaded again:\n${tail(errors)}`, `rm ${shellQuote(deb)}`));
      }
      if (--pending === 0 && !failed) resolve();
    };
    dpkg.on('error', reject);
    tar.on('error', reject);
    dpkg.on('close', done('dpkg-deb'));
    tar.on('close', done('tar'));
  });
}

async function findKernelFiles(unpacked: string): Promise<{ vmlinuz: string; kernelVersion: string; moduleDir: string; config: string }> {
  const bootDir = path.join(unpacked, 'boot');
  const images = (await fs.readdir(bootDir).catch(() => [] as string[])).filter((f) => f.startsWith('vmlinuz-'));
  const image = images[0];
  if (images.length !== 1 || !image) throw new GuestBuildError(`Expected one /boot/vmlinuz-* in the kernel package, found ${images.length}.`);
  const kernelVersion = image.slice('vmlinuz-'.length);
  // bookworm ships /lib/modules; usr-merged releases ship /usr/lib/modules.
  for (const base of ['lib/modules', 'usr/lib/modules']) {
    const moduleDir = path.join(unpacked, base, kernelVersion);
    if (await exists(moduleDir)) {
      return { vmlinuz: path.join(bootDir, image), kernelVersion, moduleDir, config: path.join(bootDir, `config-${kernelVersion}`) };
    }
  }
  throw new GuestBuildError(`The kernel package has no modules directory for ${kernelVersion}.`);
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Copies ROOT_MODULES and their dependencies (read from each module's modinfo `depends=`) into
 * `dest` as plain .ko files (decompressing .ko.xz / .ko.zst, which busybox insmod cannot read), and
 * writes `dest/load-order`, one module name per line, dependencies first. Modules the kernel has
 * built in are skipped.
 */
async function installModules(moduleDir: string, configFile: string, dest: string): Promise<string[]> {
  const files = new Map<string, string>();
  for (const f of await listFiles(moduleDir)) {
    const m = /([^/]+)\.ko(\.xz|\.zst|\.gz)?$/.exec(f);
    if (m?.[1]) files.set(m[1].replace(/-/g, '_'), f);
  }
  const config = await fs.readFile(configFile, 'utf8').catch(() => '');
  const builtIn = (mod: string): boolean => new RegExp(`^CONFIG_${mod.toUpperCase()}=y$`, 'm').test(config);

  const images = new Map<string, Buffer>();
  const deps = new Map<string, string[]>();
  const visit = async (mod: string): Promise<void> => {
    if (deps.has(mod)) return;
    const file = files.get(mod);
    if (!file) {
      if (builtIn(mod)) return;
      throw new GuestBuildError(`Kernel module ${mod} is neither in the kernel package nor built in.`);
    }
    const image = await readModule(file);
    images.set(mod, image);
    const d = modinfoDepends(image);
    deps.set(mod, d);
    for (const dep of d) await visit(dep);
  };
  for (const m of ROOT_MODULES) await visit(m);

  // Topological order, ties broken by MODULE_ORDER then name.
  const rank = (m: string): number => {
    const i = MODULE_ORDER.indexOf(m);
    return i < 0 ? MODULE_ORDER.length : i;
  };
  const order: string[] = [];
  const remaining = new Set(deps.keys());
  while (remaining.size > 0) {
    const ready = [...remaining]
      .filter((m) => (deps.get(m) ?? []).every((d) => !remaining.has(d)))
      .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    const next = ready[0];
    if (!next) throw new GuestBuildError(`Circular module dependencies among: ${[...remaining].join(', ')}`);
    order.push(next);
    remaining.delete(next);
  }
  for (const m of order) {
    const image = images.get(m);
    if (image) await fs.writeFile(path.join(dest, `${m}.ko`), image);
  }
  await fs.writeFile(path.join(dest, 'load-order'), order.join('\n') + '\n');
  return order;
}

async function readModule(file: string): Promise<Buffer> {
  if (file.endsWith('.ko')) return fs.readFile(file);
  const [tool, pkg] = file.endsWith('.xz') ? ['xz', 'xz-utils'] : file.endsWith('.zst') ? ['zstd', 'zstd'] : ['gzip', 'gzip'];
  const res = await new Promise<{ code: number | null; out: Buffer; err: string }>((resolve, reject) => {
    const child = spawn(tool, ['-dc', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', (e: NodeJS.ErrnoException) =>
      e.code === 'ENOENT' ? reject(new GuestBuildError(`${tool} is needed to decompress kernel modules.`, `sudo apt-get install -y ${pkg}`)) : reject(e),
    );
    child.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
  });
  if (res.code !== 0) throw new GuestBuildError(`Decompressing ${path.basename(file)} failed: ${tail(res.err)}`);
  return res.out;
}

/** The `depends=` field of a module's .modinfo section (NUL-separated key=value strings). */
function modinfoDepends(image: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const at = image.indexOf(key);
  if (at < 0) return [];
  const start = at + key.length;
  const end = image.indexOf(0, start);
  return image
    .subarray(start, end < 0 ? undefined : end)
    .toString('utf8')
    .split(',')
    .map((s) => s.trim().replace(/-/g, '_'))
    .filter(Boolean);
}

// ---------------------------------------------------------------------------------------------
// Programs and initramfs

async function compile(source: string, output: string): Promise<void> {
  const args = ['-static', '-O2', '-Wall', '-Werror', '-std=gnu11', '-s', '-I', SRC_DIR, '-o', output, source];
  const res = await run('gcc', args);
  if (res.code === 0) return;
  const text = res.stderr || res.stdout;
  if (/cannot find -lc\b|crt1\.o/.test(text)) {
    throw new GuestBuildError('gcc cannot link static programs: the C library development files are missing.', `sudo apt-get install -y libc6-dev`);
  }
  throw new GuestBuildError(`Compiling ${path.basename(source)} failed:\n${tail(text, 30)}`, `gcc ${args.join(' ')}`);
}

/** Copies the static busybox and creates one symlink per applet (except where our programs live). */
async function stageBusybox(root: string, ours: Set<string>): Promise<void> {
  await fs.copyFile(BUSYBOX, path.join(root, 'bin/busybox'));
  await fs.chmod(path.join(root, 'bin/busybox'), 0o755);
  const res = await run(BUSYBOX, ['--list-full']);
  if (res.code !== 0) throw new GuestBuildError(`${BUSYBOX} --list-full failed: ${tail(res.stderr)}`);
  for (const applet of res.stdout.split('\n').map((s) => s.trim())) {
    if (!applet || applet.includes('..') || path.isAbsolute(applet)) continue;
    if (ours.has(path.basename(applet)) || applet === 'bin/busybox') continue;
    const link = path.join(root, applet);
    await fs.mkdir(path.dirname(link), { recursive: true });
    await fs.symlink(path.relative(path.dirname(link), path.join(root, 'bin/busybox')), link).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
}

/**
 * `cpio -o -H newc | gzip` of the staged tree, followed (inside the same gzip stream) by a second
 * newc archive holding /dev/console. The kernel opens /dev/console for /init's stdio before /init
 * can mount devtmpfs; writing the node ourselves means the build needs no root (no mknod).
 */
async function packInitramfs(root: string, output: string): Promise<void> {
  const entries = (await listTree(root)).map((p) => path.relative(root, p)).filter(Boolean);
  await new Promise<void>((resolve, reject) => {
    const cpio = spawn('cpio', ['-o', '-H', 'newc', '-R', '0:0', '--quiet'], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] });
    const gzip = spawn('gzip', ['-9', '-n'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const file = createWriteStream(output);
    let errors = '';
    cpio.stderr.on('data', (b: Buffer) => (errors += b.toString()));
    gzip.stderr.on('data', (b: Buffer) => (errors += b.toString()));
    cpio.stdout.pipe(gzip.stdin, { end: false });
    cpio.stdout.on('end', () => gzip.stdin.end(newcArchive([{ name: 'dev/console', mode: 0o020600, rdevMajor: 5, rdevMinor: 1 }])));
    gzip.stdout.pipe(file);
    let failed = false;
    const fail = (msg: string): void => {
      if (failed) return;
      failed = true;
      reject(new GuestBuildError(`Packing the initramfs failed: ${msg}\n${tail(errors)}`));
    };
    cpio.on('error', (e) => fail(e.message));
    gzip.on('error', (e) => fail(e.message));
    file.on('error', (e) => fail(e.message));
    cpio.on('close', (code) => code !== 0 && fail(`cpio exited ${code}`));
    gzip.on('close', (code) => code !== 0 && fail(`gzip exited ${code}`));
    file.on('close', () => !failed && resolve());
    cpio.stdin.end(entries.join('\n') + '\n');
  });
}

/** Every path under `dir`, parents before children, sorted; symlinks are listed, not followed. */
async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [dir];
  const entries = await fs.readdir(dir, { withFileTypes: true });
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listTree(p)));
    else out.push(p);
  }
  return out;
}

/** A minimal newc ("070701") archive of special files, with its TRAILER!!!. */
function newcArchive(nodes: { name: string; mode: number; rdevMajor: number; rdevMinor: number }[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);
  const entry = (name: string, mode: number, rdevMajor: number, rdevMinor: number, ino: number): void => {
    const hex = (n: number): string => n.toString(16).padStart(8, '0');
    const nameBytes = Buffer.from(name + '\0');
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
    const header = '070701' + [ino, mode, 0, 0, 1, 0, 0, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0].map(hex).join('');
    const head = Buffer.concat([Buffer.from(header, 'ascii'), nameBytes]);
    parts.push(head, pad4(head.length));
  };
  nodes.forEach((n, i) => entry(n.name, n.mode, n.rdevMajor, n.rdevMinor, 0x7fff0000 + i));
  entry('TRAILER!!!', 0, 0, 0, 0);
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------
// CLI

if (import.meta.main) {
  const args = process.argv.slice(2);
  const cacheDir = args.find((a) => !a.startsWith('--')) ?? '.cache';
  const started = Date.now();
  buildGuest({
    cacheDir,
    force: args.includes('--force'),
    onProgress: (p) => console.error(`[${p.done}/${p.total}] ${p.step}${p.detail ? `: ${p.detail}` : ''}`),
  }).then(
    (a) => {
      console.log(JSON.stringify({ ...a, seconds: (Date.now() - started) / 1000 }, null, 2));
    },
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : String(err));
      if (err instanceof GuestBuildError && err.command) console.error(`Run: ${err.command}`);
      process.exitCode = 1;
    },
  );
}
