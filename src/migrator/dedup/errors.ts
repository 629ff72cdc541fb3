// Typed errors of the dedup transport. Any of them ends the transfer; the caller can always retry the same
// bytes over a plain stream (DedupError.retryPlain), and must for DedupLiteralUnavailableError.
import type { AbortCode, ProtocolErrorCode } from './common/protocol.ts';

export class DedupError extends Error {
  override readonly name: string = 'DedupError';
  /** True when sending the same bytes without dedup is expected to work. */
  readonly retryPlain: boolean = true;
}

/**
 * The receiver needed a chunk that the sender can no longer supply (the sender dropped it, or the
 * receiver asked for a chunk it was never sent). Retry the transfer as a plain stream.
 */
export class DedupLiteralUnavailableError extends DedupError {
  override readonly name = 'DedupLiteralUnavailableError';
  /** Hex of the chunk's hash. */
  readonly hash: string;

  constructor(hash: string, message?: string) {
    super(message ?? `the dedup sender cannot supply chunk ${hash}, which the receiver does not hold; retry without dedup`);
    this.hash = hash;
  }
}

/** The peer broke the protocol (malformed frame, wrong version, bad literal, counts that do not add up). */
export class DedupProtocolError extends DedupError {
  override readonly name = 'DedupProtocolError';
  readonly code: ProtocolErrorCode | 'bad-literal' | 'bad-state' | 'window-exceeded' | 'count-mismatch' | 'truncated' | 'return-path-mismatch';

  constructor(code: DedupProtocolError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/** The peer aborted the transfer (its abort frame's code and message), or this side was cancelled. */
export class DedupAbortedError extends DedupError {
  override readonly name = 'DedupAbortedError';
  readonly code: AbortCode;
  readonly remote: boolean;

  constructor(code: AbortCode, message: string, remote: boolean) {
    super(message);
    this.code = code;
    this.remote = remote;
  }
}

/** The abort code that tells the peer about `error`. */
export function abortCodeOf(error: Error): AbortCode {
  if (error instanceof DedupLiteralUnavailableError) return 'literal-unavailable';
  if (error instanceof DedupProtocolError) return 'protocol';
  if (error instanceof DedupAbortedError) return error.code;
  return 'internal';
}

/** The error for an abort frame from the peer. */
export function remoteAbort(code: AbortCode, message: string): DedupError {
  if (code === 'literal-unavailable') return new DedupLiteralUnavailableError(/[0-9a-f]{32}/.exec(message)?.[0] ?? '', `the dedup sender aborted: ${message}`);
  return new DedupAbortedError(code, `the dedup peer aborted (${code}): ${message}`, true);
}

/** A bug of ours, as an error the peer is told about. */
export function internalError(error: unknown): Error {
  return new DedupAbortedError('internal', `dedup internal error: ${error instanceof Error ? error.message : String(error)}`, false);
}
