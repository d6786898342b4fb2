import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { unitTest as test } from '../helpers.mjs';
import { Schedule } from '../../dist/engine/schedule.js';
import { CheckptError } from '../../dist/common/errors.js';

/** A stand-in rotation: `take` runs the write (to a made-up name) and counts overlaps. */
function fakeRotation(behave) {
  const r = { calls: 0, active: 0, most: 0 };
  r.take = async (write) => {
    const n = ++r.calls;
    r.active++;
    r.most = Math.max(r.most, r.active);
    try {
      await behave(n);
      const result = await write(`/x/.a.${n}.ckpt.new`);
      return { file: `/x/a.${n}.ckpt`, result, copy: false, removed: [] };
    } finally {
      r.active--;
    }
  };
  return r;
}

test('one checkpoint at a time when later ones take longer than the interval; stop() waits for the one running', async () => {
  // The first is quick (no refusal), the rest take three intervals each.
  const rotation = fakeRotation((n) => (n === 1 ? undefined : sleep(150)));
  const s = new Schedule({
    intervalMs: 50,
    rotation,
    write: async () => 'ok',
    onRefused: (e) => assert.fail(e.message),
  }).start();
  const end = Date.now() + 10_000;
  while (rotation.calls < 4 && Date.now() < end) await sleep(10);
  await s.stop();
  assert.equal(rotation.active, 0, 'stop() returned while one ran');
  assert.ok(rotation.calls >= 4);
  assert.equal(rotation.most, 1);
});

test('the first checkpoint slower than the interval refuses the schedule, naming what it took', async () => {
  let refused;
  const s = new Schedule({
    intervalMs: 10,
    rotation: fakeRotation(() => sleep(60)),
    write: async () => 'ok',
    onRefused: (e) => (refused = e),
  }).start();
  await sleep(400);
  await s.stop();
  assert.ok(refused instanceof CheckptError);
  assert.equal(refused.code, 'ETIMEOUT');
  assert.match(
    refused.message,
    /A checkpoint every 10ms .* the first took [0-9]+ ms\. Periodic checkpoints stopped \(\/x\/a\.1\.ckpt is kept\); choose an interval of 1s or more\./,
  );
});

test('a failed checkpoint is skipped and the schedule goes on; a copy is not counted', async () => {
  const skipped = [];
  const taken = [];
  const rotation = fakeRotation(async (n) => {
    if (n === 1) throw new CheckptError('EIO', 'disk full');
  });
  const s = new Schedule({
    intervalMs: 100,
    rotation,
    write: async () => 'ok',
    onSkipped: (e) => skipped.push(e.message),
    onTaken: (t) => taken.push(t.file),
    onRefused: (e) => assert.fail(e.message),
  }).start();
  const end = Date.now() + 10_000;
  while (taken.length < 2 && Date.now() < end) await sleep(20);
  await s.stop();
  const calls = rotation.calls;
  await sleep(250);
  assert.equal(rotation.calls, calls, 'stopped, yet it went on');
  assert.deepEqual(skipped, ['disk full']);
  assert.deepEqual(taken.slice(0, 2), ['/x/a.2.ckpt', '/x/a.3.ckpt']);
  assert.equal(rotation.most, 1);
});
