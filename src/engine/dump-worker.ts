/**
 * The dump worker: started by the dump front (checkpt-helper dump) outside the process's tree, it
 * loads while the front waits for the process and runs CRIU, then packs the images into one file
 * and reports on fd 3, the FIFO's write end. If it and the front die, the process reads EOF.
 */
import { closeSync, read, readFileSync, rmSync, writeSync } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { criuVersion } from './criu.js';
import { checkFront, frontEnd, type FrontEnd } from './dump-end.js';
import { packedManifest } from './packed-manifest.js';
import { imagesDirOf, type ControlMessage, type DumpJob } from './job.js';
import { compressImages } from '../image/compress.js';
import { dirBytes, writeImage } from '../image/format.js';
import { readKeyFile } from '../image/key.js';
import { dropEmptyLock, dumpLock, type DumpLock } from './netlock.js';
import { listenForPostDump } from './post-dump.js';
import { lowerPriority, processTree, signalQuietly } from '../common/procfs.js';
import { packingFailed, writeFailed } from './write-failed.js';
import { useNativeSha256 } from './native.js';
import { closeFdQuietly } from '../image/io.js';

const CONTROL_FD = 3;

function send(msg: ControlMessage): void {
  writeSync(CONTROL_FD, JSON.stringify(msg) + '\n');
}

/** How the dump front (native/checkpt-helper.c, `dump`) says CRIU ended: one line on a pipe. */
function awaitFront(fd: number, job: DumpJob): Promise<FrontEnd> {
  return new Promise((resolve, reject) => {
    let text = '';
    const buf = Buffer.alloc(256);
    // Plain reads, not a stream: node:stream was ~4 ms of this worker's start.
    const more = (): void =>
      read(fd, buf, 0, buf.length, null, (e, n) => {
        if (e) return reject(e);
        if (n > 0) {
          text += buf.toString('utf8', 0, n);
          return more();
        }
        closeSync(fd);
        try {
          resolve(frontEnd(text, job));
        } catch (err) {
          reject(err);
        }
      });
    more();
  });
}

/** Packs CRIU's images into the checkpoint file; resolves with its size once it is durable. */
async function pack(job: DumpJob, criu: string, dumpMs: number, lock?: DumpLock): Promise<number> {
  const imagesDir = imagesDirOf(job.workDir);
  // On a small machine the program would otherwise wait for CPU while its image is packed.
  if (job.background) lowerPriority();
  const manifest = packedManifest(job, criu, dumpMs, lock);
  // Into a store, each new chunk is compressed alone: a whole compressed image would not dedup.
  const store = job.store !== undefined && job.keyFile === undefined ? job.store : undefined;
  if (job.compress && store === undefined && (await compressImages(imagesDir)) > 0) {
    manifest.compression = 'zstd';
    manifest.packedBytes = dirBytes(imagesDir);
  }
  // Read only now: an error before CRIU has finished would wake the program too early.
  const key = job.keyFile === undefined ? undefined : readKeyFile(job.keyFile);
  try {
    const { bytes } = await writeImage(
      job.target,
      manifest as unknown as Record<string, unknown>,
      { dir: imagesDir },
      {
        key,
        tmp: job.tmp,
        store: store === undefined ? undefined : { dir: store, compress: job.compress },
        // This process has nothing else to do: no trips through the thread pool.
        direct: true,
      },
    ).catch((e: unknown) => {
      throw writeFailed(e, job.target, manifest.packedBytes ?? manifest.imageBytes);
    });
    return bytes;
  } finally {
    key?.fill(0);
  }
}

/**
 * Checkpoint and exit: the file is packed while CRIU waits in its post-dump script, the program
 * frozen and its connections locked. Written: the program is left stopped with its sockets in
 * repair mode, told "ok" and continued, and exits at once without a FIN or RST reaching a peer;
 * the lock stays until a restore lifts it. Not written: CRIU rolls back and the program goes on.
 */
async function exitAfterPacking(
  job: DumpJob,
  criu: string,
  front: Promise<FrontEnd>,
): Promise<void> {
  const hook = await listenForPostDump(job.workDir);
  try {
    const ended = front;
    ended.catch(() => undefined); // awaited below; it may fail while the images are awaited
    const ready = await Promise.race([hook.dumped.then(() => true), ended.then(() => false)]);
    if (!ready) {
      checkFront(job, await ended);
      throw new CheckptError(
        'EHELPER',
        "CRIU finished without running checkpt's post-dump step; nothing was written and the program keeps running.",
      );
    }
    const images = imagesDirOf(job.workDir);
    const lock = dumpLock(images);
    let bytes: number;
    try {
      bytes = await pack(job, criu, Date.now() - Date.parse(job.manifest.createdAt), lock);
    } catch (e) {
      hook.verdict(false);
      // CRIU rolls back and exits; the packing failure is what the program must hear.
      await ended.catch(() => undefined);
      throw e;
    }
    hook.verdict(true);
    const last = await ended;
    if (last.status !== 0 || last.timedOut) {
      // CRIU failed after the file was written (it then resumes the program): no half-done exit.
      rmSync(job.target, { force: true });
      checkFront(job, last);
    }
    removeStaging(job);
    send({ t: 'ok', bytes, file: job.target });
    // CRIU left the whole tree stopped: its children go on too (and see the program end).
    const tree = processTree(job.pid);
    for (const pid of [...tree.slice(1), job.pid]) signalQuietly(pid, 'SIGCONT');
    dropEmptyLock(lock);
  } finally {
    hook.close();
  }
}

async function main(): Promise<void> {
  const jobFile = process.argv[2];
  const goFd = Number(process.argv[process.argv.indexOf('--go-fd') + 1]);
  const at = process.argv.indexOf('--ready-fd');
  const readyFd = at > 0 ? Number(process.argv[at + 1]) : undefined;
  if (!jobFile || !Number.isInteger(goFd) || (readyFd !== undefined && !Number.isInteger(readyFd)))
    throw new Error('usage: dump-worker JOB.json --go-fd FD [--ready-fd FD]');
  const job = JSON.parse(readFileSync(jobFile, 'utf8')) as DumpJob;
  try {
    // Everything this needs is loaded while the front waits for the program and runs CRIU.
    const version = criuVersion();
    // The file's SHA-256 without node:crypto (~10 ms to load, after CRIU).
    useNativeSha256();
    const front = awaitFront(goFd, job);
    // checkpoint(): the front lets CRIU freeze the program only once this fd is closed, after
    // Node's start-up has run its course (its first turn of the event loop): never in the pause.
    if (readyFd !== undefined) setImmediate(() => closeFdQuietly(readyFd));
    if (job.exit) await exitAfterPacking(job, version.text, front);
    else {
      const ended = await front;
      checkFront(job, ended);
      const bytes = await pack(job, version.text, ended.ms);
      removeStaging(job);
      send({ t: 'ok', bytes, file: job.target });
    }
  } catch (e) {
    const err = packingFailed(e, job.target);
    const msg: ControlMessage = { t: 'err', code: err.code, message: err.message };
    if (err.logTail !== undefined) msg.logTail = err.logTail;
    if (err.errno !== undefined) msg.errno = err.errno;
    // As for "ok": the program may check, or end, the moment it hears.
    removeStaging(job);
    send(msg);
  } finally {
    // A CRIU killed with the front may still be finishing its last write here.
    removeStaging(job);
  }
}

/**
 * Before the program hears "ok" or "err": a program that exits at once may end its PID namespace (a copy
 * under checkpt -r), and the kernel then kills this worker too, which left the images behind.
 */
function removeStaging(job: DumpJob): void {
  rmSync(job.workDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
