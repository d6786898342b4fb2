// The package as an application gets it: `npm pack` (prepack builds the prebuilt parts), then
// `npm install --ignore-scripts` of the tarball, offline, into a scratch application that
// checkpoints itself and is resumed; then what it says, and how it recovers, when the prebuilt
// helper is gone.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { cleanup, removeDir, root, start, tempDir, waitFor, test, describe } from '../helpers.mjs';

const PARTS = [
  'checkpt-helper',
  'libcheckpt-nouring.so',
  'checkpt-openssl.node',
  'checkpt-subreaper.node',
  'checkpt-net.node',
  'checkpt-spawn.node',
  'checkpt-blake3.node',
];

const work = tempDir('checkpt-pack-');
const app = join(work, 'app');
const pkg = join(app, 'node_modules', 'checkpt');
after(async () => {
  await cleanup();
  removeDir(work);
});

// A program as an application would write it: checkpt from its own node_modules.
const PROGRAM = `import { checkpt } from 'checkpt';
let n = 41;
try {
  const r = checkpt(process.argv[2]);
  n++;
  console.log(JSON.stringify({ event: 'returned', r, n }));
} catch (e) {
  console.log(JSON.stringify({ event: 'error', code: e.code, message: e.message }));
}
`;

function npm(args, cwd, timeout = 300_000) {
  const r = spawnSync('npm', args, {
    cwd,
    encoding: 'utf8',
    timeout,
    // No registry at all: the tarball has no dependencies, so nothing may be fetched.
    env: { ...process.env, npm_config_cache: join(work, 'npm-cache'), npm_config_offline: 'true' },
  });
  assert.equal(r.status, 0, `npm ${args.join(' ')}: ${r.error ?? ''}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** The program run from the application's directory, to its one line (or a failure). */
async function runProgram(file, env = {}) {
  const p = start(process.execPath, [join(app, 'app.mjs'), file], {
    cwd: app,
    env: { ...process.env, ...env },
  });
  const e = await waitFor(p, (x) => x.event === 'returned' || x.event === 'error', 'its line');
  assert.equal((await p.closed).code, 0, p.stderrText);
  return e;
}

/** Checkpoint then resume through the application's own `checkpt` command. */
async function checkpointAndResume(name) {
  const file = join(work, name);
  const first = await runProgram(file);
  assert.deepEqual(first, { event: 'returned', r: 0, n: 42 });
  const resumed = start(
    process.execPath,
    [join(app, 'node_modules', '.bin', 'checkpt'), '-r', file],
    {
      cwd: app,
    },
  );
  const again = await waitFor(resumed, (x) => x.event === 'returned', 'the resumed copy');
  assert.deepEqual(again, { event: 'returned', r: 1, n: 42 });
  assert.equal((await resumed.closed).code, 0, resumed.stderrText);
}

let listed = [];

describe('npm pack, then npm install --ignore-scripts', () => {
  before(() => {
    // prepack (npm run build, then the prebuilt parts) runs here, as for a publish.
    const out = npm(['pack', '--json', '--pack-destination', work], root);
    const [info] = JSON.parse(out.slice(out.indexOf('[\n  {')));
    listed = info.files.map((f) => f.path);
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), '{ "name": "app", "private": true }\n');
    writeFileSync(join(app, 'app.mjs'), PROGRAM);
    npm(['install', '--ignore-scripts', '--no-audit', '--no-fund', join(work, info.filename)], app);
  });

  test('the tarball ships the prebuilt linux-x64 parts, and no local build', () => {
    for (const part of PARTS) assert.ok(listed.includes(`prebuilt/linux-x64/${part}`), part);
    assert.ok(listed.includes('dist/index.js'));
    // The command as package.json's bin names it: the bundle npm run build makes.
    assert.ok(listed.includes('dist/bin/checkpt.cjs') && listed.includes('dist/bin/commands.cjs'));
    assert.ok(listed.includes('scripts/build-helper.mjs'));
    assert.deepEqual(
      listed.filter((f) => f.startsWith('build/')),
      [],
    );
  });

  test('installed without scripts, the program checkpoints itself and resumes on the prebuilt parts', async () => {
    assert.equal(existsSync(join(pkg, 'build')), false, 'nothing was compiled');
    await checkpointAndResume('prebuilt.ckpt');
  });

  test('the install script compiles nothing where the prebuilt parts work', () => {
    const r = spawnSync(process.execPath, ['scripts/build-helper.mjs', '--install'], {
      cwd: pkg,
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(existsSync(join(pkg, 'build')), false);
  });

  test('with the prebuilt helper gone: the real cause, then checkpt build makes it work', async () => {
    const prebuiltHelper = join(pkg, 'prebuilt', 'linux-x64', 'checkpt-helper');
    renameSync(prebuiltHelper, join(work, 'checkpt-helper.away'));

    const blocked = await runProgram(join(work, 'never.ckpt'));
    assert.equal(blocked.code, 'EHELPER');
    assert.match(blocked.message, /install scripts blocked/);
    assert.match(blocked.message, /Run 'npx checkpt build'/);
    assert.doesNotMatch(blocked.message, /C compiler/, 'cc is installed here');

    const noCc = await runProgram(join(work, 'never.ckpt'), { CC: join(work, 'no-cc') });
    assert.match(noCc.message, /No C compiler: '.*no-cc' is not installed/);

    // The install script, had it run without a compiler: the install goes on, the reason stays.
    const failed = spawnSync(process.execPath, ['scripts/build-helper.mjs', '--install'], {
      cwd: pkg,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, CC: join(work, 'no-cc') },
    });
    assert.equal(failed.status, 0, 'a missing compiler does not fail npm install');
    assert.match(readFileSync(join(pkg, 'build', '.build-failed'), 'utf8'), /no C compiler/);
    const told = await runProgram(join(work, 'never.ckpt'));
    assert.match(told.message, /Compiling it failed: no C compiler: '.*no-cc' is not installed\./);
    assert.equal(existsSync(join(work, 'never.ckpt')), false);

    const built = spawnSync(
      process.execPath,
      [join(app, 'node_modules', '.bin', 'checkpt'), 'build'],
      {
        cwd: app,
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    assert.equal(built.status, 0, built.stdout + built.stderr);
    for (const part of PARTS)
      assert.match(built.stdout, new RegExp(`ok    ${part}: .*/build/${part}`));
    assert.equal(existsSync(join(pkg, 'build', '.build-failed')), false);
    await checkpointAndResume('built.ckpt');
  });
});
