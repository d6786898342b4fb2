import { CheckptError } from '../common/errors.js';
import { parseDuration } from '../common/duration.js';
import { TRUST_FLAG } from '../common/flags.js';
import { DEFAULT_RESTARTS } from '../launcher/restart.js';
import { parsePublish, type Published } from '../engine/publish.js';

/** The commands the CLI understands, as plain data; parsing knows nothing about doing them. */
export type Command =
  | {
      cmd: 'restore';
      file: string;
      detach: boolean;
      key: number | null;
      pty: boolean;
      /** --trust-file: use a plain file whoever could have written it (src/image/trust.ts). */
      trust?: true;
    }
  | { cmd: 'inspect'; file: string; json: boolean; verify: boolean; trust?: true }
  | { cmd: 'check'; json: boolean; nodes: string[] }
  | { cmd: 'exec'; command: string; args: string[] }
  | {
      cmd: 'run';
      command: string;
      args: string[];
      file?: string;
      key: number | null;
      pty: boolean;
      /** --every: milliseconds between periodic checkpoints. */
      every?: number;
      /** --keep: how many periodic checkpoints are kept (default 3). */
      keep?: number;
      /** --restart[=MAX]: resume the newest good checkpoint when the program fails, at most MAX times in a row. */
      restart?: number;
      /** --private-net: a network namespace of the program's own (docs/ROOTLESS.md). */
      privateNet?: true;
      /** --publish [ADDR:]HOSTPORT[:PORT], repeatable: host ports forwarded into --private-net. */
      publish?: Published[];
    }
  | { cmd: 'signal'; pid: number; exit: boolean; verbose: boolean }
  | { cmd: 'unlock'; file: string; trust?: true }
  | { cmd: 'push'; file: string; ref: string }
  | { cmd: 'pack'; file: string; out: string }
  | { cmd: 'pull'; ref: string; file: string }
  | {
      cmd: 'migrate';
      pid: number;
      host: string;
      port: number;
      postCopy?: true;
      cert: string;
      key: string;
      trust: string;
    }
  | {
      cmd: 'receive';
      host: string;
      port: number;
      dir: string;
      hook?: string;
      cert: string;
      key: string;
      trust: string;
    }
  | { cmd: 'build' }
  /** An administrator's grant of a capability-carrying CRIU to GROUP, or its removal (src/engine/grant.ts). */
  | { cmd: 'setup'; grant: string; tcp: boolean }
  | { cmd: 'setup'; revoke: true }
  | { cmd: 'help'; topic?: string }
  | { cmd: 'version' };

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function parseArgs(argv: readonly string[]): Command {
  const [first, ...rest] = argv;
  if (first === undefined || first === '-h' || first === '--help' || first === 'help')
    return rest[0] === undefined ? { cmd: 'help' } : { cmd: 'help', topic: rest[0] };
  if (first === '-V' || first === '--version') return { cmd: 'version' };
  if (first === '-r' || first === 'restore' || first === 'resume') return parseRestore(rest);
  if (first === 'inspect') return parseInspect(rest);
  if (first === 'check') return parseCheck(rest);
  if (first === 'exec') return parseExec(rest);
  if (first === 'run') return parseRun(rest);
  if (first === 'signal') return parseSignal(rest);
  if (first === 'unlock') return parseUnlock(rest);
  if (first === 'push' || first === 'pull') return parseTransfer(first, rest);
  if (first === 'pack') return parsePack(rest);
  if (first === 'migrate' || first === 'receive') return parseMigration(first, rest);
  if (first === 'setup') return parseSetup(rest);
  if (first === 'build') {
    if (rest.length > 0) throw new UsageError('build takes no arguments. Usage: checkpt build');
    return { cmd: 'build' };
  }
  // DragonFly's checkpt(1) accepts -r anywhere before the file: `checkpt -d -r f`.
  if (first === '-d' || first === '--detach') {
    const r = parseRestore(rest);
    if (r.cmd === 'restore') return { ...r, detach: true };
  }
  throw new UsageError(`unknown command '${first}'. Run 'checkpt --help' for the commands.`);
}

function parseRestore(args: readonly string[]): Command {
  let detach = false;
  let file: string | undefined;
  let key: number | null = CTRL_E;
  let pty = true;
  let trust = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '-d' || a === '--detach') detach = true;
    else if (a === TRUST_FLAG) trust = true;
    else if (a === '--no-pty') pty = false;
    else if (a === '--key') key = parseKey(args[++i], 'restore');
    else if (a === '-r') continue;
    else if (a === '--') {
      file = one(args.slice(i + 1), file);
      break;
    } else if (a.startsWith('-') && a !== '-')
      throw new UsageError(`restore: unknown option '${a}'.`);
    else file = one([a], file);
  }
  if (file === undefined)
    throw new UsageError('restore: which checkpoint? Usage: checkpt -r FILE.ckpt [-d]');
  return { cmd: 'restore', file, detach, key, pty, ...(trust ? { trust } : {}) };
}

function parseInspect(args: readonly string[]): Command {
  let json = false;
  let verify = false;
  let trust = false;
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--json') json = true;
    else if (a === '--verify') verify = true;
    else if (a === TRUST_FLAG) trust = true;
    else if (a === '--') {
      file = one(args.slice(i + 1), file);
      break;
    } else if (a.startsWith('-')) throw new UsageError(`inspect: unknown option '${a}'.`);
    else file = one([a], file);
  }
  if (file === undefined)
    throw new UsageError(
      'inspect: which checkpoint? Usage: checkpt inspect FILE.ckpt [--json] [--verify]',
    );
  return { cmd: 'inspect', file, json, verify, ...(trust ? { trust } : {}) };
}

function parseCheck(args: readonly string[]): Command {
  let json = false;
  const nodes: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--json') json = true;
    else if (a === '--node') {
      const v = args[++i];
      if (v === undefined) throw new UsageError('check: --node needs the path of a node binary.');
      nodes.push(v);
    } else throw new UsageError(`check: unknown option '${a}'.`);
  }
  return { cmd: 'check', json, nodes };
}

function parseExec(args: readonly string[]): Command {
  const rest = args[0] === '--' ? args.slice(1) : args;
  const [command, ...cmdArgs] = rest;
  if (command === undefined)
    throw new UsageError('exec: what to run? Usage: checkpt exec -- node app.js');
  return { cmd: 'exec', command, args: cmdArgs };
}

const CTRL_E = 5;

function parseRun(args: readonly string[]): Command {
  let file: string | undefined;
  let key: number | null = CTRL_E;
  let pty = true;
  let every: number | undefined;
  let keep: number | undefined;
  let restart: number | undefined;
  let privateNet = false;
  const publish: Published[] = [];
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--') {
      i++;
      break;
    }
    if (a === '--no-pty') pty = false;
    else if (a === '--private-net') privateNet = true;
    else if (a === '--publish' || a.startsWith('--publish=')) {
      const v = a === '--publish' ? args[++i] : a.slice('--publish='.length);
      try {
        publish.push(parsePublish(v ?? ''));
      } catch (e) {
        throw new UsageError(`run: ${(e as Error).message}`);
      }
    } else if (a === '--every' || a.startsWith('--every=')) {
      const v = a === '--every' ? args[++i] : a.slice('--every='.length);
      every = duration(v ?? '', '--every');
    } else if (a === '--keep' || a.startsWith('--keep=')) {
      const v = a === '--keep' ? args[++i] : a.slice('--keep='.length);
      keep = count(v, '--keep', 'how many periodic checkpoints to keep, e.g. --keep 3');
    } else if (a === '--restart') restart = DEFAULT_RESTARTS;
    else if (a.startsWith('--restart='))
      restart = count(
        a.slice('--restart='.length),
        '--restart',
        'at most how many restarts in a row, e.g. --restart=5',
      );
    else if (a === '--key') key = parseKey(args[++i], 'run');
    else if (a === '--file' || a === '-f') {
      file = args[++i];
      if (file === undefined || file === '')
        throw new UsageError(
          'run: --file needs a file name template, e.g. --file /var/ckpt/%N.ckpt',
        );
    } else if (a.startsWith('-')) throw new UsageError(`run: unknown option '${a}'.`);
    else break;
  }
  const [command, ...cmdArgs] = args.slice(i);
  if (command === undefined)
    throw new UsageError(
      'run: what to run? Usage: checkpt run [--file T] [--key K] [--every D [--keep N]] [--restart[=MAX]] [--private-net [--publish P]...] -- COMMAND [ARGS...]',
    );
  if (keep !== undefined && every === undefined)
    throw new UsageError(
      'run: --keep counts periodic checkpoints; give --every too, e.g. --every 1m --keep 3.',
    );
  if (publish.length > 0 && !privateNet)
    throw new UsageError(
      'run: --publish forwards host ports into the network namespace of --private-net; add --private-net (without it the program listens on the host itself).',
    );
  return {
    cmd: 'run',
    command,
    args: cmdArgs,
    key,
    pty,
    ...(file === undefined ? {} : { file }),
    ...(every === undefined ? {} : { every, keep: keep ?? 3 }),
    ...(restart === undefined ? {} : { restart }),
    ...(privateNet ? { privateNet: true as const } : {}),
    ...(publish.length > 0 ? { publish } : {}),
  };
}

function duration(v: string, flag: string): number {
  try {
    return parseDuration(v, `${flag} interval`);
  } catch (e) {
    if (e instanceof CheckptError) throw new UsageError(`run: ${e.message}`);
    throw e;
  }
}

function count(v: string | undefined, flag: string, hint: string): number {
  if (v === undefined || !/^[1-9][0-9]{0,5}$/.test(v))
    throw new UsageError(
      `run: ${flag} takes a whole number of at least 1 (got '${v ?? ''}'): ${hint}.`,
    );
  return Number(v);
}

/** `^E`, `C-e`, `ctrl-e` or `none`: the key that asks for a checkpoint on the terminal. */
export function parseKey(spec: string | undefined, cmd: string): number | null {
  if (spec === undefined) throw new UsageError(`${cmd}: --key needs a key such as ^E, or none.`);
  const s = spec.trim().toLowerCase();
  if (s === 'none' || s === 'off' || s === '') return null;
  const m = /^(?:\^|c-|ctrl-|ctrl\+)([a-z\\\]^_])$/.exec(s);
  if (m) {
    const c = (m[1] as string).toUpperCase().charCodeAt(0);
    // Keys the terminal already gives a meaning: interrupt, EOF, suspend, flow control, line ends.
    if ([3, 4, 8, 9, 10, 13, 17, 19, 26, 28].includes(c - 64))
      throw new UsageError(
        `${cmd}: --key ${spec} is taken by the terminal; choose another (the default is ^E).`,
      );
    return c - 64;
  }
  throw new UsageError(
    `${cmd}: --key takes a control key such as ^E or C-e, or none (got '${spec}').`,
  );
}

const SETUP_USAGE = 'Usage: checkpt setup --grant GROUP [--tcp] | checkpt setup --revoke';

function parseSetup(args: readonly string[]): Command {
  let grant: string | undefined;
  let tcp = false;
  let revoke = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--grant') {
      grant = args[++i];
      if (grant === undefined || grant === '' || grant.startsWith('-'))
        throw new UsageError(`setup: --grant needs a group name. ${SETUP_USAGE}`);
    } else if (a === '--tcp') tcp = true;
    else if (a === '--revoke') revoke = true;
    else throw new UsageError(`setup: unknown argument '${a}'. ${SETUP_USAGE}`);
  }
  if (revoke && (grant !== undefined || tcp))
    throw new UsageError(`setup: --revoke takes nothing else. ${SETUP_USAGE}`);
  if (revoke) return { cmd: 'setup', revoke: true };
  if (grant === undefined) throw new UsageError(`setup: grant to which group? ${SETUP_USAGE}`);
  return { cmd: 'setup', grant, tcp };
}

function parseSignal(args: readonly string[]): Command {
  const usage = 'Usage: checkpt signal [--exit] [--verbose] PID';
  let exit = false;
  let verbose = false;
  let pid: string | undefined;
  for (const a of args) {
    if (a === '--exit') exit = true;
    else if (a === '-v' || a === '--verbose') verbose = true;
    else if (a.startsWith('-')) throw new UsageError(`signal: unknown option '${a}'. ${usage}`);
    else if (pid !== undefined) throw new UsageError(`signal: give exactly one PID. ${usage}`);
    else pid = a;
  }
  if (pid === undefined) throw new UsageError(`signal: which process? ${usage}`);
  if (!/^[1-9][0-9]{0,9}$/.test(pid))
    throw new UsageError(`signal: '${pid}' is not a process id (a positive number). ${usage}`);
  return { cmd: 'signal', pid: Number(pid), exit, verbose };
}

function one(values: readonly string[], already: string | undefined): string {
  if (already !== undefined || values.length !== 1)
    throw new UsageError('give exactly one checkpoint file.');
  return values[0] as string;
}

/** `push FILE REF`, `pull REF FILE`; a reference may carry oci:// or not. */
function parseTransfer(cmd: 'push' | 'pull', args: readonly string[]): Command {
  const rest = args[0] === '--' ? args.slice(1) : args;
  const usage =
    cmd === 'push'
      ? 'checkpt push FILE.ckpt REGISTRY/REPO:TAG'
      : 'checkpt pull REGISTRY/REPO:TAG FILE.ckpt';
  if (rest.length !== 2 || (args[0] !== '--' && rest.some((a) => a.startsWith('-'))))
    throw new UsageError(`${cmd}: give a file and a reference. Usage: ${usage}`);
  const [a, b] = rest as [string, string];
  return cmd === 'push' ? { cmd, file: a, ref: b } : { cmd, ref: a, file: b };
}

/** `pack IN OUT`: a store-backed checkpoint as a file that holds all of its memory. */
function parsePack(args: readonly string[]): Command {
  const rest = args[0] === '--' ? args.slice(1) : args;
  if (rest.length !== 2 || (args[0] !== '--' && rest.some((a) => a.startsWith('-'))))
    throw new UsageError(
      'pack: give a checkpoint and a new file. Usage: checkpt pack IN.ckpt OUT.ckpt',
    );
  const [file, out] = rest as [string, string];
  return { cmd: 'pack', file, out };
}

function parseUnlock(args: readonly string[]): Command {
  const trust = args[0] === TRUST_FLAG;
  const rest = trust ? args.slice(1) : args;
  const files = rest[0] === '--' ? rest.slice(1) : rest;
  const file = files[0];
  if (files.length !== 1 || file === undefined || (rest[0] !== '--' && file.startsWith('-')))
    throw new UsageError(
      `unlock: which checkpoint? Usage: checkpt unlock [${TRUST_FLAG}] FILE.ckpt`,
    );
  return { cmd: 'unlock', file, ...(trust ? { trust } : {}) };
}

const MIGRATE_USAGE =
  'Usage: checkpt migrate PID --to HOST:PORT --cert FILE --key FILE --trust FILE [--post-copy]';
const RECEIVE_USAGE =
  'Usage: checkpt receive --listen HOST:PORT --dir DIR --cert FILE --key FILE --trust FILE [--hook CMD]';

/** `migrate PID --to HOST:PORT ...` and `receive --listen HOST:PORT --dir DIR ...`. */
function parseMigration(cmd: 'migrate' | 'receive', args: readonly string[]): Command {
  const usage = cmd === 'migrate' ? MIGRATE_USAGE : RECEIVE_USAGE;
  const opts = new Map<string, string>();
  let pid: string | undefined;
  let postCopy = false;
  const known = cmd === 'migrate' ? ['--to'] : ['--listen', '--dir'];
  const optional = cmd === 'migrate' ? [] : ['--hook'];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if ([...known, ...optional, '--cert', '--key', '--trust'].includes(a)) {
      const v = args[++i];
      if (v === undefined) throw new UsageError(`${cmd}: ${a} needs a value. ${usage}`);
      opts.set(a, v);
    } else if (cmd === 'migrate' && a === '--post-copy') postCopy = true;
    else if (a.startsWith('-')) throw new UsageError(`${cmd}: unknown option '${a}'. ${usage}`);
    else if (cmd === 'receive' || pid !== undefined)
      throw new UsageError(`${cmd}: unexpected '${a}'. ${usage}`);
    else pid = a;
  }
  for (const need of [...known, '--cert', '--key', '--trust'])
    if (!opts.has(need)) throw new UsageError(`${cmd}: ${need} is required. ${usage}`);
  const where = hostPort(cmd, opts.get(known[0] as string) as string, usage);
  const files = {
    cert: opts.get('--cert') as string,
    key: opts.get('--key') as string,
    trust: opts.get('--trust') as string,
  };
  const hook = opts.get('--hook');
  if (cmd === 'receive')
    return {
      cmd,
      ...where,
      dir: opts.get('--dir') as string,
      ...(hook === undefined ? {} : { hook }),
      ...files,
    };
  if (pid === undefined) throw new UsageError(`migrate: which process? ${usage}`);
  if (!/^[1-9][0-9]{0,9}$/.test(pid))
    throw new UsageError(`migrate: '${pid}' is not a process id (a positive number). ${usage}`);
  return { cmd, pid: Number(pid), ...where, ...files, ...(postCopy ? { postCopy } : {}) };
}

function hostPort(cmd: string, v: string, usage: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(v);
  const port = Number(m?.[3]);
  if (!m || port > 65535)
    throw new UsageError(`${cmd}: '${v}' is not HOST:PORT (for IPv6: [ADDR]:PORT). ${usage}`);
  return { host: (m[1] ?? m[2]) as string, port };
}
