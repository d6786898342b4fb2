// `checkpt run --every --keep --restart`: real programs checkpointed on a schedule, killed at
// random moments (some in the middle of a checkpoint), and brought back from the newest good one.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  checkptCli,
  cleanup,
  describeTree,
  events,
  exeOf,
  fixture,
  freePort,
  nodeBinaries,
  programPid,
  removeDir,
  run,
  spawnSync,
  startNode,
  tempDir,
  test,
  waitFor,
  within,
  xorshift32,
} from '../helpers.mjs';
import { childrenOf, cmdline, signalQuietly } from '../../dist/common/procfs.js';
import { parentOf, stateOf, tracerOf } from '../reliability/faults.mjs';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

const INTERVAL_S = 1;
// Killed in the middle of a checkpoint, the newest good one is at most two intervals and that
// checkpoint old; the rest is this loaded machine's slack.
const MAX_GAP_S = 2 * INTERVAL_S + 3;

async function until(what, pred, child, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end)
      throw new Error(
        `timed out: ${what}; running:\n${child ? describeTree(child.pid) : ''}\nstderr: ${child?.stderrText ?? ''}`,
      );
    await sleep(20);
  }
}

const ticks = (p) => events(p).filter((e) => e.event === 'tick');
const taken = (p) => [...p.stderrText.matchAll(/periodic checkpoint (\S+) \(/g)].map((m) => m[1]);
const resumed = (p) => [...p.stderrText.matchAll(/^checkpt: resumed (\S+): /gm)].map((m) => m[1]);
const rotation = (where, stem) =>
  readdirSync(where).filter((n) => new RegExp(`^${stem}\\.[0-9]+\\.ckpt$`).test(n));

/** The most rotation files seen at once, sampled every 10 ms until stop(). */
function sampleRotation(where, stem) {
  let most = 0;
  const timer = setInterval(() => (most = Math.max(most, rotation(where, stem).length)), 10);
  return () => {
    clearInterval(timer);
    return most;
  };
}

/**
 * The program's host pid under `checkpt run`: below checkpt's helper, never a process checkpt's
 * Node has just cloned, which has the same exe and command line until it execs.
 */
async function programOf(p, script) {
  return until(
    `the program ${script}`,
    async () => {
      const pid = await programPid(p);
      return cmdline(pid).join(' ').includes(script) ? pid : undefined;
    },
    p,
  );
}

/** The CRIU that traces `pid`, looked for without yielding: its traced window lasts tens of ms. */
function criuTracing(pid, ms = 10_000) {
  for (const end = Date.now() + ms; Date.now() < end;) {
    const t = tracerOf(pid);
    if (t && exeOf(t).endsWith('/criu')) return t;
  }
  return undefined;
}

function verify(file) {
  const r = checkptCli(['inspect', '--verify', '--json', file]);
  assert.equal(r.status, 0, r.stderr);
}

/**
 * Waits for two new checkpoints, kills the program with SIGKILL (in the middle of a checkpoint
 * when `during`, else at a random moment), and checks the copy that comes back: from a checkpoint
 * announced as good, its count no lower than the last copy's and no older than the schedule allows.
 */
async function killAndReturn(p, { script, work, during, rand, floor }) {
  const before = taken(p).length;
  await until('two more checkpoints', () => taken(p).length >= before + 2, p);
  const pid = await programOf(p, script);
  if (during) await until('a checkpoint in progress', () => readdirSync(work).length > 0, p);
  else await sleep(rand() % 900);
  const returns = resumed(p).length;
  process.kill(pid, 'SIGKILL');
  const killedAt = Date.now() / 1000;
  await until('the restart', () => resumed(p).length > returns, p);
  const file = resumed(p).at(-1);
  assert.ok(taken(p).includes(file), `resumed ${file}, never announced as good:\n${p.stderrText}`);
  const first = await waitFor(p, (e) => e.event === 'tick' && e.t > killedAt, 'the copy ticking');
  const old = ticks(p).filter((e) => e.t <= killedAt);
  const atKill = Math.max(...old.map((e) => e.n));
  assert.ok(first.n <= atKill + 1, `the copy counts on from ${first.n}, past ${atKill}`);
  assert.ok(
    first.n > floor,
    `the copy went back to ${first.n}, before the last restart's ${floor}`,
  );
  const prev = old.find((e) => e.n === first.n - 1);
  assert.ok(prev, `no tick ${first.n - 1} before the kill`);
  assert.ok(
    killedAt - prev.t <= MAX_GAP_S,
    `resumed state from ${(killedAt - prev.t).toFixed(1)} s before the kill`,
  );
  assert.match(p.stderrText, /the program was killed by SIGKILL \(restart 1 of at most/);
  return first.n;
}

async function underSchedule(name, command, script, kills, seed, check = async () => {}) {
  const where = join(dir, name);
  const work = join(where, 'work');
  mkdirSync(work, { recursive: true });
  const p = run(
    [
      '--every',
      `${INTERVAL_S}s`,
      '--keep',
      '3',
      '--restart',
      '--file',
      join(where, `${name}.ckpt`),
      '--',
      ...command,
    ],
    { cwd: where, env: { ...process.env, CHECKPT_TMPDIR: work } },
  );
  const most = sampleRotation(where, name);
  const rand = xorshift32(seed);
  let floor = 0;
  try {
    for (let i = 0; i < kills; i++) {
      floor = await killAndReturn(p, { script, work, during: i % 2 === 1, rand, floor });
      await check(floor);
    }
  } finally {
    process.kill(p.pid, 'SIGTERM');
  }
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
  assert.ok(most() <= 3, `more than 3 rotation files at once: ${most()}`);
  const left = rotation(where, name);
  assert.ok(left.length >= 2 && left.length <= 3, left.join(' '));
  for (const f of left) verify(join(where, f));
  assert.deepEqual(readdirSync(work), []);
  assert.doesNotMatch(p.stderrText, /giving up|cannot resume/);
  return { p, where };
}

test('a Python loop under --every 1s --keep 3 --restart comes back from the newest good checkpoint each time it is killed, mid-checkpoint too', async () => {
  await underSchedule('py', ['python3', fixture('counter.py')], 'counter.py', 3, 0x5eed);
});

test('a Node server under --every 1s --keep 3 --restart comes back with its state and serves it', async () => {
  const port = await freePort();
  const { p } = await underSchedule(
    'srv',
    [process.execPath, fixture('counter.mjs'), String(port)],
    'counter.mjs',
    2,
    0xbeef,
    async (from) => {
      // The copy listens on the port again and serves the count it came back with, counting on.
      const res = await within(globalThis.fetch(`http://127.0.0.1:${port}/`), 'GET / of the copy');
      const body = await res.json();
      assert.ok(body.n >= from && body.kept === body.n, JSON.stringify(body));
    },
  );
  assert.ok(ticks(p).length > 0);
});

test('a program that dies again right after each resume: the checkpoint before is tried, then checkpt gives up with its status', async () => {
  const where = join(dir, 'loop');
  mkdirSync(where);
  const p = run(
    [
      '--every',
      '1s',
      '--keep',
      '3',
      '--restart=5',
      '--file',
      join(where, 'c.ckpt'),
      '--',
      'python3',
      fixture('counter.py'),
    ],
    { cwd: where },
  );
  await until('three checkpoints', () => taken(p).length >= 3, p);
  // From now on it exits 1 at once, in every copy too.
  writeFileSync(join(where, 'poison'), '');
  assert.deepEqual(await p.closed, { code: 1, signal: null }, p.stderrText);
  const [newest, before] = resumed(p);
  assert.equal(resumed(p).length, 2, p.stderrText);
  const seq = (f) => Number(/\.([0-9]+)\.ckpt$/.exec(f)[1]);
  assert.equal(newest, taken(p).at(-1));
  assert.ok(seq(before) < seq(newest), `${before} after ${newest}`);
  assert.match(
    p.stderrText,
    /the program exited with status 1 \(restart 1 of at most 5 in a row\)/,
  );
  assert.match(
    p.stderrText,
    new RegExp(
      `giving up: the program died right after being resumed from ${newest} and then from ${before} .*crash loop`,
    ),
  );
});

test('a damaged newest checkpoint is passed over for the one before it', async () => {
  const where = join(dir, 'damaged');
  mkdirSync(where);
  const p = run(
    [
      '--every',
      '1s',
      '--keep',
      '3',
      '--restart',
      '--file',
      join(where, 'd.ckpt'),
      '--',
      'python3',
      fixture('counter.py'),
    ],
    { cwd: where },
  );
  await until('two checkpoints', () => taken(p).length >= 2, p);
  const count = taken(p).length;
  await until('a third', () => taken(p).length > count, p);
  const [previous, newest] = taken(p).slice(-2);
  truncateSync(newest, 4096);
  process.kill(await programOf(p, 'counter.py'), 'SIGKILL');
  await until('the restart', () => resumed(p).length > 0, p);
  assert.equal(resumed(p)[0], previous, p.stderrText);
  assert.match(p.stderrText, new RegExp(`cannot resume ${newest}, trying the one before it: `));
  const since = Date.now() / 1000;
  await waitFor(p, (e) => e.event === 'tick' && e.t > since, 'the copy ticking');
  process.kill(p.pid, 'SIGTERM');
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
});

test('without a checkpoint yet, a failed program starts anew; a clean exit is not restarted', async () => {
  const where = join(dir, 'anew');
  mkdirSync(where);
  const flag = join(where, 'ran');
  // Fails the first time, succeeds the second.
  const script = `if [ -e ${flag} ]; then exit 0; fi; : > ${flag}; exit 3`;
  const p = run(['--every', '1h', '--restart=2', '--', 'sh', '-c', script], { cwd: where });
  assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
  assert.match(
    p.stderrText,
    /the program exited with status 3 \(restart 1 of at most 2 in a row\); it has no good checkpoint yet, so it starts anew/,
  );
  assert.equal(p.stderrText.match(/starts anew/g).length, 1);
});

test('an interval shorter than a checkpoint takes is refused, naming what it took; the program runs on', async () => {
  const where = join(dir, 'short');
  mkdirSync(where);
  // The program's process waits 300 ms before its exec: the first checkpoint, due 1 ms after the
  // program started, must not come before it runs (then it found the launcher's fds, still open).
  const p = run(
    ['--every', '1ms', '--file', join(where, 's.ckpt'), '--', 'python3', fixture('counter.py')],
    { cwd: where, env: { ...process.env, CHECKPT_TEST_RUN_EXEC_STALL_MS: '300' } },
  );
  await until('the refusal', () => /Periodic checkpoints stopped/.test(p.stderrText), p);
  assert.match(
    p.stderrText,
    /A checkpoint every 1ms is more often than one can be taken: the first took [0-9]+ ms\. Periodic checkpoints stopped \(\S+s\.1\.ckpt is kept\); choose an interval of [0-9]+s or more\./,
  );
  const n = ticks(p).length;
  await sleep(1000);
  assert.ok(ticks(p).length > n, 'the program stopped');
  assert.deepEqual(rotation(where, 's'), ['s.1.ckpt']);
  process.kill(p.pid, 'SIGTERM');
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
});

test('checkpointEvery() in a Node program keeps the newest N files; its stopper stops it', async () => {
  const where = join(dir, 'api');
  mkdirSync(where);
  const p = startNode(
    nodeBinaries()[0],
    fixture('every.mjs'),
    [join(where, 'app.ckpt'), '2', '2500ms', '3'],
    {
      cwd: where,
    },
  );
  const end = await waitFor(
    p,
    (e) => e.event === 'stopped' || e.event === 'error',
    'three checkpoints, then the stopper',
    25_000,
  );
  assert.equal(end.event, 'stopped', JSON.stringify(end));
  const files = events(p)
    .filter((e) => e.event === 'taken')
    .map((e) => e.file);
  assert.deepEqual(
    files,
    [1, 2, 3].map((n) => join(where, `app.${n}.ckpt`)),
  );
  assert.deepEqual(
    events(p).filter((e) => e.event === 'error'),
    [],
  );
  // Stopped: nothing more is written.
  await sleep(3000);
  assert.deepEqual(rotation(where, 'app').sort(), ['app.2.ckpt', 'app.3.ckpt']);
  assert.equal(events(p).filter((e) => e.event === 'taken').length, 3);
  for (const f of files.slice(1)) verify(f);
  process.kill(p.pid, 'SIGKILL');
  await p.closed;
});

test('a full disk skips that checkpoint with a warning and keeps the previous good ones', async () => {
  const where = join(dir, 'full');
  mkdirSync(where);
  // Room for two of this program's checkpoints (about 1.6 MB each), not for a third.
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'tmpfs', where]);
  assert.equal(mounted.status, 0, String(mounted.stderr));
  try {
    const p = run(
      [
        '--every',
        '1s',
        '--keep',
        '3',
        '--file',
        join(where, 'f.ckpt'),
        '--',
        'python3',
        fixture('counter.py'),
      ],
      // Files that hold their memory (test/engine/store.test.mjs fills a disk with a store).
      { cwd: dir, env: { ...process.env, CHECKPT_STORE: '0' } },
    );
    await until('a skipped checkpoint', () => /periodic checkpoint skipped/.test(p.stderrText), p);
    assert.match(
      p.stderrText,
      /warning: periodic checkpoint skipped, the previous ones are kept: Could not write the checkpoint \S+: the filesystem is full/,
    );
    const good = taken(p);
    assert.ok(good.length >= 1, p.stderrText);
    assert.deepEqual(
      rotation(where, 'f')
        .map((f) => join(where, f))
        .sort(),
      [...good].sort(),
    );
    for (const f of good) verify(f);
    // No half-written file is left, and the program runs on.
    assert.deepEqual(
      readdirSync(where).filter((f) => !/^f\.[0-9]+\.ckpt$/.test(f)),
      [],
    );
    const n = ticks(p).length;
    await sleep(500);
    assert.ok(ticks(p).length > n, 'the program stopped');
    process.kill(p.pid, 'SIGTERM');
    assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
  } finally {
    spawnSync('umount', [where]);
  }
});

test('--restart leaves alone a program stopped by SIGTERM or by checkpoint and exit', async () => {
  const where = join(dir, 'stops');
  mkdirSync(where);
  const args = [
    '--every',
    '1s',
    '--restart',
    '--file',
    join(where, 's.ckpt'),
    '--',
    'python3',
    fixture('counter.py'),
  ];
  const p = run(args, { cwd: where });
  await until('a checkpoint', () => taken(p).length >= 1, p);
  process.kill(await programOf(p, 'counter.py'), 'SIGTERM');
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
  assert.doesNotMatch(p.stderrText, /resumed|starts anew/);

  const q = run(args, { cwd: where });
  await until('a checkpoint', () => taken(q).length >= 1, q);
  const r = checkptCli(['signal', '--exit', String(q.pid)]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await q.closed, { code: 0, signal: null }, q.stderrText);
  assert.match(q.stderrText, /the program was stopped/);
  assert.doesNotMatch(q.stderrText, /resumed|starts anew/);
});

// CI emulation 12 of stop 48: a Node server killed in the middle of a checkpoint from outside lay
// dead in CRIU's hands (CRIU waiting for it, its init unable to reap it) until the dump's 120 s
// deadline. A CRIU stopped while it traces the program is the same for good: it never lets go.
test('a Node program killed while the CRIU checkpointing it holds on to it: the init ends that CRIU, and --restart starts the program again', async () => {
  const where = join(dir, 'held');
  mkdirSync(where);
  const port = await freePort();
  const p = run(
    [
      '--restart',
      '--file',
      join(where, 'h.ckpt'),
      '--',
      process.execPath,
      fixture('counter.mjs'),
      String(port),
    ],
    { cwd: where },
  );
  let criu, nsenter;
  try {
    const pid = await programOf(p, 'counter.mjs');
    await waitFor(p, (e) => e.event === 'tick', 'ticks');
    process.kill(p.pid, 'SIGSTKFLT');
    criu = criuTracing(pid);
    assert.ok(criu, `no CRIU traced the program:\n${p.stderrText}`);
    nsenter = parentOf(criu);
    process.kill(criu, 'SIGSTOP');
    process.kill(pid, 'SIGKILL');
    const killedAt = Date.now() / 1000;
    const ended = () => /^Z?$/.test(stateOf(criu));
    await until(
      'the restart',
      () => {
        // nsenter stops itself when its child stops, and wakes it when woken: only once CRIU
        // has ended may it run again, to see that end.
        if (ended() && /^[Tt]/.test(stateOf(nsenter))) signalQuietly(nsenter, 'SIGCONT');
        return /the program was killed by SIGKILL \(restart 1 of/.test(p.stderrText);
      },
      p,
      15_000,
    );
    // Which end checkpt run hears first, the program's death or the init ending the stopped CRIU,
    // is a race (CI emulation 41 of stop 54 heard CRIU's): either is named, and the restart follows.
    assert.match(
      p.stderrText,
      /the program died while CRIU \(pid \d+\) checkpointed it|CRIU was killed by SIGKILL before it finished/,
    );
    assert.ok(ended(), 'that CRIU is gone');
    await waitFor(p, (e) => e.event === 'tick' && e.t > killedAt, 'the program started again');
  } finally {
    if (criu) signalQuietly(criu, 'SIGKILL');
    if (nsenter && /^[Tt]/.test(stateOf(nsenter))) signalQuietly(nsenter, 'SIGCONT');
    process.kill(p.pid, 'SIGTERM');
  }
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
});

test('a child of the program killed while the CRIU checkpointing it from outside holds on to it: the dump is stopped within seconds, EDUMP names the child, and the program runs on', async () => {
  const where = join(dir, 'orphan');
  mkdirSync(where);
  const port = await freePort();
  const p = run(
    [
      '--file',
      join(where, 'o.ckpt'),
      '--',
      'sh',
      '-c',
      `sleep 600 & exec "${process.execPath}" "${fixture('counter.mjs')}" ${port}`,
    ],
    { cwd: where },
  );
  let criu, nsenter;
  try {
    const pid = await programOf(p, 'counter.mjs');
    await waitFor(p, (e) => e.event === 'tick', 'ticks');
    const child = await until(
      'the sleep below the program',
      () => childrenOf(pid).find((c) => cmdline(c)[0] === 'sleep'),
      p,
    );
    process.kill(p.pid, 'SIGSTKFLT');
    criu = criuTracing(child);
    assert.ok(criu, `no CRIU traced the child:\n${p.stderrText}`);
    nsenter = parentOf(criu);
    process.kill(criu, 'SIGSTOP');
    process.kill(child, 'SIGKILL');
    const killedAt = Date.now() / 1000;
    await until(
      'the failed checkpoint',
      () =>
        /checkpt: checkpoint to \S+ failed: Process \d+, one of the program's own, died/.test(
          p.stderrText,
        ),
      p,
      15_000,
    );
    assert.match(p.stderrText, new RegExp(`failed: Process ${child}, .*keeps running`));
    await until('that CRIU gone', () => /^Z?$/.test(stateOf(criu)), p, 10_000);
    await waitFor(p, (e) => e.event === 'tick' && e.t > killedAt + 1, 'the program ticking on');
    assert.equal(await programPid(p), pid, 'the same program, never restarted');
  } finally {
    if (criu) signalQuietly(criu, 'SIGKILL');
    if (nsenter && /^[Tt]/.test(stateOf(nsenter))) signalQuietly(nsenter, 'SIGCONT');
    process.kill(p.pid, 'SIGTERM');
  }
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' }, p.stderrText);
});
