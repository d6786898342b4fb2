/**
 * Checkpoints a program from outside, for programs that do not import checkpt (a Python loop,
 * a C program, a Node program that never asked): CRIU runs inside the program's namespaces,
 * and the program goes on running (or, for "checkpoint and exit", is stopped once the file is
 * durable, and only then).
 */
import { crypto } from '../common/builtin.js';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { hostname, release } from 'node:os';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { frontRecipe } from './front.js';
import type { ProgressSink } from '../common/progress.js';
import { DEFAULT_TIMEOUT_MS, PUBLISH } from '../common/config.js';
import { checkTarget } from '../common/target.js';
import { rootless } from '../common/privilege.js';
import { compressImages, compressionWanted } from '../image/compress.js';
import {
  dirBytes,
  tempNameFor,
  writeImage,
  FORMAT_VERSION,
  type StoreWrite,
} from '../image/format.js';
import { loadKey } from '../image/key.js';
import {
  cmdline,
  envOf,
  linkOf,
  procStatus,
  processTree,
  rssBytes,
  signalQuietly,
  treeUsesIoUring,
  untilEnded,
  openFileLimit,
} from '../common/procfs.js';
import {
  checkDump,
  killedBy,
  shellStatus,
  criuVersion,
  dump,
  DUMP_LOG,
  readLog,
  startDump,
  type CriuVersion,
  type DumpRequest,
} from './criu.js';
import { helperPath } from './native.js';
import {
  dropEmptyLock,
  dumpLock,
  tcpModeFor,
  noLockWarning,
  releaseLocksAfter,
  removeLockTable,
} from './netlock.js';
import { listenForPostDump } from './post-dump.js';
import type { Manifest } from './job.js';
import { makeStagingDir, pagesSpare } from './staging.js';
import { describeStdio, externalSockets } from './stdio.js';
import { writeFailed } from './write-failed.js';
import { requireWholeProgram } from './whole-program.js';

export interface OutsideDumpRequest {
  /** The program's pid on the host. */
  pid: number;
  /** Its pid in its own namespace, as the image records it. */
  innerPid: number;
  /** A host pid in the program's PID and mount namespaces (checkpt's init there). */
  nsPid: number;
  target: string;
  /** "Checkpoint and exit": the program never runs past the checkpoint; it is killed once the file is durable. */
  exit: boolean;
  generation: number;
  template: string;
  timeoutMs: number;
  /** Told how far the dump and the write got; ended before the program may run on its terminal. */
  progress?: ProgressSink;
  /** Put the memory into this chunk store beside the target (a rotation's, store.ts). */
  store?: string;
  /**
   * With `exit`: called with the packed file while the program is still frozen (live migration
   * sends it and waits for the destination's confirmation). When it throws, CRIU rolls back and
   * the program runs on; when it returns, the program is killed and its network lock removed.
   */
  handOff?: (target: string) => Promise<void>;
  /**
   * Post-copy instead of `handOff`: called with CRIU's images directory (no file is packed) and
   * the manifest while the program is still frozen; it may serve the memory from there until it
   * returns. Throws: CRIU rolls back and the program runs on; returns: the program is killed.
   */
  handOffImages?: (imagesDir: string, manifest: Manifest, frozen: FrozenTree) => Promise<void>;
  /**
   * With `handOffImages`: CRIU leaves the lazy memory in the frozen program, unwritten
   * (DumpRequest.lazyMemory), where the open-file limit allows; the hand-off reads it from the
   * processes of `frozen`, whose `lazyMemory` says whether it was.
   */
  lazyMemory?: boolean;
}

/** The frozen program's processes: host pid by the pid CRIU's images name them by. */
export interface FrozenTree {
  hostPids: ReadonlyMap<number, number>;
  /** Whether CRIU left the lazy memory in them rather than in the images. */
  lazyMemory: boolean;
}

export interface OutsideDumpResult {
  bytes: number;
  /** With a store: what this checkpoint added to it and what it found there. */
  store?: StoreWrite;
  dumpMs: number;
  /** Something the user should know although the checkpoint worked (one line). */
  warning?: string;
}

export async function dumpFromOutside(req: OutsideDumpRequest): Promise<OutsideDumpResult> {
  const version = criuVersion();
  checkTarget(req.target);
  // Before anything is dumped: a bad key file must not cost a frozen program.
  const key = loadKey();
  try {
    return await dumpWithKey(req, version, key);
  } finally {
    key?.fill(0);
  }
}

async function dumpWithKey(
  req: OutsideDumpRequest,
  version: CriuVersion,
  key: Buffer | undefined,
): Promise<OutsideDumpResult> {
  const status = procStatus(req.pid);
  requireWholeProgram(req.nsPid, req.innerPid, status ? req.pid : undefined);
  if (!status)
    throw new CheckptError(
      'EDUMP',
      `The program (pid ${req.pid}) has already ended; nothing to checkpoint.`,
    );
  const running = processTree(req.pid);
  const uring = treeUsesIoUring(running);
  if (uring !== undefined)
    throw new CheckptError(
      'EIOURING',
      `Process ${uring} of the program uses io_uring, which CRIU cannot checkpoint. It was started without checkpt's LD_PRELOAD (a program that resets LD_PRELOAD?), or set sysctl kernel.io_uring_disabled=2. The program keeps running.`,
    );
  const rss = running.reduce((sum, p) => sum + rssBytes(procStatus(p)), 0);
  // `checkpt run --private-net`: CRIU goes into that network namespace too.
  const privateNet = linkOf(req.nsPid, 'ns/net') !== linkOf('self', 'ns/net');
  const tcp = tcpModeFor(privateNet);
  const published = privateNet ? envOf(req.pid, PUBLISH.name) : '';
  const workDir = makeStagingDir('dump', rss, true);
  const runId = crypto().randomUUID();
  try {
    const imagesDir = join(workDir, 'images');
    mkdirSync(imagesDir, { mode: 0o700 });
    const spare = pagesSpare(imagesDir, rss);
    const stdio = describeStdio(req.pid);
    const argv = cmdline(req.pid);
    const dumpReq: DumpRequest = {
      pid: req.innerPid,
      enter: req.nsPid,
      ...(privateNet ? { enterNet: true } : {}),
      imagesDir,
      workDir,
      externalUnix: externalSockets(stdio),
      timeoutMs: req.timeoutMs,
      leave: req.exit ? 'stopped' : 'running',
      tcp,
      runId,
      ...(spare === undefined ? {} : { spareBytes: spare }),
      ...(req.lazyMemory && req.handOffImages && req.exit && lazyDumpFits(rss)
        ? { lazyMemory: true }
        : {}),
    };
    const manifestOf = (dumpMs: number): Manifest => ({
      formatVersion: FORMAT_VERSION,
      createdAt: new Date().toISOString(),
      host: hostname(),
      argv,
      execPath: linkOf(req.pid, 'exe'),
      cwd: linkOf(req.pid, 'cwd'),
      pid: req.innerPid,
      uid: Number(status.Uid?.split(/\s+/)[0] ?? 0),
      kernel: release(),
      rssBytes: rssBytes(status),
      stdio,
      generation: req.generation,
      template: req.template,
      criu: version.text,
      imageBytes: dirBytes(imagesDir),
      dumpMs,
      ...(tcp === 'close' ? { tcp: 'closed' as const } : {}),
      ...(rootless() ? { rootless: true as const } : {}),
      ...(privateNet ? { net: 'private' as const } : {}),
      ...(published ? { publish: published.split(',') } : {}),
    });
    let stored: { store?: StoreWrite } = {};
    const pack = async (manifest: Manifest): Promise<number> => {
      const r = await packImages(imagesDir, manifest, req, key);
      if (r.store !== undefined) stored = { store: r.store };
      return r.bytes;
    };
    // CRIU writes the images as it dumps: their size against the program's memory.
    const watchDump = () => watch(req.progress, 'dumping', () => dirBytes(imagesDir), rss);
    const lockWarning = tcp === 'close' ? noLockWarning(running) : undefined;
    const warning = lockWarning === undefined ? {} : { warning: lockWarning };
    if (req.exit)
      return { ...(await dumpThenExit(req, dumpReq, manifestOf, pack, watchDump)), ...warning };
    const t0 = process.hrtime.bigint();
    const unwatch = watchDump();
    await dump(dumpReq).finally(unwatch);
    const dumpMs = msSince(t0);
    return { bytes: await pack(manifestOf(dumpMs)), dumpMs, ...warning, ...stored };
  } catch (e) {
    releaseLocksAfter(e, () => processTree(req.pid), runId, privateNet ? req.nsPid : undefined);
    throw asCheckptError(e, req.target);
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

const msSince = (t0: bigint): number => Math.round(Number(process.hrtime.bigint() - t0) / 1e6);

function asCheckptError(e: unknown, target: string): CheckptError {
  if (e instanceof CheckptError) return e;
  return new CheckptError(
    'EIO',
    `Writing the checkpoint failed: ${(e as Error).message}. Nothing was written to ${target}; the program keeps running.`,
    { cause: e, path: target },
  );
}

/** Compresses (when wanted) and writes the checkpoint file; its size. */
async function packImages(
  imagesDir: string,
  manifest: Manifest,
  req: OutsideDumpRequest,
  key: Buffer | undefined,
): Promise<{ bytes: number; store?: StoreWrite }> {
  const { target, progress } = req;
  const front = frontRecipe(manifest, imagesDir);
  if (front !== undefined) manifest.front = front;
  // A migrating program waits, frozen, for its file, as a synchronous checkpt() does.
  const compress = compressionWanted(req.handOff ? 'sync' : 'outside');
  // Into a store, each new chunk is compressed alone: a whole compressed image would not dedup.
  const store = req.store !== undefined && key === undefined ? req.store : undefined;
  if (compress && store === undefined) {
    // zstd replaces each pages file once it is done with it: counted file by file.
    const pages = pageFiles(imagesDir);
    const total = pages.reduce((sum, p) => sum + p.size, 0);
    const left = () => pageFiles(imagesDir).reduce((sum, p) => sum + p.size, 0);
    const unwatch = watch(progress, 'compressing', () => total - left(), total);
    const n = await compressImages(imagesDir).finally(unwatch);
    if (n > 0) {
      manifest.compression = 'zstd';
      manifest.packedBytes = dirBytes(imagesDir);
    }
  }
  const tmp = tempNameFor(target);
  const size = () => statSync(tmp, { throwIfNoEntry: false })?.size ?? 0;
  const unwatch = watch(progress, 'writing', size, dirBytes(imagesDir));
  const written = await writeImage(
    target,
    manifest as unknown as Record<string, unknown>,
    { dir: imagesDir },
    { key, tmp, store: store === undefined ? undefined : { dir: store, compress } },
  )
    .catch((e: unknown) => {
      throw writeFailed(e, target, manifest.packedBytes ?? manifest.imageBytes);
    })
    .finally(unwatch);
  return written;
}

/**
 * Whether CRIU can keep a program of `rss` bytes in pipes rather than write it: about two fds per
 * MiB (pipes stop at fs.pipe-max-size, 1 MiB by default), within the open-file limit it inherits.
 */
function lazyDumpFits(rss: number): boolean {
  return 2 * Math.ceil(rss / (1 << 20)) + 512 <= (openFileLimit() ?? 1024);
}

/** Host pid by the pid in the program's own PID namespace (the last of NSpid). */
function innerPids(tree: readonly number[]): Map<number, number> {
  const map = new Map<number, number>();
  for (const pid of tree) {
    const inner = Number(procStatus(pid)?.NSpid?.trim().split(/\s+/).at(-1));
    if (Number.isInteger(inner) && inner > 0) map.set(inner, pid);
  }
  return map;
}

/** CRIU's uncompressed memory images in `dir`, with their sizes. */
function pageFiles(dir: string): { name: string; size: number }[] {
  return readdirSync(dir)
    .filter((n) => /^pages-\d+\.img$/.test(n))
    .map((name) => ({
      name,
      size: statSync(join(dir, name), { throwIfNoEntry: false })?.size ?? 0,
    }));
}

/** Tells `progress` what `sample()` says, a few times a second, until the returned function runs. */
function watch(
  progress: ProgressSink | undefined,
  phase: string,
  sample: () => number,
  total: number,
): () => void {
  if (progress === undefined) return () => undefined;
  const tell = (): void => {
    try {
      progress.update(phase, sample(), total);
    } catch {
      // a file gone between listing and stat: the next sample counts it
    }
  };
  tell();
  const timer = setInterval(tell, 200);
  return () => {
    clearInterval(timer);
    tell();
  };
}

/**
 * "Checkpoint and exit": the file is packed while CRIU waits in its post-dump hook with the
 * program frozen, its connections in repair mode and locked. Packed: CRIU leaves the program
 * stopped and it is killed, so its connections die without a FIN or RST and the lock stays until
 * a restore takes them over. Not packed: the hook fails and CRIU itself rolls back (unlocks,
 * takes sockets out of repair, resumes the program), so clients carry on with the original.
 */
async function dumpThenExit(
  req: OutsideDumpRequest,
  dumpReq: DumpRequest,
  manifestOf: (dumpMs: number) => Manifest,
  pack: (manifest: Manifest) => Promise<number>,
  watchDump: () => () => void,
): Promise<OutsideDumpResult> {
  const hook = await listenForPostDump(dumpReq.workDir);
  try {
    const t0 = process.hrtime.bigint();
    const unwatch = watchDump();
    // CRIU's timer stops once the images are complete; the hook's wait for the verdict is the bound.
    const run = startDump({
      ...dumpReq,
      postDump: { sock: hook.path, timeoutMs: DEFAULT_TIMEOUT_MS },
    });
    // Nobody asks CRIU's page server for the memory it keeps: closed, it ends as soon as it starts.
    run.pageSocket?.destroy();
    const dumped = await Promise.race([
      hook.dumped.then(() => true),
      run.result.then(() => false),
    ]).finally(unwatch);
    if (!dumped) {
      const r = await run.result;
      checkDump(shellStatus(r), r.timedOut, dumpReq.workDir, dumpReq.timeoutMs, r.stderr);
      throw new CheckptError(
        'EDUMP',
        `CRIU finished the dump without asking whether the checkpoint was kept; nothing was written and the program keeps running. Is the native helper (${helperPath()}) up to date? Run 'npx checkpt build' (npm run build in a checkout).`,
      );
    }
    // Interrupted at its deadline, CRIU may still reach this step: refused, it rolls back.
    if (run.timedOut()) {
      hook.verdict(false);
      const r = await run.result;
      checkDump(shellStatus(r), true, dumpReq.workDir, dumpReq.timeoutMs, r.stderr);
    }
    // Packing is ours to time, not CRIU's: killing CRIU now would leave sockets in repair mode.
    run.stopTimer();
    const dumpMs = msSince(t0);
    // With the tree frozen, the list of its processes is final (a shell forks on).
    const tree = processTree(req.pid);
    const manifest = manifestOf(dumpMs);
    const lock = dumpReq.tcp === 'close' ? undefined : dumpLock(dumpReq.imagesDir);
    if (lock?.holds) manifest.networkLock = lock.table;
    let bytes = 0;
    let failure: unknown;
    try {
      // Frozen, the namespace can no longer change: what is not in the tree is not in the image.
      requireWholeProgram(req.nsPid, req.innerPid, req.pid, run.pid);
      if (req.handOffImages) {
        bytes = manifest.imageBytes;
        await req.handOffImages(dumpReq.imagesDir, manifest, {
          hostPids: innerPids(tree),
          lazyMemory: dumpReq.lazyMemory === true,
        });
      } else {
        bytes = await pack(manifest);
        if (req.handOff) await req.handOff(req.target);
      }
    } catch (e) {
      failure = e;
    }
    // Erased before the verdict: on a failure CRIU lets the program run on its terminal again.
    req.progress?.end();
    hook.verdict(failure === undefined);
    const r = await run.result;
    if (failure !== undefined) throw asCheckptError(failure, req.target);
    if (r.status !== 0) {
      rmSync(req.target, { force: true });
      const { reason } = await readLog(join(dumpReq.workDir, DUMP_LOG));
      throw new CheckptError(
        'EDUMP',
        `CRIU failed after the checkpoint was packed (${reason ?? killedBy(shellStatus(r)) ?? `status ${r.status}`}), so ${req.target} was removed; the program keeps running, but its connections may have been disturbed.`,
        { path: req.target },
      );
    }
    for (const pid of tree) signalQuietly(pid, 'SIGKILL');
    // Handed off, its connections live elsewhere now: the lock here would only blackhole them.
    if ((req.handOff || req.handOffImages) && lock?.holds) removeLockTable(lock.table);
    else dropEmptyLock(lock);
    // Done means the program is gone here, not only told to go (a big one takes a while to end).
    await untilEnded(tree, 5000);
    return { bytes, dumpMs };
  } finally {
    hook.close();
  }
}
