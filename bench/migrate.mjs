// Live migration's blackout against stop-and-copy (issue 14): runs the migration scenarios of
// test/migrate/migrate.test.mjs (a Node HTTP server with 100 MB of random memory under a bounded
// keep-alive load, moved from host A to host B, network namespaces on this machine) RUNS times,
// once as `checkpt migrate` (stop-and-copy through its channel) and once as `checkpt migrate
// --post-copy`, each next to a twin moved by the file-based stop-and-copy (checkpoint and exit, copy,
// resume) in the same run, and prints each run's longest request during the move, the twin's, and
// their ratio. Goal (issue 14), post-copy's: blackout < 200 ms and < 0.5 x stop-and-copy.
//
//   node bench/migrate.mjs [RUNS]      (root, CRIU, `npm run build`)
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const runs = Number(process.argv[2] ?? 3);
const modes = [
  { name: 'stop-and-copy', pattern: 'moves to B with its connections' },
  { name: 'post-copy', pattern: 'post-copy: the server runs at B' },
];
const rows = { 'stop-and-copy': [], 'post-copy': [] };
for (let i = 0; i < runs; i++)
  for (const mode of modes) {
    const r = spawnSync(
      process.execPath,
      [
        '--test',
        '--test-name-pattern',
        mode.pattern,
        join(root, 'test', 'migrate', 'migrate.test.mjs'),
      ],
      { encoding: 'utf8', timeout: 600_000 },
    );
    const line =
      /migration: blackout \(longest request\) ([\d.]+) ms, (.*?), \d+ requests ok, (\d+) failed.*?baseline: longest request ([\d.]+) ms.*?, \d+ ok, (\d+) failed/.exec(
        r.stdout,
      );
    if (r.status !== 0 || !line) {
      process.stderr.write(`${mode.name} run ${i + 1} failed:\n${r.stdout}\n${r.stderr}\n`);
      process.exit(1);
    }
    const [blackout, detail, baseline] = [Number(line[1]), line[2], Number(line[4])];
    const failed = `${line[3]} / ${line[5]}`;
    rows[mode.name].push({ blackout, baseline, ratio: blackout / baseline });
    process.stdout.write(
      `run ${i + 1} ${mode.name}: blackout ${blackout.toFixed(0)} ms (${detail}), stop-and-copy twin ${baseline.toFixed(0)} ms, ratio ${(blackout / baseline).toFixed(2)}, failed requests ${failed}\n`,
    );
  }
const med = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const mode of modes) {
  const blackout = med(rows[mode.name].map((r) => r.blackout));
  const ratio = med(rows[mode.name].map((r) => r.ratio));
  // The goal is post-copy's: stop-and-copy freezes the program for the whole transfer by design.
  const verdict =
    mode.name === 'post-copy'
      ? `; goal < 200 ms and < 0.50: ${blackout < 200 && ratio < 0.5 ? 'met' : 'NOT met'}`
      : '';
  process.stdout.write(
    `median ${mode.name}: blackout ${blackout.toFixed(0)} ms, ratio ${ratio.toFixed(2)} against the file-based stop-and-copy twin${verdict}\n`,
  );
}
