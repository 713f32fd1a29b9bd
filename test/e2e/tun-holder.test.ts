/**
 * The device keeps its queue: with `tunproxy tun-holder` holding the TUN's
 * open file, the packets routed into it while `tunproxy run` restarts wait
 * in the device's queue and are delivered by the next run; without it they
 * are dropped.
 *
 * The lab (persistent tun0); a stream of sequence-numbered UDP datagrams
 * (bench/tools/udpgen.c --seq, RATE a second, paced every millisecond) from
 * the client through a masqueraded ClusterIP to one pod, counted there by
 * bench/tools/seqsink.c (distinct sequence numbers, the longest gap between
 * two arrivals, the longest time from send to arrival). Across each restart:
 *   0. the control, run opening the device itself: a SIGTERM restart and a
 *      kill -9 with an immediate restart each lose the datagrams of the
 *      restart (Linux drops what is routed into a TUN no process holds);
 *   1. with the holder (--txqueuelen 30 000: the restart's gap, seconds at
 *      RATE, fits): a SIGTERM restart, 0 lost;
 *   2. with the holder: kill -9 and an immediate restart: nothing lost but
 *      what the killed process had read from the device and not yet written
 *      (a kill between the loop's read and its write: at most one batch, 64
 *      packets; at 2 000 a second usually 0, sometimes 1);
 *      in both the datagrams of the gap arrive late (the longest delay about
 *      the gap): they waited in the queue, they were not re-sent;
 *   3. what goes wrong is said: no holder on the socket, a holder opened with
 *      another --offload, a run without --tun-holder while the holder holds
 *      the device;
 *   4. a holder creates a missing device persistent, and when the device is
 *      deleted under it, hands nothing out and exits 1.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import { ip, netnsSkipReason, testPrefix, withNetns } from './helpers.ts';
import { ROOT, TUNPROXY_BIN, TunproxyProcess, buildCTool, jsonResult, stopChild } from '../../scripts/harness.ts';

const NODE = '172.16.11.1';
const MASQ = '10.64.11.1';
const VIP = '10.32.11.10';
const POD = '10.64.11.13';
const PORT = 9000;
const RATE = 2000;
/** the TUN loop's read batch (dataplane/loop.ts, default 64) */
const BATCH = 64;
const QUEUE = 30000;

const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-hold', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.11.0/24' },
  services: [
    {
      namespace: 'default',
      name: 'stream',
      clusterIP: VIP,
      ports: [{ name: 'udp', protocol: 'UDP', port: PORT, targetPort: PORT }],
      endpoints: [{ address: POD }],
    },
  ],
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface SinkResult {
  received: number;
  distinct: number;
  duplicates: number;
  foreign: number;
  maxGapMs: number;
  maxDelayMs: number;
}
interface GenResult {
  sent: number;
  errors: number;
}

/** A process inside ns whose last JSON line on stdout is its result; `ready` once it printed "ready" (or exited). */
function jsonTool<T>(ns: string, argv: string[]): { child: ChildProcess; ready: Promise<void>; result: Promise<T> } {
  return jsonResult<T>(spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }), argv[0]);
}

const skip = netnsSkipReason({ tun: true });
if (skip) {
  t.plan(0, `tun-holder end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-hold`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-e2e-hold-'));
  const rules = join(dir, 'rules.json');
  const stateDir = join(dir, 'state');
  const pinDir = join(dir, 'pin');
  const holderSock = join(dir, 'holder.sock');
  writeFileSync(rules, JSON.stringify(ruleSet, null, 2));
  const GEN = buildCTool('udpgen');
  const SINK = buildCTool('seqsink');
  let tp: TunproxyProcess | null = null;
  let holder: ChildProcess | null = null;
  const holderLines: string[] = [];
  const tools: ChildProcess[] = [];
  t.teardown(async () => {
    try {
      for (const c of tools) await stopChild(c, 1000);
      await tp?.stop();
      if (holder) await stopChild(holder, 2000);
    } finally {
      await labDown(prefix, { stateDir: join(dir, 'lab') });
      rmSync(dir, { recursive: true, force: true });
    }
  });
  const lab = await labUp({ prefix, ruleSet, stateDir: join(dir, 'lab'), podServers: false });
  const start = (more: string[] = [], o: { stateDir?: string; pinDir?: string } = {}) =>
    TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, stateDir: o.stateDir ?? stateDir, pinDir: o.pinDir ?? pinDir, args: ['--txqueuelen', String(QUEUE), ...more], readyTimeoutMs: 30_000 });

  /** The stream across one restart: `restart` stops the running tunproxy and starts the next; returns what the pod counted. */
  const across = async (restart: () => Promise<void>) => {
    const sink = jsonTool<SinkResult>(lab.podFor(POD).ns, [SINK, '--bind', POD, '--port', String(PORT), '--expect', String(1 << 20)]);
    tools.push(sink.child);
    await sink.ready;
    const gen = jsonTool<GenResult>(lab.client.ns, [GEN, '--dst', VIP, '--dport', String(PORT), '--seq', '--size', '64', '--rate', String(RATE), '--duration', '120', '--flows', '1']);
    tools.push(gen.child);
    await sleep(700);
    const t0 = Date.now();
    await restart();
    const gapMs = Date.now() - t0;
    await sleep(1000);
    gen.child.kill('SIGTERM');
    const g = await gen.result;
    await sleep(500);
    sink.child.kill('SIGTERM');
    const s = await sink.result;
    return { sent: g.sent, distinct: s.distinct, lost: g.sent - s.distinct, duplicates: s.duplicates, foreign: s.foreign, maxGapMs: s.maxGapMs, maxDelayMs: s.maxDelayMs, restartMs: gapMs, sendErrors: g.errors };
  };
  const sigterm = async () => {
    await tp!.stop();
    tp = await start(tp!.lines.some((l) => /taken from the holder/.test(l)) ? ['--tun-holder', holderSock] : []);
  };
  const kill9 = async () => {
    process.kill(tp!.pid, 'SIGKILL');
    await tp!.exited;
    tp = await start(tp!.lines.some((l) => /taken from the holder/.test(l)) ? ['--tun-holder', holderSock] : []);
  };
  const says = (r: Awaited<ReturnType<typeof across>>) =>
    `sent ${r.sent}, delivered ${r.distinct}, lost ${r.lost}; restart ${r.restartMs} ms; longest gap at the pod ${r.maxGapMs.toFixed(0)} ms, longest send-to-arrival ${r.maxDelayMs.toFixed(0)} ms`;

  t.test('0. control, without the holder: a restart loses the datagrams routed into the TUN meanwhile', async (t) => {
    tp = await start();
    t.notMatch(tp.lines.join('\n'), /holder/);
    const a = await across(sigterm);
    t.comment(`SIGTERM restart: ${says(a)}`);
    t.ok(a.lost > RATE / 10, `SIGTERM: datagrams lost (${a.lost})`);
    const b = await across(kill9);
    t.comment(`kill -9 and restart: ${says(b)}`);
    t.ok(b.lost > RATE / 10, `kill -9: datagrams lost (${b.lost})`);
    for (const r of [a, b]) t.ok(r.duplicates === 0 && r.foreign === 0 && r.sendErrors === 0, 'nothing duplicated, misdelivered, or refused at the sender');
    await tp.stop();
    tp = null;
  });

  t.test('the holder holds the device and serves its fd on a 0600 socket', async (t) => {
    holder = spawn('ip', ['netns', 'exec', lab.node.ns, process.execPath, TUNPROXY_BIN, 'tun-holder', '--tun', lab.tunName, '--socket', holderSock, '--txqueuelen', String(QUEUE)], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: holder!.stderr! }).on('line', (l) => {
        holderLines.push(l);
        if (/; ready$/.test(l)) resolve();
      });
      holder!.once('exit', (code) => reject(new Error(`tun-holder exited (${code}): ${holderLines.join('\n')}`)));
    });
    t.match(holderLines.join('\n'), new RegExp(`holding ${lab.tunName} \\(virtio-net header; queue ${QUEUE} packets\\), handing it out on ${holderSock}; ready`));
    t.equal(statSync(holderSock).mode & 0o777, 0o600);
    tp = await start(['--tun-holder', holderSock]);
    t.match(tp.lines.join('\n'), new RegExp(`${lab.tunName} taken from the holder on ${holderSock}`));
    await sleep(100);
    t.match(holderLines.join('\n'), new RegExp(`handed ${lab.tunName} to pid \\d+ \\(1 so far\\)`));
  });

  t.test('1. with the holder, a SIGTERM restart: 0 datagrams lost, those of the restart delivered late', async (t) => {
    const r = await across(sigterm);
    t.comment(`SIGTERM restart with the holder: ${says(r)}`);
    t.equal(r.lost, 0, `0 lost (${says(r)})`);
    t.equal(r.duplicates + r.foreign, 0, 'nothing duplicated or misdelivered');
    t.ok(r.maxDelayMs > 100, `the restart's datagrams waited in the queue (${r.maxDelayMs.toFixed(0)} ms at most)`);
  });

  t.test('2. with the holder, kill -9 and an immediate restart: nothing lost but the batch the killed process held', async (t) => {
    const r = await across(kill9);
    t.comment(`kill -9 and restart with the holder: ${says(r)}`);
    // the queue keeps what waits in the device; a packet the killed process had read and not written is gone
    t.ok(r.lost <= BATCH, `at most the one batch the killed process held is lost (${says(r)})`);
    t.equal(r.duplicates + r.foreign, 0, 'nothing duplicated or misdelivered');
    t.ok(r.maxDelayMs > 100, `the restart's datagrams waited in the queue (${r.maxDelayMs.toFixed(0)} ms at most)`);
    t.match(holderLines.join('\n'), /\(3 so far\)/, 'one hand-out per start');
  });

  t.test('3. what goes wrong is said', async (t) => {
    const other = (tag: string) => ({ stateDir: join(dir, `${tag}-state`), pinDir: join(dir, `${tag}-pin`) });
    await t.rejects(start(['--tun-holder', join(dir, 'nobody.sock')], other('none')), /--tun-holder .*nobody\.sock: connecting to .*nobody\.sock failed: ENOENT — no such socket: is the holder running.*\(start `tunproxy tun-holder --tun tun0 --socket .*nobody\.sock` first, or start without --tun-holder\)/);
    await t.rejects(start(['--tun-holder', holderSock, '--offload', 'off'], other('off')), /the holder opened tun0 with a virtio-net header \(--offload auto\), this process needs it without a virtio-net header \(--offload off\): start both with the same --offload/);
    await t.rejects(start([], other('own')), /EBUSY/);
    t.ok(tp!.running, 'the running tunproxy is untouched');
  });

  t.test('4. a holder makes a missing device persistent; when the device is deleted it hands nothing out and exits', async (t) => {
    const ns = `${testPrefix('hold')}-own`;
    withNetns(t, [ns]);
    const sock = join(dir, 'own-holder.sock');
    const own = spawn('ip', ['netns', 'exec', ns, process.execPath, TUNPROXY_BIN, 'tun-holder', '--tun', 'tpx1', '--socket', sock], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    tools.push(own);
    const lines: string[] = [];
    const exited = new Promise<number | null>((r) => own.once('exit', (code) => r(code)));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: own.stderr! }).on('line', (l) => {
        lines.push(l);
        if (/; ready$/.test(l)) resolve();
      });
      own.once('exit', (code) => reject(new Error(`tun-holder exited (${code}): ${lines.join('\n')}`)));
    });
    t.match(lines.join('\n'), /created tpx1 persistent/);
    t.match(ip(['-n', ns, '-d', 'link', 'show', 'tpx1']), /persist on/);
    ip(['-n', ns, 'link', 'delete', 'tpx1']);
    await t.rejects(
      TunproxyProcess.start({ ns, tun: 'tpx1', rules, stateDir: join(dir, 'gone-state'), pinDir: join(dir, 'gone-pin'), args: ['--tun-holder', sock] }),
      /no fd from .*own-holder\.sock: EPROTO — the peer closed or answered without an fd \(not a tun-holder, or its device is gone/,
    );
    t.equal(await exited, 1, 'the holder exits 1 (a service manager starts it again, and it makes the device anew)');
    t.match(lines.join('\n'), /tpx1 is no longer attached to the held file \(TUNGETIFF failed: EBADFD — the device was deleted/);
  });
}
