import { spawnSync } from 'node:child_process';
import { accessSync, constants, mkdirSync, readFileSync } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { zstdAvailable } from '../image/compress.js';
import { check, criuVersion, MIN_CRIU_TEXT, tailOf } from './criu.js';
import { ioUringAdvice } from './iouring.js';
import { explainUnusable, native, type NativeLookup } from './native.js';
import { criuPath, criuSource, ownCriuHome, runDir } from './paths.js';
import { helperPath } from './native.js';
import { RUN_DIR } from '../common/config.js';
import {
  inUserNamespace,
  privilegeMode,
  userNamespacesAllowed,
  userRunDir,
} from '../common/privilege.js';
import { grantedCriuPath, grantInfo, grantState } from './grant.js';
import { probeTcp } from './probe-tcp.js';

export interface Finding {
  name: string;
  ok: boolean;
  /** What was found, in a few words. */
  detail: string;
  /** One line saying what to do; present when !ok or when something needs attention. */
  fix?: string;
  /** A warning does not stop checkpoints of every program, only of some. */
  warning?: boolean;
}

/** Everything `checkpt check` looks at, in order; each finding is one actionable line. */
export function probe(nodeBinaries: string[] = [process.execPath]): Finding[] {
  const out: Finding[] = [];
  const root = privilegeMode() === 'root';
  out.push(root ? { name: 'mode', ok: true, detail: ROOT_MODE } : rootlessFinding());
  const granted = grantFinding(root);
  if (granted) out.push(granted);
  let version: string | undefined;
  try {
    version = criuVersion().text;
    out.push({
      name: 'criu',
      ok: true,
      detail: `CRIU ${version} at ${criuPath} (${whereFrom()}; need ${MIN_CRIU_TEXT} or newer)`,
    });
  } catch (e) {
    out.push({
      name: 'criu',
      ok: false,
      detail: e instanceof CheckptError ? e.message : String(e),
      fix: `Run scripts/install-criu.sh from the checkpt package as root: it builds CRIU ${MIN_CRIU_TEXT} from Debian's source into ${ownCriuHome} and touches no distribution package.`,
    });
  }
  if (version !== undefined && root) {
    const r = check();
    out.push(
      r.ok
        ? { name: 'criu check', ok: true, detail: 'criu check: Looks good' }
        : {
            name: 'criu check',
            ok: false,
            detail: `criu check failed: ${tailOf(r.output, 3).replace(/\n/g, ' | ')}`,
            fix: 'This kernel or CRIU build cannot checkpoint; install a CRIU that matches the kernel (scripts/install-criu.sh).',
          },
    );
    // What checkpt -r needs to start a large copy before its memory is in (src/engine/lazy.ts).
    out.push(
      check('uffd-noncoop').ok
        ? { name: 'lazy restore', ok: true, detail: 'userfaultfd works: large copies start lazily' }
        : {
            name: 'lazy restore',
            ok: true,
            warning: true,
            detail:
              'no userfaultfd for CRIU here: checkpt -r loads all memory before a copy runs (slower for large programs)',
            fix: 'Use a kernel with CONFIG_USERFAULTFD for faster resumes of large programs; resumes work without it.',
          },
    );
  }
  if (version !== undefined && root) out.push(...probeTcp());
  out.push(nativeFinding('helper', 'native helper', native('checkpt-helper')));
  // checkpt run and checkpt exec preload it; a program checkpointing itself needs it on Node 22+.
  out.push(
    nativeFinding(
      'io_uring blocker',
      'preload (io_uring blocker, packed heap)',
      native('libcheckpt-nouring.so'),
    ),
  );
  // Without it resumed copies still work, but share OpenSSL's random state with the original.
  out.push(
    nativeFinding('openssl addon', 'OpenSSL addon', native('checkpt-openssl.node'), {
      warning: "resumed copies would share OpenSSL's random numbers, and resumes start slower",
    }),
  );
  // Without it new files get SHA-256 chunk tables, and files with BLAKE3 ones cannot be read here.
  out.push(
    nativeFinding('blake3 addon', 'BLAKE3 addon', native('checkpt-blake3.node'), {
      warning:
        'new checkpoints get SHA-256 chunk tables (lazy resumes check them 4x slower), and checkpoints with BLAKE3 tables cannot be read here',
    }),
  );
  // checkpt run takes checkpoints from outside by running CRIU inside the program's namespaces.
  const ns = spawnSync('nsenter', ['--version'], { encoding: 'utf8' });
  out.push(
    ns.error
      ? {
          name: 'nsenter',
          ok: false,
          detail: 'nsenter not found',
          fix: 'Install util-linux (it provides nsenter).',
        }
      : { name: 'nsenter', ok: true, detail: 'nsenter found' },
  );
  out.push(
    zstdAvailable()
      ? { name: 'zstd', ok: true, detail: 'zstd found: checkpoint files are compressed' }
      : {
          name: 'zstd',
          ok: true,
          warning: true,
          detail:
            'zstd not found: checkpoint files are written uncompressed (about twice as large), and compressed ones from elsewhere cannot be resumed',
          fix: 'Install zstd (apt-get install zstd).',
        },
  );
  // Without root, checkpt run gives its programs a directory of the user's (launcher/run.ts).
  let dir = runDir;
  try {
    if (!root && RUN_DIR.get() === RUN_DIR.get({})) dir = userRunDir();
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    accessSync(dir, constants.W_OK);
    out.push({ name: 'run dir', ok: true, detail: `${dir} is writable` });
  } catch (e) {
    out.push({
      name: 'run dir',
      ok: false,
      detail: `${dir} is not writable (${(e as Error).message})`,
      fix: `Run as root, or point CHECKPT_RUN_DIR at a writable directory.`,
    });
  }
  out.push(...nodeFindings(nodeBinaries));
  return out;
}

const ROOT_MODE =
  'root: CRIU runs as root; every command works, TCP connections are kept across a checkpoint';

/** What the rootless mode can do here (a real user namespace made and left), and what it lacks. */
function rootlessFinding(): Finding {
  const uid = process.getuid?.() ?? 0;
  const allowed = userNamespacesAllowed();
  let why = allowed.why;
  if (allowed.ok) {
    try {
      const r = spawnSync(helperPath(), ['init', '--run', '--', 'true'], {
        encoding: 'utf8',
        timeout: 10_000,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      if (r.status !== 0) why = (r.stderr || r.error?.message || `status ${r.status}`).trim();
    } catch (e) {
      why = (e as Error).message;
    }
  }
  if (why !== undefined)
    return {
      name: 'mode',
      ok: false,
      detail: `rootless (uid ${uid}), but no user namespace can be made here: ${why}`,
      fix: 'Ask an administrator to allow unprivileged user namespaces (user.max_user_namespaces > 0, no AppArmor restriction), or run checkpt as root.',
    };
  return {
    name: 'mode',
    ok: true,
    warning: true,
    detail: `rootless (uid ${uid}): checkpt run, checkpt signal, checkpt() under checkpt run and checkpt -r work in user namespaces of your own; checkpoints resume only as uid ${uid}`,
    fix: ROOTLESS_LACKS,
  };
}

/** What only root can do (docs/ROOTLESS.md); said by checkpt check and in errors. */
export const ROOTLESS_LACKS =
  'Without root: TCP connections to the outside are closed in a resumed copy (listening sockets are kept; a Node program takes its port back), memory is loaded before a copy runs (no lazy restore), a program not started by checkpt run cannot be checkpointed (unless an administrator granted a CRIU: below), and checkpt unlock, migrate and receive need root. Run as root for those.';

/**
 * The third mode (docs/ROOTLESS.md): the administrator's granted CRIU, for programs started
 * outside checkpt by an ordinary user. For root, only whether one is installed.
 */
function grantFinding(root: boolean): Finding | undefined {
  const info = grantInfo();
  const caps = info ? info.capabilities.join(', ') : '';
  if (root)
    return info
      ? {
          name: 'grant',
          ok: true,
          detail: `granted CRIU at ${grantedCriuPath} for group ${info.group} (${caps}); checkpt setup --revoke removes it`,
        }
      : undefined;
  if (inUserNamespace()) return undefined;
  const uid = process.getuid?.() ?? 0;
  const state = grantState();
  if (state === 'usable')
    return {
      name: 'grant',
      ok: true,
      warning: true,
      detail: `granted CRIU (uid ${uid}, group ${info?.group ?? '?'}: ${caps}): checkpt() in programs you start outside checkpt, checkpt signal to them and checkpt -r of their files work on the host`,
      fix: GRANT_LACKS,
    };
  return {
    name: 'grant',
    ok: true,
    warning: true,
    detail:
      state === 'none'
        ? 'no granted CRIU here: a program started outside checkpt (plain node app.js) cannot be checkpointed without root'
        : `a granted CRIU is at ${grantedCriuPath} for group ${info?.group ?? '?'}, and uid ${uid} is not in that group: a program started outside checkpt cannot be checkpointed`,
    fix:
      state === 'none'
        ? 'Start such programs with checkpt run, or ask an administrator for `checkpt setup --grant GROUP` and membership of GROUP.'
        : `Ask an administrator to add you to ${info?.group ?? 'its group'} (then log in again), or start such programs with checkpt run.`,
  };
}

/** What the granted mode cannot do (docs/ROOTLESS.md). */
export const GRANT_LACKS =
  "With the grant: a copy is resumed on the host with its old pid, so only once the original has ended (one copy at a time), and only as you; TCP connections are closed in the copy unless granted with --tcp; memory is loaded before the copy runs. checkpt run's copies resume any number of times at once.";

function whereFrom(): string {
  if (criuSource === 'CHECKPT_CRIU') return 'from CHECKPT_CRIU';
  if (criuSource === 'checkpt build') return "checkpt's own build";
  return 'found on the PATH';
}

function ioUringSysctl(): number | undefined {
  try {
    return Number(readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim());
  } catch {
    return undefined;
  }
}

const COUNT_RINGS = `const fs=require('fs');let n=0;for(const f of fs.readdirSync('/proc/self/fd')){try{if(fs.readlinkSync('/proc/self/fd/'+f)==='anon_inode:[io_uring]')n++}catch{}}console.log(process.version+' '+n+' '+typeof process.execve)`;

/** The Node lines checkpt is tested on; 20 (end of life in April 2026) still works. */
export const SUPPORTED_NODE = '22, 24 and 26';

/**
 * Whether a Node is supported and how checkpt handles it: `rings` io_uring instances open at
 * start, `execve` whether it has process.execve (the restart at checkpt's import).
 */
export function nodeSupport(ver: string, rings: number, execve: boolean, sysctl?: number): Finding {
  const name = `node ${ver}`;
  const major = Number(/^v?(\d+)/.exec(ver)?.[1]);
  if (!(major >= 20))
    return {
      name,
      ok: false,
      detail: `Node ${ver} is not supported: checkpt needs Node 20 or newer (it is tested on ${SUPPORTED_NODE})`,
      fix: `Use Node ${SUPPORTED_NODE}.`,
    };
  const eol =
    major === 20
      ? ` (Node 20 reached end of life in April 2026; checkpt is tested on ${SUPPORTED_NODE})`
      : '';
  if (rings === 0)
    return {
      name,
      ok: true,
      detail: `Node ${ver} opens no io_uring${sysctl === 2 ? ' (kernel.io_uring_disabled=2)' : ''}: checkpoints work as is${eol}`,
    };
  if (execve)
    return {
      name,
      ok: true,
      detail: `Node ${ver} opens io_uring, which CRIU cannot dump: a program that imports checkpt first is restarted without it at that import (CHECKPT_REEXEC); any other needs checkpt exec or checkpt run`,
    };
  return {
    name,
    ok: true,
    warning: true,
    detail: `Node ${ver} opens io_uring, which CRIU cannot dump, and has no process.execve to restart a program without it (22.15, 23.11 and later have it)`,
    fix: ioUringAdvice(ver),
  };
}

/** Whether each Node binary is supported and opens io_uring here (checkpt exec keeps it off). */
function nodeFindings(binaries: string[]): Finding[] {
  const sysctl = ioUringSysctl();
  return binaries.map((bin): Finding => {
    const r = spawnSync(bin, ['-e', COUNT_RINGS], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    const [ver, rings, execve] = r.stdout.trim().split(' ');
    if (r.status !== 0 || !ver)
      return {
        name: `node ${bin}`,
        ok: false,
        detail: `could not run ${bin}`,
        fix: 'Check the Node.js installation.',
      };
    return nodeSupport(ver, Number(rings), execve === 'function', sysctl);
  });
}

/** A native part's finding: where the working one is, or why none works and what to do. */
function nativeFinding(
  name: string,
  what: string,
  l: NativeLookup,
  opts: { warning?: string } = {},
): Finding {
  if (l.found !== undefined)
    return {
      name,
      ok: true,
      detail: `${what} at ${l.found.path} (${l.found.origin === 'build' ? 'compiled here' : 'prebuilt'})`,
    };
  const { detail, fix } = explainUnusable(l);
  const base = { name, detail: opts.warning ? `${detail}: ${opts.warning}` : detail, fix };
  return opts.warning ? { ...base, ok: true, warning: true } : { ...base, ok: false };
}
