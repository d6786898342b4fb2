// Who may hand root a checkpoint, end to end: real checkpoints, real owners and directories, real
// resumes. A plain file that someone other than root or the caller could have written is refused
// by checkpt -r (nothing started), inspect --verify and unlock, unless sealed with the key or
// accepted with --trust-file.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import {
  checkptCli,
  cleanup,
  cli,
  fixture,
  nodeBinaries,
  removeDir,
  start,
  startNode,
  tempDir,
  waitFor,
  test,
  describe,
} from '../helpers.mjs';

const node = nodeBinaries()[0];
const NOBODY = 65534;
const REFUSED =
  /checkpt: Refusing .*: it is not sealed with a key and it belongs to uid 65534 \(nobody\), not to root or you\..*pass --trust-file/;

/** `checkpt -r ARGS...` in the foreground, to its end; what it printed and how it ended. */
async function resumeWith(args, env = {}) {
  const child = start(process.execPath, [cli, '-r', ...args], {
    env: { ...process.env, ...env },
  });
  const st = await child.closed;
  return { ...st, pid: child.pid, child, stderr: child.stderrText };
}

/** Resumed for real: the copy's checkpt() returned 1 and checkpt -r exited with its status. */
async function assertResumed(args, env = {}) {
  const r = await resumeWith(args, env);
  const back = await waitFor(r.child, (e) => e.event === 'returned', 'the resumed copy', 1000);
  assert.equal(back.r, 1);
  assert.equal(r.code, 7, `exit status of the copy; stderr: ${r.stderr}`);
}

/** Staging directories that checkpt process `pid` left (src/engine/staging.ts names them). */
function stagingOf(pid) {
  return ['/dev/shm', tmpdir()].flatMap((d) =>
    readdirSync(d).filter((n) => n.startsWith(`checkpt-restore-${pid}.`)),
  );
}

describe('checkpt -r, inspect --verify and unlock: who may hand root a checkpoint', () => {
  let dir;
  let open;
  let plain;
  let sealed;
  let keyFile;
  let theirs;
  let theirsSealed;
  before(async () => {
    dir = tempDir('checkpt-trust-');
    keyFile = join(dir, 'key');
    writeFileSync(keyFile, randomBytes(32), { mode: 0o600 });
    plain = join(dir, 'plain.ckpt');
    sealed = join(dir, 'sealed.ckpt');
    for (const [file, env] of [
      [plain, {}],
      [sealed, { CHECKPT_KEY_FILE: keyFile }],
    ]) {
      const p = startNode(node, fixture('state.mjs'), [file], {
        env: { ...process.env, ...env },
      });
      await waitFor(p, (e) => e.event === 'returned', `the checkpoint to ${file}`);
      assert.equal((await p.closed).code, 0, p.stderrText);
    }
    // What a local user can do: leave a file of theirs where root will look, in a 1777 directory.
    open = join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o1777);
    theirs = join(open, 'theirs.ckpt');
    theirsSealed = join(open, 'theirs-sealed.ckpt');
    copyFileSync(plain, theirs);
    copyFileSync(sealed, theirsSealed);
    chownSync(theirs, NOBODY, NOBODY);
    chownSync(theirsSealed, NOBODY, NOBODY);
  });
  after(async () => {
    await cleanup();
    removeDir(dir);
  });

  test("nobody's plain file in a 1777 directory: refused with the way out, nothing started", async () => {
    const r = await resumeWith([theirs]);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr, REFUSED);
    assert.deepEqual(r.child.lines, [], 'the program printed nothing: it never ran');
    assert.deepEqual(stagingOf(r.pid), [], 'no staging directory left');
    // Detached too.
    const d = checkptCli(['-r', '-d', theirs]);
    assert.equal(d.status, 125, d.stderr);
    assert.match(d.stderr, REFUSED);
    assert.equal(d.stdout, '', 'no pid printed');
  });

  test("root's plain file in a 0700 directory resumes", async () => {
    await assertResumed([plain]);
  });

  test("nobody's file sealed with the key resumes: the key authenticates it", async () => {
    await assertResumed([theirsSealed], { CHECKPT_KEY_FILE: keyFile });
  });

  test('--trust-file resumes the refused file', async () => {
    await assertResumed(['--trust-file', theirs]);
  });

  test('inspect --verify and unlock refuse it too, and accept it with --trust-file; plain inspect shows it', () => {
    for (const args of [
      ['inspect', '--verify', theirs],
      ['unlock', theirs],
    ]) {
      const r = checkptCli(args);
      assert.equal(r.status, 125, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, REFUSED, args[0]);
    }
    const verified = checkptCli(['inspect', '--verify', '--json', '--trust-file', theirs]);
    assert.equal(verified.status, 0, verified.stderr);
    assert.equal(JSON.parse(verified.stdout).verified, true);
    const unlocked = checkptCli(['unlock', '--trust-file', theirs]);
    assert.equal(unlocked.status, 0, unlocked.stderr);
    assert.match(unlocked.stdout, /holds no network lock/);
    // Looking without vouching for it is harmless.
    const shown = checkptCli(['inspect', theirs]);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /^command\s+.*state\.mjs/m);
  });
});
