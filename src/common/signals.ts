import { constants } from 'node:os';
import { CheckptError } from './errors.js';

/** The Linux signals that stand in for DragonFly's SIGCKPT and SIGCKPTEXIT. */
export interface CheckpointSignals {
  /** "Checkpoint and continue" (default SIGSTKFLT, overridden by CHECKPT_SIGCKPT). */
  ckpt: NodeJS.Signals;
  /** "Checkpoint and exit" (default SIGPWR, overridden by CHECKPT_SIGCKPTEXIT). */
  exit: NodeJS.Signals;
}

export const DEFAULT_SIGCKPT = 'SIGSTKFLT';
export const DEFAULT_SIGCKPTEXIT = 'SIGPWR';

// Signals Node, the kernel or a terminal already give a meaning a checkpoint must not steal.
const RESERVED = new Set([
  'SIGUSR1', // opens Node's inspector
  'SIGKILL',
  'SIGSTOP',
  'SIGSEGV',
  'SIGBUS',
  'SIGFPE',
  'SIGILL',
  'SIGABRT',
  'SIGTRAP',
  'SIGCHLD',
  'SIGPIPE',
  'SIGCONT',
  'SIGTSTP',
  'SIGTTIN',
  'SIGTTOU',
  'SIGINT',
  'SIGQUIT',
  'SIGTERM',
  'SIGHUP',
  'SIGWINCH',
  'SIGPROF', // V8's CPU profiler
]);

function pick(variable: string, fallback: string, env: NodeJS.ProcessEnv): NodeJS.Signals {
  const raw = env[variable]?.trim();
  if (!raw) return fallback as NodeJS.Signals;
  const name = (raw.toUpperCase().startsWith('SIG') ? raw : `SIG${raw}`).toUpperCase();
  if (!(name in constants.signals))
    throw new CheckptError(
      'EBADNAME',
      `${variable}=${raw} is not a signal Linux knows. Use a name such as SIGURG or SIGXCPU, or unset it for the default ${fallback}.`,
    );
  if (RESERVED.has(name))
    throw new CheckptError(
      'EBADNAME',
      `${variable}=${raw} cannot be used: ${name} already means something to Node, the kernel or the terminal. Choose an unused signal (e.g. SIGURG or SIGXCPU) or unset it for the default ${fallback}.`,
    );
  return name as NodeJS.Signals;
}

/** The two signals in effect for this environment; both sides of a request must agree on them. */
export function checkpointSignals(env: NodeJS.ProcessEnv = process.env): CheckpointSignals {
  const ckpt = pick('CHECKPT_SIGCKPT', DEFAULT_SIGCKPT, env);
  const exit = pick('CHECKPT_SIGCKPTEXIT', DEFAULT_SIGCKPTEXIT, env);
  if (ckpt === exit)
    throw new CheckptError(
      'EBADNAME',
      `CHECKPT_SIGCKPT and CHECKPT_SIGCKPTEXIT are both ${ckpt}; they must differ so a program can tell "checkpoint" from "checkpoint and exit".`,
    );
  return { ckpt, exit };
}

/** The signal number, for comparing with /proc/PID/status masks. */
export function signalNumber(sig: NodeJS.Signals): number {
  return constants.signals[sig];
}
