// The chunk store (store.ts): memory kept once across files, cut where the content says so a shift
// by whole pages still shares, every chunk checked as strictly as in a file, and collection that
// never removes a chunk a file names.
import { checkptCli, rejectsWith, scratchDir, unitTest as test } from '../helpers.mjs';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as zlib from 'node:zlib';
import {
  collectGarbage,
  extractImage,
  extractLazy,
  readImageInfo,
  storeBytes,
  verifyImage,
  writeImage,
} from '../../dist/image/format.js';

const MiB = 1024 * 1024;
const sha = (b) => createHash('sha256').update(b).digest('hex');

/** A directory of CRIU-like images: one memory image and one small other image. */
function images(root, name, pages) {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'pages-1.img'), pages);
  fs.writeFileSync(path.join(dir, 'pstree.img'), Buffer.from(`tree of ${name}`));
  return dir;
}

async function pagesOf(file, root) {
  const out = fs.mkdtempSync(path.join(root, 'x-'));
  await extractImage(file, out);
  return fs.readFileSync(path.join(out, 'pages-1.img'));
}

function chunkFiles(store) {
  const root = path.join(store, 'chunks');
  return fs
    .readdirSync(root)
    .flatMap((s) => fs.readdirSync(path.join(root, s)).map((f) => path.join(root, s, f)));
}

test('a second file shares the memory that did not change, shifted by whole pages or not', async (t) => {
  const root = scratchDir(t);
  const store = path.join(root, 'app.ckpt.store');
  const a = randomBytes(16 * MiB);
  // Three pages appear at 3 MiB (everything after shifts), 64 KiB change at 10 MiB.
  const b = Buffer.concat([a.subarray(0, 3 * MiB), randomBytes(3 * 4096), a.subarray(3 * MiB)]);
  randomBytes(64 * 1024).copy(b, 10 * MiB);
  const fa = path.join(root, 'app.1.ckpt');
  const fb = path.join(root, 'app.2.ckpt');
  const wa = await writeImage(
    fa,
    { n: 1 },
    { dir: images(root, 'a', a) },
    { store: { dir: store } },
  );
  const wb = await writeImage(
    fb,
    { n: 2 },
    { dir: images(root, 'b', b) },
    { store: { dir: store } },
  );
  assert.ok(wa.store.written >= 16 * MiB && wa.store.shared === 0, JSON.stringify(wa.store));
  // What changed and the chunks around it (up to 4 MiB each) are new; the rest is shared.
  assert.ok(wb.store.written < 8 * MiB, `second file wrote ${wb.store.written} bytes`);
  assert.ok(wb.store.shared > 8 * MiB, `second file shared ${wb.store.shared} bytes`);
  assert.ok(fs.statSync(fa).size < 64 * 1024, 'the file itself holds no memory');
  const { bytes } = await storeBytes(store);
  assert.equal(bytes, wa.store.written + wb.store.written);
  assert.equal(sha(await pagesOf(fa, root)), sha(a));
  assert.equal(sha(await pagesOf(fb, root)), sha(b));
  const info = await readImageInfo(fb);
  assert.equal(info.store, store);
  // Lazily, across chunk boundaries.
  const lazyDir = fs.mkdtempSync(path.join(root, 'lazy-'));
  const lazy = await extractLazy(fb, lazyDir);
  try {
    for (const [at, len] of [
      [0, 10],
      [3 * MiB - 100, 20000],
      [9 * MiB, 3 * MiB],
      [b.length - 5, 5],
    ]) {
      assert.ok((await lazy.pages.read('pages-1.img', at, len)).equals(b.subarray(at, at + len)));
    }
  } finally {
    await lazy.pages.close();
  }
});

test('deleting one file and collecting keeps every chunk the other names', async (t) => {
  const root = scratchDir(t);
  const store = path.join(root, 'app.ckpt.store');
  const a = randomBytes(8 * MiB);
  const b = Buffer.from(a);
  randomBytes(MiB).copy(b, 2 * MiB);
  const fa = path.join(root, 'app.1.ckpt');
  const fb = path.join(root, 'app.2.ckpt');
  await writeImage(fa, {}, { dir: images(root, 'a', a) }, { store: { dir: store } });
  await writeImage(fb, {}, { dir: images(root, 'b', b) }, { store: { dir: store } });
  const before = chunkFiles(store).length;
  assert.deepEqual(await collectGarbage(store), { removed: 0, bytes: 0 });
  // A file being written (no end yet) that may name the store stops collection.
  const partial = path.join(root, '.app.3.ckpt.new');
  fs.writeFileSync(partial, fs.readFileSync(fb).subarray(0, 100));
  fs.rmSync(fa);
  const stopped = await collectGarbage(store);
  assert.equal(stopped.removed, 0);
  assert.match(stopped.skipped, /app\.3\.ckpt\.new cannot be read/);
  fs.rmSync(partial);
  // A chunk file a killed writer left half-written goes too.
  fs.writeFileSync(`${chunkFiles(store)[0]}.tmp-abcdef`, 'x');
  const collected = await collectGarbage(store);
  assert.ok(collected.removed >= 2 && collected.removed < before, JSON.stringify(collected));
  await verifyImage(fb);
  assert.equal(sha(await pagesOf(fb, root)), sha(b));
  fs.rmSync(fb);
  await collectGarbage(store);
  assert.equal(chunkFiles(store).length, 0, 'no file names any chunk');
});

test('a damaged or missing chunk is EBADIMAGE naming it, before its bytes are used', async (t) => {
  const root = scratchDir(t);
  const store = path.join(root, 'app.ckpt.store');
  const a = randomBytes(6 * MiB);
  const f = path.join(root, 'app.1.ckpt');
  await writeImage(f, {}, { dir: images(root, 'a', a) }, { store: { dir: store } });
  const [first, second] = chunkFiles(store);
  const bytes = fs.readFileSync(first);
  bytes[bytes.length >> 1] ^= 1;
  fs.writeFileSync(first, bytes);
  const hex = path.basename(first);
  await rejectsWith(
    verifyImage(f),
    'EBADIMAGE',
    'damaged',
    new RegExp(`${hex}.*checksum mismatch`),
  );
  const out = fs.mkdtempSync(path.join(root, 'x-'));
  await rejectsWith(extractImage(f, out), 'EBADIMAGE', 'extract');
  assert.deepEqual(fs.readdirSync(out), [], 'a failed extraction leaves nothing');
  fs.rmSync(second);
  fs.rmSync(first);
  await rejectsWith(verifyImage(f), 'EBADIMAGE', 'missing', /is missing/);
  // The file moved away from its store: the same.
  const moved = path.join(scratchDir(t), 'app.1.ckpt');
  fs.copyFileSync(f, moved);
  await rejectsWith(verifyImage(moved), 'EBADIMAGE', 'moved', /in its store .* is missing/);
});

test('compressed chunks read back; a key writes a file that holds its memory', async (t) => {
  const root = scratchDir(t);
  const store = path.join(root, 'app.ckpt.store');
  const a = Buffer.alloc(4 * MiB, 'checkpt ');
  randomBytes(MiB).copy(a, MiB);
  const f = path.join(root, 'app.1.ckpt');
  const w = await writeImage(
    f,
    {},
    { dir: images(root, 'a', a) },
    {
      store: { dir: store, compress: true },
    },
  );
  // 3 of its 4 MiB repeat one word: compressed (where this Node has zstd) they take little.
  if (typeof zlib.zstdCompressSync === 'function') assert.ok(w.store.written < 2 * MiB);
  else assert.ok(w.store.written > 4 * MiB);
  assert.equal(sha(await pagesOf(f, root)), sha(a));
  const key = randomBytes(32);
  const g = path.join(root, 'app.2.ckpt');
  const wg = await writeImage(g, {}, { dir: images(root, 'b', a) }, { key, store: { dir: store } });
  assert.equal(wg.store, undefined);
  assert.equal((await readImageInfo(g, { key })).store, undefined);
  await assert.rejects(
    writeImage(
      path.join(root, 'elsewhere', 'x.ckpt'),
      {},
      { dir: path.join(root, 'a') },
      {
        store: { dir: store },
      },
    ),
    /must be in the directory/,
  );
});

test('inspect says a file is store-backed; pack makes one that needs no store; push refuses one', async (t) => {
  const root = scratchDir(t);
  const store = path.join(root, 'app.ckpt.store');
  const a = randomBytes(3 * MiB);
  const f = path.join(root, 'app.1.ckpt');
  await writeImage(f, { argv: ['x'] }, { dir: images(root, 'a', a) }, { store: { dir: store } });
  const shown = checkptCli(['inspect', f]);
  assert.equal(shown.status, 0, shown.stderr);
  assert.match(shown.stdout, new RegExp(`store +memory in the chunk store ${store}`));
  const out = path.join(root, 'whole.ckpt');
  const packed = checkptCli(['pack', f, out]);
  assert.equal(packed.status, 0, packed.stderr);
  assert.equal((await readImageInfo(out)).store, undefined);
  fs.rmSync(store, { recursive: true });
  await verifyImage(out);
  assert.equal(sha(await pagesOf(out, root)), sha(a));
  // Without its store the original is refused, and so is packing it.
  const again = checkptCli(['pack', f, path.join(root, 'again.ckpt')]);
  assert.notEqual(again.status, 0);
  assert.match(again.stderr, /is missing/);
  assert.ok(!fs.existsSync(path.join(root, 'again.ckpt')));
  const pushed = checkptCli(['push', f, '127.0.0.1:9/none/x:y']);
  assert.notEqual(pushed.status, 0);
  assert.match(pushed.stderr, /chunk store beside it.*checkpt pack/);
});
