import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { formatDuration, parseDuration } from '../../dist/common/duration.js';

test('durations: ms, s, m, h, fractions, a bare number of milliseconds', () => {
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('1s'), 1000);
  assert.equal(parseDuration('1.5s'), 1500);
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration(' 250 '), 250);
  assert.equal(parseDuration('0.5ms'), 1);
});

test('anything else is EBADCONFIG naming the value and what a duration looks like', () => {
  for (const bad of [
    '',
    's',
    '1x',
    '-1s',
    '0',
    '0s',
    '1e3',
    '1 s s',
    '1d',
    '99999999999h',
    'NaN',
  ]) {
    assert.throws(
      () => parseDuration(bad, '--every interval'),
      (e) =>
        e.code === 'EBADCONFIG' &&
        e.message.includes(`'${bad}'`) &&
        e.message.includes('--every interval') &&
        /500ms, 30s, 5m or 1h/.test(e.message),
      bad,
    );
  }
});

test('formatDuration picks the largest unit that keeps the number whole', () => {
  assert.equal(formatDuration(1500), '1500ms');
  assert.equal(formatDuration(1000), '1s');
  assert.equal(formatDuration(90_000), '90s');
  assert.equal(formatDuration(120_000), '2m');
  assert.equal(formatDuration(7_200_000), '2h');
  for (const ms of [1, 999, 1000, 61_000, 3_600_000])
    assert.equal(parseDuration(formatDuration(ms)), ms);
});
