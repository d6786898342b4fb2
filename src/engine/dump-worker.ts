/**
 * The dump worker: started by checkpt() outside the process's tree (setsid -f), it waits until
 * the process is blocked on its control FIFO, has CRIU dump it, packs the image into one file
 * and reports on fd 3, the FIFO's write end. If it dies, the process reads EOF and throws.
 */
import { readFileSync, rmSync, writeSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckptError } from '../api/errors.js';
import { criuVersion, dump } from './criu.js';
import type { ControlMessage, DumpJob, Manifest } from './job.js';
import { writeImage } from '../image/format.js';

const CONTROL_FD = 3;

function send(msg: ControlMessage): void {
  writeSync(CONTROL_FD, JSON.stringify(msg) + '\n');
}

/** Dumping before the process sits in its read would make a restore resume somewhere else. */
async function waitUntilBlocked(pid: number, fd: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const want = `0 0x${fd.toString(16)} `;
  for (let delay = 1; ; delay = Math.min(delay * 2, 20)) {
    let line = '';
    try {
      line = readFileSync(`/proc/${pid}/syscall`, 'utf8');
    } catch (e) {
      throw new CheckptError('EHELPER', `Process ${pid} vanished before it could be dumped.`, {
        cause: e,
      });
    }
    if (line.startsWith(want)) return;
    if (Date.now() > deadline)
      throw new CheckptError(
        'ETIMEOUT',
        `Process ${pid} did not wait on its checkpoint channel within ${timeoutMs} ms (it is in: ${line.trim()}).`,
      );
    await sleep(delay);
  }
}

function dirBytes(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) total += statSync(join(dir, f)).size;
  return total;
}

async function main(): Promise<void> {
  const jobFile = process.argv[2];
  if (!jobFile) throw new Error('usage: dump-worker JOB.json');
  const job = JSON.parse(readFileSync(jobFile, 'utf8')) as DumpJob;
  try {
    const version = criuVersion();
    await waitUntilBlocked(job.pid, job.waitFd, job.timeoutMs);
    const imagesDir = join(job.workDir, 'images');
    mkdirSync(imagesDir, { mode: 0o700 });
    const external = job.manifest.stdio
      .filter((d) => d.kind === 'socket' && d.inode !== undefined)
      .map((d) => d.inode as number);
    const t0 = process.hrtime.bigint();
    await dump({
      pid: job.pid,
      imagesDir,
      workDir: job.workDir,
      externalUnix: external,
      timeoutMs: job.timeoutMs,
    });
    const dumpMs = Number(process.hrtime.bigint() - t0) / 1e6;
    if (job.mode === 'async') send({ t: 'dumped' });
    const manifest: Manifest = {
      ...job.manifest,
      criu: version.text,
      imageBytes: dirBytes(imagesDir),
      dumpMs: Math.round(dumpMs),
    };
    const { bytes } = await writeImage(job.target, manifest as unknown as Record<string, unknown>, {
      dir: imagesDir,
    });
    send({ t: 'ok', bytes, file: job.target });
  } catch (e) {
    const err =
      e instanceof CheckptError
        ? e
        : new CheckptError(
            'EIO',
            `Writing the checkpoint failed: ${(e as Error).message}. Nothing was written to ${job.target}; the program keeps running.`,
            { cause: e },
          );
    const msg: ControlMessage = { t: 'err', code: err.code, message: err.message };
    if (err.logTail !== undefined) msg.logTail = err.logTail;
    send(msg);
  } finally {
    rmSync(job.workDir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
