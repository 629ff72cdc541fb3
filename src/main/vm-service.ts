// The VM operations behind `snowbird vm ...`: each returns data, the CLI only formats it. They work
// on the local site's library and on QEMU processes that may have been started by another process.
import { VmHandle } from '../migrator/qemu/vm.ts';
import { GuestChannel } from '../migrator/qemu/guest-channel.ts';
import { resolveAccel, type AccelDecision } from '../migrator/qemu/accel.ts';
import { isAlive } from '../migrator/qemu/process-info.ts';
import { pathExists } from '../migrator/local-io.ts';
import { emptyIntegrity, type IntegritySummary } from '../migrator/qemu/common/integrity.ts';
import type { VmStatusReport } from '../shared/vm-status.ts';

export type { VmStatusReport } from '../shared/vm-status.ts';
import type { VmLibrary } from './vm-library.ts';

export interface StartResult {
  name: string;
  pid: number;
  accel: AccelDecision;
  /** Seconds from QEMU start to the guest's ready report; undefined when not waited for. */
  readySeconds: number | undefined;
  vncSocket: string;
}

export async function startVm(
  library: VmLibrary,
  name: string,
  options: { paused?: boolean; waitReady?: boolean; readyTimeoutMs?: number } = {},
): Promise<StartResult> {
  const spec = await library.load(name);
  const paths = library.paths(name);
  const accel = await resolveAccel(spec.accel, spec.boot, library.accelCacheFile);
  const startedAt = Date.now();
  const vm = await VmHandle.start(spec, paths, { accel: accel.accel, paused: options.paused ?? false });
  await library.saveRuntime(name, { pid: vm.pid, accel: accel.accel, accelReason: accel.reason, startedAt: new Date(startedAt).toISOString() });
  let readySeconds: number | undefined;
  try {
    if (options.waitReady ?? !options.paused) {
      const channel = await GuestChannel.connect(name, paths.control);
      try {
        await channel.waitFor((r) => r.type === 'ready', { timeoutMs: options.readyTimeoutMs ?? 120_000, what: 'ready report' });
        readySeconds = (Date.now() - startedAt) / 1000;
      } finally {
        channel.close();
      }
    }
  } catch (error) {
    await vm.kill();
    throw error;
  }
  await vm.detach();
  return { name, pid: vm.pid, accel, readySeconds, vncSocket: paths.vnc };
}

/**
 * Reports a VM's state. With `sampleMs`, also listens to the guest's control channel that long (or
 * until both workloads have sent a heartbeat) and includes its integrity figures, which the guest
 * keeps cumulatively since boot.
 */
export async function vmStatus(library: VmLibrary, name: string, options: { sampleMs?: number } = {}): Promise<VmStatusReport> {
  const spec = await library.load(name);
  const paths = library.paths(name);
  const runtime = await library.loadRuntime(name);
  const base: VmStatusReport = {
    name,
    site: await library.siteRole(),
    state: 'stopped',
    qemuStatus: undefined,
    pid: undefined,
    accel: undefined,
    startedAt: undefined,
    memoryMiB: spec.memoryMiB,
    vcpus: spec.vcpus,
    disk: spec.disk,
    vncSocket: paths.vnc,
    integrity: undefined,
  };
  if (runtime === undefined || !(await isAlive(runtime.pid))) return base;
  const vm = await VmHandle.adopt(name, paths);
  try {
    const status = await vm.status();
    const report: VmStatusReport = {
      ...base,
      state: status.state,
      qemuStatus: status.qemuStatus,
      pid: vm.pid,
      accel: runtime.accel,
      startedAt: runtime.startedAt,
    };
    if (options.sampleMs && options.sampleMs > 0) report.integrity = await sampleIntegrity(name, paths.control, options.sampleMs);
    return report;
  } finally {
    await vm.detach();
  }
}

async function sampleIntegrity(name: string, controlPath: string, sampleMs: number): Promise<IntegritySummary> {
  const channel = await GuestChannel.connect(name, controlPath, { retryUntilMs: 1000 });
  try {
    const deadline = Date.now() + sampleMs;
    while (Date.now() < deadline) {
      const { memory, disk } = channel.integrity;
      if (memory.heartbeats > 0 && disk.heartbeats > 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return channel.integrity.uptimeMs > 0 ? channel.integrity : emptyIntegrity();
  } finally {
    channel.close();
  }
}

export async function stopVm(library: VmLibrary, name: string, options: { force?: boolean; graceMs?: number } = {}): Promise<'stopped' | 'not-running'> {
  const paths = library.paths(name);
  const runtime = await library.loadRuntime(name);
  if (runtime === undefined || !(await isAlive(runtime.pid))) return 'not-running';
  const vm = await VmHandle.adopt(name, paths);
  if (options.force) {
    await vm.kill();
    return 'stopped';
  }
  // The demo guest powers off on request through its control channel (it has no ACPI daemon);
  // any other guest gets the ACPI power button.
  let channel: GuestChannel | undefined;
  try {
    channel = await GuestChannel.connect(name, paths.control, { retryUntilMs: 500 });
  } catch {
    channel = undefined;
  }
  try {
    const guest = channel;
    await vm.shutdown({
      graceMs: options.graceMs ?? 15_000,
      ...(guest ? { requestGuestPoweroff: async () => guest.send({ type: 'poweroff' }) } : {}),
    });
  } finally {
    channel?.close();
  }
  return 'stopped';
}

export async function pauseVm(library: VmLibrary, name: string, pause: boolean): Promise<void> {
  const vm = await VmHandle.adopt(name, library.paths(name));
  try {
    if (pause) await vm.pause();
    else await vm.resume();
  } finally {
    await vm.detach();
  }
}

/** Whether this site holds the VM's current disk (its top): it last ran here (a move away leaves none). */
export async function holdsDisk(library: VmLibrary, name: string): Promise<boolean> {
  return (await library.exists(name)) && pathExists((await library.load(name)).disk);
}
