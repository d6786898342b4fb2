import { execFile, spawn, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { CRIU_BREAKPOINTS, DEBUG } from '../common/config.js';
import { ioUringAdvice } from './iouring.js';
import { criuPath } from './paths.js';

export const MIN_CRIU_MAJOR = 4;
/** 4.2: earlier CRIUs cannot dump any TCP or UDP socket on Linux 6.16 and newer (CRIU issues 2705, 2718). */
export const MIN_CRIU_MINOR = 2;
export const MIN_CRIU_TEXT = `${MIN_CRIU_MAJOR}.${MIN_CRIU_MINOR}`;

export interface CriuResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stderr: string;
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
  /** After the dump: keep running (default), or stay stopped until the caller decides. */
  leave?: 'running' | 'stopped';
  /** How TCP connections are dumped (tcpDumpArgs); default 'established'. */
  tcp?: 'established' | 'close';
}

export interface RestoreArgsRequest {
  imagesDir: string;
  workDir: string;
  /** Resource key (as CRIU names it) to the restorer's fd that replaces it. */
  inherit: Array<{ fd: number; key: string }>;
  /** Memory comes from CRIU's lazy-pages daemon, already listening in workDir. */
  lazy?: boolean;
  /** Restore TCP connections closed: the host still uses their 4-tuples (src/engine/sockets.ts), or the
   * image was dumped without a network lock (--tcp-close, which CRIU then requires on restore). */
  tcpClose?: boolean;
}

const LOG_TAIL_LINES = 25;

/** Every CRIU verb goes through here: one place for logging, timeouts and error shape. */
export function runCriu(args: string[], timeoutMs: number, enter?: number): Promise<CriuResult> {
  return startCriu(args, timeoutMs, enter).result;
}

/** A CRIU under way; `stopTimer` ends its timeout once the slow part is someone else's (packing). */
export interface CriuRun {
  result: Promise<CriuResult>;
  stopTimer(): void;
  /** The process started (CRIU, or nsenter running it): CRIU and its action scripts descend from it. */
  pid: number | undefined;
}

export function startCriu(
  args: string[],
  timeoutMs: number,
  enter?: number,
  extraEnv: Record<string, string> = {},
): CriuRun {
  const [cmd, argv] =
    enter === undefined
      ? [criuPath, args]
      : ['nsenter', ['-t', String(enter), '-p', '-m', '--', criuPath, ...args]];
  let timer: NodeJS.Timeout | undefined;
  let pid: number | undefined;
  const result = new Promise<CriuResult>((resolve) => {
    const child = spawn(cmd, argv, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...criuEnv(), ...extraEnv },
    });
    pid = child.pid;
    let stderr = '';
    let timedOut = false;
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      if (stderr.length < 65536) stderr += d;
    });
    timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ status: null, signal: null, timedOut, stderr: stderr + String(err.message) });
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, timedOut, stderr });
    });
  });
  return { result, stopTimer: () => clearTimeout(timer), pid };
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
    text = await readFile(file, 'utf8');
  } catch {
    return { tail: '' };
  }
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

/** The arguments of `criu dump` for a request (the program's dump front runs them itself). */
export function dumpArgs(req: Omit<DumpRequest, 'timeoutMs' | 'enter'>): string[] {
  const args = [
    'dump',
    '-t',
    String(req.pid),
    '-D',
    req.imagesDir,
    '-W',
    req.workDir,
    '-o',
    DUMP_LOG,
    logLevel(),
    req.leave === 'stopped' ? '--leave-stopped' : '--leave-running',
    '--shell-job',
    '--file-locks',
    ...tcpDumpArgs(req.tcp ?? 'established'),
  ];
  for (const ino of req.externalUnix ?? []) args.push('--external', `unix[${ino}]`);
  return args;
}

/**
 * 'established': connections are dumped, not closed: while the program is frozen CRIU drops their
 * packets (one nftables rule per connection; no iptables or nft program needed), so peers only see
 * a pause. 'close', where nftables cannot lock: connections are left alone and recorded as closed
 * (restore needs --tcp-close), since unlocked ones could lose data in flight. Either way a
 * connection still in a listener's queue (a client connecting during the freeze) is left out
 * rather than failing the dump: the original keeps it; a resumed copy never had it.
 */
export function tcpDumpArgs(tcp: 'established' | 'close'): string[] {
  const common = ['--skip-in-flight'];
  if (tcp === 'close') return [...common, '--tcp-close', '--network-lock', 'skip'];
  return [...common, '--tcp-established', '--network-lock', 'nftables'];
}

export const DUMP_LOG = 'dump.log';

export async function dump(req: DumpRequest): Promise<void> {
  const r = await runCriu(dumpArgs(req), req.timeoutMs, req.enter);
  await checkDump(r.status, r.timedOut, req.workDir, req.timeoutMs, r.stderr);
}

/** Turns how `criu dump` ended into nothing (it worked) or the CheckptError that says why not. */
export async function checkDump(
  status: number | null,
  timedOut: boolean,
  workDir: string,
  timeoutMs: number,
  stderr = '',
): Promise<void> {
  if (status === 0 && !timedOut) return;
  const { tail, reason } = await readLog(join(workDir, DUMP_LOG));
  if (timedOut)
    throw new CheckptError(
      'ETIMEOUT',
      `CRIU did not finish the dump within ${Math.round(timeoutMs / 1000)} s and was stopped; the program keeps running. Raise the timeout option or CHECKPT_TIMEOUT if the process is very large.`,
      { logTail: tail },
    );
  throw new CheckptError(
    'EDUMP',
    dumpFailureMessage(reason ?? firstError(stderr) ?? killedBy(status), tail),
    { logTail: tail || stderr },
  );
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
  if (CRIU_BREAKPOINTS.get(env) || env.CRIU_FAULT) return env;
  return { ...env, CRIU_FAULT: '130' };
}

export function restoreArgs(req: RestoreArgsRequest): string[] {
  const args = [
    'restore',
    '-D',
    req.imagesDir,
    '-W',
    req.workDir,
    '-o',
    'restore.log',
    logLevel(),
    '--restore-detached',
    '--shell-job',
    '--file-locks',
    req.tcpClose ? '--tcp-close' : '--tcp-established',
  ];
  if (req.lazy) args.push('--lazy-pages');
  for (const { fd, key } of req.inherit) args.push('--inherit-fd', `fd[${fd}]:${key}`);
  return args;
}

export interface CriuVersion {
  major: number;
  minor: number;
  patch: number;
  text: string;
}

let cachedVersion: CriuVersion | undefined;

/** `criu --version`; throws ENOCRIU with "need 4.0, found X" when missing or too old. */
export function criuVersion(): CriuVersion {
  if (cachedVersion) return cachedVersion;
  const r = spawnSync(criuPath, ['--version'], { encoding: 'utf8' });
  cachedVersion = versionOf(r.stdout, r.error);
  return cachedVersion;
}

/** The same check, while the caller goes on (a resume unpacks its image meanwhile). */
export function criuVersionAsync(): Promise<CriuVersion> {
  if (cachedVersion) return Promise.resolve(cachedVersion);
  return new Promise((resolve, reject) => {
    execFile(criuPath, ['--version'], { encoding: 'utf8' }, (error, stdout) => {
      try {
        cachedVersion = versionOf(stdout, error?.code === undefined ? undefined : error);
        resolve(cachedVersion);
      } catch (e) {
        reject(e);
      }
    });
  });
}

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
