// Ours: two real site agents started through the CLI, the core inside the WAN's network namespace
// (so every byte between them crosses the tbf-limited veth pair), paired the way a user pairs them
// (the token and fingerprint the core prints), as test/support/agents.ts does on loopback. VMs are
// created, started and moved with the `snowbird` CLI only.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalApiClient } from '../../src/main/local-api/client.ts';
import { localApiSocket } from '../../src/main/local-api/paths.ts';
import { VmLibrary } from '../../src/main/vm-library.ts';
import type { LocalCommand, LocalReplies } from '../../src/shared/local-api.ts';
import type { MemoryStrategy, MigrationRecord } from '../../src/shared/migration.ts';
import { killPid, killQemuByPidFile, type Cleanup } from './cleanup.ts';
import type { Wan } from './wan.ts';

export const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
const NODE = join(REPO_ROOT, 'node_modules', '.bin', 'node');
const CLI = join(REPO_ROOT, 'src', 'main', 'cli.ts');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Date.now() when the command was spawned and when it exited. */
  startedAt: number;
  endedAt: number;
}

/** Runs `snowbird ARGS` (the real CLI, in a child process) and collects its output. */
export function runCli(args: string[]): Promise<CliResult> {
  return new Promise((done, fail) => {
    const startedAt = Date.now();
    const child = spawn(NODE, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', fail);
    child.on('close', (code) => done({ code, stdout, stderr, startedAt, endedAt: Date.now() }));
  });
}

async function cli(args: string[]): Promise<CliResult> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`snowbird ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  return r;
}

interface Agent {
  role: 'edge' | 'core';
  dataDir: string;
  child: ChildProcess;
  log: string[];
  /** Date.now() when each line of `log` was read. */
  logTimes: number[];
}

async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}`);
}

export class SnowbirdSites {
  readonly root: string;
  readonly wan: Wan;
  readonly port: number;
  readonly edgeDir: string;
  readonly coreDir: string;
  #core: Agent | undefined;
  #edge: Agent | undefined;
  readonly #cleanup: Cleanup;

  constructor(root: string, wan: Wan, port: number, cleanup: Cleanup) {
    this.root = root;
    this.wan = wan;
    this.port = port;
    this.edgeDir = join(root, 'edge');
    this.coreDir = join(root, 'core');
    this.#cleanup = cleanup;
  }

  get edgeLibrary(): VmLibrary {
    return new VmLibrary(this.edgeDir);
  }

  get coreLibrary(): VmLibrary {
    return new VmLibrary(this.coreDir);
  }

  #startAgent(role: 'edge' | 'core', dataDir: string, prefix: string[], args: string[]): Agent {
    // Its own settings file (none: the defaults), never the user's.
    const [command, ...rest] = [...prefix, NODE, CLI, '--data', dataDir, '--config', join(dataDir, 'config.json'), 'agent', '--role', role, ...args] as [string, ...string[]];
    // `ip netns exec` execs the command in place, so the child's pid is the agent's.
    const child = spawn(command, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
    const agent: Agent = { role, dataDir, child, log: [], logTimes: [] };
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => {
        agent.log.push(line);
        agent.logTimes.push(Date.now());
      });
    }
    this.#cleanup.add(`stop the ${role} agent`, () => this.#stopAgent(agent));
    return agent;
  }

  async #stopAgent(agent: Agent): Promise<void> {
    if (agent.child.exitCode !== null || agent.child.signalCode !== null) return;
    const exited = new Promise((r) => agent.child.once('exit', r));
    agent.child.kill('SIGTERM');
    const timer = setTimeout(() => void killPid(agent.child.pid), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /**
   * Starts the core (in the namespace) and the edge agent, and pairs them. `autoPlacement: false`
   * starts the edge agent with `--no-auto-placement` (its policy decides but never moves a VM, pins
   * included); true or left out, the agent's default: the policy moves VMs itself.
   */
  async start(options: { autoPlacement?: boolean } = {}): Promise<void> {
    // Any QEMU the agents leave behind (a VM at either site) goes with the run.
    this.#cleanup.add('kill the agents\' QEMUs', async () => {
      for (const dir of [this.edgeDir, this.coreDir]) {
        const vms = join(dir, 'vms');
        for (const name of await readdir(vms).catch(() => [] as string[])) await killQemuByPidFile(join(vms, name, 'qemu.pid'));
      }
    });
    const listen = `${this.wan.coreAddress}:${this.port}`;
    const core = this.#startAgent('core', this.coreDir, this.wan.execPrefix, ['--listen', listen]);
    this.#core = core;
    const { token, fingerprint } = await waitFor('the core agent to print its pairing line', () => {
      if (core.child.exitCode !== null) throw new Error(`the core agent exited: ${core.log.join('\n')}`);
      for (const line of core.log) {
        const m = /snowbird pair \S+ --token (\S+) --fingerprint (\S+)/.exec(line);
        if (m?.[1] && m[2]) return { token: m[1], fingerprint: m[2] };
      }
      return undefined;
    });
    const edge = this.#startAgent('edge', this.edgeDir, [], options.autoPlacement === false ? ['--no-auto-placement'] : []);
    this.#edge = edge;
    await waitFor('the edge agent\'s local API', () => {
      if (edge.child.exitCode !== null) throw new Error(`the edge agent exited: ${edge.log.join('\n')}`);
      return LocalApiClient.connect(localApiSocket(this.edgeDir)).then((c) => (c.close(), true), () => undefined);
    });
    await cli(['--data', this.edgeDir, 'pair', `https://${listen}`, '--token', token, '--fingerprint', fingerprint]);
    await waitFor('the edge to connect to the core', async () => {
      const r = await runCli(['--data', this.edgeDir, 'status', '--json']);
      return r.code === 0 && (JSON.parse(r.stdout) as { peer: { connected: boolean } }).peer.connected ? true : undefined;
    });
  }

  /** `snowbird vm create` at the edge. */
  async createVm(name: string, o: { memoryMiB: number; diskSize: string; memWorkloadMiB: number; diskWorkloadBlocks: number; cache: string }): Promise<void> {
    await cli(['--data', this.edgeDir, 'vm', 'create', name, '--memory', String(o.memoryMiB), '--disk-size', o.diskSize, '--accel', 'tcg',
      '--mem-workload', String(o.memWorkloadMiB), '--disk-workload', String(o.diskWorkloadBlocks), '--cache', o.cache, '--force']);
  }

  /** `snowbird vm start` at the edge (waits for the guest's ready report). */
  async startVm(name: string): Promise<void> {
    await cli(['--data', this.edgeDir, 'vm', 'start', name]);
  }

  /** `snowbird migrate VM --to SITE --json [--strategy S]`, with the command's own start and end times. */
  async migrate(name: string, to: 'core' | 'edge', strategy?: MemoryStrategy): Promise<{ record: MigrationRecord; cli: CliResult }> {
    const r = await runCli(['--data', this.edgeDir, 'migrate', name, '--to', to, '--json', ...(strategy ? ['--strategy', strategy] : [])]);
    if (r.code !== 0 && r.code !== 2) throw new Error(`snowbird migrate ${name} --to ${to} failed (exit ${r.code}): ${r.stderr.trim()}`);
    return { record: JSON.parse(r.stdout) as MigrationRecord, cli: r };
  }

  /** One request to the edge agent's local API (what the CLI sends), on a connection of its own. */
  async edgeRequest<C extends LocalCommand>(command: C): Promise<LocalReplies[C['cmd']]> {
    const client = await LocalApiClient.connect(localApiSocket(this.edgeDir));
    try {
      return await client.request(command);
    } finally {
      client.close();
    }
  }

  /** The control socket of the VM at the site where it runs now. */
  controlSocket(name: string, site: 'edge' | 'core'): string {
    return (site === 'edge' ? this.edgeLibrary : this.coreLibrary).paths(name).control;
  }

  /** An agent's log lines read at or after `since` (Date.now()), with when they were read. */
  agentLines(role: 'edge' | 'core', since: number): { at: number; line: string }[] {
    const agent = role === 'edge' ? this.#edge : this.#core;
    if (agent === undefined) return [];
    const lines: { at: number; line: string }[] = [];
    for (let i = agent.log.length - 1; i >= 0 && (agent.logTimes[i] ?? 0) >= since; i--) lines.unshift({ at: agent.logTimes[i] ?? 0, line: agent.log[i] ?? '' });
    return lines;
  }

  /** The agents' last log lines, for a failure report. */
  logTail(lines = 20): string {
    return [this.#core, this.#edge].filter((a): a is Agent => a !== undefined).map((a) => `--- ${a.role} agent ---\n${a.log.slice(-lines).join('\n')}`).join('\n');
  }
}
