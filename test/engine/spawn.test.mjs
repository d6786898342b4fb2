// spawnFast (src/engine/spawn.ts, native/checkpt-spawn.c): real processes started with vfork
// semantics must look to checkpt's callers exactly like child_process's: output, exit status,
// signals, fds where asked, a clean signal state, a session of their own, spawn errors.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { spawnFast, spawnWait } from '../../dist/engine/spawn.js';
import { removeDir, tempDir, unitTest, within } from '../helpers.mjs';

const dir = tempDir();
const children = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  removeDir(dir);
});

function fast(file, args, opts) {
  const c = spawnFast(file, args, opts);
  children.push(c);
  return c;
}

/** Everything a child printed on its pipes, and how it ended ('close'). */
function outcome(c) {
  const out = {};
  c.stdio.forEach((s, i) => {
    if (s && i > 0) {
      out[i] = '';
      s.setEncoding('utf8').on('data', (d) => (out[i] += d));
    }
  });
  return within(
    new Promise((resolve, reject) => {
      c.on('error', reject);
      c.on('close', (code, signal) => resolve({ code, signal, out }));
    }),
    `${c.pid} to end`,
    10_000,
  );
}

unitTest('the addon starts the process: no ChildProcess, a pid of its own', () => {
  const c = fast('/bin/true', [], { stdio: ['ignore', 'ignore', 'ignore'] });
  assert.equal(c.constructor.name, 'FastChild');
  assert.ok(c.pid > 0 && c.pid !== process.pid);
});

unitTest('pipes both ways, the exit status, and close only after the output is in', async () => {
  const c = fast('sh', ['-c', 'read x; echo "out $x"; echo err >&2; echo three >&3; exit 7'], {
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
  });
  c.stdin.end('hello\n');
  const r = await outcome(c);
  assert.deepEqual(r, {
    code: 7,
    signal: null,
    out: { 1: 'out hello\n', 2: 'err\n', 3: 'three\n' },
  });
  assert.equal(c.exitCode, 7);
  assert.equal(c.kill(), false, 'an ended child is not signalled (its pid may be reused)');
});

unitTest('a signal: exit with the signal name, kill() true while it runs', async () => {
  const c = fast('sleep', ['30'], { stdio: ['ignore', 'ignore', 'ignore'] });
  const exited = new Promise((resolve) => c.on('exit', (code, signal) => resolve([code, signal])));
  assert.equal(c.kill('SIGKILL'), true);
  assert.deepEqual(await within(exited, 'sleep to die', 10_000), [null, 'SIGKILL']);
  assert.equal(c.signalCode, 'SIGKILL');
});

unitTest('fds where asked, even swapped; "inherit" is ours; other fds do not leak', async () => {
  const a = join(dir, 'a');
  const b = join(dir, 'b');
  writeFileSync(a, 'A');
  writeFileSync(b, 'B');
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    // Child fd fa gets b and fd fb gets a: a naive dup2 in order would give both the same file.
    const stdio = ['ignore', 'pipe', 'inherit'];
    stdio[fa] = fb;
    stdio[fb] = fa;
    for (let i = 0; i < stdio.length; i++) stdio[i] ??= 'ignore';
    const cmd = `cat /proc/self/fd/${fa} /proc/self/fd/${fb}; ls /proc/self/fd | sort -n | tr '\\n' ' '`;
    const r = await outcome(fast('sh', ['-c', cmd], { stdio }));
    const node = await outcome(spawn('sh', ['-c', cmd], { stdio }));
    assert.equal(r.code, 0);
    assert.equal(r.out[1].slice(0, 2), 'BA');
    // The same fds as child_process gives: those asked for, and what this process inherited
    // itself without close-on-exec; nothing of its own.
    assert.equal(r.out[1], node.out[1]);
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
});

unitTest(
  'every signal at its default and unblocked (Node ignores SIGPIPE), as child_process does',
  async () => {
    const status = (c) => outcome(c).then((r) => r.out[1]);
    const mask = (text) =>
      Object.fromEntries(
        text
          .split('\n')
          .filter((l) => /^Sig(Ign|Blk):/.test(l))
          .map((l) => l.split(/:\s+/)),
      );
    const ours = mask(
      await status(fast('cat', ['/proc/self/status'], { stdio: ['ignore', 'pipe', 'ignore'] })),
    );
    const node = mask(
      await status(spawn('cat', ['/proc/self/status'], { stdio: ['ignore', 'pipe', 'ignore'] })),
    );
    assert.deepEqual(ours, { SigBlk: '0000000000000000', SigIgn: '0000000000000000' });
    assert.deepEqual(ours, node);
  },
);

unitTest(
  'detached: a session of its own; env as given; the command found in its PATH',
  async () => {
    const c = fast('sh', ['-c', 'echo "$$ $(ps -o sid= -p $$) $GREETING"'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { PATH: '/usr/bin:/bin', GREETING: 'hi' },
      detached: true,
    });
    const r = await outcome(c);
    const [pid, sid, greeting] = r.out[1].trim().split(/\s+/);
    assert.equal(Number(pid), c.pid);
    assert.equal(Number(sid), c.pid, 'its own session');
    assert.equal(greeting, 'hi');
    const attached = fast('sh', ['-c', 'ps -o sid= -p $$'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const sidOf = (p) => readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ')[3];
    assert.equal((await outcome(attached)).out[1].trim(), sidOf(process.pid));
  },
);

unitTest(
  "a command that cannot start: 'error' with child_process's code and message, no pid",
  async () => {
    const c = fast(join(dir, 'missing'), ['x'], { stdio: ['ignore', 'pipe', 'ignore'] });
    assert.equal(c.pid, undefined);
    const e = await within(new Promise((resolve) => c.on('error', resolve)), 'the error', 10_000);
    assert.equal(e.code, 'ENOENT');
    assert.equal(e.message, `spawn ${join(dir, 'missing')} ENOENT`);
    assert.equal(c.stdout.destroyed, true, 'its pipe closed');
    const nx = join(dir, 'not-executable');
    writeFileSync(nx, '#!/bin/sh\n');
    const d = fast(nx, [], { stdio: ['ignore', 'ignore', 'ignore'] });
    assert.equal((await new Promise((resolve) => d.on('error', resolve))).code, 'EACCES');
  },
);

unitTest('unref(): this process may end while the child runs on', async () => {
  const script = `
    const { spawnFast } = await import(${JSON.stringify(new URL('../../dist/engine/spawn.js', import.meta.url).href)});
    const c = spawnFast('sleep', ['30'], { stdio: ['ignore', 'ignore', 'ignore'] });
    c.unref();
    console.log(c.pid);`;
  const p = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  const code = await within(
    new Promise((resolve) => p.on('close', resolve)),
    'node to end',
    10_000,
  );
  const pid = Number(out.trim());
  try {
    assert.equal(code, 0);
    assert.ok(pid > 0);
    assert.doesNotThrow(() => process.kill(pid, 0), 'the child runs on');
  } finally {
    if (pid > 0) process.kill(pid, 'SIGKILL');
  }
});

unitTest('spawnWait: run to the end with fds given, as spawnSync ends', () => {
  const log = join(dir, 'wait.log');
  const fd = openSync(log, 'w');
  try {
    const r = spawnWait('sh', ['-c', 'echo out; echo err >&2; exit 4'], {
      stdio: ['ignore', fd, fd],
    });
    assert.deepEqual(r, { status: 4, signal: null });
  } finally {
    closeSync(fd);
  }
  assert.equal(readFileSync(log, 'utf8'), 'out\nerr\n');
  assert.deepEqual(
    spawnWait('sh', ['-c', 'kill -TERM $$'], { stdio: ['ignore', 'ignore', 'ignore'] }),
    {
      status: null,
      signal: 'SIGTERM',
    },
  );
  const missing = spawnWait(join(dir, 'missing'), [], { stdio: ['ignore', 'ignore', 'ignore'] });
  assert.equal(missing.error?.code, 'ENOENT');
  assert.equal(missing.status, null);
});
