// The bench's pure part: medians, slopes, and issue 13's targets judged from one run's summary.
import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { judge, logLogSlope, median, summary, targets, verdict } from '../../bench/targets.mjs';

const MiB = 1024 * 1024;
/** A summary() of one value per measure, as the bench makes from its runs. */
const app = (values) =>
  Object.fromEntries(Object.entries(values).map(([k, v]) => [k, summary([v])]));
const find = (ts, target, name) => {
  const t = ts.find((x) => x.target.startsWith(target) && x.app === name);
  assert.ok(t, `${target} for ${name} in ${ts.map((x) => `${x.target}/${x.app}`).join(', ')}`);
  return t;
};

test('median and summary skip what was not measured', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  assert.ok(Number.isNaN(median([])));
  assert.deepEqual(summary([5, undefined, NaN, 1]), { median: 3, min: 1, max: 5, n: 2 });
  assert.equal(summary([undefined]).n, 0);
});

test('log-log slope: 0 is flat, 1 linear', () => {
  assert.equal(logLogSlope({ mb: 100, ms: 500 }, { mb: 2048, ms: 500 }), 0);
  assert.ok(Math.abs(logLogSlope({ mb: 100, ms: 100 }, { mb: 2000, ms: 2000 }) - 1) < 1e-12);
  // The full run of 2026-11-27: 4.3x longer for 20.5x the heap.
  const k = logLogSlope({ mb: 100, ms: 746 }, { mb: 2048, ms: 3194 });
  assert.ok(k > 0.47 && k < 0.49, String(k));
});

test('verdicts: met, missed by how many times the goal, not measured with the reason', () => {
  const at = (value, bound, goal) => judge({ target: 't', app: 'a', value, goal, bound, how: '' });
  assert.equal(verdict(at(1.3, 'at most', 1.3)), 'met');
  assert.equal(verdict(at(2.6, 'at most', 1.3)), 'missed (by 2.0×)');
  assert.equal(verdict(at(5, 'at least', 5)), 'met');
  assert.equal(verdict(at(2, 'at least', 5)), 'missed (by 2.5×)');
  assert.equal(verdict(at(2.02, 'at most', 2)), 'missed (by 1.01×)');
  assert.equal(verdict(at(NaN, 'at most', 1)), 'not measured (no value)');
  const missing = judge({
    target: 't',
    app: 'a',
    value: 1,
    goal: 2,
    bound: 'at most',
    missing: 'why',
  });
  assert.equal(missing.met, undefined);
  assert.equal(verdict(missing), 'not measured (why)');
});

test('a baseline whose median is more than twice its best run judges no resume', () => {
  // The 14:36 run of 2026-12-05: CRIU's own lazy restore of heap-2GB stalled in two runs of three.
  const ts = targets({
    'heap-2GB': {
      rawPagesBytes: summary([2e9, 2e9, 2e9]),
      rawLazyMs: summary([75, 663, 1031]),
      rawRestoreMs: summary([6500, 6600, 6700]),
      resumeMs: summary([143, 148, 1609]),
      resumeZMs: summary([136, 137, 188]),
    },
    steady: {
      rawPagesBytes: summary([2e9, 2e9, 2e9]),
      rawLazyMs: summary([89, 96, 591]),
      rawRestoreMs: summary([6500, 6600, 6700]),
      resumeMs: summary([140, 151, 350]),
      resumeZMs: summary([124, 130, 217]),
    },
  });
  const t = find(ts, 'resume ≤ 1.3 × raw restore (checkpt() file)', 'heap-2GB');
  assert.equal(t.met, undefined);
  assert.match(
    verdict(t),
    /^not measured \(the raw lazy restore took 75-1031 ms in this run, its median 663 more than 2× its best: no baseline\)$/,
  );
  // One slow run of three leaves the median where the others are: judged as always.
  const s = find(ts, 'resume ≤ 1.3 × raw restore (checkpt() file)', 'steady');
  assert.equal(s.met, false);
  assert.equal(verdict(s), 'missed (by 1.2×)');
});

test('a resume is judged against raw lazy restore from 32 MiB of memory, eager below', () => {
  const base = { rawRestoreMs: 200, rawLazyMs: 100, resumeMs: 250, resumeZMs: 250 };
  const ts = targets({
    small: app({ ...base, rawPagesBytes: 32 * MiB - 1 }),
    big: app({ ...base, rawPagesBytes: 32 * MiB }),
  });
  const small = find(ts, 'resume ≤ 1.3 × raw restore (checkpoint() file)', 'small');
  assert.equal(small.value, 1.25);
  assert.equal(small.met, true);
  assert.match(small.how, /raw eager restore/);
  const big = find(ts, 'resume ≤ 1.3 × raw restore (checkpoint() file)', 'big');
  assert.equal(big.value, 2.5);
  assert.equal(verdict(big), 'missed (by 1.9×)');
  assert.match(big.how, /raw lazy restore/);
  // Both files are judged.
  assert.equal(find(ts, 'resume ≤ 1.3 × raw restore (checkpt() file)', 'big').met, false);
});

test('pauses: checkpt() against the physical baseline, checkpoint() against CRIU frozen time', () => {
  const ts = targets({
    a: app({ checkptGapMs: 200, physicalMs: 100, asyncGapMs: 60, rawFrozenMs: 50 }),
    b: app({ checkptGapMs: 201, physicalMs: 100, asyncGapMs: 61, rawFrozenMs: 50 }),
    c: app({ checkptGapMs: 100, physicalMs: 100, asyncGapMs: 60 }),
  });
  assert.equal(find(ts, 'checkpt() pause', 'a').met, true);
  assert.equal(find(ts, 'checkpoint() pause', 'a').met, true);
  assert.equal(find(ts, 'checkpt() pause', 'b').met, false);
  assert.equal(find(ts, 'checkpoint() pause', 'b').met, false);
  // No stats-dump: not a pass, not a failure.
  assert.match(verdict(find(ts, 'checkpoint() pause', 'c')), /^not measured/);
});

test('heavy: cold / resume at least 5; the image target leaves idle out', () => {
  const s = { coldMs: 1000, resumeZMs: 200, resumeMs: 250, asyncBytes: 50, rssBytes: 100 };
  const ts = targets({ idle: app(s), heavy: app(s) });
  assert.equal(
    find(ts, 'heavy: resume ≥ 5 × faster than cold (checkpoint() file', 'heavy').met,
    true,
  );
  assert.equal(
    verdict(find(ts, 'heavy: resume ≥ 5 × faster than cold (checkpt() file', 'heavy')),
    'missed (by 1.3×)',
  );
  assert.equal(find(ts, 'image ≤ 0.5 × RSS', 'heavy').met, true);
  assert.equal(
    ts.find((t) => t.target.startsWith('image') && t.app === 'idle'),
    undefined,
  );
});

test('the slope needs heap-100MB and heap-2GB both', () => {
  const heapMb = { 'heap-100MB': 100, 'heap-500MB': 500, 'heap-2GB': 2048 };
  const lo = app({ resumeZMs: 500, resumeMs: 500 });
  const hi = app({ resumeZMs: (500 * 2048 ** 0.2) / 100 ** 0.2, resumeMs: 3000 });
  const without = targets({ 'heap-100MB': lo, 'heap-500MB': hi }, { heapMb });
  for (const t of without.filter((x) => x.target.startsWith('resume nearly flat')))
    assert.match(verdict(t), /^not measured \(needs heap-100MB and heap-2GB/);
  const ts = targets({ 'heap-100MB': lo, 'heap-2GB': hi }, { heapMb });
  const z = find(
    ts,
    'resume nearly flat in heap, slope ≤ 0.2 (checkpoint() file)',
    'heap-100MB→heap-2GB',
  );
  assert.ok(Math.abs(z.value - 0.2) < 1e-9 && z.met === true, String(z.value));
  assert.equal(
    find(ts, 'resume nearly flat in heap, slope ≤ 0.2 (checkpt() file)', 'heap-100MB→heap-2GB').met,
    false,
  );
});

test('start-up: the command under node -e 0 + 30 ms, judged in ms', () => {
  const ts = targets({}, { startup: { nodeMs: 100, versionMs: 129, resumeCliMs: 145 } });
  const v = ts.find((t) => t.target.includes('--version'));
  assert.equal(v.met, true);
  assert.equal(v.how, '+29 ms');
  const r = ts.find((t) => t.target.includes('checkpt -r'));
  assert.equal(verdict(r), 'missed (by 15 ms)');
  const exactly = targets({}, { startup: { nodeMs: 100, versionMs: 130, resumeCliMs: 100 } });
  assert.equal(exactly.find((t) => t.target.includes('--version')).met, false);
  const unmarked = targets({}, { startup: { nodeMs: 100, versionMs: 120, resumeCliMs: NaN } });
  assert.match(
    verdict(unmarked.find((t) => t.target.includes('checkpt -r'))),
    /^not measured \(the command noted no such moment/,
  );
  for (const t of targets({}).filter((x) => x.target.startsWith('start-up')))
    assert.match(verdict(t), /^not measured/);
});
