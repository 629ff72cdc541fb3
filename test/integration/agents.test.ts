// Two real site agents (separate processes, real TLS, paired as a user pairs them) move the running
// demo guest back and forth with its memory and disk invariants running; failures injected from
// outside (a killed destination QEMU, a killed agent) leave the VM running at exactly one site.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { access, appendFile, readFile } from 'node:fs/promises';
import { AgentPair } from '../support/agents.ts';
import { GuestHealth, runCli } from '../support/fixtures.ts';
import { ensureAtEdge, migrate, migrateAndInject, qemuAlive } from '../support/moves.ts';
import { readPidFile } from '../../src/migrator/qemu/process-info.ts';
import { removeCpuLimit } from '../../src/migrator/qemu/cpu-limit.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';
import type { VmStatusReport } from '../../src/shared/vm-status.ts';

const VM = 'trip';
const MiB = 1024 * 1024;

const health = new GuestHealth(VM);

const pick = (r: VmStatusReport): { site: string; state: string } => ({ site: r.site, state: r.state });

describe('two agents move the demo guest', { timeout: 30 * 60_000 }, () => {
  let pair: AgentPair;

  before(async () => {
    pair = await AgentPair.start();
    // A working set the guest keeps but does not rewrite: only the first trip should send it.
    await pair.createVmAtEdge(VM, { workingSetMiB: 24 });
    await health.assertAt(pair.edgeLibrary);
  });
  after(async () => {
    await pair?.dispose();
    await removeCpuLimit(VM);
  });

  test('pairing refuses a wrong token or fingerprint and keeps the existing pairing', async () => {
    const wrongToken = await runCli(['--data', pair.edgeLibrary.dataDir, 'pair', `https://${pair.coreAddress}`, '--token', 'not-the-token']);
    assert.notEqual(wrongToken.code, 0);
    assert.match(wrongToken.stderr, /token/i);
    const wrongPrint = await runCli(['--data', pair.edgeLibrary.dataDir, 'pair', `https://${pair.coreAddress}`, '--token', pair.token, '--fingerprint', `sha256:${'0'.repeat(64)}`]);
    assert.notEqual(wrongPrint.code, 0);
    assert.match(wrongPrint.stderr, /pinned sha256:0{64}/);
    await pair.waitConnected();
  });

  test('10 round trips edge → core → edge: invariants hold, uptime continuous, later trips send only what changed', async () => {
    const diskBytes: { to: string; nbd: number }[] = [];
    for (let trip = 1; trip <= 10; trip++) {
      for (const to of ['core', 'edge'] as const) {
        const record = await migrate(pair, VM, to);
        assert.equal(record.outcome, 'committed', `trip ${trip} → ${to}: ${record.error}`);
        diskBytes.push({ to, nbd: record.streamBytes['nbd'] ?? 0 });
        const here = to === 'core' ? pair.coreLibrary : pair.edgeLibrary;
        const there = to === 'core' ? pair.edgeLibrary : pair.coreLibrary;
        assert.equal(await qemuAlive(there, VM), false, `trip ${trip}: QEMU still runs at the source`);
        await health.assertAt(here);
      }
    }
    // The first move carries the working set (24 MiB) and the workload's region; every later move
    // carries only what the guest wrote while away (its 4 MiB disk workload region, rewritten).
    const [first, ...later] = diskBytes;
    assert.ok(first && first.nbd >= 24 * MiB, `first trip sent ${first?.nbd} disk bytes`);
    for (const [i, trip] of later.entries()) assert.ok(trip.nbd < 12 * MiB, `move ${i + 2} (→ ${trip.to}) sent ${trip.nbd} disk bytes`);
    const history = await runCli(['--data', pair.edgeLibrary.dataDir, 'history', '--json', '--limit', '100']);
    assert.equal((JSON.parse(history.stdout) as MigrationRecord[]).filter((r) => r.outcome === 'committed').length, 20);
  });

  test('moves name the real state: no such VM, already there; cloud and laptop are the sites\' other names', async () => {
    const cli = (...args: string[]): ReturnType<typeof runCli> => runCli(['--data', pair.edgeLibrary.dataDir, ...args]);
    const missing = await cli('migrate', 'nosuchvm', '--to', 'core');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /there is no VM named "nosuchvm"/);
    const home = await cli('migrate', VM, '--to', 'laptop');
    assert.equal(home.code, 1);
    assert.match(home.stderr, /VM "trip" already runs at the edge/);
    assert.equal((await migrate(pair, VM, 'core', [])).outcome, 'committed');
    const away = await cli('migrate', VM, '--to', 'cloud');
    assert.match(away.stderr, /VM "trip" already runs at the core/);
    // The vm commands see it there too, through the edge agent.
    const status = await cli('vm', 'status', VM, '--json');
    assert.equal(status.code, 0, status.stderr);
    assert.deepEqual(pick(JSON.parse(status.stdout) as VmStatusReport), { site: 'core', state: 'running' });
    const list = JSON.parse((await cli('vm', 'list', '--json')).stdout) as VmStatusReport[];
    assert.deepEqual(list.filter((r) => r.name === VM).map(pick), [{ site: 'core', state: 'running' }]);
    const start = await cli('vm', 'start', VM);
    assert.equal(start.code, 1);
    assert.match(start.stderr, /VM "trip" already runs at the core/);
    assert.equal(await qemuAlive(pair.edgeLibrary, VM), false, 'vm start booted a second copy at the edge');
    // The console comes from the core's QEMU, not the edge's old log. After many moves both logs may
    // be empty (each incoming QEMU starts a new one; the booted guest prints nothing): a line only
    // the core's log holds tells them apart.
    await appendFile(pair.coreLibrary.paths(VM).serialLog, 'a line in the core\'s console log\n');
    const console = await cli('vm', 'console', VM);
    assert.equal(console.code, 0, console.stderr);
    assert.match(console.stdout, /a line in the core's console log/);
    const back = await cli('migrate', VM, '--to', 'laptop', '--json');
    assert.equal(back.code, 0, back.stderr);
    assert.equal((JSON.parse(back.stdout) as MigrationRecord).to, 'edge');
    await health.assertAt(pair.edgeLibrary);
  });

  test('Ctrl-C during the memory phase cancels the move: it rolls back and the VM keeps running at the edge', { timeout: 240_000 }, async (t) => {
    await ensureAtEdge(pair, VM);
    let cli: ChildProcess | undefined;
    const { code, record, stderr } = await migrateAndInject(pair, VM, t.signal, 'core', 'memory', async () => {
      cli?.kill('SIGINT');
    }, ['--bandwidth', '40'], (child) => (cli = child));
    // Its own outcome and exit status, not a failure's.
    assert.equal(code, 3, stderr);
    assert.match(stderr, /cancelling/);
    assert.equal(record?.outcome, 'cancelled', stderr);
    assert.match(record?.error ?? '', /cancelled by the user/);
    assert.equal(await qemuAlive(pair.edgeLibrary, VM), true);
    assert.equal(await qemuAlive(pair.coreLibrary, VM), false);
    await health.assertAt(pair.edgeLibrary);
    const cancelIdle = await runCli(['--data', pair.edgeLibrary.dataDir, 'cancel', VM]);
    assert.equal(cancelIdle.code, 1);
    assert.match(cancelIdle.stdout, /not moving/);
  });

  test('a destination QEMU killed during the memory phase: the VM keeps running at the edge', { timeout: 240_000 }, async (t) => {
    await ensureAtEdge(pair, VM);
    const { code, record, stderr } = await migrateAndInject(pair, VM, t.signal, 'core', 'memory', async () => {
      const pid = await readPidFile(pair.coreLibrary.paths(VM).pidFile);
      if (pid !== undefined) process.kill(pid, 'SIGKILL');
    }, ['--bandwidth', '40']);
    assert.equal(code, 2, stderr);
    assert.ok(record, stderr);
    assert.equal(record.outcome, 'aborted');
    assert.equal(record.failedPhase, 'memory');
    assert.match(record.error ?? '', /memory/);
    assert.equal(await qemuAlive(pair.edgeLibrary, VM), true);
    assert.equal(await qemuAlive(pair.coreLibrary, VM), false);
    await health.assertAt(pair.edgeLibrary);
  });

  test('the core agent killed mid-migration: the VM stays at the edge; after its restart it runs at exactly one site', { timeout: 300_000 }, async (t) => {
    await ensureAtEdge(pair, VM);
    const { code, record, stderr } = await migrateAndInject(pair, VM, t.signal, 'core', 'memory', () => pair.killAgent(pair.core), ['--bandwidth', '40']);
    assert.equal(code, 2, stderr);
    assert.equal(record?.outcome, 'aborted', stderr);
    assert.equal(await qemuAlive(pair.edgeLibrary, VM), true);
    await health.assertAt(pair.edgeLibrary);
    await pair.startCore();
    await pair.waitConnected();
    // The restarted core cleaned up the incoming QEMU its predecessor left behind.
    assert.equal(await qemuAlive(pair.coreLibrary, VM), false);
    const status = await runCli(['--data', pair.edgeLibrary.dataDir, 'status', '--json']);
    const vms = (JSON.parse(status.stdout) as { vms: { name: string; location: string }[] }).vms;
    assert.deepEqual(vms.filter((v) => v.name === VM).map((v) => v.location), ['edge']);
    // And the link works again: a move after the restart succeeds.
    assert.equal((await migrate(pair, VM, 'core')).outcome, 'committed');
    await health.assertAt(pair.coreLibrary);
    assert.equal((await migrate(pair, VM, 'edge')).outcome, 'committed');
    await health.assertAt(pair.edgeLibrary);
  });

  test('the edge agent killed mid-migration: after its restart the VM runs at exactly one site', { timeout: 300_000 }, async (t) => {
    await ensureAtEdge(pair, VM);
    await migrateAndInject(pair, VM, t.signal, 'core', 'memory', () => pair.killAgent(pair.edge), ['--bandwidth', '40']);
    await pair.startEdge();
    await pair.waitConnected();
    // The restarted edge finishes or rolls back from its journal once the core is reachable.
    const deadline = Date.now() + 120_000;
    let where: boolean[] = [];
    while (Date.now() < deadline) {
      where = [await qemuAlive(pair.edgeLibrary, VM), await qemuAlive(pair.coreLibrary, VM)];
      if (where.filter(Boolean).length === 1) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(where.filter(Boolean).length, 1, `QEMU alive at [edge, core]: ${where.join(', ')}`);
    await health.assertAt(where[0] ? pair.edgeLibrary : pair.coreLibrary);
  });

  test('a CPU limit set at the edge holds again when the VM comes back from the core', async (t) => {
    if (process.getuid?.() !== 0 || !(await access('/sys/fs/cgroup/cpu/cgroup.procs').then(() => true, () => false))) {
      t.skip('needs root and a cgroup v1 cpu controller (as on the CI machines)');
      return;
    }
    await ensureAtEdge(pair, VM);
    // Four cores' worth: a limit that holds without slowing this guest down.
    await pair.edgeLibrary.save({ ...(await pair.edgeLibrary.load(VM)), cpuLimitPercent: 400 });
    assert.equal((await migrate(pair, VM, 'core')).outcome, 'committed');
    assert.equal((await migrate(pair, VM, 'edge')).outcome, 'committed');
    assert.equal((await pair.edgeLibrary.load(VM)).cpuLimitPercent, 400);
    const pid = await readPidFile(pair.edgeLibrary.paths(VM).pidFile);
    const procs = (await readFile(`/sys/fs/cgroup/cpu/snowbird-${VM}/cgroup.procs`, 'utf8')).split('\n');
    assert.ok(pid !== undefined && procs.includes(String(pid)), `QEMU ${pid} is not in the VM's cgroup (${procs.join(' ')})`);
    assert.equal((await readFile(`/sys/fs/cgroup/cpu/snowbird-${VM}/cpu.cfs_quota_us`, 'utf8')).trim(), '400000');
    await health.assertAt(pair.edgeLibrary);
  });
});
