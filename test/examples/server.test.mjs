// The example notes server (examples/server) against a private redis-server: serving, and being
// checkpointed while a client hammers it, then resumed after the original is gone.
import assert from 'node:assert/strict';
import { Agent, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cleanup,
  killGroup,
  nodeBinaries,
  removeDir,
  resume,
  root,
  startNode,
  tempDir,
  test,
  waitFor,
  within,
} from '../helpers.mjs';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, redisMissing, startRedis } from '../redis.mjs';
import { RedisClient } from '../../dist-examples/server/redis.js';

after(cleanup);

const serverJs = join(root, 'dist-examples', 'server', 'server.js');
const missing = redisMissing();

/** One HTTP request; resolves { status, body } (body parsed as JSON when it is). */
function request(port, method, path, { body, agent, timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, agent: agent ?? false });
    req.setTimeout(timeoutMs, () => {
      const e = new Error(`no answer to ${method} ${path} within ${timeoutMs} ms`);
      e.code = 'HANG';
      req.destroy(e);
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('error', reject);
      res.on('end', () => {
        let parsed = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode, body: parsed });
      });
    });
    req.end(body);
  });
}

async function startExample(node, redisPort, dir) {
  const port = await freePort();
  const server = startNode(
    node,
    serverJs,
    ['--port', String(port), '--redis-port', String(redisPort)],
    {
      cwd: dir,
    },
  );
  const ready = await waitFor(server, (e) => e.event === 'listening', 'the server to listen');
  assert.equal(ready.port, port);
  return { server, port };
}

async function postNotes(port, texts) {
  const ids = [];
  for (const text of texts) {
    const r = await request(port, 'POST', '/notes', { body: text });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.text, text);
    ids.push(r.body.id);
  }
  return ids;
}

const CLEAR = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE']);

/**
 * Keep-alive clients asking, in a loop, for known notes and for /stats; every answer is checked
 * against what the server must say. Each outcome is recorded: ok, a clear connection error, a
 * hang (no answer within 30 s) or a wrong answer.
 */
function hammer(port, notes, loops = 2) {
  const agent = new Agent({ keepAlive: true, maxSockets: loops });
  const outcomes = [];
  let stopped = false;
  const state = { phase: 'serving' };
  const one = async (i) => {
    const [id, text] = notes[i % notes.length];
    const path = i % 3 === 2 ? '/stats' : `/notes/${id}`;
    try {
      const r = await request(port, 'GET', path, { agent });
      const right =
        r.status === 200 &&
        (path === '/stats'
          ? r.body.notes === notes.length && typeof r.body.requests === 'number'
          : r.body.id === id && r.body.text === text);
      outcomes.push(
        right
          ? { ok: true, phase: state.phase, path, generation: r.body.generation }
          : { ok: false, phase: state.phase, kind: 'wrong', path, status: r.status, body: r.body },
      );
    } catch (e) {
      const kind = e.code === 'HANG' ? 'hang' : CLEAR.has(e.code) ? 'clear' : 'unclear';
      outcomes.push({
        ok: false,
        phase: state.phase,
        kind,
        path,
        code: e.code,
        message: e.message,
      });
      await sleep(20); // no busy loop while nobody listens
    }
  };
  const loop = async (n) => {
    for (let i = n; !stopped; i += loops) await one(i);
  };
  const running = Promise.all(Array.from({ length: loops }, (_, n) => loop(n)));
  return {
    outcomes,
    /** The part of the test that requests are counted under. */
    set phase(p) {
      state.phase = p;
    },
    okCount: (pred = () => true) => outcomes.filter((o) => o.ok && pred(o)).length,
    async stop() {
      stopped = true;
      await running;
      agent.destroy();
    },
  };
}

async function until(cond, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

test('the example serves notes from memory, stores them in Redis and counts requests', async (t) => {
  if (missing) return t.skip(missing);
  const redis = await startRedis();
  const dir = tempDir();
  let db;
  try {
    const { server, port } = await startExample(nodeBinaries()[0], redis.port, dir);
    const ids = await postNotes(port, ['first', 'second', 'third']);
    assert.deepEqual(ids, [1, 2, 3]);
    const note = await request(port, 'GET', '/notes/2');
    assert.deepEqual([note.status, note.body.text], [200, 'second']);
    assert.equal((await request(port, 'GET', '/notes/9')).status, 404);
    const stats = await request(port, 'GET', '/stats');
    assert.equal(stats.status, 200);
    assert.equal(stats.body.notes, 3);
    assert.equal(stats.body.dbsize, 3);
    assert.equal(stats.body.requests, 6, '3 POSTs, 2 GETs and this one');
    assert.equal(stats.body.generation, 0);
    db = await within(RedisClient.connect({ port: redis.port }), 'a connection to Redis');
    assert.equal(await within(db.command('GET', 'note:3'), 'GET note:3'), 'third');
    killGroup(server);
    await server.closed;
  } finally {
    await db?.close();
    await cleanup();
    await redis.stop();
    removeDir(dir);
  }
});

for (const node of nodeBinaries()) {
  test(`Node ${node.major}: checkpointed while a client hammers it (0 refused, 0 reset), then resumed: same port, same notes and counter, Redis again; every failed request failed clearly`, async (t) => {
    if (missing) return t.skip(missing);
    const redis = await startRedis();
    const dir = tempDir();
    let load;
    let db;
    try {
      const file = join(dir, 'notes.ckpt');
      const { server, port } = await startExample(node, redis.port, dir);
      const texts = ['alpha', 'beta', 'gamma', 'delta', 'epsilon'];
      const ids = await postNotes(port, texts);
      const notes = ids.map((id, i) => [id, texts[i]]);

      load = hammer(port, notes);
      await until(() => load.okCount() >= 20, 'the client to get answers');
      const before = (await request(port, 'GET', '/stats')).body;

      load.phase = 'checkpoint';
      const asked = await request(port, 'POST', `/checkpoint?file=${encodeURIComponent(file)}`);
      assert.equal(asked.status, 202, JSON.stringify(asked.body));
      const outcome = await waitFor(
        server,
        (e) => e.event === 'checkpoint-written' || e.event === 'checkpoint-failed',
        'the checkpoint',
      );
      assert.equal(outcome.event, 'checkpoint-written', outcome.message);
      await waitFor(
        server,
        (e) => e.event === 'after-restore' && e.restored === false,
        'the original to reconnect',
      );
      // The original goes on serving on its port, on the same connections.
      load.phase = 'original after';
      const okBeforeKill = load.okCount();
      await until(() => load.okCount() >= okBeforeKill + 10, 'answers from the original again');

      load.phase = 'killed, resuming';
      killGroup(server);
      await server.closed;
      const copy = resume(file, { cwd: dir });
      const back = await waitFor(copy, (e) => e.event === 'resumed', 'the resumed copy');
      assert.equal(back.generation, 1);
      await waitFor(
        copy,
        (e) => e.event === 'after-restore' && e.restored === true && e.generation === 1,
        'the copy to reconnect to Redis',
      );
      load.phase = 'resumed';
      await until(
        () => load.okCount((o) => o.generation === 1) >= 5,
        'the hammering client to get answers from the copy',
      );
      await load.stop();

      // Same port, same in-memory state.
      const stats = await request(port, 'GET', '/stats');
      assert.equal(stats.status, 200);
      assert.equal(stats.body.generation, 1);
      assert.equal(stats.body.notes, texts.length);
      assert.ok(
        stats.body.requests > before.requests,
        `the counter goes on from the checkpoint (${stats.body.requests} after, ${before.requests} before)`,
      );
      for (const [id, text] of notes) {
        const r = await request(port, 'GET', `/notes/${id}`);
        assert.deepEqual([r.status, r.body.text], [200, text]);
      }
      // Redis works again in the copy: a new note lands there.
      const added = await request(port, 'POST', '/notes', { body: 'after the resume' });
      assert.equal(added.status, 201, JSON.stringify(added.body));
      assert.equal(added.body.id, texts.length + 1, 'ids go on from the checkpointed state');
      db = await within(RedisClient.connect({ port: redis.port }), 'a connection to Redis');
      assert.equal(
        await within(db.command('GET', `note:${added.body.id}`), 'GET the new note'),
        'after the resume',
      );
      const after = (await request(port, 'GET', '/stats')).body;
      assert.equal(after.dbsize, texts.length + 1);

      // Every request either got the right answer or failed with a clear connection error.
      const failed = load.outcomes.filter((o) => !o.ok);
      const tally = {};
      for (const o of load.outcomes) {
        const key = o.ok ? 'ok' : `${o.kind}:${o.code ?? o.status}`;
        tally[o.phase] ??= {};
        tally[o.phase][key] = (tally[o.phase][key] ?? 0) + 1;
      }
      t.diagnostic(`${load.outcomes.length} requests by phase: ${JSON.stringify(tally)}`);
      assert.deepEqual(
        failed.filter((o) => o.kind !== 'clear'),
        [],
        'no hang, no wrong answer, no unclear error',
      );
      // Listener and connections are kept across the checkpoint: clients only see the pause.
      assert.deepEqual(
        failed.filter((o) => o.phase === 'checkpoint' || o.phase === 'original after'),
        [],
        'nothing refused or reset while the original was checkpointed and went on',
      );
      assert.ok(
        load.okCount((o) => o.phase === 'checkpoint') > 0,
        'requests were answered during the checkpoint',
      );
      killGroup(copy);
      await copy.closed;
    } finally {
      await load?.stop();
      await db?.close();
      await cleanup();
      await redis.stop();
      removeDir(dir);
    }
  });
}
