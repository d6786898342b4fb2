// (b) A heavy-start server: imports a large generated code base (--modules DIR, made once by
// `node heavy.mjs --generate DIR`) and builds in-memory indexes over its data before it listens,
// so that a cold start takes well over a second.
// First, before anything else: on Node 22+ checkpt then restarts the program without io_uring
// (docs/ARCHITECTURE.md, the restart at the import), so CRIU can dump it.
import '../../dist/index.js';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { option, serve } from './common.mjs';

const MODULES = 160;
const FUNCS = 120;
const RECORDS = 400;

const gen = option('generate', '');
if (gen) {
  mkdirSync(gen, { recursive: true });
  const words = ['alpha', 'beta', 'gamma', 'delta', 'omega', 'sigma', 'kappa', 'lambda', 'zeta'];
  for (let m = 0; m < MODULES; m++) {
    let src = `// generated module ${m}\n`;
    for (let f = 0; f < FUNCS; f++)
      src +=
        `export function f${f}(x, y) { const a = x * ${f + 1} + y; let s = 0;` +
        ` for (let i = 0; i < (a & 7); i++) s += (i ^ ${m}) + a % ${f + 3};` +
        ` return s > ${f * 13} ? s - ${m} : [a, s, '${words[f % words.length]}${m}'].join(':'); }\n`;
    const records = [];
    for (let r = 0; r < RECORDS; r++)
      records.push({
        id: m * RECORDS + r,
        name: `${words[(m + r) % words.length]}-${m}-${r}`,
        tags: [words[r % words.length], words[(r * 7) % words.length], `t${r % 50}`],
        score: (m * 31 + r * 17) % 1000,
      });
    src += `export const records = ${JSON.stringify(records)};\n`;
    writeFileSync(join(gen, `m${String(m).padStart(4, '0')}.mjs`), src);
  }
  process.exit(0);
}

const dir = option('modules', '');
if (!dir) throw new Error('usage: heavy.mjs --modules DIR (make DIR with --generate DIR)');
const files = readdirSync(dir).sort();
const mods = [];
for (const f of files) mods.push(await import(pathToFileURL(join(dir, f)).href));

// Indexes: by id, by name, an inverted index by tag and name word, and records sorted by score.
const byId = new Map();
const byName = new Map();
const byTag = new Map();
const all = [];
for (const m of mods)
  for (const r of m.records) {
    byId.set(r.id, r);
    byName.set(r.name, r);
    for (const t of [...r.tags, ...r.name.split('-')]) {
      let list = byTag.get(t);
      if (!list) byTag.set(t, (list = []));
      list.push(r.id);
    }
    all.push(r);
  }
all.sort((a, b) => a.score - b.score || a.id - b.id);
// Warm the code: call every generated function once, so it is compiled before the first request.
let warm = 0;
for (const m of mods) for (let f = 0; f < FUNCS; f++) warm += String(m[`f${f}`](f, 3)).length;

serve(() => ({ app: 'heavy', modules: mods.length, records: all.length, tags: byTag.size, warm }));
