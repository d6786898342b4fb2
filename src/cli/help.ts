import { readFileSync } from 'node:fs';

/** checkpt's version: the one in the package.json of the package this file is part of. */
export function version(): string {
  const file = new URL('../../package.json', import.meta.url);
  return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
}

export const HELP = `checkpt: checkpoint and resume running Node.js programs (on CRIU)

Usage:
  checkpt run [OPTIONS] -- COMMAND [ARGS]   run any program so it can be checkpointed
  checkpt -r FILE.ckpt [-d]        resume a checkpointed program (also: checkpt restore FILE)
  checkpt inspect FILE.ckpt        show what a checkpoint holds [--json] [--verify]
  checkpt check                    can this machine checkpoint? [--json] [--node PATH]...
  checkpt exec -- COMMAND [ARGS]   run a program so it can be checkpointed (io_uring off)
  checkpt signal [--exit] PID      ask a running program to checkpoint itself [--verbose]
  checkpt unlock FILE.ckpt         give up the connections of a checkpoint-and-exit never resumed
  checkpt push FILE.ckpt REF       store a checkpoint in an OCI registry (REF: host/repo:tag)
  checkpt pull REF FILE.ckpt       fetch one (checked blob by blob, then as a file)
  checkpt pack IN.ckpt OUT.ckpt    a periodic checkpoint as a file that holds all of its memory
  checkpt -r oci://REF             pull, verify and resume in one step (inspect oci://REF too)
  checkpt migrate PID --to H:P ... move a program under checkpt run to another host (--post-copy; docs/MIGRATION.md)
  checkpt receive --listen H:P ... accept migrated programs (--dir DIR --cert F --key F --trust F)
  checkpt build                    compile the native parts here (when the prebuilt ones do not work)
  checkpt setup --grant GROUP      (root) let GROUP checkpoint programs started outside checkpt
                                   [--tcp]; checkpt setup --revoke removes it (docs/ROOTLESS.md)

Run (checkpt run [--file TEMPLATE] [--key KEY|none] [--no-pty] -- COMMAND [ARGS]):
  Starts COMMAND (Node or not) in a PID namespace of its own, off io_uring; on a terminal, on a
  pseudo-terminal of its own. SIGCKPT (SIGSTKFLT) sent to checkpt run or the program, or the key
  (default ^E), checkpoints it: a program that catches the signal (imports checkpt) gets it,
  any other is dumped from outside and goes on, to TEMPLATE (default CHECKPT_FILE, else %N.ckpt).
  SIGCKPTEXIT (SIGPWR, checkpt signal --exit) stops it once the file is durable; checkpt run
  then exits 0. Requests during a checkpoint collapse into one more. Other signals reach the
  program; the exit status is the program's.
  --file T     checkpoint file name template (also given to the program as CHECKPT_FILE)
  --key K      the checkpoint key on the terminal: ^E (default), ^G, C-g, ..., or none
  --no-pty     run on checkpt's own terminal (no key, copies not re-checkpointable there)
  --every D    also checkpoint it from outside every D (500ms, 30s, 5m, 1h) into T's rotation:
               app.ckpt gives app.1.ckpt, app.2.ckpt, ...; each durable and verified before
               the oldest goes. Refused when the first checkpoint takes longer than D.
               Their memory is kept once in app.ckpt.store/ beside them (CHECKPT_STORE=0:
               whole files); checkpt pack IN OUT makes a file that needs no store.
  --keep N     keep the newest N of them (default 3)
  --private-net  a network namespace of its own (only lo): its TCP connections among its own
               processes survive checkpoints, without root too; reached only through --publish
  --publish [ADDR:]HOSTPORT[:PORT]  with --private-net: checkpt listens on ADDR (127.0.0.1)
               :HOSTPORT and forwards to 127.0.0.1:PORT (default HOSTPORT) inside; repeatable;
               resumed copies too. A port in use fails before the program starts. Connections
               from outside are closed in a copy (clients reconnect)
  --restart[=MAX]  when it crashes (a signal other than HUP, INT, TERM, PIPE) or exits
               non-zero, resume the newest good checkpoint of --every's rotation (none yet:
               start it anew), after a back-off, at most MAX (default 5) times in a row; a copy
               dying at once falls back to the one before, then checkpt gives up

Resume:
  In the foreground (default) the program gets checkpt's own stdin, stdout and stderr, signals
  sent to checkpt reach it, and checkpt exits with the program's exit status (or dies of the
  same signal). Each resume runs in a PID namespace of its own, so one file can be resumed any
  number of times, concurrently, while the original still runs.
  On a terminal the copy gets a terminal of its own, with the key, as under checkpt run.
  -d, --detach   resume in the background (stdin from /dev/null) and print its pid
  --key K, --no-pty   as for checkpt run
  --trust-file   resume a plain file that someone other than root or you could have written
                 (theirs, or in a directory others can write without the sticky bit); without
                 it such a file is refused, as it could run code as root. inspect --verify and
                 unlock take it too. A file sealed with CHECKPT_KEY_FILE needs no such check.

Registries:
  REF is registry.example.com/team/app:tag or .../app@sha256:DIGEST. Credentials: the auth file
  of podman/docker login ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
  ~/.docker/config.json), or CHECKPT_REGISTRY_USER and CHECKPT_REGISTRY_PASSWORD. TLS always,
  except for the hosts in CHECKPT_INSECURE_REGISTRIES (host:port,...). A plain checkpoint from a
  registry is resumed only with --trust-file: anyone who can push there could have written it.

Checkpoint requests:
  checkpt signal PID sends SIGCKPT (SIGSTKFLT), checkpt signal --exit PID SIGCKPTEXIT (SIGPWR),
  to PID if it handles it (it imports checkpt), else to its nearest ancestor that does (checkpt
  run); it refuses rather than kill a program that does not. A program that imports checkpt
  writes CHECKPT_FILE (default %N.ckpt) and goes on, or exits once it is written (--exit).
  Same as kill -STKFLT PID / kill -PWR PID. Other signals: CHECKPT_SIGCKPT, CHECKPT_SIGCKPTEXIT.

Inside a program:
  import { checkpt } from 'checkpt';
  if (checkpt('server.ckpt') !== 0) { /* resumed: re-create sockets */ }

Exit status: the resumed program's; 125 when checkpt itself failed; 2 for usage errors.
Environment: CHECKPT_FILE (name template: %N program, %P pid, %U uid, %% a %; default %N.ckpt),
  CHECKPT_TIMEOUT (ms), CHECKPT_TMPDIR (staging directory),
  CHECKPT_KEY_FILE (32 random bytes or 64 hex digits, mode 0600: new checkpoints are encrypted
  with it, and -r and inspect read them with it; -r then refuses unencrypted ones).
  Every variable, its default and what it accepts: docs/CONFIG.md.
A file name that starts with '-' goes after '--': checkpt -r -- -x.ckpt
`;
