/**
 * The chunk store beside a rotation (`app.ckpt.store/`): memory chunks named by the SHA-256 of their
 * bytes, written once and shared by every file that names the store (layout.ts, FLAG_STORE). A
 * chunk is written under a temporary name, fsynced and renamed, and its directory fsynced, before
 * the file naming it is; it is removed only when no file beside the store names it any more.
 *
 *   store = chunks/<first two hex digits>/<64 hex digits of the SHA-256 of the decoded bytes>
 *   chunk file = u8 codec (0: the bytes as they are, 1: one zstd frame of them) | payload
 *
 * Memory is cut where its content says (page-sized steps, a hash of each page's sampled words), not
 * at fixed offsets: CRIU's pages-N.img holds the present pages VMA after VMA, so a page that
 * appears shifts everything after it by whole pages, and content-defined cuts follow the shift.
 */

import { crypto, fsPromises } from '../common/builtin.js';
import { sha256 } from '../common/sha256.js';
import { constants as fsc } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { zlibZstd } from '../common/zstd.js';
import { closeQuietly, errnoOf, ioError, unlinkQuietly, writeAll, type PackHandle } from './io.js';
import { MAGIC, PREFIX_LEN, maxFrame } from './layout.js';

export const PAGE = 4096;
/**
 * Cuts: at least 16 pages (64 KiB), at most 1024 (4 MiB), about 320 KiB on average: a Node heap
 * changes pages all over between checkpoints, and each changed page costs its whole chunk (1.25 MiB
 * chunks stored 2.1 times the changed pages of test/fixtures/store-rotation.mjs, these 1.5 times).
 */
const MIN_PAGES = 16;
const MAX_PAGES = 1024;
export const MAX_STORED_CHUNK = MAX_PAGES * PAGE;
const CODEC_RAW = 0;
const CODEC_ZSTD = 1;

/** The path of the chunk whose bytes hash to `hash` in `store`. */
export function chunkPath(store: string, hash: Buffer): string {
  const hex = hash.toString('hex');
  return join(store, 'chunks', hex.slice(0, 2), hex);
}

/** Whether a cut goes after this page: a hash of 16 of its words (a gear that must never change). */
function cutAfter(b: Buffer, at: number): boolean {
  let h = 0x811c9dc5;
  for (let k = 0; k < 16; k++) h = Math.imul(h ^ b.readUInt32LE(at + k * 256), 0x01000193);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  return (h & 0x3f) === 0x1a;
}

/** The content-defined chunks of `size` bytes of `fh`, one after another (copies). */
export async function* contentChunks(
  fh: PackHandle,
  size: number,
  path: string,
): AsyncGenerator<Buffer> {
  const buf = Buffer.allocUnsafe(MAX_STORED_CHUNK);
  let len = 0;
  let read = 0;
  for (;;) {
    while (len < buf.length && read < size) {
      const want = Math.min(buf.length - len, size - read);
      const { bytesRead } = await fh.read(buf, len, want, read);
      if (bytesRead === 0) {
        throw new CheckptError('EIO', `${path} became shorter while it was being packed`, { path });
      }
      len += bytesRead;
      read += bytesRead;
    }
    if (len === 0) return;
    let cut = len;
    const pages = Math.floor(len / PAGE);
    for (let p = MIN_PAGES - 1; p < pages; p++) {
      if (p === MAX_PAGES - 1 || cutAfter(buf, p * PAGE)) {
        cut = (p + 1) * PAGE;
        break;
      }
    }
    // No cut in a full buffer cannot happen (MAX_PAGES forces one); a short one is the end.
    yield Buffer.from(buf.subarray(0, cut));
    buf.copyWithin(0, cut, len);
    len -= cut;
  }
}

/** Bytes a store write added, and bytes it found already there. */
export interface StoreWrite {
  written: number;
  shared: number;
  chunks: number;
}

/** Puts chunks into a store: each once, durable (with its directory) before `sync()` resolves. */
export class StoreWriter {
  readonly stats: StoreWrite = { written: 0, shared: 0, chunks: 0 };
  private readonly dirs = new Set<string>();
  private readonly seen = new Set<string>();
  /** Written, not yet fsynced nor renamed: fsynced together (the disk coalesces them). */
  private batch: { fh: FileHandle; tmp: string; path: string }[] = [];

  constructor(
    readonly dir: string,
    private readonly compress: boolean,
  ) {}

  /** Stores `bytes` unless a chunk of the same hash is there; returns the hash. */
  async put(bytes: Buffer): Promise<Buffer> {
    const hash = sha256().update(bytes).digest();
    const path = chunkPath(this.dir, hash);
    this.stats.chunks++;
    if (this.seen.has(path) || (await present(path))) {
      this.seen.add(path);
      this.stats.shared += bytes.length;
      return hash;
    }
    let payload = bytes;
    let codec = CODEC_RAW;
    const z = this.compress ? zlibZstd() : undefined;
    if (z?.zstdCompressSync) {
      const level = z.constants.ZSTD_c_compressionLevel ?? 100;
      const packed = z.zstdCompressSync(bytes, { params: { [level]: 1 } });
      if (packed.length < bytes.length) [payload, codec] = [packed, CODEC_ZSTD];
    }
    const sub = dirname(path);
    if (!this.dirs.has(sub)) {
      await fsPromises().mkdir(sub, { recursive: true, mode: 0o700 });
      this.dirs.add(sub);
    }
    const tmp = `${path}.tmp-${crypto().randomBytes(6).toString('hex')}`;
    let fh: FileHandle | undefined;
    try {
      fh = await fsPromises().open(
        tmp,
        fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW,
        0o600,
      );
      this.batch.push({ fh, tmp, path });
      await writeAll(fh, Buffer.from([codec]), 0);
      await writeAll(fh, payload, 1);
    } catch (e) {
      if (fh === undefined) await unlinkQuietly(tmp);
      await this.abandon();
      throw ioError(`writing memory chunk ${path}`, path, e);
    }
    this.seen.add(path);
    this.stats.written += payload.length + 1;
    if (this.batch.length >= BATCH) await this.flush();
    return hash;
  }

  /** fsyncs the chunks written so far, all at once, then renames each to its name. */
  private async flush(): Promise<void> {
    const batch = this.batch;
    try {
      await Promise.all(batch.map((c) => c.fh.sync()));
      await Promise.all(batch.map((c) => c.fh.close()));
      // Only a chunk whose bytes are durable gets its name: a present chunk is a whole one.
      for (const c of batch) await fsPromises().rename(c.tmp, c.path);
      this.batch = [];
    } catch (e) {
      await this.abandon();
      throw ioError(`writing memory chunks into ${this.dir}`, this.dir, e);
    }
  }

  /** Drops the chunks not yet renamed (a failed write). */
  private async abandon(): Promise<void> {
    const batch = this.batch;
    this.batch = [];
    for (const c of batch) {
      await closeQuietly(c.fh);
      await unlinkQuietly(c.tmp);
    }
  }

  /** Makes every chunk put so far durable where it is (their directories fsynced). */
  async sync(): Promise<void> {
    await this.flush();
    for (const d of [...this.dirs, join(this.dir, 'chunks'), this.dir]) await syncDirQuietly(d);
  }
}

/** Chunk files written before they are fsynced together (file descriptors held meanwhile). */
const BATCH = 32;

async function present(path: string): Promise<boolean> {
  try {
    const st = await fsPromises().stat(path);
    return st.isFile() && st.size > 1;
  } catch {
    return false;
  }
}

async function syncDirQuietly(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await fsPromises().open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    await fh.sync();
  } catch (e) {
    if (errnoOf(e) !== 'EINVAL' && errnoOf(e) !== 'ENOTSUP' && errnoOf(e) !== 'ENOENT') {
      throw ioError(`syncing ${dir}`, dir, e);
    }
  } finally {
    await closeQuietly(fh);
  }
}

/** Where a stored chunk is and what it must be, for the error that names it. */
export interface StoredChunk {
  /** The checkpoint file naming it. */
  file: string;
  store: string;
  entry: string;
  index: number;
  count: number;
  length: number;
  hash: Buffer;
}

/** A stored chunk that is missing or damaged (EBADIMAGE); `chunk` is its path in the store. */
export class StoreChunkError extends CheckptError {
  constructor(
    message: string,
    file: string,
    readonly chunk: string,
    readonly missing: boolean,
  ) {
    super('EBADIMAGE', message, { path: file });
  }
}

function chunkError(c: StoredChunk, what: string): StoreChunkError {
  return new StoreChunkError(
    `${c.file} is damaged: memory chunk ${c.hash.toString('hex')} (memory entry ${c.entry}, chunk index ${c.index} of ${c.count} chunks) in its store ${c.store} ${what}; use another checkpoint, or keep the file beside its store (checkpt pack makes a file that needs none)`,
    c.file,
    chunkPath(c.store, c.hash),
    what === 'is missing',
  );
}

/**
 * Reads a stored chunk and checks it; its decoded bytes, or EBADIMAGE naming it. `scratch`, when
 * big enough, is read into (a verification of all of a file then touches no new memory).
 */
export async function readStoredChunk(c: StoredChunk, scratch?: Buffer): Promise<Buffer> {
  const path = chunkPath(c.store, c.hash);
  let fh: FileHandle | undefined;
  let raw: Buffer;
  try {
    fh = await fsPromises().open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    const st = await fh.stat();
    if (!st.isFile()) throw chunkError(c, 'is not a regular file');
    if (st.size < 2 || st.size > 1 + maxFrame(c.length)) {
      throw chunkError(c, `has an impossible size (${st.size} bytes)`);
    }
    raw =
      scratch !== undefined && scratch.length >= st.size
        ? scratch.subarray(0, st.size)
        : Buffer.allocUnsafe(st.size);
    let done = 0;
    while (done < raw.length) {
      const { bytesRead } = await fh.read(raw, done, raw.length - done, done);
      if (bytesRead === 0) throw chunkError(c, 'was cut off');
      done += bytesRead;
    }
  } catch (e) {
    if (e instanceof CheckptError) throw e;
    if (errnoOf(e) === 'ENOENT') throw chunkError(c, 'is missing');
    throw ioError(`reading ${path}`, path, e);
  } finally {
    await closeQuietly(fh);
  }
  let bytes: Buffer;
  if (raw[0] === CODEC_RAW) bytes = raw.subarray(1);
  else if (raw[0] === CODEC_ZSTD) {
    const z = zlibZstd();
    if (!z.zstdDecompressSync) {
      throw new CheckptError(
        'EBADIMAGE',
        `${c.file}: its memory chunk ${c.hash.toString('hex')} is zstd-compressed and this Node cannot decode zstd (Node 22.15 or newer can)`,
        { path: c.file },
      );
    }
    try {
      bytes = z.zstdDecompressSync(raw.subarray(1), { maxOutputLength: c.length });
    } catch {
      throw chunkError(c, 'does not decode');
    }
  } else throw chunkError(c, `has an unknown codec ${raw[0]}`);
  if (bytes.length !== c.length || !sha256().update(bytes).digest().equals(c.hash)) {
    throw chunkError(c, 'is damaged (checksum mismatch)');
  }
  return bytes;
}

/** The hashes a store-backed file names, and the store it names (resolved); read by the caller. */
export type StoreRefs = (file: string) => Promise<{ store: string; hashes: Buffer[] } | undefined>;

export interface Collected {
  removed: number;
  bytes: number;
  /** Why nothing was collected, when a file beside the store could not be read. */
  skipped?: string;
}

/** Whether `file` starts as a format-2 file naming a store would (then it must be read). */
async function mayNameStore(file: string, flag: number): Promise<boolean> {
  let fh: FileHandle | undefined;
  try {
    fh = await fsPromises().open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    if (!(await fh.stat()).isFile()) return false;
    const head = Buffer.alloc(PREFIX_LEN);
    const { bytesRead } = await fh.read(head, 0, PREFIX_LEN, 0);
    if (bytesRead < MAGIC.length || !head.subarray(0, MAGIC.length).equals(MAGIC)) return false;
    // A file whose head is not written yet, or not whole, may be one being written: it counts.
    return bytesRead < PREFIX_LEN || (head.readUInt32BE(12) & flag) !== 0;
  } catch {
    return false;
  } finally {
    await closeQuietly(fh);
  }
}

/**
 * Removes the chunks of `store` that no file in its directory names, and chunk files a killed
 * writer left half-written. Any file there that may name it but cannot be read stops it: nothing
 * is removed then. Only one writer may use a store at a time (one program per rotation).
 */
export async function collectStore(
  store: string,
  flag: number,
  refs: StoreRefs,
): Promise<Collected> {
  const dir = dirname(store);
  const keep = new Set<string>();
  let names: string[];
  try {
    names = await fsPromises().readdir(dir);
  } catch (e) {
    return { removed: 0, bytes: 0, skipped: `cannot list ${dir}: ${(e as Error).message}` };
  }
  for (const n of names) {
    const file = join(dir, n);
    if (file === store || !(await mayNameStore(file, flag))) continue;
    let r;
    try {
      r = await refs(file);
    } catch (e) {
      return { removed: 0, bytes: 0, skipped: `${file} cannot be read (${(e as Error).message})` };
    }
    if (r === undefined || r.store !== store) continue;
    for (const h of r.hashes) keep.add(h.toString('hex'));
  }
  let removed = 0;
  let bytes = 0;
  const chunks = join(store, 'chunks');
  let subs: string[];
  try {
    subs = await fsPromises().readdir(chunks);
  } catch {
    return { removed, bytes };
  }
  for (const s of subs) {
    let files: string[];
    try {
      files = await fsPromises().readdir(join(chunks, s));
    } catch {
      continue;
    }
    for (const f of files) {
      if (keep.has(f)) continue;
      const path = join(chunks, s, f);
      try {
        bytes += (await fsPromises().stat(path)).size;
        await fsPromises().unlink(path);
        removed++;
      } catch {
        // Gone already, or not ours to remove: the next collection tries again.
      }
    }
  }
  return { removed, bytes };
}

/** The store's bytes on disk (every chunk file). */
export async function storeBytes(store: string): Promise<{ chunks: number; bytes: number }> {
  let chunks = 0;
  let bytes = 0;
  const root = join(store, 'chunks');
  for (const s of await fsPromises()
    .readdir(root)
    .catch(() => [] as string[])) {
    for (const f of await fsPromises()
      .readdir(join(root, s))
      .catch(() => [] as string[])) {
      const st = await fsPromises()
        .stat(join(root, s, f))
        .catch(() => undefined);
      if (st?.isFile()) {
        chunks++;
        bytes += st.size;
      }
    }
  }
  return { chunks, bytes };
}

/** The store name a file records, checked: a directory beside the file. */
export function storeNameOf(store: string, target: string): string {
  if (dirname(store) !== dirname(target)) {
    throw new RangeError(`the store ${store} must be in the directory of ${target}`);
  }
  return basename(store);
}
