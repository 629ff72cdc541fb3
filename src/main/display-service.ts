// The edge agent's displays: one display gateway per VM, opened on first use and kept for the
// agent's life, so the user's viewers stay on the laptop wherever the VM runs. The gateway's
// upstream follows the VM: QEMU's VNC socket here, or the core's through the link (target
// `display.<vm>`); a migration's switchover swaps it without disconnecting a viewer.
import type { Duplex } from 'node:stream';
import { connectUnix } from '../migrator/link/streams.ts';
import type { PeerLink } from '../migrator/link/index.ts';
import { DisplayGateway, type UpstreamConnector } from '../display/gateway.ts';
import type { DisplayActivity } from '../shared/display.ts';
import type { DisplayReply } from '../shared/local-api.ts';
import type { SiteRole } from '../shared/migration.ts';
import type { VmLibrary } from './vm-library.ts';
import { LocalApiError } from './local-api/server.ts';

/** The link target under which a site exposes a VM's VNC socket to its peer. */
export function displayTarget(vm: string): string {
  return `display.${vm}`;
}

export interface DisplayServiceDeps {
  library: VmLibrary;
  /** The link to the core when there is one now (no waiting: the gateway retries by itself). */
  coreLink: () => PeerLink | undefined;
  /** Where the VM's QEMU runs now, as far as the agent knows. */
  locate: (vm: string) => Promise<SiteRole | undefined>;
  log: (line: string) => void;
  /** Every gateway's activity records (the interaction detector and the UI read them). */
  onActivity?: (record: DisplayActivity) => void;
}

interface Display {
  gateway: DisplayGateway;
  /** Where the upstream connector dials: the VM's site as of the last open or switchover. */
  at: SiteRole;
}

export class DisplayService {
  readonly #deps: DisplayServiceDeps;
  readonly #displays = new Map<string, Promise<Display>>();

  constructor(deps: DisplayServiceDeps) {
    this.#deps = deps;
  }

  /** The VM's gateway (started on first use), with the addresses viewers connect to. */
  async open(vm: string): Promise<DisplayReply> {
    let pending = this.#displays.get(vm);
    if (pending === undefined) {
      pending = this.#start(vm);
      this.#displays.set(vm, pending);
      pending.catch(() => this.#displays.delete(vm));
    }
    const { gateway, at } = await pending;
    return {
      vm,
      at,
      webSocketUrl: gateway.webSocketUrl ?? '',
      rfbAddress: `${gateway.host}:${gateway.rfbPort ?? 0}`,
      status: gateway.status,
      viewers: gateway.viewers().length,
    };
  }

  /**
   * The VM now runs at `site` (a migration switched over, or the agent learnt where it is): an open
   * gateway swaps to that site's VNC server. Viewers keep their connection and see the new frames.
   */
  async moved(vm: string, site: SiteRole): Promise<void> {
    const display = await this.#displays.get(vm)?.catch(() => undefined);
    if (display === undefined || display.at === site) return;
    display.at = site;
    await display.gateway.switchUpstream(this.#connector(vm, display)).catch((error: unknown) => {
      this.#deps.log(`display of ${vm}: switching to the ${site}'s VNC server: ${(error as Error).message}`);
    });
  }

  async close(): Promise<void> {
    const displays = await Promise.allSettled([...this.#displays.values()]);
    this.#displays.clear();
    await Promise.all(displays.map((d) => (d.status === 'fulfilled' ? d.value.gateway.close() : undefined)));
  }

  async #start(vm: string): Promise<Display> {
    const at = await this.#deps.locate(vm);
    if (at === undefined) throw new LocalApiError('not-running', `VM "${vm}" runs at neither site; start it with 'snowbird vm start ${vm}' first`);
    const display = { at } as Display;
    display.gateway = await DisplayGateway.start({ connect: this.#connector(vm, display), source: vm, log: this.#deps.log });
    if (this.#deps.onActivity) display.gateway.on('activity', this.#deps.onActivity);
    return display;
  }

  /** Dials wherever `display.at` says the VM runs at the time of each attempt. */
  #connector(vm: string, display: Display): UpstreamConnector {
    const dial = async (): Promise<Duplex> => {
      if (display.at === 'edge') return connectUnix(this.#deps.library.paths(vm).vnc);
      const link = this.#deps.coreLink();
      if (link === undefined) throw new Error('the core is not connected');
      return link.openStream(displayTarget(vm));
    };
    return async () => {
      try {
        return await dial();
      } catch (error) {
        // The VM may have moved without this agent seeing the switchover (an agent restarted
        // mid-migration and recovered it): the next attempt dials wherever it runs now.
        const now = await this.#deps.locate(vm).catch(() => undefined);
        if (now !== undefined) display.at = now;
        throw error;
      }
    };
  }
}
