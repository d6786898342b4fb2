/**
 * The single-file checkpoint container (format version 1). All integers are big-endian:
 *
 *   "CHECKPT\n" | u32 version | u32 flags | u32 manifest length M | M bytes JSON manifest
 *   | u32 entry count N | N × (u16 name length L | L bytes UTF-8 name | u64 size S | S bytes)
 *   | "CKPTEND\n" | SHA-256 of every byte before "CKPTEND\n"
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { constants as fsc, readdirSync, statSync } from 'node:fs';
import { lstat, open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { TextDecoder } from 'node:util';
import { CheckptError } from '../api/errors.js';

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
}

const MAGIC = Buffer.from('CHECKPT\n', 'latin1');
const TRAILER_MAGIC = Buffer.from('CKPTEND\n', 'latin1');
const HASH_LEN = 32;
const TRAILER_LEN = TRAILER_MAGIC.length + HASH_LEN;
const HEAD_LEN = MAGIC.length + 12;
const KNOWN_FLAGS = 0;
const MAX_MANIFEST = 1024 * 1024;
const MAX_ENTRIES = 100_000;
const MAX_NAME = 255;
const MIN_ENTRY = 2 + 1 + 8;
const MIN_FILE = HEAD_LEN + 4 + TRAILER_LEN;
// A version this far beyond ours is far likelier to be a damaged header than a real future format.
const MAX_PLAUSIBLE_VERSION = 0xffff;
const CHUNK = 4 * 1024 * 1024;
const INFO_WINDOW = 64 * 1024;

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

/** Buffers output in large chunks, hashing each chunk and writing it while the next one fills. */
class ChunkWriter {
  private buf = Buffer.allocUnsafe(CHUNK);
  private spare = Buffer.allocUnsafe(CHUNK);
  private len = 0;
  private position = 0;
  private pending: Promise<void> = Promise.resolve();
  private readonly hash: Hash = createHash('sha256');
  private readonly probe = Buffer.allocUnsafe(1);

  constructor(private readonly fh: FileHandle) {}

  async put(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.len === this.buf.length) await this.flush();
      const n = data.copy(this.buf, this.len, off);
      this.len += n;
      off += n;
    }
  }

  /** Copies exactly `size` bytes of `src`, reading straight into the output buffer. */
  async copyFrom(src: FileHandle, size: number, path: string): Promise<void> {
    let done = 0;
    while (done < size) {
      if (this.len === this.buf.length) await this.flush();
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

  private async flush(): Promise<void> {
    if (this.len === 0) return;
    const data = this.buf.subarray(0, this.len);
    this.hash.update(data);
    await this.pending;
    const p = writeAll(this.fh, data, this.position);
    // Observed when awaited later; this only keeps an early failure from being "unhandled".
    p.catch(() => undefined);
    this.pending = p;
    this.position += this.len;
    [this.buf, this.spare] = [this.spare, this.buf];
    this.len = 0;
  }

  /** Writes the trailer and returns the total file size. */
  async finish(): Promise<number> {
    await this.flush();
    await this.pending;
    const tail = Buffer.concat([TRAILER_MAGIC, this.hash.digest()]);
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
      throw ioError(
        `syncing directory ${dir} (the checkpoint file is in place but may not be durable)`,
        dir,
        e,
      );
    }
  } finally {
    await closeQuietly(fh);
  }
}

/**
 * Packs every regular file directly inside `source.dir` (sorted by name; anything else is an error),
 * or the given `source.files` (resolved against `source.dir`, stored under their base names, in the
 * given order), into one checkpoint file at `target`. The file appears at `target` atomically with
 * mode 0600; on failure `target` is untouched and no temporary file remains. `options.tmp` fixes the
 * temporary name (from tempNameFor()), so that whoever waits for a writer that may be killed can
 * remove what it left.
 */
export async function writeImage(
  target: string,
  manifest: Record<string, unknown>,
  source: { dir: string; files?: string[] },
  options: { tmp?: string } = {},
): Promise<{ bytes: number }> {
  const manifestBytes = encodeManifest(manifest);
  const sources = await listSources(source);
  const absTarget = resolve(target);
  const { fh, tmp } = await createTemp(absTarget, options.tmp);
  const out = new ChunkWriter(fh);
  let bytes: number;
  try {
    const head = Buffer.alloc(HEAD_LEN);
    MAGIC.copy(head, 0);
    head.writeUInt32BE(FORMAT_VERSION, 8);
    head.writeUInt32BE(0, 12);
    head.writeUInt32BE(manifestBytes.length, 16);
    await out.put(head);
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
    await out.settle();
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

/** Checks magic, version and flags; `head` is the first min(size, HEAD_LEN) bytes. */
function checkHead(file: string, head: Buffer, size: number): void {
  if (size === 0) {
    throw new CheckptError(
      'EBADIMAGE',
      `${file} is empty, so it is not a checkpt file (it may never have been written); use another checkpoint`,
      { path: file },
    );
  }
  const m = Math.min(head.length, MAGIC.length);
  if (!head.subarray(0, m).equals(MAGIC.subarray(0, m))) throw notCheckpt(file, head);
  if (head.length < HEAD_LEN) throw truncated(file);
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
    throw damaged(file, `unknown header flags 0x${flags.toString(16)}`);
  }
}

/**
 * Sequential reader over [0, limit) of the image. When hashing, every byte of that range passes
 * through the hash exactly once, in order; otherwise entry data is skipped without being read.
 */
class SeqReader {
  private win: Buffer;
  private spare: Buffer | undefined;
  private winStart = 0;
  private winLen = 0;
  pos = 0;
  private readonly hash: Hash | undefined;

  constructor(
    private readonly src: Source,
    readonly limit: number,
    hashing: boolean,
  ) {
    this.win = Buffer.allocUnsafe(hashing ? CHUNK : INFO_WINDOW);
    this.hash = hashing ? createHash('sha256') : undefined;
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
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.src.fh.read(buf, off + done, len - done, position + done));
      } catch (e) {
        throw ioError(`reading ${this.src.file}`, this.src.file, e);
      }
      if (bytesRead === 0) {
        throw new CheckptError(
          'EBADIMAGE',
          `${this.src.file} became shorter while it was being read; make sure nothing is writing to it and try again`,
          { path: this.src.file },
        );
      }
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

  /** Passes the next `n` bytes to `write` (or skips them when neither hashing nor writing). */
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
    if (this.hash === undefined && write === undefined) {
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

/** Walks the whole container, checking every length against the real file size. */
async function parse(
  src: Source,
  hashing: boolean,
  sink?: Sink,
): Promise<{ info: ImageInfo; digest: Buffer | undefined }> {
  const { file, size } = src;
  checkHead(file, await readAt(src, 0, Math.min(size, HEAD_LEN)), size);
  if (size < MIN_FILE) throw truncated(file);
  const trailer = await readAt(src, size - TRAILER_LEN, TRAILER_LEN);
  if (!trailer.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) throw truncated(file);

  const r = new SeqReader(src, size - TRAILER_LEN, hashing);
  // Re-read through the reader so that the bytes checked are the bytes hashed.
  const head = await r.take(HEAD_LEN);
  checkHead(file, head, size);
  const manifestLen = head.readUInt32BE(16);
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

  let digest: Buffer | undefined;
  if (hashing) {
    digest = r.digest();
    if (!digest.equals(trailer.subarray(TRAILER_MAGIC.length))) {
      throw new CheckptError(
        'EBADIMAGE',
        `${file} is damaged (checksum mismatch): it was modified or truncated after it was written; use another checkpoint`,
        { path: file },
      );
    }
  }
  return { info: { formatVersion: FORMAT_VERSION, manifest, entries, fileSize: size }, digest };
}

async function openImage(file: string): Promise<Source> {
  let fh: FileHandle;
  try {
    // O_NONBLOCK so that a FIFO given by mistake cannot block the open forever.
    fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    const code = errnoOf(e) ?? 'EIO';
    const why =
      code === 'ENOENT'
        ? 'it does not exist; check the path'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied; check its permissions or run as a user that can read it'
          : `${messageOf(e)}`;
    throw new CheckptError(code, `cannot open checkpoint ${file}: ${why}`, {
      cause: e,
      path: file,
    });
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) {
      throw new CheckptError(
        'EISDIR',
        `${file} is a directory, not a checkpt file; pass the checkpoint file itself`,
        { path: file },
      );
    }
    if (!st.isFile()) {
      throw new CheckptError('EBADIMAGE', `${file} is not a regular file, so not a checkpt file`, {
        path: file,
      });
    }
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

/** Reads and fully verifies the container (structure and SHA-256) without extracting anything. */
export async function verifyImage(file: string): Promise<ImageInfo> {
  return withImage(file, async (src) => (await parse(src, true)).info);
}

/** Reads the manifest and entry table and checks structure and bounds, but not the checksum. */
export async function readImageInfo(file: string): Promise<ImageInfo & { verified: boolean }> {
  return withImage(file, async (src) => ({ ...(await parse(src, false)).info, verified: false }));
}

/** Creates the entries in `dir`; remembers them so that a failed extraction can be undone. */
class DirSink implements Sink {
  private readonly created: string[] = [];
  private fh: FileHandle | undefined;
  private path = '';
  private position = 0;

  constructor(private readonly dir: string) {}

  async begin(name: string): Promise<void> {
    this.path = join(this.dir, name);
    this.position = 0;
    try {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
      this.fh = await open(this.path, flags, 0o600);
    } catch (e) {
      throw ioError(`creating ${this.path}`, this.path, e);
    }
    this.created.push(this.path);
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.fh === undefined) throw new Error('internal: write before begin');
    try {
      await writeAll(this.fh, chunk, this.position);
    } catch (e) {
      throw ioError(`writing ${this.path}`, this.path, e);
    }
    this.position += chunk.length;
  }

  async end(): Promise<void> {
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
    for (const p of this.created) await unlinkQuietly(p);
  }
}

async function checkEmptyDir(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    const code = errnoOf(e) ?? 'EIO';
    throw new CheckptError(
      code,
      `cannot extract into ${dir}: ${messageOf(e)}; it must be an existing, empty directory`,
      { cause: e, path: dir },
    );
  }
  if (names.length > 0) {
    throw new CheckptError(
      'ENOTEMPTY',
      `cannot extract into ${dir}: it is not empty; extract into a new empty directory`,
      { path: dir },
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
 * Extracts every entry into `dir` (existing and empty) while checking the structure and hashing;
 * if anything is wrong, including the SHA-256 at the end, everything extracted is removed.
 */
export async function extractImage(file: string, dir: string): Promise<ImageInfo> {
  await checkEmptyDir(dir);
  return withImage(file, async (src) => {
    // One pass: the hash covers the very bytes extracted, and CRIU gets the directory only after.
    const sink = new DirSink(dir);
    try {
      return (await parse(src, true, sink)).info;
    } catch (e) {
      await sink.abort();
      throw e;
    }
  });
}
