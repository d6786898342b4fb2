import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import { INSECURE_REGISTRIES } from '../common/config.js';
import type { ProgressSink } from '../common/progress.js';
import { CheckptError, errnoOf } from '../common/errors.js';
import { basicHeader, findCredentials, parseChallenge, type Credentials } from './auth.js';
import { endpointHost, formatReference, type Reference } from './reference.js';

export interface ClientOptions {
  /** Speak plain HTTP to this registry (default: when CHECKPT_INSECURE_REGISTRIES names it). */
  plainHttp?: boolean;
  /** Extra CA certificates (PEM) to trust, besides Node's (and NODE_EXTRA_CA_CERTS). */
  ca?: string | Buffer;
  /** Told how many bytes of the file were sent or fetched so far (`push` counts blobs already there). */
  progress?: ProgressSink;
  /** How long a connection may stay silent, in ms (default 30 s). */
  idleMs?: number;
  env?: NodeJS.ProcessEnv;
}

export type Body = Buffer | (() => Readable);

export interface RequestOptions {
  headers?: Record<string, string>;
  body?: Body;
  /** The body's length, required for a streamed body. */
  length?: number;
  /** Follow redirects (blob downloads may be sent to a storage host). */
  follow?: boolean;
}

const MAX_ERROR_BODY = 64 * 1024;

/** One registry and repository, with the credentials and tokens it needs: every request goes here. */
export class RegistryClient {
  readonly ref: Reference;
  readonly name: string;
  private readonly scheme: 'http' | 'https';
  private readonly host: string;
  private readonly agent: HttpAgent | HttpsAgent;
  private readonly ca: string | Buffer | undefined;
  private readonly idleMs: number;
  private readonly creds: Credentials | undefined;
  private authorization: string | undefined;

  constructor(
    ref: Reference,
    private readonly actions: 'pull' | 'pull,push',
    options: ClientOptions = {},
  ) {
    this.ref = ref;
    this.name = formatReference(ref);
    const env = options.env ?? process.env;
    const plain = options.plainHttp ?? INSECURE_REGISTRIES.get(env).includes(ref.registry);
    this.scheme = plain ? 'http' : 'https';
    this.host = endpointHost(ref.registry);
    this.agent = plain ? new HttpAgent({ keepAlive: true }) : new HttpsAgent({ keepAlive: true });
    this.ca = options.ca;
    this.idleMs = options.idleMs ?? 30_000;
    this.creds = findCredentials(ref.registry, env);
  }

  /** `/v2/<repository>/<path>` of this registry. */
  url(path: string): URL {
    return new URL(`${this.scheme}://${this.host}/v2/${this.ref.repository}/${path}`);
  }

  close(): void {
    this.agent.destroy();
  }

  /**
   * Sends a request, logging in (basic, or a bearer token from the realm the registry names) when
   * the registry answers 401, and returns the response whatever its status.
   */
  async request(method: string, url: URL, options: RequestOptions = {}): Promise<IncomingMessage> {
    let res = await this.send(method, url, options, this.authorization);
    if (res.statusCode === 401) {
      const challenge = res.headers['www-authenticate'];
      await drain(res);
      const before = this.authorization;
      await this.login(challenge);
      if (this.authorization === before) throw this.denied(401);
      res = await this.send(method, url, options, this.authorization);
      if (res.statusCode === 401) {
        await drain(res);
        throw this.denied(401);
      }
    }
    for (let hops = 0; options.follow && isRedirect(res.statusCode) && hops < 5; hops++) {
      const location = res.headers.location;
      await drain(res);
      if (!location) break;
      const next = new URL(location, url);
      // Credentials are the registry's: a storage host it sends us to gets none.
      const auth = next.host === url.host ? this.authorization : undefined;
      url = next;
      res = await this.send(method, next, options, auth);
    }
    return res;
  }

  /** The error for an answer that is not what was asked for, with the registry's own words. */
  async failure(res: IncomingMessage, what: string): Promise<CheckptError> {
    const status = res.statusCode ?? 0;
    const text = await readBody(res, MAX_ERROR_BODY).catch(() => Buffer.alloc(0));
    let detail = '';
    try {
      const errors = (
        JSON.parse(text.toString('utf8')) as { errors?: Array<{ code?: string; message?: string }> }
      ).errors;
      if (errors?.length)
        detail = errors.map((e) => `${e.code ?? ''} ${e.message ?? ''}`.trim()).join('; ');
    } catch {
      detail = text.toString('utf8').slice(0, 200).trim();
    }
    if (status === 401 || status === 403) return this.denied(status, detail);
    return new CheckptError(
      'EREGISTRY',
      `${what}: registry ${this.ref.registry} answered ${status}${detail ? ` (${detail})` : ''}. Check the reference and try again.`,
    );
  }

  private denied(status: number, detail = ''): CheckptError {
    const verb = this.actions === 'pull' ? 'pull from' : 'push to';
    const fix = !this.creds
      ? `without credentials: log in (podman login ${this.ref.registry}, or docker login), or set CHECKPT_REGISTRY_USER and CHECKPT_REGISTRY_PASSWORD`
      : this.creds.source.startsWith('CHECKPT_')
        ? `with the user in CHECKPT_REGISTRY_USER: check it and CHECKPT_REGISTRY_PASSWORD${status === 403 ? `, and that the user may ${verb} ${this.ref.repository}` : ''}`
        : `with the credentials in ${this.creds.source}: log in again (podman login ${this.ref.registry})${status === 403 ? `, and check that the user may ${verb} ${this.ref.repository}` : ''}`;
    return new CheckptError(
      'EREGISTRY',
      `registry ${this.ref.registry} denied access to ${this.ref.repository} (${status}${detail ? `: ${detail}` : ''}) ${fix}.`,
    );
  }

  private async login(header: string | string[] | undefined): Promise<void> {
    const challenge = parseChallenge(Array.isArray(header) ? header[0] : header);
    if (challenge?.scheme === 'basic') {
      if (this.creds) this.authorization = basicHeader(this.creds);
      return;
    }
    if (challenge?.scheme !== 'bearer' || !challenge.params.realm) return;
    const realm = new URL(challenge.params.realm);
    if (challenge.params.service) realm.searchParams.set('service', challenge.params.service);
    realm.searchParams.set('scope', `repository:${this.ref.repository}:${this.actions}`);
    const headers: Record<string, string> = {};
    if (this.creds) headers.authorization = basicHeader(this.creds);
    const res = await this.send('GET', realm, { headers }, undefined);
    if (res.statusCode === 401 || res.statusCode === 403) {
      await drain(res);
      throw this.denied(res.statusCode);
    }
    if (res.statusCode !== 200)
      throw await this.failure(res, `getting a token from ${realm.origin}`);
    const body = await readBody(res, MAX_ERROR_BODY);
    let token: unknown;
    try {
      const j = JSON.parse(body.toString('utf8')) as { token?: unknown; access_token?: unknown };
      token = j.token ?? j.access_token;
    } catch {
      token = undefined;
    }
    if (typeof token !== 'string' || token === '')
      throw new CheckptError(
        'EREGISTRY',
        `the token service of registry ${this.ref.registry} (${realm.origin}) gave no token; check the registry's authentication setup.`,
      );
    this.authorization = `Bearer ${token}`;
  }

  private send(
    method: string,
    url: URL,
    options: RequestOptions,
    authorization: string | undefined,
  ): Promise<IncomingMessage> {
    const headers: Record<string, string> = { ...options.headers };
    if (authorization !== undefined) headers.authorization = authorization;
    const body = options.body;
    if (Buffer.isBuffer(body)) headers['content-length'] = String(body.length);
    else if (body !== undefined) headers['content-length'] = String(options.length ?? 0);
    else if (method === 'PUT' || method === 'POST') headers['content-length'] = '0';
    const tls = url.protocol === 'https:';
    const requestFn = tls ? httpsRequest : httpRequest;
    return new Promise<IncomingMessage>((resolve, reject) => {
      let source: Readable | undefined;
      const req = requestFn(url, {
        method,
        headers,
        // The registry's agent keeps connections open; other hosts (token realm, storage) get fresh ones.
        ...(url.host === this.host && url.protocol === `${this.scheme}:`
          ? { agent: this.agent }
          : {}),
        ...(tls && this.ca !== undefined ? { ca: this.ca } : {}),
      });
      req.setTimeout(this.idleMs, () =>
        req.destroy(
          Object.assign(new Error(`no answer for ${this.idleMs / 1000} s`), { code: 'ETIMEDOUT' }),
        ),
      );
      req.on('response', resolve);
      let readFailed = false;
      req.on('error', (e) => {
        source?.destroy();
        reject(
          readFailed
            ? new CheckptError('EIO', `reading what to upload failed: ${e.message}`, { cause: e })
            : this.unreachable(url, e),
        );
      });
      if (Buffer.isBuffer(body)) req.end(body);
      else if (body !== undefined) {
        source = body();
        source.on('error', (e) => {
          readFailed = true;
          req.destroy(e);
        });
        source.pipe(req);
      } else req.end();
    });
  }

  private unreachable(url: URL, e: unknown): CheckptError {
    if (e instanceof CheckptError) return e;
    const code = errnoOf(e) ?? (e as { code?: string }).code;
    // OpenSSL's messages run over several lines; the first says it.
    const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0]?.trim() ?? '';
    const tlsProblem = /SSL|TLS|certificate|CERT|wrong version|EPROTO/i.test(
      `${code ?? ''} ${msg}`,
    );
    const hint = tlsProblem
      ? this.scheme === 'https'
        ? `if it speaks plain HTTP, add ${this.ref.registry} to CHECKPT_INSECURE_REGISTRIES; if its certificate is from a private CA, give Node the CA with NODE_EXTRA_CA_CERTS=ca.pem`
        : 'it may want TLS: take it out of CHECKPT_INSECURE_REGISTRIES'
      : 'check that it runs and that the host and port in the reference are right';
    return new CheckptError(
      'EREGISTRY',
      `cannot reach registry ${this.ref.registry} at ${url.origin} (${code ?? 'error'}: ${msg}): ${hint}.`,
      { cause: e, ...(code !== undefined && /^E[A-Z0-9]+$/.test(code) ? { errno: code } : {}) },
    );
  }
}

function isRedirect(status: number | undefined): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308;
}

/** Reads a (small) body whole; more than `limit` bytes is an error. */
export async function readBody(res: IncomingMessage, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of bodyOf(res)) {
    n += chunk.length;
    if (n > limit) {
      res.destroy();
      throw new CheckptError(
        'EREGISTRY',
        `the registry sent more than ${limit} bytes where a small answer was expected.`,
      );
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

/** A response's body; a connection that breaks or falls silent midway is EREGISTRY. */
export async function* bodyOf(res: IncomingMessage): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) yield chunk;
  } catch (e) {
    if (e instanceof CheckptError) throw e;
    throw new CheckptError(
      'EREGISTRY',
      `the connection to the registry broke during a download (${e instanceof Error ? e.message : String(e)}); try again.`,
      { cause: e },
    );
  }
}

/** Reads and drops a body, so that the connection can be used again. */
export async function drain(res: IncomingMessage): Promise<void> {
  res.resume();
  await new Promise<void>((resolve) => {
    if (res.complete || res.readableEnded) return resolve();
    res.on('end', resolve);
    res.on('error', () => resolve());
    res.on('close', resolve);
  });
}
