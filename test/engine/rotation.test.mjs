import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { unitTest as test } from '../helpers.mjs';
import { Rotation, rotationFile, rotationFiles } from '../../dist/engine/rotation.js';
import { readImageInfo, storeRefs, verifyImage, writeImage } from '../../dist/image/format.js';

const dir = mkdtempSync(join(tmpdir(), 'checkpt-rotation-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('names: app.ckpt gives app.N.ckpt, another name gets .N at its end; newest first', async () => {
  assert.equal(rotationFile('/v/app.ckpt', 7), '/v/app.7.ckpt');
  assert.equal(rotationFile('/v/app', 7), '/v/app.7');
  assert.equal(rotationFile('/v/a.b.ckpt', 12), '/v/a.b.12.ckpt');
  const d = join(dir, 'names');
  for (const n of [
    'app.2.ckpt',
    'app.10.ckpt',
    'app.1.ckpt',
    'app.ckpt',
    'app.x.ckpt',
    'app.0.ckpt',
    'other.3.ckpt',
    '.app.11.ckpt.new',
  ])
    writeFileSync(join(dir, n), '');
  assert.deepEqual(
    (await rotationFiles(join(dir, 'app.ckpt'))).map((f) => f.seq),
    [10, 2, 1],
  );
  assert.deepEqual(
    (await rotationFiles(join(dir, 'app.ckpt'), true)).map((f) => f.seq),
    [11],
  );
  assert.deepEqual(await rotationFiles(join(d, 'app.ckpt')), []);
});

test('a write that fails, or writes a file that does not verify, removes only that file', async () => {
  const d = mkdtempSync(join(dir, 'take-'));
  const base = join(d, 'p.ckpt');
  writeFileSync(join(d, 'p.4.ckpt'), 'an earlier good one');
  writeFileSync(join(d, '.p.3.ckpt.new'), 'left by a crash');
  const r = new Rotation(base, 1);
  await assert.rejects(
    r.take(async () => {
      throw new Error('disk on fire');
    }),
    /disk on fire/,
  );
  assert.deepEqual(readdirSync(d), ['p.4.ckpt']);
  await assert.rejects(
    r.take(async (path) => {
      assert.equal(path, join(d, '.p.6.ckpt.new'));
      writeFileSync(path, 'torn');
    }),
    (e) =>
      e.code === 'EBADIMAGE' &&
      /does not verify .*removed and the previous ones kept/.test(e.message),
  );
  assert.deepEqual(readdirSync(d), ['p.4.ckpt']);
  // Files of an earlier run are not this rotation's to resume.
  assert.deepEqual(await r.files(), []);
  assert.throws(
    () => new Rotation(base, 0),
    (e) => e.code === 'EBADCONFIG',
  );
});

test('a store-backed rotation: chunks shared, collected after a file goes, a damaged one dropped so the next checkpoint heals it', async () => {
  const d = mkdtempSync(join(dir, 'store-'));
  const base = join(d, 'app.ckpt');
  const images = join(d, 'images');
  mkdirSync(images);
  const pages = randomBytes(2 * 1024 * 1024);
  const put = () => {
    writeFileSync(join(images, 'pages-1.img'), pages);
    writeFileSync(join(images, 'pstree.img'), 'tree');
  };
  put();
  const r = new Rotation(base, 2, { store: true });
  const write = (path, store) => writeImage(path, {}, { dir: images }, { store: { dir: store } });
  const first = await r.take(write);
  assert.equal(first.collected.removed, 0);
  assert.equal((await readImageInfo(first.file)).store, `${base}.store`);
  randomBytes(512 * 1024).copy(pages, 1024 * 1024);
  put();
  await r.take(write);
  randomBytes(512 * 1024).copy(pages, 0);
  put();
  const third = await r.take(write);
  assert.deepEqual(third.removed, [join(d, 'app.1.ckpt')]);
  assert.ok(third.collected.removed > 0, 'the chunks only the first named went');
  await verifyImage(join(d, 'app.2.ckpt'));
  // A chunk the third names and the fourth would reuse, damaged.
  const { hashes } = await storeRefs(third.file);
  const hex = hashes[0].toString('hex');
  const chunk = join(`${base}.store`, 'chunks', hex.slice(0, 2), hex);
  const bytes = readFileSync(chunk);
  bytes[bytes.length - 1] ^= 1;
  writeFileSync(chunk, bytes);
  await assert.rejects(r.take(write), (e) => {
    assert.equal(e.code, 'EBADIMAGE');
    assert.match(e.message, new RegExp(`damaged chunk ${chunk} was removed from the store`));
    return true;
  });
  assert.equal(existsSync(chunk), false);
  assert.deepEqual(
    readdirSync(d)
      .filter((n) => n.endsWith('.ckpt'))
      .sort(),
    ['app.2.ckpt', 'app.3.ckpt'],
  );
  // The next one writes it again: the third is whole again too.
  await r.take(write);
  await verifyImage(third.file);
  // Opted out: a file that holds its memory, and no store.
  const plain = mkdtempSync(join(dir, 'plain-'));
  const t = await new Rotation(join(plain, 'p.ckpt'), 2, { store: false }).take((path, store) => {
    assert.equal(store, undefined);
    return writeImage(path, {}, { dir: images });
  });
  assert.equal((await readImageInfo(t.file)).store, undefined);
  assert.deepEqual(readdirSync(plain), ['p.1.ckpt']);
});
