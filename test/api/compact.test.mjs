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

/** The fixture's checkpoint, uncompressed, by checkpt() (sync) or checkpoint() (async). */
async function take(node, dir, mode, gc) {
  const orig = startNode(node, fixture('compact.mjs'), [join(dir, `${mode}-${gc}.ckpt`), mode], {
    env: { ...process.env, CHECKPT_COMPRESS: '0', CHECKPT_GC: gc },
  });
  const c = await waitFor(orig, (e) => e.event === 'compact', `${mode}: the checkpoint`);
  assert.equal((await orig.closed).code, 0, orig.stderrText);
  assert.equal(c.r, 0);
  return c;
}

// checkpt() runs one regular collection before the dump; with CHECKPT_GC=compact the thorough one
// (V8's last-resort collection, from V8 12): a program that churned through garbage has its young
// generation and V8's reserve given back, where checkpoint() keeps them (one regular collection
// at most, the program running on: test/api/quiet.test.mjs).
for (const node of nodeBinaries()) {
  describe(`the collection before a dump on Node ${node.major}`, () => {
    test('checkpt() collects the regular way; with CHECKPT_GC=compact it leaves less to dump than checkpoint()', async (t) => {
      const dir = scratchDir(t);
      const regular = await take(node, dir, 'sync', 'on');
      const sync = await take(node, dir, 'sync', 'compact');
      const async = await take(node, dir, 'async', 'compact');
      const sizes = `checkpt() ${regular.bytes} bytes, with compact ${sync.bytes}, checkpoint() ${async.bytes}; full collections ${JSON.stringify(regular.majors)}, ${JSON.stringify(sync.majors)} and ${JSON.stringify(async.majors)}`;
      // One forced collection, gc() as checkpoint()'s (the churn's own come in late too).
      assert.equal(
        regular.majors.filter((g) => g.forced).length,
        1,
        `checkpt() collected once, the regular way: ${sizes}`,
      );
      if (node.major >= 22) {
        // V8's last-resort collection: two full collections or more, not flagged as forced.
        assert.ok(sync.majors.length >= 2, `checkpt() collected thoroughly: ${sizes}`);
        assert.ok(sync.bytes * 2 < async.bytes, `checkpt()'s file is less than half: ${sizes}`);
        assert.ok(sync.bytes * 2 < regular.bytes, `less than half the regular way's: ${sizes}`);
      } else {
        // Node 20's V8 takes these options otherwise: the regular collection, as checkpoint()'s.
        assert.ok(
          sync.majors.some((g) => g.forced),
          `checkpt() collected: ${sizes}`,
        );
      }
    });
  });
}
