// Builds native/*.c into build/ with the system C compiler: the helper, the io_uring blocker and
// the N-API addons that reseed OpenSSL in resumed copies and switch orphan adoption (no node-gyp:
// they need no Node headers).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const targets = [
  {
    src: join(root, 'native', 'checkpt-helper.c'),
    out: join(root, 'build', 'checkpt-helper'),
    flags: [],
  },
  {
    src: join(root, 'native', 'nouring.c'),
    out: join(root, 'build', 'libcheckpt-nouring.so'),
    // No vector registers in code that runs inside every syscall() of the program.
    flags: ['-shared', '-fPIC', '-mgeneral-regs-only'],
  },
  {
    src: join(root, 'native', 'checkpt-subreaper.c'),
    out: join(root, 'build', 'checkpt-subreaper.node'),
    flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  },
  {
    src: join(root, 'native', 'checkpt-rand.c'),
    out: join(root, 'build', 'checkpt-rand.node'),
    flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  },
];
// During `npm install` a missing compiler must not fail the install: `checkpt check` explains it later.
const lenient = process.argv.includes('--if-sources');

const cc = process.env.CC || 'cc';
// A shared header changes every target that includes it.
const headers = ['napi-min.h']
  .map((h) => join(root, 'native', h))
  .filter((h) => existsSync(h))
  .map((h) => statSync(h).mtimeMs);
for (const { src, out, flags } of targets) {
  if (!existsSync(src)) continue;
  const newest = Math.max(statSync(src).mtimeMs, ...headers);
  if (existsSync(out) && statSync(out).mtimeMs >= newest) continue;
  mkdirSync(dirname(out), { recursive: true });
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', ...flags, '-o', out, src], {
    stdio: 'inherit',
  });
  if (!r.error && r.status === 0) continue;
  const why = r.error ? r.error.message : `exit status ${r.status}`;
  console.error(
    `checkpt: could not build the native helper with '${cc}' (${why}).\n` +
      `Install a C compiler (Debian/Ubuntu: apt-get install gcc libc6-dev) and run 'npm rebuild checkpt'.`,
  );
  process.exit(lenient ? 0 : 1);
}
