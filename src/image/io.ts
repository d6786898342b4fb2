/** Small file helpers shared by writing, reading and extracting. */

import { fsPromises } from '../common/builtin.js';
import {
  close,
  closeSync,
  fsyncSync,
  lstatSync,
  openSync,
  read,
  readdirSync,
  readSync,
  renameSync,
  writeSync,
  writevSync,
  type Dirent,
  type Stats,
} from 'node:fs';
import { CheckptError } from '../common/errors.js';

export function errnoOf(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') {
    return e.code;
  }
  return undefined;
}

export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function ioError(what: string, path: string, e: unknown): CheckptError {
  if (e instanceof CheckptError) return e;
  return new CheckptError('EIO', `${what} failed: ${messageOf(e)}`, { cause: e, path });
}

/** Bytes moved by readNow/writeNow since the event loop last had a turn. */
let sinceTurn = 0;
const TURN_BYTES = 16 << 20;

/** Gives the event loop a turn (signals, progress, children's exits) every 16 MiB moved. */
async function breathe(bytes: number): Promise<void> {
  sinceTurn += bytes;
  if (sinceTurn < TURN_BYTES) return;
  sinceTurn = 0;
  await new Promise((resolve) => setImmediate(resolve));
}

/**
 * A positional read on the handle's descriptor, done here rather than in the thread pool: a
 * resume reads and writes dozens of small entries, and each trip through the pool cost more than
 * the read (docs/PERFORMANCE.md). Large reads still let the event loop run now and then.
 */
export async function readNow(
  fd: number,
  buf: Buffer,
  off: number,
  len: number,
  position: number,
): Promise<number> {
  const n = readSync(fd, buf, off, len, position);
  await breathe(n);
  return n;
}

/** writeAll, done here rather than in the thread pool (see readNow). */
export async function writeNow(fd: number, buf: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, position + off);
  await breathe(buf.length);
}

/** The part of a FileHandle that packing uses (a FileHandle is one). */
export interface PackHandle {
  readonly fd: number;
  read(buf: Buffer, off: number, len: number, position: number): Promise<{ bytesRead: number }>;
  write(buf: Buffer, off: number, len: number, position: number): Promise<{ bytesWritten: number }>;
  writev(bufs: Buffer[], position: number): Promise<{ bytesWritten: number }>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** The file operations of packing: through Node's thread pool, or on the calling thread. */
export interface FileOps {
  open(path: string, flags: number, mode?: number): Promise<PackHandle>;
  rename(from: string, to: string): Promise<void>;
  lstat(path: string): Promise<Stats>;
  readdir(dir: string): Promise<Dirent[]>;
}

/** Node's fs/promises: the event loop runs on while the pool's threads read, write and sync. */
export const pooledOps: FileOps = {
  open: (path, flags, mode) => fsPromises().open(path, flags, mode),
  rename: (from, to) => fsPromises().rename(from, to),
  lstat: (path) => fsPromises().lstat(path),
  readdir: (dir) => fsPromises().readdir(dir, { withFileTypes: true }),
};

/**
 * The same on the calling thread, each call a plain system call (as readNow and writeNow), for a
 * process with nothing else to do meanwhile (the packing worker): a 21 MB image was packed in 38
 * ms against 48 through the pool, and fs/promises need not be loaded (docs/PERFORMANCE.md). The
 * event loop still has a turn every 16 MiB moved.
 */
export const directOps: FileOps = {
  open: async (path, flags, mode) => directHandle(openSync(path, flags, mode)),
  rename: async (from, to) => renameSync(from, to),
  lstat: async (path) => lstatSync(path),
  readdir: async (dir) => readdirSync(dir, { withFileTypes: true }),
};

function directHandle(fd: number): PackHandle {
  let closed = false;
  return {
    fd,
    read: async (buf, off, len, position) => ({
      bytesRead: await readNow(fd, buf, off, len, position),
    }),
    write: async (buf, off, len, position) => {
      const bytesWritten = writeSync(fd, buf, off, len, position);
      await breathe(bytesWritten);
      return { bytesWritten };
    },
    writev: async (bufs, position) => {
      const bytesWritten = writevSync(fd, bufs, position);
      await breathe(bytesWritten);
      return { bytesWritten };
    },
    sync: async () => fsyncSync(fd),
    close: async () => {
      if (closed) return;
      closed = true;
      closeSync(fd);
    },
  };
}

export async function writeAll(fh: PackHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}

export async function writeAllv(fh: PackHandle, bufs: Buffer[], position: number): Promise<void> {
  const total = bufs.reduce((n, b) => n + b.length, 0);
  const { bytesWritten } = await fh.writev(bufs, position);
  if (bytesWritten < total) {
    await writeAll(fh, Buffer.concat(bufs).subarray(bytesWritten), position + bytesWritten);
  }
}

/**
 * A file open for reading by its descriptor, with the part of a FileHandle checkpt reads a
 * checkpoint through (a FileHandle is one): a resume then needs no node:fs/promises, which with
 * `readline`'s internals costs Node 26 ~4 ms to load (docs/PERFORMANCE.md).
 */
export interface ReadHandle {
  readonly fd: number;
  read(buf: Buffer, off: number, len: number, position: number): Promise<{ bytesRead: number }>;
  close(): Promise<void>;
}

let readObserver: ((bytes: number) => void) | undefined;

/** @internal For tests: called with the bytes of every read made through a ReadHandle. */
export function observeReads(fn: ((bytes: number) => void) | undefined): void {
  readObserver = fn;
}

/** Opens `path` with `flags` (O_RDONLY and what else the caller needs); throws as openSync. */
export function openForReading(path: string, flags: number): ReadHandle {
  const fd = openSync(path, flags);
  let closed = false;
  return {
    fd,
    read: (buf, off, len, position) =>
      new Promise((resolve, reject) =>
        read(fd, buf, off, len, position, (e, bytesRead) => {
          if (e) return reject(e);
          readObserver?.(bytesRead);
          resolve({ bytesRead });
        }),
      ),
    close: () =>
      new Promise((resolve, reject) => {
        if (closed) return resolve();
        closed = true;
        close(fd, (e) => (e ? reject(e) : resolve()));
      }),
  };
}

export async function closeQuietly(fh: { close(): Promise<void> } | undefined): Promise<void> {
  await fh?.close().catch(() => undefined);
}

export async function unlinkQuietly(path: string): Promise<void> {
  await fsPromises()
    .unlink(path)
    .catch(() => undefined);
}

export function closeFdQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already gone: nothing to undo.
  }
}
