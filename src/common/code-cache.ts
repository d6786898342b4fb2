import { createHash } from 'node:crypto';
import {
  existsSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Script } from 'node:vm';
import { privateCacheDir } from './cache-dir.js';

/** A module loaded with V8's code cache for it, which `save` writes once the command has run. */
export interface Cached<T> {
  exports: T;
  /** Whether V8 took the cached code (false: none yet, or refused). */
  fromCache: boolean;
  /** Writes the code cache when there was none or V8 refused it; nothing otherwise. */
  save(): void;
}

const PREFIX = 'checkpt-commands-';

/**
 * Loads the bundled commands file (CommonJS) as Node would, but through a vm.Script whose code
 * cache is made after the command ran: Node's compile cache is made right after compiling, so it
 * holds only the top level, and every function a resume calls was compiled again on each run
 * (~12 ms of the command's main thread, docs/PERFORMANCE.md). One cache per `kind` (the command),
 * keyed by the file's identity and times (inode, size, mtime, ctime: any write moves its ctime), this Node and its architecture, in privateCacheDir() only: code in
 * it is run as found. Undefined where there is no such place (the caller then requires the file).
 */
export function loadWithCodeCache<T>(path: string, kind: string): Cached<T> | undefined {
  const dir = privateCacheDir();
  if (dir === undefined || !/^[a-z-]+$/.test(kind)) return undefined;
  const source = readFileSync(path, 'utf8');
  // V8 itself checks only the source's length: a changed file must not find the old code. Its
  // stat, not its content: hashing the 430 KB commands file took 3-4 ms of every start.
  const st = statSync(path, { bigint: true });
  const key = createHash('sha256')
    .update(`${process.version} ${process.arch}\0`)
    .update(`${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`)
    .digest('hex')
    .slice(0, 32);
  const name = `${PREFIX}${kind}-${key}.v8`;
  const file = join(dir, name);
  let cachedData: Buffer | undefined;
  try {
    cachedData = readFileSync(file);
  } catch {
    // none yet
  }
  // The same wrapper as Node's CommonJS loader: line numbers in stacks stay the file's own.
  const script = new Script(
    `(function (exports, require, module, __filename, __dirname) { ${source}\n})`,
    { filename: path, ...(cachedData ? { cachedData } : {}) },
  );
  const fn = script.runInThisContext() as (...args: unknown[]) => void;
  const module = { exports: {} as T, filename: path, id: path };
  fn.call(module.exports, module.exports, createRequire(path), module, path, dirname(path));
  let saved = false;
  const fromCache = cachedData !== undefined && script.cachedDataRejected === false;
  return {
    exports: module.exports,
    fromCache,
    save: () => {
      if (saved || fromCache) return;
      saved = true;
      const tmp = `${file}.${process.pid}.tmp`;
      try {
        writeFileSync(tmp, script.createCachedData(), { mode: 0o600 });
        renameSync(tmp, file);
        // The caches of older files, or of another Node, for this command.
        for (const n of readdirSync(dir))
          if (n.startsWith(`${PREFIX}${kind}-`) && n !== name)
            rmSync(join(dir, n), { force: true });
      } catch {
        // A cache not written costs the next run time, nothing else.
        if (existsSync(tmp)) rmSync(tmp, { force: true });
      }
    },
  };
}
