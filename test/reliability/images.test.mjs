// End to end, with real checkpoints: damaged and hostile files are refused by `checkpt -r` before
// any process is created; encryption at rest (CHECKPT_KEY_FILE) for checkpt() and checkpt run;
// file names that a shell would mangle.
import assert from 'node:assert/strict';
import {
  cleanup,
  cli,
  describe,
  events,
  fixture,
  nodeBinaries,
  realCriu,
  realMissing,
  removeDir,
  root,
  run,
  spawnSync,
  start,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { buildV2, readV2 } from '../image/layout.mjs';
import { after, before } from 'node:test';

const node = nodeBinaries()[0];
const SECRET = 's3cr3t~hunter~42042'; // what test/fixtures/secret.mjs builds in memory
// A shell would run the $(...), split at the spaces and quotes, and take the leading dash for an option.
const NASTY = `-x 'q' "dq" $(touch PWNED) a\nb.ckpt`;

let dir;
let staging;
let calls;
let plainFile;
let sealedFile;
let keyFile;
let otherKey;

/** Runs the CLI with the helper and CRIU wrapped so that every start of either is written down. */
function checkpt(args, env = {}, options = {}) {
  return spawnSync(process.execPath, [cli, ...args], {
    encoding: 'utf8',
    cwd: dir,
    timeout: 120_000,
    ...options,
    env: {
      ...process.env,
      CHECKPT_HELPER: join(dir, 'helper-wrap'),
      CHECKPT_CRIU: join(dir, 'criu-wrap'),
      CHECKPT_TMPDIR: staging,
      ...env,
    },
  });
}

const started = () => (existsSync(calls) ? readFileSync(calls, 'utf8') : '');

/** `checkpt -r` failed as it should have, and neither the helper's init nor a CRIU restore ever ran. */
function refusedBeforeAnyProcess(r, message, label) {
  assert.equal(r.signal, null, `${label}: checkpt -r was killed (hung?)`);
  assert.equal(r.status, 125, `${label}: ${r.stderr}`);
  assert.match(r.stderr, message, label);
  // The helper may check memory chunks (serve-pages); it must not have started anything else.
  assert.doesNotMatch(started(), /^helper (?!serve-pages)/m, `${label}: the helper was started`);
  assert.doesNotMatch(started(), /^criu restore/m, `${label}: CRIU restore ran`);
  assert.deepEqual(readdirSync(staging), [], `${label}: unpacked images left behind`);
  assert.equal(r.stdout, '', `${label}: something ran`);
}

/** The entries of a plain format-2 file (test/image/layout.mjs readV2), memory reassembled. */
function unpack(bytes) {
  const x = readV2(bytes);
  const entries = x.entries.map(({ name, data, chunks, codec, chunk, decoded }) =>
    chunks === undefined ? { name, data } : { name, chunks, codec, chunk, decoded },
  );
  return { manifest: JSON.parse(x.manifestBytes.toString('utf8')), entries, blake3: x.blake3 };
}

/** Packs with a correct checksum: whatever is wrong is wrong on purpose, not damage. */
function pack({ manifest, entries, blake3 }) {
  return buildV2({ manifest: JSON.stringify(manifest), entries, blake3 });
}

async function checkpointSecret(file, env = {}) {
  const p = startNode(node, fixture('secret.mjs'), [file], {
    cwd: dir,
    env: { ...process.env, ...env },
  });
  const e = await waitFor(p, (x) => x.event === 'returned', 'the checkpoint');
  assert.equal(e.r, 0);
  await p.closed;
}

before(async () => {
  // The real checkpoints every test here uses: nothing to make where the tests are skipped.
  if (realMissing) return;
  dir = tempDir('checkpt-images-');
  staging = join(dir, 'staging');
  mkdirSync(staging);
  calls = join(dir, 'calls.log');
  const realHelper = process.env.CHECKPT_HELPER || join(root, 'build', 'checkpt-helper');
  for (const [name, real, what] of [
    ['helper-wrap', realHelper, 'helper'],
    ['criu-wrap', realCriu, 'criu'],
  ])
    writeFileSync(
      join(dir, name),
      `#!/bin/sh\nprintf '${what} %s\\n' "$1" >> '${calls}'\nexec '${real}' "$@"\n`,
      { mode: 0o755 },
    );
  keyFile = join(dir, 'key');
  writeFileSync(keyFile, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  otherKey = join(dir, 'other-key');
  writeFileSync(otherKey, randomBytes(32), { mode: 0o600 });
  // One plain checkpoint under a name a shell would mangle, one encrypted (key path relative).
  plainFile = join(dir, NASTY);
  await checkpointSecret(NASTY);
  sealedFile = join(dir, 'sealed.ckpt');
  await checkpointSecret('sealed.ckpt', { CHECKPT_KEY_FILE: 'key' });
});

after(async () => {
  await cleanup();
  if (dir) removeDir(dir);
});

describe('encryption at rest', () => {
  test('the secret a program held is in its plain checkpoint and nowhere in its encrypted one', () => {
    const plain = readFileSync(plainFile);
    const sealed = readFileSync(sealedFile);
    // The control: the search finds the secret where it is in the clear.
    assert.ok(plain.includes(SECRET), 'the plain checkpoint holds the secret');
    assert.ok(!sealed.includes(SECRET), 'the encrypted checkpoint holds the secret');
    assert.ok(!sealed.includes('secret.mjs'), 'the encrypted checkpoint shows the command');
    assert.ok(!sealed.includes(Buffer.from('pages-1.img')), 'entry names are visible');
    assert.equal(sealed.readUInt32BE(12), 1, 'flags say encrypted');
    assert.equal(statSync(sealedFile).mode & 0o777, 0o600);
    assert.equal(statSync(plainFile).mode & 0o777, 0o600);
  });

  test('checkpt inspect: without the key only the header, with it the manifest', () => {
    const bare = checkpt(['inspect', 'sealed.ckpt']);
    assert.equal(bare.status, 0, bare.stderr);
    assert.match(bare.stdout, /encrypted \(AES-256-GCM\)/);
    assert.match(bare.stdout, /set CHECKPT_KEY_FILE/);
    assert.doesNotMatch(bare.stdout, /secret\.mjs|pid/);
    const json = JSON.parse(checkpt(['inspect', '--json', 'sealed.ckpt']).stdout);
    assert.deepEqual(Object.keys(json).sort(), ['encrypted', 'file', 'fileSize', 'formatVersion']);
    assert.equal(json.encrypted, true);
    const verify = checkpt(['inspect', '--verify', 'sealed.ckpt']);
    assert.equal(verify.status, 125);
    assert.match(verify.stderr, /is encrypted; set CHECKPT_KEY_FILE to the key file/);

    const withKey = checkpt(['inspect', '--verify', '--json', 'sealed.ckpt'], {
      CHECKPT_KEY_FILE: keyFile,
    });
    assert.equal(withKey.status, 0, withKey.stderr);
    const info = JSON.parse(withKey.stdout);
    assert.equal(info.encrypted, true);
    assert.equal(info.verified, true);
    assert.match(info.manifest.argv.join(' '), /secret\.mjs sealed\.ckpt$/);
    const wrong = checkpt(['inspect', 'sealed.ckpt'], { CHECKPT_KEY_FILE: otherKey });
    assert.equal(wrong.status, 125);
    assert.match(wrong.stderr, /does not match/);
  });

  test('checkpt -r refuses a missing, wrong or unsafe key and a tampered file before any process exists', () => {
    const tampered = join(dir, 'tampered.ckpt');
    copyFileSync(sealedFile, tampered);
    const bytes = readFileSync(tampered);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    writeFileSync(tampered, bytes);
    const loose = join(dir, 'loose-key');
    copyFileSync(keyFile, loose);
    chmodSync(loose, 0o644);
    const cases = [
      [
        'no key',
        sealedFile,
        {},
        /is encrypted; set CHECKPT_KEY_FILE to the key file it was written/,
      ],
      ['wrong key', sealedFile, { CHECKPT_KEY_FILE: otherKey }, /does not match/],
      ['tampered', tampered, { CHECKPT_KEY_FILE: keyFile }, /damaged or was tampered with/],
      ['key file mode 0644', sealedFile, { CHECKPT_KEY_FILE: loose }, /chmod 600/],
      ['key file missing', sealedFile, { CHECKPT_KEY_FILE: join(dir, 'nokey') }, /does not exist/],
      // A key set means only what was sealed with it is resumed.
      ['plain file, key set', plainFile, { CHECKPT_KEY_FILE: keyFile }, /is not encrypted/],
    ];
    for (const [label, file, env, message] of cases) {
      refusedBeforeAnyProcess(checkpt(['-r', file], env), message, label);
    }
  });

  test('checkpt -r with the key resumes the encrypted checkpoint, secret and all', () => {
    const r = checkpt(['-r', 'sealed.ckpt'], { CHECKPT_KEY_FILE: keyFile });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1));
    assert.deepEqual([out.event, out.r, out.secret], ['returned', 1, SECRET]);
    // The positive control for refusedBeforeAnyProcess(): this time both did start.
    assert.match(started(), /^helper init/m);
    assert.match(started(), /^criu restore/m);
    assert.deepEqual(readdirSync(staging), []);
    rmSync(calls);
  });

  test('checkpt() with an unsafe key file throws EKEY before anything is frozen; nothing is written', async () => {
    const loose = join(dir, 'loose-key-2');
    writeFileSync(loose, randomBytes(32), { mode: 0o640 });
    chmodSync(loose, 0o640);
    const p = startNode(node, fixture('secret.mjs'), ['never.ckpt'], {
      cwd: dir,
      env: { ...process.env, CHECKPT_KEY_FILE: loose },
    });
    const { code } = await p.closed;
    assert.notEqual(code, 0);
    assert.match(p.stderrText, /EKEY/);
    assert.match(p.stderrText, /chmod 600/);
    assert.ok(!existsSync(join(dir, 'never.ckpt')));
    assert.ok(!readdirSync(dir).some((f) => f.includes('never.ckpt')), 'a temporary file remains');
  });
});

describe('damaged and hostile real checkpoints', () => {
  test('each is refused by checkpt -r before any process is created', async () => {
    const good = readFileSync(plainFile);
    const { manifest, entries, blake3 } = unpack(good);
    // The repacking itself is right: the unchanged repack is accepted.
    assert.ok(pack({ blake3, manifest, entries }).equals(good), 'repack is byte-identical');
    const version = (v) => {
      const b = Buffer.from(good);
      b.writeUInt32BE(v, 8);
      return b;
    };
    // A byte of the index (its chunk table, right before the trailer): found before anything
    // starts.
    const flipped = Buffer.from(good);
    flipped[good.length - 60] ^= 0x80;
    const renamed = (name) => entries.map((e, i) => (i === 0 ? { ...e, name } : e));
    const cases = {
      'truncated to half': [good.subarray(0, good.length >> 1), /truncated/],
      'truncated in the header': [good.subarray(0, 10), /truncated/],
      'cut in its trailer': [good.subarray(0, good.length - 20), /truncated|damaged/],
      'a byte flipped': [flipped, /checksum mismatch/],
      'empty file': [Buffer.alloc(0), /is empty/],
      'newer format': [version(3), /newer checkpt.*upgrade checkpt/],
      'format 0': [version(0), /unknown format version 0/],
      gzipped: [gzipSync(good.subarray(0, 65536)), /not a checkpt file \(it looks like a gzip/],
      'a text file': [Buffer.from('#!/bin/sh\necho hi\n'), /not a checkpt file/],
      'ELF binary': [readFileSync(process.execPath).subarray(0, 8192), /looks like an executable/],
      'entry ../x': [
        pack({ blake3, manifest, entries: renamed('../escape.img') }),
        /path separator/,
      ],
      'entry /etc/x': [
        pack({ blake3, manifest, entries: renamed('/etc/escape.img') }),
        /path separator/,
      ],
      'entry a/b': [pack({ blake3, manifest, entries: renamed('a/escape.img') }), /path separator/],
      'entry with NUL': [
        pack({ blake3, manifest, entries: renamed('x\0.img') }),
        /control character/,
      ],
      'entry named twice': [
        pack({ blake3, manifest, entries: [...entries, entries[0]] }),
        /appears twice|CRIU images hold/,
      ],
      'imageBytes lies': [
        pack({
          blake3,
          manifest: { ...manifest, imageBytes: manifest.imageBytes + 4096 },
          entries,
        }),
        /CRIU images hold/,
      ],
      'manifest without a pid': [
        pack({ blake3, manifest: { ...manifest, pid: undefined }, entries }),
        /incomplete manifest/,
      ],
    };
    for (const [label, [bytes, message]] of Object.entries(cases)) {
      const file = join(dir, 'bad.ckpt');
      writeFileSync(file, bytes);
      refusedBeforeAnyProcess(checkpt(['-r', file]), message, label);
    }
    assert.ok(!existsSync(join(dir, 'escape.img')) && !existsSync('/etc/escape.img'));

    // A byte of memory (a third into the file: the heap) is found by the page server while CRIU
    // restores: the copy, held in CRIU's post-restore step, is killed before it has run
    // (test/engine/page-server-restore.test.mjs shows the hold with the checking slowed).
    const memory = Buffer.from(good);
    memory[Math.floor(good.length / 3)] ^= 0x80;
    const file = join(dir, 'bad.ckpt');
    writeFileSync(file, memory);
    const r = checkpt(['-r', file]);
    assert.equal(r.status, 125, r.stderr);
    assert.match(r.stderr, /checksum mismatch|sha256/);
    assert.equal(r.stdout, '', 'the program never ran');
    assert.deepEqual(readdirSync(staging), [], 'no unpacked images left behind');
    // That restore may have started the helper and CRIU (the copy dies in the hold): the cases
    // below are judged on their own calls.
    rmSync(calls, { force: true });

    const fifo = join(dir, 'fifo.ckpt');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    // A plain open of a FIFO with no writer blocks forever; the timeout above would kill it.
    refusedBeforeAnyProcess(
      checkpt(['-r', fifo], {}, { timeout: 30_000 }),
      /not a regular file/,
      'FIFO',
    );
    refusedBeforeAnyProcess(checkpt(['-r', dir]), /is a directory/, 'a directory');
    refusedBeforeAnyProcess(checkpt(['-r', '/dev/zero']), /not a regular file/, '/dev/zero');
  });
});

describe('file names a shell would mangle', () => {
  test('checkpt(), inspect and -r take a name with spaces, quotes, $(...), a newline and a leading dash', () => {
    assert.ok(existsSync(plainFile));
    for (const args of [
      ['inspect', '--', NASTY],
      ['inspect', `./${NASTY}`],
      ['inspect', '--verify', plainFile],
    ]) {
      const r = checkpt(args);
      assert.equal(r.status, 0, `${JSON.stringify(args)}: ${r.stderr}`);
      assert.match(r.stdout, /secret\.mjs/);
    }
    // Without `--` the leading dash is an option, and refused as one rather than guessed at.
    const guess = checkpt(['inspect', NASTY]);
    assert.equal(guess.status, 2);
    const r = checkpt(['-r', '--', NASTY]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1));
    assert.deepEqual([out.r, out.secret], [1, SECRET]);
    assert.ok(!existsSync(join(dir, 'PWNED')), 'a $(...) in a name was run');
  });

  test('checkpt run --file with such a template writes an encrypted checkpoint from outside that resumes', async () => {
    const template = `-run 'q' "d" $(touch PWNED)\n%N.ckpt`;
    const file = join(dir, `-run 'q' "d" $(touch PWNED)\nloop.ckpt`);
    const env = { ...process.env, CHECKPT_KEY_FILE: keyFile };
    const p = run(['--file', template, '--', 'sh', fixture('loop.sh'), '100'], { cwd: dir, env });
    await waitFor(p, (e) => e.event === 'tick' && e.n >= 102, 'ticks');
    const sig = spawnSync(process.execPath, [cli, 'signal', '--exit', String(p.pid)]);
    assert.equal(sig.status, 0, String(sig.stderr));
    assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
    const stoppedAt = events(p)
      .filter((e) => e.event === 'tick')
      .at(-1).n;
    assert.ok(existsSync(file), `${readdirSync(dir).join(', ')}`);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(readFileSync(file).readUInt32BE(12), 1, 'encrypted');
    assert.match(checkpt(['inspect', '--', file.slice(dir.length + 1)]).stdout, /encrypted/);

    const copy = start(process.execPath, [cli, '-r', '--', file.slice(dir.length + 1)], {
      cwd: dir,
      env,
    });
    const first = await waitFor(copy, (e) => e.event === 'tick', 'the resumed copy');
    assert.equal(first.n, stoppedAt + 1);
    process.kill(copy.pid, 'SIGTERM');
    await copy.closed;
    assert.ok(!existsSync(join(dir, 'PWNED')), 'a $(...) in a name was run');
  });
});
