/** Small file helpers shared by writing, reading and extracting. */

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
