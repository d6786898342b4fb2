// Bundles the `checkpt` command into dist/bin/ (package.json's bin): checkpt.cjs, the entry, with
// only what parsing, --help and --version need, and commands.cjs, every command's modules in one
// file, which checkpt.cjs loads once a command runs. Two files load faster than the ~50 modules
// tsc emits, one commands file faster than a chunk per command, and CommonJS faster than ES
// modules: Node's ESM loader and its facade for each built-in cost ~13 ms of CPU more at each
// start (docs/PERFORMANCE.md, start-up). dist/bin/ is two levels below the package root, like
// dist/engine/, so paths made from import.meta.url (src/engine/paths.ts, src/cli/help.ts) stay
// right. Needs esbuild (a devDependency): npm run build runs this; the package ships its output.
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist', 'bin');
const common = {
  bundle: true,
  format: 'cjs',
  platform: 'node',
  // The oldest Node checkpt supports (package.json engines).
  target: 'node20',
  logLevel: 'warning',
  // CommonJS has no import.meta: the file's own URL stands in for it.
  banner: {
    js: '"use strict";var __checkptUrl = require("node:url").pathToFileURL(__filename).href;',
  },
  define: { 'import.meta.url': '__checkptUrl' },
  // import() of the commands becomes require(): no ESM loader at all.
  supported: { 'dynamic-import': false },
  // Fewer bytes to read and parse at each start (commands.cjs 444 to 333 KB: 1-3 ms to a resume's
  // main, docs/PERFORMANCE.md); names are kept, so stack traces still name functions.
  minifyWhitespace: true,
  minifySyntax: true,
};
rmSync(outdir, { recursive: true, force: true });
await build({
  ...common,
  entryPoints: [join(root, 'src', 'cli', 'main.ts')],
  outfile: join(outdir, 'checkpt.cjs'),
  plugins: [
    {
      name: 'commands-apart',
      setup(b) {
        b.onResolve({ filter: /^\.\/commands\.js$/ }, () => ({
          path: './commands.cjs',
          external: true,
        }));
      },
    },
  ],
});
await build({
  ...common,
  entryPoints: [join(root, 'src', 'cli', 'commands.ts')],
  outfile: join(outdir, 'commands.cjs'),
});
// The dump front's packing worker (src/engine/paths.ts, dumpWorkerPath): the same two parts, the
// entry loading the worker's code with its code cache.
await build({
  ...common,
  entryPoints: [join(root, 'src', 'engine', 'dump-worker.ts')],
  outfile: join(outdir, 'dump-worker-code.cjs'),
});
await build({
  ...common,
  entryPoints: [join(root, 'src', 'engine', 'dump-worker-start.ts')],
  outfile: join(outdir, 'dump-worker.cjs'),
});
// The entry is also a shell script: run as a command, `checkpt -r FILE` (or `-d -r FILE`) goes to
// the native resume front first (dist/bin/checkpt-front, a link build-helper.mjs makes; native/resume-front.c), which
// restores the copy before Node starts and runs Node on this file for the rest; everything else,
// and CHECKPT_FRONT=0, goes to Node at once. To Node the second line is a string and a comment.
const entry = join(outdir, 'checkpt.cjs');
const js = readFileSync(entry, 'utf8');
if (!js.startsWith('#!/usr/bin/env node\n')) throw new Error('checkpt.cjs: no #! line to replace');
const sh = [
  '#!/bin/sh',
  `':' //; case "$1:$CHECKPT_FRONT" in -r:0|-d:0) ;; -r:*|-d:*) f=$0; [ -L "$f" ] && f=$(readlink -f -- "$f"); [ -x "\${f%/*}/checkpt-front" ] && exec "\${f%/*}/checkpt-front" front "$f" "$@";; esac; exec node "$0" "$@"`,
];
writeFileSync(entry, sh.join('\n') + '\n' + js.slice(js.indexOf('\n') + 1));
chmodSync(entry, 0o755);
