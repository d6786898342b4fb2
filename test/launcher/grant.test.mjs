// An administrator's grant (issue 16, docs/ROOTLESS.md): `checkpt setup --grant GROUP` installs a
// capability-carrying copy of CRIU that only GROUP can run; its members then checkpoint programs
// they started plainly on the host (no checkpt run) and resume them there, as themselves. The
// tests make the group, a member and a non-member, and a CRIU home of their own (so that a grant
// of the machine's, if any, is neither used nor touched), and remove all of it after.
import assert from 'node:assert/strict';
import {
  assertStateBack,
  checkptCli,
  cleanup,
  cli,
  describe,
  events,
  fixture,
  pidAlive,
  realCriu,
  removeDir,
  spawnSync,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { chmodSync, existsSync, mkdirSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { makeTestUser, removeTestUsers } from '../users.mjs';

const group = `ckg${process.pid}`;
let groupMade = false;
const dirs = [];
let home;
let granted;

/** Node 22 and later open io_uring, which CRIU cannot dump: started through checkpt exec. */
const major = Number(process.versions.node.split('.')[0]);
const nodeArgs = (script, args) =>
  major >= 22
    ? [process.execPath, [cli, 'exec', '--', process.execPath, script, ...args]]
    : [process.execPath, [script, ...args]];

/** An ordinary user of the tests' own, in `groups` (test/users.mjs), using our CRIU home. */
const makeUser = (label, groups) =>
  makeTestUser({ prefix: 'ckg', label, groups, env: { CHECKPT_CRIU_HOME: home } });

const asRoot = (args) => checkptCli(args, { env: { ...process.env, CHECKPT_CRIU_HOME: home } });

let member;
let other;
before(() => {
  home = tempDir('checkpt-grant-home-');
  chmodSync(home, 0o755);
  mkdirSync(join(home, 'bin'), { mode: 0o755 });
  symlinkSync(realCriu, join(home, 'bin', 'criu'));
  granted = join(home, 'granted', 'criu');
  const g = spawnSync('groupadd', [group], { encoding: 'utf8' });
  assert.equal(g.status, 0, g.stderr);
  groupMade = true;
  member = makeUser('m', group);
  other = makeUser('o');
});

after(async () => {
  await cleanup();
  for (const d of dirs) removeDir(d);
  removeTestUsers();
  if (groupMade) {
    const r = spawnSync('groupdel', [group], { encoding: 'utf8' });
    assert.equal(r.status, 0, `groupdel ${group}: ${r.stderr}`);
  }
  if (home) removeDir(home);
});

const manifestOf = (user, file) => {
  const r = user.checkpt(['inspect', '--json', file]);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout).manifest;
};

describe("an administrator's grant", () => {
  test('setup --grant refuses a group that does not exist, and an ordinary user', () => {
    const none = asRoot(['setup', '--grant', `${group}nope`]);
    assert.notEqual(none.status, 0);
    assert.match(none.stderr, new RegExp(`There is no group '${group}nope'.*groupadd`));
    assert.ok(!existsSync(granted));
    const r = member.checkpt(['setup', '--grant', group]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /needs root/);
    assert.ok(!existsSync(granted));
  });

  test('before a grant, a plain program of an ordinary user gets EPERM naming both ways out', async () => {
    const p = member.start(...nodeArgs(fixture('state.mjs'), [join(member.dir, 'x.ckpt')]));
    const err = await waitFor(p, (e) => e.event === 'error', 'the refusal');
    assert.equal(err.code, 'EPERM');
    assert.match(err.message, /no CRIU has been granted here/);
    assert.match(err.message, /checkpt run -- node app\.js/);
    assert.match(err.message, /checkpt setup --grant GROUP/);
    await waitFor(p, (e) => e.event === 'alive', 'it keeps running');
    assert.deepEqual(await p.closed, { code: 3, signal: null });
  });

  test('setup --grant GROUP installs a 0750 root:GROUP copy with the capabilities, says why each, twice alike', () => {
    for (let i = 0; i < 2; i++) {
      const r = asRoot(['setup', '--grant', group]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /cap_checkpoint_restore: /);
      assert.match(r.stdout, /cap_setpcap: .*bounding set/);
      assert.match(r.stdout, /not cap_net_admin/);
      const st = statSync(granted);
      assert.equal(st.mode & 0o7777, 0o750);
      assert.equal(st.uid, 0);
      const gid = Number(
        spawnSync('getent', ['group', group], { encoding: 'utf8' }).stdout.split(':')[2],
      );
      assert.equal(st.gid, gid);
      const caps = spawnSync('getcap', [granted], { encoding: 'utf8' }).stdout;
      assert.match(caps, /cap_setpcap/);
      assert.match(caps, /cap_checkpoint_restore/);
      assert.doesNotMatch(caps, /cap_net_admin/);
    }
  });

  test('checkpt check says which mode: the member has the granted CRIU, the non-member is told why not', () => {
    const m = member.checkpt(['check', '--json']);
    const mf = JSON.parse(m.stdout).findings.find((f) => f.name === 'grant');
    assert.match(mf.detail, new RegExp(`^granted CRIU \\(uid ${member.uid}, group ${group}`));
    assert.match(mf.fix, /only once the original has ended/);
    const o = other.checkpt(['check', '--json']);
    const of = JSON.parse(o.stdout).findings.find((f) => f.name === 'grant');
    assert.match(of.detail, new RegExp(`uid ${other.uid} is not in that group`));
    const r = JSON.parse(asRoot(['check', '--json']).stdout).findings;
    assert.match(r.find((f) => f.name === 'mode').detail, /^root:/);
    assert.match(r.find((f) => f.name === 'grant').detail, new RegExp(`for group ${group}`));
  });

  test('a member: a Node program started plainly checkpoints itself, and checkpt -r on the host brings its state back', async () => {
    const file = join(member.dir, 'state.ckpt');
    const p = member.start(...nodeArgs(fixture('state.mjs'), [file]));
    const original = await waitFor(p, (e) => e.event === 'returned', 'checkpt() returned');
    assert.equal(original.r, 0, p.stderrText);
    assert.deepEqual(await p.closed, { code: 0, signal: null });
    assert.equal(statSync(file).uid, member.uid);
    const manifest = manifestOf(member, file);
    assert.equal(manifest.granted, true);
    assert.equal(manifest.rootless, true);
    assert.equal(manifest.uid, member.uid);

    // Root does not resume it: outside the user's rights its processes would be root's.
    const byRoot = asRoot(['-r', '--trust-file', file]);
    assert.notEqual(byRoot.status, 0);
    assert.match(byRoot.stderr, /granted CRIU\); root does not resume it/);

    const copy = member.checkptStart(['-r', file]);
    const resumed = await waitFor(copy, (e) => e.event === 'returned', 'the copy returned');
    assertStateBack(resumed, original, copy.stderrText);
    assert.equal(resumed.pid, original.pid);
    await waitFor(copy, (e) => e.event === 'timer', 'the pending timer fires in the copy');
    // state.mjs exits 7 when checkpt() returned anything but 0.
    assert.deepEqual(await copy.closed, { code: 7, signal: null });
    assert.ok(!pidAlive(resumed.pid));
  });

  test('a member: checkpt signal --exit to a plain program, then checkpt -r: it ticks on; its pid still in use is refused', async () => {
    const file = join(member.dir, 'req.ckpt');
    const p = member.start(...nodeArgs(fixture('requests.mjs'), []), { CHECKPT_FILE: file });
    const ready = await waitFor(p, (e) => e.event === 'ready', 'ready');
    const before = await waitFor(p, (e) => e.event === 'tick' && e.n >= 3, 'ticks');
    const s = member.checkpt(['signal', '--exit', String(ready.pid)]);
    assert.equal(s.status, 0, s.stderr);
    await p.closed;
    assert.ok(existsSync(file), p.stderrText);

    const copy = member.checkptStart(['-r', file]);
    const tick = await waitFor(copy, (e) => e.event === 'tick' && e.gen === 1, 'the copy ticks');
    assert.ok(tick.n > before.n, `copy at ${tick.n}, before the request ${before.n}`);
    assert.equal(tick.mapSize, 10_000);
    // One copy at a time on the host: the second finds the pid taken and says so.
    const second = member.checkpt(['-r', file]);
    assert.notEqual(second.status, 0);
    assert.match(second.stderr, new RegExp(`pid ${ready.pid} is in use`));
    process.kill(copy.pid, 'SIGTERM');
    await copy.closed;
    assert.ok(!pidAlive(ready.pid));
  });

  test('the non-member gets the clear error: not in the group, both ways out', async () => {
    const p = other.start(...nodeArgs(fixture('state.mjs'), [join(other.dir, 'y.ckpt')]));
    const err = await waitFor(p, (e) => e.event === 'error', 'the refusal');
    assert.equal(err.code, 'EPERM');
    assert.match(err.message, /is there, but this user is not in its group/);
    assert.match(err.message, /checkpt run -- node app\.js/);
    await waitFor(p, (e) => e.event === 'alive', 'it keeps running');
    assert.deepEqual(await p.closed, { code: 3, signal: null });
    assert.ok(!existsSync(join(other.dir, 'y.ckpt')));
    // Running the copy directly is refused by the kernel (through sh: setpriv's own exec is
    // still checked with root's capabilities).
    const direct = spawnSync(
      'setpriv',
      [
        ...['--reuid', other.name, '--regid', other.name, '--init-groups', '--'],
        ...['sh', '-c', '"$0" --version', granted],
      ],
      { encoding: 'utf8' },
    );
    assert.equal(direct.status, 126, direct.stdout + direct.stderr);
    assert.match(direct.stderr, /Permission denied/);
  });

  test('granted with --tcp: a connection inside a plain program survives its checkpoint-and-exit and the resume on the host', async () => {
    const g = asRoot(['setup', '--grant', group, '--tcp']);
    assert.equal(g.status, 0, g.stderr);
    assert.match(g.stdout, /cap_net_admin: /);
    assert.match(spawnSync('getcap', [granted], { encoding: 'utf8' }).stdout, /cap_net_admin/);
    const file = join(member.dir, 'tcp.ckpt');
    const p = member.start(...nodeArgs(fixture('tcp-pair.mjs'), [file, '--exit']));
    assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
    const last = events(p)
      .filter((e) => e.event === 'echo')
      .at(-1);
    // checkpoint() lets the event loop run until CRIU freezes it: an echo or two may come after 5.
    assert.ok(last.n >= 5, p.lines.join('\n') + p.stderrText);
    assert.equal(manifestOf(member, file).tcp, undefined, 'connections kept, not closed');

    const copy = member.checkptStart(['-r', file]);
    await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the copy');
    // Its client goes on on the same connection: 6, 7, ... come back from its own server.
    await waitFor(copy, (e) => e.event === 'echo' && e.n >= 10, 'echoes on the kept connection');
    const seen = events(copy).filter((e) => e.event === 'echo' || e.event === 'error');
    assert.equal(seen[0].n, last.n + 1, JSON.stringify(seen.slice(0, 3)));
    assert.ok(!events(copy).some((e) => e.event === 'closed' || e.event === 'error'));
    process.kill(copy.pid, 'SIGTERM');
    await copy.closed;
  });

  test('setup --revoke removes the copy (twice is fine); the member is back to EPERM', async () => {
    const r = asRoot(['setup', '--revoke']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /removed the granted CRIU/);
    assert.ok(!existsSync(join(home, 'granted')));
    assert.ok(existsSync(join(home, 'bin', 'criu')), 'the CRIU it was copied from stays');
    const again = asRoot(['setup', '--revoke']);
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /nothing to do/);
    const p = member.start(...nodeArgs(fixture('state.mjs'), [join(member.dir, 'z.ckpt')]));
    const err = await waitFor(p, (e) => e.event === 'error', 'the refusal');
    assert.equal(err.code, 'EPERM');
    assert.deepEqual(await p.closed, { code: 3, signal: null });
    assert.ok(!events(p).some((e) => e.event === 'returned'));
  });
});
