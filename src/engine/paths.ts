import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CRIU, CRIU_HOME, readAtLoad, RUN_DIR } from '../common/config.js';

/** The package root: dist/engine/paths.js lives two levels below it. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The packing worker: bundled with a code cache (dist/bin), else tsc's ES module. */
export const dumpWorkerPath = ((): string => {
  const bundled = join(packageRoot, 'dist', 'bin', 'dump-worker.cjs');
  return existsSync(bundled) ? bundled : join(packageRoot, 'dist', 'engine', 'dump-worker.js');
})();

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

/**
 * Control FIFOs live here; each restore mounts a private tmpfs over it, so restores never share one.
 * Not root and not told (a program started outside checkpt, using the granted CRIU): root's
 * /run/checkpt is not the user's, so the user's own /tmp/checkpt-UID (common/privilege.ts).
 */
export const runDir =
  process.env[RUN_DIR.name] === undefined && process.geteuid?.() !== 0
    ? join('/tmp', `checkpt-${process.getuid?.() ?? 0}`)
    : readAtLoad(RUN_DIR);
