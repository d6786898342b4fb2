/** The manifest a checkpoint file carries: the program's part and what only the dump knows. */
import { dirBytes } from '../image/format.js';
import { dumpStats } from './criu-stats.js';
import { frontRecipe } from './front.js';
import { imagesDirOf, type DumpJob, type Manifest } from './job.js';
import type { DumpLock } from './netlock.js';

/** `job.manifest` with CRIU's version, the images' size, the dump's time and the resume's recipe. */
export function packedManifest(
  job: DumpJob,
  criu: string,
  dumpMs: number,
  lock?: DumpLock,
): Manifest {
  const imagesDir = imagesDirOf(job.workDir);
  const manifest: Manifest = {
    ...job.manifest,
    criu,
    imageBytes: dirBytes(imagesDir),
    dumpMs: Math.round(dumpMs),
  };
  // CRIU writes its stats where it works (-W), the images' directory without one.
  const frozen = (dumpStats(job.workDir) ?? dumpStats(imagesDir))?.frozenMs;
  if (frozen !== undefined) manifest.frozenMs = Math.round(frozen * 10) / 10;
  // What `checkpt inspect` and `checkpt unlock` need: the table holding the connections.
  if (lock?.holds) manifest.networkLock = lock.table;
  const front = frontRecipe(manifest, imagesDir);
  if (front !== undefined) manifest.front = front;
  return manifest;
}
