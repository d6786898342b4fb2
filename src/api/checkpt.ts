import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, release } from 'node:os';
import { join, resolve } from 'node:path';
import { ControlChannel } from './channel.js';
import { collectBeforeDump } from './gc.js';
import { CheckptError, isCheckptErrorCode } from '../common/errors.js';
import { lazySized, prepareIdentity, refreshIdentity } from './identity.js';
import { checkTarget } from '../common/target.js';
import { hostUid, rootless, userRunDir } from '../common/privilege.js';
import { hasBuiltIn, hookError, runSteps, runStepsSync, type HookFailure } from './hooks.js';
import { listenersKept, networkResource, networkState } from './network.js';
import { defaultCheckpointFile } from '../common/template.js';
import { criuVersion } from '../engine/criu.js';
import { dumpFrontCommand } from '../engine/helper.js';
import { packHere, packsHere } from '../engine/pack-here.js';
import { noLockWarning, releaseLocksAfter, tcpModeFor } from '../engine/netlock.js';
import {
  imagesDirOf,
  type ControlMessage,
  type DumpJob,
  type ManifestBase,
} from '../engine/job.js';
import { withoutAdoption } from './subreaper.js';
import { spawnWait } from '../engine/spawn.js';
import { requireHelper } from '../engine/native.js';
import { runDir } from '../engine/paths.js';
import { GRANT_ADVICE, grantedCriu, grantedCriuPath, grantState } from '../engine/grant.js';
import { makeStagingDir, ownerTag, pagesSpare, sweepOrphans } from '../engine/staging.js';
import { describeStdio } from '../engine/stdio.js';
import { hasIoUring, processTree } from '../common/procfs.js';
import { ioUringAdvice } from '../engine/iouring.js';
import { whyNotRestarted } from './reexec.js';
import { compressionWanted } from '../image/compress.js';
import { FORMAT_VERSION, tempNameFor } from '../image/format.js';
import { checkKeyFile, keyFilePath } from '../image/key.js';
import { CHECKPOINT_VARIABLES, checkConfig, PRIVATE_NET, PUBLISH } from '../common/config.js';
import { checkCheckptOptions, dumpTimeoutMs } from '../common/options.js';

export interface CheckptOptions {
  /** End the process (exit status 0) once the checkpoint file is durable: "checkpoint and exit". */
  exit?: boolean;
  /** Milliseconds CRIU may take to dump before the checkpoint is abandoned (default CHECKPT_TIMEOUT, else 120000). */
  timeoutMs?: number;
  /** @deprecated The old name of `timeoutMs`; still accepted. */
  timeout?: number;
}

/** What a restored process knows about the restore that woke it. */
export interface RestoreInfo {
  /** 1 for a process resumed from an original's checkpoint, 2 for a resume of a resumed copy's, … */
  generation: number;
  image: string;
  restoredAt: string;
}

let busy = false;
let idleWaiters: Array<() => void> = [];
let lastRestore: RestoreInfo | undefined;

/** @internal Whether a checkpoint of this process is in progress (checkpt() or checkpoint()). */
export function checkpointInProgress(): boolean {
  return busy;
}

/**
 * @internal Resolves once no checkpoint of this process is in progress, so checkpoint requests can
 * wait for one the program started itself instead of failing with EBUSY.
 */
export function whenIdle(): Promise<void> {
  return busy ? new Promise((resolve) => idleWaiters.push(resolve)) : Promise.resolve();
}

function setIdle(): void {
  busy = false;
  const waiters = idleWaiters;
  idleWaiters = [];
  for (const w of waiters) w();
}

/** Set when this process is a resumed copy; undefined in an original. */
export function restoreInfo(): RestoreInfo | undefined {
  return lastRestore;
}

interface Session {
  target: string;
  tmp: string;
  ctlDir: string;
  workDir: string;
  channel: ControlChannel;
  /** Set when this program packs the file itself (pack-here.ts): the front starts no worker. */
  packJob?: DumpJob;
}

/**
 * Writes a checkpoint of this process to `file` (default: CHECKPT_FILE or %N.ckpt) and returns 0
 * once it is durable. In a process resumed from that file, the same call returns 1.
 * Registered resources' steps run around it (synchronously: async steps need checkpoint()).
 */
export function checkpt(file?: string, options: CheckptOptions = {}): number {
  checkCheckptOptions('checkpt()', options);
  const target = claim(file);
  try {
    const before = runStepsSync('beforeCheckpoint', { exit: options.exit === true, file: target });
    if (before.length) throw abandoned(before, runStepsSync('afterRestore', notTaken()), target);
    let result: number;
    // CRIU's run id: if CRIU dies mid-dump, its lock table is found by this name.
    const runId = randomUUID();
    try {
      const s = begin(target, options, 'sync', runId);
      let msg: ControlMessage | undefined;
      try {
        warmUp(target, 'sync');
        msg = s.channel.readSync();
        // The original: CRIU is done and the file is ours to write (a resumed copy hears "restored").
        if (msg?.t === 'front' && s.packJob)
          msg = { t: 'ok', file: target, ...packHere(s.packJob, msg.said) };
      } finally {
        finish(s, msg);
      }
      result = conclude(s, msg, options);
    } catch (e) {
      releaseLocksAfter(e, () => processTree(process.pid), runId);
      throw withSteps(e, runStepsSync('afterRestore', notTaken()));
    }
    return settle(result, runStepsSync('afterRestore', taken(result)), target);
  } finally {
    setIdle();
  }
}

/**
 * The same as checkpt(), but the event loop runs again as soon as CRIU has dumped the process,
 * while the image is packed and written; the promise settles once the file is durable.
 * Registered resources' steps, async ones too, run around it.
 */
export async function checkpoint(file?: string, options: CheckptOptions = {}): Promise<number> {
  return checkpointInto(file, options, undefined);
}

/** @internal `checkpoint()` with its memory put into a rotation's chunk store (`checkpointEvery()`). */
export async function checkpointInto(
  file: string | undefined,
  options: CheckptOptions,
  store: string | undefined,
): Promise<number> {
  checkCheckptOptions('checkpoint()', options);
  const target = claim(file);
  try {
    const before = await runSteps('beforeCheckpoint', {
      exit: options.exit === true,
      file: target,
    });
    if (before.length) throw abandoned(before, await runSteps('afterRestore', notTaken()), target);
    let result: number;
    const runId = randomUUID();
    try {
      // Exiting, the program has nothing to run meanwhile: it waits as checkpt() does.
      const mode = options.exit ? 'sync' : 'async';
      if (mode === 'async' && lazySized()) await rehearseSteps();
      const s = begin(target, options, mode, runId, store);
      let msg: ControlMessage | undefined;
      try {
        if (mode === 'sync') {
          warmUp(target, mode);
          msg = s.channel.readSync();
        } else {
          // Each warm-up in an event-loop turn of its own, while CRIU starts: the program's timers
          // and I/O run between them, and its pause is the longest of them, not their sum.
          await nextTurn();
          if (lazySized()) rehearseReturn(target, mode);
          await nextTurn();
          // Last before the dump, after the warm-ups' garbage; one collection, the program runs on.
          collectBeforeDump('running');
          // The program runs on until CRIU is about to freeze it; then it blocks, to be frozen there.
          msg = await s.channel.readFirst();
          if (msg?.t === 'freeze') msg = s.channel.readSync();
          if (msg?.t === 'dumped') msg = await s.channel.readAsync();
        }
      } finally {
        finish(s, msg);
      }
      result = conclude(s, msg, options);
    } catch (e) {
      releaseLocksAfter(e, () => processTree(process.pid), runId);
      throw withSteps(e, await runSteps('afterRestore', notTaken()));
    }
    return settle(result, await runSteps('afterRestore', taken(result)), target);
  } finally {
    setIdle();
  }
}

/**
 * The way out rehearsed, then the collection, last before the dump (after the rehearsal's garbage):
 * the program waits for its file anyway (the thorough one with CHECKPT_GC=compact, src/api/gc.ts).
 */
function warmUp(target: string, mode: 'sync' | 'async'): void {
  if (lazySized()) rehearseReturn(target, mode);
  collectBeforeDump('waiting');
}

/** Resolves in the next turn of the event loop, after its timers phase (setImmediate would not). */
const nextTurn = (): Promise<void> => new Promise((r) => setTimeout(r, 0));

/** Fails fast (EBUSY, bad name, preflight) before any step runs, then marks a checkpoint in progress. */
function claim(file: string | undefined): string {
  if (busy)
    throw new CheckptError(
      'EBUSY',
      'A checkpoint of this process is already in progress; wait for it to finish before asking for another.',
    );
  const target = resolveTarget(file);
  preflight(target);
  busy = true;
  return target;
}

const generation = (): number => lastRestore?.generation ?? 0;
const notTaken = () => ({ restored: false, checkpointed: false, generation: generation() });
const taken = (result: number) => ({
  restored: result === 1,
  checkpointed: true,
  generation: generation(),
});

function abandoned(before: HookFailure[], after: HookFailure[], target: string): CheckptError {
  return hookError(
    [...before, ...after],
    'before the checkpoint, so it was abandoned: nothing was written and the program goes on',
    { path: target },
  );
}

/** A failed checkpoint's own error, carrying the "after" steps that failed as well. */
function withSteps(e: unknown, after: HookFailure[]): unknown {
  if (after.length && e instanceof CheckptError) e.errors = [...(e.errors ?? []), ...after];
  return e;
}

function settle(result: number, after: HookFailure[], target: string): number {
  if (!after.length) return result;
  const err = hookError(
    after,
    result === 1
      ? 'after the restore (this is the resumed copy)'
      : 'after the checkpoint (the file was written; this is the original)',
    { path: target },
  );
  err.restored = result === 1;
  throw err;
}

let warnedNoLock = false;
function warnNoLockOnce(): void {
  if (warnedNoLock) return;
  const warning = noLockWarning(processTree(process.pid));
  if (warning === undefined) return;
  warnedNoLock = true;
  process.stderr.write(`${warning}\n`);
}

function begin(
  target: string,
  options: CheckptOptions,
  mode: 'sync' | 'async',
  runId: string,
  store?: string,
): Session {
  const id = `${ownerTag()}-${randomBytes(6).toString('hex')}`;
  const ctlDir = join(runDir, id);
  let workDir: string | undefined;
  let channel: ControlChannel | undefined;
  try {
    // Checked to be the user's own (0700) before a FIFO goes there.
    if (grantedCriu() !== undefined) userRunDir();
    // A program killed in its own checkpoint left its FIFO's directory behind.
    sweepOrphans(runDir, '');
    mkdirSync(ctlDir, { recursive: true, mode: 0o700 });
    const fifo = join(ctlDir, 'ctl');
    const rss = process.memoryUsage.rss();
    workDir = makeStagingDir('dump', rss);
    const spare = pagesSpare(workDir, rss);
    const job: DumpJob = {
      pid: process.pid,
      target,
      tmp: tempNameFor(target),
      workDir,
      timeoutMs: dumpTimeoutMs(options),
      compress: compressionWanted(mode),
      background: mode === 'async',
      manifest: manifestBase(fifo),
      runId,
      ...(spare === undefined ? {} : { spareBytes: spare }),
    };
    // Under `checkpt run --private-net` the network namespace is the program's own.
    const privateNet = PRIVATE_NET.get() === '1';
    if (privateNet) job.manifest.net = 'private';
    const published = PUBLISH.get();
    if (privateNet && published) job.manifest.publish = published.split(',');
    if (tcpModeFor(privateNet) === 'close') {
      // Without nftables CRIU cannot hold connections still: they are recorded closed instead.
      job.manifest.tcp = 'closed';
      warnNoLockOnce();
    }
    if (options.exit) job.exit = true;
    if (store !== undefined) job.store = store;
    // Only the path: the key itself is read by the worker, never into this process's memory.
    const keyFile = keyFilePath();
    if (keyFile !== undefined) job.keyFile = keyFile;
    const jobFile = join(workDir, 'job.json');
    writeFileSync(jobFile, JSON.stringify(job), { mode: 0o600 });
    mkdirSync(imagesDirOf(workDir), { mode: 0o700 });
    prepareIdentity();
    const packer = packsHere(job, mode) ? 'program' : 'worker';
    const front = dumpFrontCommand(job, jobFile, fifo, mode, packer);
    const log = openSync(join(workDir, 'worker.log'), 'w', 0o600);
    // The front makes the FIFO and holds it open, then detaches: it must not be our child, or CRIU
    // would dump it along with us. One process start, before anything is frozen.
    const r = withoutAdoption(() =>
      spawnWait(front.file, front.args, { stdio: ['ignore', log, log], env: front.env }),
    );
    closeSync(log);
    if (r.error || r.status !== 0)
      throw new CheckptError(
        'EHELPER',
        `Could not start the checkpoint worker (${r.error?.message ?? (r.signal ? `checkpt-helper was killed by ${r.signal}` : `checkpt-helper exited with ${r.status}`)}); nothing was written and the program keeps running.`,
        { cause: r.error },
      );
    channel = ControlChannel.open(fifo);
    const s: Session = { target, tmp: job.tmp, ctlDir, workDir, channel };
    if (packer === 'program') s.packJob = job;
    return s;
  } catch (e) {
    channel?.close();
    rmSync(ctlDir, { recursive: true, force: true });
    if (workDir) rmSync(workDir, { recursive: true, force: true });
    throw asCheckptError(e);
  }
}

/**
 * A resumed copy's way out of checkpt() (checkpoint()'s but for its steps, rehearseSteps()), run
 * in the original right before the dump with nothing changed: each of its functions is then
 * compiled, its object shapes and literals made, in the image. A copy resumed lazily would parse
 * and compile them first, each page V8's parser and the source touch a page fault
 * (docs/PERFORMANCE.md). The program's own steps are not run. Only for a program resumed lazily:
 * a small one's copy has its memory in, and its random caches drained here would cost ~5 ms.
 */
function rehearseReturn(target: string, mode: 'sync' | 'async'): void {
  const msg = ControlChannel.warmed;
  if (msg === undefined) return;
  const saved = { lastRestore, busy, idleWaiters };
  const putBack = networkState();
  idleWaiters = [];
  try {
    const s: Session = {
      target,
      tmp: '',
      ctlDir: '',
      workDir: '',
      channel: ControlChannel.rehearsal(),
    };
    finish(s, msg);
    const result = conclude(s, msg, {});
    const after = mode === 'sync' ? runStepsSync('afterRestore', taken(result), 'built-in') : [];
    settle(result, after, target);
    setIdle();
  } catch {
    // a rehearsal only: the copy meets what failed here as it would have without it
  } finally {
    lastRestore = saved.lastRestore;
    busy = saved.busy;
    idleWaiters = saved.idleWaiters;
    putBack();
  }
}

/** checkpoint()'s steps after a restore, checkpt's own only, rehearsed as rehearseReturn() does. */
async function rehearseSteps(): Promise<void> {
  const putBack = networkState();
  try {
    await runSteps('afterRestore', taken(1), 'built-in');
  } finally {
    putBack();
  }
}

/** A system error (no room for the staging directory, a run directory we cannot make) as EIO. */
function asCheckptError(e: unknown): CheckptError {
  if (e instanceof CheckptError) return e;
  return new CheckptError(
    'EIO',
    `Could not prepare the checkpoint: ${(e as Error)?.message ?? String(e)}. Nothing was written and the program keeps running; check ${runDir} (CHECKPT_RUN_DIR) and the staging directory (CHECKPT_TMPDIR).`,
    { cause: e },
  );
}

/** The worker removes its own work dir; only one that died leaves it, and conclude() cleans that. */
function finish(s: Session, msg: ControlMessage | undefined): void {
  s.channel.close();
  // A resumed copy's control directory was made, and is removed, by the restore's init (the
  // helper), once CRIU is done: the copy spends no page faults on it.
  if (msg?.t !== 'restored') rmSync(s.ctlDir, { recursive: true, force: true });
}

// A lazily resumed copy compiles what it runs first on pages that each cost a fault: conclude()
// is kept to the two outcomes that return, and failed() holds what only a failure needs.
function conclude(s: Session, msg: ControlMessage | undefined, options: CheckptOptions): number {
  if (msg?.t === 'restored') {
    lastRestore = { generation: msg.generation, image: msg.image, restoredAt: msg.restoredAt };
    if (msg.portsKept === true) listenersKept();
    refreshIdentity(); // each copy: random generators of its own
    return 1;
  }
  if (msg?.t === 'ok') {
    // Stopped by CRIU with its sockets in repair mode: gone now, its connections send nothing.
    if (options.exit) process.exit(0);
    refreshIdentity(); // the original: no longer the same generators as the image
    return 0;
  }
  return failed(s, msg);
}

/** Throws the error a worker's word (or its silence) stands for. */
function failed(s: Session, msg: ControlMessage | undefined): never {
  if (msg === undefined) {
    const log = readTail(join(s.workDir, 'worker.log'));
    rmSync(s.workDir, { recursive: true, force: true });
    // The worker (or the front) is gone, it held the FIFO: a file it was killed writing stays.
    rmSync(s.tmp, { force: true });
    throw new CheckptError(
      'EHELPER',
      `The checkpoint ${s.packJob ? 'front (checkpt-helper dump)' : 'worker'} exited without finishing; no checkpoint was written to ${s.target} and the program keeps running.${log ? ' Its last output: ' + log : ''}`,
      { path: s.target, logTail: log },
    );
  }
  if (msg.t === 'err') {
    const opts = {
      path: s.target,
      ...(msg.logTail === undefined ? {} : { logTail: msg.logTail }),
      ...(msg.errno === undefined ? {} : { errno: msg.errno }),
    };
    // A worker of another version may send a code this one does not know.
    throw new CheckptError(isCheckptErrorCode(msg.code) ? msg.code : 'EHELPER', msg.message, opts);
  }
  throw new CheckptError(
    'EHELPER',
    `Unexpected message from the checkpoint worker: ${JSON.stringify(msg)}`,
  );
}

function readTail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-10).join('\n');
  } catch {
    return '';
  }
}

function resolveTarget(file: string | undefined): string {
  if (file !== undefined && typeof file !== 'string')
    throw new CheckptError('EBADNAME', `checkpt(file): file must be a string, got ${typeof file}.`);
  if (file === '') throw new CheckptError('EBADNAME', 'checkpt(file): the file name is empty.');
  const name = file ?? defaultCheckpointFile();
  if (name.includes('\0'))
    throw new CheckptError('EBADNAME', 'The checkpoint file name contains a NUL byte.');
  return resolve(name);
}

/** Fails fast, before anything is frozen, on the problems we can see from here. */
function preflight(target: string): void {
  checkConfig(CHECKPOINT_VARIABLES);
  checkTarget(target);
  // Under a rootless `checkpt run` the program is uid 0 of its own user namespace; on the host,
  // without root, only the administrator's granted CRIU can dump it.
  if (process.getuid?.() !== 0 && grantedCriu() === undefined)
    throw new CheckptError(
      'EPERM',
      `Without root, checkpt can checkpoint a program started outside checkpt only with an administrator's grant (running as uid ${process.getuid?.()}; ${grantState() === 'not a member' ? `the granted CRIU at ${grantedCriuPath} is there, but this user is not in its group` : 'no CRIU has been granted here'}): ${GRANT_ADVICE}. The program keeps running.`,
    );
  requireHelper();
  criuVersion();
  const keyFile = keyFilePath();
  if (keyFile !== undefined) checkKeyFile(keyFile);
  if (hasIoUring())
    throw new CheckptError(
      'EIOURING',
      `${ioUringAdvice(process.version, whyNotRestarted())} The program keeps running.`,
    );
}

function manifestBase(fifo: string): ManifestBase {
  const mem = process.memoryUsage();
  return {
    formatVersion: FORMAT_VERSION,
    createdAt: new Date().toISOString(),
    host: hostname(),
    argv: process.argv,
    execPath: process.execPath,
    cwd: process.cwd(),
    pid: process.pid,
    uid: hostUid(),
    node: process.version,
    kernel: release(),
    rssBytes: mem.rss,
    heapUsedBytes: mem.heapUsed,
    stdio: describeStdio(),
    control: { mount: runDir, fifo },
    generation: lastRestore?.generation ?? 0,
    ...(hasBuiltIn(networkResource) ? { network: 'takeover' as const } : {}),
    ...(rootless() ? { rootless: true as const } : {}),
    ...(grantedCriu() !== undefined ? { granted: true as const } : {}),
  };
}
