import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { REGISTRY_PASSWORD, REGISTRY_USER } from '../common/config.js';
import { CheckptError } from '../common/errors.js';

export interface Credentials {
  username: string;
  password: string;
  /** Where they came from, for messages: a variable or an auth file's path. */
  source: string;
}

/** The auth files container tools write (`podman login`, `docker login`), first match wins. */
export function authFiles(env: NodeJS.ProcessEnv = process.env): string[] {
  const files: string[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  files.push(join(env.DOCKER_CONFIG ?? join(env.HOME ?? homedir(), '.docker'), 'config.json'));
  return files;
}

/** The keys an auth file may file `registry` under (Docker Hub's historical URL among them). */
function keysFor(registry: string): string[] {
  const keys = [registry, `https://${registry}`, `http://${registry}`];
  if (registry === 'docker.io')
    keys.push('https://index.docker.io/v1/', 'index.docker.io', 'registry-1.docker.io');
  return keys;
}

function fromAuthFile(file: string, registry: string): Credentials | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  let auths: Record<string, { auth?: unknown }>;
  try {
    auths = (JSON.parse(text) as { auths?: Record<string, { auth?: unknown }> }).auths ?? {};
  } catch (e) {
    throw new CheckptError(
      'EBADCONFIG',
      `${file} is not valid JSON (${(e as Error).message}); fix it or log in again (podman login / docker login).`,
      { path: file },
    );
  }
  for (const key of keysFor(registry)) {
    const entry = auths[key.replace(/\/+$/, '')] ?? auths[key];
    if (entry === undefined || typeof entry.auth !== 'string' || entry.auth === '') continue;
    const plain = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    if (colon <= 0)
      throw new CheckptError(
        'EBADCONFIG',
        `${file}: the auth of ${key} is not base64 of user:password; log in again (podman login ${registry}).`,
        { path: file },
      );
    return { username: plain.slice(0, colon), password: plain.slice(colon + 1), source: file };
  }
  return undefined;
}

/**
 * The credentials for `registry`: CHECKPT_REGISTRY_USER/PASSWORD, else the first auth file with an
 * entry for it; undefined when there are none (anonymous access).
 */
export function findCredentials(
  registry: string,
  env: NodeJS.ProcessEnv = process.env,
): Credentials | undefined {
  const username = REGISTRY_USER.get(env);
  const password = REGISTRY_PASSWORD.get(env);
  if (username !== undefined || password !== undefined) {
    if (username === undefined || password === undefined)
      throw new CheckptError(
        'EBADCONFIG',
        `${username === undefined ? REGISTRY_USER.name : REGISTRY_PASSWORD.name} is not set but ${username === undefined ? REGISTRY_PASSWORD.name : REGISTRY_USER.name} is: set both, or neither to use the auth file.`,
      );
    return { username, password, source: `${REGISTRY_USER.name}/${REGISTRY_PASSWORD.name}` };
  }
  for (const file of authFiles(env)) {
    const c = fromAuthFile(file, registry);
    if (c) return c;
  }
  return undefined;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** The first challenge of a WWW-Authenticate header: `Bearer realm="...",service="...",scope="..."`. */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2] ?? '')) !== null) {
    if (p[0] === '') break;
    params[(p[1] as string).toLowerCase()] =
      p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: (m[1] as string).toLowerCase(), params };
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64')}`;
}
