import assert from 'node:assert/strict';
import { fixture, removeDir, root, spawnSync, tempDir, test } from '../helpers.mjs';
import { join } from 'node:path';
import { after } from 'node:test';

const preload = join(root, 'build', 'libcheckpt-nouring.so');
const dir = tempDir();
after(() => removeDir(dir));

function callsUnder(env) {
  const r = spawnSync(join(dir, 'syscalls'), [], { env, encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, `syscalls: ${r.error ?? ''} ${r.stderr}`);
  return JSON.parse(r.stdout);
}

test('the io_uring preload is glibc syscall() to its callers: results, errno, six arguments, vector registers; only io_uring_setup fails (ENOSYS)', () => {
  const cc = spawnSync(
    process.env.CC || 'cc',
    ['-O2', '-o', join(dir, 'syscalls'), fixture('syscalls.c')],
    { encoding: 'utf8', timeout: 30_000 },
  );
  assert.equal(cc.status, 0, cc.stderr);
  const plain = callsUnder({});
  const pre = callsUnder({ LD_PRELOAD: preload });
  for (const r of [plain, pre]) {
    assert.equal(r.getpid, r.pid);
    assert.equal(r.kept, 1, 'xmm7 changed across syscall()');
    assert.deepEqual([r.bad, r.badErrno], [-1, 9], 'close(-1): -1, EBADF');
    assert.deepEqual([r.ok, r.okErrno], [1, 1234], 'success leaves errno alone');
    assert.equal(r.mapped, 1, 'mmap with six arguments');
  }
  assert.deepEqual(
    [pre.uring, pre.uringErrno],
    [-1, 38],
    'io_uring_setup under the preload: ENOSYS',
  );
  // Without the preload the kernel's io_uring_setup answers (not ENOSYS), so the test above means something.
  assert.notEqual(plain.uringErrno, 38);
});
