// Plumbing shared by the reliability tests: a program driven over stdin, /proc lookups, and the
// checks every fault ends with (program intact, documented error, nothing left, old file whole).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { runDir } from '../../dist/engine/paths.js';
import { verifyImage } from '../../dist/image/format.js';
import { manifestProblem } from '../../dist/engine/manifest.js';
import { fixture, root, spawnSync, start, waitFor } from '../helpers.mjs';
import { join } from 'node:path';

/** Generous, and only there so a hang fails the test instead of holding it: not a timing claim. */
export const HANG_GUARD_MS = 60_000;

export const sha = (f) => createHash('sha256').update(readFileSync(f)).digest('hex');

let nextId = 1;

/**
 * Starts test/fixtures/driven.mjs (or `child`, already started with a stdin pipe) and returns
 * `ask(cmd)`, which sends one command and resolves with the answer carrying the same id.
 */
export async function driven(env = {}, child = undefined, isReady = (e) => e.event === 'ready') {
  const p =
    child ??
    start(process.execPath, [fixture('driven.mjs')], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
  const ready = await waitFor(p, isReady, 'the program to start (or resume)');
  const ask = async (cmd) => {
    const id = cmd.id ?? `c${nextId++}`;
    const seen = p.lines.length;
    p.stdin.write(JSON.stringify({ ...cmd, id }) + '\n');
    let n = 0;
    return waitFor(
      p,
      (e) => n++ >= seen && e.id === id,
      `an answer to ${JSON.stringify({ ...cmd, id })}`,
      HANG_GUARD_MS,
    );
  };
  return { p, pid: ready.pid, ready, ask };
}

/** The program still runs and answers, with the very state it had (the fault changed nothing). */
export async function assertIntact(prog, want) {
  const pong = await prog.ask({ op: 'ping' });
  assert.deepEqual(
    [pong.mapSize, pong.sum, pong.counter],
    [want.mapSize, want.sum, want.counter],
    'state intact',
  );
  return pong;
}

export function procs() {
  const out = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      out.push({ pid: Number(d), exe: readlinkSync(`/proc/${d}/exe`), cmd });
    } catch {
      // it exited
    }
  }
  return out;
}

function running(pid) {
  try {
    return !/^[ZX]/.test(/State:\s+(\S)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
  } catch {
    return false;
  }
}

export function tracerOf(pid) {
  try {
    return Number(/TracerPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
  } catch {
    return 0;
  }
}

/** Whether CRIU's parasite is mapped into the process (compel's memfd, "CRIUMFD"). */
export function parasiteIn(pid) {
  try {
    return readFileSync(`/proc/${pid}/maps`, 'utf8').includes('CRIUMFD');
  } catch {
    return false;
  }
}

/**
 * Whether the parasite is in and the process's main thread stopped for its tracer: when CRIU has
 * it run a system call, that stop is the parasite's trap, which a CRIU killed there leaves armed.
 */
export function parasiteTrapped(pid) {
  try {
    const state = /State:\s+(\S)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1];
    return state === 't' && parasiteIn(pid);
  } catch {
    return false;
  }
}

/** The address ranges of compel's memfd (the parasite's code and data) in `pid`'s memory. */
function parasiteRanges(pid) {
  try {
    return readFileSync(`/proc/${pid}/maps`, 'utf8')
      .split('\n')
      .filter((l) => l.includes('CRIUMFD'))
      .map((l) =>
        l
          .split(' ')[0]
          .split('-')
          .map((a) => BigInt(`0x${a}`)),
      );
  } catch {
    return [];
  }
}

/**
 * Whether a CRIU killed now leaves `pid` to carry on by itself. That holds while the parasite runs
 * as a daemon in the main thread: once CRIU's socket closes, the daemon returns to the program
 * through its own sigreturn, and the other threads, stopped with their own registers, are let go.
 * It does not hold once CRIU has any thread at one of its traps (the daemon being stopped, a thread
 * made to run parasite code, a system call run remotely), which the kernel turns into a fatal
 * SIGTRAP or SIGSEGV when nobody traces it. Call it with CRIU stopped, so the answer stays true.
 */
export function onlyParasiteDaemonRuns(pid) {
  const blob = parasiteRanges(pid);
  if (blob.length === 0) return false;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const dir = `/proc/${pid}/task/${tid}`;
      const state = /State:\s+(\S)/.exec(readFileSync(`${dir}/status`, 'utf8'))[1];
      // "NR ARGS... SP PC" in a system call, "-1 SP PC" blocked outside one, "running" otherwise.
      const fields = readFileSync(`${dir}/syscall`, 'utf8').trim().split(' ');
      if (fields[0] === 'running') return false;
      const pc = BigInt(fields.at(-1));
      const inBlob = blob.some(([lo, hi]) => pc >= lo && pc < hi);
      const ok = Number(tid) === pid ? state !== 't' && inBlob : state === 't' && !inBlob;
      if (!ok) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** One process as procs() lists it, or undefined when it is gone. */
function procOf(pid) {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return { pid, exe: readlinkSync(`/proc/${pid}/exe`), cmd };
  } catch {
    return undefined;
  }
}

export function parentOf(pid) {
  try {
    // The command name in parentheses may hold spaces: the fields after it are what counts.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return 0;
  }
}

/**
 * The processes of a checkpoint of `pid` staged in `staging` (the test's own CHECKPT_TMPDIR, in the
 * arguments of the front and the worker): the dump front, CRIU (`criu swrk FD`, the front's child),
 * the packing worker. Other checkpoints running on the machine, other people's tests among them,
 * never match.
 */
const inStaging = (x, staging) => x.cmd.some((a) => a.startsWith(staging + '/'));
const isFront = (pid, staging) => (x) =>
  x.exe.endsWith('/checkpt-helper') &&
  x.cmd[1] === 'dump' &&
  x.cmd.includes(String(pid)) &&
  inStaging(x, staging);
export const roles = {
  front: isFront,
  criu: (pid, staging) => (x) => {
    if (!x.exe.endsWith('/criu')) return false;
    const parent = procOf(parentOf(x.pid));
    return parent !== undefined && isFront(pid, staging)(parent);
  },
  worker: (staging) => (x) => x.cmd[1]?.endsWith('/dump-worker.js') && inStaging(x, staging),
};

/** /proc/PID/syscall: the number of the system call it sits in, and its arguments; '' when gone. */
export function syscallOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/syscall`, 'utf8');
  } catch {
    return '';
  }
}

/** Whether `pid` sits in read(2) (syscall 0), as it does blocked on its control FIFO. */
export const inRead = (pid) => syscallOf(pid).startsWith('0 ');

/**
 * Polls /proc (without yielding, to hit short windows) until a process matching `find` runs and
 * `when()` holds, then sends it `sig`. Returns that process, or undefined if the moment never came.
 */
export function signalWhen(find, when = () => true, sig = 'SIGKILL', ms = 20_000) {
  const deadline = Date.now() + ms;
  let v;
  while (Date.now() < deadline) {
    v ??= procs().find(find);
    if (v && when()) {
      // A process seen earlier may have exited since (the front's first half does at once).
      if (!running(v.pid)) {
        v = undefined;
        continue;
      }
      process.kill(v.pid, sig);
      return v;
    }
  }
  return undefined;
}

/** Files in `dir` other than `keep`: temporary files, half-written images, staging dirs. */
export function leftovers(dir, keep = []) {
  return readdirSync(dir).filter((f) => !keep.includes(f));
}

/**
 * Resolves once no checkpoint of `pid` has been in progress for a while (each one holds a control
 * directory under the run directory until it ends), so that a test ends with nothing writing.
 */
export async function settled(pid, quietMs = 300) {
  const deadline = Date.now() + HANG_GUARD_MS;
  let quietSince = Date.now();
  while (Date.now() - quietSince < quietMs) {
    assert.ok(Date.now() < deadline, `checkpoints of ${pid} never ended`);
    if (readdirSync(runDir).some((d) => d.startsWith(`${pid}.`))) quietSince = Date.now();
    await sleep(20);
  }
}

export async function assertVerifies(file) {
  const info = await verifyImage(file, { checkManifest: manifestProblem });
  assert.ok(info.entries.length > 0, `${file} holds CRIU images`);
  return info;
}

const helper = join(root, 'build', 'checkpt-helper');

/** CRIU's lock tables now, each with whether its sets hold any connection. */
export function criuTables() {
  const r = spawnSync(helper, ['nft-list'], { encoding: 'utf8' });
  if (r.status !== 0) return new Map();
  const tables = new Map();
  for (const o of JSON.parse(r.stdout).nftables ?? []) {
    if (o.table?.name?.startsWith('CRIU-'))
      tables.set(o.table.name, tables.get(o.table.name) ?? false);
    if (o.set?.table?.startsWith('CRIU-') && (o.set.elem ?? []).length > 0)
      tables.set(o.set.table, true);
  }
  return tables;
}

/**
 * Removes the empty lock tables that appeared since `before` (criuTables()): a CRIU these tests
 * kill after it locked the network leaves one, which drops nothing but must not outlive the test.
 */
export function removeNewEmptyTables(before) {
  for (const [name, holds] of criuTables()) {
    if (!before.has(name) && !holds) spawnSync(helper, ['unlock', `inet ${name}`]);
  }
}
