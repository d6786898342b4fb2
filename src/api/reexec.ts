/**
 * Plain `node app.js` on a Node that opens io_uring (22 and later): when checkpt is imported
 * before any of the program's own code has run, the process is restarted in place
 * (`process.execve`: same pid, arguments, environment, open fds) with the io_uring blocker
 * preloaded, so libuv uses epoll and CRIU can dump it. The rule is one that can be checked:
 * in the main thread, Node ran a file (no -e, REPL, stdin or preload), and the first statements
 * of that file import or require Node's built-ins and then checkpt, before anything else.
 * Otherwise nothing happens here, and the first checkpoint says why (EIOURING).
 */
import { readFileSync, realpathSync } from 'node:fs';
import { createRequire, isBuiltin } from 'node:module';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { REEXEC, readAtLoad } from '../common/config.js';
import { hasIoUring } from '../common/procfs.js';
import { checkpointableEnv } from '../engine/iouring.js';

const BLOCKER = 'libcheckpt-nouring.so';

/** The module requests that open a file, in order, and the first statement that is not one. */
export interface LeadingImports {
  specs: string[];
  /** The start of the first other statement ('' at the end of the file). */
  stop: string;
}

const SKIP = [
  /^\s+/,
  /^\/\/[^\n]*/,
  /^\/\*[\s\S]*?\*\//,
  /^(['"])use strict\1\s*;?/,
  // TypeScript's CommonJS prologue: it only marks the file's own exports object.
  /^Object\.defineProperty\(\s*exports\s*,\s*(['"])__esModule\1\s*,\s*\{\s*value\s*:\s*true\s*\}\s*\)\s*;?/,
  /^exports(?:\.[\w$]+\s*=\s*)+void 0\s*;?/,
];
const IMPORT =
  /^import(?=[\s{*'"])\s*(?:(type)\s+(?=[\w${*]))?(?:([\w$\s{},*]*?)\s*from\s*)?(['"])([^'"\r\n]*)\3\s*(?:(?:with|assert)\s*\{[^}]*\}\s*)?;?/;
const REQUIRE =
  /^(?:(?:const|let|var)\s+(?:[\w$]+|\{[\w$\s,:]*\})\s*=\s*)?require\s*\(\s*(['"])([^'"\r\n]*)\1\s*\)\s*;?/;

/**
 * The imports (ESM `import`, CommonJS `require`) a file starts with. Only these forms count; any
 * other statement ends the list, so code that could have side effects is never skipped over.
 * `import type` (erased by TypeScript) is left out.
 */
export function leadingImports(source: string): LeadingImports {
  let s = source.replace(/^\uFEFF/, '').replace(/^#![^\n]*/, '');
  const specs: string[] = [];
  for (;;) {
    const skip = SKIP.map((re) => re.exec(s)).find((m) => m && m[0].length > 0);
    if (skip) {
      s = s.slice(skip[0].length);
      continue;
    }
    const imp = IMPORT.exec(s);
    if (imp) {
      // `import type X from 'y'` is erased; `import type from 'y'` imports a default named type.
      if (!(imp[1] === 'type' && imp[2])) specs.push(imp[4]!);
      s = s.slice(imp[0].length);
      continue;
    }
    const req = REQUIRE.exec(s);
    if (req) {
      specs.push(req[2]!);
      s = s.slice(req[0].length);
      continue;
    }
    return { specs, stop: s.slice(0, 60).split('\n')[0]!.trim() };
  }
}

// Options under which code other than the file's runs first, or there is no file.
const NOT_A_FILE =
  /^(?:-r|--require|--import|--loader|--experimental-loader|-e|--eval|-p|--print|-pe|-i|--interactive|--test|-c|--check)(?:=|$)/;

const RUN_FROM_FILE =
  'only a program node runs from its file, with no code before it, is restarted';

/** Why Node's options rule a restart out, or undefined. */
export function optionProblem(execArgv: readonly string[], nodeOptions = ''): string | undefined {
  const bad = execArgv.find((a) => NOT_A_FILE.test(a));
  if (bad) return `node was started with ${bad} (${RUN_FROM_FILE})`;
  const pre = nodeOptions.split(/\s+/).find((a) => NOT_A_FILE.test(a));
  if (pre) return `NODE_OPTIONS has ${pre} (${RUN_FROM_FILE})`;
  return undefined;
}

/**
 * Whether Node's command line is exactly `ARGV0 EXECARGV... SCRIPT ARGS...` with SCRIPT the file
 * in process.argv[1] (not stdin, -e, the REPL or an option Node took out of the list).
 */
export function cmdlineMatches(
  cmdline: readonly string[],
  execArgv: readonly string[],
  argv: readonly string[],
): boolean {
  const n = execArgv.length;
  const script = cmdline[1 + n];
  if (script === undefined || argv[1] === undefined || script.startsWith('-')) return false;
  if (cmdline.length !== n + argv.length || resolve(script) !== argv[1]) return false;
  return cmdline.slice(2 + n).every((a, i) => a === argv[2 + i]);
}

const ownIndex = fileURLToPath(new URL('../index.js', import.meta.url));

function realpath(p: string): string | undefined {
  try {
    return realpathSync(p);
  } catch {
    return undefined;
  }
}

/** The file `spec` names when `from` imports it, or undefined when it cannot be told. */
function resolveFrom(from: string, spec: string): string | undefined {
  try {
    if (spec.startsWith('file:')) return realpath(fileURLToPath(spec));
    if (isAbsolute(spec) || spec.startsWith('./') || spec.startsWith('../'))
      return realpath(resolve(dirname(from), spec));
    return realpath(createRequire(from).resolve(spec));
  } catch {
    return undefined;
  }
}

/** Why the entry file does not import checkpt before anything else, or undefined when it does. */
export function entryProblem(entry: string, source: string, self = ownIndex): string | undefined {
  const { specs, stop } = leadingImports(source);
  const me = realpath(self);
  for (const spec of specs) {
    if (isBuiltin(spec)) continue;
    if (me !== undefined && resolveFrom(entry, spec) === me) return undefined;
    return `${entry} imports '${spec}' before checkpt`;
  }
  return stop
    ? `${entry} runs '${stop}' before it imports checkpt`
    : `${entry} does not import checkpt at its top`;
}

let notRestarted: string | undefined;

/** Why a process that holds io_uring was not restarted without it at checkpt's import. */
export function whyNotRestarted(): string | undefined {
  return notRestarted;
}

type Execve = (file: string, args: string[], env: NodeJS.ProcessEnv) => never;

/**
 * Why this process must not be restarted (a string); null when it needs no restart (no io_uring
 * ring); else its command line, to restart it with.
 */
function restartProblem(): string | null | { cmdline: string[] } {
  let on: boolean;
  try {
    on = REEXEC.get();
  } catch {
    readAtLoad(REEXEC); // kept for the next checkpoint's EBADCONFIG
    return 'CHECKPT_REEXEC has a value that is neither on nor off';
  }
  if (!isMainThread) return null;
  if (!hasIoUring()) return null;
  if (!on) return 'CHECKPT_REEXEC is off';
  const preload = (process.env.LD_PRELOAD ?? '').split(/[:\s]+/);
  if (preload.some((p) => p.endsWith(`/${BLOCKER}`) || p === BLOCKER))
    return `LD_PRELOAD names ${BLOCKER} and Node opened io_uring all the same`;
  if (typeof (process as { execve?: unknown }).execve !== 'function')
    return `Node ${process.version} has no process.execve (22.15, 23.11 and later have it)`;
  const getBuiltin = (process as { getBuiltinModule?: (id: string) => unknown }).getBuiltinModule;
  const sea = getBuiltin?.('node:sea') as { isSea?: () => boolean } | undefined;
  if (sea?.isSea?.()) return 'the program is a single executable application';
  // Node took NODE_CHANNEL_FD out of the environment and may have read messages already.
  if ((process as { channel?: unknown }).channel !== undefined)
    return 'it has an IPC channel to its parent (child_process.fork, cluster, a process manager), which a restart would cut';
  const opt = optionProblem(process.execArgv, process.env.NODE_OPTIONS);
  if (opt) return opt;
  let cmdline: string[];
  try {
    cmdline = readFileSync('/proc/self/cmdline', 'utf8').split('\0');
  } catch (e) {
    return `/proc/self/cmdline could not be read (${(e as Error).message})`;
  }
  if (cmdline.at(-1) === '') cmdline.pop();
  if (!cmdlineMatches(cmdline, process.execArgv, process.argv))
    return "node was not started as 'node [OPTIONS] FILE [ARGS]'";
  let entry: string;
  let source: string;
  try {
    entry = createRequire(import.meta.url).resolve(process.argv[1]!);
    source = readFileSync(entry, 'utf8');
  } catch (e) {
    return `the program's file could not be read (${(e as Error).message})`;
  }
  return entryProblem(entry, source) ?? { cmdline };
}

/**
 * At checkpt's import: restarts a process that holds io_uring, with the blocker preloaded, when
 * none of the program's code has run (see the top of this file); otherwise records why not.
 */
export function restartWithoutIoUring(): void {
  const problem = restartProblem();
  if (problem === null) return;
  if (typeof problem === 'string') {
    notRestarted = problem;
    return;
  }
  try {
    const env = checkpointableEnv(process.env);
    (process as unknown as { execve: Execve }).execve(process.execPath, problem.cmdline, env);
  } catch (e) {
    notRestarted = `the restart failed: ${(e as Error)?.message ?? String(e)}`;
  }
}
