// The local VM lifecycle against real QEMU and the real demo guest: boot with healthy workloads,
// pause/resume, adoption by a process that did not start the VM, the invariant checkers catching
// injected corruption, and clean shutdown. One VM is carried through the steps to keep TCG time low.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { access, readFile } from 'node:fs/promises';
import { TestSite, runCli, waitForHeartbeats } from '../support/fixtures.ts';
import { VmHandle } from '../../src/migrator/qemu/vm.ts';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import { VmSocketInUseError } from '../../src/migrator/qemu/errors.ts';
import { isAlive } from '../../src/migrator/qemu/process-info.ts';
import { startVm, stopVm, vmStatus } from '../../src/main/vm-service.ts';
import type { GuestReport } from '../../src/shared/guest-protocol.ts';

const run = promisify(execFile);
const VM = 'life';

describe('VM lifecycle with the demo guest', () => {
  let site: TestSite;

  before(async () => {
    site = await TestSite.create();
    await site.createDemoVm(VM);
  });
  after(async () => {
    await site.dispose();
  });

  test('the CLI boots the guest, which reports ready; the VM outlives the CLI', async () => {
    const r = await runCli(['--data', site.dataDir, 'vm', 'start', VM]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /guest ready after/);
    assert.match(r.stdout, /tcg/);
    const status = await vmStatus(site.library, VM);
    assert.equal(status.state, 'running');
    assert.ok(status.pid !== undefined && (await isAlive(status.pid)));
  });

  test('memory and disk workloads send heartbeats with zero violations', async () => {
    const channel = await GuestChannel.connect(VM, site.library.paths(VM).control);
    try {
      const integrity = await waitForHeartbeats(channel, 2);
      assert.equal(integrity.memory.violations, 0);
      assert.equal(integrity.disk.violations, 0);
      assert.ok(integrity.disk.pass >= 1);
      assert.equal(integrity.rebooted, false);
    } finally {
      channel.close();
    }
  });

  test('starting a running VM again is refused, naming the QEMU process', async () => {
    const spec = await site.library.load(VM);
    const status = await vmStatus(site.library, VM);
    await assert.rejects(VmHandle.start(spec, site.library.paths(VM), { accel: 'tcg' }), (e: unknown) => {
      assert.ok(e instanceof VmSocketInUseError);
      assert.equal(e.pid, status.pid);
      assert.match(e.message, new RegExp(`process ${status.pid}`));
      return true;
    });
  });

  test('adoption: this process takes over the VM the CLI started, pauses and resumes it', async () => {
    const vm = await VmHandle.adopt(VM, site.library.paths(VM));
    const channel = await GuestChannel.connect(VM, site.library.paths(VM).control);
    try {
      assert.equal((await vm.status()).state, 'running');
      await vm.pause();
      assert.equal((await vm.status()).state, 'paused');
      // While paused the guest cannot run: no heartbeat may arrive.
      const beats: GuestReport[] = [];
      const listen = (r: GuestReport): void => void beats.push(r);
      channel.on('report', listen);
      await new Promise((r) => setTimeout(r, 2500));
      channel.off('report', listen);
      assert.deepEqual(beats.filter((b) => b.type.endsWith('heartbeat')), []);
      await vm.resume();
      assert.equal((await vm.status()).state, 'running');
      const integrity = await waitForHeartbeats(channel, 1);
      assert.equal(integrity.memory.violations + integrity.disk.violations, 0);
    } finally {
      channel.close();
      await vm.detach();
    }
  });

  test('vm status --json reports site, state and the guest integrity report', async () => {
    const r = await runCli(['--data', site.dataDir, 'vm', 'status', VM, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const status = JSON.parse(r.stdout) as { site: string; state: string; accel: string; integrity: { memory: { heartbeats: number; violations: number }; disk: { heartbeats: number; violations: number } } };
    assert.equal(status.site, 'edge');
    assert.equal(status.state, 'running');
    assert.equal(status.accel, 'tcg');
    assert.ok(status.integrity.memory.heartbeats >= 1);
    assert.ok(status.integrity.disk.heartbeats >= 1);
    assert.equal(status.integrity.memory.violations, 0);
    assert.equal(status.integrity.disk.violations, 0);
  });

  test('the memory checker reports a page corrupted through the control channel test hook', async () => {
    const channel = await GuestChannel.connect(VM, site.library.paths(VM).control);
    try {
      const violation = channel.waitFor((r) => r.type === 'mem-violation', { timeoutMs: 30_000, what: 'memory violation' });
      channel.send({ type: 'corrupt-mem' });
      const report = await violation;
      assert.equal(report.type, 'mem-violation');
    } finally {
      channel.close();
    }
  });

  test('a clean stop ends QEMU and removes its sockets', async () => {
    const before = await vmStatus(site.library, VM);
    assert.equal(await stopVm(site.library, VM, { graceMs: 20_000 }), 'stopped');
    assert.ok(before.pid !== undefined && !(await isAlive(before.pid)));
    await assert.rejects(access(site.library.paths(VM).qmp));
    assert.equal((await vmStatus(site.library, VM)).state, 'stopped');
  });

  test('the disk checker reports a block corrupted with qemu-io while the VM was stopped', async () => {
    const spec = await site.library.load(VM);
    // Block 2 of the disk workload's region (4 KiB blocks from offset 0).
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 8192 4096', spec.disk]);
    await startVm(site.library, VM, { waitReady: false });
    const channel = await GuestChannel.connect(VM, site.library.paths(VM).control, { retryUntilMs: 10_000 });
    try {
      const report = await channel.waitFor((r) => r.type === 'disk-violation', { timeoutMs: 90_000, what: 'disk violation' });
      assert.equal(report.type === 'disk-violation' && report.block, 2);
    } finally {
      channel.close();
      await stopVm(site.library, VM, { force: true });
    }
  });

  test('--cpu-limit puts QEMU in a cgroup with that CPU quota, removed when the VM stops', async (t) => {
    const cgroup = '/sys/fs/cgroup/cpu';
    if (process.getuid?.() !== 0 || !(await access(`${cgroup}/cpu.cfs_quota_us`).then(() => true, () => false))) {
      t.skip('needs root and a cgroup v1 cpu controller (as on the CI machines)');
      return;
    }
    await site.createDemoVm('slow', { cpuLimitPercent: 25 });
    const started = await startVm(site.library, 'slow', { waitReady: false });
    const group = `${cgroup}/snowbird-slow`;
    try {
      assert.equal((await readFile(`${group}/cpu.cfs_quota_us`, 'utf8')).trim(), '25000');
      assert.equal((await readFile(`${group}/cpu.cfs_period_us`, 'utf8')).trim(), '100000');
      assert.ok((await readFile(`${group}/cgroup.procs`, 'utf8')).split('\n').includes(String(started.pid)));
    } finally {
      await stopVm(site.library, 'slow', { force: true });
    }
    await assert.rejects(access(group));
  });
});
