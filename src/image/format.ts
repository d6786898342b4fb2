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
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
  type Hash,
} from 'node:crypto';
import { constants as fsc, readdirSync, statSync } from 'node:fs';
import { lstat, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { TextDecoder } from 'node:util';
import { CheckptError } from '../common/errors.js';
import { KEY_BYTES, KEY_ENV } from './key.js';

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

export interface ReadOptions {
  /** The 32-byte key (see key.ts); needed for an encrypted file. */
  key?: Buffer | undefined;
  /**
   * With a key, accept a plain file too (default false: a plain file could have been put in place
   * of an encrypted one, so whoever holds the key only resumes what was sealed with it).
   */
  allowPlain?: boolean;
}

export interface WriteOptions {
  /** Seal the file with this 32-byte key (see key.ts). */
  key?: Buffer | undefined;
  /** Bytes of BODY per sealed chunk; tests use small ones to get many chunks. */
  chunkSize?: number;
  /** The temporary name to write to (tempNameFor()): a waiter can then remove it if the writer dies. */
  tmp?: string | undefined;
}

const MAGIC = Buffer.from('CHECKPT\n', 'latin1');
const TRAILER_MAGIC = Buffer.from('CKPTEND\n', 'latin1');
const HASH_LEN = 32;
const TRAILER_LEN = TRAILER_MAGIC.length + HASH_LEN;
const PREFIX_LEN = MAGIC.length + 8;
const HEAD_LEN = PREFIX_LEN + 4;
const FLAG_ENCRYPTED = 1;
const KNOWN_FLAGS = FLAG_ENCRYPTED;
const SALT_LEN = 32;
const CHECK_LEN = 16;
const TAG_LEN = 16;
const NONCE_PREFIX_LEN = 4;
const SEALED_HEAD_LEN = PREFIX_LEN + 4 + SALT_LEN + CHECK_LEN;
const MIN_SEALED_FILE = SEALED_HEAD_LEN + 1 + TAG_LEN + TRAILER_MAGIC.length;
const MIN_SEAL_CHUNK = 4096;
const MAX_SEAL_CHUNK = 64 * 1024 * 1024;
const HKDF_INFO = Buffer.from('checkpt image v1 aes-256-gcm', 'latin1');
const MAX_MANIFEST = 1024 * 1024;
const MAX_ENTRIES = 100_000;
const MAX_NAME = 255;
const MIN_ENTRY = 2 + 1 + 8;
const MIN_FILE = HEAD_LEN + 4 + TRAILER_LEN;
// A version this far beyond ours is far likelier to be a damaged header than a real future format.
const MAX_PLAUSIBLE_VERSION = 0xffff;
const CHUNK = 4 * 1024 * 1024;
const INFO_WINDOW = 64 * 1024;
// Node allocates a fresh output buffer per cipher update; large ones cost page faults that made
// AES-GCM 5-10 times slower than in 64 KiB pieces, whose buffers malloc reuses.
const CRYPT_PIECE = 64 * 1024;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Why `name` cannot be an entry name, or undefined when it is fine. */
function nameProblem(name: string): string | undefined {
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

function errnoOf(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') {
    return e.code;
  }
  return undefined;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function ioError(what: string, path: string, e: unknown): CheckptError {
  if (e instanceof CheckptError) return e;
  return new CheckptError('EIO', `${what} failed: ${messageOf(e)}`, { cause: e, path });
}

async function writeAll(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}

async function writeAllv(fh: FileHandle, bufs: Buffer[], position: number): Promise<void> {
  const total = bufs.reduce((n, b) => n + b.length, 0);
  const { bytesWritten } = await fh.writev(bufs, position);
  if (bytesWritten < total) {
    await writeAll(fh, Buffer.concat(bufs).subarray(bytesWritten), position + bytesWritten);
  }
}

async function closeQuietly(fh: FileHandle | undefined): Promise<void> {
  await fh?.close().catch(() => undefined);
}

async function unlinkQuietly(path: string): Promise<void> {
  await unlink(path).catch(() => undefined);
}

// ---------------------------------------------------------------------------------------------
// Writing

interface SourceFile {
  name: string;
  path: string;
}

function encodeManifest(manifest: Record<string, unknown>): Buffer {
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest)) {
    throw new TypeError('checkpoint manifest must be a plain object');
  }
  const bytes = Buffer.from(JSON.stringify(manifest), 'utf8');
  if (bytes.length > MAX_MANIFEST) {
    throw new RangeError(`checkpoint manifest is ${bytes.length} bytes; the limit is 1 MiB`);
  }
  return bytes;
}

async function listSources(source: { dir: string; files?: string[] }): Promise<SourceFile[]> {
  const found: SourceFile[] = [];
  if (source.files !== undefined) {
    for (const f of source.files) {
      const path = resolve(source.dir, f);
      let st;
      try {
        st = await lstat(path);
      } catch (e) {
        throw ioError(`reading ${path}`, path, e);
      }
      if (!st.isFile()) {
        throw new CheckptError('EIO', `${path} is not a regular file; only files can be packed`, {
          path,
        });
      }
      found.push({ name: basename(path), path });
    }
  } else {
    let dirents;
    try {
      dirents = await readdir(source.dir, { withFileTypes: true });
    } catch (e) {
      throw ioError(`listing ${source.dir}`, source.dir, e);
    }
    for (const d of dirents) {
      const path = join(source.dir, d.name);
      if (!d.isFile()) {
        const kind = d.isDirectory() ? 'a directory' : d.isSymbolicLink() ? 'a symlink' : 'special';
        throw new CheckptError(
          'EIO',
          `${path} is ${kind}, not a regular file; the directory to pack must contain only files`,
          { path },
        );
      }
      found.push({ name: d.name, path });
    }
    found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
  if (found.length > MAX_ENTRIES) {
    throw new CheckptError('EIO', `${found.length} files to pack; the limit is ${MAX_ENTRIES}`, {
      path: source.dir,
    });
  }
  const seen = new Set<string>();
  for (const f of found) {
    const problem = nameProblem(f.name);
    if (problem !== undefined) {
      throw new CheckptError('EIO', `cannot pack ${f.path}: its name ${problem}`, { path: f.path });
    }
    if (seen.has(f.name)) {
      throw new CheckptError('EIO', `cannot pack two files named ${f.name}`, { path: f.path });
    }
    seen.add(f.name);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Sealing

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

interface Sealing {
  keys: Keys;
  head: Buffer;
}

/**
 * Buffers output in large chunks and writes each while the next one fills; a plain file hashes
 * each chunk, an encrypted one seals each as one GCM chunk (only full ones, except the last).
 */
class ChunkWriter {
  private buf: Buffer;
  private spare: Buffer;
  private len = 0;
  private pending: Promise<void> = Promise.resolve();
  private readonly hash: Hash = createHash('sha256');
  private readonly probe = Buffer.allocUnsafe(1);
  private index = 0;

  constructor(
    private readonly fh: FileHandle,
    private position: number,
    size: number,
    private readonly sealing?: Sealing,
  ) {
    this.buf = Buffer.allocUnsafe(size);
    this.spare = Buffer.allocUnsafe(size);
  }

  async put(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.len === this.buf.length) await this.flush(false);
      const n = data.copy(this.buf, this.len, off);
      this.len += n;
      off += n;
    }
  }

  /** Copies exactly `size` bytes of `src`, reading straight into the output buffer. */
  async copyFrom(src: FileHandle, size: number, path: string): Promise<void> {
    let done = 0;
    while (done < size) {
      if (this.len === this.buf.length) await this.flush(false);
      const want = Math.min(this.buf.length - this.len, size - done);
      const { bytesRead } = await src.read(this.buf, this.len, want, done);
      if (bytesRead === 0) {
        throw new CheckptError('EIO', `${path} became shorter while it was being packed`, { path });
      }
      this.len += bytesRead;
      done += bytesRead;
    }
    const { bytesRead } = await src.read(this.probe, 0, 1, size);
    if (bytesRead !== 0) {
      throw new CheckptError('EIO', `${path} grew while it was being packed`, { path });
    }
  }

  private async flush(final: boolean): Promise<void> {
    if (this.len === 0 && !this.sealing) return;
    const data = this.buf.subarray(0, this.len);
    let out: Buffer[];
    if (this.sealing) {
      if (this.len === 0) throw new Error('internal: empty sealed chunk');
      const { nonce, aad } = chunkParams(this.sealing.keys, this.sealing.head, this.index, final);
      const cipher = createCipheriv('aes-256-gcm', this.sealing.keys.key, nonce, {
        authTagLength: TAG_LEN,
      });
      cipher.setAAD(aad);
      // The ciphertext replaces the plaintext it came from, in place.
      for (let o = 0; o < data.length; o += CRYPT_PIECE) {
        cipher.update(data.subarray(o, o + CRYPT_PIECE)).copy(data, o);
      }
      cipher.final();
      out = [data, cipher.getAuthTag()];
      this.index++;
    } else {
      this.hash.update(data);
      out = [data];
    }
    await this.pending;
    const p = writeAllv(this.fh, out, this.position);
    // Observed when awaited later; this only keeps an early failure from being "unhandled".
    p.catch(() => undefined);
    this.pending = p;
    for (const b of out) this.position += b.length;
    [this.buf, this.spare] = [this.spare, this.buf];
    this.len = 0;
  }

  /** Writes the last chunk and the trailer and returns the total file size. */
  async finish(): Promise<number> {
    await this.flush(true);
    await this.pending;
    const tail = this.sealing ? TRAILER_MAGIC : Buffer.concat([TRAILER_MAGIC, this.hash.digest()]);
    await writeAll(this.fh, tail, this.position);
    this.position += tail.length;
    return this.position;
  }

  async settle(): Promise<void> {
    await this.pending.catch(() => undefined);
  }
}

/** The temporary name a checkpoint is written under before it is renamed over `target`. */
export function tempNameFor(target: string): string {
  return join(dirname(target), `.${basename(target)}.tmp-${randomBytes(6).toString('hex')}`);
}

async function createTemp(
  target: string,
  given?: string,
): Promise<{ fh: FileHandle; tmp: string }> {
  const dir = dirname(target);
  for (let attempt = 0; ; attempt++) {
    const tmp = given ?? tempNameFor(target);
    try {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
      const fh = await open(tmp, flags, 0o600);
      return { fh, tmp };
    } catch (e) {
      const code = errnoOf(e);
      if (code === 'EEXIST' && given === undefined && attempt < 5) continue;
      const targetProblem = ['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM', 'EROFS'];
      throw new CheckptError(
        code !== undefined && targetProblem.includes(code) ? 'ETARGET' : 'EIO',
        `cannot create a file in ${dir} (${messageOf(e)}); check that the directory exists and is writable`,
        { cause: e, path: dir },
      );
    }
  }
}

async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    await fh.sync();
  } catch (e) {
    // Some filesystems cannot fsync a directory at all; there is nothing more to do there.
    if (errnoOf(e) !== 'EINVAL' && errnoOf(e) !== 'ENOTSUP') {
      const err = ioError(
        `syncing directory ${dir} (the checkpoint file is in place but may not be durable)`,
        dir,
        e,
      );
      err.inPlace = true;
      throw err;
    }
  } finally {
    await closeQuietly(fh);
  }
}

/**
 * Packs every regular file directly inside `source.dir` (sorted by name; anything else is an error),
 * or the given `source.files` (resolved against `source.dir`, stored under their base names, in the
 * given order), into one checkpoint file at `target`, sealed when `options.key` is given. The file
 * appears at `target` atomically with mode 0600 (a symlink there is replaced, never followed); on
 * failure `target` is untouched and no temporary file remains. `options.tmp` fixes the temporary
 * name (from tempNameFor()), so that whoever waits for a writer that may be killed can remove what
 * it left.
 */
export async function writeImage(
  target: string,
  manifest: Record<string, unknown>,
  source: { dir: string; files?: string[] },
  options: WriteOptions = {},
): Promise<{ bytes: number }> {
  const manifestBytes = encodeManifest(manifest);
  const chunkSize = options.chunkSize ?? CHUNK;
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_SEAL_CHUNK || chunkSize > MAX_SEAL_CHUNK) {
    throw new RangeError(`chunkSize must be from ${MIN_SEAL_CHUNK} to ${MAX_SEAL_CHUNK} bytes`);
  }
  const sources = await listSources(source);
  const absTarget = resolve(target);
  const prefix = Buffer.alloc(PREFIX_LEN);
  MAGIC.copy(prefix, 0);
  prefix.writeUInt32BE(FORMAT_VERSION, 8);
  let sealing: Sealing | undefined;
  if (options.key !== undefined) {
    prefix.writeUInt32BE(FLAG_ENCRYPTED, 12);
    const salt = randomBytes(SALT_LEN);
    const keys = deriveKeys(options.key, salt);
    const size = Buffer.alloc(4);
    size.writeUInt32BE(chunkSize, 0);
    sealing = { keys, head: Buffer.concat([prefix, size, salt, keys.check]) };
  }
  const { fh, tmp } = await createTemp(absTarget, options.tmp);
  let bytes: number;
  let out: ChunkWriter | undefined;
  try {
    if (sealing) {
      await writeAll(fh, sealing.head, 0);
      out = new ChunkWriter(fh, sealing.head.length, chunkSize, sealing);
    } else {
      out = new ChunkWriter(fh, 0, CHUNK);
      await out.put(prefix);
    }
    const lengths = Buffer.alloc(4);
    lengths.writeUInt32BE(manifestBytes.length, 0);
    await out.put(lengths);
    await out.put(manifestBytes);
    const count = Buffer.alloc(4);
    count.writeUInt32BE(sources.length, 0);
    await out.put(count);
    for (const s of sources) {
      let src: FileHandle | undefined;
      try {
        src = await open(s.path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
        const st = await src.stat();
        if (!st.isFile()) {
          throw new CheckptError('EIO', `${s.path} is not a regular file`, { path: s.path });
        }
        const name = Buffer.from(s.name, 'utf8');
        const entryHead = Buffer.alloc(2 + name.length + 8);
        entryHead.writeUInt16BE(name.length, 0);
        name.copy(entryHead, 2);
        entryHead.writeBigUInt64BE(BigInt(st.size), 2 + name.length);
        await out.put(entryHead);
        await out.copyFrom(src, st.size, s.path);
      } catch (e) {
        throw ioError(`packing ${s.path}`, s.path, e);
      } finally {
        await closeQuietly(src);
      }
    }
    bytes = await out.finish();
    await fh.sync();
    await fh.close();
    await rename(tmp, absTarget);
  } catch (e) {
    await out?.settle();
    await closeQuietly(fh);
    await unlinkQuietly(tmp);
    throw ioError(`writing ${absTarget}`, absTarget, e);
  }
  await syncDir(dirname(absTarget));
  return { bytes };
}

// ---------------------------------------------------------------------------------------------
// Reading

interface Source {
  fh: FileHandle;
  size: number;
  file: string;
}

/** Where a SeqReader's bytes come from: the file itself, or the decrypted BODY of a sealed one. */
interface ByteSource {
  /** Reads up to `len` bytes at `position`; 0 only past the end. One call at a time. */
  read(buf: Buffer, off: number, len: number, position: number): Promise<number>;
}

function fileBytes(src: Source): ByteSource {
  return {
    async read(buf, off, len, position) {
      try {
        return (await src.fh.read(buf, off, len, position)).bytesRead;
      } catch (e) {
        throw ioError(`reading ${src.file}`, src.file, e);
      }
    },
  };
}

interface Sink {
  begin(name: string): Promise<void>;
  write(chunk: Buffer): Promise<void>;
  end(): Promise<void>;
}

function damaged(file: string, detail: string): CheckptError {
  return new CheckptError('EBADIMAGE', `${file} is damaged (${detail}); use another checkpoint`, {
    path: file,
  });
}

function truncated(file: string): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `${file} is damaged (truncated: its end marker is missing): it was cut off or not completely written; use another checkpoint`,
    { path: file },
  );
}

function shrank(file: string): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `${file} became shorter while it was being read; make sure nothing is writing to it and try again`,
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
function checkHead(file: string, head: Buffer, size: number): number {
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

interface SeqOptions {
  /** Read buffer size. */
  window: number;
  /** Hash every byte of [0, limit), in order. */
  hash: boolean;
  /** Read entry data even when nobody wants it (so that every chunk of a sealed file is checked). */
  readAll: boolean;
}

/**
 * Sequential reader over [0, limit) of a ByteSource. When hashing, every byte of that range passes
 * through the hash exactly once, in order; entry data nobody reads is skipped unless `readAll`.
 */
class SeqReader {
  private win: Buffer;
  private spare: Buffer | undefined;
  private winStart = 0;
  private winLen = 0;
  pos = 0;
  private readonly hash: Hash | undefined;
  private readonly readAll: boolean;

  constructor(
    private readonly src: ByteSource,
    private readonly file: string,
    readonly limit: number,
    o: SeqOptions,
  ) {
    this.win = Buffer.allocUnsafe(o.window);
    this.hash = o.hash ? createHash('sha256') : undefined;
    this.readAll = o.hash || o.readAll;
  }

  get remaining(): number {
    return this.limit - this.pos;
  }

  private get winEnd(): number {
    return this.winStart + this.winLen;
  }

  private async readFull(buf: Buffer, off: number, len: number, position: number): Promise<void> {
    if (position + len > this.limit) throw new Error('internal: read beyond the hashed region');
    let done = 0;
    while (done < len) {
      const bytesRead = await this.src.read(buf, off + done, len - done, position + done);
      if (bytesRead === 0) throw shrank(this.file);
      done += bytesRead;
    }
  }

  /** Returns a copy of the next `n` bytes; the caller has checked that they exist. */
  async take(n: number): Promise<Buffer> {
    if (n > this.remaining) throw new Error('internal: take beyond the hashed region');
    if (this.pos + n > this.winEnd) {
      const keep = this.winEnd - this.pos;
      if (n > this.win.length) {
        const out = Buffer.allocUnsafe(n);
        this.win.copy(out, 0, this.pos - this.winStart, this.winLen);
        await this.readFull(out, keep, n - keep, this.winEnd);
        this.hash?.update(out.subarray(keep));
        this.pos += n;
        this.winStart = this.pos;
        this.winLen = 0;
        return out;
      }
      this.win.copy(this.win, 0, this.pos - this.winStart, this.winLen);
      this.winStart = this.pos;
      this.winLen = keep;
      const want = Math.min(this.win.length - keep, this.limit - this.winEnd);
      await this.readFull(this.win, keep, want, this.winEnd);
      this.hash?.update(this.win.subarray(keep, keep + want));
      this.winLen += want;
    }
    const off = this.pos - this.winStart;
    this.pos += n;
    return Buffer.from(this.win.subarray(off, off + n));
  }

  /** Passes the next `n` bytes to `write` (or skips them when nothing needs to see them). */
  async consume(n: number, write?: (chunk: Buffer) => Promise<void>): Promise<void> {
    if (n > this.remaining) throw new Error('internal: consume beyond the hashed region');
    let left = n;
    const inWin = Math.min(this.winEnd - this.pos, left);
    if (inWin > 0) {
      const off = this.pos - this.winStart;
      if (write) await write(this.win.subarray(off, off + inWin));
      this.pos += inWin;
      left -= inWin;
    }
    if (left === 0) return;
    if (!this.readAll && write === undefined) {
      this.pos += left;
      this.winStart = this.pos;
      this.winLen = 0;
      return;
    }
    // Read the next chunk while the current one is hashed and written.
    this.spare ??= Buffer.allocUnsafe(this.win.length);
    let cur = this.win;
    let next = this.spare;
    let position = this.pos;
    let reading = this.readFull(cur, 0, Math.min(cur.length, left), position);
    while (left > 0) {
      const len = Math.min(cur.length, left);
      await reading;
      position += len;
      left -= len;
      if (left > 0) {
        reading = this.readFull(next, 0, Math.min(next.length, left), position);
        reading.catch(() => undefined);
      }
      const chunk = cur.subarray(0, len);
      this.hash?.update(chunk);
      if (write) await write(chunk);
      [cur, next] = [next, cur];
    }
    this.pos = position;
    this.winStart = position;
    this.winLen = 0;
  }

  digest(): Buffer {
    if (this.hash === undefined || this.pos !== this.limit)
      throw new Error('internal: early digest');
    return this.hash.digest();
  }
}

async function readAt(src: Source, position: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await src.fh.read(buf, done, len - done, position + done));
    } catch (e) {
      throw ioError(`reading ${src.file}`, src.file, e);
    }
    if (bytesRead === 0) throw truncated(src.file);
    done += bytesRead;
  }
  return buf;
}

function parseManifest(file: string, bytes: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(bytes));
  } catch {
    throw damaged(file, 'its manifest is not valid UTF-8 JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw damaged(file, 'its manifest is not a JSON object');
  }
  return value as Record<string, unknown>;
}

/** Decrypts the chunks of a sealed file on demand; a chunk's bytes are used only once its tag checks out. */
class SealedBody implements ByteSource {
  private cached = -1;
  private plainLen = 0;
  private plain: Buffer;
  private readonly sealed: Buffer;

  constructor(
    private readonly src: Source,
    private readonly head: Buffer,
    private readonly keys: Keys,
    private readonly chunk: number,
    private readonly count: number,
    private readonly lastLen: number,
  ) {
    this.sealed = Buffer.allocUnsafe(chunk + TAG_LEN);
    this.plain = Buffer.allocUnsafe(chunk);
  }

  async read(buf: Buffer, off: number, len: number, position: number): Promise<number> {
    const k = Math.floor(position / this.chunk);
    if (k >= this.count) return 0;
    if (k !== this.cached) await this.open(k);
    const at = position - k * this.chunk;
    const n = Math.min(len, this.plainLen - at);
    this.plain.copy(buf, off, at, at + n);
    return n;
  }

  private async open(k: number): Promise<void> {
    this.cached = -1;
    const final = k === this.count - 1;
    const len = final ? this.lastLen : this.chunk;
    const position = SEALED_HEAD_LEN + k * (this.chunk + TAG_LEN);
    let done = 0;
    while (done < len + TAG_LEN) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.src.fh.read(
          this.sealed,
          done,
          len + TAG_LEN - done,
          position + done,
        ));
      } catch (e) {
        throw ioError(`reading ${this.src.file}`, this.src.file, e);
      }
      if (bytesRead === 0) throw shrank(this.src.file);
      done += bytesRead;
    }
    const { nonce, aad } = chunkParams(this.keys, this.head, k, final);
    const decipher = createDecipheriv('aes-256-gcm', this.keys.key, nonce, {
      authTagLength: TAG_LEN,
    });
    decipher.setAAD(aad);
    decipher.setAuthTag(this.sealed.subarray(len, len + TAG_LEN));
    for (let o = 0; o < len; o += CRYPT_PIECE) {
      decipher.update(this.sealed.subarray(o, Math.min(o + CRYPT_PIECE, len))).copy(this.plain, o);
    }
    try {
      decipher.final();
    } catch {
      throw new CheckptError(
        'EBADIMAGE',
        `${this.src.file} is damaged or was tampered with (encrypted chunk ${k + 1} of ${this.count} fails its authentication check; the key is the right one): it was modified, cut off or extended after it was written; use another checkpoint`,
        { path: this.src.file },
      );
    }
    this.plainLen = len;
    this.cached = k;
  }
}

interface ParseMode {
  /** Read and check every byte (the checksum, or every sealed chunk). */
  verify: boolean;
  sink?: Sink;
  key?: Buffer | undefined;
  allowPlain?: boolean;
}

function needsKey(file: string): CheckptError {
  return new CheckptError(
    'EKEY',
    `${file} is encrypted; set ${KEY_ENV} to the key file it was written with`,
    { path: file },
  );
}

/** Walks the whole container, checking every length against the real file size. */
async function parse(src: Source, mode: ParseMode): Promise<ImageInfo> {
  const { file, size } = src;
  const flags = checkHead(file, await readAt(src, 0, Math.min(size, PREFIX_LEN)), size);
  if ((flags & FLAG_ENCRYPTED) !== 0) return parseSealed(src, mode);
  if (mode.key !== undefined && mode.allowPlain !== true) {
    throw new CheckptError(
      'EKEY',
      `${file} is not encrypted, but ${KEY_ENV} is set, so only checkpoints sealed with that key are accepted (a plain file could have been put in place of one); unset ${KEY_ENV} to use it`,
      { path: file },
    );
  }
  if (size < MIN_FILE) throw truncated(file);
  const trailer = await readAt(src, size - TRAILER_LEN, TRAILER_LEN);
  if (!trailer.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) throw truncated(file);

  const r = new SeqReader(fileBytes(src), file, size - TRAILER_LEN, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: mode.verify,
    readAll: mode.verify,
  });
  // Re-read through the reader so that the bytes checked are the bytes hashed.
  checkHead(file, await r.take(PREFIX_LEN), size);
  const { manifest, entries } = await parseBody(r, file, mode.sink);
  if (mode.verify && !r.digest().equals(trailer.subarray(TRAILER_MAGIC.length))) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is damaged (checksum mismatch): it was modified or truncated after it was written; use another checkpoint`,
      { path: file },
    );
  }
  return { formatVersion: FORMAT_VERSION, manifest, entries, fileSize: size, encrypted: false };
}

async function parseSealed(src: Source, mode: ParseMode): Promise<ImageInfo> {
  const { file, size } = src;
  if (mode.key === undefined) throw needsKey(file);
  if (size < MIN_SEALED_FILE) throw truncated(file);
  const head = await readAt(src, 0, SEALED_HEAD_LEN);
  checkHead(file, head, size);
  const chunk = head.readUInt32BE(PREFIX_LEN);
  if (chunk < MIN_SEAL_CHUNK || chunk > MAX_SEAL_CHUNK) {
    throw damaged(file, `its encryption header gives an impossible chunk size ${chunk}`);
  }
  const salt = head.subarray(PREFIX_LEN + 4, PREFIX_LEN + 4 + SALT_LEN);
  const keys = deriveKeys(mode.key, salt);
  if (!timingSafeEqual(keys.check, head.subarray(PREFIX_LEN + 4 + SALT_LEN))) {
    throw new CheckptError(
      'EKEY',
      `the key in ${KEY_ENV} does not match ${file}: it was written with another key (or its header was tampered with); set ${KEY_ENV} to the key file it was written with`,
      { path: file },
    );
  }
  const end = await readAt(src, size - TRAILER_MAGIC.length, TRAILER_MAGIC.length);
  if (!end.equals(TRAILER_MAGIC)) throw truncated(file);
  const body = size - SEALED_HEAD_LEN - TRAILER_MAGIC.length;
  const count = Math.ceil(body / (chunk + TAG_LEN));
  const lastLen = body - (count - 1) * (chunk + TAG_LEN) - TAG_LEN;
  if (lastLen < 1) throw damaged(file, 'its encrypted part has an impossible length');
  const sealed = new SealedBody(src, head, keys, chunk, count, lastLen);
  const r = new SeqReader(sealed, file, (count - 1) * chunk + lastLen, {
    window: mode.verify ? CHUNK : INFO_WINDOW,
    hash: false,
    readAll: mode.verify,
  });
  const { manifest, entries } = await parseBody(r, file, mode.sink);
  return { formatVersion: FORMAT_VERSION, manifest, entries, fileSize: size, encrypted: true };
}

/** BODY: the manifest and the entries, every length checked against what is left. */
async function parseBody(
  r: SeqReader,
  file: string,
  sink: Sink | undefined,
): Promise<{ manifest: Record<string, unknown>; entries: ImageEntry[] }> {
  if (r.remaining < 4) throw damaged(file, 'it ends before its manifest');
  const manifestLen = (await r.take(4)).readUInt32BE(0);
  if (manifestLen > MAX_MANIFEST) {
    throw damaged(file, `its manifest claims ${manifestLen} bytes, more than the 1 MiB limit`);
  }
  if (manifestLen + 4 > r.remaining) {
    throw damaged(file, `its manifest claims ${manifestLen} bytes but the file is too short`);
  }
  const manifest = parseManifest(file, await r.take(manifestLen));
  const count = (await r.take(4)).readUInt32BE(0);
  if (count > MAX_ENTRIES) {
    throw damaged(file, `it claims ${count} entries, more than the limit of ${MAX_ENTRIES}`);
  }
  if (count * MIN_ENTRY > r.remaining) {
    throw damaged(file, `it claims ${count} entries but the file is too short to hold them`);
  }

  const entries: ImageEntry[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) {
    if (r.remaining < 2) throw damaged(file, `sizes do not add up at entry ${i}`);
    const nameLen = (await r.take(2)).readUInt16BE(0);
    if (nameLen === 0 || nameLen > MAX_NAME) {
      throw damaged(file, `entry ${i} has a name of ${nameLen} bytes`);
    }
    if (r.remaining < nameLen + 8) throw damaged(file, `sizes do not add up at entry ${i}`);
    let name: string;
    try {
      name = utf8.decode(await r.take(nameLen));
    } catch {
      throw damaged(file, `entry ${i} has a name that is not valid UTF-8`);
    }
    const problem = nameProblem(name);
    if (problem !== undefined) {
      throw damaged(file, `entry ${i} has the name ${JSON.stringify(name)}, which ${problem}`);
    }
    if (seen.has(name)) throw damaged(file, `entry name ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const bigSize = (await r.take(8)).readBigUInt64BE(0);
    // Bounded by the real file size, so it is also within Number.MAX_SAFE_INTEGER.
    if (bigSize > BigInt(r.remaining)) {
      throw damaged(
        file,
        `entry ${JSON.stringify(name)} claims ${bigSize} bytes but only ${r.remaining} remain`,
      );
    }
    const entrySize = Number(bigSize);
    if (sink) await sink.begin(name);
    await r.consume(entrySize, sink ? (chunk) => sink.write(chunk) : undefined);
    if (sink) await sink.end();
    entries.push({ name, size: entrySize });
  }
  if (r.remaining !== 0) {
    throw damaged(
      file,
      `sizes do not add up: ${r.remaining} unexpected bytes after the last entry`,
    );
  }
  // The writers record what they packed; a manifest that disagrees was not written by them.
  const stated = manifest.packedBytes ?? manifest.imageBytes;
  const held = entries.reduce((n, e) => n + e.size, 0);
  if (stated !== undefined && stated !== held) {
    throw damaged(
      file,
      `its manifest says the CRIU images hold ${JSON.stringify(stated)} bytes but its entries hold ${held}`,
    );
  }
  return { manifest, entries };
}

function openError(file: string, e: unknown): CheckptError {
  const errno = errnoOf(e);
  const denied = errno === 'EACCES' || errno === 'EPERM';
  const why =
    errno === 'ENOENT'
      ? 'it does not exist; check the path'
      : denied
        ? 'permission denied; check its permissions or run as a user that can read it'
        : `${messageOf(e)}`;
  // The system's code stays in `errno`: `code` is one of checkpt's own.
  return new CheckptError(denied ? 'EPERM' : 'EIO', `cannot open checkpoint ${file}: ${why}`, {
    cause: e,
    path: file,
  });
}

function checkKind(file: string, st: { isDirectory(): boolean; isFile(): boolean }): void {
  if (st.isDirectory()) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is a directory, not a checkpt file; pass the checkpoint file itself`,
      { path: file, errno: 'EISDIR' },
    );
  }
  if (!st.isFile()) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is not a regular file (a FIFO, device or socket), so not a checkpt file; pass the checkpoint file itself`,
      { path: file },
    );
  }
}

async function openImage(file: string): Promise<Source> {
  // Looked at before it is opened: opening a FIFO could block, and opening a device can act.
  try {
    checkKind(file, await stat(file));
  } catch (e) {
    throw e instanceof CheckptError ? e : openError(file, e);
  }
  let fh: FileHandle;
  try {
    // O_NONBLOCK: should it have become a FIFO since, the open still cannot block.
    fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    throw openError(file, e);
  }
  try {
    const st = await fh.stat();
    checkKind(file, st);
    return { fh, size: st.size, file };
  } catch (e) {
    await closeQuietly(fh);
    throw ioError(`reading ${file}`, file, e);
  }
}

async function withImage<T>(file: string, fn: (src: Source) => Promise<T>): Promise<T> {
  const src = await openImage(file);
  try {
    return await fn(src);
  } finally {
    await closeQuietly(src.fh);
  }
}

/** Reads only the header: the format version and whether the file is encrypted; needs no key. */
export async function readImageHeader(file: string): Promise<ImageHeader> {
  return withImage(file, async (src) => {
    const flags = checkHead(file, await readAt(src, 0, Math.min(src.size, PREFIX_LEN)), src.size);
    const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
    if (src.size < (encrypted ? MIN_SEALED_FILE : MIN_FILE)) throw truncated(file);
    return { formatVersion: FORMAT_VERSION, encrypted, fileSize: src.size };
  });
}

/**
 * Reads and fully verifies the container (structure, and the SHA-256 or every sealed chunk) without
 * extracting anything.
 */
export async function verifyImage(file: string, options: ReadOptions = {}): Promise<ImageInfo> {
  return withImage(file, (src) => parse(src, { ...options, verify: true }));
}

/**
 * Reads the manifest and entry table and checks structure and bounds, but not the checksum (of a
 * sealed file, only the chunks holding the manifest and entry headers are decrypted and checked).
 */
export async function readImageInfo(
  file: string,
  options: ReadOptions = {},
): Promise<ImageInfo & { verified: boolean }> {
  return withImage(file, async (src) => ({
    ...(await parse(src, { ...options, verify: false })),
    verified: false,
  }));
}

/** Creates the entries in `dir`; remembers them so that a failed extraction can be undone. */
/** Where an entry's bytes go instead of a file of its own name (compress.ts: zstd). */
export interface EntryDecoder {
  write(chunk: Buffer): Promise<void>;
  /** Resolves once the decoded file is complete; rejects when the bytes did not decode. */
  end(): Promise<void>;
  /** Stops and removes whatever it wrote. */
  abort(): Promise<void>;
}

export interface ExtractOptions extends ReadOptions {
  /** A decoder for entries that are stored encoded, by name; undefined writes the bytes as they are. */
  decoder?: (name: string, dir: string) => EntryDecoder | undefined;
}

class DirSink implements Sink {
  private readonly created: string[] = [];
  private readonly decoders: EntryDecoder[] = [];
  private fh: FileHandle | undefined;
  private decoding: EntryDecoder | undefined;
  private path = '';
  private position = 0;

  constructor(
    private readonly dir: string,
    private readonly decoder?: ExtractOptions['decoder'],
  ) {}

  async begin(name: string): Promise<void> {
    this.path = join(this.dir, name);
    this.position = 0;
    this.decoding = this.decoder?.(name, this.dir);
    if (this.decoding) {
      this.decoders.push(this.decoding);
      return;
    }
    try {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
      this.fh = await open(this.path, flags, 0o600);
    } catch (e) {
      throw ioError(`creating ${this.path}`, this.path, e);
    }
    this.created.push(this.path);
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.decoding) return this.decoding.write(chunk);
    if (this.fh === undefined) throw new Error('internal: write before begin');
    try {
      await writeAll(this.fh, chunk, this.position);
    } catch (e) {
      throw ioError(`writing ${this.path}`, this.path, e);
    }
    this.position += chunk.length;
  }

  async end(): Promise<void> {
    const decoding = this.decoding;
    this.decoding = undefined;
    if (decoding) return decoding.end();
    const fh = this.fh;
    this.fh = undefined;
    try {
      await fh?.close();
    } catch (e) {
      throw ioError(`writing ${this.path}`, this.path, e);
    }
  }

  async abort(): Promise<void> {
    await closeQuietly(this.fh);
    this.fh = undefined;
    for (const d of this.decoders) await d.abort();
    for (const p of this.created) await unlinkQuietly(p);
  }
}

async function checkEmptyDir(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new CheckptError(
      'ETARGET',
      `cannot extract into ${dir}: ${messageOf(e)}; it must be an existing, empty directory`,
      { cause: e, path: dir },
    );
  }
  if (names.length > 0) {
    throw new CheckptError(
      'ETARGET',
      `cannot extract into ${dir}: it is not empty; extract into a new empty directory`,
      { path: dir, errno: 'ENOTEMPTY' },
    );
  }
}

/** The bytes of the files in `dir` (CRIU's images, before they are packed). */
export function dirBytes(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) total += statSync(join(dir, f)).size;
  return total;
}

/**
 * Extracts every entry into `dir` (existing and empty) while checking the structure and hashing (or
 * decrypting: only authenticated bytes are written); if anything is wrong, including the SHA-256 at
 * the end, everything extracted is removed.
 */
export async function extractImage(
  file: string,
  dir: string,
  options: ExtractOptions = {},
): Promise<ImageInfo> {
  await checkEmptyDir(dir);
  const { decoder, ...read } = options;
  return withImage(file, async (src) => {
    // One pass: the hash covers the very bytes extracted, and CRIU gets the directory only after.
    const sink = new DirSink(dir, decoder);
    try {
      return await parse(src, { ...read, verify: true, sink });
    } catch (e) {
      await sink.abort();
      throw e;
    }
  });
}
