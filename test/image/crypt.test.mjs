// Encrypted checkpoint files and key files: the documented layout, tampering, keys that are wrong,
// missing or unsafe. No CRIU here; test/reliability/images.test.mjs does it end to end.
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
import { createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  extractImage,
  readImageHeader,
  readImageInfo,
  verifyImage,
  writeImage,
} from '../../dist/image/format.js';
import { checkKeyFile, keyFilePath, loadKey, readKeyFile } from '../../dist/image/key.js';
import { CheckptError } from '../../dist/common/errors.js';

/** Every reader refuses `bytes` with one of `codes`, and extraction leaves nothing behind. */
async function assertRejected(root, bytes, key, codes, label, message) {
  const file = path.join(root, 'bad.ckpt');
  fs.writeFileSync(file, bytes);
  const out = fs.mkdtempSync(path.join(root, 'out-'));
  await rejectsWith(verifyImage(file, { key }), codes, `${label} (verify)`, message);
  await rejectsWith(extractImage(file, out, { key }), codes, `${label} (extract)`, message);
  assert.deepEqual(fs.readdirSync(out), [], `${label}: extract dir not empty`);
  fs.rmSync(out, { recursive: true });
}

const CHUNK = 4096;
const HEAD = 68;
const TAG = 16;
const END = Buffer.from('CKPTEND\n', 'latin1');

/** A source directory whose packed BODY spans several 4 KiB chunks. */
function sources(root, files) {
  const src = path.join(root, 'src');
  fs.mkdirSync(src);
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(src, name), data);
  return src;
}

/** Decrypts a sealed file straight from the layout documented in src/image/layout.ts. */
function openByHand(bytes, key) {
  const head = bytes.subarray(0, HEAD);
  const chunk = head.readUInt32BE(16);
  const salt = head.subarray(20, 52);
  const okm = Buffer.from(hkdfSync('sha256', key, salt, 'checkpt image v1 aes-256-gcm', 52));
  assert.ok(okm.subarray(36).equals(head.subarray(52)), 'key check');
  assert.ok(bytes.subarray(bytes.length - 8).equals(END), 'end marker');
  const sealed = bytes.subarray(HEAD, bytes.length - 8);
  const parts = [];
  for (let i = 0, at = 0; at < sealed.length; i++) {
    const len = Math.min(chunk, sealed.length - at - TAG);
    const final = at + len + TAG === sealed.length;
    const nonce = Buffer.alloc(12);
    okm.copy(nonce, 0, 32, 36);
    nonce.writeBigUInt64BE(BigInt(i), 4);
    const aad = Buffer.alloc(HEAD + 9);
    head.copy(aad);
    aad.writeBigUInt64BE(BigInt(i), HEAD);
    aad[HEAD + 8] = final ? 1 : 0;
    const d = createDecipheriv('aes-256-gcm', okm.subarray(0, 32), nonce);
    d.setAAD(aad);
    d.setAuthTag(sealed.subarray(at + len, at + len + TAG));
    parts.push(d.update(sealed.subarray(at, at + len)), d.final());
    at += len + TAG;
  }
  return { chunk, body: Buffer.concat(parts), chunks: parts.length / 2 };
}

test('an encrypted file round-trips, follows the documented layout, and holds no plaintext', async (t) => {
  const root = scratchDir(t, 'checkpt-crypt-');
  const secret = 'the-secret-in-memory-' + randomBytes(8).toString('hex');
  const files = {
    'core-1.img': Buffer.from(`some state ${secret} more state`),
    'empty.img': Buffer.alloc(0),
    'pages-1.img': Buffer.concat([randomBytes(9000), Buffer.from(secret), randomBytes(7000)]),
  };
  const src = sources(root, files);
  const key = randomBytes(32);
  const manifest = { pid: 7, argv: ['node', secret] };
  const plainFile = path.join(root, 'plain.ckpt');
  const sealedFile = path.join(root, 'sealed.ckpt');
  // Format 1, whose layout openByHand() follows; format 2 has its own tests (chunks.test.mjs).
  const v1 = { formatVersion: 1 };
  await writeImage(plainFile, manifest, { dir: src }, v1);
  const { bytes } = await writeImage(
    sealedFile,
    manifest,
    { dir: src },
    { key, chunkSize: CHUNK, ...v1 },
  );
  const sealed = fs.readFileSync(sealedFile);
  assert.equal(bytes, sealed.length);
  assert.equal(fs.statSync(sealedFile).mode & 0o777, 0o600);
  // The control: the plain file does contain the secret, so the search below could find it.
  assert.ok(fs.readFileSync(plainFile).includes(secret));
  assert.ok(!sealed.includes(secret), 'secret in the encrypted file');
  assert.ok(!sealed.includes('core-1.img'), 'entry name in the encrypted file');
  assert.ok(sealed.subarray(0, 16).equals(fs.readFileSync(plainFile).subarray(0, 16).fill(1, 15)));

  // BODY, decrypted by hand, is byte for byte what the plain file holds between header and trailer.
  const plain = fs.readFileSync(plainFile);
  const { body, chunks } = openByHand(sealed, key);
  assert.ok(body.equals(plain.subarray(16, plain.length - 40)));
  assert.ok(chunks >= 4, `${chunks} chunks`);

  const info = await verifyImage(sealedFile, { key });
  const plainInfo = await verifyImage(plainFile);
  assert.deepEqual(info, { ...plainInfo, encrypted: true, fileSize: bytes });
  assert.deepEqual(await readImageInfo(sealedFile, { key }), { ...info, verified: false });
  assert.deepEqual(await readImageHeader(sealedFile), {
    formatVersion: 1,
    encrypted: true,
    fileSize: bytes,
  });
  const out = path.join(root, 'out');
  fs.mkdirSync(out);
  assert.deepEqual(await extractImage(sealedFile, out, { key }), info);
  for (const [name, data] of Object.entries(files))
    assert.ok(fs.readFileSync(path.join(out, name)).equals(data), name);

  // A second file from the same bytes and key: a fresh salt, so nothing in common after the header.
  const again = path.join(root, 'again.ckpt');
  await writeImage(again, manifest, { dir: src }, { key, chunkSize: CHUNK, ...v1 });
  const b = fs.readFileSync(again);
  assert.ok(!b.subarray(20, 52).equals(sealed.subarray(20, 52)), 'same salt');
  assert.ok(!b.subarray(HEAD, HEAD + 64).equals(sealed.subarray(HEAD, HEAD + 64)));
});

test('a BODY that fills its last chunk exactly, and the default 4 MiB chunks, round-trip', async (t) => {
  const root = scratchDir(t, 'checkpt-crypt-');
  // BODY = 4 + 2 ("{}") + 4 + (2 + 1 + 8 + S): S = 8171 makes it exactly two 4 KiB chunks.
  const src = sources(root, { a: randomBytes(2 * CHUNK - 21) });
  const key = randomBytes(32);
  const file = path.join(root, 'exact.ckpt');
  const v1 = { formatVersion: 1 };
  await writeImage(file, {}, { dir: src }, { key, chunkSize: CHUNK, ...v1 });
  const bytes = fs.readFileSync(file);
  assert.equal(bytes.length, HEAD + 2 * (CHUNK + TAG) + 8);
  assert.equal(openByHand(bytes, key).chunks, 2);
  assert.equal((await verifyImage(file, { key })).entries[0].size, 2 * CHUNK - 21);

  const big = sources(fs.mkdtempSync(path.join(root, 'big-')), { b: randomBytes(9 << 20) });
  const bigFile = path.join(root, 'big.ckpt');
  await writeImage(bigFile, {}, { dir: big }, { key, ...v1 });
  const opened = openByHand(fs.readFileSync(bigFile), key);
  assert.equal(opened.chunk, 4 << 20);
  assert.equal(opened.chunks, 3);
  const out = path.join(root, 'out');
  fs.mkdirSync(out);
  await extractImage(bigFile, out, { key });
  assert.ok(fs.readFileSync(path.join(out, 'b')).equals(fs.readFileSync(path.join(big, 'b'))));
});

test('without the key, with a wrong key, and a plain file where a sealed one is expected', async (t) => {
  const root = scratchDir(t, 'checkpt-crypt-');
  const src = sources(root, { a: randomBytes(10_000) });
  const key = randomBytes(32);
  const sealed = path.join(root, 'sealed.ckpt');
  const plain = path.join(root, 'plain.ckpt');
  await writeImage(sealed, { pid: 3 }, { dir: src }, { key, chunkSize: CHUNK });
  await writeImage(plain, { pid: 3 }, { dir: src });
  const bytes = fs.readFileSync(sealed);

  const noKey = /is encrypted; set CHECKPT_KEY_FILE to the key file it was written with/;
  await assertRejected(root, bytes, undefined, 'EKEY', 'no key', noKey);
  await rejectsWith(readImageInfo(sealed), 'EKEY', 'no key (info)', noKey);
  const wrong = /the key in CHECKPT_KEY_FILE does not match .*written with another key/;
  await assertRejected(root, bytes, randomBytes(32), 'EKEY', 'wrong key', wrong);
  await rejectsWith(readImageInfo(sealed, { key: randomBytes(32) }), 'EKEY', 'wrong key', wrong);

  const plainNotAccepted = /is not encrypted, but CHECKPT_KEY_FILE is set/;
  await assertRejected(root, fs.readFileSync(plain), key, 'EKEY', 'plain', plainNotAccepted);
  assert.equal((await verifyImage(plain, { key, allowPlain: true })).encrypted, false);
  assert.equal((await readImageInfo(plain, { key, allowPlain: true })).encrypted, false);
  assert.equal((await verifyImage(plain)).encrypted, false);
});

test('tampering anywhere in an encrypted file is refused, and nothing is extracted', async (t) => {
  const root = scratchDir(t, 'checkpt-crypt-');
  const src = sources(root, { 'a.img': randomBytes(12_000), 'b.img': randomBytes(6000) });
  const key = randomBytes(32);
  const file = path.join(root, 'x.ckpt');
  await writeImage(file, { imageBytes: 18_000 }, { dir: src }, { key, chunkSize: CHUNK });
  const good = fs.readFileSync(file);
  const per = CHUNK + TAG;
  const n = Math.ceil((good.length - HEAD - 8) / per);
  assert.ok(n >= 5, `${n} chunks`);
  const chunk = (i) =>
    good.subarray(HEAD + i * per, Math.min(HEAD + (i + 1) * per, good.length - 8));
  const rebuild = (list) => Buffer.concat([good.subarray(0, HEAD), ...list, END]);
  const all = Array.from({ length: n }, (_, i) => chunk(i));

  const flip = (pos) => {
    const b = Buffer.from(good);
    b[pos] ^= 0x20;
    return b;
  };
  const bad = /damaged|tampered|truncated|empty/;
  const cases = {
    'version byte': [flip(11), 'EIMAGEVERSION', /newer checkpt/],
    'flags byte': [flip(15), 'EBADIMAGE'],
    'chunk size, still in range': [flip(18), 'EBADIMAGE'],
    'chunk size, out of range': [flip(16), 'EBADIMAGE'],
    salt: [flip(30), 'EKEY'],
    'key check': [flip(60), 'EKEY'],
    'first ciphertext byte': [flip(HEAD), 'EBADIMAGE', /tampered.*chunk 1 of/],
    'a tag byte': [flip(HEAD + CHUNK + 3), 'EBADIMAGE', /chunk 1 of/],
    'middle of chunk 3': [flip(HEAD + 2 * per + 100), 'EBADIMAGE', /chunk 3 of/],
    'last ciphertext byte': [flip(good.length - 9 - TAG), 'EBADIMAGE'],
    'last tag byte': [flip(good.length - 9), 'EBADIMAGE'],
    'end marker': [flip(good.length - 1), 'EBADIMAGE', /truncated/],
    'chunks 2 and 3 swapped': [rebuild([all[0], all[2], all[1], ...all.slice(3)]), 'EBADIMAGE'],
    'chunk 2 dropped': [rebuild([all[0], ...all.slice(2)]), 'EBADIMAGE'],
    'chunk 2 repeated': [rebuild([all[0], all[1], ...all.slice(1)]), 'EBADIMAGE'],
    'last chunk dropped': [rebuild(all.slice(0, -1)), 'EBADIMAGE'],
    'chunk 1 appended after the last': [rebuild([...all, all[0]]), 'EBADIMAGE'],
    'random chunk appended': [rebuild([...all, randomBytes(per)]), 'EBADIMAGE'],
    'a byte appended before the end marker': [rebuild([...all, Buffer.from([0])]), 'EBADIMAGE'],
    'end marker only, after the header': [rebuild([]), 'EBADIMAGE'],
  };
  for (let cut = 0; cut < n; cut++) {
    // Cut at a chunk boundary and given a new end marker: only the last-chunk flag tells.
    cases[`cut after chunk ${cut} (end marker restored)`] = [
      rebuild(all.slice(0, cut)),
      'EBADIMAGE',
    ];
  }
  for (const len of [0, 4, 8, 12, 16, 20, 40, 52, 60, HEAD, HEAD + 100, good.length - 8])
    cases[`truncated to ${len}`] = [good.subarray(0, len), 'EBADIMAGE'];
  for (const [label, [bytes, codes, message]] of Object.entries(cases)) {
    await assertRejected(
      root,
      bytes,
      key,
      codes,
      label,
      message ?? (codes === 'EKEY' ? /key/ : bad),
    );
  }
  // The untouched file still reads: the cases above failed for what was done to them.
  fs.writeFileSync(file, good);
  assert.equal((await verifyImage(file, { key })).entries.length, 2);
});

test(
  'fuzz: random mutations of an encrypted file never verify or extract',
  { timeout: 30_000 },
  async (t) => {
    const seed = Number(process.env.CHECKPT_FUZZ_SEED ?? 0xc0ffee);
    const next = xorshift32(seed);
    const below = (k) => (k <= 0 ? 0 : next() % k);
    const root = scratchDir(t, 'checkpt-crypt-');
    const src = sources(root, {
      'a.img': Buffer.alloc(9000, 7),
      'b.img': Buffer.from('bee'),
      // Format 2 stores memory in chunks of its own: three here, each checked at its first read.
      'pages-1.img': Buffer.alloc(9000, 5),
    });
    const key = Buffer.alloc(32, 9);
    const file = path.join(root, 'fuzz.ckpt');
    await writeImage(file, { pid: 1 }, { dir: src }, { key, chunkSize: CHUNK, memoryChunk: CHUNK });
    const good = fs.readFileSync(file);
    const out = path.join(root, 'out');
    fs.mkdirSync(out);
    for (let i = 0; i < 250; i++) {
      const { bytes, ops } = mutate(good, below);
      if (bytes.equals(good)) continue;
      const where = `seed ${seed} iteration ${i} (${ops.join(' ')})`;
      fs.writeFileSync(file, bytes);
      await assertReadersRefuse(file, out, where, { key });
    }
  },
);

function keyFile(root, name, content, mode = 0o600) {
  const p = path.join(root, name);
  fs.writeFileSync(p, content, { mode });
  fs.chmodSync(p, mode);
  return p;
}

function throwsKey(fn, message, label) {
  assert.throws(
    fn,
    (err) => {
      assert.ok(err instanceof CheckptError, `${label}: ${err}`);
      assert.equal(err.code, 'EKEY', label);
      assert.match(err.message, message, label);
      return true;
    },
    label,
  );
}

test('key files: raw or hex, and refused when unsafe or malformed, saying how to fix it', (t) => {
  const root = scratchDir(t, 'checkpt-crypt-');
  const raw = randomBytes(32);
  const hex = raw.toString('hex');
  for (const [name, content] of [
    ['raw', raw],
    ['hex', hex],
    ['hex-newline', hex + '\n'],
    ['HEX', hex.toUpperCase()],
  ]) {
    const p = keyFile(root, name, content);
    assert.ok(readKeyFile(p).equals(raw), name);
    checkKeyFile(p);
  }
  // Secrets mounts hand out symlinks; the file they name is what is checked.
  const link = path.join(root, 'link');
  fs.symlinkSync(path.join(root, 'raw'), link);
  assert.ok(readKeyFile(link).equals(raw));
  assert.ok(loadKey({ CHECKPT_KEY_FILE: link }).equals(raw));
  assert.equal(loadKey({}), undefined);
  assert.equal(loadKey({ CHECKPT_KEY_FILE: '' }), undefined);
  assert.equal(keyFilePath({ CHECKPT_KEY_FILE: 'rel/key' }), path.resolve('rel/key'));

  const cases = {
    'group-readable': [keyFile(root, 'g', raw, 0o640), /mode 640.*chmod 600/],
    'world-readable': [keyFile(root, 'w', raw, 0o644), /mode 644.*chmod 600/],
    'group-writable': [keyFile(root, 'gw', raw, 0o620), /chmod 600/],
    '31 bytes': [keyFile(root, 'short', raw.subarray(1)), /holds 31 bytes/],
    '64 non-hex': [keyFile(root, 'nothex', 'z'.repeat(64)), /not 64 hex digits/],
    '64 hex + CR LF': [keyFile(root, 'crlf', hex + '\r\n'), /holds 66 bytes/],
    empty: [keyFile(root, 'empty', ''), /holds 0 bytes/],
    missing: [path.join(root, 'absent'), /does not exist/],
    directory: [fs.mkdtempSync(path.join(root, 'd-')), /not a regular file/],
  };
  const fifo = path.join(root, 'fifo');
  assert.equal(spawnSync('mkfifo', ['-m', '600', fifo]).status, 0);
  cases.FIFO = [fifo, /not a regular file/];
  // Only root can give a file away; elsewhere that one case cannot be set up.
  if (process.getuid() === 0) {
    const foreign = keyFile(root, 'foreign', raw);
    fs.chownSync(foreign, 4321, 4321);
    cases['owned by someone else'] = [foreign, /belongs to uid 4321/];
  }
  for (const [label, [p, message]] of Object.entries(cases)) {
    throwsKey(() => readKeyFile(p), message, `${label} (read)`);
    // The check made inside a program that checkpoints itself never reads the key, so it cannot
    // see what the bytes are; everything else it does see.
    if (label === '64 non-hex') checkKeyFile(p);
    else throwsKey(() => checkKeyFile(p), message, `${label} (check)`);
    throwsKey(() => loadKey({ CHECKPT_KEY_FILE: p }), message, label);
  }
});
