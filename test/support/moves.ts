// Moves between two real agents driven as a user drives them, through the CLI, with the helpers a
// failure needs: where each QEMU is, both agents' and QEMUs' last words, and faults injected at a phase.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import type { AgentPair } from './agents.ts';
import { REPO_ROOT, runCli } from './fixtures.ts';
import { isAlive, readPidFile } from '../../src/migrator/qemu/process-info.ts';
import { sourceJournalPath } from '../../src/migrator/orchestrator/journal.ts';
import type { VmLibrary } from '../../src/main/vm-library.ts';
import type { MigrationRecord } from '../../src/shared/migration.ts';

export async function qemuAlive(library: VmLibrary, vm: string): Promise<boolean> {
  const pid = await readPidFile(library.paths(vm).pidFile);
  return pid !== undefined && (await isAlive(pid));
}

/** What a failure message needs when the VM is not where it should be: both agents' and QEMUs' last words. */
export async function diagnostics(pair: AgentPair, vm: string): Promise<string> {
  const tail = async (file: string, lines = 15): Promise<string> => (await readFile(file, 'utf8').catch(() => '(none)')).trimEnd().split('\n').slice(-lines).join('\n');
  const parts: string[] = [];
  for (const [site, library, agent] of [['edge', pair.edgeLibrary, pair.edge], ['core', pair.coreLibrary, pair.core]] as const) {
    const paths = library.paths(vm);
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

export async function migrate(pair: AgentPair, vm: string, to: 'core' | 'edge', extra: string[] = []): Promise<MigrationRecord> {
  const r = await runCli(['--data', pair.edgeLibrary.dataDir, 'migrate', vm, '--to', to, '--json', ...extra]);
  if (r.code !== 0 && r.code !== 2) assert.fail(`migrate --to ${to} exited ${r.code}: ${r.stderr}\n${await diagnostics(pair, vm)}`);
  return JSON.parse(r.stdout) as MigrationRecord;
}

/** Later tests start from the VM at the edge, whatever an earlier test left. */
export async function ensureAtEdge(pair: AgentPair, vm: string): Promise<void> {
  if (await qemuAlive(pair.edgeLibrary, vm)) return;
  const record = await migrate(pair, vm, 'edge');
  if (record.outcome !== 'committed') assert.fail(`bringing the VM back to the edge: ${record.error}\n${await diagnostics(pair, vm)}`);
}

/**
 * Runs `snowbird migrate` and calls `inject` once the CLI reports the given phase. The CLI is killed
 * if the test is cancelled (a hang fails the test instead of stalling the suite).
 */
export async function migrateAndInject(pair: AgentPair, vm: string, signal: AbortSignal, to: 'core' | 'edge', phase: string, inject: () => Promise<void>, extra: string[] = [], started?: (child: ChildProcess) => void): Promise<{ code: number | null; record: MigrationRecord | undefined; stderr: string }> {
  const child = spawn(join(REPO_ROOT, 'node_modules', '.bin', 'node'), [join(REPO_ROOT, 'src', 'main', 'cli.ts'), '--data', pair.edgeLibrary.dataDir, 'migrate', vm, '--to', to, '--json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], signal });
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
  if (!injected) assert.fail(`the migration never reached phase ${phase} (exit ${code}): ${stderr.join('\n')}\n${stdout}\n${await diagnostics(pair, vm)}`);
  await injected;
  return { code, record: stdout.trim() === '' ? undefined : (JSON.parse(stdout) as MigrationRecord), stderr: stderr.join('\n') };
}
