// A private registry (Debian's docker-registry, distribution 2.8) for the registry tests: on
// 127.0.0.1 at a free port, its storage in a temp dir, with basic auth and TLS when asked.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes, sign, X509Certificate, createPrivateKey } from 'node:crypto';
import { createServer } from 'node:http';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, selfSignedPair } from '../helpers.mjs';

export const REGISTRY_BIN = ['/usr/bin/docker-registry', '/usr/bin/registry'].find((p) =>
  existsSync(p),
);

/** Why the registry tests cannot run here, or undefined. */
export const registryMissing = REGISTRY_BIN
  ? undefined
  : 'docker-registry is not installed (bash scripts/setup.sh installs it)';

/** A bcrypt htpasswd line (distribution 2.8 takes nothing else), through libcrypt's crypt(3). */
function htpasswdLine(user, password) {
  const salt = [...randomBytes(22)]
    .map((b) => './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'[b % 64])
    .join('')
    .replace(/.$/, 'e');
  const py = `import ctypes,ctypes.util,sys
l=ctypes.CDLL(ctypes.util.find_library('crypt'));l.crypt.restype=ctypes.c_char_p
sys.stdout.write(l.crypt(sys.argv[1].encode(),sys.argv[2].encode()).decode())`;
  const r = spawnSync('python3', ['-c', py, password, `$2b$05$${salt}`], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0 || !r.stdout.startsWith('$2b$'))
    throw new Error(`cannot make a bcrypt hash: ${r.stderr}`);
  return `${user}:${r.stdout}\n`;
}

function selfSigned(dir) {
  const pair = { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') };
  selfSignedPair(pair.cert, pair.key, '/CN=127.0.0.1', ['-addext', 'subjectAltName=IP:127.0.0.1']);
  return pair;
}

function listening(port) {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Starts a registry; `stop()` kills it by pid and removes its directory. `host` is what goes in a
 * reference; `env` speaks to it (plain HTTP, or its CA).
 */
export async function startRegistry({ user, password, tls = false, token = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'checkpt-registry-'));
  const storage = join(dir, 'storage');
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log: {level: error, accesslog: {disabled: true}}',
    `storage: {filesystem: {rootdirectory: ${storage}}, delete: {enabled: true}}`,
  ];
  let ca;
  if (tls) {
    const { cert, key } = selfSigned(dir);
    ca = cert;
    lines.push(`http: {addr: "127.0.0.1:${port}", tls: {certificate: ${cert}, key: ${key}}}`);
  } else lines.push(`http: {addr: "127.0.0.1:${port}"}`);
  let tokenServer;
  if (token) {
    tokenServer = await startTokenServer(dir, user, password);
    lines.push(
      `auth: {token: {realm: "${tokenServer.realm}", service: checkpt-test, issuer: checkpt-test-issuer, rootcertbundle: ${tokenServer.cert}}}`,
    );
  } else if (user !== undefined) {
    writeFileSync(join(dir, 'htpasswd'), htpasswdLine(user, password));
    lines.push(`auth: {htpasswd: {realm: checkpt-test, path: ${join(dir, 'htpasswd')}}}`);
  }
  writeFileSync(join(dir, 'config.yml'), lines.join('\n') + '\n');
  // Into a file, not a pipe: it logs every 404 at level error, and a test blocked in spawnSync
  // reads no pipe, so a full one would stop the registry mid-request.
  const log = join(dir, 'registry.log');
  const logFd = openSync(log, 'w');
  const child = spawn(REGISTRY_BIN, ['serve', join(dir, 'config.yml')], {
    stdio: ['ignore', 'ignore', logFd],
  });
  closeSync(logFd);
  const stderr = () => {
    try {
      return readFileSync(log, 'utf8').slice(-4000);
    } catch {
      return '';
    }
  };
  const ended = new Promise((resolve) => child.once('close', resolve));
  const stop = async () => {
    await tokenServer?.close();
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid, 'SIGKILL');
      await Promise.race([ended, sleep(10_000)]);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  for (const end = Date.now() + 20_000; !(await listening(port)); await sleep(50)) {
    if (child.exitCode !== null || Date.now() > end) {
      await stop();
      throw new Error(`the registry did not start on port ${port}: ${stderr()}`);
    }
  }
  const host = `127.0.0.1:${port}`;
  const env = { ...process.env, CHECKPT_INSECURE_REGISTRIES: tls ? '' : host };
  if (ca) env.NODE_EXTRA_CA_CERTS = ca;
  return {
    host,
    port,
    dir,
    storage,
    ca,
    env,
    pid: child.pid,
    stop,
    stderr,
    tokens: () => tokenServer?.issued ?? [],
  };
}

/** The path of a blob's bytes in the registry's storage. */
export function blobPath(storage, digest) {
  const hex = digest.slice('sha256:'.length);
  return join(storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

const b64url = (x) =>
  Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

/**
 * The other half of the bearer-token flow, as a registry's auth service does it: checks basic
 * credentials and issues a JWT (ES256, its certificate in x5c) for the scope asked for, which the
 * registry verifies against the certificate it is given (rootcertbundle).
 */
async function startTokenServer(dir, user, password) {
  const cert = join(dir, 'token-cert.pem');
  const keyFile = join(dir, 'token-key.pem');
  selfSignedPair(cert, keyFile, '/CN=checkpt-test-issuer');
  const key = createPrivateKey(readFileSync(keyFile));
  const der = new X509Certificate(readFileSync(cert)).raw.toString('base64');
  const issued = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const given = req.headers.authorization ?? '';
    const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
    if (given !== expected) {
      res.writeHead(401, { 'content-type': 'application/json' });
      return res.end('{"details":"wrong credentials"}');
    }
    const scope = url.searchParams.get('scope') ?? '';
    const [type, name, actions] = scope.split(':');
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: 'checkpt-test-issuer',
      sub: user,
      aud: url.searchParams.get('service'),
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access: type === 'repository' ? [{ type, name, actions: (actions ?? '').split(',') }] : [],
    };
    const input = `${b64url({ typ: 'JWT', alg: 'ES256', x5c: [der] })}.${b64url(claims)}`;
    const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    issued.push(scope);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: `${input}.${sig.toString('base64url')}` }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    realm: `http://127.0.0.1:${server.address().port}/token`,
    cert,
    issued,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
