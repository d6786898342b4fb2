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
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';

export const POST_DUMP_SOCK = 'post-dump.sock';

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
  const path = join(workDir, POST_DUMP_SOCK);
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  let hook: Socket | undefined;
  const dumped = new Promise<void>((resolve) => {
    server.once('connection', (c) => {
      c.on('error', () => undefined);
      c.once('data', () => {
        hook = c;
        resolve();
      });
    });
  });
  return {
    path,
    dumped,
    verdict: (kept) => hook?.end(kept ? '1' : '0'),
    close: () => server.close(),
  };
}
