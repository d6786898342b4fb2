/**
 * When `checkpt run --restart` brings a program back, and from what: pure decisions, no processes.
 * A failure (a signal, a non-zero status) restarts it after a back-off, at most `max` times in a
 * row (the count starts over once a restarted program has written a new good checkpoint). A copy
 * that dies within `quickMs` of being resumed marks its checkpoint suspect: the next restart
 * takes the one before it; a second quick death in a row is a crash loop, and we give up.
 */
export const DEFAULT_RESTARTS = 5;
/** A resumed copy that dies sooner than this did not get going: its checkpoint is suspect. */
export const QUICK_DEATH_MS = 1000;

export type Decision =
  | { kind: 'restart'; delayMs: number; attempt: number; exclude: ReadonlySet<number> }
  | { kind: 'give-up'; why: string };

export interface Ended {
  ranMs: number;
  /** The rotation number and file this run was resumed from; undefined for a fresh start. */
  resumedFrom?: { seq: number; path: string };
}

/** 250 ms, 500 ms, 1 s, ... at most 8 s before restart number `attempt` (from 1). */
export function backoffMs(attempt: number): number {
  return Math.min(250 * 2 ** Math.max(0, attempt - 1), 8000);
}

export class RestartPolicy {
  readonly max: number;
  readonly quickMs: number;
  private inARow = 0;
  private quick: string[] = [];
  private readonly suspect = new Set<number>();

  constructor(max: number = DEFAULT_RESTARTS, quickMs: number = QUICK_DEATH_MS) {
    this.max = max;
    this.quickMs = quickMs;
  }

  /** A new good checkpoint since the last restart: the program makes progress. */
  progressed(): void {
    this.inARow = 0;
  }

  /** The program failed (the caller checked): restart it, from what, or give up and why. */
  failed(e: Ended): Decision {
    if (e.resumedFrom !== undefined && e.ranMs < this.quickMs) {
      this.suspect.add(e.resumedFrom.seq);
      this.quick.push(e.resumedFrom.path);
      if (this.quick.length >= 2)
        return {
          kind: 'give-up',
          why: `the program died right after being resumed from ${this.quick.join(' and then from ')} (within ${this.quickMs} ms each): a crash loop, so no more restarts`,
        };
    } else this.quick = [];
    if (this.inARow >= this.max)
      return {
        kind: 'give-up',
        why: `it was restarted ${this.max} time${this.max === 1 ? '' : 's'} in a row without writing a new checkpoint, the most --restart=${this.max} allows`,
      };
    this.inARow++;
    return {
      kind: 'restart',
      delayMs: backoffMs(this.inARow),
      attempt: this.inARow,
      exclude: this.suspect,
    };
  }
}
