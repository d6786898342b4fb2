// Runs every test file under test/ with Node's own runner, whose summary counts passes and failures.
// --unit: only the pure-logic tests (CHECKPT_TEST_UNIT=1 skips the rest, each saying so), in seconds.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..');
function find(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return name === 'fixtures' ? [] : find(p);
    return name.endsWith('.test.mjs') ? [p] : [];
  });
}
const args = process.argv.slice(2);
const unit = args.includes('--unit');
const named = args.filter((a) => a !== '--unit');
const files = (named.length > 0 ? named : find(join(root, 'test'))).map((f) => relative(root, f));
// Real CRIU dumps compete for 2 cores; one file at a time keeps timings sane. Each test bounds
// itself (test/helpers.mjs: TEST_MS, UNIT_MS) and says what still ran; the runner's limit, a
// little longer than the longest test's own, is the last net.
// The checkpt commands the tests run keep their compile cache here, not in the user's.
const cache = mkdtempSync(join(tmpdir(), 'checkpt-test-cache-'));
// Failures seen once and gone when run again (test/helpers.mjs, sighting()), said after the summary.
const sightings = join(cache, 'sightings');
const r = spawnSync(
  process.execPath,
  [
    '--test',
    `--test-concurrency=${unit ? 2 : 1}`,
    `--test-timeout=${unit ? 60_000 : 400_000}`,
    ...files,
  ],
  {
    cwd: root,
    stdio: 'inherit',
    env: {
      ...process.env,
      XDG_CACHE_HOME: cache,
      CHECKPT_TEST_SIGHTINGS: sightings,
      ...(unit ? { CHECKPT_TEST_UNIT: '1' } : {}),
    },
  },
);
if (existsSync(sightings))
  process.stdout.write(
    `# sightings: failed once, passed when run again (each test says how)\n${readFileSync(sightings, 'utf8').replace(/^/gm, '# ')}`,
  );
rmSync(cache, { recursive: true, force: true });
process.exit(r.status ?? 1);
