import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { root, test } from '../helpers.mjs';

const signals = join(root, 'dist', 'launcher', 'signals.js');

/** A real process that ends through exitLike(status), and how it ended. */
function endLike(status) {
  const script = `import(${JSON.stringify(signals)}).then((m) => m.exitLike(${JSON.stringify(status)}));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.error, undefined, 'it ended within 10 s');
  return { code: r.status, signal: r.signal, stderr: r.stderr };
}

test('exitLike ends with the same exit code, or dies of the same signal, by name or number', () => {
  assert.deepEqual(endLike({ code: 3 }), { code: 3, signal: null, stderr: '' });
  assert.equal(endLike({ signal: 'SIGTERM' }).signal, 'SIGTERM');
  assert.equal(endLike({ signal: 15 }).signal, 'SIGTERM');
});

test('a signal whose self-kill does not end the process (Node ignores SIGPIPE; SIGWINCH is ignored by default) exits 128 + its number, named or not', () => {
  for (const [signal, num] of [
    ['SIGPIPE', 13],
    [13, 13],
    ['SIGWINCH', 28],
  ])
    assert.deepEqual(endLike({ signal }), { code: 128 + num, signal: null, stderr: '' }, signal);
});
