import { childProcess } from '../common/builtin.js';
import {
  accessSync,
  closeSync,
  constants as fsc,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
} from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import { setBlake3Loader, type Blake3Addon } from '../common/blake3.js';
import { setSha256Addon, type Sha256Addon } from '../common/sha256.js';
import { HELPER, readAtLoad } from '../common/config.js';
import { packageRoot } from './paths.js';

/** checkpt's compiled parts, as scripts/build-helper.mjs names them. */
export const NATIVE_PARTS = [
  'checkpt-helper',
  'libcheckpt-nouring.so',
  'checkpt-openssl.node',
  'checkpt-subreaper.node',
  'checkpt-net.node',
  'checkpt-spawn.node',
  'checkpt-blake3.node',
] as const;
export type NativePart = (typeof NATIVE_PARTS)[number];

const WHAT: Record<NativePart, string> = {
  'checkpt-helper': "checkpt's native helper",
  'libcheckpt-nouring.so': "checkpt's preload (io_uring blocker, packed heap)",
  'checkpt-openssl.node': "checkpt's OpenSSL addon (random-state refresh, SHA-256)",
  'checkpt-subreaper.node': "checkpt's orphan-adoption addon",
  'checkpt-net.node': "checkpt's socket-listing addon",
  'checkpt-spawn.node': "checkpt's process-starting addon",
  'checkpt-blake3.node': "checkpt's BLAKE3 addon (memory chunks' checks)",
};

/** What `checkpt-helper --version` answers; another answer is a helper of another checkpt (bumped with its command line or its protocols: 3 has --netns, --host and publish; 4 checks BLAKE3 chunk tables). */
const HELPER_VERSION = 'checkpt-helper 4';

/** Written into build/ by scripts/build-helper.mjs when compiling failed, removed when it worked. */
export const BUILD_FAILED_FILE = '.build-failed';

export type Origin = 'build' | 'prebuilt';

export interface Candidate {
  path: string;
  origin: Origin;
  /** Why it cannot be used; undefined when it works. */
  problem?: string;
}

export interface NativeLookup {
  part: NativePart;
  /** The first candidate that works, if any. */
  found?: Candidate;
  /** Every place looked at, in order, each with its problem up to the one that works. */
  tried: Candidate[];
  /** For an addon that loaded: its exports. */
  exports?: unknown;
}

export interface NativeContext {
  root: string;
  platform: string;
  arch: string;
  /** The C compiler `checkpt build` would run. */
  cc: string;
  /**
   * Commands that start the helper take it as working without running it first (~7 ms of each
   * resume): its version among its bytes, executable. `checkpt check` and `checkpt build` run it.
   */
  quick?: boolean;
}

export function nativeContext(env: NodeJS.ProcessEnv = process.env): NativeContext {
  return {
    root: packageRoot,
    platform: process.platform,
    arch: process.arch,
    cc: env.CC || 'cc',
  };
}

/** The folder of the parts `npm pack` ships for one platform, built there by `prepack`. */
export function prebuiltDir(root: string, platform: string, arch: string): string {
  return join(root, 'prebuilt', `${platform}-${arch}`);
}

/** Where a part is looked for: a local build first (npm run build, checkpt build), then the shipped one. */
export function candidatesFor(part: NativePart, ctx: NativeContext): Candidate[] {
  return [
    { path: join(ctx.root, 'build', part), origin: 'build' },
    { path: join(prebuiltDir(ctx.root, ctx.platform, ctx.arch), part), origin: 'prebuilt' },
  ];
}

// ELF e_machine values for the architectures Node runs on, named as process.arch names them.
const ELF_MACHINES: Record<number, string> = {
  0x03: 'ia32',
  0x28: 'arm',
  0x3e: 'x64',
  0xb7: 'arm64',
  0x14: 'ppc',
  0x15: 'ppc64',
  0x16: 's390x',
  0xf3: 'riscv64',
  0x102: 'loong64',
};

/** The architecture an ELF file was built for, or why it is not one we can tell. */
export function elfArch(path: string): { arch: string } | { problem: string } {
  const head = Buffer.alloc(20);
  let n = 0;
  try {
    const fd = openSync(path, 'r');
    try {
      n = readSync(fd, head, 0, 20, 0);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    return { problem: `cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})` };
  }
  if (n < 20 || head.toString('latin1', 0, 4) !== '\x7fELF')
    return { problem: 'is not an ELF file (damaged, or not a compiled part)' };
  const machine = head[5] === 2 ? head.readUInt16BE(18) : head.readUInt16LE(18);
  return { arch: ELF_MACHINES[machine] ?? `ELF machine ${machine}` };
}

/** Why the helper at `path` is not this checkpt's, judged from its file alone. */
function helperBytesProblem(path: string): string | undefined {
  // `puts("checkpt-helper 4")` keeps the answer NUL-terminated in the binary.
  if (readFileSync(path).indexOf(`${HELPER_VERSION}\0`) < 0)
    return `does not answer '${HELPER_VERSION}' (from another checkpt version, or damaged)`;
  try {
    accessSync(path, fsc.X_OK);
  } catch {
    return `is not executable (mode ${(statSync(path).mode & 0o777).toString(8)})`;
  }
  return undefined;
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0]?.trim() ?? '';
}

/** Why the file at `c.path` cannot be used as `part` (no problem: it works; an addon's exports). */
function problemOf(
  part: NativePart,
  c: Candidate,
  ctx: NativeContext,
): { problem?: string; exports?: unknown } {
  if (!existsSync(c.path)) return { problem: 'not there' };
  const elf = elfArch(c.path);
  if ('problem' in elf) return { problem: elf.problem };
  if (elf.arch !== ctx.arch)
    return { problem: `built for ${elf.arch}, and this machine is ${ctx.arch}` };
  if (part === 'checkpt-helper' && ctx.quick) {
    const problem = helperBytesProblem(c.path);
    return problem === undefined ? {} : { problem };
  }
  if (part === 'checkpt-helper') {
    const r = childProcess().spawnSync(c.path, ['--version'], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    if (r.error) {
      const code = (r.error as NodeJS.ErrnoException).code;
      if (code === 'EACCES')
        return {
          problem: `is not executable (mode ${(statSync(c.path).mode & 0o777).toString(8)})`,
        };
      return { problem: `does not run: ${r.error.message}` };
    }
    if (r.status === 0 && r.stdout.trim() === HELPER_VERSION) return {};
    const said = firstLine(r.stderr) || firstLine(r.stdout);
    return {
      problem:
        r.status === 0
          ? `answers '${firstLine(r.stdout)}', not '${HELPER_VERSION}' (from another checkpt version)`
          : `does not run here${said ? `: ${said}` : ` (exit status ${r.status ?? r.signal})`}`,
    };
  }
  if (part === 'libcheckpt-nouring.so') {
    // ld.so only warns about a preload it cannot open and runs the program without it; one whose
    // own libraries are missing stops the program instead: both count.
    const r = childProcess().spawnSync(process.execPath, ['--version'], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, LD_PRELOAD: c.path, NODE_OPTIONS: '' },
    });
    const said = firstLine(r.stderr);
    if (r.error) return { problem: `could not be tried: ${r.error.message}` };
    if (said.includes('cannot be preloaded') || r.status !== 0)
      return { problem: `does not load here: ${said || `exit status ${r.status}`}` };
    return {};
  }
  try {
    const mod = { exports: {} };
    process.dlopen(mod, c.path);
    return { exports: mod.exports };
  } catch (e) {
    return { problem: `does not load here: ${firstLine((e as Error).message)}` };
  }
}

/** Looks for a working `part`, trying each place in order; nothing is cached here. */
export function lookUp(part: NativePart, ctx: NativeContext = nativeContext()): NativeLookup {
  const tried: Candidate[] = [];
  for (const c of candidatesFor(part, ctx)) {
    const { problem, exports } = problemOf(part, c, ctx);
    if (problem === undefined) {
      tried.push(c);
      return exports === undefined ? { part, found: c, tried } : { part, found: c, tried, exports };
    }
    tried.push({ ...c, problem });
  }
  return { part, tried };
}

const cache = new Map<string, NativeLookup>();

/** The lookup of `part` for this process, done once (`quick`: see NativeContext). */
export function native(part: NativePart, quick = false): NativeLookup {
  const key = quick ? `quick:${part}` : part;
  let l = cache.get(key) ?? (quick ? cache.get(part) : undefined);
  if (l === undefined) {
    l = lookUp(part, { ...nativeContext(), quick });
    if (l.found !== undefined) cache.set(key, l);
  }
  return l;
}

/** Forgets what was found (after `checkpt build`). */
export function forgetNative(): void {
  cache.clear();
}

/** The path of a working `part`; throws EHELPER saying why there is none and what to do. */
export function nativePath(part: NativePart, quick = false): string {
  const l = native(part, quick);
  if (l.found === undefined) throw new CheckptError('EHELPER', unusableMessage(l));
  return l.found.path;
}

/** The exports of a working addon; throws EHELPER saying why there is none and what to do. */
export function nativeAddon<T>(
  part:
    | 'checkpt-openssl.node'
    | 'checkpt-subreaper.node'
    | 'checkpt-net.node'
    | 'checkpt-spawn.node'
    | 'checkpt-blake3.node',
): T {
  const l = native(part);
  if (l.found === undefined) throw new CheckptError('EHELPER', unusableMessage(l));
  return l.exports as T;
}

// The image layer hashes memory chunks with BLAKE3 through this addon, loaded at its first use.
setBlake3Loader(() => nativeAddon<Blake3Addon>('checkpt-blake3.node'));

/**
 * Hashes with checkpt's OpenSSL addon from now on, where it loads and has SHA-256
 * (common/sha256.ts); node:crypto otherwise, which gives the same digests.
 */
export function useNativeSha256(): void {
  try {
    setSha256Addon(nativeAddon<Partial<Sha256Addon>>('checkpt-openssl.node'));
  } catch {
    // node:crypto then
  }
}

/** Whether `cc` runs, and if not, what happened. */
function compilerProblem(cc: string): string | undefined {
  const r = childProcess().spawnSync(cc, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error)
    return (r.error as NodeJS.ErrnoException).code === 'ENOENT'
      ? `'${cc}' is not installed`
      : `'${cc}' does not run (${r.error.message})`;
  if (r.status !== 0) return `'${cc} --version' failed: ${firstLine(r.stderr)}`;
  return undefined;
}

/**
 * Why no place had a working `part` (what each place showed, and the cause: install scripts
 * blocked, a failed compile, another architecture), and what to do, which asks for a C compiler
 * only when there is none.
 */
export function explainUnusable(
  l: NativeLookup,
  ctx: NativeContext = nativeContext(),
): { detail: string; fix: string } {
  const where = l.tried.map((c) => `${c.path} ${c.problem ?? 'works'}`).join('; ');
  const build = l.tried.find((c) => c.origin === 'build');
  const prebuilt = l.tried.find((c) => c.origin === 'prebuilt');
  const causes: string[] = [];
  const prebuiltHere = existsSync(prebuiltDir(ctx.root, ctx.platform, ctx.arch));
  if (!prebuiltHere)
    causes.push(
      existsSync(join(ctx.root, 'prebuilt'))
        ? `checkpt ships prebuilt parts for linux-x64 only, and this is ${ctx.platform}-${ctx.arch}, so they must be compiled here.`
        : 'This copy of checkpt has no prebuilt parts (a source checkout, or packed without them).',
    );
  else if (prebuilt?.problem === 'not there')
    causes.push('The prebuilt one is missing from this copy of checkpt (a damaged install?).');
  else if (prebuilt?.problem !== undefined)
    causes.push(
      prebuilt.problem.startsWith('does not')
        ? 'The prebuilt one does not work on this system (the prebuilt parts need glibc 2.34 or newer), so it must be compiled here.'
        : 'The prebuilt one cannot be used, so it must be compiled here.',
    );
  if (build?.problem?.startsWith('built for'))
    causes.push(
      'The local build in build/ comes from a machine of another architecture (node_modules copied?).',
    );
  let failed: string | undefined;
  try {
    failed = readFileSync(join(ctx.root, 'build', BUILD_FAILED_FILE), 'utf8').trim();
  } catch {
    // no failed compile recorded
  }
  if (build?.problem === 'not there')
    causes.push(
      failed
        ? `Compiling it failed: ${failed}.`
        : `It was not compiled here: checkpt's install script, which compiles it when no prebuilt one works, did not run (install scripts blocked, as by pnpm's default, npm's --ignore-scripts or ignore-scripts=true)${prebuilt?.problem?.startsWith('does not') ? ', or ran on another system, where the prebuilt one worked' : ''}.`,
    );
  const noCc = compilerProblem(ctx.cc);
  const todo = noCc
    ? `No C compiler: ${noCc}. Install one (Debian/Ubuntu: apt-get install gcc libc6-dev; or set CC), then run 'npx checkpt build'.`
    : `Run 'npx checkpt build' (compiles native/ into build/ with ${ctx.cc}), or 'npm rebuild checkpt' where install scripts may run.`;
  return {
    detail: `${WHAT[l.part]} is not usable: ${where}`,
    fix: [...causes, todo].join(' '),
  };
}

/** explainUnusable as one message. */
export function unusableMessage(l: NativeLookup, ctx: NativeContext = nativeContext()): string {
  const { detail, fix } = explainUnusable(l, ctx);
  return `${detail}. ${fix}`;
}

// Read once, like the rest of checkpt's set-up: a helper to run instead of the one found.
const helperOverride = readAtLoad(HELPER);

/** The native helper to run: CHECKPT_HELPER, else the first that works; throws EHELPER. */
export function helperPath(): string {
  if (helperOverride === undefined) return nativePath('checkpt-helper', true);
  if (!existsSync(helperOverride))
    throw new CheckptError(
      'EHELPER',
      `CHECKPT_HELPER names ${helperOverride}, which does not exist: fix or unset it.`,
    );
  return helperOverride;
}

/** Throws EHELPER, saying why and what to do, when no native helper works here. */
export function requireHelper(): void {
  helperPath();
}

/**
 * `checkpt build`: compiles native/ into build/ with scripts/build-helper.mjs (its output goes to
 * our stderr), then looks each part up afresh: where it is now, or why it still does not work.
 */
export function compileNative(): {
  status: number;
  parts: { part: NativePart; found?: Candidate; problem?: string; fix?: string }[];
} {
  const r = childProcess().spawnSync(
    process.execPath,
    [join(packageRoot, 'scripts', 'build-helper.mjs')],
    {
      stdio: ['ignore', 2, 2],
    },
  );
  forgetNative();
  const parts = NATIVE_PARTS.map((part) => {
    const l = native(part);
    if (l.found) return { part, found: l.found };
    const { detail, fix } = explainUnusable(l);
    return { part, problem: detail, fix };
  });
  return { status: r.status ?? 1, parts };
}
