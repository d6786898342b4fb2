import assert from 'node:assert/strict';
import { createCipheriv } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckptError } from '../../dist/common/errors.js';
import { authFiles, findCredentials, parseChallenge } from '../../dist/registry/auth.js';
import { chunkFile, chunkingFor } from '../../dist/registry/chunker.js';
import { INSECURE_REGISTRIES } from '../../dist/common/config.js';
import { formatReference, parseReference } from '../../dist/registry/reference.js';
import { describe, scratchDir, test } from '../helpers.mjs';

/** Incompressible bytes, the same in every run: AES-256-CTR's keystream under a fixed key. */
function fixedBytes(n) {
  return createCipheriv('aes-256-ctr', Buffer.alloc(32, 7), Buffer.alloc(16)).update(
    Buffer.alloc(n),
  );
}

describe('registry references, credentials and chunks', { unit: true }, () => {
  test('references parse the way container tools read them', () => {
    assert.deepEqual(parseReference('oci://registry.example.com/team/app:v1'), {
      registry: 'registry.example.com',
      repository: 'team/app',
      tag: 'v1',
    });
    assert.deepEqual(parseReference('localhost:5000/app'), {
      registry: 'localhost:5000',
      repository: 'app',
      tag: 'latest',
    });
    assert.deepEqual(parseReference('app'), {
      registry: 'docker.io',
      repository: 'library/app',
      tag: 'latest',
    });
    const d = `sha256:${'ab'.repeat(32)}`;
    assert.deepEqual(parseReference(`127.0.0.1:1234/a/b/c@${d}`), {
      registry: '127.0.0.1:1234',
      repository: 'a/b/c',
      digest: d,
    });
    assert.equal(formatReference(parseReference(`h.io/a:t@${d}`)), `h.io/a:t@${d}`);
    for (const bad of ['', 'oci://', 'h.io/App:x', 'h.io/a@sha256:12', 'h.io/a:', 'h.io//a'])
      assert.throws(
        () => parseReference(bad),
        (e) => e instanceof CheckptError && e.code === 'EBADNAME',
        bad,
      );
  });

  test('a bearer challenge gives realm, service and scope; basic its realm', () => {
    assert.deepEqual(
      parseChallenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"',
      ),
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.example.com/token',
          service: 'registry.example.com',
          scope: 'repository:a/b:pull',
        },
      },
    );
    assert.deepEqual(parseChallenge('Basic realm="x y"'), {
      scheme: 'basic',
      params: { realm: 'x y' },
    });
    assert.equal(parseChallenge(undefined), undefined);
  });

  test('credentials: the variables first, then the auth files in the container tools order', (t) => {
    const dir = scratchDir(t);
    const env = { HOME: join(dir, 'home'), XDG_RUNTIME_DIR: join(dir, 'run') };
    assert.deepEqual(authFiles(env), [
      join(dir, 'run', 'containers', 'auth.json'),
      join(dir, 'home', '.docker', 'config.json'),
    ]);
    assert.equal(findCredentials('r.example.com', env), undefined);
    mkdirSync(join(dir, 'home', '.docker'), { recursive: true });
    const b64 = (s) => Buffer.from(s).toString('base64');
    writeFileSync(
      join(dir, 'home', '.docker', 'config.json'),
      JSON.stringify({
        auths: {
          'r.example.com': { auth: b64('docker:pw:with:colons') },
          'https://index.docker.io/v1/': { auth: b64('hub:pw') },
        },
      }),
    );
    assert.deepEqual(findCredentials('r.example.com', env), {
      username: 'docker',
      password: 'pw:with:colons',
      source: join(dir, 'home', '.docker', 'config.json'),
    });
    assert.equal(findCredentials('docker.io', env)?.username, 'hub');
    mkdirSync(join(dir, 'run', 'containers'), { recursive: true });
    writeFileSync(
      join(dir, 'run', 'containers', 'auth.json'),
      JSON.stringify({ auths: { 'r.example.com': { auth: b64('podman:pw') } } }),
    );
    assert.equal(findCredentials('r.example.com', env)?.username, 'podman');
    const file = join(dir, 'given.json');
    writeFileSync(file, JSON.stringify({ auths: { 'r.example.com': { auth: b64('given:pw') } } }));
    assert.equal(
      findCredentials('r.example.com', { ...env, REGISTRY_AUTH_FILE: file })?.username,
      'given',
    );
    const vars = { ...env, CHECKPT_REGISTRY_USER: 'me', CHECKPT_REGISTRY_PASSWORD: 'pw' };
    assert.equal(findCredentials('r.example.com', vars)?.username, 'me');
    assert.throws(
      () => findCredentials('r.example.com', { CHECKPT_REGISTRY_USER: 'me' }),
      (e) => e.code === 'EBADCONFIG' && /CHECKPT_REGISTRY_PASSWORD/.test(e.message),
    );
    writeFileSync(file, '{not json');
    assert.throws(
      () => findCredentials('r.example.com', { REGISTRY_AUTH_FILE: file }),
      (e) => e.code === 'EBADCONFIG',
    );
  });

  test('content-defined chunks: a change in the middle leaves the other chunks as they were', async (t) => {
    const dir = scratchDir(t);
    const chunking = { min: 16 * 1024, avg: 32 * 1024, max: 256 * 1024 };
    // The same bytes in every run: with random ones a rare file (1 in several hundred) needed 4
    // chunks to fall back into step, and failed the bound below now and then.
    const data = fixedBytes(3 * 1024 * 1024);
    writeFileSync(join(dir, 'a'), data);
    const a = await chunkFile(join(dir, 'a'), chunking);
    assert.ok(a.chunks.length > 20, `${a.chunks.length} chunks`);
    assert.equal(
      a.chunks.reduce((n, c) => n + c.length, 0),
      data.length,
    );
    assert.ok(a.chunks.every((c) => c.length <= chunking.max));
    // Bytes inserted shift everything after them; only the chunks around the insertion change.
    const b = Buffer.concat([
      data.subarray(0, 1_500_000),
      Buffer.from('inserted'),
      data.subarray(1_500_000),
    ]);
    writeFileSync(join(dir, 'b'), b);
    const bc = await chunkFile(join(dir, 'b'), chunking);
    const before = new Set(a.chunks.map((c) => c.digest));
    const fresh = bc.chunks.filter((c) => !before.has(c.digest));
    assert.ok(fresh.length >= 1 && fresh.length <= 2, `${fresh.length} new chunks`);
    assert.notEqual(a.digest, bc.digest);
    // The same bytes, the same cuts.
    assert.deepEqual((await chunkFile(join(dir, 'a'), chunking)).chunks, a.chunks);
  });

  test('layers are sized by the file: about 256 of them, units of 64 KiB to 4 MiB', () => {
    const K = 1024;
    assert.deepEqual(chunkingFor(0), { min: 64 * K, avg: 64 * K, max: 512 * K });
    assert.deepEqual(chunkingFor(27e6), { min: 64 * K, avg: 64 * K, max: 512 * K });
    assert.equal(chunkingFor(2 ** 30).min, 2 * K * K);
    assert.equal(chunkingFor(2 ** 40).min, 4 * K * K);
    // Files of about the same size are cut by the same rule.
    assert.deepEqual(chunkingFor(300e6), chunkingFor(310e6));
  });

  test('CHECKPT_INSECURE_REGISTRIES: hosts as in references, anything else refused', () => {
    const get = (v) => INSECURE_REGISTRIES.get({ CHECKPT_INSECURE_REGISTRIES: v });
    assert.deepEqual(get(''), []);
    assert.deepEqual(get('localhost:5000, [::1]:5000,r.io'), [
      'localhost:5000',
      '[::1]:5000',
      'r.io',
    ]);
    assert.throws(
      () => get('http://r.io'),
      (e) => e.code === 'EBADCONFIG',
    );
  });
});
