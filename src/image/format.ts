/**
 * The single-file checkpoint format: layout.ts (the bytes on disk), seal.ts (encryption),
 * write.ts, read.ts and extract.ts. What the rest of checkpt uses is here.
 */
export { FORMAT_VERSION, type ImageEntry, type ImageHeader, type ImageInfo } from './layout.js';
export {
  createTemp,
  dirBytes,
  syncDir,
  tempNameFor,
  writeImage,
  type WriteOptions,
} from './write.js';
export {
  readImageHeader,
  readImageInfo,
  verifyImage,
  collectGarbage,
  storeRefs,
  type ManifestCheck,
  type ReadOptions,
} from './read.js';
export { extractImage, extractLazy, type EntryDecoder, type ExtractOptions } from './extract.js';
export type { LazyImage, PageSource } from './pages.js';
export { storeBytes, StoreChunkError, type Collected, type StoreWrite } from './store.js';
