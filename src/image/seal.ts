/** The keys of a sealed file and the nonce and additional data of each chunk (layout.ts). */

import { hkdfSync } from 'node:crypto';
import { KEY_BYTES } from './key.js';

const NONCE_PREFIX_LEN = 4;
const HKDF_INFO = Buffer.from('checkpt image v1 aes-256-gcm', 'latin1');
// Node allocates a fresh output buffer per cipher update; large ones cost page faults that made
// AES-GCM 5-10 times slower than in 64 KiB pieces, whose buffers malloc reuses.
export const CRYPT_PIECE = 64 * 1024;

export interface Keys {
  key: Buffer;
  noncePrefix: Buffer;
  check: Buffer;
}

export function deriveKeys(master: Buffer, salt: Buffer): Keys {
  if (master.length !== KEY_BYTES) throw new RangeError(`the key must be ${KEY_BYTES} bytes`);
  const okm = Buffer.from(hkdfSync('sha256', master, salt, HKDF_INFO, 32 + NONCE_PREFIX_LEN + 16));
  return {
    key: okm.subarray(0, 32),
    noncePrefix: okm.subarray(32, 32 + NONCE_PREFIX_LEN),
    check: okm.subarray(32 + NONCE_PREFIX_LEN),
  };
}

/** Nonce and additional data of chunk `index`: its place and whether it is the last are sealed in. */
export function chunkParams(
  keys: Keys,
  head: Buffer,
  index: number,
  final: boolean,
): { nonce: Buffer; aad: Buffer } {
  const nonce = Buffer.alloc(NONCE_PREFIX_LEN + 8);
  keys.noncePrefix.copy(nonce, 0);
  nonce.writeBigUInt64BE(BigInt(index), NONCE_PREFIX_LEN);
  const aad = Buffer.alloc(head.length + 9);
  head.copy(aad, 0);
  aad.writeBigUInt64BE(BigInt(index), head.length);
  aad[head.length + 8] = final ? 1 : 0;
  return { nonce, aad };
}

export interface Sealing {
  keys: Keys;
  head: Buffer;
}
