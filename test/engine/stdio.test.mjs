import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { describeFd, inheritPlan } from '../../dist/engine/stdio.js';
import { firstError, tailOf } from '../../dist/engine/criu.js';

test('each stdio kind gets the resource key CRIU uses for --inherit-fd', () => {
  const plan = inheritPlan([
    { fd: 0, kind: 'null', link: '/dev/null', key: 'dev/null' },
    { fd: 1, kind: 'pipe', link: 'pipe:[77]', key: 'pipe:[77]', inode: 77 },
    { fd: 2, kind: 'pipe', link: 'pipe:[77]', key: 'pipe:[77]', inode: 77 },
  ]);
  assert.deepEqual(plan, [{ fd: 1, key: 'pipe:[77]' }], '/dev/null stays; 2>&1 is passed once');
  assert.deepEqual(
    inheritPlan([
      { fd: 0, kind: 'tty', link: '/dev/pts/1' },
      { fd: 1, kind: 'file', link: '/var/log/a b.log', key: 'var/log/a b.log' },
      { fd: 2, kind: 'socket', link: 'socket:[9]', key: 'socket:[9]', inode: 9 },
    ]),
    [
      { fd: 1, key: 'var/log/a b.log' },
      { fd: 2, key: 'socket:[9]' },
    ],
  );
});

test("describeFd reads this process's own descriptors", () => {
  const d = describeFd('self', 999);
  assert.equal(d.kind, 'closed');
  const out = describeFd('self', 1);
  assert.ok(['pipe', 'socket', 'file', 'tty', 'null'].includes(out.kind), out.link);
});

test('CRIU log tails drop the harmless RLIMIT line and find the first error', () => {
  const log = [
    "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
    '(00.02) something',
    "(00.03) Error (criu/sk-unix.c:890): unix: Can't dump half of stream unix connection.",
    '(00.04) Error (criu/cr-dump.c:2111): Dumping FAILED.',
  ].join('\n');
  assert.doesNotMatch(tailOf(log), /RLIMIT/);
  assert.equal(firstError(tailOf(log)), "unix: Can't dump half of stream unix connection.");
  assert.equal(
    firstError('(00.04) Error (criu/cr-dump.c:2111): Dumping FAILED.'),
    'Dumping FAILED.',
  );
  assert.equal(firstError('all fine'), undefined);
});
