import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cleanup,
  describe,
  fixture,
  nodeBinaries,
  scratchDir,
  startNode,
  test,
  waitFor,
} from '../helpers.mjs';

after(cleanup);

// checkpoint() collects before the dump only when V8 is not quiet (src/api/gc.ts): a copy must not
// inherit a marking V8 had begun, and in a quiet program the collection's turn is the pause.
for (const node of nodeBinaries()) {
  describe(`checkpoint()'s collection on Node ${node.major}`, () => {
    for (const mode of ['quiet', 'marking'])
      test(
        mode === 'quiet'
          ? 'V8 quiet (no collection for 3 s): no collection in the call'
          : "V8's incremental marking under way: the call collects",
        async (t) => {
          const dir = scratchDir(t);
          const orig = startNode(node, fixture('quiet.mjs'), [join(dir, 'q.ckpt'), mode]);
          const q = await waitFor(orig, (e) => e.event === 'quiet', 'the checkpoint');
          assert.equal((await orig.closed).code, 0, orig.stderrText);
          assert.equal(q.r, 0);
          assert.equal(
            q.forced,
            mode === 'quiet' ? 0 : 1,
            `forced full collections in the call: ${JSON.stringify(q)}`,
          );
        },
      );
  });
}
