// Builds native/*.c with the system C compiler: the helper, the io_uring blocker and the N-API
// addons that reseed OpenSSL in resumed copies, hash with BLAKE3 and switch orphan adoption (no
// node-gyp: they need no Node headers).
//   (no option)   into build/, what is out of date (npm run build, checkpt build)
//   --prebuilt    into prebuilt/linux-x64/, the parts npm pack ships (prepack)
//   --install     the install script: nothing when the prebuilt parts work here, else as above,
//                 and a missing compiler does not fail the install (--if-sources: the old name)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const install = process.argv.includes('--install') || process.argv.includes('--if-sources');
const prebuilt = process.argv.includes('--prebuilt');

if (prebuilt && `${process.platform}-${process.arch}` !== 'linux-x64') {
  console.error(
    `checkpt: the prebuilt parts are for linux-x64, and this is ${process.platform}-${process.arch}: pack on linux-x64.`,
  );
  process.exit(1);
}
const outDir = prebuilt ? join(root, 'prebuilt', 'linux-x64') : join(root, 'build');
// Same name as BUILD_FAILED_FILE in src/engine/native.ts, which reads it to say why nothing works.
const failedFile = join(root, 'build', '.build-failed');

if (install && (await prebuiltWork())) {
  await linkFront();
  process.exit(0);
}

// BLAKE3's reference C (native/blake3/): its x86-64 assembly where there is one, else portable C.
const blake3Simd = ['sse2', 'sse41', 'avx2', 'avx512'];
const blake3 =
  process.arch === 'x64'
    ? {
        more: [
          ...['blake3.c', 'blake3_dispatch.c', 'blake3_portable.c'],
          ...blake3Simd.map((s) => `blake3_${s}_x86-64_unix.S`),
        ].map((f) => `blake3/${f}`),
        flags: [],
      }
    : {
        more: ['blake3.c', 'blake3_dispatch.c', 'blake3_portable.c'].map((f) => `blake3/${f}`),
        flags: blake3Simd.map((s) => `-DBLAKE3_NO_${s.toUpperCase()}`),
      };

const targets = [
  // CRIU's RPC messages (the dump front's) in a file of their own.
  {
    name: 'checkpt-helper',
    src: 'checkpt-helper.c',
    more: [
      'criu-rpc.c',
      'page-server.c',
      'publish.c',
      'nft-lock.c',
      'resume-front.c',
      'front-image.c',
      ...blake3.more,
    ],
    // The page server's checker thread.
    flags: ['-pthread', ...blake3.flags],
  },
  {
    name: 'libcheckpt-nouring.so',
    src: 'nouring.c',
    // checkpt's one preload: io_uring off, and the JS heap's pages packed.
    more: ['packheap.c'],
    // No vector registers in code that runs inside every syscall() of the program.
    flags: ['-shared', '-fPIC', '-mgeneral-regs-only'],
  },
  {
    name: 'checkpt-subreaper.node',
    src: 'checkpt-subreaper.c',
    flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  },
  {
    name: 'checkpt-net.node',
    src: 'checkpt-net.c',
    flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  },
  {
    name: 'checkpt-spawn.node',
    src: 'checkpt-spawn.c',
    // Each child's watcher thread.
    flags: ['-shared', '-fPIC', '-fvisibility=hidden', '-pthread'],
  },
  {
    name: 'checkpt-openssl.node',
    src: 'checkpt-openssl.c',
    flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  },
  {
    name: 'checkpt-blake3.node',
    src: 'checkpt-blake3.c',
    more: blake3.more,
    flags: ['-shared', '-fPIC', '-fvisibility=hidden', ...blake3.flags],
  },
];

const cc = process.env.CC || 'cc';
// A shared header changes every target that includes it.
const headers = [
  'napi-min.h',
  'criu-rpc.h',
  'page-server.h',
  'resume-front.h',
  'front-image.h',
  'fdio.h',
  'bigmem.h',
  'publish.h',
  'sock-diag.h',
  'blake3/blake3.h',
  'blake3/blake3_impl.h',
]
  .map((h) => join(root, 'native', h))
  .filter((h) => existsSync(h))
  .map((h) => statSync(h).mtimeMs);
for (const t of targets) {
  const src = join(root, 'native', t.src);
  const more = (t.more ?? []).map((f) => join(root, 'native', f));
  const out = join(outDir, t.name);
  if (!existsSync(src)) continue;
  const newest = Math.max(...[src, ...more].map((f) => statSync(f).mtimeMs), ...headers);
  if (existsSync(out) && statSync(out).mtimeMs >= newest) continue;
  mkdirSync(outDir, { recursive: true });
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', ...t.flags, '-o', out, src, ...more], {
    stdio: ['ignore', 'inherit', 'pipe'],
    encoding: 'utf8',
  });
  if (r.stderr) process.stderr.write(r.stderr);
  if (!r.error && r.status === 0) continue;
  const why = r.error
    ? r.error.code === 'ENOENT'
      ? `no C compiler: '${cc}' is not installed`
      : `'${cc}' did not run: ${r.error.message}`
    : `'${cc}' failed on native/${t.src} (exit status ${r.status}): ${lastLine(r.stderr)}`;
  if (!prebuilt) {
    mkdirSync(dirname(failedFile), { recursive: true });
    writeFileSync(failedFile, `${why}\n`);
  }
  console.error(
    `checkpt: could not build ${t.name} (${why}).\n` +
      (r.error?.code === 'ENOENT'
        ? `Install a C compiler (Debian/Ubuntu: apt-get install gcc libc6-dev, or set CC), then run 'npx checkpt build'.`
        : `Fix the error above, then run 'npx checkpt build'.`),
  );
  process.exit(install ? 0 : 1);
}
if (!prebuilt) {
  rmSync(failedFile, { force: true });
  await linkFront();
}

/**
 * dist/bin/checkpt-front: the helper checkpt uses here (build/ first, then prebuilt/, the one that
 * runs), which dist/bin/checkpt.cjs runs for `checkpt -r FILE` before Node (native/resume-front.c).
 * No link where no helper runs: the command is Node's alone then.
 */
async function linkFront() {
  const module = join(root, 'dist', 'engine', 'native.js');
  const bin = join(root, 'dist', 'bin');
  if (!existsSync(module) || !existsSync(bin)) return;
  const link = join(bin, 'checkpt-front');
  rmSync(link, { force: true });
  const { lookUp } = await import(pathToFileURL(module).href);
  const found = lookUp('checkpt-helper').found;
  if (found?.path) symlinkSync(relative(bin, found.path), link);
}

function lastLine(text) {
  const lines = (text ?? '').trim().split('\n');
  return lines[lines.length - 1] || '(no output)';
}

/**
 * Whether every part already works from prebuilt/ (checked the way checkpt checks at run time), so
 * that an install compiles nothing. A source checkout (no dist/ yet, or parts from build/) builds.
 */
async function prebuiltWork() {
  const module = join(root, 'dist', 'engine', 'native.js');
  if (!existsSync(module)) return false;
  const { NATIVE_PARTS, lookUp } = await import(pathToFileURL(module).href);
  const found = NATIVE_PARTS.map((p) => lookUp(p).found);
  if (!found.every((f) => f?.origin === 'prebuilt')) return false;
  rmSync(failedFile, { force: true });
  return true;
}
