import { closeSync, openSync, writeSync } from 'node:fs';
import { BENCH_TRACE } from './config.js';

/** The trace file, opened once: an open and a close for each of a resume's ~20 marks cost ms. */
let out: { file: string; fd: number } | undefined;

/**
 * For the bench's start-up measurement (CHECKPT_BENCH_TRACE): appends `STEP EPOCH_MS`, the time
 * on the clock the bench reads when it spawns the command. Date.now(), to the millisecond: the
 * global `performance` would load its module (~5 ms of the very start-up being measured).
 */
export function trace(step: string): void {
  try {
    const file = BENCH_TRACE.get();
    if (file === undefined) return;
    if (out?.file !== file) {
      if (out) closeSync(out.fd);
      out = undefined;
      out = { file, fd: openSync(file, 'a') };
    }
    // The middle of the millisecond it is in: no bias towards earlier.
    writeSync(out.fd, `${step} ${Date.now() + 0.5}\n`);
  } catch {
    // A measurement aid: it never makes the command fail.
  }
}
