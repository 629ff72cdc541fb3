// Typed signatures for the QMP commands snowbird uses, checked against QEMU 7.2's query-qmp-schema.
// Anything else goes through QmpClient.executeRaw.

export type { QmpEvent, QmpGreeting } from './messages.ts';

/** Commands that return nothing return an empty object. */
type Empty = Record<string, never>;

export type RunState =
  | 'debug' | 'inmigrate' | 'internal-error' | 'io-error' | 'paused' | 'postmigrate' | 'prelaunch'
  | 'finish-migrate' | 'restore-vm' | 'running' | 'save-vm' | 'shutdown' | 'suspended' | 'watchdog'
  | 'guest-panicked' | 'colo';

export interface StatusInfo {
  running: boolean;
  status: RunState;
  singlestep?: boolean;
}

export interface VersionInfo {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  /** Host thread id of the vCPU. */
  'thread-id': number;
  props?: Partial<Record<'node-id' | 'socket-id' | 'die-id' | 'cluster-id' | 'core-id' | 'thread-id', number>>;
  target: string;
}

export type MigrationStatus =
  | 'none' | 'setup' | 'cancelling' | 'cancelled' | 'active' | 'postcopy-active' | 'postcopy-paused'
  | 'postcopy-recover' | 'completed' | 'failed' | 'colo' | 'pre-switchover' | 'device' | 'wait-unplug';

/** RAM counters; QEMU 7.2 sends all of them whenever it sends `ram`. Sizes in bytes, mbps in Mbit/s. */
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
}

export interface XbzrleCacheStats {
  'cache-size': number;
  bytes: number;
  pages: number;
  'cache-miss': number;
  'cache-miss-rate': number;
  'encoding-rate': number;
  overflow: number;
}

/** query-migrate: QEMU omits fields by state (`{}` before any migration). Times in ms. */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  'xbzrle-cache'?: XbzrleCacheStats;
  'total-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
}

export interface MigrationCapabilityStatus {
  /** e.g. xbzrle, auto-converge, postcopy-ram, return-path, multifd, pause-before-switchover, events. */
  capability: string;
  state: boolean;
}

/** Migration parameters; migrate-set-parameters takes any subset. Bandwidths in bytes/s, times in ms. */
export interface MigrationParameters {
  'announce-initial': number;
  'announce-max': number;
  'announce-rounds': number;
  'announce-step': number;
  'compress-level': number;
  'compress-threads': number;
  'compress-wait-thread': boolean;
  'decompress-threads': number;
  'throttle-trigger-threshold': number;
  'cpu-throttle-initial': number;
  'cpu-throttle-increment': number;
  'cpu-throttle-tailslow': boolean;
  'tls-creds': string;
  'tls-hostname': string;
  'tls-authz': string;
  'max-bandwidth': number;
  'downtime-limit': number;
  'x-checkpoint-delay': number;
  'block-incremental': boolean;
  'multifd-channels': number;
  'xbzrle-cache-size': number;
  'max-postcopy-bandwidth': number;
  'max-cpu-throttle': number;
  'multifd-compression': 'none' | 'zlib' | 'zstd';
  'multifd-zlib-level': number;
  'multifd-zstd-level': number;
}

/** blockdev-add takes a union over ~40 drivers; only the common keys are typed. */
export interface BlockdevOptions {
  driver: string;
  'node-name': string;
  [option: string]: unknown;
}

export type BlockdevOnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';

interface BlockJobCommon {
  'job-id'?: string;
  speed?: number;
  'filter-node-name'?: string;
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
}

export interface BlockdevMirrorArgs extends BlockJobCommon {
  /** Source node name. */
  device: string;
  /** Target node name (already added with blockdev-add). */
  target: string;
  sync: 'top' | 'full' | 'none' | 'incremental' | 'bitmap';
  'copy-mode'?: 'background' | 'write-blocking';
  replaces?: string;
  granularity?: number;
  'buf-size'?: number;
  'on-source-error'?: BlockdevOnError;
  'on-target-error'?: BlockdevOnError;
}

export interface BlockCommitArgs extends BlockJobCommon {
  device: string;
  'base-node'?: string;
  'top-node'?: string;
  'backing-file'?: string;
  'on-error'?: BlockdevOnError;
}

export interface BlockStreamArgs extends BlockJobCommon {
  device: string;
  'base-node'?: string;
  bottom?: string;
  'backing-file'?: string;
  'on-error'?: BlockdevOnError;
}

export type JobStatus =
  | 'undefined' | 'created' | 'running' | 'paused' | 'ready' | 'standby' | 'waiting' | 'pending'
  | 'aborting' | 'concluded' | 'null';

export interface BlockJobInfo {
  type: string;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': 'ok' | 'failed' | 'nospace';
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
}

/** query-named-block-nodes entry; the throttling and image-detail fields are left loose. */
export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  backing_file_depth: number;
  image: { filename: string; format: string; 'virtual-size': number; 'actual-size'?: number; [key: string]: unknown };
  [key: string]: unknown;
}

/**
 * nbd-server-start still takes the *legacy* socket address in QEMU 7.2, with the details under
 * `data` ({type: 'unix', data: {path}}). The flat form fails with "Parameter 'addr.data' is missing".
 */
export type SocketAddressLegacy =
  | { type: 'unix'; data: { path: string } }
  | { type: 'inet'; data: { host: string; port: string } }
  | { type: 'fd'; data: { str: string } };

export interface BlockExportNbdArgs {
  type: 'nbd';
  id: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
  /** Export name clients ask for; defaults to the node name. */
  name?: string;
  description?: string;
  'allocation-depth'?: boolean;
}

export interface QmpCommands {
  'qmp_capabilities': { args: { enable?: string[] }; ret: Empty };
  'query-status': { args: undefined; ret: StatusInfo };
  'query-version': { args: undefined; ret: VersionInfo };
  'query-name': { args: undefined; ret: { name?: string } };
  'query-kvm': { args: undefined; ret: { enabled: boolean; present: boolean } };
  'query-cpus-fast': { args: undefined; ret: CpuInfoFast[] };
  'stop': { args: undefined; ret: Empty };
  'cont': { args: undefined; ret: Empty };
  'system_powerdown': { args: undefined; ret: Empty };
  'system_reset': { args: undefined; ret: Empty };
  'quit': { args: undefined; ret: Empty };
  'screendump': { args: { filename: string; device?: string; head?: number; format?: 'ppm' | 'png' }; ret: Empty };

  'migrate': { args: { uri: string; detach?: boolean; resume?: boolean }; ret: Empty };
  'migrate-incoming': { args: { uri: string }; ret: Empty };
  'migrate_cancel': { args: undefined; ret: Empty };
  'migrate-start-postcopy': { args: undefined; ret: Empty };
  'migrate-pause': { args: undefined; ret: Empty };
  'migrate-recover': { args: { uri: string }; ret: Empty };
  'query-migrate': { args: undefined; ret: MigrationInfo };
  'migrate-set-capabilities': { args: { capabilities: MigrationCapabilityStatus[] }; ret: Empty };
  'migrate-set-parameters': { args: Partial<MigrationParameters>; ret: Empty };
  'query-migrate-parameters': { args: undefined; ret: Partial<MigrationParameters> };

  'blockdev-add': { args: BlockdevOptions; ret: Empty };
  'blockdev-del': { args: { 'node-name': string }; ret: Empty };
  'blockdev-mirror': { args: BlockdevMirrorArgs; ret: Empty };
  'blockdev-snapshot': { args: { node: string; overlay: string }; ret: Empty };
  'block-commit': { args: BlockCommitArgs; ret: Empty };
  'block-stream': { args: BlockStreamArgs; ret: Empty };
  'block-job-cancel': { args: { device: string; force?: boolean }; ret: Empty };
  'block-job-complete': { args: { device: string }; ret: Empty };
  'query-block-jobs': { args: undefined; ret: BlockJobInfo[] };
  'query-named-block-nodes': { args: { flat?: boolean }; ret: BlockDeviceInfo[] };
  'nbd-server-start': { args: { addr: SocketAddressLegacy; 'tls-creds'?: string; 'max-connections'?: number }; ret: Empty };
  'nbd-server-stop': { args: undefined; ret: Empty };
  'block-export-add': { args: BlockExportNbdArgs; ret: Empty };
  'block-export-del': { args: { id: string; mode?: 'safe' | 'hard' }; ret: Empty };

  /** HMP passthrough; returns HMP's text output (with "\r\n" line ends). */
  'human-monitor-command': { args: { 'command-line': string; 'cpu-index'?: number }; ret: string };
}

export type QmpCommandName = keyof QmpCommands;

export interface QmpCallOptions {
  /** Default 30000. */
  timeoutMs?: number;
  /**
   * Out of band (`exec-oob`; the connection must have enabled the `oob` capability, and the command
   * must allow it, as migrate-pause and migrate-recover do): answered even while QEMU's main thread
   * is blocked, e.g. on a post-copy page fault whose page waits behind a broken stream.
   */
  oob?: boolean;
}

/**
 * execute()'s parameters after the command name: no arguments object for commands that take none, an
 * optional one when every argument is optional, a required one otherwise; then the call options.
 */
export type ArgsFor<K extends QmpCommandName> = QmpCommands[K]['args'] extends undefined
  ? [args?: undefined, opts?: QmpCallOptions]
  : Partial<QmpCommands[K]['args']> extends QmpCommands[K]['args']
    ? [args?: QmpCommands[K]['args'], opts?: QmpCallOptions]
    : [args: QmpCommands[K]['args'], opts?: QmpCallOptions];
