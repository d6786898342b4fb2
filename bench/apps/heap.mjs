// (c) A server holding a large live heap: --mb N megabytes of strings and small objects, all
// reachable, built before it listens. Run it with --max-old-space-size above N.
// First, before anything else: on Node 22+ checkpt then restarts the program without io_uring
// (docs/ARCHITECTURE.md, the restart at the import), so CRIU can dump it.
import '../../dist/index.js';
import { randomBytes } from 'node:crypto';
import { option, serve } from './common.mjs';

const mb = Number(option('mb', '100'));
// Each block: 1000 distinct random 1000-character strings (~1 MB on the heap, flat one-byte
// strings, not compressible) and a small record pointing into them.
const blocks = [];
for (let b = 0; b < mb; b++) {
  const bytes = randomBytes(500 * 1000);
  const strings = new Array(1000);
  for (let i = 0; i < 1000; i++) strings[i] = bytes.toString('hex', i * 500, (i + 1) * 500);
  blocks.push({ id: b, strings, first: { id: b * 1000, tag: strings[0].slice(0, 8) } });
}

serve(() => ({ app: 'heap', mb, blocks: blocks.length }));
