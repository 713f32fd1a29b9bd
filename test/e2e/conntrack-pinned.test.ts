/**
 * Connections survive a crash: the pinned connection table end to end.
 *
 * `tunproxy run` in the lab's node namespace (its TUN persistent, as the lab
 * makes it); a client outside the cluster holds N TCP connections to a
 * masqueraded ClusterIP, each sending HTTP keep-alive requests one after the
 * other (netclient's streams). The pods answer with the endpoint and the
 * client address they saw, so a connection that goes on with the same
 * endpoint and the same masquerade port is the same connection. Then:
 *   1. kill -9 and an immediate restart: the new tunproxy recovers the table
 *      from --pin-dir and every connection goes on;
 *   2. SIGTERM and a restart: the same (the pinned table is marked closed
 *      cleanly; the JSON snapshot beside it is superseded and removed);
 *   2b. an upgrade across layout versions: the pinned file is set aside, the
 *      SIGTERM snapshot restores the flows, they are pinned again;
 *   3. the control: kill -9, the pinned file's header damaged, restart: the
 *      file is set aside and reported, never trusted, and the connections
 *      break: picked up mid-stream, each gets an endpoint chosen anew, and
 *      about half land on another pod, which resets them (so 1 and 2 are
 *      not vacuous).
 */
import t from 'tap';
import { existsSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import { ip, netnsSkipReason, testPrefix, withNetns } from './helpers.ts';
import { NetClient, ROOT, TunproxyProcess, stopChild } from '../../scripts/harness.ts';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

const NODE = '172.16.9.1';
const MASQ = '10.64.9.1';
const VIP = '10.32.9.10';
const EPS = ['10.64.9.13', '10.64.9.14'];
const N = 40;

const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-pin', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.9.0/24' },
  services: [
    {
      namespace: 'default',
      name: 'web',
      clusterIP: VIP,
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
      endpoints: EPS.map((address) => ({ address })),
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
  t.plan(0, `pinned connection table end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-pin`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-e2e-pin-'));
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
  // the pods' HTTP servers, started here to keep idle keep-alive connections 300 s (Node's default is 5 s):
  // a restart that takes longer on a loaded machine must not have the server close the connections
  for (const ep of EPS) {
    const c = lab.spawn(lab.podFor(ep).ns, [process.execPath, '--import', 'tsx', join(ROOT, 'scripts', 'pod-server.ts'), '--address', ep, '--listen', 'tcp:8080', '--keep-alive-timeout', '300000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    servers.push(c);
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: c.stdout! }).on('line', (l) => l.startsWith('ready') && resolve());
      c.on('exit', (code) => reject(new Error(`pod server ${ep} exited (${code})`)));
    });
  }
  const start = () => TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, stateDir, pinDir, readyTimeoutMs: 30_000 });
  const statuses = async (): Promise<StreamStatus[]> => Promise.all(Array.from({ length: N }, (_, i) => client!.call('stream.status', { name: `c${i}` }) as Promise<StreamStatus>));
  /** every stream answered at least `more` times more since `before`, or the time ran out */
  const progress = async (before: StreamStatus[], more: number, timeoutMs: number): Promise<StreamStatus[]> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = await statuses();
      if (now.every((s, i) => s.closed || s.responses >= before[i].responses + more) || Date.now() > deadline) return now;
      await sleep(200);
    }
  };
  /** what became of the connections that did not go on, for the failure message */
  const why = (after: StreamStatus[], before: StreamStatus[]): string =>
    JSON.stringify(after.map((s, i) => (same(s, first[i]) && s.responses >= before[i].responses + 3 ? null : { closed: s.closed, errors: s.errors.slice(0, 2), clients: s.clients, answered: s.responses - before[i].responses })).filter((x) => x !== null).slice(0, 5));
  /** the same connection: still open, no error, one endpoint, one client address (the same masquerade port) */
  const same = (s: StreamStatus, first: StreamStatus): boolean =>
    !s.closed && s.errors.length === 0 && Object.keys(s.endpoints).length === 1 && Object.keys(s.clients).length === 1 &&
    Object.keys(s.clients)[0] === Object.keys(first.clients)[0];

  tp = await start();
  client = await NetClient.start(lab.client.ns);
  for (let i = 0; i < N; i++) await client.call('stream.start', { name: `c${i}`, to: `${VIP}:80`, intervalMs: 20 });
  const zero = Array.from({ length: N }, () => ({ responses: 0 }) as StreamStatus);
  const first = await progress(zero, 3, 15_000);

  t.test('0. N TCP connections to a masqueraded ClusterIP exchange data', async (t) => {
    t.equal(first.filter((s) => s.responses >= 3 && !s.closed).length, N, 'every connection answers');
    t.ok(first.every((s) => Object.keys(s.clients)[0]?.startsWith(`${MASQ}:`)), 'masqueraded: the pods see the node address');
    t.match(tp!.lines.join('\n'), /connection table pinned in .*tun0\.ct/);
    t.match(tp!.lines.join('\n'), /before the packets move: [1-9]\d* spare views made, the heap collected in [\d.]+ ms/, 'the spare views and the collection before the loop starts');
    t.ok(existsSync(join(pinDir, `${lab.tunName}.ct`)));
  });

  t.test('1. kill -9 and an immediate restart: every connection goes on', async (t) => {
    const before = await statuses();
    const killedAt = Date.now();
    process.kill(tp!.pid, 'SIGKILL');
    await tp!.exited;
    tp = await start();
    t.comment(`ready ${Date.now() - killedAt} ms after the kill`);
    const log = tp.lines.join('\n');
    const m = /connection table recovered from .*tun0\.ct \(written by pid \d+, which did not stop cleanly\): (\d+) flows; \d+ ran out meanwhile, (\d+) torn and (\d+) damaged/.exec(log);
    t.ok(m, `recovered: ${log}`);
    t.ok(Number(m?.[1]) >= N, `at least the ${N} connections' flows (${m?.[1]})`);
    const after = await progress(before, 3, 30_000);
    const went = after.filter((s, i) => same(s, first[i]) && s.responses >= before[i].responses + 3).length;
    t.equal(went, N, `${went} of ${N} connections went on with the same endpoint and masquerade port ${went < N ? why(after, before) : ''}`);
  });

  t.test('2. SIGTERM and a restart: every connection goes on; the pinned table supersedes the snapshot', async (t) => {
    await tp!.stop();
    t.ok(existsSync(join(stateDir, `${lab.tunName}.conntrack.json`)), 'the SIGTERM snapshot is still written');
    const before = await statuses();
    tp = await start();
    const log = tp.lines.join('\n');
    t.match(log, /connection table recovered from .*which stopped cleanly\): \d+ flows/);
    t.match(log, /superseded by the pinned one: removed/);
    t.notOk(existsSync(join(stateDir, `${lab.tunName}.conntrack.json`)));
    const after = await progress(before, 3, 30_000);
    const went = after.filter((s, i) => same(s, first[i]) && s.responses >= before[i].responses + 3).length;
    t.equal(went, N, `${went} of ${N} connections went on ${went < N ? why(after, before) : ''}`);
  });

  t.test('2b. an upgrade to another layout version: the pinned table is set aside, the SIGTERM snapshot brings the flows back, and they are pinned again', async (t) => {
    await tp!.stop();
    const path = join(pinDir, `${lab.tunName}.ct`);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([2]), 0, 1, 4); // the layout version a newer tunproxy would write
    closeSync(fd);
    let before = await statuses();
    tp = await start();
    const log = tp.lines.join('\n');
    t.match(log, /the pinned connection table is not trusted \(layout version 2; this tunproxy reads version 1\): moved to .*tun0\.ct\.set-aside-/);
    t.match(log, /connection table restored from .*tun0\.conntrack\.json: \d+ flows/);
    let after = await progress(before, 3, 30_000);
    t.equal(after.filter((s, i) => same(s, first[i]) && s.responses >= before[i].responses + 3).length, N, `every connection went on ${why(after, before)}`);
    // the flows restored from the snapshot were written to the new pinned table: a kill -9 now keeps them
    before = await statuses();
    process.kill(tp.pid, 'SIGKILL');
    await tp.exited;
    tp = await start();
    t.match(tp.lines.join('\n'), /connection table recovered from .*: (\d+) flows/);
    after = await progress(before, 3, 30_000);
    t.equal(after.filter((s, i) => same(s, first[i]) && s.responses >= before[i].responses + 3).length, N, `and after a kill -9 too ${why(after, before)}`);
  });

  t.test('3. control: a damaged pinned table is set aside, never trusted, and the connections break', async (t) => {
    const before = await statuses();
    process.kill(tp!.pid, 'SIGKILL');
    await tp!.exited;
    const path = join(pinDir, `${lab.tunName}.ct`);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 16); // the capacity's low byte: the header checksum no longer matches
    closeSync(fd);
    tp = await start();
    t.match(tp.lines.join('\n'), /the pinned connection table is not trusted \(header checksum mismatch \(damaged header\)\): moved to .*tun0\.ct\.set-aside-/);
    t.equal(readdirSync(pinDir).filter((f) => f.includes('.set-aside-')).length, 2, 'set aside, kept for a look (beside the one of 2b)');
    const after = await progress(before, 3, 8_000);
    const went = after.filter((s, i) => same(s, first[i]) && s.responses >= before[i].responses + 3).length;
    // picked up mid-stream, each connection's endpoint is chosen anew (1 in 2 keeps its own by chance)
    t.ok(went < N, `without the table, ${N - went} of ${N} connections broke`);
  });

  t.test('4. a TUN device tunproxy creates itself is made persistent: it outlives a kill -9', async (t) => {
    const ns = `${testPrefix('pin')}-own`;
    withNetns(t, [ns]);
    const own = await TunproxyProcess.start({ ns, tun: 'tpx9', rules, stateDir: join(dir, 'own-state'), pinDir: join(dir, 'own-pin') });
    t.match(own.lines.join('\n'), /created tpx9 persistent/);
    process.kill(own.pid, 'SIGKILL');
    await own.exited;
    t.match(ip(['-n', ns, '-d', 'link', 'show', 'tpx9']), /persist on/, 'the device is still there, persistent');
  });
}
