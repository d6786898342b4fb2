import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after } from 'node:test';
import {
  cleanup,
  describe,
  events,
  fixture,
  nodeBinaries,
  removeDir,
  resume,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import {
  onRestore,
  register,
  runSteps,
  runStepsSync,
  setBuiltInResources,
  hookError,
} from '../../dist/api/hooks.js';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});
const node = nodeBinaries()[0];
const afterCtx = { restored: true, checkpointed: true, generation: 1 };

describe('the order and failure rules (the runner alone)', { unit: true }, () => {
  test('before steps run in reverse registration order, after steps in order; built-ins wrap them', async () => {
    const seen = [];
    const offs = ['a', 'b', 'c'].map((n) =>
      register({
        name: n,
        beforeCheckpoint: () => void seen.push(`before ${n}`),
        afterRestore: () => void seen.push(`after ${n}`),
      }),
    );
    setBuiltInResources([
      {
        name: 'net',
        beforeCheckpoint: () => void seen.push('before net'),
        afterRestore: () => void seen.push('after net'),
      },
    ]);
    try {
      assert.deepEqual(await runSteps('beforeCheckpoint', { exit: false, file: 'f' }), []);
      assert.deepEqual(await runSteps('afterRestore', afterCtx), []);
      assert.deepEqual(seen, [
        'before net',
        'before c',
        'before b',
        'before a',
        'after a',
        'after b',
        'after c',
        'after net',
      ]);
    } finally {
      setBuiltInResources([]);
      for (const off of offs) off();
    }
  });

  test('every step runs even when others fail; all failures come back, named, in one error', async () => {
    const ran = [];
    const offs = [
      register({ name: 'one', afterRestore: () => ran.push('one') }),
      register({
        name: 'two',
        afterRestore: () => {
          ran.push('two');
          throw new Error('boom');
        },
      }),
      register({
        name: 'three',
        afterRestore: async () => {
          ran.push('three');
          throw new Error('bang');
        },
      }),
      onRestore(function four() {
        ran.push('four');
      }),
    ];
    try {
      const failures = await runSteps('afterRestore', afterCtx);
      assert.deepEqual(ran, ['one', 'two', 'three', 'four']);
      assert.deepEqual(
        failures.map((f) => f.message),
        ['two.afterRestore: boom', 'three.afterRestore: bang'],
      );
      const err = hookError(failures, 'after the restore');
      assert.equal(err.code, 'EHOOK');
      assert.equal(err.errors.length, 2);
      assert.match(
        err.message,
        /2 checkpoint steps failed after the restore:\n {2}- two.*\n {2}- three/,
      );
    } finally {
      for (const off of offs) off();
    }
  });

  test('a step that hangs is cut off after its time, and told so through its signal', async () => {
    let aborted;
    const off = register(
      {
        name: 'hangs',
        beforeCheckpoint: ({ signal }) =>
          new Promise(() => signal.addEventListener('abort', () => (aborted = signal.reason))),
      },
      { timeoutMs: 50 },
    );
    const next = register({ name: 'next', beforeCheckpoint: () => undefined });
    try {
      const failures = await runSteps('beforeCheckpoint', { exit: false, file: 'f' });
      assert.equal(failures.length, 1);
      assert.match(failures[0].message, /hangs.beforeCheckpoint: did not finish within 50 ms/);
      assert.match(String(aborted), /timed out after 50 ms/);
    } finally {
      off();
      next();
    }
  });

  test('an unnamed resource has one label, the same in its before and after failures', async () => {
    const fails = () => {
      throw new Error('no');
    };
    const offs = [
      register({ beforeCheckpoint: fails, afterRestore: fails }),
      register({ beforeCheckpoint: () => undefined, afterRestore: () => undefined }),
    ];
    setBuiltInResources([{ name: 'net', beforeCheckpoint: () => undefined }]);
    try {
      for (const run of [runSteps, runStepsSync]) {
        const before = await run('beforeCheckpoint', { exit: false, file: 'f' });
        const after = await run('afterRestore', afterCtx);
        assert.equal(before.length, 1);
        assert.equal(after.length, 1);
        assert.equal(before[0].resource, after[0].resource);
        assert.match(before[0].resource, /^resource #\d+$/);
      }
    } finally {
      setBuiltInResources([]);
      for (const off of offs) off();
    }
  });

  test('a synchronous step that runs past its time cannot be cut off: it fails as overrun once it returns', async () => {
    const busy = (ms) => {
      const end = performance.now() + ms;
      while (performance.now() < end);
    };
    let aborted;
    const off = register(
      {
        name: 'blocks',
        beforeCheckpoint: ({ signal }) => {
          busy(80);
          signal.addEventListener('abort', () => (aborted = signal.reason));
        },
      },
      { timeoutMs: 30 },
    );
    const quick = register({ name: 'quick', beforeCheckpoint: () => undefined }, { timeoutMs: 30 });
    try {
      for (const run of [runStepsSync, runSteps]) {
        aborted = undefined;
        const failures = await run('beforeCheckpoint', { exit: false, file: 'f' });
        assert.deepEqual(
          failures.map((f) => f.resource),
          ['blocks'],
        );
        assert.match(
          failures[0].message,
          /^blocks\.beforeCheckpoint: ran \d+ ms, over its limit of 30 ms \(a step running synchronously cannot be cut off\)$/,
        );
        // What it may have started is told to stop, as for a step that was cut off.
        assert.match(String(aborted), /timed out after 30 ms/);
      }
    } finally {
      off();
      quick();
    }
  });

  test('the remover removes once; checkpt() (sync) counts a step returning a promise as failed', () => {
    const off = register({ name: 'async', beforeCheckpoint: async () => undefined });
    const failures = runStepsSync('beforeCheckpoint', { exit: false, file: 'f' });
    assert.equal(failures.length, 1);
    assert.match(failures[0].message, /cannot wait for; use await checkpoint\(\)/);
    off();
    off();
    assert.deepEqual(runStepsSync('beforeCheckpoint', { exit: false, file: 'f' }), []);
    assert.throws(() => register({ beforeCheckpoint: 5 }), /must be a function/);
  });
});

function runHooks(name, mode, n = node) {
  const file = join(dir, `${name}.ckpt`);
  return { file, p: startNode(n, fixture('hooks.mjs'), [file, mode]) };
}

test('a failing before step abandons the checkpoint: no file, the after steps still run, one EHOOK, the program goes on', async () => {
  const { file, p } = runHooks('failbefore', 'fail-before');
  const e = await waitFor(p, (x) => x.event === 'error', 'the error');
  assert.equal(e.code, 'EHOOK');
  assert.match(e.message, /queue.beforeCheckpoint: queue would not pause/);
  assert.match(e.message, /abandoned: nothing was written/);
  // Reverse order before, registration order after; a failure stops none of the others.
  assert.deepEqual(e.log, ['before:queue', 'before:db', 'after:db', 'after:queue', 'after:cache']);
  const afters = events(p).filter((x) => x.event === 'after');
  assert.ok(afters.every((x) => x.checkpointed === false && x.restored === false));
  await waitFor(p, (x) => x.event === 'goes-on', 'the program to go on');
  assert.ok(!existsSync(file));
});

test('an after step failing only in the copy: the original gets 0, the copy one EHOOK (restored), every step ran', async () => {
  const { file, p } = runHooks('failafter', 'fail-after-in-copy');
  const r = await waitFor(p, (x) => x.event === 'returned', 'the original');
  assert.equal(r.r, 0);
  assert.deepEqual(r.log, ['before:queue', 'before:db', 'after:db', 'after:queue', 'after:cache']);
  await p.closed;
  const copy = resume(file);
  const e = await waitFor(copy, (x) => x.event === 'error', 'the copy');
  assert.equal(e.code, 'EHOOK');
  assert.equal(e.restored, true);
  assert.deepEqual(e.errors, ['queue.afterRestore: queue could not reconnect']);
  assert.match(e.message, /after the restore \(this is the resumed copy\)/);
  const afters = events(copy).filter((x) => x.event === 'after');
  assert.deepEqual(
    afters.map((x) => [x.name, x.restored, x.generation]),
    [
      ['db', true, 1],
      ['queue', true, 1],
      ['cache', true, 1],
    ],
  );
  await copy.closed;
});

test('checkpt() (sync) with an async step refuses with EHOOK and writes nothing', async () => {
  const { file, p } = runHooks('asyncsync', 'async-in-sync');
  const e = await waitFor(p, (x) => x.event === 'error', 'the error');
  assert.equal(e.code, 'EHOOK');
  assert.match(e.message, /slow.beforeCheckpoint: returned a promise/);
  assert.ok(!existsSync(file));
  await p.closed;
});

test('inside a step, generation tells a first resume (1) from a resume of a copy (2)', async () => {
  const { file, p } = runHooks('gen', 'again');
  await waitFor(p, (x) => x.event === 'returned', 'the original');
  await p.closed;
  const copy = resume(file);
  const again = await waitFor(copy, (x) => x.event === 'returned-again', 'the copy checkpointing');
  assert.equal(again.r, 0);
  await copy.closed;
  const second = resume(`${file}.2`);
  await waitFor(second, (x) => x.event === 'returned-again' && x.r === 1, 'the copy of the copy');
  const gens = events(second)
    .filter((x) => x.event === 'after')
    .map((x) => x.generation);
  assert.deepEqual(gens, [2, 2, 2]);
  await second.closed;
});
