import { CheckptError } from '../common/errors.js';
import { checkConfig, DEBUG, PUBLIC_VARIABLES } from '../common/config.js';
import { trace } from '../common/trace.js';
import { privilegeMode, requireRoot } from '../common/privilege.js';
import { isOciRef } from '../registry/reference.js';
import type { Command } from './args.js';
import { terminalProgress } from './progress.js';
import { holdRequests, supervise } from './supervise.js';

// Each command loads what it uses when it runs: `checkpt -r` never pays for the registry's HTTP
// and TLS, nor `checkpt signal` for the image format (docs/PERFORMANCE.md, start-up).
const registry = () => import('../registry/index.js');
const images = () => import('../image/format.js');

const EXIT_FAILED = 125;

/** The commands main.ts does not answer itself. */
export type RunnableCommand = Exclude<Command, { cmd: 'help' | 'version' }>;

async function run(c: RunnableCommand, started: () => void): Promise<number> {
  switch (c.cmd) {
    case 'inspect': {
      if (!isOciRef(c.file)) return inspect(c);
      const progress = terminalProgress({ style: 'line' });
      const { pullTemporary } = await registry();
      const pulled = await pullTemporary(c.file, { progress }).finally(() => progress.end());
      try {
        // A pulled file is ours: whoever pushed it is what --trust-file is about, not its directory.
        return await inspect({ ...c, file: pulled.file, trust: true }, c.file);
      } finally {
        pulled.remove();
      }
    }
    case 'push': {
      const progress = terminalProgress({ style: 'line' });
      const { pushCheckpoint } = await registry();
      const r = await pushCheckpoint(c.file, c.ref, { progress }).finally(() => progress.end());
      process.stdout.write(
        `checkpt: pushed ${c.file} (${r.size} bytes, ${r.layers} layers: ${r.uploaded} blobs sent, ${r.skipped} already there)\n${r.reference}\n`,
      );
      return 0;
    }
    case 'pull': {
      const progress = terminalProgress({ style: 'line' });
      const { pullCheckpoint } = await registry();
      const r = await pullCheckpoint(c.ref, c.file, { progress }).finally(() => progress.end());
      process.stdout.write(
        `checkpt: pulled ${c.ref} into ${c.file} (${r.size} bytes, manifest ${r.digest})\n`,
      );
      return 0;
    }
    case 'check': {
      const { probe } = await import('../engine/probe.js');
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
      // Without root, CRIU can checkpoint only inside namespaces the user owns: what `checkpt
      // run` gives the program (unless an administrator's grant covers programs on the host).
      const { grantedCriu } = await import('../engine/grant.js');
      if (privilegeMode() === 'rootless' && grantedCriu() === undefined) {
        const { parseArgs } = await import('./args.js');
        return run(parseArgs(['run', '--', c.command, ...c.args]) as RunnableCommand, started);
      }
      const { execCheckpointable } = await import('../launcher/exec.js');
      const { exitLike } = await import('../launcher/signals.js');
      const st = await execCheckpointable({ command: c.command, args: c.args });
      return exitLike(st);
    }
    case 'signal': {
      const { requestCheckpoint } = await import('../launcher/request.js');
      const r = requestCheckpoint(c.pid, { exit: c.exit });
      if (c.verbose)
        process.stdout.write(
          r.viaAncestor
            ? `checkpt: sent ${r.signal} to ${r.target}, the nearest ancestor of ${c.pid} that handles checkpoint requests\n`
            : `checkpt: sent ${r.signal} to ${r.target}\n`,
        );
      return 0;
    }
    case 'migrate': {
      requireRoot(
        'checkpt migrate',
        "it holds the program's TCP connections with an nftables lock on the host's network",
      );
      const { migrate } = await import('../migrate/index.js');
      const r = await migrate(c.pid, {
        host: c.host,
        port: c.port,
        cert: c.cert,
        key: c.key,
        trust: c.trust,
        ...(c.postCopy ? { postCopy: true } : {}),
      });
      const mib = (n: number): string => (n / 1048576).toFixed(1);
      process.stdout.write(
        r.pagesMs === undefined
          ? `checkpt: migrated pid ${c.pid} to ${c.host}:${c.port}, where it runs as pid ${r.remotePid} (${mib(r.bytes)} MiB, frozen ${r.totalMs} ms, dump ${r.dumpMs} ms)\n`
          : `checkpt: migrated pid ${c.pid} to ${c.host}:${c.port}, where it runs as pid ${r.remotePid} (post-copy: running there ${r.totalMs} ms after the freeze, dump ${r.dumpMs} ms${r.memoryWritten ? ' with the memory written out: the open-file limit is too low to keep it in pipes' : ''}; ${mib(r.pageBytes ?? 0)} MiB of memory followed, all there after ${r.pagesMs} ms)\n`,
      );
      return 0;
    }
    case 'receive': {
      requireRoot(
        'checkpt receive',
        'a migrated program brings its TCP connections, which only root can restore',
      );
      const say = (line: string): void => void process.stdout.write(`${line}\n`);
      const { receive } = await import('../migrate/index.js');
      const r = await receive({
        host: c.host,
        port: c.port,
        dir: c.dir,
        ...(c.hook === undefined ? {} : { hook: c.hook }),
        cert: c.cert,
        key: c.key,
        trust: c.trust,
        say,
      });
      say(`checkpt: receiving on ${c.host}:${r.port}`);
      // Runs until stopped; the copies it resumed run on without it.
      await new Promise<void>((resolve) => {
        for (const s of ['SIGINT', 'SIGTERM'] as const) process.once(s, resolve);
      });
      await r.close();
      return 0;
    }
    case 'setup': {
      const grant = await import('../engine/grant.js');
      if ('revoke' in c) {
        const had = grant.revokeGrant();
        process.stdout.write(
          had
            ? `checkpt: removed the granted CRIU (${grant.grantDir})\n`
            : `checkpt: there was no granted CRIU (${grant.grantDir}); nothing to do\n`,
        );
        return 0;
      }
      const info = grant.installGrant(c.grant, c.tcp);
      process.stdout.write(
        `checkpt: installed ${grant.grantedCriuPath} (a copy of ${info.from}), owned root:${info.group}, mode 0750: only members of ${info.group} can run it.\nIts capabilities, for checkpt()/checkpoint() in, checkpt signal to and checkpt -r of programs started outside checkpt by those members:\n`,
      );
      for (const cap of grant.GRANT_CAPABILITIES.filter((k) => info.capabilities.includes(k.cap)))
        process.stdout.write(`  ${cap.cap}: ${cap.why}\n`);
      if (info.tcp && info.nftables !== true)
        process.stdout.write(
          '  (but CRIU cannot lock the network with nftables here, so TCP connections are still closed in a resumed copy)\n',
        );
      if (!info.tcp)
        process.stdout.write(
          '  (not cap_net_admin: TCP connections are closed in a resumed copy; give --tcp to keep them)\n',
        );
      process.stdout.write(
        `Members can run this CRIU directly too: grant it only to users you trust with these capabilities over their own processes. Remove it with: checkpt setup --revoke\n`,
      );
      return 0;
    }
    case 'build': {
      const { compileNative } = await import('../engine/native.js');
      const { status, parts } = compileNative();
      for (const p of parts)
        process.stdout.write(
          p.found
            ? `ok    ${p.part}: ${p.found.path}\n`
            : `FAIL  ${p.part}: ${p.problem}\n      -> ${p.fix}\n`,
        );
      return status === 0 && parts.every((p) => p.found) ? 0 : 1;
    }
    case 'pack': {
      const { packStandalone } = await import('../engine/pack.js');
      const r = await packStandalone(c.file, c.out);
      process.stdout.write(
        `checkpt: packed ${c.file} into ${c.out} (${r.bytes} bytes; it needs no store)\n`,
      );
      return 0;
    }
    case 'unlock': {
      requireRoot('checkpt unlock', "removing CRIU's nftables table needs CAP_NET_ADMIN");
      const { readImageInfo } = await images();
      const { loadKey } = await import('../image/key.js');
      const { manifestProblem } = await import('../engine/manifest.js');
      const { removeLockTable } = await import('../engine/netlock.js');
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
      const options = {
        detach: c.detach,
        key: c.key,
        pty: c.pty,
        trustFile: c.trust === true,
        // Nothing else writes to the terminal until the copy runs, and the line is gone by then.
        progress: terminalProgress({ style: 'line' }),
      };
      const engine = isOciRef(c.file) ? undefined : await import('../engine/restore.js');
      // The native front has restored the copy already (native/resume-front.c): watched from here.
      const front = engine?.takeFrontHandover();
      const r = !engine
        ? await (await registry()).resumeFromRegistry(c.file, options)
        : front
          ? await engine.adoptFront(front, c.file, options)
          : await engine.resume(c.file, options);
      started();
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
      if (c.every !== undefined || c.restart !== undefined) {
        const { runSupervised } = await import('./restart.js');
        return runSupervised({ ...c, keep: c.keep ?? 3 });
      }
      const held = holdRequests({ stopping: true });
      const { runProgram } = await import('../launcher/run.js');
      const r = await runProgram({
        command: c.command,
        args: c.args,
        key: c.key,
        pty: c.pty,
        ...(c.file === undefined ? {} : { file: c.file }),
        ...(c.privateNet === true ? { privateNet: true } : {}),
        ...(c.publish === undefined ? {} : { publish: c.publish }),
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

/** `checkpt inspect`: `shown` is the name printed (the reference, for a pulled file). */
async function inspect(c: Extract<Command, { cmd: 'inspect' }>, shown = c.file): Promise<number> {
  const { readImageHeader, readImageInfo, verifyImage } = await images();
  const { loadKey } = await import('../image/key.js');
  const { manifestProblem } = await import('../engine/manifest.js');
  const { formatHeader, formatInspect } = await import('./inspect.js');
  const key = loadKey();
  const head = await readImageHeader(c.file);
  // Without the key only the header can be shown; --verify then fails with what to do.
  if (head.encrypted && key === undefined && !c.verify) {
    process.stdout.write(
      c.json
        ? JSON.stringify({ file: shown, ...head }, null, 2) + '\n'
        : formatHeader(shown, head) + '\n',
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
      ? JSON.stringify({ file: shown, ...info }, null, 2) + '\n'
      : formatInspect(shown, info) + '\n',
  );
  return 0;
}

/**
 * Runs the command and sets the exit status; a CheckptError is reported and exits 125. `started`
 * is called once a command that goes on running (a resume's supervision) has done its start.
 */
export async function runCommand(
  command: RunnableCommand,
  started: () => void = () => undefined,
): Promise<void> {
  trace('main');
  try {
    // A bad CHECKPT_* variable stops the command before it does anything.
    checkConfig(PUBLIC_VARIABLES);
    process.exitCode = await run(command, started);
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
