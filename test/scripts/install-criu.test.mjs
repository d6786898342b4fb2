// scripts/install-criu.sh against the machine as it is after scripts/setup.sh: the fast path,
// and every way a build can be refused or fail, each with its message and nothing installed.
import assert from 'node:assert/strict';
import { describe, removeDir, root, spawnSync, tempDir, test } from '../helpers.mjs';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { findCriu, ownCriuHome } from '../../dist/engine/paths.js';

const script = join(root, 'scripts', 'install-criu.sh');
const dirs = [];
after(() => dirs.forEach(removeDir));

function install(env) {
  return spawnSync('bash', [script], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 120_000,
  });
}

/** A scratch CHECKPT_CRIU_HOME and a "source tarball" in it, built from the files given. */
function fakeSource(name, files) {
  const dir = tempDir('checkpt-install-');
  dirs.push(dir);
  const tree = join(dir, 'tree', 'criu-x');
  mkdirSync(tree, { recursive: true });
  for (const [file, text] of Object.entries(files)) writeFileSync(join(tree, file), text);
  const tarball = join(dir, name);
  const t = spawnSync('tar', ['-C', join(dir, 'tree'), '-cJf', tarball, 'criu-x']);
  assert.equal(t.status, 0, String(t.stderr));
  return { home: join(dir, 'home'), tarball };
}

describe('scripts/install-criu.sh', () => {
  test('with a working CRIU in place it says so, changes nothing and is quick', () => {
    const own = join(ownCriuHome, 'bin', 'criu');
    const before = existsSync(own) ? statSync(own).mtimeMs : undefined;
    const t0 = Date.now();
    const r = install({});
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /CRIU 4\.\d+(\.\d+)? at \S+ works/);
    assert.doesNotMatch(r.stdout, /building/);
    if (before !== undefined) assert.equal(statSync(own).mtimeMs, before);
    // Generous bound: a build takes about a minute, a `criu check` well under ten seconds.
    assert.ok(Date.now() - t0 < 30_000, `took ${Date.now() - t0} ms`);
  });

  test('a source file that does not exist is refused before anything is built', () => {
    const dir = tempDir('checkpt-install-');
    dirs.push(dir);
    const r = install({
      CHECKPT_CRIU_FORCE: '1',
      CHECKPT_CRIU_HOME: join(dir, 'home'),
      CHECKPT_CRIU_SOURCE: join(dir, 'missing.tar.xz'),
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /CHECKPT_CRIU_SOURCE=.*missing\.tar\.xz is not a file/);
    assert.equal(existsSync(join(dir, 'home')), false);
  });

  test('a CRIU older than 4.2 is refused, naming the version and the need', () => {
    const { home, tarball } = fakeSource('criu_4.1.1.orig.tar.xz', { Makefile: 'criu:\n\ttrue\n' });
    const r = install({
      CHECKPT_CRIU_FORCE: '1',
      CHECKPT_CRIU_HOME: home,
      CHECKPT_CRIU_SOURCE: tarball,
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /found is 4\.1\.1; checkpt needs 4\.2 or newer/);
    assert.equal(existsSync(join(home, 'bin', 'criu')), false);
  });

  test('a failing build says so, shows the compiler error, and installs nothing', () => {
    const { home, tarball } = fakeSource('criu_4.2.9.orig.tar.xz', {
      Makefile:
        'criu:\n\t@echo "criu/foo.c:1:10: fatal error: nl.h: No such file or directory"; exit 2\n',
    });
    const r = install({
      CHECKPT_CRIU_FORCE: '1',
      CHECKPT_CRIU_HOME: home,
      CHECKPT_CRIU_SOURCE: tarball,
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /nl\.h: No such file or directory/);
    assert.match(r.stderr, /building CRIU 4\.2\.9 failed.*missing build dependency/);
    assert.equal(existsSync(join(home, 'bin', 'criu')), false);
  });

  test('each patch that fits is applied, one that does not is left out and named', async (t) => {
    // The lazy-pages daemon's source as CRIU ships it, from the tarball kept beside checkpt's CRIU;
    // the kernel-probe patch's files are missing from this tree, so it cannot fit.
    const kept = join(ownCriuHome, 'src', 'criu_4.2.1.orig.tar.xz');
    if (!existsSync(kept)) return t.skip(`no CRIU source kept at ${kept}`);
    const x = spawnSync('tar', ['-xJOf', kept, 'criu-4.2.1/criu/uffd.c'], {
      maxBuffer: 1 << 24,
    });
    assert.equal(x.status, 0, String(x.stderr));
    // The build succeeds only on a uffd.c with its seven patches; the "binary" answers as a CRIU
    // would.
    const { home, tarball } = fakeSource('criu_4.2.9.orig.tar.xz', {
      Makefile:
        '.PHONY: criu\ncriu:\n\tgrep -q FAULT_AROUND_LEN criu/uffd.c\n' +
        '\tgrep -q ckpt_staged_read criu/uffd.c\n' +
        '\tgrep -q ckpt_self_check criu/uffd.c\n' +
        '\tgrep -q ckpt_seek criu/uffd.c\n' +
        "\tgrep -q 'changed before its removal' criu/uffd.c\n" +
        '\tgrep -q CHECKPT_CRIU_LAZY_HOLD criu/uffd.c\n' +
        '\tgrep -q ckpt_hints_get criu/uffd.c\n' +
        '\tgrep -q CHECKPT_CRIU_LAZY_GATE criu/uffd.c\n' +
        '\tprintf \'#!/bin/sh\\necho "Version: 4.2.9"\\n\' > criu/criu && chmod +x criu/criu\n',
    });
    const tree = join(dirs.at(-1), 'tree', 'criu-x');
    mkdirSync(join(tree, 'criu'));
    writeFileSync(join(tree, 'criu', 'uffd.c'), x.stdout);
    const again = spawnSync('tar', ['-C', join(tree, '..'), '-cJf', tarball, 'criu-x']);
    assert.equal(again.status, 0, String(again.stderr));
    const r = install({
      CHECKPT_CRIU_FORCE: '1',
      CHECKPT_CRIU_HOME: home,
      CHECKPT_CRIU_SOURCE: tarball,
    });
    assert.equal(r.status, 0, r.stderr + r.stdout);
    assert.match(
      r.stdout,
      /kdat-cache-owner\.patch does not fit CRIU 4\.2\.9: building without it/,
    );
    assert.match(r.stdout, /kernel-probe cache in \/run/);
    const info = readFileSync(join(home, 'BUILD-INFO'), 'utf8');
    assert.match(
      info,
      /^patches=lazy-fault-around\.patch lazy-gate-from-env\.patch staged-local-reads\.patch uffd-remove-race\.patch uffd-seek-index\.patch xfer-hold-while-faulting\.patch xfer-ordered-by-faults\.patch$/m,
    );
    assert.match(info, /^kdat=\/run$/m);
    assert.match(info, /^version=4\.2\.9$/m);
    // The binary it records is the one installed (checkpt then needs no `criu --version`).
    const { binaryIdentity } = await import('../../dist/engine/criu.js');
    assert.equal(/^binary=(.*)$/m.exec(info)?.[1], binaryIdentity(join(home, 'bin', 'criu')));
  });

  test('a tarball whose name carries no version is refused', () => {
    const { home, tarball } = fakeSource('criu-latest.tar.xz', { Makefile: 'criu:\n\ttrue\n' });
    const r = install({
      CHECKPT_CRIU_FORCE: '1',
      CHECKPT_CRIU_HOME: home,
      CHECKPT_CRIU_SOURCE: tarball,
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot tell CRIU's version from the name criu-latest\.tar\.xz/);
  });
});

describe('which CRIU checkpt runs', { unit: true }, () => {
  test("CHECKPT_CRIU first, then checkpt's own build, then the PATH", () => {
    const dir = tempDir('checkpt-find-');
    dirs.push(dir);
    mkdirSync(join(dir, 'bin'));
    writeFileSync(join(dir, 'bin', 'criu'), '');
    assert.deepEqual(findCriu({ CHECKPT_CRIU: '/x/criu', CHECKPT_CRIU_HOME: dir }), {
      path: '/x/criu',
      source: 'CHECKPT_CRIU',
    });
    assert.deepEqual(findCriu({ CHECKPT_CRIU_HOME: dir }), {
      path: join(dir, 'bin', 'criu'),
      source: 'checkpt build',
    });
    assert.deepEqual(findCriu({ CHECKPT_CRIU_HOME: join(dir, 'nothing') }), {
      path: 'criu',
      source: 'PATH',
    });
  });
});
