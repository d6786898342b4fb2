import { constants } from 'node:os';
import { CheckptError } from './errors.js';
import { SIGCKPT, SIGCKPTEXIT } from './config.js';

/** The Linux signals that stand in for DragonFly's SIGCKPT and SIGCKPTEXIT. */
export interface CheckpointSignals {
  /** "Checkpoint and continue" (default SIGSTKFLT, overridden by CHECKPT_SIGCKPT). */
  ckpt: NodeJS.Signals;
  /** "Checkpoint and exit" (default SIGPWR, overridden by CHECKPT_SIGCKPTEXIT). */
  exit: NodeJS.Signals;
}

export { DEFAULT_SIGCKPT, DEFAULT_SIGCKPTEXIT } from './config.js';

/** The two signals in effect for this environment; both sides of a request must agree on them. */
export function checkpointSignals(env: NodeJS.ProcessEnv = process.env): CheckpointSignals {
  const ckpt = SIGCKPT.get(env);
  const exit = SIGCKPTEXIT.get(env);
  if (ckpt === exit)
    throw new CheckptError(
      'EBADCONFIG',
      `CHECKPT_SIGCKPT and CHECKPT_SIGCKPTEXIT are both ${ckpt}; they must differ so a program can tell "checkpoint" from "checkpoint and exit".`,
    );
  return { ckpt, exit };
}

/** The signals that ask a program to stop (kill, ^C, a hang-up), as opposed to a crash. */
export const STOPPING: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

/** The signal number, for comparing with /proc/PID/status masks. */
export function signalNumber(sig: NodeJS.Signals): number {
  return constants.signals[sig];
}
