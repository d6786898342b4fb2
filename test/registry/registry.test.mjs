import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pullCheckpoint, pushCheckpoint } from '../../dist/registry/index.js';
import {
  cleanup,
  cli,
  describe,
  fixture,
  nodeBinaries,
  pidAlive,
  rejectsWith,
  removeDir,
  spawnSync,
  start,
  startNode,
  tempDir,
  test,
  waitFor,
  within,
} from '../helpers.mjs';
import { blobPath, registryMissing, startRegistry } from './registry.mjs';

// Node 18+ has fetch built in; the linter's list of Node globals predates it.
const { fetch, AbortSignal } = globalThis;
const node = nodeBinaries()[0];
const USER = 'alice';
const PASSWORD = 'correct horse';
const skip = registryMissing ?? false;

/** A real checkpoint of test/fixtures/state.mjs, encrypted when `env` names a key file. */
async function checkpointOf(file, env = process.env) {
  const p = startNode(node, fixture('state.mjs'), [file], { env });
  const original = await waitFor(p, (e) => e.event === 'returned', `the checkpoint to ${file}`);
  await within(p.closed, 'the original to end', 30_000);
  return original;
}

/** Flips one byte of `file` at `at`. */
function flip(file, at) {
  const fd = openSync(file, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] ^= 0xff;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
}

const blobCount = (storage) =>
  readdirSync(join(storage, 'docker', 'registry', 'v2', 'blobs', 'sha256')).flatMap((d) =>
    readdirSync(join(storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', d)),
  ).length;

/** What pulls into `dir` may leave: nothing but the files asked for. */
const leftovers = (dir) => readdirSync(dir).filter((n) => n.startsWith('.'));

const pullDirs = () => readdirSync(tmpdir()).filter((n) => n.startsWith('checkpt-pull-'));

describe('checkpoints in a real registry (docker-registry 2.8, basic auth)', { skip }, () => {
  let registry;
  let dir;
  let file;
  let original;
  let env;
  let auth;
  const ref = (tag) => `${registry.host}/team/state:${tag}`;
  const run = (args, extra = {}, stdio = 'pipe') =>
    spawnSync(process.execPath, [cli, ...args], {
      encoding: 'utf8',
      env: { ...env, ...extra },
      stdio,
    });

  before(async () => {
    registry = await startRegistry({ user: USER, password: PASSWORD });
    env = { ...registry.env, CHECKPT_REGISTRY_USER: USER, CHECKPT_REGISTRY_PASSWORD: PASSWORD };
    auth = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;
    dir = tempDir();
    file = join(dir, 'state.ckpt');
    original = await checkpointOf(file);
  });
  after(async () => {
    await cleanup();
    await registry?.stop();
    if (dir) removeDir(dir);
  });

  test('push then pull gives the same bytes; every blob is sent once', async () => {
    const pushed = await within(pushCheckpoint(file, ref('v1'), { env }), 'push');
    assert.equal(pushed.size, statSync(file).size);
    assert.ok(pushed.layers >= 4, `${pushed.layers} layers for ${pushed.size} bytes`);
    assert.equal(pushed.uploaded, pushed.layers + 1, 'every layer and the config sent');
    // The registry keeps the manifest as a blob too.
    assert.equal(blobCount(registry.storage), pushed.uploaded + 1, 'the registry holds them all');
    const out = join(dir, 'pulled.ckpt');
    const pulled = await within(pullCheckpoint(ref('v1'), out, { env }), 'pull');
    assert.equal(pulled.digest, pushed.digest);
    assert.ok(readFileSync(out).equals(readFileSync(file)), 'the same bytes');
    assert.equal(statSync(out).mode & 0o777, 0o600);
    // By digest too, and the digest is checked.
    const byDigest = join(dir, 'by-digest.ckpt');
    await within(pullCheckpoint(pushed.reference, byDigest, { env }), 'pull by digest');
    assert.ok(readFileSync(byDigest).equals(readFileSync(file)));
    assert.deepEqual(leftovers(dir), []);
  });

  test('a plain manifest GET shows what the checkpoint is: media types and annotations', async () => {
    await within(pushCheckpoint(file, ref('annotated'), { env }), 'push');
    const res = await within(
      fetch(`http://${registry.host}/v2/team/state/manifests/annotated`, {
        headers: { authorization: auth, accept: 'application/vnd.oci.image.manifest.v1+json' },
        signal: AbortSignal.timeout(10_000),
      }),
      'manifest GET',
    );
    assert.equal(res.status, 200);
    const m = await res.json();
    assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(m.artifactType, 'application/vnd.checkpt.checkpoint.v1');
    assert.equal(m.config.mediaType, 'application/vnd.checkpt.checkpoint.v1+json');
    assert.ok(m.layers.every((l) => l.mediaType === 'application/vnd.checkpt.checkpoint.chunk.v1'));
    const a = m.annotations;
    assert.equal(a['io.checkpt.pid'], String(original.pid));
    assert.match(a['io.checkpt.program'], /state\.mjs/);
    assert.match(a['io.checkpt.node'], /^v\d+/);
    assert.equal(a['io.checkpt.format'], '2');
    assert.equal(a['io.checkpt.encrypted'], 'false');
    assert.equal(a['io.checkpt.size'], String(statSync(file).size));
    assert.ok(!Number.isNaN(Date.parse(a['org.opencontainers.image.created'])));
  });

  test('a second push of a slightly changed file sends only the changed layers', async () => {
    const first = await within(pushCheckpoint(file, ref('base'), { env }), 'push');
    const changed = join(dir, 'changed.ckpt');
    copyFileSync(file, changed);
    // One byte of the memory (DATA, the bulk of the file), as a program's next checkpoint changes some.
    flip(changed, Math.floor(statSync(changed).size / 2));
    const blobs = blobCount(registry.storage);
    const second = await within(pushCheckpoint(changed, ref('changed'), { env }), 'push');
    assert.equal(second.layers, first.layers);
    // The changed chunk (two, when the byte moved a cut), and the config, which names the file's digest.
    assert.ok(second.uploaded >= 2 && second.uploaded <= 3, `${second.uploaded} blobs sent`);
    assert.ok(second.skipped >= second.layers - 2, `${second.skipped} already there`);
    assert.equal(blobCount(registry.storage), blobs + second.uploaded + 1, 'and the new manifest');
    // Each blob is as stored, but the file is damaged: the pull's check of the whole file refuses it.
    const out = join(dir, 'changed-pulled.ckpt');
    await rejectsWith(pullCheckpoint(ref('changed'), out, { env }), 'EBADIMAGE', 'damaged file');
    assert.equal(existsSync(out), false, 'nothing at the destination');
    assert.deepEqual(leftovers(dir), [], 'no temporary file');
  });

  test('the next checkpoint of the same process shares layers with the one before', async (t) => {
    const first = join(dir, 'first.ckpt');
    const second = join(dir, 'second.ckpt');
    const p = startNode(node, fixture('twice.mjs'), [first, second]);
    await waitFor(p, (e) => e.event === 'done', 'two checkpoints');
    await within(p.closed, 'the program to end', 30_000);
    // A repository of their own: the registry links blobs per repository, so the first push
    // finds none there, not even one that another program's checkpoint happened to share.
    const twice = (tag) => `${registry.host}/team/twice:${tag}`;
    const a = await within(pushCheckpoint(first, twice('first'), { env }), 'push');
    const b = await within(pushCheckpoint(second, twice('second'), { env }), 'push');
    assert.equal(a.skipped, 0);
    t.diagnostic(
      `${b.skipped} of ${b.layers} layers, ${b.size - b.bytesUploaded} of ${b.size} bytes shared`,
    );
    // Measured about half; any shared layer shows the cuts follow the content.
    assert.ok(b.skipped >= 1, `${b.skipped} of ${b.layers} layers shared`);
    assert.ok(b.bytesUploaded < b.size, `${b.bytesUploaded} of ${b.size} bytes sent`);
  });

  test('a blob changed in the registry is refused by its digest; nothing written, nothing resumed', async () => {
    const pushed = await within(pushCheckpoint(file, ref('tampered'), { env }), 'push');
    const m = await (
      await fetch(`http://${registry.host}/v2/team/state/manifests/tampered`, {
        headers: { authorization: auth, accept: 'application/vnd.oci.image.manifest.v1+json' },
        signal: AbortSignal.timeout(10_000),
      })
    ).json();
    // A layer no other tag of this test shares (the copy tagged 'changed' shares all but one or two).
    const layer = m.layers[m.layers.length - 1];
    const data = blobPath(registry.storage, layer.digest);
    const saved = readFileSync(data);
    try {
      flip(data, Math.floor(saved.length / 2));
      const out = join(dir, 'tampered.ckpt');
      await rejectsWith(
        pullCheckpoint(pushed.reference, out, { env }),
        'EBADIMAGE',
        'tampered blob',
        new RegExp(layer.digest),
      );
      assert.equal(existsSync(out), false);
      assert.deepEqual(leftovers(dir), []);
      const r = run(['-r', '--trust-file', `oci://${ref('tampered')}`]);
      assert.equal(r.status, 125, r.stderr);
      assert.match(r.stderr, /other bytes for blob sha256:/);
      assert.doesNotMatch(r.stdout, /returned/, 'nothing ran');
    } finally {
      writeFileSync(data, saved);
    }
  });

  test('checkpt -r oci://REF pulls, verifies and resumes the program; the pulled file goes', async () => {
    assert.equal(run(['push', file, ref('resume')]).status, 0);
    const before = new Set(pullDirs());
    const child = start(process.execPath, [cli, '-r', '--trust-file', `oci://${ref('resume')}`], {
      env,
    });
    const back = await waitFor(child, (e) => e.event === 'returned', 'the resumed copy');
    assert.equal(back.r, 1);
    assert.equal(back.moduleCounter, original.moduleCounter);
    assert.equal(back.mapSize, 100_000);
    await waitFor(child, (e) => e.event === 'timer', 'the copy going on');
    const st = await within(child.closed, 'the copy to end', 30_000);
    // state.mjs's copy exits 7: checkpt -r passes the program's status on.
    assert.equal(st.code, 7, child.stderrText);
    assert.deepEqual(
      pullDirs().filter((d) => !before.has(d)),
      [],
      'the pulled file is removed',
    );
  });

  test('checkpt -r -d oci://REF prints the pid of the running copy; the pulled file is gone by then', async () => {
    assert.equal(run(['push', file, ref('detach')]).status, 0);
    const before = new Set(pullDirs());
    // The copy inherits stdout, as a shell's background job would: a file, not a pipe to wait on.
    const outFile = join(dir, 'detached.out');
    const fd = openSync(outFile, 'w');
    const r = run(['-r', '-d', '--trust-file', `oci://${ref('detach')}`], {}, ['ignore', fd, fd]);
    closeSync(fd);
    const out = readFileSync(outFile, 'utf8');
    assert.equal(r.status, 0, out);
    const pid = Number(out.split('\n').find((l) => /^\d+$/.test(l)));
    assert.ok(pid > 1, `printed a pid: ${out}`);
    assert.deepEqual(
      pullDirs().filter((d) => !before.has(d)),
      [],
      'the pulled file is removed',
    );
    // The copy ends by itself (state.mjs's timer); killed by pid if it has not within 30 s.
    for (const end = Date.now() + 30_000; pidAlive(pid) && Date.now() < end;) await sleep(50);
    if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  });

  test('a plain checkpoint from a registry is resumed only with --trust-file', () => {
    assert.equal(run(['push', file, ref('plain')]).status, 0);
    const r = run(['-r', `oci://${ref('plain')}`]);
    assert.equal(r.status, 125);
    assert.match(r.stderr, /anyone who can push/);
    assert.doesNotMatch(r.stdout, /returned/);
  });

  test('inspect oci://REF shows the checkpoint', () => {
    assert.equal(run(['push', file, ref('inspect')]).status, 0);
    const r = run(['inspect', '--json', '--verify', `oci://${ref('inspect')}`]);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.file, `oci://${ref('inspect')}`);
    assert.equal(j.verified, true);
    assert.equal(j.manifest.pid, original.pid);
  });

  test('credentials from a docker/podman auth file', (t) => {
    const authFile = join(dir, 'auth.json');
    const b64 = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
    writeFileSync(authFile, JSON.stringify({ auths: { [registry.host]: { auth: b64 } } }));
    t.after(() => writeFileSync(authFile, '{}'));
    const out = join(dir, 'authfile.ckpt');
    const r = run(['push', file, ref('authfile')], {
      CHECKPT_REGISTRY_USER: '',
      CHECKPT_REGISTRY_PASSWORD: '',
      REGISTRY_AUTH_FILE: authFile,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /0 blobs sent/, 'everything already there');
    const p = run(['pull', ref('authfile'), out], {
      CHECKPT_REGISTRY_USER: '',
      CHECKPT_REGISTRY_PASSWORD: '',
      REGISTRY_AUTH_FILE: authFile,
    });
    assert.equal(p.status, 0, p.stderr);
    assert.ok(readFileSync(out).equals(readFileSync(file)));
  });

  test('wrong password, no credentials, missing tag, no TLS opt-in, unreachable: one clear error each', async () => {
    const out = join(dir, 'never.ckpt');
    await rejectsWith(
      pullCheckpoint(ref('v1'), out, { env: { ...env, CHECKPT_REGISTRY_PASSWORD: 'wrong' } }),
      'EREGISTRY',
      'wrong password',
      new RegExp(`${registry.host} denied access to team/state \\(401\\).*CHECKPT_REGISTRY_USER`),
    );
    const anonymous = { ...registry.env, HOME: dir, XDG_RUNTIME_DIR: '', REGISTRY_AUTH_FILE: '' };
    await rejectsWith(
      pushCheckpoint(file, ref('anon'), { env: anonymous }),
      'EREGISTRY',
      'no credentials',
      /without credentials: log in/,
    );
    await rejectsWith(
      pullCheckpoint(ref('no-such-tag'), out, { env }),
      'EREGISTRY',
      'missing tag',
      new RegExp(`${registry.host} has no tag 'no-such-tag' in team/state`),
    );
    await rejectsWith(
      pullCheckpoint(ref('v1'), out, { env: { ...env, CHECKPT_INSECURE_REGISTRIES: '' } }),
      'EREGISTRY',
      'plain HTTP without opt-in',
      /CHECKPT_INSECURE_REGISTRIES/,
    );
    const { freePort } = await import('../helpers.mjs');
    const closed = `127.0.0.1:${await freePort()}`;
    await rejectsWith(
      pullCheckpoint(`${closed}/team/state:v1`, out, {
        env: { ...env, CHECKPT_INSECURE_REGISTRIES: closed },
      }),
      'EREGISTRY',
      'unreachable',
      new RegExp(`cannot reach registry ${closed}.*ECONNREFUSED`),
    );
    const r = run(['pull', ref('no-such-tag'), out]);
    assert.equal(r.status, 125);
    assert.match(r.stderr, /^checkpt: registry .* has no tag/);
    assert.equal(existsSync(out), false);
    assert.deepEqual(leftovers(dir), []);
  });
});

describe('an encrypted checkpoint in a registry over TLS', { skip }, () => {
  let registry;
  let dir;
  let file;
  let env;
  before(async () => {
    registry = await startRegistry({ tls: true });
    dir = tempDir();
    const key = join(dir, 'key');
    writeFileSync(key, randomBytes(32), { mode: 0o600 });
    env = { ...registry.env, CHECKPT_KEY_FILE: key };
    file = join(dir, 'sealed.ckpt');
    await checkpointOf(file, { ...process.env, CHECKPT_KEY_FILE: key });
  });
  after(async () => {
    await cleanup();
    await registry?.stop();
    if (dir) removeDir(dir);
  });

  test('stays encrypted, says nothing of the program, and resumes without --trust-file', async () => {
    const ref = `${registry.host}/team/sealed:v1`;
    const ca = readFileSync(registry.ca);
    const pushed = await within(pushCheckpoint(file, ref, { env, ca }), 'push over TLS');
    const out = join(dir, 'pulled.ckpt');
    await within(pullCheckpoint(ref, out, { env, ca }), 'pull over TLS');
    assert.ok(readFileSync(out).equals(readFileSync(file)), 'the sealed bytes as they were');
    // The manifest as the registry stores it.
    const m = JSON.parse(readFileSync(blobPath(registry.storage, pushed.digest), 'utf8'));
    assert.equal(m.annotations['io.checkpt.encrypted'], 'true');
    assert.equal(
      m.annotations['io.checkpt.program'],
      undefined,
      'the sealed manifest stays sealed',
    );
    // Without the CA the certificate is refused, with what to do.
    await rejectsWith(
      pullCheckpoint(ref, join(dir, 'x.ckpt'), { env }),
      'EREGISTRY',
      'no CA',
      /NODE_EXTRA_CA_CERTS/,
    );
    // Without the key: refused before anything is downloaded, saying what to set.
    const nokey = spawnSync(process.execPath, [cli, '-r', `oci://${ref}`], {
      encoding: 'utf8',
      env: { ...env, CHECKPT_KEY_FILE: '' },
    });
    assert.equal(nokey.status, 125);
    assert.match(nokey.stderr, /is encrypted and CHECKPT_KEY_FILE is not set/);
    // The CLI takes the CA from NODE_EXTRA_CA_CERTS, as Node does.
    const child = start(process.execPath, [cli, '-r', `oci://${ref}`], { env });
    const back = await waitFor(child, (e) => e.event === 'returned', 'the resumed copy');
    assert.equal(back.r, 1);
    const st = await within(child.closed, 'the copy to end', 30_000);
    // state.mjs's copy exits 7: checkpt -r passes the program's status on.
    assert.equal(st.code, 7, child.stderrText);
  });
});

describe('a registry that asks for bearer tokens', { skip }, () => {
  let registry;
  let dir;
  let file;
  before(async () => {
    registry = await startRegistry({ user: USER, password: PASSWORD, token: true });
    dir = tempDir();
    file = join(dir, 'state.ckpt');
    await checkpointOf(file);
  });
  after(async () => {
    await cleanup();
    await registry?.stop();
    if (dir) removeDir(dir);
  });

  test('push and pull get a token for their scope with the credentials; bad ones are refused', async () => {
    const env = {
      ...registry.env,
      CHECKPT_REGISTRY_USER: USER,
      CHECKPT_REGISTRY_PASSWORD: PASSWORD,
    };
    const ref = `${registry.host}/team/tokens:v1`;
    await within(pushCheckpoint(file, ref, { env }), 'push');
    const out = join(dir, 'pulled.ckpt');
    await within(pullCheckpoint(ref, out, { env }), 'pull');
    assert.ok(readFileSync(out).equals(readFileSync(file)));
    assert.deepEqual(registry.tokens(), [
      'repository:team/tokens:pull,push',
      'repository:team/tokens:pull',
    ]);
    await rejectsWith(
      pullCheckpoint(ref, join(dir, 'x.ckpt'), {
        env: { ...env, CHECKPT_REGISTRY_PASSWORD: 'wrong' },
      }),
      'EREGISTRY',
      'wrong password at the token service',
      /denied access to team\/tokens \(401\)/,
    );
    assert.deepEqual(leftovers(dir), []);
  });
});
