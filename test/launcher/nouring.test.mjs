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

function mmapsUnder(name, env) {
  const r = spawnSync(join(dir, name), [], { env, encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, `${name}: ${r.error ?? ''} ${r.stderr}`);
  return JSON.parse(r.stdout);
}

test('the packed heap: in a process that embeds Node, a hinted private anonymous mapping of up to 16 MiB lands beside the one before, marked nohugepage; every other mmap, and every mmap of other programs, is as without the preload', () => {
  for (const [name, more] of [
    ['mmaps', []],
    ['mmaps-node', ['-DAS_NODE', '-rdynamic']],
  ]) {
    const cc = spawnSync(
      process.env.CC || 'cc',
      ['-O2', ...more, '-o', join(dir, name), fixture('mmaps.c')],
      { encoding: 'utf8', timeout: 30_000 },
    );
    assert.equal(cc.status, 0, cc.stderr);
  }
  const plain = mmapsUnder('mmaps-node', {});
  const packed = mmapsUnder('mmaps-node', { LD_PRELOAD: preload });
  const off = mmapsUnder('mmaps-node', { LD_PRELOAD: preload, CHECKPT_PACK_HEAP: ' Off ' });
  const other = mmapsUnder('mmaps', { LD_PRELOAD: preload });
  for (const r of [plain, packed, off, other]) {
    assert.equal(r.rwOk, 1);
    assert.equal(r.kept, 1, 'xmm7 changed across mmap()');
    assert.deepEqual([r.bad, r.badErrno], [1, 22], 'mmap of 0 bytes: MAP_FAILED, EINVAL');
    assert.deepEqual([r.unhinted, r.okErrno], [1, 1234], 'success leaves errno alone');
    for (const k of ['bigAtHint', 'bigRwAtHint', 'sharedAtHint', 'fileAtHint', 'fixedAtHint'])
      assert.equal(r[k], 1, k);
  }
  // Without the preload, with it switched off, or in another program, a free hint is where the kernel puts it.
  for (const r of [plain, off, other]) {
    assert.deepEqual([r.rwAtHint, r.noneAtHint, r.adjacent], [1, 1, 0]);
    assert.doesNotMatch(r.rwFlags, /\bnh\b/);
  }
  assert.deepEqual([packed.rwAtHint, packed.noneAtHint, packed.adjacent], [0, 0, 1]);
  assert.match(packed.rwFlags, /\bnh\b/, 'packed memory never gets transparent huge pages');
});

test("a Node program under checkpt's preload keeps its JS heap in a few mappings (CHECKPT_PACK_HEAP=off: V8's own hundreds)", async () => {
  const { checkpointableEnv } = await import('../../dist/engine/iouring.js');
  // ~150 MB of strings, in V8 pages of 256 KiB, as bench/apps/heap.mjs holds.
  const program = `const keep = [];
for (let b = 0; b < 150; b++) {
  const s = new Array(1000);
  for (let i = 0; i < 1000; i++) s[i] = (b * 1000 + i).toString(36).repeat(100);
  keep.push(s);
}
console.log(require('fs').readFileSync('/proc/self/maps', 'utf8').trim().split('\\n').length);`;
  const count = (env) => {
    const r = spawnSync(process.execPath, ['-e', program], {
      env,
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(r.status, 0, `node: ${r.error ?? ''} ${r.stderr}`);
    return Number(r.stdout.trim());
  };
  const packed = count(checkpointableEnv({ ...process.env, CHECKPT_PACK_HEAP: '' }));
  const scattered = count(checkpointableEnv({ ...process.env, CHECKPT_PACK_HEAP: 'off' }));
  assert.ok(
    scattered > 300,
    `V8 scatters its pages over ${scattered} mappings here: too few to tell`,
  );
  assert.ok(packed * 2 < scattered, `packed: ${packed} mappings, scattered: ${scattered}`);
});
