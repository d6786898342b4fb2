import { PerformanceObserver, constants, performance } from 'node:perf_hooks';
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
 * Who asks: `running`, `checkpoint()`, whose program runs on right after it (its pause is its
 * longest turn: it collects only when V8 is not quiet); `waiting`, `checkpt()` or a
 * checkpoint-and-exit, whose program waits for its file anyway. Each runs one regular full
 * collection; with CHECKPT_GC=compact a waiting one runs V8's most thorough (what it does before
 * giving up on memory: every fragmented page compacted, the young generation and the pages V8
 * keeps in reserve given back; two collections or more): smaller files (the heavy server's 107-119
 * -> 73 MB), but copies that answered later (idle ~10 ms, heavy ~45 ms in half the resumes;
 * docs/PERFORMANCE.md, stop 60). Node 20 collects the regular way either way.
 */
export type Collection = 'running' | 'waiting';

let collect: Collect | null | undefined;

/**
 * What V8 says of its own collections, from checkpt's load on (performance entries of kind `gc`,
 * each a turn after the event): when its incremental marking began (an entry of kind INCREMENTAL
 * comes at its start, the full collection's at its end) and when its last full collection ended.
 */
const v8Says = { markingSince: Number.NaN, fullEndedAt: Number.NEGATIVE_INFINITY };
let watchingSince = Number.NaN;
// checkpt's own last collection: it leaves no sweeping to V8's workers (collectBeforeDump).
const own = { from: Number.NaN, to: Number.NaN };
// Longer than V8 takes to sweep after a full collection of a 2 GB heap here (a copy that swept
// on over lazily loaded memory took ~155 ms more), and than a marking begun before checkpt loaded.
const QUIET_MS = 2000;

function noteCollections(list: { getEntries(): PerformanceEntry[] }): void {
  for (const e of list.getEntries()) {
    const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind;
    if (kind === constants.NODE_PERFORMANCE_GC_INCREMENTAL) v8Says.markingSince = e.startTime;
    else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
      v8Says.markingSince = Number.NaN;
      if (!(e.startTime >= own.from && e.startTime <= own.to))
        v8Says.fullEndedAt = e.startTime + e.duration;
    }
  }
}

function watch(): void {
  try {
    // Run once here: the entries of the collection before a dump come after it, and a copy
    // would compile this on its way out (test/api/way-out.test.mjs).
    noteCollections({ getEntries: () => [] });
    new PerformanceObserver(noteCollections).observe({ entryTypes: ['gc'] });
    watchingSince = performance.now();
  } catch {
    // Not watched: every checkpoint() collects.
  }
}
watch();

/**
 * Whether `checkpoint()`'s collection may be left out: V8 marks nothing, its own last full
 * collection (and the sweeping after it) is over, and checkpt has watched long enough to know. A
 * marking V8 begins after this look, while CRIU starts, is dumped with the program: its copies
 * finish it over memory they load page by page (slower to answer, nothing worse).
 */
function v8Quiet(): boolean {
  const now = performance.now();
  return (
    now - watchingSince > QUIET_MS &&
    Number.isNaN(v8Says.markingSince) &&
    now - v8Says.fullEndedAt > QUIET_MS
  );
}

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
 * `checkpoint()` collects only when V8 is not quiet (v8Quiet): in a lean program its turn was the
 * pause's longest stretch (heavy: 52-63 ms against a 43-51 ms freeze).
 */
export function collectBeforeDump(who: Collection = 'running'): void {
  const mode = GC.get();
  if (mode === 'off') return;
  if (who === 'running' && v8Quiet()) return;
  if (collect === undefined) collect = gcFunction();
  if (!collect) return;
  const concurrent = !process.execArgv.some((a) => SWEEPS_ALONE.test(a));
  if (concurrent) setFlagsFromString('--no-concurrent-sweeping');
  own.from = performance.now();
  try {
    // Forced, like the regular one: V8 drops no compiled code for it (a copy runs warm).
    if (who === 'waiting' && mode === 'compact' && thoroughHere)
      collect({ type: 'major', execution: 'sync', flavor: 'last-resort' });
    else collect();
  } finally {
    own.to = performance.now();
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
