// Byte plumbing for link streams: splicing two duplexes together (counting bytes, carrying half-close,
// turning an error or an abrupt close on either side into the destruction of both), connecting to a
// local unix socket, and the bridge listener a local QEMU connects to.
import { lstat, chmod, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { clearTimeout, setTimeout } from 'node:timers';
import { PeerDisconnectedError } from './errors.ts';
import type { PeerLink } from './peer-link.ts';

export interface SpliceOptions {
  /** Bytes read from `a` and written to `b`. */
  aToB?: (bytes: number) => void;
  /** Bytes read from `b` and written to `a`. */
  bToA?: (bytes: number) => void;
  /** Called once if the splice ends in failure (after both sides were destroyed). */
  onError?: (error: Error) => void;
  /** Called once when both sides are closed, with the error if it failed. */
  onClose?: (error?: Error) => void;
  /** For error messages: what this splice carries. */
  label?: string;
}

/**
 * Joins `a` and `b`: bytes flow both ways with backpressure; EOF on one side half-closes the other
 * (`end()`), so a peer that finishes sending still gets its answer; an error, or a close without EOF,
 * on either side destroys both, so neither end waits on a dead one.
 */
export function splice(a: Duplex, b: Duplex, options: SpliceOptions = {}): void {
  const label = options.label ?? 'stream';
  let failed: Error | undefined;
  let open = 2;

  const fail = (error: Error) => {
    if (failed !== undefined) return;
    failed = error;
    a.destroy();
    b.destroy();
    options.onError?.(error);
  };

  const pump = (src: Duplex, dst: Duplex, count: ((n: number) => void) | undefined) => {
    let waiting = false;
    src.on('data', (chunk: Buffer) => {
      count?.(chunk.length);
      if (!dst.write(chunk) && !waiting) {
        waiting = true;
        src.pause();
        dst.once('drain', () => {
          waiting = false;
          src.resume();
        });
      }
    });
    src.on('end', () => {
      if (!dst.destroyed && !dst.writableEnded) dst.end();
    });
    src.on('error', (error: Error) => fail(error));
    src.on('close', () => {
      open -= 1;
      // Clean only if src both delivered its EOF and took everything dst had for it.
      if (failed === undefined && !(src.readableEnded && src.writableFinished)) {
        fail(
          new PeerDisconnectedError(
            src.readableEnded ? `${label}: one end closed before the other end's data reached it` : `${label} closed abruptly`,
          ),
        );
      }
      if (open === 0) options.onClose?.(failed);
    });
  };

  pump(a, b, options.aToB);
  pump(b, a, options.bToA);
  a.resume();
  b.resume();
}

/** Connects to a local unix socket (half-open allowed, so a stream can half-close through it). */
export function connectUnix(path: string, timeoutMs = 5_000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error(`no connection to ${path} within ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      // Until a splice owns it, an error only means it closes (which whoever holds it sees).
      socket.on('error', () => {});
      resolve(socket);
    });
  });
}

export interface BridgeStats {
  /** Local connections accepted. */
  connections: number;
  /** Of those, currently open. */
  active: number;
  /** Connections closed because no stream could be opened. */
  failed: number;
  /** Bytes from local clients, sent to the peer. */
  bytesOut: number;
  /** Bytes from the peer, delivered to local clients. */
  bytesIn: number;
  lastError: Error | undefined;
}

export interface BridgeListener {
  readonly path: string;
  /** A snapshot. */
  readonly stats: BridgeStats;
  /** Stops accepting, destroys open connections, removes the socket file. */
  close(): Promise<void>;
}

export interface BridgeOptions {
  /** Called for each connection that could not be bridged (it has been closed already). */
  onError?: (error: Error) => void;
  /**
   * Accept one connection, then stop listening (the socket file goes away). For QEMU's streams: a
   * migration is one connection each, and QEMU's NBD client reconnecting into a failed move must
   * fail at connect() rather than be bridged to a destination that is gone.
   */
  once?: boolean;
}

/**
 * A unix socket at `path` (mode 0600; put it in a private directory) whose every accepted connection is
 * joined to a fresh `link.openStream(targetId)`. This is what a local QEMU connects to (`migrate
 * unix:PATH`, an NBD client with `server.type=unix`). If the stream cannot be opened, the local
 * connection is closed at once so QEMU fails fast.
 */
export async function bridgeListener(link: PeerLink, path: string, targetId: string, options: BridgeOptions = {}): Promise<BridgeListener> {
  const sockets = new Set<Socket>();
  const totals = { connections: 0, failed: 0, bytesOut: 0, bytesIn: 0, lastError: undefined as Error | undefined };
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (local) => {
    if (options.once && server.listening) server.close();
    totals.connections += 1;
    sockets.add(local);
    local.on('error', () => {});
    local.once('close', () => {
      sockets.delete(local);
      totals.bytesOut += local.bytesRead;
      totals.bytesIn += local.bytesWritten;
    });
    link.attachStream(targetId, local).catch((error: unknown) => {
      const err = error instanceof Error ? error : new Error(String(error));
      totals.failed += 1;
      totals.lastError = err;
      local.destroy();
      options.onError?.(err);
    });
  });
  await listenUnix(server, path);
  let closing: Promise<void> | undefined;
  return {
    path,
    get stats(): BridgeStats {
      let bytesOut = totals.bytesOut;
      let bytesIn = totals.bytesIn;
      for (const s of sockets) {
        bytesOut += s.bytesRead;
        bytesIn += s.bytesWritten;
      }
      return { connections: totals.connections, active: sockets.size, failed: totals.failed, bytesOut, bytesIn, lastError: totals.lastError };
    },
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        if (server.listening) server.close(() => resolve());
        else if (sockets.size === 0) resolve();
        else server.once('close', () => resolve());
        for (const s of sockets) s.destroy();
      });
      return closing;
    },
  };
}

/** Listens on a unix socket path, replacing a stale socket file (one nobody accepts on). Mode 0600. */
export async function listenUnix(server: Server, path: string): Promise<void> {
  const attempt = () =>
    new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      server.once('error', onError);
      server.listen(path, () => {
        server.off('error', onError);
        resolve();
      });
    });
  try {
    await attempt();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || !(await isStaleSocket(path))) throw error;
    await unlink(path);
    await attempt();
  }
  await chmod(path, 0o600);
}

async function isStaleSocket(path: string): Promise<boolean> {
  const info = await lstat(path).catch(() => undefined);
  if (info === undefined || !info.isSocket()) return false;
  try {
    (await connectUnix(path, 1_000)).destroy();
    return false;
  } catch {
    return true;
  }
}
