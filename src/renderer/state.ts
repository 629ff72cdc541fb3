// The app's state: a vanilla zustand store, written only by the controller (controller.ts) from the
// agent's replies and pushes; React components only read it, through `useUi` (hooks.ts).
import { createStore } from 'zustand/vanilla';
import type { AgentStatus, DisplayReply, PlacementReply } from '../shared/local-api.ts';
import type { ConfigReply } from '../shared/config.ts';
import type { MigrationRecord, SiteRole } from '../shared/migration.ts';
import type { ProgressView } from '../shared/progress.ts';
import type { InteractionSample, PlacementDecision } from '../shared/placement.ts';
import type { ConnectionState } from './api.ts';

/** How much of each VM's samples the plots keep. */
export const SAMPLE_WINDOW_MS = 5 * 60_000;

export interface UiError {
  id: number;
  at: number;
  /** `notice`: nothing went wrong (a move the user cancelled); shown, but not as a failure. */
  kind: 'error' | 'notice';
  /** What the user tried ("Send to cloud"), or where it happened. */
  what: string;
  code: string;
  message: string;
}

/** The user's move under way or just ended, for the VM's panel (policy moves show through the status). */
export interface MoveState {
  to: SiteRole;
  cancelling: boolean;
}

export interface DisplayView {
  url: string;
  state: 'connecting' | 'connected' | 'disconnected';
  /** noVNC sessions opened (1 while it never dropped) and dropped. */
  connects: number;
  disconnects: number;
  detail?: string;
}

export interface UiState {
  connection: { state: ConnectionState; detail?: string };
  status: AgentStatus | undefined;
  /** The VM the page shows. */
  selected: string | undefined;
  samples: Record<string, InteractionSample[]>;
  moves: Record<string, MoveState | undefined>;
  /** Each moving VM's progress, folded from this app's request and the status pushes alike. */
  progress: Record<string, ProgressView | undefined>;
  history: Record<string, MigrationRecord[]>;
  decisions: Record<string, PlacementDecision[]>;
  placement: Record<string, PlacementReply | undefined>;
  display: Record<string, DisplayReply | undefined>;
  displayView: Record<string, DisplayView | undefined>;
  /**
   * Moves that just ended, by VM: their destination, until the status shows the VM there (or a short
   * grace passes: an aborted move leaves it where it was). The badge stays `moving` meanwhile rather
   * than flash the old site between the move's end and the agent's next look at where VMs run.
   */
  settling: Record<string, SiteRole | undefined>;
  /** The edge agent's settings as last pushed: the settings in force and, when config.json is invalid, why. */
  config: ConfigReply | undefined;
  errors: UiError[];
}

export type UiStore = ReturnType<typeof createUiStore>;

export function createUiStore() {
  return createStore<UiState>()(() => ({
    connection: { state: 'connecting' },
    status: undefined,
    selected: undefined,
    samples: {},
    moves: {},
    progress: {},
    history: {},
    decisions: {},
    placement: {},
    display: {},
    displayView: {},
    settling: {},
    config: undefined,
    errors: [],
  }));
}

/** Appends new samples (oldest first), drops those older than the window and any repeated times. */
export function appendSamples(previous: readonly InteractionSample[], added: readonly InteractionSample[], now: number): InteractionSample[] {
  const last = previous.at(-1)?.at ?? -Infinity;
  const fresh = added.filter((s) => s.at > last);
  const from = now - SAMPLE_WINDOW_MS;
  const kept = previous.findIndex((s) => s.at >= from);
  return [...(kept < 0 ? [] : previous.slice(kept)), ...fresh];
}

export type Location = AgentStatus['vms'][number]['location'];

/** Where the VM is as the badge says it: a move under way (any: the user's or the policy's) is `moving`. */
export function locationOf(state: Pick<UiState, 'status' | 'settling'>, vm: string): Location | undefined {
  const { status } = state;
  if (status === undefined) return undefined;
  if (status.migrations.some((m) => m.vm === vm) || state.settling[vm] !== undefined) return 'moving';
  return status.vms.find((v) => v.name === vm)?.location;
}

/** The progress of the VM's move under way (or just ended, until the badge settles): see shared/progress.ts. */
export function progressOf(state: Pick<UiState, 'progress'>, vm: string): ProgressView | undefined {
  return state.progress[vm];
}
