import { appendFileSync } from 'node:fs';
import { BENCH_TRACE } from './config.js';

/**
 * For the bench's start-up measurement (CHECKPT_BENCH_TRACE): appends `STEP EPOCH_MS`, the time
 * on the clock the bench reads when it spawns the command. Unset, it does nothing (and the global
 * `performance`, whose module costs ~2 ms to load, is never touched).
 */
export function trace(step: string): void {
  let file: string | undefined;
  try {
    file = BENCH_TRACE.get();
    if (file === undefined) return;
    appendFileSync(file, `${step} ${(performance.timeOrigin + performance.now()).toFixed(3)}\n`);
  } catch {
    // A measurement aid: it never makes the command fail.
  }
}
