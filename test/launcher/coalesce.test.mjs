import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { setImmediate } from 'node:timers';
import { Coalescer } from '../../dist/launcher/coalesce.js';

/** An action whose runs the test finishes by hand, recording what it was asked. */
function manual() {
  const calls = [];
  let finish;
  const act = (exit) => {
    calls.push(exit);
    return new Promise((resolve) => (finish = resolve));
  };
  return { calls, act, finish: () => finish() };
}

const tick = () => new Promise((r) => setImmediate(r));

test('requests during a run collapse into one follow-up; an exit request wins', async () => {
  const m = manual();
  const q = new Coalescer(m.act);
  q.request(false);
  q.request(false);
  q.request(true);
  q.request(false);
  assert.deepEqual(m.calls, [false]);
  m.finish();
  await tick();
  assert.deepEqual(m.calls, [false, true]);
  m.finish();
  await q.idle();
  assert.deepEqual(m.calls, [false, true]);
});

test('a request after the run finished starts a new run; none overlaps', async () => {
  const m = manual();
  const q = new Coalescer(m.act);
  q.request(false);
  m.finish();
  await q.idle();
  q.request(false);
  assert.deepEqual(m.calls, [false, false]);
  m.finish();
  await q.idle();
});

test('once stopped (the program ended by checkpoint and exit), what is pending is dropped', async () => {
  const m = manual();
  let stopped = false;
  const q = new Coalescer(m.act, () => stopped);
  q.request(true);
  q.request(false);
  stopped = true;
  m.finish();
  await q.idle();
  assert.deepEqual(m.calls, [true]);
});
