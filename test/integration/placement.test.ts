// Automatic placement end to end: two real agents, the demo guest, input typed through the edge
// agent's display gateway. Typing keeps the VM at the edge; `crunch` moves it to the core; typing
// again brings it back; both moves are in `snowbird history` with the policy's reasons.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentPair } from '../support/agents.ts';
import { runCli } from '../support/fixtures.ts';
import { RfbTestViewer, typeViaRfb, waitUntil } from '../support/display.ts';
import type { GuestCommand } from '../../src/shared/guest-protocol.ts';
import { displayReplySchema, type PlacementReply } from '../../src/shared/local-api.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';
import type { PlacementDecision } from '../../src/shared/placement.ts';

const VM = 'placed';

describe('automatic placement follows the work', { timeout: 20 * 60_000 }, () => {
  let pair: AgentPair | undefined;
  let viewer: RfbTestViewer | undefined;

  const cli = async <T>(args: string[]): Promise<T> => {
    const p = pair;
    assert.ok(p !== undefined);
    const r = await runCli(['--data', p.edgeLibrary.dataDir, ...args, '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as T;
  };
  const where = async (): Promise<string | undefined> => (await cli<{ vms: { name: string; location: string }[] }>(['status'])).vms.find((v) => v.name === VM)?.location;
  const guest = async (site: 'edge' | 'core', command: GuestCommand): Promise<void> => {
    assert.ok(pair !== undefined);
    await pair.guestCommand(VM, command, site);
  };
  /** Types for `ms`, a few keys a second, as a user at the keyboard (the shell gets harmless spaces, then a clear line). */
  const typeFor = async (ms: number): Promise<void> => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      assert.ok(viewer !== undefined);
      await typeViaRfb(viewer, '   ');
      viewer.send({ type: 'key-event', down: true, keysym: 0xff0d });
      viewer.send({ type: 'key-event', down: false, keysym: 0xff0d });
      await new Promise((r) => setTimeout(r, 300));
    }
  };

  before(async () => {
    pair = await AgentPair.start({ autoPlacement: true });
    await pair.createVmAtEdge(VM);
    await pair.waitGuestReady(VM);
    // A quiet guest: its integrity workloads would read as a crunch of their own.
    await guest('edge', { type: 'mem-stop' });
    await guest('edge', { type: 'disk-stop' });
    // One manual round trip teaches the cost model what a move costs here.
    for (const to of ['core', 'edge'] as const) assert.equal((await cli<MigrationRecord>(['migrate', VM, '--to', to])).outcome, 'committed');
    const display = displayReplySchema.parse(await cli(['display', VM]));
    viewer = await RfbTestViewer.connect(Number(display.rfbAddress.split(':').at(-1)));
  });

  after(async () => {
    viewer?.close();
    await pair?.dispose();
  });

  test('the VM starts in auto mode and the policy explains itself', async () => {
    await waitUntil('a first decision', async () => (await cli<PlacementReply>(['placement', VM])).decision !== undefined, 30_000);
    const reply = await cli<PlacementReply>(['placement', VM]);
    assert.equal(reply.mode, 'auto');
    assert.ok((reply.decision?.reasons.length ?? 0) > 0);
  });

  test('typing keeps it at the edge; crunch sends it to the core; typing brings it back', async () => {
    await typeFor(20_000);
    assert.equal(await where(), 'edge', 'typing moved the VM');
    const typed = await cli<PlacementReply>(['placement', VM]);
    assert.equal(typed.decision?.phase, 'interactive', JSON.stringify(typed.decision));

    await guest('edge', { type: 'crunch', seconds: 120 });
    await waitUntil('the policy to move the crunching VM to the core', async () => (await where()) === 'core', 180_000, 1000);

    await typeFor(5_000); // the user is back: input reaches the VM at the core through the same gateway
    await waitUntil('the policy to bring the VM back for the typing user', async () => {
      if ((await where()) === 'edge') return true;
      await typeFor(2_000);
      return false;
    }, 180_000, 0);

    const records = await cli<MigrationRecord[]>(['history', '--vm', VM]);
    const auto = records.filter((r) => r.trigger?.by === 'policy');
    assert.deepEqual(auto.map((r) => `${r.to}:${r.outcome}`).reverse(), ['core:committed', 'edge:committed']);
    for (const r of auto) assert.ok((r.trigger?.reasons.length ?? 0) > 0);
    const decisions = await cli<{ vm: string; decision: PlacementDecision }[]>(['history', '--decisions', '--vm', VM]);
    const moves = decisions.map((d) => d.decision).filter((d) => d.action === 'migrate');
    assert.deepEqual(moves.map((d) => `${d.rule}→${d.action === 'migrate' ? d.to : ''}`).reverse(), ['crunch→core', 'interaction→edge']);
  });

  test('a pin wins: keep-edge brings it home and keeps it there through a crunch', async () => {
    await cli(['placement', VM, 'keep-edge']);
    await guest('edge', { type: 'crunch', seconds: 40 });
    await new Promise((r) => setTimeout(r, 30_000));
    assert.equal(await where(), 'edge');
    const reply = await cli<PlacementReply>(['placement', VM]);
    assert.equal(reply.mode, 'keep-edge');
    assert.equal(reply.decision?.rule, 'pin');
  });
});
