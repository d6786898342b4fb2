/**
 * The single-file checkpoint container. All integers are big-endian. Writers write format 2;
 * readers read 1 and 2. Every file starts with PREFIX = "CHECKPT\n" | u32 version | u32 flags.
 *
 * FORMAT 2 keeps the memory images (CRIU's pages-N.img, or pages-N.img.zst when compressed) apart
 * from everything else, in independently checked chunks, so that they can be read on demand
 * (pages.ts) while every byte is still checked before it is used:
 *
 *   file  = HEAD | DATA | INDEX' | TAIL
 *   DATA  = the chunks of every chunked entry, entry after entry in INDEX order, chunk after chunk
 *   INDEX = u32 manifest length M | M bytes JSON manifest | u32 entry count N | N × ENTRY
 *   ENTRY = u16 name length L | L bytes UTF-8 name | u8 kind
 *           | kind 0 (inline): u64 size S | S bytes
 *           | kind 1 (chunked): u8 codec | u32 chunk size C | u64 decoded size U | u32 chunk count K
 *             | K × (u32 stored length | 32-byte SHA-256, or BLAKE3 with flags bit 2, of the stored
 *               bytes, plain files only)
 *
 * Only memory images are chunked (name pages-<digits>.img or pages-<digits>.img.zst). Codec 0:
 * chunk i holds bytes [iC, min(U, (i+1)C)) of the entry as they are (for a .zst entry that is one
 * zstd stream, which only decodes as a whole: such a file is extracted eagerly). Codec 1 (a .zst
 * entry only): chunk i is one zstd frame decoding to exactly min(C, U - iC) bytes of pages-N.img,
 * so it decodes alone, and the frames one after another are an ordinary .zst file. K = ceil(U / C);
 * the entry's size S (what extraction writes) is the sum of its stored lengths, and the stored
 * lengths of all chunked entries (plus one GCM tag each when encrypted) add up to the length of
 * DATA exactly. C is 64 KiB for plain and zstd memory when written here (zstd: 1 MiB before
 * 2026-12-01), 1 MiB for encrypted memory: CRIU asks for 64 KiB around a fault, and a fault waits
 * for its chunk's first check, ~60 µs for 64 KiB against a millisecond or two for 1 MiB; tables
 * cost 36 bytes per chunk.
 *
 * Plain (flags 0): HEAD = PREFIX (16 bytes), INDEX' = INDEX, and
 *   TAIL = u64 length of DATA D | "CKPTEND\n" | SHA-256 of (PREFIX | INDEX | u64 D).
 * The hash covers everything but DATA, whose chunks are each checked by the SHA-256 in their table
 * row: the tables are trusted once the hash is, before any chunk is read, and reading INDEX never
 * needs DATA's bytes (INDEX starts at 16 + D and ends 48 bytes before the end of the file).
 * With flags bit 2 (BLAKE3, plain and not store-backed; written since 2026-12 unless
 * CHECKPT_CHUNK_HASH=sha256) the table rows hold the chunks' 32-byte BLAKE3 digests instead: the
 * same rows, checked four times as fast (INDEX and TAIL keep SHA-256).
 *
 * Encrypted (flags bit 0): HEAD as in format 1 (below), HKDF info "checkpt image v2 aes-256-gcm",
 * INDEX' = INDEX sealed in chunks of the HEAD's chunk size exactly as BODY in format 1 but with
 * additional data HEAD | u64 D | u64 i | u8 last, and TAIL = u64 D | "CKPTEND\n" (so a D that was
 * changed fails every INDEX tag). Chunk i of the e-th chunked entry (from 0) is stored as its
 * AES-256-GCM ciphertext followed by its 16-byte tag, nonce = prefix | u32 (0x80000000 + e) | u32 i
 * (INDEX nonces have their first bit 0, so no nonce repeats), additional data = HEAD | u16 L |
 * name | u64 i | u8 (1 for the entry's last chunk, else 0): a chunk moved within its entry, swapped
 * with another entry's or another file's (another salt, another key), dropped or cut off fails its
 * tag, and INDEX (authenticated first) says how many chunks each entry has and how long each is.
 *
 * STORE-BACKED (flags bit 1, plain only; store.ts): the memory lives in a chunk store, a directory
 * beside the file, shared by the files that name it. INDEX then has u16 S | S bytes of the store's
 * name (a directory of the file's directory) right after the manifest, and its memory entries are
 *   kind 2 (stored): u64 decoded size U | u32 chunk count K | K × (u32 length | 32-byte SHA-256)
 * of the decoded bytes, 1..4 MiB each, adding up to U, cut where the content says, each read from
 * the store and checked as a chunk in the file is. Such an entry has nothing in DATA.
 *
 * Limits: every count, length and size read is checked against what the file can hold before
 * anything is allocated (C from 4 KiB to 64 MiB; a zstd frame at most C + C/128 + 4 KiB).
 *
 * FORMAT 1 (read only; writeImage writes it when asked for tests):
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
 * Encryption wraps the byte stream BODY, so a per-entry codec (compression) lives inside BODY, in
 * the entry header, and needs no change here.
 */

import { CheckptError } from '../common/errors.js';

export const FORMAT_VERSION = 2;
export const OLDEST_VERSION = 1;

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
  /** The chunk store holding its memory (a directory beside it), for a store-backed file. */
  store?: string;
  /** What its memory chunks are checked with (format 2, plain, not store-backed). */
  chunkHash?: 'sha256' | 'blake3';
}

/** What the first bytes say, readable without the key. */
export interface ImageHeader {
  formatVersion: number;
  encrypted: boolean;
  /** Its memory is in a chunk store beside it (store.ts); absent otherwise. */
  stored?: true;
  fileSize: number;
}

export const MAGIC = Buffer.from('CHECKPT\n', 'latin1');
export const TRAILER_MAGIC = Buffer.from('CKPTEND\n', 'latin1');
export const HASH_LEN = 32;
export const TRAILER_LEN = TRAILER_MAGIC.length + HASH_LEN;
export const PREFIX_LEN = MAGIC.length + 8;
export const HEAD_LEN = PREFIX_LEN + 4;
export const FLAG_ENCRYPTED = 1;
/** The memory is in a chunk store beside the file (store.ts). */
export const FLAG_STORE = 2;
/** Format 2, plain: the chunk tables hold BLAKE3 digests, not SHA-256 ones. */
export const FLAG_BLAKE3 = 4;
const KNOWN_FLAGS = FLAG_ENCRYPTED | FLAG_STORE | FLAG_BLAKE3;
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
/** Format 2: decoded bytes per memory chunk (see above for why). */
export const MEM_CHUNK = 1024 * 1024;
/**
 * Decoded bytes per chunk of a plain (neither compressed nor encrypted) memory image, written by
 * default: a lazy restore checks a chunk when a page fault first needs it, and 64 KiB is checked
 * in ~60 µs where 1 MiB takes a millisecond (docs/PERFORMANCE.md).
 */
export const PLAIN_MEM_CHUNK = 64 * 1024;
/**
 * Decoded bytes per zstd frame of a memory image compressed with Node's zlib (each frame one
 * chunk, checked and decoded alone), as for plain memory: CRIU's lazy-pages daemon asks for 64 KiB
 * around a fault (scripts/criu-patches/), and a 1 MiB frame took the page server ~2 ms to check
 * and decode for each. Costs ~8% more bytes (docs/PERFORMANCE.md). Files with 1 MiB frames, as
 * written before, are read as ever.
 */
export const ZSTD_FRAME = 64 * 1024;
/** Bytes a plain memory image is read and written in, whatever its chunks. */
export const IO_UNIT = 1024 * 1024;
export const MIN_MEM_CHUNK = 4096;
export const MAX_MEM_CHUNK = 64 * 1024 * 1024;
export const KIND_INLINE = 0;
export const KIND_CHUNKED = 1;
export const KIND_STORED = 2;
export const CODEC_NONE = 0;
export const CODEC_ZSTD_FRAMES = 1;
/** Format 2, plain: u64 D | "CKPTEND\n" | SHA-256. */
export const TAIL_V2 = 8 + TRAILER_MAGIC.length + HASH_LEN;
/** Format 2, encrypted: u64 D | "CKPTEND\n". */
export const SEALED_TAIL_V2 = 8 + TRAILER_MAGIC.length;
export const MIN_FILE_V2 = PREFIX_LEN + 8 + TAIL_V2;
/** Names of the memory images, which format 2 stores in chunks. */
export const MEMORY_NAME = /^pages-\d+\.img(\.zst)?$/;

/** The largest a zstd frame of `chunk` input bytes may be (above zstd's own compress bound). */
export function maxFrame(chunk: number): number {
  return chunk + Math.floor(chunk / 128) + 4096;
}
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

/** The format version in a head that checkHead() accepted. */
export function versionOf(head: Buffer): number {
  return head.readUInt32BE(8);
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
  if (version < OLDEST_VERSION || version > FORMAT_VERSION) {
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
  const plainOnly = FLAG_STORE | FLAG_BLAKE3;
  if (
    (flags & plainOnly) !== 0 &&
    (version !== 2 || (flags & FLAG_ENCRYPTED) !== 0 || (flags & plainOnly) === plainOnly)
  ) {
    throw damaged(file, `its header flags 0x${flags.toString(16)} do not go together`);
  }
  return flags;
}
