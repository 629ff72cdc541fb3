// The app's actions: the only writer of the UI store. It keeps the connection to the agent, folds
// the agent's pushes into the store, runs the user's commands (errors land in `errors`, shown on the
// page) and refreshes what changes without a push (placement, decisions, history) while it is shown.
import { ApiError, type AgentTransport, type TransportFactory } from './api.ts';
import { appendSamples, createUiStore, type DisplayView, type MoveState, type UiError, type UiStore } from './state.ts';
import type { LocalCommand, LocalReplies, UiPush } from '../shared/local-api.ts';
import type { MigrationProgress, SiteRole } from '../shared/migration.ts';
import { nextProgressView } from '../shared/progress.ts';
import type { PlacementMode } from '../shared/placement.ts';
import type { ConfigPatch } from '../shared/config.ts';

/** The selected VM's latest decision is re-read this often; its decision log and history less often. */
const PLACEMENT_EVERY_MS = 1_000;
const LOGS_EVERY_MS = 5_000;
/** After a move ends, the badge waits this long at most for the status to show the VM at its destination. */
const SETTLE_MS = 2_000;

export class Controller {
  readonly store: UiStore = createUiStore();
  readonly #api: AgentTransport;
  #errorId = 0;
  #timers: ReturnType<typeof setInterval>[] = [];
  /** Placement modes being set (the user's choice, until the agent answers). */
  #modeSetting = new Map<string, PlacementMode>();
  /** VMs that had a move under way at the last status push, with its destination. */
  #moving = new Map<string, SiteRole>();
  /** The transport pushes the settings (the agent's WebSocket); without (the Electron shell polls), they are read with the status. */
  #configPushed = false;
  #configReadAt = 0;

  /** `openTransport`: the browser's WebSocket or the Electron shell's bridge (main.tsx picks). */
  constructor(openTransport: TransportFactory) {
    this.#api = openTransport({
      push: (push) => this.#onPush(push),
      connection: (state, detail) => {
        this.store.setState({ connection: { state, ...(detail ? { detail } : {}) } });
        if (state === 'open') void this.#refreshSelected(true);
      },
    });
  }

  start(): void {
    this.#api.connect();
    this.#timers.push(setInterval(() => void this.#refreshPlacement(), PLACEMENT_EVERY_MS));
    this.#timers.push(setInterval(() => void this.#refreshSelected(false), LOGS_EVERY_MS));
  }

  stop(): void {
    for (const timer of this.#timers) clearInterval(timer);
    this.#api.close();
  }

  // -------------------------------------------------------------------------------------------
  // User actions.

  select(vm: string): void {
    if (this.store.getState().selected === vm) return;
    this.store.setState({ selected: vm });
    void this.#refreshSelected(true);
  }

  /** "Send to cloud" (to core) / "Bring back" (to edge). */
  async migrate(vm: string, to: SiteRole): Promise<void> {
    const what = to === 'core' ? 'Send to cloud' : 'Bring back';
    this.#setMove(vm, { to, cancelling: false });
    try {
      const record = await this.#api.request({ cmd: 'migrate', vm, to }, (progress) => this.#track(progress));
      if (record.outcome === 'cancelled') this.#error(what, 'cancelled', `${vm} stayed at the ${record.from === 'core' ? 'cloud' : 'laptop'}: the move was cancelled during ${record.failedPhase ?? 'its start'}`, 'notice');
      else if (record.outcome !== 'committed') {
        this.#error(what, 'migration-failed', `${vm} stayed at the ${record.from}: ${record.failedPhase ? `${record.failedPhase} failed: ` : ''}${record.error ?? 'the migration was aborted'}`);
      }
    } catch (error) {
      this.#failed(what, error);
    } finally {
      this.#setMove(vm, undefined);
      this.#dropEndedProgress();
      void this.#refreshLogs(vm);
    }
  }

  /** The Start button: boots a stopped VM on the laptop. */
  async startVm(vm: string): Promise<void> {
    try {
      await this.#api.request({ cmd: 'vm-start', vm });
      void this.openDisplay(vm);
    } catch (error) {
      this.#failed('Start', error);
    }
  }

  /** The Stop button (after the user confirmed): powers the VM off wherever it runs. */
  async stopVm(vm: string): Promise<void> {
    try {
      await this.#api.request({ cmd: 'vm-stop', vm });
    } catch (error) {
      this.#failed('Stop', error);
    }
  }

  async cancel(vm: string): Promise<void> {
    const move = this.store.getState().moves[vm];
    if (move !== undefined) this.#setMove(vm, { ...move, cancelling: true });
    const progress = this.store.getState().status?.migrations.find((m) => m.vm === vm);
    try {
      const reply = await this.#api.request({ cmd: 'cancel', vm, ...(progress ? { migrationId: progress.migrationId } : {}) });
      if (!reply.requested) this.#error('Cancel', 'not-cancelled', reply.detail);
    } catch (error) {
      this.#failed('Cancel', error);
    }
  }

  async setMode(vm: string, mode: PlacementMode): Promise<void> {
    // Shown at once (a radio button that snapped back until the agent answers would look broken).
    const before = this.store.getState().placement[vm];
    this.#modeSetting.set(vm, mode);
    if (before !== undefined) this.store.setState((s) => ({ placement: { ...s.placement, [vm]: { ...before, mode } } }));
    try {
      const reply = await this.#api.request({ cmd: 'placement', vm, mode });
      this.store.setState((s) => ({ placement: { ...s.placement, [vm]: reply } }));
      void this.#refreshLogs(vm);
    } catch (error) {
      if (before !== undefined) this.store.setState((s) => ({ placement: { ...s.placement, [vm]: before } }));
      this.#failed('Placement mode', error);
    } finally {
      if (this.#modeSetting.get(vm) === mode) this.#modeSetting.delete(vm);
    }
  }

  /** Saves settings (a merge patch the Settings form validated); true when the agent took them. */
  async saveConfig(patch: ConfigPatch): Promise<boolean> {
    try {
      const config = await this.#api.request({ cmd: 'config-set', patch });
      this.store.setState({ config });
      return true;
    } catch (error) {
      this.#failed('Save settings', error);
      return false;
    }
  }

  /** Pairs the edge with a core (the Settings panel's form); true when it worked. */
  async pair(url: string, token: string, fingerprint: string | undefined): Promise<boolean> {
    try {
      await this.#api.request({ cmd: 'pair', url, token, ...(fingerprint ? { fingerprint } : {}) });
      return true;
    } catch (error) {
      this.#failed('Pair', error);
      return false;
    }
  }

  dismissError(id: number): void {
    this.store.setState((s) => ({ errors: s.errors.filter((e) => e.id !== id) }));
  }

  /** noVNC's view of the VM's display (the Display component reports it). */
  displayEvent(vm: string, url: string, event: 'connect' | 'disconnect', detail?: string): void {
    this.store.setState((s) => {
      const view: DisplayView = s.displayView[vm]?.url === url ? { ...s.displayView[vm] } : { url, state: 'connecting', connects: 0, disconnects: 0 };
      if (event === 'connect') {
        view.state = 'connected';
        view.connects += 1;
        delete view.detail;
      } else {
        view.state = 'disconnected';
        view.disconnects += 1;
        if (detail) view.detail = detail;
      }
      return { displayView: { ...s.displayView, [vm]: view } };
    });
  }

  /** Asks the agent for the VM's display gateway again (after noVNC lost it, or the VM started). */
  async openDisplay(vm: string): Promise<void> {
    try {
      const reply = await this.#api.request({ cmd: 'display', vm });
      this.store.setState((s) => ({ display: { ...s.display, [vm]: reply } }));
    } catch (error) {
      const code = error instanceof ApiError ? error.code : '';
      // A stopped VM has no display; the page says so without an error banner.
      if (code !== 'not-running') this.#failed('Display', error);
    }
  }

  // -------------------------------------------------------------------------------------------
  // The agent's pushes and periodic reads.

  #onPush(push: UiPush): void {
    if (push.push === 'samples') {
      this.store.setState((s) => ({ samples: { ...s.samples, [push.vm]: appendSamples(s.samples[push.vm] ?? [], push.samples, Date.now()) } }));
      return;
    }
    if (push.push === 'config') {
      this.#configPushed = true;
      this.store.setState({ config: push.config });
      return;
    }
    if (!this.#configPushed && Date.now() - this.#configReadAt >= LOGS_EVERY_MS) {
      this.#configReadAt = Date.now();
      void this.#refreshConfig();
    }
    const { status } = push;
    const names = status.vms.map((v) => v.name);
    const selected = this.store.getState().selected;
    this.store.setState({ status, ...(selected === undefined || !names.includes(selected) ? { selected: names[0] } : {}) });
    for (const progress of status.migrations) this.#track(progress);
    if (this.store.getState().selected !== selected) void this.#refreshSelected(true);
    // A move that ended (the user's or the policy's): its record is in the history now.
    const moving = new Map(status.migrations.map((m) => [m.vm, m.to]));
    for (const [vm, to] of this.#moving) {
      if (moving.has(vm)) continue;
      void this.#refreshLogs(vm);
      this.store.setState((s) => ({ settling: { ...s.settling, [vm]: to } }));
      setTimeout(() => this.#settle(vm, true), SETTLE_MS);
    }
    this.#moving = moving;
    for (const vm of Object.keys(this.store.getState().settling)) this.#settle(vm, false);
    this.#dropEndedProgress();
    // The display of a VM that started running.
    const vm = this.store.getState().selected;
    const location = status.vms.find((v) => v.name === vm)?.location;
    if (vm !== undefined && location !== undefined && location !== 'stopped' && this.store.getState().display[vm] === undefined) void this.openDisplay(vm);
  }

  /** Ends a VM's settling once the status shows it at the move's destination (or when `force`d). */
  #settle(vm: string, force: boolean): void {
    const { settling, status } = this.store.getState();
    const to = settling[vm];
    if (to === undefined) return;
    if (!force && status?.vms.find((v) => v.name === vm)?.location !== to) return;
    const { [vm]: _done, ...rest } = settling;
    this.store.setState({ settling: rest });
    this.#dropEndedProgress();
  }

  async #refreshSelected(withDisplay: boolean): Promise<void> {
    const vm = this.store.getState().selected;
    if (vm === undefined || this.store.getState().connection.state !== 'open') return;
    await Promise.all([this.#refreshPlacement(), this.#refreshLogs(vm), withDisplay && this.store.getState().display[vm] === undefined ? this.openDisplay(vm) : undefined]);
  }

  async #refreshPlacement(): Promise<void> {
    const vm = this.store.getState().selected;
    if (vm === undefined || this.store.getState().connection.state !== 'open') return;
    const reply = await this.#quiet({ cmd: 'placement', vm });
    if (reply === undefined) return;
    // A poll answered while a new mode is being set must not undo it on screen.
    const setting = this.#modeSetting.get(vm);
    this.store.setState((s) => ({ placement: { ...s.placement, [vm]: setting === undefined ? reply : { ...reply, mode: setting } } }));
  }

  async #refreshLogs(vm: string): Promise<void> {
    if (this.store.getState().connection.state !== 'open') return;
    const [history, decisions] = await Promise.all([this.#quiet({ cmd: 'history', vm, limit: 50 }), this.#quiet({ cmd: 'decisions', vm, limit: 50 })]);
    this.store.setState((s) => ({
      ...(history ? { history: { ...s.history, [vm]: history } } : {}),
      ...(decisions ? { decisions: { ...s.decisions, [vm]: decisions.map((d) => d.decision) } } : {}),
    }));
  }

  async #refreshConfig(): Promise<void> {
    const config = await this.#quiet({ cmd: 'config' });
    if (config !== undefined) this.store.setState({ config });
  }

  /** A background read: a dropped connection is shown by the connection line, not as an error. */
  async #quiet<C extends LocalCommand>(command: C): Promise<LocalReplies[C['cmd']] | undefined> {
    try {
      return await this.#api.request(command);
    } catch (error) {
      if (!(error instanceof ApiError && error.code === 'disconnected')) this.#failed(`Reading ${command.cmd}`, error);
      return undefined;
    }
  }

  // -------------------------------------------------------------------------------------------

  /** Folds a progress event, from this app's request or a status push, into the VM's one view. */
  #track(progress: MigrationProgress): void {
    this.store.setState((s) => ({ progress: { ...s.progress, [progress.vm]: nextProgressView(s.progress[progress.vm], progress) } }));
  }

  /** A move's view stays until the badge settled at its destination: no "Starting…" after commit. */
  #dropEndedProgress(): void {
    const { progress, moves, settling, status } = this.store.getState();
    const ended = Object.keys(progress).filter((vm) => moves[vm] === undefined && settling[vm] === undefined && !status?.migrations.some((m) => m.vm === vm));
    if (ended.length === 0) return;
    this.store.setState({ progress: Object.fromEntries(Object.entries(progress).filter(([vm]) => !ended.includes(vm))) });
  }

  #setMove(vm: string, move: MoveState | undefined): void {
    this.store.setState((s) => ({ moves: { ...s.moves, [vm]: move } }));
  }

  #failed(what: string, error: unknown): void {
    if (error instanceof ApiError) this.#error(what, error.code, error.message);
    else this.#error(what, 'error', (error as Error).message);
  }

  #error(what: string, code: string, message: string, kind: UiError['kind'] = 'error'): void {
    const entry: UiError = { id: ++this.#errorId, at: Date.now(), kind, what, code, message };
    // The same failure repeating (a poll) shows once.
    this.store.setState((s) => ({ errors: [...s.errors.filter((e) => e.what !== what || e.message !== message), entry].slice(-6) }));
  }
}
