// `vm status`, `start`, `stop` and `console` wherever the VM runs: the agent answers for its own site
// and, at the edge, asks the core (peer methods vm.status, vm.start, vm.stop, vm.console) for a VM
// that runs or stopped there. A VM that is moving is never stopped under the move: the caller waits,
// or asks to cancel the move first.
import type { PeerLink } from '../migrator/link/index.ts';
import { peerMethods } from '../shared/peer-api.ts';
import type { SiteRole } from '../shared/migration.ts';
import { open } from 'node:fs/promises';
import { CONSOLE_CHUNK_BYTES, type CancelReply, type VmConsoleReply, type VmStartReply, type VmStopReply } from '../shared/local-api.ts';
import type { VmStatusReport } from '../shared/vm-status.ts';
import { LocalApiError } from './local-api/server.ts';
import type { AgentStore } from './store.ts';
import type { VmLibrary } from './vm-library.ts';
import { holdsDisk, startVm, stopVm, vmStatus } from './vm-service.ts';

export interface VmSitesDeps {
  role: SiteRole;
  library: VmLibrary;
  store: AgentStore;
  /** The edge's link to its core, when connected. */
  coreLink?: () => PeerLink | undefined;
  /** Cancels the VM's move under way (the migration service's cancel). */
  cancelMove: (vm: string) => Promise<CancelReply>;
  /** The VM list changed (started, stopped): refresh what the agent reports. */
  changed: () => Promise<void>;
}

/** How long `vm stop --cancel-move` waits for the cancelled move to end. */
const CANCEL_WAIT_MS = 120_000;

export class VmSites {
  readonly #deps: VmSitesDeps;

  constructor(deps: VmSitesDeps) {
    this.#deps = deps;
  }

  /** The peer side: the other site asks about, or stops, a VM that runs here. */
  attach(link: PeerLink): void {
    link.handle('vm.status', peerMethods['vm.status'], (p) => this.#local(p.vm, p.sampleMs));
    link.handle('vm.start', peerMethods['vm.start'], (p) => this.#startHere(p.vm));
    link.handle('vm.console', peerMethods['vm.console'], (p) => this.#localConsole(p.vm, p.offset));
    link.handle('vm.stop', peerMethods['vm.stop'], async (p) => ({ outcome: await stopVm(this.#deps.library, p.vm, p) }));
  }

  async status(vm: string, sampleMs: number): Promise<VmStatusReport> {
    const moving = this.#moving(vm);
    const here = await this.#local(vm, sampleMs).catch(() => undefined);
    if (here !== undefined && here.state !== 'stopped') return { ...here, ...(moving ? { moving } : {}) };
    const there = await this.#remote()?.request<VmStatusReport>('vm.status', { vm, sampleMs }, { timeoutMs: sampleMs + 10_000 }).catch(() => undefined);
    if (there !== undefined && there.state !== 'stopped') return { ...there, ...(moving ? { moving } : {}) };
    if (here === undefined) throw new LocalApiError('no-vm', `there is no VM named "${vm}" (\`snowbird vm list\` shows them)`);
    return here;
  }

  /** The serial log where the VM runs (through the core when it runs there), else the last one here. */
  async console(vm: string, offset: number): Promise<VmConsoleReply> {
    const now = await this.status(vm, 0);
    const core = this.#remote();
    if (now.site === 'core' && now.state !== 'stopped' && this.#deps.role === 'edge' && core !== undefined) {
      return core.request<VmConsoleReply>('vm.console', { vm, offset }, { timeoutMs: 15_000 });
    }
    return this.#localConsole(vm, offset);
  }

  async #localConsole(vm: string, offset: number): Promise<VmConsoleReply> {
    if (!(await this.#deps.library.exists(vm))) throw new LocalApiError('no-vm', `there is no VM named "${vm}" at the ${this.#deps.role}`);
    const file = await open(this.#deps.library.paths(vm).serialLog, 'r').catch(() => undefined);
    if (file === undefined) throw new LocalApiError('no-console', `VM "${vm}" has no console log yet; start it with \`snowbird vm start ${vm}\``);
    try {
      const buffer = Buffer.alloc(CONSOLE_CHUNK_BYTES);
      const { bytesRead } = await file.read(buffer, 0, CONSOLE_CHUNK_BYTES, offset);
      return { site: this.#deps.role, text: buffer.subarray(0, bytesRead).toString('utf8'), next: offset + bytesRead };
    } finally {
      await file.close();
    }
  }

  /** Boots a stopped VM at this site; refused when it runs anywhere (one VM, one site). */
  async start(vm: string): Promise<VmStartReply> {
    const now = await this.status(vm, 0);
    if (now.moving !== undefined) throw new LocalApiError('moving', `VM "${vm}" is moving ${now.moving.from} → ${now.moving.to}: it runs already`);
    if (now.state !== 'stopped') throw new LocalApiError('running', `VM "${vm}" already runs at the ${now.site}`);
    // A VM stopped at the core has its disk's top there (the edge's became a shared layer when it
    // left): it boots where it stopped; "Bring back" moves it afterwards.
    const core = this.#remote();
    if (!(await holdsDisk(this.#deps.library, vm)) && core !== undefined) {
      const there = await core.request<VmStartReply>('vm.start', { vm }, { timeoutMs: 60_000 });
      await this.#deps.changed();
      return there;
    }
    return this.#startHere(vm);
  }

  async #startHere(vm: string): Promise<VmStartReply> {
    if (!(await holdsDisk(this.#deps.library, vm))) throw new LocalApiError('no-disk', `VM "${vm}" has no disk at the ${this.#deps.role}: it last ran at the other site; start it there (through the edge agent, with the core connected)`);
    const started = await startVm(this.#deps.library, vm, { waitReady: false });
    await this.#deps.changed();
    return { site: this.#deps.role, pid: started.pid };
  }

  async stop(vm: string, options: { force: boolean; graceMs: number; cancelMove: boolean }): Promise<VmStopReply> {
    try {
      return await this.#stop(vm, options);
    } finally {
      await this.#deps.changed();
    }
  }

  async #stop(vm: string, options: { force: boolean; graceMs: number; cancelMove: boolean }): Promise<VmStopReply> {
    const moving = this.#moving(vm);
    if (moving !== undefined) {
      if (!options.cancelMove) {
        throw new LocalApiError('moving', `VM "${vm}" is moving ${moving.from} → ${moving.to} (${moving.phase}); wait for the move to end, or stop it with --cancel-move, which cancels the move first (it rolls back unless the guest already switched over)`);
      }
      await this.#deps.cancelMove(vm);
      const deadline = Date.now() + CANCEL_WAIT_MS;
      while (this.#moving(vm) !== undefined && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 250));
      if (this.#moving(vm) !== undefined) throw new LocalApiError('moving', `the move of "${vm}" did not end within ${CANCEL_WAIT_MS / 1000} s of its cancel; try again when it has`);
    }
    const { force, graceMs } = options;
    if ((await stopVm(this.#deps.library, vm, { force, graceMs }).catch(() => 'not-running' as const)) === 'stopped') return { outcome: 'stopped', site: this.#deps.role };
    const core = this.#remote();
    if (core !== undefined) {
      const there = await core.request<{ outcome: 'stopped' | 'not-running' }>('vm.stop', { vm, force, graceMs }, { timeoutMs: graceMs + 30_000 }).catch(() => undefined);
      if (there?.outcome === 'stopped') return { outcome: 'stopped', site: 'core' };
    }
    if (!(await this.#deps.library.exists(vm))) throw new LocalApiError('no-vm', `there is no VM named "${vm}" (\`snowbird vm list\` shows them)`);
    return { outcome: 'not-running', site: this.#deps.role };
  }

  async #local(vm: string, sampleMs: number): Promise<VmStatusReport> {
    if (!(await this.#deps.library.exists(vm))) throw new LocalApiError('no-vm', `there is no VM named "${vm}" at the ${this.#deps.role}`);
    return vmStatus(this.#deps.library, vm, { sampleMs });
  }

  #remote(): PeerLink | undefined {
    return this.#deps.role === 'edge' ? this.#deps.coreLink?.() : undefined;
  }

  #moving(vm: string): VmStatusReport['moving'] {
    const move = Object.values(this.#deps.store.getState().migrations).find((m) => m.vm === vm);
    return move === undefined ? undefined : { from: move.from, to: move.to, phase: move.phase };
  }
}
