import { rejectsWith, scratchDir, unitTest as test } from '../helpers.mjs';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { verifyImage, writeImage } from '../../dist/image/format.js';
import { writePlainImageSync } from '../../dist/image/write-sync.js';
import { CheckptError } from '../../dist/common/errors.js';

/** The sync writer's failure as a rejected promise, for rejectsWith. */
const sync = (...args) => new Promise((resolve) => resolve(writePlainImageSync(...args)));

test("written synchronously, a plain file is byte for byte writeImage()'s, with either chunk hash", async (t) => {
  const root = scratchDir(t, 'checkpt-wsync-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  // Memory over several 1 MiB writes with a short last chunk, memory of exactly 1 MiB, an inline
  // entry larger than the copy buffer, an empty one, and names that sort apart.
  fs.writeFileSync(path.join(src, 'pages-1.img'), randomBytes(3 * 1024 * 1024 + 4096 + 17));
  fs.writeFileSync(path.join(src, 'pages-2.img'), randomBytes(1024 * 1024));
  fs.writeFileSync(path.join(src, 'core-1.img'), randomBytes(5000));
  fs.writeFileSync(path.join(src, 'tmpfs-dev-1.tar'), randomBytes(2 * 1024 * 1024 + 3));
  fs.writeFileSync(path.join(src, 'empty.img'), Buffer.alloc(0));
  const manifest = { pid: 1, sync: 'either way', nested: { ok: true } };
  for (const chunkHash of ['blake3', 'sha256']) {
    const pooled = path.join(root, `pooled-${chunkHash}.ckpt`);
    const here = path.join(root, `sync-${chunkHash}.ckpt`);
    await writeImage(pooled, manifest, { dir: src }, { chunkHash });
    const { bytes } = writePlainImageSync(here, manifest, src, { chunkHash });
    assert.equal(bytes, fs.statSync(here).size);
    assert.equal(fs.statSync(here).mode & 0o777, 0o600);
    assert.ok(fs.readFileSync(here).equals(fs.readFileSync(pooled)), chunkHash);
    const info = await verifyImage(here);
    assert.deepEqual(info.manifest, manifest);
    assert.equal(info.chunkHash, chunkHash);
  }
  // The temporary name it is given is the one it writes, and gone once the file is in place.
  const tmp = path.join(root, '.given.tmp-x');
  writePlainImageSync(path.join(root, 'given.ckpt'), manifest, src, { tmp });
  assert.ok(!fs.existsSync(tmp));
  assert.ok(
    fs
      .readFileSync(path.join(root, 'given.ckpt'))
      .equals(fs.readFileSync(path.join(root, 'pooled-blake3.ckpt'))),
  );
});

test('written synchronously, it fails as writeImage() does and leaves nothing behind', async (t) => {
  const root = scratchDir(t, 'checkpt-wsync-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'pages-1.img'), randomBytes(70000));
  fs.writeFileSync(path.join(src, 'core-1.img'), randomBytes(100));
  const target = path.join(root, 'app.ckpt');
  const old = randomBytes(1000);
  fs.writeFileSync(target, old);

  fs.mkdirSync(path.join(src, 'sub'));
  await rejectsWith(sync(target, {}, src), 'EIO', 'a directory to pack');
  fs.rmdirSync(path.join(src, 'sub'));
  fs.symlinkSync('/etc/hostname', path.join(src, 'link.img'));
  await rejectsWith(sync(target, {}, src), 'EIO', 'a symlink to pack');
  fs.unlinkSync(path.join(src, 'link.img'));
  await rejectsWith(
    sync(path.join(root, 'missing', 'x.ckpt'), {}, src),
    'ETARGET',
    'missing target directory',
  );
  await rejectsWith(sync(target, {}, path.join(root, 'nowhere')), 'EIO', 'no directory to pack');
  // A failure at the rename: the old file as it was, no temporary file.
  const taken = path.join(root, 'taken');
  fs.mkdirSync(taken);
  fs.writeFileSync(path.join(taken, 'keep'), 'keep');
  assert.throws(() => writePlainImageSync(taken, {}, src), CheckptError);
  assert.deepEqual(fs.readdirSync(taken), ['keep']);
  assert.ok(fs.readFileSync(target).equals(old));
  assert.deepEqual(fs.readdirSync(root).sort(), ['app.ckpt', 'src', 'taken']);

  // A symlink at the target is replaced, never followed.
  const victim = path.join(root, 'victim');
  fs.writeFileSync(victim, 'precious');
  fs.rmSync(target);
  fs.symlinkSync(victim, target);
  writePlainImageSync(target, {}, src);
  assert.equal(fs.readFileSync(victim, 'utf8'), 'precious');
  assert.ok(fs.lstatSync(target).isFile());
  await verifyImage(target);
});
