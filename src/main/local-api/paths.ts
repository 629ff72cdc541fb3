// Where an edge agent and its clients (the CLI, the Electron shell, tests) meet: the data directory
// and the local API's socket inside it. The shell may import this (see eslint.config.js).
import { homedir } from 'node:os';
import { join } from 'node:path';

/** $SNOWBIRD_DATA, else $XDG_DATA_HOME/snowbird, else ~/.local/share/snowbird. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env['SNOWBIRD_DATA'];
  if (fromEnv) return fromEnv;
  const xdg = env['XDG_DATA_HOME'];
  return join(xdg && xdg.length > 0 ? xdg : join(homedir(), '.local', 'share'), 'snowbird');
}

/** The agent's local API socket (node-ipc) in its data directory. */
export function localApiSocket(dataDir: string): string {
  return join(dataDir, 'run', 'agent.sock');
}
