// checkpt's CRIU dies with the parent named in CHECKPT_CRIU_PDEATHSIG
// (scripts/criu-patches/pdeathsig-from-env.patch): the lazy-pages daemon's guard against
// outliving a `checkpt -r` that was killed, without a setpriv exec in front of it.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ownBuildHas } from '../../dist/engine/criu.js';
import { criuPath } from '../../dist/engine/paths.js';
import {
  cleanup,
  describeTree,
  ended,
  freePort,
  removeDir,
  spawnSync,
  start,
  tempDir,
  test,
} from '../helpers.mjs';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});
const patched = ownBuildHas('pdeathsig-from-env.patch');

/**
 * A shell that starts `criu page-server` (a CRIU that waits for a connection: it runs until it is
 * stopped) as its child, naming itself as the parent when `named`; resolves with both pids.
 */
async function underShell(named, n) {
  const port = await freePort();
  const setting = named ? 'CHECKPT_CRIU_PDEATHSIG=$$ ' : '';
  const sh = start('sh', [
    '-c',
    `${setting}"$@" & echo $!; wait`,
    'sh',
    criuPath,
    'page-server',
    '-D',
    dir,
    '-o',
    join(dir, `ps-${n}.log`),
    '--address',
    '127.0.0.1',
    '--port',
    String(port),
  ]);
  for (const end = Date.now() + 10_000; sh.lines.length === 0; await sleep(10))
    assert.ok(Date.now() < end, `the shell named no child: ${sh.stderrText}`);
  return { sh, criu: Number(sh.lines[0]) };
}

test(
  'named, CRIU ends when its parent is killed; not named, it runs on; another parent named: exit 1 at once',
  { skip: !patched && "CRIU is not checkpt's build with pdeathsig-from-env.patch" },
  async () => {
    const a = await underShell(true, 1);
    await sleep(200);
    assert.equal(ended(a.criu), false, 'CRIU runs while its parent does');
    process.kill(a.sh.pid, 'SIGKILL');
    for (const end = Date.now() + 5000; !ended(a.criu); await sleep(20))
      assert.ok(Date.now() < end, `CRIU outlived its parent:\n${describeTree(a.criu)}`);

    // The same without the variable: nothing makes it end (it is stopped here by its pid).
    const b = await underShell(false, 2);
    process.kill(b.sh.pid, 'SIGKILL');
    await sleep(500);
    const survived = !ended(b.criu);
    process.kill(b.criu, 'SIGKILL');
    assert.ok(survived, 'without CHECKPT_CRIU_PDEATHSIG CRIU runs on (the check above can fail)');

    const port = await freePort();
    const r = spawnSync(
      criuPath,
      ['page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(port)],
      { env: { ...process.env, CHECKPT_CRIU_PDEATHSIG: '1' }, timeout: 10_000 },
    );
    assert.equal(r.status, 1, `a parent that is not ours: ${r.stderr}`);
  },
);
