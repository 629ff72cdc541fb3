// Host-side sensors: DRM fdinfo, nvidia-smi pmon, vCPU thread times and /proc/PID/io, parsed from
// recorded text (test/fixtures/sensors/, its README says which are real captures and which are
// constructed), the rates computed from snapshot pairs, and the Node reader run on a recorded /proc
// tree and on this test's own process. Throughout: an unavailable sensor reads null, never zero.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  carryDrmMaxima,
  diskBytesPerSFrom,
  gpuBusyFromDrm,
  gpuBusyFromNvidia,
  isVcpuThread,
  parseCpuMax,
  parseDrmFdinfo,
  parseNvidiaSmiPmon,
  parseProcIo,
  parseThreadStat,
  vcpuBusyFrom,
  vcpuBusyUnderQuota,
  vcpuCount,
  type DrmClient,
  type ProcIo,
  type ThreadStat,
} from '../../src/interaction-detect/common/host-sensors.ts';
import { ProcessSensors } from '../../src/interaction-detect/host-sensors.ts';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'sensors');
const fixture = (path: string): string => readFileSync(join(FIXTURES, path), 'utf8');
const drm = (name: string): DrmClient => {
  const client = parseDrmFdinfo(fixture(`drm/${name}.fdinfo`));
  assert.ok(client, `${name} parses as a DRM client`);
  return client;
};
const io = (name: string): ProcIo => {
  const parsed = parseProcIo(fixture(`proc/${name}.io`));
  assert.ok(parsed, `${name} parses`);
  return parsed;
};
/** A task-stat fixture (one thread per line, as `cat /proc/PID/task/*\/stat` printed it) by tid. */
const threads = (name: string): Map<number, ThreadStat> => {
  const map = new Map<number, ThreadStat>();
  for (const line of fixture(`proc/${name}.stat`).split('\n').filter(Boolean)) {
    const stat = parseThreadStat(line);
    assert.ok(stat, line);
    map.set(Number(line.split(' ')[0]), stat);
  }
  return map;
};
const close = (actual: number | null, expected: number, tolerance = 1e-9): void => {
  assert.ok(actual !== null && Math.abs(actual - expected) <= tolerance, `${actual} ≉ ${expected} ± ${tolerance}`);
};

// The recorded QEMU captures (see the README): wall-clock ns when each snapshot was taken.
const SPIN_ELAPSED_MS = Number(1795900456158568957n - 1795900455118783169n) / 1e6;
const BIOS_ELAPSED_MS = Number(1795900465267551655n - 1795900465236689236n) / 1e6;

describe('DRM fdinfo', () => {
  test('reads driver, client id and engine times from real i915 and msm output (spaces as published)', () => {
    const i915 = drm('i915-manpage');
    assert.equal(i915.driver, 'i915');
    assert.equal(i915.clientId, '39');
    assert.equal(i915.pdev, '0000:00:02.0');
    assert.deepEqual(i915.engines, { render: 346249, copy: 0, video: 0, 'video-enhance': 0 });
    assert.deepEqual(i915.capacities, { video: 2 }, 'drm-engine-capacity-video is a capacity, not an engine');

    const msm = drm('msm-glmark2');
    assert.deepEqual({ driver: msm.driver, clientId: msm.clientId, pdev: msm.pdev }, { driver: 'msm', clientId: '7', pdev: undefined });
    assert.deepEqual(msm.engines, { gpu: 1734371319 });
    assert.deepEqual(msm.cycles, {}, 'drm-cycles without drm-total-cycles is not a ratio of its own');
  });

  test('reads tab-separated amdgpu output, including its "drm-memory-gtt: \\t" quirk', () => {
    const amd = drm('amdgpu-t0');
    assert.equal(amd.driver, 'amdgpu');
    assert.equal(amd.clientId, '59');
    assert.deepEqual(amd.engines, { gfx: 1146316424, dec: 20000000 });
  });

  test('xe: busy cycles against the GPU timestamp, with capacities', () => {
    const xe = drm('xe-kerneldoc');
    assert.deepEqual(xe.engines, {});
    assert.deepEqual(xe.cycles.rcs, { busy: 28257900, total: 7655183225 });
    assert.equal(xe.capacities.ccs, 4);
  });

  test('not a DRM client with usage stats → undefined (unavailable, not an idle GPU)', () => {
    assert.equal(parseDrmFdinfo(fixture('drm/not-drm-stdin.fdinfo')), undefined);
    assert.equal(parseDrmFdinfo(''), undefined);
    // A driver that prints only the generic drm_show_fdinfo() keys keeps no engine statistics.
    assert.equal(parseDrmFdinfo('drm-driver:\tvirtio_gpu\ndrm-client-id:\t4\ndrm-total-memory:\t12 KiB\n'), undefined);
  });

  test('amdgpu prints only engines that have worked: a client without engine lines is a known zero', () => {
    // Real capture of an amdgpu client that had submitted nothing yet.
    const idle = drm('amdgpu-no-engine-lines');
    assert.deepEqual(idle.engines, {});
    assert.equal(gpuBusyFromDrm([idle], [idle], 250e6), 0);
  });

  test('busy fraction: the busiest engine, per engine capacity', () => {
    // 250 ms apart: render +100 ms (0.4), video +400 ms on 2 engines (0.8).
    close(gpuBusyFromDrm([drm('i915-t0')], [drm('i915-t1')], 250e6), 0.8);
    // gfx +150 ms (0.6), dec +25 ms (0.1).
    close(gpuBusyFromDrm([drm('amdgpu-t0')], [drm('amdgpu-t1')], 250e6), 0.6);
    // rcs half of the timestamp span; ccs a quarter of its 4 engines. Elapsed wall time is not used.
    close(gpuBusyFromDrm([drm('xe-kerneldoc')], [drm('xe-t1')], 1), 0.5);
  });

  test('several fds of one client count once; different clients on one engine add up', () => {
    const [t0, t1] = [drm('i915-t0'), drm('i915-t1')];
    close(gpuBusyFromDrm([t0, t0, t0], [t1, t1, t1], 250e6), 0.8);
    // Client 40 of the same process renders too: its render time adds to client 39's.
    const other = (renderNs: number): DrmClient => ({ ...t0, clientId: '40', engines: { render: renderNs }, capacities: {} });
    close(gpuBusyFromDrm([t0, other(0)], [t1, other(125e6)], 250e6), 0.4 + 0.5); // render 0.9 > video 0.8
    close(gpuBusyFromDrm([t0, other(0)], [t1, other(200e6)], 250e6), 1); // 0.4 + 0.8, clamped
  });

  test('clamped to 0..1; a counter dip reads as no progress and is not counted again later', () => {
    const [t0, t1] = [drm('i915-t0'), drm('i915-t1')];
    close(gpuBusyFromDrm([t0], [t1], 1e6), 1);
    assert.equal(gpuBusyFromDrm([t1], [t0], 250e6), 0);
    // Counters dip at t2 and catch up at t3: the carried maxima keep t1's values through the dip.
    const dipped = carryDrmMaxima([t1], [t0]);
    assert.deepEqual(dipped[0]?.engines, t1.engines);
    assert.equal(gpuBusyFromDrm(dipped, [t1], 250e6), 0);
  });

  test('null when there is no DRM client at all; 0 once the clients are gone; a new client counts from zero', () => {
    assert.equal(gpuBusyFromDrm([], [], 250e6), null);
    assert.equal(gpuBusyFromDrm([drm('i915-t0')], [], 250e6), 0);
    close(gpuBusyFromDrm([], [drm('msm-glmark2')], 2_000e6), 1734371319 / 2_000e6);
    // A new xe client has no earlier GPU timestamp: nothing to measure yet.
    assert.equal(gpuBusyFromDrm([], [drm('xe-kerneldoc')], 250e6), null);
    assert.equal(gpuBusyFromDrm([drm('i915-t0')], [drm('i915-t1')], 0), null);
  });
});

describe('nvidia-smi pmon', () => {
  test('older drivers: gpu pid type sm mem enc dec command', () => {
    const rows = parseNvidiaSmiPmon(fixture('nvidia/pmon-7col.txt'));
    assert.equal(rows.length, 4, 'the GPU with no process ("-" row) is skipped');
    assert.deepEqual(rows[0], { gpu: 0, pid: 22010, type: 'C', smPercent: 98, command: 'python3' });
    assert.equal(gpuBusyFromNvidia(rows, 31337), 0.37, 'the busiest of its GPUs');
    assert.equal(gpuBusyFromNvidia(rows, 4810), 0);
  });

  test('newer drivers add jpg and ofa columns; columns are found by the header', () => {
    const rows = parseNvidiaSmiPmon(fixture('nvidia/pmon-9col.txt'));
    assert.deepEqual(
      rows.map((r) => [r.pid, r.type, r.smPercent, r.command]),
      [
        [883875, 'G', null, 'Xorg'],
        [31337, 'C+G', 64, 'qemu-system-x86'],
        [53360, 'C', null, 'model_host.exe'],
      ],
    );
    assert.equal(gpuBusyFromNvidia(rows, 31337), 0.64);
    assert.equal(gpuBusyFromNvidia(rows, 53360), 0, "listed with '-': a client that ran nothing in the window");
  });

  test('a pid not listed (or no process at all) is null, not zero', () => {
    assert.equal(gpuBusyFromNvidia(parseNvidiaSmiPmon(fixture('nvidia/pmon-9col.txt')), 4242), null);
    const none = parseNvidiaSmiPmon(fixture('nvidia/pmon-no-processes.txt'));
    assert.deepEqual(none, []);
    assert.equal(gpuBusyFromNvidia(none, 31337), null);
    assert.deepEqual(parseNvidiaSmiPmon(''), []);
  });
});

describe('vCPU threads', () => {
  test('parses real QEMU thread stat lines; comm is read up to the last ")"', () => {
    const t = threads('qemu-tcg-2vcpu-spin-t0');
    assert.deepEqual(
      [...t.values()].map((s) => s.comm),
      ['qemu-system-x86', 'call_rcu', 'CPU 0/TCG', 'CPU 1/TCG'],
    );
    assert.deepEqual(t.get(19993), { comm: 'CPU 0/TCG', utimeTicks: 100, stimeTicks: 2 });
    const odd = parseThreadStat('42 (a) b (c)) R 1 42 42 0 -1 4194560 0 0 0 0 7 3 0 0 20 0 1 0 1 0 0');
    assert.deepEqual(odd, { comm: 'a) b (c)', utimeTicks: 7, stimeTicks: 3 });
    assert.equal(parseThreadStat('garbage'), undefined);
  });

  test('recognises vCPU threads by QEMU debug-threads names', () => {
    for (const name of ['CPU 0/TCG', 'CPU 1/KVM', 'CPU 127/KVM', 'ALL CPUs/TCG', 'CPU 3/HVF']) assert.ok(isVcpuThread(name), name);
    for (const name of ['qemu-system-x86', 'call_rcu', 'IO mon_iothread', 'worker', 'CPU x/KVM']) assert.ok(!isVcpuThread(name), name);
  });

  test('busy vCPUs from a real capture: a guest spinning on vCPU 0, vCPU 1 waiting for SIPI', () => {
    // CPU 0/TCG went from 102 to 162 ticks in 1.04 s (on a loaded 2-core host): 0.577 vCPUs.
    const busy = vcpuBusyFrom(threads('qemu-tcg-2vcpu-spin-t0'), threads('qemu-tcg-2vcpu-spin-t1'), SPIN_ELAPSED_MS);
    close(busy, 60 / 100 / (SPIN_ELAPSED_MS / 1000), 1e-9);
    close(busy, 0.577, 0.001);
  });

  test('the main thread and helpers do not count; no vCPU threads → null', () => {
    const t0 = threads('qemu-tcg-2vcpu-spin-t0');
    const renamed = (m: Map<number, ThreadStat>): Map<number, ThreadStat> =>
      new Map([...m].map(([tid, s]) => [tid, { ...s, comm: 'qemu-system-x86' }]));
    assert.equal(vcpuBusyFrom(renamed(t0), renamed(threads('qemu-tcg-2vcpu-spin-t1')), 1000), null, 'QEMU without debug-threads');
    assert.equal(vcpuBusyFrom(t0, new Map(), 1000), null);
    assert.equal(vcpuBusyFrom(t0, t0, 0), null);
    assert.equal(vcpuBusyFrom(t0, t0, 1000), 0);
  });

  test('a vCPU thread new in the second snapshot counts from zero; the result is at most the vCPU count', () => {
    const t1 = threads('qemu-tcg-2vcpu-spin-t1');
    close(vcpuBusyFrom(new Map(), t1, 10_000), (162 + 0) / 100 / 10);
    assert.equal(vcpuBusyFrom(new Map(), t1, 10), 2);
  });
});

describe('/proc/PID/io', () => {
  test('parses a real QEMU capture', () => {
    assert.deepEqual(io('qemu-tcg-spin-t0'), { rchar: 124203, wchar: 40, readBytes: 0, writeBytes: 0, cancelledWriteBytes: 0 });
    assert.equal(parseProcIo('rchar: 1\n'), undefined);
  });

  test('disk rate counts storage reads and writes, not socket traffic (rchar)', () => {
    // QEMU loading a 1 MiB BIOS image that was not in the page cache: read_bytes +1 MiB in 30.9 ms.
    const rate = diskBytesPerSFrom(io('qemu-bios-load-t0'), io('qemu-bios-load-t1'), BIOS_ELAPSED_MS);
    close(rate, 1048576 / (BIOS_ELAPSED_MS / 1000), 1e-6);
    const sockets: ProcIo = { ...io('qemu-tcg-spin-t0'), rchar: 10e9, wchar: 10e9 };
    assert.equal(diskBytesPerSFrom(io('qemu-tcg-spin-t0'), sockets, 1000), 0);
    assert.equal(diskBytesPerSFrom(io('qemu-tcg-spin-t0'), io('qemu-tcg-spin-t0'), 0), null);
  });
});

describe('ProcessSensors', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  /** A recorded /proc/PID tree: task stats, io, and fds (DRM ones with their fdinfo). */
  async function fakeProc(pid: number): Promise<{ root: string; put: (path: string, text: string) => Promise<void> }> {
    const root = await mkdtemp(join(tmpdir(), 'sb-sensors-'));
    dirs.push(root);
    const put = async (path: string, text: string): Promise<void> => {
      await mkdir(join(root, String(pid), path, '..'), { recursive: true });
      await writeFile(join(root, String(pid), path), text);
    };
    await mkdir(join(root, String(pid), 'fd'), { recursive: true });
    await mkdir(join(root, String(pid), 'task'), { recursive: true });
    return { root, put };
  }
  async function putThreads(put: (path: string, text: string) => Promise<void>, name: string): Promise<void> {
    for (const line of fixture(`proc/${name}.stat`).split('\n').filter(Boolean)) await put(`task/${line.split(' ')[0]}/stat`, line);
  }

  test('on a recorded QEMU: vCPUs and disk from the captures, GPU from DRM fdinfo; the first read has no rates', async () => {
    const pid = 19991;
    const { root, put } = await fakeProc(pid);
    await putThreads(put, 'qemu-tcg-2vcpu-spin-t0');
    await put('io', fixture('proc/qemu-bios-load-t0.io'));
    await symlink('/dev/dri/renderD128', join(root, String(pid), 'fd', '12'));
    await symlink('/dev/dri/renderD128', join(root, String(pid), 'fd', '13')); // a dup of the same client
    await symlink('/dev/null', join(root, String(pid), 'fd', '0'));
    await put('fdinfo/12', fixture('drm/i915-t0.fdinfo'));
    await put('fdinfo/13', fixture('drm/i915-t0.fdinfo'));
    await put('fdinfo/0', fixture('drm/not-drm-stdin.fdinfo'));
    let clock = 5_000;
    const sensors = new ProcessSensors(pid, { procRoot: root, nvidiaSmi: false, monotonicMs: () => clock });

    const first = await sensors.read();
    assert.deepEqual({ ...first, at: 0 }, { at: 0, gpuBusy: null, vcpuBusy: null, diskBytesPerS: null, netBytesPerS: null });
    assert.equal(sensors.gpuSource, 'drm');

    await putThreads(put, 'qemu-tcg-2vcpu-spin-t1');
    await put('io', fixture('proc/qemu-bios-load-t1.io'));
    await put('fdinfo/12', fixture('drm/i915-t1.fdinfo'));
    await put('fdinfo/13', fixture('drm/i915-t1.fdinfo'));
    clock += 250;
    const second = await sensors.read();
    close(second.gpuBusy, 0.8);
    assert.equal(second.vcpuBusy, 2, '60 ticks in 250 ms is 2.4 vCPUs: at most the 2 vCPU threads');
    close(second.diskBytesPerS, 1048576 / 0.25, 1e-6);
    assert.equal(second.netBytesPerS, null);
    assert.equal(sensors.gpuSource, 'drm');
    assert.match(sensors.gpuSourceReason, /i915/);
  });

  for (const version of ['v1', 'v2'] as const) {
    test(`a QEMU held to a quarter of a core by a cgroup ${version} quota reads as fully busy when it uses all of it`, async () => {
      const pid = 3131;
      const { root, put } = await fakeProc(pid);
      const cgroups = join(root, 'cgroup-fs');
      if (version === 'v1') {
        await put('cgroup', '4:memory:/\n1:cpu:/snowbird-vm-edge\n0::/\n');
        await mkdir(join(cgroups, 'cpu', 'snowbird-vm-edge'), { recursive: true });
        await writeFile(join(cgroups, 'cpu', 'snowbird-vm-edge', 'cpu.cfs_quota_us'), '25000\n');
        await writeFile(join(cgroups, 'cpu', 'snowbird-vm-edge', 'cpu.cfs_period_us'), '100000\n');
      } else {
        await put('cgroup', '0::/outer/snowbird-vm\n');
        await mkdir(join(cgroups, 'outer', 'snowbird-vm'), { recursive: true });
        await writeFile(join(cgroups, 'outer', 'cpu.max'), 'max 100000\n');
        await writeFile(join(cgroups, 'outer', 'snowbird-vm', 'cpu.max'), '25000 100000\n');
      }
      const stat = (utime: number): string => `${pid + 1} (CPU 0/TCG) S 1 1 1 0 -1 0 0 0 0 0 ${utime} 0 0 0 20 0 1 0 0 0 0`;
      let clock = 0;
      const sensors = new ProcessSensors(pid, { procRoot: root, cgroupRoot: cgroups, nvidiaSmi: false, monotonicMs: () => clock });
      await put(`task/${pid + 1}/stat`, stat(100));
      await sensors.read();
      await put(`task/${pid + 1}/stat`, stat(106)); // 6 ticks of 10 ms in 250 ms: 0.24 of a core
      clock += 250;
      close((await sensors.read()).vcpuBusy, 0.96);
    });
  }

  test('a /dev/dri fd whose driver keeps no statistics, and no nvidia-smi: unavailable, with the reason', async () => {
    const pid = 4242;
    const { root, put } = await fakeProc(pid);
    await symlink('/dev/dri/card0', join(root, String(pid), 'fd', '7'));
    await put('fdinfo/7', 'pos:\t0\nflags:\t02\ndrm-driver:\tvirtio_gpu\ndrm-client-id:\t4\n');
    const sensors = new ProcessSensors(pid, { procRoot: root, nvidiaSmi: join(root, 'no-such-nvidia-smi') });
    await sensors.read();
    const r = await sensors.read();
    assert.equal(r.gpuBusy, null);
    assert.equal(sensors.gpuSource, 'unavailable');
    assert.match(sensors.gpuSourceReason, /virtio_gpu.*no per-client engine statistics.*nvidia-smi is not installed/);
  });

  test('nvidia-smi: run in the background, its pmon row for the pid is the reading', async () => {
    const pid = 31337; // the qemu-system-x86 row of the fixture
    const { root } = await fakeProc(pid);
    const tool = join(root, 'nvidia-smi');
    await writeFile(tool, `#!/bin/sh\n[ "$*" = "pmon -c 1 -s u" ] || exit 3\ncat '${join(FIXTURES, 'nvidia', 'pmon-9col.txt')}'\n`);
    await chmod(tool, 0o755);
    const logs: string[] = [];
    const sensors = new ProcessSensors(pid, { procRoot: root, nvidiaSmi: tool, log: (m) => logs.push(m) });
    after(() => sensors.close());
    let reading = await sensors.read();
    for (let i = 0; i < 100 && sensors.gpuSource !== 'nvidia'; i++) {
      await sleep(20);
      reading = await sensors.read();
    }
    assert.equal(sensors.gpuSource, 'nvidia', sensors.gpuSourceReason);
    assert.equal(reading.gpuBusy, 0.64);
    assert.deepEqual(logs.filter((m) => m.includes('nvidia')), []);
  });

  test('nvidia-smi failing: null, and its reason logged once', async () => {
    const pid = 31338;
    const { root } = await fakeProc(pid);
    const tool = join(root, 'nvidia-smi');
    await writeFile(tool, '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver." >&2\nexit 9\n');
    await chmod(tool, 0o755);
    const logs: string[] = [];
    const sensors = new ProcessSensors(pid, { procRoot: root, nvidiaSmi: tool, nvidiaIntervalMs: 0, log: (m) => logs.push(m) });
    after(() => sensors.close());
    const nvidiaLogs = (): string[] => logs.filter((m) => m.includes('nvidia'));
    for (let i = 0; i < 100 && nvidiaLogs().length === 0; i++) {
      await sensors.read();
      await sleep(20);
    }
    for (let i = 0; i < 5; i++) {
      assert.equal((await sensors.read()).gpuBusy, null);
      await sleep(20);
    }
    assert.equal(sensors.gpuSource, 'unavailable');
    assert.match(sensors.gpuSourceReason, /nvidia-smi failed \(exit 9: NVIDIA-SMI has failed/);
    assert.equal(nvidiaLogs().length, 1, logs.join('\n'));
  });

  test('on this test process: GPU null (not zero), vCPUs null (no vCPU threads), disk a number', async () => {
    const sensors = new ProcessSensors(process.pid); // nvidia-smi is looked up as in production
    after(() => sensors.close());
    const first = await sensors.read();
    assert.equal(first.diskBytesPerS, null, 'no interval yet');
    await sleep(20);
    const second = await sensors.read();
    assert.equal(second.gpuBusy, null);
    assert.equal(sensors.gpuSource, 'unavailable');
    assert.equal(second.vcpuBusy, null);
    assert.equal(typeof second.diskBytesPerS, 'number');
    assert.ok(second.diskBytesPerS !== null && second.diskBytesPerS >= 0);
    assert.equal(second.netBytesPerS, null);
  });

  test('a process that is gone reads null everywhere', async () => {
    const root = await mkdtemp(join(tmpdir(), 'sb-sensors-'));
    dirs.push(root);
    const sensors = new ProcessSensors(999_999, { procRoot: root, nvidiaSmi: false });
    await sensors.read();
    const r = await sensors.read();
    assert.deepEqual({ ...r, at: 0 }, { at: 0, gpuBusy: null, vcpuBusy: null, diskBytesPerS: null, netBytesPerS: null });
    assert.equal(sensors.gpuSource, 'unavailable');
  });
});

describe('vCPUs under a cgroup CPU quota', () => {
  test('cpu.max: "QUOTA PERIOD" is QUOTA/PERIOD cores; "max" or garbage is no limit', () => {
    assert.equal(parseCpuMax('25000 100000\n'), 0.25);
    assert.equal(parseCpuMax('150000 100000'), 1.5);
    assert.equal(parseCpuMax('max 100000\n'), null);
    assert.equal(parseCpuMax(''), null);
    assert.equal(parseCpuMax('lots 100000'), null);
  });

  test('a VM capped at a quarter of a core that uses all of it is fully busy, not a quarter busy', () => {
    assert.equal(vcpuBusyUnderQuota(0.24, 1, 0.25), 0.96);
    assert.equal(vcpuBusyUnderQuota(0.3, 1, 0.25), 1, 'capped at the vCPU count');
    assert.equal(vcpuBusyUnderQuota(0.5, 2, 1), 1, 'two vCPUs sharing one core: half of each');
    assert.equal(vcpuBusyUnderQuota(0.24, 1, null), 0.24, 'no quota: unchanged');
    assert.equal(vcpuBusyUnderQuota(0.24, 1, 2), 0.24, 'a quota above the vCPU count changes nothing');
  });

  test('vcpuCount counts QEMU\'s vCPU threads only', () => {
    const threads = new Map([
      [1, { comm: 'qemu-system-x86', utimeTicks: 0, stimeTicks: 0 }],
      [2, { comm: 'CPU 0/TCG', utimeTicks: 0, stimeTicks: 0 }],
      [3, { comm: 'CPU 1/TCG', utimeTicks: 0, stimeTicks: 0 }],
      [4, { comm: 'worker', utimeTicks: 0, stimeTicks: 0 }],
    ]);
    assert.equal(vcpuCount(threads), 2);
  });
});
