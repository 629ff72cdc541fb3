// One agent per data directory: a second agent started on a running agent's directory says which pid
// holds it and exits non-zero, and the first keeps answering (its socket is not removed); a lock left
// by a crashed agent is taken over; an agent gives back only its own lock.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentPair } from '../support/agents.ts';
import { runCli } from '../support/fixtures.ts';
import { agentLockPath, AgentLockedError, lockDataDir } from '../../src/main/agent-lock.ts';

describe('one agent per data directory', () => {
  let pair: AgentPair;

  before(async () => {
    pair = await AgentPair.start({ pair: false });
  });
  after(async () => {
    await pair?.dispose();
  });

  test('a second edge agent on the same directory refuses to start, naming the first; the first still answers', async () => {
    const edgeDir = pair.edgeLibrary.dataDir;
    const second = await runCli(['--data', edgeDir, '--config', pair.configPath, 'agent', '--role', 'edge', '--embedded-core']);
    assert.equal(second.code, 1, second.stderr);
    assert.match(second.stderr, new RegExp(`another snowbird agent \\(pid ${pair.edge.child.pid}\\) already runs on ${edgeDir}`));
    const status = await runCli(['--data', edgeDir, 'status', '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { role: string }).role, 'edge');
    // The refused agent started no embedded core either.
    assert.equal((await readFile(agentLockPath(edgeDir), 'utf8')).trim(), String(pair.edge.child.pid));
  });

  test('a lock left by a crashed agent is taken over; an agent removes only its own lock', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sb-lock-'));
    try {
      await lockDataDir(dir).then((unlock) => unlock());
      // A pid that does not run: the lock is stale.
      await writeFile(agentLockPath(dir), '999999999\n');
      const unlock = await lockDataDir(dir);
      assert.equal((await readFile(agentLockPath(dir), 'utf8')).trim(), String(process.pid));
      await assert.rejects(lockDataDir(join(pair.edgeLibrary.dataDir)), AgentLockedError);
      // Someone else's lock written over ours is left alone.
      await writeFile(agentLockPath(dir), `${pair.edge.child.pid}\n`);
      await unlock();
      assert.equal((await readFile(agentLockPath(dir), 'utf8')).trim(), String(pair.edge.child.pid));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
