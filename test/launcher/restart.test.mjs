import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { backoffMs, RestartPolicy } from '../../dist/launcher/restart.js';

const a = { seq: 7, path: '/c/app.7.ckpt' };
const b = { seq: 6, path: '/c/app.6.ckpt' };

test('back-off doubles from 250 ms and stops growing at 8 s', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 20].map(backoffMs),
    [250, 500, 1000, 2000, 4000, 8000, 8000, 8000],
  );
});

test('at most MAX restarts in a row; a new good checkpoint starts the count over', () => {
  const p = new RestartPolicy(2, 1000);
  let d = p.failed({ ranMs: 5000 });
  assert.equal(d.kind, 'restart');
  assert.equal(d.attempt, 1);
  assert.equal(d.delayMs, 250);
  d = p.failed({ ranMs: 5000, resumedFrom: a });
  assert.equal(d.kind, 'restart');
  assert.equal(d.attempt, 2);
  d = p.failed({ ranMs: 5000, resumedFrom: a });
  assert.equal(d.kind, 'give-up');
  assert.match(d.why, /restarted 2 times in a row without writing a new checkpoint.*--restart=2/);

  const q = new RestartPolicy(2, 1000);
  for (let i = 0; i < 10; i++) {
    d = q.failed({ ranMs: 5000, resumedFrom: a });
    assert.equal(d.kind, 'restart', `round ${i}`);
    assert.equal(d.attempt, 1);
    q.progressed();
  }
  assert.equal(d.exclude.size, 0);
});

test('a copy that dies at once marks its checkpoint suspect; a second quick death in a row is a crash loop', () => {
  const p = new RestartPolicy(5, 1000);
  let d = p.failed({ ranMs: 200, resumedFrom: a });
  assert.equal(d.kind, 'restart');
  assert.deepEqual([...d.exclude], [7]);
  d = p.failed({ ranMs: 300, resumedFrom: b });
  assert.equal(d.kind, 'give-up');
  assert.match(
    d.why,
    /resumed from \/c\/app\.7\.ckpt and then from \/c\/app\.6\.ckpt .*crash loop/,
  );

  // A quick death of a fresh start is not a crash loop of a checkpoint; nor is one that lived on.
  const q = new RestartPolicy(5, 1000);
  assert.equal(q.failed({ ranMs: 10, resumedFrom: a }).kind, 'restart');
  assert.equal(q.failed({ ranMs: 5000, resumedFrom: b }).kind, 'restart');
  assert.equal(q.failed({ ranMs: 10 }).kind, 'restart');
  d = q.failed({ ranMs: 10, resumedFrom: b });
  assert.equal(d.kind, 'restart');
  assert.deepEqual([...d.exclude].sort(), [6, 7]);
});
