/**
 * The dump worker: started by the dump front (checkpt-helper dump) outside the process's tree, it
 * loads while the front waits for the process and runs CRIU, then packs the images into one file
 * and reports on fd 3, the FIFO's write end. If it and the front die, the process reads EOF.
 */
import { createReadStream, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../api/errors.js';
import { checkDump, criuVersion } from './criu.js';
import type { ControlMessage, DumpJob, Manifest } from './job.js';
import { compressImages } from '../image/compress.js';
import { dirBytes, writeImage } from '../image/format.js';
import { readKeyFile } from '../image/key.js';
import { lowerPriority } from '../launcher/procfs.js';
import { writeFailed } from './write-failed.js';

const CONTROL_FD = 3;

function send(msg: ControlMessage): void {
  writeSync(CONTROL_FD, JSON.stringify(msg) + '\n');
}

/** How the dump front (native/checkpt-helper.c, `dump`) says CRIU ended: one line on a pipe. */
function awaitFront(
  fd: number,
  job: DumpJob,
): Promise<{ status: number | null; timedOut: boolean; ms: number }> {
  return new Promise((resolve, reject) => {
    let text = '';
    const stream = createReadStream('', { fd, encoding: 'utf8' });
    stream.on('data', (d) => (text += d));
    stream.on('error', reject);
    stream.on('close', () => {
      const [word, a, b] = text.trim().split(' ');
      if (word === 'criu') resolve({ status: Number(a), timedOut: false, ms: Number(b) });
      else if (word === 'timeout') resolve({ status: null, timedOut: true, ms: Number(a) });
      else if (word === 'blocked' && a === 'timeout')
        reject(
          new CheckptError(
            'ETIMEOUT',
            `Process ${job.pid} did not wait on its checkpoint channel within ${job.timeoutMs} ms; nothing was written and it keeps running.`,
          ),
        );
      else
        reject(
          new CheckptError(
            'EHELPER',
            `The checkpoint front (checkpt-helper dump) ended before it said how CRIU ended (${text.trim() || 'it said nothing'}); nothing was written and the program keeps running.`,
          ),
        );
    });
  });
}

function readQuietly(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

async function main(): Promise<void> {
  const jobFile = process.argv[2];
  const goFd = Number(process.argv[process.argv.indexOf('--go-fd') + 1]);
  if (!jobFile || !Number.isInteger(goFd))
    throw new Error('usage: dump-worker JOB.json --go-fd FD');
  const job = JSON.parse(readFileSync(jobFile, 'utf8')) as DumpJob;
  try {
    // Everything this needs is loaded while the front waits for the program and runs CRIU.
    const version = criuVersion();
    const imagesDir = join(job.workDir, 'images');
    const front = await awaitFront(goFd, job);
    // CRIU's own stderr (a CRIU that fails before it opens its log) went to the worker's log.
    const stderr = front.status === 0 ? '' : readQuietly(join(job.workDir, 'worker.log'));
    await checkDump(front.status, front.timedOut, job.workDir, job.timeoutMs, stderr);
    const dumpMs = front.ms;
    // On a small machine the program would otherwise wait for CPU while its image is packed.
    if (job.background) lowerPriority();
    const manifest: Manifest = {
      ...job.manifest,
      criu: version.text,
      imageBytes: dirBytes(imagesDir),
      dumpMs: Math.round(dumpMs),
    };
    if (job.compress && (await compressImages(imagesDir)) > 0) {
      manifest.compression = 'zstd';
      manifest.packedBytes = dirBytes(imagesDir);
    }
    // Read only now: an error before CRIU has finished would wake the program too early.
    const key = job.keyFile === undefined ? undefined : readKeyFile(job.keyFile);
    const { bytes } = await writeImage(
      job.target,
      manifest as unknown as Record<string, unknown>,
      { dir: imagesDir },
      { key, tmp: job.tmp },
    ).catch((e: unknown) => {
      throw writeFailed(e, job.target, manifest.packedBytes ?? manifest.imageBytes);
    });
    key?.fill(0);
    send({ t: 'ok', bytes, file: job.target });
  } catch (e) {
    const err =
      e instanceof CheckptError
        ? e
        : new CheckptError(
            'EIO',
            `Writing the checkpoint failed: ${(e as Error).message}. Nothing was written to ${job.target}; the program keeps running.`,
            { cause: e },
          );
    const msg: ControlMessage = { t: 'err', code: err.code, message: err.message };
    if (err.logTail !== undefined) msg.logTail = err.logTail;
    send(msg);
  } finally {
    // A CRIU killed with the front may still be finishing its last write here.
    rmSync(job.workDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
