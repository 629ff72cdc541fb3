// Two real site agents (separate processes, real TLS, paired as a user pairs them) move the running
// demo guest back and forth with its memory and disk invariants running. Failure injection per
// phase is covered in-process by migration.test.ts; through two agent processes it is not yet
// (a destination QEMU killed mid-memory hangs the CLI's migrate: see the issue notes).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentPair } from '../support/agents.ts';
import { runCli, waitForHeartbeats } from '../support/fixtures.ts';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';
import type { VmLibrary } from '../../src/main/vm-library.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';

const VM = 'trip';
const MiB = 1024 * 1024;

/** Guest uptime must only grow: the VM was never rebooted or restarted by a move. */
let lastUptimeMs = 0;

async function assertHealthyAt(library: VmLibrary): Promise<void> {
  const channel = await GuestChannel.connect(VM, library.paths(VM).control);
  try {
    const integrity = await waitForHeartbeats(channel, 1, 60_000);
    assert.equal(integrity.memory.violations, 0, `memory violations: ${integrity.memory.lastViolation}`);
    assert.equal(integrity.disk.violations, 0, `disk violations: ${integrity.disk.lastViolation}`);
    assert.ok(integrity.uptimeMs > lastUptimeMs, `guest uptime went from ${lastUptimeMs} to ${integrity.uptimeMs} ms: it restarted`);
    lastUptimeMs = integrity.uptimeMs;
  } finally {
    channel.close();
  }
}

async function qemuAlive(library: VmLibrary): Promise<boolean> {
  const pid = await readPidFile(library.paths(VM).pidFile);
  return pid !== undefined && (await isAlive(pid));
}

async function migrate(pair: AgentPair, to: 'core' | 'edge', extra: string[] = []): Promise<MigrationRecord> {
  const r = await runCli(['--data', pair.edgeLibrary.dataDir, 'migrate', VM, '--to', to, '--json', ...extra]);
  assert.ok(r.code === 0 || r.code === 2, r.stderr);
  return JSON.parse(r.stdout) as MigrationRecord;
}

describe('two agents move the demo guest', { timeout: 30 * 60_000 }, () => {
  let pair: AgentPair;

  before(async () => {
    pair = await AgentPair.start();
    // A working set the guest keeps but does not rewrite: only the first trip should send it.
    await pair.createVmAtEdge(VM, { workingSetMiB: 24 });
    await assertHealthyAt(pair.edgeLibrary);
  });
  after(async () => {
    await pair?.dispose();
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
        await assertHealthyAt(here);
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
});
