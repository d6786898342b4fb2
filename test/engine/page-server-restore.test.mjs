// Lazy restores whose memory CRIU's lazy-pages daemon reads from checkpt's page server, against
// real CRIU: the daemon's only way in is a socketpair, all memory arrives, and a chunk that fails
// its check at first read stops the copy and the daemon with EBADIMAGE, leaving nothing behind.
import assert from 'node:assert/strict';
import {
  chmodSync,
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cleanup,
  describe,
  fixture,
  nodeBinaries,
  realCriu,
  removeDir,
  runningWith,
  resume,
  start,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { extractImage } from '../../dist/image/format.js';
import { dirPageSource } from '../../dist/engine/dir-pages.js';
import { readMemoryPlan } from '../../dist/engine/pagemap.js';

const node = nodeBinaries()[0];
const CHUNK = 4 * 1024 * 1024;

async function noneLeft(file, staging) {
  const deadline = Date.now() + 5000;
  const left = () => [...runningWith(file), ...runningWith(staging, true)];
  while (left().length > 0 && Date.now() < deadline) await sleep(20);
  assert.deepEqual(left(), [], 'no copy and no daemon left');
  assert.deepEqual(readdirSync(staging), [], 'nothing staged left');
}

describe('lazy restore from the page server', () => {
  let dir;
  let file;
  /** The task's pages image and which of its 4 MiB chunks hold only lazy pages. */
  let memory;
  before(async () => {
    dir = tempDir();
    file = join(dir, 'linger.ckpt');
    const p = startNode(node, fixture('state.mjs'), [file, '--linger']);
    await waitFor(p, (e) => e.event === 'returned', 'checkpoint');
    await sleep(300);
    p.kill('SIGKILL');
    await p.closed;
    const x = join(dir, 'x');
    mkdirSync(x);
    await extractImage(file, x);
    const src = await dirPageSource(x);
    const plan = await readMemoryPlan(x, src, file);
    await src.close();
    const [task] = [...plan.tasks.values()];
    const chunksOf = (ranges) => {
      const s = new Set();
      for (const r of ranges)
        for (let k = Math.floor(r.offset / CHUNK); k * CHUNK < r.offset + r.length; k++) s.add(k);
      return s;
    };
    const eager = chunksOf(plan.eager.get(task.pages));
    const lazyOnly = [...chunksOf(plan.lazy.get(task.pages))].filter((k) => !eager.has(k));
    assert.ok(lazyOnly.length >= 2, `lazy-only chunks: ${lazyOnly}`);
    memory = { entry: task.pages, lazyOnly };
    removeDir(x);
  });
  after(async () => {
    await cleanup();
    removeDir(dir);
  });

  const resumeFailing = (name, chunks, env = {}) => {
    const staging = join(dir, name);
    mkdirSync(staging);
    const r = start(
      process.execPath,
      [fixture('resume-pages.mjs'), file, JSON.stringify({ entry: memory.entry, chunks })],
      { env: { ...process.env, CHECKPT_TMPDIR: staging, CHECKPT_LAZY: '1', ...env } },
    );
    return { r, staging };
  };
  const eventsOf = (r) =>
    r.lines.flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });

  test('the daemon reads every page through a socketpair nobody else can reach', async () => {
    const staging = join(dir, 'ok');
    mkdirSync(staging);
    const wrapper = join(dir, 'criu-ok.sh');
    const seen = join(dir, 'seen');
    mkdirSync(seen);
    writeFileSync(
      wrapper,
      `#!/bin/sh
if [ "$1" = lazy-pages ]; then
  printf '%s\\n' "$*" > '${seen}/argv'
  readlink /proc/$$/fd/4 > '${seen}/fd4'
  ino=$(readlink /proc/$$/fd/4 | tr -cd 0-9)
  awk -v ino="$ino" '$7 == ino' /proc/net/unix > '${seen}/unix'
  cat /proc/net/tcp /proc/net/tcp6 > '${seen}/tcp'
  '${realCriu}' "$@"; rc=$?
  w=; prev=; for a in "$@"; do [ "$prev" = -W ] && w=$a; prev=$a; done
  cp "$w/lazy-pages.log" '${seen}/log'
  exit $rc
fi
exec '${realCriu}' "$@"
`,
    );
    chmodSync(wrapper, 0o755);
    const r = start(
      process.execPath,
      [fixture('resume-pages.mjs'), file, JSON.stringify({ entry: memory.entry, chunks: [] })],
      {
        env: {
          ...process.env,
          CHECKPT_TMPDIR: staging,
          CHECKPT_LAZY: '1',
          CHECKPT_CRIU: wrapper,
          CHECKPT_DEBUG: '1',
        },
      },
    );
    const back = await waitFor(r, (e) => e.event === 'returned', 'the resumed copy');
    assert.equal(back.mapSize, 100_000);
    assert.deepEqual(back.mapSample, { i: 99999, sq: 99999 * 99999 });
    const resumed = await waitFor(r, (e) => e.event === 'resumed', 'resumed');
    await waitFor(r, (e) => e.event === 'loaded', 'all memory loaded');
    // The copy holds our output pipe open: it goes first.
    process.kill(resumed.pid, 'SIGKILL');
    assert.equal((await r.closed).code, 0, r.stderrText);
    const argv = readFileSync(join(seen, 'argv'), 'utf8');
    assert.match(argv, /--page-server --ps-socket 4\b/);
    assert.doesNotMatch(argv, /--address|--port/);
    assert.match(readFileSync(join(seen, 'fd4'), 'utf8'), /^socket:\[\d+\]$/m);
    // Num RefCount Protocol Flags Type St Inode [Path]: unnamed, connected, not listening.
    const unix = readFileSync(join(seen, 'unix'), 'utf8').trim().split(/\s+/);
    assert.equal(unix.length, 7, `a Unix socket without a name: ${unix.join(' ')}`);
    assert.equal(unix[3], '00000000', 'not listening');
    assert.equal(unix[5], '03', 'connected');
    const log = readFileSync(join(seen, 'log'), 'utf8');
    assert.match(log, /Reusing ps socket 4/);
    const moved = /UFFD transferred pages: \((\d+)\/(\d+)\)/.exec(log);
    assert.ok(moved && Number(moved[1]) > 1000, moved?.[0]);
    // Memory the copy gave back (its garbage collector's madvise or munmap) before the daemon
    // moved it is never moved: every page is moved or given back.
    const givenBack = [...log.matchAll(/(?:REMOVE|UNMAP): [0-9a-f]+\(([0-9a-f]+)\)/g)].reduce(
      (pages, m) => pages + parseInt(m[1], 16) / 4096,
      0,
    );
    assert.ok(
      Number(moved[1]) + givenBack >= Number(moved[2]),
      `${moved[0]}, ${givenBack} pages given back: some were neither`,
    );
    await noneLeft(file, staging);
  });

  test('a chunk that fails at first read: the copy never runs on it, EBADIMAGE, nothing left', async () => {
    const { r, staging } = resumeFailing('first', memory.lazyOnly);
    const end = await r.closed;
    assert.equal(end.code, 125, r.stderrText);
    const ev = eventsOf(r);
    const failed = ev.find((e) => e.event === 'failed');
    assert.equal(failed?.code, 'EBADIMAGE', JSON.stringify(ev));
    assert.ok(failed.message.includes(file), failed.message);
    assert.match(failed.message, new RegExp(`chunk \\d+ of ${memory.entry}`));
    assert.ok(ev.some((e) => e.event === 'bad-read'));
    // Its heap is in those chunks: without them the copy cannot have got as far as saying so.
    assert.ok(!ev.some((e) => e.event === 'returned' || e.event === 'tick'), JSON.stringify(ev));
    assert.ok(!ev.some((e) => e.event === 'loaded'));
    await noneLeft(file, staging);
  });

  test('a chunk that fails later stops the running copy and the daemon at once', async () => {
    const last = memory.lazyOnly[memory.lazyOnly.length - 1];
    const { r, staging } = resumeFailing('later', [last]);
    const end = await r.closed;
    assert.equal(end.code, 125, r.stderrText);
    const ev = eventsOf(r);
    const failed = ev.find((e) => e.event === 'failed');
    assert.equal(failed?.code, 'EBADIMAGE', JSON.stringify(ev));
    assert.match(failed.message, new RegExp(`chunk ${last} of ${memory.entry}`));
    assert.ok(!ev.some((e) => e.event === 'loaded'));
    await noneLeft(file, staging);
  });
});

describe('lazy restore of a real file with a damaged memory chunk', () => {
  let dir;
  let file;
  let format;
  before(async () => {
    dir = tempDir();
    file = join(dir, 'flipped.ckpt');
    const p = startNode(node, fixture('state.mjs'), [file, '--linger']);
    await waitFor(p, (e) => e.event === 'returned', 'checkpoint');
    await sleep(300);
    p.kill('SIGKILL');
    await p.closed;
    const head = Buffer.alloc(12);
    const fd = openSync(file, 'r');
    readSync(fd, head, 0, 12, 0);
    closeSync(fd);
    format = head.readUInt32BE(8);
  });
  after(async () => {
    await cleanup();
    removeDir(dir);
  });

  let damaged = false;
  /** Flips one byte the copy reads only lazily, once. */
  const damage = async () => {
    if (damaged) return;
    damaged = true;
    const x = join(dir, 'x');
    mkdirSync(x);
    await extractImage(file, x);
    const src = await dirPageSource(x);
    const plan = await readMemoryPlan(x, src, file);
    const [task] = [...plan.tasks.values()];
    const pages = readFileSync(join(x, task.pages));
    await src.close();
    removeDir(x);
    // A byte in the middle of a stretch of lazy pages only: CRIU never reads it itself. The widest
    // such stretch the program's layout has (4 MiB, or down to 64 KiB in a rare layout, CI
    // emulation run 57).
    const eager = plan.eager.get(task.pages);
    const lazyOnlyIn = (unit) =>
      plan.lazy
        .get(task.pages)
        .flatMap((r) => {
          const ks = [];
          for (let k = Math.ceil(r.offset / unit); (k + 1) * unit <= r.offset + r.length; k++)
            ks.push(k);
          return ks;
        })
        .filter(
          (k) => !eager.some((e) => e.offset < (k + 1) * unit && e.offset + e.length > k * unit),
        );
    const unit = [CHUNK, CHUNK / 4, CHUNK / 16, CHUNK / 64].find((u) => lazyOnlyIn(u).length > 0);
    assert.ok(unit !== undefined, 'a stretch of lazy pages only');
    const lazyOnly = lazyOnlyIn(unit);
    const bytes = readFileSync(file);
    // The lowest such stretch: the server's background walk goes from the file's end, and the
    // copy must get to run before the walk finds the damage (CI emulation 163: the last stretch
    // was among the walk's first blocks, found before CRIU's restore had started).
    const k = lazyOnly[0];
    let at = -1;
    for (let o = k * unit + unit / 2; o < (k + 1) * unit - 64 && at < 0; o += 4096) {
      const probe = pages.subarray(o, o + 64);
      if (new Set(probe).size < 16) continue;
      const i = bytes.indexOf(probe);
      if (i >= 0 && bytes.indexOf(probe, i + 1) < 0) at = i;
    }
    assert.ok(at >= 0, 'found a stretch of the memory stored as it is in the file');
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.from([bytes[at] ^ 0x5a]), 0, 1, at);
    closeSync(fd);
  };
  const resumeDamaged = async (name, env) => {
    await damage();
    const staging = join(dir, name);
    mkdirSync(staging);
    const r = resume(file, { env: { ...process.env, CHECKPT_TMPDIR: staging, ...env } });
    const end = await r.closed;
    assert.equal(end.code, 125, r.stderrText);
    assert.ok(r.stderrText.includes(file), r.stderrText);
    assert.match(r.stderrText, /chunk/);
    assert.match(r.stderrText, /EBADIMAGE|damaged/);
    await noneLeft(file, staging);
    return r;
  };

  test('checkpt -r fails with EBADIMAGE (exit 125) naming the file and chunk, nothing left', async (t) => {
    // Format 1 files are checked whole before anything runs (test/reliability covers them).
    if (format < 2)
      return t.skip(`needs a file whose memory is checked per chunk (format ${format})`);
    await resumeDamaged('lazy', { CHECKPT_LAZY: '1' });
  });

  // Each block's check slowed down (fault injection): the damaged one is found long after CRIU
  // could have let the copy run. Lazily the copy runs first (CRIU's restore ends, the copy is
  // handed over); held, CRIU's post-restore step fails and kills the copy before it runs.
  for (const [name, env, ran] of [
    [
      'CHECKPT_LAZY=1: the copy runs before the damage is found, then is stopped',
      { CHECKPT_LAZY: '1' },
      true,
    ],
    [
      'a small image restored lazily by default is held until all of it passed: the copy never runs',
      {},
      false,
    ],
  ])
    test(name, async (t) => {
      if (format < 2)
        return t.skip(`needs a file whose memory is checked per chunk (format ${format})`);
      const trace = join(dir, `${ran ? 'ran' : 'held'}.trace`);
      await resumeDamaged(ran ? 'ran' : 'held', {
        CHECKPT_BENCH_TRACE: trace,
        CHECKPT_FAULT_SLOW_CHECK_MS: '40',
        ...env,
      });
      const steps = readFileSync(trace, 'utf8');
      assert.match(steps, /^lazy-pages /m, 'restored lazily');
      assert.equal(/^status-restored /m.test(steps), ran, steps);
    });
});
