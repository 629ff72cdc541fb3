// The site's VM library on disk: one folder per VM under <data>/vms/, holding its spec (vm.json),
// its disk image, its runtime record and its sockets.
import { mkdir, readFile, readdir, rm, writeFile, rename } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { z } from 'zod';
import { checkVmName, vmPaths, type VmPaths, type VmSpec } from '../migrator/qemu/common/spec.ts';
import { findExecutable } from '../migrator/qemu/vm.ts';
import { vmSpecSchema } from '../shared/vm-spec.ts';
import { SITE_ROLES, type SiteRole } from '../shared/migration.ts';
import { QemuNotFoundError } from '../migrator/qemu/errors.ts';

const run = promisify(execFile);

export class VmLibraryError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VmLibraryError';
  }
}

const runtimeSchema = z.object({
  pid: z.number().int().positive(),
  accel: z.enum(['kvm', 'tcg']),
  accelReason: z.string(),
  startedAt: z.string(),
});
export type VmRuntime = z.infer<typeof runtimeSchema>;

const siteSchema = z.object({ role: z.enum(SITE_ROLES) });

/** Unix socket paths are limited to 107 bytes by the kernel (sun_path). */
const MAX_SOCKET_PATH = 107;

export interface CreateVmOptions {
  name: string;
  memoryMiB: number;
  vcpus: number;
  diskSize: string;
  accel: VmSpec['accel'];
  kernel: string;
  initrd: string;
  /** MiB the guest's memory workload keeps under test. */
  memWorkloadMiB: number;
  /** 4 KiB blocks the guest's disk workload keeps under test. */
  diskWorkloadBlocks: number;
  cpuLimitPercent?: number;
  force?: boolean;
}

export class VmLibrary {
  readonly dataDir: string;

  constructor(dataDir: string) {
    this.dataDir = dataDir;
  }

  vmDir(name: string): string {
    const problem = checkVmName(name);
    if (problem) throw new VmLibraryError(problem);
    return join(this.dataDir, 'vms', name);
  }

  paths(name: string): VmPaths {
    const paths = vmPaths(this.vmDir(name));
    if (Buffer.byteLength(paths.control) > MAX_SOCKET_PATH) {
      throw new VmLibraryError(`the data directory path is too long for unix sockets (${paths.control}); use a shorter --data directory`);
    }
    return paths;
  }

  get accelCacheFile(): string {
    return join(this.dataDir, 'accel-probe.json');
  }

  async create(options: CreateVmOptions): Promise<VmSpec> {
    const dir = this.vmDir(options.name);
    this.paths(options.name); // fails early if the socket paths would be too long
    if (!options.force && (await this.exists(options.name))) {
      throw new VmLibraryError(`VM "${options.name}" already exists in ${dir}; pass --force to replace it`);
    }
    const qemuImg = await findExecutable('qemu-img');
    if (qemuImg === undefined) throw new QemuNotFoundError('qemu-img');
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const disk = join(dir, 'disk.qcow2');
    try {
      await run(qemuImg, ['create', '-q', '-f', 'qcow2', disk, options.diskSize]);
    } catch (cause) {
      throw new VmLibraryError(`qemu-img could not create the disk: ${(cause as { stderr?: string }).stderr?.trim() ?? String(cause)}`, { cause });
    }
    const spec: VmSpec = {
      name: options.name,
      memoryMiB: options.memoryMiB,
      vcpus: options.vcpus,
      accel: options.accel,
      boot: {
        kernel: options.kernel,
        initrd: options.initrd,
        append: `sb.mem=${options.memWorkloadMiB} sb.disk=${options.diskWorkloadBlocks}`,
      },
      disk,
      ...(options.cpuLimitPercent === undefined ? {} : { cpuLimitPercent: options.cpuLimitPercent }),
    };
    await writeJsonAtomic(join(dir, 'vm.json'), vmSpecSchema.parse(spec));
    return spec;
  }

  /** Records a VM's spec at this site (a VM that arrived by migration). */
  async save(spec: VmSpec): Promise<void> {
    await mkdir(this.vmDir(spec.name), { recursive: true, mode: 0o700 });
    await writeJsonAtomic(join(this.vmDir(spec.name), 'vm.json'), vmSpecSchema.parse(spec));
  }

  async exists(name: string): Promise<boolean> {
    try {
      await readFile(join(this.vmDir(name), 'vm.json'));
      return true;
    } catch {
      return false;
    }
  }

  async load(name: string): Promise<VmSpec> {
    const file = join(this.vmDir(name), 'vm.json');
    let raw: string;
    try {
      raw = await readFile(file, 'utf8');
    } catch {
      throw new VmLibraryError(`no VM named "${name}" in ${this.dataDir}; create it with 'snowbird vm create ${name}'`);
    }
    const parsed = vmSpecSchema.safeParse(JSON.parse(raw));
    if (!parsed.success) throw new VmLibraryError(`${file} is not a valid VM spec: ${z.prettifyError(parsed.error)}`);
    return parsed.data;
  }

  async list(): Promise<string[]> {
    try {
      const entries = await readdir(join(this.dataDir, 'vms'), { withFileTypes: true });
      return entries.filter((e) => e.isDirectory() && checkVmName(e.name) === undefined).map((e) => e.name).sort();
    } catch {
      return [];
    }
  }

  /** The role the agent on this data directory runs as (recorded when it starts); edge by default. */
  async siteRole(): Promise<SiteRole> {
    try {
      return siteSchema.parse(JSON.parse(await readFile(join(this.dataDir, 'site.json'), 'utf8'))).role;
    } catch {
      return 'edge';
    }
  }

  async saveSiteRole(role: SiteRole): Promise<void> {
    await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    await writeJsonAtomic(join(this.dataDir, 'site.json'), { role });
  }

  async saveRuntime(name: string, runtime: VmRuntime): Promise<void> {
    await writeJsonAtomic(join(this.vmDir(name), 'runtime.json'), runtime);
  }

  async loadRuntime(name: string): Promise<VmRuntime | undefined> {
    try {
      return runtimeSchema.parse(JSON.parse(await readFile(join(this.vmDir(name), 'runtime.json'), 'utf8')));
    } catch {
      return undefined;
    }
  }
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, file);
}
