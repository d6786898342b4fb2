/**
 * The encryption key for checkpoint files: `CHECKPT_KEY_FILE` names a file holding 32 random bytes,
 * raw or as 64 hex digits (one trailing newline allowed). The file must be a regular file (a
 * symlink to one is fine, as secrets mounts use them), owned by the user or root, and readable by
 * nobody else. Setting the variable makes every new checkpoint encrypted and makes `checkpt -r`
 * refuse checkpoints that are not.
 */
import { closeSync, constants as fsc, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { resolve } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { KEY_FILE } from '../common/config.js';

export const KEY_ENV = KEY_FILE.name;
export const KEY_BYTES = 32;

const HOW_TO_MAKE = `make one with: head -c ${KEY_BYTES} /dev/urandom > FILE && chmod 600 FILE`;

/** The absolute path of the key file named by CHECKPT_KEY_FILE, or undefined when it is unset or empty. */
export function keyFilePath(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const p = KEY_FILE.get(env);
  return p === undefined ? undefined : resolve(p);
}

function keyError(path: string, detail: string, cause?: unknown): CheckptError {
  return new CheckptError('EKEY', `The key file ${path} (${KEY_ENV}) ${detail}`, {
    path,
    ...(cause === undefined ? {} : { cause }),
  });
}

/** Opens the key file and checks what can be checked without reading the key. */
function openKeyFile(path: string): { fd: number; st: Stats } {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO named by mistake must not hang the open.
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'does not exist; point the variable at the key file, or ' + HOW_TO_MAKE
        : `cannot be opened (${(e as Error).message}); check its path and permissions`;
    throw keyError(path, why, e);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile())
      throw keyError(path, `is not a regular file; ${HOW_TO_MAKE} and point the variable at it.`);
    const euid = process.geteuid?.() ?? 0;
    if (st.uid !== euid && st.uid !== 0)
      throw keyError(
        path,
        `belongs to uid ${st.uid}, not to you (uid ${euid}) or root; chown it to yourself.`,
      );
    if ((st.mode & 0o077) !== 0)
      throw keyError(
        path,
        `can be read or changed by others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${path}`,
      );
    if (st.size !== KEY_BYTES && st.size !== 2 * KEY_BYTES && st.size !== 2 * KEY_BYTES + 1)
      throw keyError(
        path,
        `holds ${st.size} bytes; it must hold ${KEY_BYTES} random bytes or ${2 * KEY_BYTES} hex digits (${HOW_TO_MAKE}).`,
      );
    return { fd, st };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/**
 * Checks the key file without reading the key, so that a program checkpointing itself fails before
 * it is frozen and never holds the key in its own memory (which ends up in its checkpoints).
 */
export function checkKeyFile(path: string): void {
  closeSync(openKeyFile(path).fd);
}

/**
 * Reads and decodes the key file at `path`, into memory outside the JavaScript heap and without a
 * string of it: the caller zeroes the key after use, and then no copy is left behind (a copy in a
 * heap that the garbage collector moved or dropped would end up in the next checkpoint's image).
 */
export function readKeyFile(path: string): Buffer {
  const { fd, st } = openKeyFile(path);
  const raw = offHeap(st.size);
  try {
    let done = 0;
    while (done < raw.length) {
      const n = readSync(fd, raw, done, raw.length - done, done);
      if (n === 0) throw keyError(path, 'became shorter while it was read; try again.');
      done += n;
    }
  } catch (e) {
    raw.fill(0);
    throw e;
  } finally {
    closeSync(fd);
  }
  if (raw.length === KEY_BYTES) return raw;
  const key = offHeap(KEY_BYTES);
  const digits = raw[raw.length - 1] === 0x0a ? raw.length - 1 : raw.length;
  let bad = digits !== 2 * KEY_BYTES;
  for (let i = 0; !bad && i < KEY_BYTES; i++) {
    const hi = hexDigit(raw[2 * i] ?? 0);
    const lo = hexDigit(raw[2 * i + 1] ?? 0);
    bad = hi < 0 || lo < 0;
    key[i] = (hi << 4) | lo;
  }
  raw.fill(0);
  if (bad) {
    key.fill(0);
    throw keyError(
      path,
      `is not ${2 * KEY_BYTES} hex digits or ${KEY_BYTES} raw bytes; ${HOW_TO_MAKE}.`,
    );
  }
  return key;
}

/** A Buffer over an ArrayBuffer of its own: never in the heap, where small typed arrays can live. */
const offHeap = (size: number): Buffer => Buffer.from(new ArrayBuffer(size));

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x61 + 10 : -1;
}

/** The key named by CHECKPT_KEY_FILE, or undefined when the variable is unset. */
export function loadKey(env: NodeJS.ProcessEnv = process.env): Buffer | undefined {
  const path = keyFilePath(env);
  return path === undefined ? undefined : readKeyFile(path);
}
