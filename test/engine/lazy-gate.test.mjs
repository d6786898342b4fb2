// checkpt's CRIU waits at CHECKPT_CRIU_LAZY_GATE (scripts/criu-patches/lazy-gate-from-env.patch):
// the resume front starts `criu restore --lazy-pages` beside the lazy-pages daemon, and CRIU
// connects to the daemon only once it has read a byte there; end of file fails it before any task.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ownBuildHas } from '../../dist/engine/criu.js';
import { criuPath } from '../../dist/engine/paths.js';
import { cleanup, ended, removeDir, spawnSync, start, tempDir, test, within } from '../helpers.mjs';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});
const patched = ownBuildHas('lazy-gate-from-env.patch');
const env = { ...process.env, CRIU_FAULT: '130' };

/** A restore of `images` that gets its gate on fd 3 (a socket whose other end we hold). */
function gatedRestore(images, n) {
  const work = join(dir, `work-${n}`);
  spawnSync('mkdir', ['-p', work]);
  const criu = start(
    criuPath,
    ['restore', '-D', images, '-W', work, '-o', 'restore.log', '-v4', '--lazy-pages'],
    { stdio: ['ignore', 'pipe', 'pipe', 'pipe'], env: { ...env, CHECKPT_CRIU_LAZY_GATE: '3' } },
  );
  return { criu, log: () => readFileSync(join(work, 'restore.log'), 'utf8') };
}

test(
  'criu restore --lazy-pages waits at the gate, goes on after a byte, and fails at end of file there before any task',
  { skip: !patched && "CRIU is not checkpt's build with lazy-gate-from-env.patch" },
  async () => {
    // A process of a session of its own, its stdio /dev/null: nothing outside the dump.
    const p = start('sleep', ['1000'], { stdio: 'ignore' });
    const images = join(dir, 'images');
    spawnSync('mkdir', ['-p', images]);
    const d = spawnSync(criuPath, ['dump', '-t', String(p.pid), '-D', images, '-o', 'dump.log'], {
      env,
    });
    assert.equal(d.status, 0, `criu dump: ${d.stderr}`);
    await within(p.closed, 'the dumped process to end');

    // Held: after a second CRIU still waits, not yet at the daemon's socket.
    const a = gatedRestore(images, 1);
    await sleep(1000);
    assert.equal(a.criu.exitCode, null, `CRIU went on without the gate: ${a.log()}`);
    assert.doesNotMatch(a.log(), /connect to .* failed/);
    a.criu.stdio[3].end();
    const ra = await within(a.criu.closed, 'CRIU to fail at end of file on its gate');
    assert.notEqual(ra.code, 0);
    assert.match(a.log(), /checkpt's lazy-pages daemon did not start/);
    assert.doesNotMatch(a.log(), /Forking task/, 'no task was made');

    // A byte: it goes on to the daemon's socket (none listens here, so it fails there instead).
    const b = gatedRestore(images, 2);
    b.criu.stdio[3].write('1');
    const rb = await within(b.criu.closed, 'CRIU to get past its gate');
    assert.notEqual(rb.code, 0);
    assert.match(b.log(), /connect to .* failed/);
    assert.doesNotMatch(b.log(), /checkpt's lazy-pages daemon did not start/);
    assert.ok(ended(p.pid));
  },
);
