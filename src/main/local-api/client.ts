// The CLI's end of the local API.
import { IPCModule } from 'node-ipc';
import { dirname } from 'node:path';
import { access } from 'node:fs/promises';
import { localProgressSchema, localResponseSchema, type LocalCommand, type LocalReplies } from '../../shared/local-api.ts';
import type { MigrationProgress } from '../../shared/migration.ts';
import { MAX_LOCAL_MESSAGE } from './server.ts';

export class LocalApiUnavailableError extends Error {
  constructor(socketPath: string) {
    super(`no snowbird agent is listening on ${socketPath}. Start one: snowbird agent --role edge --embedded-core`);
    this.name = 'LocalApiUnavailableError';
  }
}

export class LocalCommandError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'LocalCommandError';
    this.code = code;
  }
}

const SERVER_ID = 'agent';

export class LocalApiClient {
  private readonly ipc = new IPCModule();
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; progress?: (p: MigrationProgress) => void }>();

  private constructor() {}

  static async connect(socketPath: string, timeoutMs = 3000): Promise<LocalApiClient> {
    try {
      await access(socketPath);
    } catch {
      throw new LocalApiUnavailableError(socketPath);
    }
    const client = new LocalApiClient();
    const { ipc } = client;
    Object.assign(ipc.config, { silent: true, parser: 'guarded', maxMessageSize: MAX_LOCAL_MESSAGE, maxRetries: 0, socketRoot: `${dirname(socketPath)}/`, appspace: '' });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new LocalApiUnavailableError(socketPath)), timeoutMs);
      ipc.connectTo(SERVER_ID, socketPath, () => {
        const socket = ipc.of[SERVER_ID];
        if (!socket) return reject(new LocalApiUnavailableError(socketPath));
        socket.on('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        socket.on('error', () => {
          clearTimeout(timer);
          reject(new LocalApiUnavailableError(socketPath));
        });
        socket.on('disconnect', () => client.failAll(new LocalCommandError('disconnected', 'the agent closed the connection (did it stop?)')));
        socket.on('response', (data) => client.onResponse(data));
        socket.on('progress', (data) => client.onProgress(data));
      });
    });
    return client;
  }

  request<C extends LocalCommand>(command: C, onProgress?: (p: MigrationProgress) => void): Promise<LocalReplies[C['cmd']]> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...(onProgress ? { progress: onProgress } : {}) });
      this.ipc.of[SERVER_ID]?.emit('request', { id, command });
    });
  }

  close(): void {
    this.ipc.config.stopRetrying = true;
    this.ipc.disconnect(SERVER_ID);
  }

  private onResponse(data: unknown): void {
    const parsed = localResponseSchema.safeParse(data);
    if (!parsed.success) return;
    const entry = this.pending.get(parsed.data.id);
    if (!entry) return;
    this.pending.delete(parsed.data.id);
    if (parsed.data.ok) entry.resolve(parsed.data.result);
    else entry.reject(new LocalCommandError(parsed.data.error.code, parsed.data.error.message));
  }

  private onProgress(data: unknown): void {
    const parsed = localProgressSchema.safeParse(data);
    if (parsed.success) this.pending.get(parsed.data.id)?.progress?.(parsed.data.progress);
  }

  private failAll(error: Error): void {
    for (const entry of this.pending.values()) entry.reject(error);
    this.pending.clear();
  }
}
