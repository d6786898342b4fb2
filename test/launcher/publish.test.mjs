// `checkpt run --private-net --publish` (issue 16, docs/ROOTLESS.md): a server in a network namespace
// of its own, reached from the host through a forwarded port, as root and as an ordinary user made
// for this test; its resumed copy is reached through the same port, with its state.
import assert from 'node:assert/strict';
import {
  checkptCli,
  cleanup,
  cli,
  describe,
  events,
  fixture,
  freePort,
  removeDir,
  start,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { makeTestUser, removeTestUsers } from '../users.mjs';
import { after } from 'node:test';

// Node's own fetch (the lint's globals predate it).
const { fetch, AbortSignal } = globalThis;
const dirs = [];
const forwarders = new Set();

/** `checkpt` for root, or for an ordinary user of the test's own (as rootless.test.mjs makes them). */
function asRoot() {
  const dir = tempDir('checkpt-publish-root-');
  dirs.push(dir);
  return {
    label: 'root',
    dir,
    checkpt: (args) => checkptCli(args, { cwd: dir }),
    checkptStart: (args) => start(process.execPath, [cli, ...args], { cwd: dir }),
  };
}

function asUser() {
  const u = makeTestUser({ prefix: 'ckpub' });
  return {
    label: 'an ordinary user',
    uid: u.uid,
    dir: u.dir,
    checkpt: u.checkpt,
    checkptStart: u.checkptStart,
  };
}

/** The pids of checkpt's forwarders for host port `port` (its native helper's `publish`). */
function forwardersOf(port) {
  const out = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (argv[1] === 'publish' && argv.some((a) => a.startsWith(`127.0.0.1:${port}:`)))
        out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** GET / through the host port, retried while the forwarding or the server comes up (bounded). */
async function get(port, child, what) {
  const end = Date.now() + 30_000;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5000) });
      return JSON.parse(await res.text());
    } catch (e) {
      if (Date.now() > end)
        throw new Error(
          `${what}: no answer on port ${port} (${e.message}); stderr: ${child.stderrText}`,
        );
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

after(async () => {
  await cleanup();
  // A forwarder ends with the program's namespace; one still there is a failure, killed by pid.
  for (const pid of forwarders)
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  for (const d of dirs) removeDir(d);
  removeTestUsers();
});

async function gone(port) {
  const end = Date.now() + 10_000;
  while (forwardersOf(port).length > 0) {
    assert.ok(Date.now() < end, `forwarders of port ${port} still running: ${forwardersOf(port)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('--private-net --publish', () => {
  for (const make of [asRoot, asUser]) {
    test(`a server reached through a published port, and its resumed copy with its state (${make.name})`, async () => {
      const who = make();
      const port = await freePort();
      const file = join(who.dir, 'counter.ckpt');
      const p = who.checkptStart([
        'run',
        '--private-net',
        '--publish',
        String(port),
        '--file',
        file,
        '--',
        process.execPath,
        fixture('counter.mjs'),
        String(port),
      ]);
      await waitFor(p, (e) => e.event === 'tick', 'the server starts');
      for (const f of forwardersOf(port)) forwarders.add(f);
      const before = await get(port, p, 'the original');
      assert.ok(before.n >= 1 && before.kept === before.n, JSON.stringify(before));

      // The port is taken: a second run says so and starts nothing.
      const busy = who.checkpt([
        'run',
        '--private-net',
        '--publish',
        String(port),
        '--',
        process.execPath,
        '-e',
        'console.log("started")',
      ]);
      assert.notEqual(busy.status, 0);
      assert.match(
        busy.stderr,
        new RegExp(`Cannot publish 127\\.0\\.0\\.1:${port}: the port is already in use`),
      );
      assert.doesNotMatch(busy.stdout, /started/);

      // A client from outside, connected at the checkpoint: its connection is closed, not left hanging.
      const client = connect(port, '127.0.0.1');
      const clientClosed = new Promise((resolve) => client.once('close', resolve));
      client.on('error', () => undefined);
      await new Promise((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
      });
      const r = who.checkpt(['signal', '--exit', String(p.pid)]);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(await p.closed, { code: 0, signal: null }, p.stderrText);
      const last = events(p)
        .filter((e) => e.event === 'tick')
        .at(-1).n;
      // The original's forwarder ends with it, and frees the port for the copy.
      await gone(port);
      const timer = setTimeout(() => client.destroy(new Error('still open')), 10_000);
      assert.equal(await clientClosed, false, 'the outside connection ends without an error');
      clearTimeout(timer);
      const info = JSON.parse(who.checkpt(['inspect', '--json', file]).stdout).manifest;
      assert.deepEqual(info.publish, [`127.0.0.1:${port}:${port}`]);

      const copy = who.checkptStart(['-r', file]);
      await waitFor(copy, (e) => e.event === 'tick', 'the copy ticks');
      for (const f of forwardersOf(port)) forwarders.add(f);
      const back = await get(port, copy, 'the copy');
      // Its counter goes on from where it was, its history whole.
      assert.ok(back.n > last, `${JSON.stringify(back)} after ${last}`);
      assert.equal(back.kept, back.n);
      process.kill(copy.pid, 'SIGTERM');
      await copy.closed;
      await gone(port);
    });
  }
});
