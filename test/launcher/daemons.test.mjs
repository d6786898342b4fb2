// `checkpt run` and programs that leave processes behind: daemons stay in the checkpoint, or the
// checkpoint fails naming them; nothing leaks.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  checkptCli,
  cleanup,
  describeTree,
  descendants,
  events,
  pidAlive,
  programPid,
  removeDir,
  resume,
  run,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { setTimeout as sleep } from 'node:timers/promises';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

const last = (child, event) =>
  events(child)
    .filter((e) => e.event === event)
    .at(-1)?.n ?? 0;
// A process found a moment ago may have ended since: it has no parent any more.
const ppid = (pid) => {
  try {
    return Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  } catch {
    return undefined;
  }
};
const state = (pid) => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];

async function until(what, pred, child, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > end)
      throw new Error(
        `timed out: ${typeof what === 'function' ? what() : what}; stdout: ${child.lines.join('\n')} stderr: ${child.stderrText}; running:\n${describeTree(child.pid)}`,
      );
    await sleep(50);
  }
}

/** A shell loop printing {"event":NAME,"n":N} every 0.2 s. */
const loop = (name) =>
  `n=0; while :; do n=$((n+1)); echo "{\\"event\\":\\"${name}\\",\\"n\\":$n}"; sleep 0.2; done`;

test('checkpt run: a loop a shell daemonized (subshell in the background, subshell exits) is in the checkpoint, stops with checkpoint-and-exit, and runs again in the resumed copy', async () => {
  const file = join(dir, 'daemon.ckpt');
  const p = run(['--file', file, '--', 'sh', '-c', `( ${loop('orphan')} ) & ${loop('main')}`], {
    cwd: dir,
  });
  await waitFor(p, (e) => e.event === 'orphan' && e.n >= 3, 'the daemonized loop');
  await waitFor(p, (e) => e.event === 'main' && e.n >= 3, 'the main loop');
  const sh = await programPid(p);
  const all = descendants(sh);
  assert.ok(all.length >= 2, `the program has its daemon: ${all}`);
  const r = checkptCli(['signal', '--exit', String(sh)]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
  assert.match(p.stderrText, /checkpoint written to/);
  for (const pid of [sh, ...all]) assert.ok(!pidAlive(pid), `process ${pid} was left running`);
  const atCheckpoint = { orphan: last(p, 'orphan'), main: last(p, 'main') };

  const copy = resume(file);
  const o = await waitFor(copy, (e) => e.event === 'orphan', 'the daemon in the resumed copy');
  const m = await waitFor(copy, (e) => e.event === 'main', 'the main loop in the resumed copy');
  // Both count on from the checkpoint.
  assert.ok(
    o.n > 1 && o.n <= atCheckpoint.orphan + 2,
    `orphan ${o.n} after ${atCheckpoint.orphan}`,
  );
  assert.ok(m.n > 1 && m.n <= atCheckpoint.main + 2, `main ${m.n} after ${atCheckpoint.main}`);
  // The program ends with its first process, as a container does: the daemon is ended with it.
  const copySh = await programPid(copy);
  const copyAll = descendants(copySh);
  process.kill(copySh, 'SIGKILL');
  assert.deepEqual(await copy.closed, { code: null, signal: 'SIGKILL' }, copy.stderrText);
  for (const pid of copyAll) assert.ok(!pidAlive(pid), `process ${pid} outlived checkpt -r`);
});

test('checkpt run: a shell that adopts orphans still reaps them (no zombies)', async () => {
  const p = run(['--', 'sh', '-c', 'for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 30'], {
    cwd: dir,
  });
  const sh = await programPid(p);
  // The orphans were the shell's children once their subshells ended; gone now, none a zombie.
  const children = () => descendants(sh).filter((c) => ppid(c) === sh);
  const cmdline = (pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      return '';
    }
  };
  // One child at the very start is the first subshell, not yet forked its orphan: wait for the loop.
  await until(
    () =>
      `the orphans to end (the shell ${sh}: ${cmdline(sh)}; its children: ${children()
        .map((c) => {
          let st = 'gone';
          try {
            st = state(c);
          } catch {
            // ended meanwhile
          }
          return `${c} ${st} ${JSON.stringify(cmdline(c))}`;
        })
        .join(', ')})`,
    () => children().length === 1 && cmdline(children()[0]) === 'sleep\x0030\x00',
    p,
  );
  const [only] = children();
  assert.notEqual(state(only), 'Z');
  assert.equal(readFileSync(`/proc/${only}/cmdline`, 'utf8'), 'sleep\x0030\x00');
  process.kill(p.pid, 'SIGTERM');
  assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' });
});

test('checkpt run: the program ends with its first process; what it left running is ended, and checkpt run exits with its status', async () => {
  const p = run(
    ['--', 'sh', '-c', '(sleep 60 &); echo "{\\"event\\":\\"up\\"}"; sleep 0.5; exit 3'],
    {
      cwd: dir,
    },
  );
  await waitFor(p, (e) => e.event === 'up', 'the program');
  const left = await until(
    'the sleep it leaves',
    () =>
      descendants(p.pid).find((c) => {
        try {
          return readFileSync(`/proc/${c}/cmdline`, 'utf8') === 'sleep\x0060\x00';
        } catch {
          return false;
        }
      }),
    p,
  );
  assert.deepEqual(await p.closed, { code: 3, signal: null }, p.stderrText);
  assert.ok(!pidAlive(left), 'the sleep outlived checkpt run');
});

test("checkpt run: a process that left the program's tree (its parent turned adoption off) makes the checkpoint fail, naming it; the program keeps running", async () => {
  const file = join(dir, 'stray.ckpt');
  const py = [
    'import ctypes, os, sys, time',
    'ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)', // PR_SET_CHILD_SUBREAPER off
    'if os.fork() == 0:',
    '    if os.fork() == 0:',
    '        os.execvp("sleep", ["sleep", "60"])',
    '    os._exit(0)',
    'os.wait()',
    'n = 0',
    'while True:',
    '    n += 1',
    '    print(\'{"event":"tick","n":%d}\' % n, flush=True)',
    '    time.sleep(0.2)',
  ].join('\n');
  const p = run(['--file', file, '--', 'python3', '-c', py], { cwd: dir });
  await waitFor(p, (e) => e.event === 'tick' && e.n >= 2, 'ticks');
  const r = checkptCli(['signal', '--exit', String(await programPid(p))]);
  assert.equal(r.status, 0, r.stderr);
  await until('the failure', () => /checkpoint.*failed/.test(p.stderrText), p);
  assert.match(
    p.stderrText,
    /leave out 1 process of the program \(pid \d+ \(host \d+\): sleep 60\): they are not descendants/,
  );
  assert.ok(!existsSync(file), 'a checkpoint was written');
  const n = last(p, 'tick');
  await waitFor(p, (e) => e.event === 'tick' && e.n >= n + 3, 'ticks after the failed checkpoint');
  process.kill(p.pid, 'SIGTERM');
  const end = await p.closed;
  assert.equal(end.signal ?? end.code, 'SIGTERM', p.stderrText);
});
