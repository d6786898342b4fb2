// Who may hand root a checkpoint (src/image/trust.ts): real files, real owners and modes (we are
// root), checked on the opened fd. No CRIU here; test/cli/trust.test.mjs resumes real checkpoints.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { extractImage, readImageInfo, verifyImage, writeImage } from '../../dist/image/format.js';
import { untrustedReason } from '../../dist/image/trust.js';
import { rejectsWith, scratchDir, test } from '../helpers.mjs';

const NOBODY = 65534;

/** A directory of `mode` (chmod, so the umask does not narrow it), owned by `uid`. */
function dir(parent, name, mode, uid = 0) {
  const d = path.join(parent, name);
  fs.mkdirSync(d);
  fs.chmodSync(d, mode);
  if (uid !== 0) fs.chownSync(d, uid, uid);
  return d;
}

/** A small plain (or, with `key`, sealed) checkpoint at `file`, owned by `uid`, with `mode`. */
async function image(t, file, { uid = 0, mode = 0o600, key } = {}) {
  const src = scratchDir(t, 'checkpt-trust-src-');
  fs.writeFileSync(path.join(src, 'core-1.img'), randomBytes(5000));
  await writeImage(file, { pid: 7 }, { dir: src }, key ? { key } : {});
  fs.chmodSync(file, mode);
  if (uid !== 0) fs.chownSync(file, uid, uid);
  return file;
}

/** What untrustedReason says of `file`, opened read-only. */
function reasonFor(file, euid) {
  const fd = fs.openSync(file, 'r');
  try {
    return untrustedReason(fd, euid);
  } finally {
    fs.closeSync(fd);
  }
}

test('a file only root (or the caller) could have written passes, a sticky 1777 directory included', async (t) => {
  const root = scratchDir(t, 'checkpt-trust-');
  assert.equal(reasonFor(await image(t, path.join(root, 'a.ckpt'))), undefined);
  const sticky = dir(root, 'sticky', 0o1777);
  assert.equal(reasonFor(await image(t, path.join(sticky, 'b.ckpt'))), undefined);
  // The caller's own file, in a directory of the caller's.
  const mine = dir(root, 'mine', 0o755, NOBODY);
  const own = await image(t, path.join(mine, 'c.ckpt'), { uid: NOBODY });
  assert.equal(reasonFor(own, NOBODY), undefined);
  assert.match(reasonFor(own, 0), /belongs to uid 65534 \(nobody\), not to root or you/);
});

test('someone else could have written it: their file, a writable file, a directory of theirs or open to all', async (t) => {
  const root = scratchDir(t, 'checkpt-trust-');
  const sticky = dir(root, 'sticky', 0o1777);
  const cases = {
    "nobody's file in a 1777 directory": [
      await image(t, path.join(sticky, 'a.ckpt'), { uid: NOBODY }),
      /^it belongs to uid 65534 \(nobody\), not to root or you$/,
    ],
    'a file everyone can write': [
      await image(t, path.join(root, 'b.ckpt'), { mode: 0o666 }),
      /^its group and everyone can change it \(mode 0666\)$/,
    ],
    'a file its group can write': [
      await image(t, path.join(root, 'c.ckpt'), { mode: 0o620 }),
      /^its group can change it \(mode 0620\)$/,
    ],
    'a directory open to all without the sticky bit': [
      await image(t, path.join(dir(root, 'open', 0o777), 'd.ckpt')),
      new RegExp(
        `^its group and everyone can write the directory ${root}/open \\(mode 0777, no sticky bit\\)`,
      ),
    ],
    "a directory of nobody's": [
      await image(t, path.join(dir(root, 'theirs', 0o755, NOBODY), 'e.ckpt')),
      new RegExp(
        `^the directory ${root}/theirs belongs to uid 65534 \\(nobody\\), who can replace`,
      ),
    ],
  };
  // Every directory up to / counts, not only the file's own.
  const open = dir(root, 'open2', 0o777);
  const deep = dir(dir(open, 'safe', 0o700), 'safer', 0o700);
  cases['a safe directory inside one open to all'] = [
    await image(t, path.join(deep, 'f.ckpt')),
    new RegExp(`^its group and everyone can write the directory ${open} `),
  ];
  for (const [label, [file, why]] of Object.entries(cases)) {
    assert.match(reasonFor(file) ?? 'passed', why, label);
    await rejectsWith(
      verifyImage(file, { requireTrusted: true }),
      'EUNTRUSTED',
      label,
      /^Refusing .*: it is not sealed with a key and .* could run code as root\. .*pass --trust-file \(checkpt -r --trust-file FILE; inspect --verify and unlock take it too\).*\(CHECKPT_KEY_FILE\)/,
    );
    // The check is asked for: without it the file reads as before.
    assert.equal((await verifyImage(file)).manifest.pid, 7, label);
  }
});

test('the opened file is what is judged, not the name: swapped, moved or removed after the open', async (t) => {
  const root = scratchDir(t, 'checkpt-trust-');
  const sticky = dir(root, 'sticky', 0o1777);
  const theirs = await image(t, path.join(sticky, 'x.ckpt'), { uid: NOBODY });
  const fd = fs.openSync(theirs, 'r');
  t.after(() => fs.closeSync(fd));
  // A root-owned file put in its place afterwards does not vouch for what was opened.
  await image(t, path.join(root, 'good.ckpt'));
  fs.renameSync(path.join(root, 'good.ckpt'), theirs);
  assert.match(untrustedReason(fd) ?? 'passed', /belongs to uid 65534/);

  // A root file opened in a safe place, then moved where others write: judged where it is now.
  const safe = await image(t, path.join(root, 'y.ckpt'));
  const fd2 = fs.openSync(safe, 'r');
  t.after(() => fs.closeSync(fd2));
  assert.equal(untrustedReason(fd2), undefined);
  const open = dir(root, 'open', 0o777);
  fs.renameSync(safe, path.join(open, 'y.ckpt'));
  assert.match(untrustedReason(fd2) ?? 'passed', /can write the directory .*\/open /);
  fs.unlinkSync(path.join(open, 'y.ckpt'));
  assert.match(untrustedReason(fd2) ?? 'passed', /removed while it was being opened/);

  // Reached through a symlink in a directory open to all, a root file in a safe place is still that.
  const target = await image(t, path.join(root, 'z.ckpt'));
  const link = path.join(dir(root, 'open2', 0o777), 'link.ckpt');
  fs.symlinkSync(target, link);
  assert.equal(reasonFor(link), undefined);
});

test('every reader refuses an untrusted plain file before extracting; a sealed one passes with its key', async (t) => {
  const root = scratchDir(t, 'checkpt-trust-');
  const sticky = dir(root, 'sticky', 0o1777);
  const plain = await image(t, path.join(sticky, 'plain.ckpt'), { uid: NOBODY });
  const out = fs.mkdtempSync(path.join(root, 'out-'));
  const key = randomBytes(32);
  for (const [label, read] of [
    ['verify', () => verifyImage(plain, { requireTrusted: true })],
    ['info', () => readImageInfo(plain, { requireTrusted: true })],
    ['extract', () => extractImage(plain, out, { requireTrusted: true })],
    [
      'info, key set, plain allowed',
      () => readImageInfo(plain, { key, allowPlain: true, requireTrusted: true }),
    ],
  ])
    await rejectsWith(read(), 'EUNTRUSTED', label, /belongs to uid 65534 \(nobody\)/);
  assert.deepEqual(fs.readdirSync(out), [], 'nothing extracted');

  // Authenticated by the key: whoever owns it, wherever it lies.
  const sealed = await image(t, path.join(sticky, 'sealed.ckpt'), {
    uid: NOBODY,
    mode: 0o666,
    key,
  });
  const info = await extractImage(sealed, out, { key, requireTrusted: true });
  assert.equal(info.encrypted, true);
  assert.deepEqual(fs.readdirSync(out), ['core-1.img']);
});
