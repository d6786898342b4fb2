import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { CheckptError } from '../common/errors.js';
import { LAZY, LAZY_MIN_BYTES } from '../common/config.js';
import { rootless } from '../common/privilege.js';
import { processTree, signalQuietly } from '../common/procfs.js';
import { trace } from '../common/trace.js';
import { lazyPagesCommand, startCriu } from './criu.js';
import type { MemoryPlan } from './pagemap.js';
import { servePages, type PageServer } from './page-server.js';
import type { StagedPages } from './staged-pages.js';

/**
 * CRIU's lazy-pages daemon for one restore: the copy starts with its memory still in the images
 * and the daemon fills it through userfaultfd, faulted pages first, the rest in the background.
 * A restore's cost then no longer grows with the heap (docs/PERFORMANCE.md).
 */
export interface LazyPages {
  /** Settles when every page is in the copy (or the copy ended); rejects if the daemon failed. */
  done: Promise<void>;
}

/**
 * How a restore of `pageBytes` of memory loads it: 'lazy' (the copy runs at once), 'held' (lazily,
 * the copy held in CRIU's post-restore step until every chunk passed its check: checking overlaps
 * CRIU's restore, ~40 ms sooner than 'eager' for an idle Node server, docs/PERFORMANCE.md) or
 * 'eager' (all of it checked and staged before CRIU starts). `CHECKPT_LAZY=1` is always 'lazy',
 * `CHECKPT_LAZY=0` always 'eager'.
 */
export function loadingOf(pageBytes: number): 'lazy' | 'held' | 'eager' {
  // An ordinary user's CRIU gets no userfaultfd for another process's memory (vm.unprivileged_userfaultfd).
  if (rootless()) return 'eager';
  const lazy = LAZY.get();
  if (lazy !== undefined) return lazy ? 'lazy' : 'eager';
  return pageBytes >= LAZY_MIN_BYTES ? 'lazy' : 'held';
}

/** The lazy pages come from checkpt's page server instead of the images (src/engine/page-server.ts). */
export interface ServedPages {
  pages: StagedPages;
  /** The lazy pages, or the images directory whose page maps the native server reads itself. */
  plan: MemoryPlan | { pagemaps: string };
  /** The checkpoint file, for messages. */
  file: string;
  /** Called once, at once, when serving fails (the daemon is already being stopped). */
  onFailure(e: Error): void;
  /**
   * Where CRIU's post-restore step will wait for the copy's verdict: the server listens there and
   * answers once every block passed its check (PageServer.allChecked).
   */
  hold?: string;
}

/** A lazy-pages daemon starting. */
export interface LazyStart {
  /** Resolves once the daemon listens for the restore, or with undefined when it cannot run here. */
  ready: Promise<LazyPages | undefined>;
  /** Stops the daemon (and the page server); returns who was signalled. */
  stop(): number[];
  pid: number | undefined;
  /**
   * With a page server: attaches it, once, before the restore starts (the daemon only reads from
   * it then); undefined when the daemon has already gone.
   */
  serve(served: ServedPages): PageServer | undefined;
  /**
   * Instead of `serve`: hands the daemon's page server socket to `start`, which answers it with
   * memory from elsewhere (a live migration's source) and calls `fail` when it cannot; false when
   * the daemon has already gone.
   */
  relay(start: (socket: Duplex, fail: () => void) => Relay): boolean;
}

/** What answers the daemon in `relay`: `done` is true once the daemon said goodbye. */
export interface Relay {
  done: Promise<boolean>;
  stop(): void;
}

/**
 * Starts `criu lazy-pages` on the images; `ready` resolves once it listens for the restore, or
 * with undefined when it cannot run here (no userfaultfd): the restore then loads memory eagerly.
 * `stop` works from the start, so a caller interrupted meanwhile leaves no daemon behind. With
 * `pageServer`, the daemon reads the lazy pages from a page server on a socketpair instead, which
 * `serve` attaches: the daemon's own start (CRIU's probes of the kernel) overlaps the restore's
 * preparation.
 */
export function startLazyPages(
  imagesDir: string,
  workDir: string,
  pageServer = false,
  shareChecked = pageServer,
  pin?: number,
): LazyStart {
  trace('lazy-pages');
  // Where checkpt's page server will say which blocks it checked: the daemon reads those itself.
  const stagedMap = pageServer && shareChecked ? join(workDir, STAGED_MAP_FILE) : undefined;
  const daemon = startCriu(lazyPagesCommand(imagesDir, workDir, pageServer, stagedMap, pin), {
    statusFd: true,
    pageSocket: pageServer,
  });
  const exited = daemon.result.then(({ status, signal }) => ({ code: status, signal }));
  let server: Pick<PageServer, 'done' | 'stop'> | undefined;
  // CRIU forks probes of the kernel at start-up that stop themselves; one left by a daemon killed
  // then stays stopped for good: the whole tree goes. Returns who was signalled.
  const stop = (): number[] => {
    server?.stop();
    if (daemon.pid === undefined || !daemon.running()) return [];
    const tree = processTree(daemon.pid);
    for (const p of tree) signalQuietly(p, 'SIGKILL');
    return tree;
  };
  const serve = (served: ServedPages): PageServer | undefined => {
    if (server) throw new Error('internal: the page server is attached once');
    if (!daemon.pageSocket || !daemon.running()) return undefined;
    const s = servePages(
      daemon.pageSocket,
      served.pages,
      served.plan,
      served.file,
      (e) => {
        stop();
        served.onFailure(e);
      },
      stagedMap,
      served.hold,
    );
    server = s;
    // Checked and staged ahead of the daemon, from now on: most of a faulting copy's waits and the
    // daemon's background fill then find their blocks ready. A damaged chunk stops the copy here.
    // (The server checks the entries it has a table for itself.)
    const lazy = 'pagemaps' in served.plan ? [] : [...served.plan.lazy];
    const ours = new Map(lazy.filter(([e]) => !served.pages.direct(e)));
    served.pages.ensureRanges(ours).catch((e: unknown) => {
      if (!daemon.running()) return;
      stop();
      served.onFailure(e as Error);
    });
    return s;
  };
  const relay = (start: (socket: Duplex, fail: () => void) => Relay): boolean => {
    if (server) throw new Error('internal: the page server is attached once');
    const sock = daemon.pageSocket;
    if (!sock || !daemon.running()) return false;
    sock.on('error', () => undefined);
    server = start(sock, stop);
    return true;
  };
  const ready = new Promise<LazyPages | undefined>((resolve) => {
    let listening = false;
    daemon.status?.once('data', () => {
      listening = true;
      const done = exited.then(async ({ code, signal }) => {
        if (pageServer) {
          // The server ends with the daemon's end of the socket: a failed read stopped the daemon,
          // and that failure is the reason, not its death.
          const closed = server ? await server.done : false;
          if (code === 0 && !closed)
            throw new CheckptError(
              'ERESTORE',
              `CRIU's lazy-pages daemon exited without closing its page server connection, so the copy may not have all of its memory; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).`,
            );
        }
        if (code === 0) return;
        throw new CheckptError(
          'ERESTORE',
          `CRIU's lazy-pages daemon ${signal ? `was killed by ${signal}` : `exited with ${code}`} before the copy had all of its memory; the copy was stopped. Resume again (CHECKPT_LAZY=0 loads memory before the program runs).`,
        );
      });
      // Nobody may be listening yet; the caller reads the outcome from `done`.
      done.catch(() => undefined);
      resolve({ done });
    });
    void exited.then(() => {
      if (!listening) resolve(undefined);
    });
  });
  return { ready, stop, pid: daemon.pid, serve, relay };
}

/** The file of checked blocks in the staging directory (native/page-server.c, share_states). */
export const STAGED_MAP_FILE = 'staged.map';
