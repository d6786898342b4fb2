/**
 * Whether CRIU holds a program where interrupting or losing CRIU would kill it (the same test as
 * native/checkpt-helper.c's criu_holds, for the dumps checkpt runs from outside).
 */
import { closeSync, openSync, readFileSync, readSync, readdirSync } from 'node:fs';
import { childrenOf, procStatus, processTree } from '../common/procfs.js';

/** compel's injected system call on x86_64: `syscall`, then `int3` six times. */
const COMPEL_SYSCALL = Buffer.from([0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc]);

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Whether compel's system call is written at `addr` of `pid`'s memory. */
function compelCodeAt(pid: number, addr: number): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(`/proc/${pid}/mem`, 'r');
    const buf = Buffer.alloc(COMPEL_SYSCALL.length);
    return readSync(fd, buf, 0, buf.length, addr) === buf.length && buf.equals(COMPEL_SYSCALL);
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Whether CRIU holds `pid` (or a process below it) where an interruption or its death would kill
 * it: traced, with its parasite mapped (compel's memfd), compel's system call written over the
 * first executable page, or a thread in a ptrace stop whose signal CRIU has not collected yet (a
 * trap's SIGTRAP, delivered to a program nobody traces any more).
 */
export function criuHolds(pid: number, depth = 0): boolean {
  // Untraced, nothing of CRIU's can hurt it: a parasite mapping a killed CRIU left is inert.
  const mine = Number(procStatus(pid)?.TracerPid ?? 0) !== 0;
  const maps = mine ? read(`/proc/${pid}/maps`) : '';
  if (maps === undefined) return false;
  if (maps.includes('CRIUMFD')) return true;
  for (const line of maps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) ..x/.exec(line);
    if (!m) continue;
    const [lo, hi] = [parseInt(m[1] ?? '0', 16), parseInt(m[2] ?? '0', 16)];
    if (hi - lo < 4096) continue;
    if (compelCodeAt(pid, lo)) return true;
    break;
  }
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  for (const tid of tids) {
    const stat = read(`/proc/${pid}/task/${tid}/stat`);
    if (stat === undefined) continue;
    // Field 3, the state, then field 52, exit_code: a ptrace stop's signal until the tracer
    // collects it (ptrace events carry bits above the low byte and deliver nothing).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const code = Number(fields[49] ?? 0);
    if (mine && fields[0] === 't' && code !== 0 && code >> 8 === 0) return true;
    if (depth >= 8) continue;
    for (const child of (read(`/proc/${pid}/task/${tid}/children`) ?? '').split(' ')) {
      if (child && criuHolds(Number(child), depth + 1)) return true;
    }
  }
  return false;
}

/**
 * A process at least `depth` levels below `root` (1: `root` is the program's first process; 2: the
 * namespace's init, whose children the first process is one of) that lies dead in the hands of a
 * CRIU in `criuPids`: every thread a zombie, and traced by that CRIU (the same test as
 * native/checkpt-helper.c's dead_below). Such a CRIU can wait for it until its deadline, the
 * program frozen all that time.
 */
export function deadInCriuHands(
  root: number,
  depth: 1 | 2,
  criuPids: readonly number[],
): number | undefined {
  const firsts = depth === 1 ? [root] : childrenOf(root);
  return firsts
    .flatMap((first) => processTree(first).slice(1))
    .find((pid) => deadIn(pid, criuPids));
}

function deadIn(pid: number, criuPids: readonly number[]): boolean {
  const status = procStatus(pid);
  if (!status?.State?.startsWith('Z') || !criuPids.includes(Number(status.TracerPid ?? 0)))
    return false;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  // A thread whose stat is gone has been reaped: dead too.
  return tids.every((tid) => {
    const stat = read(`/proc/${pid}/task/${tid}/stat`);
    return stat === undefined || /\) [ZX] /.test(stat.slice(stat.lastIndexOf(')')));
  });
}
