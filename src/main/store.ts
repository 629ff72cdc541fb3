// The agent's live state: a vanilla zustand store (no React here). The local API reads snapshots of
// it; later the app mirrors it. Only the agent's modules write to it, through these actions.
import { createStore } from 'zustand/vanilla';
import type { AgentStatus } from '../shared/local-api.ts';
import type { MigrationProgress, SiteRole } from '../shared/migration.ts';

export type VmLocation = AgentStatus['vms'][number];
export type PeerState = AgentStatus['peer'];

export interface AgentState {
  role: SiteRole;
  site: string;
  fingerprint: string;
  listen: string | undefined;
  peer: PeerState;
  vms: Record<string, VmLocation>;
  migrations: Record<string, MigrationProgress>;
  setPeer(peer: Partial<PeerState>): void;
  setVm(vm: VmLocation): void;
  setProgress(progress: MigrationProgress): void;
  endMigration(migrationId: string): void;
}

export type AgentStore = ReturnType<typeof createAgentStore>;

export function createAgentStore(initial: { role: SiteRole; site: string; fingerprint: string; listen?: string }) {
  return createStore<AgentState>()((set) => ({
    role: initial.role,
    site: initial.site,
    fingerprint: initial.fingerprint,
    listen: initial.listen,
    peer: { paired: false, connected: false },
    vms: {},
    migrations: {},
    setPeer: (peer) => set((s) => ({ peer: { ...s.peer, ...peer } })),
    setVm: (vm) => set((s) => ({ vms: { ...s.vms, [vm.name]: vm } })),
    setProgress: (progress) => set((s) => ({ migrations: { ...s.migrations, [progress.migrationId]: progress } })),
    endMigration: (migrationId) =>
      set((s) => {
        const { [migrationId]: _ended, ...rest } = s.migrations;
        return { migrations: rest };
      }),
  }));
}

export function statusOf(state: AgentState): AgentStatus {
  return {
    role: state.role,
    site: state.site,
    fingerprint: state.fingerprint,
    ...(state.listen === undefined ? {} : { listen: state.listen }),
    peer: state.peer,
    vms: Object.values(state.vms).sort((a, b) => a.name.localeCompare(b.name)),
    migrations: Object.values(state.migrations),
  };
}
