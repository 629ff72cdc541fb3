// An emulated WAN for benchmarks: a network namespace joined to the host by a veth pair, with a tbf
// bandwidth limit on both ends. The core agent runs inside the namespace, the edge outside, so every
// byte between them crosses the limited link. Addresses are private to this pair of interfaces.
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { promisify } from 'node:util';
import type { Cleanup } from './cleanup.ts';

const run = promisify(execFile);

export interface Wan {
  namespace: string;
  /** Address of the host (edge) end. */
  edgeAddress: string;
  /** Address of the namespace (core) end. */
  coreAddress: string;
  /** The host (edge) end of the veth pair: its counters see every byte between the sites. */
  hostInterface: string;
  rateMbit: number;
  /** argv prefix that runs a command inside the namespace. */
  execPrefix: string[];
  dispose(): Promise<void>;
}

async function ip(...args: string[]): Promise<void> {
  await run('ip', args);
}

async function limit(device: string, rateMbit: number, namespace?: string): Promise<void> {
  // burst ≈ rate × 10 ms (at least 32 KiB), queue ≈ 50 ms: a plain shaped link without netem.
  const burst = Math.max(32 * 1024, Math.round((rateMbit * 1_000_000) / 8 / 100));
  const args = ['qdisc', 'replace', 'dev', device, 'root', 'tbf', 'rate', `${rateMbit}mbit`, 'burst', String(burst), 'latency', '50ms'];
  await run(namespace ? 'ip' : 'tc', namespace ? ['netns', 'exec', namespace, 'tc', ...args] : args);
}

export async function createWan(options: { rateMbit: number; id?: number }): Promise<Wan> {
  const id = options.id ?? (process.pid % 200) + 20;
  const namespace = `sbcore${id}`;
  const hostIf = `sbe${id}`;
  const nsIf = `sbc${id}`;
  const edgeAddress = `10.213.${id}.1`;
  const coreAddress = `10.213.${id}.2`;
  const dispose = async (): Promise<void> => {
    await run('ip', ['netns', 'del', namespace]).catch(() => undefined);
    await run('ip', ['link', 'del', hostIf]).catch(() => undefined);
  };
  await dispose();
  try {
    await ip('netns', 'add', namespace);
    await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    await ip('link', 'set', nsIf, 'netns', namespace);
    await ip('addr', 'add', `${edgeAddress}/30`, 'dev', hostIf);
    await ip('link', 'set', hostIf, 'up');
    await ip('netns', 'exec', namespace, 'ip', 'addr', 'add', `${coreAddress}/30`, 'dev', nsIf);
    await ip('netns', 'exec', namespace, 'ip', 'link', 'set', nsIf, 'up');
    await ip('netns', 'exec', namespace, 'ip', 'link', 'set', 'lo', 'up');
    await limit(hostIf, options.rateMbit);
    await limit(nsIf, options.rateMbit, namespace);
  } catch (error) {
    await dispose();
    throw error;
  }
  return { namespace, edgeAddress, coreAddress, hostInterface: hostIf, rateMbit: options.rateMbit, execPrefix: ['ip', 'netns', 'exec', namespace], dispose };
}

function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * The link between the benchmark's two sites and the port the core listens on: the emulated WAN at
 * `rateMbit` (removed by `cleanup`) with the core on `wanPort`, or without a rate plain loopback (no
 * limit) with the core on a free port.
 */
export async function openSitesLink(rateMbit: number | undefined, wanPort: number, cleanup: Cleanup, log: (line: string) => void): Promise<{ wan: Wan; port: number }> {
  if (rateMbit === undefined) {
    const wan: Wan = { namespace: '', edgeAddress: '127.0.0.1', coreAddress: '127.0.0.1', hostInterface: 'lo', rateMbit: 0, execPrefix: [], dispose: () => Promise.resolve() };
    return { wan, port: await freeLoopbackPort() };
  }
  const wan = await createWan({ rateMbit });
  cleanup.add(`remove the network namespace ${wan.namespace}`, () => wan.dispose());
  log(`WAN: namespace ${wan.namespace}, edge ${wan.edgeAddress} ⇄ core ${wan.coreAddress}, tbf ${rateMbit} Mbit/s`);
  return { wan, port: wanPort };
}
