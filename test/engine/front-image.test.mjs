// The resume front's reader (native/front-image.c, run as `checkpt-helper unpack FILE DIR`) against
// the TypeScript one: real files from writeImage unpacked by both and compared byte for byte and
// mode for mode, the memory entries' tables against the file's bytes; damaged, hostile, untrusted
// and not-for-it files refused as extractLazy refuses them, with nothing left behind.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CheckptError } from '../../dist/common/errors.js';
import { manifestProblem } from '../../dist/engine/manifest.js';
import { extractImage, extractLazy, writeImage } from '../../dist/image/format.js';
import { parseFile, withImage } from '../../dist/image/read.js';
import { untrustedReason } from '../../dist/image/trust.js';
import { mutate, root, scratchDir, spawnSync, unitTest, xorshift32 } from '../helpers.mjs';
import { buildV2, pieces, readV2 } from '../image/layout.mjs';

// A sanitizer build of the same sources can be put in its place (CHECKPT_TEST_FRONT_HELPER).
const HELPER = process.env.CHECKPT_TEST_FRONT_HELPER || path.join(root, 'build', 'checkpt-helper');
const skip = fs.existsSync(HELPER) ? false : `needs ${HELPER}: npm run build (with a C compiler)`;
const test = (name, fn, opts = {}) => unitTest(name, { skip, ...opts }, fn);

const OK = 0;
const NOT_HERE = 11;
const BAD = 12;
const UNTRUSTED = 13;
const IO = 14;
const WORD = { [NOT_HERE]: 'not-here', [BAD]: 'bad', [UNTRUSTED]: 'untrusted', [IO]: 'io' };
// What the restore passes extractLazy (src/engine/restore.ts), but the zstd decoder.
const TS_OPTIONS = { requireTrusted: true, checkManifest: manifestProblem };
const sha = (b) => createHash('sha256').update(b).digest('hex');

function unpackC(file, dir, env) {
  const r = spawnSync(HELPER, ['unpack', file, dir], {
    encoding: 'utf8',
    ...(env && { env: { ...process.env, ...env } }),
  });
  assert.equal(r.signal, null, `the helper died of ${r.signal}: ${r.stderr}`);
  return r;
}

/** extractLazy's verdict: 'ok' (the memory left in the file), 'not-here' (undefined), or its code. */
async function unpackTS(file, dir) {
  try {
    const lazy = await extractLazy(file, dir, TS_OPTIONS);
    if (lazy === undefined) return { outcome: 'not-here' };
    await lazy.pages.close();
    return { outcome: 'ok', info: lazy.info };
  } catch (e) {
    if (!(e instanceof CheckptError)) throw e;
    return { outcome: e.code, message: e.message };
  }
}
const STATUS_OF = {
  ok: OK,
  'not-here': NOT_HERE,
  EBADIMAGE: BAD,
  EIMAGEVERSION: NOT_HERE,
  EKEY: NOT_HERE,
};

/** Every file in `dir`: name, type and mode, size and content hash. */
function snapshot(dir) {
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => {
      const p = path.join(dir, name);
      const st = fs.lstatSync(p);
      return { name, mode: st.mode.toString(8), size: st.size, sha: sha(fs.readFileSync(p)) };
    });
}

/** A format-2 plain file's INDEX, by the documented layout (test/image/layout.mjs readV2). */
function indexOf(bytes) {
  const x = readV2(bytes);
  const entries = x.entries.map((e) =>
    e.chunks === undefined
      ? { name: e.name, kind: 0, data: e.data }
      : { ...e, kind: 1, count: e.chunks.length, table: e.rows },
  );
  return { flags: x.flags, manifest: x.manifestBytes, entries, blake3: x.blake3 };
}

/** What `unpack` must print for a good file, from its bytes alone. */
function expectedLines(bytes) {
  const x = indexOf(bytes);
  const mem = x.entries.filter((e) => e.kind === 1);
  return [
    `ok flags=${x.flags} manifest=${x.manifest.length} mem=${mem.length}`,
    ...mem.map(
      (e) =>
        `mem ${e.name} id=${Number(/^pages-(\d+)\./.exec(e.name)[1])} zstd=${e.codec} ` +
        `chunk=${e.chunk} size=${e.decoded} count=${e.count} first=${e.first} table=${sha(e.table)}`,
    ),
  ];
}

/** The file repacked with a right hash: whatever is wrong is wrong on purpose. */
function pack({ manifest, entries, blake3 }) {
  return buildV2({ manifest, entries, blake3 });
}

/** The entries of a good file in buildV2's terms. */
function entriesOf(bytes) {
  return indexOf(bytes).entries.map((e) =>
    e.kind === 0
      ? { name: e.name, data: e.data }
      : { name: e.name, chunks: e.chunks, codec: e.codec, chunk: e.chunk, decoded: e.decoded },
  );
}

/** `bytes` with the hash over PREFIX | INDEX | D made right again (when its TAIL is readable). */
function rehash(bytes) {
  const b = Buffer.from(bytes);
  if (b.length < 72) return b;
  const d = b.readBigUInt64BE(b.length - 48);
  if (d > BigInt(b.length - 72)) return b;
  createHash('sha256')
    .update(b.subarray(0, 16))
    .update(b.subarray(16 + Number(d), b.length - 48))
    .update(b.subarray(b.length - 48, b.length - 40))
    .digest()
    .copy(b, b.length - 32);
  return b;
}

/** Where INDEX starts in a format-2 plain file. */
const indexStart = (bytes) => 16 + Number(bytes.readBigUInt64BE(bytes.length - 48));

/** The offset of the byte right after entry `name`'s name in INDEX (its kind). */
function kindAt(bytes, name) {
  const n = Buffer.from(name);
  const at = bytes.indexOf(n, indexStart(bytes));
  assert.ok(at > 0, `no entry ${name}`);
  return at + n.length;
}

/** A directory of CRIU-like images: memory (pages-1 of `mib` MiB, random-ish) and the rest. */
function images(rootDir, name, { mib = 3, zstd } = {}) {
  const dir = path.join(rootDir, name);
  fs.mkdirSync(dir);
  const pages = Buffer.concat([
    randomBytes(mib * 1024 * 1024 - 70000),
    Buffer.alloc(65536, 0x5a), // a run that compresses
    randomBytes(70000 - 65536 + 1234),
  ]);
  const files = {
    'inventory.img': randomBytes(61),
    'pagemap-1.img': randomBytes(4000),
    'core-1.img': randomBytes(2500),
    'mm-1.img': randomBytes(900),
    'fs-1.img': Buffer.alloc(0),
    // More than the helper's 64 KiB window: read into place, its last piece through the window.
    'tmpfs-dev-12.tar.gz.img': randomBytes(1024 * 1024 + 4321),
    'fdinfo-2 é ünïcode.img': Buffer.from('names need not be ASCII'),
    'pages-2.img': randomBytes(5000),
  };
  for (const [n, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, n), data);
  if (zstd === 'frames') {
    // One zstd frame per 64 KiB, each saying its size: what compressImages() makes with Node's
    // zlib, and what format 2 stores as codec 1 (a chunk per frame).
    const parts = path.join(rootDir, `${name}-parts`);
    fs.mkdirSync(parts);
    const names = pieces(pages, 65536).map((p, i) => {
      const f = path.join(parts, String(i).padStart(5, '0'));
      fs.writeFileSync(f, p);
      return f;
    });
    const r = spawnSync('zstd', ['-q', '-1', '-c', ...names], { maxBuffer: 1 << 26 });
    assert.equal(r.status, 0, `zstd: ${r.stderr}`);
    fs.writeFileSync(path.join(dir, 'pages-1.img.zst'), r.stdout);
    fs.rmSync(parts, { recursive: true });
  } else if (zstd === 'stream') {
    const r = spawnSync('zstd', ['-q', '-1', '-c'], { input: pages, maxBuffer: 1 << 26 });
    assert.equal(r.status, 0, `zstd: ${r.stderr}`);
    fs.writeFileSync(path.join(dir, 'pages-1.img.zst'), r.stdout);
  } else {
    fs.writeFileSync(path.join(dir, 'pages-1.img'), pages);
  }
  const packed = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
  return { dir, packed };
}

/** Unpacks `file` with both readers into fresh directories and returns both. */
async function both(rootDir, file, env) {
  const cDir = fs.mkdtempSync(path.join(rootDir, 'c-'));
  const tsDir = fs.mkdtempSync(path.join(rootDir, 'ts-'));
  const c = unpackC(file, cDir, env);
  const ts = await unpackTS(file, tsDir);
  return { c, ts, cDir, tsDir };
}

/** `bytes` at a new file in `rootDir`: `unpack` refuses it with `status`, as extractLazy does. */
async function assertRefused(rootDir, bytes, status, label, { tsOutcome, message } = {}) {
  const file = path.join(rootDir, 'bad.ckpt');
  fs.writeFileSync(file, bytes, { mode: 0o600 });
  const before = fs.readdirSync(rootDir).sort();
  const { c, ts, cDir, tsDir } = await both(rootDir, file);
  assert.equal(c.status, status, `${label}: exit ${c.status}: ${c.stderr}${c.stdout}`);
  assert.equal(c.stdout, '', `${label}: printed ${c.stdout}`);
  assert.match(c.stderr, new RegExp(`^${WORD[status]} \\S.*\\n$`), label);
  if (message) assert.match(c.stderr, message, label);
  assert.deepEqual(fs.readdirSync(cDir), [], `${label}: the helper left files behind`);
  const want = tsOutcome ?? Object.keys(STATUS_OF).find((k) => STATUS_OF[k] === status);
  assert.equal(ts.outcome, want, `${label}: extractLazy said ${ts.outcome}: ${ts.message}`);
  if (ts.outcome !== 'ok')
    assert.deepEqual(fs.readdirSync(tsDir), [], `${label}: extractLazy left files behind`);
  fs.rmSync(cDir, { recursive: true });
  fs.rmSync(tsDir, { recursive: true });
  fs.rmSync(file);
  assert.deepEqual(
    fs.readdirSync(rootDir).sort(),
    before.filter((n) => n !== 'bad.ckpt'),
  );
}

/** Both readers accept `file` and unpack the same files; `unpack` reports what the file holds. */
async function assertSame(rootDir, file, label) {
  const { c, ts, cDir, tsDir } = await both(rootDir, file);
  assert.equal(c.status, OK, `${label}: exit ${c.status}: ${c.stderr}`);
  assert.equal(c.stderr, '', label);
  const bytes = fs.readFileSync(file);
  const lines = c.stdout.trimEnd().split('\n');
  assert.deepEqual(lines, expectedLines(bytes), `${label}: what unpack reports`);
  // The TypeScript reader's own view of the memory entries (chunks.ts: ChunkedEntry).
  const parsed = await withImage(file, (src) => parseFile(src, { verify: true, lazy: true }));
  assert.deepEqual(
    lines.slice(1).map((l) => l.split(' ').slice(1, 2).concat(l.split(' ').slice(3, 8)).join(' ')),
    parsed.chunked.map(
      (e) =>
        `${e.name} zstd=${e.codec} chunk=${e.chunk} size=${e.decoded} count=${e.stored.length} first=${e.offsets[0] ?? 0}`,
    ),
    `${label}: against parseFile`,
  );
  for (const [i, e] of parsed.chunked.entries())
    assert.ok(lines[i + 1].endsWith(`table=${sha(e.table)}`), `${label}: table of ${e.name}`);
  // What extractLazy wrote; where this Node cannot serve zstd frames itself, what extractImage
  // writes but the memory.
  let want;
  if (ts.outcome === 'ok') want = snapshot(tsDir);
  else {
    assert.equal(ts.outcome, 'not-here', `${label}: extractLazy said ${ts.message}`);
    assert.ok(
      parsed.chunked.some((e) => e.codec === 1),
      `${label}: extractLazy declined`,
    );
    await extractImage(file, tsDir, TS_OPTIONS);
    for (const e of parsed.chunked) fs.rmSync(path.join(tsDir, e.name));
    want = snapshot(tsDir);
  }
  const got = snapshot(cDir);
  assert.deepEqual(got, want, `${label}: the unpacked files`);
  const inline = indexOf(bytes).entries.filter((e) => e.kind === 0);
  assert.deepEqual(
    got.map((f) => f.name),
    inline.map((e) => e.name).sort(),
    `${label}: every inline entry, and nothing else`,
  );
  for (const e of inline)
    assert.ok(fs.readFileSync(path.join(cDir, e.name)).equals(e.data), `${label}: ${e.name}`);
  fs.rmSync(cDir, { recursive: true });
  fs.rmSync(tsDir, { recursive: true });
  return lines;
}

test('real files from writeImage unpack as extractLazy unpacks them: SHA-256, BLAKE3, small chunks, zstd frames', async (t) => {
  const rootDir = scratchDir(t, 'checkpt-front-');
  const plain = images(rootDir, 'plain');
  const frames = images(rootDir, 'frames', { zstd: 'frames', mib: 2 });
  // 2,305 chunks of 4 KiB: a chunk table of 82,980 bytes, read into place past the window.
  const long = images(rootDir, 'long', { mib: 9 });
  const cases = [
    ['SHA-256 tables', plain, { chunkHash: 'sha256' }, { flags: 0, chunk: 65536, zstd: 0 }],
    ['BLAKE3 tables', plain, { chunkHash: 'blake3' }, { flags: 4, chunk: 65536, zstd: 0 }],
    ['4 KiB chunks', plain, { chunkHash: 'sha256', memoryChunk: 4096 }, { flags: 0, chunk: 4096 }],
    [
      'a chunk table longer than the window',
      long,
      { chunkHash: 'blake3', memoryChunk: 4096 },
      { flags: 4, chunk: 4096, zstd: 0, mib: 9 },
    ],
    ['zstd frames', frames, { chunkHash: 'sha256' }, { flags: 0, chunk: 65536, zstd: 1 }],
    ['zstd frames, BLAKE3', frames, { chunkHash: 'blake3' }, { flags: 4, zstd: 1 }],
  ];
  for (const [label, src, options, want] of cases) {
    const file = path.join(rootDir, 'x.ckpt');
    await writeImage(file, { pid: 42, packedBytes: src.packed }, { dir: src.dir }, options);
    const lines = await assertSame(rootDir, file, label);
    // The real values, not only agreement.
    assert.match(lines[0], new RegExp(`^ok flags=${want.flags} manifest=\\d+ mem=2$`), label);
    const mem = lines.filter((l) => l.startsWith('mem pages-1.img'));
    assert.equal(mem.length, 1, label);
    if (want.zstd !== undefined) assert.match(mem[0], new RegExp(` zstd=${want.zstd} `), label);
    if (want.chunk) assert.match(mem[0], new RegExp(` chunk=${want.chunk} `), label);
    if (want.zstd !== 1) {
      const size = (want.mib ?? (src === plain ? 3 : 2)) * 1024 * 1024 + 1234;
      const count = Math.ceil(size / (want.chunk ?? 65536));
      assert.match(
        mem[0],
        new RegExp(` id=1 zstd=0 chunk=\\d+ size=${size} count=${count} first=`),
      );
    }
    const count2 = Math.ceil(5000 / (want.chunk ?? 65536));
    assert.ok(
      lines.some((l) =>
        new RegExp(` pages-2\\.img id=2 zstd=0 chunk=\\d+ size=5000 count=${count2} `).test(l),
      ),
      label,
    );
    fs.rmSync(file);
  }
  // No memory at all, and a memory entry of no bytes (K = 0).
  const bare = path.join(rootDir, 'bare');
  fs.mkdirSync(bare);
  fs.writeFileSync(path.join(bare, 'core-1.img'), 'c');
  fs.writeFileSync(path.join(bare, 'pages-7.img'), '');
  const file = path.join(rootDir, 'bare.ckpt');
  await writeImage(file, { pid: 1 }, { dir: bare }, { chunkHash: 'sha256' });
  const lines = await assertSame(rootDir, file, 'empty memory');
  assert.match(
    lines[1],
    /^mem pages-7\.img id=7 zstd=0 chunk=65536 size=0 count=0 first=0 table=e3b0c442/,
  );
  // Memory beyond the front's 256 MiB for the other images (those it keeps as hashed): its own.
  const big = path.join(rootDir, 'big');
  fs.mkdirSync(big);
  fs.writeFileSync(path.join(big, 'core-1.img'), 'c');
  // After the memory in the index, as CRIU's names fall: pstree.img, seccomp.img, ...
  fs.writeFileSync(path.join(big, 'pstree.img'), 'p');
  fs.writeFileSync(path.join(big, 'pages-1.img'), '');
  fs.truncateSync(path.join(big, 'pages-1.img'), 300 * 2 ** 20);
  const bigFile = path.join(rootDir, 'big.ckpt');
  await writeImage(bigFile, { pid: 1 }, { dir: big }, {});
  const r = unpackC(bigFile, fs.mkdtempSync(path.join(rootDir, 'c-')));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^mem pages-1\.img id=1 zstd=0 chunk=65536 size=314572800 /m);
  fs.rmSync(bigFile);
});

test('damaged and hostile files are refused (exit 12) as extractLazy refuses them, nothing left behind', async (t) => {
  const rootDir = scratchDir(t, 'checkpt-front-bad-');
  const src = images(rootDir, 'src', { mib: 1 });
  const file = path.join(rootDir, 'good.ckpt');
  const manifest = { pid: 7, packedBytes: src.packed };
  await writeImage(file, manifest, { dir: src.dir }, { chunkHash: 'sha256', memoryChunk: 4096 });
  const good = fs.readFileSync(file);
  fs.rmSync(file);
  const entries = entriesOf(good);
  const m = JSON.stringify(manifest);
  // The repacking itself is right: the unchanged repack is the very file.
  assert.ok(pack({ manifest: m, entries }).equals(good), 'repack is byte-identical');
  const len = good.length;
  const d = Number(good.readBigUInt64BE(len - 48));
  const at = indexStart(good);
  const edit = (fn, fix = false) => {
    const b = Buffer.from(good);
    fn(b);
    return fix ? rehash(b) : b;
  };
  const renamed = (name, which = 'core-1.img') =>
    pack({ manifest: m, entries: entries.map((e) => (e.name === which ? { ...e, name } : e)) });
  const chunked = (change) =>
    pack({
      manifest: m,
      entries: entries.map((e) => (e.name === 'pages-2.img' ? { ...e, ...change } : e)),
    });
  const withManifest = (text) => pack({ manifest: text, entries });
  const p2 = entries.find((e) => e.name === 'pages-2.img');
  // Without the 1 MiB inline entry: INDEX is then small enough for lengths within the limits but
  // beyond the file.
  const small = pack({
    manifest: '{}',
    entries: entries.filter((e) => !e.name.startsWith('tmpfs')),
  });
  const smallAt = indexStart(small);
  const smallIndex = small.length - 48 - smallAt;
  const editSmall = (fn) => {
    const b = Buffer.from(small);
    fn(b);
    return rehash(b);
  };
  const cases = {
    'a byte of the chunk tables flipped': [edit((b) => (b[len - 60] ^= 0x80)), /checksum mismatch/],
    'a byte of the manifest flipped': [edit((b) => (b[at + 6] ^= 0x01)), /./],
    'a byte of an inline entry flipped': [edit((b) => (b[good.indexOf('fdinfo', at) + 40] ^= 1))],
    'a byte of the TAIL hash flipped': [edit((b) => (b[len - 1] ^= 0x01)), /checksum mismatch/],
    'its end marker damaged': [edit((b) => (b[len - 40] ^= 0x20)), /truncated/],
    'truncated to half': [good.subarray(0, len >> 1)],
    'cut in its TAIL': [good.subarray(0, len - 20)],
    'cut to its prefix': [good.subarray(0, 16), /truncated/],
    'cut in its prefix': [good.subarray(0, 10), /truncated/],
    'one byte short': [good.subarray(0, len - 1)],
    'a byte too many': [Buffer.concat([good, Buffer.from([0])])],
    'D + 1': [edit((b) => b.writeBigUInt64BE(BigInt(d + 1), len - 48))],
    'D - 1': [edit((b) => b.writeBigUInt64BE(BigInt(d - 1), len - 48))],
    'D + 1, hash fixed': [edit((b) => b.writeBigUInt64BE(BigInt(d + 1), len - 48), true)],
    'D - 4096, hash fixed': [edit((b) => b.writeBigUInt64BE(BigInt(d - 4096), len - 48), true)],
    'D beyond the file': [edit((b) => b.writeBigUInt64BE(1n << 62n, len - 48), true), /too short/],
    'D of 2^64 - 1': [edit((b) => b.writeBigUInt64BE((1n << 64n) - 1n, len - 48), true)],
    'entry ../x': [renamed('../escape.img'), /path separator/],
    'entry /etc/x': [renamed('/etc/escape.img'), /path separator/],
    'entry a\\b': [renamed('a\\b.img'), /path separator/],
    'entry with NUL': [renamed('x\0.img'), /control character/],
    'entry with ESC': [renamed('x\x1b[31m.img'), /control character/],
    'entry with DEL': [renamed('x\x7f.img'), /control character/],
    'entry with U+0085': [renamed('x\u0085.img'), /control character/],
    'entry .': [renamed('.'), /refers to a directory/],
    'entry ..': [renamed('..'), /refers to a directory/],
    'entry of no name': [renamed(''), /name of 0 bytes/],
    'entry of 256 bytes': [renamed('x'.repeat(256)), /name of 256 bytes/],
    'entry not UTF-8': [renamed(Buffer.from([0x61, 0xff, 0x62])), /not valid UTF-8/],
    'entry an overlong UTF-8 /': [renamed(Buffer.from([0x61, 0xc0, 0xaf])), /not valid UTF-8/],
    'entry a UTF-8 surrogate': [renamed(Buffer.from([0xed, 0xa0, 0x80])), /not valid UTF-8/],
    'entry named twice': [pack({ manifest: m, entries: [...entries, entries[0]] }), /twice/],
    'memory named twice': [
      pack({ manifest: m, entries: [...entries, p2] }),
      /appears twice|beyond its memory part/,
    ],
    'packedBytes lies': [
      withManifest(JSON.stringify({ ...manifest, packedBytes: src.packed + 1 })),
      /CRIU images hold/,
    ],
    'packedBytes a string': [
      withManifest(JSON.stringify({ ...manifest, packedBytes: String(src.packed) })),
      /CRIU images hold/,
    ],
    'packedBytes null, imageBytes lies': [
      withManifest(`{"pid":7,"packedBytes":null,"imageBytes":${src.packed - 1}}`),
      /CRIU images hold/,
    ],
    'imageBytes null': [withManifest('{"imageBytes":null}'), /CRIU images hold null/],
    'packedBytes lies, twice (the last counts)': [
      withManifest(`{"packedBytes":${src.packed},"packedBytes":${src.packed + 1}}`),
      /CRIU images hold/,
    ],
    'packedBytes escaped, lies': [
      withManifest(`{"packed\\u0042ytes":${src.packed * 2}}`),
      /CRIU images hold/,
    ],
    'manifest not JSON': [withManifest('{"pid":7'), /not valid UTF-8 JSON/],
    'manifest with a trailing comma': [withManifest('{"pid":7,}'), /not valid UTF-8 JSON/],
    'manifest with a leading zero': [withManifest('{"pid":07}'), /not valid UTF-8 JSON/],
    'manifest with a BOM': [withManifest('\ufeff{}'), /not valid UTF-8 JSON/],
    'manifest with a raw tab in a string': [withManifest('{"a":"\t"}'), /not valid UTF-8 JSON/],
    'manifest with a bad escape': [withManifest('{"a":"\\x41"}'), /not valid UTF-8 JSON/],
    'manifest two values': [withManifest('{} {}'), /not valid UTF-8 JSON/],
    'manifest an array': [withManifest('[{}]'), /not a JSON object/],
    'manifest a string': [withManifest('"{}"'), /not a JSON object/],
    'manifest empty': [withManifest(''), /not valid UTF-8 JSON/],
    'manifest not UTF-8': [
      edit((b) => b.set([0xc3, 0x28], at + 4 + m.indexOf('7')), true),
      /not valid UTF-8 JSON/,
    ],
    'manifest over 1 MiB': [edit((b) => b.writeUInt32BE(1024 * 1024 + 1, at), true), /1 MiB/],
    'manifest beyond the file': [
      editSmall((b) => b.writeUInt32BE(smallIndex - 7, smallAt)),
      /manifest claims \d+ bytes but the file is too short/,
    ],
    'manifest of exactly what is left': [
      editSmall((b) => b.writeUInt32BE(smallIndex - 8, smallAt)),
      /not valid UTF-8 JSON/,
    ],
    'manifest of 2^32 - 1': [edit((b) => b.writeUInt32BE(0xffffffff, at), true), /1 MiB/],
    'entry count beyond the file': [
      editSmall((b) => b.writeUInt32BE(99999, smallAt + 4 + 2)),
      /claims 99999 entries but the file is too short to hold them/,
    ],
    'entry count over the limit': [
      edit((b) => b.writeUInt32BE(100001, at + 4 + m.length), true),
      /more than the limit/,
    ],
    'entry count one too many': [
      edit((b) => b.writeUInt32BE(entries.length + 1, at + 4 + m.length), true),
    ],
    'entry count one too few': [
      edit((b) => b.writeUInt32BE(entries.length - 1, at + 4 + m.length), true),
      /sizes do not add up/,
    ],
    'inline size beyond the file': [
      edit((b) => b.writeBigUInt64BE(1n << 40n, kindAt(good, 'core-1.img') + 1), true),
      /claims \d+ bytes but only/,
    ],
    'inline size one more': [
      edit((b) => b.writeBigUInt64BE(2501n, kindAt(good, 'core-1.img') + 1), true),
    ],
    'unknown kind 2 (a store entry in a plain file)': [
      edit((b) => (b[kindAt(good, 'core-1.img')] = 2), true),
      /unknown kind 2/,
    ],
    'unknown kind 7': [edit((b) => (b[kindAt(good, 'core-1.img')] = 7), true), /unknown kind 7/],
    'chunk count beyond the file': [chunked({ table: { count: 0xffffffff } }), /too short to list/],
    'chunk count one more': [
      chunked({ table: { count: p2.chunks.length + 1 } }),
      /claims 5000 bytes in 3/,
    ],
    'chunk count zero': [chunked({ table: { count: 0 } })],
    'chunk size 1000': [chunked({ table: { chunk: 1000 } }), /impossible chunk size 1000/],
    'chunk size 128 MiB': [chunked({ table: { chunk: 128 << 20 } }), /impossible chunk size/],
    'decoded size beyond its chunks': [
      chunked({ table: { decoded: 8193 } }),
      /claims 8193 bytes in 2 chunks of 4096/,
    ],
    'decoded size short of its chunks': [
      chunked({ table: { decoded: 4096 } }),
      /claims 4096 bytes in 2 chunks/,
    ],
    'decoded size within, the last chunk not': [
      chunked({ table: { decoded: 4097 } }),
      /chunk 1 an impossible length 904/,
    ],
    'decoded size 2^64 - 1': [chunked({ table: { decoded: (1n << 64n) - 1n } }), /claims/],
    'a chunk of the wrong length': [
      pack({
        manifest: m,
        entries: entries.map((e) =>
          e.name === 'pages-1.img'
            ? { ...e, chunks: [e.chunks[0].subarray(0, 100), ...e.chunks.slice(1)] }
            : e,
        ),
      }),
      /impossible length 100/,
    ],
    'codec 1 on pages-2.img': [chunked({ codec: 1 }), /unknown codec 1/],
    'codec 2': [chunked({ codec: 2 }), /unknown codec 2/],
    'a chunked entry that is not memory': [
      pack({
        manifest: m,
        entries: entries.map((e) => (e.name === 'pages-2.img' ? { ...e, name: 'core-9.img' } : e)),
      }),
      /chunked but not memory/,
    ],
    'memory named pages-1.imgx': [renamed('pages-1.imgx', 'pages-1.img'), /chunked but not memory/],
    'memory named pages-.img': [renamed('pages-.img', 'pages-1.img'), /chunked but not memory/],
    'DATA longer than its chunks': [
      buildV2({ manifest: m, entries, extraData: Buffer.alloc(10) }),
      /memory part holds/,
    ],
    'DATA shorter than its chunks': [buildV2({ manifest: m, entries, dataLength: d - 1 })],
    'bytes after the last entry': [
      rehash(
        Buffer.concat([good.subarray(0, len - 48), Buffer.from('junk'), good.subarray(len - 48)]),
      ),
      /unexpected bytes after the last entry/,
    ],
    'not a checkpt file (text)': [Buffer.from('#!/bin/sh\necho hi\n'), /looks like a text file/],
    'not a checkpt file (gzip)': [Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]), /gzip/],
    'empty file': [Buffer.alloc(0), /is empty/],
    'format 0': [edit((b) => b.writeUInt32BE(0, 8)), /unknown format version 0/],
    'format 2^31': [edit((b) => b.writeUInt32BE(0x80000000, 8)), /unknown format version/],
    'unknown flag 8': [edit((b) => b.writeUInt32BE(8, 12)), /unknown header flags 0x8/],
    'flags store and BLAKE3': [edit((b) => b.writeUInt32BE(6, 12)), /do not go together/],
    'flags encrypted and BLAKE3': [edit((b) => b.writeUInt32BE(5, 12)), /do not go together/],
    'flag BLAKE3 set on a SHA-256 file': [edit((b) => b.writeUInt32BE(4, 12)), /checksum mismatch/],
  };
  for (const [label, [bytes, message]] of Object.entries(cases))
    await assertRefused(rootDir, bytes, BAD, label, { message });
  // The good file itself passes the same way (the cases above are refused for what they change).
  fs.writeFileSync(file, good, { mode: 0o600 });
  await assertSame(rootDir, file, 'the good file');
});

test('files it does not unpack itself are left to the Node path (exit 11)', async (t) => {
  const rootDir = scratchDir(t, 'checkpt-front-other-');
  const src = images(rootDir, 'src', { mib: 1 });
  const stream = images(rootDir, 'stream', { mib: 1, zstd: 'stream' });
  const file = path.join(rootDir, 'x.ckpt');
  const key = randomBytes(32);
  const write = async (dir, options) => {
    fs.rmSync(file, { force: true });
    await writeImage(file, { pid: 3 }, { dir }, options);
    return fs.readFileSync(file);
  };
  const store = path.join(rootDir, 'store');
  const cases = [
    ['format 1', await write(src.dir, { formatVersion: 1 }), /format 1/, 'not-here'],
    ['encrypted', await write(src.dir, { key }), /encrypted/, 'EKEY'],
    ['encrypted format 1', await write(src.dir, { key, formatVersion: 1 }), /format 1/, 'not-here'],
    ['store-backed', await write(src.dir, { store: { dir: store } }), /chunk store/, 'ok'],
    // One zstd stream: decoded whole by the zstd program (extractLazy declines it too).
    [
      'zstd stream',
      await write(stream.dir, { chunkHash: 'sha256' }),
      /one zstd stream/,
      'not-here',
    ],
    [
      'a newer format',
      (() => {
        const b = Buffer.from(fs.readFileSync(file));
        b.writeUInt32BE(3, 8);
        return b;
      })(),
      /newer checkpt \(format 3\)/,
      'EIMAGEVERSION',
    ],
  ];
  const good = await write(src.dir, { chunkHash: 'sha256' });
  const entries = entriesOf(good);
  const p1 = entries.find((e) => e.name === 'pages-1.img');
  // Names CRIU never writes, which the TypeScript reader serves under their own names: pages-01
  // is no pages-1, and a number beyond u32 is no CRIU id.
  const extra = (e) => pack({ manifest: '{"pid":3}', entries: [...entries, e] });
  const p2 = entries.find((e) => e.name === 'pages-2.img');
  cases.push(['pages-01.img', extra({ ...p2, name: 'pages-01.img' }), /number CRIU/, 'ok']);
  cases.push([
    'pages-4294967296.img',
    extra({ ...p2, name: 'pages-4294967296.img' }),
    /number CRIU/,
    'ok',
  ]);
  // Compressed memory stored inline: the restore decodes it with the zstd program.
  cases.push([
    'inline pages-5.img.zst',
    extra({ name: 'pages-5.img.zst', data: 'zzz' }),
    /compressed memory/,
    'ok',
  ]);
  for (const [label, bytes, message, tsOutcome] of cases) {
    await assertRefused(rootDir, bytes, NOT_HERE, label, { message, tsOutcome });
    if (label === 'store-backed') fs.rmSync(store, { recursive: true, force: true });
  }
  assert.ok(p1.chunks.length > 1);
  // A key set means only what was sealed with it is resumed (read.ts: EKEY for a plain file).
  fs.writeFileSync(file, good);
  const out = fs.mkdtempSync(path.join(rootDir, 'out-'));
  const r = unpackC(file, out, { CHECKPT_KEY_FILE: path.join(rootDir, 'key') });
  assert.equal(r.status, NOT_HERE, r.stderr);
  assert.match(r.stderr, /^not-here CHECKPT_KEY_FILE is set\n$/);
  assert.deepEqual(fs.readdirSync(out), []);
  // An empty one is none.
  assert.equal(unpackC(file, out, { CHECKPT_KEY_FILE: '' }).status, OK);
});

// Files and directories of another owner: made by root.
const asRoot = { skip: skip || (process.getuid?.() === 0 ? false : 'needs root (chown)') };
test(
  'a file someone else could have written is refused (exit 13), saying why as trust.ts does',
  async (t) => {
    const rootDir = scratchDir(t, 'checkpt-front-trust-');
    const src = images(rootDir, 'src', { mib: 1 });
    const dir = (parent, name, mode, uid = 0) => {
      const d = path.join(parent, name);
      fs.mkdirSync(d);
      fs.chmodSync(d, mode);
      if (uid !== 0) fs.chownSync(d, uid, uid);
      return d;
    };
    const image = async (file, { uid = 0, mode = 0o600 } = {}) => {
      await writeImage(file, { pid: 5 }, { dir: src.dir }, { chunkHash: 'sha256' });
      fs.chmodSync(file, mode);
      if (uid !== 0) fs.chownSync(file, uid, uid);
      return file;
    };
    const reason = (file) => {
      const fd = fs.openSync(file, 'r');
      try {
        return untrustedReason(fd);
      } finally {
        fs.closeSync(fd);
      }
    };
    const sticky = dir(rootDir, 'sticky', 0o1777);
    const open = dir(rootDir, 'open', 0o777);
    const cases = {
      "uid 1000's file": [
        await image(path.join(rootDir, 'a.ckpt'), { uid: 1000 }),
        /belongs to uid 1000/,
      ],
      "uid 1000's file in a sticky directory": [
        await image(path.join(sticky, 'a.ckpt'), { uid: 1000 }),
        /belongs to uid 1000/,
      ],
      'mode 0666': [
        await image(path.join(rootDir, 'b.ckpt'), { mode: 0o666 }),
        /its group and everyone can change it \(mode 0666\)/,
      ],
      'mode 0620': [
        await image(path.join(rootDir, 'c.ckpt'), { mode: 0o620 }),
        /its group can change it \(mode 0620\)/,
      ],
      'mode 0602': [
        await image(path.join(rootDir, 'c2.ckpt'), { mode: 0o602 }),
        /everyone can change it/,
      ],
      'a directory writable by all, no sticky bit': [
        await image(path.join(open, 'd.ckpt')),
        /can write the directory .*\/open \(mode 0777, no sticky bit\)/,
      ],
      'a directory writable by its group': [
        await image(path.join(dir(rootDir, 'group', 0o770), 'd.ckpt')),
        /its group can write the directory/,
      ],
      "a directory of uid 1000's": [
        await image(path.join(dir(rootDir, 'theirs', 0o755, 1000), 'e.ckpt')),
        /the directory .*\/theirs belongs to uid 1000.*, who can replace the file/,
      ],
      'a safe directory inside one open to all': [
        await image(path.join(dir(dir(open, 'safe', 0o700), 'safer', 0o700), 'f.ckpt')),
        /can write the directory .*\/open /,
      ],
    };
    for (const [label, [file, message]] of Object.entries(cases)) {
      const why = reason(file);
      assert.ok(why, `${label}: trust.ts passed it`);
      const out = fs.mkdtempSync(path.join(rootDir, 'out-'));
      const r = unpackC(file, out);
      assert.equal(r.status, UNTRUSTED, `${label}: ${r.stderr}`);
      assert.equal(r.stderr, `untrusted ${why}\n`, label);
      assert.match(r.stderr, message, label);
      assert.deepEqual(fs.readdirSync(out), [], label);
      await assert.rejects(extractLazy(file, out, TS_OPTIONS), (e) => e.code === 'EUNTRUSTED');
      fs.rmSync(out, { recursive: true });
    }
    // Trusted: root's file with no write bit for others, in a sticky directory and through a link.
    for (const file of [
      await image(path.join(sticky, 'ok.ckpt')),
      await image(path.join(rootDir, 'ok2.ckpt'), { mode: 0o644 }),
    ]) {
      assert.equal(reason(file), undefined);
      await assertSame(rootDir, file, file);
    }
    const link = path.join(rootDir, 'link.ckpt');
    fs.symlinkSync(path.join(sticky, 'ok.ckpt'), link);
    await assertSame(rootDir, link, 'through a symlink');
    // A symlink to a file others may write is judged by the file.
    fs.symlinkSync(cases['mode 0666'][0], path.join(rootDir, 'link2.ckpt'));
    const out = fs.mkdtempSync(path.join(rootDir, 'out-'));
    assert.equal(unpackC(path.join(rootDir, 'link2.ckpt'), out).status, UNTRUSTED);
  },
  asRoot,
);

test('what is not a checkpoint file, and a target that is no empty directory', async (t) => {
  const rootDir = scratchDir(t, 'checkpt-front-io-');
  const src = images(rootDir, 'src', { mib: 1 });
  const file = path.join(rootDir, 'x.ckpt');
  await writeImage(file, { pid: 5 }, { dir: src.dir }, { chunkHash: 'sha256' });
  const out = fs.mkdtempSync(path.join(rootDir, 'out-'));
  const fifo = path.join(rootDir, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const cases = [
    [
      'a missing file',
      path.join(rootDir, 'nope.ckpt'),
      out,
      IO,
      /^io cannot open checkpoint .*: it does not exist/,
    ],
    ['a directory', rootDir, out, BAD, /^bad it is a directory/],
    ['a FIFO (must not block)', fifo, out, BAD, /^bad it is not a regular file/],
    ['a device', '/dev/zero', out, BAD, /^bad it is not a regular file/],
    ['a missing target', file, path.join(rootDir, 'none'), IO, /^io cannot extract into/],
    ['a target that is a file', file, file, IO, /^io cannot extract into/],
  ];
  for (const [label, f, d, status, message] of cases) {
    const r = unpackC(f, d);
    assert.equal(r.status, status, `${label}: ${r.stderr}`);
    assert.match(r.stderr, message, label);
    assert.deepEqual(fs.readdirSync(out), [], label);
  }
  // A target that is not empty: nothing written, what was there untouched.
  fs.writeFileSync(path.join(out, 'core-1.img'), 'mine');
  const r = unpackC(file, out);
  assert.equal(r.status, IO, r.stderr);
  assert.match(r.stderr, /^io cannot extract into .*: it is not empty/);
  assert.deepEqual(fs.readdirSync(out), ['core-1.img']);
  assert.equal(fs.readFileSync(path.join(out, 'core-1.img'), 'utf8'), 'mine');
  // The usual umask narrows the mode as it narrows Node's (extract.ts opens with 0600 too).
  fs.rmSync(path.join(out, 'core-1.img'));
  assert.equal(unpackC(file, out).status, OK);
  for (const f of fs.readdirSync(out))
    assert.equal(fs.statSync(path.join(out, f)).mode & 0o7777, 0o600, f);
});

test(
  'fuzz: random edits, with the hash made right again or not, get the same verdict from both readers',
  async (t) => {
    const rootDir = scratchDir(t, 'checkpt-front-fuzz-');
    const dir = path.join(rootDir, 'src');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'core-1.img'), randomBytes(300));
    fs.writeFileSync(path.join(dir, 'inventory.img'), randomBytes(40));
    fs.writeFileSync(path.join(dir, 'pages-1.img'), randomBytes(3 * 4096 + 77));
    fs.writeFileSync(path.join(dir, 'pages-2.img'), randomBytes(4096));
    const file = path.join(rootDir, 'good.ckpt');
    await writeImage(
      file,
      { pid: 1, packedBytes: 300 + 40 + 3 * 4096 + 77 + 4096 },
      { dir },
      {
        chunkHash: 'sha256',
        memoryChunk: 4096,
      },
    );
    const good = fs.readFileSync(file);
    const seed = Number(process.env.CHECKPT_FUZZ_SEED ?? 0xf407);
    const next = xorshift32(seed);
    const below = (n) => (n <= 0 ? 0 : next() % n);
    const tally = {};
    for (let i = 0; i < 400; i++) {
      let { bytes, ops } = mutate(good, below);
      // Most edits only break the hash: made right again, they reach the structure checks.
      if (i % 4 !== 0) {
        bytes = rehash(bytes);
        ops = [...ops, 'rehash'];
      }
      const where = `seed ${seed} iteration ${i} (${ops.join(' ')})`;
      fs.writeFileSync(file, bytes, { mode: 0o600 });
      const { c, ts, cDir, tsDir } = await both(rootDir, file);
      let want = STATUS_OF[ts.outcome];
      // A file saying its memory is in a chunk store is the Node path's, which refuses it.
      if (c.status === NOT_HERE && ts.outcome === 'EBADIMAGE' && /chunk store/.test(c.stderr))
        want = NOT_HERE;
      assert.notEqual(want, undefined, `${where}: extractLazy said ${ts.outcome}: ${ts.message}`);
      assert.equal(
        c.status,
        want,
        `${where}: helper ${c.status} ${c.stderr}, extractLazy ${ts.outcome} ${ts.message ?? ''}`,
      );
      if (want === OK) assert.deepEqual(snapshot(cDir), snapshot(tsDir), where);
      else assert.deepEqual(fs.readdirSync(cDir), [], `${where}: files left behind`);
      tally[c.status] = (tally[c.status] ?? 0) + 1;
      fs.rmSync(cDir, { recursive: true });
      fs.rmSync(tsDir, { recursive: true });
    }
    // The edits reached more than the hash: some files still read (an edit inside a chunk), most not.
    assert.ok(tally[BAD] > 200, JSON.stringify(tally));
    assert.ok((tally[OK] ?? 0) > 0, JSON.stringify(tally));
  },
  { timeout: 120_000 },
);
