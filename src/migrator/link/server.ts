// The listening side of the link (the core; any agent can listen). TLS asks for the client's
// certificate but accepts any (self-signed everywhere); who may do what is decided here, from the
// hello, before any handler can run:
//   pair    — a valid one-time token (proved, not sent; see tokenProof) pairs the client's certificate
//             and issues it a fresh credential;
//   control — a paired certificate with its credential gets a PeerLink (one per peer: a new one
//             replaces the old);
//   stream  — the same check, plus the control link it belongs to; then it carries raw bytes.
import { EventEmitter } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout } from 'node:timers';
import tls, { type TLSSocket } from 'node:tls';
import { FrameDecoder, HANDSHAKE_MAX_FRAME_BYTES, type DecodedFrame } from './common/frames.ts';
import { PROTOCOL_VERSION, type ControlWelcome, type ErrorBody, type Hello, type PairWelcome } from './common/protocol.ts';
import type { SiteIdentity } from './identity.ts';
import { formatAddress, peerFingerprint, proofMatches, readFrame, refuse, refuseWithErrorFrame, sendFrame, tokenProof, HANDSHAKE_REPLY_MAX_BYTES } from './handshake.ts';
import { PeerDisconnectedError } from './errors.ts';
import { PeerLink, type PeerLinkOptions } from './peer-link.ts';
import { randomSecret, sha256Hex, type TrustStore } from './trust.ts';

export interface LinkServerOptions extends PeerLinkOptions {
  identity: SiteIdentity;
  trust: TrustStore;
  /** Default 127.0.0.1; a core reachable from other machines listens on 0.0.0.0 or a chosen address. */
  host?: string;
  /** Default 0 (any free port; see `port`). */
  port?: number;
  /** The name this site announces. Default: the certificate's name. */
  name?: string;
  /** Time a new connection gets to complete TLS and send its hello. Default 10000. */
  handshakeTimeoutMs?: number;
  /** Runs for every new control link before it reads its first frame: register handlers here. */
  setup?: (link: PeerLink) => void;
}

/** A connection turned away during its handshake. */
export interface RefusedConnection {
  code: string;
  message: string;
  remoteAddress: string;
  mode?: Hello['mode'];
  /** The client certificate's fingerprint, when it sent one. */
  fingerprint?: string;
}

export interface LinkServerEvents {
  /** A control link was authenticated (after `setup` ran). */
  link: [link: PeerLink];
  /** A peer paired with a token. */
  paired: [peer: { name: string; fingerprint: string }];
  refused: [info: RefusedConnection];
}

export class LinkServer extends EventEmitter<LinkServerEvents> {
  readonly host: string;
  readonly port: number;
  readonly name: string;
  readonly fingerprint: string;
  readonly #server: tls.Server;
  readonly #options: LinkServerOptions;
  /** Control links by link id. */
  readonly #links = new Map<string, PeerLink>();
  /** Every TCP connection, so close() can end those still handshaking. */
  readonly #sockets = new Set<Socket>();
  #closing: Promise<void> | undefined;

  private constructor(server: tls.Server, options: LinkServerOptions, host: string, port: number) {
    super();
    this.#server = server;
    this.#options = options;
    this.host = host;
    this.port = port;
    this.name = options.name ?? options.identity.name;
    this.fingerprint = options.identity.fingerprint;
  }

  static async listen(options: LinkServerOptions): Promise<LinkServer> {
    const server = tls.createServer({
      key: options.identity.keyPem,
      cert: options.identity.certPem,
      requestCert: true,
      // Self-signed certificates everywhere: pinned fingerprints and credentials are checked after the handshake.
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      handshakeTimeout: options.handshakeTimeoutMs ?? 10_000,
      // Not half-open while handshaking, so an EOF fails the handshake at once; stream connections
      // become half-open when they start carrying bytes.
    });
    const host = options.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    const linkServer = new LinkServer(server, options, host, port);
    server.on('connection', (raw: Socket) => {
      linkServer.#sockets.add(raw);
      raw.once('close', () => linkServer.#sockets.delete(raw));
    });
    server.on('secureConnection', (socket) => linkServer.#onConnection(socket));
    // Failed TLS handshakes (scanners, wrong protocol) concern nobody but the log.
    server.on('tlsClientError', (error, socket) => {
      socket.destroy();
      linkServer.emit('refused', { code: 'tls', message: error.message, remoteAddress: socket.remoteAddress ?? '?' });
    });
    return linkServer;
  }

  /** `host:port` as bound. */
  get address(): string {
    return formatAddress({ host: this.host, port: this.port });
  }

  /** Open control links, one per connected peer. */
  links(): PeerLink[] {
    return [...this.#links.values()];
  }

  /** The open control link of the peer with this certificate fingerprint. */
  linkTo(fingerprint: string): PeerLink | undefined {
    return this.links().find((l) => l.peer.fingerprint === fingerprint);
  }

  /** Stops listening and closes every link (and its streams). */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      await Promise.all(this.links().map((l) => l.close()));
      for (const socket of this.#sockets) socket.destroy();
      await closed;
    })();
    return this.#closing;
  }

  #onConnection(socket: TLSSocket): void {
    const remoteAddress = formatAddress({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 });
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    socket.on('error', () => {}); // a handshake that dies just ends here
    const decoder = new FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES);
    const timeoutMs = this.#options.handshakeTimeoutMs ?? 10_000;
    readFrame(socket, decoder, timeoutMs, 'a hello').then(
      (frame) => this.#onFirstFrame(socket, decoder, frame, remoteAddress),
      (error: Error) => {
        socket.destroy();
        this.emit('refused', { code: 'no-hello', message: error.message, remoteAddress, ...fingerprintOf(socket) });
      },
    );
  }

  async #onFirstFrame(socket: TLSSocket, decoder: FrameDecoder, frame: DecodedFrame, remoteAddress: string): Promise<void> {
    const fingerprint = peerFingerprint(socket);
    const refused = (error: ErrorBody, mode?: Hello['mode']) => {
      refuse(socket, error);
      this.emit('refused', { ...error, remoteAddress, ...(mode === undefined ? {} : { mode }), ...(fingerprint === undefined ? {} : { fingerprint }) });
    };
    if (frame.kind === 'too-large') {
      const error = { code: 'too-large', message: `a hello of ${frame.length} bytes exceeds the ${frame.limit}-byte limit` };
      refuseWithErrorFrame(socket, error);
      this.emit('refused', { ...error, remoteAddress });
      return;
    }
    if (frame.kind === 'malformed') return refused(frame.error);
    const hello = frame.message;
    if (hello.type !== 'hello') return refused({ code: 'malformed', message: `the first frame must be a hello, not "${hello.type}"` });
    if (hello.version !== PROTOCOL_VERSION) {
      return refused(
        { code: 'unsupported-version', message: `this site speaks link protocol ${PROTOCOL_VERSION}, the peer ${hello.version}: run the same snowbird version on both sites` },
        hello.mode,
      );
    }
    if (fingerprint === undefined) {
      return refused({ code: 'unauthorized', message: 'no client certificate: connect with a snowbird agent' }, hello.mode);
    }
    try {
      if (hello.mode === 'pair') {
        await this.#pair(socket, hello, fingerprint, refused);
        return;
      }
      const check = this.#options.trust.checkCredential(fingerprint, hello.credential);
      if (!check.ok) {
        return refused(
          check.reason === 'not-paired'
            ? {
                code: 'not-paired',
                message:
                  `this site (certificate ${fingerprint}) is not paired with ${this.name}: run ` +
                  `\`snowbird pair https://HOST:PORT --token T\` with a token created on ${this.name}`,
              }
            : {
                code: 'unauthorized',
                message: `the credential for ${check.peer.name} is wrong or missing: pair again with a new token from ${this.name}`,
              },
          hello.mode,
        );
      }
      const peer = { name: hello.name ?? check.peer.name, fingerprint };
      if (hello.mode === 'control') {
        this.#startLink(socket, decoder, peer, check.peer.name, remoteAddress);
        return;
      }
      if (hello.stream === undefined) return refused({ code: 'malformed', message: 'a stream hello needs "stream"' }, hello.mode);
      const link = this.#links.get(hello.stream.link);
      if (link === undefined || link.peer.fingerprint !== fingerprint || link.closed) {
        return refused({ code: 'not-connected', message: `no open control link "${hello.stream.link.slice(0, 64)}" for this peer: reconnect first` }, hello.mode);
      }
      await link.acceptStream(socket, decoder, hello.stream);
    } catch (error) {
      refused({ code: 'internal', message: `handshake failed on ${this.name}: ${(error as Error).message}` }, hello.mode);
    }
  }

  async #pair(socket: TLSSocket, hello: Hello, clientFingerprint: string, refused: (error: ErrorBody, mode?: Hello['mode']) => void): Promise<void> {
    if (hello.name === undefined || hello.token === undefined) {
      return refused({ code: 'malformed', message: 'a pair hello needs "name" and "token"' }, 'pair');
    }
    const proof = hello.token;
    const serverFingerprint = this.fingerprint;
    const credential = randomSecret(32);
    let tokenHash: string | undefined;
    const redeemed = await this.#options.trust.redeemToken(
      (hash) => {
        const ok = proofMatches(tokenProof('client', hash, clientFingerprint, serverFingerprint), proof);
        if (ok) tokenHash = hash;
        return ok;
      },
      { name: hello.name, certFingerprint: clientFingerprint, credentialHash: sha256Hex(credential), pairedAt: new Date().toISOString() },
    );
    if (!redeemed || tokenHash === undefined) {
      return refused(
        { code: 'bad-token', message: `pairing token rejected by ${this.name} (unknown, expired or already used): create a new token on ${this.name} and pair again` },
        'pair',
      );
    }
    // A re-paired certificate's old link (if any) used the old credential.
    this.linkTo(clientFingerprint)?.destroy(new PeerDisconnectedError(`${hello.name} paired again`));
    const welcome: PairWelcome = {
      credential,
      serverFingerprint,
      serverName: this.name,
      proof: tokenProof('server', tokenHash, clientFingerprint, serverFingerprint),
    };
    sendFrame(socket, { type: 'response', id: 0, ok: true, result: welcome }, HANDSHAKE_REPLY_MAX_BYTES);
    socket.end();
    setTimeout(() => socket.destroy(), 2_000).unref();
    this.emit('paired', { name: hello.name, fingerprint: clientFingerprint });
  }

  #startLink(socket: TLSSocket, decoder: FrameDecoder, peer: { name: string; fingerprint: string }, peerRecordName: string, remoteAddress: string): void {
    const previous = this.linkTo(peer.fingerprint);
    previous?.destroy(new PeerDisconnectedError(`${peer.name} connected again; this older link was replaced`));
    const link = new PeerLink({
      id: randomSecret(12),
      socket,
      decoder,
      local: { name: this.name, fingerprint: this.fingerprint },
      peer,
      role: 'listener',
      address: remoteAddress,
      options: this.#options,
    });
    this.#links.set(link.id, link);
    void link.whenClosed().then(() => this.#links.delete(link.id));
    socket.removeAllListeners('error');
    try {
      this.#options.setup?.(link);
    } catch (error) {
      link.destroy(error as Error);
      throw error;
    }
    const welcome: ControlWelcome = { link: link.id, serverName: this.name, peerName: peerRecordName };
    sendFrame(socket, { type: 'response', id: 0, ok: true, result: welcome }, HANDSHAKE_REPLY_MAX_BYTES);
    link.start();
    this.emit('link', link);
  }
}

function fingerprintOf(socket: TLSSocket): { fingerprint?: string } {
  const fingerprint = peerFingerprint(socket);
  return fingerprint === undefined ? {} : { fingerprint };
}
