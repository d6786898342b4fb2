import { lstatSync, mkdirSync, realpathSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';

const WRITE_GROUP_OTHER = 0o022;
const STICKY = 0o1000;

/**
 * Where V8's compiled code for checkpt's own modules is kept between runs: under the user's cache
 * directory, in a directory only the user can write, reached through directories only root or the
 * user can change. Compiled code is run as it is found, so a cache someone else could write would
 * let them run code as whoever runs checkpt (root, for -r): such a place, or a symlinked one, is
 * not used (a world-writable temporary directory, Node's default, never is). Undefined: no cache.
 */
export function privateCacheDir(
  env: NodeJS.ProcessEnv = process.env,
  euid = process.geteuid?.() ?? 0,
): string | undefined {
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg !== undefined && isAbsolute(xdg) ? xdg : join(homedir(), '.cache');
  const dir = join(base, 'checkpt', 'compile-cache');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const real = realpathSync(dir);
    for (let p = dirname(real); ; p = dirname(p)) {
      const st = lstatSync(p);
      if (!st.isDirectory() || (st.uid !== 0 && st.uid !== euid)) return undefined;
      if ((st.mode & WRITE_GROUP_OTHER) !== 0 && (st.mode & STICKY) === 0) return undefined;
      if (p === dirname(p)) break;
    }
    const own = lstatSync(real);
    if (!own.isDirectory() || own.uid !== euid || (own.mode & 0o077) !== 0) return undefined;
    return real;
  } catch {
    return undefined;
  }
}
