/**
 * `tunproxy run --packet-priority` and `--txqueuelen` on a real TUN: the packet
 * thread alone gets the priority (the control worker and V8's and libuv's threads
 * keep theirs), --packet-cpu puts it on its CPU alone, at fifo it naps
 * (--packet-nap), the device's queue gets the length, and all are said at start.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, getPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import { TunproxyProcess } from '../../scripts/harness.ts';
import { netnsSkipReason } from './helpers.ts';

const rs: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-prio', addresses: ['172.16.31.1', '10.64.31.1'], masqueradeAddress: '10.64.31.1', clusterCIDR: '10.64.31.0/24' },
  services: [{ namespace: 'default', name: 'echo', clusterIP: '10.32.31.10', ports: [{ name: 'u', protocol: 'UDP', port: 7000, targetPort: 7000 }], endpoints: [{ address: '10.64.31.13' }] }],
};

/** nice and scheduling policy of every thread of pid (field 19 of stat; policy from field 41) */
function threads(pid: number): Array<{ tid: number; nice: number; policy: number }> {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // after "pid (comm) ": state is field 3, so field n is f[n - 3]
    return { tid: Number(tid), nice: Number(f[19 - 3]), policy: Number(f[41 - 3]) };
  });
}

const skip = netnsSkipReason({ tun: true });
t.test('--packet-priority and --txqueuelen', { skip: skip ?? false, timeout: 120_000 }, async (t) => {
  const prefix = `tp-e${process.pid}-prio`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-e2e-prio-'));
  const rules = join(dir, 'rules.json');
  writeFileSync(rules, JSON.stringify(rs));
  let tp: TunproxyProcess | null = null;
  t.teardown(async () => {
    try {
      await tp?.stop();
    } finally {
      await labDown(prefix, { stateDir: dir });
      rmSync(dir, { recursive: true, force: true });
    }
  });
  const lab = await labUp({ prefix, ruleSet: rs, stateDir: dir });
  const queue = () => Number(spawnSync('ip', ['netns', 'exec', lab.node.ns, 'cat', `/sys/class/net/${lab.tunName}/tx_queue_len`], { encoding: 'utf8' }).stdout.trim());
  const start = (args: string[]) => TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, stateDir: join(dir, 'tp'), pinDir: join(dir, 'pin'), args });

  // tunproxy inherits this test's nice (0 normally; CI or a user may run the suite under nice)
  const base = getPriority(0);
  tp = await start(['--packet-priority', 'nice:-5', '--txqueuelen', '3000']);
  t.equal(queue(), 3000, 'the TUN queue is 3000 packets');
  t.ok(tp.lines.some((l) => /tun0 queue: 3000 packets \(was \d+\)/.test(l)), 'the queue said at start');
  t.ok(tp.lines.some((l) => l.includes(`the packet thread at nice -5 (was ${base}); the other threads unchanged`)), 'the priority said at start');
  let th = threads(tp.pid);
  t.equal(th.find((x) => x.tid === tp!.pid)?.nice, -5, 'the packet thread (tid = pid) at nice -5');
  t.ok(th.some((x) => x.tid !== tp!.pid && x.nice === Math.min(19, base + 10)), `the control worker at nice ${Math.min(19, base + 10)} (lowered by itself, from ${base})`);
  t.ok(th.filter((x) => x.tid !== tp!.pid).every((x) => x.nice >= base), 'no other thread raised');
  await tp.stop();
  tp = null;

  const cpus = availableParallelism();
  tp = await start(['--packet-priority', 'fifo:5', ...(cpus > 1 ? ['--packet-cpu', '1'] : [])]);
  th = threads(tp.pid);
  t.equal(th.find((x) => x.tid === tp!.pid)?.policy, 1, 'the packet thread at SCHED_FIFO');
  t.ok(th.filter((x) => x.tid !== tp!.pid).every((x) => x.policy === 0), 'every other thread at SCHED_OTHER');
  t.ok(th.every((x) => x.nice === base), `with fifo the control worker keeps its nice (${base})`);
  if (cpus > 1) {
    const allowed = (tid: number) => /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${tp!.pid}/task/${tid}/status`, 'utf8'))![1];
    t.equal(allowed(tp.pid), '1', 'the packet thread on CPU 1 alone');
    const worker = /the control worker on CPU (\S+)/.exec(tp.lines.find((l) => /the packet thread on CPU 1, the control worker on CPU/.test(l)) ?? '');
    t.ok(worker, 'the pinning said at start');
    const others = th.filter((x) => x.tid !== tp!.pid);
    t.ok(others.length > 1 && others.every((x) => allowed(x.tid) === worker?.[1]), `every other thread (${others.length}: the control worker, V8's, libuv's) on CPU ${worker?.[1]}, none on CPU 1`);
  }
  t.ok(tp.lines.some((l) => l.includes('the packet thread sleeps 0.2 ms after 2 ms on its CPU without a wait, in its control work (--packet-nap)')), 'at fifo, the naps said at start');
  t.equal(queue(), 3000, 'without --txqueuelen the device keeps its queue');
  await tp.stop();
  tp = null;

  tp = await start(['--packet-priority', 'nice:-2', '--packet-nap', '3/0.3']);
  t.ok(tp.lines.some((l) => l.includes('--packet-nap 3/0.3 has no effect without --packet-priority fifo')), 'without fifo a --packet-nap is said to do nothing');
  t.notOk(tp.lines.some((l) => l.includes('the packet thread sleeps')), 'and no naps');
  await tp.stop();
  tp = null;
  await t.rejects(start(['--packet-priority', 'fifo:5', '--packet-nap', '2/5']), /--packet-nap: "2\/5" is not off or BUSY\/NAP/, 'a bad --packet-nap: an error naming the option');

  await t.rejects(start(['--packet-priority', 'fifo:0']), /--packet-priority: "fifo:0" is not none/, 'a bad value: an error naming the option');
});
