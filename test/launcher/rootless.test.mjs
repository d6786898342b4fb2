// checkpt without root (issue 16, docs/ROOTLESS.md): ordinary users made for these tests, with no
// capability and no setuid, run, checkpoint and resume programs in user namespaces of their own.
import assert from 'node:assert/strict';
import {
  assertStateBack,
  checkptCli,
  cleanup,
  cli,
  describe,
  events,
  fixture,
  freePort,
  nodeBinaries,
  pidAlive,
  programPid,
  removeDir,
  start,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { chownSync, copyFileSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { makeTestUser, removeTestUsers } from '../users.mjs';

// Node's own fetch (the lint's globals predate it).
const { fetch } = globalThis;
const dirs = [];

/** An ordinary user of the tests' own (test/users.mjs). */
const makeUser = (label) => makeTestUser({ prefix: 'ckrl', label });

let a;
let b;
before(() => {
  a = makeUser('a');
  b = makeUser('b');
});

after(async () => {
  await cleanup();
  for (const d of dirs) removeDir(d);
  removeTestUsers();
});

const uidOf = (pid) =>
  Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
const ticks = (child) => events(child).filter((e) => e.event === 'tick');
const written = (child) => /checkpoint written to/.test(child.stderrText);

async function until(what, pred, child, ms = 60_000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}; stderr: ${child?.stderrText ?? ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('without root', () => {
  let loopFile;
  let atCheckpoint;

  test('checkpt check as an ordinary user says rootless, and what it lacks', () => {
    const r = a.checkpt(['check']);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`rootless \\(uid ${a.uid}\\)`));
    assert.match(r.stdout, /TCP connections to the outside are closed/);
    const rootCheck = checkptCli(['check', '--json']);
    const mode = JSON.parse(rootCheck.stdout).findings.find((f) => f.name === 'mode');
    assert.match(mode.detail, /^root:/);
  });

  test('a shell loop under checkpt run, checkpointed by checkpt signal, resumes where it was, all as the user', async () => {
    loopFile = join(a.dir, 'loop.ckpt');
    const p = a.checkptStart(['run', '--file', loopFile, '--', 'sh', fixture('loop.sh')]);
    await waitFor(p, (e) => e.event === 'tick' && e.n >= 3, 'ticks');
    const pid = await programPid(p);
    // The program runs as the user on the host, though it is uid 0 in its own namespace.
    assert.equal(uidOf(pid), a.uid);
    const r = a.checkpt(['signal', String(pid)]);
    assert.equal(r.status, 0, r.stderr);
    await until('the checkpoint', () => written(p), p);
    atCheckpoint = ticks(p).at(-1).n;
    // No connections: no warning about them.
    assert.doesNotMatch(p.stderrText, /warning/);
    const st = statSync(loopFile);
    assert.equal(st.uid, a.uid);
    assert.equal(st.mode & 0o777, 0o600);
    const info = a.checkpt(['inspect', '--json', loopFile]);
    assert.equal(info.status, 0, info.stderr);
    const manifest = JSON.parse(info.stdout).manifest;
    assert.equal(manifest.uid, a.uid);
    assert.equal(manifest.rootless, true);
    // It goes on after the checkpoint.
    await waitFor(p, (e) => e.event === 'tick' && e.n >= atCheckpoint + 3, 'ticks after');
    process.kill(p.pid, 'SIGTERM');
    assert.deepEqual(await p.closed, { code: null, signal: 'SIGTERM' });
    assert.ok(!pidAlive(pid));

    const copy = a.checkptStart(['-r', loopFile]);
    const first = await waitFor(copy, (e) => e.event === 'tick', 'the resumed copy');
    assert.ok(
      first.n > 1 && first.n <= atCheckpoint + 2,
      `resumed at ${first.n}, checkpointed at ${atCheckpoint}`,
    );
    assert.equal(uidOf(await programPid(copy)), a.uid);
    process.kill(copy.pid, 'SIGTERM');
    assert.deepEqual(await copy.closed, { code: null, signal: 'SIGTERM' });
  });

  test('two concurrent resumes of one file, as the user: both count on from the checkpoint', async () => {
    assert.ok(loopFile, 'needs the loop checkpoint of the test above');
    const copies = [a.checkptStart(['-r', loopFile]), a.checkptStart(['-r', loopFile])];
    const pids = [];
    for (const c of copies) {
      const first = await waitFor(c, (e) => e.event === 'tick', 'a resumed copy');
      assert.ok(first.n > 1 && first.n <= atCheckpoint + 2, `resumed at ${first.n}`);
      await waitFor(c, (e) => e.event === 'tick' && e.n >= first.n + 3, 'it runs on');
      pids.push(await programPid(c));
    }
    assert.notEqual(pids[0], pids[1]);
    for (const c of copies) {
      process.kill(c.pid, 'SIGTERM');
      assert.deepEqual(await c.closed, { code: null, signal: 'SIGTERM' });
    }
  });

  test("a Node program's checkpt() under a rootless checkpt run returns 0, and 1 with its state in the copy the user resumes", async () => {
    const file = join(a.dir, 'state.ckpt');
    const p = a.checkptStart(['run', '--', process.execPath, fixture('state.mjs'), file]);
    const original = await waitFor(p, (e) => e.event === 'returned', 'checkpt() returned');
    assert.equal(original.r, 0, p.stderrText);
    assert.deepEqual(await p.closed, { code: 0, signal: null });
    assert.equal(statSync(file).uid, a.uid);

    const copy = a.checkptStart(['-r', file]);
    const resumed = await waitFor(copy, (e) => e.event === 'returned', 'the copy returned');
    assertStateBack(resumed, original);
    await waitFor(copy, (e) => e.event === 'timer', 'the pending timer fires in the copy');
    // state.mjs exits 7 when checkpt() returned anything but 0.
    assert.deepEqual(await copy.closed, { code: 7, signal: null });
  });

  test('a Node server (the newest Node here) under a rootless checkpt run: its copy keeps its state and takes its port over from the original', async () => {
    const node = nodeBinaries().at(-1);
    const port = await freePort();
    const file = join(a.dir, 'server.ckpt');
    const url = (path) => `http://127.0.0.1:${port}${path}`;
    const p = a.checkptStart(['run', '--', node.bin, fixture('server.mjs'), String(port), file]);
    await waitFor(p, (e) => e.event === 'listening', 'the server listens');
    assert.equal((await fetch(url('/notes?k=a&v=1'), { method: 'POST' })).status, 200);
    assert.equal((await fetch(url('/checkpoint'), { method: 'POST' })).status, 202);
    const done = await waitFor(p, (e) => e.event === 'checkpointed', 'the checkpoint');
    assert.equal(done.r, 0, p.stderrText);
    // The copy comes up while the original still holds the port, and waits for it.
    const copy = a.checkptStart(['-r', file]);
    const back = await waitFor(copy, (e) => e.event === 'checkpointed', 'the copy');
    assert.equal(back.r, 1, copy.stderrText);
    assert.match(copy.stderrText, /is busy \(the original still listens there\)/);
    assert.equal((await (await fetch(url('/'))).json()).gen, 0);
    process.kill(p.pid, 'SIGTERM');
    await p.closed;
    let state;
    for (const end = Date.now() + 30_000; state?.gen !== 1;) {
      if (Date.now() > end)
        throw new Error(`the copy never took the port over: ${copy.stderrText}`);
      state = await fetch(url('/'))
        .then((r) => r.json())
        .catch(() => undefined);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(state.notes, { a: '1' });
    assert.equal(uidOf(await programPid(copy)), a.uid);
    process.kill(copy.pid, 'SIGTERM');
    await copy.closed;
  });

  test('--private-net: a TCP connection inside the program survives checkpoint and exit and resume, without root', async () => {
    const file = join(a.dir, 'pair.ckpt');
    const p = a.checkptStart([
      'run',
      '--private-net',
      '--file',
      file,
      '--',
      process.execPath,
      fixture('tcp-pair.mjs'),
    ]);
    await waitFor(p, (e) => e.event === 'echo' && e.n >= 3, 'echoes');
    const r = a.checkpt(['signal', '--exit', String(p.pid)]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
    // Kept, so no warning about connections.
    assert.doesNotMatch(p.stderrText, /warning/);
    const last = events(p)
      .filter((e) => e.event === 'echo')
      .at(-1).n;
    assert.ok(!events(p).some((e) => e.event === 'closed'));
    const info = JSON.parse(a.checkpt(['inspect', '--json', file]).stdout).manifest;
    assert.equal(info.net, 'private');
    assert.equal(info.tcp, undefined);
    const copy = a.checkptStart(['-r', file]);
    // The same connection goes on: the next number, then more, and it never closes.
    const first = await waitFor(copy, (e) => e.event === 'echo', 'the copy echoes');
    assert.equal(first.n, last + 1);
    await waitFor(copy, (e) => e.event === 'echo' && e.n >= last + 10, 'it goes on');
    assert.ok(!events(copy).some((e) => e.event === 'closed' || e.event === 'error'));
    process.kill(copy.pid, 'SIGTERM');
    await copy.closed;
  });

  test("--private-net: a Node program's own checkpoint() keeps its connection; without it, the copy's connection is closed", async () => {
    for (const privateNet of [true, false]) {
      const file = join(a.dir, `pair-self-${privateNet}.ckpt`);
      const opt = privateNet ? ['--private-net'] : [];
      const p = a.checkptStart([
        'run',
        ...opt,
        '--',
        process.execPath,
        fixture('tcp-pair.mjs'),
        file,
      ]);
      const done = await waitFor(
        p,
        (e) => e.event === 'checkpointed' || e.event === 'error',
        'checkpoint()',
      );
      assert.equal(done.r, 0, JSON.stringify(done) + p.stderrText);
      if (privateNet) assert.doesNotMatch(p.stderrText, /warning/);
      else assert.match(p.stderrText, /without root, TCP connections are not kept/);
      process.kill(p.pid, 'SIGTERM');
      await p.closed;
      const copy = a.checkptStart(['-r', file]);
      const back = await waitFor(copy, (e) => e.event === 'checkpointed', 'the copy');
      assert.equal(back.r, 1);
      if (privateNet) {
        await waitFor(copy, (e) => e.event === 'echo' && e.n >= 15, 'echoes go on in the copy');
        assert.ok(!events(copy).some((e) => e.event === 'closed' || e.event === 'error'));
        process.kill(copy.pid, 'SIGTERM');
        await copy.closed;
      } else {
        await waitFor(copy, (e) => e.event === 'closed', 'the connection ends in the copy');
        assert.deepEqual(await copy.closed, { code: 0, signal: null });
      }
    }
  });

  test('checkpt exec without root runs the program as checkpt run does, so that it can be checkpointed and resumed', async () => {
    const file = join(a.dir, 'exec.ckpt');
    const p = a.checkptStart(['exec', '--', 'sh', fixture('loop.sh')], { CHECKPT_FILE: file });
    await waitFor(p, (e) => e.event === 'tick' && e.n >= 3, 'ticks');
    const pid = await programPid(p);
    const r = a.checkpt(['signal', '--exit', String(pid)]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
    assert.ok(written(p), p.stderrText);
    const made = file;
    const last = ticks(p).at(-1).n;
    const copy = a.checkptStart(['-r', made]);
    const first = await waitFor(copy, (e) => e.event === 'tick', 'the resumed copy');
    assert.ok(first.n > 1 && first.n <= last + 2, `resumed at ${first.n}, exited at ${last}`);
    process.kill(copy.pid, 'SIGTERM');
    assert.deepEqual(await copy.closed, { code: null, signal: 'SIGTERM' });
    rmSync(made, { force: true });
  });

  test("user A's checkpoint is refused for user B, and for root", async () => {
    assert.ok(loopFile, 'needs the loop checkpoint of the test above');
    // B got hold of A's file (a copy of B's own, so that only the ownership rule can refuse it).
    const bFile = join(b.dir, 'from-a.ckpt');
    copyFileSync(loopFile, bFile);
    chownSync(bFile, b.uid, b.gid);
    const r = b.checkpt(['-r', bFile]);
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr,
      new RegExp(
        `made by uid ${a.uid}, and you are uid ${b.uid}: a checkpoint resumes only as the user who made it`,
      ),
    );
    assert.doesNotMatch(r.stdout, /tick/);
    // Root would give its processes root's rights: refused as well.
    const asRoot = checkptCli(['-r', '--trust-file', loopFile]);
    assert.notEqual(asRoot.status, 0);
    assert.match(
      asRoot.stderr,
      new RegExp(`made without root by uid ${a.uid}; root does not resume it`),
    );
    assert.doesNotMatch(asRoot.stdout, /tick/);
  });

  test('what needs root says so: a program not under checkpt run, checkpt unlock, a checkpoint root made', async () => {
    // A Node program the user started directly cannot checkpoint itself; it keeps running.
    const plain = a.start(process.execPath, [fixture('state.mjs'), join(a.dir, 'plain.ckpt')]);
    const err = await waitFor(plain, (e) => e.event === 'error', 'the refusal');
    assert.equal(err.code, 'EPERM');
    assert.match(err.message, /only with an administrator's grant/);
    assert.match(err.message, /checkpt run --/);
    await waitFor(plain, (e) => e.event === 'alive', 'it keeps running');
    assert.deepEqual(await plain.closed, { code: 3, signal: null });

    const unlock = a.checkpt(['unlock', 'inet CRIU-x']);
    assert.notEqual(unlock.status, 0);
    assert.match(unlock.stderr, /checkpt unlock needs root: .*Run it as root/);

    // A checkpoint root took resumes only as root, whoever may read it.
    const rootDir = tempDir('checkpt-rootless-root-');
    dirs.push(rootDir);
    const rootFile = join(rootDir, 'root.ckpt');
    const p = start(
      process.execPath,
      [cli, 'run', '--file', rootFile, '--', 'sh', fixture('loop.sh')],
      {
        cwd: rootDir,
      },
    );
    await waitFor(p, (e) => e.event === 'tick' && e.n >= 2, 'ticks');
    const r = checkptCli(['signal', String(await programPid(p))]);
    assert.equal(r.status, 0, r.stderr);
    await until("root's checkpoint", () => written(p), p);
    process.kill(p.pid, 'SIGTERM');
    await p.closed;
    const mine = join(a.dir, 'root-made.ckpt');
    copyFileSync(rootFile, mine);
    chownSync(mine, a.uid, a.gid);
    const refused = a.checkpt(['-r', mine]);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /was made by root .*resuming it needs root/);
    assert.doesNotMatch(refused.stdout, /tick/);
  });
});
