// A dump staged on tmpfs writes its pages into memory CRIU allocated before the freeze
// (CHECKPT_CRIU_PAGES_SPARE, scripts/criu-patches/xfer-spare-pages-image.patch): the pages image
// takes the spare's place, holds every page, is cut to its size, and no spare stays behind.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { criuEnv, dumpCommand, ownBuildHas } from '../../dist/engine/criu.js';
import { criuPath } from '../../dist/engine/paths.js';
import { pagesSpare } from '../../dist/engine/staging.js';
import { cleanup, removeDir, spawnSync, start, tempDir, test } from '../helpers.mjs';

const MiB = 1024 * 1024;
const dirs = [];
after(async () => {
  await cleanup();
  for (const d of dirs) removeDir(d);
});
const shmDir = () => {
  const d = mkdtempSync('/dev/shm/checkpt-test-spare-');
  dirs.push(d);
  return d;
};
const patched = ownBuildHas('xfer-spare-pages-image.patch');

// 40 MiB of pages that each hold one 16-byte pattern 256 times, none of them zero (all but the
// buffer's first and last, which share a page with malloc's header and what follows).
const PATTERN = 'CHECKPTSPARE0123';
const PAGES = 10240;
// Its stdio on /dev/null: CRIU cannot dump one end of the test's socketpairs.
const holder = (ready) => [
  '-c',
  `b = bytearray(b"${PATTERN}" * 256 * ${PAGES}); open("${ready}", "w").close(); import time; time.sleep(120)`,
];

/** The number of 4 KiB pages of `file` that hold the pattern. */
function patternPages(file) {
  const data = readFileSync(file);
  const page = Buffer.from(PATTERN.repeat(256));
  let n = 0;
  for (let off = 0; off + 4096 <= data.length; off += 4096)
    if (data.subarray(off, off + 4096).equals(page)) n++;
  return n;
}

async function dumpInto(dir, spare) {
  // In the images directory: CRIU minds only its own files there.
  const ready = join(dir, 'ready');
  const p = start('python3', holder(ready), { stdio: 'ignore' });
  for (const end = Date.now() + 10_000; !existsSync(ready); await sleep(10))
    assert.ok(Date.now() < end, 'python3 did not start');
  rmSync(ready);
  const env = { ...criuEnv() };
  if (spare !== undefined) env.CHECKPT_CRIU_PAGES_SPARE = String(spare);
  const args = ['dump', '-t', String(p.pid), '-D', dir, '-o', 'dump.log', '-v4'];
  const r = spawnSync(criuPath, [...args, '--leave-running', '--shell-job'], {
    env,
    timeout: 60_000,
  });
  const log = readFileSync(join(dir, 'dump.log'), 'utf8');
  assert.equal(r.status, 0, `criu dump failed: ${log.slice(-2000)}`);
  return log;
}

test('pagesSpare: the RSS for a dump of 32 MiB and more on tmpfs, nothing elsewhere or smaller', () => {
  const shm = shmDir();
  assert.equal(pagesSpare(shm, 64 * MiB), 64 * MiB);
  assert.equal(pagesSpare(shm, 16 * MiB), undefined);
  assert.equal(pagesSpare(join(shm, 'missing'), 64 * MiB), undefined);
  const disk = tempDir();
  dirs.push(disk);
  const onTmpfs =
    spawnSync('stat', ['-f', '-c', '%T', disk], { encoding: 'utf8' }).stdout.trim() === 'tmpfs';
  assert.equal(pagesSpare(disk, 64 * MiB), onTmpfs ? 64 * MiB : undefined);
});

test('dumpCommand hands the spare to CRIU, but not for a dump that leaves its memory in the program', () => {
  const base = { pid: 1, imagesDir: '/x/images', workDir: '/x' };
  assert.equal(
    dumpCommand({ ...base, spareBytes: 5 * MiB }).env.CHECKPT_CRIU_PAGES_SPARE,
    '5242880',
  );
  assert.equal(dumpCommand(base).env.CHECKPT_CRIU_PAGES_SPARE, undefined);
  const lazy = dumpCommand({ ...base, spareBytes: 5 * MiB, lazyMemory: true });
  assert.equal(lazy.env.CHECKPT_CRIU_PAGES_SPARE, undefined);
});

test(
  'with a spare the pages image takes its place and is cut to its size; without one, as before',
  { skip: !patched && "CRIU is not checkpt's build with xfer-spare-pages-image.patch" },
  async () => {
    const spared = shmDir();
    const log = await dumpInto(spared, 96 * MiB);
    assert.match(log, /pages-\d+\.img takes the pages spare/);
    assert.ok(!existsSync(join(spared, 'pages-spare')), 'the spare stayed');
    const pages = readdirSync(spared).filter((n) => /^pages-\d+\.img$/.test(n));
    assert.equal(pages.length, 1, `pages images: ${pages}`);
    const size = statSync(join(spared, pages[0])).size;
    assert.equal(size % 4096, 0);
    assert.ok(size < 96 * MiB, `the image was not cut: ${size} bytes`);
    assert.ok(
      patternPages(join(spared, pages[0])) >= PAGES - 2,
      'pages written into the spare lost',
    );

    const plain = shmDir();
    const plainLog = await dumpInto(plain, undefined);
    assert.doesNotMatch(plainLog, /takes the pages spare/);
    const plainPages = readdirSync(plain).filter((n) => /^pages-\d+\.img$/.test(n));
    assert.ok(patternPages(join(plain, plainPages[0])) >= PAGES - 2);
    // The same process image either way (python3's own pages differ by a few between dumps).
    const plainSize = statSync(join(plain, plainPages[0])).size;
    assert.ok(Math.abs(plainSize - size) < 4 * MiB, `${size} against ${plainSize} bytes`);
  },
);

test(
  'a spare no pages image takes is removed (a dump that fails)',
  { skip: !patched && "CRIU is not checkpt's build with xfer-spare-pages-image.patch" },
  () => {
    const dir = shmDir();
    // No such process: CRIU fails after its start, where the spare was made.
    const r = spawnSync(
      criuPath,
      [
        'dump',
        '-t',
        '999999999',
        '-D',
        dir,
        '-o',
        'dump.log',
        '-v4',
        '--leave-running',
        '--shell-job',
      ],
      { env: { ...criuEnv(), CHECKPT_CRIU_PAGES_SPARE: String(40 * MiB) }, timeout: 60_000 },
    );
    assert.notEqual(r.status, 0);
    assert.match(
      readFileSync(join(dir, 'dump.log'), 'utf8'),
      /Allocated \d+ bytes for the pages spare/,
    );
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.startsWith('pages')),
      [],
    );
  },
);
