// The agent's local API on a unix socket in an owner-only directory (node-ipc, guarded parser with a
// message size bound). Every request is validated against the command union before it reaches the
// agent; progress and the reply go back to the asking socket only.
import { IPCModule } from 'node-ipc';
import type { Socket } from 'node:net';
import { mkdir, chmod } from 'node:fs/promises';
import { dirname } from 'node:path';
import { parseLocalRequest, type LocalCommand, type LocalError, type LocalReplies } from '../../shared/local-api.ts';
import type { MigrationProgress } from '../../shared/migration.ts';

export const MAX_LOCAL_MESSAGE = 256 * 1024;

/** An error whose code and message go back to the caller as they are. */
export class LocalApiError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'LocalApiError';
    this.code = code;
  }
}

export type LocalHandler = <C extends LocalCommand>(command: C, progress: (p: MigrationProgress) => void) => Promise<LocalReplies[C['cmd']]>;

export class LocalApiServer {
  private readonly ipc = new IPCModule();

  private constructor() {}

  static async listen(socketPath: string, handle: LocalHandler): Promise<LocalApiServer> {
    const api = new LocalApiServer();
    const dir = dirname(socketPath);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    const { ipc } = api;
    Object.assign(ipc.config, {
      silent: true,
      parser: 'guarded',
      maxMessageSize: MAX_LOCAL_MESSAGE,
      socketRoot: `${dir}/`,
      appspace: '',
    });
    await new Promise<void>((resolve) => {
      ipc.serve(socketPath, () => {
        ipc.server.on('request', (data, socket) => void api.dispatch(data, socket, handle));
        resolve();
      });
      ipc.server.start();
    });
    await chmod(socketPath, 0o600);
    return api;
  }

  private async dispatch(data: unknown, socket: Socket, handle: LocalHandler): Promise<void> {
    const request = parseLocalRequest(data);
    const { id } = request;
    const reply = (payload: { ok: true; result: unknown } | { ok: false; error: LocalError }): void => this.ipc.server.emit(socket, 'response', { id, ...payload });
    if ('error' in request) {
      reply({ ok: false, error: request.error });
      return;
    }
    try {
      const result = await handle(request.command, (progress) => this.ipc.server.emit(socket, 'progress', { id, progress }));
      reply({ ok: true, result });
    } catch (error) {
      const err = error as Error & { code?: unknown };
      reply({ ok: false, error: { code: typeof err.code === 'string' ? err.code : err.name, message: err.message } });
    }
  }

  close(): void {
    this.ipc.server.stop();
  }
}
