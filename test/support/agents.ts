// Two real site agents on this machine, as separate processes started through the CLI, paired the
// way a user pairs them (the token and fingerprint the core prints). `dispose` ends both agents and
// every QEMU under their data directories, pass or fail. A test process that dies without disposing (a
// signal, an uncaught error, its runner gone) still ends them: QEMU runs daemonized and would outlive it.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT, demoGuest, runCli, waitForHeartbeats } from './fixtures.ts';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import { isAckFor, type GuestCommand } from '../../src/shared/guest-protocol.ts';
import { VmLibrary } from '../../src/main/vm-library.ts';
import { LocalApiClient } from '../../src/main/local-api/client.ts';
import { localApiSocket } from '../../src/main/local-api/paths.ts';
import { TcpRelay } from './relay.ts';

export interface AgentProcess {
  role: 'edge' | 'core';
  dataDir: string;
  child: ChildProcess;
  log: string[];
}

/** `configPath`: the agent's settings file, never the user's own (~/.config/snowbird/config.json). */
function startAgent(role: 'edge' | 'core', dataDir: string, configPath: string, args: string[]): AgentProcess {
  const child = spawn(join(REPO_ROOT, 'node_modules', '.bin', 'node'), [join(REPO_ROOT, 'src', 'main', 'cli.ts'), '--data', dataDir, '--config', configPath, 'agent', '--role', role, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const agent: AgentProcess = { role, dataDir, child, log: [] };
  for (const stream of [child.stdout, child.stderr]) createInterface({ input: stream }).on('line', (line) => agent.log.push(line));
  return agent;
}

async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Site directories of a pair that may hold VMs. */
const SITES = ['edge', 'core', join('edge', 'embedded-core')];

/** Pairs not yet disposed, ended synchronously if the process goes away first. */
const live = new Set<AgentPair>();

function endLivePairs(): void {
  for (const pair of live) pair.killNow();
}

let exitHooked = false;

function hookProcessExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.once('exit', endLivePairs);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.once(signal, () => {
      endLivePairs();
      process.exit(code);
    });
  }
}

export class AgentPair {
  readonly root: string;
  core!: AgentProcess;
  edge!: AgentProcess;
  coreAddress = '';
  token = '';
  coreFingerprint = '';

  readonly #autoPlacement: boolean;
  /** Between the edge and the core when started with `relay`: `relay.cut()` drops the link. */
  relay: TcpRelay | undefined;

  private constructor(root: string, autoPlacement: boolean) {
    this.root = root;
    this.#autoPlacement = autoPlacement;
  }

  /** The edge agent's settings file (it need not exist: no settings). */
  get configPath(): string {
    return join(this.root, 'config.json');
  }

  get edgeLibrary(): VmLibrary {
    return new VmLibrary(join(this.root, 'edge'));
  }

  get coreLibrary(): VmLibrary {
    return new VmLibrary(join(this.root, 'core'));
  }

  /**
   * Starts a core and an edge agent; pairs them unless `pair` is false. The edge's placement policy
   * only decides (no automatic moves) unless `autoPlacement`: tests of manual moves need the VM where
   * they put it.
   */
  static async start(options: { pair?: boolean; autoPlacement?: boolean; relay?: boolean } = {}): Promise<AgentPair> {
    const pair = new AgentPair(await mkdtemp(join(tmpdir(), 'sb-ag-')), options.autoPlacement ?? false);
    hookProcessExit();
    live.add(pair);
    await pair.startCore();
    await pair.startEdge();
    if (options.relay) pair.relay = await TcpRelay.start(pair.coreAddress);
    if (options.pair ?? true) {
      const r = await runCli(['--data', join(pair.root, 'edge'), 'pair', `https://${pair.relay?.address ?? pair.coreAddress}`, '--token', pair.token, '--fingerprint', pair.coreFingerprint]);
      if (r.code !== 0) throw new Error(`pairing failed: ${r.stderr}`);
      await pair.waitConnected();
    }
    return pair;
  }

  /** (Re)starts the edge agent on its data directory and waits for its local API. */
  async startEdge(): Promise<void> {
    this.edge = startAgent('edge', join(this.root, 'edge'), this.configPath, this.#autoPlacement ? [] : ['--no-auto-placement']);
    await waitFor('the edge agent', () => LocalApiClient.connect(localApiSocket(join(this.root, 'edge'))).then((c) => (c.close(), true), () => undefined));
  }

  /** (Re)starts the core agent on the same data directory; the first start reads its pairing line. */
  async startCore(): Promise<void> {
    const first = this.coreAddress === '';
    this.core = startAgent('core', join(this.root, 'core'), this.configPath, ['--listen', first ? '127.0.0.1:0' : this.coreAddress]);
    this.coreAddress = await waitFor('the core to listen', () => {
      for (const line of this.core.log) {
        const m = /"event":"listening","address":"([^"]+)","fingerprint":"([^"]+)"/.exec(line);
        if (m?.[1] && m[2]) {
          this.coreFingerprint = m[2];
          return m[1];
        }
      }
      return undefined;
    });
    if (first) {
      this.token = await waitFor('the pairing token', () => {
        for (const line of this.core.log) {
          const m = /snowbird pair \S+ --token (\S+)/.exec(line);
          if (m?.[1]) return m[1];
        }
        return undefined;
      });
    }
  }

  async waitConnected(timeoutMs = 30_000): Promise<void> {
    await waitFor('the edge to connect to the core', async () => {
      const r = await runCli(['--data', join(this.root, 'edge'), 'status', '--json']);
      return r.code === 0 && (JSON.parse(r.stdout) as { peer: { connected: boolean } }).peer.connected ? true : undefined;
    }, timeoutMs);
  }

  /**
   * Creates and boots the demo VM at the edge (192 MiB, its checker rewriting 32 MiB unless told),
   * optionally with a working set written to its disk first.
   */
  async createVmAtEdge(name: string, options: { workingSetMiB?: number; memoryMiB?: number; memWorkloadMiB?: number } = {}): Promise<void> {
    const guest = await demoGuest();
    const library = this.edgeLibrary;
    const spec = await library.create({
      name, memoryMiB: options.memoryMiB ?? 192, vcpus: 1, diskSize: '128M', accel: 'tcg', kernel: guest.kernel, initrd: guest.initrd,
      memWorkloadMiB: options.memWorkloadMiB ?? 32, diskWorkloadBlocks: 1024,
    });
    if (options.workingSetMiB) {
      const { execFile } = await import('node:child_process');
      const { promisify } = await import('node:util');
      // Beyond the disk workload's region (its first 4 MiB): data the guest keeps but does not rewrite.
      await promisify(execFile)('qemu-io', ['-f', 'qcow2', '-c', `write -P 0xab 16M ${options.workingSetMiB}M`, spec.disk]);
    }
    const r = await runCli(['--data', library.dataDir, 'vm', 'start', name]);
    if (r.code !== 0) throw new Error(`vm start failed: ${r.stderr}`);
  }

  /** Waits for the guest's first integrity heartbeat at `site`: it has booted and its agent answers. */
  async waitGuestReady(vm: string, site: 'edge' | 'core' = 'edge', timeoutMs = 90_000): Promise<void> {
    const library = site === 'edge' ? this.edgeLibrary : this.coreLibrary;
    const channel = await GuestChannel.connect(vm, library.paths(vm).control, { retryUntilMs: 10_000 });
    try {
      await waitForHeartbeats(channel, 1, timeoutMs);
    } finally {
      channel.close();
    }
  }

  /** Sends the guest agent at `site` a command and waits for its ack (a refusal is an error). */
  async guestCommand(vm: string, command: GuestCommand, site: 'edge' | 'core' = 'edge'): Promise<void> {
    const library = site === 'edge' ? this.edgeLibrary : this.coreLibrary;
    const channel = await GuestChannel.connect(vm, library.paths(vm).control, { retryUntilMs: 10_000 });
    try {
      const ack = channel.waitFor((r) => isAckFor(r, command), { timeoutMs: 30_000, what: `the ack of ${command.type}` });
      channel.send(command);
      const reply = await ack;
      if (reply.type === 'ack' && !reply.ok) throw new Error(`the guest refused ${command.type}: ${reply.detail ?? ''}`);
    } finally {
      channel.close();
    }
  }

  async killAgent(agent: AgentProcess): Promise<void> {
    if (agent.child.exitCode !== null || agent.child.signalCode !== null) return;
    const exited = new Promise((resolve) => agent.child.once('exit', resolve));
    agent.child.kill('SIGKILL');
    await exited;
  }

  /** Synchronous and final, for a process on its way out: kills both agents and every QEMU, removes the directory. */
  killNow(): void {
    live.delete(this);
    for (const agent of [this.edge, this.core]) agent?.child.kill('SIGKILL');
    this.#killQemus();
    rmSync(this.root, { recursive: true, force: true });
  }

  /** Every QEMU under the pair's sites, by its pid file. */
  #killQemus(): void {
    for (const site of SITES) {
      let names: string[];
      try {
        names = readdirSync(join(this.root, site, 'vms'));
      } catch {
        continue;
      }
      for (const name of names) {
        try {
          const pid = Number.parseInt(readFileSync(join(this.root, site, 'vms', name, 'qemu.pid'), 'utf8'), 10);
          if (pid > 0) process.kill(pid, 'SIGKILL');
        } catch {
          // no pid file, or the process is gone
        }
      }
    }
  }

  async dispose(): Promise<void> {
    live.delete(this);
    for (const agent of [this.edge, this.core]) {
      if (!agent) continue;
      if (agent.child.exitCode === null && agent.child.signalCode === null) {
        const exited = new Promise((resolve) => agent.child.once('exit', resolve));
        agent.child.kill('SIGTERM');
        const timer = setTimeout(() => agent.child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
    }
    this.#killQemus();
    await this.relay?.close();
    await rm(this.root, { recursive: true, force: true });
  }
}
