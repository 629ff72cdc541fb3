// The edge agent's local API: what the CLI and the app may ask. One command union, validated
// on arrival; replies and progress come back tagged with the request id.
import { z } from 'zod';
import type { VmStatusReport } from './vm-status.ts';
import { safeId } from './vm-spec.ts';
import { DEDUP_MODES, MEMORY_STRATEGIES, SITE_ROLES, migrationProgressSchema, type MigrationRecord, type SiteRole } from './migration.ts';
import { displayStatusSchema } from './display.ts';
import { PLACEMENT_MODES, interactionSampleSchema, type InteractionSample, type PlacementDecision, type PlacementMode } from './placement.ts';
import { configReplySchema, type ConfigReply } from './config.ts';


export const localCommandSchema = z.discriminatedUnion('cmd', [
  z.object({ cmd: z.literal('status') }),
  z.object({
    cmd: z.literal('pair'),
    url: z.string().max(512),
    token: z.string().min(1).max(256),
    fingerprint: z.string().max(200).optional(),
  }),
  z.object({
    cmd: z.literal('migrate'),
    vm: safeId,
    to: z.enum(SITE_ROLES),
    strategy: z.enum(MEMORY_STRATEGIES).optional(),
    /** Memory stream cap in bytes/s. */
    maxBandwidth: z.number().int().positive().optional(),
    downtimeLimitMs: z.number().int().positive().max(60_000).optional(),
    /** QEMU's XBZRLE for later pre-copy passes (a delta against the page sent before). Default true. */
    xbzrle: z.boolean().optional(),
    /** The memory stream through the dedup transport: auto (when the link is the bottleneck), on, off. Default: the settings file's, else auto. */
    dedup: z.enum(DEDUP_MODES).optional(),
  }),
  /** Abandons the VM's migration under way, if it has not switched over yet: the VM stays where it runs. */
  /** Where and how a VM runs, at this site or (asked through the edge agent) at the core. */
  z.object({ cmd: z.literal('vm-status'), vm: safeId, sampleMs: z.number().int().nonnegative().max(30_000).optional() }),
  /** The VM's serial console from byte `offset`, where it runs (or its last run here). */
  z.object({ cmd: z.literal('vm-console'), vm: safeId, offset: z.number().int().nonnegative() }),
  /** Boots a stopped VM at this site (the app's Start); refused when it runs at either site. */
  z.object({ cmd: z.literal('vm-start'), vm: safeId }),
  /** Powers a VM off wherever it runs; refused while it moves unless `cancelMove` (the move is cancelled first). */
  z.object({ cmd: z.literal('vm-stop'), vm: safeId, force: z.boolean().optional(), graceMs: z.number().int().positive().max(600_000).optional(), cancelMove: z.boolean().optional() }),
  z.object({ cmd: z.literal('cancel'), vm: safeId, /** Only this move (a late Ctrl-C must not cancel the next one). */ migrationId: z.string().max(64).optional() }),
  z.object({ cmd: z.literal('history'), vm: safeId.optional(), limit: z.number().int().positive().max(10_000).optional() }),
  /** Opens (or finds) the VM's display gateway at the edge: where viewers connect. */
  z.object({ cmd: z.literal('display'), vm: safeId }),
  /** The VM's placement mode (set it with `mode`) and the policy's latest decision. */
  z.object({ cmd: z.literal('placement'), vm: safeId, mode: z.enum(PLACEMENT_MODES).optional() }),
  /** Interaction samples taken strictly after `after` (ms since the epoch), oldest first. */
  z.object({ cmd: z.literal('samples'), vm: safeId, after: z.number().nonnegative(), limit: z.number().int().positive().max(10_000).optional() }),
  /** Placement decisions worth keeping (moves and changes of rule), newest first. */
  z.object({ cmd: z.literal('decisions'), vm: safeId.optional(), limit: z.number().int().positive().max(10_000).optional() }),
  /** Where the edge agent serves the app in a browser: a loopback URL with the run's token. */
  z.object({ cmd: z.literal('ui') }),
  /** The edge agent's settings (config.json): its path, the settings in force and, when the file is invalid, why. */
  z.object({ cmd: z.literal('config') }),
  /**
   * Changes settings: a JSON merge patch (`null` removes a setting), checked field by field against
   * src/shared/config.ts — an invalid one fails with code `invalid-config` and writes nothing.
   */
  z.object({ cmd: z.literal('config-set'), patch: z.record(z.string(), z.unknown()) }),
]);
export type LocalCommand = z.infer<typeof localCommandSchema>;

export const vmLocationSchema = z.object({
  name: z.string(),
  /** The site that runs (or last ran) the VM; `moving` while a migration is under way. */
  location: z.enum(['edge', 'core', 'moving', 'stopped']),
  state: z.string(),
});

export const agentStatusSchema = z.object({
  role: z.enum(SITE_ROLES),
  site: z.string(),
  fingerprint: z.string(),
  listen: z.string().optional(),
  peer: z.object({
    paired: z.boolean(),
    connected: z.boolean(),
    name: z.string().optional(),
    url: z.string().optional(),
    fingerprint: z.string().optional(),
  }),
  vms: z.array(vmLocationSchema),
  migrations: z.array(migrationProgressSchema),
});
export type AgentStatus = z.infer<typeof agentStatusSchema>;

/** `requested`: the migration will roll back unless it already switched over (its record says which). */
export const cancelReplySchema = z.object({ requested: z.boolean(), detail: z.string() });
export type CancelReply = z.infer<typeof cancelReplySchema>;

/** `vm-console`: the serial log's bytes from the offset asked (at most CONSOLE_CHUNK_BYTES), and where to ask next. */
export interface VmConsoleReply {
  site: SiteRole;
  text: string;
  next: number;
}

/** The most of a serial log one `vm-console` answer carries (a frame on the link stays small). */
export const CONSOLE_CHUNK_BYTES = 256 * 1024;

/** `vm-start`: where the VM was booted, and its QEMU. */
export interface VmStartReply {
  site: SiteRole;
  pid: number;
}

/** `vm-stop`: whether a running VM was powered off, and at which site. */
export interface VmStopReply {
  outcome: 'stopped' | 'not-running';
  site: SiteRole;
}

export const displayReplySchema = z.object({
  vm: z.string(),
  /** Where the gateway's VNC server is: the site that runs the VM. */
  at: z.enum(SITE_ROLES),
  /** noVNC connects here; the URL carries the gateway's per-run token. */
  webSocketUrl: z.string(),
  /** HOST:PORT on loopback for any VNC client (security None). */
  rfbAddress: z.string(),
  status: displayStatusSchema,
  viewers: z.number().int().nonnegative(),
});
export type DisplayReply = z.infer<typeof displayReplySchema>;

export interface LocalReplies {
  status: AgentStatus;
  pair: { peerName: string; fingerprint: string };
  migrate: MigrationRecord;
  cancel: CancelReply;
  'vm-status': VmStatusReport;
  'vm-stop': VmStopReply;
  'vm-start': VmStartReply;
  'vm-console': VmConsoleReply;
  history: MigrationRecord[];
  display: DisplayReply;
  placement: PlacementReply;
  samples: InteractionSample[];
  decisions: { vm: string; decision: PlacementDecision }[];
  ui: UiReply;
  config: ConfigReply;
  'config-set': ConfigReply;
}

export const uiReplySchema = z.object({ url: z.string() });
export type UiReply = z.infer<typeof uiReplySchema>;

export interface PlacementReply {
  vm: string;
  mode: PlacementMode;
  /** The policy's latest decision for the VM (none before its first sample). */
  decision?: PlacementDecision;
}

export const localErrorSchema = z.object({ code: z.string(), message: z.string() });
export type LocalError = z.infer<typeof localErrorSchema>;

/** Wire messages on the local socket (node-ipc events). */
export const localRequestSchema = z.object({ id: z.number().int().nonnegative(), command: z.unknown() });
export const localResponseSchema = z.union([
  z.object({ id: z.number().int(), ok: z.literal(true), result: z.unknown() }),
  z.object({ id: z.number().int(), ok: z.literal(false), error: localErrorSchema }),
]);
export const localProgressSchema = z.object({ id: z.number().int(), progress: migrationProgressSchema });

/**
 * A request as it arrives on any transport (node-ipc, the app's WebSocket), checked against the
 * command union: the command, or the error to send back under the request's id (-1 when the request
 * itself is unreadable).
 */
export function parseLocalRequest(data: unknown): { id: number; command: LocalCommand } | { id: number; error: LocalError } {
  const request = localRequestSchema.safeParse(data);
  if (!request.success) return { id: -1, error: { code: 'malformed', message: 'request must be {id, command}' } };
  const { id } = request.data;
  const command = localCommandSchema.safeParse(request.data.command);
  if (command.success) return { id, command: command.data };
  const unknownCmd = (request.data.command as { cmd?: unknown } | null)?.cmd;
  const known = localCommandSchema.options.map((o) => o.shape.cmd.value);
  return {
    id,
    error: typeof unknownCmd === 'string' && !known.includes(unknownCmd as LocalCommand['cmd'])
      ? { code: 'unknown-command', message: `unknown command "${unknownCmd}"; known: ${known.join(', ')}` }
      : { code: 'invalid', message: z.prettifyError(command.error) },
  };
}

/**
 * What the edge agent pushes to the app over its WebSocket (`/api`), besides replies and progress:
 * the agent's status whenever its store changes, each VM's new interaction samples every second, and
 * the settings whenever they (or the file's validity, or the pairing) change.
 */
export const uiPushSchema = z.discriminatedUnion('push', [
  z.object({ push: z.literal('status'), status: agentStatusSchema }),
  z.object({ push: z.literal('samples'), vm: z.string(), samples: z.array(interactionSampleSchema) }),
  z.object({ push: z.literal('config'), config: configReplySchema }),
]);
export type UiPush = z.infer<typeof uiPushSchema>;
