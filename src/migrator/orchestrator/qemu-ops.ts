// QMP steps the source and the destination share, and a watcher that folds a QEMU's events into
// state the orchestrator waits on.
import type { QmpClient } from '../qmp/client.ts';
import type { QmpEvent } from '../qmp/common/types.ts';
import { QmpError } from '../qmp/errors.ts';

export interface DiskRoot {
  /** The node the guest's disk device is attached to (the top of the chain). */
  node: string;
  virtualSize: number;
  /** How many backing images are below it. */
  backingDepth: number;
}

interface QueryBlockEntry {
  device: string;
  qdev?: string;
  inserted?: { 'node-name': string; backing_file_depth: number; image: { 'virtual-size': number } };
}

/** The disk device's root node (device id `vd0` in common/spec.ts). */
export async function diskRoot(qmp: QmpClient): Promise<DiskRoot> {
  const blocks = (await qmp.executeRaw('query-block')) as QueryBlockEntry[];
  const entry = blocks.find((b) => b.inserted && b.qdev?.includes('/vd0')) ?? blocks.find((b) => b.inserted);
  if (entry?.inserted === undefined) throw new Error('QEMU reports no disk attached to the VM');
  return { node: entry.inserted['node-name'], virtualSize: entry.inserted.image['virtual-size'], backingDepth: entry.inserted.backing_file_depth };
}

export async function setCapabilities(qmp: QmpClient, caps: Record<string, boolean>): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
  });
}

export class WaitTimeoutError extends Error {
  override readonly name = 'WaitTimeoutError';
}

export class QemuGoneError extends Error {
  override readonly name = 'QemuGoneError';
}

export interface JobState {
  status: string;
  offset: number;
  len: number;
  ready: boolean;
  /** Set when the job ended (completed or cancelled). */
  ended?: { error: string | undefined; cancelled: boolean };
}

export interface UntilOptions {
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** Re-check at least this often (ms); `poll` runs before each timed re-check. Default 100. */
  pollMs?: number;
  poll?: () => Promise<void>;
}

/** Keeps the latest migration status, block job states and run-state changes of one QEMU. */
export class QemuWatch {
  readonly qmp: QmpClient;
  migrationStatus: string | undefined;
  /** QEMU's wall-clock timestamp (ms) and our local performance.now() of the last STOP / RESUME. */
  lastStop: { qemuMs: number; localMs: number } | undefined;
  lastResume: { qemuMs: number; localMs: number } | undefined;
  readonly jobs = new Map<string, JobState>();
  closed = false;
  readonly #wakers = new Set<() => void>();
  readonly #onEvent = (event: QmpEvent): void => this.#handle(event);
  readonly #onClose = (): void => {
    this.closed = true;
    this.#wake();
  };

  constructor(qmp: QmpClient) {
    this.qmp = qmp;
    this.closed = qmp.closed;
    qmp.on('event', this.#onEvent);
    qmp.on('close', this.#onClose);
  }

  dispose(): void {
    this.qmp.off('event', this.#onEvent);
    this.qmp.off('close', this.#onClose);
    this.#wake();
  }

  #handle(event: QmpEvent): void {
    const data = event.data ?? {};
    const qemuMs = event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000;
    switch (event.event) {
      case 'MIGRATION':
        this.migrationStatus = String(data['status']);
        break;
      case 'STOP':
        this.lastStop = { qemuMs, localMs: performance.now() };
        break;
      case 'RESUME':
        this.lastResume = { qemuMs, localMs: performance.now() };
        break;
      case 'BLOCK_JOB_READY':
      case 'BLOCK_JOB_COMPLETED':
      case 'BLOCK_JOB_CANCELLED': {
        const id = String(data['device']);
        const job: JobState = this.jobs.get(id) ?? { status: 'running', offset: 0, len: 0, ready: false };
        job.offset = Number(data['offset'] ?? job.offset);
        job.len = Number(data['len'] ?? job.len);
        if (event.event === 'BLOCK_JOB_READY') {
          job.ready = true;
          job.status = 'ready';
        } else {
          const error = data['error'];
          job.ended = { error: typeof error === 'string' ? error : undefined, cancelled: event.event === 'BLOCK_JOB_CANCELLED' };
          job.status = 'concluded';
        }
        this.jobs.set(id, job);
        break;
      }
      default:
        break;
    }
    this.#wake();
  }

  /** Refreshes job offsets from query-block-jobs (jobs that vanished keep their last state). */
  async pollJobs(): Promise<void> {
    for (const info of await this.qmp.execute('query-block-jobs')) {
      const job: JobState = this.jobs.get(info.device) ?? { status: info.status, offset: 0, len: 0, ready: false };
      job.status = info.status;
      job.offset = info.offset;
      job.len = info.len;
      job.ready = job.ready || info.ready;
      this.jobs.set(info.device, job);
    }
  }

  #wake(): void {
    for (const w of [...this.#wakers]) w();
  }

  /**
   * Resolves with check()'s first defined value, re-evaluated on every event and every pollMs
   * (after running `poll`). Rejects with WaitTimeoutError, QemuGoneError (QMP closed), the
   * signal's reason, or whatever check/poll throws.
   */
  until<T>(what: string, check: () => T | undefined, options: UntilOptions): Promise<T> {
    const { promise, resolve, reject } = Promise.withResolvers<T>();
    let settled = false;
    let polling = false;
    const finish = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timeout);
      clearInterval(ticker);
      this.#wakers.delete(evaluate);
      options.signal?.removeEventListener('abort', onAbort);
      fn();
    };
    const evaluate = (): void => {
      if (settled) return;
      try {
        const value = check();
        if (value !== undefined) return finish(() => resolve(value));
      } catch (error) {
        return finish(() => reject(error));
      }
      if (this.closed) finish(() => reject(new QemuGoneError(`QEMU's QMP connection closed while waiting for ${what}: QEMU exited`)));
    };
    const tick = async (): Promise<void> => {
      if (polling || settled) return;
      polling = true;
      try {
        if (options.poll && !this.closed) await options.poll();
      } catch (error) {
        if (!this.closed) finish(() => reject(error));
      } finally {
        polling = false;
      }
      evaluate();
    };
    const onAbort = (): void => finish(() => reject(options.signal?.reason));
    const timeout = setTimeout(() => finish(() => reject(new WaitTimeoutError(`${what} did not happen within ${Math.round(options.timeoutMs / 1000)} s`))), options.timeoutMs);
    const ticker = setInterval(() => void tick(), options.pollMs ?? 100);
    if (options.signal?.aborted) {
      finish(() => reject(options.signal?.reason));
      return promise;
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    this.#wakers.add(evaluate);
    evaluate();
    if (!settled && options.poll) void tick();
    return promise;
  }
}

/** Retries a command QEMU refuses while a client still holds the resource (block-export-del). */
export async function retryWhileBusy(what: () => Promise<unknown>, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      await what();
      return;
    } catch (error) {
      if (!(error instanceof QmpError) || performance.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Migration states in which QEMU is still sending (or may resume sending) memory. */
export const RUNNING_MIGRATION = new Set(['setup', 'active', 'pre-switchover', 'device', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'wait-unplug', 'cancelling']);

/**
 * Stops an outgoing move's streams on the source QEMU before the guest may run on alone: the disk
 * mirror and its NBD client, then the memory stream. It takes the path every switchover takes
 * (hundreds of times in the tests without a fault): the guest paused, the mirror ended with a plain
 * `block-job-cancel` (a ready mirror then stops without pivoting; one still copying stops at once),
 * its end *event* awaited before the NBD client is removed. A forced cancel, polled until the job
 * left `query-block-jobs`, with the guest writing, is what the first rollback did, and QEMU 7.2
 * under TCG segfaulted (in malloc, off the main thread) about once in twenty such rollbacks. Force is
 * kept for a mirror that does not end by itself (a target that stopped answering). The guest runs
 * again at the end if it ran before. Returns what failed, for the user; never throws.
 */
export async function stopOutgoingStreams(watch: QemuWatch, streams: { mirrorJob: string | undefined; nbdNode: string | undefined; migration: boolean }): Promise<string[]> {
  const { qmp } = watch;
  const notes: string[] = [];
  const note = (what: string) => (e: unknown): void => void notes.push(`${what}: ${(e as Error).message}`);
  const { mirrorJob, nbdNode } = streams;
  let paused = false;
  if ((await qmp.execute('query-status').catch(() => undefined))?.status === 'running') {
    await qmp.execute('stop').then(() => (paused = true), note('pausing the guest'));
  }
  if (mirrorJob !== undefined && (await qmp.execute('query-block-jobs').catch(() => [])).some((j) => j.device === mirrorJob)) {
    const ended = (timeoutMs: number): Promise<boolean> =>
      watch.until('the disk mirror to stop', () => (watch.jobs.get(mirrorJob)?.ended ? true : undefined), { timeoutMs }).catch(() => false);
    // A job that ended between the query and the cancel: its event is in (or on its way to) the watch.
    await qmp.execute('block-job-cancel', { device: mirrorJob }).catch(() => undefined);
    let stopped = await ended(10_000);
    if (!stopped && !watch.closed) {
      await qmp.execute('block-job-cancel', { device: mirrorJob, force: true }).catch(() => undefined);
      stopped = await ended(20_000);
    }
    if (!stopped) notes.push(watch.closed ? 'QEMU exited while its disk mirror was stopping' : 'the disk mirror did not stop within 30 s');
  }
  if (nbdNode !== undefined) {
    await qmp.execute('blockdev-del', { 'node-name': nbdNode }).catch((e: unknown) => {
      // Not there: it was never added (a recovery after a restart does not know) or is gone already.
      if (!/Failed to find node/.test((e as Error).message)) note('removing the NBD client')(e);
    });
  }
  const status = streams.migration ? (await qmp.execute('query-migrate').catch(() => ({ status: undefined }))).status : undefined;
  if (status !== undefined && RUNNING_MIGRATION.has(status)) {
    await qmp.execute('migrate_cancel').catch(note('migrate_cancel'));
    let stopped = false;
    await watch
      .until('the migration to stop', () => (stopped ? true : undefined), {
        timeoutMs: 10_000,
        pollMs: 50,
        poll: async () => {
          const s = (await qmp.execute('query-migrate')).status;
          stopped = s === undefined || !RUNNING_MIGRATION.has(s) || s === 'postcopy-paused';
        },
      })
      .catch(note('waiting for the migration to stop'));
  }
  if (paused) await qmp.execute('cont').catch(note('resuming the guest'));
  return notes;
}
