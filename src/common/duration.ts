import { CheckptError } from './errors.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * `500ms`, `1s`, `1.5s`, `5m`, `1h` (or a bare number of milliseconds) as milliseconds: an
 * integer of at least 1 and at most a day times a thousand; anything else is EBADCONFIG.
 */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  const unit = UNITS[m?.[2] ?? 'ms'];
  const ms = m && unit !== undefined ? Math.round(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(ms) || ms < 1 || ms > 1000 * 86_400_000)
    throw new CheckptError(
      'EBADCONFIG',
      `The ${what} '${text}' is not a duration: give a number and a unit, such as 500ms, 30s, 5m or 1h.`,
    );
  return ms;
}

/** Milliseconds in the shortest of those units that keeps them whole: 1500 is "1500ms", 60000 "1m". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const)
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}
