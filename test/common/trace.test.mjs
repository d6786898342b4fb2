// CHECKPT_BENCH_TRACE: the moments the bench reads to time the command's start-up.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { trace } from '../../dist/common/trace.js';
import { cli, tempDir, unitTest as test } from '../helpers.mjs';

test('unset, nothing is written; set, each step is appended with the time since the epoch', (t) => {
  const dir = tempDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'trace');
  const saved = process.env.CHECKPT_BENCH_TRACE;
  t.after(() => {
    if (saved === undefined) delete process.env.CHECKPT_BENCH_TRACE;
    else process.env.CHECKPT_BENCH_TRACE = saved;
  });
  delete process.env.CHECKPT_BENCH_TRACE;
  trace('nothing');
  assert.equal(existsSync(file), false);
  process.env.CHECKPT_BENCH_TRACE = file;
  const before = performance.timeOrigin + performance.now();
  trace('one');
  trace('two');
  const after = performance.timeOrigin + performance.now();
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  assert.deepEqual(
    lines.map((l) => l.split(' ')[0]),
    ['one', 'two'],
  );
  for (const l of lines) {
    const at = Number(l.split(' ')[1]);
    assert.ok(at >= before - 1 && at <= after + 1, `${at} not within ${before}..${after}`);
  }
  // A file that cannot be written never makes the command fail.
  process.env.CHECKPT_BENCH_TRACE = join(dir, 'missing', 'trace');
  trace('lost');
});

test('the command notes when its main begins', (t) => {
  const dir = tempDir();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'trace');
  const spawnedAt = performance.timeOrigin + performance.now();
  const r = spawnSync(process.execPath, [cli, '--version'], {
    env: { ...process.env, CHECKPT_BENCH_TRACE: file },
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const [step, at] = readFileSync(file, 'utf8').trim().split(' ');
  assert.equal(step, 'main');
  assert.ok(Number(at) > spawnedAt, `${at} before the spawn at ${spawnedAt}`);
});
