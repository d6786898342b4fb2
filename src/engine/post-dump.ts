/**
 * checkpt's half of a checkpoint-and-exit's handshake with CRIU's post-dump step
 * (native/checkpt-helper.c, post_dump_verdict), for both the in-process path (dump-worker.ts: the
 * dump front asks when CRIU notifies it over its RPC) and checkpoints taken from outside
 * (outside.ts: CRIU runs the helper as its post-dump action script). That step comes once the
 * images are complete, with the program still frozen and its connections in repair mode and
 * locked; it connects to this socket, says "dumped" and waits for one byte. '1' (the file is durable) leaves the
 * program stopped with its sockets in repair mode, so its end sends peers nothing; anything else,
 * or this side's death (end-of-file), makes CRIU roll back: network unlocked, program resumed,
 * connections intact. The socket lives in the 0700 staging directory: only root reaches it.
 */
import type { Socket } from 'node:net';
import { net } from '../common/builtin.js';
import { join } from 'node:path';

export const POST_DUMP_SOCK = 'post-dump.sock';
/** A small image's restore: CRIU's post-restore step waits on it (native/checkpt-helper.c). */
export const HOLD_SOCK = 'hold.sock';

/** One of CRIU's steps, run as checkpt's action script, waiting on checkpt's socket for a verdict. */
export interface ScriptHook {
  path: string;
  /** Settles once the script has connected and said its step. */
  greeted: Promise<void>;
  /** '1' (go on) or '0' (CRIU fails the step), now or as soon as the script is there. */
  verdict(ok: boolean): void;
  close(): void;
}

/** Listens at `path` (in the 0700 staging directory: only root reaches it) for one script. */
export async function listenForScript(path: string): Promise<ScriptHook> {
  const server = net().createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  let hook: Socket | undefined;
  let early: boolean | undefined;
  const greeted = new Promise<void>((resolve) => {
    server.once('connection', (c) => {
      c.on('error', () => undefined);
      c.once('data', () => {
        hook = c;
        if (early !== undefined) c.end(early ? '1' : '0');
        resolve();
      });
    });
  });
  return {
    path,
    greeted,
    verdict: (ok) => {
      if (hook) hook.end(ok ? '1' : '0');
      else early ??= ok;
    },
    close: () => server.close(),
  };
}

export interface PostDump {
  /** The socket's path, for CRIU's environment (CHECKPT_POST_DUMP_SOCK). */
  path: string;
  /** Settles once CRIU's post-dump script has said "dumped": the images are complete. */
  dumped: Promise<void>;
  /** Tells the waiting script whether the checkpoint was kept. */
  verdict(kept: boolean): void;
  close(): void;
}

/** Listens in the staging directory; the script retries until it is there (the worker starts late). */
export async function listenForPostDump(workDir: string): Promise<PostDump> {
  const hook = await listenForScript(join(workDir, POST_DUMP_SOCK));
  return { path: hook.path, dumped: hook.greeted, verdict: hook.verdict, close: hook.close };
}
