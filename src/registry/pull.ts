import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { TMPDIR } from '../common/config.js';
import { CheckptError } from '../common/errors.js';
import type { ProgressSink } from '../common/progress.js';
import { manifestProblem } from '../engine/manifest.js';
import { ownerTag, sweepOrphans } from '../engine/staging.js';
import { createTemp, readImageHeader, syncDir, verifyImage } from '../image/format.js';
import { writeAll, type PackHandle } from '../image/io.js';
import { loadKey } from '../image/key.js';
import {
  MANIFEST_TYPE,
  MAX_CONFIG,
  MAX_MANIFEST,
  parseConfig,
  parseManifest,
  type CheckpointConfig,
  type Descriptor,
  type Manifest,
} from './artifact.js';
import { eachLimited, PARALLEL } from './parallel.js';
import { bodyOf, drain, readBody, RegistryClient, type ClientOptions } from './client.js';
import { formatReference, manifestRef, parseReference } from './reference.js';

export interface PullOptions extends ClientOptions {
  /** Told what the config says before any layer is downloaded; throws to stop there. */
  accept?: (config: CheckpointConfig) => void;
}

export interface Pulled {
  /** The manifest's digest: pull by `registry/repository@digest` for these very bytes again. */
  digest: string;
  size: number;
  layers: number;
  config: CheckpointConfig;
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The manifest and config of `ref`, checked: enough to know what will be downloaded. */
async function describe(
  client: RegistryClient,
): Promise<{ manifest: Manifest; digest: string; config: CheckpointConfig }> {
  const ref = client.ref;
  const res = await client.request('GET', client.url(`manifests/${manifestRef(ref)}`), {
    headers: {
      accept: `${MANIFEST_TYPE}, application/vnd.docker.distribution.manifest.v2+json;q=0.5`,
    },
  });
  if (res.statusCode === 404) {
    await drain(res);
    throw new CheckptError(
      'EREGISTRY',
      `registry ${ref.registry} has no ${ref.digest !== undefined ? `manifest ${ref.digest}` : `tag '${ref.tag ?? 'latest'}'`} in ${ref.repository} (or no such repository): check the reference, or push it first (checkpt push FILE ${client.name}).`,
    );
  }
  if (res.statusCode !== 200) throw await client.failure(res, `getting ${client.name}`);
  const bytes = await readBody(res, MAX_MANIFEST);
  const digest = sha256(bytes);
  if (ref.digest !== undefined && digest !== ref.digest)
    throw new CheckptError(
      'EBADIMAGE',
      `registry ${ref.registry} answered ${client.name} with a manifest whose digest is ${digest}: it is damaged or not what was asked for. Nothing was written.`,
    );
  const manifest = parseManifest(bytes, client.name);
  const configBytes = await fetchSmall(client, manifest.config);
  const config = parseConfig(configBytes, client.name);
  const total = manifest.layers.reduce((n, l) => n + l.size, 0);
  if (total !== config.size)
    throw new CheckptError(
      'EBADIMAGE',
      `${client.name}: its layers add up to ${total} bytes, its config says ${config.size}; push it again.`,
    );
  return { manifest, digest, config };
}

async function fetchSmall(client: RegistryClient, d: Descriptor): Promise<Buffer> {
  const res = await client.request('GET', client.url(`blobs/${d.digest}`), { follow: true });
  if (res.statusCode !== 200)
    throw await client.failure(res, `getting blob ${d.digest} of ${client.name}`);
  const bytes = await readBody(res, Math.min(d.size, MAX_CONFIG));
  if (bytes.length !== d.size || sha256(bytes) !== d.digest)
    throw changedBlob(client, d, sha256(bytes), bytes.length);
  return bytes;
}

function changedBlob(
  client: RegistryClient,
  d: Descriptor,
  got: string,
  size: number,
): CheckptError {
  return new CheckptError(
    'EBADIMAGE',
    `registry ${client.ref.registry} sent other bytes for blob ${d.digest} of ${client.name} (${size} bytes with digest ${got}, expected ${d.size}): its copy is damaged or was tampered with. Nothing was written or resumed; push the checkpoint again.`,
  );
}

/**
 * Downloads the layers, a few at a time, each into its place in `fh`, checking each blob's size and
 * digest as it comes; then the joined file's digest, read back (from the page cache).
 */
async function download(
  client: RegistryClient,
  manifest: Manifest,
  config: CheckpointConfig,
  fh: PackHandle,
  tmp: string,
  progress: ProgressSink | undefined,
): Promise<void> {
  let done = 0;
  const places: Array<{ layer: Descriptor; at: number }> = [];
  let at = 0;
  for (const layer of manifest.layers) {
    places.push({ layer, at });
    at += layer.size;
  }
  await eachLimited(places, PARALLEL, async ({ layer, at: start }) => {
    const res = await client.request('GET', client.url(`blobs/${layer.digest}`), { follow: true });
    if (res.statusCode !== 200)
      throw await client.failure(res, `getting blob ${layer.digest} of ${client.name}`);
    const hash = createHash('sha256');
    let n = 0;
    for await (const chunk of bodyOf(res)) {
      if (n + chunk.length > layer.size) {
        res.destroy();
        throw changedBlob(client, layer, 'unknown', n + chunk.length);
      }
      hash.update(chunk);
      await writeAll(fh, chunk, start + n);
      n += chunk.length;
      done += chunk.length;
      progress?.update('pulling', done, config.size);
    }
    const got = `sha256:${hash.digest('hex')}`;
    if (n !== layer.size || got !== layer.digest) throw changedBlob(client, layer, got, n);
  });
  await fh.sync();
  const got = await digestOf(tmp, at);
  if (got !== config.digest)
    throw new CheckptError(
      'EBADIMAGE',
      `${client.name}: the joined layers have digest ${got}, its config says ${config.digest}; push it again.`,
    );
}

async function digestOf(file: string, size: number): Promise<string> {
  const fh = await open(file, 'r');
  try {
    return await digestOfOpen(fh, size);
  } finally {
    await fh.close();
  }
}

async function digestOfOpen(fh: PackHandle, size: number): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  for (let pos = 0; pos < size;) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return `sha256:${hash.digest('hex')}`;
}

/**
 * Pulls `ref` into `dest`: every blob checked against its digest while it downloads, the joined
 * file against the whole file's digest, then as a checkpoint file (fully, when it is plain or the
 * key is set). The file appears at `dest` atomically, mode 0600; on failure nothing is left there.
 */
export async function pullCheckpoint(
  refText: string,
  dest: string,
  options: PullOptions = {},
): Promise<Pulled> {
  const ref = parseReference(refText);
  const client = new RegistryClient(ref, 'pull', options);
  const target = resolve(dest);
  try {
    const { manifest, digest, config } = await describe(client);
    options.accept?.(config);
    const { fh, tmp } = await createTemp(target);
    try {
      await download(client, manifest, config, fh, tmp, options.progress);
      await fh.close();
      await checkFile(tmp, client.name);
      await rename(tmp, target);
    } catch (e) {
      await fh.close().catch(() => undefined);
      rmSync(tmp, { force: true });
      if (e instanceof CheckptError) throw e;
      throw new CheckptError(
        'EIO',
        `writing ${target} failed (${e instanceof Error ? e.message : String(e)}); nothing was left there.`,
        { cause: e, path: target },
      );
    }
    await syncDir(dirname(target));
    return { digest, size: config.size, layers: manifest.layers.length, config };
  } finally {
    client.close();
  }
}

/** The joined file as checkpt reads any: fully verified when it can be, else its header. */
async function checkFile(file: string, name: string): Promise<void> {
  const key = loadKey();
  try {
    const head = await readImageHeader(file);
    if (!head.encrypted || key !== undefined)
      await verifyImage(file, { key, allowPlain: true, checkManifest: manifestProblem });
  } catch (e) {
    if (e instanceof CheckptError && e.code === 'EBADIMAGE')
      throw new CheckptError('EBADIMAGE', `${name}: ${e.message}`, { cause: e });
    throw e;
  } finally {
    key?.fill(0);
  }
}

/** A pull into a private directory, for `-r oci://` and `inspect oci://`; remove() when done. */
export interface TemporaryPull extends Pulled {
  file: string;
  reference: string;
  remove(): void;
}

const PULL_PREFIX = 'checkpt-pull-';

export async function pullTemporary(
  refText: string,
  options: PullOptions = {},
): Promise<TemporaryPull> {
  // On disk, not in /dev/shm: a resume reads the memory from it while the copy also holds it.
  const root = TMPDIR.get(options.env) ?? tmpdir();
  sweepOrphans(root, PULL_PREFIX);
  const dir = mkdtempSync(join(root, `${PULL_PREFIX}${ownerTag()}-`));
  const remove = (): void => rmSync(dir, { recursive: true, force: true });
  const file = join(dir, 'checkpoint.ckpt');
  try {
    const pulled = await pullCheckpoint(refText, file, options);
    return { ...pulled, file, reference: `${formatReference(parseReference(refText))}`, remove };
  } catch (e) {
    remove();
    throw e;
  }
}
