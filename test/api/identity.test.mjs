import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after } from 'node:test';
import {
  cleanup,
  describe,
  fixture,
  nodeBinaries,
  removeDir,
  resume,
  startNode,
  tempDir,
  test,
  waitFor,
} from '../helpers.mjs';
import { nativeAddon } from '../../dist/engine/native.js';

after(cleanup);

test("the addon's kernelBytes() fills a buffer of any size from the kernel, each call anew", () => {
  const addon = nativeAddon('checkpt-openssl.node');
  const a = Buffer.alloc(16);
  const b = Buffer.alloc(16);
  assert.equal(addon.kernelBytes(a), true);
  assert.equal(addon.kernelBytes(b), true);
  assert.notDeepEqual(a, Buffer.alloc(16), 'filled');
  assert.notDeepEqual(a, b, 'two calls, two draws');
  const big = Buffer.alloc(1 << 20);
  assert.equal(addon.kernelBytes(big), true);
  assert.notDeepEqual(big.subarray(-16), Buffer.alloc(16), 'filled to its end');
  assert.equal(addon.kernelBytes('not a buffer'), false);
});

test("the addon's refresh() reseeds OpenSSL and fills every buffer it is given from the kernel, in one call", () => {
  const addon = nativeAddon('checkpt-openssl.node');
  const seed = new Uint8Array(16);
  const uuid = Buffer.alloc(16 * 128);
  const int = new Uint8Array(6 * 1024);
  assert.equal(addon.refresh(seed, uuid, int), 0, 'reseeded and filled');
  for (const [name, b] of Object.entries({ seed, uuid, int }))
    assert.notDeepEqual(
      Buffer.from(b).subarray(-16),
      Buffer.alloc(16),
      `${name} filled to its end`,
    );
  const before = Buffer.from(seed);
  assert.equal(addon.refresh(seed), 0);
  assert.notDeepEqual(Buffer.from(seed), before, 'each call draws anew');
  assert.equal(addon.refresh(), 0, 'a reseed alone');
  // REFRESH_NO_FILL: something that is not a Uint8Array, or more than four buffers.
  assert.equal(addon.refresh(seed, 'not a buffer'), 2);
  assert.equal(addon.refresh(seed, seed, seed, seed, seed), 2);
});

const FRESH_EVERYWHERE = [
  'randomBytes',
  'randomUUID',
  'getRandomValues',
  'webcrypto',
  'randomInt',
  'mathRandom',
  'ecPublicKey',
  'ecdsaSignature',
];
// Fresh from OpenSSL alone; the JS-side caches still hold bytes drawn before the checkpoint.
const FROM_OPENSSL = [
  'randomBytes',
  'getRandomValues',
  'webcrypto',
  'ecPublicKey',
  'ecdsaSignature',
];
const CACHED_IN_JS = ['randomUUID', 'randomInt', 'mathRandom'];

/** Checkpoints the fixture in `mode`, resumes the file twice at once; the three sets of values. */
async function threeCopies(node, mode) {
  const dir = tempDir();
  try {
    const file = join(dir, 'identity.ckpt');
    const orig = startNode(node, fixture('identity.mjs'), [file, mode]);
    const o = await waitFor(orig, (e) => e.event === 'values', 'the original to go on');
    assert.equal(o.r, 0);
    assert.equal((await orig.closed).code, 0, orig.stderrText);
    const a = resume(file);
    const b = resume(file);
    const [ra, rb] = await Promise.all([
      waitFor(a, (e) => e.event === 'values', 'copy A'),
      waitFor(b, (e) => e.event === 'values', 'copy B'),
    ]);
    assert.equal(ra.r, 1);
    assert.equal(rb.r, 1);
    assert.equal((await a.closed).code, 7, a.stderrText);
    assert.equal((await b.closed).code, 7, b.stderrText);
    for (const c of [orig, a, b]) assert.doesNotMatch(c.stderrText, /warning/);
    const flushes = [o.flush, ra.flush, rb.flush];
    return { copies: { original: o.values, a: ra.values, b: rb.values }, flushes };
  } finally {
    removeDir(dir);
  }
}

/** Every value (every element of a list) differs between the three processes. */
function assertAllDiffer(copies, keys) {
  for (const key of keys) {
    const lists = Object.values(copies).map((v) => [v[key]].flat());
    for (let i = 0; i < lists[0].length; i++) {
      const seen = lists.map((l) => l[i]);
      assert.equal(new Set(seen).size, 3, `${key}[${i}] is shared: ${JSON.stringify(seen)}`);
    }
  }
}

function assertAllEqual(copies, keys) {
  for (const key of keys) {
    assert.deepEqual(copies.a[key], copies.original[key], `${key}: copy A vs the original`);
    assert.deepEqual(copies.b[key], copies.original[key], `${key}: copy B vs the original`);
  }
}

for (const node of nodeBinaries()) {
  describe(`identity of resumed copies on Node ${node.major}`, () => {
    test("after checkpt() the original and two concurrent copies of a 40 MiB program draw different random values, UUIDs, keys and signatures, Node's random caches overwritten in place", async () => {
      const { copies, flushes } = await threeCopies(node, 'refresh');
      // Found through the inspector on every supported Node: else each lazily resumed copy pays
      // 1,152 draws.
      assert.deepEqual(flushes, ['caches', 'caches', 'caches']);
      assertAllDiffer(copies, FRESH_EVERYWHERE);
    });

    test("in a small program (its copies held until their memory is checked) draws use Node's random caches up: the copies still draw different values", async () => {
      const { copies, flushes } = await threeCopies(node, 'refresh-small');
      assert.deepEqual(flushes, ['draws', 'draws', 'draws']);
      assertAllDiffer(copies, FRESH_EVERYWHERE);
    });

    test('control: without the refresh, the original and both copies draw exactly the same values', async () => {
      assertAllEqual((await threeCopies(node, 'control')).copies, FRESH_EVERYWHERE);
    });

    test("the OpenSSL reseed alone freshens OpenSSL's output but not randomUUID, randomInt or Math.random, which need their caches flushed", async () => {
      const { copies } = await threeCopies(node, 'reseed-only');
      assertAllDiffer(copies, FROM_OPENSSL);
      assertAllEqual(copies, CACHED_IN_JS);
    });
  });
}
