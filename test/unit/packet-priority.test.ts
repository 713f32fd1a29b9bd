/**
 * --packet-priority and --txqueuelen of `tunproxy run`: what they accept, and the
 * error (naming the option) for what they do not.
 */
import t from 'tap';
import { parsePacketCpu, parsePacketPriority, parseTxQueueLen } from '../../control/worker/priority.ts';

t.test('--packet-priority', async (t) => {
  t.same(parsePacketPriority('none'), { kind: 'none' });
  t.same(parsePacketPriority('nice:-10'), { kind: 'nice', value: -10 });
  t.same(parsePacketPriority('nice:19'), { kind: 'nice', value: 19 });
  t.same(parsePacketPriority('fifo:1'), { kind: 'fifo', value: 1 });
  t.same(parsePacketPriority('fifo:99'), { kind: 'fifo', value: 99 });
  for (const bad of ['', 'fifo', 'fifo:0', 'fifo:100', 'nice:-21', 'nice:20', 'rr:5', 'nice:1.5', 'nice: 3', 'NONE']) {
    t.throws(() => parsePacketPriority(bad), /--packet-priority: .* is not none, nice:N \(N from -20 to 19\) or fifo:N \(N from 1 to 99\)/, JSON.stringify(bad));
  }
});

t.test('--txqueuelen', async (t) => {
  t.equal(parseTxQueueLen('0'), 0);
  t.equal(parseTxQueueLen('10000'), 10000);
  t.equal(parseTxQueueLen('1000000'), 1000000);
  for (const bad of ['', '-1', '1e4', '1000001', 'many', '10.5']) {
    t.throws(() => parseTxQueueLen(bad), /--txqueuelen: .* must be a number of packets 0\.\.1000000/, JSON.stringify(bad));
  }
});

t.test('--packet-cpu', async (t) => {
  t.equal(parsePacketCpu(undefined, 4), -1);
  t.equal(parsePacketCpu('none', 4), -1);
  t.equal(parsePacketCpu('0', 4), 0);
  t.equal(parsePacketCpu('3', 4), 3);
  for (const bad of ['4', '-1', 'x', '1.5', '']) t.throws(() => parsePacketCpu(bad, 4), /--packet-cpu: .* must be a CPU number 0\.\.3 \(or none\)/, JSON.stringify(bad));
  t.throws(() => parsePacketCpu('0', 1), /--packet-cpu: this machine has one CPU/);
});
