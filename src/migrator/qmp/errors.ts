/** QEMU answered a command with {"error": {"class", "desc"}}. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  /** QEMU's error class: GenericError, CommandNotFound, DeviceNotActive, DeviceNotFound, KVMMissingCap. */
  readonly errorClass: string;
  readonly desc: string;
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command} failed (${errorClass}): ${desc}`);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** No reply (or awaited event) within the time allowed. A reply that arrives later is ignored. */
export class QmpTimeoutError extends Error {
  override readonly name = 'QmpTimeoutError';
  /** The command, or `event NAME` for waitForEvent. */
  readonly command: string;
  readonly timeoutMs: number;

  constructor(command: string, timeoutMs: number) {
    super(`QMP ${command} got no answer within ${timeoutMs} ms`);
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/** The connection closed while a call was pending, or a call was made after it closed. */
export class QmpDisconnectedError extends Error {
  override readonly name = 'QmpDisconnectedError';
  readonly command?: string;

  constructor(message: string, command?: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.command = command;
  }
}

/** Could not get a negotiated QMP session; the message says what to check. */
export class QmpConnectError extends Error {
  override readonly name = 'QmpConnectError';
  readonly socketPath: string;
  override readonly cause: unknown;

  constructor(socketPath: string, message: string, cause: unknown) {
    super(message);
    this.socketPath = socketPath;
    this.cause = cause;
  }
}

/** The server broke the protocol: malformed or over-long line, reply with an unknown id. */
export class QmpProtocolError extends Error {
  override readonly name = 'QmpProtocolError';
}

/** An events() consumer fell so far behind that its queue filled up; later events were not queued. */
export class QmpEventOverflowError extends Error {
  override readonly name = 'QmpEventOverflowError';
  readonly limit: number;

  constructor(limit: number) {
    super(`QMP event subscription fell more than ${limit} events behind; events after that were dropped`);
    this.limit = limit;
  }
}
