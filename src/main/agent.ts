// The site agent's composition root: one binary, two roles. Both roles host VMs, keep history and
// serve the local API; the core listens for its paired edge over TLS; the edge dials its core and,
// with --embedded-core, first starts one on this machine.
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LinkClient, LinkServer, TrustStore, loadOrCreateIdentity, type PeerLink } from '../migrator/link/index.ts';
import type { SiteRole } from '../shared/migration.ts';
import type { LocalCommand } from '../shared/local-api.ts';
import { LocalApiError, LocalApiServer, type LocalHandler } from './local-api/server.ts';
import { History } from './history.ts';
import { createAgentStore, statusOf, type AgentStore } from './store.ts';
import { VmLibrary } from './vm-library.ts';
import { MigrationService } from './migration-service.ts';
import { PAIRING_TOKEN_ENV, startEmbeddedCore, type EmbeddedCore } from './embedded-core.ts';
import { DisplayService } from './display-service.ts';
import { PlacementService } from './placement-service.ts';
import { VmSensors } from './vm-sensors.ts';
import { hostReadingSchema } from '../shared/placement.ts';
import { bandwidthCapBytesPerS, effectivePolicyParams, type ConfigReply } from '../shared/config.ts';
import { ConfigService, defaultConfigPath } from './config-service.ts';
import { peerMethods } from '../shared/peer-api.ts';
import { isAlive } from '../migrator/qemu/process-info.ts';
import { readUiIdentity, UiServer, writeUiIdentity } from './ui-server.ts';
import { localApiSocket } from './local-api/paths.ts';
import { lockDataDir } from './agent-lock.ts';
import { VmSites } from './vm-sites.ts';

export interface AgentOptions {
  role: SiteRole;
  dataDir: string;
  /** HOST:PORT for the TLS peer API. The core needs it; port 0 picks a free port. */
  listen?: string;
  embeddedCore?: boolean;
  /** Edge: the placement policy moves VMs itself (default); false = it only samples and decides. */
  autoPlacement?: boolean;
  name?: string;
  /** Edge: the settings file it loads and watches. Default: the user's (`defaultConfigPath`). */
  configPath?: string;
  log: (line: string) => void;
  /** Machine-readable announcements on stdout (the embedded core's parent reads `listening`). */
  announce: (event: Record<string, unknown>) => void;
}

export interface RunningAgent {
  store: AgentStore;
  close(): Promise<void>;
}

/** The edge's side of the link: dials the paired core and keeps dialing while it is away. */
class CoreConnection {
  private link: PeerLink | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private readonly client: LinkClient;
  private readonly trust: TrustStore;
  private readonly store: AgentStore;
  private readonly setup: (link: PeerLink) => void;
  private readonly log: (line: string) => void;

  constructor(client: LinkClient, trust: TrustStore, store: AgentStore, setup: (link: PeerLink) => void, log: (line: string) => void) {
    this.client = client;
    this.trust = trust;
    this.store = store;
    this.setup = setup;
    this.log = log;
  }

  get current(): PeerLink | undefined {
    return this.link;
  }

  /** Runs until stop(): connect, wait for the link to drop, back off, again. */
  async run(): Promise<void> {
    let backoffMs = 500;
    while (!this.stopped) {
      const pairing = this.trust.core;
      if (pairing === undefined) {
        await this.sleepUntilWoken(60_000);
        continue;
      }
      this.store.getState().setPeer({ paired: true, name: pairing.name, url: pairing.url, fingerprint: pairing.fingerprint });
      try {
        const link = await this.client.connect(pairing, { setup: this.setup });
        this.link = link;
        this.store.getState().setPeer({ connected: true });
        this.log(`connected to core "${pairing.name}" at ${pairing.url}`);
        backoffMs = 500;
        const error = await link.whenClosed();
        this.link = undefined;
        this.store.getState().setPeer({ connected: false });
        if (!this.stopped) this.log(`link to the core closed${error ? `: ${error.message}` : ''}; reconnecting`);
      } catch (error) {
        this.log(`cannot reach the core at ${pairing.url}: ${(error as Error).message}`);
      }
      await this.sleepUntilWoken(backoffMs);
      backoffMs = Math.min(backoffMs * 2, 10_000);
    }
  }

  /** Drops the current link (if any) so run() dials the (new) pairing at once. */
  async redial(): Promise<void> {
    const link = this.link;
    this.link = undefined;
    await link?.close();
    this.wake?.();
  }

  async waitConnected(timeoutMs: number): Promise<PeerLink> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.link) return this.link;
      await sleep(50);
    }
    throw new LocalApiError('not-connected', 'the core is not connected: check `snowbird status` and that the core agent runs');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.link?.close();
  }

  private async sleepUntilWoken(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = undefined;
  }
}

/** HOST:PORT to listen on; port 0 = any free port (the embedded core uses it). */
function listenAddress(text: string): { host: string; port: number } {
  const match = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/.exec(text.trim());
  const port = Number(match?.[2]);
  if (match?.[1] === undefined || port > 65535) throw new LocalApiError('invalid', `--listen "${text}" is not HOST:PORT`);
  return { host: match[1].replace(/^\[|\]$/g, ''), port };
}

function defaultName(role: SiteRole): string {
  return `${role}@${hostname()}`.replace(/[^A-Za-z0-9._:@-]/g, '-').replace('@', '.');
}

export async function runAgent(options: AgentOptions): Promise<RunningAgent> {
  const { role, dataDir, log } = options;
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // Before anything touches the directory (history, sockets, QEMUs): a second agent here stops now.
  const unlock = await lockDataDir(dataDir);
  const name = options.name ?? defaultName(role);
  const identity = await loadOrCreateIdentity(join(dataDir, 'identity'), name);
  const trust = await TrustStore.load(dataDir);
  const store = createAgentStore({ role, site: name, fingerprint: identity.fingerprint });
  const history = new History(join(dataDir, 'history.db'));
  const library = new VmLibrary(dataDir);
  await library.saveSiteRole(role);
  let displays: DisplayService | undefined;
  let placement: PlacementService | undefined;
  let ui: UiServer | undefined;
  // The settings (bandwidth default, policy knobs) are the edge's: it starts moves and runs the policy.
  // A valid change of the file applies at once; an invalid one only shows (the last good settings stay).
  const config = role === 'edge' ? await ConfigService.open({ path: options.configPath ?? defaultConfigPath(), log }) : undefined;
  config?.onChange(({ config: settings }) => {
    placement?.setParams(effectivePolicyParams(settings));
    ui?.pushConfig();
  });
  const migrations = new MigrationService({
    role,
    dataDir,
    library,
    store,
    history,
    log,
    onSwitched: (vm, site) => void displays?.moved(vm, site),
    ...(config ? { defaultMaxBandwidth: () => bandwidthCapBytesPerS(config.current()), defaultDedup: () => config.current().migration?.dedup, chunkStoreMiB: () => config.current().migration?.chunkStoreMiB, postcopyToCore: () => config.current().migration?.postcopyToCore } : {}),
  });
  await migrations.recover();
  const sensors = new VmSensors(library, log);
  let connection: CoreConnection | undefined;
  const vmSites = new VmSites({ role, library, store, coreLink: () => connection?.current, cancelMove: (vm) => migrations.cancel(vm), changed: () => migrations.refreshVms() });
  /** The peer API on every new link: migrations, the VMs this site runs (status, stop, host readings). */
  const setupLink = (link: PeerLink): void => {
    migrations.attach(link);
    vmSites.attach(link);
    link.handle('vm.sensors', peerMethods['vm.sensors'], (p) => sensors.read(p.vm));
  };

  let server: LinkServer | undefined;
  if (options.listen !== undefined) {
    const endpoint = listenAddress(options.listen);
    server = await LinkServer.listen({ identity, trust, host: endpoint.host, port: endpoint.port, name, setup: setupLink });
    server.on('paired', (peer) => log(`paired with ${peer.name} (${peer.fingerprint})`));
    server.on('refused', (refused) => log(`refused a connection from ${refused.remoteAddress}: ${refused.code}: ${refused.message}`));
    server.on('link', (link) => {
      store.getState().setPeer({ paired: true, connected: true, name: link.peer.name, fingerprint: link.peer.fingerprint });
      void link.whenClosed().then(() => store.getState().setPeer({ connected: (server?.links().length ?? 0) > 0 }));
    });
    store.setState({ listen: server.address });
    const presetToken = process.env[PAIRING_TOKEN_ENV];
    if (presetToken) {
      await trust.createToken({ token: presetToken });
    } else if (role === 'core' && trust.peers().length === 0) {
      const { token } = await trust.createToken();
      log(`pair an edge with this core: snowbird pair https://${server.address} --token ${token} --fingerprint ${identity.fingerprint}`);
    }
    options.announce({ event: 'listening', address: server.address, fingerprint: identity.fingerprint });
    log(`${role} agent "${name}" listening on ${server.address} (${identity.fingerprint})`);
  }

  let embedded: EmbeddedCore | undefined;
  const client = new LinkClient({ identity, name });
  if (role === 'edge') {
    if (options.embeddedCore) {
      embedded = await startEmbeddedCore(dataDir, log);
      const current = trust.core;
      if (current?.fingerprint === embedded.fingerprint) {
        await trust.setCore({ ...current, url: embedded.url.replace(/^https:\/\//, '') });
      } else {
        await trust.setCore(await client.pair(embedded.url, embedded.token, { expectedFingerprint: embedded.fingerprint }));
        log(`paired with the embedded core (${embedded.fingerprint})`);
      }
    }
    connection = new CoreConnection(client, trust, store, setupLink, log);
    const link = connection;
    displays = new DisplayService({
      library,
      coreLink: () => link.current,
      log,
      locate: async (vm) => {
        const runtime = await library.loadRuntime(vm).catch(() => undefined);
        if (runtime !== undefined && (await isAlive(runtime.pid))) return 'edge';
        await migrations.refreshVms();
        return store.getState().vms[vm]?.location === 'core' ? 'core' : undefined;
      },
      onActivity: (record) => placement?.onActivity(record),
    });
    placement = new PlacementService({
      dataDir,
      library,
      store,
      history,
      migrations,
      displays,
      params: effectivePolicyParams(config?.current() ?? {}),
      act: options.autoPlacement ?? true,
      log,
      hostReading: async (vm, site) => {
        if (site === 'edge') return sensors.read(vm);
        const core = link.current;
        if (core === undefined) return null;
        return hostReadingSchema.nullable().parse(await core.request('vm.sensors', { vm }, { timeoutMs: 2_000 }));
      },
    });
    await placement.start();
    migrations.setCoreLink(() => connection?.waitConnected(15_000) ?? Promise.reject(new LocalApiError('no-core', 'this agent has no core')));
    void connection.run();
    if (options.embeddedCore) await connection.waitConnected(15_000);
  }

  const edgeConfig = (): ConfigService => {
    if (config === undefined) throw new LocalApiError('wrong-role', 'the settings (config.json) belong to the edge agent');
    return config;
  };
  const configReply = (): ConfigReply => {
    const core = trust.core;
    return edgeConfig().reply(core === undefined ? undefined : { url: core.url, name: core.name, fingerprint: core.fingerprint });
  };
  const handle = (async (command: LocalCommand, progress) => {
    switch (command.cmd) {
      case 'status':
        await migrations.refreshVms();
        return statusOf(store.getState());
      case 'pair': {
        if (role !== 'edge' || connection === undefined) throw new LocalApiError('wrong-role', 'pair from the edge agent: the core hands out tokens, the edge uses one');
        const pairing = await client.pair(command.url, command.token, command.fingerprint === undefined ? {} : { expectedFingerprint: command.fingerprint });
        await trust.setCore(pairing);
        await connection.redial();
        ui?.pushConfig(); // the settings show the paired core
        return { peerName: pairing.name, fingerprint: pairing.fingerprint };
      }
      case 'migrate':
        return migrations.migrate(command, progress);
      case 'cancel':
        return migrations.cancel(command.vm, command.migrationId);
      case 'vm-status':
        return vmSites.status(command.vm, command.sampleMs ?? 0);
      case 'vm-console':
        return vmSites.console(command.vm, command.offset);
      case 'vm-start':
        return vmSites.start(command.vm);
      case 'vm-stop':
        return vmSites.stop(command.vm, { force: command.force ?? false, graceMs: command.graceMs ?? 15_000, cancelMove: command.cancelMove ?? false });
      case 'history':
        return history.migrations({ ...(command.vm ? { vm: command.vm } : {}), ...(command.limit ? { limit: command.limit } : {}) });
      case 'display':
        if (displays === undefined) throw new LocalApiError('wrong-role', 'displays are served by the edge agent, where the user is');
        return displays.open(command.vm);
      case 'placement': {
        if (placement === undefined) throw new LocalApiError('wrong-role', 'placement is decided by the edge agent');
        if (command.mode !== undefined) await placement.setMode(command.vm, command.mode);
        const decision = placement.lastDecision(command.vm);
        return { vm: command.vm, mode: placement.mode(command.vm), ...(decision ? { decision } : {}) };
      }
      case 'samples':
        return history.samples(command.vm, command.after, command.limit);
      case 'decisions':
        return history.decisions({ ...(command.vm ? { vm: command.vm } : {}), ...(command.limit ? { limit: command.limit } : {}) });
      case 'ui':
        if (ui === undefined) throw new LocalApiError('wrong-role', 'the app is served by the edge agent, where the user is');
        return { url: ui.url };
      case 'config':
        return configReply();
      case 'config-set': {
        const result = await edgeConfig().update(command.patch);
        if (!result.ok) throw result.error;
        return configReply();
      }
    }
  }) as LocalHandler;
  const local = await LocalApiServer.listen(localApiSocket(dataDir), handle);
  // The app in a browser (`snowbird open`): the same handler behind a loopback WebSocket.
  // Its port and token outlive a restart (when the port is still free): an open tab reconnects.
  if (role === 'edge') {
    const kept = await readUiIdentity(dataDir);
    ui = await UiServer.start({ store, handle, samples: (vm, after) => history.samples(vm, after), config: configReply, log, ...(kept ? { port: kept.port, token: kept.token } : {}) });
    await writeUiIdentity(dataDir, { port: ui.port, token: ui.token });
  }

  return {
    store,
    close: async () => {
      local.close();
      await ui?.close();
      placement?.stop();
      sensors.close();
      await displays?.close();
      await connection?.stop();
      await server?.close();
      await embedded?.stop();
      await migrations.close();
      await config?.close();
      history.close();
      await unlock();
    },
  };
}

