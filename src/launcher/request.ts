import { CheckptError } from '../common/errors.js';
import { BOOLEAN, checkOptions, OBJECT } from '../common/options.js';
import { checkpointSignals, signalNumber } from '../common/signals.js';
import { catches, procStatus } from '../common/procfs.js';

export interface RequestCheckpointOptions {
  /** Ask for "checkpoint and exit" (SIGCKPTEXIT) instead of "checkpoint and go on" (SIGCKPT). */
  exit?: boolean;
  /** Where the signal names come from (default process.env); both sides must agree on them. */
  env?: NodeJS.ProcessEnv;
}

export interface RequestCheckpointResult {
  /** The signal sent. */
  signal: NodeJS.Signals;
  /** The process it was sent to: the one asked for, or the nearest ancestor that handles it. */
  target: number;
  /** true when `target` is an ancestor of the process asked for (e.g. a `checkpt run` supervisor). */
  viaAncestor: boolean;
}

interface ProcInfo {
  ppid: number;
  zombie: boolean;
  status: Record<string, string>;
}

function procInfo(pid: number): ProcInfo | undefined {
  const status = procStatus(pid);
  if (!status) return undefined;
  return { ppid: Number(status.PPid), zombie: /^[ZX]/.test(status.State ?? ''), status };
}

const handles = (info: ProcInfo, sig: NodeJS.Signals): boolean =>
  catches(info.status, signalNumber(sig));

/**
 * Sends a checkpoint request (SIGCKPT, or SIGCKPTEXIT with `exit`) to `pid` if it handles it, else
 * to its nearest ancestor that handles both request signals, such as the `checkpt run` that
 * started it. Throws ENOTARGET rather than send a signal whose default action would kill `pid`.
 */
export function requestCheckpoint(
  pid: number,
  options: RequestCheckpointOptions = {},
): RequestCheckpointResult {
  if (!Number.isSafeInteger(pid) || pid <= 0)
    throw new CheckptError('ESRCH', `${pid} is not a process id; give a positive integer.`);
  checkOptions('requestCheckpoint()', options, { exit: BOOLEAN, env: OBJECT });
  const sig = checkpointSignals(options.env);
  const signal = options.exit ? sig.exit : sig.ckpt;
  const first = procInfo(pid);
  if (first === undefined || first.zombie)
    throw new CheckptError(
      'ESRCH',
      `There is no process ${pid}${first ? ' (it has exited)' : ''}; check the pid (ps -ef) and try again.`,
    );
  let target = pid;
  let info: ProcInfo | undefined = first;
  // An ancestor must catch both signals: one catching only SIGPWR is likely an init, not checkpt.
  while (
    !(target === pid ? handles(info, signal) : handles(info, sig.ckpt) && handles(info, sig.exit))
  ) {
    // PID 1 (init, or a namespace's) is never a target: it may give SIGPWR its own meaning.
    if (info.ppid <= 1) {
      throw new CheckptError(
        'ENOTARGET',
        `Process ${pid} does not handle checkpoint requests (${signal}), and neither does any process above it; sending ${signal} would kill it. Start it under 'checkpt run', or have it import checkpt.`,
      );
    }
    target = info.ppid;
    info = procInfo(target);
    if (info === undefined)
      throw new CheckptError(
        'ESRCH',
        `Process ${pid}'s parent ${target} went away while looking for who handles checkpoint requests; try again.`,
      );
  }
  try {
    process.kill(target, signal);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ESRCH')
      throw new CheckptError('ESRCH', `Process ${target} exited before it got ${signal}.`, {
        cause: e,
      });
    throw new CheckptError(
      code === 'EPERM' ? 'EPERM' : 'EIO',
      `Could not send ${signal} to process ${target}: ${(e as Error).message}. Checkpoint requests need the same user as the program, or root.`,
      { cause: e },
    );
  }
  return { signal, target, viaAncestor: target !== pid };
}
