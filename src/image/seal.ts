/**
 * Sealing (layout.ts, "Encrypted"): the keys a file's salt gives, its HEAD, and each chunk sealed
 * or opened with AES-256-GCM, bound to its index, to whether it is the last, and to HEAD.
 */
import { crypto } from '../common/builtin.js';
import { KEY_BYTES } from './key.js';
import { CHECK_LEN, PREFIX_LEN, SALT_LEN, TAG_LEN } from './layout.js';

const NONCE_PREFIX_LEN = 4;
const hkdfInfo = (version: number): Buffer =>
  Buffer.from(`checkpt image v${version} aes-256-gcm`, 'latin1');
// Format 2: the first bit of a memory chunk's nonce; INDEX chunks never have it.
const PAGE_NONCE_BIT = 0x80000000;
// Node allocates a fresh output buffer per cipher update; large ones cost page faults that made
// AES-GCM 5-10 times slower than in 64 KiB pieces, whose buffers malloc reuses.
const CRYPT_PIECE = 64 * 1024;

interface Keys {
  key: Buffer;
  noncePrefix: Buffer;
  check: Buffer;
}

function deriveKeys(master: Buffer, salt: Buffer, version: number): Keys {
  if (master.length !== KEY_BYTES) throw new RangeError(`the key must be ${KEY_BYTES} bytes`);
  const info = hkdfInfo(version);
  const okm = Buffer.from(
    crypto().hkdfSync('sha256', master, salt, info, 32 + NONCE_PREFIX_LEN + 16),
  );
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
  const salt = crypto().randomBytes(SALT_LEN);
  const keys = deriveKeys(master, salt, prefix.readUInt32BE(8));
  const size = Buffer.alloc(4);
  size.writeUInt32BE(chunkSize, 0);
  return { keys, head: Buffer.concat([prefix, size, salt, keys.check]) };
}

/** The sealing of the file whose HEAD is `head`, or undefined when `master` is not its key. */
export function sealingOf(master: Buffer, head: Buffer): Sealing | undefined {
  const salt = head.subarray(PREFIX_LEN + 4, PREFIX_LEN + 4 + SALT_LEN);
  const keys = deriveKeys(master, salt, head.readUInt32BE(8));
  const check = head.subarray(PREFIX_LEN + 4 + SALT_LEN, PREFIX_LEN + 4 + SALT_LEN + CHECK_LEN);
  return crypto().timingSafeEqual(keys.check, check) ? { keys, head } : undefined;
}

/** The same keys bound to other additional data: format 2 seals INDEX under HEAD | u64 D. */
export function rebound(s: Sealing, head: Buffer): Sealing {
  return { keys: s.keys, head };
}

/** Format 2: nonce and additional data of chunk `index` of the `ordinal`-th chunked entry. */
function pageParams(
  s: Sealing,
  ordinal: number,
  name: string,
  index: number,
  final: boolean,
): { nonce: Buffer; aad: Buffer } {
  const nonce = Buffer.alloc(NONCE_PREFIX_LEN + 8);
  s.keys.noncePrefix.copy(nonce, 0);
  nonce.writeUInt32BE((PAGE_NONCE_BIT + ordinal) >>> 0, NONCE_PREFIX_LEN);
  nonce.writeUInt32BE(index, NONCE_PREFIX_LEN + 4);
  const n = Buffer.from(name, 'utf8');
  const aad = Buffer.alloc(s.head.length + 2 + n.length + 9);
  s.head.copy(aad, 0);
  aad.writeUInt16BE(n.length, s.head.length);
  n.copy(aad, s.head.length + 2);
  aad.writeBigUInt64BE(BigInt(index), s.head.length + 2 + n.length);
  aad[aad.length - 1] = final ? 1 : 0;
  return { nonce, aad };
}

/** Format 2: seals chunk `index` of a chunked entry in place and returns its tag. */
export function sealPage(
  s: Sealing,
  ordinal: number,
  name: string,
  index: number,
  final: boolean,
  data: Buffer,
): Buffer {
  return seal(s.keys, pageParams(s, ordinal, name, index, final), data);
}

/** Format 2: opens chunk `index` of a chunked entry (`sealed`: `len` bytes, then the tag). */
export function openPage(
  s: Sealing,
  ordinal: number,
  name: string,
  index: number,
  final: boolean,
  sealed: Buffer,
  len: number,
  plain: Buffer,
): boolean {
  return open(s.keys, pageParams(s, ordinal, name, index, final), sealed, len, plain);
}

/** Seals chunk `index` in place (the ciphertext replaces the plaintext) and returns its tag. */
export function sealChunk(s: Sealing, index: number, final: boolean, data: Buffer): Buffer {
  return seal(s.keys, chunkParams(s.keys, s.head, index, final), data);
}

function seal(keys: Keys, { nonce, aad }: { nonce: Buffer; aad: Buffer }, data: Buffer): Buffer {
  const cipher = crypto().createCipheriv('aes-256-gcm', keys.key, nonce, {
    authTagLength: TAG_LEN,
  });
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
  return open(s.keys, chunkParams(s.keys, s.head, index, final), sealed, len, plain);
}

function open(
  keys: Keys,
  { nonce, aad }: { nonce: Buffer; aad: Buffer },
  sealed: Buffer,
  len: number,
  plain: Buffer,
): boolean {
  const decipher = crypto().createDecipheriv('aes-256-gcm', keys.key, nonce, {
    authTagLength: TAG_LEN,
  });
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
