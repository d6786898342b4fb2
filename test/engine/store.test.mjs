// Store-backed rotations with real CRIU and a real program: a big buffer that changes a little
// between checkpoints is stored about once, each file resumes with its own state (checked by
// content), deleting one leaves the others whole, a damaged or missing chunk starts nothing, and a
// writer killed in the middle of its store write costs only that checkpoint.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { collectGarbage, storeBytes, storeRefs } from '../../dist/image/format.js';
import {
  checkptCli,
  cleanup,
  descendants,
  events,
  fixture,
  nodeBinaries,
  programPid,
  removeDir,
  resume,
  run,
  spawnSync,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

const MiB = 1024 * 1024;
const node = nodeBinaries()[0];

/** Runs the fixture to its end; its events of checkpoints taken (and failed). */
async function rotationRun(where, args, during = async () => {}) {
  const p = startNode(node, fixture('store-rotation.mjs'), [join(where, 'app.ckpt'), ...args], {
    cwd: where,
  });
  await during(p);
  await waitFor(p, (e) => e.event === 'done', 'all checkpoints taken', 240_000);
  assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
  return events(p);
}

/** Resumes `file`; the copy says the digest of its buffer and exits. */
async function resumeDigest(file, env = {}) {
  const r = resume(file, { env: { ...process.env, ...env } });
  const end = await r.closed;
  const said = events(r).find((e) => e.event === 'resumed');
  assert.deepEqual(end, { code: 0, signal: null }, `resume of ${file}: ${r.stderrText}`);
  assert.ok(said, `the copy of ${file} said nothing: ${r.stderrText}`);
  assert.equal(said.file, file);
  return said.digest;
}

/** Resumes `file` expecting a refusal naming `hex`; nothing of the program may have run. */
async function refused(file, hex, env = {}) {
  const r = resume(file, { env: { ...process.env, ...env } });
  const end = await r.closed;
  assert.notEqual(end.code, 0, `resumed a damaged file: ${r.stderrText}`);
  assert.match(r.stderrText, new RegExp(`damaged: memory chunk ${hex}`));
  assert.deepEqual(
    events(r).filter((e) => e.event === 'resumed'),
    [],
    'the copy ran',
  );
}

const chunkFile = (store, hex) => join(store, 'chunks', hex.slice(0, 2), hex);

test('ten checkpoints of a 96 MB program store about its memory once plus what changed; each resumes with its own state, and deleting one breaks no other', async () => {
  const where = join(dir, 'ten');
  mkdirSync(where);
  const all = await rotationRun(where, ['4', '10', '96', '4']);
  const taken = all.filter((e) => e.event === 'taken');
  assert.deepEqual(
    all.filter((e) => e.event === 'error'),
    [],
  );
  assert.equal(taken.length, 10);
  const store = join(where, 'app.ckpt.store');
  const first = taken[0].store;
  const last = taken.at(-1);
  const growth = taken.slice(1).map((e, i) => e.store - taken[i].store);
  console.log(
    `# RSS ${(last.rss / MiB).toFixed(0)} MiB; store after the first ${(first / MiB).toFixed(1)} MiB, then per checkpoint ${growth.map((g) => (g / MiB).toFixed(1)).join(', ')} MiB; in the end ${(last.store / MiB).toFixed(1)} MiB for 4 files`,
  );
  // Four standalone files would hold about four times the program's memory; the store holds it
  // once and what changed since: 4 MiB of the buffer each time, and the heap the program and its
  // GC touch (10-20 MiB a checkpoint measured, see the line above).
  assert.ok(
    last.store < last.rss + 3 * 32 * MiB,
    `the store grew to ${last.store} from ${first}, RSS ${last.rss}`,
  );
  // Four files would hold four times the first.
  assert.ok(last.store < 3 * first, `the store grew to ${last.store} from ${first}`);
  assert.ok(first < last.rss + 16 * MiB, `the first checkpoint stored ${first}, RSS ${last.rss}`);
  // Chunks of files rotated out were collected.
  assert.ok(
    taken.slice(4).every((e) => e.collected.removed > 0),
    JSON.stringify(taken.slice(4)),
  );
  assert.equal((await storeBytes(store)).bytes, last.store);
  const files = taken.slice(-4);
  assert.deepEqual(
    readdirSync(where)
      .filter((n) => n.endsWith('.ckpt'))
      .sort(),
    files.map((e) => `app.${e.i}.ckpt`).sort(),
  );

  // Each resumes with its own buffer, eagerly and lazily.
  assert.equal(await resumeDigest(files[0].file, { CHECKPT_LAZY: '0' }), files[0].digest);
  assert.equal(await resumeDigest(files[3].file), files[3].digest);

  // One deleted and its chunks collected: the others are whole.
  rmSync(files[1].file);
  const collected = await collectGarbage(store);
  assert.ok(collected.removed > 0, JSON.stringify(collected));
  assert.equal(await resumeDigest(files[2].file), files[2].digest);
  assert.equal(await resumeDigest(files[0].file), files[0].digest);

  // A chunk only the newest names, damaged, then missing: refused before anything runs.
  const older = new Set((await storeRefs(files[2].file)).hashes.map((h) => h.toString('hex')));
  const mine = (await storeRefs(files[3].file)).hashes.map((h) => h.toString('hex'));
  const hex = mine.find((h) => !older.has(h));
  assert.ok(hex, 'the newest file has a chunk of its own');
  const path = chunkFile(store, hex);
  const bytes = readFileSync(path);
  const good = Buffer.from(bytes);
  bytes[bytes.length - 1] ^= 0x40;
  writeFileSync(path, bytes);
  await refused(files[3].file, hex, { CHECKPT_LAZY: '0' });
  await refused(files[3].file, hex);
  rmSync(path);
  await refused(files[3].file, hex, { CHECKPT_LAZY: '0' });
  // The others do not need it; put back, the newest is whole again.
  assert.equal(await resumeDigest(files[2].file, { CHECKPT_LAZY: '0' }), files[2].digest);
  writeFileSync(path, good);
  assert.equal(await resumeDigest(files[3].file), files[3].digest);
});

/** The packing worker of the program `pid`'s checkpoint in progress (its job names the pid), if any. */
function workerOf(pid) {
  for (const d of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      const at = argv.findIndex((a) => /dump-worker\.c?js$/.test(a));
      if (at < 0) continue;
      const job = JSON.parse(readFileSync(argv[at + 1], 'utf8')).pid;
      // Under `checkpt exec` (Node 22 and later) the program is below the process started.
      if (job === pid || descendants(pid).includes(job)) return Number(d);
    } catch {
      // Gone meanwhile.
    }
  }
  return undefined;
}

test('the writer killed in the middle of its store write: that checkpoint fails, the previous files resume, the next one is whole', async () => {
  const where = join(dir, 'killed');
  mkdirSync(where);
  const store = join(where, 'app.ckpt.store');
  let killed;
  const all = await rotationRun(where, ['4', '4', '64', '24'], async (p) => {
    await waitFor(p, (e) => e.event === 'taken' && e.i === 2, 'two checkpoints', 120_000);
    const deadline = Date.now() + 60_000;
    // The third: killed once it has begun putting chunks into the store (or, at the latest, once
    // its file has been started, which is before any chunk).
    while (killed === undefined && Date.now() < deadline) {
      const tmp = readdirSync(join(store, 'chunks')).some((s) => {
        try {
          return readdirSync(join(store, 'chunks', s)).some((f) => f.includes('.tmp-'));
        } catch {
          return false;
        }
      });
      const started = existsSync(join(where, '.app.3.ckpt.new'));
      const w = tmp || started ? workerOf(p.pid) : undefined;
      if (w !== undefined) {
        process.kill(w, 'SIGKILL');
        killed = { tmp };
      }
      await sleep(2);
    }
    assert.ok(killed, 'the third checkpoint never started to write');
  });
  console.log(`# killed ${killed.tmp ? 'while chunks were being written' : 'as the file began'}`);
  const failed = all.filter((e) => e.event === 'error');
  assert.deepEqual(
    failed.map((e) => e.i),
    [3],
    JSON.stringify(failed),
  );
  const taken = all.filter((e) => e.event === 'taken');
  assert.deepEqual(
    taken.map((e) => e.i),
    [1, 2, 4],
  );
  assert.deepEqual(
    readdirSync(where)
      .filter((n) => n !== 'app.ckpt.store')
      .sort(),
    ['app.1.ckpt', 'app.2.ckpt', 'app.4.ckpt'],
  );
  for (const s of readdirSync(join(store, 'chunks')))
    assert.deepEqual(
      readdirSync(join(store, 'chunks', s)).filter((f) => f.includes('.tmp-')),
      [],
      'a half-written chunk was left',
    );
  for (const e of taken) assert.equal(await resumeDigest(e.file), e.digest);
});

test('a full disk skips that checkpoint with a warning, keeps the previous good ones and leaves no chunk of it behind', async () => {
  const where = join(dir, 'full');
  mkdirSync(where);
  // Room for the first checkpoint of this program and what changes by the second, not much more.
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=150m,mode=0700', 'tmpfs', where]);
  assert.equal(mounted.status, 0, String(mounted.stderr));
  try {
    const all = await rotationRun(where, ['3', '5', '64', '24']);
    const taken = all.filter((e) => e.event === 'taken');
    const failed = all.filter((e) => e.event === 'error');
    console.log(`# taken ${taken.map((e) => e.i)}, skipped ${failed.map((e) => e.i)}`);
    assert.ok(taken.length >= 1 && failed.length >= 1, JSON.stringify(all));
    for (const e of failed) assert.match(e.message, /filesystem is full/, e.message);
    const kept = taken.slice(-3);
    assert.deepEqual(
      readdirSync(where)
        .filter((n) => n !== 'app.ckpt.store')
        .sort(),
      kept.map((e) => `app.${e.i}.ckpt`).sort(),
    );
    // What the skipped ones managed to write was collected: nothing is left to collect.
    const store = join(where, 'app.ckpt.store');
    assert.deepEqual(await collectGarbage(store), { removed: 0, bytes: 0 });
    const newest = kept.at(-1);
    assert.equal(await resumeDigest(newest.file), newest.digest);
  } finally {
    spawnSync('umount', [where]);
  }
});

test('checkpt run --every writes into the store too, says what each checkpoint added, and inspect shows it', async () => {
  const where = join(dir, 'run');
  mkdirSync(where);
  const p = run(
    [
      '--every',
      '1s',
      '--keep',
      '2',
      '--file',
      join(where, 'w.ckpt'),
      '--',
      'python3',
      fixture('counter.py'),
    ],
    { cwd: where },
  );
  const lines = () => [
    ...p.stderrText.matchAll(/periodic checkpoint (\S+) \((.*?), program paused/g),
  ];
  const deadline = Date.now() + 60_000;
  while (lines().length < 3 && Date.now() < deadline) await sleep(50);
  const seen = lines();
  assert.ok(seen.length >= 3, p.stderrText);
  // The first fills the store; the next add little of it.
  for (const m of seen)
    assert.match(m[2], /MiB file \+ [0-9.]+ MiB new in its store, [0-9.]+ MiB unchanged/);
  const shown = checkptCli(['inspect', seen[2][1]]);
  assert.equal(shown.status, 0, shown.stderr);
  assert.match(
    shown.stdout,
    new RegExp(`memory in the chunk store ${join(where, 'w.ckpt.store')}`),
  );
  process.kill(p.pid, 'SIGTERM');
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
});

test('checkpt run --restart passes over a newest checkpoint whose chunk is missing for the one before it', async () => {
  const where = join(dir, 'restart');
  mkdirSync(where);
  const p = run(
    [
      '--every',
      '2s',
      '--keep',
      '3',
      '--restart',
      '--file',
      join(where, 'r.ckpt'),
      '--',
      'python3',
      fixture('counter.py'),
    ],
    { cwd: where },
  );
  const taken = () => [...p.stderrText.matchAll(/periodic checkpoint (\S+) \(/g)].map((m) => m[1]);
  const deadline = Date.now() + 60_000;
  while (taken().length < 2 && Date.now() < deadline) await sleep(10);
  const [prev, newest] = taken();
  assert.ok(newest, p.stderrText);
  const store = join(where, 'r.ckpt.store');
  const older = new Set((await storeRefs(prev)).hashes.map((h) => h.toString('hex')));
  const hex = (await storeRefs(newest)).hashes
    .map((h) => h.toString('hex'))
    .find((h) => !older.has(h));
  assert.ok(hex, 'the newest file has a chunk of its own');
  rmSync(chunkFile(store, hex));
  process.kill(await programPid(p), 'SIGKILL');
  const until = Date.now() + 60_000;
  while (!/checkpt: resumed /.test(p.stderrText) && Date.now() < until) await sleep(20);
  assert.match(p.stderrText, new RegExp(`checkpt: resumed ${prev}: `), p.stderrText);
  assert.match(p.stderrText, new RegExp(`${newest}[^\\n]*memory chunk ${hex}[^\\n]*is missing`));
  process.kill(p.pid, 'SIGTERM');
  await p.closed;
});
