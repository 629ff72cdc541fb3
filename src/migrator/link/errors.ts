// Typed errors of the peer link. Every message says what happened and, where the user can act, what to do.

/** The peer's address could not be reached (refused, unknown host, timeout, TLS handshake failure). */
export class PeerConnectError extends Error {
  override readonly name = 'PeerConnectError';
  readonly host: string;
  readonly port: number;

  constructor(host: string, port: number, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.host = host;
    this.port = port;
  }
}

/** The server presented a certificate other than the one pinned (or expected) for it. */
export class PeerFingerprintError extends Error {
  override readonly name = 'PeerFingerprintError';
  readonly expected: string;
  readonly actual: string;
  readonly address: string;

  constructor(address: string, expected: string, actual: string, message?: string) {
    super(
      message ??
        `the site at ${address} presented certificate ${actual}, but this site pinned ${expected}. ` +
          `Either the core was reinstalled (its certificate changed) or something is intercepting the connection. ` +
          `If the change is expected, pair again: run \`snowbird pair https://${address} --token T\` with a new token from the core.`,
    );
    this.address = address;
    this.expected = expected;
    this.actual = actual;
  }
}

export type PeerAuthCode = 'unauthorized' | 'not-paired' | 'bad-token';

/** The peer refused our credential, certificate or pairing token; the message says what to do. */
export class PeerAuthError extends Error {
  override readonly name = 'PeerAuthError';
  readonly code: PeerAuthCode;

  constructor(code: PeerAuthCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** A request failed at the peer (or timed out here). `code` is the peer's error code. */
export class PeerRequestError extends Error {
  override readonly name = 'PeerRequestError';
  readonly code: string;
  readonly method: string;

  constructor(code: string, method: string, message: string) {
    super(message);
    this.code = code;
    this.method = method;
  }
}

/** The link closed (or was already closed) while something was waiting on it. */
export class PeerDisconnectedError extends Error {
  override readonly name = 'PeerDisconnectedError';
  /** The pending request that was cut off, if any. */
  readonly method: string | undefined;

  constructor(message: string, method?: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.method = method;
  }
}

/** The peer broke the wire protocol (malformed or oversize frame, unexpected reply). */
export class PeerProtocolError extends Error {
  override readonly name = 'PeerProtocolError';
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** The site identity (certificate + key) is missing, incomplete or unreadable. */
export class SiteIdentityError extends Error {
  override readonly name = 'SiteIdentityError';
  readonly path: string;

  constructor(path: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.path = path;
  }
}

/** The pairing state file is corrupt or unreadable. */
export class TrustStoreError extends Error {
  override readonly name = 'TrustStoreError';
  readonly path: string;

  constructor(path: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.path = path;
  }
}

/**
 * Throw this from a handler to send a specific error code to the caller, where it is re-thrown as a
 * PeerRequestError with the same code and message. (Any error with a string `code` works the same way.)
 */
export class LinkError extends Error {
  override readonly name = 'LinkError';
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}
