// Caps a QEMU process's CPU with a cgroup CPU quota. snowbird uses it to make the edge the slower
// site on one machine (tests, benchmarks); users can use it to keep a VM from starving the laptop.
import { mkdir, writeFile, rmdir } from 'node:fs/promises';
import { pathExists } from '../local-io.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { CpuLimitError } from './errors.ts';

const CGROUP_V1_CPU = '/sys/fs/cgroup/cpu';
const CGROUP_V2 = '/sys/fs/cgroup';
const PERIOD_US = 100_000;

function groupName(vm: string): string {
  return `snowbird-${vm}`;
}

/** Moves every thread of `pid` into a cgroup limited to `percent` of one CPU (100 = one full core). */
export async function applyCpuLimit(vm: string, pid: number, percent: number): Promise<string> {
  if (!(percent > 0 && percent <= 100_000)) throw new CpuLimitError(`limit must be a positive percentage, got ${percent}`);
  const quota = Math.max(1000, Math.round((PERIOD_US * percent) / 100));
  try {
    if (await pathExists(`${CGROUP_V1_CPU}/cpu.cfs_quota_us`)) {
      const dir = `${CGROUP_V1_CPU}/${groupName(vm)}`;
      await mkdir(dir, { recursive: true });
      await writeFile(`${dir}/cpu.cfs_period_us`, String(PERIOD_US));
      await writeFile(`${dir}/cpu.cfs_quota_us`, String(quota));
      await writeFile(`${dir}/cgroup.procs`, String(pid));
      return dir;
    }
    if (await pathExists(`${CGROUP_V2}/cgroup.controllers`)) {
      const dir = `${CGROUP_V2}/${groupName(vm)}`;
      await mkdir(dir, { recursive: true });
      await writeFile(`${dir}/cpu.max`, `${quota} ${PERIOD_US}`);
      await writeFile(`${dir}/cgroup.procs`, String(pid));
      return dir;
    }
  } catch (cause) {
    throw new CpuLimitError(`writing the cgroup failed (${(cause as Error).message}); this needs root or a delegated cgroup`, { cause });
  }
  throw new CpuLimitError('no cgroup CPU controller is mounted (looked for cgroup v1 cpu and cgroup v2)');
}

/**
 * Removes the VM's cgroup after its process has exited; a missing group is fine. The kernel keeps a
 * group busy for a moment after its last task dies (until it is reaped), hence the short retry.
 */
export async function removeCpuLimit(vm: string): Promise<void> {
  for (const root of [CGROUP_V1_CPU, CGROUP_V2]) {
    const dir = `${root}/${groupName(vm)}`;
    for (let attempt = 0; attempt < 40; attempt++) {
      try {
        await rmdir(dir);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EBUSY') break;
        await sleep(50);
      }
    }
  }
}
