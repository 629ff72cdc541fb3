// Identifiers that become file names in the layer store, the image store and the VM folders. Only
// `[a-z0-9-]` (starting with a letter or digit, at most 64 characters): no "/", no ".", so no id can
// reach outside its folder. Pure.

const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,63}$/;
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

export type IdKind = 'layer' | 'migration';

export class InvalidIdError extends Error {
  override readonly name = 'InvalidIdError';
  readonly kind: string;
  readonly value: unknown;
  constructor(kind: string, value: unknown, message: string) {
    super(message);
    this.kind = kind;
    this.value = value;
  }
}

/** Undefined if `value` is a valid id of that kind, else a message that says what is allowed. */
export function checkId(kind: IdKind, value: unknown): string | undefined {
  if (typeof value !== 'string') return `${kind} id must be a string, got ${typeof value}`;
  if (!ID_PATTERN.test(value)) {
    return `invalid ${kind} id ${JSON.stringify(value.slice(0, 80))}: use 1-64 characters from a-z, 0-9 and "-", starting with a letter or digit`;
  }
  return undefined;
}

/** Returns `value` if it is a valid id, else throws InvalidIdError. */
export function assertId(kind: IdKind, value: unknown): string {
  const problem = checkId(kind, value);
  if (problem !== undefined) throw new InvalidIdError(kind, value, problem);
  return value as string;
}

/** Boot images are named by the lowercase hex sha256 of their content. */
export function assertSha256(value: unknown): string {
  if (typeof value !== 'string' || !SHA256_PATTERN.test(value)) {
    throw new InvalidIdError('image', value, `invalid image name ${JSON.stringify(String(value).slice(0, 80))}: expected 64 lowercase hex digits (sha256)`);
  }
  return value;
}
