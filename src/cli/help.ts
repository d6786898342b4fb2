export const HELP = `checkpt: checkpoint and resume running Node.js programs (on CRIU)

Usage:
  checkpt -r FILE.ckpt [-d]        resume a checkpointed program (also: checkpt restore FILE)
  checkpt inspect FILE.ckpt        show what a checkpoint holds [--json] [--verify]
  checkpt check                    can this machine checkpoint? [--json] [--node PATH]...
  checkpt exec -- COMMAND [ARGS]   run a program so it can be checkpointed (io_uring off)
  checkpt signal [--exit] PID      ask a running program to checkpoint itself [--verbose]

Resume:
  In the foreground (default) the program gets checkpt's own stdin, stdout and stderr, signals
  sent to checkpt reach it, and checkpt exits with the program's exit status (or dies of the
  same signal). Each resume runs in a PID namespace of its own, so one file can be resumed any
  number of times, concurrently, while the original still runs.
  -d, --detach   resume in the background (stdin from /dev/null) and print its pid

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
  CHECKPT_TIMEOUT (ms), CHECKPT_TMPDIR (staging directory).
`;
