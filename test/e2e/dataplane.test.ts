/**
 * tunproxy end to end: `tunproxy run` on the lab's TUN in the node namespace,
 * real servers in the pod namespaces, real clients outside the cluster (the
 * client namespace) and inside it (the client pod). One lab for the file,
 * several checks on it: ClusterIP (HTTP and UDP), NodePort, every endpoint
 * reached, masquerade as the pods see it, client source preserved for
 * in-cluster clients, hairpin, REJECT of a service without endpoints, and a
 * malformed packet dropped and counted while traffic flows on.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import type { Lab } from '../../scripts/lab.ts';
import { nsRun } from '../../scripts/ns.ts';
import { netnsSkipReason } from './helpers.ts';
import { NetClient, TunproxyProcess, buildCTool, tally } from '../../scripts/harness.ts';

const NODE = '172.16.5.1';
const MASQ = '10.64.5.1';
const WEB = '10.32.5.10';
const SOLO = '10.32.5.20';
const EMPTY = '10.32.5.200';
const EPS = ['10.64.5.13', '10.64.5.14', '10.64.5.15'];
const CLIENT_POD = '10.64.5.250';

const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-e2e', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.5.0/24' },
  services: [
    {
      namespace: 'default',
      name: 'web',
      clusterIP: WEB,
      ports: [
        { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 },
        { name: 'echo', protocol: 'UDP', port: 7000, targetPort: 7000, nodePort: 30700 },
      ],
      endpoints: EPS.map((address) => ({ address, nodeLocal: true })),
    },
    {
      // one endpoint: the pod behind it reaching the service reaches itself (hairpin)
      namespace: 'default',
      name: 'solo',
      clusterIP: SOLO,
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
      endpoints: [{ address: EPS[0], nodeLocal: true }],
    },
    {
      namespace: 'default',
      name: 'empty',
      clusterIP: EMPTY,
      ports: [
        { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 },
        { name: 'echo', protocol: 'UDP', port: 5353, targetPort: 5353 },
      ],
      endpoints: [],
    },
  ],
};

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `tunproxy end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-dp`;
  const stateDir = mkdtempSync(join(tmpdir(), 'tp-e2e-dp-'));
  const rules = join(stateDir, 'rules.json');
  writeFileSync(rules, JSON.stringify(ruleSet, null, 2));
  let tp: TunproxyProcess | null = null;
  const agents: NetClient[] = [];
  t.teardown(async () => {
    try {
      await Promise.all(agents.map((a) => a.stop()));
      await tp?.stop();
    } finally {
      await labDown(prefix, { stateDir });
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  const lab: Lab = await labUp({ prefix, ruleSet, stateDir, clientPod: CLIENT_POD });
  tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules });
  const [client, cpod, pod13] = await Promise.all([
    NetClient.start(lab.client.ns),
    NetClient.start(lab.clientPod!.ns),
    NetClient.start(lab.podFor(EPS[0]).ns),
  ]);
  agents.push(client, cpod, pod13);
  const clientAddr = lab.client.address;

  t.test('tunproxy answers SIGUSR1 as soon as it says ready (signal handlers in place before "ready")', async (t) => {
    const fresh = await TunproxyProcess.start({ ns: lab.node.ns, tun: 'tp-probe0', rules });
    t.teardown(() => fresh.stop());
    const { status } = await fresh.status();
    t.equal(status.gen, 1, `status line printed: ${status.line}`);
    t.notOk(fresh.lines.some((l) => /Debugger listening/.test(l)), 'no inspector started');
    const final = await fresh.stop();
    t.equal((await fresh.exited).code, 0, 'SIGTERM right after handled: clean exit');
    t.ok(final, 'with its final line');
  });

  t.test('HTTP through a ClusterIP reaches every endpoint, masqueraded for a client outside the cluster CIDR', async (t) => {
    const r: Array<Record<string, any>> = await client.call('http', { url: `http://${WEB}/`, count: 30 });
    t.same(r.filter((x) => x.status !== 200), [], 'all 30 requests answered 200');
    const byEp = tally(r);
    t.same(Object.keys(byEp).sort(), EPS.map((e) => `${e}:8080`), `all three endpoints answered on the targetPort (${JSON.stringify(byEp)})`);
    t.ok(r.every((x) => String(x.client).startsWith(`${MASQ}:`)), `every pod saw the masquerade address ${MASQ} as the source`);
  });

  t.test('UDP through a ClusterIP: answers come back from the ClusterIP, every endpoint takes flows', async (t) => {
    const r: Array<Record<string, any>> = await client.call('udp', { to: `${WEB}:7000`, count: 30, data: 'hello' });
    t.same(r.filter((x) => x.error), [], 'every datagram answered');
    t.ok(r.every((x) => x.from === `${WEB}:7000`), 'the replies are un-NATed to the ClusterIP:port the client used');
    t.ok(r.every((x) => x.text === 'hello'), 'payload echoed intact');
    t.same(Object.keys(tally(r)).sort(), EPS.map((e) => `${e}:7000`), 'all three endpoints answered');
    t.ok(r.every((x) => String(x.client).startsWith(`${MASQ}:`)), 'masqueraded');
  });

  t.test('NodePort on the node address (TCP and UDP), masqueraded', async (t) => {
    const h: Array<Record<string, any>> = await client.call('http', { url: `http://${NODE}:30080/`, count: 30 });
    t.same(h.filter((x) => x.status !== 200), [], 'HTTP via NodePort 30080 answered');
    t.same(Object.keys(tally(h)).sort(), EPS.map((e) => `${e}:8080`), 'every endpoint behind the NodePort answered');
    t.ok(h.every((x) => String(x.client).startsWith(`${MASQ}:`)), 'NodePort traffic is masqueraded');
    const u: Array<Record<string, any>> = await client.call('udp', { to: `${NODE}:30700`, count: 6 });
    t.same(u.filter((x) => x.error), [], 'UDP via NodePort 30700 answered');
    t.ok(u.every((x) => x.from === `${NODE}:30700`), 'replies come from node:NodePort');
  });

  t.test('a client inside the cluster CIDR keeps its source address; via a NodePort it is masqueraded', async (t) => {
    const h: Array<Record<string, any>> = await cpod.call('http', { url: `http://${WEB}/`, count: 9 });
    t.same(h.filter((x) => x.status !== 200), [], 'answered');
    t.ok(h.every((x) => String(x.client).startsWith(`${CLIENT_POD}:`)), `the pod saw the client pod ${CLIENT_POD} itself (no masquerade)`);
    const u: Array<Record<string, any>> = await cpod.call('udp', { to: `${WEB}:7000`, count: 6 });
    t.ok(u.every((x) => !x.error && String(x.client).startsWith(`${CLIENT_POD}:`)), 'UDP too');
    const np: Array<Record<string, any>> = await cpod.call('http', { url: `http://${NODE}:30080/`, count: 3 });
    t.ok(np.every((x) => x.status === 200 && String(x.client).startsWith(`${MASQ}:`)), 'NodePort traffic is masqueraded even from inside the cluster (KUBE-NODEPORTS marks it)');
  });

  t.test('hairpin: a pod reaching itself through its own service', async (t) => {
    const r: Array<Record<string, any>> = await pod13.call('http', { url: `http://${SOLO}/`, count: 3 });
    t.same(r.map((x) => x.status), [200, 200, 200], 'answered');
    t.ok(r.every((x) => x.endpoint === `${EPS[0]}:8080`), 'by the pod itself');
    t.ok(r.every((x) => String(x.client).startsWith(`${MASQ}:`)), 'seen from the masquerade address (hairpin masquerade), not from itself');
  });

  t.test('a service without endpoints: ICMP port unreachable (connection refused for TCP, ECONNREFUSED for UDP)', async (t) => {
    const before = (await tp!.status()).status;
    const tcp = await client.call('tcp', { to: `${EMPTY}:80` });
    t.same(tcp, { error: 'ECONNREFUSED' }, 'TCP connect refused at once');
    const udp: Array<Record<string, any>> = await client.call('udp', { to: `${EMPTY}:5353`, count: 2 });
    t.same(udp, [{ error: 'ECONNREFUSED' }, { error: 'ECONNREFUSED' }], 'UDP send answered by ECONNREFUSED');
    const fromPod = await cpod.call('tcp', { to: `${EMPTY}:80` });
    t.same(fromPod, { error: 'ECONNREFUSED' }, 'refused for a pod too');
    const after = (await tp!.status()).status;
    t.equal(after.reply - before.reply, 4, 'four generated replies (ICMP port unreachable) counted');
    t.equal(after.newFlows, before.newFlows, 'no flow was created');
  });

  t.test('the connection table lists the flows like `conntrack -L`, masquerade in the reply tuple', async (t) => {
    await client.call('udp', { to: `${WEB}:7000`, count: 1 });
    const { conntrack } = await tp!.status();
    const udp = conntrack.filter((l) => l.startsWith('udp') && l.includes(`src=${clientAddr} dst=${WEB} `) && l.includes('dport=7000'));
    t.ok(udp.length >= 1, 'the client\'s UDP flows to the ClusterIP are listed');
    t.match(udp[0], new RegExp(`^udp\\s+17 \\d+ src=${clientAddr} dst=${WEB} sport=\\d+ dport=7000 src=10\\.64\\.5\\.1[345] dst=${MASQ} sport=7000 dport=\\d+`), 'original tuple, then the reply tuple endpoint -> masquerade address');
    const tcp = conntrack.filter((l) => l.startsWith('tcp') && l.includes(`src=${CLIENT_POD} dst=${WEB} `));
    t.ok(tcp.length >= 1, 'the client pod\'s TCP flows are listed');
    t.match(tcp[0], new RegExp(`dport=80 src=10\\.64\\.5\\.1[345] dst=${CLIENT_POD} sport=8080`), 'no masquerade in the reply tuple of an in-cluster client');
  });

  t.test('a malformed packet injected towards the TUN is dropped and counted while traffic flows on', async (t) => {
    const udpgen = buildCTool('udpgen');
    await client.call('stream.start', { name: 'bg', to: `${WEB}:80`, intervalMs: 5 });
    await new Promise((r) => setTimeout(r, 300));
    const mid = await client.call('stream.status', { name: 'bg' });
    t.ok(mid.responses > 0, `the background TCP stream runs (${mid.responses} answers)`);
    const before = (await tp!.status()).status;
    // a raw IP_HDRINCL packet from the client: UDP length field 100 bytes beyond the datagram, to the ClusterIP
    const out = JSON.parse(
      nsRun(lab.client.ns, [udpgen, '--bad-udp-length', '--src', clientAddr, '--sport', '40999', '--dst', WEB, '--dport', '7000', '--size', '16']),
    );
    t.equal(out.sent, 1, 'one malformed packet sent');
    const drop = await tp!.waitFor(/^tunproxy: drops: .*malformed=1.*"bad_udp_length":1/, 3000);
    t.ok(drop, `logged: ${drop.line}`);
    const after = (await tp!.status()).status;
    t.equal(after.drop - before.drop, 1, 'exactly one packet dropped');
    t.same(after.drops, { malformed: 1 }, 'by the reason malformed');
    const fresh: Array<Record<string, any>> = await client.call('udp', { to: `${WEB}:7000`, count: 3 });
    t.same(fresh.filter((x) => x.error), [], 'new UDP flows still answered');
    await new Promise((r) => setTimeout(r, 200));
    const end = await client.call('stream.stop', { name: 'bg' });
    t.ok(end.responses > mid.responses + 10, `the TCP stream went on (${mid.responses} -> ${end.responses} answers)`);
    t.same(end.errors, [], 'without an error');
    t.equal(end.closed, false, 'and was never closed');
  });

  t.test('SIGTERM stops tunproxy cleanly with a final status line', async (t) => {
    const final = await tp!.stop();
    const exit = await tp!.exited;
    t.equal(exit.code, 0, 'exit status 0');
    t.ok(final, 'a final line was printed');
    t.ok(final!.newFlows > 100, `flows were created (${final!.newFlows})`);
    t.same(final!.drops, { malformed: 1 }, 'the only drop is the injected packet');
    t.match(tp!.lines.find((l) => l.startsWith('tunproxy: final:')), /tx_errors=0/, 'the kernel took every packet written back');
  });
}
