import assert from 'node:assert/strict';
import {
  cleanup,
  cli,
  describe,
  fixture,
  nodeBinaries,
  removeDir,
  resume,
  spawnSync,
  startNode,
  tempDir,
  test,
  unitTest,
  waitFor,
} from '../helpers.mjs';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as zlib from 'node:zlib';
import { after, before } from 'node:test';
import { extractImage, writeImage } from '../../dist/image/format.js';
import { oneFrame } from '../../dist/image/compress.js';

const node = nodeBinaries()[0];

const inspect = (file, env = process.env) => {
  const r = spawnSync(process.execPath, [cli, 'inspect', '--json', '--verify', file], {
    encoding: 'utf8',
    env,
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
};

async function checkpointOnce(file, args, env = {}) {
  const p = startNode(node, fixture('state.mjs'), [file, ...args], {
    env: { ...process.env, ...env },
  });
  const back = await waitFor(p, (e) => e.event === 'returned', 'checkpoint');
  assert.equal(back.r, 0);
  await p.closed;
}

describe('compressed images', () => {
  let dir;
  before(() => {
    dir = tempDir();
  });
  after(async () => {
    await cleanup();
    removeDir(dir);
  });

  test('checkpoint() compresses memory after the program runs again, and the copy has it all', async () => {
    const file = join(dir, 'async.ckpt');
    await checkpointOnce(file, ['--async']);
    const j = inspect(file);
    assert.equal(j.manifest.compression, 'zstd');
    const pages = j.entries.filter((e) => /^pages-\d+\.img\.zst$/.test(e.name));
    assert.ok(pages.length >= 1, JSON.stringify(j.entries.map((e) => e.name)));
    assert.ok(j.fileSize < j.manifest.imageBytes, `${j.fileSize} < ${j.manifest.imageBytes}`);
    const r = resume(file);
    const back = await waitFor(r, (e) => e.event === 'returned', 'the resumed copy');
    assert.equal(back.r, 1);
    assert.equal(back.mapSize, 100_000);
    assert.deepEqual(back.mapSample, { i: 99999, sq: 99999 * 99999 });
    assert.equal((await r.closed).code, 7, r.stderrText);
  });

  test('checkpt() (the program waits) is not compressed unless CHECKPT_COMPRESS=1', async () => {
    const plain = join(dir, 'sync.ckpt');
    await checkpointOnce(plain, []);
    assert.equal(inspect(plain).manifest.compression, undefined);
    assert.ok(inspect(plain).entries.some((e) => /^pages-\d+\.img$/.test(e.name)));
    const forced = join(dir, 'sync-z.ckpt');
    await checkpointOnce(forced, [], { CHECKPT_COMPRESS: '1' });
    assert.equal(inspect(forced).manifest.compression, 'zstd');
    const off = join(dir, 'async-plain.ckpt');
    await checkpointOnce(off, ['--async'], { CHECKPT_COMPRESS: '0' });
    assert.equal(inspect(off).manifest.compression, undefined);
  });

  test('compressed and encrypted: the memory is compressed first, then sealed, and resumes', async () => {
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, randomBytes(32), { mode: 0o600 });
    const env = { ...process.env, CHECKPT_KEY_FILE: keyFile };
    const file = join(dir, 'sealed.ckpt');
    await checkpointOnce(file, ['--async'], { CHECKPT_KEY_FILE: keyFile });
    const j = inspect(file, env);
    assert.equal(j.manifest.compression, 'zstd');
    assert.ok(j.entries.some((e) => /^pages-\d+\.img\.zst$/.test(e.name)));
    const r = resume(file, { env });
    const back = await waitFor(r, (e) => e.event === 'returned', 'the resumed copy');
    assert.equal(back.r, 1);
    assert.deepEqual(back.mapSample, { i: 99999, sq: 99999 * 99999 });
    assert.equal((await r.closed).code, 7, r.stderrText);
  });

  test('without the zstd program: one zstd stream is refused with advice and nothing starts; zstd frames resume', async () => {
    const env = { ...process.env, CHECKPT_ZSTD: join(dir, 'no-such-zstd') };
    // The program that wrote async.ckpt ran on this Node: with zstd in its zlib (22.15+) the
    // memory is in frames, checked and decoded by checkpt itself; else one stream, by the program.
    if (typeof zlib.zstdDecompress === 'function') {
      const r = resume(join(dir, 'async.ckpt'), { env });
      const back = await waitFor(r, (e) => e.event === 'returned', 'the resumed copy');
      assert.deepEqual(back.mapSample, { i: 99999, sq: 99999 * 99999 });
      assert.equal((await r.closed).code, 7, r.stderrText);
      return;
    }
    const r = spawnSync(process.execPath, [cli, '-r', join(dir, 'async.ckpt')], {
      encoding: 'utf8',
      env,
    });
    assert.equal(r.status, 125, r.stderr);
    assert.match(r.stderr, /zstd program is missing.*apt-get install zstd/);
    assert.doesNotMatch(r.stdout, /"event":"returned"/);
  });

  test('compressed memory that does not decompress is refused before any process starts', async () => {
    const unpacked = join(dir, 'unpacked');
    mkdirSync(unpacked);
    const info = await extractImage(join(dir, 'async.ckpt'), unpacked);
    const name = readdirSync(unpacked).find((n) => n.endsWith('.zst'));
    const bytes = readFileSync(join(unpacked, name));
    // Damage the compressed data, then pack it under a valid checksum: only zstd can tell.
    for (let i = 64; i < bytes.length; i += 4096) bytes[i] ^= 0x5a;
    writeFileSync(join(unpacked, name), bytes);
    const bad = join(dir, 'bad-zstd.ckpt');
    await writeImage(bad, info.manifest, { dir: unpacked });
    const r = resume(bad);
    const end = await r.closed;
    assert.equal(end.code, 125, r.stderrText);
    // Found by the frame whose chunk it is, or (frames no longer found) by decoding the whole.
    assert.match(
      r.stderrText,
      /damaged \(its compressed memory does not decompress|damaged or was tampered with \(memory entry pages-\d+\.img\.zst, chunk index \d+ of \d+ chunks, its zstd frame does not decode to its size\)/,
    );
    assert.deepEqual(r.lines, []);
  });
});

test("a chunk whose zstd frame fills zlib's output buffers exactly stays one frame: the file is served chunk by chunk", async (t) => {
  // The fixture is such a frame, 32768 bytes, from a 2 GB program's memory: Node's zlib ended it
  // with a second, empty frame, and the whole 1 GB file was then unpacked before each resume.
  const nodes = nodeBinaries().filter((n) => n.major >= 22);
  if (nodes.length === 0) return t.skip('no Node 22+ here (scripts/install-nodes.sh)');
  for (const n of nodes) {
    const dir = tempDir();
    try {
      const r = spawnSync(
        n.bin,
        [fixture('compress-frames.mjs'), fixture('zstd-frame-32768.zst'), dir],
        {
          encoding: 'utf8',
          timeout: 30_000,
        },
      );
      assert.equal(r.status, 0, `Node ${n.major}: ${r.stderr}`);
      assert.deepEqual(
        JSON.parse(r.stdout),
        { chunk: 65536, frames: 16, decoded: 1 << 20, lazy: true, served: true },
        `Node ${n.major}`,
      );
    } finally {
      removeDir(dir);
    }
  }
});

unitTest('oneFrame drops the empty zstd frames that end a chunk, and nothing else', () => {
  const empty = Buffer.from('28b52ffd2000010000', 'hex');
  const frame = Buffer.from('28b52ffd6000800500aabbcc', 'hex');
  assert.deepEqual(oneFrame(Buffer.concat([frame, empty])), frame);
  assert.deepEqual(oneFrame(Buffer.concat([frame, empty, empty])), frame);
  assert.deepEqual(oneFrame(frame), frame);
  assert.deepEqual(
    oneFrame(empty),
    empty,
    'a chunk that is only an empty frame is left to the reader to refuse',
  );
});
