// Where each VM is, as the tray and the notifications tell it: read from the agent's status, with a
// move under way shown as `moving` (as the page's badge does). No Electron here, only the wording.
import type { AgentStatus } from '../src/shared/local-api.ts';
import type { SiteRole } from '../src/shared/migration.ts';

export type VmLocation = AgentStatus['vms'][number]['location'];

export function locationOf(status: AgentStatus, vm: string): VmLocation | undefined {
  if (status.migrations.some((m) => m.vm === vm)) return 'moving';
  return status.vms.find((v) => v.name === vm)?.location;
}

const PLACES: Record<VmLocation, string> = {
  edge: 'on the laptop (edge)',
  core: 'in the cloud (core)',
  moving: 'moving',
  stopped: 'stopped',
};

/** The tray's tooltip: the VM and where it is; or why there is nothing to show. */
export function trayTooltip(status: AgentStatus | undefined, vm: string | undefined, connectionDetail?: string): string {
  if (status === undefined) return `snowbird: not connected to the edge agent${connectionDetail ? ` (${connectionDetail})` : ''}`;
  if (vm === undefined) return 'snowbird: no VMs yet';
  const location = locationOf(status, vm);
  return `snowbird: ${vm} is ${location === undefined ? 'gone' : PLACES[location]}`;
}

export interface VmMove {
  vm: string;
  from: SiteRole;
  to: SiteRole;
}

/** The native notification for a VM that now runs at the other site. */
export function moveNotice(move: VmMove): { title: string; body: string } {
  return move.to === 'core'
    ? { title: `${move.vm} moved to the cloud`, body: 'It runs on the core now; its screen stays here.' }
    : { title: `${move.vm} is back on the laptop`, body: 'It runs on this machine again.' };
}

/**
 * Finds the VMs that now run at the other site (edge → core, core → edge), whatever was seen in
 * between (`moving`, `stopped`). The first status a VM appears in only sets its starting point.
 */
export class MoveWatcher {
  readonly #site = new Map<string, SiteRole>();

  observe(status: AgentStatus): VmMove[] {
    const moves: VmMove[] = [];
    for (const { name } of status.vms) {
      const location = locationOf(status, name);
      if (location !== 'edge' && location !== 'core') continue;
      const before = this.#site.get(name);
      if (before !== undefined && before !== location) moves.push({ vm: name, from: before, to: location });
      this.#site.set(name, location);
    }
    for (const name of this.#site.keys()) if (!status.vms.some((v) => v.name === name)) this.#site.delete(name);
    return moves;
  }
}
