/**
 * Sealing (layout.ts, "Encrypted"): the keys a file's salt gives, its HEAD, and each chunk sealed
 * or opened with AES-256-GCM, bound to its index, to whether it is the last, and to HEAD.
 */
import {
  createCipheriv,
  createDecipheriv,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';
import { KEY_BYTES } from './key.js';
import { CHECK_LEN, PREFIX_LEN, SALT_LEN, TAG_LEN } from './layout.js';

const NONCE_PREFIX_LEN = 4;
const HKDF_INFO = Buffer.from('checkpt image v1 aes-256-gcm', 'latin1');
// Node allocates a fresh output buffer per cipher update; large ones cost page faults that made
// AES-GCM 5-10 times slower than in 64 KiB pieces, whose buffers malloc reuses.
const CRYPT_PIECE = 64 * 1024;

interface Keys {
  key: Buffer;
  noncePrefix: Buffer;
  check: Buffer;
}

function deriveKeys(master: Buffer, salt: Buffer): Keys {
  if (master.length !== KEY_BYTES) throw new RangeError(`the key must be ${KEY_BYTES} bytes`);
  const okm = Buffer.from(hkdfSync('sha256', master, salt, HKDF_INFO, 32 + NONCE_PREFIX_LEN + 16));
  return {
    key: okm.subarray(0, 32),
    noncePrefix: okm.subarray(32, 32 + NONCE_PREFIX_LEN),
    check: okm.subarray(32 + NONCE_PREFIX_LEN),
  };
}

/** Nonce and additional data of chunk `index`: its place and whether it is the last are sealed in. */
function chunkParams(
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

/** The keys of one file and its HEAD, which every chunk is bound to. */
export interface Sealing {
  keys: Keys;
  head: Buffer;
}

/** A new file's sealing: a fresh salt, so a fresh key; `prefix` is its signature, version and flags. */
export function newSealing(master: Buffer, prefix: Buffer, chunkSize: number): Sealing {
  const salt = randomBytes(SALT_LEN);
  const keys = deriveKeys(master, salt);
  const size = Buffer.alloc(4);
  size.writeUInt32BE(chunkSize, 0);
  return { keys, head: Buffer.concat([prefix, size, salt, keys.check]) };
}

/** The sealing of the file whose HEAD is `head`, or undefined when `master` is not its key. */
export function sealingOf(master: Buffer, head: Buffer): Sealing | undefined {
  const salt = head.subarray(PREFIX_LEN + 4, PREFIX_LEN + 4 + SALT_LEN);
  const keys = deriveKeys(master, salt);
  const check = head.subarray(PREFIX_LEN + 4 + SALT_LEN, PREFIX_LEN + 4 + SALT_LEN + CHECK_LEN);
  return timingSafeEqual(keys.check, check) ? { keys, head } : undefined;
}

/** Seals chunk `index` in place (the ciphertext replaces the plaintext) and returns its tag. */
export function sealChunk(s: Sealing, index: number, final: boolean, data: Buffer): Buffer {
  const { nonce, aad } = chunkParams(s.keys, s.head, index, final);
  const cipher = createCipheriv('aes-256-gcm', s.keys.key, nonce, { authTagLength: TAG_LEN });
  cipher.setAAD(aad);
  for (let o = 0; o < data.length; o += CRYPT_PIECE) {
    cipher.update(data.subarray(o, o + CRYPT_PIECE)).copy(data, o);
  }
  cipher.final();
  return cipher.getAuthTag();
}

/**
 * Opens chunk `index`: `sealed` holds `len` bytes of ciphertext and then the tag; the plaintext
 * goes into `plain`. False when the tag does not check out: `plain` must not be used then.
 */
export function openChunk(
  s: Sealing,
  index: number,
  final: boolean,
  sealed: Buffer,
  len: number,
  plain: Buffer,
): boolean {
  const { nonce, aad } = chunkParams(s.keys, s.head, index, final);
  const decipher = createDecipheriv('aes-256-gcm', s.keys.key, nonce, { authTagLength: TAG_LEN });
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(len, len + TAG_LEN));
  for (let o = 0; o < len; o += CRYPT_PIECE) {
    decipher.update(sealed.subarray(o, Math.min(o + CRYPT_PIECE, len))).copy(plain, o);
  }
  try {
    decipher.final();
    return true;
  } catch {
    return false;
  }
}
