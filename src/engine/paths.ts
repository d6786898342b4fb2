import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CheckptError } from '../api/errors.js';

/** The package root: dist/engine/paths.js lives two levels below it. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const helperPath =
  process.env.CHECKPT_HELPER || join(packageRoot, 'build', 'checkpt-helper');

/** LD_PRELOAD library that keeps libuv (Node 22/24) off io_uring, which CRIU cannot dump. */
export const nouringLibPath = join(packageRoot, 'build', 'libcheckpt-nouring.so');

export const dumpWorkerPath = join(packageRoot, 'dist', 'engine', 'dump-worker.js');

export const criuPath = process.env.CHECKPT_CRIU || 'criu';

/** Control FIFOs live here; each restore mounts a private tmpfs over it, so restores never share one. */
export const runDir = process.env.CHECKPT_RUN_DIR || '/run/checkpt';

export function helperExists(): boolean {
  return existsSync(helperPath);
}

/** Throws EHELPER, saying how to build it, when the native helper is missing. */
export function requireHelper(): void {
  if (!helperExists())
    throw new CheckptError(
      'EHELPER',
      `checkpt's native helper is missing (${helperPath}). Install a C compiler (apt-get install gcc libc6-dev) and run 'npm rebuild checkpt'.`,
    );
}
