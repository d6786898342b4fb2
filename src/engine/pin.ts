import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/*
 * A lazy resume's first steps on one CPU: CRIU and the copy (checkpt-helper init --pin-cpu) and
 * CRIU's lazy-pages daemon (CHECKPT_CRIU_LAZY_HOLD), so that the copy's page faults are answered
 * on the CPU that took them instead of waking another. The same values as native/resume-front.c.
 */

/** How long after the restore the copy and the daemon stay on that CPU. */
export const PIN_MS = 300;
/** The daemon's background transfers wait until the copy has not faulted for this long. */
export const HOLD_QUIET_MS = 5;

/** The CPU this process last ran on; undefined when it may use only one (nothing to gain). */
export function pinCpu(): number | undefined {
  if (availableParallelism() < 2) return undefined;
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    // Field 39 (processor), counted after the command name, which may hold spaces.
    const cpu = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[36]);
    return Number.isInteger(cpu) && cpu >= 0 ? cpu : undefined;
  } catch {
    return undefined;
  }
}

/** CHECKPT_CRIU_LAZY_HOLD's value for `cpu`. */
export const lazyHold = (cpu: number): string => `${HOLD_QUIET_MS} ${PIN_MS} ${cpu}`;

/** checkpt-helper init's options for `cpu`. */
export const pinArgs = (cpu: number): string[] => [
  '--pin-cpu',
  String(cpu),
  '--pin-ms',
  String(PIN_MS),
];
