/** Small file helpers shared by writing, reading and extracting. */

import { closeSync, readSync, writeSync } from 'node:fs';
import { unlink, type FileHandle } from 'node:fs/promises';
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

export async function closeQuietly(fh: FileHandle | undefined): Promise<void> {
  await fh?.close().catch(() => undefined);
}

export async function unlinkQuietly(path: string): Promise<void> {
  await unlink(path).catch(() => undefined);
}

export function closeFdQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already gone: nothing to undo.
  }
}
