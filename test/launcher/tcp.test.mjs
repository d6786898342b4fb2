// Programs nobody here wrote (redis-server, python3 -m http.server), with TCP clients, under
// `checkpt run`, checkpointed from outside: connections carry on across checkpoint-and-continue
// and across checkpoint-and-exit + resume; a failed checkpoint-and-exit rolls back; CRIU's lock
// tables never outlive the step that needs them.
import assert from 'node:assert/strict';
import {
  checkptCli,
  cleanup,
  programPid,
  removeDir,
  resume,
  run,
  spawnSync,
  tempDir,
  test,
} from '../helpers.mjs';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { tablesLocking, unlockPorts } from '../netlock.mjs';
import { freePort, ping, redisArgs, redisMissing, respClient } from '../redis.mjs';

const dir = tempDir();
const mounts = [];
const ports = [];
after(async () => {
  await cleanup();
  // A test that failed between a checkpoint-and-exit and its resume leaves a table on its port.
  unlockPorts(ports);
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  removeDir(dir);
});

const missing = redisMissing();

/** Settles like `p`, or fails after `ms` saying what was awaited: a hang fails, not holds, the test. */
async function within(p, what, ms = 30_000, child = undefined) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(
            `timed out after ${ms} ms waiting for ${what}${child ? `; stderr: ${child.stderrText}` : ''}`,
          ),
        ),
      ms,
    );
  });
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(what, pred, child, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out: ${what}; stderr: ${child?.stderrText ?? ''}`);
    await sleep(50);
  }
}

/** A tmpfs of `size` mounted at dir/name (unmounted after the tests): a disk that fills up. */
function tinyTmpfs(name, size) {
  const at = join(dir, name);
  mkdirSync(at);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'checkpt-test', at]);
  assert.equal(m.status, 0, String(m.stderr));
  mounts.push(at);
  return at;
}

/** `redis-server` on a free port under `checkpt run`, answering PING. */
async function runRedis(name, { env = {}, file = undefined } = {}) {
  const port = await freePort();
  ports.push(port);
  const work = join(dir, name);
  mkdirSync(work);
  file ??= join(work, `${name}.ckpt`);
  const p = run(['--file', file, '--', 'redis-server', ...redisArgs(port, work)], {
    cwd: work,
    env: { ...process.env, ...env },
  });
  await until('redis to answer', () => ping(port), p);
  return { p, port, file, work };
}

test('redis-server: checkpt signal --exit, then checkpt -r: the same client connection carries on with the same data', async (t) => {
  if (missing) return t.skip(missing);
  const { p, port, file } = await runRedis('exit');
  const c = await within(respClient(port), 'the client to connect');
  assert.equal(await within(c.cmd('SET', 'greeting', 'hello'), 'SET'), 'OK');
  assert.equal(await within(c.cmd('RPUSH', 'list', 'a', 'b', 'c'), 'RPUSH'), 3);
  const pid = await programPid(p);
  const r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await within(p.closed, 'checkpt run to end', 60_000, p), {
    code: 0,
    signal: null,
  });
  assert.match(p.stderrText, /checkpoint written to .*the program was stopped/);
  // The original died without a FIN or RST: the client saw nothing, and the lock still holds.
  await sleep(300);
  assert.deepEqual(c.events, [], 'the client connection saw no end, close or reset');
  const info = JSON.parse(checkptCli(['inspect', '--json', file]).stdout);
  assert.match(info.manifest.networkLock, /^inet CRIU-/);
  assert.deepEqual(tablesLocking(port), [info.manifest.networkLock], 'locked until resumed');
  assert.match(
    checkptCli(['inspect', file]).stdout,
    new RegExp(`network +connections held by ${info.manifest.networkLock} until resumed here`),
  );

  // A command sent while nothing runs is retransmitted by TCP until the resumed copy answers.
  const sent = Date.now();
  const pending = c.cmd('GET', 'greeting');
  const copy = resume(file);
  assert.equal(await within(pending, 'GET over the old connection', 60_000, copy), 'hello');
  t.diagnostic(`the GET sent before the resume was answered after ${Date.now() - sent} ms`);
  assert.deepEqual(await within(c.cmd('LRANGE', 'list', 0, -1), 'LRANGE'), ['a', 'b', 'c']);
  assert.equal(await within(c.cmd('INCR', 'n'), 'INCR'), 1);
  assert.deepEqual(c.events, [], 'one connection throughout, never closed');
  assert.deepEqual(tablesLocking(port), [], 'the resume removed the lock table');
  assert.ok(await ping(port), 'and it listens on the same port for new clients');

  // The copy again, checkpointed and exited from outside and resumed: one more hop, same socket.
  const r2 = checkptCli(['signal', '--exit', String(await programPid(copy))]);
  assert.equal(r2.status, 0, r2.stderr);
  assert.deepEqual(await within(copy.closed, 'checkpt -r to end', 60_000, copy), {
    code: 0,
    signal: null,
  });
  const pending2 = c.cmd('INCR', 'n');
  const copy2 = resume(file);
  assert.equal(await within(pending2, 'INCR over the same connection', 60_000, copy2), 2);
  assert.deepEqual(c.events, [], 'still the one connection');
  assert.deepEqual(tablesLocking(port), []);
  c.close();
});

test('a checkpoint-and-exit whose file cannot be written rolls back: redis runs on and its client exchanges data on the same connection', async (t) => {
  if (missing) return t.skip(missing);
  // The target is a tmpfs far too small for the checkpoint: packing fails with ENOSPC.
  const tiny = tinyTmpfs('tiny', '64k');
  const file = join(tiny, 'rollback.ckpt');
  const { p, port } = await runRedis('rollback', { file });
  const c = await within(respClient(port), 'the client to connect');
  assert.equal(await within(c.cmd('SET', 'k', 'before'), 'SET'), 'OK');
  const pid = await programPid(p);
  const r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the failure', () => /checkpoint to .* failed: /.test(p.stderrText), p);
  assert.doesNotMatch(p.stderrText, /checkpoint written/, 'never "written" when it was not');
  assert.match(p.stderrText, /the program keeps running/);
  assert.equal(p.exitCode, null, 'checkpt run goes on');
  assert.equal(existsSync(file), false, 'no file, not even a partial one');
  // The same connection, the same server: nothing was lost, and nothing is locked.
  assert.equal(await within(c.cmd('GET', 'k'), 'GET after the rollback'), 'before');
  assert.equal(await within(c.cmd('SET', 'k', 'after'), 'SET after the rollback'), 'OK');
  assert.equal(await within(c.cmd('GET', 'k'), 'GET'), 'after');
  assert.deepEqual(c.events, [], 'the connection was never closed');
  assert.deepEqual(tablesLocking(port), [], 'CRIU removed its lock table');
  c.close();
});

test('redis-server hammered by a client through a checkpoint-and-continue: 0 failed commands, nothing left locked', async (t) => {
  if (missing) return t.skip(missing);
  const { p, port, file } = await runRedis('hammer');
  const c = await within(respClient(port), 'the client to connect');
  let ok = 0;
  const failures = [];
  let stop = false;
  // A failing assertion must not leave the loop running (and the test file with it).
  t.after(() => (stop = true));
  let slowest = 0;
  const hammer = (async () => {
    while (!stop) {
      const t0 = Date.now();
      const v = await within(c.cmd('INCR', 'hits'), 'INCR', 30_000);
      slowest = Math.max(slowest, Date.now() - t0);
      if (v === ok + 1) ok++;
      else failures.push(v);
    }
  })();
  await until('some commands', () => ok > 200, p);
  const pid = await programPid(p);
  const r = checkptCli(['signal', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the checkpoint', () => /checkpoint written to/.test(p.stderrText), p);
  const atCheckpoint = ok;
  await until('commands after the checkpoint', () => ok > atCheckpoint + 200, p);
  stop = true;
  await hammer;
  assert.deepEqual(failures, [], 'every INCR answered, in order');
  assert.deepEqual(c.events, [], 'one connection throughout');
  assert.equal(await within(c.cmd('GET', 'hits'), 'GET'), String(ok));
  assert.deepEqual(tablesLocking(port), [], 'the continue left no lock table');
  t.diagnostic(`${ok} commands, 0 failed; slowest ${slowest} ms (the pause)`);
  const info = JSON.parse(checkptCli(['inspect', '--verify', '--json', file]).stdout);
  assert.equal(info.manifest.networkLock, undefined, 'a continue leaves no lock to record');
  c.close();
});

/** One GET / on a new connection: the status code, or the error's code. */
function get(port) {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 20_000 });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    req.on('error', (e) => resolve(e.code ?? e.message));
    req.end();
  });
}

test('python3 -m http.server: a checkpoint-and-continue while a client polls fails no request; checkpoint-and-exit + checkpt -r answers on the same port', async (t) => {
  const port = await freePort();
  ports.push(port);
  const work = join(dir, 'http');
  mkdirSync(work);
  writeFileSync(join(work, 'index.html'), 'hello\n');
  const file = join(work, 'http.ckpt');
  const p = run(
    ['--file', file, '--', 'python3', '-m', 'http.server', String(port), '--bind', '127.0.0.1'],
    { cwd: work },
  );
  await until('http.server to answer', async () => (await get(port)) === 200, p);
  const results = [];
  let stop = false;
  t.after(() => (stop = true));
  const poll = (async () => {
    while (!stop) {
      results.push(await get(port));
      await sleep(20);
    }
  })();
  await until('some requests', () => results.length > 10, p);
  const pid = await programPid(p);
  let r = checkptCli(['signal', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the checkpoint', () => /checkpoint written to/.test(p.stderrText), p);
  const n = results.length;
  await until('requests after the checkpoint', () => results.length > n + 10, p);
  stop = true;
  await within(poll, 'the poller to stop');
  assert.deepEqual(
    results.filter((s) => s !== 200),
    [],
    `${results.length} requests, none failed`,
  );

  r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await within(p.closed, 'checkpt run to end', 60_000, p), {
    code: 0,
    signal: null,
  });
  // No connection was open at the exit: its lock table went with the dump, none is recorded.
  const info = JSON.parse(checkptCli(['inspect', '--json', file]).stdout);
  assert.equal(info.manifest.networkLock, undefined);
  const copy = resume(file);
  await until('the resumed copy to answer', async () => (await get(port)) === 200, copy);
  assert.deepEqual(tablesLocking(port), []);
});

test('without nftables network locking: one warning, connections closed (never hung), listeners kept', async (t) => {
  if (missing) return t.skip(missing);
  // A CRIU stand-in whose nftables locking does not work, as on a kernel without nf_tables.
  const fake = join(dir, 'criu-nolock');
  writeFileSync(
    fake,
    `#!/bin/sh\nif [ "$1" = check ] && [ "$3" = network_lock_nftables ]; then echo "nftables locking unsupported (stand-in)" >&2; exit 1; fi\nexec "$CHECKPT_REAL_CRIU" "$@"\n`,
  );
  chmodSync(fake, 0o755);
  const env = { CHECKPT_CRIU: fake };
  const { p, port, file } = await runRedis('nolock', { env });
  const c = await within(respClient(port), 'the client to connect');
  assert.equal(await within(c.cmd('SET', 'k', 'v'), 'SET'), 'OK');
  const pid = await programPid(p);
  // Checkpoint-and-continue: the original keeps its connection untouched.
  let r = checkptCli(['signal', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the checkpoint', () => /checkpoint written to/.test(p.stderrText), p);
  assert.match(p.stderrText, /warning: CRIU cannot lock the network with nftables here/);
  assert.equal(await within(c.cmd('GET', 'k'), 'GET after the continue'), 'v');
  assert.deepEqual(c.events, []);
  // Checkpoint-and-exit: the client's connection is closed, not left hanging.
  r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await within(p.closed, 'checkpt run to end', 60_000, p), {
    code: 0,
    signal: null,
  });
  await until('the client to see its connection end', () => c.events.includes('close'), p, 10_000);
  assert.deepEqual(tablesLocking(port), []);
  const info = JSON.parse(checkptCli(['inspect', '--json', file]).stdout);
  assert.equal(info.manifest.tcp, 'closed');
  // The resumed copy listens again; new clients get the data.
  const copy = resume(file, { env: { ...process.env, ...env } });
  await until('the resumed copy to answer', () => ping(port), copy);
  const c2 = await within(respClient(port), 'a new client');
  assert.equal(await within(c2.cmd('GET', 'k'), 'GET in the copy'), 'v');
  c2.close();
});

test('a checkpoint-and-exit never resumed: checkpt unlock FILE removes its lock table, and the client gets a reset instead of silence', async (t) => {
  if (missing) return t.skip(missing);
  const { p, port, file } = await runRedis('unlock');
  const c = await within(respClient(port), 'the client to connect');
  assert.equal(await within(c.cmd('PING'), 'PING'), 'PONG');
  const pid = await programPid(p);
  const r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await within(p.closed, 'checkpt run to end', 60_000, p);
  const { networkLock } = JSON.parse(checkptCli(['inspect', '--json', file]).stdout).manifest;
  assert.deepEqual(tablesLocking(port), [networkLock]);
  // Locked, a command goes unanswered: the server's side is silent, not closed.
  const unanswered = c.cmd('PING');
  await sleep(500);
  assert.deepEqual(c.events, []);
  const u = checkptCli(['unlock', file]);
  assert.equal(u.status, 0, u.stderr);
  assert.match(u.stdout, new RegExp(`removed ${networkLock}`));
  assert.deepEqual(tablesLocking(port), []);
  // TCP's next retransmission meets no socket: the kernel resets it.
  assert.ok((await within(unanswered, 'the pending command to fail', 30_000)) instanceof Error);
  assert.ok(
    c.events.some((e) => /ECONNRESET/.test(e)),
    `reset: ${c.events}`,
  );
  const again = checkptCli(['unlock', file]);
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stdout, /already gone/);
});

test('a UDP echo server in python3: answers through a checkpoint-and-continue, and on the same port after checkpoint-and-exit + checkpt -r', async (t) => {
  const port = await freePort();
  const work = join(dir, 'udp');
  mkdirSync(work);
  const file = join(work, 'udp.ckpt');
  const server = `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', ${port}))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
`;
  const p = run(['--file', file, '--', 'python3', '-c', server], { cwd: work });
  const client = createSocket('udp4');
  t.after(() => client.close());
  const replies = [];
  client.on('message', (m) => replies.push(String(m)));
  // UDP may drop a datagram sent while the program is frozen or gone: send until answered.
  const echo = (text, child) =>
    until(
      `an echo of ${text}`,
      () => {
        client.send(text, port, '127.0.0.1');
        return replies.includes(text);
      },
      child,
    );
  await echo('one', p);
  const pid = await programPid(p);
  let r = checkptCli(['signal', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the checkpoint', () => /checkpoint written to/.test(p.stderrText), p);
  await echo('two', p);
  r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await within(p.closed, 'checkpt run to end', 60_000, p), {
    code: 0,
    signal: null,
  });
  const copy = resume(file);
  await echo('three', copy);
});

test('CRIU itself failing mid-dump (its staging directory full) during a checkpoint-and-exit: redis and its client carry on, nothing locked', async (t) => {
  if (missing) return t.skip(missing);
  const staging = tinyTmpfs('tiny-staging', '256k');
  const { p, port, file } = await runRedis('criu-fails', { env: { CHECKPT_TMPDIR: staging } });
  const c = await within(respClient(port), 'the client to connect');
  assert.equal(await within(c.cmd('SET', 'k', 'before'), 'SET'), 'OK');
  const pid = await programPid(p);
  const r = checkptCli(['signal', '--exit', String(pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the failure', () => /checkpoint to .* failed: /.test(p.stderrText), p);
  assert.match(p.stderrText, /staging directory/);
  assert.doesNotMatch(p.stderrText, /checkpoint written/);
  assert.equal(p.exitCode, null, 'checkpt run goes on');
  assert.equal(existsSync(file), false);
  assert.equal(await within(c.cmd('GET', 'k'), 'GET after the failed dump'), 'before');
  assert.deepEqual(c.events, [], 'the connection was never closed');
  assert.deepEqual(tablesLocking(port), [], 'CRIU removed its lock table');
  c.close();
});
