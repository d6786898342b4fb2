// The native page server checking a real checkpoint file's memory chunks itself (its checker
// thread): plain and zstd chunks are read, hashed against the file's table and served without
// this process reading them; a damaged chunk is EBADIMAGE naming it, and nothing of the answer
// that needed it is sent; an encrypted file's chunks are still checked and staged by checkpt.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from 'node:net';
import { open } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import * as zlib from 'node:zlib';
import { nodeBinaries, scratchDir, unitTest as test } from '../helpers.mjs';
import { blake3 } from '../../dist/common/blake3.js';
import { compressImages } from '../../dist/image/compress.js';
import { extractLazy, readImageInfo, writeImage } from '../../dist/image/format.js';
import { readMemoryPlan } from '../../dist/engine/pagemap.js';
import { serverMaps, servePages, stageBeforeRestore } from '../../dist/engine/page-server.js';
import { StagedPages } from '../../dist/engine/staged-pages.js';
import { iov, LAZY, PAGE, pagemap, pair, PRESENT, readBytes } from './fake-daemon.mjs';

const MIB = 1024 * 1024;

const PAGES_PER_MIB = MIB / PAGE;
const GET = 7;
const CLOSE = 0x1024;
const VADDR = 0x7f0000000000;

/**
 * A checkpoint file whose task 100 has 3 MiB of memory: one eager page, then the rest lazy.
 * `fill` makes the memory (random: stored as it is; repetitive: compressible).
 */
async function checkpointFile(
  t,
  { fill = randomBytes, compress = false, key, chunkHash, mib = 3, memoryChunk } = {},
) {
  const root = scratchDir(t, 'checkpt-checker-');
  const images = join(root, 'images');
  mkdirSync(images);
  const memory = fill(mib * MIB);
  writeFileSync(
    join(images, 'pagemap-100.img'),
    pagemap(1, [
      [VADDR, 1, PRESENT],
      [VADDR + PAGE, mib * PAGES_PER_MIB - 1, PRESENT | LAZY],
    ]),
  );
  writeFileSync(join(images, 'pages-1.img'), memory);
  writeFileSync(join(images, 'core-100.img'), 'core');
  if (compress) assert.equal(await compressImages(images), 1, 'pages-1.img compressed');
  const file = join(root, 'app.ckpt');
  await writeImage(
    file,
    { program: 'test' },
    { dir: images },
    {
      ...(key ? { key } : {}),
      ...(chunkHash ? { chunkHash } : {}),
      ...(memoryChunk ? { memoryChunk } : {}),
    },
  );
  return { root, file, memory };
}

/**
 * Serves `file`'s memory to a fake daemon; `reads` counts the chunks this process read itself.
 * With `slowMs`, each block's check by the server takes that much longer.
 */
async function serve(root, file, key, { slowMs, ...opts } = {}) {
  if (slowMs === undefined) return serveNow(root, file, key, opts);
  process.env.CHECKPT_FAULT_SLOW_CHECK_MS = String(slowMs);
  try {
    return await serveNow(root, file, key, opts);
  } finally {
    delete process.env.CHECKPT_FAULT_SLOW_CHECK_MS;
  }
}

async function serveNow(root, file, key, { stage = true, stagedMap, maps = false, hold } = {}) {
  const dir = join(root, 'restore');
  mkdirSync(dir);
  const lazy = await extractLazy(file, dir, key ? { key } : {});
  assert.ok(lazy, 'a format-2 file served lazily');
  const source = lazy.pages;
  const counted = { reads: 0 };
  const counting = {
    entries: source.entries,
    close: () => source.close(),
    read: (...a) => {
      counted.reads++;
      return source.read(...a);
    },
    direct: (e) => source.direct(e),
    damaged: (...a) => source.damaged(...a),
  };
  // With `maps`, the server reads the page maps itself, as a resume of a plain or zstd file has it.
  const plan = maps ? { pagemaps: dir } : await readMemoryPlan(dir, counting, file);
  const staged = await StagedPages.create(dir, counting);
  const { server, daemon } = await pair();
  const errors = [];
  const ps = servePages(server, staged, plan, file, (e) => errors.push(e), stagedMap, hold);
  // What CRIU's restore reads itself, staged before it runs, by whoever checks that image. (The
  // server's own pass through the file may find a damaged chunk first: then this fails with it.)
  const staging = ps.stage(maps ? 'eager' : plan.eager);
  staging.catch(() => undefined);
  if (stage) await staging;
  const eager = readFileSync(join(dir, 'pages-1.img')).subarray(0, PAGE);
  return { ps, daemon, errors, staged, counted, eager, direct: source.direct('pages-1.img') };
}

/** Asks for `nr` pages at page `first` of the lazy entry, then goodbye; resolves with the answers. */
async function fetch(daemon, requests) {
  const want = requests.reduce((n, [, nr]) => n + 32 + nr * PAGE, 0) + 4;
  const got = readBytes(daemon, want);
  daemon.write(
    Buffer.concat(requests.map(([first, nr]) => iov(GET, nr, VADDR + first * PAGE, 100))),
  );
  daemon.write(iov(CLOSE, 0, 0, 0));
  return got;
}

for (const [name, opts, maps] of [
  ['plain chunks', {}, false],
  ['plain chunks, SHA-256 tables', { chunkHash: 'sha256' }, false],
  ['zstd chunks', { compress: true, fill: (n) => Buffer.alloc(n, 'checkpt ') }, false],
  ['plain chunks, page maps read by the server', {}, true],
  [
    'zstd chunks, page maps read by the server',
    { compress: true, fill: (n) => Buffer.alloc(n, 'checkpt ') },
    true,
  ],
])
  test(`${name}: checked and served by the native server, none read here`, async (t) => {
    if (opts.compress && typeof zlib.zstdDecompressSync !== 'function')
      return t.skip('this Node serves zstd chunks only with zlib zstd (Node 22.15+)');
    const { root, file, memory } = await checkpointFile(t, opts);
    const { ps, daemon, errors, staged, counted, eager, direct } = await serve(
      root,
      file,
      undefined,
      {
        maps,
      },
    );
    assert.equal(direct?.zstd, opts.compress === true, 'the file gives the server its table');
    assert.ok(eager.equals(memory.subarray(0, PAGE)), 'the eager page staged by the server');
    // Across the chunk boundaries, out of order, and the last page.
    const requests = [
      [PAGES_PER_MIB - 2, 4],
      [1, 3],
      [3 * PAGES_PER_MIB - 1, 1],
    ];
    const got = await fetch(daemon, requests);
    let at = 0;
    for (const [first, nr] of requests) {
      const head = got.subarray(at, at + 32);
      assert.equal(head.readUInt32LE(0), (4 << 16) | 6);
      assert.equal(head.readBigUInt64LE(16), BigInt(VADDR + first * PAGE));
      const body = got.subarray(at + 32, at + 32 + nr * PAGE);
      assert.ok(
        body.equals(memory.subarray(first * PAGE, (first + nr) * PAGE)),
        `pages at ${first}`,
      );
      at += 32 + nr * PAGE;
    }
    assert.deepEqual(got.subarray(at), Buffer.alloc(4), 'status 0 for the goodbye');
    assert.equal(await ps.done, true);
    assert.deepEqual(errors, []);
    assert.equal(counted.reads, 0, 'every chunk was read and checked by the server, not here');
    daemon.destroy();
    await staged.close();
  });

test('a chunk table longer than the server reads at once: every row belongs to its own chunk', async (t) => {
  // 2048 chunks of 4 KiB: the server reads the plan's table 1820 rows at a time (page-server.c).
  const { root, file, memory } = await checkpointFile(t, { mib: 8, memoryChunk: PAGE });
  const { ps, daemon, errors, staged, counted } = await serve(root, file, undefined, {
    maps: true,
  });
  const requests = [
    [1818, 4],
    [1, 2],
    [8 * PAGES_PER_MIB - 1, 1],
    [1820, 1],
  ];
  const got = await fetch(daemon, requests);
  let at = 0;
  for (const [first, nr] of requests) {
    const body = got.subarray(at + 32, at + 32 + nr * PAGE);
    assert.ok(body.equals(memory.subarray(first * PAGE, (first + nr) * PAGE)), `pages at ${first}`);
    at += 32 + nr * PAGE;
  }
  assert.equal(await ps.done, true);
  assert.deepEqual(errors, []);
  assert.equal(counted.reads, 0, 'every chunk was read and checked by the server');
  daemon.destroy();
  await staged.close();
});

test('plain chunks are sent from the checkpoint file itself until someone opens it for writing', async (t) => {
  const { root, file, memory } = await checkpointFile(t);
  const { ps, daemon, errors, staged } = await serve(root, file);
  const stagedImage = join(root, 'restore', 'pages-1.img');
  const ask = async (first, nr) => {
    const got = readBytes(daemon, 32 + nr * PAGE);
    daemon.write(iov(GET, nr, VADDR + first * PAGE, 100));
    return (await got).subarray(32);
  };
  // Checked in the file and sent from it: nothing of it was copied to the staged image.
  const before = await ask(PAGES_PER_MIB + 5, 2);
  assert.ok(before.equals(memory.subarray((PAGES_PER_MIB + 5) * PAGE, (PAGES_PER_MIB + 7) * PAGE)));
  const hole = readFileSync(stagedImage).subarray(
    (PAGES_PER_MIB + 5) * PAGE,
    (PAGES_PER_MIB + 7) * PAGE,
  );
  assert.ok(hole.equals(Buffer.alloc(2 * PAGE)), 'sent from the checkpoint file, not staged');
  // Another block, checked because it was asked for: the background walk may not have reached it
  // yet, and a block checked by no one before the writer comes cannot be served after it.
  const other = await ask(2 * PAGES_PER_MIB + 3, 4);
  assert.ok(
    other.equals(memory.subarray((2 * PAGES_PER_MIB + 3) * PAGE, (2 * PAGES_PER_MIB + 7) * PAGE)),
  );
  // A writer: its open waits until the server has copied and checked what it sent from the file.
  const writer = await open(file, 'r+');
  try {
    const copied = readFileSync(stagedImage).subarray(
      (PAGES_PER_MIB + 5) * PAGE,
      (PAGES_PER_MIB + 7) * PAGE,
    );
    assert.ok(copied.equals(before), 'copied to the staged image before the writer got the file');
    // The writer ruins the file: what is sent from now on is what was checked before.
    const { size } = await writer.stat();
    await writer.write(Buffer.alloc(size, 0xee), 0, size, 0);
  } finally {
    await writer.close();
  }
  for (const [first, nr] of [
    [PAGES_PER_MIB + 5, 2],
    [2 * PAGES_PER_MIB + 3, 4],
  ]) {
    const later = await ask(first, nr);
    assert.ok(
      later.equals(memory.subarray(first * PAGE, (first + nr) * PAGE)),
      `pages at ${first}`,
    );
  }
  await goodbye(daemon, ps, errors);
  daemon.destroy();
  await staged.close();
});

/** The daemon's goodbye: answered with status 0, and the server ends having reported nothing. */
async function goodbye(daemon, ps, errors) {
  const bye = readBytes(daemon, 4);
  daemon.write(iov(CLOSE, 0, 0, 0));
  assert.deepEqual(await bye, Buffer.alloc(4));
  assert.equal(await ps.done, true);
  assert.deepEqual(errors, []);
}

/** The map of checked blocks the server shares with CRIU's daemon (native/page-server.c). */
function readMap(path) {
  const m = readFileSync(path);
  const files = [];
  for (let i = 0; i < m.readUInt32LE(8); i++) {
    const at = 48 + i * 80;
    const field = (k) => Number(m.readBigUInt64LE(at + 8 * k));
    const [dev, ino, size, block, blocks, statesOff, offsetsOff, digestsOff, storedOff] = [
      0, 1, 2, 3, 4, 5, 6, 7, 8,
    ].map(field);
    files.push({
      dev,
      ino,
      size,
      block,
      states: [...m.subarray(statesOff, statesOff + blocks)],
      offsets: offsetsOff
        ? [...Array(blocks).keys()].map((b) => Number(m.readBigUInt64LE(offsetsOff + 8 * b)))
        : [],
      hash: m.readUInt32LE(at + 72),
      codec: m.readUInt32LE(at + 76),
      stored: storedOff
        ? [...Array(blocks).keys()].map((b) => m.readUInt32LE(storedOff + 4 * b))
        : [],
      digests: digestsOff
        ? [...Array(blocks).keys()].map((b) =>
            m.subarray(digestsOff + 32 * b, digestsOff + 32 * b + 32),
          )
        : [],
    });
  }
  return {
    magic: m.readUInt32LE(0),
    version: m.readUInt32LE(4),
    serverPid: m.readUInt32LE(12),
    directOk: m.readUInt32LE(16),
    files,
  };
}

/** Sets the map's count of the daemon's reads from the checkpoint file, as the daemon does. */
function setReaders(path, n) {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  writeSync(fd, b, 0, 4, 20);
  closeSync(fd);
}

test("checked blocks are shared with CRIU's daemon; a writer waits for the daemon's reads from the file", async (t) => {
  const { root, file, memory } = await checkpointFile(t);
  const map = join(root, 'staged.map');
  const { ps, daemon, errors, staged } = await serve(root, file, undefined, { stagedMap: map });
  // Also when an assertion fails: the server ends with the daemon's socket.
  t.after(async () => {
    daemon.destroy();
    await staged.close().catch(() => undefined);
  });
  const ask = async (first, nr) => {
    const got = readBytes(daemon, 32 + nr * PAGE);
    daemon.write(iov(GET, nr, VADDR + first * PAGE, 100));
    return (await got).subarray(32);
  };
  await ask(PAGES_PER_MIB + 5, 2);
  const shared = readMap(map);
  assert.equal(shared.magic, 0x50414d53, 'the map is complete');
  assert.match(
    readFileSync(`/proc/${shared.serverPid}/cmdline`, 'utf8'),
    /serve-pages/,
    "the server's pid, for the daemon to open its file",
  );
  assert.equal(shared.directOk, 1, 'reading from the checkpoint file allowed: the lease is held');
  assert.equal(shared.version, 3);
  const [f] = shared.files;
  const st = statSync(join(root, 'restore', 'pages-1.img'));
  assert.deepEqual(
    [f.dev, f.ino, f.size],
    [st.dev, st.ino, memory.length],
    'names the staged image',
  );
  // 64 KiB blocks: the one asked for was checked in the file; where each lies there is given.
  const b = Math.floor(((PAGES_PER_MIB + 5) * PAGE) / f.block);
  assert.equal(f.states[b], 2, 'checked where it lies in the checkpoint file');
  const bytes = readFileSync(file);
  assert.ok(
    bytes
      .subarray(f.offsets[b], f.offsets[b] + f.block)
      .equals(memory.subarray(b * f.block, (b + 1) * f.block)),
    'the offset of its chunk in the checkpoint file',
  );
  // Every block's BLAKE3 digest, for the daemon to check a fault's block itself.
  assert.equal(f.hash, 2, 'BLAKE3 digests');
  assert.equal(f.digests.length, f.states.length);
  for (const i of [0, b, f.states.length - 1]) {
    const want = blake3(
      bytes.subarray(f.offsets[i], f.offsets[i] + Math.min(f.block, f.size - i * f.block)),
    );
    assert.ok(f.digests[i].equals(want), `block ${i}'s digest`);
  }
  // A read of the daemon's from the file is under way: a writer's open waits until it ends.
  setReaders(map, 1);
  let opened = false;
  const writer = open(file, 'r+').then((h) => {
    opened = true;
    return h;
  });
  t.after(async () => (await writer.catch(() => undefined))?.close());
  await sleep(300);
  assert.equal(opened, false, 'the writer waits while the daemon reads from the file');
  assert.equal(readMap(map).directOk, 0, 'the daemon may start no new read from the file');
  setReaders(map, 0);
  await writer;
  const after = readMap(map).files[0];
  assert.equal(
    after.states[b],
    1,
    'copied to the staged image (checked again) before the writer got the file',
  );
  assert.ok(!after.states.includes(2), 'nothing is left to be read from the file');
  await goodbye(daemon, ps, errors);
});

test("a zstd file's map gives each frame's digest and stored length, for the daemon's own check", async (t) => {
  if (typeof zlib.zstdDecompressSync !== 'function')
    return t.skip('this Node serves zstd chunks only with zlib zstd (Node 22.15+)');
  const { root, file, memory } = await checkpointFile(t, {
    compress: true,
    fill: (n) => Buffer.alloc(n, 'checkpt '),
  });
  const map = join(root, 'staged.map');
  const { ps, daemon, errors, staged } = await serve(root, file, undefined, { stagedMap: map });
  t.after(async () => {
    daemon.destroy();
    await staged.close().catch(() => undefined);
  });
  const [f] = readMap(map).files;
  assert.deepEqual([f.hash, f.codec], [2, 1], 'BLAKE3 digests of zstd frames');
  assert.equal(f.stored.length, f.states.length);
  const bytes = readFileSync(file);
  for (let b = 0; b < f.states.length; b++) {
    const frame = bytes.subarray(f.offsets[b], f.offsets[b] + f.stored[b]);
    assert.ok(f.digests[b].equals(blake3(frame)), `block ${b}'s digest`);
    assert.ok(
      zlib.zstdDecompressSync(frame).equals(memory.subarray(b * f.block, (b + 1) * f.block)),
      `block ${b}'s frame`,
    );
  }
  await goodbye(daemon, ps, errors);
});

/**
 * 16 MiB in 256 blocks of 64 KiB served with a shared map, each check slowed to 20 ms so that the
 * background walk is caught part of the way; `checked()` lists the lazy blocks checked so far.
 */
async function slowWalk(t) {
  const { root, file } = await checkpointFile(t, { mib: 16 });
  const map = join(root, 'staged.map');
  const served = await serve(root, file, undefined, { stagedMap: map, slowMs: 20 });
  const { daemon, staged } = served;
  t.after(async () => {
    daemon.destroy();
    await staged.close().catch(() => undefined);
  });
  const checked = () =>
    readMap(map)
      .files[0].states.map((s, b) => (s && b > 0 ? b : -1))
      .filter((b) => b >= 0);
  return { ...served, map, checked };
}

test('the background walk checks a file from its end (4 MiB at a time): the top of the address space comes first', async (t) => {
  const { ps, daemon, errors, map, checked } = await slowWalk(t);
  const deadline = Date.now() + 10_000;
  while (checked().length < 4) {
    assert.ok(Date.now() < deadline, `the walk checked ${checked().length} blocks in 10 s`);
    await sleep(20);
  }
  const got = checked();
  const blocks = readMap(map).files[0].states.length;
  // From the end, in runs of 64 blocks (4 MiB) each taken in file order: the last run first.
  assert.ok(
    got.every((b) => b >= blocks - 64),
    `only blocks of the file's last 4 MiB so far: ${got}`,
  );
  await goodbye(daemon, ps, errors);
});

test("the walk takes first the blocks around the copy's latest faults, as CRIU's daemon writes them beside the map", async (t) => {
  const { ps, daemon, errors, map, checked } = await slowWalk(t);
  // The daemon's side (xfer-ordered-by-faults.patch): one fault's lazy range, blocks 40 to 43.
  const hints = `${map}.hints`;
  // Made with the map, once the server shares its states.
  for (const end = Date.now() + 10_000; !existsSync(hints); await sleep(10))
    assert.ok(Date.now() < end, `no ${hints} in 10 s`);
  const ring = readFileSync(hints);
  assert.equal(ring.readUInt32LE(0), 0x544e4948, 'the ring is marked');
  assert.ok(ring.readUInt32LE(4) > 0, 'the ring has slots');
  const slot = Buffer.alloc(24);
  slot.writeUInt32LE(100, 0);
  slot.writeBigUInt64LE(BigInt(VADDR + 40 * 65536), 8);
  slot.writeBigUInt64LE(BigInt(VADDR + 44 * 65536), 16);
  const fd = openSync(hints, 'r+');
  writeSync(fd, slot, 0, 24, 16);
  const w = Buffer.alloc(8);
  w.writeBigUInt64LE(1n);
  writeSync(fd, w, 0, 8, 8);
  closeSync(fd);
  const hinted = [40, 41, 42, 43];
  const deadline = Date.now() + 10_000;
  while (!hinted.every((b) => checked().includes(b))) {
    assert.ok(Date.now() < deadline, `blocks 40-43 not checked in 10 s: ${checked()}`);
    await sleep(20);
  }
  // The walk alone would reach them after the 200 blocks above them (4 s at 20 ms each).
  const got = checked();
  assert.ok(got.length < 40, `the hinted blocks came before most of the walk: ${got}`);
  await goodbye(daemon, ps, errors);
});

test('a checkpoint file someone holds open for writing is not sent from: its chunks are staged, checked, as before', async (t) => {
  const { root, file, memory } = await checkpointFile(t);
  // No read lease while a writer has the file open: the server must not send from it.
  const writer = await open(file, 'r+');
  try {
    const { ps, daemon, errors, staged } = await serve(root, file);
    const first = PAGES_PER_MIB + 5;
    const got = readBytes(daemon, 32 + 2 * PAGE + 4);
    daemon.write(Buffer.concat([iov(GET, 2, VADDR + first * PAGE, 100), iov(CLOSE, 0, 0, 0)]));
    const body = (await got).subarray(32, 32 + 2 * PAGE);
    const want = memory.subarray(first * PAGE, (first + 2) * PAGE);
    assert.ok(body.equals(want), 'the pages as checkpointed');
    const inStaging = readFileSync(join(root, 'restore', 'pages-1.img')).subarray(
      first * PAGE,
      (first + 2) * PAGE,
    );
    assert.ok(inStaging.equals(want), 'staged before they were sent');
    assert.equal(await ps.done, true);
    assert.deepEqual(errors, []);
    daemon.destroy();
    await staged.close();
  } finally {
    await writer.close();
  }
});

/** Flips a byte of chunk 32 (64 KiB chunks: the first of the third MiB): only its first read can find it. */
function damageChunk32(file, memory) {
  const bytes = readFileSync(file);
  const probe = memory.subarray(2 * MIB + 4096, 2 * MIB + 4160);
  const at = bytes.indexOf(probe);
  assert.ok(at > 0 && bytes.indexOf(probe, at + 1) < 0, 'chunk 32 found in the file');
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from([bytes[at] ^ 0xff]), 0, 1, at);
  closeSync(fd);
}

for (const chunkHash of ['blake3', 'sha256'])
  test(`a damaged chunk (${chunkHash} tables): EBADIMAGE naming it, nothing of the answer that needed it`, async (t) => {
    const { root, file, memory } = await checkpointFile(t, { chunkHash });
    assert.equal((await readImageInfo(file)).chunkHash, chunkHash);
    damageChunk32(file, memory);
    const { ps, daemon, errors, staged } = await serve(root, file, undefined, { stage: false });
    // The server may be gone before the requests are out.
    daemon.on('error', () => undefined);
    // The first answer may go out (its chunk is sound); the one in chunk 32 must not.
    const got = readBytes(daemon, 32 + PAGE + 32 + PAGE + 1);
    daemon.write(
      Buffer.concat([iov(GET, 1, VADDR + PAGE, 100), iov(GET, 1, VADDR + 2 * MIB + PAGE, 100)]),
    );
    await assert.rejects(ps.done, (e) => {
      assert.equal(e.code, 'EBADIMAGE');
      assert.ok(e.message.includes(file), e.message);
      assert.match(
        e.message,
        /checksum mismatch in memory entry pages-1\.img, chunk index 32 of 48 chunks/,
      );
      return true;
    });
    assert.equal(errors.length, 1);
    const sent = await got;
    assert.ok(sent.length <= 32 + PAGE, `only the sound answer at most (${sent.length} bytes)`);
    daemon.destroy();
    await staged.close();
  });

/**
 * CRIU's post-restore step as checkpt's helper plays it: connects to `path` (retrying while
 * nothing listens there, as the helper does, until `ended` says the server is gone), says
 * "restored" and resolves with what comes back before the end ('1' lets the copy run; anything
 * else, '' included, fails the step).
 */
async function holdStep(path, ended = new Promise(() => undefined)) {
  let gone = false;
  ended.then(
    () => (gone = true),
    () => (gone = true),
  );
  for (const end = Date.now() + 5000; ; await sleep(5)) {
    const s = connect(path);
    const err = await new Promise((resolve) => {
      s.once('connect', () => resolve(undefined));
      s.once('error', resolve);
    });
    if (err) {
      // Refused, or reset by a server that ended while it connected: gone, or not there yet.
      if (!['ENOENT', 'ECONNREFUSED', 'ECONNRESET'].includes(err.code)) throw err;
      if (gone) return '';
      assert.ok(Date.now() < end, `nothing listens at ${path}`);
      continue;
    }
    s.on('error', () => undefined);
    // As the helper: no half-close; its end (EOF) would mean the step is gone.
    s.write('restored\n');
    let got = '';
    s.setEncoding('utf8').on('data', (d) => (got += d));
    // A server that ends reading ('restored' unread) resets the connection: no verdict either.
    await new Promise((resolve) => s.once('close', resolve));
    return got;
  }
}

/** Whether `p` is still pending after the server had `ms` to settle it. */
async function pending(p, ms = 300) {
  const marker = Symbol('pending');
  return (
    (await Promise.race([
      p.then(
        () => 'settled',
        () => 'settled',
      ),
      sleep(ms, marker),
    ])) === marker
  );
}

test("the hold: the server answers CRIU's post-restore step once every block passed, even after its daemon's goodbye", async (t) => {
  const { root, file } = await checkpointFile(t);
  const hold = join(root, 'hold.sock');
  const { ps, daemon, errors, staged } = await serve(root, file, undefined, { maps: true, hold });
  await ps.allChecked();
  // The daemon done before the step comes (all of a small copy's memory may be in by then): the
  // server stays for the step.
  await fetch(daemon, [[1, 1]]);
  assert.ok(await pending(ps.done), 'the server waits for the post-restore step');
  assert.equal(await holdStep(hold), '1');
  assert.equal(await ps.done, true);
  assert.deepEqual(errors, []);
  daemon.destroy();
  await staged.close();
});

test('the hold: no step comes (the restore is past it, or failed): holdOver() lets the server end', async (t) => {
  const { root, file } = await checkpointFile(t);
  const hold = join(root, 'hold.sock');
  const { ps, daemon, errors, staged } = await serve(root, file, undefined, { maps: true, hold });
  await fetch(daemon, [[1, 1]]);
  assert.ok(await pending(ps.done), 'the server waits for the post-restore step');
  ps.holdOver();
  assert.equal(await ps.done, true);
  assert.deepEqual(errors, []);
  daemon.destroy();
  await staged.close();
});

test('the hold: a damaged chunk ends the server, and the waiting step reads no verdict', async (t) => {
  const { root, file, memory } = await checkpointFile(t);
  damageChunk32(file, memory);
  const hold = join(root, 'hold.sock');
  // Each block's check slowed (chunk 32 is found after ~0.6 s): the step is waiting by then.
  const { ps, daemon, staged } = await serve(root, file, undefined, {
    maps: true,
    hold,
    stage: false,
    slowMs: 20,
  });
  daemon.on('error', () => undefined);
  const step = holdStep(hold, ps.done);
  const checked = ps.allChecked();
  checked.catch(() => undefined);
  await assert.rejects(ps.done, (e) => e.code === 'EBADIMAGE');
  await assert.rejects(checked);
  assert.equal(await step, '', 'no verdict: CRIU fails the step and kills the copy');
  daemon.destroy();
  await staged.close();
});

/** A file of 48 zstd frames, each 64 KiB of its own text, so that no two frames are alike. */
const framed = {
  compress: true,
  fill: (n) =>
    Buffer.concat(
      Array.from({ length: n / (64 * 1024) }, (_, b) => Buffer.alloc(64 * 1024, `frame ${b} `)),
    ),
};

/** Serves `file` for a held copy, every block's decoding slowed to `slowMs`; the map is at `map`. */
async function serveHeld(root, file, slowMs) {
  const hold = join(root, 'hold.sock');
  const map = join(root, 'staged.map');
  const opts = { maps: true, hold, stagedMap: map, stage: false, slowMs };
  return { hold, map, ...(await serve(root, file, undefined, opts)) };
}

test("the hold, zstd frames: the copy runs once every frame's stored bytes passed, before they are decoded", async (t) => {
  if (typeof zlib.zstdDecompressSync !== 'function')
    return t.skip('this Node serves zstd chunks only with zlib zstd (Node 22.15+)');
  const { root, file, memory } = await checkpointFile(t, framed);
  // Decoding a frame takes 200 ms here (48 frames: seconds); checking its stored bytes does not.
  const { ps, daemon, errors, staged, hold, map } = await serveHeld(root, file, 200);
  t.after(async () => {
    daemon.destroy();
    await staged.close().catch(() => undefined);
  });
  const checked = ps.allChecked();
  assert.equal(await holdStep(hold, ps.done), '1', 'the step is answered');
  await checked;
  const decoded = readMap(map).files[0].states.filter((s) => s !== 0).length;
  assert.ok(decoded < 24, `the copy may run before its frames are decoded (${decoded} of 48 were)`);
  // Asked for, they are decoded (and checked again) on the way: every byte as it was.
  const got = await fetch(daemon, [
    [1, 3],
    [2 * PAGES_PER_MIB + 17, 2],
  ]);
  assert.ok(got.subarray(32, 32 + 3 * PAGE).equals(memory.subarray(PAGE, 4 * PAGE)));
  const second = 32 + 3 * PAGE + 32;
  const at = (2 * PAGES_PER_MIB + 17) * PAGE;
  assert.ok(got.subarray(second, second + 2 * PAGE).equals(memory.subarray(at, at + 2 * PAGE)));
  assert.equal(await ps.done, true);
  assert.deepEqual(errors, []);
});

test('the hold, zstd frames: a damaged frame ends the server before the copy runs, however late its decoding would come', async (t) => {
  if (typeof zlib.zstdDecompressSync !== 'function')
    return t.skip('this Node serves zstd chunks only with zlib zstd (Node 22.15+)');
  const { root, file } = await checkpointFile(t, framed);
  // Frame 32 (the 33rd zstd magic number in the file): a byte of its compressed data flipped.
  const bytes = readFileSync(file);
  const magic = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
  let at = -1;
  for (let i = 0; i <= 32; i++) at = bytes.indexOf(magic, at + 1);
  assert.ok(at > 0, 'frame 32 found in the file');
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from([bytes[at + 12] ^ 0xff]), 0, 1, at + 12);
  closeSync(fd);
  // Decoding slowed to 200 ms a frame: the walk alone would reach frame 32 only after seconds.
  const { ps, daemon, staged, hold } = await serveHeld(root, file, 200);
  daemon.on('error', () => undefined);
  const step = holdStep(hold, ps.done);
  const checked = ps.allChecked();
  checked.catch(() => undefined);
  await assert.rejects(ps.done, (e) => {
    assert.equal(e.code, 'EBADIMAGE');
    assert.match(e.message, /chunk index 32 of 48 chunks/);
    return true;
  });
  await assert.rejects(checked);
  assert.equal(await step, '', 'no verdict: CRIU fails the step and kills the copy');
  daemon.destroy();
  await staged.close();
});

test('an encrypted file: its chunks are checked and staged here, on the server asking', async (t) => {
  const key = randomBytes(32);
  const { root, file, memory } = await checkpointFile(t, { key });
  const { ps, daemon, errors, staged, counted, eager, direct } = await serve(root, file, key);
  assert.equal(direct, undefined, 'no table for the server: it cannot check GCM chunks itself');
  assert.ok(eager.equals(memory.subarray(0, PAGE)), 'the eager page staged here');
  const eagerReads = counted.reads;
  const got = await fetch(daemon, [[2 * PAGES_PER_MIB + 5, 2]]);
  assert.ok(
    got
      .subarray(32, 32 + 2 * PAGE)
      .equals(memory.subarray((2 * PAGES_PER_MIB + 5) * PAGE, (2 * PAGES_PER_MIB + 7) * PAGE)),
  );
  assert.equal(await ps.done, true);
  assert.deepEqual(errors, []);
  assert.ok(counted.reads > eagerReads, 'the block was read and checked here');
  daemon.destroy();
  await staged.close();
});

test('an eager restore: all memory checked and staged by the server before CRIU starts', async (t) => {
  const { root, file, memory } = await checkpointFile(t);
  const dir = join(root, 'eager');
  mkdirSync(dir);
  const lazy = await extractLazy(file, dir);
  let reads = 0;
  const source = {
    entries: lazy.pages.entries,
    close: () => lazy.pages.close(),
    read: (...a) => {
      reads++;
      return lazy.pages.read(...a);
    },
    direct: (e) => lazy.pages.direct(e),
    damaged: (...a) => lazy.pages.damaged(...a),
  };
  const plan = await readMemoryPlan(dir, source, file);
  let progress = 0;
  const staged = await StagedPages.create(dir, source, (n) => (progress += n));
  const size = memory.length;
  await stageBeforeRestore(
    staged,
    plan,
    file,
    new Map([['pages-1.img', [{ offset: 0, length: size }]]]),
  ).done;
  assert.ok(readFileSync(join(dir, 'pages-1.img')).equals(memory), 'all of the memory, as it was');
  assert.equal(reads, 0, 'checked by the server, not here');
  assert.equal(progress, size, 'progress heard every block');
  await staged.close();
});

test('an eager restore with the page maps left to the server: every byte staged, progress heard', async (t) => {
  const { root, file, memory } = await checkpointFile(t);
  const dir = join(root, 'eager');
  mkdirSync(dir);
  const lazy = await extractLazy(file, dir);
  assert.equal(serverMaps(lazy.pages), true, 'a plain file: the server can read its page maps');
  let progress = 0;
  const staged = await StagedPages.create(dir, lazy.pages, (n) => (progress += n));
  await stageBeforeRestore(staged, { pagemaps: dir }, file, 'eager').done;
  assert.ok(readFileSync(join(dir, 'pages-1.img')).equals(memory), 'all of the memory, as it was');
  assert.equal(progress, memory.length, 'progress heard every block');
  await staged.close();
});

test('page maps that do not fit: the server refuses them as readMemoryPlan does, for the same reason', async (t) => {
  const { root, file } = await checkpointFile(t);
  const E = 0x7f0000000000;
  const cases = [
    ['short of its image', pagemap(1, [[E, 10, PRESENT]])],
    ['more than its image', pagemap(1, [[E, 3 * PAGES_PER_MIB + 1, PRESENT | LAZY]])],
    ['another image', pagemap(9, [[E, 3 * PAGES_PER_MIB, PRESENT]])],
    [
      'overlapping',
      pagemap(1, [
        [E, 2, PRESENT],
        [E + PAGE, 3 * PAGES_PER_MIB - 2, PRESENT | LAZY],
      ]),
    ],
    ['a parent', pagemap(1, [[E, 3 * PAGES_PER_MIB, PRESENT | 1]])],
    ['unaligned', pagemap(1, [[E + 1, 3 * PAGES_PER_MIB, PRESENT]])],
    ['cut short', pagemap(1, [[E, 3 * PAGES_PER_MIB, PRESENT]]).subarray(0, 20)],
    ['not a page map', Buffer.from('not a CRIU image at all')],
  ];
  let n = 0;
  for (const [what, bytes] of cases) {
    const dir = join(root, `bad-${n++}`);
    mkdirSync(dir);
    const lazy = await extractLazy(file, dir);
    writeFileSync(join(dir, 'pagemap-100.img'), bytes);
    const here = await readMemoryPlan(dir, lazy.pages, file).then(
      () => assert.fail(`${what}: readMemoryPlan took it`),
      (e) => e,
    );
    const staged = await StagedPages.create(dir, lazy.pages);
    const there = await stageBeforeRestore(staged, { pagemaps: dir }, file, 'eager').done.then(
      () => assert.fail(`${what}: the server took it`),
      (e) => e,
    );
    await staged.close();
    assert.equal(there.code, 'EBADIMAGE', `${what}: ${there.message}`);
    assert.equal(there.message, here.message, what);
  }
  // Two page maps naming one image.
  const dir = join(root, 'twice');
  mkdirSync(dir);
  const lazy = await extractLazy(file, dir);
  writeFileSync(join(dir, 'pagemap-101.img'), readFileSync(join(dir, 'pagemap-100.img')));
  const staged = await StagedPages.create(dir, lazy.pages);
  await assert.rejects(stageBeforeRestore(staged, { pagemaps: dir }, file, 'eager').done, {
    code: 'EBADIMAGE',
    message: /pages-1\.img is named by two page maps; the checkpoint's memory does not match/,
  });
  await staged.close();
});

test('page maps damaged at random: the server accepts exactly those readMemoryPlan accepts', async (t) => {
  const { root, file } = await checkpointFile(t);
  const base = join(root, 'base');
  mkdirSync(base);
  await (await extractLazy(file, base)).pages.close();
  const good = readFileSync(join(base, 'pagemap-100.img'));
  // A fixed seed: a failure names the case, and the same cases run every time.
  let seed = 0x2545f491;
  const rand = (n) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const E = 0x7f0000000000;
  const mutations = [
    // A byte or two of the protobuf changed.
    (b) => {
      const m = Buffer.from(b);
      for (let k = 1 + rand(2); k > 0; k--) m[8 + rand(m.length - 8)] = rand(256);
      return m;
    },
    // Cut anywhere.
    (b) => b.subarray(0, rand(b.length)),
    // Another map of the same memory: cut elsewhere, a hole between (overlapping what follows
    // when it is longer than 8 pages), lazy or not.
    () => {
      const total = 3 * PAGES_PER_MIB;
      const k = 1 + rand(total - 1);
      const hole = E + k * PAGE + rand(2) * 16 * PAGE;
      return pagemap(1, [
        [E, k, [PRESENT, PRESENT | LAZY][rand(2)]],
        [hole, 1 + rand(12), 0],
        [hole + 8 * PAGE, total - k, [PRESENT, PRESENT | LAZY][rand(2)]],
      ]);
    },
    // An entry with odd numbers in its fields.
    () =>
      pagemap(rand(3), [
        [E + rand(3) * PAGE, 1 + rand(3), [PRESENT, PRESENT | LAZY, LAZY, 0][rand(4)]],
        [E + rand(4) * PAGE * 0x100, rand(2) ? 3 * PAGES_PER_MIB - 1 : 2 ** 40, PRESENT | LAZY],
      ]),
  ];
  let accepted = 0;
  for (let i = 0; i < 60; i++) {
    const bytes = mutations[i % mutations.length](good);
    const dir = join(root, `fuzz-${i}`);
    mkdirSync(dir);
    const lazy = await extractLazy(file, dir);
    writeFileSync(join(dir, 'pagemap-100.img'), bytes);
    const here = await readMemoryPlan(dir, lazy.pages, file).then(
      () => 'accepted',
      (e) => `${e.code}`,
    );
    const staged = await StagedPages.create(dir, lazy.pages);
    const there = await stageBeforeRestore(staged, { pagemaps: dir }, file, 'eager').done.then(
      () => 'accepted',
      (e) => `${e.code}: ${e.message}`,
    );
    await staged.close();
    assert.equal(
      there.split(':')[0],
      here,
      `case ${i} (${bytes.toString('hex')}): the server said ${there}`,
    );
    if (here === 'accepted') accepted++;
  }
  assert.ok(accepted > 0 && accepted < 60, `both outcomes were tried (${accepted} of 60 accepted)`);
});

// The zstd tests above need zlib's zstd in the test's own Node (22.15+). Under an older one (CI's
// Node 20) they skip; a newer Node from .tools runs them instead, so that they are run anyway.
const newer =
  typeof zlib.zstdDecompressSync === 'function'
    ? undefined
    : nodeBinaries().find((n) => n.major >= 22 && n.bin !== process.execPath);
test(
  `this file's tests of compressed memory, in Node ${newer?.major ?? '22 or later'} (this one cannot write its frames)`,
  { skip: newer === undefined && 'this Node runs them itself, or no newer Node is here' },
  () => {
    // A test run of its own, not a subtest of this one (NODE_TEST_CONTEXT would make it one).
    const env = { ...process.env, CHECKPT_TEST_NODES: 'current' };
    delete env.NODE_TEST_CONTEXT;
    const r = spawnSync(
      newer.bin,
      [
        '--test',
        '--test-reporter=tap',
        '--test-name-pattern',
        'zstd',
        fileURLToPath(import.meta.url),
      ],
      { encoding: 'utf8', timeout: 120_000, env },
    );
    const tail = `${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`;
    assert.equal(r.status, 0, tail);
    assert.match(r.stdout, /^# pass ([5-9]|\d\d)$/m, `five zstd tests at least passed:\n${tail}`);
    assert.match(r.stdout, /^# skipped 0$/m, tail);
  },
);
