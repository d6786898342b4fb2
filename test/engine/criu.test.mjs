// The command line of each CRIU verb and of the dump front, as built in src/engine/criu.ts and
// src/engine/helper.ts: pure logic, no CRIU run.
import { unitTest as test } from '../helpers.mjs';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after } from 'node:test';
import {
  argvOf,
  checkCommand,
  dumpCommand,
  killedBy,
  lazyPagesCommand,
  ownBuildHas,
  restoreCommand,
  shellStatus,
  versionCommand,
} from '../../dist/engine/criu.js';
import { dumpFrontCommand } from '../../dist/engine/helper.js';
import { criuPath, dumpWorkerPath } from '../../dist/engine/paths.js';
import { helperPath as helperPathOf } from '../../dist/engine/native.js';

const helperPath = helperPathOf();
const criuModule = new URL('../../dist/engine/criu.js', import.meta.url).href;

const debug = process.env.CHECKPT_DEBUG;
after(() => {
  if (debug === undefined) delete process.env.CHECKPT_DEBUG;
  else process.env.CHECKPT_DEBUG = debug;
});
delete process.env.CHECKPT_DEBUG;

const logged = (log) => ['-D', '/i', '-W', '/w', '-o', log, '-v2'];

test('dump: images, work dir, log, then what checkpt always asks for', () => {
  const c = dumpCommand({ pid: 42, imagesDir: '/i', workDir: '/w' });
  assert.equal(c.file, criuPath);
  assert.deepEqual(c.args, [
    'dump',
    ...logged('dump.log'),
    '-t',
    '42',
    '--leave-running',
    '--shell-job',
    '--file-locks',
    '--skip-in-flight',
    '--tcp-established',
    '--network-lock',
    'nftables',
  ]);
  const fault =
    process.env.CRIU_FAULT ?? (process.env.CHECKPT_CRIU_BREAKPOINTS === '1' ? undefined : '130');
  assert.equal(c.env.CRIU_FAULT, fault, 'single-stepping instead of breakpoints');
  assert.equal(c.env.CHECKPT_POST_DUMP_SOCK, undefined);
});

test('dump from outside a checkpoint-and-exit: nsenter, stopped, closed TCP, post-dump script', () => {
  const c = dumpCommand({
    pid: 7,
    imagesDir: '/i',
    workDir: '/w',
    enter: 900,
    leave: 'stopped',
    tcp: 'close',
    externalUnix: [11, 12],
    postDump: { sock: '/w/post-dump.sock', timeoutMs: 5000 },
  });
  assert.equal(c.file, 'nsenter');
  assert.deepEqual(c.args, [
    '-t',
    '900',
    '-p',
    '-m',
    '--',
    criuPath,
    'dump',
    ...logged('dump.log'),
    '-t',
    '7',
    '--leave-stopped',
    '--shell-job',
    '--file-locks',
    '--skip-in-flight',
    '--tcp-close',
    '--network-lock',
    'skip',
    '--external',
    'unix[11]',
    '--external',
    'unix[12]',
    '--action-script',
    helperPath,
  ]);
  assert.equal(c.env.CHECKPT_POST_DUMP_SOCK, '/w/post-dump.sock');
  assert.equal(c.env.CHECKPT_POST_DUMP_TIMEOUT_MS, '5000');
});

test("the front's dump: no action script (the front answers CRIU's notifications itself)", () => {
  const c = dumpCommand({ pid: 3, imagesDir: '/i', workDir: '/w', leave: 'stopped' });
  assert.ok(!c.args.includes('--action-script'));
  assert.equal(c.env.CHECKPT_POST_DUMP_SOCK, undefined);
});

test('restore: detached, inherited fds, lazy pages and closed TCP when asked', () => {
  assert.deepEqual(restoreCommand({ imagesDir: '/i', workDir: '/w', inherit: [] }).args, [
    'restore',
    ...logged('restore.log'),
    '--restore-detached',
    '--shell-job',
    '--file-locks',
    '--tcp-established',
  ]);
  const c = restoreCommand({
    imagesDir: '/i',
    workDir: '/w',
    inherit: [
      { fd: 4, key: 'pipe:[77]' },
      { fd: 1, key: 'var/log/a b.log' },
    ],
    lazy: true,
    tcpClose: true,
  });
  assert.equal(c.file, criuPath);
  assert.deepEqual(c.args, [
    'restore',
    ...logged('restore.log'),
    '--restore-detached',
    '--shell-job',
    '--file-locks',
    '--tcp-close',
    '--lazy-pages',
    '--inherit-fd',
    'fd[4]:pipe:[77]',
    '--inherit-fd',
    'fd[1]:var/log/a b.log',
  ]);
  assert.deepEqual(argvOf(c), [criuPath, ...c.args]);
});

test('lazy-pages: dies with checkpt, says on fd 3 when it listens, logs at the level asked', () => {
  const daemon = ['lazy-pages', ...logged('lazy-pages.log'), '--status-fd', '3'];
  const c = lazyPagesCommand('/i', '/w');
  if (ownBuildHas('pdeathsig-from-env.patch')) {
    // checkpt's CRIU is told its parent and dies with it itself: no setpriv in front.
    assert.equal(c.file, criuPath);
    assert.deepEqual(c.args, daemon);
    assert.equal(c.env.CHECKPT_CRIU_PDEATHSIG, String(process.pid));
  } else {
    assert.equal(c.file, 'setpriv');
    assert.equal(c.env.CHECKPT_CRIU_PDEATHSIG, undefined);
  }
  // Another CRIU (here the same binary named by CHECKPT_CRIU): setpriv makes it die with checkpt.
  const script = `import(${JSON.stringify(criuModule)}).then((m) => console.log(JSON.stringify(m.lazyPagesCommand('/i', '/w'))))`;
  const other = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    env: { ...process.env, CHECKPT_CRIU: criuPath },
  });
  const o = JSON.parse(other.stdout || 'null');
  assert.ok(o, other.stderr);
  assert.equal(o.file, 'setpriv');
  assert.deepEqual(o.args, ['--pdeathsig', 'KILL', '--', criuPath, ...daemon]);
  assert.equal(o.env.CHECKPT_CRIU_PDEATHSIG, undefined);
  // Served memory: the connected socket on fd 4, no address or port to connect to.
  const served = lazyPagesCommand('/i', '/w', true).args;
  assert.deepEqual(served.slice(-5), ['--status-fd', '3', '--page-server', '--ps-socket', '4']);
  assert.ok(!served.some((a) => a === '--address' || a === '--port'));
  process.env.CHECKPT_DEBUG = '1';
  try {
    assert.ok(lazyPagesCommand('/i', '/w').args.includes('-v4'), 'CHECKPT_DEBUG logs everything');
    assert.ok(dumpCommand({ pid: 1, imagesDir: '/i', workDir: '/w' }).args.includes('-v4'));
    assert.ok(restoreCommand({ imagesDir: '/i', workDir: '/w', inherit: [] }).args.includes('-v4'));
  } finally {
    delete process.env.CHECKPT_DEBUG;
  }
});

test('check and version: the bare verbs, no log file', () => {
  assert.deepEqual(argvOf(checkCommand()), [criuPath, 'check']);
  assert.deepEqual(argvOf(checkCommand('network_lock_nftables')), [
    criuPath,
    'check',
    '--feature',
    'network_lock_nftables',
  ]);
  assert.deepEqual(argvOf(versionCommand()), [criuPath, '--version']);
});

test("the dump front: the helper, the worker, then criu dump's own command line", () => {
  const job = {
    pid: 1234,
    workDir: '/w',
    timeoutMs: 3000,
    manifest: {
      stdio: [{ fd: 1, kind: 'socket', link: 'socket:[9]', key: 'socket:[9]', inode: 9 }],
    },
  };
  const sync = dumpFrontCommand(job, '/w/job.json', '/run/checkpt/x/ctl', 'sync');
  const criu = dumpCommand({ pid: 1234, imagesDir: '/w/images', workDir: '/w', externalUnix: [9] });
  assert.equal(sync.file, helperPath);
  assert.deepEqual(sync.args, [
    'dump',
    '--pid',
    '1234',
    '--fifo',
    '/run/checkpt/x/ctl',
    '--timeout-ms',
    '3000',
    '--worker',
    process.execPath,
    dumpWorkerPath,
    '/w/job.json',
    '--',
    ...argvOf(criu),
  ]);
  assert.equal(sync.env.NODE_OPTIONS, '', "the worker gets none of the program's Node options");

  // A program that packs its own file: no worker; the front is told what to remove if it dies.
  const here = dumpFrontCommand(
    { ...job, tmp: '/t/.a.ckpt.tmp-1' },
    '/w/job.json',
    '/f',
    'sync',
    'program',
  );
  assert.ok(!here.args.includes('--worker'));
  assert.deepEqual(here.args.slice(7, 11), ['--work-dir', '/w', '--tmp', '/t/.a.ckpt.tmp-1']);
  assert.deepEqual(here.args.slice(here.args.indexOf('--') + 1), argvOf(criu));

  const async = dumpFrontCommand(job, '/w/job.json', '/f', 'async');
  assert.deepEqual(async.args.slice(7, 8), ['--async']);
  assert.deepEqual(async.args.slice(async.args.indexOf('--') + 1), argvOf(criu));

  // Exiting: stopped, the front asks for the file at post-dump, and its limit allows for packing.
  const exit = dumpFrontCommand({ ...job, exit: true }, '/w/job.json', '/f', 'sync');
  assert.equal(exit.args[exit.args.indexOf('--timeout-ms') + 1], '6000');
  assert.ok(exit.args.includes('--leave-stopped'));
  assert.ok(!exit.args.includes('--action-script'));
  const sock = exit.args.indexOf('--post-dump-sock');
  assert.deepEqual(exit.args.slice(sock, sock + 4), [
    '--post-dump-sock',
    '/w/post-dump.sock',
    '--post-dump-timeout-ms',
    '3000',
  ]);
  assert.ok(sock < exit.args.indexOf('--'), "the front's own options, not CRIU's");
  assert.equal(exit.env.CHECKPT_POST_DUMP_SOCK, undefined);

  const closed = { ...job, manifest: { ...job.manifest, tcp: 'closed' } };
  assert.ok(dumpFrontCommand(closed, '/j', '/f', 'sync').args.includes('--tcp-close'));
});

/** A CRIU home of checkpt's build for one test: bin/criu holding `content`, BUILD-INFO's path. */
async function fakeCriuHome(t, content) {
  const { mkdtempSync, mkdirSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const home = mkdtempSync(join(tmpdir(), 'checkpt-test-criu-home-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  mkdirSync(join(home, 'bin'));
  const bin = join(home, 'bin', 'criu');
  writeFileSync(bin, content);
  return { home, bin, info: join(home, 'BUILD-INFO') };
}

test("ownBuildHas: a patch listed in checkpt's own build's record, only for that binary", async (t) => {
  const { writeFileSync } = await import('node:fs');
  const { binaryIdentity } = await import('../../dist/engine/criu.js');
  const { home, bin, info } = await fakeCriuHome(t, 'x');
  writeFileSync(
    info,
    `version=4.2.1\npatches=a.patch pdeathsig-from-env.patch\nbinary=${binaryIdentity(bin)}\n`,
  );
  assert.equal(ownBuildHas('pdeathsig-from-env.patch', home, bin, 'checkpt build'), true);
  assert.equal(ownBuildHas('a.patch', home, bin, 'checkpt build'), true);
  assert.equal(ownBuildHas('pdeathsig', home, bin, 'checkpt build'), false, 'whole names only');
  assert.equal(ownBuildHas('other.patch', home, bin, 'checkpt build'), false);
  // Another CRIU runs, or checkpt's was replaced since: its record says nothing about it.
  assert.equal(ownBuildHas('a.patch', home, bin, 'CHECKPT_CRIU'), false);
  writeFileSync(bin, 'changed');
  assert.equal(ownBuildHas('a.patch', home, bin, 'checkpt build'), false);
});

test("the recorded version: read from checkpt's own build, not when the binary changed since", async (t) => {
  const { recordedVersion } = await import('../../dist/engine/criu.js');
  const { writeFileSync, utimesSync, statSync, renameSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { home, bin, info } = await fakeCriuHome(t, '');
  writeFileSync(info, 'version=4.2.1\nrecipe=2\n');
  assert.deepEqual(recordedVersion(home, bin, 'checkpt build'), {
    major: 4,
    minor: 2,
    patch: 1,
    text: '4.2.1',
  });
  // Another CRIU runs (CHECKPT_CRIU, the PATH's): its own answer counts.
  assert.equal(recordedVersion(home, bin, 'CHECKPT_CRIU'), undefined);
  assert.equal(recordedVersion(home, bin, 'PATH'), undefined);
  // The binary replaced after the record was written: asked again.
  const past = new Date(Date.now() - 60_000);
  utimesSync(info, past, past);
  writeFileSync(bin, 'x');
  assert.equal(recordedVersion(home, bin, 'checkpt build'), undefined);
  // An older CRIU recorded: refused with the version found, as CRIU's own answer would be.
  writeFileSync(info, 'version=4.1.1\n');
  assert.throws(() => recordedVersion(home, bin, 'checkpt build'), {
    code: 'ENOCRIU',
    message: /need 4\.2 or newer, found 4\.1\.1/,
  });
  // The binary named by inode, size and mtime (install-criu.sh records it): a hard link made
  // since (perf's build-id cache makes one) changes its ctime, not what it is.
  const { binaryIdentity } = await import('../../dist/engine/criu.js');
  const { linkSync } = await import('node:fs');
  writeFileSync(info, `version=4.2.1\nbinary=${binaryIdentity(bin)}\n`);
  utimesSync(info, past, past);
  linkSync(bin, join(home, 'criu-link'));
  assert.equal(recordedVersion(home, bin, 'checkpt build')?.text, '4.2.1');
  // Copied over (same inode, new size and mtime), or another file put in its place: asked.
  writeFileSync(bin, 'xy');
  assert.equal(recordedVersion(home, bin, 'checkpt build'), undefined);
  writeFileSync(info, `version=4.2.1\nbinary=${binaryIdentity(bin)}\n`);
  assert.equal(recordedVersion(home, bin, 'checkpt build')?.text, '4.2.1');
  const other = join(home, 'criu-other');
  writeFileSync(other, 'xy');
  utimesSync(other, statSync(bin).atime, statSync(bin).mtime);
  renameSync(other, bin);
  assert.equal(recordedVersion(home, bin, 'checkpt build'), undefined);
  // No record, or one without a version: asked.
  writeFileSync(info, 'recipe=2\n');
  assert.equal(recordedVersion(home, bin, 'checkpt build'), undefined);
  rmSync(info);
  assert.equal(recordedVersion(home, bin, 'checkpt build'), undefined);
});

test("a CRIU killed through nsenter (which re-raises its signal) is reported by the signal's name", () => {
  assert.equal(shellStatus({ status: null, signal: 'SIGKILL' }), 137);
  assert.equal(shellStatus({ status: 1, signal: null }), 1);
  assert.equal(
    killedBy(shellStatus({ status: null, signal: 'SIGKILL' })),
    'CRIU was killed by SIGKILL before it finished',
  );
  assert.equal(killedBy(shellStatus({ status: 1, signal: null })), undefined);
});

test('a dump with a run id gives it to CRIU (CHECKPT_CRIU_RUN_ID), one without gives none', () => {
  const base = { pid: 42, imagesDir: '/tmp/i', workDir: '/tmp/w' };
  const id = '68f32715-77ff-4939-9987-9b2d9b70ce5c';
  assert.equal(dumpCommand({ ...base, runId: id }).env.CHECKPT_CRIU_RUN_ID, id);
  assert.equal(dumpCommand(base).env.CHECKPT_CRIU_RUN_ID, undefined);
});

test('a dump interrupted only after the front held off: ETIMEOUT says what held the program', async (t) => {
  const { checkDump } = await import('../../dist/engine/criu.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'checkpt-test-dump-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const held =
    "checkpt: CRIU still held the program 10000 ms past the checkpoint's deadline (pid 42 maps CRIU's parasite (CRIUMFD)); interrupted anyway\n";
  assert.throws(() => checkDump(null, true, dir, 2000, held), {
    code: 'ETIMEOUT',
    message:
      /within 2 s .*\(CRIU still held the program 10000 ms past .*pid 42 maps CRIU's parasite/,
  });
  // An ordinary timeout says nothing of it.
  assert.throws(
    () => checkDump(null, true, dir, 2000, ''),
    (e) => {
      assert.equal(e.code, 'ETIMEOUT');
      assert.doesNotMatch(e.message, /still held/);
      return true;
    },
  );
});

test("the front's words: a process of the program's that died in CRIU's hands is EDUMP naming it, not a timeout", async (t) => {
  const { frontEnd, checkFront } = await import('../../dist/engine/dump-end.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const job = { pid: 42, timeoutMs: 2000 };
  assert.deepEqual(frontEnd('died 4242 1375\n', job), {
    status: null,
    timedOut: false,
    ms: 1375,
    died: 4242,
  });
  assert.deepEqual(frontEnd('timeout 2000', job), { status: null, timedOut: true, ms: 2000 });
  assert.deepEqual(frontEnd('criu 0 80', job), { status: 0, timedOut: false, ms: 80 });
  // A word the front never says is the front's failure, whatever follows it.
  assert.throws(() => frontEnd('died soon', job), { code: 'EHELPER' });
  const workDir = mkdtempSync(join(tmpdir(), 'checkpt-test-dump-'));
  t.after(() => rmSync(workDir, { recursive: true, force: true }));
  assert.throws(() => checkFront({ ...job, workDir }, frontEnd('died 4242 1375', job)), {
    code: 'EDUMP',
    message: /^Process 4242, one of the program's own, died while CRIU .*keeps running/,
  });
  // A dump from outside says it on stderr, and was stopped as at the deadline: still not ETIMEOUT.
  const { checkDump } = await import('../../dist/engine/criu.js');
  const said =
    'checkpt: process 77 of the program died while CRIU checkpointed it, and CRIU held on to it for 1000 ms: stopping the checkpoint\n';
  assert.throws(() => checkDump(null, true, workDir, 120_000, said), {
    code: 'EDUMP',
    message: /^Process 77, one of the program's own, died/,
  });
});
