// The shell's connection to the edge agent, through the local API client the CLI uses (node-ipc).
// When no agent answers, the shell starts one (detached: it hosts the VMs and outlives the window)
// and keeps retrying until it answers. node-ipc has no pushes, so the shell polls instead: the status
// about every second (faster while a VM moves) and each VM's new samples, handed on as the same
// UiPush objects the agent's WebSocket sends to a browser.
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { LocalApiClient, LocalCommandError } from '../src/main/local-api/client.ts';
import { defaultDataDir, localApiSocket } from '../src/main/local-api/paths.ts';
import type { AgentStatus, LocalCommand, LocalReplies, UiPush } from '../src/shared/local-api.ts';
import type { ConnectionState } from '../src/shared/app-bridge.ts';
import type { MigrationProgress } from '../src/shared/migration.ts';

/** The status is read this often; while a VM moves, often enough for the badge and tray to follow it. */
const POLL_MS = 1_000;
const POLL_WHILE_MOVING_MS = 250;
/** A poll unanswered this long means the agent is gone (node-ipc does not always tell). */
const POLL_TIMEOUT_MS = 10_000;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 5_000;
/** A page that starts listening first gets this much of each VM's past samples (as from the WebSocket). */
const SAMPLE_BACKFILL_MS = 5 * 60_000;

/** The data directory as the CLI picks it: `--data DIR` on the command line, else the default. */
export function dataDirFrom(argv: readonly string[], env: NodeJS.ProcessEnv): string {
  const { values } = parseArgs({ args: [...argv], options: { data: { type: 'string' } }, strict: false, allowPositionals: true });
  return resolve(typeof values.data === 'string' && values.data.length > 0 ? values.data : defaultDataDir(env));
}

class AgentTimeoutError extends Error {
  constructor(what: string) {
    super(`the edge agent did not answer "${what}" within ${POLL_TIMEOUT_MS / 1000} s`);
    this.name = 'AgentTimeoutError';
  }
}

const connectionLost = (error: unknown): boolean =>
  error instanceof AgentTimeoutError || (error instanceof LocalCommandError && error.code === 'disconnected');

export interface AgentConnectionOptions {
  dataDir: string;
  /** The snowbird CLI (bin/snowbird), to start an edge agent when none answers. */
  cli: string;
  onConnection(state: ConnectionState, detail?: string): void;
  onPush(push: UiPush): void;
  log(line: string): void;
}

export class AgentConnection {
  readonly #options: AgentConnectionOptions;
  readonly #socket: string;
  readonly #agentLog: string;
  #client: LocalApiClient | undefined;
  #state: ConnectionState = 'connecting';
  #detail: string | undefined;
  #status: AgentStatus | undefined;
  #statusText = '';
  /** Per VM: the time of the last sample handed on. */
  readonly #cursors = new Map<string, number>();
  #resendSamples = false;
  /** The rejects of requests under way, failed when the connection is lost. */
  readonly #inFlight = new Set<(error: Error) => void>();
  /** The agent this shell started: `starting` until a connection opens, then `serving` until it ends. */
  #startedAgent: 'none' | 'starting' | 'serving' = 'none';
  /** Why the agent this shell started stopped before it ever answered: it is not started again. */
  #startFailure: string | undefined;
  #stopped = false;
  #wake: (() => void) | undefined;

  constructor(options: AgentConnectionOptions) {
    this.#options = options;
    this.#socket = localApiSocket(options.dataDir);
    this.#agentLog = join(options.dataDir, 'agent.log');
  }

  get connection(): { state: ConnectionState; detail?: string } {
    return { state: this.#state, ...(this.#detail === undefined ? {} : { detail: this.#detail }) };
  }

  /** The agent's latest status (undefined before the first answer). */
  get status(): AgentStatus | undefined {
    return this.#status;
  }

  start(): void {
    void this.#run();
  }

  stop(): void {
    this.#stopped = true;
    this.#wake?.();
    this.#drop(new LocalCommandError('disconnected', 'the app is closing'));
  }

  /** The next poll hands on the last minutes of every VM's samples again (a page just started listening). */
  resendSamples(): void {
    this.#resendSamples = true;
  }

  /** One command to the agent; fails with code `disconnected` when there is no connection or it drops. */
  request<C extends LocalCommand>(command: C, onProgress?: (p: MigrationProgress) => void): Promise<LocalReplies[C['cmd']]> {
    const client = this.#client;
    if (client === undefined) return Promise.reject(new LocalCommandError('disconnected', 'not connected to the edge agent'));
    return new Promise((resolve, reject) => {
      this.#inFlight.add(reject);
      client.request(command, onProgress).then(resolve, reject).finally(() => this.#inFlight.delete(reject));
    });
  }

  async #run(): Promise<void> {
    let retryMs = RETRY_FIRST_MS;
    while (!this.#stopped) {
      let client: LocalApiClient;
      try {
        client = await LocalApiClient.connect(this.#socket);
      } catch {
        this.#setState('connecting', this.#startAgentIfNeeded());
        await this.#pause(retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
        continue;
      }
      if (this.#stopped) {
        client.close();
        return;
      }
      retryMs = RETRY_FIRST_MS;
      if (this.#startedAgent === 'starting') this.#startedAgent = 'serving';
      this.#client = client;
      // Each connection's first status is handed on, changed or not: the tray forgets it while disconnected.
      this.#statusText = '';
      this.#setState('open');
      const lost = await this.#pollUntilLost(client);
      this.#drop(new LocalCommandError('disconnected', 'the connection to the edge agent dropped (did it stop?)'));
      if (lost !== undefined) this.#setState('closed', `${lost}; reconnecting`);
    }
  }

  /** Polls the status and samples until the connection is lost (returns why) or the shell stops. */
  async #pollUntilLost(client: LocalApiClient): Promise<string | undefined> {
    while (!this.#stopped) {
      if (this.#resendSamples) {
        this.#resendSamples = false;
        this.#cursors.clear();
      }
      try {
        const status = await this.#timed(client.request({ cmd: 'status' }), 'status');
        this.#onStatus(status);
        for (const vm of status.vms) await this.#pollSamples(client, vm.name);
      } catch (error) {
        if (connectionLost(error)) return (error as Error).message;
        this.#options.log(`reading the agent's status: ${(error as Error).message}`);
      }
      await this.#pause(this.#status?.migrations.length ? POLL_WHILE_MOVING_MS : POLL_MS);
    }
    return undefined;
  }

  async #pollSamples(client: LocalApiClient, vm: string): Promise<void> {
    const after = this.#cursors.get(vm) ?? Date.now() - SAMPLE_BACKFILL_MS;
    let samples: LocalReplies['samples'];
    try {
      samples = await this.#timed(client.request({ cmd: 'samples', vm, after }), 'samples');
    } catch (error) {
      if (connectionLost(error)) throw error;
      this.#options.log(`reading the samples of ${vm}: ${(error as Error).message}`);
      return;
    }
    this.#cursors.set(vm, samples.at(-1)?.at ?? after);
    if (samples.length > 0) this.#options.onPush({ push: 'samples', vm, samples });
  }

  #onStatus(status: AgentStatus): void {
    this.#status = status;
    const text = JSON.stringify(status);
    if (text === this.#statusText) return;
    this.#statusText = text;
    this.#options.onPush({ push: 'status', status });
  }

  /**
   * Starts an edge agent (with its embedded core, as `snowbird agent` would be started by hand) unless
   * this shell's agent is still starting or already failed. Returns what the user should know.
   */
  #startAgentIfNeeded(): string {
    if (this.#startFailure !== undefined) {
      return `${this.#startFailure}; start one yourself: snowbird --data ${this.#options.dataDir} agent --role edge --embedded-core`;
    }
    if (this.#startedAgent !== 'none') return `starting the edge agent (its log: ${this.#agentLog})`;
    mkdirSync(this.#options.dataDir, { recursive: true, mode: 0o700 });
    const log = openSync(this.#agentLog, 'a', 0o600);
    try {
      const child = spawn(this.#options.cli, ['--data', this.#options.dataDir, 'agent', '--role', 'edge', '--embedded-core'], {
        detached: true,
        stdio: ['ignore', log, log],
      });
      this.#startedAgent = 'starting';
      this.#options.log(`started an edge agent (pid ${child.pid ?? '?'}); its log: ${this.#agentLog}`);
      const ended = (why: string): void => {
        // An agent that served and then stopped may be started again; one that never answered would fail again.
        if (this.#startedAgent === 'starting') this.#startFailure = `the edge agent the app started ${why} (see ${this.#agentLog})`;
        this.#startedAgent = 'none';
        this.#options.log(`the edge agent the app started ${why}`);
      };
      child.once('error', (error) => ended(`could not run: ${error.message}`));
      child.once('exit', (code, signal) => ended(signal === null ? `exited with code ${code ?? '?'}` : `was stopped by ${signal}`));
      child.unref();
    } finally {
      closeSync(log);
    }
    return `starting the edge agent (its log: ${this.#agentLog})`;
  }

  #setState(state: ConnectionState, detail?: string): void {
    if (state === this.#state && detail === this.#detail) return;
    this.#state = state;
    this.#detail = detail;
    this.#options.onConnection(state, detail);
  }

  /** Closes the client and fails the requests under way on it. */
  #drop(error: Error): void {
    this.#client?.close();
    this.#client = undefined;
    for (const reject of this.#inFlight) reject(error);
    this.#inFlight.clear();
  }

  #timed<T>(request: Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new AgentTimeoutError(what)), POLL_TIMEOUT_MS);
    });
    return Promise.race([request, timeout]).finally(() => clearTimeout(timer));
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }
}
