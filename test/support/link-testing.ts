// Two paired sites in one process, over real TLS on 127.0.0.1: for tests of the link and of anything
// built on it (an orchestrator test can run the destination's handlers on `core` and call them from
// `edge`). Everything lives in a temp directory that dispose() removes.
import { once } from 'node:events';
import { clearTimeout, setTimeout } from 'node:timers';
import type { TLSSocket } from 'node:tls';
import { FrameDecoder, type DecodedFrame, encodeFrame } from '../../src/migrator/link/common/frames.ts';
import { PROTOCOL_VERSION, type LinkMessage } from '../../src/migrator/link/common/protocol.ts';
import { dialTls, parseAddress } from '../../src/migrator/link/handshake.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LinkClient, type LinkClientOptions } from '../../src/migrator/link/client.ts';
import { loadOrCreateIdentity, type SiteIdentity } from '../../src/migrator/link/identity.ts';
import type { PeerLink } from '../../src/migrator/link/peer-link.ts';
import { LinkServer, type LinkServerOptions } from '../../src/migrator/link/server.ts';
import { TrustStore, type CorePairing } from '../../src/migrator/link/trust.ts';

export interface TestSitesOptions {
  server?: Partial<Omit<LinkServerOptions, 'identity' | 'trust'>>;
  client?: Partial<Omit<LinkClientOptions, 'identity'>>;
  /** Pair the edge with the core right away (default true). */
  pair?: boolean;
}

export interface TestSites {
  /** Temp root: `core/` and `edge/` are the sites' data directories; put unix sockets under it. */
  root: string;
  coreDir: string;
  edgeDir: string;
  coreIdentity: SiteIdentity;
  edgeIdentity: SiteIdentity;
  coreTrust: TrustStore;
  edgeTrust: TrustStore;
  server: LinkServer;
  client: LinkClient;
  /** `https://127.0.0.1:PORT` */
  url: string;
  /** Set when paired. */
  pairing: CorePairing | undefined;
  /** The pairing; throws if not paired. */
  readonly paired: CorePairing;
  /** Opens a control link; resolves with both ends. `setup` functions run before each end reads. */
  connect(setup?: { edge?: (link: PeerLink) => void; core?: (link: PeerLink) => void }): Promise<{ edge: PeerLink; core: PeerLink }>;
  dispose(): Promise<void>;
}

export async function startTestSites(options: TestSitesOptions = {}): Promise<TestSites> {
  // Short: unix socket paths under it must stay below the kernel's ~107-byte limit.
  const root = await mkdtemp(join(tmpdir(), 'sbl-'));
  const coreDir = join(root, 'core');
  const edgeDir = join(root, 'edge');
  const [coreIdentity, edgeIdentity] = await Promise.all([loadOrCreateIdentity(coreDir, 'core'), loadOrCreateIdentity(edgeDir, 'edge')]);
  const [coreTrust, edgeTrust] = await Promise.all([TrustStore.load(coreDir), TrustStore.load(edgeDir)]);
  let coreSetup: ((link: PeerLink) => void) | undefined;
  const server = await LinkServer.listen({
    ...options.server,
    identity: coreIdentity,
    trust: coreTrust,
    setup: (link) => {
      options.server?.setup?.(link);
      coreSetup?.(link);
    },
  });
  const client = new LinkClient({ ...options.client, identity: edgeIdentity });
  const url = `https://${server.address}`;
  const links: PeerLink[] = [];
  const sites: TestSites = {
    root,
    coreDir,
    edgeDir,
    coreIdentity,
    edgeIdentity,
    coreTrust,
    edgeTrust,
    server,
    client,
    url,
    pairing: undefined,
    get paired(): CorePairing {
      if (sites.pairing === undefined) throw new Error('not paired');
      return sites.pairing;
    },
    async connect(setup = {}) {
      if (sites.pairing === undefined) throw new Error('not paired');
      coreSetup = setup.core;
      const coreLink = once(server, 'link') as Promise<[PeerLink]>;
      const edge = await client.connect(sites.pairing, setup.edge === undefined ? {} : { setup: setup.edge });
      const [core] = await coreLink;
      coreSetup = undefined;
      links.push(edge, core);
      return { edge, core };
    },
    async dispose() {
      for (const link of links) link.destroy();
      await server.close();
      await rm(root, { recursive: true, force: true });
    },
  };
  if (options.pair ?? true) {
    const { token } = await coreTrust.createToken();
    sites.pairing = await client.pair(url, token, { expectedFingerprint: coreIdentity.fingerprint });
    await edgeTrust.setCore(sites.pairing);
  }
  return sites;
}

/** A connection that speaks the protocol by hand, for tests of what a misbehaving peer sends. */
export interface RawConnection {
  socket: TLSSocket;
  serverFingerprint: string;
  /** Sends a message as a frame, or raw bytes as they are. */
  send(message: LinkMessage | Uint8Array): void;
  /** The next frame from the server; rejects on timeout, or with "closed" once the server closed. */
  next(timeoutMs?: number): Promise<DecodedFrame>;
  /** Resolves when the socket has closed. */
  closed: Promise<void>;
}

export async function rawConnect(url: string, identity: SiteIdentity): Promise<RawConnection> {
  const { socket, serverFingerprint } = await dialTls(parseAddress(url), { identity, timeoutMs: 5_000 });
  const decoder = new FrameDecoder(64 * 1024 * 1024);
  const frames: DecodedFrame[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  socket.on('data', (chunk: Buffer) => {
    decoder.push(chunk);
    for (let f = decoder.next(); f !== undefined; f = decoder.next()) frames.push(f);
    wake?.();
  });
  socket.on('error', () => {});
  socket.on('end', () => {
    ended = true;
    wake?.();
    socket.end();
  });
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      ended = true;
      wake?.();
      resolve();
    }),
  );
  return {
    socket,
    serverFingerprint,
    closed,
    send(message) {
      socket.write(message instanceof Uint8Array ? message : encodeFrame(message, 64 * 1024 * 1024));
    },
    async next(timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const frame = frames.shift();
        if (frame !== undefined) return frame;
        if (ended) throw new Error('closed');
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new Error(`no frame within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, remaining);
          wake = () => {
            clearTimeout(timer);
            wake = undefined;
            resolve();
          };
        });
      }
    },
  };
}

/** A raw connection that has completed a control hello with `credential`; returns the welcome too. */
export async function rawControl(url: string, identity: SiteIdentity, credential: string): Promise<RawConnection & { welcome: unknown }> {
  const raw = await rawConnect(url, identity);
  raw.send({ type: 'hello', version: PROTOCOL_VERSION, mode: 'control', name: identity.name, credential });
  const reply = await raw.next();
  if (reply.kind !== 'message' || reply.message.type !== 'response' || !reply.message.ok) {
    throw new Error(`control hello refused: ${JSON.stringify(reply)}`);
  }
  return Object.assign(raw, { welcome: reply.message.result });
}
