/**
 * Where a long operation says how far it got (`checkpt -r` unpacking, a checkpt run checkpoint):
 * the CLI draws it on a terminal (src/cli/progress.ts). Calls are cheap and may come often.
 */
export interface ProgressSink {
  /** `done` of `total` bytes of `phase` ("unpacking", "dumping", "writing"). */
  update(phase: string, done: number, total: number): void;
  /** The operation is over (done or failed): whatever was drawn goes away. */
  end(): void;
}
