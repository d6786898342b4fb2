import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { checkpoint, checkpointInProgress, checkpt } from '../../dist/api/checkpt.js';
import { register } from '../../dist/api/hooks.js';
import { requestCheckpoint } from '../../dist/launcher/request.js';
import { cleanup, killGroup, removeDir, tempDir, test, describe } from '../helpers.mjs';
import { assertIntact, driven, settled } from '../reliability/faults.mjs';

after(cleanup);

const badConfig = (pattern) => (e) => {
  assert.equal(e.name, 'CheckptError');
  assert.equal(e.code, 'EBADCONFIG', e.message);
  assert.match(e.message, pattern);
  return true;
};

describe('options of the public calls are checked before anything runs', () => {
  const dir = tempDir();
  after(() => removeDir(dir));
  const bad = [
    [
      { timeoutMs: -1 },
      /checkpt\(\): option timeoutMs is -1; it accepts a whole number of milliseconds/,
    ],
    [{ timeoutMs: '5000' }, /option timeoutMs is "5000"/],
    [{ timeoutMs: 1.5 }, /option timeoutMs is 1.5/],
    [{ timeout: 0 }, /option timeout is 0/],
    [{ timeout: 1000, timeoutMs: 2000 }, /disagree; timeout is the old name of timeoutMs/],
    [{ exit: 'yes' }, /option exit is "yes"; it accepts true or false/],
    [{ exti: true }, /there is no option 'exti'; it takes exit, timeoutMs, timeout/],
    [null, /options must be an object/],
    [5, /options must be an object/],
  ];
  for (const [options, message] of bad) {
    test(`checkpt() and checkpoint() refuse ${JSON.stringify(options)}`, async () => {
      const file = join(dir, 'never.ckpt');
      assert.throws(() => checkpt(file, options), badConfig(message));
      await assert.rejects(
        checkpoint(file, options),
        badConfig(new RegExp(message.source.replace('checkpt\\(\\)', 'checkpoint\\(\\)'))),
      );
      assert.equal(checkpointInProgress(), false, 'no checkpoint left claimed');
      assert.equal(existsSync(file), false);
    });
  }

  test('register() refuses a bad timeoutMs and registers nothing', () => {
    for (const timeoutMs of [0, -5, 'x', 2 ** 31, Infinity])
      assert.throws(
        () => register({ name: 'x', afterRestore() {} }, { timeoutMs }),
        badConfig(/register\(\): option timeoutMs/),
      );
    assert.throws(() => register({}, { timeout: 5 }), badConfig(/no option 'timeout'/));
    register({ name: 'fine', afterRestore() {} }, { timeoutMs: 50 })();
  });

  test('requestCheckpoint() refuses bad options', () => {
    assert.throws(
      () => requestCheckpoint(process.pid, { exit: 1 }),
      badConfig(/requestCheckpoint\(\): option exit is 1/),
    );
    assert.throws(
      () => requestCheckpoint(process.pid, { env: 'CHECKPT_SIGCKPT=URG' }),
      badConfig(/option env is "CHECKPT_SIGCKPT=URG"; it accepts an object/),
    );
  });
});

test('a bad CHECKPT_TIMEOUT fails checkpt() and checkpoint() with EBADCONFIG; the program keeps running; timeout still works as timeoutMs', async () => {
  const dir = tempDir();
  const prog = await driven({ CHECKPT_TMPDIR: dir });
  try {
    const base = await prog.ask({ op: 'ping' });
    const file = join(dir, 'bad.ckpt');
    for (const op of ['checkpt', 'checkpoint']) {
      const r = await prog.ask({ op, file, env: { CHECKPT_TIMEOUT: 'abc' } });
      assert.equal(r.event, 'failed', JSON.stringify(r));
      assert.equal(r.code, 'EBADCONFIG');
      assert.match(r.message, /CHECKPT_TIMEOUT="abc" is not valid.*whole number of milliseconds/);
      await assertIntact(prog, base);
      assert.equal(existsSync(file), false);
    }
    // Read by the packing worker, checked here: refused before anything is frozen.
    for (const op of ['checkpt', 'checkpoint']) {
      const r = await prog.ask({
        op,
        file,
        env: { CHECKPT_TIMEOUT: '', CHECKPT_CHUNK_HASH: 'md5' },
      });
      assert.equal(r.code, 'EBADCONFIG', JSON.stringify(r));
      assert.match(r.message, /CHECKPT_CHUNK_HASH="md5" is not valid.*blake3 or sha256/);
      await assertIntact(prog, base);
      assert.equal(existsSync(file), false);
    }
    // A system error on the way is a CheckptError too, its system code in errno.
    const missing = join(dir, 'missing');
    const r = await prog.ask({
      op: 'checkpt',
      file,
      env: { CHECKPT_TIMEOUT: '', CHECKPT_CHUNK_HASH: '', CHECKPT_TMPDIR: missing },
    });
    assert.deepEqual(
      [r.name, r.code, r.errno],
      ['CheckptError', 'EIO', 'ENOENT'],
      JSON.stringify(r),
    );
    assert.match(r.message, /keeps running/);
    await assertIntact(prog, base);
    await prog.ask({ op: 'ping', env: { CHECKPT_TMPDIR: dir } });
    // Both names reach the dump: a limit of 1 ms cannot be met.
    for (const limit of [{ timeoutMs: 1 }, { timeout: 1 }]) {
      const r = await prog.ask({ op: 'checkpt', file, ...limit, env: { CHECKPT_TIMEOUT: '' } });
      assert.equal(r.code, 'ETIMEOUT', JSON.stringify(r));
      await assertIntact(prog, base);
    }
    await settled(prog.pid);
    const ok = await prog.ask({ op: 'checkpt', file });
    assert.equal(ok.r, 0, JSON.stringify(ok));
    assert.ok(existsSync(file));
  } finally {
    killGroup(prog.p);
    removeDir(dir);
  }
});
