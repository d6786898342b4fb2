import { lstatSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from './errors.js';

/**
 * Which way checkpt runs CRIU: as root, or without root inside user namespaces the user owns
 * (docs/ROOTLESS.md). A program under a rootless `checkpt run` sees itself as uid 0, in a user
 * namespace that maps that 0 to the user: it is rootless too, and its files record the user's uid.
 */
export type PrivilegeMode = 'root' | 'rootless';

/** One line of /proc/self/uid_map (or gid_map): `count` ids from `inside` are `outside` up. */
interface IdRange {
  inside: number;
  outside: number;
  count: number;
}

function idMap(which: 'uid_map' | 'gid_map'): IdRange[] {
  try {
    return readFileSync(`/proc/self/${which}`, 'utf8')
      .split('\n')
      .map((l) => l.trim().split(/\s+/).map(Number))
      .filter((f) => f.length === 3 && f.every(Number.isFinite))
      .map(([inside, outside, count]) => ({
        inside: inside ?? 0,
        outside: outside ?? 0,
        count: count ?? 0,
      }));
  } catch {
    return [{ inside: 0, outside: 0, count: 2 ** 32 - 1 }];
  }
}

let inUserNs: boolean | undefined;

/** Whether this process is in a user namespace other than the machine's (its map is not the identity). */
export function inUserNamespace(): boolean {
  // Asked before every CRIU command; a process's own user namespace never changes under it.
  inUserNs ??= userNamespaceOf(idMap('uid_map'));
  return inUserNs;
}

function userNamespaceOf(map: IdRange[]): boolean {
  return !(
    map.length === 1 &&
    map[0]?.inside === 0 &&
    map[0].outside === 0 &&
    map[0].count === 2 ** 32 - 1
  );
}

/** The id `id` of this namespace as the parent namespace sees it (-1 when unmapped). */
function outsideId(which: 'uid_map' | 'gid_map', id: number): number {
  for (const r of idMap(which))
    if (id >= r.inside && id < r.inside + r.count) return r.outside + (id - r.inside);
  return -1;
}

/** Our uid as the parent namespace sees it: inside a rootless run, the user's, not 0. */
export function hostUid(): number {
  return outsideId('uid_map', process.getuid?.() ?? 0);
}

export function privilegeMode(): PrivilegeMode {
  return process.geteuid?.() === 0 && !inUserNamespace() ? 'root' : 'rootless';
}

export const rootless = (): boolean => privilegeMode() === 'rootless';

/** For what only root can do (docs/ROOTLESS.md): EPERM saying so, and what to do instead. */
export function requireRoot(what: string, why: string): void {
  if (privilegeMode() === 'root') return;
  throw new CheckptError(
    'EPERM',
    `${what} needs root: ${why} (running as uid ${hostUid()}). Run it as root (sudo); checkpt run and checkpt -r work without root.`,
  );
}

/** Whether this kernel lets an ordinary user make the user namespace a rootless run needs. */
export function userNamespacesAllowed(): { ok: boolean; why?: string } {
  const read = (f: string): string | undefined => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  if (read('/proc/sys/user/max_user_namespaces') === '0')
    return { ok: false, why: 'user.max_user_namespaces is 0' };
  if (read('/proc/sys/kernel/unprivileged_userns_clone') === '0')
    return { ok: false, why: 'kernel.unprivileged_userns_clone is 0' };
  if (read('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1')
    return { ok: false, why: 'AppArmor restricts unprivileged user namespaces' };
  return { ok: true };
}

/**
 * The control FIFOs' directory for a rootless run (root's /run/checkpt is not the user's):
 * /tmp/checkpt-UID. Its path is in every image, and each resume must be able to make it again in
 * its own mount namespace: $XDG_RUNTIME_DIR is gone once the user's last session ends, and
 * $TMPDIR may differ from one shell to the next. Made 0700 and refused unless it is a real
 * directory of the user's own that nobody else can enter.
 */
export function userRunDir(): string {
  const uid = process.getuid?.() ?? 0;
  const dir = join('/tmp', `checkpt-${uid}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0)
    throw new CheckptError(
      'EPERM',
      `${dir} is not a directory of uid ${uid}'s own with mode 0700; remove it or set CHECKPT_RUN_DIR`,
      { path: dir },
    );
  return dir;
}
