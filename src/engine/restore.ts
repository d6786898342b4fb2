import { isTerminal } from '../common/builtin.js';
import { openPublished, parsePublish, type Publisher } from './publish.js';
import { existsSync, fstatSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { trace } from '../common/trace.js';
import { CheckptError } from '../common/errors.js';
import type { ProgressSink } from '../common/progress.js';
import { zstdDecoder } from '../image/compress.js';
import { extractImage, extractLazy, readImageInfo, type ExtractOptions } from '../image/format.js';
import type { PageSource } from '../image/pages.js';
import { manifestProblem } from './manifest.js';
import { loadKey } from '../image/key.js';
import {
  argvOf,
  criuVersionAsync,
  killedBy,
  readLog,
  restoreCommand,
  RESTORE_LOG,
  type CriuLog,
} from './criu.js';
import { adoptHelper, runningUnder, spawnHelper, type Helper, type Running } from './helper.js';
import { adoptChild } from './spawn.js';
import { eachLine } from '../common/lines.js';
import { Socket } from 'node:net';
import { constants as osConstants, setPriority } from 'node:os';
import { loadingOf, startLazyPages, type LazyPages, type Relay } from './lazy.js';
import { pinArgs, pinCpu } from './pin.js';
import { lockCheckArgs, skipLockRemoval } from './netlock.js';
import { readMemoryPlan, type MemoryPlan, type Range } from './pagemap.js';
import { serverMaps, stageBeforeRestore } from './page-server.js';
import { HOLD_SOCK } from './post-dump.js';
import { HOLD_SOCK as HOLD_VAR, SCRIPT_ACTIONS } from '../common/config.js';
import { StagedPages } from './staged-pages.js';
import type { ControlMessage, Manifest } from './job.js';
import { processTree, signalQuietly, untilEnded } from '../common/procfs.js';
import { STOPPING } from '../common/signals.js';
import { requireHelper, useNativeSha256 } from './native.js';
import { hostListingAsync, prepareSockets, type HostListing } from './sockets.js';
import { makeStagingDir } from './staging.js';
import { inheritPlan, type StdioDescriptor } from './stdio.js';
import { resumeRefusal } from './ownership.js';
import { grantedCriu, grantState } from './grant.js';
import { hostUid, privilegeMode, rootless, userNamespacesAllowed } from '../common/privilege.js';

export interface ResumeOptions {
  /** Run the resumed program in the background (stdin from /dev/null) and return once it runs. */
  detach?: boolean;
  /** On a terminal, give the copy a pseudo-terminal of its own (default true): see HelperOptions. */
  pty?: boolean;
  /** The checkpoint key on that terminal (default 5, ^E); null turns it off. */
  key?: number | null;
  /**
   * Resume a plain file even if someone other than root or the caller could have written it
   * (default false: refused with EUNTRUSTED; see src/image/trust.ts).
   */
  trustFile?: boolean;
  /** Told how far verifying and unpacking the file got; ended before anything is restored. */
  progress?: ProgressSink;
  /** The image's network lock is on the host it came from (a migration): nothing to remove here. */
  lockElsewhere?: boolean;
}

export interface Resumed extends Running {
  manifest: Manifest;
  /**
   * Settles once the copy has all of its memory and the unpacked images are gone. Rejects when
   * CRIU's lazy-pages daemon failed first: the copy was then killed, since its memory is incomplete.
   */
  loaded: Promise<void>;
  /**
   * Hands SIGTERM, SIGINT and SIGHUP over to the caller: until then, those that come once the copy
   * runs are kept, not lost in a moment when nobody listens. Call it once your own handlers are
   * in place, then pass on what it returns.
   */
  takeSignals(): NodeJS.Signals[];
}

/** For tests: what resume() uses in place of its own parts. */
export interface ResumeHooks {
  /** Wraps the memory's source (to make a chunk fail its check). */
  pages?: (source: PageSource) => PageSource;
}

/**
 * A program's images that come from elsewhere rather than from a checkpoint file (a post-copy
 * migration): everything but the lazy memory is written into the images directory by `write`,
 * which returns the manifest; `relay` answers CRIU's lazy-pages daemon with the lazy memory.
 */
export interface RemoteImages {
  /** Names the program in messages, where a file's path would. */
  name: string;
  /** About how much the images take on disk (where to stage them). */
  bytes: number;
  write(imagesDir: string): Promise<Record<string, unknown>>;
  /** `fail` stops the daemon; its error, when given, is the reason the resume fails with. */
  relay(daemonSocket: Duplex, imagesDir: string, fail: (reason?: Error) => void): Relay;
  /** Awaited right before CRIU's restore starts (the service address taken meanwhile). */
  beforeRestore?: () => Promise<void>;
}

/** Whether a foreground program on our terminal gets a pseudo-terminal of its own. */
export function wantsPty(detach: boolean | undefined, pty: boolean | undefined): boolean {
  // Not process.stdin.isTTY: making that stream costs a resume ~4 ms.
  return !detach && pty !== false && isTerminal(0);
}

/** Verifies and unpacks a checkpoint, then restores it in a PID and mount namespace of its own. */
export async function resume(
  file: string | RemoteImages,
  options: ResumeOptions = {},
  hooks: ResumeHooks = {},
): Promise<Resumed> {
  requireHelper();
  // The file's checks without loading node:crypto.
  useNativeSha256();
  // With a grant, an image made on the host needs no user namespace; which one it is comes later.
  if (rootless() && grantedCriu() === undefined) {
    const userns = userNamespacesAllowed();
    if (!userns.ok)
      throw new CheckptError(
        'EPERM',
        `Without root, checkpt -r resumes the program in a user namespace of your own, and this system forbids that (${userns.why ?? 'unknown reason'}). Ask an administrator to allow unprivileged user namespaces, or run checkpt -r as root.`,
      );
  }
  // Checked while the image unpacks; awaited before CRIU is needed.
  const version = criuVersionAsync();
  version.catch(() => undefined);
  // Read while the image unpacks: the host's sockets, for the preflight of the copy's.
  const host = hostListingAsync();
  host.catch(() => undefined);
  const key = loadKey();
  try {
    return await restoreFrom(file, options, version, host, key, hooks);
  } finally {
    key?.fill(0);
  }
}

async function restoreFrom(
  source: string | RemoteImages,
  options: ResumeOptions,
  version: Promise<unknown>,
  host: Promise<HostListing>,
  key: Buffer | undefined,
  hooks: ResumeHooks,
): Promise<Resumed> {
  const remote = typeof source === 'string' ? undefined : source;
  const file = typeof source === 'string' ? source : source.name;
  // A missing file is reported by extractImage, which says what it expected there.
  const fileBytes = remote ? remote.bytes : sizeOf(file);
  const workDir = makeStagingDir('restore', fileBytes);
  let helper: Helper | undefined;
  let publisher: Publisher | undefined;
  let starting: ReturnType<typeof startLazyPages> | undefined;
  // The memory still in the file, served to CRIU's lazy-pages daemon or written out for CRIU.
  let pages: PageSource | undefined;
  let staged: StagedPages | undefined;
  // Memory being checked and staged before CRIU's restore runs.
  let staging: { done: Promise<void>; stop(): void } | undefined;
  // A chunk that failed its check (or a daemon that asked for what is not there): the copy is
  // stopped at once and this is the reason the resume fails.
  let pageFailure: Error | undefined;
  // Killed while restoring (the copy may already answer): the unpacked images must not stay. CRIU
  // recreates its work directory if it still runs, so the helper's tree goes first.
  let stopped = false;
  // Once the copy runs, a stopping signal is the program's: kept for the caller to pass on.
  let handedOver = false;
  const forTheProgram: NodeJS.Signals[] = [];
  const onSignal = (sig: NodeJS.Signals): void => {
    if (handedOver) {
      forTheProgram.push(sig);
      return;
    }
    stopped = true;
    for (const s of STOPPING) process.off(s, onSignal);
    const daemon = starting?.stop() ?? [];
    const tree = helper ? killTree(helper) : [];
    void untilEnded([...tree, ...daemon], 5000).then(() => {
      rmSync(workDir, { recursive: true, force: true });
      process.kill(process.pid, sig);
    });
  };
  for (const s of STOPPING) process.on(s, onSignal);
  const takeSignals = (): NodeJS.Signals[] => {
    for (const s of STOPPING) process.off(s, onSignal);
    return forTheProgram.splice(0);
  };
  try {
    const imagesDir = join(workDir, 'images');
    mkdirSync(imagesDir, { mode: 0o700 });
    const { progress } = options;
    const extractOptions: ExtractOptions = {
      key,
      decoder: zstdDecoder(file),
      requireTrusted: options.trustFile !== true,
      checkManifest: manifestProblem,
      ...(progress && {
        onProgress: (b: number) => progress.update('verifying and unpacking', b, fileBytes),
      }),
    };
    // Everything but the memory is checked and unpacked now; the memory when it is needed.
    trace('extract');
    const lazyImage = remote ? undefined : await extractLazy(file, imagesDir, extractOptions);
    trace('extracted');
    pages = lazyImage && hooks.pages ? hooks.pages(lazyImage.pages) : lazyImage?.pages;
    const info = remote
      ? { manifest: await remote.write(imagesDir) }
      : (lazyImage?.info ?? (await extractImage(file, imagesDir, extractOptions)));
    // Memory this resume cannot serve chunk by chunk was unpacked whole: the bench's trace says so.
    if (!remote && !lazyImage) trace('extracted-whole');
    // Not needed any more: gone now, not only when the copy runs.
    key?.fill(0);
    const pageBytes = pages
      ? [...pages.entries.values()].reduce((sum, n) => sum + n, 0)
      : readdirSync(imagesDir)
          .filter((n) => /^pages-\d+\.img$/.test(n))
          .reduce((sum, n) => sum + statSync(join(imagesDir, n)).size, 0);
    await version;
    trace('version');
    // Stopped while the image unpacked: nothing may be started now (the handler found nothing).
    if (stopped) return await STOPPING_FOREVER;
    // Remote images have no memory here to load eagerly: the daemon is the only way in. A copy
    // held until its memory is checked needs the native server that reads the page maps.
    const loading = remote ? 'lazy' : loadingOf(pageBytes);
    // Held only for one process: lazily, CRIU's daemon fills each process's memory on its own,
    // and pages a process tree shared copy-on-write would no longer be shared (zdtm's cow00).
    const held =
      loading === 'held' && pages !== undefined && serverMaps(pages) && oneProcess(imagesDir);
    const wantLazy = loading === 'lazy' || held;
    const manifest = checkManifest(info.manifest, file);
    const refusal = resumeRefusal(manifest, file, privilegeMode(), hostUid(), grantState());
    if (refusal) throw refusal;
    // Made on the host by the granted CRIU: restored there, as it was, with its old pid.
    const onHost = manifest.granted === true;
    if (onHost) requirePidFree(manifest.pid, file);
    // The daemon needs only the images unpacked by now: its own start (CRIU's probes of the
    // kernel) overlaps the rest of the preparation. Stopped on any failure below.
    // Local memory only: a fault answered from another machine gains nothing from it.
    const pin = wantLazy && !remote && pages !== undefined ? pinCpu() : undefined;
    if (wantLazy)
      starting = startLazyPages(imagesDir, workDir, pages !== undefined || !!remote, !remote, pin);
    const relayed =
      remote &&
      starting?.relay((sock, fail) =>
        remote.relay(sock, imagesDir, (reason) => {
          // The daemon's death is the consequence; the relay's reason is what the user needs.
          if (reason) pageFailure ??= reason;
          fail();
        }),
      );
    if (remote && starting && !relayed)
      throw new CheckptError(
        'ERESTORE',
        `CRIU's lazy-pages daemon ended at once, so ${file} cannot get its memory here; nothing was started.`,
      );
    // The native server reads the page maps itself when it checks every image (plain and zstd
    // files): ~8 ms of this thread for 110 MB of memory, ~20 ms for 2 GB, before.
    const plan: MemoryPlan | { pagemaps: string } | undefined = !pages
      ? undefined
      : serverMaps(pages)
        ? { pagemaps: imagesDir }
        : await readMemoryPlan(imagesDir, pages, file);
    trace('planned');
    if (pages) {
      // Memory staged before the copy runs (all of it for an eager restore) is checked now too.
      let stagedBytes = 0;
      staged = await StagedPages.create(imagesDir, pages, (n) => {
        stagedBytes += n;
        progress?.update('verifying and unpacking', stagedBytes, pageBytes);
      });
      pages = undefined;
    }
    trace('staged-open');
    // Stopped while the image was unpacked: the handler has already looked for a daemon to stop.
    if (stopped) return await STOPPING_FOREVER;
    // The server itself answers CRIU's post-restore step there, once every block passed its check.
    const holdPath = held ? join(workDir, HOLD_SOCK) : undefined;
    const server =
      staged && plan
        ? starting?.serve({
            pages: staged,
            plan,
            file,
            ...(holdPath === undefined ? {} : { hold: holdPath }),
            onFailure: (e) => {
              pageFailure ??= e;
              if (helper) killTree(helper);
            },
          })
        : undefined;
    // What `criu restore` reads itself must be on disk before it runs: checked and staged by the
    // native server while the rest is prepared here, awaited below (one that read the page maps
    // knows what that is: 'eager').
    const ranges = !plan
      ? undefined
      : 'pagemaps' in plan
        ? 'eager'
        : wantLazy
          ? plan.eager
          : staged && whole(staged.entries);
    // Checking every block overlaps CRIU's restore; the copy runs only once it is done.
    const checkedAll = held && server ? server.allChecked() : undefined;
    checkedAll?.catch(() => undefined);
    if (staged && plan && ranges)
      staging = server
        ? { done: server.stage(ranges), stop: () => undefined }
        : stageBeforeRestore(staged, plan, file, ranges);
    staging?.done.catch(() => undefined);

    // Before anything runs: a busy port fails here, or the copy is set up not to collide.
    // A private network namespace is new for each copy: nothing of the host's can be in its way.
    const privateNet = manifest.net === 'private';
    trace('host-wait');
    const listing = privateNet ? { tcp: undefined, names: [], texts: [] } : await host;
    trace('host-sockets');
    // Its published ports again, into the copy's new namespace; a busy one fails before it starts.
    publisher = privateNet
      ? await openPublished((manifest.publish ?? []).map(parsePublish))
      : undefined;
    trace('published');
    const sockets = prepareSockets(imagesDir, file, manifest.network === 'takeover', listing);
    trace('sockets');
    const stdio = manifest.stdio;
    if (stdio.some((d) => d.kind === 'tty') && (options.detach || !isTerminal(0)))
      throw new CheckptError(
        'ERESTORE',
        `${file} was checkpointed while it used a terminal; resume it in the foreground of a terminal (checkpt -r without -d, stdin a tty).`,
      );
    const message: ControlMessage = {
      t: 'restored',
      generation: manifest.generation + 1,
      image: file,
      restoredAt: new Date().toISOString(),
      ...(sockets.moved ? {} : { portsKept: true }),
    };
    // CRIU's --shell-job keeps its own fd 0 for the terminal and fails when fd 0 is inherited
    // ("Can't send fd 0 into store"): the program's old stdin comes in on another fd.
    const inherit = inheritPlan(stdio).map((i) => (i.fd === 0 ? { ...i, fd: STDIN_FD } : i));
    // Our /dev/null (or -d) stands in as a pipe at end-of-file: a program that watched its stdin
    // with epoll cannot be restored onto /dev/null (EPERM).
    const stdinArgs = !inherit.some((i) => i.fd === STDIN_FD)
      ? { args: [], fds: [] }
      : options.detach || fstatSync(0).isCharacterDevice()
        ? { args: ['--eof-fd', String(STDIN_FD)], fds: [] }
        : { args: [], fds: [0] };
    const control = manifest.control
      ? [
          '--mount',
          manifest.control.mount,
          '--fifo',
          manifest.control.fifo,
          '--message',
          JSON.stringify(message),
        ]
      : [];
    const pty = wantsPty(options.detach, options.pty);
    await staging?.done;
    trace('eager-staged');
    const lazy = await starting?.ready;
    trace('daemon-ready');
    if (stopped) return await STOPPING_FOREVER;
    if (pageFailure) throw pageFailure;
    if (remote && !lazy)
      throw new CheckptError(
        'ERESTORE',
        `CRIU's lazy-pages daemon cannot run here (no userfaultfd?), and ${file} needs it: its memory is still at the source. Nothing was started; migrate without --post-copy.`,
      );
    // No daemon after all (no userfaultfd here): CRIU reads the rest of the memory from disk too.
    if (staged && plan && wantLazy && !lazy && (server || !('pagemaps' in plan))) {
      staging = stageBeforeRestore(staged, plan, file, 'pagemaps' in plan ? 'eager' : plan.lazy);
      await staging.done;
    }
    if (staged && !lazy) {
      await staged.close();
      staged = undefined;
    }
    await remote?.beforeRestore?.();
    if (stopped) return await STOPPING_FOREVER;
    // No lock table to remove here (CRIU would run nft to delete one anyway, 13-18 ms while the
    // copy waits): the image came from another host, whose checkpt removes it, or the copy has a
    // new network namespace. On the host's network the helper looks for the table first.
    let lockArgs: string[] = [];
    if (options.lockElsewhere || privateNet) skipLockRemoval(imagesDir);
    else lockArgs = lockCheckArgs(imagesDir);
    // Without a daemon every block was staged, and so checked, before the restore.
    const hold = lazy && checkedAll ? holdPath : undefined;
    if (hold && server && checkedAll) {
      // Never a copy waiting for good: checking under 32 MiB takes well under a second. The
      // server's end makes the waiting step fail, and CRIU kills the copy before it runs.
      const late = setTimeout(() => {
        pageFailure ??= new CheckptError(
          'ERESTORE',
          `The memory of ${file} was not all checked within ${HOLD_LIMIT_MS / 1000} s, so its copy was stopped before it ran. Resume again; CHECKPT_LAZY=0 checks all of it before CRIU starts.`,
          { path: file },
        );
        server.stop();
      }, HOLD_LIMIT_MS);
      late.unref();
      const settled = (): void => clearTimeout(late);
      void checkedAll.then(settled, settled);
    } else server?.holdOver();
    // Erased before the copy can write to the terminal.
    progress?.end();
    helper = spawnHelper(
      [
        '--pid',
        String(manifest.pid),
        ...control,
        ...stdinArgs.args,
        ...lockArgs,
        ...(lazy !== undefined && pin !== undefined ? pinArgs(pin) : []),
        '--',
        ...argvOf(
          restoreCommand({
            imagesDir,
            workDir,
            inherit,
            lazy: lazy !== undefined,
            ...(hold ? { hold: true } : {}),
            tcpClose: sockets.tcpClose || manifest.tcp === 'closed',
            ...(onHost ? { granted: true } : {}),
          }),
        ),
      ],
      {
        detach: options.detach === true,
        pty,
        ...(options.key === null ? {} : { key: options.key ?? CTRL_E }),
        relays: relaysFor(inherit, onHost),
        ptyIndex: ptyIndexOf(stdio),
        extraFds: stdinArgs.fds,
        ...(privateNet ? { netns: true } : {}),
        ...(onHost ? { host: true } : {}),
        ...(hold
          ? {
              env: {
                ...process.env,
                [HOLD_VAR.name]: hold,
                [SCRIPT_ACTIONS.name]: 'post-restore',
              },
            }
          : {}),
      },
    );
    const first = await helper.next();
    // Past CRIU's post-restore step, or failed before it: no script comes any more.
    server?.holdOver();
    if (pageFailure) throw pageFailure;
    trace(`status-${first.kind}`);
    if (first.kind !== 'restored') {
      const log = await readLog(join(workDir, RESTORE_LOG));
      const how =
        first.kind === 'failed'
          ? (killedBy(first.value) ?? `criu exited with ${first.value}`)
          : "checkpt's helper ended before the program was restored";
      throw restoreError(file, log, how);
    }
    if (stopped) return await STOPPING_FOREVER;
    const running = runningUnder(helper, manifest.pid, options.detach === true);
    publisher?.attach(running.initPid);
    handedOver = true;
    const loaded = loadedBy(lazy, helper, workDir, staged, () => pageFailure);
    staged = undefined;
    return { ...running, manifest, loaded, takeSignals };
  } catch (e) {
    options.progress?.end();
    // The signal handler ends this process once the helper's tree is gone; nothing else may.
    if (stopped) return await STOPPING_FOREVER;
    staging?.stop();
    starting?.stop();
    if (helper && helper.child.exitCode === null) helper.child.kill('SIGKILL');
    if (!handedOver) publisher?.close();
    await (staged ?? pages)?.close().catch(() => undefined);
    rmSync(workDir, { recursive: true, force: true });
    throw pageFailure ?? e;
  } finally {
    if (!handedOver) for (const s of STOPPING) process.off(s, onSignal);
  }
}

/** What the resume front (native/resume-front.c) hands over when it has restored the copy. */
export interface FrontHandover {
  helper: number;
  statusFd: number;
  keeper: number;
  reportFd: number;
  innerPid: number;
  /** Checkpoint requests and the program's signals that came before this process listened. */
  signals: NodeJS.Signals[];
  workDir: string;
}

const SIGNAL_NAMES: Record<number, NodeJS.Signals> = Object.fromEntries(
  Object.entries(osConstants.signals).map(([name, n]) => [n, name as NodeJS.Signals]),
);

/** The front's handover (CHECKPT_FRONT_HANDOVER), taken out of the environment: once. */
export function takeFrontHandover(env: NodeJS.ProcessEnv = process.env): FrontHandover | undefined {
  const text = env.CHECKPT_FRONT_HANDOVER;
  if (text === undefined) return undefined;
  delete env.CHECKPT_FRONT_HANDOVER;
  const m = /^1 (\d+) (\d+) (\d+) (\d+) (\d+) ([\d,]+|-) (\/.+)$/.exec(text);
  if (!m) throw new Error(`internal: a resume front handover this checkpt does not read: ${text}`);
  const n = (i: number): number => Number(m[i]);
  return {
    helper: n(1),
    statusFd: n(2),
    keeper: n(3),
    reportFd: n(4),
    innerPid: n(5),
    signals:
      m[6] === '-' ? [] : (m[6] ?? '').split(',').flatMap((x) => SIGNAL_NAMES[Number(x)] ?? []),
    workDir: m[7] as string,
  };
}

/**
 * A resume the native front did up to the running copy (its "restored"): from here on as
 * resume()'s own. `loaded` is the front's keeper's report of how the memory loading ended.
 */
export async function adoptFront(
  h: FrontHandover,
  file: string,
  options: ResumeOptions = {},
): Promise<Resumed> {
  trace('adopt');
  // The front started this process at nice 10, for the copy's first steps (native/resume-front.c).
  try {
    setPriority(0);
  } catch {
    // not allowed: this process watches the copy at the lower priority
  }
  const helper = adoptHelper(h.helper, h.statusFd);
  // The keeper reports once and ends: reaped by its watcher.
  adoptChild(h.keeper, []);
  if (!helper) {
    // No spawn addon after all (the front checked the same build): the copy cannot be watched.
    process.kill(h.helper, 'SIGKILL');
    throw new CheckptError(
      'EHELPER',
      `checkpt's spawn addon could not be loaded to take over the resumed copy of ${file}, so it was stopped. Run 'npx checkpt build', or resume with CHECKPT_FRONT=0.`,
    );
  }
  const report = new Socket({ fd: h.reportFd, readable: true, writable: false });
  const loaded = new Promise<void>((resolve, reject) => {
    let settled = false;
    eachLine(
      report,
      (line) => {
        if (settled) return;
        settled = true;
        if (line === 'ok') return resolve();
        const m = /^fail (\w+) (.*)$/.exec(line);
        killTree(helper);
        reject(
          new CheckptError(
            m?.[1] === 'EBADIMAGE' ? 'EBADIMAGE' : 'ERESTORE',
            m?.[2] ?? `The resume of ${file} failed while its memory loaded; the copy was stopped.`,
            { path: file },
          ),
        );
      },
      () => {
        if (settled) return;
        settled = true;
        killTree(helper);
        reject(
          new CheckptError(
            'ERESTORE',
            `checkpt's keeper of ${file}'s memory ended without a word; the copy was stopped. Resume again (CHECKPT_FRONT=0 resumes without the native front).`,
            { path: file },
          ),
        );
      },
    );
  });
  loaded.catch(() => undefined);
  useNativeSha256();
  try {
    // The front read the same manifest: read again here for what the supervisor needs of it.
    const info = await readImageInfo(file, {
      allowPlain: true,
      requireTrusted: options.trustFile !== true,
      checkManifest: manifestProblem,
    });
    const manifest = checkManifest(info.manifest, file);
    const running = runningUnder(helper, manifest.pid, options.detach === true);
    const held = h.signals;
    return { ...running, manifest, loaded, takeSignals: () => held.splice(0) };
  } catch (e) {
    // Nobody would watch the copy: it goes.
    killTree(helper);
    throw e;
  }
}

/**
 * The images stay until the lazy-pages daemon has put every page into the copy; a copy whose
 * daemon failed has holes in its memory and must not go on.
 */
function loadedBy(
  lazy: LazyPages | undefined,
  helper: Helper,
  workDir: string,
  pages: StagedPages | undefined,
  pageFailure: () => Error | undefined,
): Promise<void> {
  const remove = async (): Promise<void> => {
    await pages?.close().catch(() => undefined);
    rmSync(workDir, { recursive: true, force: true });
  };
  if (!lazy) return remove();
  const loaded = lazy.done.then(remove, async (e: unknown) => {
    killTree(helper);
    await remove();
    // A damaged chunk stops the daemon: its death is the consequence, the chunk the reason.
    throw pageFailure() ?? e;
  });
  // The caller looks only once the program ended; until then a failure must not crash checkpt.
  loaded.catch(() => undefined);
  return loaded;
}

/** Whether the images hold the memory of one process (one task's page map). */
function oneProcess(imagesDir: string): boolean {
  return readdirSync(imagesDir).filter((n) => /^pagemap-\d+\.img$/.test(n)).length === 1;
}

/** Every byte of every memory image. */
function whole(entries: ReadonlyMap<string, number>): Map<string, Range[]> {
  return new Map(
    [...entries].map(([name, size]) => [name, size > 0 ? [{ offset: 0, length: size }] : []]),
  );
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** How long a held copy may wait for its memory's check before the resume fails. */
const HOLD_LIMIT_MS = 30_000;

const STOPPING_FOREVER = new Promise<never>(() => undefined);

/** SIGKILL to the helper and everything below it (the copy included); returns who was signalled. */
function killTree(helper: Helper): number[] {
  const tree = helper.child.pid ? processTree(helper.child.pid) : [];
  for (const p of tree) signalQuietly(p, 'SIGKILL');
  return tree;
}

/** Resolves once none of `pids` runs any more (a zombie counts as gone), or after `ms`. */
export const CTRL_E = 5;

/** The helper's fd (3 is its status pipe) that carries our stdin for the program's old one. */
const STDIN_FD = 4;

/** The number of the /dev/pts terminal the program was on (0 when it was on none or another kind). */
function ptyIndexOf(stdio: readonly StdioDescriptor[]): number {
  for (const d of stdio) {
    const m = d.kind === 'tty' ? /^\/dev\/pts\/(\d+)$/.exec(d.link) : null;
    if (m) return Number(m[1]);
  }
  return 0;
}

/**
 * Which of our stdout/stderr the program gets through a relay pipe instead of directly.
 * CRIU reopens an inherited pipe through /proc/self/fd: our stdout as a regular file would be
 * reopened at offset 0 without O_APPEND (`checkpt -r f >> log` would overwrite the log), and a
 * socket cannot be reopened at all. A regular file opened outside the copy's mount namespace
 * also makes any later checkpoint of the copy fail (CRIU cannot find its mount).
 */
function relaysFor(inherit: ReadonlyArray<{ fd: number; key: string }>, onHost: boolean): number[] {
  const uid = process.getuid?.() ?? 0;
  return inherit
    .filter(({ fd }) => fd === 1 || fd === 2)
    .filter(({ fd, key }) => {
      const st = fstatSync(fd);
      // On the host without root, CRIU reopens a pipe through /proc as the user: one made by
      // someone else (runuser's caller) is 0600 theirs.
      if (onHost && st.isFIFO() && st.uid !== uid) return true;
      return st.isFile() || (st.isSocket() && key.startsWith('pipe:'));
    })
    .map(({ fd }) => fd);
}

/** A copy restored on the host takes its old pid there: free, or CRIU fails (File exists). */
function requirePidFree(pid: number, file: string): void {
  if (!existsSync(`/proc/${pid}`)) return;
  throw new CheckptError(
    'ERESTORE',
    `${file} was checkpointed on the host without root (the granted CRIU), so its copy must get its old pid ${pid} there, and pid ${pid} is in use (the original still running?). Stop that process first; or run the program under \`checkpt run\`, whose checkpoints resume any number of times at once.`,
  );
}

function checkManifest(m: Record<string, unknown>, file: string): Manifest {
  const control = m.control as { mount?: unknown; fifo?: unknown } | undefined;
  const ok =
    typeof m.pid === 'number' &&
    Number.isInteger(m.pid) &&
    m.pid > 1 &&
    Array.isArray(m.stdio) &&
    (control === undefined ||
      (typeof control.mount === 'string' &&
        typeof control.fifo === 'string' &&
        control.fifo.startsWith(control.mount + '/') &&
        !control.fifo.includes('/../'))) &&
    typeof m.generation === 'number';
  if (!ok)
    throw new CheckptError(
      'EBADIMAGE',
      `${file} has an incomplete manifest (was it written by checkpt?); it cannot be resumed.`,
    );
  return { ...(m as unknown as Manifest), stdio: m.stdio as StdioDescriptor[] };
}

function restoreError(file: string, log: CriuLog, how: string): CheckptError {
  const tail = log.tail;
  const opts = { logTail: tail, path: file };
  const text = `${log.reason ?? ''}\n${tail}`;
  const size = /File (\S+) has bad size (\d+) \(expect (\d+)\)/.exec(text);
  if (size)
    return new CheckptError(
      'ERESTORE',
      `Cannot resume ${file}: the program had /${size[1]} open and it changed since the checkpoint (now ${size[2]} bytes, was ${size[3]}). Put the file back as it was, or checkpoint again; no process was left running.`,
      opts,
    );
  const open = /Can't open file (\S+?)(?: on restore)?: ([^\n]+)/.exec(text);
  if (open) {
    const path = '/' + (open[1] ?? '').replace(/^\/+/, '');
    const gone = /No such file/.test(open[2] ?? '');
    return new CheckptError(
      'ERESTORE',
      gone
        ? `Cannot resume ${file}: the program had ${path} open and it no longer exists. Put the file back as it was at the checkpoint (same path and size), or checkpoint again; no process was left running.`
        : `Cannot resume ${file}: the program had ${path} open and it cannot be opened again (${open[2]}). Put the file back as it was at the checkpoint, or checkpoint again; no process was left running.`,
      opts,
    );
  }
  const why = log.reason;
  return new CheckptError(
    'ERESTORE',
    `CRIU could not resume ${file} (${how}): ${why ?? 'see the log tail'}. No process was left running; try again.`,
    opts,
  );
}
