/**
 * Every CHECKPT_* environment variable in one table: its default, what it does, when it is read,
 * and what it accepts. Code reads a variable only through its entry here (`TIMEOUT_MS.get()`), so
 * a bad value is refused the same way everywhere: a CheckptError `EBADCONFIG` naming the variable,
 * the value and what is accepted. docs/CONFIG.md is generated from this table
 * (`node scripts/config-doc.mjs`) and a test keeps the two in step.
 */
import { constants } from 'node:os';
import { isAbsolute } from 'node:path';
import { CheckptError } from './errors.js';

/** The one default for how long CRIU's dump may take (`timeoutMs`, CHECKPT_TIMEOUT). */
export const DEFAULT_TIMEOUT_MS = 120_000;
/** The default for how long a registered step may take (`RegisterOptions.timeoutMs`). */
export const DEFAULT_HOOK_TIMEOUT_MS = 10_000;
/** setTimeout's limit: a longer delay fires at once. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export const DEFAULT_TEMPLATE = '%N.ckpt';
export const DEFAULT_SIGCKPT = 'SIGSTKFLT';
export const DEFAULT_SIGCKPTEXIT = 'SIGPWR';
/**
 * From this much memory in the image the copy runs while its memory streams in, each chunk checked
 * when first read. Below it the copy is held, restored, until all of its memory is checked: a
 * damaged small image never starts a process (src/engine/lazy.ts; the front's LAZY_MIN_BYTES).
 */
export const LAZY_MIN_BYTES = 32 * 1024 * 1024;

/**
 * `public`: for users; `internal`: a handshake between checkpt's own processes, set by checkpt;
 * `script`: read by scripts/install-criu.sh only; `test`: read by the test suite only.
 */
export type VariableKind = 'public' | 'internal' | 'script' | 'test';

/** `load`: once, when checkpt is loaded (a program's import, or the command's start); `call`: each time it is used. */
export type ReadWhen = 'load' | 'call';

export interface Variable<T = unknown> {
  readonly name: string;
  readonly kind: VariableKind;
  readonly when: ReadWhen;
  /** The default in words, for the docs ('' when there is none). */
  readonly defaultText: string;
  /** What a value may be, for the docs and for the error about a bad one. */
  readonly accepts: string;
  /** What it does (Markdown, one paragraph). */
  readonly does: string;
  /** The value when the variable is unset or empty. */
  readonly fallback: T;
  /** The value in `env`, or `fallback`; a bad value throws EBADCONFIG. */
  get(env?: NodeJS.ProcessEnv): T;
}

interface Spec<T> {
  name: string;
  kind?: VariableKind;
  when: ReadWhen;
  defaultText?: string;
  accepts: string;
  does: string;
  fallback: T;
  /** The value of a set, non-blank variable, or refuse(why). */
  parse(raw: string): T | Refused;
}

class Refused {
  constructor(readonly why: string) {}
}
const refuse = (why = ''): Refused => new Refused(why);

/** The error for a bad value: the variable, the value, what is accepted, and the way out. */
function badConfig(
  v: Pick<Variable, 'name' | 'accepts' | 'defaultText'>,
  raw: string,
  why = '',
): CheckptError {
  return new CheckptError(
    'EBADCONFIG',
    `${v.name}=${JSON.stringify(raw)} is not valid${why ? `: ${why}` : ''}. It accepts ${v.accepts}. Fix it, or unset it${v.defaultText ? ` for the default (${v.defaultText})` : ''}.`,
  );
}

const table: Variable[] = [];

function define<T>(spec: Spec<T>): Variable<T> {
  const v: Variable<T> = {
    name: spec.name,
    kind: spec.kind ?? 'public',
    when: spec.when,
    defaultText: spec.defaultText ?? '',
    accepts: spec.accepts,
    does: spec.does,
    fallback: spec.fallback,
    get(env: NodeJS.ProcessEnv = process.env): T {
      const raw = env[spec.name];
      // Blank is unset; values are given to `parse` as they are (a path may hold spaces).
      if (raw === undefined || raw.trim() === '') return spec.fallback;
      const r = spec.parse(raw);
      if (r instanceof Refused) throw badConfig(v, raw, r.why);
      return r;
    },
  };
  table.push(v as Variable);
  return v;
}

/** Documentation only: a variable set and read by checkpt's own processes, or by scripts and tests. */
function note(
  name: string,
  kind: Exclude<VariableKind, 'public'>,
  does: string,
  accepts = 'whatever the code that sets it writes',
): Variable<string | undefined> {
  return define({ name, kind, when: 'call', accepts, does, fallback: undefined, parse: (s) => s });
}

const milliseconds = (min: number) =>
  `a whole number of milliseconds from ${min} to ${MAX_TIMEOUT_MS}`;

function ms(min: number) {
  return (s: string): number | Refused => {
    if (!/^\d+$/.test(s.trim())) return refuse('not a whole number');
    const n = Number(s.trim());
    return n >= min && n <= MAX_TIMEOUT_MS ? n : refuse('out of range');
  };
}

const ON = /^(1|true|yes|on)$/i;
const OFF = /^(0|false|no|off)$/i;
const SWITCH = '1, true, yes or on; 0, false, no or off (any case)';

/** A switch that is on or off, or undefined when unset (checkpt decides). */
function onOff(s: string): boolean | Refused {
  if (ON.test(s.trim())) return true;
  if (OFF.test(s.trim())) return false;
  return refuse();
}

const anyText = (s: string): string => s;

function absolute(s: string): string | Refused {
  return isAbsolute(s) ? s : refuse('the path must be absolute');
}

// Signals Node, the kernel or a terminal already give a meaning a checkpoint must not steal.
const RESERVED = new Set([
  'SIGUSR1', // opens Node's inspector
  'SIGKILL',
  'SIGSTOP',
  'SIGSEGV',
  'SIGBUS',
  'SIGFPE',
  'SIGILL',
  'SIGABRT',
  'SIGTRAP',
  'SIGCHLD',
  'SIGPIPE',
  'SIGCONT',
  'SIGTSTP',
  'SIGTTIN',
  'SIGTTOU',
  'SIGINT',
  'SIGQUIT',
  'SIGTERM',
  'SIGHUP',
  'SIGWINCH',
  'SIGPROF', // V8's CPU profiler
]);

function signal(raw: string): NodeJS.Signals | Refused {
  const s = raw.trim();
  const name = (s.toUpperCase().startsWith('SIG') ? s : `SIG${s}`).toUpperCase();
  if (!(name in constants.signals)) return refuse(`${s} is not a signal Linux knows`);
  if (RESERVED.has(name))
    return refuse(
      `${name} cannot be used: it already means something to Node, the kernel or the terminal`,
    );
  return name as NodeJS.Signals;
}

// A template's escapes, as expandTemplate() reads them: % followed by N, P, U or %.
function template(s: string): string | Refused {
  const bad = /%([^NPU]|$)/.exec(s.replace(/%%/g, ''));
  return bad ? refuse(`'%${bad[1]}' is not one of its escapes`) : s;
}

// ---------------------------------------------------------------------------------------------
// Public

export const FILE = define({
  name: 'CHECKPT_FILE',
  when: 'call',
  defaultText: DEFAULT_TEMPLATE,
  accepts: 'a file name template: %N program name, %P pid, %U uid, %% a %',
  does: 'The checkpoint file when `checkpt()`/`checkpoint()` get none, and for checkpoints `checkpt run` takes from outside (its `--file` sets it for the program).',
  fallback: DEFAULT_TEMPLATE,
  parse: template,
});

export const SIGCKPT = define({
  name: 'CHECKPT_SIGCKPT',
  when: 'load',
  defaultText: DEFAULT_SIGCKPT,
  accepts:
    'a signal name, with or without SIG, any case (SIGURG, URG, urg), not one Node, the kernel or a terminal already uses (SIGUSR1, SIGTERM, SIGINT, SIGCHLD, ...)',
  does: 'The signal that asks for a checkpoint ("checkpoint and go on"). Read by a program when checkpt is loaded (a bad value turns requests off with one warning) and by each `checkpt signal` and `checkpt run`; both sides must agree.',
  fallback: DEFAULT_SIGCKPT as NodeJS.Signals,
  parse: signal,
});

export const SIGCKPTEXIT = define({
  name: 'CHECKPT_SIGCKPTEXIT',
  when: 'load',
  defaultText: DEFAULT_SIGCKPTEXIT,
  accepts: 'the same as CHECKPT_SIGCKPT, and a signal other than that one',
  does: 'The signal that asks for "checkpoint and exit"; read like CHECKPT_SIGCKPT.',
  fallback: DEFAULT_SIGCKPTEXIT as NodeJS.Signals,
  parse: signal,
});

export const TIMEOUT_MS = define({
  name: 'CHECKPT_TIMEOUT',
  when: 'call',
  defaultText: String(DEFAULT_TIMEOUT_MS),
  accepts: milliseconds(1),
  does: "The default `timeoutMs`: how long CRIU's dump may take before it is stopped (`ETIMEOUT`), for `checkpt()`/`checkpoint()` and checkpoints `checkpt run` takes.",
  fallback: DEFAULT_TIMEOUT_MS,
  parse: ms(1),
});

export const TMPDIR = define({
  name: 'CHECKPT_TMPDIR',
  when: 'call',
  defaultText:
    'a dump: the temporary directory when it is on ext4 or XFS and the image fits in its page cache; else /dev/shm when it has room, else the temporary directory',
  accepts: 'a directory',
  does: 'Where a dump is staged before it is packed into the file, and where `checkpt -r` unpacks one. By default a dump goes to the system temporary directory when that is on ext4 or XFS, the checkpoint is not to be encrypted (`CHECKPT_KEY_FILE` unset), and the image, with what already waits for the disk, fits in half of what the kernel keeps before it starts writing back (it is packed and removed before any of it is written: tmpfs takes a page at a time where ext4 takes large folios, and writing the images costs the frozen program twice as much in `/dev/shm`); otherwise, and for `checkpt -r`, `/dev/shm` when it and free memory have room for the image (CRIU then never waits for the disk).',
  fallback: undefined as string | undefined,
  parse: anyText,
});

export const COMPRESS = define({
  name: 'CHECKPT_COMPRESS',
  when: 'call',
  defaultText: 'compressed when the program runs on while its file is written',
  accepts: SWITCH,
  does: 'On: the memory in every checkpoint file is compressed with zstd (typically to half); off: never. By default with `checkpoint()`, requests and `checkpt run`, not with the synchronous `checkpt()`, whose program waits for its file. Needs the `zstd` program (`apt-get install zstd`; without it files are written uncompressed); `checkpt -r` decompresses before anything starts.',
  fallback: undefined as boolean | undefined,
  parse: onOff,
});

export const STORE = define({
  name: 'CHECKPT_STORE',
  when: 'call',
  defaultText: 'on',
  accepts: SWITCH,
  does: 'Periodic checkpoints (`--every`, `checkpointEvery()`) keep their memory in a chunk store beside the rotation (`app.ckpt.store/`), each chunk once, so a checkpoint costs what changed; off: every file holds all of its memory. Encrypted checkpoints never use the store. See [PERIODIC](PERIODIC.md).',
  fallback: true as boolean,
  parse: onOff,
});

export const ZSTD = define({
  name: 'CHECKPT_ZSTD',
  when: 'load',
  defaultText: 'zstd',
  accepts: 'a program name or path',
  does: 'The zstd program compression runs (without one, files are written uncompressed).',
  fallback: 'zstd',
  parse: anyText,
});

export const CHUNK_HASH = define({
  name: 'CHECKPT_CHUNK_HASH',
  when: 'call',
  defaultText: "blake3 (sha256 where checkpt's BLAKE3 addon does not load)",
  accepts: 'blake3 or sha256',
  does: 'The hash of each memory chunk in the tables of new checkpoint files (not encrypted ones, whose chunks carry GCM tags, nor chunks in a store, named by their SHA-256); every chunk is checked against it when first read. BLAKE3 is about four times as fast as SHA-256 on the same core, and its checks are on the way of every fault of a lazily resumed copy. sha256: files that a checkpt from before BLAKE3 tables (2026-12) can read too. This version reads both kinds.',
  fallback: undefined as 'blake3' | 'sha256' | undefined,
  parse: (s) => {
    const v = s.trim().toLowerCase();
    return v === 'blake3' || v === 'sha256' ? v : refuse();
  },
});

export const LAZY = define({
  name: 'CHECKPT_LAZY',
  when: 'call',
  defaultText: 'lazy; below 32 MiB of memory the copy waits until all of it is checked',
  accepts: SWITCH,
  does: "How `checkpt -r` loads the copy's memory. On: through CRIU's lazy-pages daemon and userfaultfd, straight from the checkpoint file, each chunk checked when first needed (the copy runs at once; pages it touches come first, the rest in the background; `checkpt -r -d` returns once all of it is in); off: all of it before the program runs. Unset, an image with less than 32 MiB of memory is restored lazily too, but the copy is held in CRIU's post-restore step until every chunk has passed its check, so a damaged small image never runs. If the daemon fails before the copy has all of its memory, the copy is killed and `checkpt -r` fails.",
  fallback: undefined as boolean | undefined,
  parse: onOff,
});

export const FRONT = define({
  name: 'CHECKPT_FRONT',
  when: 'call',
  defaultText: 'on',
  accepts: '`0`, `1` or `debug`',
  does: "`checkpt -r FILE` run as a command first tries checkpt's native resume front (dist/bin/checkpt-front, native/resume-front.c), which restores the copy before Node has started and hands it to Node to watch: a plain file with the front's recipe in its manifest, resumed by root in the foreground off a terminal, with no other `CHECKPT_*` variable set, checkpt's own CRIU build, and its ports free. Anything else it leaves to Node at once, which resumes as always (and says what is wrong, if anything is). `0`: Node only; `1`: the default. `debug`: the front says on stderr why it leaves a resume to Node.",
  fallback: undefined as string | undefined,
  parse: (v: string) => (v === '0' || v === '1' || v === 'debug' ? v : refuse()),
});

export const HOOK_TIMEOUT_MS = define({
  name: 'CHECKPT_HOOK_TIMEOUT',
  when: 'call',
  defaultText: String(DEFAULT_HOOK_TIMEOUT_MS),
  accepts: milliseconds(1),
  does: 'The default `timeoutMs` of registered steps (`register()`, `onRestore()`): how long one may take before it is cut off.',
  fallback: DEFAULT_HOOK_TIMEOUT_MS,
  parse: ms(1),
});

export const NETWORK = define({
  name: 'CHECKPT_NETWORK',
  when: 'load',
  defaultText: 'on',
  accepts: SWITCH,
  does: 'Off: no built-in handling of servers: a copy resumed while the original holds its port fails instead of taking the port over.',
  fallback: true,
  parse: onOff,
});

/** CHECKPT_GC: off, on (one regular collection) or compact (the thorough one where the program waits). */
export type GcMode = 'off' | 'on' | 'compact';

function gcMode(s: string): GcMode | Refused {
  if (/^compact$/i.test(s.trim())) return 'compact';
  const on = onOff(s);
  return on === true ? 'on' : on === false ? 'off' : on;
}

export const GC = define<GcMode>({
  name: 'CHECKPT_GC',
  when: 'call',
  defaultText: 'on',
  accepts: `${SWITCH}; or compact`,
  does: "On: `checkpt()` and `checkpoint()` run a full garbage collection just before the process is dumped, as OpenJDK CRaC does. A copy then never resumes in the middle of a collection the original had begun, which it would finish over memory it loads page by page (a 160 MB server's first answer 150-250 ms later), and the image holds no garbage. The sweeping after it is left to the main thread, as allocation needs it, not to V8's workers (which went on sweeping in a 2 GB heap's copies over their lazily loaded memory, 2-3 times slower to answer). `checkpoint()`, whose program runs on, collects only when V8 is not quiet (a marking under way, a full collection of V8's own less than two seconds ago, or checkpt loaded less than two seconds ago). It takes a few ms for 100-500 MB of strings here, more for heaps of many small objects: off for a program whose heap is too large to collect at each checkpoint. `compact`: `checkpt()` and a checkpoint-and-exit, whose program waits for its file anyway, run V8's most thorough collection instead on Node 22 and later (two or more, the young generation and V8's reserve given back): smaller files (a 166 MB server's 107-119 MB file 73 MB), but copies that answer later (an idle server's first answer ~10 ms later, that server's sometimes ~45 ms; docs/PERFORMANCE.md).",
  fallback: 'on',
  parse: gcMode,
});

export const REEXEC = define({
  name: 'CHECKPT_REEXEC',
  when: 'load',
  defaultText: 'on',
  accepts: SWITCH,
  does: 'On: a Node that opened io_uring (22 and later) and imports checkpt first, in its main thread, is restarted at that import with checkpt\'s io_uring blocker preloaded (`process.execve`: same pid, arguments, environment and open fds; none of the program\'s code has run yet), so plain `node app.js` can be checkpointed (README, "Node 22, 24, 26 and io_uring"). Off: never; such a program gets `EIOURING` from its first checkpoint unless started with `checkpt exec`.',
  fallback: true,
  parse: onOff,
});

export const PACK_HEAP = define({
  name: 'CHECKPT_PACK_HEAP',
  when: 'load',
  defaultText: 'on',
  accepts: SWITCH,
  does: "On: in a Node program started with checkpt's preload (the restart at the import, `checkpt run`, `checkpt exec`), V8's heap pages are placed next to each other instead of at V8's random addresses, so a 2 GB heap is ~190 mappings instead of ~8,000 and checkpoints and resumes are faster (README, \"The packed heap\"). 0: V8's own placement. Read by the preload when the program starts.",
  fallback: true,
  parse: onOff,
});

export const TAKEOVER_MS = define({
  name: 'CHECKPT_TAKEOVER_MS',
  when: 'call',
  defaultText: '100',
  accepts: milliseconds(1),
  does: "The first pause between a copy's attempts to take its port over from the original (doubling, up to 2 s).",
  fallback: 100,
  parse: ms(1),
});

export const PROGRESS_MS = define({
  name: 'CHECKPT_PROGRESS_MS',
  when: 'call',
  defaultText: '1000',
  accepts: milliseconds(0),
  does: 'How long verifying and unpacking in `checkpt -r`, or a checkpoint `checkpt run` takes from outside, must last before its progress (bytes and rate) shows on the terminal; 0: at once. Only when stderr is a terminal (README, "Progress").',
  fallback: 1000,
  parse: ms(0),
});

export const RUN_DIR = define({
  name: 'CHECKPT_RUN_DIR',
  when: 'load',
  defaultText: '/run/checkpt as root',
  accepts: 'an absolute path',
  does: 'The directory of the control FIFOs (each resume mounts a private tmpfs over it). Without root, `checkpt run` gives its program `/tmp/checkpt-UID` instead of the default, and a program started outside checkpt uses that too (docs/ROOTLESS.md).',
  fallback: '/run/checkpt',
  parse: absolute,
});

export const DEBUG = define({
  name: 'CHECKPT_DEBUG',
  when: 'call',
  defaultText: 'off',
  accepts: SWITCH,
  does: "On: the command prints the tail of CRIU's log on failure, and CRIU logs everything (`-v4`; by default errors and warnings, `-v2`: debug logging lengthens the pause).",
  fallback: false,
  parse: onOff,
});

export const CRIU_BREAKPOINTS = define({
  name: 'CHECKPT_CRIU_BREAKPOINTS',
  when: 'call',
  defaultText: 'off',
  accepts: SWITCH,
  does: 'On: CRIU may use hardware breakpoints. By default checkpt runs CRIU with `CRIU_FAULT=130` (unless `CRIU_FAULT` is set), which works on VMs whose debug registers never fire (docs/ARCHITECTURE.md).',
  fallback: false,
  parse: onOff,
});

export const CRIU = define({
  name: 'CHECKPT_CRIU',
  when: 'load',
  defaultText: "checkpt's own build in CHECKPT_CRIU_HOME, else criu on the PATH",
  accepts: 'a path to criu 4.2 or newer',
  does: 'The `criu` binary to run (the fault tests point it at a stand-in that fails on purpose).',
  fallback: undefined as string | undefined,
  parse: anyText,
});

export const CRIU_HOME = define({
  name: 'CHECKPT_CRIU_HOME',
  when: 'load',
  defaultText: '/opt/checkpt/criu',
  accepts: 'a directory',
  does: 'Where `scripts/install-criu.sh` puts the CRIU it builds, and where checkpt looks for `bin/criu`, and for `granted/criu` (`checkpt setup --grant`, docs/ROOTLESS.md).',
  fallback: '/opt/checkpt/criu',
  parse: anyText,
});

export const HELPER = define({
  name: 'CHECKPT_HELPER',
  when: 'load',
  defaultText: 'the first that works of build/ and prebuilt/linux-x64/ in the package',
  accepts: 'a path',
  does: 'The native helper to run.',
  fallback: undefined as string | undefined,
  parse: anyText,
});

export const KEY_FILE = define({
  name: 'CHECKPT_KEY_FILE',
  when: 'call',
  defaultText: 'none: files are not encrypted',
  accepts:
    'the path of a key file: 32 random bytes or 64 hex digits, mode 0600 (the file itself is checked when used: EKEY)',
  does: 'New checkpoints are encrypted with this key, and `checkpt -r` and `checkpt inspect` read them with it (README, "Encryption at rest"). A resumed copy that checkpoints itself uses the value the original had (its environment is restored with it); `checkpt run` and `checkpt -r` use their own for checkpoints they take from outside.',
  fallback: undefined as string | undefined,
  parse: anyText,
});

export const REGISTRY_USER = define({
  name: 'CHECKPT_REGISTRY_USER',
  when: 'call',
  defaultText: "the registry's entry in the container tools' auth file",
  accepts: 'a user name (with CHECKPT_REGISTRY_PASSWORD)',
  does: '`checkpt push`, `pull` and `-r oci://` log in to every registry with this user instead of the one in the auth file (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.docker/config.json`: README, "Checkpoints in a registry").',
  fallback: undefined as string | undefined,
  parse: anyText,
});

export const REGISTRY_PASSWORD = define({
  name: 'CHECKPT_REGISTRY_PASSWORD',
  when: 'call',
  accepts: 'the password or token of CHECKPT_REGISTRY_USER',
  does: 'The password for CHECKPT_REGISTRY_USER, sent as HTTP basic credentials, or to get a bearer token where the registry asks for one.',
  fallback: undefined as string | undefined,
  parse: anyText,
});

export const INSECURE_REGISTRIES = define({
  name: 'CHECKPT_INSECURE_REGISTRIES',
  when: 'call',
  defaultText: 'none: every registry is spoken to over TLS',
  accepts: 'comma-separated registry hosts, each as in the reference (`host` or `host:port`)',
  does: 'Registries spoken to over plain HTTP, without TLS (a local test registry, say). Credentials sent to them travel in clear. A registry with a certificate of a private CA needs no such thing: give Node the CA with `NODE_EXTRA_CA_CERTS`.',
  fallback: [] as string[],
  parse: (s: string): string[] | Refused => {
    const hosts = s
      .split(',')
      .map((h) => h.trim())
      .filter((h) => h !== '');
    return hosts.every((h) => /^[A-Za-z0-9.[\]:-]+$/.test(h)) ? hosts : refuse('not a host list');
  },
});

// ---------------------------------------------------------------------------------------------
// Internal handshakes, set by checkpt for its own processes

note(
  'CHECKPT_POST_DUMP_SOCK',
  'internal',
  "For CRIU's post-dump action script (checkpt-helper) in a checkpoint-and-exit taken from outside (`checkpt run`): the Unix socket it asks for the verdict. The dump front of a program's own checkpoint answers CRIU's post-dump notification itself and gets the socket as an option.",
);
note(
  'CHECKPT_POST_DUMP_TIMEOUT_MS',
  'internal',
  'How long that post-dump script tries to reach the socket before CRIU rolls back: the default dump limit. The helper has no default of its own.',
);

export const HOLD_SOCK = note(
  'CHECKPT_HOLD_SOCK',
  'internal',
  "For CRIU's post-restore action script (checkpt-helper) in a resume of an image with less than 32 MiB of memory: the Unix socket in the staging directory where it waits, the copy restored but not yet run, until checkpt's page server (which listens there) says that every memory chunk passed its check.",
);

export const SCRIPT_ACTIONS = note(
  'CHECKPT_CRIU_SCRIPT_ACTIONS',
  'internal',
  "For CRIU: the only actions it runs checkpt's action script for (comma-separated; checkpt's CRIU build, scripts/criu-patches/script-actions-from-env.patch). Another CRIU runs it for each action, which the helper answers at once.",
);

note(
  'CHECKPT_CRIU_RUN_ID',
  'internal',
  "For CRIU, one UUID per dump: checkpt's CRIU build takes it as its run id (scripts/criu-patches/run-id-from-env.patch), which names the dump's network-lock table `inet CRIU-<run id>`; if CRIU dies mid-dump, checkpt removes that table by name.",
);

note(
  'CHECKPT_CRIU_PAGES_SPARE',
  'internal',
  "For CRIU, on a dump of 32 MiB or more staged on tmpfs: how many bytes (the program's RSS) checkpt's CRIU build allocates for the first pages image while the program still runs (scripts/criu-patches/xfer-spare-pages-image.patch); tmpfs would otherwise allocate each page inside the freeze. What the pages do not fill is given back when CRIU closes the image.",
);

note(
  'CHECKPT_FRONT_HANDOVER',
  'internal',
  "Set by checkpt's native resume front (native/resume-front.c) for the Node it execs once the copy runs: the helper's pid and status socket, the keeper's pid and report socket, the copy's pid, the signals that came meanwhile and the staging directory. Read once and removed (src/engine/restore.ts takeFrontHandover).",
  'words',
);
export const CRIU_PDEATHSIG = note(
  'CHECKPT_CRIU_PDEATHSIG',
  'internal',
  "For CRIU: the pid of its parent, checkpt. checkpt's CRIU build (scripts/criu-patches/pdeathsig-from-env.patch) then dies with it, as `setpriv --pdeathsig KILL` would make it (which checkpt runs in front of another CRIU), and exits at once if that parent is already gone. Set for the lazy-pages daemon.",
);

note(
  'CHECKPT_CRIU_LAZY_GATE',
  'internal',
  "For `criu restore --lazy-pages` started by checkpt's native resume front: an fd on which CRIU waits for one byte before it connects to the lazy-pages daemon (checkpt's CRIU build, scripts/criu-patches/lazy-gate-from-env.patch), so that the restore starts beside the daemon instead of after it; end of file there fails the restore before any task is made.",
);

export const STAGED_MAP = note(
  'CHECKPT_STAGED_MAP',
  'internal',
  "For CRIU's lazy-pages daemon and checkpt's page server, during a lazy resume: a file in the staging directory where the server says which memory blocks it has checked; checkpt's CRIU build (scripts/criu-patches/staged-local-reads.patch) reads those itself instead of asking the server.",
);

export const HASH_LIBRARY = note(
  'CHECKPT_HASH_LIBRARY',
  'internal',
  "For CRIU's lazy-pages daemon, during a lazy resume: the path of checkpt's BLAKE3 addon (checkpt-blake3.node), which checkpt's CRIU build loads to check a page fault's memory block itself when the page server has not checked it yet (scripts/criu-patches/staged-local-reads.patch).",
);

export const LAZY_HOLD = note(
  'CHECKPT_CRIU_LAZY_HOLD',
  'internal',
  'For CRIU\'s lazy-pages daemon, during a lazy resume: "QUIET WINDOW CPU". For WINDOW ms after the restore checkpt\'s CRIU build (scripts/criu-patches/xfer-hold-while-faulting.patch) runs the daemon on CPU alone, where checkpt runs the copy too, and holds its background transfers until the copy has not faulted for QUIET ms, so that each fault is answered without waking another CPU.',
);

export const PRIVATE_NET = note(
  'CHECKPT_PRIVATE_NET',
  'internal',
  'Set to 1 by `checkpt run --private-net` for its program: it has a network namespace of its own, so its own checkpoints keep its TCP connections without root (docs/ROOTLESS.md).',
  '1',
);

export const PUBLISH = note(
  'CHECKPT_PUBLISH',
  'internal',
  'Set by `checkpt run --private-net --publish` for its program: the forwarded ports (ADDR:HOSTPORT:PORT, comma-separated), recorded in its checkpoints so that a resumed copy is published again (docs/ROOTLESS.md).',
  '127.0.0.1:8080:8080',
);

// scripts/install-criu.sh (CHECKPT_CRIU_HOME above is shared with it)

note(
  'CHECKPT_CRIU_SOURCE',
  'script',
  'Build from this `criu_X.Y.Z.orig.tar.xz` instead of fetching it.',
  'a file',
);
note(
  'CHECKPT_CRIU_SUITES',
  'script',
  'Debian suites to look for the source in (default "forky sid").',
  'suite names',
);
note('CHECKPT_CRIU_FORCE', 'script', 'Build even when a working CRIU is already there.', '1');

// The test suite

note(
  'CHECKPT_REAL_CRIU',
  'test',
  'The real criu, for stand-ins that pass most calls on to it.',
  'a path',
);
note('CHECKPT_ZDTM_DIR', 'test', "Where CRIU's zdtm tests are built (test/compat).", 'a directory');
note('CHECKPT_ZDTM_ONLY', 'test', 'Only these zdtm tests.', 'comma-separated names');
note(
  'CHECKPT_FAULT_SLOW_CHECK_MS',
  'test',
  "Fault injection: each memory block checkpt's page server checks takes this much longer, so that what waits for checking can be seen waiting.",
  'milliseconds',
);
note('CHECKPT_FUZZ_SEED', 'test', 'The seed of the image fuzz tests.', 'a number');
note(
  'CHECKPT_TEST_NODES',
  'test',
  '`current`: test under the running Node only, not every installed major.',
  'current',
);
note(
  'CHECKPT_TEST_CLOSE_MS',
  'test',
  'How long a test waits for a process it started to end (default 60000).',
  'milliseconds',
);
note(
  'CHECKPT_TEST_FRONT_NO_DAEMON',
  'test',
  'For the native resume front: its lazy-pages daemon cannot start (a binary that is not there), so that a test sees the front stop the restore it started beside the daemon and leave the resume to Node.',
  'any value',
);
note(
  'CHECKPT_TEST_RUN_EXEC_STALL_MS',
  'test',
  "For `checkpt run`: how long the program's process waits before it execs the program, so that a test can checkpoint it in that window (the helper reports the program started only once it exec'd).",
  'milliseconds',
);
note(
  'CHECKPT_TEST_INIT_STALL_MS',
  'test',
  "For the helper's namespace init: how long it sleeps between its fork and its asking to die with the helper, so that a test can kill `checkpt run` in that window.",
  'milliseconds',
);
note(
  'CHECKPT_TEST_BUILTINS',
  'test',
  "Where test/fixtures/builtins-at-exit.cjs, preloaded into `checkpt -r`, writes the Node built-in modules the command loaded (the test that a resume's checks load no node:crypto).",
  'an absolute path',
);
note(
  'CHECKPT_TEST_SIGHTINGS',
  'test',
  'Set by `npm test` (scripts/run-tests.mjs): a file where a test that failed once and passed when run again writes what the first failure said; the runner prints it after its summary, so that a rare failure is seen at the end of the output though the suite passed.',
  'an absolute path',
);
note(
  'CHECKPT_TEST_MS',
  'test',
  'How long a test of real parts may run before it fails naming what still runs (default 180000).',
  'milliseconds',
);
export const BENCH_TRACE = define({
  name: 'CHECKPT_BENCH_TRACE',
  kind: 'test',
  when: 'call',
  accepts: 'an absolute path',
  does: "Set by `npm run bench` only: the command appends a line to this file, `STEP EPOCH_MS`, when its `main` begins (`main`) and when it starts its native helper (`helper`) or CRIU's lazy-pages daemon (`lazy-pages`), for the bench's start-up measurement; a resume also marks its other steps there (the native front's `front`, `opened`, `extracted`, `daemon-ready`, CRIU's `criu-exited`, the page server's `s-start` to `s-eager`, `s-walk-held` and `s-walk` when its background walk first waits and first goes on, `s-lease` or `s-no-lease-errno-N` (with `s-writer-PID-COMM` for each process that holds the file open for writing) when it did or did not get its read lease on the checkpoint file, `s-lease-broken` when that lease was broken, and `local-pages-N` and `checked-pages-N`, the pages CRIU's daemon read and checked itself: docs/PERFORMANCE.md and the tests read them).",
  fallback: undefined as string | undefined,
  parse: absolute,
});
note(
  'CHECKPT_TEST_FRONT_HELPER',
  'test',
  "The checkpt-helper test/engine/front-image.test.mjs runs `unpack` with (a sanitizer build, say) instead of checkpt's own.",
  'a path',
);
note(
  'CHECKPT_TEST_UNIT',
  'test',
  '`1` (npm run test:unit): run only the pure-logic tests, skipping those of real parts.',
  '1',
);

/** Every variable, public first, in the order of the docs. */
export const VARIABLES: readonly Variable[] = table;

// ---------------------------------------------------------------------------------------------

const loadProblems: CheckptError[] = [];

/**
 * For a variable read once when checkpt is loaded: a bad value must not make the import itself
 * fail, so the default is used and the error kept for checkConfig(), which the next checkpoint,
 * or the command, throws.
 */
export function readAtLoad<T>(v: Variable<T>, env: NodeJS.ProcessEnv = process.env): T {
  try {
    return v.get(env);
  } catch (e) {
    loadProblems.push(e as CheckptError);
    return v.fallback;
  }
}

/** Throws EBADCONFIG for a bad variable read at load, or for a bad current value of one of `vars`. */
export function checkConfig(vars: readonly Variable[], env: NodeJS.ProcessEnv = process.env): void {
  if (loadProblems.length) throw loadProblems[0];
  for (const v of vars) v.get(env);
}

/** What a checkpoint of the process itself reads: checked before anything runs or is frozen. */
export const CHECKPOINT_VARIABLES: readonly Variable[] = [
  TIMEOUT_MS,
  HOOK_TIMEOUT_MS,
  TMPDIR,
  COMPRESS,
  STORE,
  CHUNK_HASH,
  TAKEOVER_MS,
  DEBUG,
  CRIU_BREAKPOINTS,
  KEY_FILE,
];

/** The public variables, for the command, which checks them all when it starts. */
export const PUBLIC_VARIABLES: readonly Variable[] = table.filter((v) => v.kind === 'public');
