// Concurrency (issue 6, item 4): many checkpoint() calls at once in one process, the program's own
// checkpt() meeting checkpoint requests from several senders, two processes writing one path, and
// many `checkpt signal` at once. Every outcome is a whole, verified file or a clear CheckptError;
// no request is lost and no file is ever a mix.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import {
  cleanup,
  cli,
  describe,
  events,
  fixture,
  programPid,
  removeDir,
  resume,
  run,
  tempDir,
  test,
  waitFor,
  within,
} from '../helpers.mjs';
import { setTimeout as sleep } from 'node:timers/promises';
import { readImageInfo } from '../../dist/image/format.js';
import { assertIntact, assertVerifies, driven, leftovers, settled } from './faults.mjs';

/** Runs `checkpt signal PID` and resolves with its exit status and when it ended. */
function sendRequest(pid, extra = []) {
  return within(
    new Promise((resolve) => {
      const c = spawn(process.execPath, [cli, 'signal', ...extra, String(pid)], {
        stdio: 'ignore',
      });
      c.on('close', (code) => resolve({ code, at: Date.now() }));
    }),
    `checkpt signal ${pid} to end`,
  );
}

async function createdAt(file) {
  return Date.parse((await readImageInfo(file)).manifest.createdAt);
}

describe('concurrency', () => {
  let dir;
  before(() => {
    dir = tempDir();
  });
  after(async () => {
    await cleanup();
    if (dir) removeDir(dir);
  });

  test('8 checkpoint() calls at once, to 8 paths and then to one path: one whole file each time, the rest EBUSY', async () => {
    const prog = await driven();
    const base = await prog.ask({ op: 'ping' });
    for (const same of [false, true]) {
      const files = Array.from({ length: 8 }, (_, i) =>
        join(dir, same ? 'one.ckpt' : `d${i}.ckpt`),
      );
      const { id } = await prog.ask({ op: 'many', files, sync: [files[0], files[1]] });
      const outcomes = prog.p.lines
        .map((l) => JSON.parse(l))
        .filter((e) => typeof e.id === 'string' && e.id.startsWith(`${id}-`));
      assert.equal(outcomes.length, 10, JSON.stringify(outcomes));
      const ok = outcomes.filter((e) => e.event === 'returned');
      const busy = outcomes.filter((e) => e.event === 'failed');
      assert.equal(ok.length, 1, 'exactly one runs');
      assert.equal(ok[0].r, 0);
      assert.ok(
        busy.every((e) => e.name === 'CheckptError' && e.code === 'EBUSY'),
        JSON.stringify(busy),
      );
      const written = [...new Set(files)].filter((f) => existsSync(f));
      assert.equal(written.length, 1, 'one file, for the call that ran');
      await assertVerifies(written[0]);
      base.counter++;
      await assertIntact(prog, base);
      // A request refused with EBUSY is not queued: the next call runs at once.
      const again = await prog.ask({ op: 'checkpoint', file: join(dir, 'after.ckpt') });
      assert.equal(again.r, 0, JSON.stringify(again));
      base.counter++;
    }
    assert.deepEqual(
      leftovers(dir).filter((f) => !f.endsWith('.ckpt')),
      [],
      'no temporary files',
    );
  });

  test("the program's own checkpt() and requests from 6 senders at once: the program's file and a request's file, both whole, none lost", async () => {
    const reqFile = join(dir, 'requested.ckpt');
    const own = join(dir, 'own.ckpt');
    const prog = await driven({ CHECKPT_FILE: reqFile });
    const base = await prog.ask({ op: 'ping' });
    // The program checkpoints itself while requests arrive from several places at once.
    const mine = prog.ask({ op: 'checkpt', file: own });
    const sent = await Promise.all([
      ...Array.from({ length: 4 }, () => sendRequest(prog.pid)),
      (async () => {
        process.kill(prog.pid, 'SIGSTKFLT');
        return { code: 0, at: Date.now() };
      })(),
      sendRequest(prog.pid),
    ]);
    assert.ok(
      sent.every((s) => s.code === 0),
      JSON.stringify(sent),
    );
    const r = await mine;
    assert.equal(r.r, 0, JSON.stringify(r));
    await assertVerifies(own);
    // None lost: one more request, sent once all the others were, is carried out (merged into one
    // in progress, it becomes the follow-up): a checkpoint to CHECKPT_FILE begins after it.
    const last = Date.now();
    process.kill(prog.pid, 'SIGSTKFLT');
    const deadline = Date.now() + 60_000;
    while (!(existsSync(reqFile) && (await createdAt(reqFile)) >= last)) {
      assert.ok(Date.now() < deadline, `the last request was lost: ${prog.p.stderrText}`);
      await sleep(50);
    }
    await settled(prog.pid);
    await assertVerifies(reqFile);
    assert.equal(prog.p.stderrText, '', 'no request failed (never EBUSY)');
    base.counter++;
    await assertIntact(prog, base);
  });

  test('two processes checkpointing to the same path at once, 3 rounds: the file is always one whole image', async () => {
    const file = join(dir, 'shared.ckpt');
    const a = await driven();
    const b = await driven();
    const pids = new Set([a.pid, b.pid]);
    for (const op of ['checkpt', 'checkpoint', 'checkpt']) {
      const [ra, rb] = await Promise.all([a.ask({ op, file }), b.ask({ op, file })]);
      assert.equal(ra.r, 0, JSON.stringify(ra));
      assert.equal(rb.r, 0, JSON.stringify(rb));
      const info = await assertVerifies(file);
      assert.ok(pids.has(info.manifest.pid), 'the image of one of the two');
      assert.deepEqual(
        leftovers(dir).filter((f) => f.includes('.tmp-')),
        [],
      );
    }
    // The survivor resumes as whichever process wrote it last.
    const winner = (await readImageInfo(file)).manifest.pid;
    const copy = resume(file, { stdio: ['pipe', 'pipe', 'pipe'] });
    const resumed = await driven(undefined, copy, (e) => e.event === 'returned' && e.r === 1);
    assert.equal(resumed.pid, winner);
    assert.equal((await resumed.ask({ op: 'ping' })).gen, 1);
  });

  test('8 `checkpt signal` at once at a program under checkpt run: all delivered, merged, none lost, the file whole', async () => {
    const file = join(dir, 'loop.ckpt');
    const work = join(dir, 'work');
    mkdirSync(work);
    const p = run(['--file', file, '--', 'sh', fixture('loop.sh')], {
      cwd: dir,
      env: { ...process.env, CHECKPT_TMPDIR: work },
    });
    await waitFor(p, (e) => e.event === 'tick' && e.n >= 2, 'ticks');
    const pid = await programPid(p);
    const sent = await Promise.all(Array.from({ length: 8 }, () => sendRequest(pid)));
    assert.ok(
      sent.every((s) => s.code === 0),
      JSON.stringify(sent),
    );
    const last = Date.now();
    process.kill(p.pid, 'SIGSTKFLT');
    const deadline = Date.now() + 60_000;
    while (!(existsSync(file) && (await createdAt(file)) >= last)) {
      assert.ok(Date.now() < deadline, `the last request was lost: ${p.stderrText}`);
      await sleep(50);
    }
    // Let any merged follow-up finish: the dump's work directory lives as long as it does.
    for (let quiet = 0; quiet < 10; quiet = readdirSync(work).length ? 0 : quiet + 1)
      await sleep(30);
    await assertVerifies(file);
    assert.doesNotMatch(p.stderrText, /failed/);
    const n = events(p)
      .filter((e) => e.event === 'tick')
      .at(-1).n;
    await waitFor(p, (e) => e.event === 'tick' && e.n > n + 2, 'the program ticking on');
  });
});
