// Live migration's blackout against stop-and-copy (issue 14): runs the migration scenario of
// test/migrate/migrate.test.mjs (a Node HTTP server with 100 MB of random memory under a bounded
// keep-alive load, moved from host A to host B, network namespaces on this machine) RUNS times and
// prints each run's longest request during the move next to the file-based stop-and-copy twin's
// from the same run, and their ratio. Goal (issue 14): blackout < 200 ms and < 0.5 x stop-and-copy.
//
//   node bench/migrate.mjs [RUNS]      (root, CRIU, `npm run build`)
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const runs = Number(process.argv[2] ?? 3);
const rows = [];
for (let i = 0; i < runs; i++) {
  const r = spawnSync(
    process.execPath,
    [
      '--test',
      '--test-name-pattern',
      'moves to B',
      join(root, 'test', 'migrate', 'migrate.test.mjs'),
    ],
    { encoding: 'utf8', timeout: 600_000 },
  );
  const line =
    /migration: blackout \(longest request\) ([\d.]+) ms, frozen (\d+) ms.*?baseline: longest request ([\d.]+) ms/.exec(
      r.stdout,
    );
  if (r.status !== 0 || !line) {
    process.stderr.write(`run ${i + 1} failed:\n${r.stdout}\n${r.stderr}\n`);
    process.exit(1);
  }
  const [blackout, frozen, baseline] = [Number(line[1]), Number(line[2]), Number(line[3])];
  rows.push({ blackout, frozen, baseline, ratio: blackout / baseline });
  process.stdout.write(
    `run ${i + 1}: blackout ${blackout.toFixed(0)} ms (frozen ${frozen} ms), stop-and-copy ${baseline.toFixed(0)} ms, ratio ${(blackout / baseline).toFixed(2)}\n`,
  );
}
const med = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const blackout = med(rows.map((r) => r.blackout));
const ratio = med(rows.map((r) => r.ratio));
process.stdout.write(
  `median: blackout ${blackout.toFixed(0)} ms, ratio ${ratio.toFixed(2)} against stop-and-copy; goal < 200 ms and < 0.50: ${blackout < 200 && ratio < 0.5 ? 'met' : 'NOT met'}\n`,
);
