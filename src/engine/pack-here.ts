/**
 * checkpt() of a plain file: the program packs CRIU's images itself, inside the call it already
 * waits on, instead of a packing worker (a Node process whose start was most of the pause,
 * docs/PERFORMANCE.md). Encrypted files (the key never enters the program), chunk stores,
 * compression and checkpoint-and-exit still go to the worker.
 */
import { rmSync } from 'node:fs';
import { writePlainImageSync } from '../image/write-sync.js';
import { criuVersion } from './criu.js';
import { checkFront, frontEnd } from './dump-end.js';
import { imagesDirOf, type DumpJob } from './job.js';
import { packedManifest } from './packed-manifest.js';
import { packingFailed, writeFailed } from './write-failed.js';

/** Whether the program packs this job's file itself (the front then starts no worker). */
export function packsHere(job: DumpJob, mode: 'sync' | 'async'): boolean {
  return (
    mode === 'sync' &&
    job.exit !== true &&
    job.keyFile === undefined &&
    job.store === undefined &&
    !job.compress
  );
}

/**
 * Given the front's word on how CRIU ended: the file written and durable, its size; else the
 * error that says why nothing was. The staging directory is gone either way.
 */
export function packHere(job: DumpJob, said: string): { bytes: number } {
  try {
    const ended = frontEnd(said, job);
    checkFront(job, ended);
    const manifest = packedManifest(job, criuVersion().text, ended.ms);
    try {
      return writePlainImageSync(job.target, manifest, imagesDirOf(job.workDir), { tmp: job.tmp });
    } catch (e) {
      throw writeFailed(e, job.target, manifest.imageBytes);
    }
  } catch (e) {
    throw packingFailed(e, job.target);
  } finally {
    rmSync(job.workDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
  }
}
