import { isAbsolute, join } from 'node:path';
import { CheckptError } from '../common/errors.js';
import type { ProgressSink } from '../common/progress.js';
import { checkpointSignals, signalNumber, type CheckpointSignals } from '../common/signals.js';
import { commandName, expandTemplate } from '../common/template.js';
import { FILE, TIMEOUT_MS } from '../common/config.js';
import { dumpFromOutside, type OutsideDumpResult } from '../engine/outside.js';
import type { Rotation } from '../engine/rotation.js';
import { Schedule } from '../engine/schedule.js';
import type { Running } from '../engine/helper.js';
import { Coalescer } from './coalesce.js';
import { catchesSignal, cmdline, linkOf, procStatus } from '../common/procfs.js';

const procAlive = (pid: number): boolean => procStatus(pid) !== undefined;

export interface SupervisorOptions {
  running: Running;
  /** File name template for checkpoints taken from outside (default CHECKPT_FILE, else %N.ckpt). */
  template?: string;
  /** The generation of the running program (0 for one started by `checkpt run`). */
  generation: number;
  /** Where to say what happened; on a raw terminal lines need "\r\n". */
  say: (line: string) => void;
  timeoutMs?: number;
  /** Where a checkpoint taken from outside shows its progress (exit: checkpoint and exit). */
  progress?: (exit: boolean) => ProgressSink;
  /** `--every`: a checkpoint every `intervalMs` into the rotation of the (expanded) template. */
  periodic?: { intervalMs: number; rotation: (base: string) => Rotation };
  /** Told of each periodic checkpoint once it is good (a restart's count starts over). */
  onPeriodic?: (file: string) => void;
}

/**
 * Carries out SIGCKPT and SIGCKPTEXIT (sent to `checkpt run`, or the key on its terminal) for the
 * program it runs: a program that catches the signal gets it and picks the moment itself; for any
 * other program this is the default action, a checkpoint taken from outside.
 * Requests that arrive while one is being carried out collapse into one more, made afterwards
 * ("checkpoint and exit" if any of them asked for it): none is lost, none runs concurrently.
 */
export class Supervisor {
  readonly signals: CheckpointSignals;
  /** Set once the program was stopped by "checkpoint and exit": its end is then a success. */
  stoppedByCheckpoint: string | undefined;
  private readonly queue: Coalescer;
  private readonly opts: SupervisorOptions;
  // Requests and periodic checkpoints take turns: never two dumps of the program at once.
  private turn: Promise<unknown> = Promise.resolve();

  constructor(opts: SupervisorOptions) {
    this.opts = opts;
    this.signals = checkpointSignals();
    this.queue = new Coalescer(
      (exit) => this.carryOut(exit),
      () => this.stoppedByCheckpoint !== undefined,
    );
  }

  /** Listens for the two signals and the terminal key; returns a function that stops listening. */
  install(): () => void {
    const ckpt = (): void => this.request(false);
    const exit = (): void => this.request(true);
    process.on(this.signals.ckpt, ckpt);
    process.on(this.signals.exit, exit);
    this.opts.running.onKey(() => this.request(false));
    const schedule = this.startPeriodic();
    return async () => {
      process.off(this.signals.ckpt, ckpt);
      process.off(this.signals.exit, exit);
      this.opts.running.onKey(() => undefined);
      await schedule?.stop();
      await this.queue.idle();
    };
  }

  /** A checkpoint-and-continue into `target`, taken from outside, in turn with the requests. */
  checkpointTo(target: string, store?: string): Promise<OutsideDumpResult> {
    return this.inTurn(() => {
      if (this.stoppedByCheckpoint !== undefined)
        throw new CheckptError('EDUMP', 'The program was stopped by checkpoint and exit.');
      const { running } = this.opts;
      const template = this.opts.template ?? FILE.get();
      return dumpFromOutside({
        pid: running.pid,
        innerPid: running.innerPid,
        nsPid: running.initPid,
        target,
        exit: false,
        generation: this.opts.generation,
        template,
        timeoutMs: this.opts.timeoutMs ?? TIMEOUT_MS.get(),
        ...(store !== undefined ? { store } : {}),
      });
    });
  }

  private inTurn<T>(fn: () => Promise<T>): Promise<T> {
    const mine = this.turn.then(fn);
    this.turn = mine.catch(() => undefined);
    return mine;
  }

  private startPeriodic(): Schedule<OutsideDumpResult> | undefined {
    const p = this.opts.periodic;
    if (p === undefined) return undefined;
    let rotation: Rotation;
    try {
      rotation = p.rotation(this.targetFile(this.opts.template ?? FILE.get()));
    } catch (e) {
      this.opts.say(`checkpt: no periodic checkpoints: ${(e as Error).message}`);
      return undefined;
    }
    return new Schedule({
      intervalMs: p.intervalMs,
      rotation,
      write: (path, store) => this.checkpointTo(path, store),
      onTaken: (t) => {
        if (t.result.warning !== undefined) this.opts.say(t.result.warning);
        this.opts.say(
          `checkpt: periodic checkpoint ${t.file} (${storedText(t.result)}, program paused ${t.result.dumpMs} ms, ${t.ms} ms in all)${t.removed.length ? `; removed ${t.removed.join(', ')}` : ''}`,
        );
        // A store that cannot be cleaned keeps growing: the user must hear why.
        if (t.collected?.skipped !== undefined)
          this.opts.say(
            `checkpt: warning: the chunk store was not cleaned this time, so it keeps what older checkpoints used: ${t.collected.skipped}; remove or fix that file`,
          );
        this.opts.onPeriodic?.(t.file);
      },
      onSkipped: (e) => {
        if (this.stoppedByCheckpoint !== undefined || !procAlive(this.opts.running.pid)) return;
        this.opts.say(
          `checkpt: warning: periodic checkpoint skipped, the previous ones are kept: ${e.message}`,
        );
      },
      onRefused: (e) => this.opts.say(`checkpt: ${e.message}`),
    }).start();
  }

  request(exit: boolean): void {
    this.queue.request(exit);
  }

  /** Resolves once the request is carried out or has failed (the failure is reported, not thrown). */
  private carryOut(exit: boolean): Promise<void> {
    return this.inTurn(() => this.carryOutNow(exit));
  }

  private async carryOutNow(exit: boolean): Promise<void> {
    const { running } = this.opts;
    const sig = exit ? this.signals.exit : this.signals.ckpt;
    if (catchesSignal(running.pid, signalNumber(sig))) {
      try {
        process.kill(running.pid, sig);
      } catch {
        // it has just ended
      }
      return;
    }
    let target = '';
    const template = this.opts.template ?? FILE.get();
    const progress = this.opts.progress?.(exit);
    try {
      target = this.targetFile(template);
      const r = await dumpFromOutside({
        pid: running.pid,
        innerPid: running.innerPid,
        nsPid: running.initPid,
        target,
        exit,
        generation: this.opts.generation,
        template,
        timeoutMs: this.opts.timeoutMs ?? TIMEOUT_MS.get(),
        ...(progress && { progress }),
      });
      progress?.end();
      if (exit) this.stoppedByCheckpoint = target;
      if (r.warning !== undefined) this.opts.say(r.warning);
      this.opts.say(
        `checkpt: checkpoint written to ${target} (${(r.bytes / 1048576).toFixed(1)} MiB, program paused ${r.dumpMs} ms)${exit ? '; the program was stopped' : ''}. Resume it with: checkpt -r ${target}`,
      );
    } catch (e) {
      progress?.end();
      const msg = e instanceof CheckptError ? e.message : String(e);
      this.opts.say(`checkpt: checkpoint${target ? ` to ${target}` : ''} failed: ${msg}`);
    }
  }

  private targetFile(template: string): string {
    const { running } = this.opts;
    const name = expandTemplate(template, {
      name: commandName(cmdline(running.pid)),
      pid: running.innerPid,
      uid: process.getuid?.() ?? 0,
    });
    // Relative names are relative to the program's directory, as for a checkpoint it takes itself.
    return isAbsolute(name) ? name : join(linkOf(running.pid, 'cwd') || process.cwd(), name);
  }
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/** What a periodic checkpoint cost: its file, and with a store what it added there. */
function storedText(r: OutsideDumpResult): string {
  if (r.store === undefined) return mib(r.bytes);
  return `${mib(r.bytes)} file + ${mib(r.store.written)} new in its store, ${mib(r.store.shared)} unchanged`;
}
