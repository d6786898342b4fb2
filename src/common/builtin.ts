import type * as ChildProcess from 'node:child_process';
import type * as Crypto from 'node:crypto';
import type * as FsPromises from 'node:fs/promises';
import type * as Net from 'node:net';
import { fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as Readline from 'node:readline';
import type * as Tty from 'node:tty';

// Node 20.16+ has process.getBuiltinModule; older Node 20 the CommonJS require.
const load: (name: string) => unknown =
  (process as { getBuiltinModule?: (name: string) => unknown }).getBuiltinModule ??
  createRequire(import.meta.url);

/**
 * A built-in module loaded at its first use instead of at start-up. A resume's start loads every
 * module its imports name: `node:child_process` (with `dgram` and `cluster`), `readline` and `tty`
 * took ~9 ms of it, `node:crypto` ~10 (docs/PERFORMANCE.md), where a resume needs none of them.
 */
function lazy<T>(name: string): () => T {
  let m: T | undefined;
  return () => (m ??= load(name) as T);
}

export const childProcess = lazy<typeof ChildProcess>('node:child_process');
// ~10 ms of Node 26's start: a resume hashes with checkpt's addon (common/sha256.ts) instead.
export const crypto = lazy<typeof Crypto>('node:crypto');
// With `readline`'s internals, ~4 ms of Node 26's start; a resume reads its file with fds.
export const fsPromises = lazy<typeof FsPromises>('node:fs/promises');
// With `stream`, ~9 ms of the packing worker's start; only a checkpoint-and-exit listens.
export const net = lazy<typeof Net>('node:net');
export const readline = lazy<typeof Readline>('node:readline');
const tty = lazy<typeof Tty>('node:tty');

/** The major number of Linux's memory devices: /dev/null, /dev/zero, /dev/urandom. */
const MEM_MAJOR = 1;

/**
 * isatty(fd), loading `node:tty` only for a character device that may be a terminal: a pipe, a
 * file or /dev/null (the usual stdin of a service or a test) is answered from fstat.
 */
export function isTerminal(fd: number): boolean {
  let st;
  try {
    st = fstatSync(fd);
  } catch {
    return false;
  }
  if (!st.isCharacterDevice()) return false;
  if (Math.floor(st.rdev / 256) % 4096 === MEM_MAJOR) return false;
  return tty().isatty(fd);
}
