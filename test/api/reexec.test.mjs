// Plain `node app.js` on Node 22, 24 and 26 (issue 17): checkpt's import restarts a process that
// opened io_uring with the blocker preloaded, only when none of the program's code has run.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cleanup,
  events,
  fixture,
  nodeBinaries,
  removeDir,
  resume,
  root,
  start,
  tempDir,
  test,
  unitTest,
  waitFor,
} from '../helpers.mjs';
import {
  cmdlineMatches,
  entryProblem,
  leadingImports,
  optionProblem,
} from '../../dist/api/reexec.js';
import { nodeSupport } from '../../dist/engine/probe.js';

after(cleanup);

const modern = nodeBinaries().filter((n) => n.major >= 22);
const NO_MODERN = 'no Node 22/24/26 installed (scripts/install-nodes.sh)';
const count = (p, event) => events(p).filter((e) => e.event === event).length;

unitTest('leadingImports: the imports a file starts with, up to its first other statement', () => {
  const esm = [
    '#!/usr/bin/env node',
    '// a comment',
    '/* another',
    '   one */',
    "'use strict';",
    "import fs from 'node:fs';",
    "import type { T } from './types.js';",
    'import {',
    '  checkpt,',
    '  restoreInfo as info,',
    "} from 'checkpt';",
    "import * as net from 'node:net'",
    "import './side.js';",
    'const x = 1;',
    "import 'late';",
  ].join('\n');
  assert.deepEqual(leadingImports(esm), {
    specs: ['node:fs', 'checkpt', 'node:net', './side.js'],
    stop: 'const x = 1;',
  });
  const cjs = [
    '"use strict";',
    'Object.defineProperty(exports, "__esModule", { value: true });',
    'exports.main = void 0;',
    "const fs = require('fs');",
    'const { checkpt: ck } = require("checkpt");',
    'require("./x")',
    'main();',
  ].join('\n');
  assert.deepEqual(leadingImports(cjs), {
    specs: ['fs', 'checkpt', './x'],
    stop: 'main();',
  });
  // Code that runs, dynamic imports and import.meta end the list; `import type from` is an import.
  assert.deepEqual(leadingImports("console.log(1);\nimport 'checkpt';").specs, []);
  assert.deepEqual(leadingImports("await import('checkpt');").specs, []);
  assert.deepEqual(leadingImports('import.meta.url;').specs, []);
  assert.deepEqual(leadingImports("import type from 'y';").specs, ['y']);
  assert.deepEqual(leadingImports("const a = f(), b = require('checkpt');").specs, []);
  assert.deepEqual(leadingImports('import { /* c */ x } from "checkpt";').specs, []);
  assert.deepEqual(leadingImports(''), { specs: [], stop: '' });
});

unitTest(
  'optionProblem and cmdlineMatches: only `node [OPTIONS] FILE [ARGS]` with no preload',
  () => {
    assert.equal(optionProblem(['--no-warnings', '--max-old-space-size=64']), undefined);
    for (const o of ['-e', '--eval', '-p', '-r', '--require=x', '--import', '--loader', '-i'])
      assert.match(optionProblem([o]) ?? '', new RegExp(`started with ${o}`), o);
    assert.match(
      optionProblem([], '--max-old-space-size=64 --import ./pre.mjs') ?? '',
      /NODE_OPTIONS/,
    );
    assert.equal(optionProblem([], '--max-old-space-size=64'), undefined);

    const argv = ['/usr/bin/node', '/srv/app.js', 'a', 'b'];
    assert.ok(
      cmdlineMatches(['node', '--no-warnings', '/srv/app.js', 'a', 'b'], ['--no-warnings'], argv),
    );
    // From stdin, or an argument Node took out of execArgv: the command line is not the file's.
    assert.ok(!cmdlineMatches(['node', '-', 'a', 'b'], [], ['/usr/bin/node', '-', 'a', 'b']));
    assert.ok(!cmdlineMatches(['node', '--', '/srv/app.js', 'a', 'b'], [], argv));
    assert.ok(!cmdlineMatches(['node', '/srv/app.js', 'a', 'c'], [], argv));
    assert.ok(!cmdlineMatches(['node'], [], ['/usr/bin/node']));
  },
);

unitTest("entryProblem: checkpt by path or by package name, after Node's built-ins only", () => {
  const dir = tempDir();
  try {
    const self = join(root, 'dist', 'index.js');
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(root, join(dir, 'node_modules', 'checkpt'));
    const entry = join(dir, 'app.mjs');
    const ok = (src) => entryProblem(entry, src, self);
    assert.equal(ok("import fs from 'node:fs';\nimport { checkpt } from 'checkpt';"), undefined);
    assert.equal(ok(`import { checkpt } from '${self}';`), undefined);
    assert.equal(ok("const { checkpt } = require('checkpt');"), undefined);
    writeFileSync(join(dir, 'side.mjs'), '');
    assert.match(
      ok("import './side.mjs';\nimport 'checkpt';") ?? '',
      /imports '\.\/side\.mjs' before checkpt/,
    );
    assert.match(
      ok("console.log('hi');\nimport 'checkpt';") ?? '',
      /runs 'console\.log\('hi'\);' before/,
    );
    assert.match(ok("import 'node:fs';") ?? '', /does not import checkpt at its top/);
    // Another package of the same name is not this checkpt.
    assert.match(
      entryProblem(entry, "import 'checkpt';", join(dir, 'side.mjs')) ?? '',
      /imports 'checkpt'/,
    );
  } finally {
    removeDir(dir);
  }
});

unitTest('checkpt check says which Node is supported and how each is handled', () => {
  const old = nodeSupport('v18.20.0', 0, false);
  assert.equal(old.ok, false);
  assert.match(old.fix, /Node 22, 24 and 26/);
  const twenty = nodeSupport('v20.20.2', 0, false);
  assert.deepEqual([twenty.ok, twenty.warning], [true, undefined]);
  assert.match(
    twenty.detail,
    /opens no io_uring: checkpoints work as is \(Node 20 reached end of life/,
  );
  const restarted = nodeSupport('v26.12.1', 2, true);
  assert.deepEqual([restarted.ok, restarted.warning], [true, undefined]);
  assert.match(restarted.detail, /imports checkpt first is restarted without it/);
  const early = nodeSupport('v22.14.0', 2, false);
  assert.deepEqual([early.ok, early.warning], [true, true]);
  assert.match(early.detail, /no process\.execve/);
  assert.match(early.fix, /checkpt exec -- node/);
});

for (const n of modern) {
  test(`Node ${n.major}: plain 'node app.mjs' that imports checkpt first checkpoints (0) and resumes (1) with its state, its code run once`, async () => {
    const dir = tempDir();
    try {
      const file = join(dir, `plain${n.major}.ckpt`);
      const p = start(n.bin, [fixture('state.mjs'), file]);
      const first = await waitFor(
        p,
        (e) => e.event === 'returned',
        `the checkpoint on Node ${n.major}`,
      );
      assert.equal((await p.closed).code, 0, p.stderrText);
      assert.equal(first.r, 0, p.stderrText);
      // Restarted in place: the same process, and the program's code ran once.
      assert.equal(first.pid, p.pid);
      assert.equal(count(p, 'ready'), 1, p.lines.join('\n'));
      assert.ok(existsSync(file));

      const r = resume(file);
      const copy = await waitFor(r, (e) => e.event === 'returned', `the resume on Node ${n.major}`);
      assert.equal((await r.closed).code, 7, r.stderrText);
      assert.deepEqual(
        [copy.r, copy.generation, copy.moduleCounter, copy.mapSize, copy.closure, copy.pid],
        [1, 1, 41, 100_000, 102, first.pid],
      );
      assert.deepEqual(copy.mapSample, { i: 99_999, sq: 99_999 * 99_999 });
      assert.equal(count(r, 'ready'), 0, 'the copy runs on from the checkpoint, not from the top');
    } finally {
      removeDir(dir);
    }
  });

  test(`Node ${n.major}: a CommonJS program whose first statement requires checkpt is restarted with the blocker and checkpoints`, async () => {
    const dir = tempDir();
    try {
      const file = join(dir, `cjs${n.major}.ckpt`);
      const p = start(n.bin, [fixture('first.cjs'), file]);
      const ready = await waitFor(p, (e) => e.event === 'ready', 'the program to start');
      const done = await waitFor(p, (e) => e.event !== 'ready', 'the checkpoint');
      await p.closed;
      assert.equal(ready.preloaded, true);
      assert.deepEqual(
        [done.event, done.r, done.pid],
        ['returned', 0, p.pid],
        JSON.stringify(done),
      );
      assert.equal(count(p, 'ready'), 1);
      assert.ok(existsSync(file));
    } finally {
      removeDir(dir);
    }
  });

  test(`Node ${n.major}: checkpt imported after the program's own module or its output gets EIOURING, and nothing runs twice`, async () => {
    const dir = tempDir();
    try {
      const sib = start(n.bin, [fixture('late-sibling.mjs'), join(dir, 'sibling.ckpt')]);
      const e1 = await waitFor(sib, (e) => e.event === 'error', 'the error (static import first)');
      assert.equal((await sib.closed).code, 0, sib.stderrText);
      assert.equal(e1.code, 'EIOURING');
      assert.match(e1.message, /imports '\.\/side-effect\.mjs' before checkpt/);
      assert.match(e1.message, /checkpt exec -- node/);
      assert.equal(count(sib, 'side-effect'), 1, sib.lines.join('\n'));

      const dyn = start(n.bin, [fixture('late-dynamic.mjs'), join(dir, 'dynamic.ckpt')]);
      const e2 = await waitFor(dyn, (e) => e.event === 'error', 'the error (dynamic import)');
      assert.equal((await dyn.closed).code, 0, dyn.stderrText);
      assert.equal(e2.code, 'EIOURING');
      assert.match(e2.message, /runs 'const say = .*' before it imports checkpt/);
      // Written before the import: once, by the one process there ever was.
      assert.deepEqual(
        events(dyn).map((e) => [e.event, e.pid]),
        [
          ['before', dyn.pid],
          ['error', dyn.pid],
        ],
      );
      assert.ok(!existsSync(join(dir, 'sibling.ckpt')) && !existsSync(join(dir, 'dynamic.ckpt')));
    } finally {
      removeDir(dir);
    }
  });
}

test('checkpt imported in a worker thread never restarts the process: EIOURING, the main thread ran once', async (t) => {
  if (modern.length === 0) return t.skip(NO_MODERN);
  const n = modern.at(-1);
  const dir = tempDir();
  try {
    const p = start(n.bin, [fixture('worker-late.mjs'), join(dir, 'w.ckpt')]);
    const err = await waitFor(p, (e) => e.event !== 'main', "the worker's answer");
    assert.equal((await p.closed).code, 0, p.stderrText);
    assert.deepEqual([err.event, err.code], ['error', 'EIOURING'], JSON.stringify(err));
    assert.deepEqual(
      events(p).map((e) => [e.event, e.pid]),
      [
        ['main', p.pid],
        ['error', p.pid],
      ],
    );
    assert.ok(!existsSync(join(dir, 'w.ckpt')));
  } finally {
    removeDir(dir);
  }
});

test("a preload (--import), an IPC channel (fork) or CHECKPT_REEXEC=0 rules the restart out: EIOURING names the reason, the preload's output appears once", async (t) => {
  if (modern.length === 0) return t.skip(NO_MODERN);
  const n = modern.at(-1);
  const dir = tempDir();
  try {
    const file = join(dir, 'x.ckpt');
    const pre = start(n.bin, ['--import', fixture('side-effect.mjs'), fixture('state.mjs'), file]);
    const e1 = await waitFor(pre, (e) => e.event === 'error', 'the error (preload)');
    assert.equal((await pre.closed).code, 3, pre.stderrText);
    assert.equal(e1.code, 'EIOURING');
    assert.match(e1.message, /started with --import/);
    assert.equal(count(pre, 'side-effect'), 1);
    assert.equal(count(pre, 'ready'), 1);

    // Forked with an IPC channel: Node has taken NODE_CHANNEL_FD out of the environment.
    const forked = start(n.bin, [fixture('fork-parent.mjs'), file]);
    const e3 = await waitFor(forked, (e) => e.event === 'error', 'the error (forked)');
    assert.equal((await forked.closed).code, 3, forked.stderrText);
    assert.equal(e3.code, 'EIOURING');
    assert.match(e3.message, /IPC channel to its parent/);
    assert.equal(count(forked, 'ready'), 1);

    const env = { ...process.env, CHECKPT_REEXEC: 'off' };
    const off = start(n.bin, [fixture('state.mjs'), file], { env });
    const e2 = await waitFor(off, (e) => e.event === 'error', 'the error (switched off)');
    assert.equal((await off.closed).code, 3, off.stderrText);
    assert.equal(e2.code, 'EIOURING');
    assert.match(e2.message, /CHECKPT_REEXEC is off/);
    assert.ok(!existsSync(file));
  } finally {
    removeDir(dir);
  }
});
