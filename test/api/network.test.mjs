import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cleanup,
  events,
  fixture,
  killGroup,
  nodeBinaries,
  removeDir,
  resume,
  startNode,
  tempDir,
  waitFor,
} from '../helpers.mjs';

// Node 18+ has fetch built in; the linter's list of Node globals predates it.
const { fetch } = globalThis;
const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function http(port, path, method = 'GET') {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  const text = await res.text();
  return { status: res.status, body: text.startsWith('{') ? JSON.parse(text) : text };
}

async function startServer(n, name, extra = []) {
  const port = await freePort();
  const file = join(dir, `${name}.ckpt`);
  const p = startNode(n, fixture('server.mjs'), [String(port), file, ...extra]);
  await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
  return { port, file, p };
}

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: a listening HTTP server needs no code: it serves on after its checkpoint, and its resume answers on the same port with its state`, async () => {
    const { port, file, p } = await startServer(n, `srv${n.major}`);
    assert.equal((await http(port, '/notes?k=a&v=1', 'POST')).body, 'ok');
    assert.equal((await http(port, '/checkpoint', 'POST')).status, 202);
    await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
    const orig = await http(port, '/');
    assert.deepEqual(orig.body.notes, { a: '1' });
    assert.equal(orig.body.gen, 0);
    // The program never saw its server close.
    assert.ok(!events(p).some((e) => e.event === 'server-closed'));
    killGroup(p);
    await p.closed;

    const copy = resume(file);
    await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
    const got = await http(port, '/');
    assert.deepEqual(got.body.notes, { a: '1' });
    assert.equal(got.body.gen, 1);
    assert.equal(got.body.hits, orig.body.hits);
    copy.kill('SIGTERM');
    await copy.closed;
  });
}

test('checkpt() (sync) closes and reopens the listener too', async () => {
  const { port, file, p } = await startServer(nodeBinaries()[0], 'sync', ['--sync']);
  await http(port, '/checkpoint', 'POST');
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  assert.equal((await http(port, '/')).status, 200);
  killGroup(p);
  await p.closed;
  const copy = resume(file);
  await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
  assert.equal((await http(port, '/')).body.gen, 1);
  copy.kill('SIGTERM');
  await copy.closed;
});

test('an idle keep-alive connection sees an orderly close (FIN, no reset) before the checkpoint', async () => {
  const { port, p } = await startServer(nodeBinaries()[0], 'keepalive');
  const sock = connect(port, '127.0.0.1');
  const seen = [];
  sock.on('data', () => seen.push('data'));
  sock.on('end', () => seen.push('end'));
  sock.on('error', (e) => seen.push(`error ${e.code}`));
  const closed = new Promise((r) => sock.on('close', r));
  sock.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
  while (!seen.includes('data')) await sleep(10);
  await http(port, '/checkpoint', 'POST');
  await closed;
  assert.deepEqual(seen, ['data', 'end']);
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  killGroup(p);
  await p.closed;
});

test('a keep-alive agent in the program: its pooled connection is closed cleanly, and it connects anew on both sides', async () => {
  let n = 0;
  const ends = [];
  const up = createServer((sock) => {
    sock.on('end', () => ends.push('end'));
    sock.on('error', (e) => ends.push(`error ${e.code}`));
    sock.on('data', () => {
      n++;
      sock.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi`);
    });
  });
  await new Promise((r) => up.listen(0, '127.0.0.1', r));
  const upPort = up.address().port;
  try {
    const { port, file, p } = await startServer(nodeBinaries()[0], 'agent');
    assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
    await http(port, '/checkpoint', 'POST');
    await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
    // The pooled connection was closed in order before the dump: the upstream saw its end.
    assert.deepEqual(ends, ['end']);
    assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
    killGroup(p);
    await p.closed;
    const copy = resume(file);
    await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'the resumed copy');
    assert.equal((await http(port, `/upstream?port=${upPort}`)).body, 'upstream said hi');
    assert.equal(n, 3);
    copy.kill('SIGTERM');
    await copy.closed;
  } finally {
    up.close();
  }
});

test('a copy resumed while the original still holds the port says so in one EHOOK and keeps running', async () => {
  const { port, file, p } = await startServer(nodeBinaries()[0], 'busyport');
  await http(port, '/checkpoint', 'POST');
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  const copy = resume(file);
  const e = await waitFor(copy, (x) => x.event === 'error', 'the copy to report');
  assert.equal(e.code, 'EHOOK');
  assert.match(e.message, new RegExp(`could not listen again on 127.0.0.1:${port}: .*EADDRINUSE`));
  // The original keeps serving.
  assert.equal((await http(port, '/')).body.gen, 0);
  copy.kill('SIGTERM');
  await copy.closed;
  killGroup(p);
  await p.closed;
});

for (const n of nodeBinaries()) {
  test(`Node ${n.major}: child processes and worker threads are checkpointed with the program; clocks do not jump back and missed intervals do not flood`, async () => {
    const file = join(dir, `family${n.major}.ckpt`);
    const p = startNode(n, fixture('family.mjs'), [file]);
    assert.equal((await p.closed).code, 0, p.stderrText);
    assert.ok(events(p).some((e) => e.event === 'worker' && e.value === 2));
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
