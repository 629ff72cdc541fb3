// The dedup transport on the link, for QEMU's migration stream.
//
//   source:      QEMU ──unix──▶ dedupBridgeListener: DedupSender.input … DedupSender.wire ⇄ link.openStream(target)
//   destination: link stream (exposeHandler(target, dedupStreamHandler(…))) ⇄ DedupReceiver.wire … output ──unix──▶ QEMU
//
// Only the source's bytes towards the destination are deduplicated. With `returnPath` (both ends must
// say so), the destination's writes to its unix socket come back plainly (DedupReceiver.input …
// DedupSender.output ──unix──▶ QEMU): QEMU's return path, which post-copy needs for its page requests.
// Without it, the destination's socket is never read.
//
// Failure: any end failing ends the others. A DedupError on either side destroys the source's local
// connection, so QEMU's `migrate` fails at once and the caller rolls back; the destination's QEMU
// sees its incoming stream cut. `fault` says whether it was the transport's own failure (then sending
// the same bytes plainly is the remedy) rather than a cut link or a QEMU that went away.
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { PeerLink } from '../link/peer-link.ts';
import { connectUnix, listenUnix, splice } from '../link/streams.ts';
import { DedupReceiver, type DedupReceiverOptions, type DedupReceiverStats } from './decoder.ts';
import { DedupSender, emptySenderStats, type DedupSenderOptions, type DedupSenderStats } from './encoder.ts';
import { DedupAbortedError, DedupError, DedupProtocolError } from './errors.ts';
import type { ChunkStore } from './store.ts';

/**
 * Whether a failure is the dedup transport's own (a protocol or integrity failure, a need it could not
 * answer) rather than the stream being cut or one of the local ends going away, which would have failed
 * a plain stream as well.
 */
export function isDedupFault(error: unknown): error is DedupError {
  if (!(error instanceof DedupError)) return false;
  if (error instanceof DedupAbortedError && error.code === 'cancelled') return false;
  if (error instanceof DedupProtocolError && error.code === 'truncated') return false;
  return true;
}

export interface DedupBridgeStats {
  /** Local connections accepted. */
  connections: number;
  /** Of those, still open. */
  active: number;
  /** Raw bytes read from the local clients (what QEMU sent). */
  rawBytes: number;
  /** Bytes on the link stream, to the peer (frames) and from it (inventory, acks, needs). */
  wireOut: number;
  wireIn: number;
  /** The senders' figures, summed over connections (finished or failed ones included). */
  sender: DedupSenderStats;
  /** The first failure of the dedup transport itself (see isDedupFault), if any. */
  fault: DedupError | undefined;
  /** The last error of any kind (a stream that could not be opened, a cut, a fault). */
  lastError: Error | undefined;
}

export interface DedupBridge {
  readonly path: string;
  /** A snapshot. */
  readonly stats: DedupBridgeStats;
  /** Stops accepting, aborts the transfers under way, removes the socket file. */
  close(): Promise<void>;
}

export interface DedupBridgeOptions {
  /** This site's chunk store for the stream's VM (opened when the first connection comes); none: no store. */
  store?: () => Promise<ChunkStore | undefined>;
  /** Sender tuning (window, zstd level); `store` comes from the option above. */
  sender?: Omit<DedupSenderOptions, 'store'>;
  /** Called for each connection that failed, after its local end was closed. */
  onError?: (error: Error) => void;
  /** Carry the destination's bytes back to the local client (the handler must say so too). Default false. */
  returnPath?: boolean;
}


/**
 * A unix socket at `path` (mode 0600) whose every accepted connection is sent through a DedupSender
 * on a fresh `link.openStream(targetId)`; the peer must serve the target with dedupStreamHandler. The
 * counterpart of bridgeListener (streams.ts) for one-way streams.
 */
export async function dedupBridgeListener(link: PeerLink, path: string, targetId: string, options: DedupBridgeOptions = {}): Promise<DedupBridge> {
  const open = new Map<Socket, DedupSender | undefined>();
  const totals = { connections: 0, rawBytes: 0, wireOut: 0, wireIn: 0, sender: emptySenderStats() };
  let fault: DedupError | undefined;
  let lastError: Error | undefined;
  let closing: Promise<void> | undefined;

  const failed = (local: Socket, error: Error): void => {
    lastError = error;
    if (fault === undefined && isDedupFault(error)) fault = error;
    local.destroy();
    options.onError?.(error);
  };

  const serve = async (local: Socket): Promise<void> => {
    let stream: Duplex;
    let store: ChunkStore | undefined;
    try {
      store = await options.store?.();
      stream = await link.openStream(targetId);
    } catch (error) {
      failed(local, error instanceof Error ? error : new Error(String(error)));
      return;
    }
    stream.on('error', () => {});
    if (local.destroyed || closing !== undefined) {
      stream.destroy();
      local.destroy();
      return;
    }
    const returnPath = options.returnPath ?? false;
    const sender = new DedupSender({ ...options.sender, returnPath, ...(store === undefined ? {} : { store }) });
    open.set(local, sender);
    sender.input.on('error', () => {});
    sender.output.on('error', () => {});
    sender.wire.on('error', () => {});
    splice(sender.wire, stream, {
      label: `dedup stream ${targetId}`,
      aToB: (n) => (totals.wireOut += n),
      bToA: (n) => (totals.wireIn += n),
    });
    // QEMU's EOF ends the input (the sender then sends its end and waits for the receiver's); a local end
    // that goes away without EOF (QEMU killed) is a cancel, which the receiver hears.
    local.pipe(sender.input);
    // The return path's end ends our side of the local connection.
    if (returnPath) sender.output.pipe(local);
    local.once('close', () => {
      if (!local.readableEnded) sender.abort(new DedupAbortedError('cancelled', 'the local end of the stream closed before its end (QEMU stopped sending)', false));
    });
    sender.done.then(
      () => {
        // Every byte reached the other side (and the return path, if any, was delivered): close our end.
        local.end();
      },
      (error: unknown) => failed(local, error instanceof Error ? error : new Error(String(error))),
    );
  };

  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (local) => {
    totals.connections += 1;
    open.set(local, undefined);
    local.on('error', () => {});
    local.once('close', () => {
      const sender = open.get(local);
      open.delete(local);
      totals.rawBytes += local.bytesRead;
      if (sender !== undefined) addStats(totals.sender, sender.stats);
    });
    void serve(local);
  });
  await listenUnix(server, path);
  return {
    path,
    get stats(): DedupBridgeStats {
      let rawBytes = totals.rawBytes;
      const sender = { ...totals.sender };
      for (const [local, s] of open) {
        rawBytes += local.bytesRead;
        if (s !== undefined) addStats(sender, s.stats);
      }
      return { connections: totals.connections, active: open.size, rawBytes, wireOut: totals.wireOut, wireIn: totals.wireIn, sender, fault, lastError };
    },
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const [local, sender] of open) {
          sender?.abort(new DedupAbortedError('cancelled', 'the bridge was closed', false));
          local.destroy();
        }
      });
      return closing;
    },
  };
}

function addStats(into: DedupSenderStats, add: DedupSenderStats): void {
  for (const key of Object.keys(into) as (keyof DedupSenderStats)[]) into[key] += add[key];
}

export interface DedupStreamHandlerOptions {
  /** This site's chunk store for the stream's VM; none: no store (everything comes as literals). */
  store?: () => Promise<ChunkStore | undefined>;
  /** Receiver tuning (cache, read-ahead); `store` comes from the option above. */
  receiver?: Omit<DedupReceiverOptions, 'store'>;
  /** How each stream ended: the receiver's figures, or its error. */
  onDone?: (result: { stats: DedupReceiverStats } | { error: Error }) => void;
  /** Carry what QEMU writes to the socket back to the source (the bridge must say so too). Default false. */
  returnPath?: boolean;
}

/**
 * For `link.exposeHandler(target, …)`: each incoming stream goes into a DedupReceiver whose output is
 * written to a new connection to the unix socket at `unixPath` (QEMU's incoming migration socket).
 */
export function dedupStreamHandler(unixPath: string, options: DedupStreamHandlerOptions = {}): (stream: Duplex) => void {
  return (stream) => {
    stream.on('error', () => {});
    void (async () => {
      let unix: Socket;
      let store: ChunkStore | undefined;
      try {
        store = await options.store?.();
        unix = await connectUnix(unixPath);
      } catch (error) {
        stream.destroy();
        options.onDone?.({ error: error instanceof Error ? error : new Error(String(error)) });
        return;
      }
      if (stream.destroyed) {
        unix.destroy();
        options.onDone?.({ error: new DedupProtocolError('truncated', 'the stream closed before it was served') });
        return;
      }
      const returnPath = options.returnPath ?? false;
      const receiver = new DedupReceiver({ ...options.receiver, returnPath, ...(store === undefined ? {} : { store }) });
      receiver.wire.on('error', () => {});
      receiver.output.on('error', () => {});
      receiver.input.on('error', () => {});
      splice(receiver.wire, stream, { label: `dedup stream to ${unixPath}` });
      receiver.output.pipe(unix);
      let settled = false;
      const stopped = () => new DedupAbortedError('cancelled', 'the destination closed its socket before the end of the stream (QEMU stopped receiving)', false);
      if (returnPath) {
        // QEMU's return path: its end (QEMU closes the socket once it has read the stream's end, which may
        // be before the source closes its side) is the return path's end, not a failure.
        unix.pipe(receiver.input);
        unix.once('close', () => receiver.consumerClosed(unix.writableLength));
        unix.once('error', () => {
          if (!settled) receiver.abort(stopped());
        });
      } else {
        unix.once('close', () => {
          if (!settled) receiver.abort(stopped());
        });
      }
      receiver.done.then(
        (stats) => {
          settled = true;
          options.onDone?.({ stats });
        },
        (error: unknown) => {
          settled = true;
          unix.destroy();
          options.onDone?.({ error: error instanceof Error ? error : new Error(String(error)) });
        },
      );
    })();
  };
}
