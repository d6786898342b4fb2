// BLAKE3 through checkpt's addon (native/checkpt-blake3.c, the reference C with its SIMD paths):
// the digests of an independent implementation (@noble/hashes) at every size its SIMD paths
// branch on; bad arguments are refused; without the addon, an EHELPER that says what to do.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { blake3 as nobleBlake3 } from '@noble/hashes/blake3.js';
import { blake3, blake3Available, setBlake3Loader } from '../../dist/common/blake3.js';
import { nativeAddon } from '../../dist/engine/native.js';
import { verifyImage, writeImage } from '../../dist/image/format.js';
import { scratchDir, unitTest as test } from '../helpers.mjs';

const load = () => nativeAddon('checkpt-blake3.node');

test("the addon's digests are an independent implementation's: empty, around its 64-byte blocks and 1 KiB chunks, 16 chunks at once and more", () => {
  setBlake3Loader(load);
  assert.equal(blake3Available(), true);
  // BLAKE3's own test vector for the empty input.
  assert.equal(
    blake3(Buffer.alloc(0)).toString('hex'),
    'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262',
  );
  const data = randomBytes(1024 * 1024 + 3);
  const sizes = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3072, 8191, 16384, 16385, 65536];
  for (const n of [...sizes, 17 * 1024 + 5, 33 * 1024, data.length]) {
    const want = Buffer.from(nobleBlake3(data.subarray(0, n)));
    assert.ok(blake3(data.subarray(0, n)).equals(want), `${n} bytes`);
  }
  // A view into the middle of a larger buffer: its bytes, not the buffer's.
  const view = new Uint8Array(data.buffer, data.byteOffset + 7, 70_000);
  assert.ok(blake3(view).equals(Buffer.from(nobleBlake3(view))));
});

test('bad arguments are refused, never a digest', () => {
  const addon = load();
  assert.equal(addon.blake3('text', Buffer.alloc(32)), false, 'data not bytes');
  assert.equal(addon.blake3(Buffer.from('x'), Buffer.alloc(31)), false, 'no room for the digest');
  assert.equal(addon.blake3(Buffer.from('x')), false, 'no output');
});

test('without the addon: files get SHA-256 tables, and a BLAKE3 check is an EHELPER that says how to build it', async (t) => {
  const dir = scratchDir(t, 'checkpt-blake3-');
  const images = join(dir, 'images');
  mkdirSync(images);
  writeFileSync(join(images, 'pages-1.img'), randomBytes(100_000));
  writeFileSync(join(images, 'core-1.img'), 'core');
  const saved = process.env.CHECKPT_CHUNK_HASH;
  try {
    setBlake3Loader(() => {
      throw new Error('cannot open shared object file');
    });
    assert.equal(blake3Available(), false);
    delete process.env.CHECKPT_CHUNK_HASH;
    await writeImage(join(dir, 'a.ckpt'), { p: 1 }, { dir: images });
    assert.equal((await verifyImage(join(dir, 'a.ckpt'))).chunkHash, 'sha256');
    // Asked for by name: refused, and no file at the name.
    process.env.CHECKPT_CHUNK_HASH = 'blake3';
    await assert.rejects(writeImage(join(dir, 'b.ckpt'), { p: 1 }, { dir: images }), {
      code: 'EHELPER',
    });
    assert.equal(existsSync(join(dir, 'b.ckpt')), false);
    assert.throws(
      () => blake3(Buffer.from('x')),
      (e) =>
        e.code === 'EHELPER' &&
        /checked with BLAKE3/.test(e.message) &&
        /cannot open shared object file/.test(e.message) &&
        /npx checkpt build/.test(e.message),
    );
    setBlake3Loader(undefined);
    assert.equal(blake3Available(), false);
  } finally {
    setBlake3Loader(load);
    if (saved === undefined) delete process.env.CHECKPT_CHUNK_HASH;
    else process.env.CHECKPT_CHUNK_HASH = saved;
  }
  assert.equal(blake3Available(), true);
  // The addon back: the same images get BLAKE3 tables, and both files read.
  delete process.env.CHECKPT_CHUNK_HASH;
  await writeImage(join(dir, 'c.ckpt'), { p: 1 }, { dir: images });
  assert.equal((await verifyImage(join(dir, 'c.ckpt'))).chunkHash, 'blake3');
  if (saved !== undefined) process.env.CHECKPT_CHUNK_HASH = saved;
});
