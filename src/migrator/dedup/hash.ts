// The strong chunk hash: SHA-256 truncated to 128 bits (node:crypto; pure code gets hashes as bytes).
import { hash } from 'node:crypto';
import { HASH_BYTES } from './common/protocol.ts';

/** SHA-256 of `bytes`, first 16 bytes. */
export function chunkHash(bytes: Uint8Array): Buffer {
  return hash('sha256', bytes, 'buffer').subarray(0, HASH_BYTES);
}

/** Map key and file name of a hash: 32 lower-case hex digits. */
export function hashKey(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, hash.byteLength).toString('hex');
}

export function keyBytes(key: string): Buffer {
  return Buffer.from(key, 'hex');
}
