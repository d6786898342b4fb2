import assert from 'node:assert/strict';
import { statSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cleanup,
  describe,
  fixture,
  nodeBinaries,
  removeDir,
  resume,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';

after(cleanup);

for (const node of nodeBinaries()) {
  describe(`checkpt() on Node ${node.major}`, () => {
    test('state survives; the call returns 0, then 1 in the resumed copy; a pending timer fires', async () => {
      const dir = tempDir();
      try {
        const file = join(dir, 'state.ckpt');
        const orig = startNode(node, fixture('state.mjs'), [file]);
        const first = await waitFor(
          orig,
          (e) => e.event === 'returned',
          'the checkpoint to return',
        );
        assert.equal(first.r, 0);
        assert.equal((await orig.closed).code, 0, orig.stderrText);
        assert.equal(statSync(file).mode & 0o777, 0o600);
        assert.deepEqual(readdirSync(dir), ['state.ckpt'], 'no temporary files left beside it');

        const resumed = resume(file);
        const again = await waitFor(
          resumed,
          (e) => e.event === 'returned',
          'the resumed call to return',
        );
        assert.equal(again.r, 1);
        assert.equal(again.pid, first.pid, 'the copy keeps its pid inside its namespace');
        assert.equal(again.moduleCounter, 41);
        assert.equal(again.mapSize, 100_000);
        assert.deepEqual(again.mapSample, { i: 99_999, sq: 99_999 * 99_999 });
        assert.equal(again.tree, first.tree);
        assert.equal(again.closure, 102);
        assert.equal(again.generation, 1);
        await waitFor(
          resumed,
          (e) => e.event === 'timer',
          'the pending timer to fire after resume',
        );
        const st = await resumed.closed;
        assert.equal(
          st.code,
          7,
          `checkpt -r exits with the program's status; stderr: ${resumed.stderrText}`,
        );
      } finally {
        removeDir(dir);
      }
    });
  });
}
