// Bundles the `checkpt` command into dist/bin/ (package.json's bin): checkpt.js, the entry, with
// only what parsing, --help and --version need, and commands.js, every command's modules in one
// file, which checkpt.js imports once a command runs. Two files load faster than the ~50 modules
// tsc emits, and one commands file faster than a chunk per command (docs/PERFORMANCE.md,
// start-up). dist/bin/ is two levels below the package root, like dist/engine/, so paths made
// from import.meta.url (src/engine/paths.ts, src/cli/help.ts) stay right. Needs esbuild (a
// devDependency): npm run build runs this; the package ships its output.
import { chmodSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist', 'bin');
const common = {
  bundle: true,
  format: 'esm',
  platform: 'node',
  // The oldest Node checkpt supports (package.json engines).
  target: 'node20',
  logLevel: 'warning',
};
rmSync(outdir, { recursive: true, force: true });
await build({
  ...common,
  entryPoints: [join(root, 'src', 'cli', 'main.ts')],
  outfile: join(outdir, 'checkpt.js'),
  plugins: [
    {
      name: 'commands-apart',
      setup(b) {
        b.onResolve({ filter: /^\.\/commands\.js$/ }, (a) => ({ path: a.path, external: true }));
      },
    },
  ],
});
await build({
  ...common,
  entryPoints: [join(root, 'src', 'cli', 'commands.ts')],
  outfile: join(outdir, 'commands.js'),
});
chmodSync(join(outdir, 'checkpt.js'), 0o755);
