/**
 * The worker's half of a checkpoint-and-exit's handshake with CRIU's post-dump script
 * (native/checkpt-helper.c, post_dump_hook). CRIU runs the script once the images are complete,
 * with the program still frozen and its connections locked; the script says so with a file in the
 * work directory and waits for the verdict file. "ok" (the checkpoint is durable) leaves the
 * program stopped with its sockets in repair mode, so its exit sends peers nothing; anything else
 * makes CRIU roll back: network unlocked, program resumed, connections intact.
 */
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const READY_FILE = 'post-dump-ready';
export const VERDICT_FILE = 'post-dump-verdict';

/** Resolves true once the script has started, false once `stop` is aborted first. */
export async function imagesReady(workDir: string, stop: AbortSignal): Promise<boolean> {
  const ready = join(workDir, READY_FILE);
  while (!stop.aborted) {
    if (existsSync(ready)) return true;
    await new Promise((r) => setTimeout(r, 5));
  }
  return false;
}

/** Written whole under another name and renamed: the script never reads half a verdict. */
export function giveVerdict(workDir: string, ok: boolean): void {
  const tmp = join(workDir, `${VERDICT_FILE}.tmp`);
  writeFileSync(tmp, ok ? 'ok\n' : 'fail\n', { mode: 0o600 });
  renameSync(tmp, join(workDir, VERDICT_FILE));
}
