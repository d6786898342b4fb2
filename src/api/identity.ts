import { closeSync, openSync, readSync } from 'node:fs';
import { randomBytes, randomFillSync, randomInt, randomUUID } from 'node:crypto';
import { LAZY_MIN_BYTES } from '../common/config.js';
import { anonBytes, procStatus } from '../common/procfs.js';
import { nativeAddon } from '../engine/native.js';
import { locateRandomCaches, type RandomCaches } from './random-caches.js';

/** The N-API addon (native/checkpt-openssl.c) whose reseed() calls OpenSSL's RAND_poll(). */
interface RandAddon {
  reseed(): boolean;
  /** Fills `buf` from getrandom(2); an addon built before it has none. */
  kernelBytes?(buf: Buffer): boolean;
  /** reseed() and kernelBytes() of each argument in one call: 0, or REFRESH_* bits set. */
  refresh?(...bufs: Uint8Array[]): number;
}

const REFRESH_NO_RESEED = 1;
const REFRESH_NO_FILL = 2;

let addon: RandAddon | undefined;
let enabled = true;
/** Node's randomUUID()/randomInt() buffers once looked for: null when they could not be found. */
let caches: RandomCaches | null | undefined;
let lastWay: 'caches' | 'draws' | undefined;

/**
 * @internal For tests: turns refreshIdentity() into a no-op, to show what copies of one checkpoint
 * share without it.
 */
export function setIdentityRefresh(on: boolean): void {
  enabled = on;
}

/** @internal For tests: how the last refreshIdentity() flushed Node's caches. */
export function lastCacheFlush(): 'caches' | 'draws' | undefined {
  return lastWay;
}

/**
 * Looks for Node's random caches once the program is big enough to be resumed lazily: its copies
 * then save the draws' 25-30 ms of faults. The inspector session that finds them leaves 2-4 MB of
 * its own state in the program, dumped with every checkpoint: a small program, whose copies run
 * with all of their memory in, drains its caches in ~5 ms instead (docs/PERFORMANCE.md).
 */
function locateIfLazy(): void {
  if (caches !== undefined) return;
  if (!lazySized()) return;
  caches = locateRandomCaches() ?? null;
}

/** Whether this program's copies would run while their memory streams in (src/engine/lazy.ts). */
export function lazySized(): boolean {
  return anonBytes(procStatus(process.pid)) >= LAZY_MIN_BYTES;
}

function loadAddon(): RandAddon {
  if (!addon) {
    // Loaded with process.dlopen: a tenth of the time require() takes to set up and load it.
    addon = nativeAddon<RandAddon>('checkpt-openssl.node');
  }
  return addon;
}

// Node's randomUUID() (and randomUUIDv7() in Node 24) serves 16-byte slots of one 128-slot buffer.
const UUID_BATCH = 128;
// crypto.randomInt() draws 6 bytes at a time from a 6 KiB cache: 1024 draws.
const RANDOM_INT_DRAWS = 1024;

/** xoshiro128** state; Math.random is replaced by random() from the first refresh on. */
let s0 = 0,
  s1 = 0,
  s2 = 0,
  s3 = 0;
// Made with the module, so in every image: a copy fills them without allocating (x64: little-endian).
const seedBytes = new Uint8Array(16);
const seedWords = new Int32Array(seedBytes.buffer);
let mathRandomInstalled = false;

function next32(): number {
  const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
  const t = s1 << 9;
  s2 ^= s0;
  s3 ^= s1;
  s1 ^= s2;
  s0 ^= s3;
  s2 ^= t;
  s3 = rotl(s3, 11);
  return result;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A double in [0, 1) from 53 random bits, like V8's; a method, so not a constructor. */
const random = {
  random(): number {
    return ((next32() >>> 5) * 67108864 + (next32() >>> 6)) / 9007199254740992;
  },
}.random;

/**
 * 16 bytes straight from the kernel, independent of OpenSSL's state: getrandom(2) through the
 * addon (one call, no JavaScript of node:fs), else /dev/urandom; undefined if neither answers.
 */
function kernelBytes(): Buffer | undefined {
  const buf = Buffer.alloc(16);
  try {
    if (loadAddon().kernelBytes?.(buf) === true) return buf;
  } catch {
    // an addon that does not load: /dev/urandom below
  }
  try {
    const fd = openSync('/dev/urandom', 'r');
    try {
      if (readSync(fd, buf, 0, 16, null) === 16) return buf;
    } finally {
      closeSync(fd);
    }
  } catch {
    // OpenSSL's bytes alone, below
  }
  return undefined;
}

/** Seeds Math.random from `seedBytes`, drawn already by refresh() when `drawn`. */
function seedMathRandom(drawn: boolean): void {
  // OpenSSL's generator was reseeded just before (or refreshIdentity() warns that it was not).
  if (!drawn) seedBytes.set(kernelBytes() ?? randomBytes(16));
  s0 = seedWords[0]!;
  s1 = seedWords[1]!;
  s2 = seedWords[2]!;
  s3 = seedWords[3]!;
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1; // the one state xoshiro never leaves
  if (!mathRandomInstalled) {
    Object.defineProperty(Math, 'random', {
      value: random,
      writable: true,
      enumerable: false,
      configurable: true,
    });
    mathRandomInstalled = true;
  }
}

/** The draws that take randomUUID() past its cache: one of them refills it (below). */
function drawUuids(): void {
  for (let i = 0; i < UUID_BATCH; i++) randomUUID();
}

/** The draws that use up what randomInt() has left in its cache (below). */
function drawInts(): void {
  for (let i = 0; i < RANDOM_INT_DRAWS; i++) randomInt(1);
}

/**
 * Before a checkpoint, so that both are in the image: loads the reseeding addon (~2 ms of a lazily
 * restored copy's start otherwise) and, in a program of 32 MiB and more, finds Node's random caches
 * (once, 3-7 ms), which each copy then overwrites with fresh bytes instead of using them up with
 * 1,152 draws (25-30 ms of a lazily restored copy's start: docs/PERFORMANCE.md).
 */
export function prepareIdentity(): void {
  if (!enabled) return;
  try {
    loadAddon();
  } catch {
    // refreshIdentity() says so, where it matters
  }
  locateIfLazy();
  // A lazily resumed copy refreshes first thing: run once here, its code is compiled in the image
  // instead of in the copy, on heap pages each a fault (~35 fewer: docs/PERFORMANCE.md).
  if (caches) refresh(false);
}

/** Makes every randomUUID() and randomInt() from now on come from bytes drawn after the reseed. */
function flushCaches(): void {
  // Only as found before the checkpoint: a copy looking for them now would pay more than the draws.
  if (caches) {
    // What was left in each buffer is replaced, wherever Node's position in it is.
    randomFillSync(caches.uuid);
    randomFillSync(caches.int);
    lastWay = 'caches';
    return;
  }
  lastWay = 'draws';
  // getBufferedUUID() refills its buffer exactly when its slot counter is 0 and the counter goes
  // round 128 slots, so 128 calls from any position include one refill, and every UUID after
  // them comes from that post-reseed refill (same code in Node 20 to 26; v7 shares it).
  drawUuids();
  // randomInt() reads 6 bytes per draw from a 6 KiB buffer and refills it only when it is used
  // up, so 1024 draws use up what was left from before and anything after comes from a refill.
  drawInts();
}

/**
 * Gives this process randomness of its own after a checkpoint, in the original and in every
 * resumed copy, which otherwise all continue from the same generator states: reseeds OpenSSL
 * (randomBytes, getRandomValues, key generation, TLS), flushes Node's randomUUID() and randomInt()
 * caches, and replaces Math.random with a generator seeded afresh. Synchronous, never throws; on
 * a failure it writes one warning line to stderr and does the rest.
 */
export function refreshIdentity(): void {
  if (enabled) refresh(true);
}

function refresh(warn: boolean): void {
  const failed: string[] = [];
  let drawn = false;
  try {
    const a = loadAddon();
    if (typeof a.refresh === 'function') {
      // One native call: in a lazily resumed copy each step through cold JavaScript is page
      // faults (the reseed, randomFillSync and the seed apart took ~120, 6 ms: docs/PERFORMANCE.md).
      const r = caches ? a.refresh(seedBytes, caches.uuid, caches.int) : a.refresh(seedBytes);
      if (r & REFRESH_NO_RESEED) failed.push('OpenSSL reseed (RAND_poll) failed');
      drawn = (r & REFRESH_NO_FILL) === 0;
      if (drawn && caches) lastWay = 'caches';
    } else if (!a.reseed()) failed.push('OpenSSL reseed (RAND_poll) failed');
  } catch (e) {
    failed.push(`OpenSSL not reseeded: ${(e as Error).message}`);
  }
  try {
    if (!drawn || !caches) flushCaches();
  } catch (e) {
    failed.push(`randomUUID and randomInt caches: ${(e as Error).message}`);
  }
  try {
    seedMathRandom(drawn);
  } catch (e) {
    failed.push(`Math.random: ${(e as Error).message}`);
  }
  if (failed.length === 0 || !warn) return;
  try {
    process.stderr.write(
      `checkpt: warning: this copy may share random values with other copies of its checkpoint: ${failed.join('; ')}\n`,
    );
  } catch {
    // nowhere to warn
  }
}
