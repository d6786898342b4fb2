import type { ImageEntry } from '../image/format.js';

/**
 * What the manifest (its fields: ./job.ts) says about the entries, for image/'s `checkManifest`
 * whenever a checkpoint is read: `packedBytes`, else `imageBytes`, is what the writers packed, so
 * a manifest that disagrees with the entries was not written by them.
 */
export function manifestProblem(
  manifest: Record<string, unknown>,
  entries: readonly ImageEntry[],
): string | undefined {
  const stated = manifest.packedBytes ?? manifest.imageBytes;
  const held = entries.reduce((n, e) => n + e.size, 0);
  if (stated === undefined || stated === held) return undefined;
  return `its manifest says the CRIU images hold ${JSON.stringify(stated)} bytes but its entries hold ${held}`;
}
