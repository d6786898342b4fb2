import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';

/** Sends `sig` to `pid`; a process already gone is no error. */
export function signalQuietly(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Lowers `pid`'s priority (0: this process) so a program sharing the machine comes first. */
export function lowerPriority(pid = 0): void {
  try {
    setPriority(pid, 10);
  } catch {
    // not allowed here: it only costs the program some speed
  }
}

/** Reads /proc/PID/status into its fields; undefined when the process is gone. */
/** Waits, at most `ms`, until each of `pids` has ended (gone, or a zombie its parent has yet to reap). */
export async function untilEnded(pids: readonly number[], ms: number): Promise<void> {
  const running = (p: number): boolean => !/^[ZX]/.test(procStatus(p)?.State ?? 'X');
  for (const deadline = Date.now() + ms; pids.some(running) && Date.now() < deadline;)
    await new Promise((r) => setTimeout(r, 5));
}

/** The open-file limit this process has (and its children inherit), from /proc/self/limits. */
export function openFileLimit(): number | undefined {
  try {
    const n = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
    return n === undefined ? undefined : Number(n);
  } catch {
    return undefined;
  }
}

export function procStatus(pid: number): Record<string, string> | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** Whether a process with this status has a handler installed for signal number `sig` (SigCgt). */
export function catches(status: Record<string, string> | undefined, sig: number): boolean {
  const mask = status?.SigCgt;
  if (!mask) return false;
  return ((BigInt(`0x${mask}`) >> BigInt(sig - 1)) & 1n) === 1n;
}

/** A "N kB" field of a /proc/PID/status record, in bytes (0 when unknown). */
function statusBytes(status: Record<string, string> | undefined, field: string): number {
  return (Number(/^(\d+)/.exec(status?.[field] ?? '')?.[1]) || 0) * 1024;
}

/** Resident memory from a /proc/PID/status record, in bytes (0 when unknown). */
export function rssBytes(status: Record<string, string> | undefined): number {
  return statusBytes(status, 'VmRSS');
}

/** Resident anonymous memory (what a dump holds, mostly) from a status record, in bytes. */
export function anonBytes(status: Record<string, string> | undefined): number {
  return statusBytes(status, 'RssAnon');
}

export function catchesSignal(pid: number, sig: number): boolean {
  return catches(procStatus(pid), sig);
}

/** The children of every thread of `pid`; none when it exited. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    }
  } catch {
    // it exited
  }
  return out;
}

/** The process and all its descendants, parents first. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.shift() as number;
    out.push(p);
    todo.push(...childrenOf(p));
  }
  return out;
}

export function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
  } catch {
    return [];
  }
}

/** One variable of a process's environment as it started (empty when unreadable or unset). */
export function envOf(pid: number, name: string): string {
  try {
    const entry = readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .find((e) => e.startsWith(`${name}=`));
    return entry?.slice(name.length + 1) ?? '';
  } catch {
    return '';
  }
}

export function linkOf(pid: number | 'self', what: string): string {
  try {
    return readlinkSync(`/proc/${pid}/${what}`);
  } catch {
    return '';
  }
}

/** The first process of the tree that uses io_uring, which CRIU cannot dump. */
export function treeUsesIoUring(pids: readonly number[]): number | undefined {
  for (const pid of pids) {
    if (hasIoUring(pid)) return pid;
  }
  return undefined;
}

/** Whether a process holds an io_uring instance right now. */
export function hasIoUring(pid: number | 'self' = 'self'): boolean {
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  return fds.some((fd) => linkOf(pid, `fd/${fd}`) === 'anon_inode:[io_uring]');
}

/** The inodes of the sockets `pid` holds open; none when it is gone. */
export function socketInodes(pid: number): Set<number> {
  const out = new Set<number>();
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const fd of fds) {
    const m = /^socket:\[(\d+)\]$/.exec(linkOf(pid, `fd/${fd}`));
    if (m) out.add(Number(m[1]));
  }
  return out;
}
