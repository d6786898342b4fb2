import { join } from 'node:path';
import type { StdioDescriptor } from './stdio.js';

/** Where a dump job's CRIU writes its images: the worker packs them from there. */
export function imagesDirOf(workDir: string): string {
  return join(workDir, 'images');
}

/** What the process hands its dump worker: everything needed to dump, pack and report. */
export interface DumpJob {
  pid: number;
  target: string;
  /** The temporary name beside the target the worker writes to; the process removes it if the worker dies. */
  tmp: string;
  workDir: string;
  timeoutMs: number;
  /** Compress the memory images before packing (zstd; src/image/compress.ts). */
  compress: boolean;
  /** The program runs again while the image is packed: packing must not take its CPU. */
  background: boolean;
  manifest: ManifestBase;
  /** A rotation's chunk store beside the target: the memory goes there (image/store.ts). */
  store?: string;
  /** The key file to seal the checkpoint with (absolute; CHECKPT_KEY_FILE when the program asked). */
  keyFile?: string;
  /**
   * Checkpoint and exit: CRIU leaves the program stopped, its connections in repair mode and
   * locked, and waits in its post-dump script (./post-dump.ts) until the file is durable.
   */
  exit?: boolean;
  /** CRIU's run id for this dump (DumpRequest.runId): its lock table's name. */
  runId: string;
  /** What CRIU allocates for the pages before the freeze (DumpRequest.spareBytes). */
  spareBytes?: number;
}

/** The manifest fields the process knows; the worker adds CRIU's version and the sizes. */
export interface ManifestBase {
  formatVersion: number;
  createdAt: string;
  host: string;
  argv: string[];
  execPath: string;
  cwd: string;
  pid: number;
  uid: number;
  /** Node's version; absent for a program dumped from outside by `checkpt run`. */
  node?: string;
  kernel: string;
  rssBytes: number;
  heapUsedBytes?: number;
  stdio: StdioDescriptor[];
  /** The FIFO a program that checkpointed itself waits on; absent when it was dumped from outside. */
  control?: { mount: string; fifo: string };
  /** The file name template of checkpoints taken from outside, kept for the resumed copy's. */
  template?: string;
  /** How many restores this process descends from (0 for an original). */
  generation: number;
  /**
   * 'takeover': checkpt's network resource runs in the program, so a copy resumed while its
   * listening ports are busy gets ephemeral ones and takes its own over when they free.
   */
  network?: 'takeover';
  /** 'closed': dumped without a network lock, connections recorded as closed (CRIU's --tcp-close). */
  tcp?: 'closed';
  /** The nftables table CRIU left locking this checkpoint's connections (checkpoint and exit). */
  networkLock?: string;
  /** Made without root, in user namespaces of `uid`'s own: it resumes only as that user (docs/ROOTLESS.md). */
  rootless?: true;
  /**
   * With `rootless`: made on the host by the administrator's granted CRIU (src/engine/grant.ts),
   * not in namespaces of checkpt's; it resumes on the host, as `uid`, with that CRIU again.
   */
  granted?: true;
  /** 'private': run with a network namespace of its own (`checkpt run --private-net`); each copy gets a new one. */
  net?: 'private';
  /** With `net: 'private'`: the host ports forwarded into it (ADDR:HOSTPORT:PORT), forwarded again for each copy. */
  publish?: string[];
}

export interface Manifest extends ManifestBase {
  criu: string;
  /** CRIU's images before compression. */
  imageBytes: number;
  /** How the memory images are compressed, when they are. */
  compression?: 'zstd';
  /** The images as packed, after compression (imageBytes when they are not compressed). */
  packedBytes?: number;
  dumpMs: number;
  /** How long CRIU kept the program frozen (its stats-dump's frozen_time), when it said. */
  frozenMs?: number;
  /** What the native resume front needs to restore it without Node (src/engine/front.ts). */
  front?: string;
}

/** Lines on the control channel, one JSON object each. */
export type ControlMessage =
  | { t: 'freeze' }
  | { t: 'dumped' }
  /** The dump front's last word when the program packs the file itself (dump-end.ts). */
  | { t: 'front'; said: string }
  | { t: 'ok'; bytes: number; file: string }
  | { t: 'err'; code: string; message: string; logTail?: string; errno?: string }
  /** `portsKept`: the restore moved no listener to a spare port (the native front never does). */
  | { t: 'restored'; generation: number; image: string; restoredAt: string; portsKept?: boolean };
