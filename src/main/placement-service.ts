// The edge agent's placement loop: about every 250 ms, for each VM that runs at either site, one
// interaction sample (the display gateway's input and display rates, the host's readings of the
// VM's QEMU wherever it runs), one step of the pure placement policy, and — when it says so — a
// migration through the same path as `snowbird migrate`. Samples and decisions go to the history
// database; the latest decision per VM is in the store for the CLI and the app.
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { DisplayActivity } from '../shared/display.ts';
import type { MigrationProgress, SiteRole } from '../shared/migration.ts';
import {
  pastMigrationOf,
  PLACEMENT_MODES,
  type HostReading,
  type InteractionSample,
  type PastMigration,
  type PlacementDecision,
  type PlacementMode,
  type PolicyParams,
} from '../shared/placement.ts';
import { displayRates } from '../interaction-detect/common/display-rates.ts';
import { initialPolicyState, step, type PolicyState } from '../interaction-detect/common/policy.ts';
import type { History } from './history.ts';
import type { AgentStore } from './store.ts';
import type { VmLibrary } from './vm-library.ts';
import type { MigrationService } from './migration-service.ts';
import type { DisplayService } from './display-service.ts';

export interface PlacementServiceDeps {
  dataDir: string;
  library: VmLibrary;
  store: AgentStore;
  history: History;
  migrations: MigrationService;
  displays: DisplayService;
  /** The host's readings of the VM's QEMU at `site` (null when they cannot be had now). */
  hostReading: (vm: string, site: SiteRole) => Promise<HostReading | null>;
  /** The policy's parameters at start; `setParams` changes them live. */
  params: PolicyParams;
  /** Carry out the policy's moves; false = decide and record only (a dry run the user can watch). */
  act: boolean;
  log: (line: string) => void;
  periodMs?: number;
}

interface VmLoop {
  state: PolicyState;
  activity: DisplayActivity[];
  last: PlacementDecision | undefined;
  pastMigrations: PastMigration[];
  pastLoadedAt: number;
  vcpus: number;
  memoryMiB: number;
}

const NO_HOST: HostReading = { gpuBusy: null, vcpuBusy: null, diskBytesPerS: null, netBytesPerS: null };
/** Past migrations are re-read from the history this often (they change only when a move ends). */
const PAST_REFRESH_MS = 5_000;
const MODES_FILE = 'placement.json';

export class PlacementService {
  readonly #deps: PlacementServiceDeps;
  readonly #loops = new Map<string, VmLoop>();
  #params: PolicyParams;
  #modes: Record<string, PlacementMode> = {};
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;
  #ticks = 0;

  constructor(deps: PlacementServiceDeps) {
    this.#deps = deps;
    this.#params = deps.params;
  }

  /** New parameters (the settings file changed): the next step of every VM's policy uses them. */
  setParams(params: PolicyParams): void {
    this.#params = params;
  }

  async start(): Promise<void> {
    this.#modes = await readModes(join(this.#deps.dataDir, MODES_FILE));
    this.#timer = setInterval(() => void this.#tick(), this.#deps.periodMs ?? 250);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** The display gateways' activity records, routed to their VM's loop. */
  onActivity(record: DisplayActivity): void {
    if (record.source !== undefined) this.#loops.get(record.source)?.activity.push(record);
  }

  mode(vm: string): PlacementMode {
    return this.#modes[vm] ?? 'auto';
  }

  async setMode(vm: string, mode: PlacementMode): Promise<void> {
    this.#modes = { ...this.#modes, [vm]: mode };
    const file = join(this.#deps.dataDir, MODES_FILE);
    await writeFile(`${file}.tmp`, `${JSON.stringify(this.#modes, null, 2)}\n`, { mode: 0o600 });
    await rename(`${file}.tmp`, file);
    this.#deps.log(`placement of ${vm}: ${mode}`);
  }

  lastDecision(vm: string): PlacementDecision | undefined {
    return this.#loops.get(vm)?.last;
  }

  async #tick(): Promise<void> {
    if (this.#ticking) return; // a slow tick (the core answering late) is skipped, not stacked
    this.#ticking = true;
    try {
      if (this.#ticks++ % 8 === 0) await this.#deps.migrations.refreshVms();
      if (this.#ticks % 14_400 === 0) this.#deps.history.pruneSamples();
      const vms = this.#deps.store.getState().vms;
      for (const name of this.#loops.keys()) if (vms[name] === undefined || vms[name].location === 'stopped') this.#loops.delete(name);
      await Promise.all(Object.values(vms).filter((v) => v.location !== 'stopped').map((v) => this.#sample(v.name)));
    } catch (error) {
      this.#deps.log(`placement loop: ${(error as Error).message}`);
    } finally {
      this.#ticking = false;
    }
  }

  async #sample(vm: string): Promise<void> {
    const loop = this.#loops.get(vm) ?? (await this.#newLoop(vm));
    if (loop === undefined) return;
    const moving = Object.values(this.#deps.store.getState().migrations).find((m: MigrationProgress) => m.vm === vm);
    const location = this.#deps.store.getState().vms[vm]?.location;
    const site: SiteRole | undefined = moving?.from ?? (location === 'edge' || location === 'core' ? location : undefined);
    if (site === undefined) return;
    const now = Date.now();
    if (now - loop.pastLoadedAt > PAST_REFRESH_MS) {
      loop.pastMigrations = this.#deps.history.migrations({ vm, limit: 50 }).flatMap((r) => pastMigrationOf(r) ?? []);
      loop.pastLoadedAt = now;
    }
    const host = moving === undefined ? ((await this.#deps.hostReading(vm, site).catch(() => null)) ?? NO_HOST) : NO_HOST;
    const sample: InteractionSample = {
      at: now,
      vm,
      site,
      migrating: moving !== undefined,
      mode: this.mode(vm),
      vcpus: loop.vcpus,
      memoryMiB: loop.memoryMiB,
      ...displayRates(loop.activity.splice(0)),
      userIdleS: null,
      ...host,
      dirtyBytesPerS: null,
      linkBytesPerS: null,
    };
    this.#deps.history.addSample(vm, sample);
    const result = step(loop.state, sample, { params: this.#params, pastMigrations: loop.pastMigrations });
    loop.state = result.state;
    const decision = result.decision;
    if (decision.action === 'migrate' || loop.last?.rule !== decision.rule || loop.last.action !== decision.action) this.#deps.history.addDecision(vm, decision);
    loop.last = decision;
    if (decision.action !== 'migrate') return;
    this.#deps.log(`placement: ${this.#deps.act ? '' : 'would move (automatic moves are off) '}${vm} ${decision.site} → ${decision.to} (${decision.rule}): ${decision.reasons[0] ?? ''}`);
    if (!this.#deps.act) return;
    const by = decision.rule === 'pin' ? 'pin' : 'policy';
    void this.#deps.migrations
      .migrate({ cmd: 'migrate', vm, to: decision.to, strategy: decision.strategy }, () => {}, { by, reasons: decision.reasons })
      .then(
        (record) => {
          if (record.outcome !== 'committed') this.#deps.log(`placement: the move of ${vm} to the ${decision.to} failed: ${record.error ?? ''}`);
        },
        (error: unknown) => this.#deps.log(`placement: could not move ${vm} to the ${decision.to}: ${(error as Error).message}`),
      );
  }

  async #newLoop(vm: string): Promise<VmLoop | undefined> {
    const spec = await this.#deps.library.load(vm).catch(() => undefined);
    if (spec === undefined) return undefined;
    // The gateway is where input and display are measured: every placed VM has one.
    await this.#deps.displays.open(vm).catch((error: unknown) => this.#deps.log(`placement: no display for ${vm}: ${(error as Error).message}`));
    const loop: VmLoop = { state: initialPolicyState(), activity: [], last: undefined, pastMigrations: [], pastLoadedAt: 0, vcpus: spec.vcpus, memoryMiB: spec.memoryMiB };
    this.#loops.set(vm, loop);
    return loop;
  }
}

async function readModes(file: string): Promise<Record<string, PlacementMode>> {
  const text = await readFile(file, 'utf8').catch(() => '{}');
  const parsed = JSON.parse(text) as Record<string, unknown>;
  return Object.fromEntries(Object.entries(parsed).filter((e): e is [string, PlacementMode] => PLACEMENT_MODES.includes(e[1] as PlacementMode)));
}
