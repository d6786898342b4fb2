// Post-copy's memory path with fakes for CRIU: the source's push (page-source.ts) and the
// destination's relay (page-relay.ts) over a real socket, the lazy-pages daemon played by the test;
// and which regions go with the images (small-memory.ts).
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { describe, removeDir, tempDir, unitTest as test } from '../helpers.mjs';
import { iov, LAZY, PAGE, pagemap, pair, PRESENT } from '../engine/fake-daemon.mjs';
import { dirPageSource } from '../../dist/engine/dir-pages.js';
import { readMemoryPlan } from '../../dist/engine/pagemap.js';
import { imageFilesFor, servePagesOver } from '../../dist/migrate/page-source.js';
import { relayPages } from '../../dist/migrate/page-relay.js';
import { loadSmallRegionsEagerly } from '../../dist/migrate/small-memory.js';

const GET = 7;
const FORCE_CLOSE = 0x1024;
const dirs = [];
after(() => dirs.forEach(removeDir));

/** Reads a socket in exact pieces (the daemon's side): `read(n)` resolves with the next n bytes. */
function reader(sock) {
  let buf = Buffer.alloc(0);
  let want;
  const check = () => {
    if (want && buf.length >= want.n) {
      const { n, resolve } = want;
      want = undefined;
      const out = buf.subarray(0, n);
      buf = buf.subarray(n);
      resolve(out);
    }
  };
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    check();
  });
  return (n) =>
    new Promise((resolve) => {
      want = { n, resolve };
      check();
    });
}

/** `n` pages, page i filled with byte (seed + i). */
function pagesOf(n, seed) {
  const b = Buffer.alloc(n * PAGE);
  for (let i = 0; i < n; i++) b.fill((seed + i) % 256, i * PAGE, (i + 1) * PAGE);
  return b;
}

/** Task 100's images: one eager page, then lazy entries of 1, 3 and 64 pages. */
function makeImages() {
  const dir = tempDir('checkpt-pc-images-');
  dirs.push(dir);
  writeFileSync(
    join(dir, 'pagemap-100.img'),
    pagemap(1, [
      [0x10000, 1, PRESENT],
      [0x20000, 1, PRESENT | LAZY],
      [0x30000, 3, PRESENT | LAZY],
      [0x100000, 64, PRESENT | LAZY],
    ]),
  );
  writeFileSync(join(dir, 'pages-1.img'), pagesOf(69, 1));
  writeFileSync(join(dir, 'core-100.img'), Buffer.from('not memory'));
  return dir;
}

/**
 * A post-copy link: the source's images and push, the destination's images (what the offer
 * carries, the lazy ranges left as holes), the page connection and the daemon's socket.
 */
async function migrating() {
  const source = makeImages();
  const src = await dirPageSource(source);
  const plan = await readMemoryPlan(source, src, 'test');
  const files = imageFilesFor(source, plan);
  const dest = tempDir('checkpt-pc-dest-');
  dirs.push(dest);
  for (const f of files) {
    const whole = readFileSync(join(source, f.name));
    const b = Buffer.alloc(f.size);
    for (const [o, l] of f.ranges) whole.copy(b, o, o, o + l);
    writeFileSync(join(dest, f.name), b);
  }
  const link = await pair();
  const criu = await pair();
  return { src, files, dest, link, criu, service: servePagesOver(link.server, files, plan, src) };
}

describe('post-copy memory', { unit: true }, () => {
  test('the smallest lazy regions, up to the budget, are restored by CRIU itself', async () => {
    const dir = makeImages();
    assert.equal(loadSmallRegionsEagerly(dir, 4 * PAGE), 4 * PAGE);
    const src = await dirPageSource(dir);
    const plan = await readMemoryPlan(dir, src, 'test');
    await src.close();
    // The 1- and 3-page entries are eager now (with the eager page before them); the 64 stay lazy.
    assert.deepEqual(plan.eager.get('pages-1.img'), [{ offset: 0, length: 5 * PAGE }]);
    assert.deepEqual(plan.lazy.get('pages-1.img'), [{ offset: 5 * PAGE, length: 64 * PAGE }]);
    const files = imageFilesFor(dir, plan);
    assert.deepEqual(
      files.map((f) => [f.name, f.size, f.ranges]),
      [
        ['core-100.img', 10, [[0, 10]]],
        [
          'pagemap-100.img',
          readFileSync(join(dir, 'pagemap-100.img')).length,
          [[0, readFileSync(join(dir, 'pagemap-100.img')).length]],
        ],
        ['pages-1.img', 69 * PAGE, [[0, 5 * PAGE]]],
      ],
    );
    // Nothing small is left lazy: a second pass moves nothing.
    assert.equal(loadSmallRegionsEagerly(dir, 1 << 30), 64 * PAGE);
  });

  test("the destination answers the daemon from the source's push, and says when it has everything", async () => {
    const { src, files, dest, link, criu, service } = await migrating();
    let failed = false;
    const relay = relayPages(criu.server, link.daemon, dest, files, () => (failed = true));
    // A fault in the middle entry, then the whole big entry (the daemon's background fill).
    const readBytes = reader(criu.daemon);
    criu.daemon.write(iov(GET, 1, 0x31000, 100));
    const first = await readBytes(32 + PAGE);
    assert.equal(first.readUInt32LE(0), (PRESENT << 16) | 6);
    assert.equal(Number(first.readBigUInt64LE(8)), 1);
    assert.deepEqual(first.subarray(32), pagesOf(69, 1).subarray(3 * PAGE, 4 * PAGE));
    // Whatever comes first of the big entry: at least a page, each the source's, in order.
    let at = 0;
    while (at < 64) {
      criu.daemon.write(iov(GET, 64 - at, 0x100000 + at * PAGE, 100));
      const head = await readBytes(32);
      const n = Number(head.readBigUInt64LE(8));
      assert.ok(n >= 1 && n <= 64 - at, `a reply of ${n} pages`);
      assert.equal(Number(head.readBigUInt64LE(16)), 0x100000 + at * PAGE);
      const data = await readBytes(n * PAGE);
      assert.deepEqual(data, pagesOf(69, 1).subarray((5 + at) * PAGE, (5 + at + n) * PAGE));
      at += n;
    }
    criu.daemon.write(iov(FORCE_CLOSE, 0, 0, 0));
    const status = await readBytes(4);
    assert.equal(status.readInt32LE(0), 0);
    assert.equal(await relay.done, true);
    await service.done;
    assert.equal(failed, false);
    assert.ok(service.sent() >= 68 * PAGE, 'every lazy page was pushed');
    await src.close();
    for (const s of [link.server, link.daemon, criu.server, criu.daemon]) s.destroy();
  });

  test('a fault while CRIU still restores (before the copy runs) is answered; the push waits', async () => {
    const { src, files, dest, link, criu, service } = await migrating();
    let failed;
    // The copy does not run yet: no GO, so no push; the restore's own fault must still be served.
    let runs;
    const running = new Promise((res) => (runs = res));
    const relay = relayPages(
      criu.server,
      link.daemon,
      dest,
      files,
      (e) => (failed = e),
      running,
      5000,
    );
    const readBytes = reader(criu.daemon);
    criu.daemon.write(iov(GET, 1, 0x100000 + 10 * PAGE, 100));
    const answer = await Promise.race([
      readBytes(32 + PAGE),
      relay.done.then(() => assert.fail(`the relay gave up: ${failed?.message}`)),
    ]);
    assert.equal(Number(answer.readBigUInt64LE(8)), 1);
    assert.deepEqual(answer.subarray(32), pagesOf(69, 1).subarray(15 * PAGE, 16 * PAGE));
    assert.equal(service.sent(), PAGE, 'only the page asked for went out before the copy ran');
    // Once it runs, the rest comes.
    runs();
    for (const until = Date.now() + 5000; service.sent() < 68 * PAGE && Date.now() < until;)
      await new Promise((r) => setTimeout(r, 10));
    assert.ok(service.sent() >= 68 * PAGE, `pushed once the copy ran: ${service.sent()} bytes`);
    criu.daemon.write(iov(FORCE_CLOSE, 0, 0, 0));
    assert.equal((await readBytes(4)).readInt32LE(0), 0);
    assert.equal(await relay.done, true);
    await service.done;
    assert.equal(failed, undefined);
    await src.close();
    for (const s of [link.server, link.daemon, criu.server, criu.daemon]) s.destroy();
  });

  test('a page connection that breaks stops the daemon and fails the source', async () => {
    const source = makeImages();
    const src = await dirPageSource(source);
    const plan = await readMemoryPlan(source, src, 'test');
    const files = imageFilesFor(source, plan);
    const link = await pair();
    const criu = await pair();
    const service = servePagesOver(link.server, files, plan, src);
    let failed;
    const relay = relayPages(criu.server, link.daemon, source, files, (e) => (failed = e));
    link.daemon.destroy();
    assert.equal(await relay.done, false);
    assert.ok(failed, "the daemon is stopped: the copy's memory cannot be completed");
    assert.match(failed.message, /page connection from the source closed; the copy was stopped/);
    await assert.rejects(service.done, /page connection/);
    await src.close();
    for (const s of [link.server, criu.server, criu.daemon]) s.destroy();
  });

  test('a source that goes silent while the copy waits on a page is given up (a partition)', async () => {
    const source = makeImages();
    const src = await dirPageSource(source);
    const plan = await readMemoryPlan(source, src, 'test');
    await src.close();
    const files = imageFilesFor(source, plan);
    // The source's end is open but never answers: no push, no NEED served.
    const link = await pair();
    const criu = await pair();
    let failed;
    const relay = relayPages(
      criu.server,
      link.daemon,
      source,
      files,
      (e) => (failed = e),
      undefined,
      200,
    );
    criu.daemon.write(iov(GET, 1, 0x20000, 100));
    assert.equal(await relay.done, false);
    assert.ok(failed, 'the daemon is stopped');
    // The source was told to push (GO): its silence is a partition, and the message says which wait.
    assert.match(
      failed.message,
      /waited 200 ms for memory while nothing came from the source \(a partition/,
    );
    for (const s of [link.server, link.daemon, criu.server, criu.daemon]) s.destroy();
  });
});
