// Two real site agents (separate processes, real TLS, paired as a user pairs them) move the running
// demo guest back and forth with its memory and disk invariants running; failures injected from
// outside (a killed destination QEMU, a killed agent) leave the VM running at exactly one site.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { access, readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { AgentPair } from '../support/agents.ts';
import { REPO_ROOT, GuestHealth, runCli } from '../support/fixtures.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';
import { sourceJournalPath } from '../../src/migrator/orchestrator/journal.ts';
import { removeCpuLimit } from '../../src/migrator/qemu/cpu-limit.ts';
import type { VmLibrary } from '../../src/main/vm-library.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';

const VM = 'trip';
const MiB = 1024 * 1024;

const health = new GuestHealth(VM);

async function qemuAlive(library: VmLibrary): Promise<boolean> {
  const pid = await readPidFile(library.paths(VM).pidFile);
  return pid !== undefined && (await isAlive(pid));
}

/** What a failure message needs when the VM is not where it should be: both agents' and QEMUs' last words. */
async function diagnostics(pair: AgentPair): Promise<string> {
  const tail = async (file: string, lines = 15): Promise<string> => (await readFile(file, 'utf8').catch(() => '(none)')).trimEnd().split('\n').slice(-lines).join('\n');
  const parts: string[] = [];
  for (const [site, library, agent] of [['edge', pair.edgeLibrary, pair.edge], ['core', pair.coreLibrary, pair.core]] as const) {
    const paths = library.paths(VM);
    const pid = await readPidFile(paths.pidFile);
    const qemu = pid === undefined ? 'no pid file' : `pid ${pid} ${(await isAlive(pid)) ? 'alive' : 'dead'}`;
    const journal = await readFile(sourceJournalPath(paths.dir), 'utf8').catch(() => 'none');
    parts.push(
      `--- ${site}: QEMU ${qemu}; source journal: ${journal}; agent log:\n${agent.log.slice(-25).join('\n')}`,
      `--- ${site} qemu.log:\n${await tail(paths.qemuLog)}`,
      `--- ${site} serial console:\n${await tail(paths.serialLog)}`,
    );
  }
  return parts.join('\n');
}

async function migrate(pair: AgentPair, to: 'core' | 'edge', extra: string[] = []): Promise<MigrationRecord> {
  const r = await runCli(['--data', pair.edgeLibrary.dataDir, 'migrate', VM, '--to', to, '--json', ...extra]);
  if (r.code !== 0 && r.code !== 2) assert.fail(`migrate --to ${to} exited ${r.code}: ${r.stderr}\n${await diagnostics(pair)}`);
  return JSON.parse(r.stdout) as MigrationRecord;
}

/** Later tests start from the VM at the edge, whatever an earlier test left. */
async function ensureAtEdge(pair: AgentPair): Promise<void> {
  if (await qemuAlive(pair.edgeLibrary)) return;
  const record = await migrate(pair, 'edge');
  if (record.outcome !== 'committed') assert.fail(`bringing the VM back to the edge: ${record.error}\n${await diagnostics(pair)}`);
}

/**
 * Runs `snowbird migrate` and calls `inject` once the CLI reports the given phase. The CLI is killed
 * if the test is cancelled (a hang fails the test instead of stalling the suite).
 */
async function migrateAndInject(pair: AgentPair, signal: AbortSignal, to: 'core' | 'edge', phase: string, inject: () => Promise<void>, extra: string[] = [], started?: (child: ChildProcess) => void): Promise<{ code: number | null; record: MigrationRecord | undefined; stderr: string }> {
  const child = spawn(join(REPO_ROOT, 'node_modules', '.bin', 'node'), [join(REPO_ROOT, 'src', 'main', 'cli.ts'), '--data', pair.edgeLibrary.dataDir, 'migrate', VM, '--to', to, '--json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], signal });
  child.on('error', () => undefined);
  started?.(child);
  let stdout = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  let injected: Promise<void> | undefined;
  const stderr: string[] = [];
  createInterface({ input: child.stderr }).on('line', (line) => {
    stderr.push(line);
    if (!injected && line.includes(` ${phase} `)) injected = inject();
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (!injected) assert.fail(`the migration never reached phase ${phase} (exit ${code}): ${stderr.join('\n')}\n${stdout}\n${await diagnostics(pair)}`);
  await injected;
  return { code, record: stdout.trim() === '' ? undefined : (JSON.parse(stdout) as MigrationRecord), stderr: stderr.join('\n') };
}

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
        const record = await migrate(pair, to);
        assert.equal(record.outcome, 'committed', `trip ${trip} → ${to}: ${record.error}`);
        diskBytes.push({ to, nbd: record.streamBytes['nbd'] ?? 0 });
        const here = to === 'core' ? pair.coreLibrary : pair.edgeLibrary;
        const there = to === 'core' ? pair.edgeLibrary : pair.coreLibrary;
        assert.equal(await qemuAlive(there), false, `trip ${trip}: QEMU still runs at the source`);
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

  test('Ctrl-C during the memory phase cancels the move: it rolls back and the VM keeps running at the edge', { timeout: 240_000 }, async (t) => {
    await ensureAtEdge(pair);
    let cli: ChildProcess | undefined;
    const { code, record, stderr } = await migrateAndInject(pair, t.signal, 'core', 'memory', async () => {
      cli?.kill('SIGINT');
    }, ['--bandwidth', '40'], (child) => (cli = child));
    assert.equal(code, 2, stderr);
    assert.match(stderr, /cancelling/);
    assert.equal(record?.outcome, 'aborted', stderr);
    assert.match(record?.error ?? '', /cancelled by the user/);
    assert.equal(await qemuAlive(pair.edgeLibrary), true);
    assert.equal(await qemuAlive(pair.coreLibrary), false);
    await health.assertAt(pair.edgeLibrary);
    const cancelIdle = await runCli(['--data', pair.edgeLibrary.dataDir, 'cancel', VM]);
    assert.equal(cancelIdle.code, 1);
    assert.match(cancelIdle.stdout, /not moving/);
  });

  test('a destination QEMU killed during the memory phase: the VM keeps running at the edge', { timeout: 240_000 }, async (t) => {
    await ensureAtEdge(pair);
    const { code, record, stderr } = await migrateAndInject(pair, t.signal, 'core', 'memory', async () => {
      const pid = await readPidFile(pair.coreLibrary.paths(VM).pidFile);
      if (pid !== undefined) process.kill(pid, 'SIGKILL');
    }, ['--bandwidth', '40']);
    assert.equal(code, 2, stderr);
    assert.ok(record, stderr);
    assert.equal(record.outcome, 'aborted');
    assert.equal(record.failedPhase, 'memory');
    assert.match(record.error ?? '', /memory/);
    assert.equal(await qemuAlive(pair.edgeLibrary), true);
    assert.equal(await qemuAlive(pair.coreLibrary), false);
    await health.assertAt(pair.edgeLibrary);
  });

  test('the core agent killed mid-migration: the VM stays at the edge; after its restart it runs at exactly one site', { timeout: 300_000 }, async (t) => {
    await ensureAtEdge(pair);
    const { code, record, stderr } = await migrateAndInject(pair, t.signal, 'core', 'memory', () => pair.killAgent(pair.core), ['--bandwidth', '40']);
    assert.equal(code, 2, stderr);
    assert.equal(record?.outcome, 'aborted', stderr);
    assert.equal(await qemuAlive(pair.edgeLibrary), true);
    await health.assertAt(pair.edgeLibrary);
    await pair.startCore();
    await pair.waitConnected();
    // The restarted core cleaned up the incoming QEMU its predecessor left behind.
    assert.equal(await qemuAlive(pair.coreLibrary), false);
    const status = await runCli(['--data', pair.edgeLibrary.dataDir, 'status', '--json']);
    const vms = (JSON.parse(status.stdout) as { vms: { name: string; location: string }[] }).vms;
    assert.deepEqual(vms.filter((v) => v.name === VM).map((v) => v.location), ['edge']);
    // And the link works again: a move after the restart succeeds.
    assert.equal((await migrate(pair, 'core')).outcome, 'committed');
    await health.assertAt(pair.coreLibrary);
    assert.equal((await migrate(pair, 'edge')).outcome, 'committed');
    await health.assertAt(pair.edgeLibrary);
  });

  test('the edge agent killed mid-migration: after its restart the VM runs at exactly one site', { timeout: 300_000 }, async (t) => {
    await ensureAtEdge(pair);
    await migrateAndInject(pair, t.signal, 'core', 'memory', () => pair.killAgent(pair.edge), ['--bandwidth', '40']);
    await pair.startEdge();
    await pair.waitConnected();
    // The restarted edge finishes or rolls back from its journal once the core is reachable.
    const deadline = Date.now() + 120_000;
    let where: boolean[] = [];
    while (Date.now() < deadline) {
      where = [await qemuAlive(pair.edgeLibrary), await qemuAlive(pair.coreLibrary)];
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
    await ensureAtEdge(pair);
    // Four cores' worth: a limit that holds without slowing this guest down.
    await pair.edgeLibrary.save({ ...(await pair.edgeLibrary.load(VM)), cpuLimitPercent: 400 });
    assert.equal((await migrate(pair, 'core')).outcome, 'committed');
    assert.equal((await migrate(pair, 'edge')).outcome, 'committed');
    assert.equal((await pair.edgeLibrary.load(VM)).cpuLimitPercent, 400);
    const pid = await readPidFile(pair.edgeLibrary.paths(VM).pidFile);
    const procs = (await readFile(`/sys/fs/cgroup/cpu/snowbird-${VM}/cgroup.procs`, 'utf8')).split('\n');
    assert.ok(pid !== undefined && procs.includes(String(pid)), `QEMU ${pid} is not in the VM's cgroup (${procs.join(' ')})`);
    assert.equal((await readFile(`/sys/fs/cgroup/cpu/snowbird-${VM}/cpu.cfs_quota_us`, 'utf8')).trim(), '400000');
    await health.assertAt(pair.edgeLibrary);
  });
});
