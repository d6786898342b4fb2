// Runs every test file under test/ with Node's own runner, whose summary counts passes and failures.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..');
function find(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return name === 'fixtures' ? [] : find(p);
    return name.endsWith('.test.mjs') ? [p] : [];
  });
}
const files = (process.argv.length > 2 ? process.argv.slice(2) : find(join(root, 'test'))).map(
  (f) => relative(root, f),
);
// Real CRIU dumps compete for 2 cores; one file at a time keeps timings sane.
// A test that hangs fails after 5 minutes instead of holding CI until its own limit.
const r = spawnSync(
  process.execPath,
  ['--test', '--test-concurrency=1', '--test-timeout=300000', ...files],
  {
    cwd: root,
    stdio: 'inherit',
  },
);
process.exit(r.status ?? 1);
