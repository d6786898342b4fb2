/**
 * Runs one request at a time. Requests that arrive meanwhile collapse into one more, run after
 * it; that one is an exit request if any of them was. Nothing is lost and nothing overlaps.
 */
export class Coalescer {
  private running = false;
  private pending: { exit: boolean } | undefined;
  private readonly act: (exit: boolean) => Promise<void>;
  private readonly stopped: () => boolean;
  private idleWaiters: Array<() => void> = [];

  /** `act` must not throw; `stopped()` true drops what is still pending (the program is gone). */
  constructor(act: (exit: boolean) => Promise<void>, stopped: () => boolean = () => false) {
    this.act = act;
    this.stopped = stopped;
  }

  request(exit: boolean): void {
    if (this.running) {
      this.pending = { exit: exit || this.pending?.exit === true };
      return;
    }
    this.running = true;
    void this.act(exit).finally(() => {
      this.running = false;
      const next = this.pending;
      this.pending = undefined;
      if (next && !this.stopped()) this.request(next.exit);
      else for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** Settles once nothing runs and nothing is pending. */
  idle(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}
