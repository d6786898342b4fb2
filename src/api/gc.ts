import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GC } from '../common/config.js';

type Collect = (options?: GcOptions) => void;

/** What V8's gc() takes from V8 12 (Node 22) on. */
interface GcOptions {
  type: 'major';
  execution: 'sync';
  flavor: 'last-resort';
}

/**
 * How thoroughly: `regular`, one full collection, the program running on right after it
 * (`checkpoint()`: its pause is its longest turn); `compact`, V8's most thorough one (what it
 * does before giving up on memory: every fragmented page compacted, the young generation and
 * the pages V8 keeps in reserve given back, its compilation cache cleared; two collections or
 * more), where the program waits for its file anyway (`checkpt()`, a checkpoint-and-exit): each
 * byte it frees is a byte not dumped, written or read back (the heavy server's file 120 -> 73
 * MB, docs/PERFORMANCE.md). Node 20 collects the regular way for both.
 */
export type Collection = 'regular' | 'compact';

let collect: Collect | null | undefined;

// V8 11 (Node 20) reads these options otherwise: asked for this, it only scavenged.
const THOROUGH_FROM_V8 = 12;
const thoroughHere = Number(process.versions.v8.split('.')[0]) >= THOROUGH_FROM_V8;

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
export function collectBeforeDump(how: Collection = 'regular'): void {
  if (!GC.get()) return;
  if (collect === undefined) collect = gcFunction();
  if (!collect) return;
  const concurrent = !process.execArgv.some((a) => SWEEPS_ALONE.test(a));
  if (concurrent) setFlagsFromString('--no-concurrent-sweeping');
  try {
    // Forced, like the regular one: V8 drops no compiled code for it (a copy runs warm).
    if (how === 'compact' && thoroughHere)
      collect({ type: 'major', execution: 'sync', flavor: 'last-resort' });
    else collect();
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
