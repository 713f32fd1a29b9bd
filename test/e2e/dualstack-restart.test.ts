/**
 * IPv6 connections survive a restart, as IPv4 ones do: the dual-stack lab,
 * `tunproxy run` on its TUN, a client outside the cluster holding N6 TCP
 * connections to an IPv6 ClusterIP (masqueraded to the node's IPv6
 * masquerade address) and N4 to the IPv4 ClusterIP of the same service, each
 * sending HTTP keep-alive requests one after the other. The pods answer with
 * the endpoint and the client address they saw, so a connection that goes
 * on with the same endpoint and the same masquerade port is the same
 * connection. Then:
 *   1. SIGTERM and a restart without a pinned table (--no-pin): the saved
 *      conntrack.json carries both families, every connection goes on;
 *   2. SIGTERM and a restart with the pinned tables: none yet, so the saved
 *      table is restored, into the pinned tables (<tun>.ct and <tun>.ct6);
 *   3. kill -9 and an immediate restart: both pinned tables are recovered,
 *      every connection goes on; 3b. the same after a SIGTERM (the saved
 *      table is then superseded by the pinned ones);
 *   4. the control: kill -9, the .ct6 file's header damaged, restart: it is
 *      set aside and reported, never trusted; the IPv4 connections go on, and
 *      IPv6 ones break (picked up mid-stream, each gets an endpoint chosen
 *      anew, about half land on the other pod, which resets them), so 1-3
 *      are not vacuous.
 */
import t from 'tap';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import { netnsSkipReason } from './helpers.ts';
import { NetClient, ROOT, TunproxyProcess, stopChild } from '../../scripts/harness.ts';

const NODE = '172.16.10.1';
const MASQ = '10.64.10.1';
const NODE6 = 'fd00:172:16:10::1';
const MASQ6 = 'fd00:10:64:10::1';
const WEB = '10.32.10.10';
const WEB6 = 'fd00:10:32:10::a';
const EPS = ['10.64.10.13', '10.64.10.14'];
const EPS6 = ['fd00:10:64:10::13', 'fd00:10:64:10::14'];
const N6 = 20;
const N4 = 6;

const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-ds-restart', addresses: [NODE, MASQ, NODE6, MASQ6], clusterCIDR: '10.64.10.0/24,fd00:10:64:10::/64' },
  services: [
    {
      namespace: 'default',
      name: 'web',
      clusterIP: WEB,
      clusterIPs: [WEB, WEB6],
      ipFamilies: ['IPv4', 'IPv6'],
      ipFamilyPolicy: 'RequireDualStack',
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
      endpoints: [...EPS, ...EPS6].map((address) => ({ address })),
    },
  ],
};

interface StreamStatus {
  requests: number;
  responses: number;
  endpoints: Record<string, number>;
  clients: Record<string, number>;
  errors: string[];
  closed: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `dual-stack restart end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-dsr`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-e2e-dsr-'));
  const stateDir = join(dir, 'state');
  const pinDir = join(dir, 'pin');
  const rules = join(dir, 'rules.json');
  writeFileSync(rules, JSON.stringify(ruleSet, null, 2));
  let tp: TunproxyProcess | null = null;
  let client: NetClient | null = null;
  const servers: ChildProcess[] = [];
  t.teardown(async () => {
    try {
      await client?.stop();
      await tp?.stop();
      for (const c of servers) await stopChild(c, 2000);
    } finally {
      await labDown(prefix, { stateDir: join(dir, 'lab') });
      rmSync(dir, { recursive: true, force: true });
    }
  });
  const lab = await labUp({ prefix, ruleSet, stateDir: join(dir, 'lab'), podServers: false });
  // the pods' HTTP servers keep idle keep-alive connections 300 s (Node's default is 5 s): a restart on a
  // loaded machine must not have the server close them
  for (const ep of [...EPS, ...EPS6]) {
    const c = lab.spawn(lab.podFor(ep).ns, [process.execPath, '--import', 'tsx', join(ROOT, 'scripts', 'pod-server.ts'), '--address', ep, '--listen', 'tcp:8080', '--keep-alive-timeout', '300000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    servers.push(c);
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: c.stdout! }).on('line', (l) => l.startsWith('ready') && resolve());
      c.on('exit', (code) => reject(new Error(`pod server ${ep} exited (${code})`)));
    });
  }
  const start = (pin = true) => TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, stateDir, pinDir, readyTimeoutMs: 30_000, args: pin ? [] : ['--no-pin'] });
  const names = [...Array.from({ length: N6 }, (_, i) => `v6-${i}`), ...Array.from({ length: N4 }, (_, i) => `v4-${i}`)];
  const is6 = (i: number) => i < N6;
  const statuses = async (): Promise<StreamStatus[]> => Promise.all(names.map((name) => client!.call('stream.status', { name }) as Promise<StreamStatus>));
  /** every stream answered at least `more` times more since `before`, or the time ran out */
  const progress = async (before: StreamStatus[], more: number, timeoutMs: number): Promise<StreamStatus[]> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = await statuses();
      if (now.every((s, i) => s.closed || s.responses >= before[i].responses + more) || Date.now() > deadline) return now;
      await sleep(100);
    }
  };
  /** the same connection: still open, no error, one endpoint, one client address (the same masquerade port) */
  const same = (s: StreamStatus, first: StreamStatus): boolean =>
    !s.closed && s.errors.length === 0 && Object.keys(s.endpoints).length === 1 && Object.keys(s.clients).length === 1 &&
    Object.keys(s.clients)[0] === Object.keys(first.clients)[0];
  /** how many connections of each family went on since `before` */
  const wentOn = (after: StreamStatus[], before: StreamStatus[]): { v6: number; v4: number; why: string } => {
    const ok = after.map((s, i) => same(s, first[i]) && s.responses >= before[i].responses + 3);
    const bad = after.map((s, i) => (ok[i] ? null : { name: names[i], closed: s.closed, errors: s.errors.slice(0, 2), clients: s.clients, answered: s.responses - before[i].responses })).filter((x) => x !== null);
    return { v6: ok.filter((x, i) => x && is6(i)).length, v4: ok.filter((x, i) => x && !is6(i)).length, why: JSON.stringify(bad.slice(0, 4)) };
  };

  tp = await start(false);
  client = await NetClient.start(lab.client.ns);
  for (let i = 0; i < names.length; i++) await client.call('stream.start', { name: names[i], to: is6(i) ? `[${WEB6}]:80` : `${WEB}:80`, intervalMs: 20 });
  const zero = names.map(() => ({ responses: 0 }) as StreamStatus);
  const first = await progress(zero, 3, 15_000);

  t.test('0. IPv6 and IPv4 TCP connections through a dual-stack ClusterIP exchange data, masqueraded', async (t) => {
    t.equal(first.filter((s) => s.responses >= 3 && !s.closed).length, names.length, 'every connection answers');
    t.ok(first.every((s, i) => Object.keys(s.clients)[0]?.startsWith(is6(i) ? `[${MASQ6}]:` : `${MASQ}:`)), 'masqueraded: the pods see the node address of the family');
    t.ok(first.every((s, i) => Object.keys(s.endpoints)[0]?.startsWith(is6(i) ? '[fd00:10:64:10::' : '10.64.10.')), 'each family reaches its own endpoints');
  });

  t.test('1. SIGTERM and a restart from the saved table (--no-pin): the IPv6 flows are saved and restored, every connection goes on', async (t) => {
    await tp!.stop();
    const saved = /connection table saved to .*tun0\.conntrack\.json: (\d+) flows \((\d+) IPv4, (\d+) IPv6\)/.exec(tp!.lines.join('\n'));
    t.ok(saved, 'the save says how many flows of each family');
    t.ok(Number(saved?.[3]) >= N6, `at least the ${N6} IPv6 connections' flows were saved (${saved?.[3]})`);
    t.ok(Number(saved?.[2]) >= N4, `and the ${N4} IPv4 ones (${saved?.[2]})`);
    const before = await statuses();
    tp = await start(false);
    const log = tp.lines.join('\n');
    const m = /connection table restored from .*tun0\.conntrack\.json: \d+ flows \((\d+) IPv4, (\d+) IPv6; saved/.exec(log);
    t.ok(m, m ? 'restored, by family' : `restored, by family: ${log}`);
    t.equal(m?.[2], saved?.[3], 'every saved IPv6 flow restored');
    t.notOk(existsSync(join(stateDir, `${lab.tunName}.conntrack.json`)), 'consumed');
    const w = wentOn(await progress(before, 3, 20_000), before);
    t.equal(w.v6, N6, `${w.v6} of ${N6} IPv6 connections went on with the same endpoint and masquerade port ${w.v6 < N6 ? w.why : ''}`);
    t.equal(w.v4, N4, `${w.v4} of ${N4} IPv4 ones ${w.v4 < N4 ? w.why : ''}`);
  });

  t.test('2. SIGTERM and a restart with pinning: the saved IPv6 flows go into the new pinned <tun>.ct6', async (t) => {
    await tp!.stop();
    const before = await statuses();
    tp = await start(true);
    const log = tp.lines.join('\n');
    t.match(log, /IPv6 connection table pinned in .*tun0\.ct6/);
    t.match(log, /connection table restored from .*tun0\.conntrack\.json: \d+ flows \(\d+ IPv4, \d+ IPv6;/);
    t.ok(existsSync(join(pinDir, `${lab.tunName}.ct6`)));
    const w = wentOn(await progress(before, 3, 20_000), before);
    t.equal(w.v6 + w.v4, names.length, `every connection went on ${w.why}`);
  });

  t.test('3. kill -9 and an immediate restart: the pinned IPv6 table is recovered, every IPv6 connection goes on', async (t) => {
    const before = await statuses();
    const killedAt = Date.now();
    process.kill(tp!.pid, 'SIGKILL');
    await tp!.exited;
    tp = await start(true);
    t.comment(`ready ${Date.now() - killedAt} ms after the kill`);
    const log = tp.lines.join('\n');
    const m6 = /IPv6 connection table recovered from .*tun0\.ct6 \(written by pid \d+, which did not stop cleanly\): (\d+) flows; \d+ ran out meanwhile, (\d+) torn and (\d+) damaged/.exec(log);
    t.ok(m6, m6 ? 'the pinned IPv6 table recovered' : `the pinned IPv6 table recovered: ${log}`);
    t.ok(Number(m6?.[1]) >= N6, `at least the ${N6} IPv6 connections' flows (${m6?.[1]})`);
    t.match(log, /connection table recovered from .*tun0\.ct \(written by pid/, 'and the IPv4 table beside it');
    const w = wentOn(await progress(before, 3, 20_000), before);
    t.equal(w.v6, N6, `${w.v6} of ${N6} IPv6 connections went on ${w.v6 < N6 ? w.why : ''}`);
    t.equal(w.v4, N4, `${w.v4} of ${N4} IPv4 ones ${w.v4 < N4 ? w.why : ''}`);
  });

  t.test('3b. SIGTERM and a restart with both pinned tables: each is recovered, the saved table superseded, every connection goes on', async (t) => {
    await tp!.stop();
    t.match(tp!.lines.join('\n'), /connection table saved to .*: \d+ flows \(\d+ IPv4, \d+ IPv6\)/, 'the snapshot is still written');
    const before = await statuses();
    tp = await start(true);
    const log = tp.lines.join('\n');
    t.match(log, /IPv6 connection table recovered from .*tun0\.ct6 \(written by pid \d+, which stopped cleanly\): \d+ flows/);
    t.match(log, /superseded by the pinned one: removed/);
    t.notOk(existsSync(join(stateDir, `${lab.tunName}.conntrack.json`)));
    const w = wentOn(await progress(before, 3, 20_000), before);
    t.equal(w.v6 + w.v4, names.length, `every connection went on ${w.why}`);
  });

  t.test('4. control: a damaged pinned IPv6 table is set aside, never trusted, and the IPv6 connections break', async (t) => {
    const before = await statuses();
    process.kill(tp!.pid, 'SIGKILL');
    await tp!.exited;
    const fd = openSync(join(pinDir, `${lab.tunName}.ct6`), 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 16); // the capacity's low byte: the header checksum no longer matches
    closeSync(fd);
    tp = await start(true);
    t.match(tp.lines.join('\n'), /the pinned IPv6 connection table is not trusted \(header checksum mismatch \(damaged header\)\): moved to .*tun0\.ct6\.set-aside-/);
    const w = wentOn(await progress(before, 3, 4_000), before);
    t.equal(w.v4, N4, 'the IPv4 connections, whose table was whole, went on');
    t.ok(w.v6 < N6, `without their table, ${N6 - w.v6} of ${N6} IPv6 connections broke`);
  });
}
