// Opens the app for the user: the Electron shell when its binary is installed, otherwise the
// browser fallback (`chromium --app=URL`), otherwise just the URL to open by hand.
import { access, readFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { pathExists } from '../migrator/local-io.ts';

const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
/** What `npm run build:electron` (scripts/build-electron.ts) writes. */
export const ELECTRON_MAIN = join(REPO_ROOT, 'dist', 'electron', 'main.js');

async function executable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The Electron executable, if one is installed. Read from the `electron` package's path.txt (or
 * $ELECTRON_OVERRIDE_DIST_PATH) without requiring the package: requiring it starts a download of
 * the binary when it is missing, which a machine without network cannot do.
 */
export async function findElectronBinary(): Promise<string | undefined> {
  const packageDir = join(REPO_ROOT, 'node_modules', 'electron');
  const relative = (await readFile(join(packageDir, 'path.txt'), 'utf8').catch(() => undefined))?.trim();
  const override = process.env.ELECTRON_OVERRIDE_DIST_PATH;
  const candidate = override ? join(override, relative || 'electron') : relative ? join(packageDir, 'dist', relative) : undefined;
  return candidate !== undefined && (await executable(candidate)) ? candidate : undefined;
}

export async function findChromium(): Promise<string | undefined> {
  const candidates = ['/usr/bin/chromium', ...(process.env.PATH ?? '').split(':').filter(Boolean).map((dir) => join(dir, 'chromium'))];
  for (const candidate of candidates) if (await executable(candidate)) return candidate;
  return undefined;
}

function hasDisplay(): boolean {
  return Boolean(process.env.DISPLAY || process.env.WAYLAND_DISPLAY);
}

function detach(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): void {
  const child = spawn(command, args, { detached: true, stdio: 'ignore', env });
  child.on('error', () => undefined);
  child.unref();
}

export type OpenedIn = { by: 'electron'; binary: string } | { by: 'chromium'; binary: string } | { by: 'nothing'; why: string };

/** Opens the browser fallback: a Chromium app window on `url`, when there is one and a display. */
export async function openInBrowser(url: string): Promise<OpenedIn> {
  const chromium = await findChromium();
  if (chromium === undefined) return { by: 'nothing', why: 'no chromium found' };
  if (!hasDisplay()) return { by: 'nothing', why: 'no $DISPLAY or $WAYLAND_DISPLAY' };
  detach(chromium, [`--app=${url}`]);
  return { by: 'chromium', binary: chromium };
}

/** Opens the app: Electron (built shell + binary) first, then the browser fallback. */
export async function openApp(url: string, dataDir: string): Promise<OpenedIn> {
  const electron = await findElectronBinary();
  if (electron !== undefined && hasDisplay() && (await pathExists(ELECTRON_MAIN))) {
    detach(electron, [ELECTRON_MAIN], { ...process.env, SNOWBIRD_DATA: dataDir });
    return { by: 'electron', binary: electron };
  }
  return openInBrowser(url);
}
