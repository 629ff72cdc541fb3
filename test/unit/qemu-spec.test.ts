import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TCG_RAM_PAD_KIB, buildQemuArgv, checkVmName, vmPaths, type VmSpec } from '../../src/migrator/qemu/common/spec.ts';

const spec: VmSpec = {
  name: 'demo',
  memoryMiB: 256,
  vcpus: 2,
  accel: 'auto',
  boot: { kernel: '/g/vmlinuz', initrd: '/g/initrd.img', append: 'sb.mem=64 sb.disk=4096' },
  disk: '/data/vms/demo/disk.qcow2',
};
const paths = vmPaths('/data/vms/demo');

function optionValues(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1] ?? ''] : []));
}

test('argv puts every QEMU endpoint on a unix socket, none on the network', () => {
  const argv = buildQemuArgv(spec, paths, { accel: 'tcg' });
  assert.deepEqual(optionValues(argv, '-qmp'), ['unix:/data/vms/demo/qmp.sock,server=on,wait=off']);
  assert.deepEqual(optionValues(argv, '-vnc'), ['unix:/data/vms/demo/vnc.sock']);
  assert.ok(optionValues(argv, '-chardev').some((c) => c.startsWith('socket,id=control,path=/data/vms/demo/control.sock')));
  assert.ok(!argv.some((a) => /tcp:|host=|port=|:59\d\d/.test(a)), 'no TCP listener');
  assert.deepEqual(optionValues(argv, '-nic'), []);
});

test('argv carries memory, vCPUs, accel, kernel command line and a migratable CPU model', () => {
  const argv = buildQemuArgv(spec, paths, { accel: 'kvm' });
  assert.deepEqual(optionValues(argv, '-m'), ['256M']);
  assert.deepEqual(optionValues(argv, '-smp'), ['2']);
  assert.deepEqual(optionValues(argv, '-accel'), ['kvm']);
  assert.deepEqual(optionValues(argv, '-cpu'), ['qemu64']);
  assert.deepEqual(optionValues(argv, '-append'), ['console=ttyS0 panic=-1 sb.mem=64 sb.disk=4096']);
  assert.ok(argv.includes('-daemonize'));
  assert.ok(!argv.includes('-S'));
});

test('under TCG the RAM size is one bitmap word off 256 KiB, so QEMU 7.2 tracks every write during migration', () => {
  const [size] = optionValues(buildQemuArgv(spec, paths, { accel: 'tcg' }), '-m');
  assert.equal(size, `${256 * 1024 + TCG_RAM_PAD_KIB}k`);
  assert.notEqual((256 * 1024 + TCG_RAM_PAD_KIB) % 256, 0, 'not a multiple of 256 KiB');
});

test('a migration destination starts paused, waiting for migrate-incoming', () => {
  const argv = buildQemuArgv(spec, paths, { accel: 'tcg', incoming: true });
  assert.deepEqual(optionValues(argv, '-incoming'), ['defer']);
  assert.ok(argv.includes('-S'));
  assert.ok(buildQemuArgv(spec, paths, { accel: 'tcg', paused: true }).includes('-S'));
});

test('commas in paths are escaped for QEMU\'s option parser', () => {
  const argv = buildQemuArgv({ ...spec, disk: '/d/a,b.qcow2' }, paths, { accel: 'tcg' });
  assert.ok(argv.includes('driver=file,node-name=disk0-file,filename=/d/a,,b.qcow2'));
});

test('VM names are restricted to a safe alphabet', () => {
  assert.equal(checkVmName('demo-1_a'), undefined);
  for (const bad of ['', '../x', 'a/b', 'Demo', '-x', 'a b', 'x'.repeat(64), 'a,b']) {
    assert.match(checkVmName(bad) ?? '', /invalid VM name/, bad);
  }
});
