// The edge agent's settings file (config.json): what it holds, how it is validated (field by field,
// with messages a user can act on), and how a change is expressed (a JSON merge patch). Shared by the
// agent (src/main/config-service.ts loads and watches the file), the CLI (`snowbird config`) and the
// app's Settings panel, which validates its form with the same schema before it sends anything.
import { z } from 'zod';
import { DEDUP_MODES } from './migration.ts';
import { policyParamsSchema, type PolicyParams } from './placement.ts';

/** The file's name in the user's config directory ($XDG_CONFIG_HOME/snowbird/). */
export const CONFIG_FILE_NAME = 'config.json';

// The policy's own validators without their defaults: a knob the file leaves out keeps the policy's
// default, and `snowbird config` shows only what the user set.
const policy = policyParamsSchema.shape;

/** The placement policy's knobs (src/shared/placement.ts documents each); any subset. */
export const policySettingsSchema = z.strictObject({
  minConfidence: policy.minConfidence.unwrap().optional(),
  gapToleranceMs: policy.gapToleranceMs.unwrap().optional(),
  minCrunchMs: policy.minCrunchMs.unwrap().optional(),
  interactiveSustainMs: policy.interactiveSustainMs.unwrap().optional(),
  lindyFactor: policy.lindyFactor.unwrap().optional(),
  maxRemainingMs: policy.maxRemainingMs.unwrap().optional(),
  coreSpeedup: policy.coreSpeedup.unwrap().optional(),
  costMargin: policy.costMargin.unwrap().optional(),
  minDwellMs: policy.minDwellMs.unwrap().optional(),
  maxMoves: policy.maxMoves.unwrap().optional(),
  rateWindowMs: policy.rateWindowMs.unwrap().optional(),
  historyLimit: policy.historyLimit.unwrap().optional(),
  setupMs: policy.setupMs.unwrap().optional(),
  assumedLinkBytesPerS: policy.assumedLinkBytesPerS.unwrap().optional(),
  pendingTimeoutMs: policy.pendingTimeoutMs.unwrap().optional(),
});
export type PolicySettings = z.infer<typeof policySettingsSchema>;
export type PolicySettingKey = keyof PolicySettings;

/** What config.json may hold. Unknown keys are errors: a misspelt setting must not be silently ignored. */
export const configFileSchema = z.strictObject({
  migration: z
    .strictObject({
      /** Cap on a move's memory stream, Mbit/s, for moves that do not set their own (`migrate --bandwidth`). */
      bandwidthCapMbit: z.number().positive().optional(),
      /** The memory stream through the dedup transport, for moves that do not say (`migrate --dedup`): auto (default), on, off. */
      dedup: z.enum(DEDUP_MODES).optional(),
      /** Each VM's dedup chunk store, at each site, holds at most this many MiB (default: twice the VM's RAM). */
      chunkStoreMiB: z.number().int().positive().optional(),
      /**
       * Whether a move to the core may end in post-copy (default true): the default strategy's last
       * lever when pre-copy cannot converge. Off, such a move throttles the guest (KVM), accepts a
       * longer pause up to 4× the downtime limit (TCG), or fails with the reason.
       */
      postcopyToCore: z.boolean().optional(),
    })
    .optional(),
  policy: policySettingsSchema.optional(),
});
export type ConfigFile = z.infer<typeof configFileSchema>;

/** The core this edge is paired with. Set by pairing (`snowbird pair`, the Settings panel), never in the file. */
export const pairedCoreSchema = z.object({
  url: z.string(),
  name: z.string().optional(),
  fingerprint: z.string().optional(),
});
export type PairedCore = z.infer<typeof pairedCoreSchema>;

/** The settings in force: the file's, plus the paired core (read-only). */
export const snowbirdConfigSchema = configFileSchema.extend({ core: pairedCoreSchema.optional() });
export type SnowbirdConfig = z.infer<typeof snowbirdConfigSchema>;

/** Why the file (or a change) is invalid: one message, and per field (`policy.minDwellMs`) what is wrong. */
export const configProblemSchema = z.object({
  message: z.string(),
  fields: z.record(z.string(), z.string()).optional(),
});
export type ConfigProblem = z.infer<typeof configProblemSchema>;

/** The local API's `config` and `config-set` replies, and the app's `config` push. */
export const configReplySchema = z.object({
  /** The file the edge agent loads and watches. */
  path: z.string(),
  config: snowbirdConfigSchema,
  /** The file on disk is invalid: `config` is the last good one, still in force. */
  error: configProblemSchema.optional(),
});
export type ConfigReply = z.infer<typeof configReplySchema>;

/** A change: a JSON merge patch (RFC 7386) on the file's settings; `null` removes a setting. */
export type ConfigPatch = Record<string, unknown>;

export const CONFIG_SECTIONS = {
  migration: ['bandwidthCapMbit', 'dedup', 'chunkStoreMiB', 'postcopyToCore'],
  policy: Object.keys(policySettingsSchema.shape) as PolicySettingKey[],
} as const;

/** Every setting's dotted key, for messages and the CLI's help. */
export const CONFIG_KEYS: string[] = Object.entries(CONFIG_SECTIONS).flatMap(([section, keys]) => keys.map((key) => `${section}.${key}`));

function knownKeysAt(path: readonly PropertyKey[]): string[] {
  if (path.length === 0) return Object.keys(CONFIG_SECTIONS);
  const section = CONFIG_SECTIONS[String(path[0]) as keyof typeof CONFIG_SECTIONS] as readonly string[] | undefined;
  return path.length === 1 && section ? [...section] : [];
}

function messageOf(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      if (issue.expected === 'int') return 'must be a whole number';
      return issue.expected === 'object' ? 'must be an object ({ … })' : `must be a ${issue.expected}`;
    case 'too_small':
      return `must be ${issue.inclusive ? 'at least' : 'more than'} ${String(issue.minimum)}`;
    case 'too_big':
      return `must be ${issue.inclusive ? 'at most' : 'less than'} ${String(issue.maximum)}`;
    case 'invalid_value':
      return `must be one of ${issue.values.map(String).join(', ')}`;
    default:
      return issue.message;
  }
}

/** Per dotted field, the first thing wrong with it (an unknown key is its own field). */
export function fieldErrorsOf(error: z.ZodError): Record<string, string> {
  const fields: Record<string, string> = {};
  const add = (field: string, message: string): void => {
    fields[field] ??= message;
  };
  for (const issue of error.issues) {
    const at = issue.path.map(String).join('.');
    if (issue.code !== 'unrecognized_keys') {
      add(at || '(file)', messageOf(issue));
      continue;
    }
    for (const key of issue.keys) {
      const field = at ? `${at}.${key}` : key;
      if (field === 'core') add(field, 'the paired core is not set here: pair with `snowbird pair https://HOST:PORT --token T` or in the app\'s Settings');
      else add(field, `unknown setting; known here: ${knownKeysAt(issue.path).join(', ') || 'none'}`);
    }
  }
  return fields;
}

/** "field: message; field: message", for one-line errors. */
export function describeFields(fields: Record<string, string>): string {
  return Object.entries(fields).map(([field, message]) => `${field}: ${message}`).join('; ');
}

export type ConfigParse = { ok: true; config: ConfigFile } | { ok: false; fields: Record<string, string> };

export function parseConfigFile(data: unknown): ConfigParse {
  const parsed = configFileSchema.safeParse(data);
  return parsed.success ? { ok: true, config: parsed.data } : { ok: false, fields: fieldErrorsOf(parsed.error) };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** RFC 7386: objects merge key by key, `null` removes a key, anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isPlainObject(patch)) return patch;
  const base = isPlainObject(target) ? target : {};
  const keys = new Set([...Object.keys(base), ...Object.keys(patch)]);
  return Object.fromEntries(
    [...keys].flatMap((key): [string, unknown][] => {
      if (!Object.hasOwn(patch, key)) return [[key, base[key]]];
      return patch[key] === null ? [] : [[key, mergePatch(base[key], patch[key])]];
    }),
  );
}

/** `migration.bandwidthCapMbit`, 40 → `{ migration: { bandwidthCapMbit: 40 } }`. */
export function patchAt(key: string, value: unknown): ConfigPatch {
  const segments = key.split('.');
  if (segments.some((s) => s.length === 0)) throw new Error(`"${key}" is not a setting's key; known: ${CONFIG_KEYS.join(', ')}`);
  return segments.reduceRight<unknown>((inner, segment) => ({ [segment]: inner }), value) as ConfigPatch;
}

/** The bandwidth cap for moves that set none, bytes per second (what `migrate`'s maxBandwidth takes). */
export function bandwidthCapBytesPerS(config: ConfigFile): number | undefined {
  const mbit = config.migration?.bandwidthCapMbit;
  return mbit === undefined ? undefined : Math.max(1, Math.round((mbit * 1_000_000) / 8));
}

/** The policy's parameters: the file's knobs over the defaults. */
export function effectivePolicyParams(config: ConfigFile): PolicyParams {
  return policyParamsSchema.parse({ ...config.policy });
}
