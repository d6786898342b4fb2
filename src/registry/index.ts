/** Checkpoints in an OCI registry: what the CLI (and the public API) use of src/registry. */
export {
  isOciRef,
  OCI_PREFIX,
  parseReference,
  formatReference,
  type Reference,
} from './reference.js';
export { pushCheckpoint, type PushOptions, type PushResult } from './push.js';
export {
  pullCheckpoint,
  pullTemporary,
  type PullOptions,
  type Pulled,
  type TemporaryPull,
} from './pull.js';
export { resumeFromRegistry } from './resume.js';
export { chunkingFor, type Chunking } from './chunker.js';
export { ARTIFACT_TYPE, CONFIG_TYPE, CHUNK_TYPE } from './artifact.js';
export type { ClientOptions } from './client.js';
