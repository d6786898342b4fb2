// Format 2: memory in chunks checked one by one (layout.ts). The documented layout by hand, format
// 1 still read, lazy extraction reading little, and damage to a chunk found at its first read.
import {
  assertLazyRefuses,
  cli,
  rejectsWith,
  scratchDir,
  spawnSync,
  unitTest as test,
} from '../helpers.mjs';
import assert from 'node:assert/strict';
import { createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { observeReads } from '../../dist/image/io.js';
import path from 'node:path';
import * as zlib from 'node:zlib';
import {
  extractImage,
  extractLazy,
  readImageHeader,
  readImageInfo,
  verifyImage,
  writeImage,
} from '../../dist/image/format.js';
import { compressImages, zstdAvailable } from '../../dist/image/compress.js';
import { CheckptError } from '../../dist/common/errors.js';
import { buildV2, pieces } from './layout.mjs';

const C = 4096;
const HEAD = 68;
const TAG = 16;
const zstdInZlib = typeof zlib.zstdDecompressSync === 'function';

function sources(root, files, name = 'src') {
  const src = path.join(root, name);
  fs.mkdirSync(src);
  for (const [n, data] of Object.entries(files)) fs.writeFileSync(path.join(src, n), data);
  return src;
}

/** Reads all of a PageSource's entry, `step` bytes at a time. */
async function readAll(pages, name, step = 3000) {
  const size = pages.entries.get(name);
  const parts = [];
  for (let at = 0; at < size; at += step) {
    parts.push(await pages.read(name, at, Math.min(step, size - at)));
  }
  return Buffer.concat(parts);
}

/** Where DATA is in a format-2 file: [start, start + D). */
function dataRegion(bytes, sealed) {
  const tail = sealed ? 16 : 48;
  const d = Number(bytes.readBigUInt64BE(bytes.length - tail));
  return { start: sealed ? HEAD : 16, length: d };
}

/** The chunks of each chunked entry in DATA, in order: [{ name, index, start, length }]. */
function chunkMap(layout, sealed) {
  const out = [];
  let at = sealed ? HEAD : 16;
  for (const [name, lengths] of layout) {
    lengths.forEach((len, index) => {
      const length = len + (sealed ? TAG : 0);
      out.push({ name, index, start: at, length });
      at += length;
    });
  }
  return out;
}

test('format 2 (plain) is the documented layout byte for byte: BLAKE3 tables by default, SHA-256 on request', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const pages = randomBytes(2 * C + 300);
  const src = sources(root, {
    'core-1.img': 'core data',
    'pages-1.img': pages,
    'pages-2.img': Buffer.alloc(0),
    'zz.img': 'last',
  });
  const manifest = { pid: 9 };
  const layout = (blake3) =>
    buildV2({
      manifest: JSON.stringify(manifest),
      entries: [
        { name: 'core-1.img', data: 'core data' },
        { name: 'pages-1.img', chunks: pieces(pages, C) },
        { name: 'pages-2.img', chunks: [] },
        { name: 'zz.img', data: 'last' },
      ],
      blake3,
    });
  for (const [label, options, env, blake3] of [
    ['default', {}, undefined, true],
    ['chunkHash sha256', { chunkHash: 'sha256' }, undefined, false],
    ['CHECKPT_CHUNK_HASH=sha256', {}, 'sha256', false],
    ['CHECKPT_CHUNK_HASH=blake3', {}, 'blake3', true],
  ]) {
    const file = path.join(root, `x-${blake3}.ckpt`);
    fs.rmSync(file, { force: true });
    const saved = process.env.CHECKPT_CHUNK_HASH;
    if (env === undefined) delete process.env.CHECKPT_CHUNK_HASH;
    else process.env.CHECKPT_CHUNK_HASH = env;
    try {
      await writeImage(file, manifest, { dir: src }, { memoryChunk: C, ...options });
    } finally {
      if (saved === undefined) delete process.env.CHECKPT_CHUNK_HASH;
      else process.env.CHECKPT_CHUNK_HASH = saved;
    }
    const expected = layout(blake3);
    assert.ok(fs.readFileSync(file).equals(expected), label);
    assert.deepEqual(await readImageHeader(file), {
      formatVersion: 2,
      encrypted: false,
      fileSize: expected.length,
    });
    const info = await verifyImage(file);
    assert.equal(info.chunkHash, blake3 ? 'blake3' : 'sha256', label);
  }
});

/** Opens a sealed format-2 file by hand, straight from the layout documented in layout.ts. */
function openByHandV2(bytes, key) {
  const head = bytes.subarray(0, HEAD);
  assert.equal(head.readUInt32BE(8), 2);
  const chunk = head.readUInt32BE(16);
  const okm = Buffer.from(
    hkdfSync('sha256', key, head.subarray(20, 52), 'checkpt image v2 aes-256-gcm', 52),
  );
  assert.ok(okm.subarray(36).equals(head.subarray(52)), 'key check');
  assert.ok(bytes.subarray(bytes.length - 8).equals(Buffer.from('CKPTEND\n', 'latin1')));
  const dBytes = bytes.subarray(bytes.length - 16, bytes.length - 8);
  const d = Number(dBytes.readBigUInt64BE(0));
  const open = (nonce, aad, ct, tag) => {
    const dc = createDecipheriv('aes-256-gcm', okm.subarray(0, 32), nonce);
    dc.setAAD(aad);
    dc.setAuthTag(tag);
    return Buffer.concat([dc.update(ct), dc.final()]);
  };
  const sealed = bytes.subarray(HEAD + d, bytes.length - 16);
  const parts = [];
  for (let i = 0, at = 0; at < sealed.length; i++) {
    const len = Math.min(chunk, sealed.length - at - TAG);
    const last = at + len + TAG === sealed.length;
    const nonce = Buffer.alloc(12);
    okm.copy(nonce, 0, 32, 36);
    nonce.writeBigUInt64BE(BigInt(i), 4);
    const aad = Buffer.concat([head, dBytes, Buffer.alloc(9)]);
    aad.writeBigUInt64BE(BigInt(i), HEAD + 8);
    aad[HEAD + 16] = last ? 1 : 0;
    parts.push(
      open(nonce, aad, sealed.subarray(at, at + len), sealed.subarray(at + len, at + len + TAG)),
    );
    at += len + TAG;
  }
  const index = Buffer.concat(parts);
  // INDEX by hand: manifest, entries; chunked entries' chunks opened from DATA.
  let p = 0;
  const take = (n) => index.subarray(p, (p += n));
  const manifest = JSON.parse(
    take(index.readUInt32BE(0) + 4)
      .subarray(4)
      .toString(),
  );
  const count = take(4).readUInt32BE(0);
  const files = {};
  let at = HEAD;
  let ordinal = 0;
  for (let e = 0; e < count; e++) {
    const nameBuf = take(take(2).readUInt16BE(0));
    const name = nameBuf.toString();
    const kind = take(1)[0];
    if (kind === 0) {
      files[name] = Buffer.from(take(Number(take(8).readBigUInt64BE(0))));
      continue;
    }
    assert.equal(kind, 1);
    const h = take(17);
    assert.equal(h[0], 0, 'codec');
    const k = h.readUInt32BE(13);
    const chunks = [];
    for (let i = 0; i < k; i++) {
      const len = take(4).readUInt32BE(0);
      const nonce = Buffer.alloc(12);
      okm.copy(nonce, 0, 32, 36);
      nonce.writeUInt32BE(0x80000000 + ordinal, 4);
      nonce.writeUInt32BE(i, 8);
      const l = Buffer.alloc(2);
      l.writeUInt16BE(nameBuf.length);
      const tail = Buffer.alloc(9);
      tail.writeBigUInt64BE(BigInt(i));
      tail[8] = i === k - 1 ? 1 : 0;
      const aad = Buffer.concat([head, l, nameBuf, tail]);
      chunks.push(
        open(nonce, aad, bytes.subarray(at, at + len), bytes.subarray(at + len, at + len + TAG)),
      );
      at += len + TAG;
    }
    files[name] = Buffer.concat(chunks);
    ordinal++;
  }
  assert.equal(p, index.length, 'INDEX fully used');
  assert.equal(at, HEAD + d, 'DATA fully used');
  return { manifest, files };
}

test('format 2 (encrypted) is the documented layout: opened by hand, no plaintext in it', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const secret = 'secret-' + randomBytes(8).toString('hex');
  const files = {
    'core-1.img': Buffer.from(`core ${secret}`),
    'pages-1.img': Buffer.concat([randomBytes(5000), Buffer.from(secret), randomBytes(4000)]),
    'pages-2.img': Buffer.from(secret),
  };
  const src = sources(root, files);
  const key = randomBytes(32);
  const file = path.join(root, 's.ckpt');
  await writeImage(file, { s: secret }, { dir: src }, { key, chunkSize: C, memoryChunk: C });
  const bytes = fs.readFileSync(file);
  assert.ok(!bytes.includes(secret), 'secret in the encrypted file');
  assert.ok(!bytes.includes('pages-1.img'), 'entry name in the encrypted file');
  const opened = openByHandV2(bytes, key);
  assert.deepEqual(opened.manifest, { s: secret });
  assert.deepEqual(Object.keys(opened.files).sort(), Object.keys(files).sort());
  for (const [n, data] of Object.entries(files)) assert.ok(opened.files[n].equals(data), n);
});

test('format 1 files are still read by every reader; extractLazy leaves them to extractImage', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const files = { 'core-1.img': 'c', 'pages-1.img': randomBytes(3 * C + 5) };
  const src = sources(root, files);
  for (const key of [undefined, randomBytes(32)]) {
    const file = path.join(root, `v1-${key ? 'sealed' : 'plain'}.ckpt`);
    await writeImage(file, { v: 1 }, { dir: src }, { key, chunkSize: C, formatVersion: 1 });
    assert.equal(fs.readFileSync(file).readUInt32BE(8), 1);
    const info = await verifyImage(file, { key });
    assert.equal(info.formatVersion, 1);
    assert.deepEqual(await readImageInfo(file, { key }), { ...info, verified: false });
    assert.equal((await readImageHeader(file)).formatVersion, 1);
    const lazyOut = fs.mkdtempSync(path.join(root, 'lazy-'));
    assert.equal(await extractLazy(file, lazyOut, { key }), undefined);
    assert.deepEqual(fs.readdirSync(lazyOut), []);
    const out = fs.mkdtempSync(path.join(root, 'out-'));
    assert.deepEqual(await extractImage(file, out, { key }), info);
    for (const [n, data] of Object.entries(files)) {
      assert.ok(fs.readFileSync(path.join(out, n)).equals(Buffer.from(data)), n);
    }
  }
});

test('format 2 round trips, plain and encrypted; extractLazy serves the same bytes', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const files = {
    'core-1.img': 'core',
    'empty.img': '',
    'pages-1.img': randomBytes(5 * 1024 * 1024 + 123),
    'pages-2.img': Buffer.alloc(0),
    'pages-3.img': randomBytes(1000),
  };
  const src = sources(root, files);
  for (const key of [undefined, randomBytes(32)]) {
    const file = path.join(root, `rt-${key ? 'sealed' : 'plain'}.ckpt`);
    const { bytes } = await writeImage(file, { a: 1 }, { dir: src }, { key });
    const names = Object.keys(files).sort();
    const info = await verifyImage(file, { key });
    assert.deepEqual(info, {
      formatVersion: 2,
      manifest: { a: 1 },
      entries: names.map((name) => ({ name, size: Buffer.from(files[name]).length })),
      fileSize: bytes,
      encrypted: key !== undefined,
      // A sealed file's chunks carry GCM tags instead.
      ...(key === undefined ? { chunkHash: 'blake3' } : {}),
    });
    const out = fs.mkdtempSync(path.join(root, 'out-'));
    assert.deepEqual(await extractImage(file, out, { key }), info);
    for (const n of names)
      assert.ok(fs.readFileSync(path.join(out, n)).equals(Buffer.from(files[n])));

    const lazyOut = fs.mkdtempSync(path.join(root, 'lazy-'));
    const lazy = await extractLazy(file, lazyOut, { key });
    assert.deepEqual(lazy.info, info);
    assert.deepEqual(fs.readdirSync(lazyOut).sort(), ['core-1.img', 'empty.img']);
    assert.deepEqual([...lazy.pages.entries].sort(), [
      ['pages-1.img', files['pages-1.img'].length],
      ['pages-2.img', 0],
      ['pages-3.img', 1000],
    ]);
    assert.ok((await readAll(lazy.pages, 'pages-1.img', 4 << 20)).equals(files['pages-1.img']));
    assert.ok((await readAll(lazy.pages, 'pages-1.img', 4095)).equals(files['pages-1.img']));
    assert.ok((await lazy.pages.read('pages-3.img', 0, 1000)).equals(files['pages-3.img']));
    assert.equal((await lazy.pages.read('pages-2.img', 0, 0)).length, 0);
    // Reads at once, of the same chunks: each gets its bytes.
    const many = await Promise.all(
      [0, 100, 1 << 20, (1 << 20) - 1, 5 << 20].map((at) => lazy.pages.read('pages-1.img', at, 50)),
    );
    [0, 100, 1 << 20, (1 << 20) - 1, 5 << 20].forEach((at, i) =>
      assert.ok(many[i].equals(files['pages-1.img'].subarray(at, at + 50)), `at ${at}`),
    );
    await assert.rejects(
      lazy.pages.read('pages-1.img', files['pages-1.img'].length - 1, 2),
      RangeError,
    );
    await assert.rejects(lazy.pages.read('pages-9.img', 0, 1), RangeError);
    await assert.rejects(lazy.pages.read('core-1.img', 0, 1), RangeError);
    await lazy.pages.close();
    await rejectsWith(lazy.pages.read('pages-3.img', 0, 1), 'EIO', 'read after close');
  }
});

test('compressed memory: frames per chunk served lazily where zlib has zstd, else extracted eagerly', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  if (!zstdInZlib && !zstdAvailable()) return t.skip('neither zlib zstd nor the zstd program here');
  const memory = Buffer.concat([randomBytes(1 << 20), Buffer.alloc(3 << 20, 1), randomBytes(777)]);
  const src = sources(root, { 'core-1.img': 'c', 'pages-1.img': memory });
  assert.equal(await compressImages(src), 1);
  assert.deepEqual(fs.readdirSync(src).sort(), ['core-1.img', 'pages-1.img.zst']);
  const packed = fs.statSync(path.join(src, 'pages-1.img.zst')).size;
  for (const key of [undefined, randomBytes(32)]) {
    const file = path.join(root, `z-${key ? 'sealed' : 'plain'}.ckpt`);
    await writeImage(file, {}, { dir: src }, { key });
    const info = await verifyImage(file, { key });
    assert.deepEqual(info.entries, [
      { name: 'core-1.img', size: 1 },
      { name: 'pages-1.img.zst', size: packed },
    ]);
    // Eagerly: the .zst file as packed, which zstd decodes (the frames one after another).
    const out = fs.mkdtempSync(path.join(root, 'out-'));
    await extractImage(file, out, { key });
    const stored = fs.readFileSync(path.join(out, 'pages-1.img.zst'));
    assert.ok(stored.equals(fs.readFileSync(path.join(src, 'pages-1.img.zst'))));
    if (zstdInZlib) assert.ok(zlib.zstdDecompressSync(stored).equals(memory));
    const lazyOut = fs.mkdtempSync(path.join(root, 'lazy-'));
    const lazy = await extractLazy(file, lazyOut, { key });
    if (!zstdInZlib) {
      // The zstd program wrote one stream: it decodes only as a whole.
      assert.equal(lazy, undefined);
      assert.deepEqual(fs.readdirSync(lazyOut), []);
      continue;
    }
    assert.ok(packed < memory.length / 2, `${packed} bytes packed`);
    assert.deepEqual([...lazy.pages.entries], [['pages-1.img', memory.length]]);
    assert.ok((await readAll(lazy.pages, 'pages-1.img', 1 << 20)).equals(memory));
    assert.ok(
      (await lazy.pages.read('pages-1.img', 4 << 20, 777)).equals(memory.subarray(4 << 20)),
    );
    await lazy.pages.close();
  }
});

/** Bytes read through any FileHandle while `fn` runs. */
async function bytesReadDuring(fn) {
  let total = 0;
  observeReads((n) => (total += n));
  try {
    const result = await fn();
    return { result, total };
  } finally {
    observeReads(undefined);
  }
}

test('lazy extraction reads the small entries and the tables, not the memory', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const measured = {};
  for (const [label, mib, key] of [
    ['small', 8, undefined],
    ['large', 256, undefined],
    ['sealed', 64, randomBytes(32)],
  ]) {
    const dir = path.join(root, `src-${label}`);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'core-1.img'), randomBytes(20_000));
    // Sparse: quick to write, and every byte of it still goes into the checkpoint.
    fs.writeFileSync(path.join(dir, 'pages-1.img'), '');
    fs.truncateSync(path.join(dir, 'pages-1.img'), mib << 20);
    const file = path.join(root, `${label}.ckpt`);
    await writeImage(file, {}, { dir }, { key });
    const out = fs.mkdtempSync(path.join(root, 'out-'));
    const { result: lazy, total } = await bytesReadDuring(() => extractLazy(file, out, { key }));
    assert.ok(lazy !== undefined);
    measured[label] = total;
    // The entries and tables only: 20 kB, 36 bytes a 64 KiB chunk (20 a sealed MiB), in windows of 64 KiB.
    assert.ok(total < 256 * 1024, `${label}: ${total} bytes read`);
    const { result: b, total: one } = await bytesReadDuring(() =>
      lazy.pages.read('pages-1.img', 5 << 20, 10),
    );
    assert.ok(b.equals(Buffer.alloc(10)));
    // One chunk, with one read: 64 KiB plain, 1 MiB sealed.
    assert.equal(one, key ? (1 << 20) + TAG : 64 << 10, `${label}: a read of 10 bytes read ${one}`);
    await lazy.pages.close();
  }
  // From 8 to 256 MiB only the table grew.
  assert.ok(measured.large - measured.small <= 248 * 16 * 36 + 64 * 1024, JSON.stringify(measured));
});

/** A small format-2 file: pages-1.img in two chunks of C and one of 100, pages-2.img in one of 50. */
async function smallFile(root, key, name = 'good.ckpt', fill) {
  const files = {
    'core-1.img': 'core',
    'pages-1.img': fill ?? randomBytes(2 * C + 100),
    'pages-2.img': randomBytes(50),
  };
  const src = sources(root, files, `src-${name}`);
  const file = path.join(root, name);
  await writeImage(file, {}, { dir: src }, { key, chunkSize: C, memoryChunk: C });
  const layout = [
    ['pages-1.img', [C, C, files['pages-1.img'].length - 2 * C]],
    ['pages-2.img', [50]],
  ];
  return { file, files, map: chunkMap(layout, key !== undefined) };
}

test(
  'every byte of a memory chunk, flipped, is found at the first read of that chunk only, and by verify',
  { timeout: 120_000 },
  async (t) => {
    const root = scratchDir(t, 'checkpt-v2-');
    for (const key of [undefined, randomBytes(32)]) {
      const { file, files, map } = await smallFile(root, key, `flip-${key ? 's' : 'p'}.ckpt`);
      const good = fs.readFileSync(file);
      const region = dataRegion(good, key !== undefined);
      assert.equal(map.at(-1).start + map.at(-1).length, region.start + region.length);
      const out = path.join(root, `out-${key ? 's' : 'p'}`);
      fs.mkdirSync(out);
      const bad = path.join(root, 'bad.ckpt');
      // Every byte of the short chunks (tags included), every 41st of the full ones (for time).
      const short = map.filter((c) => c.length < C);
      const every = (p) =>
        short.some((c) => p >= c.start && p < c.start + c.length) || p % 41 === 0;
      for (let p = region.start; p < region.start + region.length; p++) {
        if (!every(p)) continue;
        const bytes = Buffer.from(good);
        bytes[p] ^= 1 << (p % 8);
        fs.writeFileSync(bad, bytes);
        const hit = map.find((c) => p >= c.start && p < c.start + c.length);
        const where = `byte ${p} (${hit.name} chunk ${hit.index}, ${key ? 'sealed' : 'plain'})`;
        const lazy = await extractLazy(bad, out, { key });
        assert.deepEqual(fs.readdirSync(out), ['core-1.img'], where);
        for (const c of map) {
          const at = c.index * C;
          const len = Math.min(C, files[c.name].length - at);
          const read = lazy.pages.read(c.name, at, len);
          if (c === hit) {
            await rejectsWith(
              read,
              'EBADIMAGE',
              where,
              new RegExp(
                `bad\\.ckpt is damaged.*memory entry ${c.name.replace('.', '\\.')}, chunk index ${c.index} of`,
              ),
            );
          } else {
            assert.ok((await read).equals(files[c.name].subarray(at, at + len)), where);
          }
        }
        await lazy.pages.close();
        fs.unlinkSync(path.join(out, 'core-1.img'));
        await rejectsWith(
          verifyImage(bad, { key }),
          'EBADIMAGE',
          `${where} (verify)`,
          /chunk index/,
        );
        // readImageInfo checks no chunk: it is the quick look.
        assert.equal((await readImageInfo(bad, { key })).entries.length, 3, where);
        if (p % 7 === 0) {
          await rejectsWith(extractImage(bad, out, { key }), 'EBADIMAGE', `${where} (extract)`);
          assert.deepEqual(fs.readdirSync(out), [], where);
        }
      }
    }
  },
);

test('inspect --verify names the damaged chunk; without --verify it reads the tables only', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const { file, map } = await smallFile(root, undefined);
  const bytes = fs.readFileSync(file);
  bytes[map[1].start + 7] ^= 0x40;
  fs.writeFileSync(file, bytes);
  const run = (args) =>
    spawnSync(process.execPath, [cli, 'inspect', ...args, file], {
      encoding: 'utf8',
      timeout: 20_000,
    });
  const bad = run(['--verify']);
  assert.notEqual(bad.status, 0, bad.stdout);
  assert.match(bad.stderr, /memory entry pages-1\.img, chunk index 1 of 3 chunks/);
  const quick = run(['--json']);
  assert.equal(quick.status, 0, quick.stderr);
  assert.equal(JSON.parse(quick.stdout).formatVersion, 2);
});

/** Every reader refuses `bytes`, extractLazy included, each leaving nothing in `out`. */
async function allRefuse(root, bytes, key, label) {
  const file = path.join(root, 'moved.ckpt');
  fs.writeFileSync(file, bytes);
  const out = fs.mkdtempSync(path.join(root, 'out-'));
  await rejectsWith(verifyImage(file, { key }), 'EBADIMAGE', `${label} (verify)`);
  await rejectsWith(extractImage(file, out, { key }), 'EBADIMAGE', `${label} (extract)`);
  assert.deepEqual(fs.readdirSync(out), [], label);
  await assertLazyRefuses(file, out, label, { key });
  fs.rmSync(out, { recursive: true });
}

function swap(bytes, a, b) {
  const out = Buffer.from(bytes);
  bytes.subarray(a.start, a.start + a.length).copy(out, b.start);
  bytes.subarray(b.start, b.start + b.length).copy(out, a.start);
  return out;
}

/** `bytes` with its DATA length field set to `d` (the plain file's hash left as it was). */
function withD(bytes, sealed, d) {
  const out = Buffer.from(bytes);
  out.writeBigUInt64BE(BigInt(d), out.length - (sealed ? 16 : 48));
  return out;
}

test('chunks swapped, moved between entries or files, dropped, cut or appended are refused', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const key = randomBytes(32);
  for (const k of [undefined, key]) {
    const sealed = k !== undefined;
    const label = sealed ? 'sealed' : 'plain';
    const { file, map } = await smallFile(root, k, `a-${label}.ckpt`);
    const good = fs.readFileSync(file);
    // Within an entry (two full chunks), and between entries (chunk 0 of pages-1 and pages-2).
    await allRefuse(root, swap(good, map[0], map[1]), k, `${label}: swapped within an entry`);
    const twin = await smallFile(root, k, `twin-${label}.ckpt`, Buffer.alloc(2 * C + 100, 9));
    const same = fs.readFileSync(twin.file);
    // pages-1.img's chunks 0 and 1 are the same bytes here: only a sealed chunk knows its place.
    if (sealed)
      await allRefuse(
        root,
        swap(same, twin.map[0], twin.map[1]),
        k,
        'sealed: equal chunks swapped',
      );
    // Another file written with the same key (and the same bytes, even): its chunk does not fit.
    const other = await smallFile(root, k, `b-${label}.ckpt`, Buffer.alloc(2 * C + 100, 9));
    const ob = fs.readFileSync(other.file);
    const moved = Buffer.from(same);
    ob.copy(moved, twin.map[2].start, other.map[2].start, other.map[2].start + other.map[2].length);
    if (sealed) await allRefuse(root, moved, k, 'sealed: a chunk from another file');
    const mixed = Buffer.from(good);
    ob.copy(mixed, map[0].start, other.map[0].start, other.map[0].start + other.map[0].length);
    await allRefuse(root, mixed, k, `${label}: a chunk from another file`);
    // pages-2.img's chunk in place of pages-1.img's last (the same length when sealed or not).
    const last = map[2];
    const p2 = map[3];
    const between = Buffer.from(good);
    good.copy(between, last.start, p2.start, p2.start + Math.min(p2.length, last.length));
    await allRefuse(root, between, k, `${label}: a chunk from another entry`);
    // Dropped: the last chunk of pages-2.img taken out, D told so.
    const region = dataRegion(good, sealed);
    const dropped = Buffer.concat([
      good.subarray(0, p2.start),
      good.subarray(p2.start + p2.length),
    ]);
    await allRefuse(
      root,
      withD(dropped, sealed, region.length - p2.length),
      k,
      `${label}: dropped`,
    );
    // Appended to DATA, D told so; and appended to the file.
    const end = region.start + region.length;
    const grown = Buffer.concat([good.subarray(0, end), Buffer.alloc(64, 1), good.subarray(end)]);
    await allRefuse(root, withD(grown, sealed, region.length + 64), k, `${label}: DATA appended`);
    await allRefuse(root, Buffer.concat([good, Buffer.alloc(10)]), k, `${label}: file appended`);
    // Cut anywhere: the end (and what it says of DATA) goes, and every reader says so.
    for (let len = 0; len < good.length; len += len < 200 || len > good.length - 200 ? 1 : 97) {
      await allRefuse(root, good.subarray(0, len), k, `${label}: cut to ${len}`);
    }
  }
});

test('impossible numbers in a chunk table are refused before anything is allocated', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const chunks = pieces(randomBytes(2 * C + 10), C);
  const entry = (over) => ({ name: 'pages-1.img', chunks, ...over });
  const cases = [
    ['count 2^32-1', [entry({ table: { count: 0xffffffff } })], /claims 4294967295 chunks/],
    ['count 0 with bytes', [entry({ table: { count: 0 } })], /claims|chunk/],
    ['chunk size 0', [entry({ table: { chunk: 0 } })], /impossible chunk size 0/],
    ['chunk size 2^31', [entry({ table: { chunk: 2 ** 31 } })], /impossible chunk size/],
    [
      'decoded 2^63',
      [entry({ table: { decoded: 2n ** 63n } })],
      /claims 9223372036854775808 bytes/,
    ],
    ['codec 7', [entry({ table: { codec: 7 } })], /unknown codec 7/],
    ['zstd frames, not .zst', [entry({ table: { codec: 1 } })], /unknown codec 1/],
    ['chunked, not memory', [entry({ name: 'core-1.img' })], /chunked but not memory/],
    ['D larger than the file', [entry()], /memory part claims/, { dataLength: 2 ** 40 }],
    [
      'DATA longer than its chunks',
      [entry()],
      /sizes do not add up/,
      { extraData: Buffer.alloc(5) },
    ],
    ['unknown kind', [{ name: 'x', data: 'y' }], /unknown kind 7/],
  ];
  for (const [label, entries, message, extra = {}] of cases) {
    let bytes = buildV2({ entries, ...extra });
    if (label === 'unknown kind') {
      // The kind byte of the only entry, and the hash made to match again.
      const at = 16 + 4 + 2 + 4 + 2 + 1;
      bytes[at] = 7;
      const tailAt = bytes.length - 48;
      const hash = createHash('sha256')
        .update(bytes.subarray(0, 16))
        .update(bytes.subarray(16, tailAt + 8))
        .digest();
      hash.copy(bytes, bytes.length - 32);
    }
    const file = path.join(root, 'limits.ckpt');
    fs.writeFileSync(file, bytes);
    const out = fs.mkdtempSync(path.join(root, 'out-'));
    await rejectsWith(verifyImage(file), 'EBADIMAGE', `${label} (verify)`, message);
    await rejectsWith(readImageInfo(file), 'EBADIMAGE', `${label} (info)`, message);
    await rejectsWith(extractLazy(file, out), 'EBADIMAGE', `${label} (lazy)`, message);
    await rejectsWith(extractImage(file, out), 'EBADIMAGE', `${label} (extract)`, message);
    assert.deepEqual(fs.readdirSync(out), [], label);
  }
  // The control: the same builder, nothing impossible, is read.
  fs.writeFileSync(path.join(root, 'ok.ckpt'), buildV2({ entries: [entry()] }));
  const lazy = await extractLazy(
    path.join(root, 'ok.ckpt'),
    fs.mkdtempSync(path.join(root, 'ok-')),
  );
  assert.ok((await lazy.pages.read('pages-1.img', C, C)).equals(chunks[1]));
  await lazy.pages.close();
});

test('a damaged memory chunk found at a lazy read is a CheckptError naming file, entry and chunk', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const { file, map } = await smallFile(root, randomBytes(32).fill(3), 'named.ckpt');
  const bytes = fs.readFileSync(file);
  bytes[map[3].start] ^= 1;
  fs.writeFileSync(file, bytes);
  const key = Buffer.alloc(32, 3);
  const lazy = await extractLazy(file, fs.mkdtempSync(path.join(root, 'out-')), { key });
  const err = await lazy.pages.read('pages-2.img', 0, 50).catch((e) => e);
  assert.ok(err instanceof CheckptError);
  assert.equal(err.code, 'EBADIMAGE');
  assert.equal(err.path, file);
  assert.match(
    err.message,
    /named\.ckpt is damaged or was tampered with \(memory entry pages-2\.img, chunk index 0 of 1 chunks, fails its authentication check/,
  );
  // Still refused at the next read: nothing unchecked is kept.
  await rejectsWith(lazy.pages.read('pages-2.img', 10, 1), 'EBADIMAGE', 'again');
  assert.equal((await lazy.pages.read('pages-1.img', 0, 10)).length, 10);
  await lazy.pages.close();
});

test(
  'fuzz: random mutations of a format-2 plain file never verify, extract or serve',
  { timeout: 60_000 },
  async (t) => {
    const { mutate, xorshift32, assertReadersRefuse } = await import('../helpers.mjs');
    const seed = Number(process.env.CHECKPT_FUZZ_SEED ?? 0xfeed2);
    const next = xorshift32(seed);
    const below = (n) => (n <= 0 ? 0 : next() % n);
    const root = scratchDir(t, 'checkpt-v2-');
    const { file } = await smallFile(
      root,
      undefined,
      'fuzz-src.ckpt',
      Buffer.alloc(2 * C + 100, 4),
    );
    const good = fs.readFileSync(file);
    const target = path.join(root, 'fuzz.ckpt');
    const out = path.join(root, 'out');
    fs.mkdirSync(out);
    let servedThenRefused = 0;
    for (let i = 0; i < 250; i++) {
      const { bytes, ops } = mutate(good, below);
      if (bytes.equals(good)) continue;
      fs.writeFileSync(target, bytes);
      const where = `seed ${seed} iteration ${i} (${ops.join(' ')})`;
      await assertReadersRefuse(target, out, where);
      const lazy = await extractLazy(target, out).catch(() => undefined);
      if (lazy) {
        servedThenRefused++;
        await lazy.pages.close();
        for (const f of fs.readdirSync(out)) fs.unlinkSync(path.join(out, f));
      }
    }
    // Some mutations hit only memory: those were accepted lazily and refused at a read.
    assert.ok(servedThenRefused > 0, 'no mutation reached a chunk');
  },
);

test('BLAKE3 tables (flags bit 2): a file made by hand from the layout is read, a damaged chunk is found by every reader, the flag is bound by the file hash', async (t) => {
  const root = scratchDir(t, 'checkpt-v2-');
  const chunks = pieces(randomBytes(3 * C + 10), C);
  const entries = [
    { name: 'core-1.img', data: 'core' },
    { name: 'pages-1.img', chunks },
  ];
  const good = buildV2({ entries, blake3: true });
  const file = path.join(root, 'b3.ckpt');
  fs.writeFileSync(file, good);
  assert.equal((await verifyImage(file)).chunkHash, 'blake3');
  const out = fs.mkdtempSync(path.join(root, 'out-'));
  await extractImage(file, out);
  assert.ok(fs.readFileSync(path.join(out, 'pages-1.img')).equals(Buffer.concat(chunks)));
  const lazy = await extractLazy(file, fs.mkdtempSync(path.join(root, 'lazy-')));
  assert.ok((await lazy.pages.read('pages-1.img', 2 * C, C)).equals(chunks[2]));
  await lazy.pages.close();

  // One byte of chunk 2: the lazy read of it, and every eager reader, refuse.
  const bad = Buffer.from(good);
  bad[16 + 2 * C + 5] ^= 1;
  fs.writeFileSync(file, bad);
  const damaged = /checksum mismatch in memory entry pages-1\.img, chunk index 2 of 4 chunks/;
  const l2 = await extractLazy(file, fs.mkdtempSync(path.join(root, 'lazy-')));
  assert.ok((await l2.pages.read('pages-1.img', C, C)).equals(chunks[1]), 'a sound chunk');
  await rejectsWith(l2.pages.read('pages-1.img', 2 * C, C), 'EBADIMAGE', 'lazy', damaged);
  await l2.pages.close();
  await rejectsWith(verifyImage(file), 'EBADIMAGE', 'verify', damaged);
  const out2 = fs.mkdtempSync(path.join(root, 'out-'));
  await rejectsWith(extractImage(file, out2), 'EBADIMAGE', 'extract', damaged);

  // The flag cleared: the file's own hash fails; with the hash made to match, the SHA-256 check
  // of the first chunk does. Never a chunk taken on the wrong hash.
  const cleared = Buffer.from(good);
  cleared.writeUInt32BE(0, 12);
  fs.writeFileSync(file, cleared);
  await rejectsWith(verifyImage(file), 'EBADIMAGE', 'flag cleared', /checksum mismatch/);
  const tailAt = cleared.length - 48;
  createHash('sha256')
    .update(cleared.subarray(0, 16))
    .update(cleared.subarray(16 + Buffer.concat(chunks).length, tailAt + 8))
    .digest()
    .copy(cleared, cleared.length - 32);
  fs.writeFileSync(file, cleared);
  await rejectsWith(
    verifyImage(file),
    'EBADIMAGE',
    'flag cleared, hash fixed',
    /checksum mismatch in memory entry pages-1\.img, chunk index 0/,
  );

  // Flags that do not go together: BLAKE3 with a store, or on an encrypted file.
  for (const flags of [4 | 2, 4 | 1]) {
    const odd = Buffer.from(good);
    odd.writeUInt32BE(flags, 12);
    fs.writeFileSync(file, odd);
    await rejectsWith(readImageHeader(file), 'EBADIMAGE', `flags ${flags}`, /do not go together/);
  }
});
