import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import {
  cleanup,
  cli,
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
import { after } from 'node:test';

after(cleanup);
const node = nodeBinaries()[0];
const sha = (f) => createHash('sha256').update(readFileSync(f)).digest('hex');

for (const node of nodeBinaries()) {
  test(`Node ${node.major}: { exit: true } ends the program with status 0 once the file is durable; the resume returns 1`, async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'exit.ckpt');
      const orig = startNode(node, fixture('state.mjs'), [file, '--exit']);
      await waitFor(orig, (e) => e.event === 'ready', 'ready');
      const st = await orig.closed;
      assert.equal(st.code, 0, orig.stderrText);
      assert.ok(
        !orig.lines.some((l) => l.includes('"returned"')),
        'the original never returns from the call',
      );
      assert.ok(statSync(file).size > 1_000_000);
      const resumed = resume(file);
      const again = await waitFor(resumed, (e) => e.event === 'returned', 'resumed return');
      assert.equal(again.r, 1);
      assert.equal((await resumed.closed).code, 7);
    } finally {
      removeDir(dir);
    }
  });
}

for (const node of nodeBinaries()) {
  test(`Node ${node.major}: checkpoint() (async) resolves 0, refuses a second request meanwhile (EBUSY), and resolves 1 in the resumed copy`, async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'async.ckpt');
      const orig = startNode(node, fixture('state.mjs'), [file, '--busy']);
      const busy = await waitFor(orig, (e) => e.event === 'busy', 'a second request meanwhile');
      assert.equal(busy.code, 'EBUSY');
      const first = await waitFor(orig, (e) => e.event === 'returned', 'async return');
      assert.equal(first.r, 0);
      assert.equal((await orig.closed).code, 0, orig.stderrText);
      const resumed = start(process.execPath, [cli, 'restore', file]);
      const again = await waitFor(resumed, (e) => e.event === 'returned', 'resumed async return');
      assert.equal(again.r, 1);
      assert.equal(again.mapSize, 100_000);
      assert.equal((await resumed.closed).code, 7);
    } finally {
      removeDir(dir);
    }
  });
}

for (const node of nodeBinaries()) {
  test(`Node ${node.major}: one file resumed twice at once while the original still runs, then again after it was killed`, async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'many.ckpt');
      const orig = startNode(node, fixture('state.mjs'), [file, '--linger']);
      const first = await waitFor(orig, (e) => e.event === 'returned', 'original return');
      assert.equal(first.r, 0);
      const a = resume(file);
      const b = resume(file);
      const [ra, rb] = await Promise.all([
        waitFor(a, (e) => e.event === 'returned', 'copy A'),
        waitFor(b, (e) => e.event === 'returned', 'copy B'),
      ]);
      assert.equal(ra.r, 1);
      assert.equal(rb.r, 1);
      await Promise.all([
        waitFor(a, (e) => e.event === 'tick', 'copy A ticking'),
        waitFor(b, (e) => e.event === 'tick', 'copy B ticking'),
        waitFor(orig, (e) => e.event === 'tick', 'original ticking'),
      ]);
      assert.ok(
        pidAlive(orig.pid) && pidAlive(a.pid) && pidAlive(b.pid),
        'all three run side by side',
      );

      killGroup(orig);
      await orig.closed;
      const c = resume(file);
      const rc = await waitFor(c, (e) => e.event === 'returned', 'copy C after the original died');
      assert.equal(rc.r, 1);

      // Signals sent to `checkpt -r` reach the program: it dies of the same signal.
      await waitFor(c, (e) => e.event === 'tick', 'copy C ticking');
      process.kill(c.pid, 'SIGTERM');
      const st = await c.closed;
      assert.equal(st.signal, 'SIGTERM', `stderr: ${c.stderrText}`);
    } finally {
      removeDir(dir);
    }
  });
}

test('stdout redirected to a file, and a log file, that grew after the checkpoint do not stop a resume', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'grown.ckpt');
    const out = join(dir, 'out.txt');
    const logFile = join(dir, 'app.log');
    // A shell redirect, as a user would write it: fd 1 is the file itself (O_TRUNC, not O_APPEND).
    const orig = start('sh', [
      '-c',
      `exec "$0" "$@" > "${out}"`,
      node.bin,
      fixture('state.mjs'),
      file,
      '--linger',
      '--log',
      logFile,
    ]);
    const deadline = Date.now() + 60_000;
    while (!existsSync(out) || !readFileSync(out, 'utf8').includes('"tick"')) {
      assert.ok(Date.now() < deadline, `original never ticked: ${orig.stderrText}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const sizeAfter = statSync(out).size;
    assert.ok(sizeAfter > 0);
    process.kill(orig.pid, 'SIGKILL');
    await orig.closed;
    const resumed = resume(file);
    const again = await waitFor(
      resumed,
      (e) => e.event === 'returned',
      'resume despite grown files',
    );
    assert.equal(again.r, 1, "the resumed output arrives on the restorer's stdout");
    await waitFor(resumed, (e) => e.event === 'tick', 'resumed ticking');
    const logText = readFileSync(logFile, 'utf8');
    const copyTicks = logText.split('\n').filter((l) => l === `tick ${again.pid}`).length;
    assert.ok(copyTicks > 0, 'the resumed copy still appends to its log file');
  } finally {
    removeDir(dir);
  }
});

test('a checkpoint into an unwritable or missing directory throws ETARGET; the program runs on; no file', async () => {
  const dir = tempDir();
  const ro = join(dir, 'ro');
  mkdirSync(ro);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'checkpt-test', ro]);
  assert.equal(m.status, 0, String(m.stderr));
  try {
    for (const target of [join(ro, 'x.ckpt'), join(dir, 'missing', 'x.ckpt')]) {
      const p = startNode(node, fixture('state.mjs'), [target]);
      const err = await waitFor(p, (e) => e.event === 'error', 'the error');
      assert.equal(err.name, 'CheckptError');
      assert.equal(err.code, 'ETARGET');
      assert.match(err.message, /Cannot write a checkpoint into/);
      await waitFor(
        p,
        (e) => e.event === 'alive' && e.mapSize === 100_000,
        'the program to carry on',
      );
      assert.equal((await p.closed).code, 3);
      assert.ok(!existsSync(target));
    }
    assert.deepEqual(readdirSync(ro), []);
  } finally {
    spawnSync('umount', [ro]);
    removeDir(dir);
  }
});

test("a dump CRIU refuses throws EDUMP with CRIU's log; the program runs on; the older checkpoint stays intact", async () => {
  const dir = tempDir();
  const sockPath = join(dir, 'outside.sock');
  const server = createServer(() => {}).listen(sockPath);
  try {
    const file = join(dir, 'keep.ckpt');
    const good = startNode(node, fixture('state.mjs'), [file]);
    await waitFor(good, (e) => e.event === 'returned', 'first checkpoint');
    await good.closed;
    const before = sha(file);

    const bad = startNode(node, fixture('state.mjs'), [file, '--connect', sockPath]);
    const err = await waitFor(bad, (e) => e.event === 'error', 'the dump error');
    assert.equal(err.code, 'EDUMP', err.message);
    assert.match(err.message, /socket/i, 'the message names the cause');
    await waitFor(
      bad,
      (e) => e.event === 'alive' && e.mapSize === 100_000,
      'the program to carry on',
    );
    assert.equal((await bad.closed).code, 3);
    assert.equal(sha(file), before, 'the older checkpoint is untouched');
    assert.deepEqual(readdirSync(dir).sort(), ['keep.ckpt', 'outside.sock']);
  } finally {
    server.close();
    removeDir(dir);
  }
});

test('CHECKPT_FILE names the file from a template when checkpt() is given none', async () => {
  const dir = tempDir();
  try {
    const orig = startNode(node, fixture('state.mjs'), ['--no-file'], {
      cwd: dir,
      env: { ...process.env, CHECKPT_FILE: 'ck-%N-%P-%U-%%.ckpt' },
    });
    const first = await waitFor(orig, (e) => e.event === 'returned', 'return');
    await orig.closed;
    assert.deepEqual(readdirSync(dir), [`ck-state-${first.pid}-0-%.ckpt`]);
    const plain = startNode(node, fixture('state.mjs'), ['--no-file'], { cwd: dir });
    await waitFor(plain, (e) => e.event === 'returned', 'return with the default template');
    await plain.closed;
    assert.ok(existsSync(join(dir, 'state.ckpt')), 'default %N.ckpt in the working directory');
  } finally {
    removeDir(dir);
  }
});

test('Node 22 and later started without checkpt exec and CHECKPT_REEXEC=0: EIOURING says what to do, and the program runs on', async (t) => {
  const modern = nodeBinaries().filter((n) => n.major >= 22);
  if (modern.length === 0) return t.skip('no Node 22/24/26 installed (scripts/install-nodes.sh)');
  const dir = tempDir();
  try {
    for (const n of modern) {
      const file = join(dir, `uring${n.major}.ckpt`);
      // The switch off: no restart at the import (test/api/reexec.test.mjs has it on).
      const env = { ...process.env, CHECKPT_REEXEC: '0' };
      const p = start(n.bin, [fixture('state.mjs'), file], { env });
      const err = await waitFor(p, (e) => e.event === 'error', `the error on Node ${n.major}`);
      assert.equal(err.code, 'EIOURING');
      assert.match(err.message, /checkpt exec -- node/);
      assert.match(err.message, /io_uring_disabled=2/);
      await waitFor(p, (e) => e.event === 'alive', 'the program to carry on');
      assert.equal((await p.closed).code, 3);
      assert.ok(!existsSync(file));
    }
  } finally {
    removeDir(dir);
  }
});

test('checkpt -r FILE >> log appends to the log, though the program wrote to a pipe when checkpointed', async () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'piped.ckpt');
    const orig = start('sh', ['-c', `"$0" "$@" | cat`, node.bin, fixture('state.mjs'), file]);
    await waitFor(orig, (e) => e.event === 'returned', 'checkpoint through a pipe');
    await orig.closed;
    const log = join(dir, 'log.txt');
    writeFileSync(log, 'KEEP 1\nKEEP 2\n');
    const resumed = start('sh', [
      '-c',
      `"$0" "$1" -r "$2" >> "$3"`,
      process.execPath,
      cli,
      file,
      log,
    ]);
    const st = await resumed.closed;
    assert.equal(st.code, 7, resumed.stderrText);
    const lines = readFileSync(log, 'utf8').split('\n');
    assert.deepEqual(lines.slice(0, 2), ['KEEP 1', 'KEEP 2'], 'what was in the log stays');
    assert.match(lines[2], /"event":"returned","r":1/);
    assert.match(lines[3], /"event":"timer"/);
  } finally {
    removeDir(dir);
  }
});

test('a resumed copy checkpoints itself again: clones of clones know their generation', async () => {
  const dir = tempDir();
  try {
    const orig = startNode(node, fixture('generations.mjs'), [dir]);
    await waitFor(orig, (e) => e.r === 0 && e.hop === 0, 'first checkpoint');
    assert.equal((await orig.closed).code, 0, orig.stderrText);
    const one = resume(join(dir, 'gen0.ckpt'));
    const back1 = await waitFor(one, (e) => e.r === 1, 'first resume');
    assert.deepEqual([back1.hop, back1.generation], [0, 1]);
    const again = await waitFor(one, (e) => e.hop === 1, 'checkpoint taken in the copy');
    assert.equal(again.r, 0);
    assert.equal((await one.closed).code, 0, one.stderrText);
    const manifest = JSON.parse(
      spawnSync(process.execPath, [cli, 'inspect', '--json', join(dir, 'gen1.ckpt')], {
        encoding: 'utf8',
      }).stdout,
    ).manifest;
    assert.equal(manifest.generation, 1);
    // CRIU's own account of the pause it caused, from its stats-dump, inside its run's time.
    assert.ok(
      manifest.frozenMs > 0 && manifest.frozenMs <= manifest.dumpMs,
      `frozen ${manifest.frozenMs} ms of a ${manifest.dumpMs} ms dump`,
    );
    const two = resume(join(dir, 'gen1.ckpt'));
    const back2 = await waitFor(two, (e) => e.r === 1, 'resume of the copy');
    assert.deepEqual([back2.hop, back2.generation, back2.trail], [1, 2, [1, 1]]);
    assert.equal((await two.closed).code, 0, two.stderrText);
  } finally {
    removeDir(dir);
  }
});
