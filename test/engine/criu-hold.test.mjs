// criuHolds on processes CRIU does not hold: a running program and one that is gone. Where CRIU
// does hold one (at a trap) it is checked in test/reliability/dump-faults.test.mjs.
import assert from 'node:assert/strict';
import { criuHolds } from '../../dist/engine/criu-hold.js';
import { fixture, start, test, waitFor } from '../helpers.mjs';

test('a program nobody traces is not held, nor one that is gone', async () => {
  const p = start(process.execPath, [fixture('driven.mjs')], { stdio: ['pipe', 'pipe', 'pipe'] });
  const ready = await waitFor(p, (e) => e.event === 'ready', 'the program to start');
  assert.equal(criuHolds(ready.pid), false);
  process.kill(ready.pid, 'SIGSTOP');
  assert.equal(criuHolds(ready.pid), false, 'stopped by a signal, not by a tracer');
  process.kill(ready.pid, 'SIGKILL');
  await p.closed;
  assert.equal(criuHolds(ready.pid), false);
  assert.equal(criuHolds(2 ** 22 + 7), false);
});
