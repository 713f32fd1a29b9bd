/**
 * Dual-stack end to end: the lab in both families (client, node, pods with
 * IPv6 addresses, real servers answering on IPv6) and `tunproxy run` on its
 * TUN, a dual-stack rule set in force. The IPv4 half of every dual-stack
 * service works as before; IPv6 traffic that is no service's (the pods' own
 * replies to the client) crosses the TUN unchanged; and in IPv6: HTTP and UDP
 * to a ClusterIP, a NodePort on the node's IPv6 address, masquerade as the pod
 * sees it, hairpin, REJECT as ICMPv6, the flows in `conntrack -L` and its
 * filters on IPv6 addresses, a UDP flow through an endpoint's termination
 * and removal (kube-proxy's stale-flow rule), a TCP connection through rule-set swaps, and
 * `--decider linear` deciding IPv6 flows by the ip6tables rules.
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
import { NetClient, TunproxyProcess, tally } from '../../scripts/harness.ts';
import { ApiClient } from '../../control/client.ts';

const NODE = '172.16.6.1';
const MASQ = '10.64.6.1';
const NODE6 = 'fd00:172:16:6::1';
const MASQ6 = 'fd00:10:64:6::1';
const WEB = '10.32.6.10';
const WEB6 = 'fd00:10:32:6::a';
const EPS = ['10.64.6.13', '10.64.6.14'];
const EPS6 = ['fd00:10:64:6::13', 'fd00:10:64:6::14'];
const SOLO6 = 'fd00:10:32:6::20';
const EMPTY6 = 'fd00:10:32:6::200';

export const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-ds', addresses: [NODE, MASQ, NODE6, MASQ6], clusterCIDR: '10.64.6.0/24,fd00:10:64:6::/64' },
  services: [
    {
      namespace: 'default',
      name: 'web',
      clusterIP: WEB,
      clusterIPs: [WEB, WEB6],
      ipFamilies: ['IPv4', 'IPv6'],
      ipFamilyPolicy: 'RequireDualStack',
      ports: [
        { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 },
        { name: 'echo', protocol: 'UDP', port: 7000, targetPort: 7000, nodePort: 30700 },
      ],
      endpoints: [...EPS, ...EPS6].map((address) => ({ address, nodeLocal: true })),
    },
    {
      // one IPv6 endpoint: the pod behind it reaching the service reaches itself (hairpin)
      namespace: 'default',
      name: 'solo',
      clusterIP: SOLO6,
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
      endpoints: [{ address: EPS6[0], nodeLocal: true }],
    },
    {
      namespace: 'default',
      name: 'empty',
      clusterIP: EMPTY6,
      ipFamilies: ['IPv6'],
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
  t.plan(0, `dual-stack end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-ds`;
  const stateDir = mkdtempSync(join(tmpdir(), 'tp-e2e-ds-'));
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

  const lab: Lab = await labUp({ prefix, ruleSet, stateDir });
  const socket = join(stateDir, 'api.sock');
  tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, socket });
  const client = await NetClient.start(lab.client.ns);
  agents.push(client);

  t.test('the lab is built in both families', async (t) => {
    t.equal(lab.client.address6, 'fd00:172:16:6::2', 'the client: ::2 of the node\'s /64');
    t.equal(lab.client.nodeAddress6, NODE6);
    t.equal(lab.node.masqueradeAddress6, MASQ6, 'the IPv6 masquerade address: the node address inside the IPv6 cluster CIDR');
    t.same(lab.node.addresses6, [NODE6, MASQ6]);
    t.same(lab.pods.map((p) => p.address).sort(), [...EPS, ...EPS6].sort(), 'a pod for every endpoint address of either family');
    const pod6 = lab.podFor(EPS6[0]);
    t.match(nsRun(pod6.ns, ['ip', '-6', 'addr', 'show', 'dev', 'eth0']), `inet6 ${EPS6[0]}/128`, 'the IPv6 pod has its address');
    t.match(nsRun(pod6.ns, ['ip', '-6', 'route']), `default via ${MASQ6} dev eth0`, 'and its gateway, the IPv6 masquerade address');
    t.match(nsRun(lab.node.ns, ['ip', '-6', 'route']), `${WEB6} dev ${lab.tunName}`, 'the IPv6 ClusterIP is routed into the TUN');
    const rules6 = nsRun(lab.node.ns, ['ip', '-6', 'rule']);
    t.match(rules6, `from all to ${NODE6} ipproto tcp dport 30000-32767 lookup 100`, 'IPv6 NodePorts go into the TUN');
    t.notMatch(rules6, /ipproto ipv6-icmp/, 'the pods\' ICMPv6 (neighbour discovery) stays on their link');
    t.notMatch(nsRun(lab.node.ns, ['ip', '-6', 'addr', 'show', 'dev', lab.tunName]), /inet6/, 'the TUN has no IPv6 address (the kernel sends nothing of its own into it)');
  });

  t.test('the IPv4 half of a dual-stack service: HTTP and UDP through the IPv4 ClusterIP, masqueraded', async (t) => {
    const r: Array<Record<string, any>> = await client.call('http', { url: `http://${WEB}/`, count: 20 });
    t.same(r.filter((x) => x.status !== 200), [], 'all answered');
    t.same(Object.keys(tally(r)).sort(), EPS.map((e) => `${e}:8080`), 'by the IPv4 endpoints only');
    t.ok(r.every((x) => String(x.client).startsWith(`${MASQ}:`)), 'masqueraded to the IPv4 masquerade address');
    const u: Array<Record<string, any>> = await client.call('udp', { to: `${WEB}:7000`, count: 6 });
    t.ok(u.every((x) => !x.error && x.from === `${WEB}:7000`), 'UDP answered from the ClusterIP');
  });

  t.test('IPv6 that is no service\'s crosses the TUN unchanged: the client reaches an IPv6 pod directly', async (t) => {
    // client -> pod by the node's main table; the pod's replies enter the TUN (pref 70) and come back out
    const before = (await tp!.status()).status;
    const r: Array<Record<string, any>> = await client.call('http', { url: `http://[${EPS6[0]}]:8080/`, count: 5 });
    t.same(r.map((x) => x.status), [200, 200, 200, 200, 200], 'answered');
    t.ok(r.every((x) => x.endpoint === `[${EPS6[0]}]:8080`), 'by the pod');
    t.ok(r.every((x) => String(x.client).startsWith(`[${lab.client.address6}]:`)), 'which saw the client itself');
    const after = (await tp!.status()).status;
    t.ok(after.pass - before.pass >= 10, `the replies crossed tunproxy, passed through unchanged (${after.pass - before.pass} packets)`);
  });

  t.test('HTTP through the IPv6 ClusterIP reaches every IPv6 endpoint, masqueraded to the IPv6 masquerade address', async (t) => {
    const r: Array<Record<string, any>> = await client.call('http', { url: `http://[${WEB6}]/`, count: 20 });
    t.same(r.filter((x) => x.status !== 200), [], 'all 20 answered 200');
    t.same(Object.keys(tally(r)).sort(), EPS6.map((e) => `[${e}]:8080`).sort(), 'by both IPv6 endpoints, on the targetPort');
    t.ok(r.every((x) => String(x.client).startsWith(`[${MASQ6}]:`)), `every pod saw ${MASQ6} as the source`);
  });

  t.test('UDP through the IPv6 ClusterIP: answers come back from the ClusterIP', async (t) => {
    const r: Array<Record<string, any>> = await client.call('udp', { to: `[${WEB6}]:7000`, count: 20, data: 'hello6' });
    t.same(r.filter((x) => x.error), [], 'every datagram answered');
    t.ok(r.every((x) => x.from === `[${WEB6}]:7000`), 'un-NATed to the ClusterIP:port the client used');
    t.ok(r.every((x) => x.text === 'hello6'), 'payload intact');
    t.same(Object.keys(tally(r)).sort(), EPS6.map((e) => `[${e}]:7000`).sort(), 'both endpoints took flows');
  });

  t.test('NodePort on the node\'s IPv6 address (TCP and UDP), masqueraded', async (t) => {
    const h: Array<Record<string, any>> = await client.call('http', { url: `http://[${NODE6}]:30080/`, count: 10 });
    t.same(h.filter((x) => x.status !== 200), [], 'HTTP via NodePort 30080 answered');
    t.ok(h.every((x) => EPS6.some((e) => x.endpoint === `[${e}]:8080`)), 'by IPv6 endpoints');
    t.ok(h.every((x) => String(x.client).startsWith(`[${MASQ6}]:`)), 'masqueraded');
    const u: Array<Record<string, any>> = await client.call('udp', { to: `[${NODE6}]:30700`, count: 4 });
    t.same(u.filter((x) => x.error), [], 'UDP via NodePort answered');
    t.ok(u.every((x) => x.from === `[${NODE6}]:30700`), 'from node:NodePort');
  });

  t.test('hairpin in IPv6: a pod reaching itself through its own service', async (t) => {
    const pod = await NetClient.start(lab.podFor(EPS6[0]).ns);
    agents.push(pod);
    const r: Array<Record<string, any>> = await pod.call('http', { url: `http://[${SOLO6}]/`, count: 3 });
    t.same(r.map((x) => x.status), [200, 200, 200], 'answered');
    t.ok(r.every((x) => x.endpoint === `[${EPS6[0]}]:8080`), 'by the pod itself');
    t.ok(r.every((x) => String(x.client).startsWith(`[${MASQ6}]:`)), 'seen from the IPv6 masquerade address (hairpin masquerade)');
  });

  t.test('an IPv6 service without endpoints: ICMPv6 port unreachable (refused at once)', async (t) => {
    const before = (await tp!.status()).status;
    t.same(await client.call('tcp', { to: `[${EMPTY6}]:80` }), { error: 'ECONNREFUSED' }, 'TCP connect refused');
    const udp: Array<Record<string, any>> = await client.call('udp', { to: `[${EMPTY6}]:5353`, count: 2 });
    t.same(udp, [{ error: 'ECONNREFUSED' }, { error: 'ECONNREFUSED' }], 'UDP answered by ECONNREFUSED');
    const after = (await tp!.status()).status;
    t.equal(after.reply - before.reply, 3, 'three generated replies (ICMPv6 port unreachable)');
    t.equal(after.newFlows, before.newFlows, 'no flow created');
  });

  t.test('the connection table lists IPv6 flows like `conntrack -L`', async (t) => {
    await client.call('udp', { to: `[${WEB6}]:7000`, count: 1 });
    const { conntrack } = await tp!.status();
    const l = conntrack.find((x) => x.startsWith('udp') && x.includes(`src=${lab.client.address6} dst=${WEB6} `));
    t.ok(l, `the client's IPv6 flow is listed: ${l}`);
    t.match(l, new RegExp(`dport=7000 src=fd00:10:64:6::1[34] dst=${MASQ6} sport=7000 dport=\\d+`), 'reply tuple: endpoint -> IPv6 masquerade address');
    const http = conntrack.find((x) => x.startsWith('tcp') && x.includes(`dst=${WEB6} `));
    t.match(http, /^tcp\s+6 \d+ [A-Z_]+ src=/, 'a TCP flow with its state, as conntrack -L prints it');
  });

  t.test('a live trace of an IPv6 flow shows the flow the packet thread tracks (POST /v1/trace)', async (t) => {
    const api = new ApiClient({ socket });
    await client.call('udp', { to: `[${WEB6}]:7000`, count: 1 });
    type Flows = { flows: Array<{ original: { src: string; sport: number }; endpoint: string }> };
    const f = (await api.request<Flows>('GET', `/v1/conntrack?protocol=udp&dst=${WEB6}`)).body.flows[0];
    t.ok(f, 'a flow to trace');
    type A = { packet: { family: string }; tunproxy: { conntrack: { direction: string; flow: { endpoint: string; original: { sport: number } } } | null; explanation: string[] }; agree: boolean };
    const r = await api.request<A>('POST', '/v1/trace', { body: { protocol: 'UDP', source: `[${f.original.src}]:${f.original.sport}`, destination: `[${WEB6}]:7000` } });
    t.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
    t.equal(r.body.packet.family, 'ipv6');
    t.equal(r.body.tunproxy.conntrack?.direction, 'original', 'the tracked flow, read on the packet thread');
    t.equal(r.body.tunproxy.conntrack?.flow.endpoint, f.endpoint, 'with its endpoint');
    t.equal(r.body.agree, true, 'and kube-proxy\'s ip6tables rules agree on a new flow');
    const fresh = await api.request<A>('POST', '/v1/trace', { body: { protocol: 'UDP', source: `[${f.original.src}]:1`, destination: `[${WEB6}]:7000` } });
    t.equal(fresh.body.tunproxy.conntrack, null, 'another source port: no tracked flow');
  });

  t.test('conntrack filters on IPv6 addresses (GET/DELETE /v1/conntrack, as tunproxy conntrack -L -d / -D does)', async (t) => {
    const api = new ApiClient({ socket });
    await client.call('udp', { to: `[${WEB6}]:7000`, count: 1 });
    type Flows = { flows: Array<{ protocol: string; original: { dst: string }; endpoint: string }> };
    const six = (await api.request<Flows>('GET', `/v1/conntrack?protocol=udp&dst=${WEB6}`)).body.flows;
    t.ok(six.length >= 1, `the IPv6 UDP flows to ${WEB6}: ${six.length}`);
    t.ok(six.every((f) => f.original.dst === WEB6 && /^\[fd00:10:64:6::1[34]\]:7000$/.test(f.endpoint)), 'each to the IPv6 ClusterIP, to an IPv6 endpoint');
    const four = (await api.request<Flows>('GET', `/v1/conntrack?dst=${WEB}`)).body.flows;
    t.ok(four.length >= 1 && four.every((f) => f.original.dst === WEB), 'an IPv4 address selects IPv4 flows only');
    const del = await api.request<{ deleted: number }>('DELETE', `/v1/conntrack?protocol=udp&dst=${WEB6}`);
    t.equal(del.body.deleted, six.length);
    t.equal((await api.request<Flows>('GET', `/v1/conntrack?protocol=udp&dst=${WEB6}`)).body.flows.length, 0, 'gone');
  });

  t.test('one IPv6 service changed through the API is patched into the IPv6 tables: its endpoints, then a new service', async (t) => {
    const api = new ApiClient({ socket });
    const web = ruleSet.services[0];
    // the same keys, one IPv6 endpoint fewer (the IPv6 entries rebuilt where they stand)
    const fewer = { ...web, endpoints: web.endpoints!.filter((e) => e.address !== EPS6[1]) };
    const put = await api.request<{ mode: string }>('PUT', '/v1/services/default/web', { body: fewer });
    t.equal(put.status, 200);
    t.equal(put.body.mode, 'incremental', 'an incremental apply');
    const r: Array<Record<string, any>> = await client.call('http', { url: `http://[${WEB6}]/`, count: 10 });
    t.same(r.filter((x) => x.status !== 200), [], 'all 10 answered');
    t.same(Object.keys(tally(r)), [`[${EPS6[0]}]:8080`], 'by the one IPv6 endpoint left');
    // a new IPv6-only service (new keys: appended, its ClusterIP a new address id)
    const NEW6 = 'fd00:10:32:6::77';
    // the lab routes the service addresses of the rule set it was built for: this one too, into the TUN
    nsRun(lab.node.ns, ['ip', '-6', 'route', 'add', `${NEW6}/128`, 'dev', lab.tunName]);
    const add = await api.request<{ mode: string }>('PUT', '/v1/services/default/added6', { body: { clusterIP: NEW6, ipFamilies: ['IPv6'], ports: [{ name: 'http', protocol: 'TCP', port: 81, targetPort: 8080 }], endpoints: [{ address: EPS6[1] }] } });
    t.equal(add.status, 201, 'created');
    t.equal(add.body.mode, 'incremental');
    const n: Array<Record<string, any>> = await client.call('http', { url: `http://[${NEW6}]:81/`, count: 3 });
    t.same(n.map((x) => x.status), [200, 200, 200], 'the new IPv6 ClusterIP answers');
    t.ok(n.every((x) => x.endpoint === `[${EPS6[1]}]:8080`), 'from its endpoint');
    // back as it was
    t.equal((await api.request('DELETE', '/v1/services/default/added6')).status, 200);
    t.equal((await api.request('PUT', '/v1/services/default/web', { body: web })).status, 200);
    const gone: Record<string, any> = await client.call('tcp', { to: `[${NEW6}]:81` });
    t.ok(gone.error, `the deleted service's ClusterIP serves no more (${gone.error})`);
    const back: Array<Record<string, any>> = await client.call('http', { url: `http://[${WEB6}]/`, count: 20 });
    t.same(Object.keys(tally(back)).sort(), EPS6.map((e) => `[${e}]:8080`).sort(), 'both IPv6 endpoints again');
  });

  t.test('an IPv6 UDP flow stays on an endpoint that terminates while it serves, and moves once the endpoint is gone (kube-proxy\'s stale-flow rule)', async (t) => {
    const api = new ApiClient({ socket });
    const web = ruleSet.services[0];
    const echo = (sport: number): Promise<Array<Record<string, any>>> => client.call('udp', { to: `[${WEB6}]:7000`, count: 1, sport, timeoutMs: 1000 });
    const leaving = `[${EPS6[1]}]:7000`;
    // a flow (a fixed source port) that went to the endpoint about to leave
    let sport = 0;
    for (let p = 6001; p <= 6016 && sport === 0; p++) if ((await echo(p))[0].endpoint === leaving) sport = p;
    t.ok(sport > 0, `the flow from port ${sport} went to ${leaving}`);
    const put = async (eps: typeof web.endpoints) => {
      t.equal((await api.request('PUT', '/v1/services/default/web', { body: { ...web, endpoints: eps } })).status, 200);
      // in force on the packet thread when answered (no packet needed for the swap); the sweep of
      // stale flows runs in slices just after it
      await new Promise((r) => setTimeout(r, 200));
    };
    await put(web.endpoints!.map((e) => (e.address === EPS6[1] ? { ...e, ready: false, serving: true, terminating: true } : e)));
    const fresh: Array<Record<string, any>> = await client.call('udp', { to: `[${WEB6}]:7000`, count: 10 });
    t.same(Object.keys(tally(fresh)), [`[${EPS6[0]}]:7000`], 'terminating: new flows go to the ready endpoint only');
    t.equal((await echo(sport))[0].endpoint, leaving, 'but the flow that was there goes on there: the endpoint still serves');
    await put(web.endpoints!.filter((e) => e.address !== EPS6[1]));
    const moved = (await echo(sport))[0];
    t.equal(moved.endpoint, `[${EPS6[0]}]:7000`, 'removed: the flow\'s entry went with it, its next datagram reached the endpoint left', { moved });
    t.equal((await api.request('PUT', '/v1/services/default/web', { body: web })).status, 200, 'back as it was');
  });

  t.test('an IPv6 TCP connection goes on through 30 rule-set swaps', async (t) => {
    await client.call('stream.start', { name: 'v6', to: `[${WEB6}]:80`, intervalMs: 5 });
    await new Promise((r) => setTimeout(r, 200));
    const gen0 = (await tp!.status()).status.gen;
    for (let i = 0; i < 30; i++) {
      const extra = { namespace: 'default', name: `x${i}`, clusterIP: `fd00:10:32:6::${(0x100 + i).toString(16)}`, ports: [{ name: 'p', protocol: 'UDP' as const, port: 9000 + i }], endpoints: [{ address: EPS6[1] }] };
      writeFileSync(rules, JSON.stringify({ ...ruleSet, services: [...ruleSet.services, extra] }, null, 2));
      await tp!.reload();
    }
    t.equal((await tp!.status()).status.gen, gen0 + 30, '30 generations put in force');
    const end = await client.call('stream.stop', { name: 'v6' });
    t.ok(end.responses > 20, `answers went on (${end.responses})`);
    t.same(end.errors, [], 'without an error');
    t.equal(end.closed, false, 'never closed');
  });

  // (that the walk, not the tables, decided is shown by test/unit/pipeline6-linear.test.ts: the flow has no tables entry)
  t.test('--decider linear: IPv6 flows decided by walking kube-proxy\'s ip6tables rules', async (t) => {
    await tp!.stop();
    tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, socket, args: ['--decider', 'linear'] });
    const r: Array<Record<string, any>> = await client.call('http', { url: `http://[${WEB6}]/`, count: 10 });
    t.same(r.filter((x) => x.status !== 200), [], 'all 10 answered 200');
    t.ok(r.every((x) => EPS6.some((e) => x.endpoint === `[${e}]:8080`) && String(x.client).startsWith(`[${MASQ6}]:`)), 'by IPv6 endpoints, masqueraded');
    const u: Array<Record<string, any>> = await client.call('udp', { to: `[${EMPTY6}]:5353`, count: 1 });
    t.same(u, [{ error: 'ECONNREFUSED' }], 'REJECT as ICMPv6 port unreachable');
  });
}
