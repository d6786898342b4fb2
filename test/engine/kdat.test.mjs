// CRIU's cache of kernel probes: the directory checkpt prepares for it in the shared /dev/shm, and
// the patched CRIU (scripts/criu-patches/) that uses a cache only when it is its user's alone.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { criuEnv } from '../../dist/engine/criu.js';
import { forgetKdatDir, KDAT_DIR, prepareKdatDir } from '../../dist/engine/kdat.js';
import { criuPath, ownCriuHome } from '../../dist/engine/paths.js';
import { describe, removeDir, tempDir, test } from '../helpers.mjs';

const NOBODY = 65534;
const dir = tempDir('checkpt-kdat-');
after(() => removeDir(dir));

function prepared(path) {
  forgetKdatDir();
  prepareKdatDir(path, 0);
  const st = lstatSync(path);
  assert.ok(st.isDirectory(), `${path} is a directory`);
  assert.equal(st.uid, 0);
  assert.equal(st.mode & 0o777, 0o700);
  return st;
}

describe("the probe cache's directory", () => {
  test('made root-only when missing; kept with its cache when it is root-only already', () => {
    const d = join(dir, 'fresh');
    const made = prepared(d);
    writeFileSync(join(d, 'criu.kdat'), 'cache', { mode: 0o600 });
    const again = prepared(d);
    assert.equal(again.ino, made.ino);
    assert.equal(readFileSync(join(d, 'criu.kdat'), 'utf8'), 'cache');
  });

  test('replaced when another user made it first, when others may write it, or when it is a link', () => {
    const planted = join(dir, 'planted');
    mkdirSync(planted, { mode: 0o700 });
    writeFileSync(join(planted, 'criu.kdat'), 'forged');
    chownSync(planted, NOBODY, NOBODY);
    prepared(planted);
    assert.ok(!existsSync(join(planted, 'criu.kdat')), 'the planted cache is gone');

    const open = join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    prepared(open);

    const target = join(dir, 'target');
    mkdirSync(target, { mode: 0o700 });
    writeFileSync(join(target, 'keep'), 'x');
    const link = join(dir, 'link');
    symlinkSync(target, link);
    prepared(link);
    assert.equal(readFileSync(join(target, 'keep'), 'utf8'), 'x', "the link's target is untouched");
  });

  test('left alone by a user who is not root (CRIU then uses $XDG_RUNTIME_DIR)', () => {
    const d = join(dir, 'not-root');
    forgetKdatDir();
    prepareKdatDir(d, 1000);
    assert.ok(!existsSync(d));
  });
});

// Only checkpt's own build keeps its cache in KDAT_DIR (a system CRIU keeps it in /run).
const info = (() => {
  try {
    return readFileSync(join(ownCriuHome, 'BUILD-INFO'), 'utf8');
  } catch {
    return '';
  }
})();
const ownBuild =
  criuPath === join(ownCriuHome, 'bin', 'criu') && info.includes(`kdat=${KDAT_DIR}\n`);

describe(
  "checkpt's CRIU and its cache",
  { skip: !ownBuild && 'CRIU is not checkpt-built with the probe cache' },
  () => {
    const log = join(dir, 'criu.log');
    const check = () => {
      rmSync(log, { force: true });
      const r = spawnSync(criuPath, ['check', '--feature', 'pidfd_store', '-v4', '-o', log], {
        env: criuEnv(),
        encoding: 'utf8',
        timeout: 30_000,
      });
      assert.equal(r.status, 0, r.stderr);
      return readFileSync(log, 'utf8');
    };
    // Whatever these tests do to the real directory, checkpt's own preparation puts right after.
    after(() => {
      forgetKdatDir();
      prepareKdatDir();
    });

    test('CRIU writes its cache into the directory checkpt prepared and loads it at its next start', () => {
      forgetKdatDir();
      rmSync(KDAT_DIR, { recursive: true, force: true });
      check();
      assert.ok(existsSync(join(KDAT_DIR, 'criu.kdat')), 'the cache was written');
      assert.match(check(), /Loaded kdat cache from \/dev\/shm\/checkpt-criu\/criu\.kdat/);
    });

    test("CRIU ignores a cache in a directory that is not root's alone (checkpt made none yet)", () => {
      check();
      chownSync(KDAT_DIR, NOBODY, NOBODY);
      try {
        const text = check();
        assert.match(
          text,
          /Ignoring \/dev\/shm\/checkpt-criu\/criu\.kdat: it or its directory is not this user's alone/,
        );
        assert.doesNotMatch(text, /Loaded kdat cache/);
      } finally {
        chownSync(KDAT_DIR, 0, 0);
      }
      chmodSync(join(KDAT_DIR, 'criu.kdat'), 0o644);
      try {
        assert.match(check(), /Ignoring /);
      } finally {
        rmSync(join(KDAT_DIR, 'criu.kdat'), { force: true });
      }
    });
  },
);
