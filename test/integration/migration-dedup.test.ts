// Two real site agents move the demo guest with its memory stream through the dedup transport
// (`--dedup`): 10 round trips (hybrid: a bulk pre-copy pass, then post-copy with QEMU's page requests
// on the transport's return path) with the guest's memory and disk invariants checked after each move;
// a guest whose memory barely changed comes back (pre-copy) sending a small fraction of its memory
// stream; damaged chunk stores still give correct moves; `--dedup off` sends the stream plain and the
// default says what it measured; post-copy moves go through it too.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentPair } from '../support/agents.ts';
import { GuestHealth, runCli } from '../support/fixtures.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';
import type { VmLibrary } from '../../src/main/vm-library.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';

const VM = 'dd';
const MiB = 1024 * 1024;

const health = new GuestHealth(VM);

async function qemuAlive(library: VmLibrary): Promise<boolean> {
  const pid = await readPidFile(library.paths(VM).pidFile);
  return pid !== undefined && (await isAlive(pid));
}

async function migrate(pair: AgentPair, to: 'core' | 'edge', extra: string[] = ['--strategy', 'precopy', '--dedup']): Promise<MigrationRecord> {
  const r = await runCli(['--data', pair.edgeLibrary.dataDir, 'migrate', VM, '--to', to, '--json', ...extra]);
  if (r.code !== 0 && r.code !== 2) assert.fail(`migrate --to ${to} exited ${r.code}: ${r.stderr}\n${pair.edge.log.slice(-20).join('\n')}\n${pair.core.log.slice(-20).join('\n')}`);
  const record = JSON.parse(r.stdout) as MigrationRecord;
  assert.equal(record.outcome, 'committed', `→ ${to}: ${record.error}\n${pair.edge.log.slice(-20).join('\n')}\n${pair.core.log.slice(-20).join('\n')}`);
  assert.equal(await qemuAlive(to === 'core' ? pair.edgeLibrary : pair.coreLibrary), false, 'QEMU still runs at the source');
  return record;
}

/** Raw bytes QEMU's memory stream carried and the bytes on the link for it, as a line for the test log. */
function describeMove(label: string, record: MigrationRecord): string {
  const raw = record.dedup?.rawBytes ?? 0;
  const wire = record.streamBytes['migration'] ?? 0;
  return `${label}: memory ${(raw / MiB).toFixed(1)} MiB raw → ${(wire / MiB).toFixed(1)} MiB on the link (${raw > 0 ? ((wire / raw) * 100).toFixed(1) : '-'}%), refs ${((record.dedup?.refBytes ?? 0) / MiB).toFixed(1)} MiB, needs ${record.dedup?.needs ?? 0}, ${(record.totalMs / 1000).toFixed(1)} s, downtime ${record.downtimeMs ?? '?'} ms`;
}

function assertDeduped(record: MigrationRecord): void {
  assert.ok(record.dedup, 'the record has no dedup figures');
  assert.equal(record.dedup.used, true, `dedup not used: ${record.dedup.reason}`);
  assert.equal(record.dedup.failed, undefined);
  assert.ok(record.dedup.rawBytes > 0);
}

/** Flips one byte in every `every`-th chunk file of `site`'s store for the VM; returns how many. */
async function damageStore(pair: AgentPair, site: 'edge' | 'core', every: number): Promise<number> {
  const root = join(pair.root, site, 'chunks', VM, 'chunks');
  let seen = 0;
  let damaged = 0;
  for (const dir of await readdir(root)) {
    for (const name of await readdir(join(root, dir))) {
      if (seen++ % every !== 0) continue;
      const file = join(root, dir, name);
      const bytes = await readFile(file).catch(() => undefined);
      if (bytes === undefined || bytes.length === 0) continue;
      bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] as number) ^ 0x5a;
      await writeFile(file, bytes);
      damaged += 1;
    }
  }
  return damaged;
}

describe('memory through the dedup transport, between two agents', { timeout: 40 * 60_000 }, () => {
  let pair: AgentPair;

  before(async () => {
    pair = await AgentPair.start();
    await pair.createVmAtEdge(VM);
    await health.assertAt(pair.edgeLibrary);
  });
  after(async () => {
    await pair?.dispose();
  });

  // The busy guest's moves are hybrid: its memory checker rewrites 32 MiB at ~130 MiB/s, and on these
  // two cores, shared by the TCG guest, both agents and both QEMUs, the dedup transport carries 12–18
  // MiB/s on loopback, where it is the bottleneck by construction (auto would send plain). A pre-copy
  // through it cannot converge there, and says so; hybrid's one bulk pass always completes, and its
  // post-copy puts the guest's page requests on the transport's return path while the guest runs.
  const HYBRID = ['--strategy', 'hybrid', '--dedup'];

  test('10 round trips edge → core → edge, hybrid through dedup: invariants hold after every move', async (t: TestContext) => {
    for (let trip = 1; trip <= 10; trip++) {
      for (const to of ['core', 'edge'] as const) {
        const record = await migrate(pair, to, HYBRID);
        assertDeduped(record);
        t.diagnostic(describeMove(`trip ${trip} → ${to}`, record));
        await health.assertAt(to === 'core' ? pair.coreLibrary : pair.edgeLibrary);
      }
    }
    const history = await runCli(['--data', pair.edgeLibrary.dataDir, 'history', '--limit', '3']);
    assert.match(history.stdout, /mem [\d.]+ MiB raw/);
  });

  test('a guest whose memory barely changed comes back sending a small fraction of its memory stream', async (t: TestContext) => {
    // sbmem rewrites its 32 MiB all the time; stopped, what changes while away is the disk workload's
    // page cache and the kernel's own bookkeeping.
    await pair.guestCommand(VM, { type: 'mem-stop' });
    const out = await migrate(pair, 'core');
    assertDeduped(out);
    t.diagnostic(describeMove('→ core, memory stable', out));
    await health.assertAt(pair.coreLibrary, { memory: false });
    const back = await migrate(pair, 'edge');
    assertDeduped(back);
    t.diagnostic(describeMove('back → edge, memory stable', back));
    await health.assertAt(pair.edgeLibrary, { memory: false });
    const raw = back.dedup?.rawBytes ?? 0;
    const wire = back.streamBytes['migration'] ?? 0;
    // Margin: besides refs (23 B per ~4.6 KiB chunk, < 1 %) the link carries the edge's inventory (16 B
    // per stored chunk, up to ~1.3 MiB for a full 384 MiB store), the pages dirtied while away (disk
    // cache, kernel), the later pre-copy passes (dirty pages, XBZRLE-encoded: never the same bytes twice)
    // and the device state; measured well under 10 % here, so 25 % fails only if references stop working.
    assert.ok(wire < 0.25 * raw, `the way back sent ${wire} bytes on the link for ${raw} raw`);
    assert.ok((back.dedup?.refBytes ?? 0) > 0.5 * raw, `only ${back.dedup?.refBytes} of ${raw} raw bytes went as references`);
    await pair.guestCommand(VM, { type: 'mem-start' });
    await health.assertAt(pair.edgeLibrary);
  });

  test('damaged chunk stores at the destination: moves still correct (damaged chunks sent again)', async (t: TestContext) => {
    const atCore = await damageStore(pair, 'core', 10);
    assert.ok(atCore > 0, 'the core holds chunks of the VM');
    const out = await migrate(pair, 'core', HYBRID);
    assertDeduped(out);
    t.diagnostic(`${describeMove('→ core, 1 in 10 of its chunk files damaged', out)} (${atCore} damaged)`);
    assert.ok((out.dedup?.needs ?? 0) > 0, 'no damaged chunk was asked for again');
    await health.assertAt(pair.coreLibrary);

    const atEdge = await damageStore(pair, 'edge', 3);
    const back = await migrate(pair, 'edge', HYBRID);
    assertDeduped(back);
    t.diagnostic(`${describeMove('→ edge, 1 in 3 of its chunk files damaged', back)} (${atEdge} damaged)`);
    await health.assertAt(pair.edgeLibrary);
  });

  test('--dedup off sends the stream plain; the default (auto) says what it measured; hybrid and post-copy go through dedup, page requests on its return path', async (t: TestContext) => {
    const plain = await migrate(pair, 'core', ['--strategy', 'precopy', '--dedup', 'off']);
    assert.equal(plain.dedup?.used, false);
    assert.match(plain.dedup?.reason ?? '', /^off/);
    t.diagnostic(`→ core with --dedup off: memory ${((plain.streamBytes['migration'] ?? 0) / MiB).toFixed(1)} MiB on the link`);
    await health.assertAt(pair.coreLibrary);
    // The default measures both speeds at the source (here the core) and says which way it went and why;
    // which way depends on this machine, so the test checks that the choice follows the figures.
    const auto = await migrate(pair, 'edge', []);
    const figures = /^auto: (on|off), .*\(link ([\d.]+) (Mbit|Gbit)\/s, dedup ([\d.]+) (Mbit|Gbit)\/s on this site\)$/.exec(auto.dedup?.reason ?? '');
    assert.ok(figures, `the default's reason: ${auto.dedup?.reason}`);
    const bits = (n: string | undefined, unit: string | undefined) => Number(n) * (unit === 'Gbit' ? 1e9 : 1e6);
    assert.equal(figures[1] === 'on', bits(figures[4], figures[5]) >= 1.5 * bits(figures[2], figures[3]) * 0.99, 'on exactly when dedup is 1.5 × faster than the link');
    assert.equal(auto.dedup?.used, figures[1] === 'on');
    t.diagnostic(`→ edge, default: ${auto.dedup?.reason}`);
    await health.assertAt(pair.edgeLibrary);
    await migrate(pair, 'core', ['--dedup', 'off']);
    // Back with the default strategy towards the edge (hybrid: post-copy after one pass).
    const hybrid = await migrate(pair, 'edge', ['--dedup']);
    assert.equal(hybrid.strategy, 'hybrid');
    assertDeduped(hybrid);
    t.diagnostic(describeMove('→ edge, hybrid', hybrid));
    await health.assertAt(pair.edgeLibrary);
    // Post-copy from the first byte: every page the guest touches first is asked for on the return path.
    for (const to of ['core', 'edge'] as const) {
      const postcopy = await migrate(pair, to, ['--strategy', 'postcopy', '--dedup']);
      assertDeduped(postcopy);
      assert.equal((postcopy.qemu?.['status'] as string | undefined) ?? 'completed', 'completed');
      t.diagnostic(describeMove(`→ ${to}, post-copy`, postcopy));
      await health.assertAt(to === 'core' ? pair.coreLibrary : pair.edgeLibrary);
    }
  });
});
