import assert from 'node:assert/strict';
import { setImmediate as turn } from 'node:timers/promises';
import { test } from '../helpers.mjs';

/** A WeakRef to an object nothing else holds, made in a job of its own (targets live through it). */
const orphan = () => new WeakRef({ rows: Array.from({ length: 1000 }, (_, i) => ({ i })) });

test(
  'collectBeforeDump() runs a full collection: an object nothing holds is gone after it',
  { unit: true },
  async () => {
    const { collectBeforeDump } = await import('../../dist/api/gc.js');
    const ref = orphan();
    await turn();
    collectBeforeDump();
    await turn();
    assert.equal(ref.deref(), undefined);
    // The program's own contexts get no gc() from it.
    const { runInNewContext } = await import('node:vm');
    assert.equal(runInNewContext('typeof gc'), 'undefined');
  },
);

test(
  'CHECKPT_GC=0: collectBeforeDump() does nothing, not even the look-up of gc() (a context of its own)',
  { unit: true },
  async () => {
    const { getHeapStatistics } = await import('node:v8');
    const contexts = () => getHeapStatistics().number_of_native_contexts;
    // One collection first (module instances of their own), so that no dead context is left to go.
    (await import('../../dist/api/gc.js?first')).collectBeforeDump();
    const before = contexts();
    const { collectBeforeDump } = await import('../../dist/api/gc.js?off');
    process.env.CHECKPT_GC = '0';
    try {
      collectBeforeDump();
    } finally {
      delete process.env.CHECKPT_GC;
    }
    assert.equal(contexts(), before, 'no context made while off');
    collectBeforeDump();
    assert.equal(contexts(), before + 1, 'on: the context gc() comes from');
  },
);
