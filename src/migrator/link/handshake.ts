// What the dialing and the listening side share before a connection becomes a control link or a byte
// stream: addresses, TLS dialing with the fingerprint check, reading single frames, the hello reply,
// and the pairing-token proof.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { clearTimeout, setTimeout } from 'node:timers';
import tls, { type TLSSocket } from 'node:tls';
import { encodeFrame, type DecodedFrame, type FrameDecoder } from './common/frames.ts';
import type { ErrorBody, LinkMessage } from './common/protocol.ts';
import { PeerConnectError, PeerDisconnectedError, PeerFingerprintError } from './errors.ts';
import { fingerprint, type SiteIdentity } from './identity.ts';

export interface Endpoint {
  host: string;
  port: number;
}

/** Frames exchanged during a handshake (hello and its reply) are small; bound them accordingly. */
export const HANDSHAKE_REPLY_MAX_BYTES = 64 * 1024;
/** After a refusal, how long the other side gets to read it before the socket is destroyed. */
const REFUSAL_LINGER_MS = 2_000;

/** `https://host:port`, `snowbird://host:port`, `host:port` or `[v6]:port`. The port is required. */
export function parseAddress(text: string): Endpoint {
  const trimmed = text.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed) ? trimmed : `snowbird://${trimmed}`;
  const match = /^[a-z][a-z0-9+.-]*:\/\/(\[[0-9a-f:.]+\]|[^/:[\]@\s]+):(\d{1,5})\/?$/i.exec(withScheme);
  const port = Number(match?.[2]);
  if (match?.[1] === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new TypeError(`"${text.slice(0, 200)}" is not a peer address: expected https://HOST:PORT (the port is required)`);
  }
  const host = match[1].startsWith('[') ? match[1].slice(1, -1) : match[1];
  return { host, port };
}

/** `host:port`, IPv6 hosts in brackets. */
export function formatAddress({ host, port }: Endpoint): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * What proves knowledge of a pairing token without sending it: an HMAC keyed by the token's SHA-256,
 * over both certificate fingerprints as each side sees them. An interceptor with its own certificate
 * sees a proof for other fingerprints, which the real peer rejects; and without the token it cannot
 * produce the server's proof either, so pairing without a known fingerprint is still authenticated by
 * the token in both directions.
 */
export function tokenProof(role: 'client' | 'server', tokenHashHex: string, clientFingerprint: string, serverFingerprint: string): string {
  return createHmac('sha256', Buffer.from(tokenHashHex, 'hex'))
    .update(`snowbird-link-pair-v1 ${role}\n${clientFingerprint}\n${serverFingerprint}`)
    .digest('base64url');
}

export function proofMatches(expected: string, given: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The peer certificate's fingerprint, or undefined when the peer sent none. */
export function peerFingerprint(socket: TLSSocket): string | undefined {
  const cert = socket.getPeerCertificate() as { raw?: Buffer } | null;
  const raw = cert?.raw;
  return raw === undefined || raw.length === 0 ? undefined : fingerprint(new Uint8Array(raw));
}

export interface DialOptions {
  identity: SiteIdentity;
  /** When set, the server's certificate must have this fingerprint, checked before anything is sent. */
  expectedFingerprint?: string;
  timeoutMs: number;
}

/** TLS with our certificate; resolves once the handshake is done and the fingerprint checked. */
export function dialTls(endpoint: Endpoint, options: DialOptions): Promise<{ socket: TLSSocket; serverFingerprint: string }> {
  const address = formatAddress(endpoint);
  return new Promise((resolve, reject) => {
    const connectOptions: tls.ConnectionOptions = {
      host: endpoint.host,
      port: endpoint.port,
      key: options.identity.keyPem,
      cert: options.identity.certPem,
      // Self-signed on both sides: we pin fingerprints instead of verifying chains (checked below).
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      // Not half-open during the handshake (an EOF there must fail it at once); stream connections
      // switch to half-open once they carry bytes (see handOverRemainder).
      ...(isIP(endpoint.host) === 0 ? { servername: endpoint.host } : {}),
    };
    const socket = tls.connect(connectOptions);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new PeerConnectError(endpoint.host, endpoint.port, `no TLS connection to ${address} within ${options.timeoutMs} ms: check the address and that nothing blocks the port`));
    }, options.timeoutMs);
    const onError = (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(connectError(endpoint, error));
    };
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      // From here on whoever owns the socket watches it (readFrame, PeerLink, splice); an error in
      // between only means it closes.
      socket.on('error', () => {});
      const actual = peerFingerprint(socket);
      if (actual === undefined) {
        socket.destroy();
        reject(new PeerConnectError(endpoint.host, endpoint.port, `${address} presented no certificate: it is not a snowbird agent`));
        return;
      }
      if (options.expectedFingerprint !== undefined && actual !== options.expectedFingerprint) {
        socket.destroy();
        reject(new PeerFingerprintError(address, options.expectedFingerprint, actual));
        return;
      }
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 10_000);
      resolve({ socket, serverFingerprint: actual });
    });
  });
}

function connectError(endpoint: Endpoint, error: NodeJS.ErrnoException): PeerConnectError {
  const address = formatAddress(endpoint);
  const hints: Record<string, string> = {
    ECONNREFUSED: 'nothing listens there: is the core agent running, and is this its link port?',
    ENOTFOUND: 'the host name does not resolve',
    EAI_AGAIN: 'the host name could not be resolved (DNS unavailable?)',
    EHOSTUNREACH: 'the host is unreachable from here',
    ENETUNREACH: 'the network is unreachable from here',
    ETIMEDOUT: 'the connection timed out (firewall?)',
    ECONNRESET: 'the connection was reset during the TLS handshake: is this a snowbird link port?',
  };
  const hint = hints[error.code ?? ''] ?? error.message;
  return new PeerConnectError(endpoint.host, endpoint.port, `cannot reach ${address} (${error.code ?? 'error'}): ${hint}`, error);
}

/** Writes one frame (throws FrameTooLargeError / TypeError for messages that cannot be framed). */
export function sendFrame(socket: TLSSocket, message: LinkMessage, maxFrameBytes?: number): boolean {
  return socket.write(encodeFrame(message, maxFrameBytes));
}

/**
 * Reads exactly one frame. The socket is left paused with any bytes after that frame kept in `decoder`
 * (for a stream connection they are the first bytes of the stream).
 */
export function readFrame(socket: TLSSocket, decoder: FrameDecoder, timeoutMs: number, what: string): Promise<DecodedFrame> {
  return new Promise((resolve, reject) => {
    const buffered = decoder.next();
    if (buffered !== undefined) {
      resolve(buffered);
      return;
    }
    const finish = () => {
      clearTimeout(timer);
      socket.pause();
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      socket.off('end', onClose);
    };
    const onData = (chunk: Buffer) => {
      decoder.push(chunk);
      const frame = decoder.next();
      if (frame === undefined) return;
      finish();
      resolve(frame);
    };
    const onError = (error: Error) => {
      finish();
      reject(new PeerDisconnectedError(`connection failed while waiting for ${what}: ${error.message}`, undefined, error));
    };
    const onClose = () => {
      finish();
      reject(new PeerDisconnectedError(`connection closed while waiting for ${what}`));
    };
    const timer = setTimeout(() => {
      finish();
      socket.destroy();
      reject(new PeerDisconnectedError(`no ${what} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.once('end', onClose);
    socket.resume();
  });
}

/** Answers a hello with an error, then closes (the other side gets a moment to read the answer). */
export function refuse(socket: TLSSocket, error: ErrorBody): void {
  if (socket.destroyed) return;
  socket.on('error', () => {});
  try {
    socket.write(encodeFrame({ type: 'response', id: 0, ok: false, error }, HANDSHAKE_REPLY_MAX_BYTES));
  } catch {
    // nothing more to say
  }
  socket.end();
  setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
}

/** Sends an error frame (for something that was not a request) and closes. */
export function refuseWithErrorFrame(socket: TLSSocket, error: ErrorBody): void {
  if (socket.destroyed) return;
  socket.on('error', () => {});
  try {
    socket.write(encodeFrame({ type: 'error', error }, HANDSHAKE_REPLY_MAX_BYTES));
  } catch {
    // nothing more to say
  }
  socket.end();
  setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
}

/**
 * After a stream's hello was answered, the connection carries raw bytes: it becomes half-open (one
 * side's EOF must not end the other direction) and bytes read past the reply go back into the socket.
 */
export function handOverRemainder(socket: TLSSocket, decoder: FrameDecoder): void {
  socket.allowHalfOpen = true;
  const rest = decoder.takeRemainder();
  if (rest.length > 0) socket.unshift(Buffer.from(rest.buffer, rest.byteOffset, rest.byteLength));
}
