// Ordinary users made by the tests without root's privileges (rootless, grant, publish): each with
// a 0700 directory of its own, commands run as it through setpriv, all removed by removeTestUsers.
import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cli, removeDir, spawnSync, start, tempDir } from './helpers.mjs';

const made = [];

/**
 * A new user `${prefix}${label}${pid}` (in `groups`, comma-separated, if given). `env` is added to
 * the environment of every command run as it (PATH, HOME, LANG and a cache of its own otherwise).
 */
export function makeTestUser({ prefix, label = '', groups, env: extra = {} }) {
  const name = `${prefix}${label}${process.pid}`;
  const r = spawnSync(
    'useradd',
    ['--create-home', '--shell', '/bin/sh', ...(groups ? ['-G', groups] : []), name],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  const uid = Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout.trim());
  const gid = Number(spawnSync('id', ['-g', name], { encoding: 'utf8' }).stdout.trim());
  const dir = tempDir(`checkpt-${prefix}${label}-`);
  made.push({ name, uid, dir });
  chownSync(dir, uid, gid);
  chmodSync(dir, 0o700);
  mkdirSync(join(dir, 'cache'), { mode: 0o700 });
  chownSync(join(dir, 'cache'), uid, gid);
  const env = {
    PATH: process.env.PATH,
    HOME: join('/home', name),
    LANG: 'C.UTF-8',
    XDG_CACHE_HOME: join(dir, 'cache'),
    ...extra,
  };
  // --init-groups: the user's groups as a login would give them.
  const as = (cmd, args) => [
    'setpriv',
    ['--reuid', name, '--regid', name, '--init-groups', '--', cmd, ...args],
  ];
  return {
    name,
    uid,
    gid,
    dir,
    /** A process of this user, started like every process a test starts (killed at cleanup). */
    start: (cmd, args, more = {}) =>
      start(...as(cmd, args), { cwd: dir, env: { ...env, ...more } }),
    /** `checkpt ARGS...` as this user, to its end. */
    checkpt: (args) =>
      spawnSync(...as(process.execPath, [cli, ...args]), {
        cwd: dir,
        env,
        encoding: 'utf8',
        timeout: 60_000,
      }),
    checkptStart: (args, more = {}) =>
      start(...as(process.execPath, [cli, ...args]), { cwd: dir, env: { ...env, ...more } }),
  };
}

/** Removes every user makeTestUser made, its directory and its runs' control directory. */
export function removeTestUsers() {
  for (const u of made.splice(0)) {
    removeDir(u.dir);
    // The control FIFOs' directory of the user's runs (src/common/privilege.ts, userRunDir).
    rmSync(`/tmp/checkpt-${u.uid}`, { recursive: true, force: true });
    const r = spawnSync('userdel', ['--remove', u.name], { encoding: 'utf8' });
    // userdel -r warns (status 12) when the mail spool it would remove does not exist.
    assert.ok(r.status === 0 || r.status === 12, `userdel ${u.name}: ${r.status} ${r.stderr}`);
  }
}
