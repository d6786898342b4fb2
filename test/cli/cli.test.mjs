import assert from 'node:assert/strict';
import {
  cleanup,
  cli,
  describe,
  fixture,
  killGroup,
  nodeBinaries,
  pidAlive,
  removeDir,
  resume,
  root,
  spawnSync,
  startNode,
  tempDir,
  test,
  waitFor,
  stopResumeAfter,
} from '../helpers.mjs';
import {
  copyFileSync,
  cpSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  writeSync,
  closeSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

const node = nodeBinaries()[0];
const run = (args, opts = {}) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', ...opts });

describe('checkpt CLI on a real checkpoint', () => {
  let dir;
  let file;
  let original;
  before(async () => {
    dir = tempDir();
    file = join(dir, 'real.ckpt');
    const p = startNode(node, fixture('state.mjs'), [file]);
    original = await waitFor(p, (e) => e.event === 'returned', 'checkpoint');
    await p.closed;
  });
  after(async () => {
    await cleanup();
    removeDir(dir);
  });

  test('inspect prints the manifest for a person', () => {
    const r = run(['inspect', file]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^pid\\s+${original.pid}$`, 'm'));
    assert.match(r.stdout, /^command\s+.*state\.mjs/m);
    assert.match(r.stdout, /^criu\s+4\.\d+/m);
    assert.match(r.stdout, /^node\s+v\d+/m);
  });

  test('inspect --json --verify gives the manifest, entries and a verified checksum', () => {
    const r = run(['inspect', '--json', '--verify', file]);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.verified, true);
    assert.equal(j.formatVersion, 2);
    assert.equal(j.manifest.pid, original.pid);
    assert.equal(j.manifest.generation, 0);
    assert.ok(j.manifest.rssBytes > 0 && j.manifest.imageBytes > 0);
    assert.equal(j.fileSize, statSync(file).size);
    assert.ok(j.entries.some((e) => e.name === 'inventory.img'));
    for (const key of ['createdAt', 'host', 'argv', 'cwd', 'node', 'criu', 'kernel'])
      assert.ok(key in j.manifest, `manifest has ${key}`);
  });

  test('a damaged image is refused before any process starts (exit 125, EBADIMAGE message)', () => {
    const bad = join(dir, 'bad.ckpt');
    copyFileSync(file, bad);
    const fd = openSync(bad, 'r+');
    const b = Buffer.alloc(1);
    const at = Math.floor(statSync(bad).size / 2);
    readSync(fd, b, 0, 1, at);
    b[0] ^= 0xff;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
    const r = run(['-r', bad]);
    assert.equal(r.status, 125);
    assert.match(r.stderr, /damaged|checksum/i);
    assert.doesNotMatch(r.stdout, /returned/, 'nothing ran');
  });

  test('-d resumes in the background and prints the pid of the running copy', async () => {
    const out = join(dir, 'detached.out');
    const fd = openSync(out, 'w');
    // The copy inherits checkpt's stdout, as a shell's background job would.
    const r = spawnSync(process.execPath, [cli, '-r', '-d', file], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    assert.equal(r.status, 0, readFileSync(out, 'utf8'));
    // The copy may print before checkpt does: the pid is the line that is only a number.
    const pid = Number(
      readFileSync(out, 'utf8')
        .split('\n')
        .find((l) => /^\d+$/.test(l)),
    );
    assert.ok(pid > 1, `printed a pid: ${readFileSync(out, 'utf8')}`);
    assert.ok(pidAlive(pid), 'the copy runs after checkpt returned');
    for (let i = 0; i < 200 && pidAlive(pid); i++) await sleep(50);
    assert.equal(pidAlive(pid), false, 'the detached copy ran to its end');
    assert.match(readFileSync(out, 'utf8'), /"event":"returned","r":1/);
  });
});

describe('checkpt -r stopped while it restores', () => {
  test('SIGTERM at any moment of a restore leaves no unpacked images behind', async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'stop.ckpt');
      const p = startNode(node, fixture('state.mjs'), [file]);
      await waitFor(p, (e) => e.event === 'returned', 'checkpoint');
      await p.closed;
      const staging = join(dir, 'staging');
      mkdirSync(staging);
      // Stop it at several points: while unpacking, while CRIU restores, as the copy wakes up.
      for (const delay of [0, 50, 150, 300, 600]) {
        const r = resume(file, { env: { ...process.env, CHECKPT_TMPDIR: staging } });
        await stopResumeAfter(r, staging, delay);
        assert.deepEqual(readdirSync(staging), [], `after ${delay} ms`);
      }
    } finally {
      await cleanup();
      removeDir(dir);
    }
  });

  test('SIGTERM the moment the copy wakes up reaches it: checkpt -r and the copy end, every time', async () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'wake.ckpt');
      const p = startNode(node, fixture('requests.mjs'), ['--handler', 'count', '--checkpoint'], {
        env: { ...process.env, CHECKPT_FILE: file },
      });
      await waitFor(p, (e) => e.event === 'ready', 'ready');
      process.kill(p.pid, 'SIGSTKFLT');
      await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
      killGroup(p);
      // The copy prints as checkpt -r learns that the restore is done: a SIGTERM sent then was
      // once lost between the restore's handler and the relay, and both ran on for good.
      for (let i = 0; i < 6; i++) {
        const r = resume(file);
        const by = Date.now() + 60_000;
        while (!r.lines.some((l) => l.includes('"checkpointed"'))) {
          assert.ok(Date.now() < by, `the copy never woke up: ${r.stderrText}`);
          assert.equal(r.exitCode, null, r.stderrText);
          await sleep(1);
        }
        r.kill('SIGTERM');
        assert.deepEqual(await r.closed, { code: null, signal: 'SIGTERM' }, `resume ${i}`);
      }
    } finally {
      await cleanup();
      removeDir(dir);
    }
  });
});

// Pure argument and file handling, apart from `check`, which looks at the machine's CRIU.
describe('checkpt CLI errors', { unit: true }, () => {
  test('usage errors exit 2 with a hint', () => {
    for (const args of [
      ['-r'],
      ['frobnicate'],
      ['inspect'],
      ['restore', 'a', 'b'],
      ['inspect', '--bogus', 'x'],
    ]) {
      const r = run(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^checkpt: /);
    }
  });

  // checkpt -r refuses anyone but root before it looks at the file.
  test("a missing file, and another tool's file, are reported clearly", { unit: false }, () => {
    const dir = tempDir();
    try {
      const r = run(['-r', join(dir, 'nope.ckpt')]);
      assert.equal(r.status, 125);
      assert.match(r.stderr, /nope\.ckpt/);
      const other = join(dir, 'other.ckpt');
      writeFileSync(other, 'just some text\n');
      const i = run(['inspect', other]);
      assert.equal(i.status, 125);
      assert.match(i.stderr, /not a checkpt file/i);
    } finally {
      removeDir(dir);
    }
  });

  test('--help and --version', () => {
    assert.match(run(['--help']).stdout, /checkpt -r FILE/);
    assert.match(run(['--version']).stdout, /^checkpt \d+\.\d+\.\d+/);
  });

  test(
    'check reports which CRIU, whether TCP and network locking work, and each Node binary, one line per finding',
    { unit: false },
    () => {
      const r = run(['check', '--json', ...nodeBinaries().flatMap((n) => ['--node', n.bin])]);
      const j = JSON.parse(r.stdout);
      assert.equal(r.status, j.ok ? 0 : 1);
      const criu = j.findings.find((f) => f.name === 'criu');
      assert.equal(criu.ok, true, criu.detail);
      // Which CRIU, where it is and where it came from.
      assert.match(
        criu.detail,
        /^CRIU 4\.\d+\S* at \/\S+ \((checkpt's own build|found on the PATH|from CHECKPT_CRIU); need 4\.2 or newer\)$/,
      );
      for (const name of ['network lock', 'tcp', 'lazy restore']) {
        const f = j.findings.find((x) => x.name === name);
        assert.ok(f, `a finding for ${name}`);
        assert.equal(f.ok && !f.warning, true, `${name}: ${f.detail}`);
      }
      // The native parts: where each one that works is, and whether it was compiled here.
      for (const [name, part] of [
        ['helper', 'checkpt-helper'],
        ['io_uring blocker', 'libcheckpt-nouring.so'],
        ['openssl addon', 'checkpt-openssl.node'],
        ['blake3 addon', 'checkpt-blake3.node'],
      ]) {
        const f = j.findings.find((x) => x.name === name);
        assert.equal(f?.ok && !f.warning, true, `${name}: ${f?.detail}`);
        assert.match(
          f.detail,
          new RegExp(`at ${root}/build/${part.replace('.', '\\.')} \\(compiled here\\)$`),
        );
      }
      for (const n of nodeBinaries()) {
        const f = j.findings.find((x) => x.name.startsWith(`node v${n.major}.`));
        assert.ok(f, `a finding for node ${n.major}`);
        if (n.major >= 22) assert.match(f.fix ?? f.detail, /checkpt exec|io_uring/);
      }
    },
  );
});

test('--version is the version in package.json, not one written into the CLI', () => {
  const pkg = tempDir();
  try {
    cpSync(join(root, 'dist'), join(pkg, 'dist'), { recursive: true });
    writeFileSync(
      join(pkg, 'package.json'),
      JSON.stringify({ name: 'checkpt', version: '9.8.7-test', type: 'module' }),
    );
    const r = spawnSync(process.execPath, [join(pkg, 'dist', 'bin', 'checkpt.cjs'), '--version'], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'checkpt 9.8.7-test\n');
    const own = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
    assert.equal(run(['--version']).stdout, `checkpt ${own}\n`);
  } finally {
    removeDir(pkg);
  }
});

describe('checkpt check with a CRIU that will not do', () => {
  /** A stand-in criu: `--version` prints `version`; `check --feature F` fails for F in `missing`. */
  function standIn(dir, version, missing = []) {
    const path = join(dir, 'criu');
    writeFileSync(
      path,
      `#!/bin/sh
[ "$1" = --version ] && { echo "Version: ${version}"; exit 0; }
if [ "$1" = check ] && [ "$2" = --feature ]; then
  case " ${missing.join(' ')} " in *" $3 "*) echo "$3 is not supported"; exit 1 ;; esac
fi
exec "$CHECKPT_REAL_CRIU" "$@"
`,
      { mode: 0o755 },
    );
    return path;
  }

  test('CRIU 4.1 is too old: need 4.2, found 4.1.1, and how to get a newer one', () => {
    const dir = tempDir();
    try {
      const r = run(['check', '--json'], {
        env: { ...process.env, CHECKPT_CRIU: standIn(dir, '4.1.1') },
      });
      assert.equal(r.status, 1);
      const criu = JSON.parse(r.stdout).findings.find((f) => f.name === 'criu');
      assert.equal(criu.ok, false);
      assert.match(criu.detail, /need 4\.2 or newer, found 4\.1\.1/);
      assert.match(criu.fix, /scripts\/install-criu\.sh/);
    } finally {
      removeDir(dir);
    }
  });

  test('no nftables network locking: a warning that connections are closed instead, and the fix', () => {
    const dir = tempDir();
    try {
      const criu = standIn(dir, '4.2.1', ['network_lock_nftables']);
      const r = run(['check', '--json'], { env: { ...process.env, CHECKPT_CRIU: criu } });
      const j = JSON.parse(r.stdout);
      const lock = j.findings.find((f) => f.name === 'network lock');
      assert.equal(lock.warning, true, lock.detail);
      assert.match(lock.detail, /cannot lock the network/);
      assert.match(lock.fix, /nf_tables/);
    } finally {
      removeDir(dir);
    }
  });
});
