import { appendFileSync } from 'node:fs';
import { BENCH_TRACE } from './config.js';

/**
 * For the bench's start-up measurement (CHECKPT_BENCH_TRACE): appends `STEP EPOCH_MS`, the time
 * on the clock the bench reads when it spawns the command. Date.now(), to the millisecond: the
 * global `performance` would load its module (~5 ms of the very start-up being measured).
 */
export function trace(step: string): void {
  let file: string | undefined;
  try {
    file = BENCH_TRACE.get();
    if (file === undefined) return;
    // The middle of the millisecond it is in: no bias towards earlier.
    appendFileSync(file, `${step} ${Date.now() + 0.5}\n`);
  } catch {
    // A measurement aid: it never makes the command fail.
  }
}
