// Faults while resuming (issue 6, item 2): a file the program had open deleted, changed or gone
// with its directory, and CRIU or checkpt's helper killed in the middle of a restore. Every time
// `checkpt -r` fails with a message that names the file and what to do, leaves no process of the
// failed restore behind and no unpacked images; following the advice makes the resume work.
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before } from 'node:test';
import { cleanup, describe, killGroup, removeDir, resume, tempDir, test } from '../helpers.mjs';
import { HANG_GUARD_MS, driven, leftovers, procs, signalWhen } from './faults.mjs';

/** Processes of a restore from `staging` (the helper, CRIU) or a copy of the program `innerPid`. */
function restoreProcesses(staging, innerPid) {
  return procs().filter((x) => {
    if (x.cmd.some((a) => a.includes(staging))) return true;
    try {
      const ns = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${x.pid}/status`, 'utf8'))[1];
      const ids = ns.trim().split(/\s+/).map(Number);
      return (
        ids.length > 1 && ids.at(-1) === innerPid && x.cmd.some((a) => a.endsWith('driven.mjs'))
      );
    } catch {
      return false;
    }
  });
}

describe('faults while resuming', () => {
  let dir, staging, data, held, file, innerPid;
  const env = () => ({ ...process.env, CHECKPT_TMPDIR: staging });

  before(async () => {
    dir = tempDir();
    staging = join(dir, 'staging');
    data = join(dir, 'data');
    mkdirSync(staging);
    mkdirSync(data);
    held = join(data, 'held.txt');
    writeFileSync(held, 'as it was\n');
    file = join(dir, 'held.ckpt');
    const prog = await driven();
    innerPid = prog.pid;
    await prog.ask({ op: 'open', path: held });
    const r = await prog.ask({ op: 'checkpt', file });
    assert.equal(r.r, 0, JSON.stringify(r));
    killGroup(prog.p);
    await prog.p.closed;
  });

  after(async () => {
    await cleanup();
    if (dir) removeDir(dir);
  });

  /** A resume that must fail: exit 125, the message matching `want`, and nothing left behind. */
  async function failedResume(want, inject = () => true) {
    const r = resume(file, { env: env() });
    const injected = inject();
    const st = await Promise.race([r.closed, sleep(HANG_GUARD_MS, 'hang', { ref: false })]);
    assert.notEqual(st, 'hang', 'checkpt -r returned');
    assert.ok(injected, 'the fault was injected');
    assert.equal(st.code, 125, `checkpt -r failed as checkpt itself: ${r.stderrText}`);
    assert.match(r.stderrText, want);
    assert.deepEqual(r.lines, [], 'the program never ran');
    // The namespace's init takes its processes with it; give the kernel a moment to reap them.
    const deadline = Date.now() + 5000;
    while (restoreProcesses(staging, innerPid).length && Date.now() < deadline) await sleep(20);
    assert.deepEqual(restoreProcesses(staging, innerPid), [], 'no process of the failed restore');
    assert.deepEqual(leftovers(staging), [], 'no unpacked images left');
    return r;
  }

  test('a file the program had open was deleted: the error names it and says to put it back', async () => {
    rmSync(held);
    try {
      await failedResume(
        new RegExp(
          `had ${held.replace(/\./g, '\\.')} open and it no longer exists\\. Put the file back`,
        ),
      );
    } finally {
      writeFileSync(held, 'as it was\n');
    }
  });

  test('that file changed size: the error names it, both sizes, and what to do', async () => {
    appendFileSync(held, 'and more\n');
    try {
      await failedResume(
        /held\.txt open and it changed since the checkpoint \(now 19 bytes, was 10\)\. Put the file back/,
      );
    } finally {
      writeFileSync(held, 'as it was\n');
    }
  });

  test('its whole directory is gone: the same, naming the file', async () => {
    rmSync(data, { recursive: true });
    try {
      await failedResume(/held\.txt open and it no longer exists/);
    } finally {
      mkdirSync(data);
      writeFileSync(held, 'as it was\n');
    }
  });

  test('CRIU killed in the middle of the restore: ERESTORE, no half-started process', async () => {
    await failedResume(
      /CRIU could not resume .*CRIU was killed by SIGKILL.*No process was left/,
      () =>
        signalWhen(
          (x) =>
            x.exe.endsWith('/criu') &&
            x.cmd[1] === 'restore' &&
            x.cmd.some((a) => a.includes(staging)),
        ),
    );
  });

  test("checkpt's helper (the namespace's init) killed during the restore: no half-started process", async () => {
    await failedResume(/helper ended before the program was restored.*No process was left/, () =>
      signalWhen(
        (x) =>
          x.exe.endsWith('/checkpt-helper') &&
          x.cmd[1] === 'init' &&
          x.cmd.some((a) => a.includes(staging)) &&
          readFileSync(`/proc/${x.pid}/status`, 'utf8').match(/^NSpid:\s+\d+\s+1$/m) !== null,
      ),
    );
  });

  test('with the file put back as it was, the same checkpoint resumes with its state', async () => {
    const r = resume(file, { env: env() });
    const copy = await driven(undefined, r, (e) => e.event === 'returned' && e.r === 1);
    assert.equal(copy.ready.gen, 1);
    assert.equal(copy.ready.mapSize, 20_000);
    killGroup(r);
    await r.closed;
  });
});
