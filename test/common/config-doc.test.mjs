import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DOC, render, spliced } from '../../scripts/config-doc.mjs';
import { VARIABLES } from '../../dist/common/config.js';
import { root, unitTest as test } from '../helpers.mjs';

test('docs/CONFIG.md shows the table in src/common/config.ts (node scripts/config-doc.mjs)', async () => {
  const doc = readFileSync(DOC, 'utf8');
  assert.equal(doc, spliced(doc, await render()), 'out of date: run node scripts/config-doc.mjs');
  for (const v of VARIABLES) assert.ok(doc.includes(`\`${v.name}\``), v.name);
});

test('README links to docs/CONFIG.md and names no variable the table lacks', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  assert.match(readme, /\(docs\/CONFIG\.md\)/);
  const known = new Set(VARIABLES.map((v) => v.name));
  for (const [name] of readme.matchAll(/\bCHECKPT_[A-Z][A-Z_]*[A-Z]\b/g))
    assert.ok(known.has(name), name);
});
