/**
 * CRIU's network lock on the host's network namespace: during a dump it puts the program's TCP
 * connections into the set of an nftables table `inet CRIU-<run id>` that drops their packets. A
 * checkpoint-and-exit leaves the table for `criu restore` to delete (the connections must stay
 * silent until the copy has them). With no connection in the image it holds nothing, and a file
 * never resumed would leave it behind for good: then it is deleted at once.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeMessage } from './criu-image.js';
import { helperPath } from './paths.js';
import { imageSockets } from './sockets.js';

const INVENTORY_MAGIC = 0x58313116;
const DUMP_CRIU_RUN_ID = 13;
/** CRIU formats "inet CRIU-<run id>" into 32 bytes: the name is cut after 26 characters. */
const TABLE_NAME_MAX = 32 - 1 - 'inet '.length;

/** The lock table's name from inventory.img (one magic number, then one message), if it has one. */
export function lockTableName(inventory: Buffer): string | undefined {
  if (inventory.length < 8 || inventory.readUInt32LE(0) !== INVENTORY_MAGIC) return undefined;
  const len = inventory.readUInt32LE(4);
  if (8 + len > inventory.length) return undefined;
  const id = decodeMessage(inventory.subarray(8, 8 + len)).find(
    (f) => f.no === DUMP_CRIU_RUN_ID && f.wire === 2,
  );
  return id ? `CRIU-${id.bytes.toString('utf8')}`.slice(0, TABLE_NAME_MAX) : undefined;
}

/** Deletes the dump's lock table when the image has no TCP connection for it to hold. */
export function dropIdleLock(imagesDir: string): void {
  try {
    const socks = imageSockets(readFileSync(join(imagesDir, 'files.img')));
    if (socks.some((s) => s.kind === 'tcp-established')) return;
    const name = lockTableName(readFileSync(join(imagesDir, 'inventory.img')));
    if (name) spawnSync(helperPath, ['nft-delete-table', name], { stdio: 'ignore', timeout: 5000 });
  } catch {
    // An empty table left behind drops nothing; never a reason to fail a written checkpoint.
  }
}
