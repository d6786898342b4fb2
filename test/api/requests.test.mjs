import assert from 'node:assert/strict';
import {
  cleanup,
  cli,
  describe,
  events,
  fixture,
  killGroup,
  nodeBinaries,
  pidAlive,
  removeDir,
  resume,
  spawnSync,
  start,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
// Not dist/index.js: importing that would make this test process itself answer SIGCKPT.
import { checkpointSignals, signalNumber } from '../../dist/common/signals.js';
import { parseArgs } from '../../dist/cli/args.js';
import { catchesSignal } from '../../dist/common/procfs.js';

after(cleanup);
const node = nodeBinaries()[0];

const checkptCli = (args, env = process.env) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env });

/** Whether `pid` has a handler for `sig`, from SigCgt in /proc/PID/status. */
const catches = (pid, sig) => catchesSignal(pid, signalNumber(sig));

/** The first event matching `pred` after the first `from` events. */
function waitAfter(child, from, pred, what) {
  let seen = 0;
  return waitFor(child, (e) => seen++ >= from && pred(e), what);
}

async function waitForFile(file, child, what) {
  const deadline = Date.now() + 60_000;
  while (!existsSync(file)) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}; stderr: ${child.stderrText}`);
    assert.ok(child.exitCode === null, `program ended before ${what}: ${child.stderrText}`);
    await sleep(20);
  }
}

function verify(file) {
  const r = checkptCli(['inspect', '--verify', file]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /checksum verified/);
}

function startRequests(n, dir, args = [], env = {}) {
  return startNode(n, fixture('requests.mjs'), args, {
    cwd: dir,
    env: { ...process.env, CHECKPT_FILE: join(dir, 'req.ckpt'), ...env },
  });
}

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: checkpt signal PID writes CHECKPT_FILE and the program goes on; the resume carries on with its state`, async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'req.ckpt');
      const p = startRequests(n, dir);
      const ready = await waitFor(p, (e) => e.event === 'ready', 'ready');
      const before = await waitFor(p, (e) => e.event === 'tick' && e.n >= 2, 'ticks');
      const r = checkptCli(['signal', String(ready.pid)]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout + r.stderr, '', 'nothing printed on success');
      await waitForFile(file, p, 'the requested checkpoint');
      const seen = events(p).length;
      await waitAfter(p, seen, (e) => e.event === 'tick', 'a tick after the checkpoint');
      assert.ok(pidAlive(ready.pid), 'the original keeps running');
      verify(file);
      assert.equal(p.stderrText, '');

      const copy = resume(file);
      const t = await waitFor(copy, (e) => e.event === 'tick', 'the resumed copy ticking');
      assert.equal(t.gen, 1);
      assert.ok(t.n > before.n, `the tick count carries on (${t.n} > ${before.n})`);
      assert.equal(t.mapSize, 10_000);
    } finally {
      removeDir(dir);
    }
  });
}

test('checkpt signal --exit PID: the program exits 0 only once the file is durable; the resume goes on', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'req.ckpt');
    const p = startRequests(node, dir);
    const ready = await waitFor(p, (e) => e.event === 'ready', 'ready');
    const r = checkptCli(['signal', '--exit', String(ready.pid)]);
    assert.equal(r.status, 0, r.stderr);
    const bye = await waitFor(p, (e) => e.event === 'exiting', 'the exit');
    assert.deepEqual([bye.code, bye.fileExists], [0, true], 'the file was there when it exited');
    assert.equal((await p.closed).code, 0, p.stderrText);
    verify(file);

    const copy = resume(file);
    const t = await waitFor(copy, (e) => e.event === 'tick', 'the resumed copy ticking');
    assert.equal(t.gen, 1, 'in the copy the exit request returned 1 and it carries on');
    assert.ok(pidAlive(copy.pid));
  } finally {
    removeDir(dir);
  }
});

test('a handler postpones the checkpoint until its unit of work is done; the resumed copy sees it done', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'req.ckpt');
    const p = startRequests(node, dir, ['--handler', 'postpone']);
    const ready = await waitFor(p, (e) => e.event === 'ready', 'ready');
    await waitFor(p, (e) => e.event === 'unit-done', 'some work');
    process.kill(ready.pid, 'SIGSTKFLT'); // the same as checkpt signal PID
    const asked = await waitFor(p, (e) => e.event === 'postponed', 'the request');
    const taken = await waitFor(p, (e) => e.event === 'checkpointed', 'the checkpoint');
    assert.equal(taken.r, 0);
    const evs = events(p);
    const doneAt = evs.findIndex((e) => e.event === 'unit-done' && e.units === asked.units + 1);
    const ckptAt = evs.findIndex((e) => e.event === 'checkpointing');
    assert.ok(
      doneAt >= 0 && doneAt < ckptAt,
      'the unit in progress finished before the checkpoint',
    );
    assert.equal(taken.units, asked.units + 1);
    assert.equal(taken.step, 0, 'taken between two units of work');
    verify(file);

    const copy = resume(file);
    const back = await waitFor(copy, (e) => e.event === 'checkpointed', 'the resumed return');
    assert.deepEqual([back.r, back.units, back.gen], [1, taken.units, 1]);
    const next = await waitFor(copy, (e) => e.event === 'unit-done', 'the copy working on');
    assert.equal(next.units, taken.units + 1);
  } finally {
    removeDir(dir);
  }
});

test('requests during one being handled collapse into exactly one follow-up, an exit one if any was', async () => {
  const dir = tempDir();
  try {
    const p = startRequests(node, dir, ['--handler', 'count', '--hold', dir]);
    const { pid } = await waitFor(p, (e) => e.event === 'ready', 'ready');
    const go = (n) => writeFileSync(join(dir, `go-${n}`), '');
    const request = (n) => waitFor(p, (e) => e.event === 'request' && e.n === n, `request ${n}`);

    process.kill(pid, 'SIGSTKFLT');
    await request(1);
    process.kill(pid, 'SIGSTKFLT');
    process.kill(pid, 'SIGSTKFLT');
    // Signals reach the event loop in its poll phase; the handler checks for go files in timers.
    await sleep(300);
    go(1);
    const second = await request(2);
    assert.deepEqual([second.exit, second.signal], [false, 'SIGSTKFLT']);

    process.kill(pid, 'SIGPWR');
    process.kill(pid, 'SIGSTKFLT');
    await sleep(300);
    go(2);
    const third = await request(3);
    assert.deepEqual([third.exit, third.signal], [true, 'SIGPWR'], 'an exit request wins');
    go(3);
    assert.equal((await p.closed).code, 0);
    const got = events(p).filter((e) => e.event === 'request');
    assert.equal(got.length, 3, JSON.stringify(got));
    assert.equal(p.stderrText, '');
  } finally {
    removeDir(dir);
  }
});

test('two requests back to back, each checkpointing in the handler: never EBUSY, none lost', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'req.ckpt');
    const p = startRequests(node, dir, ['--handler', 'count', '--checkpoint']);
    const { pid } = await waitFor(p, (e) => e.event === 'ready', 'ready');
    process.kill(pid, 'SIGSTKFLT');
    process.kill(pid, 'SIGSTKFLT');
    await waitFor(p, (e) => e.event === 'handled' && e.n === 1, 'the first request handled');
    // The kernel may merge two pending SIGSTKFLT into one: one or two checkpoints, not more.
    process.kill(pid, 'SIGPWR');
    assert.equal((await p.closed).code, 0, p.stderrText);
    const got = events(p).filter((e) => e.event === 'request');
    assert.ok(got.length === 2 || got.length === 3, JSON.stringify(got));
    assert.deepEqual(
      got.map((e) => e.exit),
      [...got.slice(1).map(() => false), true],
      'only the last one, where the SIGPWR went, is an exit request',
    );
    const done = events(p).filter((e) => e.event === 'checkpointed');
    assert.ok(done.length === got.length - 1 && done.every((e) => e.r === 0));
    assert.equal(p.stderrText, '', 'no EBUSY, no failure');
    verify(file);
  } finally {
    removeDir(dir);
  }
});

test('removing the handler brings the default action back', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'req.ckpt');
    const p = startRequests(node, dir, ['--handler', 'remove']);
    const { pid } = await waitFor(p, (e) => e.event === 'ready', 'ready');
    assert.equal(checkptCli(['signal', String(pid)]).status, 0);
    await waitFor(p, (e) => e.event === 'removed', 'the handler to remove itself');
    assert.ok(!existsSync(file), 'with a handler installed there is no default checkpoint');
    const k = spawnSync('kill', ['-STKFLT', String(pid)]);
    assert.equal(k.status, 0);
    await waitForFile(file, p, 'the default checkpoint');
    verify(file);
    assert.equal(events(p).filter((e) => e.event === 'request').length, 1);
    assert.ok(pidAlive(pid));
  } finally {
    removeDir(dir);
  }
});

test('checkpt signal refuses a process that does not handle requests, and does not kill it', async () => {
  const sleeper = start('sleep', ['60']);
  for (const args of [['signal'], ['signal', '--exit']]) {
    const r = checkptCli([...args, String(sleeper.pid)]);
    assert.equal(r.status, 125);
    assert.match(
      r.stderr,
      new RegExp(`Process ${sleeper.pid} does not handle checkpoint requests`),
    );
    assert.match(r.stderr, /would kill it/);
    assert.match(r.stderr, /checkpt run/);
  }
  await sleep(100);
  assert.equal(sleeper.exitCode, null);
  assert.equal(sleeper.signalCode, null, 'sleep is still alive');
  killGroup(sleeper);

  const none = checkptCli(['signal', '4194304']); // above the largest pid Linux hands out
  assert.equal(none.status, 125);
  assert.match(none.stderr, /There is no process 4194304/);
  const bad = checkptCli(['signal', 'abc']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /'abc' is not a process id/);
});

test('checkpt signal on a child that does not handle requests reaches the nearest ancestor that does', async () => {
  const dir = tempDir();
  try {
    const p = startRequests(node, dir, ['--handler', 'count', '--child']);
    const { pid } = await waitFor(p, (e) => e.event === 'ready', 'ready');
    const { childPid } = await waitFor(p, (e) => e.event === 'child', 'the child');
    const r = checkptCli(['signal', '--exit', '--verbose', String(childPid)]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stdout,
      new RegExp(`sent SIGPWR to ${pid}, the nearest ancestor of ${childPid}`),
    );
    const got = await waitFor(p, (e) => e.event === 'request', 'the request in the parent');
    assert.deepEqual([got.exit, got.signal], [true, 'SIGPWR']);
    assert.equal((await p.closed).code, 0);
  } finally {
    removeDir(dir);
  }
});

test('CHECKPT_SIGCKPT=SIGURG moves requests to SIGURG end to end', async () => {
  const dir = tempDir();
  try {
    const env = { CHECKPT_SIGCKPT: 'SIGURG' };
    const file = join(dir, 'req.ckpt');
    const p = startRequests(node, dir, [], env);
    const { pid } = await waitFor(p, (e) => e.event === 'ready', 'ready');
    assert.ok(catches(pid, 'SIGURG') && catches(pid, 'SIGPWR'));
    assert.ok(!catches(pid, 'SIGSTKFLT'), 'SIGSTKFLT is left alone');
    const r = checkptCli(['signal', '--verbose', String(pid)], { ...process.env, ...env });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /sent SIGURG/);
    await waitForFile(file, p, 'the checkpoint requested by SIGURG');
    verify(file);
    assert.ok(pidAlive(pid));
  } finally {
    removeDir(dir);
  }
});

test('an invalid CHECKPT_SIGCKPT warns once at import and installs nothing; the program runs', async () => {
  const dir = tempDir();
  try {
    const p = startRequests(node, dir, [], { CHECKPT_SIGCKPT: 'SIGUSR1' });
    const { pid } = await waitFor(p, (e) => e.event === 'ready', 'ready');
    await waitFor(p, (e) => e.event === 'tick', 'a tick');
    const lines = p.stderrText.trim().split('\n');
    assert.equal(lines.length, 1, p.stderrText);
    assert.match(lines[0], /^checkpt: warning: checkpoint requests are off.*SIGUSR1/);
    assert.ok(!catches(pid, 'SIGSTKFLT') && !catches(pid, 'SIGPWR'));
  } finally {
    removeDir(dir);
  }
});

describe('checkpointSignals()', { unit: true }, () => {
  test('defaults: SIGSTKFLT and SIGPWR', () => {
    assert.deepEqual(checkpointSignals({}), { ckpt: 'SIGSTKFLT', exit: 'SIGPWR' });
  });
  test('overrides, with or without SIG, any case', () => {
    assert.deepEqual(
      checkpointSignals({ CHECKPT_SIGCKPT: 'urg', CHECKPT_SIGCKPTEXIT: 'SIGXCPU' }),
      {
        ckpt: 'SIGURG',
        exit: 'SIGXCPU',
      },
    );
  });
  const bad = [
    [{ CHECKPT_SIGCKPT: 'SIGUSR1' }, /inspector|already means something/],
    [{ CHECKPT_SIGCKPTEXIT: 'SIGFOO' }, /not a signal Linux knows/],
    [{ CHECKPT_SIGCKPT: 'SIGURG', CHECKPT_SIGCKPTEXIT: 'URG' }, /both SIGURG; they must differ/],
    [{ CHECKPT_SIGCKPTEXIT: 'SIGSTKFLT' }, /both SIGSTKFLT/],
  ];
  for (const [env, message] of bad)
    test(`refuses ${JSON.stringify(env)}`, () => {
      assert.throws(
        () => checkpointSignals(env),
        (e) => e.name === 'CheckptError' && e.code === 'EBADCONFIG' && message.test(e.message),
      );
    });
});

describe('checkpt signal arguments', { unit: true }, () => {
  test('parses --exit, --verbose and the pid', () => {
    assert.deepEqual(parseArgs(['signal', '--exit', '42']), {
      cmd: 'signal',
      pid: 42,
      exit: true,
      verbose: false,
    });
    assert.deepEqual(parseArgs(['signal', '-v', '7']), {
      cmd: 'signal',
      pid: 7,
      exit: false,
      verbose: true,
    });
  });
  for (const argv of [['signal'], ['signal', '0'], ['signal', '1', '2'], ['signal', '--now', '1']])
    test(`refuses ${argv.join(' ')}`, () => {
      assert.throws(() => parseArgs(argv), { name: 'UsageError' });
    });
});
