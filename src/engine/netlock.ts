/**
 * CRIU's network lock: whether nftables locking works here, and which table a dump left behind.
 * While a program is frozen CRIU puts each TCP connection in repair mode and drops its packets
 * through a table `inet CRIU-<run id>`; a "checkpoint and exit" leaves that table in place so the
 * connections die silently and come back on restore, which removes it.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { criuEnv } from './criu.js';
import { criuPath, helperPath, requireHelper } from './paths.js';
import { CheckptError } from '../api/errors.js';

let cached: boolean | undefined;

/** `criu check --feature network_lock_nftables`, once per process (the kernel does not change). */
export function networkLockWorks(): boolean {
  cached ??=
    spawnSync(criuPath, ['check', '--feature', 'network_lock_nftables'], {
      env: criuEnv(),
      stdio: 'ignore',
      timeout: 30_000,
    }).status === 0;
  return cached;
}

export const NO_LOCK_WARNING =
  'checkpt: warning: CRIU cannot lock the network with nftables here (kernel without nf_tables?): TCP connections are not kept, they are closed in the resumed copy (listening sockets are kept).';

const TABLE_NAME_MAX = 31;

/** The table a dump's connections are locked by: its run id is in inventory.img (a protobuf string). */
export function lockTableOf(imagesDir: string): string | undefined {
  let bytes: Buffer;
  try {
    bytes = readFileSync(join(imagesDir, 'inventory.img'));
  } catch {
    return undefined;
  }
  const id = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/.exec(
    bytes.toString('latin1'),
  )?.[0];
  // CRIU formats the name into 32 bytes (netfilter.c): the run id is cut to fit.
  return id === undefined ? undefined : `inet CRIU-${id}`.slice(0, TABLE_NAME_MAX);
}

/**
 * Deletes a lock table a checkpoint-and-exit left (checkpt-helper unlock, through libnftables):
 * the connections it held silent then get a reset from the kernel the next time their peers send.
 */
export function removeLockTable(table: string): 'removed' | 'absent' {
  requireHelper();
  const r = spawnSync(helperPath, ['unlock', table], { encoding: 'utf8', timeout: 30_000 });
  if (r.status === 0) return 'removed';
  if (r.status === 3) return 'absent';
  throw new CheckptError(
    process.getuid?.() === 0 ? 'EIO' : 'EPERM',
    `Could not remove the network lock ${table}: ${(r.stderr || r.error?.message || `status ${r.status}`).trim()}. Removing it needs root (CAP_NET_ADMIN).`,
  );
}

/** Whether a dump holds established TCP connections (CRIU writes one tcp-stream image for each). */
export function dumpedConnections(imagesDir: string): boolean {
  return readdirSync(imagesDir).some((n) => n.startsWith('tcp-stream-'));
}
