import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { CheckptError } from '../common/errors.js';
import { manifestProblem } from '../engine/manifest.js';
import { readImageHeader, readImageInfo } from '../image/format.js';
import { buildManifest, MANIFEST_TYPE, type CheckpointConfig, type Summary } from './artifact.js';
import { chunkFile, type Chunking } from './chunker.js';
import { drain, RegistryClient, type Body, type ClientOptions } from './client.js';
import { eachLimited, PARALLEL } from './parallel.js';
import { formatReference, parseReference } from './reference.js';

export interface PushOptions extends ClientOptions {
  /** Where the file is cut into layers (default chunkingFor(the file's size)). */
  chunking?: Chunking;
}

export interface PushResult {
  /** `registry/repository:tag@sha256:...`: pull by this and get these very bytes. */
  reference: string;
  /** The manifest's digest. */
  digest: string;
  size: number;
  layers: number;
  /** Blobs (layers and config) sent, and those the registry already had. */
  uploaded: number;
  skipped: number;
  bytesUploaded: number;
}

/** What the file's own manifest says, for the annotations; nothing of an encrypted one. */
async function summarize(file: string): Promise<Omit<CheckpointConfig, 'size' | 'digest'>> {
  const head = await readImageHeader(file);
  if (head.stored)
    throw new CheckptError(
      'EBADIMAGE',
      `${file} keeps its memory in the chunk store beside it, which a registry would not get; make a file that holds it all first (checkpt pack ${file} OUT.ckpt) and push that`,
      { path: file },
    );
  if (head.encrypted) return { formatVersion: head.formatVersion, encrypted: true, summary: {} };
  const info = await readImageInfo(file, { allowPlain: true, checkManifest: manifestProblem });
  const m = info.manifest;
  const summary: Summary = {};
  if (Array.isArray(m.argv))
    summary.program = (m.argv as unknown[]).map(String).join(' ').slice(0, 512);
  if (typeof m.pid === 'number') summary.pid = m.pid;
  if (typeof m.node === 'string') summary.node = m.node;
  if (typeof m.createdAt === 'string') summary.created = m.createdAt;
  return { formatVersion: info.formatVersion, encrypted: false, summary };
}

/**
 * Pushes a checkpoint file, as it is (an encrypted one stays encrypted), to `ref` as an OCI
 * artifact: cut into content-defined chunks, each a layer the registry keeps once, so a later
 * checkpoint of the same program sends only what changed.
 */
export async function pushCheckpoint(
  file: string,
  refText: string,
  options: PushOptions = {},
): Promise<PushResult> {
  const ref = parseReference(refText);
  if (ref.digest !== undefined)
    throw new CheckptError(
      'EBADNAME',
      `push needs a tag, not a digest (${refText}): the digest is the registry's to compute. Write ${ref.registry}/${ref.repository}:TAG.`,
    );
  const described = await summarize(file);
  const { chunks, size, digest } = await chunkFile(file, options.chunking);
  const config: CheckpointConfig = { size, digest, ...described };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDigest = `sha256:${createHash('sha256').update(configBytes).digest('hex')}`;
  const client = new RegistryClient(ref, 'pull,push', options);
  const result = { uploaded: 0, skipped: 0, bytesUploaded: 0 };
  let done = 0;
  const moved = (n: number): void => {
    done += n;
    options.progress?.update('pushing', done, size);
  };
  try {
    const send = async (blobDigest: string, length: number, body: Body): Promise<void> => {
      if (await hasBlob(client, blobDigest)) {
        result.skipped++;
        moved(length);
        return;
      }
      await uploadBlob(client, blobDigest, length, body);
      result.uploaded++;
      result.bytesUploaded += length;
      moved(length);
    };
    // The config first and alone: it logs in once for all that follow.
    await send(configDigest, configBytes.length, configBytes);
    const unique = [...new Map(chunks.map((c) => [c.digest, c])).values()];
    await eachLimited(unique, PARALLEL, (c) =>
      send(c.digest, c.length, () =>
        createReadStream(file, { start: c.offset, end: c.offset + c.length - 1 }),
      ),
    );
    const manifest = buildManifest(
      config,
      { digest: configDigest, size: configBytes.length },
      chunks,
    );
    const manifestBytes = Buffer.from(JSON.stringify(manifest));
    const manifestDigest = `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`;
    const res = await client.request('PUT', client.url(`manifests/${ref.tag ?? 'latest'}`), {
      headers: { 'content-type': MANIFEST_TYPE },
      body: manifestBytes,
    });
    if (res.statusCode !== 201)
      throw await client.failure(res, `storing the manifest of ${client.name}`);
    await drain(res);
    return {
      reference: `${formatReference(ref)}@${manifestDigest}`,
      digest: manifestDigest,
      size,
      layers: chunks.length,
      ...result,
    };
  } finally {
    client.close();
  }
}

async function hasBlob(client: RegistryClient, digest: string): Promise<boolean> {
  const res = await client.request('HEAD', client.url(`blobs/${digest}`), { follow: true });
  await drain(res);
  if (res.statusCode === 200) return true;
  if (res.statusCode === 404) return false;
  throw await client.failure(res, `looking for blob ${digest} in ${client.name}`);
}

/** A monolithic upload: POST opens it, one PUT with the digest sends the bytes and closes it. */
async function uploadBlob(
  client: RegistryClient,
  digest: string,
  length: number,
  body: Body,
): Promise<void> {
  const start = await client.request('POST', client.url('blobs/uploads/'));
  if (start.statusCode !== 202)
    throw await client.failure(start, `starting an upload to ${client.name}`);
  const location = start.headers.location;
  await drain(start);
  if (!location)
    throw new CheckptError(
      'EREGISTRY',
      `registry ${client.ref.registry} started an upload without saying where to send it (no Location).`,
    );
  const url = new URL(location, client.url(''));
  url.searchParams.set('digest', digest);
  const res = await client.request('PUT', url, {
    headers: { 'content-type': 'application/octet-stream' },
    body,
    length,
  });
  if (res.statusCode !== 201)
    throw await client.failure(res, `uploading blob ${digest} to ${client.name}`);
  await drain(res);
}
