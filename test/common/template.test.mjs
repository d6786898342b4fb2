import assert from 'node:assert/strict';
import { unitTest as test } from '../helpers.mjs';
import { expandTemplate, programName } from '../../dist/common/template.js';

const v = { name: 'server', pid: 4242, uid: 1000 };

test('%N %P %U %% expand like DragonFly kern.ckptfile', () => {
  assert.equal(expandTemplate('%N.ckpt', v), 'server.ckpt');
  assert.equal(expandTemplate('/var/ck/%N-%P-%U.ckpt', v), '/var/ck/server-4242-1000.ckpt');
  assert.equal(expandTemplate('100%%-%N', v), '100%-server');
  assert.equal(expandTemplate('plain', v), 'plain');
  assert.equal(expandTemplate('%%%%', v), '%%');
});

test('unknown escapes, a trailing %, and an empty template are errors with a fix', () => {
  for (const t of ['%X.ckpt', 'a%', '%n']) {
    assert.throws(
      () => expandTemplate(t, v),
      (e) => e.code === 'EBADNAME' && /%N .*%P .*%U .*%%/.test(e.message),
    );
  }
  assert.throws(() => expandTemplate('', v), { code: 'EBADNAME' });
});

test('%N is the main script without extension, else the executable', () => {
  assert.equal(programName(['/usr/bin/node', '/srv/app/server.js']), 'server');
  assert.equal(programName(['/usr/bin/node', '/srv/app/worker.mjs']), 'worker');
  assert.equal(programName(['/usr/bin/node', '/srv/app/.hidden']), '.hidden');
  assert.equal(programName(['/usr/bin/node']), 'node');
  assert.equal(programName(['/usr/bin/node', '/srv/app/noext']), 'noext');
});
