/**
 * `checkpt run` with `--every` and `--restart`: the program runs under a supervisor that takes
 * periodic checkpoints into a rotation; when it fails, the newest good one is resumed instead
 * (src/launcher/restart.ts decides when and from what), until it ends cleanly or we give up.
 */
import { constants } from 'node:os';
import type { Command } from './args.js';
import { isTerminal } from '../common/builtin.js';
import { CheckptError } from '../common/errors.js';
import type { ExitStatus, Running } from '../engine/helper.js';
import { resume } from '../engine/restore.js';
import { Rotation, type RotationFile } from '../engine/rotation.js';
import { RestartPolicy } from '../launcher/restart.js';
import { runProgram } from '../launcher/run.js';
import { exitLike } from '../launcher/signals.js';
import { STOPPING } from '../common/signals.js';
import { holdRequests, superviseOnce, type SuperviseOptions } from './supervise.js';

/** `checkpt run`'s command, with the number of checkpoints kept settled. */
export type SupervisedRun = Omit<Extract<Command, { cmd: 'run' }>, 'cmd' | 'keep'> & {
  keep: number;
};

type Next = Running & Pick<SuperviseOptions, 'beforeExit' | 'takeSignals'>;

// As systemd's on-failure: these signals ask a program to stop (^C, kill, a hang-up), not a crash.
const CLEAN_SIGNALS = ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGPIPE'].map(
  (s) => constants.signals[s as 'SIGHUP'],
);

const failed = (st: ExitStatus): boolean =>
  st.signal !== undefined ? !CLEAN_SIGNALS.includes(st.signal) : st.code !== 0;

function describe(st: ExitStatus): string {
  if (st.signal === undefined) return `exited with status ${st.code}`;
  const name = Object.entries(constants.signals).find(([, n]) => n === st.signal)?.[0];
  return `was killed by ${name ?? `signal ${st.signal}`}`;
}

export async function runSupervised(c: SupervisedRun): Promise<number> {
  // A raw terminal (the program's own pseudo-terminal) needs the carriage return.
  const raw = c.pty && isTerminal(0);
  const say = (line: string): void =>
    void process.stderr.write(raw ? `\r${line}\r\n` : `${line}\n`);
  let rotation: Rotation | undefined;
  const periodic =
    c.every === undefined
      ? undefined
      : {
          intervalMs: c.every,
          // One rotation for the whole run: a resumed copy's template expands to the same name.
          rotation: (base: string) => (rotation ??= new Rotation(base, c.keep)),
        };
  const policy = c.restart === undefined ? undefined : new RestartPolicy(c.restart);
  // A stopping signal for the program means stop, not restart (the relay passes it on as well;
  // one that came while the program started is passed on below).
  let stopSignal: NodeJS.Signals | undefined;
  let wake: (() => void) | undefined;
  const onStop = (s: NodeJS.Signals): void => {
    stopSignal ??= s;
    wake?.();
  };
  for (const s of STOPPING) process.on(s, onStop);

  let from: RotationFile | undefined;
  let next: Next | undefined;
  let held = holdRequests();
  let generation = 0;
  for (;;) {
    const r: Next =
      next ??
      (await runProgram({
        command: c.command,
        args: c.args,
        key: c.key,
        pty: c.pty,
        ...(c.file === undefined ? {} : { file: c.file }),
        ...(c.privateNet === true ? { privateNet: true } : {}),
        ...(c.publish === undefined ? {} : { publish: c.publish }),
      }));
    // Asked to stop while it started: the program is told, as the relay would have told it.
    if (stopSignal !== undefined && next === undefined && r.initPid > 0)
      process.kill(r.initPid, stopSignal);
    const t0 = Date.now();
    const { status, stopped } = await superviseOnce(r, {
      generation,
      pty: c.pty,
      held,
      ...(c.file === undefined ? {} : { template: c.file }),
      ...(periodic === undefined ? {} : { periodic }),
      ...(policy === undefined ? {} : { onPeriodic: () => policy.progressed() }),
      ...(r.beforeExit === undefined ? {} : { beforeExit: r.beforeExit }),
      ...(r.takeSignals === undefined ? {} : { takeSignals: r.takeSignals }),
    });
    if (stopped) return 0;
    if (policy === undefined || !failed(status) || stopSignal !== undefined)
      return exitLike(status);
    const d = policy.failed({ ranMs: Date.now() - t0, ...(from && { resumedFrom: from }) });
    if (d.kind === 'give-up') {
      say(`checkpt: the program ${describe(status)}; giving up: ${d.why}.`);
      return exitLike(status);
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, d.delayMs);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    wake = undefined;
    if (stopSignal !== undefined) return exitLike(status);
    const why = `the program ${describe(status)} (restart ${d.attempt} of at most ${policy.max} in a row)`;
    held = holdRequests();
    next = undefined;
    from = undefined;
    const candidates = (await rotation?.files())?.filter((f) => !d.exclude.has(f.seq)) ?? [];
    for (const f of candidates) {
      try {
        const copy = await resume(f.path, { pty: c.pty, key: c.key });
        say(`checkpt: resumed ${f.path}: ${why}.`);
        next = { ...copy, beforeExit: () => copy.loaded };
        generation = copy.manifest.generation + 1;
        from = f;
        break;
      } catch (e) {
        const msg = e instanceof CheckptError ? e.message : String(e);
        say(`checkpt: cannot resume ${f.path}, trying the one before it: ${msg}`);
      }
    }
    if (next === undefined) {
      say(
        `checkpt: ${why}; ${candidates.length ? 'none of its checkpoints could be resumed' : 'it has no good checkpoint yet'}, so it starts anew.`,
      );
      generation = 0;
    }
  }
}
