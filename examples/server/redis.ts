// A minimal Redis client over node:net, without dependencies: one connection, RESP2 replies
// (simple strings, errors, integers, bulk strings, arrays), commands answered in the order sent.
import { connect as netConnect, type Socket } from 'node:net';

/** A reply from Redis. Bulk and simple strings are strings; nil is null. */
export type RedisReply = string | number | null | RedisError | RedisReply[];

/** An error reply from Redis (`-ERR ...`), or the connection failing under a command. */
export class RedisError extends Error {
  override name = 'RedisError';
}

export interface RedisOptions {
  host?: string;
  port: number;
}

interface Pending {
  resolve: (r: RedisReply) => void;
  reject: (e: Error) => void;
}

/** A parsed value and where the next one starts, or undefined when the buffer is incomplete. */
type Parsed = { value: RedisReply; next: number } | undefined;

function parse(buf: Buffer, at: number): Parsed {
  if (at >= buf.length) return undefined;
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return undefined;
  const type = String.fromCharCode(buf[at] as number);
  const line = buf.toString('utf8', at + 1, eol);
  const after = eol + 2;
  switch (type) {
    case '+':
      return { value: line, next: after };
    case '-':
      return { value: new RedisError(line), next: after };
    case ':':
      return { value: Number(line), next: after };
    case '$': {
      const len = Number(line);
      if (len < 0) return { value: null, next: after };
      if (buf.length < after + len + 2) return undefined;
      return { value: buf.toString('utf8', after, after + len), next: after + len + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, next: after };
      const items: RedisReply[] = [];
      let next = after;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, next);
        if (item === undefined) return undefined;
        items.push(item.value);
        next = item.next;
      }
      return { value: items, next };
    }
    default:
      throw new RedisError(`Protocol error: unexpected reply type ${JSON.stringify(type)}`);
  }
}

function encode(args: ReadonlyArray<string | number>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.from(String(a), 'utf8');
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

export class RedisClient {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private ended = false;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new RedisError('Connection to Redis closed')));
  }

  /** Opens a connection; resolves once it is established. */
  static connect(options: RedisOptions): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: options.host ?? '127.0.0.1', port: options.port });
      const onError = (e: Error): void => reject(e);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        socket.setNoDelay(true);
        resolve(new RedisClient(socket));
      });
    });
  }

  /** Whether the connection is gone (closed by us, by the server, or by an error). */
  get closed(): boolean {
    return this.ended;
  }

  /** Sends one command; resolves with its reply, rejects with a RedisError for an error reply. */
  command(...args: Array<string | number>): Promise<RedisReply> {
    if (this.ended) return Promise.reject(new RedisError('Connection to Redis closed'));
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(encode(args));
    });
  }

  /** Closes the connection (politely with QUIT when it is still up); pending commands fail. */
  async close(): Promise<void> {
    if (this.ended) return;
    const gone = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    try {
      await this.command('QUIT');
    } catch {
      // the connection went away by itself
    }
    this.socket.end();
    if (!this.socket.destroyed) await gone;
    this.ended = true;
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let at = 0;
    try {
      for (;;) {
        const p = parse(this.buf, at);
        if (p === undefined) break;
        at = p.next;
        const waiter = this.pending.shift();
        if (waiter === undefined) continue;
        if (p.value instanceof RedisError) waiter.reject(p.value);
        else waiter.resolve(p.value);
      }
    } catch (e) {
      this.socket.destroy(e as Error);
      return;
    }
    this.buf = this.buf.subarray(at);
  }

  private fail(e: Error): void {
    this.ended = true;
    const waiting = this.pending.splice(0);
    for (const w of waiting)
      w.reject(e instanceof RedisError ? e : new RedisError(e.message, { cause: e }));
  }
}
