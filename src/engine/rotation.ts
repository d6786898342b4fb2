/**
 * Periodic checkpoints' files: `dir/app.ckpt` as a template gives `dir/app.1.ckpt`,
 * `dir/app.2.ckpt`, ... (the number only grows; the highest is the newest). A new one is written
 * under a hidden name (`dir/.app.7.ckpt.new`), made durable and verified there; only then are the
 * oldest removed, down to keep - 1, and it is renamed into place. So a crash at any moment leaves
 * the last good ones, and never more than `keep` of them.
 *
 * With a store (the default, CHECKPT_STORE), the memory goes into `dir/app.ckpt.store/` (store.ts),
 * each chunk once: the files name their chunks there. Chunks no remaining file names are collected
 * only after the new file is in place (or after a failed one was removed), so a crash at any moment
 * loses no chunk a file names.
 */
import { fsPromises } from '../common/builtin.js';
import { constants as fsc } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { STORE } from '../common/config.js';
import { CheckptError } from '../common/errors.js';
import { collectGarbage, StoreChunkError, verifyImage, type Collected } from '../image/format.js';
import { keyFilePath, loadKey } from '../image/key.js';
import { manifestProblem } from './manifest.js';

export interface RotationFile {
  seq: number;
  path: string;
}

/** `app.ckpt` splits into `app.` and `.ckpt`; a name without `.ckpt` gets its number at the end. */
function parts(base: string): { dir: string; stem: string; ext: string } {
  const name = basename(base);
  const ext = name.endsWith('.ckpt') && name !== '.ckpt' ? '.ckpt' : '';
  return { dir: dirname(base), stem: name.slice(0, name.length - ext.length), ext };
}

/** The rotation file number `seq` of the template `base` (already expanded). */
export function rotationFile(base: string, seq: number): string {
  const { dir, stem, ext } = parts(base);
  return join(dir, `${stem}.${seq}${ext}`);
}

function pendingFile(base: string, seq: number): string {
  const { dir, stem, ext } = parts(base);
  return join(dir, `.${stem}.${seq}${ext}.new`);
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The rotation files of `base` that exist, newest first; with `pending`, the hidden ones. */
export async function rotationFiles(base: string, pending = false): Promise<RotationFile[]> {
  const { dir, stem, ext } = parts(base);
  const re = pending
    ? new RegExp(`^\\.${escape(stem)}\\.([1-9][0-9]{0,14})${escape(ext)}\\.new$`)
    : new RegExp(`^${escape(stem)}\\.([1-9][0-9]{0,14})${escape(ext)}$`);
  let names: string[];
  try {
    names = await fsPromises().readdir(dir);
  } catch {
    return [];
  }
  return names
    .flatMap((n) => {
      const m = re.exec(n);
      return m ? [{ seq: Number(m[1]), path: join(dir, n) }] : [];
    })
    .sort((a, b) => b.seq - a.seq);
}

/** Verifies a checkpoint file as a resume would (all of it, every hash); throws what is wrong. */
export async function verifyCheckpoint(file: string): Promise<void> {
  const key = loadKey();
  try {
    await verifyImage(file, { key, allowPlain: true, checkManifest: manifestProblem });
  } finally {
    key?.fill(0);
  }
}

export interface Taken<R> {
  file: string;
  result: R;
  /** The write returned in a resumed copy: the original already made it good, nothing was done here. */
  copy: boolean;
  /** Older rotation files removed to make room. */
  removed: string[];
  /** The store's chunks no file names any more, removed after this one was in place. */
  collected?: Collected;
}

/** The chunk store of the rotation of `base` (`app.ckpt` gives `app.ckpt.store`). */
export function storeOf(base: string): string {
  return `${base}.store`;
}

/** The rotation of one template: numbers one checkpoint after another, keeps the newest `keep`. */
export class Rotation {
  readonly base: string;
  readonly keep: number;
  /** The number of the first file this rotation writes: older files are an earlier run's. */
  firstSeq = 0;
  private last = 0;

  /** Use the chunk store (undefined: CHECKPT_STORE, on by default); never with a key. */
  private readonly useStore: boolean | undefined;

  constructor(base: string, keep: number, options: { store?: boolean } = {}) {
    this.useStore = options.store;
    if (!Number.isSafeInteger(keep) || keep < 1)
      throw new CheckptError(
        'EBADCONFIG',
        `Keep at least one checkpoint (got ${keep}): the newest good one is what a restart resumes.`,
      );
    this.base = base;
    this.keep = keep;
  }

  /**
   * Has `write(path)` write a checkpoint to a hidden name, verifies it, removes the oldest down to
   * keep - 1 and renames it into place. A failed write or check removes only the new file.
   * `isCopy(result)` says the write returned in a resumed copy (a program checkpointing itself).
   */
  /** The store the next checkpoint goes into, or undefined for a file that holds all of it. */
  storeDir(): string | undefined {
    if (!(this.useStore ?? STORE.get()) || keyFilePath() !== undefined) return undefined;
    return storeOf(this.base);
  }

  async take<R>(
    write: (path: string, store: string | undefined) => Promise<R>,
    isCopy: (result: R) => boolean = () => false,
  ): Promise<Taken<R>> {
    const store = this.storeDir();
    if (this.last === 0) await this.dropPending();
    const seq = Math.max(this.last, (await rotationFiles(this.base))[0]?.seq ?? 0) + 1;
    if (this.firstSeq === 0) this.firstSeq = seq;
    this.last = seq;
    const pending = pendingFile(this.base, seq);
    let result: R;
    try {
      result = await write(pending, store);
      if (isCopy(result))
        return { file: rotationFile(this.base, seq), result, copy: true, removed: [] };
      await verifyCheckpoint(pending).catch(async (e: unknown) => {
        // A damaged chunk in the store would be found present and reused by every next
        // checkpoint: it goes, so the next one writes it again (and the files naming it heal).
        const dropped =
          e instanceof StoreChunkError && !e.missing
            ? await fsPromises()
                .rm(e.chunk, { force: true })
                .then(
                  () => true,
                  () => false,
                )
            : false;
        throw new CheckptError(
          'EBADIMAGE',
          `The checkpoint just written does not verify (${(e as Error).message}); it was removed and the previous ones kept${dropped ? `; the damaged chunk ${e instanceof StoreChunkError ? e.chunk : ''} was removed from the store, so the next checkpoint writes it again` : ''}.`,
          { cause: e, path: pending },
        );
      });
    } catch (e) {
      await fsPromises().rm(pending, { force: true });
      // The chunks only it named (a full disk: what it managed to write) go again.
      if (store !== undefined) await collectGarbage(store).catch(() => undefined);
      throw e;
    }
    const removed: string[] = [];
    // The new one is durable and verified: room is made for it before it is visible.
    for (const old of (await rotationFiles(this.base)).slice(this.keep - 1)) {
      await fsPromises().rm(old.path, { force: true });
      removed.push(old.path);
    }
    const file = rotationFile(this.base, seq);
    await fsPromises().rename(pending, file);
    await syncDir(dirname(file));
    // Only now that the new one is durable: a crash in here leaves chunks, never loses one.
    if (store === undefined) return { file, result, copy: false, removed };
    const collected = await collectGarbage(store);
    return { file, result, copy: false, removed, collected };
  }

  /** This rotation's files, newest first (none of an earlier run's). */
  async files(): Promise<RotationFile[]> {
    if (this.firstSeq === 0) return [];
    return (await rotationFiles(this.base)).filter((f) => f.seq >= this.firstSeq);
  }

  /** Hidden files an earlier run left when it died mid-write (one program per rotation). */
  private async dropPending(): Promise<void> {
    for (const f of await rotationFiles(this.base, true))
      await fsPromises().rm(f.path, { force: true });
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsPromises().open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } catch {
    // Some filesystems cannot fsync a directory; the rename is then as durable as it gets.
  } finally {
    await fh.close();
  }
}
