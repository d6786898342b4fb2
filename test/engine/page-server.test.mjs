// The page server's pure parts with fakes: the pagemap plan, the sparse files restore reads, and
// CRIU's page-server protocol over a real Unix socket (the daemon's side played by the test).
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { describe, removeDir, tempDir, unitTest as test } from '../helpers.mjs';
import { CheckptError } from '../../dist/common/errors.js';
import { dirPageSource } from '../../dist/engine/dir-pages.js';
import { locate, readMemoryPlan } from '../../dist/engine/pagemap.js';
import { servePages } from '../../dist/engine/page-server.js';
import { StagedPages } from '../../dist/engine/staged-pages.js';
import { iov, LAZY, PAGE, pagemap, pair, PRESENT, readBytes } from './fake-daemon.mjs';

/** `n` pages, page i filled with the byte `seed + i`. */
function pagesOf(n, seed) {
  return Buffer.concat(Array.from({ length: n }, (_, i) => Buffer.alloc(PAGE, seed + i)));
}

/** The blocks `staged` holds, as "entry:block". */
function stagedBlocks(staged) {
  const got = [];
  staged.onBlock((entry, block) => got.push(`${entry}:${block}`))();
  return got;
}

const dirs = [];
after(() => dirs.forEach(removeDir));

/**
 * Task 100: pages-1.img, one eager page run (2 pages), then 3 and 1 lazy pages. Shared memory 7:
 * pages-2.img, all restored by CRIU itself. pages-3.img: named by no page map.
 */
function makeImages() {
  const images = tempDir('checkpt-ps-images-');
  const memory = tempDir('checkpt-ps-memory-');
  dirs.push(images, memory);
  writeFileSync(
    join(images, 'pagemap-100.img'),
    pagemap(1, [
      [0x10000, 2, PRESENT],
      [0x20000, 3, PRESENT | LAZY],
      [0x30000, 1, PRESENT | LAZY],
    ]),
  );
  writeFileSync(join(images, 'pagemap-shmem-7.img'), pagemap(2, [[0x0, 2, PRESENT | LAZY]]));
  writeFileSync(join(memory, 'pages-1.img'), pagesOf(6, 1));
  writeFileSync(join(memory, 'pages-2.img'), pagesOf(2, 50));
  writeFileSync(join(memory, 'pages-3.img'), pagesOf(1, 90));
  return { images, memory };
}

describe('page server', { unit: true }, () => {
  test('the plan: eager and lazy ranges per pages image, lookups only inside lazy entries', async () => {
    const { images, memory } = makeImages();
    const src = await dirPageSource(memory);
    const plan = await readMemoryPlan(images, src, 'f.ckpt');
    assert.deepEqual(plan.eager.get('pages-1.img'), [{ offset: 0, length: 2 * PAGE }]);
    assert.deepEqual(plan.lazy.get('pages-1.img'), [{ offset: 2 * PAGE, length: 4 * PAGE }]);
    assert.deepEqual(plan.eager.get('pages-2.img'), [{ offset: 0, length: 2 * PAGE }]);
    assert.deepEqual(plan.lazy.get('pages-2.img'), []);
    assert.deepEqual(plan.eager.get('pages-3.img'), [{ offset: 0, length: PAGE }]);
    assert.deepEqual([...plan.tasks.keys()], [100]);
    assert.deepEqual(locate(plan, 100, 0x21000, 2), {
      pages: 'pages-1.img',
      offset: 3 * PAGE,
      length: 2 * PAGE,
    });
    assert.deepEqual(locate(plan, 100, 0x30000, 1), {
      pages: 'pages-1.img',
      offset: 5 * PAGE,
      length: PAGE,
    });
    assert.equal(locate(plan, 100, 0x10000, 1), undefined, 'an eager entry is not served');
    assert.equal(locate(plan, 100, 0x22000, 2), undefined, 'past the end of its entry');
    assert.equal(locate(plan, 100, 0x30000, 2), undefined, 'past the last entry');
    assert.equal(locate(plan, 100, 0x25000, 1), undefined, 'between entries');
    assert.equal(locate(plan, 100, 0x20001, 1), undefined, 'not page aligned');
    assert.equal(locate(plan, 100, 0x20000, 0), undefined, 'no pages');
    assert.equal(locate(plan, 101, 0x20000, 1), undefined, 'another pid');
    await src.close();
  });

  test('a pagemap that does not add up to its pages image is a damaged image', async () => {
    const { images, memory } = makeImages();
    writeFileSync(join(memory, 'pages-1.img'), pagesOf(5, 1));
    const src = await dirPageSource(memory);
    await assert.rejects(readMemoryPlan(images, src, 'f.ckpt'), (e) => {
      assert.ok(e instanceof CheckptError);
      assert.equal(e.code, 'EBADIMAGE');
      assert.match(e.message, /f\.ckpt.*pagemap-100\.img maps more pages than pages-1\.img holds/);
      return true;
    });
    await src.close();
  });

  test('restore gets sparse files with only what it reads itself, each block read once', async () => {
    const { images, memory } = makeImages();
    const inner = await dirPageSource(memory);
    const reads = [];
    const src = {
      ...inner,
      read: (...a) => {
        reads.push(a);
        return inner.read(...a);
      },
    };
    const plan = await readMemoryPlan(images, src, 'f.ckpt');
    // Blocks of 1 MiB: a 6-page image is one block; only the eager parts' images are written.
    const staged = await StagedPages.create(images, src);
    const eager = new Map([['pages-2.img', plan.eager.get('pages-2.img')]]);
    await staged.ensureRanges(eager);
    assert.deepEqual(reads, [['pages-2.img', 0, 2 * PAGE]]);
    assert.deepEqual(readFileSync(join(images, 'pages-2.img')), pagesOf(2, 50));
    assert.equal(readFileSync(join(images, 'pages-1.img')).length, 6 * PAGE, 'full size');
    assert.deepEqual(readFileSync(join(images, 'pages-1.img')), Buffer.alloc(6 * PAGE), 'empty');
    assert.equal(statSync(join(images, 'pages-1.img')).blocks, 0, 'sparse');
    assert.ok(!stagedBlocks(staged).includes('pages-1.img:0'), 'not staged yet');
    const want = readFileSync(join(memory, 'pages-1.img'));
    await staged.ensure('pages-1.img', 3 * PAGE, PAGE);
    assert.deepEqual(
      readFileSync(join(images, 'pages-1.img')).subarray(3 * PAGE, 4 * PAGE),
      want.subarray(3 * PAGE, 4 * PAGE),
    );
    assert.ok(stagedBlocks(staged).includes('pages-1.img:0'), 'the whole block staged');
    await staged.ensure('pages-1.img', 5 * PAGE, PAGE);
    assert.equal(reads.length, 2, 'the block was read from the source once');
    assert.deepEqual(readFileSync(join(images, 'pages-1.img')), want);
    await staged.close();
  });

  test('a block that fails its check is not staged, and fails again when asked again', async () => {
    const { images, memory } = makeImages();
    const inner = await dirPageSource(memory);
    const bad = new CheckptError('EBADIMAGE', 'chunk 0 failed its check');
    let reads = 0;
    const src = { ...inner, read: () => (reads++, Promise.reject(bad)) };
    const staged = await StagedPages.create(images, src);
    await assert.rejects(staged.ensure('pages-1.img', 0, PAGE), (e) => e === bad);
    assert.ok(!stagedBlocks(staged).includes('pages-1.img:0'));
    await assert.rejects(
      staged.ensureRanges(new Map([['pages-1.img', [{ offset: 0, length: PAGE }]]])),
      (e) => e === bad,
    );
    assert.equal(reads, 2);
    await staged.close();
    await inner.close();
  });

  async function serving(wrap = (s) => s) {
    const { images, memory } = makeImages();
    const src = wrap(await dirPageSource(memory));
    const plan = await readMemoryPlan(images, src, 'f.ckpt');
    const staged = await StagedPages.create(images, src);
    const { server, daemon } = await pair();
    const errors = [];
    const ps = servePages(server, staged, plan, 'f.ckpt', (e) => errors.push(e));
    return { ps, daemon, errors, src: staged, memory };
  }

  test('answers PS_IOV_GET in order with the header echoed and the pages, then says goodbye', async () => {
    const { ps, daemon, errors, src, memory } = await serving();
    const want = readFileSync(join(memory, 'pages-1.img'));
    const reply = readBytes(daemon, 32 + 3 * PAGE + 32 + PAGE + 4);
    daemon.write(Buffer.concat([iov(7, 3, 0x20000, 100), iov(7, 1, 0x30000, 100)]));
    daemon.write(iov(0x1024, 0, 0, 0));
    const got = await reply;
    const h1 = got.subarray(0, 32);
    assert.equal(h1.readUInt32LE(0), (4 << 16) | 6, 'PS_IOV_ADD_F with PE_PRESENT');
    assert.equal(h1.readBigUInt64LE(8), 3n);
    assert.equal(h1.readBigUInt64LE(16), 0x20000n);
    assert.equal(h1.readBigUInt64LE(24), 100n);
    assert.deepEqual(got.subarray(32, 32 + 3 * PAGE), want.subarray(2 * PAGE, 5 * PAGE));
    const h2 = got.subarray(32 + 3 * PAGE, 64 + 3 * PAGE);
    assert.equal(h2.readBigUInt64LE(16), 0x30000n);
    assert.deepEqual(got.subarray(64 + 3 * PAGE, 64 + 4 * PAGE), want.subarray(5 * PAGE));
    assert.deepEqual(got.subarray(64 + 4 * PAGE), Buffer.alloc(4), 'status 0 for the close');
    assert.equal(await ps.done, true);
    assert.deepEqual(errors, []);
    daemon.destroy();
    await src.close();
  });

  for (const [name, req] of [
    ['an eager entry', iov(7, 1, 0x10000, 100)],
    ['a range past its entry', iov(7, 4, 0x20000, 100)],
    ['another pid', iov(7, 1, 0x20000, 4242)],
    ['an absurd count', iov(7, 2n ** 63n, 0x20000, 100)],
    ['an unknown command', iov(3, 0, 0, 0)],
  ])
    test(`a request for ${name} stops the server, nothing is read or sent`, async () => {
      let reads = 0;
      const { ps, daemon, errors, src } = await serving((s) => ({
        ...s,
        read: (...a) => {
          reads++;
          return s.read(...a);
        },
      }));
      const reply = readBytes(daemon, 1);
      daemon.write(req);
      await assert.rejects(ps.done, (e) => {
        assert.equal(e.code, 'ERESTORE');
        assert.match(e.message, /lazy-pages daemon .*f\.ckpt; the copy was stopped/);
        return true;
      });
      assert.equal(errors.length, 1);
      assert.equal((await reply).length, 0, 'nothing sent');
      assert.equal(reads, 0);
      await src.close();
    });

  test('a read that fails its check sends nothing of that answer and is the error, at once', async () => {
    const bad = new CheckptError('EBADIMAGE', 'f.ckpt: pages-1.img chunk 0 failed its check');
    const { ps, daemon, errors, src } = await serving((s) => ({
      ...s,
      read: (entry, offset, length) =>
        entry === 'pages-1.img' ? Promise.reject(bad) : s.read(entry, offset, length),
    }));
    const reply = readBytes(daemon, 1);
    daemon.write(Buffer.concat([iov(7, 3, 0x20000, 100), iov(7, 1, 0x30000, 100)]));
    await assert.rejects(ps.done, (e) => e === bad);
    assert.deepEqual(errors, [bad]);
    assert.equal((await reply).length, 0, 'nothing of the answer');
    await src.close();
  });

  test('a daemon gone right after its goodbye, with requests still out, is no failure', async () => {
    // Seen as "connection failed (Broken pipe)" after a SIGTERM to checkpt -r: the server wrote
    // answers to a daemon that had said goodbye and closed.
    const { ps, daemon, errors, src } = await serving();
    const sent = Buffer.concat([
      iov(7, 3, 0x20000, 100),
      iov(7, 1, 0x30000, 100),
      iov(0x1024, 0, 0, 0),
    ]);
    daemon.write(sent, () => daemon.destroy());
    assert.equal(await ps.done, true);
    assert.deepEqual(errors, []);
    await src.close();
  });

  test('a daemon gone with requests out and no goodbye is the error', async () => {
    const { ps, daemon, errors, src } = await serving();
    const sent = Buffer.concat([iov(7, 3, 0x20000, 100), iov(7, 1, 0x30000, 100)]);
    daemon.write(sent, () => daemon.destroy());
    await assert.rejects(ps.done, (e) => {
      assert.equal(e.code, 'ERESTORE');
      assert.match(e.message, /lazy-pages daemon .*f\.ckpt; the copy was stopped/);
      return true;
    });
    assert.equal(errors.length, 1);
    await src.close();
  });

  test('a daemon that hangs up without goodbye ends the server with false', async () => {
    const { ps, daemon, errors, src } = await serving();
    daemon.destroy();
    assert.equal(await ps.done, false);
    assert.deepEqual(errors, []);
    await src.close();
  });
});
