/**
 * Checkpoints every N ms into a rotation: one at a time, the next due `intervalMs` after the
 * previous one started (at once when it took longer), none while one runs. A checkpoint that fails
 * (a full disk, a dump that failed) is skipped with an error, the previous good ones kept. The
 * first one taking longer than the interval refuses the schedule: it could never be kept.
 */
import { CheckptError } from '../common/errors.js';
import { formatDuration } from '../common/duration.js';
import type { Rotation, Taken } from './rotation.js';

export interface ScheduleOptions<R> {
  intervalMs: number;
  rotation: Rotation;
  /** Writes one checkpoint to `path` (durable when it resolves), its memory into `store` if given. */
  write: (path: string, store: string | undefined) => Promise<R>;
  /** The write returned in a resumed copy (see Rotation.take). */
  isCopy?: (result: R) => boolean;
  /** A checkpoint is in place and verified; `ms` from its start to then. */
  onTaken?: (t: Taken<R> & { ms: number }) => void;
  /** A checkpoint failed and was skipped; the schedule goes on. */
  onSkipped?: (e: CheckptError) => void;
  /** The schedule stopped itself: the first checkpoint took longer than the interval (ETIMEOUT). */
  onRefused?: (e: CheckptError) => void;
  /** Don't keep the event loop alive for the timer (a program checkpointing itself). */
  unref?: boolean;
}

export class Schedule<R> {
  private readonly o: ScheduleOptions<R>;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private taken = 0;
  /** Milliseconds the last checkpoint took, from its start to verified and in place. */
  lastMs = 0;

  constructor(o: ScheduleOptions<R>) {
    this.o = o;
  }

  start(): this {
    this.arm(this.o.intervalMs);
    return this;
  }

  /** Stops the timer and waits for the checkpoint in progress, if any, to end. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private arm(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.tick(), Math.max(0, ms));
    if (this.o.unref) this.timer.unref();
  }

  private tick(): void {
    const t0 = Date.now();
    this.running = this.once(t0).finally(() => {
      this.running = undefined;
      this.arm(this.o.intervalMs - (Date.now() - t0));
    });
  }

  private async once(t0: number): Promise<void> {
    try {
      const t = await this.o.rotation.take(this.o.write, this.o.isCopy);
      const ms = Date.now() - t0;
      if (t.copy) return;
      this.lastMs = ms;
      this.taken++;
      this.o.onTaken?.({ ...t, ms });
      if (this.taken === 1 && ms > this.o.intervalMs) {
        this.stopped = true;
        this.o.onRefused?.(
          new CheckptError(
            'ETIMEOUT',
            `A checkpoint every ${formatDuration(this.o.intervalMs)} is more often than one can be taken: the first took ${ms} ms. Periodic checkpoints stopped (${t.file} is kept); choose an interval of ${formatDuration(suggest(ms))} or more.`,
          ),
        );
      }
    } catch (e) {
      this.o.onSkipped?.(
        e instanceof CheckptError
          ? e
          : new CheckptError('EIO', `A periodic checkpoint failed: ${(e as Error).message}`, {
              cause: e,
            }),
      );
    }
  }
}

/** A round interval of at least twice `ms`. */
function suggest(ms: number): number {
  const want = 2 * ms;
  for (const step of [1000, 5000, 10_000, 30_000, 60_000, 300_000, 3_600_000])
    if (want <= step * 10) return Math.ceil(want / step) * step;
  return Math.ceil(want / 3_600_000) * 3_600_000;
}
