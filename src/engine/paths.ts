import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
