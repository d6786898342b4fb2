// The example's dependency-free Redis client against a real, private redis-server.
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before } from 'node:test';
import { cleanup, realMissing, test, within } from '../helpers.mjs';
import { freePort, redisMissing, startRedis } from '../redis.mjs';
import { RedisClient, RedisError } from '../../dist-examples/server/redis.js';

const missing = realMissing ?? redisMissing();
let redis;
before(async () => {
  if (!missing) redis = await startRedis();
});
after(async () => {
  await redis?.stop();
  await cleanup();
});

// One local redis-server answers in milliseconds: a reply that does not come fails in seconds.
const BOUND = { timeout: 30_000 };

test('simple strings, integers, bulk strings, nil, arrays and error replies', BOUND, async (t) => {
  if (missing) return t.skip(missing);
  const c = await RedisClient.connect({ port: redis.port });
  try {
    assert.equal(await c.command('PING'), 'PONG');
    assert.equal(await c.command('SET', 'greeting', 'héllo\r\nwörld'), 'OK');
    assert.equal(await c.command('GET', 'greeting'), 'héllo\r\nwörld', 'binary-safe, UTF-8');
    assert.equal(await c.command('GET', 'nothing-here'), null);
    assert.equal(await c.command('SET', 'empty', ''), 'OK');
    assert.equal(await c.command('GET', 'empty'), '');
    assert.equal(await c.command('INCR', 'n'), 1);
    assert.equal(await c.command('INCRBY', 'n', 41), 42);
    assert.equal(await c.command('RPUSH', 'list', 'a', 'b', 'c'), 3);
    assert.deepEqual(await c.command('LRANGE', 'list', 0, -1), ['a', 'b', 'c']);
    assert.deepEqual(await c.command('LRANGE', 'no-list', 0, -1), []);
    const big = 'x'.repeat(300_000);
    await c.command('SET', 'big', big);
    assert.equal(await c.command('GET', 'big'), big, 'a reply spread over many reads');
    await assert.rejects(
      c.command('NOSUCHCOMMAND'),
      (e) => e instanceof RedisError && /ERR/.test(e.message),
    );
    await assert.rejects(c.command('INCR', 'greeting'), RedisError);
    assert.equal(await c.command('PING'), 'PONG', 'the connection is fine after an error reply');
    // Nested arrays (MULTI/EXEC, with an error inside) and several commands in flight at once.
    await c.command('MULTI');
    await c.command('SET', 'k', 'v');
    await c.command('LPUSH', 'k', 'x');
    const exec = await c.command('EXEC');
    assert.equal(exec[0], 'OK');
    assert.ok(exec[1] instanceof RedisError, 'an error inside an array is a value');
    const many = await Promise.all(
      Array.from({ length: 50 }, (_, i) => c.command('ECHO', `m${i}`)),
    );
    assert.deepEqual(
      many,
      Array.from({ length: 50 }, (_, i) => `m${i}`),
      'replies in order',
    );
    assert.equal(typeof (await c.command('DBSIZE')), 'number');
  } finally {
    await c.close();
  }
  assert.equal(c.closed, true);
  await assert.rejects(c.command('PING'), /closed/);
});

test(
  'a server that goes away fails pending and later commands; connecting to nobody fails',
  BOUND,
  async (t) => {
    if (missing) return t.skip(missing);
    const c = await RedisClient.connect({ port: redis.port });
    const other = await RedisClient.connect({ port: redis.port });
    // Expect the rejection before it can happen, or it arrives unhandled.
    const pending = assert.rejects(c.command('BLPOP', 'never', 0), RedisError);
    assert.equal(
      await other.command('CLIENT', 'KILL', 'SKIPME', 'yes'),
      1,
      'Redis drops the client',
    );
    await pending;
    assert.equal(c.closed, true);
    await assert.rejects(c.command('PING'), RedisError);
    await other.close();

    const port = await freePort();
    await assert.rejects(RedisClient.connect({ port }), /ECONNREFUSED/);
    // Something that is not Redis: a protocol error, not a hang.
    const bogus = createServer((s) => s.end('hello\r\n')).listen(0, '127.0.0.1');
    await within(new Promise((r) => bogus.once('listening', r)), 'a local server to listen');
    try {
      const b = await RedisClient.connect({ port: bogus.address().port });
      await assert.rejects(b.command('PING'), /Protocol error|closed/);
    } finally {
      bogus.close();
    }
  },
);
