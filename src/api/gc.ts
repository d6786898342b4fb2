import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GC } from '../common/config.js';

type Collect = () => void;

let collect: Collect | null | undefined;

// Flags with which V8 sweeps on the main thread anyway: the program's choice is then left as it is.
const SWEEPS_ALONE =
  /^--(no-concurrent-sweeping|no-concurrent_sweeping|single-threaded|single-threaded-gc|predictable)$/;

/**
 * A full garbage collection, right before the process is dumped (CHECKPT_GC), as OpenJDK CRaC does.
 * Dumped in the middle of an incremental mark-compact, a copy finishes it over memory it loads
 * lazily, page by page: 150-250 ms before a 160 MB server's first answer, against 11 ms for the
 * same collection in the original (docs/PERFORMANCE.md). Done here it takes a few ms, and the
 * image holds no garbage. V8 sweeps after a collection, on its worker threads unless told not to:
 * dumped meanwhile, a copy's workers swept on over lazily loaded memory (a 2 GB heap's copies
 * answered after ~280 ms instead of ~125). So this one collection leaves its sweeping to the main
 * thread, page by page as allocation needs it, in the original and in each copy alike.
 */
export function collectBeforeDump(): void {
  if (!GC.get()) return;
  if (collect === undefined) collect = gcFunction();
  if (!collect) return;
  const concurrent = !process.execArgv.some((a) => SWEEPS_ALONE.test(a));
  if (concurrent) setFlagsFromString('--no-concurrent-sweeping');
  try {
    collect();
  } finally {
    if (concurrent) setFlagsFromString('--concurrent-sweeping');
  }
}

/** V8's gc(), from a context made while --expose-gc was on; null where this Node will not give it. */
function gcFunction(): Collect | null {
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('typeof gc === "function" ? gc : null') as Collect | null;
  } catch {
    return null;
  } finally {
    // Contexts the program makes later get no gc() from us.
    setFlagsFromString('--no-expose-gc');
  }
}
