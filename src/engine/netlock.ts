/**
 * CRIU's network lock: whether nftables locking works here, and which table a dump left behind.
 * While a program is frozen CRIU puts each TCP connection in repair mode and drops its packets
 * through a table `inet CRIU-<run id>`; a "checkpoint and exit" leaves that table in place so the
 * connections die silently and come back on restore, which removes it.
 */
import { childProcess } from '../common/builtin.js';
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { check, type TcpMode } from './criu.js';
import { decodeMessage } from './criu-image.js';
import { helperPath } from './native.js';
import { criuPath, runDir } from './paths.js';
import { grantedCriuPath, grantedTcp } from './grant.js';
import { hostSockets, parseProcNet, type Endpoint } from './sockets.js';
import { CheckptError } from '../common/errors.js';
import { socketInodes } from '../common/procfs.js';
import { rootless } from '../common/privilege.js';

let cached: boolean | undefined;

/**
 * `criu check --feature network_lock_nftables` (about 50 ms), once per CRIU binary and kernel: the
 * answer is kept in the run directory (a tmpfs, gone at reboot), so only the first checkpoint on a
 * machine pays for it.
 */
export function networkLockWorks(): boolean {
  if (cached !== undefined) return cached;
  // Without root the program shares the host's network namespace, which the user does not own;
  // only a CRIU granted with --tcp (cap_net_admin) may lock and repair there.
  // (checked by root when it granted: CRIU's check itself needs more than the grant gives).
  if (rootless()) return (cached = grantedTcp());
  const bin = grantedTcp() ? grantedCriuPath : criuPath;
  let key = `${bin} ${release()}`;
  try {
    const st = statSync(bin);
    key += ` ${st.ino} ${st.mtimeMs}`;
  } catch {
    // 'criu' on the PATH: the path and the kernel are the key
  }
  const file = join(runDir, 'netlock.json');
  try {
    const saved = JSON.parse(readFileSync(file, 'utf8')) as { key?: string; works?: boolean };
    if (saved.key === key && typeof saved.works === 'boolean') return (cached = saved.works);
  } catch {
    // not known yet
  }
  cached = check('network_lock_nftables', 30_000).ok;
  try {
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ key, works: cached }), { mode: 0o600 });
    renameSync(tmp, file);
  } catch {
    // an unwritable run directory only costs the next process the same 50 ms
  }
  return cached;
}

const NFT_MISSING_WARNING =
  'checkpt: warning: CRIU cannot lock the network with nftables here (kernel without nf_tables?): TCP connections are not kept, they are closed in the resumed copy (listening sockets are kept).';
const ROOTLESS_TCP_WARNING =
  'checkpt: warning: without root, TCP connections are not kept: they are closed in the resumed copy (listening sockets are kept). Run as root to keep them.';

/**
 * The one-line warning for a checkpoint of `pids` whose TCP connections are recorded closed;
 * without root (the expected case there) only when they hold an established connection.
 */
export function noLockWarning(pids: readonly number[]): string | undefined {
  if (!rootless()) return NFT_MISSING_WARNING;
  const mine = new Set(pids.flatMap((p) => [...socketInodes(p)]));
  const connected = hostSockets().some(
    (s) => s.proto === 'tcp' && s.state === TCP_ESTABLISHED && mine.has(s.inode),
  );
  return connected ? ROOTLESS_TCP_WARNING : undefined;
}

const TCP_ESTABLISHED = 1;

/**
 * How a dump keeps TCP connections (tcpDumpArgs): without root in a network namespace of the
 * program's own (`checkpt run --private-net`), kept without a lock; else locked, where nftables works.
 */
export function tcpModeFor(privateNet: boolean): TcpMode {
  if (privateNet && rootless()) return 'unlocked';
  return networkLockWorks() ? 'established' : 'close';
}

const INVENTORY_MAGIC = 0x58313116;
const DUMP_CRIU_RUN_ID = 13;
/** CRIU formats "inet CRIU-<run id>" into 32 bytes (netfilter.c): the run id is cut to fit. */
const TABLE_NAME_MAX = 31;

/** The lock table's name from inventory.img (one magic number, then one message), if it has one. */
export function lockTableName(inventory: Buffer): string | undefined {
  if (inventory.length < 8 || inventory.readUInt32LE(0) !== INVENTORY_MAGIC) return undefined;
  const len = inventory.readUInt32LE(4);
  if (8 + len > inventory.length) return undefined;
  const id = decodeMessage(inventory.subarray(8, 8 + len)).find(
    (f) => f.no === DUMP_CRIU_RUN_ID && f.wire === 2,
  );
  return id ? `inet CRIU-${id.bytes.toString('utf8')}`.slice(0, TABLE_NAME_MAX) : undefined;
}

/** inventory_entry.network_lock_method (criu/include/cr_options.h: iptables 0, nftables 1, skip 2). */
const NETWORK_LOCK_METHOD = 11;
const NETWORK_LOCK_NFTABLES = 1;
const NETWORK_LOCK_SKIP = 2;

/** Where inventory.img says its lock method: the file, its bytes and the varint's offset. */
function lockMethodOf(
  imagesDir: string,
): { path: string; inventory: Buffer; offset: number; method: number } | undefined {
  const path = join(imagesDir, 'inventory.img');
  let inventory: Buffer;
  try {
    inventory = readFileSync(path);
  } catch {
    return undefined; // CRIU's restore says what is wrong with the images
  }
  if (inventory.length < 8 || inventory.readUInt32LE(0) !== INVENTORY_MAGIC) return undefined;
  const len = inventory.readUInt32LE(4);
  if (8 + len > inventory.length) return undefined;
  const method = decodeMessage(inventory.subarray(8, 8 + len)).find(
    (f) => f.no === NETWORK_LOCK_METHOD && f.wire === 0,
  );
  // A one-byte varint (0-2), rewritten where it is; anything else is not CRIU's today.
  if (!method || method.bytes.length !== 1) return undefined;
  const offset = method.bytes.byteOffset - inventory.byteOffset;
  return { path, inventory, offset, method: method.int };
}

/**
 * Marks inventory.img's network lock "skip", in place: `criu restore` takes the method from the
 * dump (it ignores --network-lock) and, for nftables, deletes the dump's lock table, an `nft` run
 * of 13-18 ms while the restored program waits. A migrated program's table is on the host it came
 * from, which removes it itself; a private network namespace is new for each copy.
 * Whether it changed anything.
 */
export function skipLockRemoval(imagesDir: string): boolean {
  const at = lockMethodOf(imagesDir);
  if (!at || at.method === NETWORK_LOCK_SKIP) return false;
  at.inventory[at.offset] = NETWORK_LOCK_SKIP;
  writeFileSync(at.path, at.inventory);
  return true;
}

/**
 * For a restore on the host's network: the helper's options that mark the lock "skip" when the
 * dump's table is gone by then (checkpt-helper init --lock-table, native/nft-lock.h). Only a
 * checkpoint-and-exit that held connections leaves its table, until a restore removes it.
 */
export function lockCheckArgs(imagesDir: string): string[] {
  const lock = lockToCheck(imagesDir);
  return lock === undefined
    ? []
    : ['--lock-table', lock.table, '--lock-method-at', `${lock.offset}:${lock.path}`];
}

/**
 * The nftables table of the dump's lock and where inventory.img says its method (for
 * lockCheckArgs, and the resume front's recipe: src/engine/front.ts); undefined without one.
 */
export function lockToCheck(
  imagesDir: string,
): { table: string; offset: number; path: string } | undefined {
  const at = lockMethodOf(imagesDir);
  const table = at && at.method === NETWORK_LOCK_NFTABLES ? lockTableName(at.inventory) : undefined;
  return table === undefined || at === undefined
    ? undefined
    : { table, offset: at.offset, path: at.path };
}

/** The table a dump's connections are locked by, from its inventory.img. */
export function lockTableOf(imagesDir: string): string | undefined {
  try {
    return lockTableName(readFileSync(join(imagesDir, 'inventory.img')));
  } catch {
    return undefined;
  }
}

/**
 * Deletes a lock table a checkpoint-and-exit left (checkpt-helper unlock, through libnftables):
 * the connections it held silent then get a reset from the kernel the next time their peers send.
 */
export function removeLockTable(table: string, netnsOf?: number): 'removed' | 'absent' {
  const r = childProcess().spawnSync(...inNetns(netnsOf, ['unlock', table]), {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status === 0) return 'removed';
  if (r.status === 3) return 'absent';
  throw new CheckptError(
    process.getuid?.() === 0 ? 'EIO' : 'EPERM',
    `Could not remove the network lock ${table}: ${(r.stderr || r.error?.message || `status ${r.status}`).trim()}. Removing it needs root (CAP_NET_ADMIN).`,
  );
}

/** The helper with `args`, in the network namespace of process `netnsOf` if given. */
function inNetns(netnsOf: number | undefined, args: string[]): [string, string[]] {
  if (netnsOf === undefined) return [helperPath(), args];
  return ['nsenter', ['-t', String(netnsOf), '-n', '--', helperPath(), ...args]];
}

/** Whether a dump holds established TCP connections (CRIU writes one tcp-stream image for each). */
export function dumpedConnections(imagesDir: string): boolean {
  return readdirSync(imagesDir).some((n) => n.startsWith('tcp-stream-'));
}

export interface DumpLock {
  table: string;
  /** It holds connections: it must stay until a restore takes them over (or `checkpt unlock`). */
  holds: boolean;
}

/** The lock table a dump made, if any, and whether it holds connections. */
export function dumpLock(imagesDir: string): DumpLock | undefined {
  const table = lockTableOf(imagesDir);
  return table === undefined ? undefined : { table, holds: dumpedConnections(imagesDir) };
}

/**
 * After a kept checkpoint-and-exit: a table holding no connection would be left behind for good by
 * a file never resumed, so it goes at once.
 */
export function dropEmptyLock(lock: DumpLock | undefined): void {
  if (lock === undefined || lock.holds) return;
  try {
    removeLockTable(lock.table);
  } catch {
    // An empty table drops nothing; never a reason to fail a written checkpoint.
  }
}

const key = (a: Endpoint, b: Endpoint): string => `${a.address} ${a.port} ${b.address} ${b.port}`;

/** The connected TCP sockets of these processes, each in both directions (CRIU locks both). */
export function connectionsOf(pids: readonly number[]): Set<string> {
  const out = new Set<string>();
  for (const pid of pids) {
    const inodes = socketInodes(pid);
    if (inodes.size === 0) continue;
    for (const n of ['tcp', 'tcp6']) {
      let text = '';
      try {
        text = readFileSync(`/proc/${pid}/net/${n}`, 'utf8');
      } catch {
        continue;
      }
      for (const s of parseProcNet(text, 'tcp')) {
        // 0A listening, 07 closed: CRIU locks neither
        if (s.state === 0x0a || s.state === 0x07 || !inodes.has(s.inode)) continue;
        out.add(key(s.local, s.remote)).add(key(s.remote, s.local));
      }
    }
  }
  return out;
}

interface NftObject {
  table?: { family?: string; name?: string };
  set?: { family?: string; table?: string; elem?: unknown[] };
}

/** The CRIU lock tables of a ruleset (libnftables JSON) whose connection sets hold one of `conns`. */
export function locksHolding(ruleset: string, conns: ReadonlySet<string>): string[] {
  let objects: NftObject[] = [];
  try {
    objects = (JSON.parse(ruleset) as { nftables?: NftObject[] }).nftables ?? [];
  } catch {
    return [];
  }
  const out = new Set<string>();
  for (const o of objects) {
    const set = o.set;
    if (!set || set.family !== 'inet' || !set.table?.startsWith('CRIU-')) continue;
    for (const e of set.elem ?? []) {
      const c = (e as { concat?: unknown[] }).concat;
      if (!Array.isArray(c) || c.length !== 4) continue;
      if (conns.has(c.map(String).join(' '))) out.add(`inet ${set.table}`);
    }
  }
  return [...out];
}

/** The lock table of the dump CRIU ran as `runId` (DumpRequest.runId). */
export const lockTableOfRun = (runId: string): string =>
  `inet CRIU-${runId}`.slice(0, TABLE_NAME_MAX);

/**
 * After a failed checkpoint: a CRIU killed while the program was frozen (a timeout, a dead front)
 * leaves the connections it had paused in TCP repair mode (the program's reads fail with EPERM,
 * nothing is sent) and its lock table dropping their packets: CRIU's own rollback would undo both.
 * Removes the dump's own table by name (`runId`: CRIU makes it at the freeze, empty or not), takes
 * the program's sockets out of repair mode, then removes the tables that hold its connections
 * (found by their contents, for a CRIU that did not take checkpt's run id); returns their names.
 * Only a table holding one of this program's own 4-tuples goes: another dump's table could hold
 * one only if it dumped the peer of that very connection at the same moment. CRIU made its table
 * in the network namespace it ran in: the program's own (`netnsOf`) under `checkpt run --private-net`.
 */
export function releaseStrayLocks(
  pids: readonly number[],
  runId?: string,
  netnsOf?: number,
): string[] {
  // The program gone (a checkpoint-and-exit that finished), its table may be its file's to restore.
  if (pids.length === 0) return [];
  const removed: string[] = [];
  const remove = (table: string) => {
    try {
      if (removeLockTable(table, netnsOf) === 'removed') removed.push(table);
    } catch {
      // removing it needs what the dump needed (root); nothing more can be done here
    }
  };
  if (runId !== undefined) remove(lockTableOfRun(runId));
  const conns = connectionsOf(pids);
  if (conns.size === 0) return removed;
  childProcess().spawnSync(helperPath(), ['unrepair', ...pids.map(String)], { timeout: 10_000 });
  const r = childProcess().spawnSync(...inNetns(netnsOf, ['nft-list']), {
    encoding: 'utf8',
    timeout: 10_000,
  });
  if (r.status !== 0) return removed;
  for (const table of locksHolding(r.stdout, conns)) remove(table);
  return removed;
}

/** Failures after which CRIU may have died with the program frozen and its network locked. */
const CRIU_MAY_HAVE_DIED = new Set(['ETIMEOUT', 'EHELPER', 'EDUMP']);

/** releaseStrayLocks() for the program's processes, after a failure where CRIU may have died mid-dump. */
export function releaseLocksAfter(
  e: unknown,
  pids: () => readonly number[],
  runId: string | undefined,
  netnsOf?: number,
): void {
  if (e instanceof CheckptError && CRIU_MAY_HAVE_DIED.has(e.code))
    releaseStrayLocks(pids(), runId, netnsOf);
}
