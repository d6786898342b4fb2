import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { CheckptError, errnoOf } from '../common/errors.js';

/** A failed write, said from the program's side: where, why, what to do, and what is left. */
export function writeFailed(e: unknown, target: string, imageBytes: number): CheckptError {
  const err = e instanceof CheckptError ? e : undefined;
  // The file is already in place; only the directory's fsync failed: that message says so.
  if (err?.inPlace) return err;
  const errno = errnoOf(e);
  const full = errno === 'ENOSPC' || errno === 'EDQUOT';
  // Removed while the file was written: the rename into it fails, and that is the target's fault.
  if (!full && !existsSync(dirname(target)))
    return new CheckptError(
      'ETARGET',
      `Could not write the checkpoint ${target}: its directory was removed while the file was written; check that the directory exists and is writable. Nothing was written and the program keeps running.`,
      { cause: e, path: target },
    );
  const why = full
    ? `the filesystem is full (the checkpoint needs about ${Math.ceil(imageBytes / 2 ** 20)} MB there); free some space or choose another place`
    : (err?.message ?? (e as Error).message);
  return new CheckptError(
    err?.code ?? 'EIO',
    `Could not write the checkpoint ${target}: ${why}. Nothing was written there (an older checkpoint at that path is untouched) and the program keeps running.`,
    { cause: e, path: target },
  );
}

/** Anything else that went wrong while packing, said as EIO; a CheckptError stays as it is. */
export function packingFailed(e: unknown, target: string): CheckptError {
  if (e instanceof CheckptError) return e;
  return new CheckptError(
    'EIO',
    `Writing the checkpoint failed: ${(e as Error)?.message ?? String(e)}. Nothing was written to ${target}; the program keeps running.`,
    { cause: e, path: target },
  );
}
