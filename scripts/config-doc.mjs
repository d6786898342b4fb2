#!/usr/bin/env node
// Writes the tables of docs/CONFIG.md from src/common/config.ts (built: run `npm run build` first).
// `node scripts/config-doc.mjs` rewrites the generated part; test/common/config-doc.test.mjs
// fails when it is out of date.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as prettier from 'prettier';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const DOC = join(root, 'docs', 'CONFIG.md');
export const BEGIN =
  '<!-- generated from src/common/config.ts by scripts/config-doc.mjs: edit there -->';
export const END = '<!-- end of generated part -->';

const cell = (s) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
const code = (s) => (s ? `\`${s}\`` : '');
const WHEN = { load: 'at load', call: 'each use' };
const KIND = {
  internal: 'internal: set by checkpt for its own processes',
  script: 'scripts/install-criu.sh',
  test: 'the test suite',
};

/** The generated part, formatted as prettier formats the rest of the docs. */
export async function render() {
  const { VARIABLES } = await import(join(root, 'dist', 'common', 'config.js'));
  const pub = VARIABLES.filter((v) => v.kind === 'public');
  const other = VARIABLES.filter((v) => v.kind !== 'public');
  const lines = [
    BEGIN,
    '',
    '| Variable | Default | Read | Accepts | What it does |',
    '| --- | --- | --- | --- | --- |',
    ...pub.map(
      (v) =>
        `| ${code(v.name)} | ${cell(v.defaultText)} | ${WHEN[v.when]} | ${cell(v.accepts)} | ${cell(v.does)} |`,
    ),
    '',
    'Not for users (listed so that every `CHECKPT_*` name is in the table):',
    '',
    '| Variable | Read by | What it is |',
    '| --- | --- | --- |',
    ...other.map((v) => `| ${code(v.name)} | ${KIND[v.kind]} | ${cell(v.does)} |`),
    '',
    END,
  ];
  const options = (await prettier.resolveConfig(DOC)) ?? {};
  return prettier.format(lines.join('\n'), { ...options, parser: 'markdown' });
}

/** docs/CONFIG.md with its generated part replaced by `part`. */
export function spliced(doc, part) {
  const a = doc.indexOf(BEGIN);
  const b = doc.indexOf(END);
  if (a < 0 || b < a) throw new Error(`${DOC} lacks the markers ${BEGIN} ... ${END}`);
  return doc.slice(0, a) + part.trimEnd() + doc.slice(b + END.length);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(DOC, spliced(readFileSync(DOC, 'utf8'), await render()));
  console.log(`wrote ${DOC}`);
}
