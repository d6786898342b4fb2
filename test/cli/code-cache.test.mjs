// The commands' code cache (src/cli/code-cache.ts): made after the command ran, used only for the
// very file it was made from, refused when damaged, never outside the private cache directory;
// and the real command writes it once and then runs from it.
import assert from 'node:assert/strict';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cli,
  cleanup,
  fixture,
  removeDir,
  spawnSync,
  start,
  tempDir,
  test,
  unitTest,
  waitFor,
  within,
} from '../helpers.mjs';
import { dumpWorkerPath } from '../../dist/engine/paths.js';

const dir = tempDir();
after(async () => {
  await cleanup();
  removeDir(dir);
});
process.env.XDG_CACHE_HOME = join(dir, 'home');
mkdirSync(process.env.XDG_CACHE_HOME, { mode: 0o700 });
const cacheDir = join(process.env.XDG_CACHE_HOME, 'checkpt', 'compile-cache');
const codeCache = new URL('../../dist/common/code-cache.js', import.meta.url).href;
const { loadWithCodeCache } = await import(codeCache);

const caches = (kind) =>
  readdirSync(cacheDir).filter((n) => n.startsWith(`checkpt-commands-${kind}-`));

/** A CommonJS module whose function `f` (compiled only when called) answers `value`. */
function writeModule(path, value) {
  writeFileSync(
    path,
    `"use strict";\nconst path = require('node:path');\nfunction f() { return ${JSON.stringify(value)} + path.sep; }\nmodule.exports = { f, file: __filename, dir: __dirname };\n`,
  );
}

/**
 * Loads `mod` in a new Node (a process remembers what it compiled: a second load in it would use
 * no cache at all), calls its f(), then save() unless told not to.
 */
function load(mod, kind, save = true) {
  const script = `
    const { loadWithCodeCache } = await import(${JSON.stringify(codeCache)});
    const r = loadWithCodeCache(${JSON.stringify(mod)}, ${JSON.stringify(kind)});
    const out = { fromCache: r.fromCache, value: r.exports.f(), file: r.exports.file, dir: r.exports.dir };
    if (${save}) r.save();
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

unitTest('made after the run, then taken: a CommonJS module as Node loads it', () => {
  const mod = join(dir, 'a.cjs');
  writeModule(mod, 'one');
  assert.deepEqual(load(mod, 'alpha', false), { fromCache: false, value: 'one/', file: mod, dir });
  assert.deepEqual(caches('alpha'), [], 'nothing written before save()');
  load(mod, 'alpha');
  const [file] = caches('alpha');
  assert.equal(statSync(join(cacheDir, file)).mode & 0o777, 0o600);
  const before = readFileSync(join(cacheDir, file));
  const second = load(mod, 'alpha');
  assert.deepEqual([second.fromCache, second.value], [true, 'one/']);
  assert.deepEqual(readFileSync(join(cacheDir, file)), before, 'a cache taken is not rewritten');
});

unitTest(
  'a file changed to the same length finds no cache of the old one (V8 checks only the length)',
  () => {
    const mod = join(dir, 'b.cjs');
    writeModule(mod, 'old');
    load(mod, 'beta');
    assert.equal(load(mod, 'beta').fromCache, true);
    writeModule(mod, 'new');
    const changed = load(mod, 'beta');
    assert.deepEqual([changed.fromCache, changed.value], [false, 'new/']);
    assert.equal(caches('beta').length, 1, "the old file's cache is removed");
  },
);

unitTest(
  'two installs of one command keep a cache each and take it; a month-old cache of another is removed',
  () => {
    const [one, two] = ['one', 'two'].map((d) => {
      mkdirSync(join(dir, d));
      const mod = join(dir, d, 'same.cjs');
      writeModule(mod, d);
      return mod;
    });
    load(one, 'delta');
    load(two, 'delta');
    assert.equal(caches('delta').length, 2);
    // In turn, as two projects' checkpt would run: each finds its own cache.
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(Object.values(load(one, 'delta')).slice(0, 2), [true, 'one/']);
      assert.deepEqual(Object.values(load(two, 'delta')).slice(0, 2), [true, 'two/']);
    }
    const old = join(cacheDir, 'checkpt-commands-delta-00000000-1-2-3-4-5.v8');
    const recent = join(cacheDir, 'checkpt-commands-delta-00000001-1-2-3-4-5.v8');
    for (const f of [old, recent]) writeFileSync(f, 'x', { mode: 0o600 });
    const day = 24 * 3600;
    utimesSync(old, Date.now() / 1000 - 31 * day, Date.now() / 1000 - 31 * day);
    utimesSync(recent, Date.now() / 1000 - day, Date.now() / 1000 - day);
    const three = join(dir, 'three.cjs');
    writeModule(three, 'three');
    load(three, 'delta');
    assert.equal(existsSync(old), false, 'a month-old cache is removed when a cache is written');
    assert.equal(existsSync(recent), true, 'a recent one of another install stays');
    assert.equal(caches('delta').length, 4);
  },
);

unitTest(
  'a damaged cache is refused by V8, the module still runs, and the cache is made again',
  () => {
    const mod = join(dir, 'c.cjs');
    writeModule(mod, 'c');
    load(mod, 'gamma');
    const [file] = caches('gamma');
    const bytes = readFileSync(join(cacheDir, file));
    bytes.fill(0x5a, 16);
    writeFileSync(join(cacheDir, file), bytes);
    const damaged = load(mod, 'gamma');
    assert.deepEqual([damaged.fromCache, damaged.value], [false, 'c/']);
    assert.equal(load(mod, 'gamma').fromCache, true);
  },
);

unitTest('a cache directory others could write: no code cache at all', () => {
  const mod = join(dir, 'd.cjs');
  writeModule(mod, 'd');
  chmodSync(cacheDir, 0o777);
  try {
    assert.equal(loadWithCodeCache(mod, 'delta'), undefined);
  } finally {
    chmodSync(cacheDir, 0o700);
  }
});

unitTest('the command writes its cache once, then runs from it with the same answer', () => {
  const home = join(dir, 'cli-home');
  mkdirSync(home, { mode: 0o700 });
  const env = { ...process.env, XDG_CACHE_HOME: home };
  const where = join(home, 'checkpt', 'compile-cache');
  // A command that fails (no such file) still runs the commands' code, and says why each time.
  const missing = join(dir, 'missing.ckpt');
  const inspect = () =>
    spawnSync(process.execPath, [cli, 'inspect', missing], { env, encoding: 'utf8' });
  const first = inspect();
  assert.equal(first.status, 125, first.stderr);
  assert.match(first.stderr, /missing\.ckpt/);
  const written = readdirSync(where).filter((n) => n.startsWith('checkpt-commands-inspect-'));
  assert.equal(written.length, 1, `one cache for the command: ${readdirSync(where)}`);
  const mtime = statSync(join(where, written[0])).mtimeMs;
  const second = inspect();
  assert.equal(second.status, 125, second.stderr);
  assert.equal(second.stderr, first.stderr);
  assert.equal(statSync(join(where, written[0])).mtimeMs, mtime, 'taken, not made again');
});

unitTest('the packing worker is the bundle; one that failed at once leaves no code cache', () => {
  const home = join(dir, 'worker-home');
  mkdirSync(home, { mode: 0o700 });
  const env = { ...process.env, XDG_CACHE_HOME: home };
  const where = join(home, 'checkpt', 'compile-cache');
  assert.match(dumpWorkerPath, /dist\/bin\/dump-worker\.cjs$/);
  // Without a job it says how it is run, from the bundled code.
  const r = spawnSync(process.execPath, [dumpWorkerPath], { env, encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /usage: dump-worker JOB\.json --go-fd FD[^]*dump-worker-code\.cjs/);
  assert.deepEqual(
    readdirSync(where).filter((n) => n.includes('dump-worker')),
    [],
  );
});

test("a program's checkpoints: the first worker writes its code cache, the later ones take it", async () => {
  const home = join(dir, 'program-home');
  mkdirSync(home, { mode: 0o700 });
  const where = join(home, 'checkpt', 'compile-cache');
  const workerCaches = () =>
    readdirSync(where).filter((n) => n.startsWith('checkpt-commands-dump-worker-'));
  // A program that checkpoints itself twice, then ends; compressed, so that a worker packs each
  // (a plain checkpt() file the program packs itself).
  const twice = async (tag) => {
    const files = [join(dir, `${tag}-1.ckpt`), join(dir, `${tag}-2.ckpt`)];
    const p = start(process.execPath, [fixture('twice.mjs'), ...files], {
      env: { ...process.env, XDG_CACHE_HOME: home, CHECKPT_COMPRESS: '1' },
    });
    await waitFor(p, (e) => e.event === 'done', `${tag}: both checkpoints`);
    assert.deepEqual(await within(p.closed, `${tag}: the program to end`), {
      code: 0,
      signal: null,
    });
    for (const f of files) rmSync(f);
  };
  await twice('first');
  assert.equal(workerCaches().length, 1, `${readdirSync(where)}`);
  const mtime = statSync(join(where, workerCaches()[0])).mtimeMs;
  await twice('again');
  assert.equal(workerCaches().length, 1);
  assert.equal(statSync(join(where, workerCaches()[0])).mtimeMs, mtime, 'taken, not made again');
});
