// A busy VM goes to the cloud with the default strategy (auto) and comes back (hybrid), on an
// otherwise idle machine: the demo guest's default 64 MiB memory workload, and one rewriting 256 MiB.
// Then a link cut while post-copy runs, each way: the move pauses and recovers when the link is back.
// The agents talk through a TCP relay on loopback, which is what the test cuts.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { AgentPair } from '../support/agents.ts';
import { GuestHealth, runCli } from '../support/fixtures.ts';
import { diagnostics, ensureAtEdge, migrate, migrateAndInject, qemuAlive } from '../support/moves.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';

/** How long the relay refuses connections after a cut: the link is down for a while, not a blip. */
const LINK_DOWN_MS = 3000;

describe('busy VMs move with the default strategy, between two agents', { timeout: 40 * 60_000 }, () => {
  let pair: AgentPair;

  before(async () => {
    pair = await AgentPair.start({ relay: true });
  });
  after(async () => {
    await pair?.dispose();
  });

  /** Three round trips with no --strategy: each move commits, the guest's checks hold after each. */
  async function roundTrips(vm: string, health: GuestHealth): Promise<MigrationRecord[]> {
    const records: MigrationRecord[] = [];
    for (let trip = 1; trip <= 3; trip++) {
      for (const to of ['core', 'edge'] as const) {
        const record = await migrate(pair, vm, to);
        assert.equal(record.outcome, 'committed', `trip ${trip} → ${to}: ${record.error}\n${await diagnostics(pair, vm)}`);
        assert.equal(record.strategy, to === 'core' ? 'auto' : 'hybrid');
        assert.ok(record.memory?.reason, `trip ${trip} → ${to}: no reason for the strategy`);
        const here = to === 'core' ? pair.coreLibrary : pair.edgeLibrary;
        const there = to === 'core' ? pair.edgeLibrary : pair.coreLibrary;
        assert.equal(await qemuAlive(there, vm), false, `trip ${trip}: QEMU still runs at the source`);
        await health.assertAt(here);
        records.push(record);
        console.log(`${vm} trip ${trip} → ${to}: ${record.totalMs} ms, downtime ${record.downtimeMs} ms, ${record.memory?.reason}${record.memory?.postcopyMs === undefined ? '' : `, post-copy ${record.memory.postcopyMs} ms`}`);
      }
    }
    return records;
  }

  test('the default 64 MiB memory workload: three round trips', async () => {
    const vm = 'busy64';
    const health = new GuestHealth(vm);
    await pair.createVmAtEdge(vm, { memoryMiB: 192, memWorkloadMiB: 64 });
    await pair.waitGuestReady(vm);
    await health.assertAt(pair.edgeLibrary);
    const records = await roundTrips(vm, health);
    // Whatever auto chose, the record says why in the guest's and the stream's figures.
    for (const r of records.filter((r) => r.to === 'core')) assert.match(r.memory?.reason ?? '', /^auto: .*the guest dirties [\d.]+ [KM]iB\/s, the stream carries [\d.]+ [KM]iB\/s/);
  });

  test('vm stop during a move is refused, naming the move; with --cancel-move the move is cancelled and the VM stopped', async (t: TestContext) => {
    const vm = 'busy64';
    await ensureAtEdge(pair, vm);
    const stop = (...extra: string[]): ReturnType<typeof runCli> => runCli(['--data', pair.edgeLibrary.dataDir, 'vm', 'stop', vm, ...extra]);
    let refused: Awaited<ReturnType<typeof runCli>> | undefined;
    let cancelled: Awaited<ReturnType<typeof runCli>> | undefined;
    const { code, record } = await migrateAndInject(pair, vm, t.signal, 'core', 'memory', async () => {
      refused = await stop();
      cancelled = await stop('--cancel-move');
    }, ['--bandwidth', '40']);
    assert.equal(refused?.code, 1);
    assert.match(refused?.stderr ?? '', /VM "busy64" is moving edge → core .*--cancel-move/);
    assert.equal(cancelled?.code, 0, cancelled?.stderr);
    assert.match(cancelled?.stdout ?? '', /VM "busy64" stopped at the edge/);
    assert.equal(code, 3);
    assert.equal(record?.outcome, 'cancelled');
    assert.equal(await qemuAlive(pair.edgeLibrary, vm), false);
    assert.equal(await qemuAlive(pair.coreLibrary, vm), false);
  });

  test('with post-copy forbidden towards the core, a move that asks for it is refused, naming the setting', async () => {
    const cli = (...args: string[]): ReturnType<typeof runCli> => runCli(['--data', pair.edgeLibrary.dataDir, '--config', pair.configPath, ...args]);
    const set = await cli('config', 'set', 'migration.postcopyToCore', 'false');
    assert.equal(set.code, 0, set.stderr);
    try {
      for (const strategy of ['hybrid', 'postcopy']) {
        const r = await cli('migrate', 'busy64', '--to', 'core', '--strategy', strategy);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, new RegExp(`--strategy ${strategy} uses post-copy, which the settings forbid towards the core \\(migration\\.postcopyToCore is false\\)`));
      }
    } finally {
      assert.equal((await cli('config', 'set', 'migration.postcopyToCore', 'null')).code, 0);
    }
  });

  describe('a guest rewriting 256 MiB', () => {
    const vm = 'busy256';
    const health = new GuestHealth(vm);

    before(async () => {
      await pair.createVmAtEdge(vm, { memoryMiB: 384, memWorkloadMiB: 256 });
      await pair.waitGuestReady(vm);
      await health.assertAt(pair.edgeLibrary);
    });

    test('three round trips; pre-copy cannot converge, so auto finishes in post-copy and says why', async () => {
      const records = await roundTrips(vm, health);
      for (const r of records.filter((r) => r.to === 'core')) {
        assert.equal(r.memory?.used, 'postcopy', r.memory?.reason);
        assert.match(r.memory?.reason ?? '', /^auto: pre-copy cannot converge \(the guest dirties [\d.]+ [KM]iB\/s, the stream carries [\d.]+ [KM]iB\/s.*\): post-copy for ~[\d.]+ s$/);
        assert.ok(r.memory?.postcopyMs !== undefined, 'the risk window is measured');
      }
    });

    for (const to of ['core', 'edge'] as const) {
      test(`a link cut during post-copy towards the ${to} pauses the move, which recovers when the link is back`, async (t: TestContext) => {
        if (to === 'core') await ensureAtEdge(pair, vm);
        else if (!(await qemuAlive(pair.coreLibrary, vm))) assert.equal((await migrate(pair, vm, 'core')).outcome, 'committed');
        // A cap keeps post-copy running for a few seconds: the cut lands inside it.
        const { code, record, stderr } = await migrateAndInject(pair, vm, t.signal, to, 'commit', async () => {
          await new Promise((resolve) => setTimeout(resolve, 300));
          pair.relay?.cut(LINK_DOWN_MS);
        }, ['--bandwidth', '100']);
        assert.equal(code, 0, `${stderr}\n${await diagnostics(pair, vm)}`);
        assert.equal(record?.outcome, 'committed', record?.error);
        assert.equal(record?.memory?.used, 'postcopy');
        const decisions = ((record?.qemu?.['snowbird'] as { decisions?: string[] } | undefined)?.decisions ?? []).join('\n');
        assert.match(decisions, /post-copy stream broke after switchover; resumed/, `the cut did not land in post-copy: ${decisions}`);
        const [here, there] = to === 'core' ? [pair.coreLibrary, pair.edgeLibrary] : [pair.edgeLibrary, pair.coreLibrary];
        assert.equal(await qemuAlive(there, vm), false, 'QEMU still runs at the source');
        await health.assertAt(here);
        await pair.waitConnected();
      });
    }

    test('vm stop stops it at the core, through the edge agent; vm start boots it there again', async () => {
      if (!(await qemuAlive(pair.coreLibrary, vm))) assert.equal((await migrate(pair, vm, 'core')).outcome, 'committed');
      const stop = await runCli(['--data', pair.edgeLibrary.dataDir, 'vm', 'stop', vm]);
      assert.equal(stop.code, 0, stop.stderr);
      assert.match(stop.stdout, /VM "busy256" stopped at the core/);
      assert.equal(await qemuAlive(pair.coreLibrary, vm), false);
      assert.equal(await qemuAlive(pair.edgeLibrary, vm), false);
      const status = await runCli(['--data', pair.edgeLibrary.dataDir, 'vm', 'status', vm, '--json']);
      assert.equal((JSON.parse(status.stdout) as { state: string }).state, 'stopped');
      // Its disk's top is at the core now: it boots there, where it stopped.
      const start = await runCli(['--data', pair.edgeLibrary.dataDir, 'vm', 'start', vm]);
      assert.equal(start.code, 0, start.stderr);
      assert.match(start.stdout, /VM "busy256" is running at the core, where it stopped/);
      assert.equal(await qemuAlive(pair.coreLibrary, vm), true);
      assert.equal(await qemuAlive(pair.edgeLibrary, vm), false);
    });
  });
});
