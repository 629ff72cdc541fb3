// A VM's description and the QEMU command line it becomes. Pure: no I/O, so the argv is unit-tested
// and identical wherever it is computed (the source and the destination of a migration must agree
// on every device, or QEMU refuses the incoming stream).

export type AccelChoice = 'auto' | 'kvm' | 'tcg';
export type Accel = 'kvm' | 'tcg';

export interface GuestBoot {
  kernel: string;
  initrd: string;
  /** Extra kernel command-line words (the demo guest reads `sb.mem=`, `sb.disk=` from here). */
  append: string;
}

export interface VmSpec {
  name: string;
  memoryMiB: number;
  vcpus: number;
  accel: AccelChoice;
  boot: GuestBoot;
  /** The top qcow2 image of the disk chain; QEMU opens its backing layers from the image headers. */
  disk: string;
  /** Percent of one host CPU the VM may use (cgroup CPU quota); undefined = unlimited. */
  cpuLimitPercent?: number;
}

/** Where a running VM's unix sockets and files live. Nothing of QEMU ever listens on a network port. */
export interface VmPaths {
  dir: string;
  qmp: string;
  vnc: string;
  control: string;
  serialLog: string;
  pidFile: string;
  qemuLog: string;
}

export function vmPaths(dir: string): VmPaths {
  return {
    dir,
    qmp: `${dir}/qmp.sock`,
    vnc: `${dir}/vnc.sock`,
    control: `${dir}/control.sock`,
    serialLog: `${dir}/serial.log`,
    pidFile: `${dir}/qemu.pid`,
    qemuLog: `${dir}/qemu.log`,
  };
}

export interface LaunchOptions {
  accel: Accel;
  /** Start as a migration destination: paused, waiting for `migrate-incoming`. */
  incoming?: boolean;
  /** Start with vCPUs stopped (`-S`). Implied by `incoming`. */
  paused?: boolean;
}

/** The node name of the disk's top layer, as QMP block commands address it. */
export const DISK_NODE = 'disk0';

const NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** VM names become directory names and QEMU option values: keep them to a safe alphabet. */
export function checkVmName(name: string): string | undefined {
  if (!NAME_PATTERN.test(name)) {
    return `invalid VM name "${name}": use 1-63 lowercase letters, digits, "-" or "_", starting with a letter or digit`;
  }
  return undefined;
}

/** QEMU's option parser splits on commas; a literal comma in a value is written twice. */
function optValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * QEMU before 9.0 forgets to reset TCG's TLB when its dirty-bitmap sync takes the fast path, which
 * it does for a RAM block whose size is a multiple of 256 KiB (one 64-page bitmap word): guest
 * writes through TLB entries cached before a sync are then never marked dirty, and pre-copy hands
 * the destination stale pages (a whole working set per trip in our tests; fixed upstream by
 * "physmem: Fix migration dirty bitmap coherency with TCG memory access"). Eight KiB more RAM sends
 * QEMU down its per-page path, which does reset the TLB. KVM tracks dirty pages itself and keeps
 * the exact size. Both sites compute this from the same accelerator, so their RAM sizes agree.
 */
export const TCG_RAM_PAD_KIB = 8;

function memoryOption(memoryMiB: number, accel: Accel): string {
  return accel === 'tcg' ? `${memoryMiB * 1024 + TCG_RAM_PAD_KIB}k` : `${memoryMiB}M`;
}

export function buildQemuArgv(spec: VmSpec, paths: VmPaths, launch: LaunchOptions): string[] {
  const append = ['console=ttyS0', 'panic=-1', spec.boot.append].filter((s) => s.length > 0).join(' ');
  const argv = [
    '-name', `guest=${optValue(spec.name)},debug-threads=on`,
    '-machine', 'pc',
    '-accel', launch.accel,
    // A fixed, migratable CPU model: `-cpu host` ties the VM to one host's CPU and breaks migration.
    '-cpu', 'qemu64',
    '-m', memoryOption(spec.memoryMiB, launch.accel),
    '-smp', String(spec.vcpus),
    '-nodefaults', '-no-user-config',
    '-kernel', spec.boot.kernel,
    '-initrd', spec.boot.initrd,
    '-append', append,
    '-vga', 'std',
    '-display', 'none',
    '-vnc', `unix:${paths.vnc}`,
    '-chardev', `file,id=serial0,path=${optValue(paths.serialLog)}`,
    '-serial', 'chardev:serial0',
    // Second serial port: the guest's control channel (commands in, JSON reports out).
    '-chardev', `socket,id=control,path=${optValue(paths.control)},server=on,wait=off`,
    '-device', 'isa-serial,chardev=control',
    '-blockdev', `driver=file,node-name=${DISK_NODE}-file,filename=${optValue(spec.disk)}`,
    '-blockdev', `driver=qcow2,node-name=${DISK_NODE},file=${DISK_NODE}-file`,
    '-device', `virtio-blk-pci,drive=${DISK_NODE},id=vd0`,
    '-qmp', `unix:${paths.qmp},server=on,wait=off`,
    '-pidfile', paths.pidFile,
    // QEMU forks once its sockets listen; it outlives the process that started it (adoption).
    '-daemonize',
    '-D', paths.qemuLog,
    // Reboots inside the guest must not silently restart the workloads' invariants.
    '-no-reboot',
  ];
  if (launch.incoming) argv.push('-incoming', 'defer');
  if (launch.incoming || launch.paused) argv.push('-S');
  return argv;
}
