import { CheckptError } from './errors.js';

/** What native/checkpt-blake3.c exports. */
export interface Blake3Addon {
  blake3(data: Uint8Array, out: Buffer): boolean;
}

const DIGEST_BYTES = 32;

type Loader = () => Blake3Addon;
let loader: Loader | undefined;
let loaded: { addon: Blake3Addon } | { problem: unknown } | undefined;

/**
 * How to load the addon, given by the engine, which knows where the compiled parts are
 * (engine/native.ts). Loaded at the first hash, not before: a resume whose chunks the native page
 * server checks never loads it.
 */
export function setBlake3Loader(l: Loader | undefined): void {
  loader = l;
  loaded = undefined;
}

function load(): { addon: Blake3Addon } | { problem: unknown } {
  if (loaded) return loaded;
  try {
    if (!loader) throw new Error('no loader: engine/native.js was not loaded');
    const addon = loader();
    if (typeof addon?.blake3 !== 'function') throw new Error('the addon has no blake3()');
    loaded = { addon };
  } catch (e) {
    loaded = { problem: e };
  }
  return loaded;
}

/** Whether BLAKE3 works here: new files get their chunk tables in it, else in SHA-256. */
export function blake3Available(): boolean {
  return 'addon' in load();
}

/** The 32-byte BLAKE3 digest of `data`; EHELPER, saying what to do, where the addon is missing. */
export function blake3(data: Uint8Array): Buffer {
  const l = load();
  if (!('addon' in l)) {
    const why = l.problem instanceof Error ? l.problem.message : String(l.problem);
    throw new CheckptError(
      'EHELPER',
      `This checkpoint's memory chunks are checked with BLAKE3, and checkpt's BLAKE3 addon does not load here (${why}). Run 'npx checkpt build' to compile it, or 'checkpt check' to see why.`,
      { cause: l.problem },
    );
  }
  const out = Buffer.allocUnsafe(DIGEST_BYTES);
  if (!l.addon.blake3(data, out)) throw new Error('internal: blake3() refused its arguments');
  return out;
}
