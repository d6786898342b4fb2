import { CheckptError } from '../common/errors.js';
import type { Chunk } from './chunker.js';

/** checkpt's own media types: tools that list artifacts see what a checkpoint is by these. */
export const ARTIFACT_TYPE = 'application/vnd.checkpt.checkpoint.v1';
export const CONFIG_TYPE = 'application/vnd.checkpt.checkpoint.v1+json';
export const CHUNK_TYPE = 'application/vnd.checkpt.checkpoint.chunk.v1';
export const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

/** A manifest is small; one much bigger than this is not ours. */
export const MAX_MANIFEST = 4 * 1024 * 1024;
export const MAX_CONFIG = 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface Manifest {
  schemaVersion: 2;
  mediaType: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** The config blob: what the layers put together must be. */
export interface CheckpointConfig {
  /** The whole file's size and SHA-256: a pull checks both after joining the layers. */
  size: number;
  digest: string;
  formatVersion: number;
  encrypted: boolean;
  /** From the file's manifest; empty for an encrypted file (its manifest is sealed). */
  summary: Summary;
}

export interface Summary {
  program?: string;
  pid?: number;
  node?: string;
  created?: string;
}

const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** The annotations a listing shows without downloading anything. */
export function annotationsOf(config: CheckpointConfig): Record<string, string> {
  const a: Record<string, string> = {
    'io.checkpt.format': String(config.formatVersion),
    'io.checkpt.encrypted': String(config.encrypted),
    'io.checkpt.size': String(config.size),
    'io.checkpt.digest': config.digest,
  };
  const s = config.summary;
  if (s.program !== undefined) a['io.checkpt.program'] = s.program;
  if (s.pid !== undefined) a['io.checkpt.pid'] = String(s.pid);
  if (s.node !== undefined) a['io.checkpt.node'] = s.node;
  if (s.created !== undefined) a['org.opencontainers.image.created'] = s.created;
  return a;
}

export function buildManifest(
  config: CheckpointConfig,
  configBlob: { digest: string; size: number },
  chunks: readonly Chunk[],
): Manifest {
  return {
    schemaVersion: 2,
    mediaType: MANIFEST_TYPE,
    artifactType: ARTIFACT_TYPE,
    config: { mediaType: CONFIG_TYPE, digest: configBlob.digest, size: configBlob.size },
    layers: chunks.map((c) => ({ mediaType: CHUNK_TYPE, digest: c.digest, size: c.length })),
    annotations: annotationsOf(config),
  };
}

function isDescriptor(d: unknown, type: string): d is Descriptor {
  if (typeof d !== 'object' || d === null) return false;
  const x = d as Record<string, unknown>;
  return (
    x.mediaType === type &&
    typeof x.digest === 'string' &&
    DIGEST.test(x.digest) &&
    Number.isSafeInteger(x.size) &&
    (x.size as number) >= 0
  );
}

/** The manifest's JSON, checked to be a checkpt checkpoint's; `name` is the reference, for messages. */
export function parseManifest(bytes: Buffer, name: string): Manifest {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new CheckptError('EREGISTRY', `${name}: the registry sent a manifest that is not JSON.`);
  }
  const config = m.config as Record<string, unknown> | undefined;
  if (
    m.schemaVersion !== 2 ||
    typeof config !== 'object' ||
    config === null ||
    config.mediaType !== CONFIG_TYPE
  )
    throw new CheckptError(
      'EREGISTRY',
      `${name} is not a checkpt checkpoint (${m.mediaType === MANIFEST_TYPE || typeof m.mediaType !== 'string' ? `config ${String(config?.mediaType ?? 'missing')}` : String(m.mediaType)}): it was not pushed by checkpt push. Check the reference.`,
    );
  if (!isDescriptor(config, CONFIG_TYPE) || config.size > MAX_CONFIG)
    throw new CheckptError('EREGISTRY', `${name}: the manifest's config descriptor is malformed.`);
  const layers = m.layers;
  if (!Array.isArray(layers) || !layers.every((l) => isDescriptor(l, CHUNK_TYPE)))
    throw new CheckptError('EREGISTRY', `${name}: the manifest's layers are not checkpt chunks.`);
  return m as unknown as Manifest;
}

export function parseConfig(bytes: Buffer, name: string): CheckpointConfig {
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    c = {};
  }
  if (
    !Number.isSafeInteger(c.size) ||
    typeof c.digest !== 'string' ||
    !DIGEST.test(c.digest) ||
    typeof c.encrypted !== 'boolean' ||
    !Number.isSafeInteger(c.formatVersion)
  )
    throw new CheckptError('EREGISTRY', `${name}: its checkpt config is malformed; push it again.`);
  const s = (typeof c.summary === 'object' && c.summary !== null ? c.summary : {}) as Summary;
  return {
    size: c.size as number,
    digest: c.digest,
    encrypted: c.encrypted,
    formatVersion: c.formatVersion as number,
    summary: s,
  };
}
