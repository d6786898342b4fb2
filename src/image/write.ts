/** Writing a checkpoint file: packed from a directory, plain or sealed, put in place atomically. */

import { crypto } from '../common/builtin.js';
import { blake3, blake3Available } from '../common/blake3.js';
import { CHUNK_HASH } from '../common/config.js';
import { sha256, type Sha256 } from '../common/sha256.js';
import { constants as fsc, fstatSync, readdirSync, statSync, type Dirent } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { CheckptError } from '../common/errors.js';
import {
  errnoOf,
  ioError,
  messageOf,
  closeQuietly,
  pooledOps,
  directOps,
  unlinkQuietly,
  writeAll,
  writeAllv,
  type FileOps,
  type PackHandle,
} from './io.js';
import { scanFrames } from './chunks.js';
import {
  CHUNK,
  CODEC_NONE,
  CODEC_ZSTD_FRAMES,
  FLAG_BLAKE3,
  FLAG_ENCRYPTED,
  FLAG_STORE,
  FORMAT_VERSION,
  KIND_CHUNKED,
  KIND_INLINE,
  KIND_STORED,
  MAGIC,
  MAX_ENTRIES,
  MAX_MANIFEST,
  MAX_MEM_CHUNK,
  MAX_SEAL_CHUNK,
  IO_UNIT,
  MEM_CHUNK,
  PLAIN_MEM_CHUNK,
  ZSTD_FRAME,
  MEMORY_NAME,
  MIN_MEM_CHUNK,
  MIN_SEAL_CHUNK,
  PREFIX_LEN,
  TAG_LEN,
  TRAILER_MAGIC,
  maxFrame,
  nameProblem,
} from './layout.js';
import { contentChunks, storeNameOf, StoreWriter, type StoreWrite } from './store.js';
import { newSealing, rebound, sealChunk, sealPage, type Sealing } from './seal.js';

export interface WriteOptions {
  /** Seal the file with this 32-byte key (see key.ts). */
  key?: Buffer | undefined;
  /** Bytes of BODY per sealed chunk; tests use small ones to get many chunks. */
  chunkSize?: number;
  /** The temporary name to write to (tempNameFor()): a waiter can then remove it if the writer dies. */
  tmp?: string | undefined;
  /** Format 1 only for tests of what older versions wrote; by default FORMAT_VERSION. */
  formatVersion?: 1 | 2;
  /** Format 2: decoded bytes per memory chunk; tests use small ones to get many chunks. */
  memoryChunk?: number;
  /**
   * Put the uncompressed memory into this chunk store (a directory beside `target`, store.ts) and
   * only refer to it from the file; each chunk zstd-compressed with `compress`. Ignored with a key:
   * an encrypted file holds its memory itself.
   */
  store?: { dir: string; compress?: boolean } | undefined;
  /**
   * Format 2, plain, memory in the file: what its chunk tables hold. By default CHECKPT_CHUNK_HASH,
   * else BLAKE3 where checkpt's addon loads, else SHA-256.
   */
  chunkHash?: 'sha256' | 'blake3';
  /**
   * Read, write and sync on the calling thread instead of Node's thread pool: for a process with
   * nothing else to do meanwhile (the packing worker). See io.ts, directOps.
   */
  direct?: boolean;
}

export interface SourceFile {
  name: string;
  path: string;
}

export function encodeManifest(manifest: object): Buffer {
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest)) {
    throw new TypeError('checkpoint manifest must be a plain object');
  }
  const bytes = Buffer.from(JSON.stringify(manifest), 'utf8');
  if (bytes.length > MAX_MANIFEST) {
    throw new RangeError(`checkpoint manifest is ${bytes.length} bytes; the limit is 1 MiB`);
  }
  return bytes;
}

async function listSources(
  source: { dir: string; files?: string[] },
  ops: FileOps,
): Promise<SourceFile[]> {
  const found: SourceFile[] = [];
  if (source.files !== undefined) {
    for (const f of source.files) {
      const path = resolve(source.dir, f);
      let st;
      try {
        st = await ops.lstat(path);
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
      dirents = await ops.readdir(source.dir);
    } catch (e) {
      throw ioError(`listing ${source.dir}`, source.dir, e);
    }
    found.push(...filesOf(source.dir, dirents));
  }
  return checkedSources(found, source.dir);
}

/** A directory's entries to pack, sorted by name: only regular files. */
export function filesOf(dir: string, dirents: Dirent[]): SourceFile[] {
  const found = dirents.map((d) => fileOf(dir, d));
  return found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** A directory's entry to pack: only a regular file. */
function fileOf(dir: string, d: Dirent): SourceFile {
  const path = join(dir, d.name);
  if (!d.isFile()) {
    const kind = d.isDirectory() ? 'a directory' : d.isSymbolicLink() ? 'a symlink' : 'special';
    throw new CheckptError(
      'EIO',
      `${path} is ${kind}, not a regular file; the directory to pack must contain only files`,
      { path },
    );
  }
  return { name: d.name, path };
}

/** The files to pack, if they are not too many and their names can be stored. */
export function checkedSources(found: SourceFile[], dir: string): SourceFile[] {
  if (found.length > MAX_ENTRIES) {
    throw new CheckptError('EIO', `${found.length} files to pack; the limit is ${MAX_ENTRIES}`, {
      path: dir,
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

/**
 * Buffers output in large chunks and writes each while the next one fills; a plain file hashes
 * each chunk, an encrypted one seals each as one GCM chunk (only full ones, except the last).
 */
/**
 * An image file to pack, and its size: opened without following links or blocking, and only a
 * regular file (the handle is closed otherwise).
 */
async function openEntry(path: string, ops: FileOps): Promise<{ fh: PackHandle; size: number }> {
  const fh = await ops.open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  try {
    const st = fstatSync(fh.fd);
    if (st.isFile()) return { fh, size: st.size };
  } catch (e) {
    await closeQuietly(fh);
    throw e;
  }
  await closeQuietly(fh);
  throw new CheckptError('EIO', `${path} is not a regular file`, { path });
}

/** What every format's body starts with: u32 manifest length, the manifest, u32 entry count. */
export function bodyHead(manifest: Buffer, entries: number, store?: string): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(manifest.length, 0);
  const parts = [length, manifest];
  if (store !== undefined) {
    const name = Buffer.from(store, 'utf8');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(name.length, 0);
    parts.push(len, name);
  }
  const count = Buffer.alloc(4);
  count.writeUInt32BE(entries, 0);
  parts.push(count);
  return Buffer.concat(parts);
}

class ChunkWriter {
  private buf: Buffer;
  private spare: Buffer;
  private len = 0;
  private pending: Promise<void> = Promise.resolve();
  private readonly hash: Sha256 = sha256();
  private readonly probe = Buffer.allocUnsafe(1);
  private index = 0;

  constructor(
    private readonly fh: PackHandle,
    private position: number,
    size: number,
    private readonly sealing?: Sealing,
    hashedOnly?: Buffer,
  ) {
    this.buf = Buffer.allocUnsafe(size);
    this.spare = Buffer.allocUnsafe(size);
    // Format 2: PREFIX is hashed with INDEX but written before DATA.
    if (hashedOnly) this.hash.update(hashedOnly);
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
  async copyFrom(src: PackHandle, size: number, path: string): Promise<void> {
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
      out = [data, sealChunk(this.sealing, this.index, final, data)];
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

  /** Writes the last chunk and the trailer (after `lead`, hashed too) and returns the file size. */
  async finish(lead: Buffer = Buffer.alloc(0)): Promise<number> {
    await this.flush(true);
    await this.pending;
    const tail = this.sealing
      ? Buffer.concat([lead, TRAILER_MAGIC])
      : Buffer.concat([lead, TRAILER_MAGIC, this.hash.update(lead).digest()]);
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
  return join(
    dirname(target),
    `.${basename(target)}.tmp-${crypto().randomBytes(6).toString('hex')}`,
  );
}

/** A new file (mode 0600, never an existing one) beside `target`, to be renamed over it. */
export async function createTemp(
  target: string,
  given?: string,
  ops: FileOps = pooledOps,
): Promise<{ fh: PackHandle; tmp: string }> {
  const dir = dirname(target);
  for (let attempt = 0; ; attempt++) {
    const tmp = given ?? tempNameFor(target);
    try {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
      const fh = await ops.open(tmp, flags, 0o600);
      return { fh, tmp };
    } catch (e) {
      if (errnoOf(e) === 'EEXIST' && given === undefined && attempt < 5) continue;
      throw tempFailed(e, dir);
    }
  }
}

/** Why no new file could be made in `dir`: ETARGET when the directory is the problem. */
export function tempFailed(e: unknown, dir: string): CheckptError {
  const code = errnoOf(e);
  const targetProblem = ['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM', 'EROFS'];
  return new CheckptError(
    code !== undefined && targetProblem.includes(code) ? 'ETARGET' : 'EIO',
    `cannot create a file in ${dir} (${messageOf(e)}); check that the directory exists and is writable`,
    { cause: e, path: dir },
  );
}

/** fsyncs a directory, so that a rename in it lasts; EIO with `inPlace` when it cannot. */
export async function syncDir(dir: string, ops: FileOps = pooledOps): Promise<void> {
  let fh: PackHandle | undefined;
  try {
    fh = await ops.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    await fh.sync();
  } catch (e) {
    const err = dirSyncFailed(e, dir);
    if (err) throw err;
  } finally {
    await closeQuietly(fh);
  }
}

/** A directory's failed fsync as EIO with `inPlace`, or nothing where it cannot be done at all. */
export function dirSyncFailed(e: unknown, dir: string): CheckptError | undefined {
  // Some filesystems cannot fsync a directory at all; there is nothing more to do there.
  if (errnoOf(e) === 'EINVAL' || errnoOf(e) === 'ENOTSUP') return undefined;
  const err = ioError(
    `syncing directory ${dir} (the checkpoint file is in place but may not be durable)`,
    dir,
    e,
  );
  err.inPlace = true;
  return err;
}

/**
 * Packs every regular file directly inside `source.dir` (sorted by name; anything else is an error),
 * or the given `source.files` (resolved against `source.dir`, stored under their base names, in the
 * given order), into one checkpoint file at `target`, sealed when `options.key` is given, with
 * `manifest` (any JSON object; none of its fields mean anything here) stored as it is. The file
 * appears at `target` atomically with mode 0600 (a symlink there is replaced, never followed); on
 * failure `target` is untouched and no temporary file remains. `options.tmp` fixes the temporary
 * name (from tempNameFor()), so that whoever waits for a writer that may be killed can remove what
 * it left.
 */
export async function writeImage(
  target: string,
  manifest: object,
  source: { dir: string; files?: string[] },
  options: WriteOptions = {},
): Promise<{ bytes: number; store?: StoreWrite }> {
  const manifestBytes = encodeManifest(manifest);
  const chunkSize = options.chunkSize ?? CHUNK;
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_SEAL_CHUNK || chunkSize > MAX_SEAL_CHUNK) {
    throw new RangeError(`chunkSize must be from ${MIN_SEAL_CHUNK} to ${MAX_SEAL_CHUNK} bytes`);
  }
  const memoryChunk = options.memoryChunk ?? MEM_CHUNK;
  // Plain memory is checked where a fault first needs it: a small chunk is checked in microseconds.
  const plainChunk = options.memoryChunk ?? PLAIN_MEM_CHUNK;
  const zstdChunk = options.memoryChunk ?? ZSTD_FRAME;
  if (
    !Number.isInteger(memoryChunk) ||
    memoryChunk < MIN_MEM_CHUNK ||
    memoryChunk > MAX_MEM_CHUNK
  ) {
    throw new RangeError(`memoryChunk must be from ${MIN_MEM_CHUNK} to ${MAX_MEM_CHUNK} bytes`);
  }
  const version = options.formatVersion ?? FORMAT_VERSION;
  const ops = options.direct === true ? directOps : pooledOps;
  const sources = await listSources(source, ops);
  const absTarget = resolve(target);
  const prefix = Buffer.alloc(PREFIX_LEN);
  MAGIC.copy(prefix, 0);
  prefix.writeUInt32BE(version, 8);
  let sealing: Sealing | undefined;
  if (options.key !== undefined) {
    prefix.writeUInt32BE(FLAG_ENCRYPTED, 12);
    sealing = newSealing(options.key, prefix, chunkSize);
  }
  let store: StoreWriter | undefined;
  if (options.store !== undefined && sealing === undefined && version === 2) {
    const dir = resolve(options.store.dir);
    storeNameOf(dir, absTarget);
    prefix.writeUInt32BE(FLAG_STORE, 12);
    store = new StoreWriter(dir, options.store.compress === true);
  }
  // BLAKE3 tables where the file has them (plain, memory in the file) and the addon works here.
  const useBlake3 =
    version === 2 && sealing === undefined && store === undefined && wantsBlake3(options.chunkHash);
  if (useBlake3) prefix.writeUInt32BE(FLAG_BLAKE3, 12);
  const { fh, tmp } = await createTemp(absTarget, options.tmp, ops);
  let bytes: number;
  let out: ChunkWriter | undefined;
  try {
    if (version === 2) {
      bytes = await writeV2(fh, prefix, manifestBytes, sources, {
        sealing,
        chunkSize,
        memoryChunk,
        plainChunk,
        zstdChunk,
        store,
        blake3: useBlake3,
        ops,
      });
    } else {
      // Format 1, kept for tests of files older versions wrote.
      if (sealing) {
        await writeAll(fh, sealing.head, 0);
        out = new ChunkWriter(fh, sealing.head.length, chunkSize, sealing);
      } else {
        out = new ChunkWriter(fh, 0, CHUNK);
        await out.put(prefix);
      }
      await out.put(bodyHead(manifestBytes, sources.length));
      for (const s of sources) {
        let src: PackHandle | undefined;
        try {
          const opened = await openEntry(s.path, ops);
          src = opened.fh;
          const fileSize = opened.size;
          const name = Buffer.from(s.name, 'utf8');
          const entryHead = Buffer.alloc(2 + name.length + 8);
          entryHead.writeUInt16BE(name.length, 0);
          name.copy(entryHead, 2);
          entryHead.writeBigUInt64BE(BigInt(fileSize), 2 + name.length);
          await out.put(entryHead);
          await out.copyFrom(src, fileSize, s.path);
        } catch (e) {
          throw ioError(`packing ${s.path}`, s.path, e);
        } finally {
          await closeQuietly(src);
        }
      }
      bytes = await out.finish();
    }
    await fh.sync();
    await fh.close();
    await ops.rename(tmp, absTarget);
  } catch (e) {
    await out?.settle();
    await closeQuietly(fh);
    await unlinkQuietly(tmp);
    throw ioError(`writing ${absTarget}`, absTarget, e);
  }
  await syncDir(dirname(absTarget), ops);
  return store ? { bytes, store: store.stats } : { bytes };
}

/** How a memory entry is cut: its codec, decoded size and each chunk's stored length. */
export interface Cut {
  codec: number;
  decoded: number;
  lengths: number[];
}

export function cutOf(fd: number, name: string, size: number, chunk: number): Cut {
  if (name.endsWith('.zst')) {
    const frames = scanFrames(fd, size, chunk);
    if (frames !== undefined) {
      return { codec: CODEC_ZSTD_FRAMES, decoded: frames.decoded, lengths: frames.lengths };
    }
  }
  const lengths: number[] = [];
  for (let at = 0; at < size; at += chunk) lengths.push(Math.min(chunk, size - at));
  return { codec: CODEC_NONE, decoded: size, lengths };
}

export interface Table {
  cut: Cut;
  hashes: Buffer[];
  /** Bytes per chunk (decoded), as the table says; 0 for a store's (cut by content). */
  chunk: number;
  /** In the store: the cut's lengths are decoded lengths, the hashes of decoded bytes. */
  stored?: boolean;
}

/** A memory entry cut where its content says, each chunk put into the store. */
async function storeEntry(store: StoreWriter, s: SourceFile, ops: FileOps): Promise<Table> {
  let src: PackHandle | undefined;
  try {
    const opened = await openEntry(s.path, ops);
    src = opened.fh;
    const lengths: number[] = [];
    const hashes: Buffer[] = [];
    for await (const chunk of contentChunks(src, opened.size, s.path)) {
      lengths.push(chunk.length);
      hashes.push(await store.put(chunk));
    }
    const probe = Buffer.allocUnsafe(1);
    if ((await src.read(probe, 0, 1, opened.size)).bytesRead !== 0) {
      throw new CheckptError('EIO', `${s.path} grew while it was being packed`, { path: s.path });
    }
    return {
      cut: { codec: CODEC_NONE, decoded: opened.size, lengths },
      hashes,
      chunk: 0,
      stored: true,
    };
  } catch (e) {
    throw ioError(`packing ${s.path}`, s.path, e);
  } finally {
    await closeQuietly(src);
  }
}

interface V2Options {
  sealing: Sealing | undefined;
  chunkSize: number;
  memoryChunk: number;
  plainChunk: number;
  zstdChunk: number;
  store: StoreWriter | undefined;
  /** The chunk tables get BLAKE3 digests (flags bit 2), else SHA-256 ones. */
  blake3: boolean;
  ops: FileOps;
}

/**
 * Format 2 (layout.ts): DATA (each memory entry in checked chunks) first, then INDEX (the manifest,
 * the other entries and the chunk tables) and TAIL. Returns the file size.
 */
async function writeV2(
  fh: PackHandle,
  prefix: Buffer,
  manifestBytes: Buffer,
  sources: SourceFile[],
  { sealing, chunkSize, memoryChunk, plainChunk, zstdChunk, store, blake3: b3, ops }: V2Options,
): Promise<number> {
  const head = sealing ? sealing.head : prefix;
  await writeAll(fh, head, 0);
  let position = head.length;
  const tables = new Map<string, Table>();
  let ordinal = 0;
  const bufs = [0, 1].map(() =>
    Buffer.allocUnsafe(
      Math.max(maxFrame(memoryChunk), maxFrame(plainChunk), maxFrame(zstdChunk), IO_UNIT),
    ),
  );
  for (const s of sources) {
    if (!MEMORY_NAME.test(s.name)) continue;
    if (store && !s.name.endsWith('.zst')) {
      tables.set(s.name, await storeEntry(store, s, ops));
      continue;
    }
    let src: PackHandle | undefined;
    let pending: Promise<void> = Promise.resolve();
    try {
      const opened = await openEntry(s.path, ops);
      src = opened.fh;
      const fileSize = opened.size;
      // A .zst cut into frames by compressImages() has a chunk per frame (sealed or not); a .zst
      // of one stream is stored in chunks all the same, and decoded whole on resume.
      const chunk = s.name.endsWith('.zst') ? zstdChunk : sealing ? memoryChunk : plainChunk;
      const cut = cutOf(src.fd, s.name, fileSize, chunk);
      const hashes: Buffer[] = [];
      let at = 0;
      let turn = 0;
      for (let i = 0; i < cut.lengths.length; turn++) {
        // Plain chunks go to disk a megabyte at a time, each hashed on its own.
        let n = 1;
        let len = cut.lengths[i] ?? 0;
        if (!sealing && cut.codec === CODEC_NONE)
          while (i + n < cut.lengths.length && len + (cut.lengths[i + n] ?? 0) <= IO_UNIT)
            len += cut.lengths[i + n++] ?? 0;
        const buf = (bufs[turn % 2] as Buffer).subarray(0, len);
        // Read while the previous chunk (the other buffer) is written; this one's last write is done.
        await readExactly(src, buf, at, s.path);
        await pending;
        at += len;
        let out: Buffer[];
        if (sealing) {
          const last = i === cut.lengths.length - 1;
          out = [buf, sealPage(sealing, ordinal, s.name, i, last, buf)];
        } else {
          let from = 0;
          for (let k = i; k < i + n; k++) {
            const l = cut.lengths[k] ?? 0;
            const bytes = buf.subarray(from, from + l);
            hashes.push(chunkDigest(bytes, b3));
            from += l;
          }
          out = [buf];
        }
        i += n;
        pending = writeAllv(fh, out, position);
        pending.catch(() => undefined);
        position += len + (sealing ? TAG_LEN : 0);
      }
      await pending;
      const probe = Buffer.allocUnsafe(1);
      if ((await src.read(probe, 0, 1, fileSize)).bytesRead !== 0) {
        throw new CheckptError('EIO', `${s.path} grew while it was being packed`, { path: s.path });
      }
      tables.set(s.name, { cut, hashes, chunk });
      ordinal++;
    } catch (e) {
      await pending.catch(() => undefined);
      throw ioError(`packing ${s.path}`, s.path, e);
    } finally {
      await closeQuietly(src);
    }
  }
  // The chunks are durable before the file naming them can be.
  await store?.sync();
  const dataLen = Buffer.alloc(8);
  dataLen.writeBigUInt64BE(BigInt(position - head.length), 0);
  const out = sealing
    ? new ChunkWriter(fh, position, chunkSize, rebound(sealing, Buffer.concat([head, dataLen])))
    : new ChunkWriter(fh, position, CHUNK, undefined, prefix);
  try {
    await out.put(bodyHead(manifestBytes, sources.length, store && basename(store.dir)));
    for (const s of sources) {
      const table = tables.get(s.name);
      if (table) {
        await out.put(tableRow(s.name, table, sealing !== undefined));
        continue;
      }
      let src: PackHandle | undefined;
      try {
        const opened = await openEntry(s.path, ops);
        src = opened.fh;
        await out.put(inlineRow(s.name, opened.size));
        await out.copyFrom(src, opened.size, s.path);
      } catch (e) {
        throw ioError(`packing ${s.path}`, s.path, e);
      } finally {
        await closeQuietly(src);
      }
    }
    return await out.finish(dataLen);
  } catch (e) {
    await out.settle();
    throw e;
  }
}

/** INDEX's ENTRY up to its kind (layout.ts). */
function rowHead(name: string, kind: number): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(2 + bytes.length + 1);
  head.writeUInt16BE(bytes.length, 0);
  bytes.copy(head, 2);
  head[2 + bytes.length] = kind;
  return head;
}

/** INDEX's ENTRY for a file stored whole after it (kind 0): its head and size. */
export function inlineRow(name: string, size: number): Buffer {
  const sized = Buffer.alloc(8);
  sized.writeBigUInt64BE(BigInt(size), 0);
  return Buffer.concat([rowHead(name, KIND_INLINE), sized]);
}

/** INDEX's ENTRY for a memory image: its chunk table (kind 1), or its store's (kind 2). */
export function tableRow(name: string, table: Table, sealed: boolean): Buffer {
  const { cut, hashes } = table;
  if (table.stored === true) {
    const t = Buffer.alloc(8 + 4 + cut.lengths.length * 36);
    t.writeBigUInt64BE(BigInt(cut.decoded), 0);
    t.writeUInt32BE(cut.lengths.length, 8);
    cut.lengths.forEach((len, i) => {
      t.writeUInt32BE(len, 12 + i * 36);
      hashes[i]?.copy(t, 12 + i * 36 + 4);
    });
    return Buffer.concat([rowHead(name, KIND_STORED), t]);
  }
  const row = sealed ? 4 : 4 + 32;
  const t = Buffer.alloc(1 + 4 + 8 + 4 + cut.lengths.length * row);
  t[0] = cut.codec;
  t.writeUInt32BE(table.chunk, 1);
  t.writeBigUInt64BE(BigInt(cut.decoded), 5);
  t.writeUInt32BE(cut.lengths.length, 13);
  cut.lengths.forEach((len, i) => {
    t.writeUInt32BE(len, 17 + i * row);
    hashes[i]?.copy(t, 17 + i * row + 4);
  });
  return Buffer.concat([rowHead(name, KIND_CHUNKED), t]);
}

/** Whether a plain file's chunk tables hold BLAKE3 digests (WriteOptions.chunkHash). */
export function wantsBlake3(chunkHash: WriteOptions['chunkHash']): boolean {
  return (chunkHash ?? CHUNK_HASH.get() ?? (blake3Available() ? 'blake3' : 'sha256')) === 'blake3';
}

/** A plain memory chunk's row digest: BLAKE3 with flags bit 2, else SHA-256. */
export function chunkDigest(bytes: Buffer, b3: boolean): Buffer {
  return b3 ? blake3(bytes) : sha256().update(bytes).digest();
}

async function readExactly(src: PackHandle, buf: Buffer, at: number, path: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await src.read(buf, done, buf.length - done, at + done);
    if (bytesRead === 0) {
      throw new CheckptError('EIO', `${path} became shorter while it was being packed`, { path });
    }
    done += bytesRead;
  }
}

/** The bytes of the files in `dir`: what writeImage() would pack of it, before packing. */
export function dirBytes(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) total += statSync(join(dir, f)).size;
  return total;
}
