import { childProcess } from '../common/builtin.js';
import {
  accessSync,
  chmodSync,
  chownSync,
  constants,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { CRIU_HOME, readAtLoad } from '../common/config.js';
import { CheckptError } from '../common/errors.js';
import { inUserNamespace } from '../common/privilege.js';
import { check } from './criu.js';
import { criuPath } from './paths.js';

/**
 * An administrator's grant (docs/ROOTLESS.md, "Programs started outside checkpt"): a copy of
 * checkpt's CRIU that carries file capabilities, runnable only by one group, so that its members
 * can checkpoint and resume programs they started themselves on the host, outside any namespace
 * of checkpt's. Nothing outside this directory is changed.
 */
export const grantDir = join(readAtLoad(CRIU_HOME), 'granted');
export const grantedCriuPath = join(grantDir, 'criu');
const GRANT_INFO = join(grantDir, 'grant.json');

/** What each capability is for; printed by `checkpt setup --grant`. */
export const GRANT_CAPABILITIES: ReadonlyArray<{ cap: string; tcp?: true; why: string }> = [
  {
    cap: 'cap_checkpoint_restore',
    why: "lets CRIU read another process's memory maps and fds of the same user, and give a restored process its old pid and thread ids (dump and restore of your own processes)",
  },
  {
    cap: 'cap_setpcap',
    why: 'lets CRIU\'s restorer drop from the restored process the capabilities this machine\'s bounding set lacks; without it the restorer fails ("Unable to drop capability", then a CRIU BUG) and the restore fails or hangs',
  },
  {
    cap: 'cap_net_admin',
    tcp: true,
    why: 'lets CRIU put TCP sockets in repair mode and lock the network during a dump, so connections survive (only with --tcp)',
  },
];

export interface GrantInfo {
  group: string;
  gid: number;
  tcp: boolean;
  /**
   * With tcp: whether CRIU can lock the network with nftables here, checked by root at grant time
   * (CRIU's own check cannot run unprivileged, though a dump with cap_net_admin locks fine).
   */
  nftables?: boolean;
  capabilities: string[];
  /** The CRIU it was copied from. */
  from: string;
}

/** The grant as recorded, or undefined when there is none. */
export function grantInfo(): GrantInfo | undefined {
  try {
    return JSON.parse(readFileSync(GRANT_INFO, 'utf8')) as GrantInfo;
  } catch {
    return undefined;
  }
}

/**
 * The granted CRIU, when this process should use it: not root, not in a user namespace (there
 * checkpt's rootless mode needs no capability), and allowed to run it (a member of its group).
 */
export function grantedCriu(): string | undefined {
  if (process.geteuid?.() === 0 || inUserNamespace()) return undefined;
  try {
    accessSync(grantedCriuPath, constants.X_OK);
    return grantedCriuPath;
  } catch {
    return undefined;
  }
}

/** Whether this process uses a granted CRIU that may repair TCP (granted with --tcp). */
export function grantedTcp(): boolean {
  const info = grantInfo();
  return grantedCriu() !== undefined && info?.tcp === true && info.nftables === true;
}

/** What the grant looks like to this user, for `checkpt check` and errors. */
export function grantState(): 'usable' | 'not a member' | 'none' {
  if (!existsSync(grantedCriuPath)) return 'none';
  return grantedCriu() !== undefined ? 'usable' : 'not a member';
}

/** How an ordinary user gets out of an EPERM for a program started outside checkpt. */
export const GRANT_ADVICE =
  'start it with `checkpt run -- node app.js` as this user (no root needed), or ask an administrator to run `checkpt setup --grant GROUP` and add you to GROUP (docs/ROOTLESS.md)';

function groupId(group: string): number {
  const r = childProcess().spawnSync('getent', ['group', group], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  const gid = Number(r.stdout.split(':')[2]);
  if (r.status !== 0 || !Number.isInteger(gid))
    throw new CheckptError(
      'EBADCONFIG',
      `There is no group '${group}' on this machine (getent group ${group} found nothing). Create it first (groupadd ${group}) and add the users who may checkpoint their own programs (usermod -aG ${group} USER).`,
    );
  return gid;
}

function requireRootHere(what: string): void {
  if (process.geteuid?.() !== 0 || inUserNamespace())
    throw new CheckptError(
      'EPERM',
      `${what} needs root (it installs a CRIU that carries capabilities): run it with sudo.`,
    );
}

/**
 * Installs (or replaces) the granted copy: root:GROUP, mode 0750, the capabilities set; written
 * under a temporary name and renamed into place, so a half-made copy is never runnable there.
 */
export function installGrant(group: string, tcp: boolean): GrantInfo {
  requireRootHere('checkpt setup --grant');
  const gid = groupId(group);
  const from = criuPath;
  if (!existsSync(from))
    throw new CheckptError(
      'ENOCRIU',
      `There is no CRIU at ${from} to grant: run scripts/install-criu.sh as root first.`,
    );
  mkdirSync(grantDir, { recursive: true, mode: 0o755 });
  const st = lstatSync(grantDir);
  if (!st.isDirectory() || st.uid !== 0)
    throw new CheckptError('EIO', `${grantDir} is not a directory owned by root; remove it.`);
  chmodSync(grantDir, 0o755);
  const caps = GRANT_CAPABILITIES.filter((c) => tcp || !c.tcp).map((c) => c.cap);
  const tmp = `${grantedCriuPath}.new`;
  rmSync(tmp, { force: true });
  try {
    copyFileSync(from, tmp);
    chownSync(tmp, 0, gid);
    chmodSync(tmp, 0o750);
    const r = childProcess().spawnSync('setcap', [`${caps.join(',')}+ep`, tmp], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    if (r.error || r.status !== 0)
      throw new CheckptError(
        'EIO',
        `setcap failed: ${(r.stderr || r.error?.message || `status ${r.status}`).trim()}. It comes with Debian's libcap2-bin (apt-get install libcap2-bin); the file system under ${grantDir} must keep extended attributes.`,
      );
    renameSync(tmp, grantedCriuPath);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const info: GrantInfo = {
    group,
    gid,
    tcp,
    ...(tcp ? { nftables: check('network_lock_nftables').ok } : {}),
    capabilities: caps,
    from,
  };
  writeFileSync(`${GRANT_INFO}.new`, JSON.stringify(info, null, 2) + '\n', { mode: 0o644 });
  renameSync(`${GRANT_INFO}.new`, GRANT_INFO);
  return info;
}

/** Removes the granted copy; true when there was one. */
export function revokeGrant(): boolean {
  requireRootHere('checkpt setup --revoke');
  const had = existsSync(grantDir);
  rmSync(grantDir, { recursive: true, force: true });
  return had;
}
