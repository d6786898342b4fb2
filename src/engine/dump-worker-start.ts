/**
 * What the dump front runs (dist/bin/dump-worker.cjs, bundled): the packing worker's code, one
 * bundled file, loaded with a code cache made after a worker ran (src/common/code-cache.ts). The
 * worker starts loading while CRIU dumps the program, and for a small program its load was the
 * longer of the two: ES modules and lazily compiled functions, ~70 ms over `node -e 0`.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { loadWithCodeCache } from '../common/code-cache.js';

const code = fileURLToPath(new URL('./dump-worker-code.cjs', import.meta.url));
const cached = existsSync(code) ? loadWithCodeCache(code, 'dump-worker') : undefined;
// Only after a worker that did its job: one that failed at once compiled little of the packing.
if (cached) process.once('exit', (code) => code === 0 && cached.save());
else createRequire(import.meta.url)(code);
