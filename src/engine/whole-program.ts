/**
 * A checkpoint from outside holds every process of the program or is not written: CRIU dumps one
 * tree, from the program's first process down, and says nothing of the processes of the namespace
 * that are not in it.
 */
import { readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { cmdline, procStatus } from '../common/procfs.js';
import { helperPath } from './native.js';

export interface Stray {
  /** Its pid on the host. */
  pid: number;
  /** Its pid in the program's namespace. */
  innerPid: number;
  argv: string[];
}

function pidNs(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return undefined;
  }
}

function realHelper(): string {
  try {
    return realpathSync(helperPath());
  } catch {
    return 'checkpt-helper';
  }
}

/**
 * The processes of the PID namespace whose init (checkpt's helper) is `nsPid`, on the host, that do
 * not descend from `root` (the program's first process; undefined once it has ended) and are not
 * checkpt's own (the init and its output relays). Decided by each process's ancestry, not from a
 * list taken earlier, so a child forked meanwhile counts as in the tree.
 */
export function strays(nsPid: number, root: number | undefined, ours?: number): Stray[] {
  const ns = pidNs(nsPid);
  if (!ns) return [];
  const helper = realHelper();
  const out: Stray[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === nsPid || pidNs(pid) !== ns) continue;
    const status = procStatus(pid);
    if (!status) continue;
    if (root !== undefined && descendsFrom(pid, Number(status.PPid), root, nsPid)) continue;
    // CRIU entered into the namespace, and its action script, while it holds the program frozen.
    if (ours !== undefined && descendsFrom(pid, Number(status.PPid), ours, nsPid)) continue;
    let exe = '';
    try {
      exe = readlinkSync(`/proc/${pid}/exe`);
    } catch {
      // a zombie has no executable: it is the program's
    }
    if (exe === helper && Number(status.PPid) === nsPid) continue;
    const inner = Number(status.NSpid?.split(/\s+/).at(-1));
    out.push({ pid, innerPid: inner, argv: cmdline(pid) });
  }
  return out;
}

/**
 * Whether `pid` (whose parent is `ppid`) is `root` or below it; the walk up stops at the
 * namespace's init. A process of the chain that ends meanwhile counts as in the tree: its
 * children pass to the first process, and a process that ended is not left out.
 */
function descendsFrom(pid: number, ppid: number, root: number, nsPid: number): boolean {
  let cur = pid;
  let parent: number | undefined = ppid;
  for (let hops = 0; hops < 4096; hops++) {
    if (cur === root) return true;
    if (parent === undefined) return true;
    if (parent <= 1 || parent === nsPid) return false;
    cur = parent;
    const up = procStatus(cur)?.PPid;
    parent = up === undefined ? undefined : Number(up);
  }
  return false;
}

function describe(s: Stray): string {
  const cmd = s.argv.join(' ') || '(ended, not yet reaped)';
  return `pid ${s.innerPid} (host ${s.pid}): ${cmd.length > 80 ? `${cmd.slice(0, 77)}...` : cmd}`;
}

/**
 * Throws EDUMP, naming them, when the program's namespace has processes a dump from its first
 * process (`root` on the host, undefined once it has ended; `rootInnerPid` inside) would leave out;
 * what descends from `ours` (the CRIU run holding the program) is not the program's.
 */
export function requireWholeProgram(
  nsPid: number,
  rootInnerPid: number,
  root: number | undefined,
  ours?: number,
): void {
  const first = strays(nsPid, root, ours);
  if (first.length === 0) return;
  // Only those found twice: a process caught between its parent's exit and its adoption, or
  // ending, is not one left out.
  const again = new Set(strays(nsPid, root, ours).map((s) => s.pid));
  const left = first.filter((s) => again.has(s.pid));
  if (left.length === 0) return;
  const why =
    root === undefined
      ? `the program's first process (pid ${rootInnerPid}) has ended, and a checkpoint starts from it`
      : `they are not descendants of the program's first process (pid ${rootInnerPid}), where a checkpoint starts`;
  throw new CheckptError(
    'EDUMP',
    `A checkpoint would leave out ${left.length} process${left.length > 1 ? 'es' : ''} of the program (${left.map(describe).join('; ')}): ${why}. Nothing was written; the program keeps running. Keep the first process running while the others do (a shell that waits for them, a server that does not daemonize).`,
  );
}
