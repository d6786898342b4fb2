import { closeSync, openSync, read, readSync, constants } from 'node:fs';
import { Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { CheckptError } from '../common/errors.js';
import type { ControlMessage } from '../engine/job.js';

/**
 * The read end of the control FIFO. The process blocks on it while it is dumped, so a restore
 * wakes up inside the same read and learns from the message that it was restored.
 */
export class ControlChannel {
  private buffered = '';
  // A read can end inside a multi-byte character: the decoder keeps its first bytes for the next.
  private readonly decoder = new StringDecoder('utf8');
  private fd: number;
  private socket: Socket | undefined;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * Opens the read end of a FIFO that the dump front already holds open: the open does not block,
   * and when the front and its worker are gone a read returns end-of-file instead of hanging.
   */
  static open(fifo: string): ControlChannel {
    ControlChannel.warm();
    try {
      return new ControlChannel(openSync(fifo, constants.O_RDONLY));
    } catch (e) {
      throw lostChannel(e);
    }
  }

  /**
   * Takes a line the way readSync() does, before the process blocks to be dumped: its code is then
   * compiled in the image, where a copy resumed lazily would compile it on pages that each cost a
   * fault (~30 fewer, 3 ms: docs/PERFORMANCE.md).
   */
  private static warm(): void {
    const c = new ControlChannel(-1);
    c.take(WARM_LINE, WARM_LINE.length);
    const line = c.takeLine();
    // Kept: a collection would otherwise drop the object shapes its parse made, to be made again.
    if (line !== undefined) warmMessage = parse(line);
  }

  /** The message warm() parsed, as a copy's checkpt() reads it ("restored"). */
  static get warmed(): ControlMessage | undefined {
    return warmMessage;
  }

  /** A channel on /dev/null for the rehearsal of a copy's way out (checkpt.ts): its close() is real. */
  static rehearsal(): ControlChannel {
    return new ControlChannel(openSync('/dev/null', constants.O_RDONLY));
  }

  get readFd(): number {
    return this.fd;
  }

  readSync(): ControlMessage | undefined {
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const line = this.takeLine();
      if (line !== undefined) return parse(line);
      let n: number;
      try {
        n = readSync(this.fd, buf, 0, buf.length, null);
      } catch (e) {
        if (
          (e as NodeJS.ErrnoException).code === 'EINTR' ||
          (e as NodeJS.ErrnoException).code === 'EAGAIN'
        )
          continue;
        throw lostChannel(e);
      }
      if (n === 0) return undefined;
      this.take(buf, n);
    }
  }

  /** Adds what a read brought to the lines not yet taken. */
  private take(buf: Buffer, n: number): void {
    this.buffered += this.decoder.write(buf.subarray(0, n));
  }

  /**
   * One message, read in the thread pool on the blocking fd, so the event loop runs meanwhile and
   * the fd stays blocking for a readSync() afterwards (a Socket would make it non-blocking).
   */
  readFirst(): Promise<ControlMessage | undefined> {
    const line = this.takeLine();
    if (line !== undefined) return Promise.resolve(parse(line));
    const buf = Buffer.alloc(64 * 1024);
    return new Promise((resolve, reject) => {
      const again = (): void =>
        read(this.fd, buf, 0, buf.length, null, (err, n) => {
          if (err) {
            if (err.code === 'EINTR' || err.code === 'EAGAIN') return again();
            return reject(lostChannel(err));
          }
          if (n === 0) return resolve(undefined);
          this.take(buf, n);
          const l = this.takeLine();
          if (l === undefined) return again();
          try {
            resolve(parse(l));
          } catch (e) {
            reject(e);
          }
        });
      again();
    });
  }

  readAsync(): Promise<ControlMessage | undefined> {
    const line = this.takeLine();
    if (line !== undefined) return Promise.resolve(parse(line));
    return new Promise((resolve, reject) => {
      const socket = this.socket ?? new Socket({ fd: this.fd, readable: true, writable: false });
      this.socket = socket;
      const onData = (d: Buffer): void => {
        this.take(d, d.length);
        const l = this.takeLine();
        if (l === undefined) return;
        cleanup();
        try {
          resolve(parse(l));
        } catch (e) {
          reject(e);
        }
      };
      const onEnd = (): void => {
        cleanup();
        resolve(undefined);
      };
      const onError = (e: Error): void => {
        cleanup();
        reject(lostChannel(e));
      };
      const cleanup = (): void => {
        socket.off('data', onData);
        socket.off('end', onEnd);
        socket.off('error', onError);
      };
      socket.on('data', onData);
      socket.on('end', onEnd);
      socket.on('error', onError);
    });
  }

  close(): void {
    if (this.socket) {
      this.socket.destroy();
      this.socket = undefined;
    } else {
      try {
        closeSync(this.fd);
      } catch {
        // already closed
      }
    }
  }

  private takeLine(): string | undefined {
    const i = this.buffered.indexOf('\n');
    if (i < 0) return undefined;
    const line = this.buffered.slice(0, i);
    this.buffered = this.buffered.slice(i + 1);
    return line;
  }
}

let warmMessage: ControlMessage | undefined;

/** A line as a resumed copy reads first, made with the module so that it is in every image. */
const WARM_LINE = Buffer.from(
  '{"t":"restored","generation":1,"image":"/warm.ckpt","restoredAt":"1970-01-01T00:00:00.000Z","portsKept":true}\n',
);

function lostChannel(cause: unknown): CheckptError {
  return new CheckptError(
    'EHELPER',
    `Lost the channel to the checkpoint worker (${(cause as Error).message}); the program keeps running.`,
    { cause },
  );
}

function parse(line: string): ControlMessage {
  try {
    return JSON.parse(line) as ControlMessage;
  } catch (e) {
    throw new CheckptError(
      'EHELPER',
      `The checkpoint helper sent a malformed message: ${line.slice(0, 200)}`,
      { cause: e },
    );
  }
}
