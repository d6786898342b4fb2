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

// checkpoint()'s start (the front's spawn, the way out's rehearsal, the collection before the
// dump) each in an event-loop turn of its own: the program's pause is the longest, not the sum.
for (const node of nodeBinaries()) {
  describe(`checkpoint()'s start on Node ${node.major}`, () => {
    for (const mb of [0, 48])
      test(`${mb ? 'a program large enough to be resumed lazily' : 'a small program'}: its timers run before checkpt's collection`, async (ctx) => {
        const dir = scratchDir(ctx);
        const orig = startNode(node, fixture('turns.mjs'), [join(dir, 'turns.ckpt'), String(mb)]);
        const t = await waitFor(orig, (e) => e.event === 'turns', 'the checkpoint to be durable');
        assert.equal((await orig.closed).code, 0, orig.stderrText);
        assert.equal(t.r, 0);
        const gc = t.forced.find((g) => g.start > t.callAt);
        assert.ok(gc, `checkpt collected before the dump: ${JSON.stringify(t.forced)}`);
        const between = t.beats.filter((b) => b > t.callAt && b < gc.start);
        assert.ok(
          between.length > 0,
          `the timer beat between the call (${t.callAt.toFixed(1)}) and the collection (${gc.start.toFixed(1)}); beats until it ended: ${t.beats
            .filter((b) => b < gc.end)
            .map((b) => b.toFixed(1))
            .join(' ')}`,
        );
      });
  });
}
