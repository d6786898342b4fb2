/**
 * Checkpoints a program from outside, for programs that do not import checkpt (a Python loop,
 * a C program, a Node program that never asked): CRIU runs inside the program's namespaces,
 * and the program goes on running (or, for "checkpoint and exit", is stopped once the file is
 * durable, and only then).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { hostname, release } from 'node:os';
import { join } from 'node:path';
import { CheckptError } from '../api/errors.js';
import { checkTarget } from '../api/target.js';
import { compressImages, compressionWanted } from '../image/compress.js';
import { dirBytes, writeImage, FORMAT_VERSION } from '../image/format.js';
import { loadKey } from '../image/key.js';
import {
  cmdline,
  linkOf,
  procStatus,
  processTree,
  rssBytes,
  signalQuietly,
  treeUsesIoUring,
} from '../launcher/procfs.js';
import { criuVersion, dump } from './criu.js';
import type { Manifest } from './job.js';
import { makeStagingDir } from './staging.js';
import { describeStdio, externalSockets } from './stdio.js';
import { requireWholeProgram } from './whole-program.js';

export interface OutsideDumpRequest {
  /** The program's pid on the host. */
  pid: number;
  /** Its pid in its own namespace, as the image records it. */
  innerPid: number;
  /** A host pid in the program's PID and mount namespaces (checkpt's init there). */
  nsPid: number;
  target: string;
  /** "Checkpoint and exit": the program never runs past the checkpoint; it is killed once the file is durable. */
  exit: boolean;
  generation: number;
  template: string;
  timeoutMs: number;
}

export interface OutsideDumpResult {
  bytes: number;
  dumpMs: number;
}

export async function dumpFromOutside(req: OutsideDumpRequest): Promise<OutsideDumpResult> {
  const version = criuVersion();
  checkTarget(req.target);
  // Before anything is dumped: a bad key file must not cost a frozen program.
  const key = loadKey();
  const status = procStatus(req.pid);
  requireWholeProgram(req.nsPid, req.innerPid, status ? req.pid : undefined);
  if (!status)
    throw new CheckptError(
      'EDUMP',
      `The program (pid ${req.pid}) has already ended; nothing to checkpoint.`,
    );
  const running = processTree(req.pid);
  const uring = treeUsesIoUring(running);
  if (uring !== undefined)
    throw new CheckptError(
      'EIOURING',
      `Process ${uring} of the program uses io_uring, which CRIU cannot checkpoint. It was started without checkpt's LD_PRELOAD (a program that resets LD_PRELOAD?), or set sysctl kernel.io_uring_disabled=2. The program keeps running.`,
    );
  const rss = running.reduce((sum, p) => sum + rssBytes(procStatus(p)), 0);
  const workDir = makeStagingDir('dump', rss);
  let stopped = false;
  let tree: number[] = [];
  try {
    const imagesDir = join(workDir, 'images');
    mkdirSync(imagesDir, { mode: 0o700 });
    const stdio = describeStdio(req.pid);
    const argv = cmdline(req.pid);
    const t0 = process.hrtime.bigint();
    await dump({
      pid: req.innerPid,
      enter: req.nsPid,
      imagesDir,
      workDir,
      externalUnix: externalSockets(stdio),
      timeoutMs: req.timeoutMs,
      leave: req.exit ? 'stopped' : 'running',
    });
    stopped = req.exit;
    // Only now, with the tree stopped, is the list of its processes final (a shell forks on).
    if (stopped) {
      tree = processTree(req.pid);
      // Stopped, the namespace can no longer change: what is not in the tree is not in the image.
      requireWholeProgram(req.nsPid, req.innerPid, req.pid);
    }
    const dumpMs = Math.round(Number(process.hrtime.bigint() - t0) / 1e6);
    const manifest: Manifest = {
      formatVersion: FORMAT_VERSION,
      createdAt: new Date().toISOString(),
      host: hostname(),
      argv,
      execPath: linkOf(req.pid, 'exe'),
      cwd: linkOf(req.pid, 'cwd'),
      pid: req.innerPid,
      uid: Number(status.Uid?.split(/\s+/)[0] ?? 0),
      kernel: release(),
      rssBytes: rssBytes(status),
      stdio,
      generation: req.generation,
      template: req.template,
      criu: version.text,
      imageBytes: dirBytes(imagesDir),
      dumpMs,
    };
    if (compressionWanted('outside') && (await compressImages(imagesDir)) > 0) {
      manifest.compression = 'zstd';
      manifest.packedBytes = dirBytes(imagesDir);
    }
    const { bytes } = await writeImage(
      req.target,
      manifest as unknown as Record<string, unknown>,
      { dir: imagesDir },
      { key },
    );
    if (stopped) for (const pid of tree) signalQuietly(pid, 'SIGKILL');
    stopped = false;
    return { bytes, dumpMs };
  } catch (e) {
    if (e instanceof CheckptError) throw e;
    throw new CheckptError(
      'EIO',
      `Writing the checkpoint failed: ${(e as Error).message}. Nothing was written to ${req.target}; the program keeps running.`,
      { cause: e, path: req.target },
    );
  } finally {
    // A failed "checkpoint and exit" must not leave the program frozen.
    if (stopped) for (const pid of tree) signalQuietly(pid, 'SIGCONT');
    key?.fill(0);
    rmSync(workDir, { recursive: true, force: true });
  }
}
