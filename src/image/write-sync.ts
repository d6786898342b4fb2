/**
 * A plain checkpoint file written with the calling thread blocked throughout: checkpt() packs its
 * own file this way, inside the call the program already waits on, so no packing worker has to
 * start (docs/PERFORMANCE.md). Format 2, plain, memory in the file: byte for byte what
 * writeImage() writes of the same directory, put in place as atomically.
 */
import {
  closeSync,
  constants as fsc,
  fstatSync,
  fsyncSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname, resolve } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { sha256 } from '../common/sha256.js';
import { errnoOf, ioError } from './io.js';
import {
  CODEC_NONE,
  FLAG_BLAKE3,
  FORMAT_VERSION,
  IO_UNIT,
  MAGIC,
  MEMORY_NAME,
  PLAIN_MEM_CHUNK,
  PREFIX_LEN,
  TRAILER_MAGIC,
  ZSTD_FRAME,
  maxFrame,
} from './layout.js';
import {
  bodyHead,
  checkedSources,
  chunkDigest,
  cutOf,
  dirSyncFailed,
  encodeManifest,
  filesOf,
  inlineRow,
  tableRow,
  tempFailed,
  tempNameFor,
  wantsBlake3,
  type SourceFile,
  type Table,
  type WriteOptions,
} from './write.js';

export interface PlainWriteOptions {
  /** The temporary name to write to (tempNameFor()). */
  tmp?: string | undefined;
  chunkHash?: WriteOptions['chunkHash'];
}

/** writeImage(target, manifest, { dir }) for a plain file, synchronously. */
export function writePlainImageSync(
  target: string,
  manifest: object,
  dir: string,
  options: PlainWriteOptions = {},
): { bytes: number } {
  const manifestBytes = encodeManifest(manifest);
  let dirents;
  try {
    dirents = readdirSync(dir, { withFileTypes: true });
  } catch (e) {
    throw ioError(`listing ${dir}`, dir, e);
  }
  const sources = checkedSources(filesOf(dir, dirents), dir);
  const b3 = wantsBlake3(options.chunkHash);
  const prefix = Buffer.alloc(PREFIX_LEN);
  MAGIC.copy(prefix, 0);
  prefix.writeUInt32BE(FORMAT_VERSION, 8);
  if (b3) prefix.writeUInt32BE(FLAG_BLAKE3, 12);
  const absTarget = resolve(target);
  const { fd, tmp } = createTempSync(absTarget, options.tmp);
  let open = true;
  let bytes: number;
  try {
    bytes = writeBody(fd, prefix, manifestBytes, sources, b3);
    fsyncSync(fd);
    open = false;
    closeSync(fd);
    renameSync(tmp, absTarget);
  } catch (e) {
    if (open) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // never made, or already renamed away
    }
    throw ioError(`writing ${absTarget}`, absTarget, e);
  }
  syncDirSync(dirname(absTarget));
  return { bytes };
}

/** DATA (each memory image in checked chunks), then INDEX and TAIL; returns the file size. */
function writeBody(
  fd: number,
  prefix: Buffer,
  manifestBytes: Buffer,
  sources: SourceFile[],
  b3: boolean,
): number {
  let position = writeAllSync(fd, prefix, 0);
  const tables = new Map<string, Table>();
  const buf = Buffer.allocUnsafe(
    Math.max(maxFrame(PLAIN_MEM_CHUNK), maxFrame(ZSTD_FRAME), IO_UNIT),
  );
  for (const s of sources) {
    if (!MEMORY_NAME.test(s.name)) continue;
    const chunk = s.name.endsWith('.zst') ? ZSTD_FRAME : PLAIN_MEM_CHUNK;
    withEntry(s, (src, size) => {
      const cut = cutOf(src, s.name, size, chunk);
      const hashes: Buffer[] = [];
      let at = 0;
      for (let i = 0; i < cut.lengths.length;) {
        // As writeImage: plain chunks go to disk a megabyte at a time, each hashed on its own.
        let n = 1;
        let len = cut.lengths[i] ?? 0;
        if (cut.codec === CODEC_NONE)
          while (i + n < cut.lengths.length && len + (cut.lengths[i + n] ?? 0) <= IO_UNIT)
            len += cut.lengths[i + n++] ?? 0;
        const data = buf.subarray(0, len);
        readExactlySync(src, data, at, s.path);
        let from = 0;
        for (let k = i; k < i + n; k++) {
          const l = cut.lengths[k] ?? 0;
          hashes.push(chunkDigest(data.subarray(from, from + l), b3));
          from += l;
        }
        position += writeAllSync(fd, data, position);
        at += len;
        i += n;
      }
      tables.set(s.name, { cut, hashes, chunk });
    });
  }
  const dataLen = Buffer.alloc(8);
  dataLen.writeBigUInt64BE(BigInt(position - PREFIX_LEN), 0);
  // INDEX is hashed with PREFIX before it and D after it (layout.ts, TAIL).
  const hash = sha256().update(prefix);
  const put = (b: Buffer): void => {
    hash.update(b);
    position += writeAllSync(fd, b, position);
  };
  put(bodyHead(manifestBytes, sources.length));
  for (const s of sources) {
    const table = tables.get(s.name);
    if (table) put(tableRow(s.name, table, false));
    else
      withEntry(s, (src, size) => {
        put(inlineRow(s.name, size));
        for (let at = 0; at < size;) {
          const data = buf.subarray(0, Math.min(buf.length, size - at));
          readExactlySync(src, data, at, s.path);
          put(data);
          at += data.length;
        }
      });
  }
  position += writeAllSync(
    fd,
    Buffer.concat([dataLen, TRAILER_MAGIC, hash.update(dataLen).digest()]),
    position,
  );
  return position;
}

/**
 * Runs `use` on an image file opened without following links or blocking (only a regular file),
 * then checks that it did not grow meanwhile.
 */
function withEntry(s: SourceFile, use: (fd: number, size: number) => void): void {
  let fd: number | undefined;
  try {
    fd = openSync(s.path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile())
      throw new CheckptError('EIO', `${s.path} is not a regular file`, { path: s.path });
    use(fd, st.size);
    if (readSync(fd, Buffer.allocUnsafe(1), 0, 1, st.size) !== 0)
      throw new CheckptError('EIO', `${s.path} grew while it was being packed`, { path: s.path });
  } catch (e) {
    throw ioError(`packing ${s.path}`, s.path, e);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function readExactlySync(fd: number, buf: Buffer, at: number, path: string): void {
  for (let done = 0; done < buf.length;) {
    const n = readSync(fd, buf, done, buf.length - done, at + done);
    if (n === 0)
      throw new CheckptError('EIO', `${path} became shorter while it was being packed`, { path });
    done += n;
  }
}

/** Writes all of `buf` at `position`; returns its length. */
function writeAllSync(fd: number, buf: Buffer, position: number): number {
  for (let off = 0; off < buf.length;)
    off += writeSync(fd, buf, off, buf.length - off, position + off);
  return buf.length;
}

/** createTemp(), synchronously: a new file (mode 0600, never an existing one) beside `target`. */
function createTempSync(target: string, given: string | undefined): { fd: number; tmp: string } {
  for (let attempt = 0; ; attempt++) {
    const tmp = given ?? tempNameFor(target);
    try {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
      return { fd: openSync(tmp, flags, 0o600), tmp };
    } catch (e) {
      if (errnoOf(e) === 'EEXIST' && given === undefined && attempt < 5) continue;
      throw tempFailed(e, dirname(target));
    }
  }
}

/** syncDir(), synchronously. */
function syncDirSync(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    fsyncSync(fd);
  } catch (e) {
    const err = dirSyncFailed(e, dir);
    if (err) throw err;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
