// The dump front's side of CRIU's RPC (native/criu-rpc.c, through the helper's test modes): the
// messages CRIU really sends decode, damaged or oversized ones are refused without a crash, and
// the DUMP request says what criu.ts's dump command line says. Real CRIU can hardly be made to
// send a malformed message, so the bytes below were captured from CRIU 4.2.1 (`criu swrk`, a
// checkpoint() of a Node program, and a dump of a pid that does not exist) and then damaged here.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { decodeMessage } from '../../dist/engine/criu-image.js';
import { dumpCommand, argvOf } from '../../dist/engine/criu.js';
import { removeDir, root, tempDir, unitTest, describe } from '../helpers.mjs';

const helper = join(root, 'build', 'checkpt-helper');

const RLIMIT =
  "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n";
/** criu_resp messages as CRIU 4.2.1 wrote them on its RPC socket, in the order of a dump. */
const CAPTURED = {
  preDump: '080610012a0a0a087072652d64756d70',
  queryExtFiles: '080610012a110a0f71756572792d6578742d66696c6573',
  postDump: '080610012a0b0a09706f73742d64756d70',
  dumped: `080110011a0208004a5e${Buffer.from(RLIMIT).toString('hex')}`,
  failed: `080110001a02080038034a5e${Buffer.from(RLIMIT).toString('hex')}`,
};

/** The helper's decoder on these bytes: its one line of output and how it exited. */
function decode(bytes) {
  const r = spawnSync(helper, ['rpc-decode'], { input: bytes, encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.signal, null, `the decoder crashed on ${bytes.toString('hex')}`);
  return { status: r.status, out: r.stdout.trim() };
}
const hex = (h) => Buffer.from(h, 'hex');

describe('CRIU RPC messages', { unit: true }, () => {
  unitTest("CRIU's notifications and dump responses, as captured, decode", () => {
    assert.deepEqual(decode(hex(CAPTURED.preDump)), {
      status: 0,
      out: 'type=6 success=1 script=pre-dump errno=0 errmsg=',
    });
    assert.match(
      decode(hex(CAPTURED.queryExtFiles)).out,
      /^type=6 success=1 script=query-ext-files /,
    );
    assert.match(decode(hex(CAPTURED.postDump)).out, /^type=6 success=1 script=post-dump /);
    const ok = decode(hex(CAPTURED.dumped));
    assert.equal(ok.status, 0);
    assert.match(ok.out, /^type=1 success=1 script= errno=0 errmsg=Error \(criu\/util\.c:1534\)/);
    // A failed dump: success false, cr_errno ESRCH, CRIU's first error line.
    assert.match(
      decode(hex(CAPTURED.failed)).out,
      /^type=1 success=0 script= errno=3 errmsg=Error/,
    );
  });

  unitTest('every truncation of a real message is decoded or refused, never read past', () => {
    for (const h of Object.values(CAPTURED)) {
      const whole = hex(h);
      for (let n = 0; n < whole.length; n++) {
        const { status, out } = decode(whole.subarray(0, n));
        // A cut between fields can still be a well-formed message; inside one it never is.
        assert.ok(status === 0 || /^malformed: /.test(out), `${n} bytes: ${out}`);
        assert.ok(status === 0 || status === 1, `${n} bytes: exit ${status}`);
      }
    }
    // criu_notify cut inside the script name, criu_resp's length cut to match: the name's own
    // length says more than criu_notify holds.
    const cut = Buffer.concat([hex('080610012a05'), hex(CAPTURED.preDump).subarray(6, 11)]);
    assert.deepEqual(decode(cut), {
      status: 1,
      out: 'malformed: criu_notify.script runs past the end of the message',
    });
  });

  unitTest('lengths that point past the end, huge or negative, are refused', () => {
    const m = hex(CAPTURED.preDump);
    const long = Buffer.from(m);
    long[5] = 0x7f; // criu_resp.notify: 127 bytes, of the 11 there are
    assert.match(decode(long).out, /^malformed: criu_resp\.notify runs past/);
    // criu_resp.cr_errmsg with a ten-byte length of 2^63 - 1, then 2^64 - 1 as int64 (negative).
    for (const len of ['ffffffffffffffff7f', 'ffffffffffffffffff01']) {
      const r = decode(hex(`080110014a${len}41`));
      assert.equal(r.status, 1, r.out);
      assert.match(r.out, /^malformed: criu_resp\.cr_errmsg runs past/);
    }
    // An eleven-byte varint is no varint.
    assert.match(decode(hex('08ffffffffffffffffffff01')).out, /^malformed: a truncated varint/);
  });

  unitTest('a message larger than any response is refused whole, not truncated', () => {
    const big = Buffer.alloc(65537, 0);
    big.set(hex(CAPTURED.dumped));
    assert.deepEqual(decode(big), {
      status: 1,
      out: 'malformed: the message is larger than any response CRIU sends',
    });
  });

  unitTest('missing required fields, groups and overlong action names are refused', () => {
    assert.match(decode(hex('0806')).out, /^malformed: criu_resp without its type or success/);
    assert.match(decode(hex('1001')).out, /^malformed: criu_resp without its type or success/);
    assert.match(decode(hex('08061001')).out, /^malformed: a notification without criu_notify/);
    assert.match(decode(hex('0806100113')).out, /^malformed: .*unknown wire type/); // group start
    const name = Buffer.alloc(100, 0x61);
    const notify = Buffer.concat([hex('0a64'), name]);
    const m = Buffer.concat([hex('080610012a'), Buffer.from([notify.length]), notify]);
    assert.match(decode(m).out, /^malformed: criu_notify\.script is longer than any action name/);
    assert.match(decode(Buffer.alloc(0)).out, /^malformed: /);
  });

  unitTest("fields this front does not know (a newer CRIU's) are skipped", () => {
    // criu_resp.status (11, varint), a fixed64, a fixed32 and a length-delimited field 200.
    const extra = hex('5805' + '41' + '00'.repeat(8) + '1d' + '00'.repeat(4) + 'c20c0100');
    const m = Buffer.concat([hex(CAPTURED.postDump), extra]);
    assert.match(decode(m).out, /^type=6 success=1 script=post-dump /);
  });

  unitTest("control characters in CRIU's text do not reach checkpt's log", () => {
    const msg = Buffer.from('bad\x1b[31m\x07');
    const m = Buffer.concat([hex('080110004a'), Buffer.from([msg.length]), msg]);
    assert.match(decode(m).out, /errmsg=bad\?\[31m\?$/);
  });
});

describe('the DUMP request', { unit: true }, () => {
  const dirs = [];
  const dir = () => {
    const d = tempDir('checkpt-rpc-');
    dirs.push(d);
    return d;
  };

  function request(cmd) {
    const r = spawnSync(helper, ['rpc-request', '--pid', '4242', '--', ...argvOf(cmd)], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    return { status: r.status, stderr: r.stderr, fields: r.status === 0 ? opts(r.stdout) : [] };
  }
  /** criu_req.opts as [field number, value] pairs: numbers for varints, strings for bytes. */
  function opts(hexText) {
    const req = decodeMessage(hex(hexText.trim()));
    assert.deepEqual(
      req.filter((f) => f.no === 1).map((f) => f.int),
      [1],
      'criu_req.type is DUMP',
    );
    const o = req.find((f) => f.no === 2).bytes;
    return decodeMessage(o).map((f) => [f.no, f.wire === 0 ? f.int : f.bytes.toString()]);
  }

  unitTest("each option of checkpt's dump command lines becomes its criu_opts field", () => {
    try {
      const work = dir();
      const images = dir();
      const running = request(
        dumpCommand({ pid: 4242, imagesDir: images, workDir: work, externalUnix: [7, 8] }),
      );
      assert.equal(running.status, 0, running.stderr);
      const f = new Map();
      for (const [k, v] of running.fields) f.set(k, [...(f.get(k) ?? []), v]);
      assert.equal(f.get(2)[0], 4242, 'pid');
      assert.ok(f.get(1)[0] >= 10 && f.get(17)[0] >= 10, 'images_dir_fd, work_dir_fd');
      assert.deepEqual(f.get(10), ['dump.log'], 'log_file');
      assert.deepEqual(f.get(9), [2], 'log_level (-v2)');
      assert.deepEqual(f.get(12), [1], 'notify_scripts');
      for (const [field, what] of [
        [3, 'leave_running'],
        [7, 'shell_job'],
        [8, 'file_locks'],
        [5, 'tcp_established'],
        [46, 'tcp_skip_in_flight'],
      ])
        assert.deepEqual(f.get(field), [1], what);
      assert.deepEqual(f.get(64), [2], 'network_lock NFTABLES');
      assert.deepEqual(f.get(37), ['unix[7]', 'unix[8]'], 'external');
      assert.equal(f.get(69), undefined, 'not leave_stopped');

      const stopped = request(
        dumpCommand({
          pid: 4242,
          imagesDir: images,
          workDir: work,
          leave: 'stopped',
          tcp: 'close',
        }),
      );
      assert.equal(stopped.status, 0, stopped.stderr);
      const g = new Map(stopped.fields);
      assert.equal(g.get(69), 1, 'leave_stopped');
      assert.equal(g.get(3), undefined, 'not leave_running');
      assert.equal(g.get(52), 1, 'tcp_close');
      assert.equal(g.get(5), undefined, 'not tcp_established');
      assert.equal(g.get(64), 3, 'network_lock SKIP');
    } finally {
      dirs.forEach(removeDir);
    }
  });

  unitTest('an option CRIU’s RPC request cannot carry is refused before anything starts', () => {
    const d = dir();
    try {
      const base = dumpCommand({ pid: 4242, imagesDir: d, workDir: d });
      for (const extra of [['--lazy-pages'], ['--action-script', '/bin/true'], ['-o', 'a/b.log']]) {
        const cmd = { ...base, args: [...base.args, ...extra] };
        const r = request(cmd);
        assert.equal(r.status, 126, extra.join(' '));
        assert.match(r.stderr, /no counterpart|must be a name/);
      }
      // Nor does the front make its FIFO or start anything for such a request.
      const fifo = join(d, 'ctl');
      const front = spawnSync(
        helper,
        [
          'dump',
          '--pid',
          '4242',
          '--fifo',
          fifo,
          '--timeout-ms',
          '1000',
          '--worker',
          process.execPath,
          '/nonexistent.js',
          '/nonexistent.json',
          '--',
          ...argvOf(base),
          '--lazy-pages',
        ],
        { encoding: 'utf8', timeout: 10_000 },
      );
      assert.equal(front.status, 126);
      assert.match(front.stderr, /--lazy-pages has no counterpart/);
      assert.ok(!existsSync(fifo));
    } finally {
      dirs.forEach(removeDir);
    }
  });
});
