/**
 * CpuShare (dataplane/cpu-share.ts): the packet thread at SCHED_FIFO sleeps
 * when it has held its CPU busyMs without waiting napMs in its event loop, and
 * only then; `--packet-nap` accepts BUSY/NAP or off and names itself otherwise.
 */
import t from 'tap';
import { performance } from 'node:perf_hooks';
import { CpuShare, parsePacketNap } from '../../dataplane/cpu-share.ts';

/** a CpuShare on a fake clock and event-loop idle time, recording its sleeps */
function fake(busyMs = 2, napMs = 0.2) {
  const s = { now: 0, idle: 0, idleReads: 0, slept: [] as number[] };
  const share = new CpuShare({
    clock: () => s.now,
    idle: () => (s.idleReads++, s.idle),
    sleep: (ms) => {
      s.slept.push(ms);
      s.now += ms;
    },
  });
  share.enable(busyMs, napMs);
  return { s, share };
}

t.test('off: never sleeps, reads nothing', async (t) => {
  const s = { slept: 0, reads: 0 };
  const share = new CpuShare({ clock: () => (s.reads++, 1e9), idle: () => 0, sleep: () => s.slept++ });
  t.equal(share.on, false);
  t.equal(share.check(), 0);
  t.equal(s.slept + s.reads, 0, 'not even the clock');
  share.enable(2, 0.2);
  share.disable();
  t.equal(share.check(), 0);
  t.equal(s.slept, 0);
});

t.test('busy without a wait: a nap of napMs every busyMs', async (t) => {
  const { s, share } = fake();
  const reads = s.idleReads;
  s.now = 1.9;
  t.equal(share.check(), 0, 'before busyMs: nothing');
  t.equal(s.idleReads, reads, 'and the idle time not read (one clock read only)');
  s.now = 2.0;
  t.equal(share.check(), 0.2, 'at busyMs with no wait: a nap of 0.2 ms');
  t.same(s.slept, [0.2]);
  t.equal(s.now, 2.2, 'the window starts after the nap');
  s.now = 4.1;
  t.equal(share.check(), 0, 'the next window is busyMs from the end of the nap');
  s.now = 4.2;
  t.equal(share.check(), 0.2);
  t.equal(share.naps, 2);
  t.ok(Math.abs(share.napMsTotal - 0.4) < 1e-9, 'naps counted with their time');
});

t.test('a wait in the window counts: no nap, or only the rest of napMs', async (t) => {
  const { s, share } = fake();
  s.now = 2.5;
  s.idle += 0.3; // the loop waited 0.3 ms for packets in this window
  t.equal(share.check(), 0, 'waited more than napMs: no nap');
  s.now = 4.5;
  s.idle += 0.05;
  t.ok(Math.abs(share.check() - 0.15) < 1e-9, 'waited 0.05 ms: sleeps the other 0.15 ms');
  s.now = 100;
  s.idle += 90;
  t.equal(share.check(), 0, 'after a long idle spell: nothing');
  t.equal(share.naps, 1);
});

t.test('the real sleep takes the thread off the CPU for at least napMs', async (t) => {
  const share = new CpuShare({ busyMs: 1, napMs: 0.5 });
  const t0 = performance.now();
  while (performance.now() - t0 < 1.5); // busy, no turn of the event loop: no idle time
  const before = performance.now();
  const nap = share.check();
  const took = performance.now() - before;
  t.ok(nap > 0 && nap <= 0.5, `a nap (${nap} ms)`);
  t.ok(took >= nap * 0.99, `check() slept ${took.toFixed(3)} ms for a nap of ${nap.toFixed(3)} ms`);
  t.equal(share.naps, 1);
});

t.test('--packet-nap', async (t) => {
  t.same(parsePacketNap('2/0.2'), { busyMs: 2, napMs: 0.2 });
  t.same(parsePacketNap('0.5/0.5'), { busyMs: 0.5, napMs: 0.5 });
  t.same(parsePacketNap('1000/0.01'), { busyMs: 1000, napMs: 0.01 });
  t.equal(parsePacketNap('off'), null);
  for (const bad of ['', '2', '2/', '/0.2', '0.4/0.1', '1001/1', '2/3', '2/0.001', '2:0.2', 'on', '-2/0.2', '2/0.2ms']) {
    t.throws(() => parsePacketNap(bad), /--packet-nap: .* is not off or BUSY\/NAP in ms \(BUSY from 0\.5 to 1000, NAP from 0\.01 to BUSY\), e\.g\. 2\/0\.2/, JSON.stringify(bad));
  }
});
