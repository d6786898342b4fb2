/** Small file helpers shared by writing, reading and extracting. */

import { fsPromises } from '../common/builtin.js';
import { close, closeSync, openSync, read, readSync, writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
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

export async function writeAll(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}

export async function writeAllv(fh: FileHandle, bufs: Buffer[], position: number): Promise<void> {
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
