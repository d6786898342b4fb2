import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { imageSockets } from './sockets.js';
import { lockToCheck } from './netlock.js';
import { inheritPlan } from './stdio.js';
import type { Manifest } from './job.js';

/**
 * The resume front (native/resume-front.c) restores a checkpoint before Node has started: what it
 * needs from the manifest and the images is decided here, when the checkpoint is written, as the
 * manifest's `front`: space-separated words, `v1` first, then `key=value` (a key may repeat):
 *
 *   pid=N gen=N tcp=closed|est [mount=DIR fifo=PATH] [in=FD:KEY]...
 *   [lockfamily=F lockname=N lockat=OFFSET] [listen=PORT | udp=PORT | conn=LPORT:RPORT:LHEX:RHEX]...
 *
 * `in`: CRIU's --inherit-fd keys (stdio.ts inheritPlan); `lock*`: the nftables table and the offset
 * of inventory.img's lock method (netlock.ts lockToCheck); `listen`, `udp`, `conn`: the image's
 * listening and bound sockets and its connections (addresses as /proc/net/tcp prints them), which
 * the front compares with the host's as sockets.ts planSockets does, or leaves the resume to Node.
 * Values use only RECIPE_CHARS, so the front finds the recipe in the manifest's JSON as it is. A
 * checkpoint the front cannot restore as Node would has no recipe: one with a private network or
 * published ports, a terminal, made without root.
 */
export const FRONT_RECIPE = 'v1';

const RECIPE_CHARS = /^[A-Za-z0-9._/:@+=[\]-]+$/;

export function frontRecipe(manifest: Manifest, imagesDir: string): string | undefined {
  if (manifest.net === 'private' || manifest.granted || manifest.rootless) return undefined;
  if ((manifest.publish ?? []).length > 0) return undefined;
  if (manifest.stdio.some((d) => d.kind === 'tty')) return undefined;
  const words = [
    FRONT_RECIPE,
    `pid=${manifest.pid}`,
    `gen=${manifest.generation}`,
    `tcp=${manifest.tcp === 'closed' ? 'closed' : 'est'}`,
  ];
  if (manifest.control)
    words.push(`mount=${manifest.control.mount}`, `fifo=${manifest.control.fifo}`);
  for (const { fd, key } of inheritPlan(manifest.stdio)) words.push(`in=${fd}:${key}`);
  const lock = lockToCheck(imagesDir);
  if (lock) {
    // The table as nftables names it, "FAMILY NAME": two words here.
    const table = /^(\w+) (\S+)$/.exec(lock.table);
    if (!table) return undefined;
    words.push(`lockfamily=${table[1]}`, `lockname=${table[2]}`, `lockat=${lock.offset}`);
  }
  let files: Buffer | undefined;
  try {
    files = readFileSync(join(imagesDir, 'files.img'));
  } catch {
    files = undefined;
  }
  if (files) {
    let sockets;
    try {
      sockets = imageSockets(files);
    } catch {
      return undefined;
    }
    const ports = new Set<string>();
    for (const s of sockets)
      if (s.kind === 'tcp-listen') ports.add(`listen=${s.local.port}`);
      else if (s.kind === 'udp' && s.local.port !== 0) ports.add(`udp=${s.local.port}`);
      else if (s.kind === 'tcp-established')
        ports.add(`conn=${s.local.port}:${s.remote.port}:${s.hex.local}:${s.hex.remote}`);
    words.push(...ports);
  }
  return words.every((w) => RECIPE_CHARS.test(w)) ? words.join(' ') : undefined;
}
