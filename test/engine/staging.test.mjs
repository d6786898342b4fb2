import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statfsSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ownerTag, stagingRoot, sweepOrphans } from '../../dist/engine/staging.js';
import { removeDir, spawnSync, tempDir, unitTest as test } from '../helpers.mjs';

const ns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))[1];

/** A pid that existed a moment ago and is gone now. */
function deadPid() {
  const r = spawnSync('true');
  return r.pid;
}

test('sweepOrphans removes only what dead processes of this PID namespace left', () => {
  const dir = tempDir();
  try {
    const dead = deadPid();
    const names = {
      dead: `checkpt-restore-${dead}.${ns}-aaaaaa`,
      alive: `checkpt-restore-${process.ppid}.${ns}-bbbbbb`,
      mine: `checkpt-restore-${ownerTag()}-cccccc`,
      otherNs: `checkpt-restore-${dead}.1-dddddd`,
      oldStyle: `checkpt-restore-${dead}-eeeeee`,
      dump: `checkpt-dump-${dead}.${ns}-ffffff`,
    };
    for (const n of Object.values(names)) mkdirSync(join(dir, n));
    sweepOrphans(dir, 'checkpt-restore-');
    const left = readdirSync(dir);
    assert.ok(!left.includes(names.dead), 'a dead owner: removed');
    for (const keep of ['alive', 'mine', 'otherNs', 'oldStyle', 'dump'])
      assert.ok(left.includes(names[keep]), `${keep} is kept`);
  } finally {
    removeDir(dir);
  }
});

test('ownerTag names this process and its PID namespace', () => {
  assert.equal(ownerTag(), `${process.pid}.${ns}`);
});

test('CHECKPT_TMPDIR wins; a huge image is not staged in memory', () => {
  const saved = process.env.CHECKPT_TMPDIR;
  try {
    process.env.CHECKPT_TMPDIR = '/somewhere';
    assert.equal(stagingRoot(1), '/somewhere');
    delete process.env.CHECKPT_TMPDIR;
    assert.notEqual(stagingRoot(2 ** 50), '/dev/shm');
  } finally {
    if (saved === undefined) delete process.env.CHECKPT_TMPDIR;
    else process.env.CHECKPT_TMPDIR = saved;
  }
});

test("a dump is staged in the page cache of the temp dir's disk (when it is one), a larger one, an encrypted one and a restore in /dev/shm", () => {
  const saved = process.env.CHECKPT_TMPDIR;
  const savedKey = process.env.CHECKPT_KEY_FILE;
  try {
    delete process.env.CHECKPT_TMPDIR;
    delete process.env.CHECKPT_KEY_FILE;
    const TMPFS = 0x01021994;
    // ext2/3/4 or XFS: a local disk whose page cache takes large folios.
    const onDisk = [0xef53, 0x58465342].includes(statfsSync(tmpdir()).type);
    assert.ok(
      existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS,
      'this test needs /dev/shm',
    );
    const available =
      Number(/^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))[1]) * 1024;
    assert.equal(stagingRoot(1 << 20), '/dev/shm', 'a restore');
    // A megabyte is far below what the kernel lets wait for the disk on any machine that runs this.
    assert.equal(stagingRoot(1 << 20, 'dump'), onDisk ? tmpdir() : '/dev/shm', 'a dump');
    // A third of the available memory is more than the kernel keeps dirty (a tenth by default)
    // and less than half of it: /dev/shm.
    assert.equal(stagingRoot(Math.floor(available / 3), 'dump'), '/dev/shm', 'a large dump');
    // The images of an encrypted checkpoint are the program's memory in the clear: memory only.
    process.env.CHECKPT_KEY_FILE = '/etc/checkpt-test-key';
    assert.equal(stagingRoot(1 << 20, 'dump'), '/dev/shm', 'a dump to be encrypted');
  } finally {
    if (saved === undefined) delete process.env.CHECKPT_TMPDIR;
    else process.env.CHECKPT_TMPDIR = saved;
    if (savedKey === undefined) delete process.env.CHECKPT_KEY_FILE;
    else process.env.CHECKPT_KEY_FILE = savedKey;
  }
});
