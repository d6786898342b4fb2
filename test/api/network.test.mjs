import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import {
  cleanup,
  descendants,
  events,
  fixture,
  freePort,
  killGroup,
  nodeBinaries,
  removeDir,
  resume,
  spawnSync,
  start,
  startNode,
  tempDir,
  test,
  waitFor,
  within,
} from '../helpers.mjs';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { lockTableName } from '../../dist/engine/netlock.js';
import { nftRuleset } from '../netlock.mjs';
import { zstdDecoder } from '../../dist/image/compress.js';
import { extractImage } from '../../dist/image/format.js';

// Node 18+ has fetch built in; the linter's list of Node globals predates it.
const { fetch, AbortSignal } = globalThis;
const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

async function http(port, path, method = 'GET') {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text.startsWith('{') ? JSON.parse(text) : text };
}

async function startServer(n, name, extra = [], options = {}) {
  const port = await freePort();
  const file = join(dir, `${name}.ckpt`);
  const p = startNode(n, fixture('server.mjs'), [String(port), file, ...extra], options);
  await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
  return { port, file, p };
}

/**
 * One raw keep-alive HTTP connection: every request goes over this very socket, and whatever ends
 * it ('end', an error, 'close') is recorded in `seen`.
 */
function keepAlive(port) {
  const sock = connect(port, '127.0.0.1');
  const seen = [];
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d) => (buf += d));
  sock.on('end', () => seen.push('end'));
  sock.on('error', (e) => seen.push(`error ${e.code}`));
  sock.on('close', () => seen.push('close'));
  return {
    sock,
    seen,
    async get(path = '/', ms = 20_000) {
      buf = '';
      sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n`);
      const deadline = Date.now() + ms;
      for (;;) {
        const head = buf.indexOf('\r\n\r\n');
        const len = /content-length: (\d+)/i.exec(buf.slice(0, head));
        if (head >= 0 && len && buf.length >= head + 4 + Number(len[1]))
          return JSON.parse(buf.slice(head + 4, head + 4 + Number(len[1])));
        if (seen.length) throw new Error(`the connection ended: ${seen.join(', ')}`);
        if (Date.now() > deadline)
          throw new Error(`no answer within ${ms} ms on the kept connection`);
        await sleep(10);
      }
    },
  };
}

/** Whether a CRIU lock table holds the connection between `port` and the client's `local`. */
const locked = (port, local) =>
  new RegExp(`127\\.0\\.0\\.1 \\. ${port} \\. 127\\.0\\.0\\.1 \\. ${local}\\b`).test(nftRuleset());

/** A child's end, within `ms`; a timeout says what still ran below it. */
async function ended(child, ms = 30_000) {
  let timer;
  try {
    return await Promise.race([
      child.closed,
      new Promise((_, reject) => {
        timer = setTimeout(() => {
          const below = descendants(child.pid).map((pid) => {
            try {
              return `${pid} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')}`;
            } catch {
              return String(pid);
            }
          });
          reject(
            new Error(
              `pid ${child.pid} did not end within ${ms} ms; still running: ${below.join('; ') || 'nothing below it'}; stderr: ${child.stderrText}`,
            ),
          );
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Asks the fixture to checkpoint over a connection of its own. */
async function askCheckpoint(port) {
  assert.equal((await http(port, '/checkpoint', 'POST')).status, 202);
}

/** Resolves once `port` answers with generation `gen` on a new connection (deadline `ms`). */
async function untilGeneration(port, gen, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await http(port, '/');
      if (last.body.gen === gen) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline)
      throw new Error(
        `port ${port} did not answer as generation ${gen} within ${ms} ms (last: ${JSON.stringify(last)})`,
      );
    await sleep(50);
  }
}

async function untilStderr(child, re, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!re.test(child.stderrText)) {
    if (Date.now() > deadline)
      throw new Error(`no ${re} on stderr within ${ms} ms; stderr: ${child.stderrText}`);
    await sleep(20);
  }
}

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: checkpoint() closes nothing: a keep-alive client goes on on the same socket, the listener never closes, and a resume (original gone) answers on the same port with the state`, async () => {
    const { port, file, p } = await startServer(n, `srv${n.major}`);
    const client = keepAlive(port);
    assert.equal((await client.get('/')).gen, 0);
    assert.equal((await http(port, '/notes?k=a&v=1', 'POST')).body, 'ok');
    await askCheckpoint(port);
    await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
    const orig = await client.get('/');
    assert.deepEqual(orig.notes, { a: '1' });
    assert.equal(orig.gen, 0);
    assert.deepEqual(client.seen, [], 'no end, no reset on the kept connection');
    assert.ok(!events(p).some((e) => e.event === 'server-closed'));
    client.sock.destroy();
    killGroup(p);
    await ended(p);

    const copy = resume(file);
    await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
    const got = await untilGeneration(port, 1);
    assert.deepEqual(got.body.notes, { a: '1' });
    copy.kill('SIGTERM');
    await ended(copy);
  });

  test(`Node ${n.major}: checkpoint-and-exit, then checkpt -r: a keep-alive client's socket carries on, answered by the copy; the original exits 0 without closing it`, async () => {
    const { port, file, p } = await startServer(n, `exit${n.major}`, ['--exit']);
    const client = keepAlive(port);
    const first = await client.get('/');
    assert.equal(first.gen, 0);
    await askCheckpoint(port);
    const { code, signal } = await ended(p);
    assert.equal(code, 0, `${signal} ${p.stderrText}`);
    // The original is gone, and its end of the connection said nothing: no FIN, no RST; CRIU's
    // lock still holds the connection until the restore.
    await sleep(200);
    assert.deepEqual(client.seen, []);
    assert.ok(locked(port, client.sock.localPort), 'the lock table holds the connection');
    const copy = resume(file);
    await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
    const next = await client.get('/');
    assert.equal(next.gen, 1);
    assert.equal(
      next.hits,
      first.hits + 2,
      'the copy counts on from the checkpoint: this socket, same server',
    );
    assert.deepEqual(client.seen, []);
    assert.ok(!locked(port, client.sock.localPort), 'the restore removed the lock table');
    client.sock.destroy();
    copy.kill('SIGTERM');
    await ended(copy);
  });
}

test('without nftables network locking: one warning, the connection ends (never hangs) at a checkpoint-and-exit, and the copy listens again', async () => {
  // A CRIU stand-in whose nftables locking does not work, as on a kernel without nf_tables.
  const fake = join(dir, 'criu-nolock');
  writeFileSync(
    fake,
    `#!/bin/sh\nif [ "$1" = check ] && [ "$3" = network_lock_nftables ]; then exit 1; fi\nexec "$CHECKPT_REAL_CRIU" "$@"\n`,
    { mode: 0o755 },
  );
  // The answer is cached per CRIU binary in the run directory: a private one, so no other test sees it.
  const run = join(dir, 'run-nolock');
  const env = { ...process.env, CHECKPT_CRIU: fake, CHECKPT_RUN_DIR: run };
  const n = nodeBinaries()[0];
  const { port, file, p } = await startServer(n, 'nolock', ['--exit'], { env });
  const client = keepAlive(port);
  assert.equal((await client.get('/')).gen, 0);
  await askCheckpoint(port);
  const { code, signal } = await ended(p);
  assert.equal(code, 0, `${signal} ${p.stderrText}`);
  assert.equal(
    p.stderrText.match(/warning: CRIU cannot lock the network/g)?.length,
    1,
    p.stderrText,
  );
  // Not locked, the connection cannot be carried over: its client is told at once, not left waiting.
  const deadline = Date.now() + 10_000;
  while (client.seen.length === 0) {
    assert.ok(Date.now() < deadline, 'the client still waits on a connection nobody holds');
    await sleep(20);
  }
  assert.ok(!locked(port, client.sock.localPort));
  const copy = resume(file, { env });
  await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
  assert.equal((await untilGeneration(port, 1)).body.gen, 1);
  copy.kill('SIGTERM');
  await ended(copy);
  rmSync(run, { recursive: true, force: true });
});

test('checkpt() (sync) keeps the listener and the connection too, and so does checkpt(file, { exit: true }) with a resume', async () => {
  const node = nodeBinaries()[0];
  const { port, p } = await startServer(node, 'sync', ['--sync']);
  const client = keepAlive(port);
  await client.get('/');
  await askCheckpoint(port);
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  assert.equal((await client.get('/')).gen, 0);
  assert.deepEqual(client.seen, []);
  client.sock.destroy();
  killGroup(p);
  await ended(p);

  const ex = await startServer(node, 'syncexit', ['--sync', '--exit']);
  const c2 = keepAlive(ex.port);
  await c2.get('/');
  await askCheckpoint(ex.port);
  assert.equal((await ended(ex.p)).code, 0, ex.p.stderrText);
  const copy = resume(ex.file);
  await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
  assert.equal((await c2.get('/')).gen, 1);
  assert.deepEqual(c2.seen, []);
  c2.sock.destroy();
  copy.kill('SIGTERM');
  await ended(copy);
});

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: a checkpoint-and-exit whose file cannot be written rolls back: the program goes on, its connections untouched`, async () => {
    // A filesystem far too small for the image: packing fails with ENOSPC inside CRIU's post-dump step.
    const small = join(dir, `small${n.major}`);
    mkdirSync(small);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small], {
      encoding: 'utf8',
    });
    assert.equal(m.status, 0, m.stderr);
    try {
      const port = await freePort();
      const file = join(small, 'full.ckpt');
      const p = startNode(n, fixture('server.mjs'), [String(port), file, '--exit']);
      await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
      const client = keepAlive(port);
      const before = await client.get('/');
      await askCheckpoint(port);
      const e = await waitFor(p, (x) => x.event === 'error', 'the failed checkpoint');
      assert.match(e.message, /filesystem is full|No space left/, e.message);
      const after = await client.get('/');
      assert.equal(after.gen, 0);
      assert.equal(after.hits, before.hits + 2);
      assert.deepEqual(client.seen, []);
      assert.equal((await http(port, '/')).body.gen, 0, 'new connections are served too');
      assert.ok(!locked(port, client.sock.localPort), 'the roll-back removed the lock table');
      assert.deepEqual(readdirSync(small), [], 'no file, no temporary left');
      client.sock.destroy();
      killGroup(p);
      await ended(p);
    } finally {
      spawnSync('umount', ['-l', small]);
    }
  });

  test(`Node ${n.major}: a copy resumed while the original still listens: the original answers on at once, undisturbed; the copy takes the port over once the original stops`, async () => {
    let upstreamConns = 0;
    const ends = [];
    const up = createServer((sock) => {
      upstreamConns++;
      sock.on('end', () => ends.push('end'));
      sock.on('error', (e) => ends.push(`error ${e.code}`));
      sock.on('data', () =>
        sock.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi`),
      );
    });
    await within(new Promise((r) => up.listen(0, '127.0.0.1', r)), 'a local server to listen');
    const upPort = up.address().port;
    try {
      const { port, file, p } = await startServer(n, `beside${n.major}`);
      // The program's own pooled connection to an upstream is kept across its checkpoint.
      assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
      const client = keepAlive(port);
      assert.equal((await client.get('/')).gen, 0);
      await askCheckpoint(port);
      await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
      assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
      assert.deepEqual([upstreamConns, ends], [1, []], 'one pooled connection, never closed');

      const copy = resume(file);
      await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
      await untilStderr(copy, new RegExp(`checkpt: 127.0.0.1:${port} is busy .*take it over`));
      // The original: same kept connection, new connections, its pooled upstream connection.
      for (let i = 0; i < 5; i++) assert.equal((await client.get('/')).gen, 0);
      assert.equal((await http(port, '/')).body.gen, 0);
      assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
      assert.deepEqual(client.seen, []);
      assert.deepEqual(ends, [], "the copy's restored connections never reached the upstream");
      assert.ok(!locked(port, client.sock.localPort), 'no lock table left behind');

      client.sock.destroy();
      killGroup(p);
      await ended(p);
      await untilGeneration(port, 1);
      // The copy's pooled connection was restored closed: its agent connects anew.
      assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
      copy.kill('SIGTERM');
      await ended(copy);
    } finally {
      up.close();
    }
  });
}

test('a copy whose program closes its server while waiting for the port does not take it over, and its close() succeeds', async () => {
  const { port, file, p } = await startServer(nodeBinaries()[0], 'giveup');
  await askCheckpoint(port);
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  const copy = resume(file);
  await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
  await untilStderr(copy, new RegExp(`checkpt: 127.0.0.1:${port} is busy`));
  process.kill(copy.pid, 'SIGUSR2');
  const closed = await waitFor(
    copy,
    (e) => e.event === 'closed',
    'the program to close its server',
  );
  assert.equal(closed.error, undefined);
  // With its server closed nothing keeps the copy alive: it ends by itself, so no take-over
  // attempt (a ref'd timer) is left pending.
  assert.equal((await ended(copy)).code, 0, copy.stderrText);
  killGroup(p);
  await ended(p);
  await assert.rejects(http(port, '/'), (e) => e.cause?.code === 'ECONNREFUSED');
});

test('CHECKPT_NETWORK=0: no built-in handling, so a copy beside its original is refused with the port named', async () => {
  const port = await freePort();
  const file = join(dir, 'nonet.ckpt');
  const p = startNode(nodeBinaries()[0], fixture('server.mjs'), [String(port), file], {
    env: { ...process.env, CHECKPT_NETWORK: '0' },
  });
  await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
  await askCheckpoint(port);
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  const copy = resume(file);
  const { code } = await ended(copy);
  assert.equal(code, 125, copy.stderrText);
  assert.match(
    copy.stderrText,
    new RegExp(`listens on 127.0.0.1:${port}, and port ${port} on 127.0.0.1 is in use by pid \\d+`),
  );
  assert.equal((await http(port, '/')).body.gen, 0);
  killGroup(p);
  await ended(p);
});

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: child processes and worker threads are checkpointed with the program; clocks do not jump back and missed intervals do not flood`, async () => {
    const file = join(dir, `family${n.major}.ckpt`);
    const p = startNode(n, fixture('family.mjs'), [file]);
    assert.equal((await p.closed).code, 0, p.stderrText);
    assert.ok(events(p).some((e) => e.event === 'worker' && e.value === 2));
    // No connection for CRIU's lock table to hold: it is gone already, not left for a resume.
    const images = join(dir, `family${n.major}-images`);
    mkdirSync(images);
    await extractImage(file, images, { decoder: zstdDecoder(file) });
    const table = lockTableName(readFileSync(join(images, 'inventory.img')));
    assert.match(table, /^inet CRIU-[0-9a-f-]{21}$/);
    assert.ok(!nftRuleset().includes(`table ${table} `), `${table} was left behind`);
    await sleep(1500);
    const copy = resume(file);
    assert.equal((await copy.closed).code, 0, copy.stderrText);
    const got = events(copy);
    assert.ok(
      got.some((e) => e.event === 'child' && e.text === 'child:hello 1'),
      copy.lines.join('\n'),
    );
    // The worker's own counter went on from where it was: 10 * 2 + 1.
    assert.ok(
      got.some((e) => e.event === 'worker' && e.value === 21),
      copy.lines.join('\n'),
    );
    const c = got.find((e) => e.event === 'clocks');
    assert.equal(c.r, 1);
    assert.ok(c.perfGap >= 0 && c.hrGap >= 0, JSON.stringify(c));
    // The 1.5 s the program spent as a file is not time its monotonic clocks saw pass...
    assert.ok(c.dateGap - c.perfGap >= 1000, JSON.stringify(c));
    // ...so a 50 ms interval does not fire 30 times at once.
    assert.ok(c.ticksCaughtUp <= 5, JSON.stringify(c));
  });
}

/** The internals fixture on `n`, to its end (10 s at most). */
async function internals(n, mode) {
  const p = start(n.bin, [fixture('internals.mjs'), mode], {
    env: { ...process.env, CHECKPT_TAKEOVER_MS: '20' },
  });
  const { code, signal } = await ended(p, 10_000);
  assert.equal(code, 0, `${mode}: ${signal} ${p.stderrText}`);
  return { events: events(p), stderr: p.stderrText };
}

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: has the three private internals the network resource uses, and a copy takes its port back through them`, async () => {
    const { events: probe } = await internals(n, 'probe');
    assert.deepEqual(probe, [
      { event: 'internals', activeHandles: true, handleClose: true, emitCloseIfDrained: true },
    ]);
    const { events: ev, stderr } = await internals(n, 'intact');
    const rounds = ev.filter((e) => e.event === 'round');
    assert.equal(rounds.length, 2, stderr);
    for (const r of rounds) assert.deepEqual([r.port, r.answer], [r.own, 'hi'], stderr);
    assert.doesNotMatch(stderr, /warning/);
  });

  for (const [mode, internal] of [
    ['no-active-handles', 'process._getActiveHandles()'],
    ['no-handle-close', "close() on a net.Server's _handle"],
    ['no-emit-close', 'net.Server.prototype._emitCloseIfDrained()'],
  ])
    test(`Node ${n.major}, ${mode}: without ${internal} the network resource warns once, throws nothing, and the copy keeps serving on its spare port`, async () => {
      const { events: ev, stderr } = await internals(n, mode);
      const rounds = ev.filter((e) => e.event === 'round');
      assert.equal(rounds.length, 2, stderr);
      for (const r of rounds) assert.deepEqual([r.port, r.answer], [r.spare, 'hi'], stderr);
      assert.ok(
        ev.some((e) => e.event === 'closed'),
        stderr,
      );
      const warnings = stderr.match(/checkpt: warning: .*/g) ?? [];
      assert.equal(warnings.length, 1, stderr);
      assert.ok(warnings[0].includes(`lacks ${internal}`), warnings[0]);
      assert.match(warnings[0], /spare port/);
    });
}

test(
  "a copy whose restore kept its listeners' ports (portsKept) does not look at them; one whose restore may have moved one does",
  { unit: true },
  async () => {
    // In-process: the built-in resource's steps over a real listener, its address() counted.
    const { networkResource, listenersKept } = await import('../../dist/api/network.js');
    const server = createServer();
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const address = server.address.bind(server);
    let looked = 0;
    server.address = () => {
      looked++;
      return address();
    };
    const ctx = { restored: true, checkpointed: true, generation: 1, sync: true };
    try {
      // Recording where it listens looks at it once.
      networkResource.beforeCheckpoint({ exit: false, file: '/x.ckpt', sync: true });
      looked = 0;
      listenersKept();
      networkResource.afterRestore(ctx);
      assert.equal(looked, 0, 'nothing to look at when the restore kept every port');
      networkResource.beforeCheckpoint({ exit: false, file: '/x.ckpt', sync: true });
      looked = 0;
      networkResource.afterRestore(ctx);
      assert.equal(looked, 1, 'without the word, each recorded listener is looked at');
    } finally {
      await new Promise((r) => server.close(r));
    }
  },
);
