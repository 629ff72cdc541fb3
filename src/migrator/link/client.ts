// The dialing side of the link (the edge). Every TCP connection between two sites is opened here: the
// control connection, and one more per byte stream (also when the core asks for the stream), so the
// core never needs to reach the edge (NAT, firewalls). The core's certificate is pinned: every
// connection checks its fingerprint before sending anything.
import { setTimeout } from 'node:timers';
import type { TLSSocket } from 'node:tls';
import { FrameDecoder } from './common/frames.ts';
import { controlWelcomeSchema, issuesText, pairWelcomeSchema, PROTOCOL_VERSION, type Hello, type StreamHello } from './common/protocol.ts';
import { PeerAuthError, PeerProtocolError, PeerRequestError } from './errors.ts';
import {
  dialTls,
  formatAddress,
  handOverRemainder,
  HANDSHAKE_REPLY_MAX_BYTES,
  parseAddress,
  readFrame,
  sendFrame,
  tokenProof,
  proofMatches,
  type Endpoint,
} from './handshake.ts';
import { normalizeFingerprint, type SiteIdentity } from './identity.ts';
import { PeerLink, type PeerLinkOptions } from './peer-link.ts';
import { sha256Hex, type CorePairing } from './trust.ts';

export interface LinkClientOptions extends PeerLinkOptions {
  identity: SiteIdentity;
  /** The name this site announces. Default: the certificate's name. */
  name?: string;
  /** TCP + TLS + hello answer, per connection. Default 10000. */
  connectTimeoutMs?: number;
}

export interface PairOptions {
  /** The core's fingerprint as shown on the core; when given, nothing else is accepted. */
  expectedFingerprint?: string;
}

export interface ConnectOptions {
  /** Runs before the link reads its first frame: register handlers here. */
  setup?: (link: PeerLink) => void;
}

type HandshakeContext = 'pair' | 'connect' | 'openStream';

export class LinkClient {
  readonly name: string;
  readonly #options: LinkClientOptions;

  constructor(options: LinkClientOptions) {
    this.#options = options;
    this.name = options.name ?? options.identity.name;
  }

  /**
   * Pairs with the core at `url` (`https://HOST:PORT`) using a one-time token created there. The core's
   * certificate must match `expectedFingerprint` when given; otherwise it is trusted on first use, the
   * token proving each side to the other (neither side sends it; see tokenProof). Returns what to
   * persist (TrustStore.setCore).
   */
  async pair(url: string, token: string, options: PairOptions = {}): Promise<CorePairing> {
    const endpoint = parseAddress(url);
    const expected = options.expectedFingerprint === undefined ? undefined : normalizeFingerprint(options.expectedFingerprint);
    const tokenHash = sha256Hex(token.trim());
    const own = this.#options.identity.fingerprint;
    const { socket, result, serverFingerprint } = await this.#handshake(endpoint, expected, 'pair', (serverFp) => ({
      type: 'hello',
      version: PROTOCOL_VERSION,
      mode: 'pair',
      name: this.name,
      token: tokenProof('client', tokenHash, own, serverFp),
    }));
    socket.end();
    setTimeout(() => socket.destroy(), 2_000).unref();
    const welcome = pairWelcomeSchema.safeParse(result);
    const address = formatAddress(endpoint);
    if (!welcome.success) throw new PeerProtocolError('malformed', `${address} answered the pairing with ${issuesText(welcome.error)}`);
    if (!proofMatches(tokenProof('server', tokenHash, own, serverFingerprint), welcome.data.proof)) {
      throw new PeerAuthError(
        'unauthorized',
        `${address} accepted the pairing but could not prove that it knows the token: the connection may be intercepted. ` +
          `Pair again with the core's fingerprint (--fingerprint, shown on the core).`,
      );
    }
    return {
      url: address,
      fingerprint: serverFingerprint,
      credential: welcome.data.credential,
      name: welcome.data.serverName,
      pairedAt: new Date().toISOString(),
    };
  }

  /** Opens the control link to the paired core. */
  async connect(pairing: CorePairing, options: ConnectOptions = {}): Promise<PeerLink> {
    const endpoint = parseAddress(pairing.url);
    const { socket, decoder, result } = await this.#handshake(endpoint, pairing.fingerprint, 'connect', () => ({
      type: 'hello',
      version: PROTOCOL_VERSION,
      mode: 'control',
      name: this.name,
      credential: pairing.credential,
    }));
    const welcome = controlWelcomeSchema.safeParse(result);
    if (!welcome.success) {
      socket.destroy();
      throw new PeerProtocolError('malformed', `${pairing.url} answered the connection with ${issuesText(welcome.error)}`);
    }
    const link = new PeerLink({
      id: welcome.data.link,
      socket,
      decoder,
      local: { name: this.name, fingerprint: this.#options.identity.fingerprint },
      peer: { name: welcome.data.serverName, fingerprint: pairing.fingerprint },
      role: 'dialer',
      address: formatAddress(endpoint),
      dialStream: (stream) => this.#dialStream(endpoint, pairing, stream),
      options: this.#options,
    });
    try {
      options.setup?.(link);
    } catch (error) {
      link.destroy(error as Error);
      throw error;
    }
    link.start();
    return link;
  }

  async #dialStream(endpoint: Endpoint, pairing: CorePairing, stream: StreamHello): Promise<TLSSocket> {
    const { socket, decoder } = await this.#handshake(endpoint, pairing.fingerprint, 'openStream', () => ({
      type: 'hello',
      version: PROTOCOL_VERSION,
      mode: 'stream',
      name: this.name,
      credential: pairing.credential,
      stream,
    }));
    handOverRemainder(socket, decoder);
    return socket;
  }

  /** Dial, pin, hello, and the answer to it (response id 0). */
  async #handshake(
    endpoint: Endpoint,
    expectedFingerprint: string | undefined,
    context: HandshakeContext,
    hello: (serverFingerprint: string) => Hello,
  ): Promise<{ socket: TLSSocket; decoder: FrameDecoder; result: unknown; serverFingerprint: string }> {
    const timeoutMs = this.#options.connectTimeoutMs ?? 10_000;
    const address = formatAddress(endpoint);
    const { socket, serverFingerprint } = await dialTls(endpoint, {
      identity: this.#options.identity,
      timeoutMs,
      ...(expectedFingerprint === undefined ? {} : { expectedFingerprint }),
    });
    try {
      sendFrame(socket, hello(serverFingerprint), HANDSHAKE_REPLY_MAX_BYTES);
      const decoder = new FrameDecoder(HANDSHAKE_REPLY_MAX_BYTES);
      const frame = await readFrame(socket, decoder, timeoutMs, `the answer to our hello from ${address}`);
      if (frame.kind === 'too-large') throw new PeerProtocolError('too-large', `${address} answered with a frame of ${frame.length} bytes`);
      if (frame.kind === 'malformed') throw new PeerProtocolError('malformed', `${address} answered with a malformed frame: ${frame.error.message}`);
      const reply = frame.message;
      if (reply.type === 'error') throw this.#refusal(address, context, reply.error.code, reply.error.message);
      if (reply.type !== 'response' || reply.id !== 0) {
        throw new PeerProtocolError('malformed', `${address} answered our hello with a "${reply.type}" frame`);
      }
      if (!reply.ok) throw this.#refusal(address, context, reply.error.code, reply.error.message);
      return { socket, decoder, result: reply.result, serverFingerprint };
    } catch (error) {
      socket.destroy();
      throw error;
    }
  }

  #refusal(address: string, context: HandshakeContext, code: string, message: string): Error {
    const own = this.#options.identity.fingerprint;
    switch (code) {
      case 'not-paired':
        return new PeerAuthError(
          code,
          `the core at ${address} does not know this site (certificate ${own}): run ` +
            `\`snowbird pair https://${address} --token T\` with a token created on the core. (core: ${message})`,
        );
      case 'unauthorized':
        return new PeerAuthError(
          code,
          `the core at ${address} refused this site's credential: pair again with ` +
            `\`snowbird pair https://${address} --token T\` using a new token from the core. (core: ${message})`,
        );
      case 'bad-token':
        return new PeerAuthError(
          code,
          `the core at ${address} rejected the pairing token (unknown, expired or already used): create a new token ` +
            `on the core and run \`snowbird pair https://${address} --token NEW_TOKEN\` again.`,
        );
      case 'malformed':
      case 'too-large':
      case 'unsupported-version':
        return new PeerProtocolError(code, `${address} refused the connection: ${message}`);
      default:
        return new PeerRequestError(code, context, message);
    }
  }
}
