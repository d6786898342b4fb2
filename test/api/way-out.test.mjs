import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
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
} from '../helpers.mjs';

after(cleanup);

// V8's own record (--log-function-events) of what it parses and compiles: a resumed copy's way out
// of checkpt() must find checkpt's functions compiled in the image (checkpt.ts, rehearseReturn()).
const COMPILE = /^function,(full-parse|parse-function|interpreter),(\d+),\d+,\d+,[^,]*,\d+,(.*)$/;

/** The ids V8 gave checkpt's own modules (dist/), from the original's script events. */
function checkptScripts(lines) {
  const ids = new Set();
  for (const l of lines) {
    const m = /^script-details,(\d+),([^,]*)/.exec(l);
    if (m && m[2].includes('/dist/')) ids.add(m[1]);
  }
  return ids;
}

for (const node of nodeBinaries()) {
  describe(`a resumed copy's way out of the call on Node ${node.major}`, () => {
    for (const mode of ['checkpt()', 'checkpoint()'])
      test(`${mode}: compiles none of checkpt's functions in the copy`, async () => {
        const dir = tempDir();
        try {
          const file = join(dir, 'way-out.ckpt');
          // The log goes to stdout: the original's until its dump, then the copy's, from the restore.
          const flags = ['--logfile=-', '--no-logfile-per-isolate'];
          const orig = startNode(node, '--log-function-events', [
            ...flags,
            fixture('way-out.mjs'),
            file,
            mode === 'checkpoint()' ? 'async' : 'sync',
          ]);
          assert.equal((await orig.closed).code, 0, orig.stderrText);
          assert.match(orig.stderrText, /\{"event":"returned","r":0,/, 'the original returned 0');
          assert.ok(existsSync(file), 'the checkpoint was written');
          const ids = checkptScripts(orig.lines);
          assert.ok(ids.size > 0, "V8's log named checkpt's modules in the original");

          const copy = resume(file);
          assert.equal((await copy.closed).code, 0, copy.stderrText);
          assert.match(copy.stderrText, /\{"event":"returned","r":1,/, 'the copy returned 1');
          // The fixture does nothing of checkpt's after the call: all of the copy's log is its way out.
          assert.ok(
            copy.lines.some((l) => l.startsWith('function,')),
            `V8 logged in the copy: ${copy.lines.slice(0, 5).join(' | ')}`,
          );
          const compiled = copy.lines
            .map((l) => COMPILE.exec(l))
            .filter((m) => m !== null && ids.has(m[2]))
            .map((m) => `${m[3]} (${m[1]})`);
          assert.deepEqual(compiled, [], 'functions of checkpt compiled in the copy');
        } finally {
          removeDir(dir);
        }
      });
  });
}
