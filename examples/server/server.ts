// A small notes service that can be checkpointed while it serves: in-memory state (the notes, a
// request counter), an HTTP server, and a connection to Redis (every note is stored there too).
//
//   node dist-examples/server/server.js [--port 8080] [--redis-port 6379] [--redis-host H]
//   curl -X POST --data 'hello' localhost:8080/notes
//   curl -X POST 'localhost:8080/checkpoint?file=/tmp/notes.ckpt'     (202, then checkpoints)
//   curl localhost:8080/stats
//   checkpt -r /tmp/notes.ckpt       (after the original is gone: same port, same notes)
//
// The HTTP server needs no code for checkpoints: its listener and connections are kept (clients
// only see the pause), and a copy resumed while the original still runs takes the port over once
// the original stops. The Redis connection is the program's own, so it registers a resource for
// it: closed before the checkpoint, opened again after it (a copy must not share it).
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { checkpoint, register, restoreInfo } from 'checkpt';
import { RedisClient } from './redis.js';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? (process.argv[i + 1] as string) : fallback;
}

const port = Number(option('port', '8080'));
const redisAt = {
  host: option('redis-host', '127.0.0.1'),
  port: Number(option('redis-port', '6379')),
};

interface Note {
  id: number;
  text: string;
  createdBy: number;
}

// The state a checkpoint keeps: it lives only in this process's memory.
const notes = new Map<number, Note>();
let nextId = 1;
let requests = 0;
let lastCheckpoint: { file: string; result?: number; error?: string } | undefined;

/** One JSON line per event on stdout, for people and for the tests. */
function log(event: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ event, pid: process.pid, ...fields }) + '\n');
}

let redis: RedisClient | undefined;
// From the resource's beforeCheckpoint to its afterRestore Redis stays closed: a request served
// meanwhile must not open a new connection, which would be in the dump (and CRIU refuses those).
let checkpointing = false;

async function connectRedis(): Promise<RedisClient> {
  redis = await RedisClient.connect(redisAt);
  log('redis-connected', { port: redisAt.port });
  return redis;
}

/** The connection, opened again if Redis dropped it. */
async function db(): Promise<RedisClient> {
  if (checkpointing) throw new Error('Redis is disconnected during a checkpoint');
  return redis && !redis.closed ? redis : connectRedis();
}

register(
  {
    name: 'redis',
    async beforeCheckpoint() {
      checkpointing = true;
      const r = redis;
      redis = undefined;
      await r?.close();
      log('redis-closed');
    },
    async afterRestore(ctx) {
      checkpointing = false;
      log('after-restore', { restored: ctx.restored, generation: ctx.generation });
      try {
        await connectRedis();
      } catch (e) {
        // Not fatal: the next request that needs Redis tries again.
        log('redis-unavailable', { message: (e as Error).message });
      }
    },
  },
  { timeoutMs: 5000 },
);

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function startCheckpoint(file: string): Promise<void> {
  lastCheckpoint = { file };
  log('checkpoint-start', { file });
  try {
    const r = await checkpoint(file);
    lastCheckpoint = { file, result: r };
    if (r === 1) log('resumed', { file, generation: restoreInfo()?.generation });
    else log('checkpoint-written', { file });
  } catch (e) {
    const err = e as Error & { code?: string };
    lastCheckpoint = { file, error: `${err.code ?? err.name}: ${err.message}` };
    log('checkpoint-failed', { file, code: err.code, message: err.message });
  } finally {
    checkpointing = false; // should a failure have skipped afterRestore
  }
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  requests++;
  const url = new URL(req.url ?? '/', 'http://localhost');
  const path = url.pathname;
  if (req.method === 'GET' && path === '/stats') {
    let dbsize: number | string;
    try {
      dbsize = (await (await db()).command('DBSIZE')) as number;
    } catch (e) {
      dbsize = `unavailable: ${(e as Error).message}`;
    }
    return send(res, 200, {
      requests,
      notes: notes.size,
      dbsize,
      pid: process.pid,
      generation: restoreInfo()?.generation ?? 0,
      lastCheckpoint: lastCheckpoint ?? null,
    });
  }
  if (req.method === 'POST' && path === '/notes') {
    const text = await readBody(req);
    const note: Note = { id: nextId++, text, createdBy: process.pid };
    try {
      await (await db()).command('SET', `note:${note.id}`, text);
    } catch (e) {
      return send(res, 503, { error: `Redis: ${(e as Error).message}` });
    }
    notes.set(note.id, note);
    return send(res, 201, note);
  }
  if (req.method === 'GET' && path === '/notes') return send(res, 200, [...notes.values()]);
  const m = /^\/notes\/(\d+)$/.exec(path);
  if (req.method === 'GET' && m) {
    const note = notes.get(Number(m[1]));
    return note ? send(res, 200, note) : send(res, 404, { error: 'no such note' });
  }
  if (req.method === 'POST' && path === '/checkpoint') {
    const body = (await readBody(req)).trim();
    const file = url.searchParams.get('file') ?? (body || 'notes.ckpt');
    // The answer goes out first: the result is known only after the dump, and in a copy resumed
    // beside the original this connection comes back closed. The outcome is logged and shown by
    // /stats (lastCheckpoint).
    res.once('finish', () => void startCheckpoint(file));
    return send(res, 202, { accepted: true, file });
  }
  send(res, 404, { error: `no route for ${req.method} ${path}` });
}

const server = createServer((req, res) => {
  handle(req, res).catch((e: Error) => {
    if (!res.headersSent) send(res, 500, { error: e.message });
    else res.destroy(e);
  });
});

await connectRedis();
server.listen(port, () => {
  const addr = server.address();
  log('listening', { port: typeof addr === 'object' && addr ? addr.port : port });
});
