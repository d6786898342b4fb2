import { isTerminal } from '../common/builtin.js';
import { checkpointSignals, STOPPING } from '../common/signals.js';
import type { ExitStatus, Running } from '../engine/helper.js';
import { Supervisor, type SupervisorOptions } from '../launcher/supervisor.js';
import { terminalProgress } from './progress.js';
import { exitLike, relaySignals } from '../launcher/signals.js';

export interface HeldRequests {
  /** Stops holding; returns the requests that came meanwhile (true: checkpoint and exit). */
  release(): boolean[];
  /** The signals for the program that came meanwhile, in order. */
  signals: NodeJS.Signals[];
}

/**
 * Signals meant for the program that could arrive before it runs. The stopping ones (SIGTERM,
 * SIGINT, SIGHUP) stop a restore itself, and once the copy runs resume() keeps them until the
 * relay listens (takeSignals): libuv drops a signal whose listener is removed before the event
 * loop dispatches it, and that lost SIGTERM left `checkpt -r` and its copy running for good.
 */
const HELD_FOR_PROGRAM: NodeJS.Signals[] = ['SIGUSR2', 'SIGQUIT'];

/**
 * Catches SIGCKPT/SIGCKPTEXIT and the program's own signals while the program starts, so an early
 * request is not lost and an early SIGUSR2 does not kill checkpt (its default action). With
 * `stopping` (a program started anew, not a resume, which stops itself on them) SIGTERM, SIGINT
 * and SIGHUP are kept for the program too: one that came before the relay listened killed checkpt
 * and left the program running without it.
 */
export function holdRequests(opts: { stopping?: boolean } = {}): HeldRequests {
  const forProgram = opts.stopping === true ? [...HELD_FOR_PROGRAM, ...STOPPING] : HELD_FOR_PROGRAM;
  const sig = checkpointSignals();
  const got: boolean[] = [];
  const signals: NodeJS.Signals[] = [];
  const ckpt = (): void => void got.push(false);
  const exit = (): void => void got.push(true);
  const keep = (s: NodeJS.Signals): void => void signals.push(s);
  process.on(sig.ckpt, ckpt);
  process.on(sig.exit, exit);
  for (const s of forProgram) process.on(s, keep);
  return {
    signals,
    release: () => {
      process.off(sig.ckpt, ckpt);
      process.off(sig.exit, exit);
      for (const s of forProgram) process.off(s, keep);
      return got;
    },
  };
}

export interface SuperviseOptions {
  generation: number;
  pty: boolean;
  template?: string;
  held?: HeldRequests;
  beforeExit?: () => Promise<void>;
  /** A resume's stopping signals, held until the relay below listens (src/engine/restore.ts). */
  takeSignals?: () => NodeJS.Signals[];
  /** `--every`: periodic checkpoints into a rotation (src/launcher/supervisor.ts). */
  periodic?: SupervisorOptions['periodic'];
  onPeriodic?: (file: string) => void;
}

/** Waits for the program, carrying out checkpoint requests and passing signals on meanwhile. */
export async function supervise(r: Running, o: SuperviseOptions): Promise<number> {
  const { status, stopped } = await superviseOnce(r, o);
  if (stopped) return 0;
  return exitLike(status);
}

/** As supervise(), but says how the program ended instead of ending checkpt the same way. */
export async function superviseOnce(
  r: Running,
  o: SuperviseOptions,
): Promise<{ status: ExitStatus; stopped: boolean }> {
  // On its own pseudo-terminal our terminal is raw: a line needs its carriage return.
  const raw = o.pty && isTerminal(0);
  const sup = new Supervisor({
    running: r,
    generation: o.generation,
    say: (line) => process.stderr.write(raw ? `\r${line}\r\n` : `${line}\n`),
    // A program frozen until it is killed cannot write meanwhile; one that runs on owns the screen.
    progress: (exit) => terminalProgress({ style: exit ? 'line' : 'title' }),
    ...(o.template === undefined ? {} : { template: o.template }),
    ...(o.periodic === undefined ? {} : { periodic: o.periodic }),
    ...(o.onPeriodic === undefined ? {} : { onPeriodic: o.onPeriodic }),
  });
  const stop = sup.install();
  const unrelay = relaySignals(() => r.initPid, { terminalSignals: !raw });
  // Only now, with the relay listening, may the resume's handlers go: a SIGTERM in between was lost.
  for (const s of o.takeSignals?.() ?? []) process.kill(process.pid, s);
  for (const exit of o.held?.release() ?? []) sup.request(exit);
  // Signals for the program that came while it started: passed on now, in order.
  for (const s of o.held?.signals ?? []) process.kill(process.pid, s);
  const status = await r.exited;
  unrelay();
  // A checkpoint in progress ends (it fails: the program is gone) before anything else happens.
  await stop();
  await o.beforeExit?.();
  return { status, stopped: sup.stoppedByCheckpoint !== undefined };
}
