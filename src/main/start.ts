// `snowbird start` (`npm start`): everything a new user needs, in order, skipping what is already
// there — the demo guest, the app's bundle, the VM, the edge agent with its embedded core (which
// makes its certificates on first run), the VM booted at the edge — then the app opened.
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { buildGuest } from '../../guest/build.ts';
import { pathExists, socketAccepts } from '../migrator/local-io.ts';
import { runAgent, type RunningAgent } from './agent.ts';
import { localApiSocket } from './local-api/paths.ts';
import { ELECTRON_MAIN, findElectronBinary, openApp, type OpenedIn } from './app-launcher.ts';
import { LocalApiClient } from './local-api/client.ts';
import { DEFAULT_UI_ROOT } from './ui-server.ts';
import { holdsDisk, startVm } from './vm-service.ts';
import type { VmLibrary } from './vm-library.ts';

const REPO_ROOT = resolve(import.meta.dirname, '..', '..');

export class StartError extends Error {
  override readonly name = 'StartError';
}

export interface StartOptions {
  library: VmLibrary;
  /** The edge agent's settings file, if this command starts the agent. */
  configPath: string;
  /** Where the demo guest is built and cached. */
  cacheDir: string;
  vm: string;
  /** Open the app (Electron, else a Chromium app window); false = print its URL only. */
  open: boolean;
  log: (line: string) => void;
}

export interface Started {
  url: string;
  opened: OpenedIn | undefined;
  /** The agent this command started (undefined when one was already running): stop it with close(). */
  agent: RunningAgent | undefined;
}

function runScript(script: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'scripts', script)], { cwd: REPO_ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolvePromise() : reject(new StartError(`scripts/${script} exited with code ${code}; run it alone to see why`))));
  });
}

export async function start(options: StartOptions): Promise<Started> {
  const { library, log } = options;
  const total = 5;
  const step = (n: number, what: string): void => log(`[${n}/${total}] ${what}`);

  step(1, 'demo guest');
  const guest = await buildGuest({ cacheDir: options.cacheDir, onProgress: (p) => log(`      ${p.step}${p.detail ? `: ${p.detail}` : ''}`) });

  step(2, 'the app');
  if (!(await pathExists(join(DEFAULT_UI_ROOT, 'index.html')))) await runScript('build-ui.ts');
  if ((await findElectronBinary()) !== undefined && !(await pathExists(ELECTRON_MAIN))) await runScript('build-electron.ts');

  step(3, `VM "${options.vm}"`);
  if (!(await library.exists(options.vm))) {
    const spec = await library.create({ name: options.vm, memoryMiB: 256, vcpus: 1, diskSize: '1G', accel: 'auto', kernel: guest.kernel, initrd: guest.initrd, memWorkloadMiB: 64, diskWorkloadBlocks: 4096 });
    log(`      created: ${spec.memoryMiB} MiB, ${spec.vcpus} vCPU, disk ${spec.disk}`);
  }

  step(4, 'edge agent with its embedded core');
  const socket = localApiSocket(library.dataDir);
  let agent: RunningAgent | undefined;
  if (await socketAccepts(socket)) {
    log('      already running: using it');
  } else {
    agent = await runAgent({ role: 'edge', dataDir: library.dataDir, embeddedCore: true, configPath: options.configPath, log: (line) => log(`      ${line}`), announce: () => undefined });
  }

  try {
    const client = await LocalApiClient.connect(socket);
    try {
      step(5, `booting "${options.vm}" where it left off`);
      const where = (await client.request({ cmd: 'status' })).vms.find((v) => v.name === options.vm)?.location ?? 'stopped';
      if (where === 'stopped' && !(await holdsDisk(library, options.vm))) {
        // It stopped at the core, where its disk's top is: it boots there (Bring back moves it).
        const booted = await client.request({ cmd: 'vm-start', vm: options.vm });
        log(`      running at the ${booted.site}, where it stopped (QEMU pid ${booted.pid})`);
      } else if (where === 'stopped') {
        const booted = await startVm(library, options.vm, { waitReady: true });
        log(`      running at the edge (QEMU pid ${booted.pid}, ${booted.accel.accel}), guest ready after ${booted.readySeconds?.toFixed(1)} s`);
      } else {
        log(`      already running (${where})`);
      }
      const { url } = await client.request({ cmd: 'ui' });
      const opened = options.open ? await openApp(url, library.dataDir) : undefined;
      return { url, opened, agent };
    } finally {
      client.close();
    }
  } catch (error) {
    await agent?.close();
    throw error;
  }
}
