import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CheckptError } from '../common/errors.js';
import { CRIU, CRIU_HOME, HELPER, readAtLoad, RUN_DIR } from '../common/config.js';

/** The package root: dist/engine/paths.js lives two levels below it. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const helperPath = readAtLoad(HELPER) ?? join(packageRoot, 'build', 'checkpt-helper');

/** LD_PRELOAD library that keeps libuv (Node 22/24) off io_uring, which CRIU cannot dump. */
export const randAddonPath = join(packageRoot, 'build', 'checkpt-rand.node');
export const nouringLibPath = join(packageRoot, 'build', 'libcheckpt-nouring.so');

export const dumpWorkerPath = join(packageRoot, 'dist', 'engine', 'dump-worker.js');

/** Where scripts/install-criu.sh puts the CRIU it builds: a directory of checkpt's own. */
export const ownCriuHome = readAtLoad(CRIU_HOME);

export type CriuSource = 'CHECKPT_CRIU' | 'checkpt build' | 'PATH';

/** Which CRIU checkpt runs: CHECKPT_CRIU, else its own build, else `criu` on the PATH. */
export function findCriu(env: NodeJS.ProcessEnv = process.env): {
  path: string;
  source: CriuSource;
} {
  const given = CRIU.get(env);
  if (given !== undefined) return { path: given, source: 'CHECKPT_CRIU' };
  const own = join(CRIU_HOME.get(env), 'bin', 'criu');
  if (existsSync(own)) return { path: own, source: 'checkpt build' };
  return { path: 'criu', source: 'PATH' };
}

const criu = findCriu();
export const criuPath = criu.path;
export const criuSource: CriuSource = criu.source;

/** Control FIFOs live here; each restore mounts a private tmpfs over it, so restores never share one. */
export const runDir = readAtLoad(RUN_DIR);

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
