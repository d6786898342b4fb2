import { accessSync, constants, statSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { CheckptError } from './errors.js';

/** Fails before anything is frozen when the checkpoint file could not be written where asked. */
export function checkTarget(target: string): void {
  const dir = dirname(target);
  try {
    if (!statSync(dir).isDirectory()) throw new Error('not a directory');
    accessSync(dir, constants.W_OK);
  } catch (e) {
    throw new CheckptError(
      'ETARGET',
      `Cannot write a checkpoint into ${dir}: ${(e as Error).message}. Create the directory or choose a writable path; the program keeps running.`,
      { cause: e, path: target },
    );
  }
  try {
    if (statSync(target).isDirectory())
      throw new CheckptError(
        'ETARGET',
        `${target} is a directory; give a file name for the checkpoint.`,
        {
          path: target,
        },
      );
  } catch (e) {
    if (e instanceof CheckptError) throw e;
  }
  if (basename(target).length > 200)
    throw new CheckptError(
      'EBADNAME',
      `The checkpoint file name is too long: ${basename(target).slice(0, 40)}…`,
    );
}
