/**
 * Who may hand root a checkpoint. A resume recreates processes with the credentials written in the
 * image, and a plain file's SHA-256 is something anyone can recompute: whoever could write a plain
 * checkpoint that root resumes can run code as root. So a plain file is used only when nobody but
 * root and the caller could have written it:
 *
 * - the file (as opened: its fd, not its name) belongs to root or the caller and has no write bit
 *   for group or others;
 * - every directory from its own up to `/`, along the path the kernel gives for the opened fd
 *   (symlinks resolved), belongs to root or the caller and has no write bit for group or others,
 *   unless it has the sticky bit (`/tmp`: others can add names there, but not remove or rename
 *   what is not theirs);
 * - that path still names the opened file once the directories are known to be safe.
 *
 * A directory that only root and the caller can change cannot have been changed by anyone else
 * while it was looked at, so checking from `/` downwards is sound without openat(); the fd is what
 * gets read, so a file swapped after the check is never the one used. An encrypted file is
 * authenticated by the key instead (format.ts), and passes whoever owns it.
 */
import { fstatSync, lstatSync, readFileSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { TRUST_FLAG } from '../common/flags.js';
import { linkOf } from '../common/procfs.js';
import { KEY_ENV } from './key.js';

export { TRUST_FLAG };

const WRITE_GROUP = 0o020;
const WRITE_OTHER = 0o002;
const STICKY = 0o1000;

/** `uid 65534 (nobody)`, or `uid N` when /etc/passwd does not name it. */
function whoIs(uid: number): string {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const [name, , id] = line.split(':');
      if (id === String(uid) && name) return `uid ${uid} (${name})`;
    }
  } catch {
    // No passwd file: the number alone.
  }
  return `uid ${uid}`;
}

function mode(st: Stats): string {
  return (st.mode & 0o7777).toString(8).padStart(4, '0');
}

function writers(st: Stats): string {
  const g = (st.mode & WRITE_GROUP) !== 0;
  const o = (st.mode & WRITE_OTHER) !== 0;
  return g && o ? 'its group and everyone' : g ? 'its group' : 'everyone';
}

/**
 * Why the file open on `fd` could have been written by someone other than root or the caller, or
 * undefined when it could not have been.
 */
export function untrustedReason(fd: number, euid = process.geteuid?.() ?? 0): string | undefined {
  const mine = (uid: number): boolean => uid === 0 || uid === euid;
  const st = fstatSync(fd);
  if (!mine(st.uid)) return `it belongs to ${whoIs(st.uid)}, not to root or you`;
  if ((st.mode & (WRITE_GROUP | WRITE_OTHER)) !== 0)
    return `${writers(st)} can change it (mode ${mode(st)})`;
  if (st.nlink === 0) return 'it was removed while it was being opened';
  const path = linkOf('self', `fd/${fd}`);
  if (!path.startsWith('/')) return 'where it lies cannot be told';
  const dirs: string[] = [];
  for (let d = dirname(path); ; d = dirname(d)) {
    dirs.unshift(d);
    if (d === '/') break;
  }
  // From the root down: each directory found safe cannot have been changed under the next look.
  for (const d of dirs) {
    let ds: Stats;
    try {
      ds = lstatSync(d);
    } catch {
      return `its directory ${d} changed while it was checked`;
    }
    if (!ds.isDirectory()) return `its directory ${d} changed while it was checked`;
    if (!mine(ds.uid))
      return `the directory ${d} belongs to ${whoIs(ds.uid)}, who can replace the file`;
    if ((ds.mode & (WRITE_GROUP | WRITE_OTHER)) !== 0 && (ds.mode & STICKY) === 0)
      return `${writers(ds)} can write the directory ${d} (mode ${mode(ds)}, no sticky bit) and so replace the file`;
  }
  let now: Stats;
  try {
    now = lstatSync(path);
  } catch {
    return 'it was moved or removed while it was checked';
  }
  if (now.dev !== st.dev || now.ino !== st.ino) return 'it was replaced while it was checked';
  return undefined;
}

/**
 * Throws EUNTRUSTED, saying why and what to do, unless nobody but root and the caller could have
 * written the plain checkpoint open on `fd` (read from `file`).
 */
export function checkTrusted(fd: number, file: string): void {
  const why = untrustedReason(fd);
  if (why === undefined) return;
  throw new CheckptError(
    'EUNTRUSTED',
    `Refusing ${file}: it is not sealed with a key and ${why}. A resume runs what a checkpoint holds with the credentials written in it (root's, if it says so), so whoever could write this file could run code as root. If you trust whoever wrote it, pass ${TRUST_FLAG} (checkpt -r ${TRUST_FLAG} FILE; inspect --verify and unlock take it too), or move it into a directory only root can write and chown it to root; or seal checkpoints with a key (${KEY_ENV}), which vouches for them wherever they lie.`,
    { path: file },
  );
}
