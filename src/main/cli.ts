#!/usr/bin/env node
// `snowbird`: the command-line interface and this process's composition root. Commands parse their
// options here and call the operations in vm-service / guest; errors become exit codes in one place.
import { Argument, Command, InvalidArgumentError, Option } from 'commander';
import { readFile, stat } from 'node:fs/promises';
import { createWriteStream, watch } from 'node:fs';
import { join, resolve } from 'node:path';
import { buildGuest, findBuiltGuest, GuestBuildError } from '../../guest/build.ts';
import { VmLibrary } from './vm-library.ts';
import { defaultDataDir } from './local-api/paths.ts';
import { holdsDisk, pauseVm, startVm, stopVm, vmStatus, type VmStatusReport } from './vm-service.ts';
import { formatStrategy } from '../shared/format.ts';
import { formatIntegrity, formatLinkBytes, formatMigrationSummary, formatMs, formatProgress, formatTable } from './format.ts';
import { LocalApiClient, LocalApiUnavailableError } from './local-api/client.ts';
import { ConfigService, defaultConfigPath } from './config-service.ts';
import { CONFIG_KEYS, patchAt, type ConfigPatch, type ConfigReply } from '../shared/config.ts';
import type { VmStopReply } from '../shared/local-api.ts';
import { nextProgressView, type ProgressView } from '../shared/progress.ts';
import { runAgent } from './agent.ts';
import { openInBrowser, type OpenedIn } from './app-launcher.ts';
import { start } from './start.ts';
import { embeddedCoreDataDir } from './embedded-core.ts';
import { DEDUP_MODES, MEMORY_STRATEGIES, type DedupMode, type MemoryStrategy, type SiteRole } from '../shared/migration.ts';
import { PLACEMENT_MODES, policyParamsSchema, type PlacementMode } from '../shared/placement.ts';
import { decisionChanges, describeDecision, formatTrace, parseTrace, replay } from '../interaction-detect/common/trace.ts';

const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
const DEFAULT_CACHE = join(REPO_ROOT, '.cache');

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive whole number');
  return n;
}

function library(command: Command): VmLibrary {
  const { data } = command.optsWithGlobals<{ data: string }>();
  return new VmLibrary(resolve(data));
}

function printJson(value: unknown): void {
  // Scripts get every key: an absent value is null, not a missing key.
  process.stdout.write(`${JSON.stringify(value, (_key, v: unknown) => (v === undefined ? null : v), 2)}\n`);
}

const program = new Command('snowbird')
  .description('Moves a running VM between your laptop (edge) and a server (core) as the work inside it changes.')
  .addOption(new Option('--data <dir>', 'data directory holding the VM library').default(defaultDataDir(), '$SNOWBIRD_DATA or ~/.local/share/snowbird'))
  .addOption(new Option('--config <file>', 'the edge agent\'s settings file (see `snowbird config`)').default(defaultConfigPath(), '$SNOWBIRD_CONFIG or $XDG_CONFIG_HOME/snowbird/config.json'))
  .showHelpAfterError()
  .configureHelp({ showGlobalOptions: true });

const guest = program.command('guest').description('the demo guest: a Debian kernel and a busybox userland that check their own memory and disk');
guest
  .command('build')
  .description('build the demo guest from Debian packages (cached by content hash; rebuilt only when its sources change)')
  .option('--cache <dir>', 'where downloads and built guests are kept', DEFAULT_CACHE)
  .option('--force', 'rebuild even if a build with the same content hash exists', false)
  .action(async (opts: { cache: string; force: boolean }) => {
    const artifacts = await buildGuest({
      cacheDir: resolve(opts.cache),
      force: opts.force,
      onProgress: (p) => process.stderr.write(`[${p.done}/${p.total}] ${p.step}${p.detail ? `: ${p.detail}` : ''}\n`),
    });
    process.stdout.write(`demo guest ready (kernel ${artifacts.kernelVersion})\n  kernel: ${artifacts.kernel}\n  initrd: ${artifacts.initrd}\n  manifest: ${artifacts.manifest}\n`);
  });

const vm = program.command('vm').description('create, start, inspect and stop VMs at this site');

vm.command('create')
  .description('create a VM running the demo guest, with a fresh qcow2 disk')
  .argument('<name>', 'VM name: lowercase letters, digits, "-" and "_"')
  .option('--memory <MiB>', 'guest RAM in MiB', positiveInt, 256)
  .option('--vcpus <n>', 'virtual CPUs', positiveInt, 1)
  .option('--disk-size <size>', 'virtual disk size (qemu-img syntax: 512M, 2G)', '1G')
  .addOption(new Option('--accel <accel>', 'accelerator; auto probes KVM and falls back to TCG').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .option('--mem-workload <MiB>', 'MiB of guest memory the memory-invariant workload keeps under test', positiveInt, 64)
  .option('--disk-workload <blocks>', '4 KiB disk blocks the disk-invariant workload keeps under test', positiveInt, 4096)
  .option('--cpu-limit <percent>', 'cap the VM at this percent of one host CPU (cgroup quota)', positiveInt)
  .option('--cache <dir>', 'where the built demo guest is found', DEFAULT_CACHE)
  .option('--force', 'replace an existing VM of that name (its disk is lost)', false)
  .action(async (name: string, opts: { memory: number; vcpus: number; diskSize: string; accel: 'auto' | 'kvm' | 'tcg'; memWorkload: number; diskWorkload: number; cpuLimit?: number; cache: string; force: boolean }, command: Command) => {
    const artifacts = await findBuiltGuest(resolve(opts.cache));
    if (artifacts === undefined) throw new GuestBuildError(`no demo guest is built in ${opts.cache}`, 'snowbird guest build');
    if (opts.memWorkload >= opts.memory) throw new InvalidArgumentError(`--mem-workload (${opts.memWorkload} MiB) must be smaller than --memory (${opts.memory} MiB)`);
    const spec = await library(command).create({
      name,
      memoryMiB: opts.memory,
      vcpus: opts.vcpus,
      diskSize: opts.diskSize,
      accel: opts.accel,
      kernel: artifacts.kernel,
      initrd: artifacts.initrd,
      memWorkloadMiB: opts.memWorkload,
      diskWorkloadBlocks: opts.diskWorkload,
      force: opts.force,
      ...(opts.cpuLimit === undefined ? {} : { cpuLimitPercent: opts.cpuLimit }),
    });
    process.stdout.write(`created VM "${spec.name}": ${spec.memoryMiB} MiB, ${spec.vcpus} vCPU, disk ${spec.disk}\n`);
  });

vm.command('start')
  .description('boot a VM and wait until the guest reports ready; the VM keeps running after this command exits')
  .argument('<name>', 'VM name')
  .option('--paused', 'start with the vCPUs stopped (resume with `snowbird vm resume`)', false)
  .option('--no-wait', 'return as soon as QEMU is up, without waiting for the guest')
  .action(async (name: string, opts: { paused: boolean; wait: boolean }, command: Command) => {
    // One VM runs at one site: through the agent, a VM running at the core is seen (and left alone).
    const { result: now } = await withAgentOrAlone(command, (client) => client.request({ cmd: 'vm-status', vm: name }), () => vmStatus(library(command), name));
    if (now.moving) throw new Error(`VM "${name}" is moving ${now.moving.from} → ${now.moving.to}; it already runs`);
    if (now.state !== 'stopped') throw new Error(`VM "${name}" already runs at the ${now.site} (${now.state}); \`snowbird vm status ${name}\` shows it`);
    if (!(await holdsDisk(library(command), name))) {
      // It stopped at the core, where its disk's top is: the agent boots it there.
      const there = await withAgent(command, (client) => client.request({ cmd: 'vm-start', vm: name }));
      process.stdout.write(`VM "${name}" is running at the ${there.site}, where it stopped (QEMU pid ${there.pid}); \`snowbird migrate ${name} --to edge\` brings it back\n`);
      return;
    }
    const result = await startVm(library(command), name, { paused: opts.paused, waitReady: opts.wait && !opts.paused });
    process.stdout.write(
      `VM "${name}" is ${opts.paused ? 'paused' : 'running'} (QEMU pid ${result.pid}, ${result.accel.accel}: ${result.accel.reason})\n` +
        (result.readySeconds === undefined ? '' : `guest ready after ${result.readySeconds.toFixed(1)} s\n`) +
        `display: VNC on unix socket ${result.vncSocket}\n` +
        `check it: snowbird vm status ${name}    stop it: snowbird vm stop ${name}\n`,
    );
  });

vm.command('stop')
  .description('power the VM off cleanly (guest poweroff, then QEMU quit); --force kills it at once')
  .argument('<name>', 'VM name')
  .option('--force', 'kill QEMU immediately (the guest does not flush); never kills a move: see --cancel-move', false)
  .option('--cancel-move', 'if the VM is moving, cancel the move first (it rolls back unless the guest already switched over), then stop it where it runs', false)
  .option('--timeout <seconds>', 'how long the guest may take to power off before QEMU is told to quit', positiveInt, 15)
  .action(async (name: string, opts: { force: boolean; cancelMove: boolean; timeout: number }, command: Command) => {
    const graceMs = opts.timeout * 1000;
    const { result: reply } = await withAgentOrAlone(
      command,
      (client) => client.request({ cmd: 'vm-stop', vm: name, force: opts.force, graceMs, cancelMove: opts.cancelMove }),
      () => stopWithoutAgent(library(command), name, { force: opts.force, graceMs }),
    );
    process.stdout.write(reply.outcome === 'stopped' ? `VM "${name}" stopped at the ${reply.site}\n` : `VM "${name}" was not running\n`);
  });

vm.command('pause')
  .description('stop the VM\'s vCPUs (QEMU keeps its state)')
  .argument('<name>', 'VM name')
  .action(async (name: string, _opts: unknown, command: Command) => {
    await pauseVm(library(command), name, true);
    process.stdout.write(`VM "${name}" paused\n`);
  });

vm.command('resume')
  .description('restart a paused VM\'s vCPUs')
  .argument('<name>', 'VM name')
  .action(async (name: string, _opts: unknown, command: Command) => {
    await pauseVm(library(command), name, false);
    process.stdout.write(`VM "${name}" running\n`);
  });

vm.command('list')
  .description('list the VMs and their state, wherever they run (the core\'s through the edge agent, when it runs)')
  .option('--json', 'print JSON for scripts', false)
  .action(async (opts: { json: boolean }, command: Command) => {
    const lib = library(command);
    // Through the agent: VMs at the core too, where they run.
    const { result: reports } = await withAgentOrAlone(
      command,
      async (client) => {
        const found: VmStatusReport[] = [];
        for (const { name } of (await client.request({ cmd: 'status' })).vms) found.push(await client.request({ cmd: 'vm-status', vm: name }));
        return found;
      },
      async () => Promise.all((await lib.list()).map((name) => vmStatus(lib, name))),
    );
    if (opts.json) return printJson(reports);
    if (reports.length === 0) return void process.stdout.write(`no VMs in ${lib.dataDir}; create one with 'snowbird vm create demo'\n`);
    process.stdout.write(formatTable(['NAME', 'STATE', 'SITE', 'PID', 'ACCEL', 'MEMORY', 'VCPUS'],
      reports.map((r) => [r.name, r.state, r.site, r.pid?.toString() ?? '-', r.accel ?? '-', `${r.memoryMiB} MiB`, String(r.vcpus)])));
  });

vm.command('status')
  .description('show where and how a VM runs, with the guest\'s latest integrity report (memory and disk heartbeats, violations)')
  .argument('<name>', 'VM name')
  .option('--json', 'print JSON for scripts', false)
  .option('--sample <seconds>', 'how long to listen for the guest\'s heartbeats', positiveInt, 3)
  .action(async (name: string, opts: { json: boolean; sample: number }, command: Command) => {
    const sampleMs = opts.sample * 1000;
    const { result: report } = await withAgentOrAlone(command, (client) => client.request({ cmd: 'vm-status', vm: name, sampleMs }), () => statusWithoutAgent(library(command), name, sampleMs));
    if (opts.json) return printJson(report);
    const lines = [
      `VM ${report.name}: ${report.state}${report.qemuStatus ? ` (QEMU: ${report.qemuStatus})` : ''} at the ${report.site}${report.moving ? `, moving ${report.moving.from} → ${report.moving.to} (${report.moving.phase})` : ''}`,
      `  pid ${report.pid ?? '-'}, accel ${report.accel ?? '-'}, started ${report.startedAt ?? '-'}`,
      `  ${report.memoryMiB} MiB, ${report.vcpus} vCPU, disk ${report.disk}`,
      `  display: VNC on ${report.vncSocket}`,
      ...(report.integrity ? formatIntegrity(report.integrity) : []),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  });

vm.command('console')
  .description('print the guest\'s serial console (kernel and init messages)')
  .argument('<name>', 'VM name')
  .option('-f, --follow', 'keep printing new output until interrupted', false)
  .action(async (name: string, opts: { follow: boolean }, command: Command) => {
    // Through the agent: the console of a VM at the core comes from the core.
    await withAgentOrAlone(
      command,
      async (client) => {
        let stopped = false;
        process.once('SIGINT', () => (stopped = true));
        for (let offset = 0; !stopped; ) {
          const chunk = await client.request({ cmd: 'vm-console', vm: name, offset });
          process.stdout.write(chunk.text);
          const more = chunk.next > offset;
          offset = chunk.next;
          if (!more && !opts.follow) break;
          if (!more) await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      },
      async () => {
        const log = library(command).paths(name).serialLog;
        let offset = 0;
        const printNew = async (): Promise<void> => {
          const text = await readFile(log).catch(() => Buffer.alloc(0));
          if (text.length > offset) process.stdout.write(text.subarray(offset));
          offset = text.length;
        };
        await stat(log).catch(() => {
          throw new Error(`VM "${name}" has no console log yet (${log}); start it with 'snowbird vm start ${name}'`);
        });
        await printNew();
        if (opts.follow) {
          const watcher = watch(log, () => void printNew());
          await new Promise<void>((done) => process.once('SIGINT', () => done()));
          watcher.close();
        }
      },
    );
  });


function agentSocket(command: Command): string {
  return join(library(command).dataDir, 'run', 'agent.sock');
}

/**
 * `vm stop` with no agent running: the VM runs at this site, or (after `npm start` stopped with the VM
 * in the cloud) at the embedded core on this machine, whose QEMU outlives its agent.
 */
async function stopWithoutAgent(lib: VmLibrary, name: string, options: { force: boolean; graceMs: number }): Promise<VmStopReply> {
  if ((await stopVm(lib, name, options)) === 'stopped') return { outcome: 'stopped', site: await lib.siteRole() };
  const embedded = new VmLibrary(embeddedCoreDataDir(lib.dataDir));
  if ((await embedded.exists(name)) && (await stopVm(embedded, name, options)) === 'stopped') return { outcome: 'stopped', site: 'core' };
  return { outcome: 'not-running', site: await lib.siteRole() };
}

/** `vm status` with no agent running: here, or at the embedded core on this machine (its QEMU outlives `npm start`). */
async function statusWithoutAgent(lib: VmLibrary, name: string, sampleMs: number): Promise<VmStatusReport> {
  const here = await vmStatus(lib, name, { sampleMs });
  if (here.state !== 'stopped') return here;
  const embedded = new VmLibrary(embeddedCoreDataDir(lib.dataDir));
  const there = (await embedded.exists(name)) ? await vmStatus(embedded, name, { sampleMs }) : undefined;
  return there !== undefined && there.state !== 'stopped' ? there : here;
}

/** Through the running agent when there is one (`live`), else `alone` on this data directory. */
async function withAgentOrAlone<T>(command: Command, viaAgent: (client: LocalApiClient) => Promise<T>, alone: () => Promise<T>): Promise<{ result: T; live: boolean }> {
  let client: LocalApiClient;
  try {
    client = await LocalApiClient.connect(agentSocket(command));
  } catch (error) {
    if (!(error instanceof LocalApiUnavailableError)) throw error;
    return { result: await alone(), live: false };
  }
  try {
    return { result: await viaAgent(client), live: true };
  } finally {
    client.close();
  }
}

async function withAgent<T>(command: Command, use: (client: LocalApiClient) => Promise<T>): Promise<T> {
  const client = await LocalApiClient.connect(agentSocket(command));
  try {
    return await use(client);
  } finally {
    client.close();
  }
}

/** `snowbird migrate`'s exit status when the move was cancelled (Ctrl-C, the app, `snowbird cancel`): the VM stayed. */
const EXIT_CANCELLED = 3;

/** `--to`: the app says cloud and laptop, the agents core and edge; both are accepted. */
function siteArg(value: string): SiteRole {
  const site = ({ core: 'core', cloud: 'core', edge: 'edge', laptop: 'edge' } as const)[value];
  if (site === undefined) throw new InvalidArgumentError(`"${value}" is not a site: use core (or cloud) or edge (or laptop)`);
  return site;
}

function hostPort(value: string): string {
  if (!/^[^\s:]+:\d{1,5}$/.test(value) && !/^\[[0-9a-f:]+\]:\d{1,5}$/i.test(value)) throw new InvalidArgumentError('expected HOST:PORT, e.g. 0.0.0.0:7443');
  return value;
}

program
  .command('agent')
  .description('run the site agent in the foreground: hosts VMs, serves the local API (CLI, app) and the TLS peer API')
  .addOption(new Option('--role <role>', 'edge = the laptop (display, policy, local API); core = the server').choices(['edge', 'core']).makeOptionMandatory())
  .option('--listen <host:port>', 'where the peer API listens (TLS); the core must listen, the edge need not', hostPort)
  .option('--embedded-core', 'edge only: also run a core agent on this machine (own data dir and port), paired automatically', false)
  .option('--name <name>', 'this site\'s name, shown to its peer (default: role@hostname)')
  .option('--no-auto-placement', 'edge only: the placement policy samples and decides (see `snowbird placement`, `history --decisions`) but never moves a VM itself')
  .action(async (opts: { role: SiteRole; listen?: string; embeddedCore: boolean; name?: string; autoPlacement: boolean }, command: Command) => {
    if (opts.embeddedCore && opts.role !== 'edge') throw new InvalidArgumentError('--embedded-core is for the edge role');
    const agent = await runAgent({
      role: opts.role,
      dataDir: library(command).dataDir,
      embeddedCore: opts.embeddedCore,
      autoPlacement: opts.autoPlacement,
      ...(opts.listen === undefined ? {} : { listen: opts.listen }),
      ...(opts.name === undefined ? {} : { name: opts.name }),
      configPath: configPath(command),
      log: (line) => process.stderr.write(`${line}\n`),
      announce: (event) => process.stdout.write(`${JSON.stringify(event)}\n`),
    });
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await agent.close();
  });

program
  .command('pair')
  .description('pair this edge with a core agent: pins the core\'s certificate fingerprint and trades the one-time token for a credential')
  .argument('<url>', 'the core\'s peer address, https://HOST:PORT')
  .requiredOption('--token <token>', 'the one-time pairing token the core printed')
  .option('--fingerprint <sha256>', 'the core\'s certificate fingerprint, if you have it (otherwise trusted on first use)')
  .action(async (url: string, opts: { token: string; fingerprint?: string }, command: Command) => {
    const reply = await withAgent(command, (client) => client.request({ cmd: 'pair', url, token: opts.token, ...(opts.fingerprint ? { fingerprint: opts.fingerprint } : {}) }));
    process.stdout.write(`paired with core "${reply.peerName}" (${reply.fingerprint})\n`);
  });

function bandwidth(value: string): number {
  const mbit = Number(value);
  if (!(mbit > 0)) throw new InvalidArgumentError('must be a positive number of Mbit/s');
  return Math.round((mbit * 1_000_000) / 8);
}

program
  .command('migrate')
  .description('move a running VM to the other site, live; prints progress and a summary (time, downtime, bytes). Exit status: 0 moved, 2 failed (the VM still runs where it was), 3 cancelled (Ctrl-C, the app or `snowbird cancel`; the VM stays where it was)')
  .argument('<vm>', 'VM name')
  .addOption(new Option('--to <site>', 'destination site: core (alias cloud) or edge (alias laptop)').choices(['core', 'edge', 'cloud', 'laptop']).argParser(siteArg).makeOptionMandatory())
  .addOption(new Option('--strategy <strategy>', 'memory strategy: auto (the default to the core: pre-copy while it converges, judged during the move from the guest\'s dirty rate and the stream\'s; else auto-converge under KVM; else post-copy, unless the settings\' migration.postcopyToCore is false), precopy (dirty-page rounds), postcopy (switch at once, pages on demand), hybrid (one pre-copy pass, then post-copy; the default to the edge)').choices(MEMORY_STRATEGIES))
  .option('--bandwidth <Mbit/s>', 'cap the memory stream', bandwidth)
  .option('--downtime <ms>', 'longest acceptable pause at switchover', positiveInt)
  .addOption(
    new Option('--dedup [mode]', 'the memory stream through the dedup transport (chunks the other site holds travel as references, the rest zstd-compressed): far fewer bytes, more CPU. auto: when the link is the bottleneck (both measured before the move); on (the same as a bare --dedup); off. Default: the settings file\'s migration.dedup, else auto')
      .choices(DEDUP_MODES)
      .preset('on'),
  )
  .option('--no-xbzrle', 'send the dirty pages of later pre-copy passes whole, not as XBZRLE deltas against the pages sent before (XBZRLE is on by default)')
  .option('--json', 'print the migration record as JSON', false)
  .action(async (vmName: string, opts: { to: SiteRole; strategy?: MemoryStrategy; bandwidth?: number; downtime?: number; dedup?: DedupMode; xbzrle: boolean; json: boolean }, command: Command) => {
    const interactive = process.stderr.isTTY && !opts.json;
    let lastPhase = '';
    let view: ProgressView | undefined;
    let migrationId: string | undefined;
    const record = await withAgent(command, (client) => {
      // Ctrl-C (or SIGTERM) cancels the move, as with `virsh migrate`; a second one stops waiting.
      let cancelling = false;
      const interrupt = (): void => {
        if (cancelling) process.exit(130);
        cancelling = true;
        process.stderr.write('\ncancelling; the VM stays where it runs unless it already switched over (Ctrl-C again to stop waiting)\n');
        client.request({ cmd: 'cancel', vm: vmName, ...(migrationId ? { migrationId } : {}) }).then(
          (reply) => process.stderr.write(`${reply.detail}\n`),
          (error: unknown) => process.stderr.write(`could not cancel: ${(error as Error).message}\n`),
        );
      };
      process.on('SIGINT', interrupt);
      process.on('SIGTERM', interrupt);
      return client.request(
        {
          cmd: 'migrate',
          vm: vmName,
          to: opts.to,
          ...(opts.strategy ? { strategy: opts.strategy } : {}),
          ...(opts.bandwidth ? { maxBandwidth: opts.bandwidth } : {}),
          ...(opts.downtime ? { downtimeLimitMs: opts.downtime } : {}),
          ...(opts.dedup ? { dedup: opts.dedup } : {}),
          ...(opts.xbzrle ? {} : { xbzrle: false }),
        },
        (progress) => {
          // stdout carries the record (--json) or the summary; progress goes to stderr either way.
          const before = view;
          view = nextProgressView(view, progress);
          if (view === before) return; // stale: an earlier phase's, or out of order
          if (interactive) process.stderr.write(`\r\x1b[2K${formatProgress(view)}`);
          else if (view.phase !== lastPhase) process.stderr.write(`${formatProgress(view)}\n`);
          lastPhase = view.phase;
          migrationId = progress.migrationId;
        },
      ).finally(() => {
        process.off('SIGINT', interrupt);
        process.off('SIGTERM', interrupt);
      });
    });
    if (interactive) process.stderr.write('\n');
    if (opts.json) printJson(record);
    else process.stdout.write(`${formatMigrationSummary(record).join('\n')}\n`);
    if (record.outcome !== 'committed') process.exitCode = record.outcome === 'cancelled' ? EXIT_CANCELLED : 2;
  });

program
  .command('display')
  .description('where to see a VM\'s screen: the edge agent\'s display gateway, which stays put while the VM moves')
  .argument('<vm>', 'VM name')
  .option('--json', 'print JSON for scripts', false)
  .action(async (vmName: string, opts: { json: boolean }, command: Command) => {
    const reply = await withAgent(command, (client) => client.request({ cmd: 'display', vm: vmName }));
    if (opts.json) return printJson(reply);
    const [host, port] = [reply.rfbAddress.slice(0, reply.rfbAddress.lastIndexOf(':')), reply.rfbAddress.slice(reply.rfbAddress.lastIndexOf(':') + 1)];
    process.stdout.write(
      [
        `display of "${reply.vm}" (the VM runs at the ${reply.at}; VNC server ${reply.status.state}${reply.status.reason ? `: ${reply.status.reason}` : ''})`,
        `  noVNC (WebSocket): ${reply.webSocketUrl}`,
        `  VNC client:        ${reply.rfbAddress}   e.g. gvncviewer ${host}::${port}`,
        `  viewers now: ${reply.viewers}; the gateway lives as long as the edge agent`,
        '',
      ].join('\n'),
    );
  });

/** Chromium, if this machine has it: Debian's path first, then PATH. */
program
  .command('open')
  .description('the app in a browser: prints the edge agent\'s UI URL (with this run\'s token) and opens it in Chromium when there is a display')
  .option('--no-browser', 'only print the URL')
  .action(async (opts: { browser: boolean }, command: Command) => {
    const { url } = await withAgent(command, (client) => client.request({ cmd: 'ui' }));
    process.stdout.write(`${url}\n`);
    if (!opts.browser) return;
    process.stderr.write(`${describeOpened(await openInBrowser(url))}\n`);
  });

function describeOpened(opened: OpenedIn): string {
  if (opened.by === 'nothing') return `open it in a browser on this machine (${opened.why})`;
  return opened.by === 'electron' ? `opened the app (Electron: ${opened.binary})` : `opened in ${opened.binary} (--app)`;
}

program
  .command('start')
  .description('the main job (npm start): builds what is missing (demo guest, app), creates the VM, runs the edge agent with an embedded core, boots the VM and opens the app; Ctrl-C stops the agent, the VM keeps running')
  .option('--vm <name>', 'the VM to create (the demo guest) and boot', 'demo')
  .option('--no-open', 'print the app\'s URL instead of opening it')
  .option('--cache <dir>', 'where the demo guest is built and cached', DEFAULT_CACHE)
  .action(async (opts: { vm: string; open: boolean; cache: string }, command: Command) => {
    const log = (line: string): void => void process.stderr.write(`${line}\n`);
    const started = await start({ library: library(command), configPath: configPath(command), cacheDir: resolve(opts.cache), vm: opts.vm, open: opts.open, log });
    process.stdout.write(`${started.url}\n`);
    if (started.opened) log(describeOpened(started.opened));
    if (started.agent === undefined) return;
    log('the agent runs until Ctrl-C (the VM keeps running after it stops; `snowbird vm stop ' + opts.vm + '` stops it)');
    // Kept while the agent closes: Ctrl-C in a terminal reaches npm and this process alike, and npm
    // passes it on, so a second one arrives at once; it must not cut the close short.
    await new Promise<void>((resolve) => {
      process.on('SIGINT', resolve);
      process.on('SIGTERM', resolve);
    });
    const where = started.agent.store.getState().vms[opts.vm]?.location;
    await started.agent.close();
    log(where === 'edge' || where === 'core'
      ? `the agent stopped; VM "${opts.vm}" keeps running at the ${where}${where === 'core' ? ' (the embedded core\'s QEMU on this machine)' : ''}: \`npm start\` brings the app back to it, \`snowbird vm stop ${opts.vm}\` stops it`
      : `the agent stopped; VM "${opts.vm}" is ${where === 'moving' ? 'moving: its move was cut short and is finished or rolled back when the agent next starts' : 'not running'}`);
  });

program
  .command('cancel')
  .description('cancel a VM\'s migration under way: it rolls back and the VM keeps running where it was, unless it already switched over')
  .argument('<vm>', 'VM name')
  .action(async (vmName: string, _opts: unknown, command: Command) => {
    const reply = await withAgent(command, (client) => client.request({ cmd: 'cancel', vm: vmName }));
    process.stdout.write(`${reply.detail}\n`);
    if (!reply.requested) process.exitCode = 1;
  });

program
  .command('status')
  .description('this site\'s agent: role, peer, where each VM runs, migrations under way')
  .option('--json', 'print JSON for scripts', false)
  .action(async (opts: { json: boolean }, command: Command) => {
    const status = await withAgent(command, (client) => client.request({ cmd: 'status' }));
    if (opts.json) return printJson(status);
    const peer = status.peer.paired ? `${status.peer.name ?? '?'} at ${status.peer.url ?? '?'} (${status.peer.connected ? 'connected' : 'NOT connected'})` : 'not paired (snowbird pair …)';
    process.stdout.write(`${status.role} agent "${status.site}" ${status.fingerprint}\n  peer: ${peer}\n`);
    if (status.vms.length > 0) process.stdout.write(formatTable(['VM', 'LOCATION', 'STATE'], status.vms.map((v) => [v.name, v.location, v.state])));
    for (const m of status.migrations) process.stdout.write(`  moving: ${formatProgress(nextProgressView(undefined, m))}\n`);
  });

program
  .command('history')
  .description('past migrations with their figures and who asked for them, newest first; --decisions: the placement policy\'s decisions with their reasons')
  .option('--vm <name>', 'only this VM')
  .option('--limit <n>', 'how many', positiveInt, 20)
  .option('--decisions', 'the placement decisions (moves and changes of rule) instead of the migrations', false)
  .option('--json', 'print JSON for scripts', false)
  .action(async (opts: { vm?: string; limit: number; decisions: boolean; json: boolean }, command: Command) => {
    if (opts.decisions) {
      const rows = await withAgent(command, (client) => client.request({ cmd: 'decisions', limit: opts.limit, ...(opts.vm ? { vm: opts.vm } : {}) }));
      if (opts.json) return printJson(rows);
      if (rows.length === 0) return void process.stdout.write('no placement decisions yet\n');
      for (const { vm, decision } of rows) process.stdout.write(`${new Date(decision.at).toISOString().replace('T', ' ').slice(0, 19)} ${vm}: ${describeDecision(decision, decision.at).replace(/^\+0\.0 s\s*/, '')}\n`);
      return;
    }
    const records = await withAgent(command, (client) => client.request({ cmd: 'history', limit: opts.limit, ...(opts.vm ? { vm: opts.vm } : {}) }));
    if (opts.json) return printJson(records);
    if (records.length === 0) return void process.stdout.write('no migrations yet\n');
    process.stdout.write(formatTable(
      ['STARTED', 'VM', 'MOVE', 'BY', 'STRATEGY', 'OUTCOME', 'TIME', 'DOWNTIME', 'BYTES'],
      records.map((r) => [
        r.startedAt.replace('T', ' ').slice(0, 19), r.vm, `${r.from}→${r.to}`, r.trigger?.by ?? 'user', formatStrategy(r),
        r.outcome === 'committed' ? 'moved' : `${r.outcome === 'cancelled' ? 'cancelled' : 'failed'} (${r.failedPhase ?? '?'})`, formatMs(r.totalMs),
        r.downtimeMs === undefined ? '-' : formatMs(r.downtimeMs), formatLinkBytes(r),
      ]),
    ));
  });

program
  .command('placement')
  .description('where the VM should run: auto (the policy moves it), keep-edge or keep-core (a pin, which always wins); without a mode, shows the mode and the latest decision with its reasons')
  .argument('<vm>', 'VM name')
  .addArgument(new Argument('[mode]', 'the new mode').choices([...PLACEMENT_MODES]))
  .option('--json', 'print JSON for scripts', false)
  .action(async (vmName: string, mode: PlacementMode | undefined, opts: { json: boolean }, command: Command) => {
    const reply = await withAgent(command, (client) => client.request({ cmd: 'placement', vm: vmName, ...(mode ? { mode } : {}) }));
    if (opts.json) return printJson(reply);
    process.stdout.write(`placement of "${reply.vm}": ${reply.mode}\n`);
    if (reply.decision) process.stdout.write(`latest decision: ${describeDecision(reply.decision, reply.decision.at).replace(/^\+0\.0 s\s*/, '')}\n`);
  });

function configPath(command: Command): string {
  return resolve(command.optsWithGlobals<{ config: string }>().config);
}

/**
 * The settings through the running edge agent (its file is the one in force, and a change applies at
 * once); with no agent running, on the file itself (the agent reads it when it starts).
 */
async function withSettings<T>(command: Command, viaAgent: (client: LocalApiClient) => Promise<T>, onFile: (service: ConfigService) => Promise<T>): Promise<{ result: T; live: boolean }> {
  return withAgentOrAlone(command, viaAgent, async () => {
    const service = await ConfigService.open({ path: configPath(command), watch: false });
    try {
      return await onFile(service);
    } finally {
      await service.close();
    }
  });
}

/** The agent may have been started with another file than this command would use: say which one counts. */
function noteOtherFile(command: Command, reply: ConfigReply): void {
  if (reply.path !== configPath(command)) process.stderr.write(`note: the running edge agent uses ${reply.path}\n`);
}

/** KEY VALUE → a merge patch. VALUE is JSON (40, 0.5, null), else the text itself (which the schema then refuses with a reason). */
function settingPatch(key: string, text: string): ConfigPatch {
  let value: unknown = text;
  try {
    value = JSON.parse(text);
  } catch {
    // not JSON: the text as it is
  }
  try {
    return patchAt(key, value);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

const settings = program
  .command('config')
  .description(`the edge agent's settings file (--config; default $XDG_CONFIG_HOME/snowbird/config.json): the bandwidth cap for moves that set none, the placement policy's knobs. A valid edit of the file applies at once; an invalid one is reported and the last good settings stay in force. Through the running edge agent when there is one, else on the file. Settings: ${CONFIG_KEYS.join(', ')}`);

settings
  .command('show', { isDefault: true })
  .description('(the default) print the file\'s path, the settings in force and, when the file is invalid, why: exit status 1 then, the last good settings stay in force')
  .option('--json', 'print JSON for scripts: {path, config, error}', false)
  .action(async (opts: { json: boolean }, command: Command) => {
    const { result: reply } = await withSettings(command, (client) => client.request({ cmd: 'config' }), async (service) => service.reply());
    noteOtherFile(command, reply);
    if (opts.json) printJson(reply);
    else {
      const { core, ...fromFile } = reply.config;
      process.stdout.write(`config file: ${reply.path}\n`);
      if (core) process.stdout.write(`paired core: ${core.name ?? '?'} at ${core.url}${core.fingerprint ? ` (${core.fingerprint})` : ''}\n`);
      process.stdout.write(`settings in force (anything not set has its default):\n${JSON.stringify(fromFile, null, 2)}\n`);
    }
    if (reply.error) {
      process.stderr.write(`config.json is invalid: ${reply.error.message}\n  the last good settings stay in force; fix the file and they apply when it is saved\n`);
      process.exitCode = 1;
    }
  });

settings
  .command('set')
  .description('change one setting: validated first (nothing is written if it is invalid), then written atomically; the running edge agent applies it at once. e.g. `snowbird config set migration.bandwidthCapMbit 40`; `null` removes a setting (back to its default)')
  .argument('<key>', `the setting: ${CONFIG_KEYS.join(', ')}`)
  .argument('<value>', 'a number, true or false, one of the setting\'s choices, or null to remove the setting')
  .action(async (key: string, value: string, _opts: unknown, command: Command) => {
    const patch = settingPatch(key, value);
    const { result: reply, live } = await withSettings(
      command,
      (client) => client.request({ cmd: 'config-set', patch }),
      async (service) => {
        const update = await service.update(patch);
        if (!update.ok) throw update.error;
        return service.reply();
      },
    );
    noteOtherFile(command, reply);
    process.stdout.write(`${key} = ${value}: written to ${reply.path}; ${live ? 'in force now' : 'no edge agent runs here: it applies when one starts'}\n`);
  });

settings
  .command('path')
  .description('print the settings file\'s path (the running edge agent\'s, when there is one)')
  .action(async (_opts: unknown, command: Command) => {
    const { result: reply } = await withSettings(command, (client) => client.request({ cmd: 'config' }), async (service) => service.reply());
    process.stdout.write(`${reply.path}\n`);
  });

const trace = program.command('trace').description('interaction samples, as the placement policy sees them');

trace
  .command('record')
  .description('save a VM\'s interaction samples (about 4 per second) as JSON lines, for `snowbird policy replay`; stops after --seconds or on Ctrl-C')
  .argument('<vm>', 'VM name')
  .option('--out <file>', 'write here instead of standard output')
  .option('--seconds <n>', 'record this long', positiveInt)
  .action(async (vmName: string, opts: { out?: string; seconds?: number }, command: Command) => {
    const out = opts.out === undefined ? process.stdout : createWriteStream(opts.out, { flags: 'w', mode: 0o600 });
    const until = opts.seconds === undefined ? Infinity : Date.now() + opts.seconds * 1000;
    let stop = false;
    process.once('SIGINT', () => (stop = true));
    let after = Date.now();
    let count = 0;
    await withAgent(command, async (client) => {
      while (!stop && Date.now() < until) {
        await new Promise((r) => setTimeout(r, Math.min(1000, Math.max(0, until - Date.now()))));
        const samples = await client.request({ cmd: 'samples', vm: vmName, after });
        if (samples.length > 0) {
          out.write(formatTrace(samples));
          after = samples.at(-1)?.at ?? after;
          count += samples.length;
        }
      }
    });
    if (out !== process.stdout) await new Promise<void>((resolve) => out.end(resolve));
    process.stderr.write(`recorded ${count} samples of "${vmName}"${opts.out ? ` to ${opts.out}` : ''}\n`);
  });

const policy = program.command('policy').description('the automatic placement policy, offline');

policy
  .command('replay')
  .description('the decisions the placement policy would take on a recorded trace (samples as JSON lines, from `snowbird trace record`)')
  .argument('<file>', 'trace file (JSON lines)')
  .addOption(new Option('--mode <mode>', 'replay as if the user had chosen this placement mode').choices([...PLACEMENT_MODES]))
  .addOption(new Option('--sites <how>', 'simulated: decisions move the VM; recorded: follow where it really was').choices(['simulated', 'recorded']).default('simulated'))
  .option('--params <file>', 'policy parameters as JSON (any subset; the rest default)')
  .option('--all', 'print every decision, not only the moves and changes of rule', false)
  .option('--json', 'print the decisions as JSON lines', false)
  .action(async (file: string, opts: { mode?: PlacementMode; sites: 'simulated' | 'recorded'; params?: string; all: boolean; json: boolean }) => {
    const samples = parseTrace(await readFile(file, 'utf8'));
    if (samples.length === 0) throw new Error(`${file} holds no samples`);
    const params = policyParamsSchema.parse(opts.params === undefined ? {} : JSON.parse(await readFile(opts.params, 'utf8')));
    const result = replay(samples, params, [], { sites: opts.sites, ...(opts.mode ? { mode: opts.mode } : {}) });
    const shown = opts.all ? result.decisions : decisionChanges(result.decisions);
    if (opts.json) return void process.stdout.write(shown.map((d) => `${JSON.stringify(d)}\n`).join(''));
    const origin = samples[0]?.at ?? 0;
    process.stdout.write(`${shown.map((d) => describeDecision(d, origin)).join('\n')}\n`);
    const span = (samples.at(-1)?.at ?? origin) - origin;
    process.stdout.write(`\n${samples.length} samples over ${formatMs(span)}: ${result.moves.length} move(s)${result.moves.map((m) => ` → ${m.to} at +${formatMs(m.at - origin)}`).join(',')}\n`);
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const err = error as Error & { command?: string };
  process.stderr.write(`snowbird: ${err.message}\n`);
  if (err.command) process.stderr.write(`  run: ${err.command}\n`);
  process.exitCode = 1;
}
