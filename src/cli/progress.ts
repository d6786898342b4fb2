import { isTerminal } from '../common/builtin.js';
import { PROGRESS_MS } from '../common/config.js';
import type { ProgressSink } from '../common/progress.js';

/**
 * How progress is shown on a terminal:
 * - `line`: one line on stderr, rewritten in place with \r and erased at the end. Only where
 *   nothing else writes to the terminal meanwhile: `checkpt -r` before the copy runs, a
 *   checkpoint-and-exit of a checkpt run program (frozen from the dump until it is killed).
 * - `title`: the terminal's title (OSC 2), the old one saved first and put back at the end
 *   (xterm's title stack, CSI 22/23 t, which tmux and most terminals keep). For a checkpoint of a
 *   program that runs on meanwhile and owns the screen (checkpt run, with its pseudo-terminal or
 *   without): a line drawn there would mix with its output and corrupt full-screen programs.
 */
export type ProgressStyle = 'line' | 'title';

export interface TerminalProgressOptions {
  style: ProgressStyle;
  /** Default process.stderr; nothing at all is written unless it is a terminal. */
  stream?: NodeJS.WriteStream;
  /** Nothing is drawn for operations shorter than this (default CHECKPT_PROGRESS_MS, 1000 ms). */
  delayMs?: number;
  /** How often the display is redrawn (default 250 ms). */
  intervalMs?: number;
}

const MB = 1e6;

/** `checkpt: unpacking 120.5 / 601.0 MB, 310 MB/s`: `done` of `total`, and the rate of this phase. */
export function progressText(phase: string, done: number, total: number, ms: number): string {
  const rate = ms > 0 ? done / MB / (ms / 1000) : 0;
  const of = total > 0 ? ` / ${(total / MB).toFixed(1)}` : '';
  return `checkpt: ${phase} ${(done / MB).toFixed(1)}${of} MB, ${rate.toFixed(0)} MB/s`;
}

// Control characters of a file name must not reach the terminal as commands.
const printable = (s: string): string =>
  Array.from(s, (c) => {
    const n = c.charCodeAt(0);
    return n < 0x20 || (n >= 0x7f && n <= 0x9f) ? '?' : c;
  }).join('');

/**
 * A ProgressSink that draws on the terminal once the operation has lasted `delayMs`, and erases
 * what it drew at end(). Off a terminal it is inert: not one byte is written.
 */
export function terminalProgress(o: TerminalProgressOptions): ProgressSink {
  // Not process.stderr.isTTY: making process.stderr costs milliseconds at start-up.
  if (!(o.stream ? o.stream.isTTY === true : isTerminal(2)))
    return { update: () => undefined, end: () => undefined };
  const out = (): NodeJS.WriteStream => o.stream ?? process.stderr;
  const delayMs = o.delayMs ?? PROGRESS_MS.get();
  const start = Date.now();
  let phase = '';
  let phaseStart = start;
  let done = 0;
  let total = 0;
  let drawn = false;
  let last = '';
  let ended = false;
  const draw = (): void => {
    if (ended || phase === '' || Date.now() - start < delayMs) return;
    const text = printable(progressText(phase, done, total, Date.now() - phaseStart));
    if (text === last) return;
    last = text;
    if (o.style === 'title') {
      // Saved once, before the first change: end() puts it back.
      out().write(`${drawn ? '' : '\x1b[22;0t'}\x1b]2;${text}\x07`);
    } else {
      // A line longer than the terminal would wrap, and \r would then rewrite only its last part.
      const columns = out().columns;
      const width = columns > 1 ? columns - 1 : 79;
      out().write(`\r${text.slice(0, width)}\x1b[K`);
    }
    drawn = true;
  };
  const timer = setInterval(draw, o.intervalMs ?? 250);
  timer.unref();
  return {
    update(p, d, t) {
      if (p !== phase) {
        phase = p;
        phaseStart = Date.now();
      }
      done = d;
      total = t;
      // The first drawing comes as soon as it is due; later ones at the timer's pace.
      if (!drawn) draw();
    },
    end() {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      if (drawn) out().write(o.style === 'title' ? '\x1b[23;0t' : '\r\x1b[K');
    },
  };
}
