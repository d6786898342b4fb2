import type { Duplex } from 'node:stream';

/** One of CRIU's image files in a post-copy offer, and which byte ranges of it follow. */
export interface ImageFile {
  name: string;
  size: number;
  /** [offset, length] pairs, in order; the rest of the file is memory that comes later (a hole). */
  ranges: [number, number][];
}

/**
 * The migration channel's messages: one JSON object a line. The sender offers a checkpoint of
 * `bytes` bytes and streams them right after its line; the receiver answers with one line. First of
 * all the receiver says "ready" (it trusts the sender) or "failed", before the sender freezes anything.
 * Post-copy: the sender opens a second connection first, whose one line ("pages") names the
 * migration by a token; it then carries CRIU's page server protocol (the source serving the copy's
 * memory). The "postcopy" offer streams its files' ranges after its line, in order.
 */
export type Message =
  | { type: 'ready' }
  | { type: 'offer'; bytes: number; argv: string[] }
  | {
      type: 'postcopy';
      token: string;
      argv: string[];
      manifest: Record<string, unknown>;
      files: ImageFile[];
      bytes: number;
    }
  | { type: 'pages'; token: string }
  | { type: 'restored'; pid: number }
  | { type: 'failed'; message: string; code?: string };

export function send(socket: Duplex, m: Message): void {
  socket.write(JSON.stringify(m) + '\n');
}

/**
 * Reads one line off `socket`; what came after it is pushed back for the next reader. Rejects
 * when the socket ends or errs first, or after `timeoutMs`.
 */
export function readMessage(socket: Duplex, timeoutMs: number, what: string): Promise<Message> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const done = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
    };
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > 65536) {
          done();
          reject(new Error(`the peer sent an overlong line instead of ${what}`));
        }
        return;
      }
      done();
      socket.pause();
      const rest = buf.subarray(nl + 1);
      if (rest.length > 0) socket.unshift(rest);
      try {
        resolve(JSON.parse(buf.subarray(0, nl).toString('utf8')) as Message);
      } catch {
        reject(new Error(`the peer sent something other than ${what}`));
      }
    };
    const onEnd = (): void => {
      done();
      reject(new Error(`the connection closed before ${what} came`));
    };
    const onError = (e: Error): void => {
      done();
      reject(new Error(`the connection failed before ${what} came: ${e.message}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no ${what} within ${Math.round(timeoutMs / 1000)} s`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
    socket.resume();
  });
}

/** Writes `data`: resolved at once, or once the socket drains; rejected with `closed` if it closes first. */
/** The peer closed or broke the connection: the peer's own word, if any, says why. */
export class ConnectionLost extends Error {}

export function writeDrained(socket: Duplex, data: Buffer, closed: string): Promise<void> {
  if (socket.write(data)) return Promise.resolve();
  return new Promise((res, rej) => {
    const onDrain = (): void => {
      socket.off('close', onClose);
      res();
    };
    const onClose = (): void => {
      socket.off('drain', onDrain);
      rej(new ConnectionLost(closed));
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}
