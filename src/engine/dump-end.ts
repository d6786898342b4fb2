/**
 * How the dump front (native/checkpt-helper.c, `dump`) says CRIU ended: "criu STATUS MS",
 * "timeout MS", "died PID MS" (a process of the program's died in CRIU's hands, and the front
 * stopped the dump) or "blocked WHY", to the packing worker on a pipe, or to a program that packs
 * its own checkpt() file on the control FIFO.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { checkDump, diedInCriuHands } from './criu.js';
import type { DumpJob } from './job.js';

export type FrontEnd = {
  status: number | null;
  timedOut: boolean;
  ms: number;
  /** The process of the program's that died while CRIU held it. */
  died?: number;
};

/** The front's word as CRIU's end; a program that never blocked is ETIMEOUT, anything else EHELPER. */
export function frontEnd(said: string, job: Pick<DumpJob, 'pid' | 'timeoutMs'>): FrontEnd {
  const [word, a, b] = said.trim().split(' ');
  if (word === 'criu') return { status: Number(a), timedOut: false, ms: Number(b) };
  if (word === 'timeout') return { status: null, timedOut: true, ms: Number(a) };
  if (word === 'died' && /^\d+$/.test(a ?? ''))
    return { status: null, timedOut: false, ms: Number(b), died: Number(a) };
  if (word === 'blocked' && a === 'timeout')
    throw new CheckptError(
      'ETIMEOUT',
      `Process ${job.pid} did not wait on its checkpoint channel within ${job.timeoutMs} ms; nothing was written and it keeps running.`,
    );
  throw new CheckptError(
    'EHELPER',
    `The checkpoint front (checkpt-helper dump) ended before it said how CRIU ended (${said.trim() || 'it said nothing'}); nothing was written and the program keeps running.`,
  );
}

/** CRIU's end as the front saw it: nothing when the dump worked, else the error that says why. */
export function checkFront(job: DumpJob, ended: FrontEnd): void {
  // CRIU's own stderr (a CRIU that fails before it opens its log) went to the worker's log.
  const stderr = ended.status === 0 ? '' : readQuietly(join(job.workDir, 'worker.log'));
  if (ended.died !== undefined) throw diedInCriuHands(ended.died, stderr);
  checkDump(ended.status, ended.timedOut, job.workDir, job.timeoutMs, stderr);
}

function readQuietly(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
