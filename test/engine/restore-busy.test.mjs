// Programs checkpointed from outside (checkpt run), resumed while their original still holds its
// ports: the restore fails before CRIU starts, names the port and who holds it, and leaves
// nothing running and nothing in staging.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  checkptCli,
  cleanup,
  descendants,
  freePort,
  programPid,
  removeDir,
  resume,
  run,
  tempDir,
  test,
} from '../helpers.mjs';
import { setTimeout as sleep } from 'node:timers/promises';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});

async function until(what, pred, child, ms = 30_000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}; stderr: ${child.stderrText}`);
    await sleep(50);
  }
}

/** Runs `args` under checkpt run, checkpoints it from outside once `ready`, and returns the file. */
async function checkpointed(name, args, ready) {
  const file = join(dir, `${name}.ckpt`);
  const p = run(['--no-pty', '--file', file, '--', ...args], { cwd: dir });
  await until(`${name} to be ready`, () => ready(p), p);
  await programPid(p);
  const r = checkptCli(['signal', String(p.pid)]);
  assert.equal(r.status, 0, r.stderr);
  await until('the checkpoint', () => /checkpoint written to/.test(p.stderrText), p);
  return { p, file };
}

/** Resumes `file` with a private staging directory; resolves once checkpt -r has ended. */
async function resumeRefused(file) {
  const staging = join(dir, `staging-${Math.random().toString(36).slice(2)}`);
  mkdirSync(staging);
  const copy = resume(file, { env: { ...process.env, CHECKPT_TMPDIR: staging } });
  const { code } = await Promise.race([
    copy.closed,
    sleep(60_000).then(() => {
      throw new Error(`checkpt -r ${file} did not end within 60 s; stderr: ${copy.stderrText}`);
    }),
  ]);
  return { code, stderr: copy.stderrText, staging, left: descendants(copy.pid) };
}

test('python3 -m http.server under checkpt run, resumed while its original listens: ERESTORE names the port, the address and the holder; nothing left running or staged', async () => {
  const port = await freePort();
  const { p, file } = await checkpointed(
    'http',
    ['python3', '-m', 'http.server', String(port), '--bind', '127.0.0.1'],
    (child) => /Serving HTTP/.test(child.lines.join('\n') + child.stderrText),
  );
  const got = await resumeRefused(file);
  assert.equal(got.code, 125, got.stderr);
  assert.match(
    got.stderr,
    new RegExp(
      `listens on 127\\.0\\.0\\.1:${port}, and port ${port} on 127\\.0\\.0\\.1 is in use by pid \\d+ \\(\\S*python3\\S* -m http\\.server ${port}`,
    ),
  );
  assert.match(got.stderr, /Stop what holds it .* no process was left running/);
  assert.deepEqual(got.left, []);
  assert.deepEqual(readdirSync(got.staging), []);
  // The original serves on.
  // eslint-disable-next-line no-undef
  const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  process.kill(p.pid, 'SIGTERM');
  await p.closed;
});

test('a bound UDP socket whose port is taken: the restore is refused with the UDP port named', async () => {
  const port = await freePort();
  const code = `import socket, time, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', ${port}))
print('bound', flush=True)
while True: time.sleep(1)`;
  const { p, file } = await checkpointed('udp', ['python3', '-c', code], (child) =>
    child.lines.includes('bound'),
  );
  const got = await resumeRefused(file);
  assert.equal(got.code, 125, got.stderr);
  assert.match(
    got.stderr,
    new RegExp(
      `UDP socket bound to 127\\.0\\.0\\.1:${port}, and UDP port ${port} on 127\\.0\\.0\\.1 is in use by pid \\d+`,
    ),
  );
  assert.deepEqual(got.left, []);
  assert.deepEqual(readdirSync(got.staging), []);
  process.kill(p.pid, 'SIGTERM');
  await p.closed;
});
