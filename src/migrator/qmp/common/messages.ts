// QMP message shapes (docs/interop/qmp-spec.txt in QEMU) and their classification. Pure: no I/O.

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  /** What the server offers for negotiation, e.g. ['oob']. */
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** One line from the server, classified. `id` is undefined when the server sent none. */
export type QmpInbound =
  | { type: 'greeting'; greeting: QmpGreeting }
  | { type: 'event'; event: QmpEvent }
  | { type: 'return'; id: unknown; value: unknown }
  | { type: 'error'; id: unknown; errorClass: string; desc: string }
  | { type: 'invalid'; reason: string };

const SNIPPET_CHARS = 200;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function snippet(text: string): string {
  return text.length > SNIPPET_CHARS ? `${text.slice(0, SNIPPET_CHARS)}…` : text;
}

function parseGreeting(body: unknown): QmpGreeting | undefined {
  if (!isRecord(body) || !isRecord(body['version'])) return undefined;
  const { qemu, package: pkg } = body['version'];
  const capabilities = body['capabilities'];
  if (!isRecord(qemu) || typeof pkg !== 'string' || !Array.isArray(capabilities)) return undefined;
  const { major, minor, micro } = qemu;
  if (typeof major !== 'number' || typeof minor !== 'number' || typeof micro !== 'number') return undefined;
  if (!capabilities.every((c) => typeof c === 'string')) return undefined;
  return { version: { qemu: { major, minor, micro }, package: pkg }, capabilities };
}

function parseEvent(message: Record<string, unknown>): QmpEvent | undefined {
  const { event, data, timestamp } = message;
  if (typeof event !== 'string' || !isRecord(timestamp)) return undefined;
  const { seconds, microseconds } = timestamp;
  if (typeof seconds !== 'number' || typeof microseconds !== 'number') return undefined;
  if (data !== undefined && !isRecord(data)) return undefined;
  return data === undefined
    ? { event, timestamp: { seconds, microseconds } }
    : { event, data, timestamp: { seconds, microseconds } };
}

export function parseQmpMessage(line: string): QmpInbound {
  let message: unknown;
  try {
    message = JSON.parse(line);
  } catch (err) {
    return { type: 'invalid', reason: `malformed JSON (${(err as Error).message}): ${snippet(line)}` };
  }
  if (!isRecord(message)) return { type: 'invalid', reason: `not a JSON object: ${snippet(line)}` };

  if ('QMP' in message) {
    const greeting = parseGreeting(message['QMP']);
    return greeting ? { type: 'greeting', greeting } : { type: 'invalid', reason: `malformed greeting: ${snippet(line)}` };
  }
  if ('event' in message) {
    const event = parseEvent(message);
    return event ? { type: 'event', event } : { type: 'invalid', reason: `malformed event: ${snippet(line)}` };
  }
  if ('return' in message) return { type: 'return', id: message['id'], value: message['return'] };
  if ('error' in message) {
    const error = message['error'];
    if (isRecord(error) && typeof error['class'] === 'string' && typeof error['desc'] === 'string') {
      return { type: 'error', id: message['id'], errorClass: error['class'], desc: error['desc'] };
    }
    return { type: 'invalid', reason: `malformed error reply: ${snippet(line)}` };
  }
  return { type: 'invalid', reason: `unrecognised message: ${snippet(line)}` };
}

/** One command line for the wire. QEMU's parser is brace-counting, not line-based; the newline is for humans. */
/** `oob`: sent as `exec-oob`, run by QEMU's monitor thread even while its main thread is blocked. */
export function encodeQmpCommand(id: number, command: string, args?: Record<string, unknown>, oob = false): string {
  const verb = oob ? 'exec-oob' : 'execute';
  return `${JSON.stringify(args === undefined ? { [verb]: command, id } : { [verb]: command, arguments: args, id })}\n`;
}
