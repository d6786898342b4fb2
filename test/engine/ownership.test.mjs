// Who may resume a checkpoint (src/engine/ownership.ts): the rule alone, on manifests as written.
import assert from 'node:assert/strict';
import { resumeRefusal } from '../../dist/engine/ownership.js';
import { describe, unitTest } from '../helpers.mjs';

describe('resumeRefusal', { unit: true }, () => {
  unitTest('root resumes what root made, whoever the program ran as', () => {
    assert.equal(resumeRefusal({ uid: 0 }, 'f', 'root', 0), undefined);
    assert.equal(resumeRefusal({ uid: 1000 }, 'f', 'root', 0), undefined);
  });

  unitTest('root refuses an image made without root: its processes would run as root', () => {
    for (const rootless of [true, false, 'yes', 1]) {
      const e = resumeRefusal({ uid: 1000, rootless }, 'f', 'root', 0);
      assert.equal(e?.code, 'EPERM', String(rootless));
      assert.match(e.message, /made without root by uid 1000; root does not resume it/);
    }
  });

  unitTest('an ordinary user resumes only images of their own, made without root', () => {
    assert.equal(resumeRefusal({ uid: 1000, rootless: true }, 'f', 'rootless', 1000), undefined);
    const other = resumeRefusal({ uid: 1000, rootless: true }, 'f', 'rootless', 1001);
    assert.equal(other?.code, 'EPERM');
    assert.match(other.message, /made by uid 1000, and you are uid 1001/);
    // Root's image, even of a program that ran as this very user, needs root.
    for (const uid of [0, 1001]) {
      const e = resumeRefusal({ uid }, 'f', 'rootless', 1001);
      assert.equal(e?.code, 'EPERM');
      assert.match(e.message, /made by root .*resuming it needs root/);
    }
    // A manifest without a number for the uid matches nobody.
    assert.equal(resumeRefusal({ rootless: true }, 'f', 'rootless', 1001)?.code, 'EPERM');
  });

  unitTest(
    'an image of the granted CRIU: only its maker, only with the grant usable, never root',
    () => {
      const m = { uid: 1000, rootless: true, granted: true };
      assert.equal(resumeRefusal(m, 'f', 'rootless', 1000, 'usable'), undefined);
      const none = resumeRefusal(m, 'f', 'rootless', 1000, 'none');
      assert.equal(none?.code, 'EPERM');
      assert.match(none.message, /needs that CRIU again: there is none here/);
      assert.match(none.message, /checkpt setup --grant GROUP/);
      const outside = resumeRefusal(m, 'f', 'rootless', 1000, 'not a member');
      assert.match(outside.message, /not in the group it is granted to/);
      // The grant gives no one another user's image, nor root a user's.
      assert.match(
        resumeRefusal(m, 'f', 'rootless', 1001, 'usable').message,
        /made by uid 1000, and you are uid 1001/,
      );
      for (const granted of [true, 'yes']) {
        // `granted` alone (no `rootless`) still counts as made without root.
        const e = resumeRefusal({ uid: 1000, granted }, 'f', 'root', 0, 'usable');
        assert.equal(e?.code, 'EPERM');
        assert.match(e.message, /granted CRIU\); root does not resume it/);
      }
    },
  );
});
