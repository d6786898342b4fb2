// How a resume loads the copy's memory, by its size and CHECKPT_LAZY.
import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { LAZY_MIN_BYTES, memoryLoad, SERVED_MIN_BYTES } from '../../dist/engine/lazy.js';

const MIB = 1024 * 1024;

function withLazy(value, fn) {
  const before = process.env.CHECKPT_LAZY;
  if (value === undefined) delete process.env.CHECKPT_LAZY;
  else process.env.CHECKPT_LAZY = value;
  try {
    fn();
  } finally {
    if (before === undefined) delete process.env.CHECKPT_LAZY;
    else process.env.CHECKPT_LAZY = before;
  }
}

test('by size: eager, then all checked first and lazy from the images, then served', () => {
  withLazy(undefined, () => {
    assert.equal(memoryLoad(0), 'eager');
    assert.equal(memoryLoad(LAZY_MIN_BYTES - 1), 'eager');
    assert.equal(memoryLoad(LAZY_MIN_BYTES), 'staged');
    assert.equal(memoryLoad(SERVED_MIN_BYTES - 1), 'staged');
    assert.equal(memoryLoad(SERVED_MIN_BYTES), 'served');
    assert.equal(memoryLoad(2048 * MIB), 'served');
  });
});

test('CHECKPT_LAZY=1 serves any size from the file, CHECKPT_LAZY=0 loads any size first', () => {
  withLazy('1', () => assert.equal(memoryLoad(4096), 'served'));
  withLazy('on', () => assert.equal(memoryLoad(LAZY_MIN_BYTES + MIB), 'served'));
  withLazy('0', () => assert.equal(memoryLoad(2048 * MIB), 'eager'));
});
