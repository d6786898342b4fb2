// SHA-256 through checkpt's OpenSSL addon: the digests node:crypto gives, whatever the pieces;
// misuse is an error, never a wrong digest; without the addon, node:crypto.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { setSha256Addon, sha256 } from '../../dist/common/sha256.js';
import { nativeAddon, useNativeSha256 } from '../../dist/engine/native.js';
import { unitTest as test } from '../helpers.mjs';

const addon = nativeAddon('checkpt-openssl.node');

test('the addon has SHA-256 here, and useNativeSha256() puts it in place of node:crypto', () => {
  for (const f of ['sha256Init', 'sha256Update', 'sha256Final'])
    assert.equal(typeof addon[f], 'function', f);
  setSha256Addon(undefined);
  assert.equal(sha256().constructor.name, 'Hash', 'node:crypto without the addon');
  useNativeSha256();
  try {
    assert.notEqual(sha256().constructor.name, 'Hash', "the addon's once installed");
  } finally {
    setSha256Addon(undefined);
  }
});

test("the addon's digests are node:crypto's: empty, around the 64-byte block, 1 MiB in random pieces", () => {
  setSha256Addon(addon);
  try {
    const data = randomBytes(1024 * 1024 + 3);
    for (const n of [0, 1, 55, 56, 63, 64, 65, 127, 128, 4096, data.length]) {
      const want = createHash('sha256').update(data.subarray(0, n)).digest();
      assert.ok(sha256().update(data.subarray(0, n)).digest().equals(want), `${n} bytes whole`);
      const h = sha256();
      for (let at = 0; at < n;) {
        const k = Math.min(n - at, 1 + Math.floor(Math.random() * 70_000));
        h.update(data.subarray(at, at + k));
        at += k;
      }
      assert.ok(h.digest().equals(want), `${n} bytes in pieces`);
    }
    // A view into the middle of a larger buffer: its bytes, not the buffer's.
    const view = new Uint8Array(data.buffer, data.byteOffset + 7, 1000);
    assert.ok(sha256().update(view).digest().equals(createHash('sha256').update(view).digest()));
  } finally {
    setSha256Addon(undefined);
  }
});

test('misuse is an error, never a digest: a second digest, an update after it, bad arguments', () => {
  setSha256Addon(addon);
  try {
    const h = sha256().update(Buffer.from('x'));
    h.digest();
    assert.throws(() => h.digest(), /digested twice/);
    assert.throws(() => h.update(Buffer.from('y')), /after its digest/);
    assert.throws(() => sha256().update('text'), /SHA256_Update failed/);
    assert.equal(addon.sha256Init(Buffer.alloc(16)), false, 'a state buffer too small');
    assert.equal(addon.sha256Final(Buffer.alloc(256), Buffer.alloc(8)), false, 'no room for it');
  } finally {
    setSha256Addon(undefined);
  }
});
