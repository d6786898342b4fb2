import * as nodeModule from 'node:module';
import { privateCacheDir } from '../common/cache-dir.js';

export { privateCacheDir };

/**
 * Turns on Node's compile cache (22.1 and newer) for the modules loaded from now on, in
 * privateCacheDir(); on older Node, or where there is no such place, nothing happens.
 * NODE_DISABLE_COMPILE_CACHE=1 turns it off, as for any Node program.
 */
export function enableCompileCache(env: NodeJS.ProcessEnv = process.env): void {
  const enable = (nodeModule as { enableCompileCache?: (dir: string) => unknown })
    .enableCompileCache;
  if (typeof enable !== 'function' || env.NODE_DISABLE_COMPILE_CACHE) return;
  const dir = privateCacheDir(env);
  if (dir !== undefined) enable(dir);
}
