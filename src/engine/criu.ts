import { childProcess, fsPromises } from '../common/builtin.js';
import { readFileSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { CheckptError } from '../common/errors.js';
import {
  HASH_LIBRARY,
  CRIU_BREAKPOINTS,
  CRIU_PDEATHSIG,
  DEBUG,
  SCRIPT_ACTIONS,
  LAZY_HOLD,
  STAGED_MAP,
} from '../common/config.js';
import { rootless } from '../common/privilege.js';
import { procStatus, processTree, signalQuietly } from '../common/procfs.js';
import { criuHolds, deadInCriuHands } from './criu-hold.js';
import { ioUringAdvice } from './iouring.js';
import { helperPath, native } from './native.js';
import { prepareKdatDir } from './kdat.js';
import { criuPath, criuSource, ownCriuHome, type CriuSource } from './paths.js';
import { grantedCriu, grantedCriuPath } from './grant.js';
import { lazyHold } from './pin.js';
import { spawnFast } from './spawn.js';

export const MIN_CRIU_MAJOR = 4;
/** 4.2: earlier CRIUs cannot dump any TCP or UDP socket on Linux 6.16 and newer (CRIU issues 2705, 2718). */
export const MIN_CRIU_MINOR = 2;
export const MIN_CRIU_TEXT = `${MIN_CRIU_MAJOR}.${MIN_CRIU_MINOR}`;

/**
 * CRIU, in one place. Each verb (dump, restore, lazy-pages, check, --version) is one function that
 * builds its command line through `request`, the one private path that knows where CRIU is, how
 * it logs, how it is wrapped (nsenter, setpriv) and what its environment is, as go-criu's methods
 * all go through doSwrk. Some verbs are run by someone else (the dump front and the helper's init
 * exec the argv themselves); those that checkpt runs are started by the runners below, nowhere else.
 */

/** A command line: the program to run, its arguments and its environment. */
export interface Command {
  file: string;
  args: string[];
  env: NodeJS.ProcessEnv;
}

/** The command as one argv, for a process that runs it itself (the dump front, the helper's init). */
export function argvOf(c: Command): string[] {
  return [c.file, ...c.args];
}

export interface CriuResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  /** CRIU (or its wrapper) could not be started at all. */
  error?: Error;
}

export interface DumpRequest {
  pid: number;
  imagesDir: string;
  workDir: string;
  /** Unix socket inodes outside the tree (stdio socketpairs) that CRIU may leave unconnected. */
  externalUnix?: number[];
  timeoutMs: number;
  /** Run CRIU in the PID and mount namespaces of this (host) pid: `pid` is then as seen there. */
  enter?: number;
  /** With `enter`: its network namespace too (a program of `checkpt run --private-net`). */
  enterNet?: boolean;
  /** After the dump: keep running (default), or stay stopped until the caller decides. */
  leave?: 'running' | 'stopped';
  /** How TCP connections are dumped (tcpDumpArgs); default 'established'. */
  tcp?: TcpMode;
  /**
   * Checkpoint and exit from outside: checkpt-helper is CRIU's post-dump script and asks on this
   * Unix socket whether the file is durable (src/engine/post-dump.ts), trying to connect for
   * `timeoutMs`. (The dump front answers CRIU's notifications itself: helper.ts.)
   */
  postDump?: { sock: string; timeoutMs?: number };
  /**
   * Leave the lazy memory (private anonymous pages) in the frozen program instead of writing it
   * (`--lazy-pages`): CRIU keeps it in pipes and serves it, after the post-dump step, from its page
   * server on fd 4, which checkpt closes at once (nobody asks it: src/migrate/frozen-memory.ts reads
   * the frozen processes' memory itself). Post-copy migration only.
   */
  lazyMemory?: boolean;
  /**
   * The run id CRIU takes (CHECKPT_CRIU_RUN_ID; checkpt's CRIU build, run-id-from-env.patch): the
   * dump's network lock is then the table `inet CRIU-<runId>`, which checkpt can remove by name
   * if CRIU dies before it does (netlock.ts, releaseStrayLocks).
   */
  runId?: string;
  /**
   * Bytes CRIU allocates for the first pages image at its start, while the program still runs
   * (CHECKPT_CRIU_PAGES_SPARE; checkpt's CRIU build, xfer-spare-pages-image.patch): for images on
   * tmpfs, which otherwise allocates them a page at a time inside the freeze (staging.ts pagesSpare).
   */
  spareBytes?: number;
}

export interface RestoreArgsRequest {
  imagesDir: string;
  workDir: string;
  /** Resource key (as CRIU names it) to the restorer's fd that replaces it. */
  inherit: Array<{ fd: number; key: string }>;
  /** Memory comes from CRIU's lazy-pages daemon, already listening in workDir. */
  lazy?: boolean;
  /** The copy waits in CRIU's post-restore step for checkpt's verdict (CHECKPT_HOLD_SOCK). */
  hold?: boolean;
  /** Restore on the host with the granted CRIU (an image made with it, src/engine/grant.ts). */
  granted?: boolean;
  /** Restore TCP connections closed: the host still uses their 4-tuples (src/engine/sockets.ts), or the
   * image was dumped without a network lock (--tcp-close, which CRIU then requires on restore). */
  tcpClose?: boolean;
}

const LOG_TAIL_LINES = 25;

export const DUMP_LOG = 'dump.log';
export const RESTORE_LOG = 'restore.log';
export const LAZY_PAGES_LOG = 'lazy-pages.log';

interface Request {
  verb: 'dump' | 'restore' | 'lazy-pages' | 'check' | '--version';
  /** Where the images are and CRIU works; CRIU then logs into `log` there at checkpt's level. */
  dirs?: { images: string; work: string; log: string };
  args?: string[];
  /** Run CRIU in the PID and mount namespaces of this host pid (and its network namespace: `enterNet`). */
  enter?: number;
  enterNet?: boolean;
  /** CRIU dies with checkpt, however checkpt ends (even killed itself). */
  dieWithUs?: boolean;
  /** Run the administrator's granted CRIU (src/engine/grant.ts): on the host, without root. */
  granted?: boolean;
  env?: Record<string, string>;
}

/** scripts/criu-patches/: CRIU dies with the parent named in CHECKPT_CRIU_PDEATHSIG. */
const PDEATHSIG_PATCH = 'pdeathsig-from-env.patch';

/** The one way a CRIU command line is made. */
function request(req: Request): Command {
  let args: string[] = [req.verb];
  if (req.dirs)
    args.push('-D', req.dirs.images, '-W', req.dirs.work, '-o', req.dirs.log, logLevel());
  args.push(...(req.args ?? []));
  // Without root CRIU runs as uid 0 of the user's own namespaces and must accept their limits.
  const unprivileged = rootless();
  if (unprivileged && req.verb !== '--version') args.push('--unprivileged');
  // The version asked is the one that will run: on the host without root, the granted copy.
  const granted =
    req.granted === true ||
    ((req.verb === '--version' || req.verb === 'check') && grantedCriu() !== undefined);
  let file = granted ? grantedCriuPath : criuPath;
  if (req.enter !== undefined) {
    // The user namespace first: it owns the PID and mount namespaces and gives CRIU its rights
    // there. The helper makes one when not root (native/checkpt-helper.c), and only then.
    const userns = process.geteuid?.() !== 0 ? ['-U', '--preserve-credentials'] : [];
    const net = req.enterNet === true ? ['-n'] : [];
    args = ['-t', String(req.enter), ...userns, '-p', '-m', ...net, '--', file, ...args];
    file = 'nsenter';
  }
  let env = { ...criuEnv(), ...req.env };
  if (req.dieWithUs && file === criuPath && ownBuildHas(PDEATHSIG_PATCH)) {
    // checkpt's CRIU sets it itself: no setpriv exec in front of the daemon.
    env = { ...env, [CRIU_PDEATHSIG.name]: String(process.pid) };
  } else if (req.dieWithUs) {
    args = ['--pdeathsig', 'KILL', '--', file, ...args];
    file = 'setpriv';
  }
  return { file, args, env };
}

/**
 * `criu dump` for a request (dumpFromOutside runs it through startCriu). The program's dump front
 * runs the same dump over CRIU's RPC instead (`criu swrk`), translating each of these options into
 * the request's criu_opts, and refuses one it has no counterpart for (native/checkpt-helper.c,
 * dump_opts_from_argv).
 */
export function dumpCommand(req: Omit<DumpRequest, 'timeoutMs'>): Command {
  const args = [
    '-t',
    String(req.pid),
    req.leave === 'stopped' ? '--leave-stopped' : '--leave-running',
    '--shell-job',
    '--file-locks',
    ...tcpDumpArgs(req.tcp ?? 'established'),
  ];
  for (const ino of req.externalUnix ?? []) args.push('--external', `unix[${ino}]`);
  if (req.postDump) args.push('--action-script', helperPath());
  if (req.lazyMemory) args.push('--lazy-pages', '--ps-socket', String(PAGE_SERVER_FD));
  const env: Record<string, string> = {};
  if (req.runId !== undefined) env.CHECKPT_CRIU_RUN_ID = req.runId;
  if (req.spareBytes !== undefined && !req.lazyMemory)
    env.CHECKPT_CRIU_PAGES_SPARE = String(Math.ceil(req.spareBytes));
  if (req.postDump) {
    env.CHECKPT_POST_DUMP_SOCK = req.postDump.sock;
    env[SCRIPT_ACTIONS.name] = 'post-dump';
    if (req.postDump.timeoutMs !== undefined)
      env.CHECKPT_POST_DUMP_TIMEOUT_MS = String(req.postDump.timeoutMs);
  }
  return request({
    verb: 'dump',
    dirs: { images: req.imagesDir, work: req.workDir, log: DUMP_LOG },
    args,
    // A program on the host (not in namespaces of checkpt's) checkpointing itself without root.
    ...(req.enter === undefined && grantedCriu() !== undefined ? { granted: true } : {}),
    ...(req.enter === undefined ? {} : { enter: req.enter }),
    ...(req.enterNet === true ? { enterNet: true } : {}),
    env,
  });
}

/** `criu restore` (the helper's init runs it, inside the copy's new namespaces). */
export function restoreCommand(req: RestoreArgsRequest): Command {
  const args = [
    '--restore-detached',
    '--shell-job',
    '--file-locks',
    req.tcpClose ? '--tcp-close' : '--tcp-established',
  ];
  if (req.lazy) args.push('--lazy-pages');
  if (req.hold) args.push('--action-script', helperPath());
  for (const { fd, key } of req.inherit) args.push('--inherit-fd', `fd[${fd}]:${key}`);
  return request({
    verb: 'restore',
    dirs: { images: req.imagesDir, work: req.workDir, log: RESTORE_LOG },
    args,
    ...(req.granted === true ? { granted: true } : {}),
  });
}

/** The lazy-pages daemon's fd for the connected page server socket (startCriu's `pageSocket`). */
export const PAGE_SERVER_FD = 4;

/**
 * `criu lazy-pages`, which says on fd 3 when it listens; it dies with checkpt. With `pageServer`
 * it reads the lazy pages from the page server on fd 4 (`--ps-socket`: an already connected socket,
 * so there is no address to connect to) instead of from the images.
 */
export function lazyPagesCommand(
  imagesDir: string,
  workDir: string,
  pageServer = false,
  stagedMap?: string,
  pin?: number,
): Command {
  const args = ['--status-fd', '3'];
  if (pageServer) args.push('--page-server', '--ps-socket', String(PAGE_SERVER_FD));
  return request({
    verb: 'lazy-pages',
    dirs: { images: imagesDir, work: workDir, log: LAZY_PAGES_LOG },
    args,
    dieWithUs: true,
    // Checked blocks the daemon may read itself, and the BLAKE3 to check a fault's block with
    // (checkpt's CRIU build; others ignore both).
    ...(pageServer && stagedMap !== undefined
      ? {
          env: {
            [STAGED_MAP.name]: stagedMap,
            ...blake3Library(),
            ...(pin === undefined ? {} : { [LAZY_HOLD.name]: lazyHold(pin) }),
          },
        }
      : {}),
  });
}

/** checkpt's BLAKE3 addon for the daemon, where there is one that works. */
function blake3Library(): Record<string, string> {
  const path = native('checkpt-blake3.node', true).found?.path;
  return path === undefined ? {} : { [HASH_LIBRARY.name]: path };
}

/** `criu check`, or `criu check --feature NAME`. */
export function checkCommand(feature?: string): Command {
  return request({ verb: 'check', args: feature === undefined ? [] : ['--feature', feature] });
}

export function versionCommand(): Command {
  return request({ verb: '--version' });
}

/** Whether `criu check [--feature NAME]` passes here, and what it said. */
export function check(
  feature?: string,
  timeoutMs = 30_000,
): { ok: boolean; output: string; error?: Error } {
  const r = runCriuSync(checkCommand(feature), timeoutMs);
  const out = { ok: r.status === 0 && !r.timedOut, output: `${r.stdout}${r.stderr}` };
  return r.error ? { ...out, error: r.error } : out;
}

/** Runs a CRIU command to its end, killing it after `timeoutMs`. */
export function runCriu(cmd: Command, timeoutMs: number): Promise<CriuResult> {
  return startCriu(cmd, { timeoutMs }).result;
}

/** The same, blocking: for the short verbs (check, --version) of synchronous callers. */
export function runCriuSync(cmd: Command, timeoutMs: number): CriuResult {
  const r = childProcess().spawnSync(cmd.file, cmd.args, {
    encoding: 'utf8',
    env: cmd.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  const timedOut = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
  const result: CriuResult = {
    status: r.status,
    signal: r.signal,
    timedOut,
    stdout: r.stdout ?? '',
    stderr: r.stderr ?? '',
  };
  if (r.error && !timedOut) result.error = r.error;
  return result;
}

/** A CRIU under way; `stopTimer` ends its timeout once the slow part is someone else's (packing). */
export interface CriuRun {
  result: Promise<CriuResult>;
  stopTimer(): void;
  /** The process started (CRIU, or its wrapper): CRIU and its action scripts descend from it. */
  pid: number | undefined;
  /** With `statusFd`: CRIU's fd 3, on which it says it is ready (--status-fd 3). */
  status?: NodeJS.ReadableStream;
  /** With `pageSocket`: our end of the socketpair that is CRIU's fd 4. */
  pageSocket?: Duplex;
  /** Whether it has not exited yet. */
  running(): boolean;
  /** Whether its deadline passed (it was interrupted then); stopTimer() no longer helps. */
  timedOut(): boolean;
}

export interface StartOptions {
  /** Kill it (SIGKILL) after this long; none: it runs until it ends or is stopped. */
  timeoutMs?: number;
  /** The (host) pid of the process tree it dumps: past the deadline, interrupted only where that spares it. */
  program?: number;
  /**
   * Where the program's processes other than its first are: `depth` levels and more below `root`
   * (host pids). One of them dead in CRIU's hands stops the dump; the first's death is the init's.
   */
  below?: { root: number; depth: 1 | 2 };
  /** Give it a pipe as fd 3 and no output (a daemon's status fd), instead of capturing its output. */
  statusFd?: boolean;
  /** Also a connected Unix stream socket as fd 4 (libuv makes it with socketpair). */
  pageSocket?: boolean;
}

/** Starts a CRIU command: every CRIU checkpt itself runs is started here. */
export function startCriu(cmd: Command, opts: StartOptions = {}): CriuRun {
  const capture = !opts.statusFd;
  const fd4 = opts.pageSocket ? ['pipe' as const] : [];
  const child = spawnFast(cmd.file, cmd.args, {
    stdio: capture
      ? ['ignore', 'pipe', 'pipe', ...(opts.pageSocket ? ['ignore' as const] : []), ...fd4]
      : ['ignore', 'ignore', 'ignore', 'pipe', ...fd4],
    env: cmd.env,
  });
  let timer: NodeJS.Timeout | undefined;
  let watch: NodeJS.Timeout | undefined;
  let ended = false;
  let timedOut = false;
  const result = new Promise<CriuResult>((resolve) => {
    let stdout = '';
    let stderr = '';
    if (capture) {
      child.stdout?.setEncoding('utf8');
      child.stdout?.on('data', (d: string) => {
        if (stdout.length < 65536) stdout += d;
      });
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (d: string) => {
        if (stderr.length < 65536) stderr += d;
      });
    }
    if (opts.timeoutMs !== undefined)
      timer = setTimeout(() => {
        timedOut = true;
        interrupt(child.pid, cmd.file === 'nsenter', opts.program, (t) => (timer = t));
      }, opts.timeoutMs);
    // A process below the program dead in CRIU's hands: stopped as at the deadline, and said.
    if (opts.timeoutMs !== undefined && opts.below !== undefined) {
      const { root, depth } = opts.below;
      const program = opts.program;
      let seen: { pid: number; at: number } | undefined;
      watch = setInterval(() => {
        if (ended || timedOut || child.pid === undefined) return;
        const dead = deadInCriuHands(root, depth, processTree(child.pid));
        if (dead === undefined || dead !== seen?.pid) {
          seen = dead === undefined ? undefined : { pid: dead, at: Date.now() };
          return;
        }
        if (Date.now() - seen.at < DEAD_HELD_MS) return;
        clearInterval(watch);
        clearTimeout(timer);
        timedOut = true;
        stderr += `checkpt: process ${dead} of the program died while CRIU checkpointed it, and CRIU held on to it for ${DEAD_HELD_MS} ms: stopping the checkpoint\n`;
        interrupt(child.pid, cmd.file === 'nsenter', program, (t) => (timer = t));
      }, DEAD_POLL_MS);
    }
    child.on('error', (error) => {
      ended = true;
      clearTimeout(timer);
      clearInterval(watch);
      resolve({
        status: null,
        signal: null,
        timedOut,
        stdout,
        stderr: stderr + error.message,
        error,
      });
    });
    // With output captured, all of it is in once the pipes close; a daemon's children may hold fd 3.
    child.on(capture ? 'close' : 'exit', (status: number | null, signal: NodeJS.Signals | null) => {
      ended = true;
      clearTimeout(timer);
      clearInterval(watch);
      resolve({ status, signal, timedOut, stdout, stderr });
    });
  });
  const run: CriuRun = {
    result,
    stopTimer: () => {
      if (!timedOut) clearTimeout(timer);
    },
    timedOut: () => timedOut,
    pid: child.pid,
    running: () => !ended && child.exitCode === null && child.signalCode === null,
  };
  if (!capture) run.status = child.stdio[3] as NodeJS.ReadableStream;
  if (opts.pageSocket) run.pageSocket = child.stdio[PAGE_SERVER_FD] as Duplex;
  return run;
}

/** How long a process of the program's may lie dead in CRIU's hands before the dump is stopped, and how often that is looked at (the native front's DEAD_HELD_MS). */
const DEAD_HELD_MS = 1000;
const DEAD_POLL_MS = 250;

/** From CRIU's SIGALRM to SIGKILL: its handler fails the call it waits in and retries each second, five times. */
const INTERRUPT_GRACE_MS = 5500;

/** Past the deadline, how long CRIU may go on to a moment where interrupting it spares the program. */
const HOLD_GRACE_MS = 10_000;

/**
 * Stops a CRIU past its deadline without harm to the program: killed at once, CRIU could leave
 * its parasite in it, which then dies of its trap (SIGTRAP). SIGALRM makes CRIU's dump fail the
 * call it waits in, so its failure path cures the program and lets it go, unless that call is its
 * wait for a trap: the trap's SIGTRAP then stays due. So CRIU goes on (SIGCONT) and is stopped
 * every 5 ms to look (criuHolds), and interrupted once it holds `program` nowhere dangerous (or
 * after HOLD_GRACE_MS); what still runs after the grace is killed. `wrapped`: the root is nsenter,
 * which would die of SIGALRM and pass nothing on. `setTimer` gets each timer, for the caller to
 * clear when CRIU ends.
 */
function interrupt(
  pid: number | undefined,
  wrapped: boolean,
  program: number | undefined,
  setTimer: (t: NodeJS.Timeout) => void,
): void {
  if (pid === undefined) return;
  const criuOf = (): number[] => (wrapped ? processTree(pid).slice(1) : processTree(pid));
  for (const p of processTree(pid)) signalQuietly(p, 'SIGCONT');
  const holdUntil = Date.now() + HOLD_GRACE_MS;
  const attempt = (): void => {
    const criu = criuOf();
    let safe = program === undefined || Date.now() >= holdUntil;
    if (!safe) {
      for (const p of criu) signalQuietly(p, 'SIGSTOP');
      // Stopped for sure before looking: what it holds cannot change meanwhile.
      for (const end = Date.now() + 50; Date.now() < end && !criu.every(stopped););
      safe = !criuHolds(program as number);
    }
    if (safe) for (const p of criu) signalQuietly(p, 'SIGALRM');
    for (const p of criu) signalQuietly(p, 'SIGCONT');
    if (!safe) {
      setTimer(setTimeout(attempt, 5));
      return;
    }
    setTimer(
      setTimeout(() => {
        for (const p of processTree(pid).reverse()) signalQuietly(p, 'SIGKILL');
      }, INTERRUPT_GRACE_MS),
    );
  };
  attempt();
}

/** Whether `pid` is stopped (or gone). */
function stopped(pid: number): boolean {
  const state = procStatus(pid)?.State ?? 'X';
  return /^[TtZX]/.test(state);
}

/** `criu dump` run by checkpt itself (from outside the program): nothing when it worked, else why not. */
export async function dump(req: DumpRequest): Promise<void> {
  const r = await startDump(req).result;
  checkDump(shellStatus(r), r.timedOut, req.workDir, req.timeoutMs, r.stderr);
}

/** `criu dump` started for a caller that acts while it runs (checkpoint and exit's post-dump step). */
export function startDump(req: DumpRequest): CriuRun {
  return startCriu(dumpCommand(req), {
    timeoutMs: req.timeoutMs,
    program: req.enter ?? req.pid,
    // Under nsenter `pid` is the namespace's: the program's first process is a child of `enter`.
    below: req.enter === undefined ? { root: req.pid, depth: 1 } : { root: req.enter, depth: 2 },
    ...(req.lazyMemory ? { pageSocket: true } : {}),
  });
}

export interface CriuLog {
  /** The last lines, for error.logTail. */
  tail: string;
  /** CRIU's first error line, the one that usually says why, without its timestamp and source. */
  reason?: string;
}

/** Reads a CRIU log: the first error can sit far above the tail (single-stepping is verbose). */
export async function readLog(file: string, lines = LOG_TAIL_LINES): Promise<CriuLog> {
  let text: string;
  try {
    text = await fsPromises().readFile(file, 'utf8');
  } catch {
    return { tail: '' };
  }
  return logOf(text, lines);
}

/** readLog() where nothing else could run meanwhile: a failed dump's short log. */
function readLogSync(file: string, lines = LOG_TAIL_LINES): CriuLog {
  try {
    return logOf(readFileSync(file, 'utf8'), lines);
  } catch {
    return { tail: '' };
  }
}

function logOf(text: string, lines: number): CriuLog {
  const useful = usefulLines(text);
  const reason = firstError(useful.join('\n'));
  const tail = useful.slice(-lines).join('\n');
  return reason === undefined ? { tail } : { tail, reason };
}

export function tailOf(text: string, lines = LOG_TAIL_LINES): string {
  return usefulLines(text).slice(-lines).join('\n');
}

function usefulLines(text: string): string[] {
  // CRIU logs this on every run here; it is noise, not the reason for a failure.
  return text
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.includes("Can't setup RLIMIT_NOFILE"));
}

/** The first error line, preferring a specific one over CRIU's closing "Dumping FAILED." */
export function firstError(log: string): string | undefined {
  const errors = log.split('\n').filter((l) => /\bError\b/.test(l));
  const specific = errors.find((l) => !/(Dumping|Restoring) FAILED/.test(l)) ?? errors[0];
  return specific?.replace(/^\(\d+\.\d+\)\s+(\d+:\s+)?Error \([^)]*\):\s*/, '').trim();
}

/**
 * CRIU's log level: errors and warnings, which is what checkpt's messages come from; with
 * CHECKPT_DEBUG everything. Debug logging is written while the program is frozen: it lengthened a
 * checkpoint()'s pause by about 20% (docs/PERFORMANCE.md).
 */
function logLevel(): string {
  return DEBUG.get() ? '-v4' : '-v2';
}

/**
 * How TCP connections are dumped: kept and locked with nftables; recorded closed (no lock here);
 * or kept without a lock, in a private network namespace whose every process is frozen in the
 * dump (nftables cannot be used without root there, and nothing outside can send them packets).
 */
export type TcpMode = 'established' | 'close' | 'unlocked';

/**
 * 'established': connections are dumped, not closed: while the program is frozen CRIU drops their
 * packets (one nftables rule per connection; no iptables or nft program needed), so peers only see
 * a pause. 'close', where nftables cannot lock: connections are left alone and recorded as closed
 * (restore needs --tcp-close), since unlocked ones could lose data in flight. Either way a
 * connection still in a listener's queue (a client connecting during the freeze) is left out
 * rather than failing the dump: the original keeps it; a resumed copy never had it. 'unlocked':
 * dumped as 'established', without the lock (TcpMode).
 */
export function tcpDumpArgs(tcp: TcpMode): string[] {
  const common = ['--skip-in-flight'];
  if (tcp === 'close') return [...common, '--tcp-close', '--network-lock', 'skip'];
  if (tcp === 'unlocked') return [...common, '--tcp-established', '--network-lock', 'skip'];
  return [...common, '--tcp-established', '--network-lock', 'nftables'];
}

/** Turns how `criu dump` ended into nothing (it worked) or the CheckptError that says why not. */
export function checkDump(
  status: number | null,
  timedOut: boolean,
  workDir: string,
  timeoutMs: number,
  stderr = '',
): void {
  if (status === 0 && !timedOut) return;
  // Synchronous: checkpt() reads it inside the call that the program waits on.
  const { tail, reason } = readLogSync(join(workDir, DUMP_LOG));
  // The front interrupted CRIU only after its grace, and said what held the program that long.
  const late = /^checkpt: (CRIU still held the program .*)$/m.exec(stderr)?.[1];
  const died = /^checkpt: process (\d+) of the program died while CRIU/m.exec(stderr)?.[1];
  if (died !== undefined) throw diedInCriuHands(Number(died), tail || stderr);
  if (timedOut)
    throw new CheckptError(
      'ETIMEOUT',
      `CRIU did not finish the dump within ${Math.round(timeoutMs / 1000)} s and was stopped; the program keeps running. Raise the timeout option or CHECKPT_TIMEOUT if the process is very large.${late ? ` (${late}.)` : ''}`,
      { logTail: tail || stderr },
    );
  throw new CheckptError(
    'EDUMP',
    dumpFailureMessage(reason ?? firstError(stderr) ?? killedBy(status), tail),
    { logTail: tail || stderr },
  );
}

/** A process of the program's died in CRIU's hands, and the dump was stopped for it. */
export function diedInCriuHands(pid: number, logTail: string): CheckptError {
  return new CheckptError(
    'EDUMP',
    `Process ${pid}, one of the program's own, died while CRIU checkpointed it, and CRIU held on to it, so the checkpoint was stopped; nothing was written and the program keeps running. Take the checkpoint again.`,
    { logTail },
  );
}

/** A run's exit status as a shell gives it: 128 + the signal for one killed (nsenter re-raises CRIU's). */
export function shellStatus(r: {
  status: number | null;
  signal: NodeJS.Signals | null;
}): number | null {
  return r.signal === null ? r.status : 128 + osConstants.signals[r.signal];
}

/** The front reports a CRIU that died of a signal as 128 + the signal, as a shell would. */
export function killedBy(status: number | null): string | undefined {
  if (status === null || status <= 128 || status >= 128 + 65) return undefined;
  const name = Object.entries(osConstants.signals).find(([, n]) => n === status - 128)?.[0];
  return `CRIU was killed by ${name ?? `signal ${status - 128}`} before it finished`;
}

function dumpFailureMessage(reason: string | undefined, log: string): string {
  if (/io_uring/.test(`${reason ?? ''}\n${log}`)) return ioUringAdvice(process.version);
  const why = reason ?? 'see error.logTail';
  if (/No space left on device|Disk quota exceeded/.test(why))
    return `CRIU ran out of space for its images in the staging directory (${why}). Free space there, or point CHECKPT_TMPDIR at a filesystem with room; the program keeps running.`;
  if (/criu itself is within dumped tree/.test(why))
    return `CRIU cannot dump this program from inside: the program is PID 1 of its PID namespace (a container's first process), so CRIU, started by it, would be part of what it dumps. Start it with 'checkpt run -- node app.js' (or behind an init such as 'docker run --init'), so that it is not PID 1; the program keeps running.`;
  if (/session leader .* outside of its pid namespace/.test(why))
    return `CRIU cannot dump this program: its session began outside its PID namespace (${why}), as when a shell enters a namespace with 'unshare --pid' or 'nsenter' without starting a session of its own. Start the program with 'checkpt run -- <command>' or under 'setsid', which give it its own session; the program keeps running.`;
  if (/unix|socket|tcp|inet/i.test(why))
    return `CRIU cannot dump a socket of this program (${why}). TCP and UDP sockets are kept; this is usually a Unix-domain connection to a process outside the program, or a kind of socket CRIU does not support: close it in a beforeCheckpoint step (register()) and re-create it after. The program keeps running.`;
  return `CRIU could not dump the process: ${why}. The program keeps running; fix the cause and try again.`;
}

/**
 * CRIU stops a task at sigreturn with a hardware breakpoint; on some VMs (PVM guests among them)
 * debug registers never fire and CRIU waits forever. CRIU's fault-injection code 130 makes it
 * single-step through syscalls instead: a little slower, but it works everywhere.
 */
export function criuEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  // Every CRIU checkpt starts gets its environment here: its probe cache's directory too.
  prepareKdatDir();
  if (CRIU_BREAKPOINTS.get(env) || env.CRIU_FAULT) return env;
  return { ...env, CRIU_FAULT: '130' };
}

export interface CriuVersion {
  major: number;
  minor: number;
  patch: number;
  text: string;
}

let cachedVersion: CriuVersion | undefined;

/** `criu --version`; throws ENOCRIU with "need 4.2, found X" when missing or too old. */
export function criuVersion(): CriuVersion {
  const known = knownVersion();
  if (known) return known;
  const r = runCriuSync(versionCommand(), VERSION_TIMEOUT_MS);
  cachedVersion = versionOf(r.stdout, r.error);
  return cachedVersion;
}

/** The same check, while the caller goes on (a resume unpacks its image meanwhile). */
export async function criuVersionAsync(): Promise<CriuVersion> {
  const known = knownVersion();
  if (known) return known;
  const r = await runCriu(versionCommand(), VERSION_TIMEOUT_MS);
  cachedVersion = versionOf(r.stdout, r.error);
  return cachedVersion;
}

/** The version already known here: asked before, or recorded beside checkpt's own build. */
function knownVersion(): CriuVersion | undefined {
  return (cachedVersion ??= recordedVersion());
}

/**
 * The version scripts/install-criu.sh recorded beside checkpt's own CRIU, when that is the CRIU
 * that runs and nothing changed the binary after the record was written: a resume then starts no
 * `criu --version` (a process start on its critical path). Anything else: undefined, and CRIU
 * is asked.
 */
export function recordedVersion(
  home: string = ownCriuHome,
  binary: string = criuPath,
  source: CriuSource = criuSource,
): CriuVersion | undefined {
  const recorded = /^version=(\d+\.\d+(?:\.\d+)?)$/m.exec(
    buildInfo(home, binary, source) ?? '',
  )?.[1];
  // Too old is refused as CRIU's own answer would be.
  return recorded === undefined ? undefined : versionOf(`Version: ${recorded}`, undefined);
}

/**
 * Whether the CRIU that runs is checkpt's own build with `patch` (scripts/criu-patches/) in it,
 * as its BUILD-INFO records (a patch that did not fit a CRIU is left out and not listed there).
 */
export function ownBuildHas(
  patch: string,
  home: string = ownCriuHome,
  binary: string = criuPath,
  source: CriuSource = criuSource,
): boolean {
  const listed = /^patches=(.*)$/m.exec(buildInfo(home, binary, source) ?? '')?.[1];
  return listed?.split(' ').includes(patch) ?? false;
}

/** BUILD-INFO of checkpt's own CRIU, when it is the binary that runs, unchanged since. */
function buildInfo(home: string, binary: string, source: CriuSource): string | undefined {
  // Where `criu --version` would run the granted copy (request()), that copy answers.
  if (source !== 'checkpt build' || grantedCriu() !== undefined) return undefined;
  try {
    const info = join(home, 'BUILD-INFO');
    const text = readFileSync(info, 'utf8');
    const named = /^binary=(.*)$/m.exec(text)?.[1];
    if (named !== undefined) {
      // The binary recorded, by inode, size and mtime: one replaced or copied over differs.
      if (named !== binaryIdentity(binary)) return undefined;
    } else if (statSync(binary).ctimeMs > statSync(info).mtimeMs) {
      // An older record: a binary replaced, copied over or re-labelled since is newer than it.
      return undefined;
    }
    return text;
  } catch {
    return undefined;
  }
}

/**
 * A binary as scripts/install-criu.sh records it (`stat -c '%i %s %.9Y'`): inode, size and
 * mtime in seconds with nine decimals. A hard link (perf's build-id cache makes one) or a file
 * capability changes the ctime, not this.
 */
export function binaryIdentity(path: string): string {
  const s = statSync(path, { bigint: true });
  const ns = s.mtimeNs % 1_000_000_000n;
  return `${s.ino} ${s.size} ${s.mtimeNs / 1_000_000_000n}.${ns.toString().padStart(9, '0')}`;
}

/** `criu --version` answers at once; a CRIU that does not is as good as missing. */
const VERSION_TIMEOUT_MS = 30_000;

function versionOf(stdout: string, error: Error | undefined): CriuVersion {
  if (error)
    throw new CheckptError(
      'ENOCRIU',
      `CRIU is not installed (could not run '${criuPath}': ${error.message}). Install CRIU ${MIN_CRIU_TEXT} or newer: run scripts/install-criu.sh from the checkpt package as root (it builds one into /opt/checkpt/criu and leaves the system's packages alone).`,
      { cause: error },
    );
  const m = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(stdout);
  if (!m) throw new CheckptError('ENOCRIU', `Could not read CRIU's version from: ${stdout.trim()}`);
  const v = {
    major: Number(m[1]),
    minor: Number(m[2]),
    patch: Number(m[3] ?? 0),
    text: `${m[1]}.${m[2]}${m[3] ? '.' + m[3] : ''}`,
  };
  if (v.major < MIN_CRIU_MAJOR || (v.major === MIN_CRIU_MAJOR && v.minor < MIN_CRIU_MINOR))
    throw new CheckptError(
      'ENOCRIU',
      `CRIU is too old: need ${MIN_CRIU_TEXT} or newer, found ${v.text} at ${criuPath} (older CRIUs cannot dump TCP or UDP sockets on Linux 6.16 and newer). Run scripts/install-criu.sh as root: it builds CRIU ${MIN_CRIU_TEXT} from Debian's source into /opt/checkpt/criu, which checkpt then uses; or point CHECKPT_CRIU at a newer criu.`,
    );
  return v;
}
