// The compile cache's directory: used only where nobody but root and the user could change it.
import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { privateCacheDir } from '../../dist/cli/compile-cache.js';
import { removeDir, tempDir, unitTest } from '../helpers.mjs';

const dir = tempDir();
after(() => removeDir(dir));
const euid = process.geteuid();

unitTest('a cache home only its user can write: the directory is made there, mode 0700', () => {
  const home = join(dir, 'ok');
  mkdirSync(home, { mode: 0o700 });
  const got = privateCacheDir({ XDG_CACHE_HOME: home }, euid);
  assert.equal(got, join(home, 'checkpt', 'compile-cache'));
  assert.equal(statSync(got).mode & 0o777, 0o700);
});

unitTest('a directory others can write (no sticky bit) on the way: no cache', () => {
  const open = join(dir, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  assert.equal(privateCacheDir({ XDG_CACHE_HOME: join(open, 'cache') }, euid), undefined);
});

unitTest("a cache directory that is someone else's: no cache", () => {
  const home = join(dir, 'theirs');
  mkdirSync(join(home, 'checkpt', 'compile-cache'), { recursive: true, mode: 0o700 });
  // As seen by a user who is neither root nor its owner.
  assert.equal(privateCacheDir({ XDG_CACHE_HOME: home }, euid + 4242), undefined);
});

unitTest('a cache directory others can read or write: no cache', () => {
  const home = join(dir, 'loose');
  const cache = join(home, 'checkpt', 'compile-cache');
  mkdirSync(cache, { recursive: true, mode: 0o700 });
  chmodSync(cache, 0o755);
  assert.equal(privateCacheDir({ XDG_CACHE_HOME: home }, euid), undefined);
});

unitTest(
  'owned by another user on the way (a home under sudo): no cache for root',
  { skip: euid !== 0 && 'chown needs root' },
  () => {
    const home = join(dir, 'user');
    mkdirSync(home, { mode: 0o755 });
    chownSync(home, 65534, 65534);
    assert.equal(privateCacheDir({ XDG_CACHE_HOME: home }, 0), undefined);
  },
);
