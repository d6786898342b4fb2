// The pure part of the bench: medians, ratios, the log-log slope and issue 13's targets, each
// judged from the medians of one run (bench/run.mjs measures; test/bench/targets.test.mjs checks
// this file).

/** Memory in the image from which the resume target compares with CRIU's lazy restore (issue 13). */
export const LAZY_BASELINE_MIN_BYTES = 32 * 1024 * 1024;
/** The heaps the slope target spans: both must have run. */
export const SLOPE_FROM = 'heap-100MB';
export const SLOPE_TO = 'heap-2GB';
/** A baseline whose median is more than this many times its best run judges nothing. */
export const UNSTEADY_BASELINE = 2;
/** How much longer than `node -e 0` the command may take to start (issue 13). */
export const STARTUP_LIMIT_MS = 30;

export const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export function summary(xs) {
  const v = xs.filter((x) => Number.isFinite(x));
  if (!v.length) return { median: NaN, min: NaN, max: NaN, n: 0 };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

/** Slope of `ms` against `mb` in log-log: 1 is linear, 0 flat. */
export function logLogSlope(lo, hi) {
  return Math.log(hi.ms / lo.ms) / Math.log(hi.mb / lo.mb);
}

/**
 * One target: `value` measured against `goal`, `at most` or `at least`. `met` is undefined when
 * the value could not be measured (`missing` says why).
 */
export function judge({ target, app, value, goal, bound, how, missing }) {
  const measured = Number.isFinite(value) && missing === undefined;
  const met = !measured ? undefined : bound === 'at most' ? value <= goal : value >= goal;
  return { target, app, value, goal, bound, how, met, ...(measured ? {} : { missing }) };
}

/** "met", "missed (by N×)" (how many times the goal's distance), or "not measured (why)". */
export function verdict(t) {
  if (t.met === undefined) return `not measured (${t.missing ?? 'no value'})`;
  if (t.met) return 'met';
  if (t.unit === 'ms') return `missed (by ${(t.value - t.goal).toFixed(0)} ms)`;
  const by = t.bound === 'at least' ? t.goal / t.value : t.value / t.goal;
  // A narrow miss must not read "by 1.0×".
  return `missed (by ${by.toFixed(by < 1.1 ? 2 : 1)}×)`;
}

const fx = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');

/**
 * The resumes judged: the file checkpoint() wrote (compressed, the one that meets the size
 * target) and the one checkpt() wrote (plain).
 */
const RESUMES = [
  ['resumeZMs', 'checkpoint() file'],
  ['resumeMs', 'checkpt() file'],
];

/**
 * Issue 13's targets from the run's summary: `sum[app][key]` is a summary() of one measure over
 * the app's runs; `heapMb[app]` the heap apps' sizes; `startup` the CLI's start-up medians
 * (nodeMs, versionMs, resumeCliMs) or undefined when not measured.
 */
export function targets(sum, { heapMb = {}, startup } = {}) {
  const out = [];
  const add = (t) => out.push(judge(t));
  const m = (s, key) => s[key]?.median;
  for (const [app, s] of Object.entries(sum)) {
    const lazy = m(s, 'rawPagesBytes') >= LAZY_BASELINE_MIN_BYTES;
    const baseSum = s[lazy ? 'rawLazyMs' : 'rawRestoreMs'];
    const base = baseSum?.median;
    const baseName = lazy ? 'raw lazy restore' : 'raw eager restore';
    // A baseline whose median is more than twice its best run is its stalls (a heap-2GB copy
    // collecting garbage over lazy memory: 75, 663 and 1,031 ms in one run), not a yardstick.
    const unsteady =
      baseSum !== undefined && baseSum.median > UNSTEADY_BASELINE * baseSum.min
        ? `the ${baseName} took ${fx(baseSum.min, 0)}-${fx(baseSum.max, 0)} ms in this run, its median ${fx(base, 0)} more than ${UNSTEADY_BASELINE}× its best: no baseline`
        : undefined;
    for (const [key, file] of RESUMES) {
      const v = m(s, key) / base;
      const missing = !Number.isFinite(m(s, 'rawPagesBytes')) ? 'no raw image size' : unsteady;
      add({
        target: `resume ≤ 1.3 × raw restore (${file})`,
        app,
        value: v,
        goal: 1.3,
        bound: 'at most',
        how: `${fx(v)}× ${baseName} (${lazy ? '≥' : '<'} 32 MiB of memory)`,
        ...(missing === undefined ? {} : { missing }),
      });
    }
    const p = m(s, 'checkptGapMs') / m(s, 'physicalMs');
    add({
      target: 'checkpt() pause ≤ 2 × physical',
      app,
      value: p,
      goal: 2,
      bound: 'at most',
      how: `${fx(p)}× raw dump + write + fsync`,
    });
    const a = m(s, 'asyncGapMs') / m(s, 'rawFrozenMs');
    add({
      target: 'checkpoint() pause ≤ 1.2 × frozen',
      app,
      value: a,
      goal: 1.2,
      bound: 'at most',
      how: `${fx(a)}× raw dump's CRIU frozen time`,
      ...(Number.isFinite(m(s, 'rawFrozenMs'))
        ? {}
        : { missing: "no stats-dump from CRIU's dump" }),
    });
  }
  if (sum.heavy)
    for (const [key, file] of RESUMES) {
      const c = m(sum.heavy, 'coldMs') / m(sum.heavy, key);
      add({
        target: `heavy: resume ≥ 5 × faster than cold (${file}; long-term 10×)`,
        app: 'heavy',
        value: c,
        goal: 5,
        bound: 'at least',
        how: `${fx(c)}× faster`,
      });
    }
  for (const [key, file] of RESUMES) {
    const lo = sum[SLOPE_FROM];
    const hi = sum[SLOPE_TO];
    if (lo && hi && heapMb[SLOPE_FROM] && heapMb[SLOPE_TO]) {
      const a = { mb: heapMb[SLOPE_FROM], ms: m(lo, key) };
      const b = { mb: heapMb[SLOPE_TO], ms: m(hi, key) };
      const k = logLogSlope(a, b);
      add({
        target: `resume nearly flat in heap, slope ≤ 0.2 (${file})`,
        app: `${SLOPE_FROM}→${SLOPE_TO}`,
        value: k,
        goal: 0.2,
        bound: 'at most',
        how: `${fx(b.ms / a.ms, 1)}× longer for ${fx(b.mb / a.mb, 1)}× heap (slope ${fx(k)})`,
      });
    } else
      add({
        target: `resume nearly flat in heap, slope ≤ 0.2 (${file})`,
        app: `${SLOPE_FROM}→${SLOPE_TO}`,
        value: NaN,
        goal: 0.2,
        bound: 'at most',
        how: '-',
        missing: `needs ${SLOPE_FROM} and ${SLOPE_TO}: a full run`,
      });
  }
  for (const [app, s] of Object.entries(sum)) {
    if (app === 'idle') continue;
    const im = m(s, 'asyncBytes') / m(s, 'rssBytes');
    add({
      target: 'image ≤ 0.5 × RSS (checkpoint() file)',
      app,
      value: im,
      goal: 0.5,
      bound: 'at most',
      how: `${fx(im)}× RSS`,
    });
  }
  for (const [key, what] of [
    ['versionMs', 'checkpt --version'],
    ['resumeCliMs', "checkpt -r: the command's part"],
  ]) {
    const d = startup ? startup[key] - startup.nodeMs : NaN;
    const t = judge({
      target: `start-up: ${what} < node -e 0 + ${STARTUP_LIMIT_MS} ms`,
      app: 'idle',
      value: d,
      goal: STARTUP_LIMIT_MS,
      bound: 'at most',
      how: Number.isFinite(d) ? `${d >= 0 ? '+' : ''}${d.toFixed(0)} ms` : '-',
      ...(!startup
        ? { missing: 'start-up not measured' }
        : Number.isFinite(d)
          ? {}
          : { missing: 'the command noted no such moment (CHECKPT_BENCH_TRACE)' }),
    });
    // "Under 30 ms": 30 itself is not under.
    if (t.met !== undefined) t.met = d < STARTUP_LIMIT_MS;
    out.push({ ...t, unit: 'ms' });
  }
  return out;
}
