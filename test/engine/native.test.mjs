// Where checkpt finds its compiled parts and what it says when none works: real files, real
// execution and dlopen, in package roots made up in temporary directories.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  NATIVE_PARTS,
  explainUnusable,
  lookUp,
  nativeContext,
  unusableMessage,
} from '../../dist/engine/native.js';
import { removeDir, root, tempDir, test, describe } from '../helpers.mjs';

const dirs = [];
after(() => dirs.forEach(removeDir));

/**
 * A package root with the given parts of the real build copied into build/ and into
 * prebuilt/linux-x64/ (made, even empty, when `prebuilt` is given).
 */
function fakeRoot({ build = [], prebuilt } = {}) {
  const r = tempDir('checkpt-native-');
  dirs.push(r);
  if (prebuilt !== undefined) mkdirSync(join(r, 'prebuilt', 'linux-x64'), { recursive: true });
  for (const [list, dir] of [
    [build, join(r, 'build')],
    [prebuilt ?? [], join(r, 'prebuilt', 'linux-x64')],
  ])
    for (const part of list) {
      mkdirSync(dir, { recursive: true });
      copyFileSync(join(root, 'build', part), join(dir, part));
    }
  return r;
}

const ctxFor = (r, extra = {}) => ({ ...nativeContext(), root: r, ...extra });

function compile(out, source, args = []) {
  const src = `${out}.c`;
  writeFileSync(src, source);
  const r = spawnSync('cc', ['-o', out, src, ...args], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
}

describe('looking the native parts up', () => {
  test('this checkout: every part is found in build/ and works', () => {
    for (const part of NATIVE_PARTS) {
      const l = lookUp(part);
      assert.equal(l.found?.origin, 'build', JSON.stringify(l));
      assert.equal(l.found.path, join(root, 'build', part));
    }
  });

  test('without a local build the prebuilt ones are used; a local build comes first', () => {
    const r = fakeRoot({ prebuilt: NATIVE_PARTS });
    for (const part of NATIVE_PARTS) {
      const l = lookUp(part, ctxFor(r));
      assert.equal(l.found?.origin, 'prebuilt', JSON.stringify(l));
      assert.deepEqual(l.tried[0], {
        path: join(r, 'build', part),
        origin: 'build',
        problem: 'not there',
      });
    }
    const both = fakeRoot({ build: NATIVE_PARTS, prebuilt: NATIVE_PARTS });
    for (const part of NATIVE_PARTS)
      assert.equal(lookUp(part, ctxFor(both)).found?.origin, 'build');
  });

  test('a local build for another architecture is passed over for the prebuilt one', () => {
    const r = fakeRoot({ build: ['checkpt-helper'], prebuilt: ['checkpt-helper'] });
    const helper = join(r, 'build', 'checkpt-helper');
    const elf = readFileSync(helper);
    elf.writeUInt16LE(0xb7, 18); // aarch64
    writeFileSync(helper, elf);
    const l = lookUp('checkpt-helper', ctxFor(r));
    assert.equal(l.found?.origin, 'prebuilt');
    assert.equal(l.tried[0].problem, 'built for arm64, and this machine is x64');
  });

  test('a helper that is not executable, answers another version or does not run is refused', () => {
    const r = fakeRoot({ build: ['checkpt-helper'] });
    const helper = join(r, 'build', 'checkpt-helper');
    chmodSync(helper, 0o644);
    assert.equal(
      lookUp('checkpt-helper', ctxFor(r)).tried[0].problem,
      'is not executable (mode 644)',
    );

    compile(helper, '#include <stdio.h>\nint main(void) { puts("checkpt-helper 0"); return 0; }\n');
    assert.match(
      lookUp('checkpt-helper', ctxFor(r)).tried[0].problem,
      /answers 'checkpt-helper 0', not 'checkpt-helper 4'/,
    );

    // Linked against a library that is then gone: the dynamic loader refuses to start it.
    const lib = join(r, 'libgone.so');
    compile(lib, 'int gone(void) { return 1; }\n', ['-shared', '-fPIC']);
    compile(helper, 'int gone(void);\nint main(void) { return gone(); }\n', [`-L${r}`, '-lgone']);
    rmSync(lib);
    const l = lookUp('checkpt-helper', ctxFor(r));
    assert.equal(l.found, undefined);
    assert.match(l.tried[0].problem, /^does not run here: .*libgone\.so/);
  });

  test('the quick look of the commands that start the helper: its version among its bytes, executable; running it is left to checkpt check', () => {
    const r = fakeRoot({ build: ['checkpt-helper'] });
    const helper = join(r, 'build', 'checkpt-helper');
    assert.equal(lookUp('checkpt-helper', ctxFor(r, { quick: true })).found?.origin, 'build');
    chmodSync(helper, 0o644);
    assert.equal(
      lookUp('checkpt-helper', ctxFor(r, { quick: true })).tried[0].problem,
      'is not executable (mode 644)',
    );
    // Another version's answer, and one that only begins like this version's.
    for (const answer of ['checkpt-helper 0', 'checkpt-helper 41']) {
      compile(helper, `#include <stdio.h>\nint main(void) { puts("${answer}"); return 0; }\n`);
      assert.equal(
        lookUp('checkpt-helper', ctxFor(r, { quick: true })).tried[0].problem,
        "does not answer 'checkpt-helper 4' (from another checkpt version, or damaged)",
      );
    }
  });

  test('a preload library that does not load, and an addon that does not dlopen, are refused', () => {
    const r = fakeRoot({ prebuilt: ['libcheckpt-nouring.so', 'checkpt-openssl.node'] });
    const lib = join(r, 'libgone.so');
    compile(lib, 'int gone(void) { return 1; }\n', ['-shared', '-fPIC']);
    const preload = join(r, 'build', 'libcheckpt-nouring.so');
    mkdirSync(join(r, 'build'));
    compile(preload, 'int gone(void);\nint f(void) { return gone(); }\n', [
      '-shared',
      '-fPIC',
      `-L${r}`,
      '-lgone',
    ]);
    rmSync(lib);
    const l = lookUp('libcheckpt-nouring.so', ctxFor(r));
    assert.equal(l.found?.origin, 'prebuilt');
    assert.match(l.tried[0].problem, /^does not load here: .*libgone\.so/);

    // An executable is no addon: dlopen refuses it.
    copyFileSync(join(root, 'build', 'checkpt-helper'), join(r, 'build', 'checkpt-openssl.node'));
    const a = lookUp('checkpt-openssl.node', ctxFor(r));
    assert.equal(a.found?.origin, 'prebuilt');
    assert.match(a.tried[0].problem, /^does not load here: /);
    assert.equal(typeof a.exports.reseed, 'function', 'the addon found is the one loaded');
  });
});

describe('what checkpt says when a part is not usable', () => {
  test('install scripts blocked and the prebuilt one missing: the cause, and checkpt build', () => {
    const r = fakeRoot({ prebuilt: ['checkpt-openssl.node'] });
    const msg = unusableMessage(lookUp('checkpt-helper', ctxFor(r)), ctxFor(r));
    assert.match(msg, /^checkpt's native helper is not usable: /);
    assert.match(
      msg,
      /build\/checkpt-helper not there; .*prebuilt\/linux-x64\/checkpt-helper not there/,
    );
    assert.match(msg, /install script, .* did not run \(install scripts blocked/);
    assert.match(msg, /Run 'npx checkpt build'/);
    assert.doesNotMatch(msg, /C compiler/, 'a compiler is installed: no advice to install one');
  });

  test('the prebuilt one does not run here: that, and why it may be', () => {
    const r = fakeRoot({ prebuilt: [] });
    const lib = join(r, 'libgone.so');
    compile(lib, 'int gone(void) { return 1; }\n', ['-shared', '-fPIC']);
    compile(
      join(r, 'prebuilt', 'linux-x64', 'checkpt-helper'),
      'int gone(void);\nint main(void) { return gone(); }\n',
      [`-L${r}`, '-lgone'],
    );
    rmSync(lib);
    const { detail, fix } = explainUnusable(lookUp('checkpt-helper', ctxFor(r)), ctxFor(r));
    assert.match(detail, /prebuilt\/linux-x64\/checkpt-helper does not run here: .*libgone\.so/);
    assert.match(
      fix,
      /The prebuilt one does not work on this system \(the prebuilt parts need glibc 2\.34/,
    );
    assert.match(fix, /or ran on another system, where the prebuilt one worked/);
  });

  test('no compiler: says which one is missing and how to get one', () => {
    const r = fakeRoot();
    const ctx = ctxFor(r, { cc: join(r, 'no-such-cc') });
    const msg = unusableMessage(lookUp('checkpt-helper', ctx), ctx);
    assert.match(
      msg,
      /No C compiler: '.*no-such-cc' is not installed\. Install one \(Debian\/Ubuntu: apt-get install gcc libc6-dev/,
    );
    assert.match(msg, /then run 'npx checkpt build'/);
  });

  test('a compile that failed at install: its reason, not a guess', () => {
    const r = fakeRoot();
    mkdirSync(join(r, 'build'));
    writeFileSync(join(r, 'build', '.build-failed'), "no C compiler: 'cc' is not installed\n");
    const msg = unusableMessage(lookUp('checkpt-helper', ctxFor(r)), ctxFor(r));
    assert.match(msg, /Compiling it failed: no C compiler: 'cc' is not installed\./);
    assert.doesNotMatch(msg, /install scripts blocked/);
  });

  test('another architecture: prebuilt parts are for linux-x64 only', () => {
    const r = fakeRoot({ prebuilt: NATIVE_PARTS });
    const ctx = ctxFor(r, { arch: 'arm64' });
    const l = lookUp('checkpt-helper', ctx);
    assert.equal(l.found, undefined);
    assert.match(
      unusableMessage(l, ctx),
      /checkpt ships prebuilt parts for linux-x64 only, and this is linux-arm64, so they must be compiled here\./,
    );
  });

  test('a source checkout with no prebuilt parts says so', () => {
    const r = fakeRoot();
    assert.match(
      unusableMessage(lookUp('checkpt-subreaper.node', ctxFor(r)), ctxFor(r)),
      /^checkpt's orphan-adoption addon is not usable: .*This copy of checkpt has no prebuilt parts/,
    );
  });
});
