#!/usr/bin/env node
import { CheckptError } from '../common/errors.js';
import { checkConfig, DEBUG, PUBLIC_VARIABLES } from '../common/config.js';
import { checkpointSignals } from '../common/signals.js';
import { trace } from '../common/trace.js';
import { resume } from '../engine/restore.js';
import { compileNative } from '../engine/native.js';
import { probe } from '../engine/probe.js';
import { removeLockTable } from '../engine/netlock.js';
import { manifestProblem } from '../engine/manifest.js';
import { readImageHeader, readImageInfo, verifyImage } from '../image/format.js';
import { loadKey } from '../image/key.js';
import type { Running } from '../engine/helper.js';
import { execCheckpointable } from '../launcher/exec.js';
import { runProgram } from '../launcher/run.js';
import { Supervisor } from '../launcher/supervisor.js';
import { requestCheckpoint } from '../launcher/request.js';
import { exitLike, relaySignals } from '../launcher/signals.js';
import { parseArgs, UsageError, type Command } from './args.js';
import { HELP, version } from './help.js';
import { formatHeader, formatInspect } from './inspect.js';

const EXIT_FAILED = 125;
const EXIT_USAGE = 2;

async function run(c: Command): Promise<number> {
  switch (c.cmd) {
    case 'help':
      process.stdout.write(HELP);
      return 0;
    case 'version':
      process.stdout.write(`checkpt ${version()}\n`);
      return 0;
    case 'inspect': {
      const key = loadKey();
      const head = await readImageHeader(c.file);
      // Without the key only the header can be shown; --verify then fails with what to do.
      if (head.encrypted && key === undefined && !c.verify) {
        process.stdout.write(
          c.json
            ? JSON.stringify({ file: c.file, ...head }, null, 2) + '\n'
            : formatHeader(c.file, head) + '\n',
        );
        return 0;
      }
      // Looking is harmless, so a plain file is shown even when a key is set; vouching for one is not.
      const opts = { key, allowPlain: true, checkManifest: manifestProblem };
      const info = c.verify
        ? {
            ...(await verifyImage(c.file, { ...opts, requireTrusted: c.trust !== true })),
            verified: true,
          }
        : await readImageInfo(c.file, opts);
      process.stdout.write(
        c.json
          ? JSON.stringify({ file: c.file, ...info }, null, 2) + '\n'
          : formatInspect(c.file, info) + '\n',
      );
      return 0;
    }
    case 'check': {
      const findings = probe(c.nodes.length ? c.nodes : [process.execPath]);
      const ok = findings.every((f) => f.ok);
      if (c.json) process.stdout.write(JSON.stringify({ ok, findings }, null, 2) + '\n');
      else
        for (const f of findings) {
          const mark = !f.ok ? 'FAIL' : f.warning ? 'WARN' : 'ok  ';
          process.stdout.write(`${mark}  ${f.detail}${f.fix ? `\n      -> ${f.fix}` : ''}\n`);
        }
      return ok ? 0 : 1;
    }
    case 'exec': {
      const st = await execCheckpointable({ command: c.command, args: c.args });
      return exitLike(st);
    }
    case 'signal': {
      const r = requestCheckpoint(c.pid, { exit: c.exit });
      if (c.verbose)
        process.stdout.write(
          r.viaAncestor
            ? `checkpt: sent ${r.signal} to ${r.target}, the nearest ancestor of ${c.pid} that handles checkpoint requests\n`
            : `checkpt: sent ${r.signal} to ${r.target}\n`,
        );
      return 0;
    }
    case 'build': {
      const { status, parts } = compileNative();
      for (const p of parts)
        process.stdout.write(
          p.found
            ? `ok    ${p.part}: ${p.found.path}\n`
            : `FAIL  ${p.part}: ${p.problem}\n      -> ${p.fix}\n`,
        );
      return status === 0 && parts.every((p) => p.found) ? 0 : 1;
    }
    case 'unlock': {
      // Root acts on the table the manifest names: someone else's file could name another's lock.
      const { manifest } = await readImageInfo(c.file, {
        key: loadKey(),
        allowPlain: true,
        requireTrusted: c.trust !== true,
        checkManifest: manifestProblem,
      });
      const table = (manifest as { networkLock?: unknown }).networkLock;
      if (typeof table !== 'string') {
        process.stdout.write(`checkpt: ${c.file} holds no network lock; nothing to do\n`);
        return 0;
      }
      const r = removeLockTable(table);
      process.stdout.write(
        r === 'removed'
          ? `checkpt: removed ${table}: the connections ${c.file} held are given up (their peers get a reset); it can still be resumed, without them\n`
          : `checkpt: ${table} is already gone (${c.file} was resumed, or its lock removed)\n`,
      );
      return 0;
    }
    case 'restore': {
      const held = c.detach ? undefined : holdRequests();
      const r = await resume(c.file, {
        detach: c.detach,
        key: c.key,
        pty: c.pty,
        trustFile: c.trust === true,
      });
      if (c.detach) {
        // The copy runs on its own: a stopping signal meant for it now stops only us, as before.
        for (const s of r.takeSignals()) process.kill(process.pid, s);
        process.stdout.write(`${r.pid}\n`);
        await r.loaded;
        return 0;
      }
      // A copy checkpointed from outside goes on using the file names it was started with.
      const template = r.manifest.template;
      return supervise(r, {
        generation: r.manifest.generation + 1,
        pty: c.pty,
        // A copy stopped because its memory could not be loaded is a failed restore.
        beforeExit: () => r.loaded,
        takeSignals: r.takeSignals,
        ...(held === undefined ? {} : { held }),
        ...(template === undefined ? {} : { template }),
      });
    }
    case 'run': {
      const held = holdRequests();
      const r = await runProgram({
        command: c.command,
        args: c.args,
        key: c.key,
        pty: c.pty,
        ...(c.file === undefined ? {} : { file: c.file }),
      });
      return supervise(r, {
        generation: 0,
        pty: c.pty,
        held,
        ...(c.file === undefined ? {} : { template: c.file }),
      });
    }
  }
}

interface HeldRequests {
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
 * request is not lost and an early SIGUSR2 does not kill checkpt (its default action).
 */
function holdRequests(): HeldRequests {
  const sig = checkpointSignals();
  const got: boolean[] = [];
  const signals: NodeJS.Signals[] = [];
  const ckpt = (): void => void got.push(false);
  const exit = (): void => void got.push(true);
  const keep = (s: NodeJS.Signals): void => void signals.push(s);
  process.on(sig.ckpt, ckpt);
  process.on(sig.exit, exit);
  for (const s of HELD_FOR_PROGRAM) process.on(s, keep);
  return {
    signals,
    release: () => {
      process.off(sig.ckpt, ckpt);
      process.off(sig.exit, exit);
      for (const s of HELD_FOR_PROGRAM) process.off(s, keep);
      return got;
    },
  };
}

/** Waits for the program, carrying out checkpoint requests and passing signals on meanwhile. */
async function supervise(
  r: Running,
  o: {
    generation: number;
    pty: boolean;
    template?: string;
    held?: HeldRequests;
    beforeExit?: () => Promise<void>;
    /** A resume's stopping signals, held until the relay below listens (src/engine/restore.ts). */
    takeSignals?: () => NodeJS.Signals[];
  },
): Promise<number> {
  // On its own pseudo-terminal our terminal is raw: a line needs its carriage return.
  const raw = o.pty && process.stdin.isTTY === true;
  const sup = new Supervisor({
    running: r,
    generation: o.generation,
    say: (line) => process.stderr.write(raw ? `\r${line}\r\n` : `${line}\n`),
    ...(o.template === undefined ? {} : { template: o.template }),
  });
  const stop = sup.install();
  const unrelay = relaySignals(() => r.initPid, { terminalSignals: !raw });
  // Only now, with the relay listening, may the resume's handlers go: a SIGTERM in between was lost.
  for (const s of o.takeSignals?.() ?? []) process.kill(process.pid, s);
  for (const exit of o.held?.release() ?? []) sup.request(exit);
  // Signals for the program that came while it started: passed on now, in order.
  for (const s of o.held?.signals ?? []) process.kill(process.pid, s);
  const st = await r.exited;
  unrelay();
  stop();
  await o.beforeExit?.();
  if (sup.stoppedByCheckpoint) return 0;
  return exitLike(st);
}

async function main(): Promise<void> {
  trace('main');
  let command: Command;
  try {
    command = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`checkpt: ${e.message}\n`);
      process.exit(EXIT_USAGE);
    }
    throw e;
  }
  try {
    // A bad CHECKPT_* variable stops the command before it does anything.
    if (command.cmd !== 'help' && command.cmd !== 'version') checkConfig(PUBLIC_VARIABLES);
    process.exitCode = await run(command);
  } catch (e) {
    if (e instanceof CheckptError) {
      process.stderr.write(`checkpt: ${e.message}\n`);
      if (e.logTail && DEBUG.get()) process.stderr.write(`--- CRIU log (tail) ---\n${e.logTail}\n`);
      else if (e.logTail)
        process.stderr.write("(set CHECKPT_DEBUG=1 to see the tail of CRIU's log)\n");
      process.exit(EXIT_FAILED);
    }
    throw e;
  }
}

void main();
