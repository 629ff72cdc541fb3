// The peer link's messages. Every frame is one JSON object, checked against these schemas before it is
// acted on. Pure: shared by the server, the client and tests that speak the protocol by hand.
import { z } from 'zod';

export const PROTOCOL_VERSION = 1;

/** Error codes the link itself produces; handlers may add their own (see ERROR_CODE_PATTERN). */
export const LINK_ERROR_CODES = [
  'malformed',
  'too-large',
  'unsupported-version',
  'unknown-method',
  'invalid-params',
  'unauthorized',
  'not-paired',
  'bad-token',
  'not-connected',
  'unknown-target',
  'target-unavailable',
  'unknown-stream',
  'timeout',
  'internal',
] as const;
export type LinkErrorCode = (typeof LINK_ERROR_CODES)[number];

/** What a code may look like on the wire (handler codes such as `vm-not-found` or `ENOENT` included). */
export const ERROR_CODE_PATTERN = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

/** Site names and stream target ids: no slashes, no leading dot, so neither can walk a path. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Methods under this prefix belong to the link itself (e.g. `link.dial`); handlers cannot claim them. */
export const RESERVED_METHOD_PREFIX = 'link.';

const MAX_TEXT = 4096;

export const errorBodySchema = z.object({
  code: z.string().regex(ERROR_CODE_PATTERN),
  message: z.string().max(16 * 1024),
});
export type ErrorBody = z.infer<typeof errorBodySchema>;

const credential = z.string().min(16).max(512);

/**
 * `stream` in a stream-mode hello: `target` when the dialer opens a stream to a target the listener
 * exposes; `id` when the dialer answers the listener's request for a stream (one-time id).
 * `link` names the control link the stream belongs to (its id comes in the control hello's reply).
 */
export const streamHelloSchema = z.union([
  z.object({ link: z.string().min(1).max(128), target: z.string().min(1).max(MAX_TEXT) }),
  z.object({ link: z.string().min(1).max(128), id: z.string().min(1).max(128) }),
]);
export type StreamHello = z.infer<typeof streamHelloSchema>;

export const helloSchema = z.object({
  type: z.literal('hello'),
  version: z.number().int().positive(),
  mode: z.enum(['control', 'stream', 'pair']),
  /** The dialing site's name (required for pairing; informational otherwise). */
  name: z.string().regex(NAME_PATTERN).optional(),
  /** control, stream: the long-term credential obtained at pairing. */
  credential: credential.optional(),
  /** pair: proof of the one-time token, bound to both certificates (see tokenProof in client.ts). */
  token: z.string().min(1).max(512).optional(),
  stream: streamHelloSchema.optional(),
});
export type Hello = z.infer<typeof helloSchema>;

export const requestSchema = z.object({
  type: z.literal('request'),
  id: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  method: z.string().min(1).max(256),
  params: z.unknown().optional(),
});
export type RequestFrame = z.infer<typeof requestSchema>;

/** Replies to a request. The reply to a hello is a response with id 0. */
export const responseSchema = z.discriminatedUnion('ok', [
  z.object({
    type: z.literal('response'),
    id: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    ok: z.literal(true),
    result: z.unknown().optional(),
  }),
  z.object({
    type: z.literal('response'),
    id: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    ok: z.literal(false),
    error: errorBodySchema,
  }),
]);
export type ResponseFrame = z.infer<typeof responseSchema>;

export const eventSchema = z.object({
  type: z.literal('event'),
  name: z.string().min(1).max(256),
  payload: z.unknown().optional(),
});
export type EventFrame = z.infer<typeof eventSchema>;

/** A problem with something that was not a request (or could not be read as one). */
export const errorFrameSchema = z.object({ type: z.literal('error'), error: errorBodySchema });
export type ErrorFrame = z.infer<typeof errorFrameSchema>;

export const pingSchema = z.object({ type: z.literal('ping'), seq: z.number().int().nonnegative() });
export const pongSchema = z.object({ type: z.literal('pong'), seq: z.number().int().nonnegative() });

export const messageSchema = z.union([
  helloSchema,
  requestSchema,
  responseSchema,
  eventSchema,
  errorFrameSchema,
  pingSchema,
  pongSchema,
]);
export type LinkMessage = z.infer<typeof messageSchema>;

/** Reply to a control hello. */
export const controlWelcomeSchema = z.object({
  link: z.string().min(1).max(128),
  serverName: z.string().regex(NAME_PATTERN),
  /** The peer's name as the server has it on record. */
  peerName: z.string().max(MAX_TEXT),
});
export type ControlWelcome = z.infer<typeof controlWelcomeSchema>;

/** Reply to a pair hello. */
export const pairWelcomeSchema = z.object({
  credential,
  serverFingerprint: z.string().max(256),
  serverName: z.string().regex(NAME_PATTERN),
  /** The server's proof that it knows the token, bound to both certificates. */
  proof: z.string().max(512),
});
export type PairWelcome = z.infer<typeof pairWelcomeSchema>;

/** Params of the built-in `link.dial` request: the listener asks the dialer for a stream. */
export const dialParamsSchema = z.object({ id: z.string().min(1).max(128), target: z.string().min(1).max(MAX_TEXT) });
export const DIAL_METHOD = `${RESERVED_METHOD_PREFIX}dial`;

export type ParsedMessage =
  | { ok: true; message: LinkMessage }
  /** `requestId` is set when the frame looked like a request, so the error can answer it. */
  | { ok: false; error: ErrorBody; requestId?: number };

/** Decodes and validates one frame's payload. Never throws. */
export function parseMessage(payload: Uint8Array): ParsedMessage {
  let text: string;
  let value: unknown;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(payload);
    value = JSON.parse(text);
  } catch (error) {
    return { ok: false, error: { code: 'malformed', message: `frame is not UTF-8 JSON: ${describe(error)}` } };
  }
  const parsed = messageSchema.safeParse(value);
  if (parsed.success) return { ok: true, message: parsed.data };
  const requestId = requestIdOf(value);
  const type = isRecord(value) && typeof value.type === 'string' ? value.type : undefined;
  const detail = type === undefined ? 'frame has no "type"' : `bad "${type.slice(0, 32)}" frame: ${summarize(type, value)}`;
  return requestId === undefined
    ? { ok: false, error: { code: 'malformed', message: detail } }
    : { ok: false, error: { code: 'malformed', message: detail }, requestId };
}

/** Zod's issues for the schema the frame claims to follow, on one line. */
function summarize(type: string, value: unknown): string {
  const schema = schemaFor(type);
  if (schema === undefined) return `unknown frame type "${type.slice(0, 32)}"`;
  const result = schema.safeParse(value);
  return result.success ? 'invalid' : issuesText(result.error);
}

function schemaFor(type: string): z.ZodType | undefined {
  switch (type) {
    case 'hello':
      return helloSchema;
    case 'request':
      return requestSchema;
    case 'response':
      return responseSchema;
    case 'event':
      return eventSchema;
    case 'error':
      return errorFrameSchema;
    case 'ping':
      return pingSchema;
    case 'pong':
      return pongSchema;
    default:
      return undefined;
  }
}

/** One line, short enough for an error message. */
export function issuesText(error: z.ZodError): string {
  const text = error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
  return text.length > 1000 ? `${text.slice(0, 1000)}…` : text;
}

function requestIdOf(value: unknown): number | undefined {
  if (!isRecord(value) || value.type !== 'request') return undefined;
  const { id } = value;
  return typeof id === 'number' && Number.isSafeInteger(id) && id > 0 ? id : undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
