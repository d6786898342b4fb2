import {
  assertReadersRefuse,
  mutate,
  rejectsWith,
  scratchDir,
  spawnSync,
  unitTest as test,
  xorshift32,
} from '../helpers.mjs';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import {
  FORMAT_VERSION,
  extractImage,
  readImageHeader,
  readImageInfo,
  verifyImage,
  writeImage,
} from '../../dist/image/format.js';
import { CheckptError } from '../../dist/common/errors.js';
import { assertRejected, build, sampleEntries, sampleManifest } from './layout.mjs';

test('round trip keeps manifest, entries and bytes, and the file has mode 0600', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  const files = {
    'b.img': Buffer.from('hello'),
    'empty.img': Buffer.alloc(0),
    'big.img': randomBytes(5 * 1024 * 1024),
    'exact.img': randomBytes(4 * 1024 * 1024 + 1),
    'a.img': Buffer.from('first'),
  };
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(src, name), data);
  const manifest = { version: 1, pid: 1234, argv: ['node', 'app.js'], nested: { ok: true } };
  const target = path.join(root, 'app.ckpt');

  const { bytes } = await writeImage(target, manifest, { dir: src });
  assert.equal(bytes, fs.statSync(target).size);
  assert.equal(fs.statSync(target).mode & 0o777, 0o600);

  const names = Object.keys(files).sort();
  const entries = names.map((name) => ({ name, size: files[name].length }));
  const info = await verifyImage(target);
  assert.deepEqual(info, {
    formatVersion: FORMAT_VERSION,
    manifest,
    entries,
    fileSize: bytes,
    encrypted: false,
    chunkHash: 'blake3',
  });
  const quick = await readImageInfo(target);
  assert.deepEqual(quick, { ...info, verified: false });

  const out = path.join(root, 'out');
  fs.mkdirSync(out);
  assert.deepEqual(await extractImage(target, out), info);
  assert.deepEqual(fs.readdirSync(out).sort(), names);
  for (const name of names) {
    assert.ok(fs.readFileSync(path.join(out, name)).equals(files[name]), name);
    assert.equal(fs.statSync(path.join(out, name)).mode & 0o777, 0o600);
  }
});

test('writeImage output matches the documented layout byte for byte', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  for (const e of sampleEntries) fs.writeFileSync(path.join(src, e.name), e.data);
  const target = path.join(root, 'x.ckpt');
  await writeImage(target, JSON.parse(sampleManifest), { dir: src }, { formatVersion: 1 });
  const expected = build({ manifest: sampleManifest, entries: sampleEntries });
  assert.ok(fs.readFileSync(target).equals(expected));
});

test('an explicit file list is packed in the given order under base names', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  fs.writeFileSync(path.join(root, 'z'), 'zz');
  fs.writeFileSync(path.join(root, 'a'), 'a');
  fs.writeFileSync(path.join(root, 'ignored'), 'not listed');
  const target = path.join(root, 'list.ckpt');
  await writeImage(target, {}, { dir: root, files: ['z', path.join(root, 'a')] });
  const info = await verifyImage(target);
  assert.deepEqual(info.entries, [
    { name: 'z', size: 2 },
    { name: 'a', size: 1 },
  ]);
  await rejectsWith(
    writeImage(path.join(root, 'dup.ckpt'), {}, { dir: root, files: ['a', './a'] }),
    'EIO',
    'duplicate names',
  );
  assert.equal(fs.existsSync(path.join(root, 'dup.ckpt')), false);
});

test('a manifest near the 1 MiB limit round-trips; a larger one is refused', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a.img'), 'data');
  const manifest = { notes: 'n'.repeat(1024 * 1024 - 100) };
  const target = path.join(root, 'big.ckpt');
  await writeImage(target, manifest, { dir: src });
  assert.deepEqual((await verifyImage(target)).manifest, manifest);
  assert.deepEqual((await readImageInfo(target)).manifest, manifest);

  const tooBig = { notes: 'n'.repeat(1024 * 1024) };
  await assert.rejects(writeImage(path.join(root, 'huge.ckpt'), tooBig, { dir: src }), RangeError);
  assert.deepEqual(fs.readdirSync(root).sort(), ['big.ckpt', 'src']);
});

test('a failed write leaves the old target intact and no temporary file', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a.img'), 'data');
  fs.mkdirSync(path.join(src, 'sub'));
  const target = path.join(root, 'app.ckpt');
  const old = randomBytes(1000);
  fs.writeFileSync(target, old);

  await assert.rejects(writeImage(target, {}, { dir: src }), (err) => {
    assert.ok(err instanceof CheckptError);
    assert.match(err.message, /sub/);
    return true;
  });
  assert.ok(fs.readFileSync(target).equals(old));
  assert.deepEqual(fs.readdirSync(root).sort(), ['app.ckpt', 'src']);

  // A failure at the very end (rename onto a non-empty directory) must also clean up.
  fs.rmdirSync(path.join(src, 'sub'));
  const dirTarget = path.join(root, 'taken');
  fs.mkdirSync(dirTarget);
  fs.writeFileSync(path.join(dirTarget, 'keep'), 'keep');
  await assert.rejects(writeImage(dirTarget, {}, { dir: src }), CheckptError);
  assert.deepEqual(fs.readdirSync(dirTarget), ['keep']);
  assert.deepEqual(fs.readdirSync(root).sort(), ['app.ckpt', 'src', 'taken']);

  await rejectsWith(
    writeImage(path.join(root, 'missing', 'x.ckpt'), {}, { dir: src }),
    'ETARGET',
    'missing target directory',
  );
});

test('written on the calling thread (direct), the file is the same, and fails the same ways', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  // Memory in plain chunks over several 1 MiB writes, and the entries besides it.
  fs.writeFileSync(path.join(src, 'pages-1.img'), randomBytes(3 * 1024 * 1024 + 4096));
  fs.writeFileSync(path.join(src, 'core-1.img'), randomBytes(5000));
  fs.writeFileSync(path.join(src, 'empty.img'), Buffer.alloc(0));
  const manifest = { pid: 1, direct: 'either way' };
  const pooled = path.join(root, 'pooled.ckpt');
  const direct = path.join(root, 'direct.ckpt');
  await writeImage(pooled, manifest, { dir: src });
  const { bytes } = await writeImage(direct, manifest, { dir: src }, { direct: true });
  assert.equal(bytes, fs.statSync(direct).size);
  assert.equal(fs.statSync(direct).mode & 0o777, 0o600);
  assert.ok(fs.readFileSync(direct).equals(fs.readFileSync(pooled)));
  assert.deepEqual((await verifyImage(direct)).manifest, manifest);

  // A directory among the files, and a target directory that does not exist.
  fs.mkdirSync(path.join(src, 'sub'));
  await rejectsWith(
    writeImage(direct, {}, { dir: src }, { direct: true }),
    'EIO',
    'a directory to pack',
  );
  fs.rmdirSync(path.join(src, 'sub'));
  await rejectsWith(
    writeImage(path.join(root, 'missing', 'x.ckpt'), {}, { dir: src }, { direct: true }),
    'ETARGET',
    'missing target directory',
  );
  // A failure at the rename leaves nothing behind, and the old file as it was.
  const taken = path.join(root, 'taken');
  fs.mkdirSync(taken);
  fs.writeFileSync(path.join(taken, 'keep'), 'keep');
  await assert.rejects(writeImage(taken, {}, { dir: src }, { direct: true }), CheckptError);
  assert.deepEqual(fs.readdirSync(taken), ['keep']);
  assert.deepEqual(fs.readdirSync(root).sort(), ['direct.ckpt', 'pooled.ckpt', 'src', 'taken']);
});

test('a symlink at the target is replaced, not followed', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a.img'), 'data');
  const victim = path.join(root, 'victim');
  fs.writeFileSync(victim, 'precious');
  const target = path.join(root, 'app.ckpt');
  fs.symlinkSync(victim, target);

  await writeImage(target, {}, { dir: src });
  assert.ok(fs.lstatSync(target).isFile());
  assert.equal(fs.readFileSync(victim, 'utf8'), 'precious');
  assert.equal((await verifyImage(target)).entries.length, 1);
});

test('truncation at every structural boundary is rejected', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const good = build({ manifest: sampleManifest, entries: sampleEntries });
  const m = Buffer.byteLength(sampleManifest);
  const first = 20 + m + 4;
  const nameLen = Buffer.byteLength(sampleEntries[0].name);
  const cuts = {
    empty: 0,
    'in magic': 5,
    'after magic': 8,
    'in version': 10,
    'in flags': 14,
    'in manifest length': 18,
    'mid-manifest': 20 + Math.floor(m / 2),
    'in count': 20 + m + 2,
    'in name length': first + 1,
    'mid-name': first + 2 + Math.floor(nameLen / 2),
    'mid-size': first + 2 + nameLen + 4,
    'mid-data': first + 2 + nameLen + 8 + 5,
    'before trailer': good.length - 40,
    'mid-trailer': good.length - 36,
    'mid-hash': good.length - 16,
    '1 byte short': good.length - 1,
  };
  for (const [label, len] of Object.entries(cuts)) {
    assert.ok(len < good.length);
    await assertRejected(root, good.subarray(0, len), 'EBADIMAGE', label);
    await rejectsWith(readImageInfo(path.join(root, 'bad.ckpt')), 'EBADIMAGE', `${label} (info)`);
  }
  const file = path.join(root, 'bad.ckpt');
  fs.writeFileSync(file, good.subarray(0, good.length - 1));
  await assert.rejects(verifyImage(file), /truncated|damaged/);
});

test('flipped bytes are caught by the checksum', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const good = build({ manifest: sampleManifest, entries: sampleEntries });
  const m = Buffer.byteLength(sampleManifest);
  const data = good.indexOf('core data here');
  const positions = {
    manifest: 20 + 5,
    'first data byte': data,
    'last data byte': good.length - 41,
    'hash start': good.length - 32,
    'hash end': good.length - 1,
    'manifest length': 19,
    count: 20 + m + 3,
  };
  for (const [label, pos] of Object.entries(positions)) {
    const bad = Buffer.from(good);
    bad[pos] ^= 0x04;
    await assertRejected(root, bad, 'EBADIMAGE', label);
  }
  const bad = Buffer.from(good);
  bad[data] ^= 1;
  const file = path.join(root, 'bad.ckpt');
  fs.writeFileSync(file, bad);
  await assert.rejects(verifyImage(file), /checksum mismatch/);
  // The cheap reader does not hash, so it accepts this one and says so.
  assert.equal((await readImageInfo(file)).verified, false);
});

test('a newer format version and unknown flags are refused', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  await assertRejected(root, build({ version: 3 }), 'EIMAGEVERSION', 'version 3');
  const file = path.join(root, 'v3.ckpt');
  fs.writeFileSync(file, build({ version: 3, entries: sampleEntries }));
  await assert.rejects(verifyImage(file), /newer checkpt \(format 3.*upgrade checkpt/);
  await rejectsWith(readImageInfo(file), 'EIMAGEVERSION', 'version 3 (info)');
  await assertRejected(root, build({ version: 0 }), 'EBADIMAGE', 'version 0');
  await assertRejected(root, build({ flags: 2 }), 'EBADIMAGE', 'flag bit 1');
  // Bit 0 is "encrypted": without a key that is what is said, whatever follows.
  await assertRejected(root, build({ flags: 1 }), 'EKEY', 'flag bit 0');
  await assertRejected(root, build({ flags: 0x80000000 }), 'EBADIMAGE', 'flag bit 31');
});

test("another tool's file is reported as not a checkpt file", async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const others = {
    gzip: [Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0x00]), randomBytes(200)]), /gzip/],
    text: [Buffer.from('hello world\nthis is not a checkpoint\n'.repeat(5)), /text file/],
    short: [Buffer.from('abc'), /text file/],
    'almost magic': [Buffer.concat([Buffer.from('CHECKPX\n'), randomBytes(100)]), /signature/],
  };
  for (const [label, [bytes, hint]] of Object.entries(others)) {
    await assertRejected(root, bytes, 'EBADIMAGE', label);
    await assert.rejects(verifyImage(path.join(root, 'bad.ckpt')), /not a checkpt file/, label);
    await assert.rejects(verifyImage(path.join(root, 'bad.ckpt')), hint, label);
  }
});

test('hostile or invalid entry names are refused before anything is written', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const hostile = {
    'parent path': [{ name: '../x', data: 'evil' }],
    'absolute path': [{ name: '/tmp/x', data: 'evil' }],
    'absolute path into /etc': [{ name: '/etc/x', data: 'evil' }],
    'parent of a parent': [{ name: '../../x', data: 'evil' }],
    'trailing slash': [{ name: 'x/', data: 'evil' }],
    'NUL at the end': [{ name: 'x\0', data: 'evil' }],
    'C1 control': [{ name: 'x\u0085', data: 'evil' }],
    'nested path': [{ name: 'a/b', data: 'evil' }],
    backslash: [{ name: 'a\\b', data: 'evil' }],
    dot: [{ name: '.', data: 'evil' }],
    'dot dot': [{ name: '..', data: 'evil' }],
    empty: [{ name: '', data: 'evil' }],
    newline: [{ name: 'a\nb', data: 'evil' }],
    nul: [{ name: 'a\0b', data: 'evil' }],
    'invalid UTF-8': [{ name: Buffer.from([0x61, 0xff]), data: 'evil' }],
    'over 255 bytes': [{ name: 'n'.repeat(256), data: 'evil' }],
    duplicate: [
      { name: 'x', data: 'one' },
      { name: 'x', data: 'two' },
    ],
    'duplicate after a good one': [
      { name: 'ok', data: 'fine' },
      { name: 'x', data: '' },
      { name: 'x', data: '' },
    ],
  };
  for (const [label, entries] of Object.entries(hostile)) {
    await assertRejected(root, build({ entries }), 'EBADIMAGE', label);
    assert.equal(fs.existsSync(path.join(root, 'x')), false, label);
  }
});

test('lengths larger than the file are refused without huge allocations', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const cases = {
    'manifest length 4 GiB': build({ manifestLength: 0xffffffff }),
    'manifest length just over 1 MiB': build({ manifestLength: 1024 * 1024 + 1 }),
    'manifest length past the end': build({ manifestLength: 1000 }),
    'entry size 1 TiB': build({ entries: [{ name: 'a', data: 'abc', size: 2 ** 40 }] }),
    'entry size 2^64-1': build({ entries: [{ name: 'a', data: 'abc', size: 2n ** 64n - 1n }] }),
    'entry size one too many': build({ entries: [{ name: 'a', data: 'abc', size: 4 }] }),
    'entry size one too few': build({ entries: [{ name: 'a', data: 'abc', size: 2 }] }),
    'count 2^32-1': build({ count: 0xffffffff }),
    'count 100000': build({ count: 100000 }),
    'count too small': build({ entries: sampleEntries, count: 2 }),
    'count too large': build({ entries: sampleEntries, count: 4 }),
    'manifest not JSON': build({ manifest: '{nope' }),
    'manifest an array': build({ manifest: '[1,2]' }),
  };
  const before = process.memoryUsage().rss;
  for (const [label, bytes] of Object.entries(cases)) {
    await assertRejected(root, bytes, 'EBADIMAGE', label);
    await rejectsWith(readImageInfo(path.join(root, 'bad.ckpt')), 'EBADIMAGE', `${label} (info)`);
  }
  assert.ok(process.memoryUsage().rss - before < 256 * 1024 * 1024, 'memory grew too much');
});

test('files that cannot be opened get clear errors', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  await rejectsWith(verifyImage(path.join(root, 'nope.ckpt')), 'EIO', 'missing file');
  await assert.rejects(verifyImage(path.join(root, 'nope.ckpt')), { code: 'EIO', errno: 'ENOENT' });
  await assert.rejects(verifyImage(path.join(root, 'nope.ckpt')), /does not exist/);
  await rejectsWith(verifyImage(root), 'EBADIMAGE', 'directory');
  await assert.rejects(verifyImage(root), { code: 'EBADIMAGE', errno: 'EISDIR' });
  const file = path.join(root, 'ok.ckpt');
  fs.writeFileSync(file, build({ entries: sampleEntries }));
  const out = path.join(root, 'out');
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, 'other'), '');
  await rejectsWith(extractImage(file, out), 'ETARGET', 'non-empty extract dir');
  await assert.rejects(extractImage(file, out), { code: 'ETARGET', errno: 'ENOTEMPTY' });
  await rejectsWith(extractImage(file, path.join(root, 'absent')), 'ETARGET', 'missing dir');
  await assert.rejects(extractImage(file, path.join(root, 'absent')), {
    code: 'ETARGET',
    errno: 'ENOENT',
  });
});

test(
  'fuzz: random mutations never verify and never escape as other errors',
  { timeout: 30_000 },
  async (t) => {
    const seed = Number(process.env.CHECKPT_FUZZ_SEED ?? 0x5eed1234);
    const next = xorshift32(seed);
    const below = (n) => (n <= 0 ? 0 : next() % n);
    const root = scratchDir(t, 'checkpt-img-');
    const good = build({ manifest: sampleManifest, entries: sampleEntries });
    const file = path.join(root, 'fuzz.ckpt');
    fs.writeFileSync(file, good);
    const original = await verifyImage(file);
    const out = path.join(root, 'out');
    fs.mkdirSync(out);

    for (let i = 0; i < 300; i++) {
      const { bytes, ops } = mutate(good, below);
      const where = `seed ${seed} iteration ${i} (${ops.join(' ')})`;
      fs.writeFileSync(file, bytes);
      if (bytes.equals(good)) {
        assert.deepEqual(await verifyImage(file), original, where);
        continue;
      }
      await assertReadersRefuse(file, out, where);
    }
  },
);

test('truncation at every length short of the whole file is refused, by every reader', async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  // Every structural boundary of every entry, the trailer magic and the hash are among these.
  const good = build({ manifest: sampleManifest, entries: sampleEntries });
  const file = path.join(root, 'cut.ckpt');
  const out = path.join(root, 'out');
  fs.mkdirSync(out);
  for (let len = 0; len < good.length; len++) {
    fs.writeFileSync(file, good.subarray(0, len));
    for (const [name, run] of [
      ['verify', () => verifyImage(file)],
      ['info', () => readImageInfo(file)],
      ['extract', () => extractImage(file, out)],
    ]) {
      await rejectsWith(run(), 'EBADIMAGE', `cut to ${len} (${name})`);
      assert.deepEqual(fs.readdirSync(out), [], `cut to ${len} (${name}) left files`);
    }
  }
  fs.writeFileSync(file, good);
  assert.equal((await verifyImage(file)).entries.length, sampleEntries.length);
});

test("the manifest is its writer's: kept as it is, refused when checkManifest says why", async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  // Any JSON object: image/ knows none of its fields, so a size nobody checks is kept.
  const bytes = build({ manifest: JSON.stringify({ imageBytes: 1 }), entries: sampleEntries });
  const file = path.join(root, 'bad.ckpt');
  fs.writeFileSync(file, bytes);
  assert.deepEqual((await verifyImage(file)).manifest, { imageBytes: 1 });
  const seen = [];
  const checkManifest = (manifest, entries) => {
    seen.push([manifest, entries]);
    return 'it says so';
  };
  await assertRejected(root, bytes, 'EBADIMAGE', 'checked', { checkManifest });
  await rejectsWith(readImageInfo(file, { checkManifest }), 'EBADIMAGE', 'info', /\(it says so\)/);
  const entries = sampleEntries.map((e) => ({ name: e.name, size: e.data.length }));
  assert.equal(seen.length, 3);
  for (const s of seen) assert.deepEqual(s, [{ imageBytes: 1 }, entries]);
});

test("other tools' files and things that are not files are refused without hanging", async (t) => {
  const root = scratchDir(t, 'checkpt-img-');
  const tarHeader = Buffer.alloc(1024);
  tarHeader.write('server.ckpt', 0);
  tarHeader.write('0000644\0', 100);
  tarHeader.write('ustar\x0000', 257);
  const files = {
    tar: [tarHeader, /signature/],
    gzip: [zlib.gzipSync(build({ entries: sampleEntries })), /gzip/],
    ELF: [fs.readFileSync(process.execPath).subarray(0, 4096), /executable/],
    zip: [Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), randomBytes(100)]), /zip/],
    JSON: [Buffer.from('{"pid": 1, "imageBytes": 10}\n'), /text file/],
    empty: [Buffer.alloc(0), /is empty/],
    'CRIU image': [Buffer.from([0x54, 0x4b, 0x18, 0x58, 0x2a, 0, 0, 0]), /signature/],
  };
  for (const [label, [bytes, hint]] of Object.entries(files)) {
    await assertRejected(root, bytes, 'EBADIMAGE', label);
    await assert.rejects(verifyImage(path.join(root, 'bad.ckpt')), hint, label);
  }

  // A FIFO with no writer would block a plain open forever; a device could act when opened.
  const fifo = path.join(root, 'fifo.ckpt');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const viaLink = path.join(root, 'fifo-link.ckpt');
  fs.symlinkSync(fifo, viaLink);
  for (const p of [fifo, viaLink, '/dev/null', '/dev/zero']) {
    for (const run of [verifyImage, readImageInfo, readImageHeader]) {
      await rejectsWith(run(p), 'EBADIMAGE', p, /not a regular file/);
    }
    const out = fs.mkdtempSync(path.join(root, 'out-'));
    await rejectsWith(extractImage(p, out), 'EBADIMAGE', `${p} (extract)`, /not a regular file/);
  }
  await rejectsWith(readImageHeader(root), 'EBADIMAGE', 'directory', /is a directory/);
  const dangling = path.join(root, 'dangling.ckpt');
  fs.symlinkSync(path.join(root, 'gone'), dangling);
  await rejectsWith(verifyImage(dangling), 'EIO', 'dangling symlink', /does not exist/);

  // A symlink to a real checkpoint (a "latest.ckpt" link) is followed: it names a regular file.
  const real = path.join(root, 'real.ckpt');
  fs.writeFileSync(real, build({ entries: sampleEntries }));
  const latest = path.join(root, 'latest.ckpt');
  fs.symlinkSync(real, latest);
  assert.equal((await verifyImage(latest)).entries.length, sampleEntries.length);
});
