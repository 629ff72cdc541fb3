// The edge agent's settings file: loaded at start (a missing or empty file is no settings, not an
// error), watched with chokidar, and validated on every change. A valid change applies live through
// `onChange`; an invalid one (bad JSON, a schema error) keeps the last good settings in force and is
// recorded with where it went wrong (path:line:column, or the field), until the file is fixed.
// `update` is how the CLI and the app change a setting: validated first, then written atomically.
import { watch, type FSWatcher } from 'chokidar';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  CONFIG_FILE_NAME,
  describeFields,
  mergePatch,
  parseConfigFile,
  type ConfigFile,
  type ConfigPatch,
  type ConfigProblem,
  type ConfigReply,
  type PairedCore,
} from '../shared/config.ts';
import { LocalApiError } from './local-api/server.ts';

/** Overrides the settings file's path (as `--config` does). */
export const CONFIG_ENV = 'SNOWBIRD_CONFIG';

/** $SNOWBIRD_CONFIG, else $XDG_CONFIG_HOME/snowbird/config.json, else ~/.config/snowbird/config.json. */
export function defaultConfigPath(): string {
  const fromEnv = process.env[CONFIG_ENV];
  if (fromEnv) return fromEnv;
  const xdg = process.env['XDG_CONFIG_HOME'];
  return join(xdg && xdg.length > 0 ? xdg : join(homedir(), '.config'), 'snowbird', CONFIG_FILE_NAME);
}

/** The settings file, or a change to it, is invalid; `fields` says what is wrong per setting. */
export class ConfigError extends LocalApiError {
  readonly fields: Record<string, string> | undefined;

  constructor(message: string, fields?: Record<string, string>) {
    super('invalid-config', message);
    this.name = 'ConfigError';
    this.fields = fields;
  }

  get problem(): ConfigProblem {
    return { message: this.message, ...(this.fields ? { fields: this.fields } : {}) };
  }
}

/**
 * Where JSON.parse gave up, as line and column (1-based). V8 names the position for most errors but
 * not for an unexpected token; then the longest prefix that is still the start of a valid document
 * ends where the error is.
 */
export function locateJsonError(text: string, error: Error): { line: number; column: number } {
  const stated = /\(line (\d+) column (\d+)\)/.exec(error.message);
  if (stated) return { line: Number(stated[1]), column: Number(stated[2]) };
  const viablePrefix = (length: number): boolean => {
    try {
      JSON.parse(text.slice(0, length));
      return true;
    } catch (e) {
      const message = (e as Error).message;
      const at = /at position (\d+)/.exec(message);
      return message.includes('Unexpected end of JSON input') || (at !== null && Number(at[1]) >= length);
    }
  };
  // The whole text a valid start (it ends too soon): the error is at its end.
  let good = viablePrefix(text.length) ? text.length : 0;
  let bad = text.length;
  while (bad - good > 1) {
    const middle = Math.floor((good + bad) / 2);
    if (viablePrefix(middle)) good = middle;
    else bad = middle;
  }
  const before = text.slice(0, Math.min(good, text.length));
  const lines = before.split('\n');
  return { line: lines.length, column: (lines.at(-1)?.length ?? 0) + 1 };
}

/** "Unexpected token '}', "…" is not valid JSON" → "Unexpected token '}'": the location is given apart. */
function jsonMessage(error: Error): string {
  return error.message.replace(/, .*is not valid JSON$/s, '').replace(/ in JSON at position \d+.*$/s, '');
}

/** Reads and validates the file as it is on disk now. */
export async function readConfigFile(path: string): Promise<{ config: ConfigFile } | { error: ConfigError }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { config: {} };
    return { error: new ConfigError(`${path}: cannot read it (${code ?? (error as Error).message}); check its permissions`) };
  }
  // An empty file is no settings (and what a non-atomic save shows for a moment).
  if (text.trim().length === 0) return { config: {} };
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    const { line, column } = locateJsonError(text, error as Error);
    return { error: new ConfigError(`${path}:${line}:${column}: not valid JSON: ${jsonMessage(error as Error)}`) };
  }
  const parsed = parseConfigFile(data);
  if (!parsed.ok) return { error: new ConfigError(`${path}: ${describeFields(parsed.fields)}`, parsed.fields) };
  return { config: parsed.config };
}

/** Writes through a temporary file and a rename: a reader (the watcher, an editor) never sees half a file. */
async function writeConfigFile(path: string, config: ConfigFile, attempt: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const temporary = `${path}.${process.pid}-${attempt}.tmp`;
  try {
    await writeFile(temporary, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw new LocalApiError('config-unwritable', `cannot write ${path}: ${(error as Error).message}`);
  }
}

export type ConfigUpdate = { ok: true; config: ConfigFile } | { ok: false; error: ConfigError };

export interface ConfigChange {
  /** The settings in force: the file's, or the last good ones while it is invalid. */
  config: ConfigFile;
  error: ConfigError | undefined;
}

export interface ConfigServiceOptions {
  path: string;
  log?: (line: string) => void;
  /** Follow the file's changes (the agent); false reads it once (the CLI when no agent runs). */
  watch?: boolean;
  /** Changes closer together than this are read once (an editor's save is several events). Default 100 ms. */
  debounceMs?: number;
}

export class ConfigService {
  readonly path: string;
  readonly #log: (line: string) => void;
  readonly #debounceMs: number;
  readonly #listeners = new Set<(change: ConfigChange) => void>();
  #config: ConfigFile = {};
  #error: ConfigError | undefined;
  /** What listeners last heard, to tell them only of real changes (our own writes come back as events). */
  #lastNotified = '';
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  /** Reads and updates, one at a time: an update must not interleave with a reload. */
  #queue: Promise<unknown> = Promise.resolve();
  #writes = 0;

  private constructor(options: ConfigServiceOptions) {
    this.path = options.path;
    this.#log = options.log ?? (() => {});
    this.#debounceMs = options.debounceMs ?? 100;
  }

  static async open(options: ConfigServiceOptions): Promise<ConfigService> {
    const service = new ConfigService(options);
    if (options.watch ?? true) {
      // A missing file (or directory) is watched through its nearest existing parent; an editor's
      // replace-by-rename is an unlink and an add, which the debounce folds into one read.
      // Not persistent: the agent's servers keep it alive; an agent that fails to start must still exit.
      const watcher = watch(options.path, { ignoreInitial: true, persistent: false });
      service.#watcher = watcher;
      watcher.on('all', () => service.#scheduleReload());
      watcher.on('error', (error) => service.#log(`config: watching ${options.path}: ${(error as Error).message}`));
      await new Promise<void>((resolve) => watcher.once('ready', resolve));
    }
    // Read after the watcher is ready, so no change falls between the two.
    await service.#enqueue(() => service.#reload());
    return service;
  }

  /** The settings in force. */
  current(): ConfigFile {
    return this.#config;
  }

  /** Why the file on disk is invalid (the settings in force are the last good ones), if it is. */
  error(): ConfigError | undefined {
    return this.#error;
  }

  /** The local API's reply: the file, the settings in force with the paired core, and the error if any. */
  reply(core?: PairedCore): ConfigReply {
    return {
      path: this.path,
      config: { ...this.#config, ...(core ? { core } : {}) },
      ...(this.#error ? { error: this.#error.problem } : {}),
    };
  }

  /**
   * Applies a merge patch to the file as it is on disk now (an edit not yet seen by the watcher is
   * kept), validates the result and writes it atomically. Invalid input writes nothing and returns the
   * field errors; an invalid file on disk is refused rather than overwritten (it may be half an edit).
   */
  update(patch: ConfigPatch): Promise<ConfigUpdate> {
    return this.#enqueue(async () => {
      const onDisk = await readConfigFile(this.path);
      if ('error' in onDisk) {
        this.#set(this.#config, onDisk.error);
        return { ok: false, error: new ConfigError(`${onDisk.error.message} — fix the file (or remove it) before changing settings here`, onDisk.error.fields) };
      }
      const parsed = parseConfigFile(mergePatch(onDisk.config, patch));
      if (!parsed.ok) return { ok: false, error: new ConfigError(`invalid settings: ${describeFields(parsed.fields)}`, parsed.fields) };
      await writeConfigFile(this.path, parsed.config, ++this.#writes);
      this.#set(parsed.config, undefined);
      return { ok: true, config: parsed.config };
    });
  }

  /** Called on every change of the settings in force or of the error; returns the unsubscribe. */
  onChange(listener: (change: ConfigChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async close(): Promise<void> {
    clearTimeout(this.#debounce);
    this.#debounce = undefined;
    await this.#watcher?.close();
    this.#watcher = undefined;
    await this.#queue;
    this.#listeners.clear();
  }

  #scheduleReload(): void {
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined;
      void this.#enqueue(() => this.#reload());
    }, this.#debounceMs);
  }

  #enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #reload(): Promise<void> {
    const result = await readConfigFile(this.path);
    if ('error' in result) {
      if (result.error.message !== this.#error?.message) this.#log(`config: ${result.error.message}; the last good settings stay in force`);
      this.#set(this.#config, result.error);
    } else if (this.#set(result.config, undefined)) {
      this.#log(`config: applied the settings in ${this.path}`);
    }
  }

  /** True when listeners were told (something changed since they last heard). */
  #set(config: ConfigFile, error: ConfigError | undefined): boolean {
    this.#config = config;
    this.#error = error;
    const fingerprint = JSON.stringify([config, error?.problem]);
    if (fingerprint === this.#lastNotified) return false;
    const first = this.#lastNotified === '';
    this.#lastNotified = fingerprint;
    if (first) return false; // the initial read is what open() returns with, not a change
    for (const listener of this.#listeners) {
      try {
        listener({ config, error });
      } catch (e) {
        this.#log(`config: a listener failed: ${(e as Error).message}`);
      }
    }
    return true;
  }
}
