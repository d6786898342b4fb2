// `checkpt -r FILE` run as a command: the native resume front (native/resume-front.c) restores the
// copy before Node starts and hands it over; whatever it does not handle goes to Node, which
// resumes as always. Real programs, real CRIU; the trace (CHECKPT_BENCH_TRACE) tells which way a
// resume went: the front writes `front`, Node's own resume `extract`, the adoption `adopt`.
import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { spawnSync } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { readImageInfo } from '../../dist/image/format.js';
import { cmdline, processTree, signalQuietly } from '../../dist/common/procfs.js';
import { VARIABLES } from '../../dist/common/config.js';
import {
  cleanup,
  cli,
  descendants,
  ended,
  fixture,
  freePort,
  killGroup,
  nodeBinaries,
  programPid,
  removeDir,
  root,
  start,
  startNode,
  tempDir,
  test,
  unitTest,
  waitFor,
  within,
} from '../helpers.mjs';
import { hasTmux, terminal } from '../tmux.mjs';

const dir = tempDir();
const tty = terminal(dir);
after(async () => {
  tty.close();
  await cleanup();
  removeDir(dir);
});

/** The command as a shell runs it: the file itself, with this Node first on the PATH. */
function resumeCommand(file, trace, env = {}, prefix = []) {
  const [command, ...args] = [...prefix, cli, '-r', file];
  return start(command, args, {
    env: {
      ...process.env,
      PATH: `${dirname(process.execPath)}:${process.env.PATH}`,
      CHECKPT_BENCH_TRACE: trace,
      ...env,
    },
  });
}

/** The marks once `step` is among them (Node may start after the copy answers: it waits). */
async function marksBy(trace, step) {
  for (const end = Date.now() + 20_000; Date.now() < end; await sleep(20))
    if (marks(trace).includes(step)) break;
  return marks(trace);
}

const marks = (trace) =>
  existsSync(trace)
    ? readFileSync(trace, 'utf8')
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[0])
    : [];

/** One HTTP request: its status and body. */
function request(port, path = '/', method = 'GET') {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const get = async (port) => JSON.parse((await request(port)).body);

/** A server checkpointed by itself (checkpt()), then killed: the file and its port. */
async function checkpointed(name, args = []) {
  const port = await freePort();
  const file = join(dir, `${name}.ckpt`);
  const p = startNode(nodeBinaries()[0], fixture('server.mjs'), [
    String(port),
    file,
    '--sync',
    ...args,
  ]);
  await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
  const r = await request(port, '/checkpoint', 'POST');
  assert.equal(r.status, 202);
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  killGroup(p);
  await p.closed;
  return { file, port };
}

/** Resolves once `port` answers, or fails naming what the resume said. */
async function answers(port, copy) {
  for (const end = Date.now() + 30_000; Date.now() < end; await sleep(20)) {
    if (copy.exitCode !== null || copy.signalCode !== null)
      throw new Error(`checkpt -r ended (${copy.exitCode ?? copy.signalCode}): ${copy.stderrText}`);
    try {
      return await get(port);
    } catch {
      // not yet
    }
  }
  throw new Error(`no answer on ${port} within 30 s: ${copy.stderrText}`);
}

const stagingLeft = (pid) =>
  ['/dev/shm', '/tmp'].flatMap((d) =>
    readdirSync(d).filter((n) => n.startsWith(`checkpt-restore-${pid}.`)),
  );

/** Once `copy` (checkpt -r) has ended: no process left below it, no staging directory of its. */
async function nothingStays(copy) {
  for (const end = Date.now() + 5000; descendants(copy.pid).length && Date.now() < end;)
    await sleep(50);
  assert.deepEqual(descendants(copy.pid), []);
  for (const end = Date.now() + 5000; stagingLeft(copy.pid).length && Date.now() < end;)
    await sleep(50);
  assert.deepEqual(stagingLeft(copy.pid), []);
}

test('the front restores a small server before Node starts; Node watches it, passes a signal on and exits as it did', async () => {
  const { file, port } = await checkpointed('small');
  const { manifest } = await readImageInfo(file, { allowPlain: true });
  assert.match(manifest.front, /^v1 pid=\d+ gen=0 tcp=est mount=\S+ fifo=\S+ .*listen=\d+/);
  const trace = join(dir, 'small.trace');
  const copy = resumeCommand(file, trace);
  const state = await answers(port, copy);
  assert.equal(state.gen, 1, 'the copy knows it was restored');
  await waitFor(copy, (e) => e.event === 'checkpointed' && e.r === 1, 'checkpt() returning 1');
  const m = await marksBy(trace, 'adopt');
  for (const step of ['front', 'extracted', 'helper', 'status-restored', 'adopt'])
    assert.ok(m.includes(step), `${step} in ${m}`);
  assert.ok(!m.includes('extract'), `Node unpacked nothing itself: ${m}`);
  // Handed over: SIGTERM to checkpt goes to the program, and checkpt ends as it did.
  copy.kill('SIGTERM');
  const end = await copy.closed;
  assert.equal(end.signal ?? end.code, end.signal ? 'SIGTERM' : 143, JSON.stringify(end));
  assert.deepEqual(descendants(copy.pid), []);
  for (const end = Date.now() + 5000; stagingLeft(copy.pid).length && Date.now() < end;)
    await sleep(50);
  assert.deepEqual(stagingLeft(copy.pid), [], 'the keeper removed the staging directory');
});

test('the front sweeps the staging that killed resumes left, and nothing else', async () => {
  const { file, port } = await checkpointed('sweep');
  const ns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))[1];
  const gone = spawnSync('true').pid; // a pid that no longer runs
  const orphan = join('/dev/shm', `checkpt-restore-${gone}.${ns}-test`);
  const owned = join('/dev/shm', `checkpt-restore-${process.pid}.${ns}-test`);
  const link = join('/dev/shm', `checkpt-restore-${gone}.${ns}-link`);
  const keep = join(dir, 'keep');
  for (const d of [orphan, owned, keep]) {
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, 'x.img'), 'x');
  }
  symlinkSync(keep, link);
  const copy = resumeCommand(file, join(dir, 'sweep.trace'));
  try {
    assert.equal((await answers(port, copy)).gen, 1);
    assert.ok((await marksBy(join(dir, 'sweep.trace'), 'adopt')).includes('adopt'));
    assert.ok(!existsSync(orphan), "the dead resume's directory is gone");
    assert.ok(existsSync(join(owned, 'x.img')), "a running owner's directory stays");
    assert.ok(existsSync(join(keep, 'x.img')), 'a link is not followed');
  } finally {
    copy.kill('SIGTERM');
    await copy.closed;
    for (const p of [orphan, owned, link]) rmSync(p, { recursive: true, force: true });
  }
});

test('a lazy resume (48 MiB) through the front: the copy answers, and its memory all arrives', async () => {
  const { file, port } = await checkpointed('lazy', ['--mb', '48']);
  const trace = join(dir, 'lazy.trace');
  const copy = resumeCommand(file, trace);
  const state = await answers(port, copy);
  assert.deepEqual([state.gen, state.mb], [1, 48]);
  const { manifest } = await readImageInfo(file, { allowPlain: true });
  assert.ok(manifest.imageBytes > 48 * 2 ** 20, `${manifest.imageBytes} bytes: a lazy resume`);
  assert.ok((await marksBy(trace, 'adopt')).includes('adopt'), String(marks(trace)));
  // The keeper reports once the daemon put every page in: the staging directory goes then.
  for (const end = Date.now() + 30_000; stagingLeft(copy.pid).length && Date.now() < end;)
    await sleep(50);
  assert.deepEqual(stagingLeft(copy.pid), []);
  assert.equal((await get(port)).gen, 1);
  copy.kill('SIGTERM');
  await copy.closed;
});

test('a lazy resume of thousands of separate runs of memory, read in a shuffled order: every page is right', async () => {
  // Each page the copy touches is found among the image's page map entries (uffd-seek-index.patch
  // in checkpt's CRIU build): a page from the wrong place, or a hole that is not zero, counts.
  const port = await freePort();
  const file = join(dir, 'sparse.ckpt');
  const p = startNode(nodeBinaries()[0], fixture('server.mjs'), [
    String(port),
    file,
    '--sync',
    '--sparse',
    '96',
  ]);
  await waitFor(p, (e) => e.event === 'listening', 'the server to listen');
  const before = JSON.parse((await request(port, '/sparse')).body);
  assert.deepEqual(before, { pages: 96 * 256, bad: 0 }, 'the original reads its own pages back');
  assert.equal((await request(port, '/checkpoint', 'POST')).status, 202);
  await waitFor(p, (e) => e.event === 'checkpointed' && e.r === 0, 'the checkpoint');
  killGroup(p);
  await p.closed;
  const { manifest } = await readImageInfo(file, { allowPlain: true });
  assert.ok(manifest.imageBytes > 32 * 2 ** 20, `${manifest.imageBytes} bytes: a lazy resume`);
  const trace = join(dir, 'sparse.trace');
  const copy = resumeCommand(file, trace);
  try {
    assert.equal((await answers(port, copy)).gen, 1);
    assert.deepEqual(JSON.parse((await request(port, '/sparse')).body), before);
    assert.ok((await marksBy(trace, 'adopt')).includes('front'), String(marks(trace)));
  } finally {
    copy.kill('SIGTERM');
    await copy.closed;
  }
});

/** /proc/PID/stat's fields after the name: [state, ppid, pgrp, session, ...]. */
const statOf = (pid) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');

/** A detached copy and the helper's inits above it, up to the one whose parent is pid 1. */
function detachedTree(pid) {
  const tree = [pid];
  for (let p = Number(statOf(pid)[1]); p > 1 && tree.length < 4; p = Number(statOf(p)[1]))
    tree.push(p);
  return tree;
}

/** Kills, by pid, what a detached resume left running, and waits until it is gone. */
async function stopDetached(tree) {
  for (const p of tree) signalQuietly(p, 'SIGKILL');
  for (const end = Date.now() + 10_000; tree.some((p) => !ended(p)); await sleep(20))
    assert.ok(Date.now() < end, `still running: ${tree.filter((p) => !ended(p))}`);
}

const printedPid = (text) => Number(text.split('\n').find((l) => /^\d+$/.test(l)));

test('a lazy resume of a heap of thousands of mappings (each mapped in place by the restorer): every string is right', async () => {
  // vma-lazy-in-place.patch: CRIU's restorer maps each lazy-only mapping where it belongs and
  // registers it with userfaultfd there, instead of premapping and moving it.
  const { file, port } = await checkpointed('heap', ['--heap', '64']);
  const copy = resumeCommand(file, join(dir, 'heap.trace'));
  try {
    assert.equal((await answers(port, copy)).gen, 1);
    // The copy's pid here (it has its old one in its own PID namespace).
    const pid = await programPid(copy);
    const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n');
    assert.ok(maps.length > 300, `${maps.length} mappings`);
    assert.deepEqual(JSON.parse((await request(port, '/heap')).body), {
      strings: 64 * 8192,
      same: true,
    });
  } finally {
    copy.kill('SIGTERM');
    await copy.closed;
  }
});

/** The CPUs each thread of `pid` may run on, as /proc writes them ("0-1"). */
const cpusOf = (pid) =>
  readdirSync(`/proc/${pid}/task`).map(
    (t) =>
      /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8'))[1],
  );
const ourCpus = cpusOf(process.pid)[0];
const oneCpu = !/[-,]/.test(ourCpus);

/** The value of `--pin-cpu` the copy's init was started with, or undefined. */
function pinOf(copy) {
  for (const p of processTree(copy.pid)) {
    const args = cmdline(p);
    if (args[1] === 'init' && args.includes('--pin-cpu'))
      return args[args.indexOf('--pin-cpu') + 1];
  }
  return undefined;
}

for (const [way, env] of [
  ['the front', {}],
  ["Node's resume (CHECKPT_FRONT=0)", { CHECKPT_FRONT: '0' }],
])
  test(
    `a lazy resume through ${way} runs the copy on one CPU beside CRIU's daemon for its first steps, then gives every thread back the CPUs checkpt had`,
    { skip: oneCpu && 'this machine lets the tests use one CPU only' },
    async () => {
      // xfer-hold-while-faulting.patch and checkpt-helper init --pin-cpu (src/engine/pin.ts).
      const { file, port } = await checkpointed('pinned', ['--mb', '48']);
      const trace = join(dir, 'pinned.trace');
      rmSync(trace, { force: true });
      const copy = resumeCommand(file, trace, env);
      try {
        assert.equal((await answers(port, copy)).gen, 1);
        assert.equal(marks(trace).includes('extract'), way !== 'the front', String(marks(trace)));
        assert.match(String(pinOf(copy)), /^\d+$/, 'the init was told a CPU');
        const pid = await programPid(copy);
        // The window is 300 ms after the restore; a loaded machine gets 10 s.
        let cpus = cpusOf(pid);
        for (
          const end = Date.now() + 10_000;
          cpus.some((c) => c !== ourCpus) && Date.now() < end;
        ) {
          await sleep(50);
          cpus = cpusOf(pid);
        }
        assert.deepEqual([...new Set(cpus)], [ourCpus], `every thread of the copy on ${ourCpus}`);
        assert.equal((await get(port)).gen, 1);
      } finally {
        copy.kill('SIGTERM');
        await copy.closed;
      }
    },
  );

test(
  'a resume under taskset -c 0 pins nothing, and the copy keeps the one CPU it was given',
  { skip: oneCpu && 'this machine lets the tests use one CPU only' },
  async () => {
    const { file, port } = await checkpointed('taskset', ['--mb', '48']);
    const trace = join(dir, 'taskset.trace');
    const copy = resumeCommand(file, trace, {}, ['taskset', '-c', '0']);
    try {
      assert.equal((await answers(port, copy)).gen, 1);
      assert.ok(marks(trace).includes('front'), String(marks(trace)));
      assert.equal(pinOf(copy), undefined, 'no --pin-cpu with one CPU allowed');
      await sleep(500);
      assert.deepEqual([...new Set(cpusOf(await programPid(copy)))], ['0']);
    } finally {
      copy.kill('SIGTERM');
      await copy.closed;
    }
  },
);

test('checkpt -r -d through the front: it prints the pid, ends once the memory is in, and the copy runs on in a session of its own', async () => {
  const { file, port } = await checkpointed('detached', ['--mb', '48']);
  const trace = join(dir, 'detached.trace');
  const out = join(dir, 'detached.out');
  const fd = openSync(out, 'w');
  let r;
  try {
    r = spawnSync(cli, ['-r', '-d', file], {
      stdio: ['ignore', fd, fd],
      env: {
        ...process.env,
        PATH: `${dirname(process.execPath)}:${process.env.PATH}`,
        CHECKPT_BENCH_TRACE: trace,
      },
      timeout: 60_000,
    });
  } finally {
    closeSync(fd);
  }
  const text = readFileSync(out, 'utf8');
  const pid = printedPid(text);
  assert.ok(pid > 1, `a pid printed: ${text}`);
  const tree = detachedTree(pid);
  try {
    assert.equal(r.status, 0, text);
    const m = marks(trace);
    for (const step of ['front', 'status-restored', 'adopt'])
      assert.ok(m.includes(step), `${step} in ${m}`);
    assert.ok(!m.includes('extract'), `Node unpacked nothing itself: ${m}`);
    assert.deepEqual([(await get(port)).gen, (await get(port)).mb], [1, 48]);
    assert.notEqual(statOf(pid)[3], statOf(process.pid)[3], 'not in our session');
    assert.deepEqual(stagingLeft(r.pid), [], 'checkpt ended after the memory was all in');
  } finally {
    await stopDetached(tree);
  }
});

test(
  'checkpt -d -r on a terminal goes through the front too; the copy outlives the terminal',
  { skip: !hasTmux && 'tmux is not installed (scripts/setup.sh installs it)' },
  async () => {
    const { file, port } = await checkpointed('detached-tty');
    const trace = join(dir, 'detached-tty.trace');
    tty.open(
      'dtty',
      `PATH=${dirname(process.execPath)}:$PATH CHECKPT_BENCH_TRACE=${trace} ${cli} -d -r ${file}`,
    );
    await tty.until('checkpt -r -d to end', () => tty.status('dtty') !== undefined);
    assert.equal(tty.status('dtty'), '0', tty.screen('dtty'));
    const pid = printedPid(tty.screen('dtty'));
    assert.ok(pid > 1, tty.screen('dtty'));
    const tree = detachedTree(pid);
    try {
      assert.ok(marks(trace).includes('adopt'), String(marks(trace)));
      assert.ok(!marks(trace).includes('extract'), String(marks(trace)));
      // The terminal goes away (its session gets SIGHUP): the copy is not of that session.
      tty.tmux('kill-session', '-t', 'dtty');
      await sleep(300);
      assert.equal((await get(port)).gen, 1);
    } finally {
      await stopDetached(tree);
    }
  },
);

test('CHECKPT_FRONT=0, another CHECKPT_ variable, or a port in use: Node resumes, as before', async () => {
  const { file, port } = await checkpointed('aside');
  for (const env of [{ CHECKPT_FRONT: '0' }, { CHECKPT_LAZY: '1' }]) {
    const trace = join(dir, `aside-${Object.keys(env)[0]}.trace`);
    const copy = resumeCommand(file, trace, env);
    assert.equal((await answers(port, copy)).gen, 1);
    const m = await marksBy(trace, 'extract');
    assert.ok(m.includes('extract') && !m.includes('adopt'), `${JSON.stringify(env)}: ${m}`);
    copy.kill('SIGTERM');
    await copy.closed;
    rmSync(trace, { force: true });
  }
  // Its port held by someone else, on IPv4 or IPv6 (the front asks sock_diag for both families'
  // listeners): the front steps aside; Node resumes the copy, which takes the port over once it
  // is free (the server uses checkpt's network resource).
  for (const host of ['127.0.0.1', '::']) {
    const holder = createServer();
    await within(
      new Promise((r, j) => holder.once('error', j).listen(port, host, r)),
      `a holder on ${host}`,
    );
    const trace = join(dir, `aside-busy-${host === '::' ? 'v6' : 'v4'}.trace`);
    const copy = resumeCommand(file, trace, { CHECKPT_FRONT: 'debug' });
    try {
      const m = await marksBy(trace, 'extract');
      assert.ok(m.includes('front') && !m.includes('adopt'), `${host}: ${m}`);
      assert.match(copy.stderrText, /leaves this resume to Node: a port/, host);
    } finally {
      holder.close();
    }
    assert.equal((await answers(port, copy)).gen, 1);
    copy.kill('SIGTERM');
    await copy.closed;
    assert.deepEqual(descendants(copy.pid), []);
  }
});

test('a damaged file: the front leaves it to Node, which refuses it; nothing runs, nothing stays', async () => {
  const { file } = await checkpointed('damaged');
  const bad = join(dir, 'damaged-copy.ckpt');
  copyFileSync(file, bad);
  // A byte of the index (the manifest sits right before the 48-byte tail's region): the file hash fails.
  const buf = readFileSync(bad);
  buf[buf.length - 200] ^= 0x40;
  writeFileSync(bad, buf, { mode: 0o600 });
  const trace = join(dir, 'damaged.trace');
  const copy = resumeCommand(bad, trace, { CHECKPT_FRONT: 'debug' });
  const end = await copy.closed;
  assert.notEqual(end.code, 0);
  assert.match(copy.stderrText, /damaged/);
  assert.ok(!marks(trace).includes('adopt'));
  assert.deepEqual(descendants(copy.pid), []);
  assert.deepEqual(stagingLeft(copy.pid), []);
});

/** A fresh lazy checkpoint (40 MB of heap) with one byte of its memory flipped: its path. */
async function damagedInMemory(name) {
  const { file } = await checkpointed(name, ['--mb', '40']);
  const bad = join(dir, `${name}-copy.ckpt`);
  const buf = readFileSync(file);
  // A byte in the memory part (DATA starts at 16): its chunk's check fails when first read.
  assert.ok(buf.length > 36 * 2 ** 20, `${buf.length} bytes`);
  buf[16 + 20 * 1024 * 1024] ^= 0x01;
  writeFileSync(bad, buf, { mode: 0o600 });
  return bad;
}

test('a memory chunk damaged in a lazy resume: the copy is stopped and checkpt -r fails with the reason', async () => {
  const bad = await damagedInMemory('lazy-bad');
  const trace = join(dir, 'lazy-bad.trace');
  const copy = resumeCommand(bad, trace);
  const end = await copy.closed;
  assert.notEqual(end.code, 0, copy.stderrText);
  assert.match(copy.stderrText, /damaged/);
  assert.ok(marks(trace).includes('front'), String(marks(trace)));
  assert.deepEqual(descendants(copy.pid), []);
  for (const end = Date.now() + 5000; stagingLeft(copy.pid).length && Date.now() < end;)
    await sleep(50);
  assert.deepEqual(stagingLeft(copy.pid), []);
});

test('a memory chunk found damaged while CRIU still restores: the restore is stopped, not waited for', async () => {
  const bad = await damagedInMemory('lazy-bad-early');
  // The restore's init holds CRIU back 3 s, long enough for the page server's background check to
  // find the damage while the restore is still under way (a restore that then may never end: its
  // tasks can wait on memory whose daemon is gone).
  const trace = join(dir, 'lazy-bad-early.trace');
  const copy = resumeCommand(bad, trace, { CHECKPT_TEST_INIT_STALL_MS: '3000' });
  const end = await copy.closed;
  assert.notEqual(end.code, 0, copy.stderrText);
  assert.match(copy.stderrText, /damaged/);
  // The front stopped its restore before CRIU started, and left the resume to Node: whether the
  // damage was found after the daemon's word or before it (CI emulation 66: before).
  const m = marks(trace);
  const node = m.indexOf('main');
  assert.ok(node > 0, m.join(' '));
  assert.ok(!m.slice(0, node).includes('criu-exec'), m.join(' '));
  const ready = m.indexOf('daemon-ready');
  assert.ok(ready < node, m.join(' '));
  await nothingStays(copy);
});

test('SIGTERM while the front restores: nothing runs on, nothing stays, and checkpt ends by the signal', async () => {
  const { file } = await checkpointed('stopped', ['--mb', '40']);
  const trace = join(dir, 'stopped.trace');
  const copy = resumeCommand(file, trace);
  for (const end = Date.now() + 10_000; !marks(trace).includes('extracted') && Date.now() < end;)
    await sleep(1);
  copy.kill('SIGTERM');
  const end = await copy.closed;
  assert.ok(end.signal === 'SIGTERM' || end.code === 143, JSON.stringify(end));
  await nothingStays(copy);
});

test('a lazy-pages daemon that does not start: the restore begun beside it is stopped, and Node resumes', async () => {
  const { file, port } = await checkpointed('no-daemon', ['--mb', '40']);
  const trace = join(dir, 'no-daemon.trace');
  const copy = resumeCommand(file, trace, { CHECKPT_TEST_FRONT_NO_DAEMON: '1' });
  assert.equal((await answers(port, copy)).gen, 1);
  const steps = await marksBy(trace, 'extract');
  assert.ok(steps.includes('front') && steps.includes('extract'), steps.join(' '));
  // The front's `criu restore`, which waited for the daemon, is gone (Node's own daemon may still
  // be loading memory; no restore is left once the copy answers).
  const restores = descendants(copy.pid).filter((p) => {
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      return readlinkSync(`/proc/${p}/exe`).endsWith('/criu') && argv.includes('restore');
    } catch {
      return false;
    }
  });
  assert.deepEqual(restores, [], 'no criu restore runs on once the copy answers');
  copy.kill('SIGTERM');
  await copy.closed;
  await nothingStays(copy);
});

test('SIGTERM once the copy runs but before Node starts: the copy gets it, checkpt ends likewise', async () => {
  const { file, port } = await checkpointed('early-term', ['--mb', '48']);
  const trace = join(dir, 'early-term.trace');
  const copy = resumeCommand(file, trace);
  // The front waits for the copy's memory (or 200 ms) before it starts Node: stopped in between.
  for (const end = Date.now() + 20_000; !marks(trace).includes('status-restored'); await sleep(1))
    assert.ok(Date.now() < end, `no restore: ${copy.stderrText}`);
  copy.kill('SIGTERM');
  const end = await copy.closed;
  assert.ok(end.signal === 'SIGTERM' || end.code === 143, JSON.stringify(end));
  assert.ok(marks(trace).includes('adopt'), `Node took over and passed it on: ${marks(trace)}`);
  assert.deepEqual(descendants(copy.pid), []);
  await assert.rejects(get(port), 'nothing answers any more');
  for (const end = Date.now() + 5000; stagingLeft(copy.pid).length && Date.now() < end;)
    await sleep(50);
  assert.deepEqual(stagingLeft(copy.pid), []);
});

unitTest(
  "the front ignores exactly the test variables (config.ts kind 'test') and CHECKPT_FRONT",
  () => {
    const source = readFileSync(join(root, 'native', 'resume-front.c'), 'utf8');
    const list = /IGNORED_VARIABLES\[\] = \{([^}]*)\}/.exec(source)?.[1] ?? '';
    const inC = [...list.matchAll(/"(CHECKPT_\w+)"/g)].map((m) => m[1]).sort();
    const expected = [
      'CHECKPT_FRONT',
      ...VARIABLES.filter((v) => v.kind === 'test').map((v) => v.name),
    ].sort();
    assert.deepEqual(inC, expected);
  },
);
