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
 * file path, Node and architecture, keyed by the file's identity and times (inode, size, mtime,
 * ctime: any write moves its ctime), in privateCacheDir() only: code in it is run as found.
 * Undefined where there is no such place (the caller then requires the file).
 */
export function loadWithCodeCache<T>(path: string, kind: string): Cached<T> | undefined {
  const dir = privateCacheDir();
  if (dir === undefined || !/^[a-z-]+$/.test(kind)) return undefined;
  const source = readFileSync(path, 'utf8');
  // V8 itself checks only the source's length: a changed file must not find the old code. Its
  // stat, not its content: hashing the 430 KB commands file took 3-4 ms of every start.
  const st = statSync(path, { bigint: true });
  const slot = `${PREFIX}${kind}-${slotOf(path)}-`;
  const name = `${slot}${st.dev}-${st.ino}-${st.size}-${st.mtimeNs}-${st.ctimeNs}.v8`;
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
        forgetOthers(dir, slot, name);
      } catch {
        // A cache not written costs the next run time, nothing else.
        if (existsSync(tmp)) rmSync(tmp, { force: true });
      }
    },
  };
}

/** Unused this long, a cache belongs to an install or a Node that is gone. */
const STALE_MS = 30 * 24 * 3600 * 1000;

/**
 * Removes the caches of older versions of this file on this Node, and any cache left unchanged
 * for a month. Two installs of checkpt, or one run by two Nodes, keep a cache each: removing every
 * other cache of the command made them throw each other's away, and each start compiled anew.
 */
function forgetOthers(dir: string, slot: string, name: string): void {
  const now = Date.now();
  for (const n of readdirSync(dir)) {
    if (!n.startsWith(PREFIX) || n === name) continue;
    const p = join(dir, n);
    const mtime = statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? now;
    if (n.startsWith(slot) || now - mtime > STALE_MS) rmSync(p, { force: true });
  }
}

/** The cache's slot: this file on this Node and architecture (FNV-1a, 32 bits, in hex). */
function slotOf(path: string): string {
  let h = 0x811c9dc5;
  for (const c of `${path}\0${process.version}\0${process.arch}`) {
    h ^= c.codePointAt(0)!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}
