// Plumbing shared by the reliability tests: a program driven over stdin, /proc lookups, and the
// checks every fault ends with (program intact, documented error, nothing left, old file whole).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { runDir } from '../../dist/engine/paths.js';
import { verifyImage } from '../../dist/image/format.js';
import { procStatus, signalQuietly } from '../../dist/common/procfs.js';
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

/** Whether `pid` exists and has not ended (a zombie has). */
export function running(pid) {
  const state = stateOf(pid);
  return state !== '' && state !== 'Z' && state !== 'X';
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

/** `pid`'s mappings: [start, end, perms, name] each. */
function mapsOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/maps`, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [range, perms, , , , name = ''] = l.split(/\s+/);
        const [lo, hi] = range.split('-').map((x) => BigInt(`0x${x}`));
        return [lo, hi, perms, name];
      });
  } catch {
    return [];
  }
}

/** compel's injected system call on x86_64 (`syscall`, then `int3` six times). */
const COMPEL_SYSCALL = Buffer.from([0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc]);

/** `len` bytes of `pid`'s memory at `addr`, or undefined. */
function peek(pid, addr, len) {
  let fd;
  try {
    fd = openSync(`/proc/${pid}/mem`, 'r');
    const buf = Buffer.alloc(len);
    return readSync(fd, buf, 0, len, Number(addr)) === len ? buf : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Where CRIU holds `pid`: 'trap' when a CRIU killed now would take the program with it, 'free'
 * when the program would carry on by itself, 'unsure' while one of its threads runs. When its
 * tracer dies, the kernel lets every thread go as it is: with the signal of a stop CRIU has not
 * collected yet still due (a trap's SIGTRAP, which kills), and with whatever registers and code
 * CRIU left in place. So it is a trap while a thread has an uncollected signal stop, a thread
 * stopped in the parasite's code would run it untraced, or compel's `syscall; int3` is written
 * over the program's code (the first executable mapping). The main thread running the parasite's
 * daemon is free: once CRIU's socket closes, the daemon returns to the program through its own
 * sigreturn. Call it with CRIU stopped, so the answer holds.
 */
export function criuHold(pid) {
  const maps = mapsOf(pid);
  const blob = maps.filter((m) => m[3].includes('CRIUMFD'));
  // compel's get_exec_start: the first executable mapping of at least a page.
  const exec = maps.find((m) => m[2][2] === 'x' && m[1] - m[0] >= 4096n);
  const code = exec && peek(pid, exec[0], COMPEL_SYSCALL.length);
  if (!code) return 'unsure';
  if (code.equals(COMPEL_SYSCALL)) return 'trap';
  let hold = 'free';
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const dir = `/proc/${pid}/task/${tid}`;
      const stat = readFileSync(`${dir}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // Field 52, exit_code: while stopped for a tracer, the stop's signal until the tracer
      // collects it; ptrace events carry their number above the low byte and deliver nothing.
      const [state, stopCode] = [fields[0], Number(fields[49])];
      if (state === 't' && stopCode !== 0 && stopCode >> 8 === 0) return 'trap';
      // "NR ARGS... SP PC" in a system call, "-1 SP PC" blocked outside one, "running" otherwise.
      const sc = readFileSync(`${dir}/syscall`, 'utf8').trim().split(' ');
      if (sc[0] === 'running') {
        hold = 'unsure';
        continue;
      }
      const pc = BigInt(sc.at(-1));
      const inBlob = blob.some(([lo, hi]) => pc >= lo && pc < hi);
      if (inBlob && (Number(tid) !== pid || state === 't')) return 'trap';
    }
    return hold;
  } catch {
    return 'unsure';
  }
}

const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** criuHold(pid), looked at again (5 times, 2 ms apart) while a thread of the program runs. */
export function settledHold(pid) {
  let hold = 'unsure';
  for (let i = 0; i < 5 && hold === 'unsure'; i++) {
    pause(2);
    hold = criuHold(pid);
  }
  return hold;
}

/**
 * Lets `criu`, stopped by the caller, run a millisecond at a time, looking with it stopped
 * between slices, until `until()` holds (true), or CRIU ends, `ms` pass or `going()` no longer
 * holds (false). Leaves it stopped. A step lasts as long as this process takes to wake: on a
 * loaded machine one can cover tens of milliseconds of CRIU's way, so a caller retries.
 */
export function stepCriu(criu, until, ms = 2000, going = () => true) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline && going()) {
    if (until()) return true;
    try {
      process.kill(criu.pid, 'SIGCONT');
      pause(1);
      process.kill(criu.pid, 'SIGSTOP');
    } catch (e) {
      // CRIU ended within its millisecond: the moment was missed.
      if (e.code === 'ESRCH') return false;
      throw e;
    }
    // A signal sent is not yet a stop: look only at a CRIU that is really stopped.
    for (let s = stateOf(criu.pid); !/^[Tt]$/.test(s); s = stateOf(criu.pid)) {
      if (s === '' || s === 'Z' || Date.now() > deadline) return false;
    }
  }
  return false;
}

/**
 * Steps `criu`, stopped by the caller, until it holds `pid` at a trap (criuHold), while `going()`
 * holds and for at most two seconds. Leaves it stopped; true when it stopped at a trap.
 */
export function stepCriuToTrap(criu, pid, going) {
  return stepCriu(criu, () => settledHold(pid) === 'trap', 2000, going);
}

/**
 * Sends SIGKILL to `criu` (stopped by the caller) if that spares the program (criuHold says
 * 'free', given up to a second to settle) and `still()` holds once CRIU is stopped, and returns
 * true; otherwise lets it go on and returns false.
 *
 * A SIGSTOP sent to a CRIU that has just ended succeeds on its zombie: without the stop seen in
 * /proc, a round CRIU won (the dump written, its table removed) passed for one it lost.
 */
export function killCriuIfSpared(criu, pid, still = () => true) {
  const deadline = Date.now() + 1000;
  const stopped = () => /^[Tt]$/.test(stateOf(criu.pid));
  while (!stopped() && Date.now() < deadline) pause(2);
  if (!stopped()) {
    signalQuietly(criu.pid, 'SIGCONT');
    return false;
  }
  let hold;
  while ((hold = criuHold(pid)) === 'unsure' && Date.now() < deadline) pause(10);
  const spared = hold === 'free' && still();
  process.kill(criu.pid, spared ? 'SIGKILL' : 'SIGCONT');
  return spared;
}

/** The one-letter state of `pid` in /proc ('T' stopped, 'Z' a zombie), or '' when it is gone. */
export function stateOf(pid) {
  return procStatus(pid)?.State?.[0] ?? '';
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
  worker: (staging) => (x) => /\/dump-worker\.c?js$/.test(x.cmd[1] ?? '') && inStaging(x, staging),
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
      try {
        process.kill(v.pid, sig);
      } catch (e) {
        // It exited between the look and the kill: as if it had been gone at the look.
        if (e.code !== 'ESRCH') throw e;
        v = undefined;
        continue;
      }
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

/**
 * CRIU's lock tables now, each with whether its sets hold any connection: the host's, or those in
 * the network namespace of process `netnsOf`.
 */
export function criuTables(netnsOf) {
  const r =
    netnsOf === undefined
      ? spawnSync(helper, ['nft-list'], { encoding: 'utf8' })
      : spawnSync('nsenter', ['-t', String(netnsOf), '-n', '--', helper, 'nft-list'], {
          encoding: 'utf8',
        });
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
 * The lock tables that appeared since `before` (criuTables()) and are still there once a CRIU
 * still ending has had `ms` to remove its own: a killed CRIU's table is checkpt's to remove.
 */
export async function tablesLeft(before, ms = 2000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const added = [...criuTables().keys()].filter((n) => !before.has(n));
    if (added.length === 0 || Date.now() > deadline) return added;
    await sleep(50);
  }
}

/**
 * CRIU's run id as checkpt gave it (CHECKPT_CRIU_RUN_ID in its environment); undefined when the
 * process is gone. Read again for a moment while it comes up empty (a process still in exec).
 * Only for `criu dump` run as a command: `criu swrk` sets a process title over its environment.
 */
export function runIdOf(pid, ms = 1000) {
  const deadline = Date.now() + ms;
  for (;;) {
    let env = '';
    try {
      env = readFileSync(`/proc/${pid}/environ`, 'utf8');
    } catch {
      return undefined;
    }
    const id = env
      .split('\0')
      .find((v) => v.startsWith('CHECKPT_CRIU_RUN_ID='))
      ?.slice(20);
    if (id !== undefined || !running(pid) || Date.now() > deadline) return id;
  }
}

/**
 * Removes the empty lock tables that appeared since `before` (criuTables()): only a test that
 * failed leaves one (a CRIU killed after it locked the network, its table not removed).
 */
export function removeNewEmptyTables(before) {
  for (const [name, holds] of criuTables()) {
    if (!before.has(name) && !holds) spawnSync(helper, ['unlock', `inet ${name}`]);
  }
}
