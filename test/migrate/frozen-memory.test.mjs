// Post-copy's dump that leaves the memory in the frozen program (src/migrate/frozen-memory.ts),
// against real CRIU: a program whose memory does not change is dumped in full and with
// `--lazy-pages`; completed, the lazy dump's page maps are the full dump's, and its memory read
// from the process is byte for byte what the full dump wrote.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { cleanup, describe, removeDir, start, tempDir, test } from '../helpers.mjs';
import { dumpCommand, startDump } from '../../dist/engine/criu.js';
import { dirPageSource } from '../../dist/engine/dir-pages.js';
import { decodeMessage, imageEntries } from '../../dist/engine/criu-image.js';
import { completeLazyDump } from '../../dist/migrate/frozen-memory.js';

const PAGEMAP_MAGIC = 0x56084025;
const PRESENT = 4;

const MB = 1 << 20;
// 8 MiB of random bytes, then a child with 4 MiB of its own, then nothing but sleep: their memory
// stays as it was dumped. No pipes: CRIU would refuse a socket to outside the program.
const STILL = `import os, sys, time
ballast = bytearray(os.urandom(${8 * MB}))
if os.fork() == 0:
    mine = bytearray(os.urandom(${4 * MB}))
    open(sys.argv[1] + '.child', 'w').write(str(os.getpid()))
    time.sleep(600)
    sys.exit(0)
while not os.path.exists(sys.argv[1] + '.child'):
    time.sleep(0.01)
open(sys.argv[1], 'w').write('ready')
time.sleep(600)`;

describe('post-copy: memory read from the frozen program', () => {
  let dir;
  after(async () => {
    await cleanup();
    if (dir) removeDir(dir);
  });

  async function dumpOf(pid, name, lazyMemory) {
    const imagesDir = join(dir, name);
    const workDir = join(dir, `${name}-work`);
    mkdirSync(imagesDir);
    mkdirSync(workDir);
    const run = startDump({
      pid,
      imagesDir,
      workDir,
      timeoutMs: 60_000,
      leave: 'running',
      tcp: 'close',
      ...(lazyMemory ? { lazyMemory: true } : {}),
    });
    // Nobody asks CRIU's own page server: closed, it ends once the dump is done.
    run.pageSocket?.destroy();
    const r = await run.result;
    assert.equal(
      r.status,
      0,
      `criu dump failed: ${r.stderr}\n${readFileSync(join(workDir, 'dump.log'), 'utf8').slice(-3000)}`,
    );
    return imagesDir;
  }

  /** Every present page of `dir`'s page maps by its address, read through `source`. */
  async function pagesByAddress(d, source) {
    const pages = new Map();
    for (const name of pagemaps(d)) {
      const entries = imageEntries(readFileSync(join(d, name)), PAGEMAP_MAGIC).map(decodeMessage);
      const pagesName = `pages-${entries[0].find((f) => f.no === 1).int}.img`;
      let at = 0;
      for (const fields of entries.slice(1)) {
        const vaddr = fields.find((f) => f.no === 1).int;
        const nr = (fields.find((f) => f.no === 5) ?? fields.find((f) => f.no === 2)).int;
        if (!((fields.find((f) => f.no === 4)?.int ?? PRESENT) & PRESENT)) continue;
        const data = await source.read(pagesName, at, nr * 4096);
        for (let i = 0; i < nr; i++)
          pages.set(
            `${name} ${(vaddr + i * 4096).toString(16)}`,
            data.subarray(i * 4096, (i + 1) * 4096),
          );
        at += nr * 4096;
      }
    }
    return pages;
  }

  const pagesFiles = (d) =>
    readdirSync(d)
      .filter((n) => /^pages-\d+\.img$/.test(n))
      .sort();
  const pagemaps = (d) =>
    readdirSync(d)
      .filter((n) => /^pagemap-\d+\.img$/.test(n))
      .sort();

  test('completed, a lazy dump is the full dump; its holes are read from the process', async () => {
    dir = tempDir();
    const ready = join(dir, 'ready');
    const p = start('python3', ['-c', STILL, ready], { stdio: 'ignore' });
    for (const until = Date.now() + 30_000; !existsSync(ready);) {
      assert.ok(Date.now() < until && p.exitCode === null, 'the still program did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    const child = Number(readFileSync(`${ready}.child`, 'utf8'));
    // Stopped, as a migrating program stays frozen: a program that runs between the dumps (even
    // to restart the sleep CRIU interrupted) changes a byte here and there.
    process.kill(p.pid, 'SIGSTOP');
    process.kill(child, 'SIGSTOP');
    const stopped = (pid) => /^State:\s+T/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
    for (const until = Date.now() + 10_000; !stopped(p.pid) || !stopped(child);) {
      assert.ok(Date.now() < until, 'the still program did not stop');
      await new Promise((r) => setTimeout(r, 10));
    }
    const full = await dumpOf(p.pid, 'full', false);
    const lazy = await dumpOf(p.pid, 'lazy', true);
    const fullBytes = pagesFiles(full).reduce((n, f) => n + statSync(join(full, f)).size, 0);
    const lazyBytes = pagesFiles(lazy).reduce((n, f) => n + statSync(join(lazy, f)).size, 0);
    assert.ok(fullBytes >= 8 * MB, `the full dump wrote the memory (${fullBytes} bytes)`);
    assert.ok(lazyBytes < fullBytes / 4, `the lazy dump left it out (${lazyBytes} bytes)`);

    const memory = completeLazyDump(
      lazy,
      new Map([
        [p.pid, p.pid],
        [child, child],
      ]),
    );
    const frozen = [...memory.ranges.values()].flat().reduce((n, r) => n + r.length, 0);
    assert.ok(
      frozen >= 12 * MB,
      `both ballasts are among the ranges left in the processes (${frozen})`,
    );
    assert.deepEqual(
      new Set([...memory.ranges.values()].flat().map((r) => r.pid)),
      new Set([p.pid, child]),
    );
    assert.equal(pagemaps(full).length, 2, 'a page map for each process');
    assert.deepEqual(pagemaps(lazy), pagemaps(full));
    assert.deepEqual(pagesFiles(lazy), pagesFiles(full));

    const fullSource = await dirPageSource(full);
    const source = memory.source(await dirPageSource(lazy));
    try {
      // The two dumps cut the memory into entries differently: compared page by page.
      const want = await pagesByAddress(full, fullSource);
      const got = await pagesByAddress(lazy, source);
      assert.equal(got.size, want.size, 'as many pages in each');
      // Byte for byte, but for the kernel's own writes: it stores the CPU a thread runs on in the
      // thread's rseq area (glibc's, in static TLS), and CRIU's parasite ran in each thread.
      const differing = [];
      for (const [where, page] of want) {
        const other = got.get(where);
        assert.ok(other, `the page at ${where} is there`);
        let n = 0;
        for (let i = 0; i < page.length; i++) if (page[i] !== other[i]) n++;
        if (n > 0) differing.push(`${where}: ${n} bytes`);
        assert.ok(n <= 8, `the page at ${where} is the full dump's (${n} bytes differ)`);
      }
      assert.ok(differing.length <= 4, `pages differ: ${differing.join(', ')}`);
      // Gone, the program's memory cannot be read: an error, never zeroes.
      process.kill(child, 'SIGKILL');
      process.kill(p.pid, 'SIGKILL');
      await p.closed;
      const [name, [r]] = [...memory.ranges].find(([, rs]) => rs.length > 0);
      await assert.rejects(source.read(name, r.offset, 4096));
    } finally {
      await source.close();
      await fullSource.close();
    }
  });

  test(
    'the dump command asks CRIU to keep the lazy memory and close its page server on fd 4',
    { unit: true },
    () => {
      const c = dumpCommand({ pid: 7, imagesDir: '/i', workDir: '/w', lazyMemory: true });
      const at = c.args.indexOf('--lazy-pages');
      assert.ok(at > 0, c.args.join(' '));
      assert.deepEqual(c.args.slice(at, at + 3), ['--lazy-pages', '--ps-socket', '4']);
      assert.ok(
        !dumpCommand({ pid: 7, imagesDir: '/i', workDir: '/w' }).args.includes('--lazy-pages'),
      );
    },
  );
});
