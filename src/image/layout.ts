/**
 * The single-file checkpoint container, format version 1. All integers are big-endian.
 *
 * Every file starts with "CHECKPT\n" | u32 version (1) | u32 flags, and the container proper,
 * BODY, is the same whether or not the file is encrypted:
 *
 *   BODY = u32 manifest length M | M bytes JSON manifest
 *        | u32 entry count N | N × (u16 name length L | L bytes UTF-8 name | u64 size S | S bytes)
 *
 * Plain (flags 0): "CHECKPT\n" | u32 1 | u32 0 | BODY | "CKPTEND\n" | SHA-256 of every byte before
 * "CKPTEND\n".
 *
 * Encrypted (flags bit 0, written when CHECKPT_KEY_FILE is set; see key.ts):
 *
 *   HEAD = "CHECKPT\n" | u32 1 | u32 1 | u32 chunk size C | 32 bytes random salt | 16 bytes key check
 *   file = HEAD | K × (sealed chunk | 16-byte GCM tag) | "CKPTEND\n"
 *
 *   HKDF-SHA256(key file's 32 bytes, salt, "checkpt image v1 aes-256-gcm") gives 52 bytes: the
 *   AES-256 key, a 4-byte nonce prefix and the key check. BODY is cut into chunks of C bytes (the
 *   last one 1..C bytes); chunk i (from 0) is sealed with AES-256-GCM, nonce = prefix | u64 i,
 *   additional data = HEAD | u64 i | u8 (1 for the last chunk, else 0). Everything after HEAD is
 *   thus secret and authenticated, and a chunk moved, dropped, added or cut off fails its tag; the
 *   header is bound to every chunk, and a fresh salt per file means a fresh key, so nonces never
 *   repeat. The key check tells a wrong key from a damaged file before anything is decrypted.
 *
 * Encryption wraps the byte stream BODY, so a later per-entry codec (compression) lives inside
 * BODY, in the entry header, and needs no change here.
 */

import { CheckptError } from '../common/errors.js';

export const FORMAT_VERSION = 1;

export interface ImageEntry {
  name: string;
  size: number;
}

export interface ImageInfo {
  formatVersion: number;
  manifest: Record<string, unknown>;
  entries: ImageEntry[];
  fileSize: number;
  /** Sealed with AES-256-GCM under the key in CHECKPT_KEY_FILE. */
  encrypted: boolean;
}

/** What the first bytes say, readable without the key. */
export interface ImageHeader {
  formatVersion: number;
  encrypted: boolean;
  fileSize: number;
}

export const MAGIC = Buffer.from('CHECKPT\n', 'latin1');
export const TRAILER_MAGIC = Buffer.from('CKPTEND\n', 'latin1');
export const HASH_LEN = 32;
export const TRAILER_LEN = TRAILER_MAGIC.length + HASH_LEN;
export const PREFIX_LEN = MAGIC.length + 8;
export const HEAD_LEN = PREFIX_LEN + 4;
export const FLAG_ENCRYPTED = 1;
const KNOWN_FLAGS = FLAG_ENCRYPTED;
export const SALT_LEN = 32;
export const CHECK_LEN = 16;
export const TAG_LEN = 16;
export const SEALED_HEAD_LEN = PREFIX_LEN + 4 + SALT_LEN + CHECK_LEN;
export const MIN_SEALED_FILE = SEALED_HEAD_LEN + 1 + TAG_LEN + TRAILER_MAGIC.length;
export const MIN_SEAL_CHUNK = 4096;
export const MAX_SEAL_CHUNK = 64 * 1024 * 1024;
export const MAX_MANIFEST = 1024 * 1024;
export const MAX_ENTRIES = 100_000;
export const MAX_NAME = 255;
export const MIN_ENTRY = 2 + 1 + 8;
export const MIN_FILE = HEAD_LEN + 4 + TRAILER_LEN;
// A version this far beyond ours is far likelier to be a damaged header than a real future format.
const MAX_PLAUSIBLE_VERSION = 0xffff;
export const CHUNK = 4 * 1024 * 1024;
export const INFO_WINDOW = 64 * 1024;

/** Why `name` cannot be an entry name, or undefined when it is fine. */
export function nameProblem(name: string): string | undefined {
  if (name === '') return 'is empty';
  if (name === '.' || name === '..') return 'refers to a directory';
  if (Buffer.from(name, 'utf8').toString('utf8') !== name) return 'is not valid Unicode';
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME) return `is longer than ${MAX_NAME} bytes`;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c === 0x2f || c === 0x5c) return 'contains a path separator';
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return 'contains a control character';
  }
  return undefined;
}

export function damaged(file: string, detail: string): CheckptError {
  return new CheckptError('EBADIMAGE', `${file} is damaged (${detail}); use another checkpoint`, {
    path: file,
  });
}

export function truncated(file: string): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `${file} is damaged (truncated: its end marker is missing): it was cut off or not completely written; use another checkpoint`,
    { path: file },
  );
}

function notCheckpt(file: string, head: Buffer): CheckptError {
  let hint = 'it does not start with the checkpt signature';
  if (head[0] === 0x1f && head[1] === 0x8b) hint = 'it looks like a gzip file';
  else if (head.subarray(0, 4).equals(Buffer.from('PK\x03\x04', 'latin1'))) {
    hint = 'it looks like a zip file';
  } else if (head.subarray(0, 4).equals(Buffer.from('\x7fELF', 'latin1'))) {
    hint = 'it looks like an executable';
  } else if (head.every((b) => b === 0x09 || b === 0x0a || b === 0x0d || (b >= 0x20 && b < 0x7f))) {
    hint = 'it looks like a text file';
  }
  return new CheckptError(
    'EBADIMAGE',
    `${file} is not a checkpt file (${hint}); pass a checkpoint file written by checkpt`,
    { path: file },
  );
}

/** Checks magic, version and flags; `head` is the first min(size, PREFIX_LEN) bytes. Returns the flags. */
export function checkHead(file: string, head: Buffer, size: number): number {
  if (size === 0) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is empty, so it is not a checkpt file (it may never have been written); use another checkpoint`,
      { path: file },
    );
  }
  const m = Math.min(head.length, MAGIC.length);
  if (!head.subarray(0, m).equals(MAGIC.subarray(0, m))) throw notCheckpt(file, head);
  if (head.length < PREFIX_LEN) throw truncated(file);
  const version = head.readUInt32BE(8);
  if (version !== FORMAT_VERSION) {
    if (version > FORMAT_VERSION && version <= MAX_PLAUSIBLE_VERSION) {
      throw new CheckptError(
        'EIMAGEVERSION',
        `${file} was written by a newer checkpt (format ${version}; this checkpt reads format ${FORMAT_VERSION}); upgrade checkpt`,
        { path: file },
      );
    }
    throw damaged(file, `unknown format version ${version}`);
  }
  const flags = head.readUInt32BE(12);
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw damaged(
      file,
      `unknown header flags 0x${flags.toString(16)}; if it is not damaged, a newer checkpt wrote it`,
    );
  }
  return flags;
}
