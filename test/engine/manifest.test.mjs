// The engine's side of the manifest: what its fields say about the entries, which image/ leaves to
// whoever reads the file (checkManifest). No CRIU here; test/reliability/images.test.mjs has
// checkpt -r refuse such a file.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { readImageInfo, verifyImage } from '../../dist/image/format.js';
import { manifestProblem } from '../../dist/engine/manifest.js';
import { rejectsWith, scratchDir, unitTest as test } from '../helpers.mjs';
import { assertRejected, build, sampleEntries } from '../image/layout.mjs';

const checked = { checkManifest: manifestProblem };

test('a manifest that lies about the size of the images is refused', async (t) => {
  const root = scratchDir(t, 'checkpt-manifest-');
  const held = sampleEntries.reduce((n, e) => n + e.data.length, 0);
  const honest = build({ manifest: JSON.stringify({ imageBytes: held }), entries: sampleEntries });
  const file = path.join(root, 'ok.ckpt');
  fs.writeFileSync(file, honest);
  assert.equal((await verifyImage(file, checked)).manifest.imageBytes, held);
  for (const [label, imageBytes] of [
    ['one too many', held + 1],
    ['one too few', held - 1],
    ['zero', 0],
    ['a string', String(held)],
    ['null', null],
  ]) {
    // A correct checksum: the file is exactly as written, and still wrong.
    const bytes = build({ manifest: JSON.stringify({ imageBytes }), entries: sampleEntries });
    await assertRejected(root, bytes, 'EBADIMAGE', label, checked);
    await assert.rejects(
      verifyImage(path.join(root, 'bad.ckpt'), checked),
      /imageBytes|CRIU images hold/,
    );
    await rejectsWith(
      readImageInfo(path.join(root, 'bad.ckpt'), checked),
      'EBADIMAGE',
      `${label} (info)`,
    );
  }
});
