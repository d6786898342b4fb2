import { unitTest as test } from '../helpers.mjs';
import assert from 'node:assert/strict';
import { CheckptError } from '../../dist/common/errors.js';
import { writeFailed } from '../../dist/engine/write-failed.js';

const sysError = (code) => Object.assign(new Error(`${code}: failed`), { code });

test('a full filesystem is said in words, its errno kept, whatever wraps it', () => {
  for (const e of [
    sysError('ENOSPC'),
    new CheckptError('EIO', 'writing failed', { cause: sysError('EDQUOT') }),
  ]) {
    const err = writeFailed(e, '/x/a.ckpt', 3 * 2 ** 20);
    assert.equal(err.code, 'EIO');
    assert.match(err.errno, /^(ENOSPC|EDQUOT)$/);
    assert.match(err.message, /filesystem is full \(the checkpoint needs about 3 MB there\)/);
    assert.equal(err.path, '/x/a.ckpt');
  }
});

test('a file already in place is told by its field, not by the words of its message', () => {
  const inPlace = new CheckptError('EIO', 'syncing directory /x failed', {
    cause: sysError('EIO'),
  });
  inPlace.inPlace = true;
  assert.equal(writeFailed(inPlace, '/x/a.ckpt', 1), inPlace);
  // The same words without the field are an ordinary failed write.
  const words = new CheckptError('EIO', 'the checkpoint file is in place but may not be durable');
  const err = writeFailed(words, '/x/a.ckpt', 1);
  assert.notEqual(err, words);
  assert.match(err.message, /^Could not write the checkpoint \/x\/a\.ckpt/);
});
