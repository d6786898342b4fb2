import { lstatSync, mkdirSync, rmSync } from 'node:fs';
import { inUserNamespace } from '../common/privilege.js';

/**
 * Where checkpt's own CRIU build keeps its cache of kernel probes (scripts/install-criu.sh builds
 * it with this RUNDIR): on tmpfs, as CRIU requires, in containers too, where /run is seldom tmpfs.
 */
export const KDAT_DIR = '/dev/shm/checkpt-criu';

let prepared = false;

/**
 * Makes the cache's directory, root's and 0700, once per process: without it CRIU probes the
 * kernel at every start (40-70 ms here). A directory that is not root's alone (another user may
 * have made it first in the shared /dev/shm) is replaced; the patched CRIU would ignore its cache.
 * A cache only: when anything fails, CRIU probes the kernel as before.
 */
export function prepareKdatDir(dir = KDAT_DIR, euid = process.geteuid?.()): void {
  // Root of a rootless run's user namespace is the user: its CRIU keeps its cache elsewhere.
  if (prepared || euid !== 0 || inUserNamespace()) return;
  prepared = true;
  try {
    const st = lstatSync(dir, { throwIfNoEntry: false });
    if (st?.isDirectory() && st.uid === 0 && (st.mode & 0o077) === 0) return;
    if (st) rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { mode: 0o700 });
  } catch {
    // CRIU runs without its cache.
  }
}

/** For tests: the next prepareKdatDir() looks again. */
export function forgetKdatDir(): void {
  prepared = false;
}
