// Programs nobody here wrote (redis-server, python3 -m http.server), with TCP clients, under
// `checkpt run`, checkpointed from outside: connections carry on across checkpoint-and-continue
// and across checkpoint-and-exit + resume; a failed checkpoint-and-exit rolls back; CRIU's lock
// tables never outlive the step that needs them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanup, cli, programPid, removeDir, resume, run, tempDir } from '../helpers.mjs';
import { tablesLocking, unlockPorts } from '../netlock.mjs';
import { freePort, ping, redisMissing, respClient } from '../redis.mjs';

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
const checkptCli = (args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

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

/** `redis-server` on a free port under `checkpt run`, answering PING. */
async function runRedis(name, env = {}) {
  const port = await freePort();
  ports.push(port);
  const work = join(dir, name);
  mkdirSync(work);
  const file = join(work, `${name}.ckpt`);
  const p = run(
    [
      '--file',
      file,
      '--',
      'redis-server',
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      work,
      '--logfile',
      join(work, 'redis.log'),
    ],
    { cwd: work, env: { ...process.env, ...env } },
  );
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

  // A command sent while nothing runs is retransmitted by TCP until the resumed copy answers.
  const pending = c.cmd('GET', 'greeting');
  const copy = resume(file);
  assert.equal(await within(pending, 'GET over the old connection', 60_000, copy), 'hello');
  assert.deepEqual(await within(c.cmd('LRANGE', 'list', 0, -1), 'LRANGE'), ['a', 'b', 'c']);
  assert.equal(await within(c.cmd('INCR', 'n'), 'INCR'), 1);
  assert.deepEqual(c.events, [], 'one connection throughout, never closed');
  assert.deepEqual(tablesLocking(port), [], 'the resume removed the lock table');
  assert.ok(await ping(port), 'and it listens on the same port for new clients');
  c.close();
});
