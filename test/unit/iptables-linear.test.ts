import t from 'tap';
import { readFileSync } from 'node:fs';
import { LinearEvaluator, linearFromText, serviceFromComment } from '../../control/iptables/linear.ts';
import { parseIptablesSave } from '../../control/iptables/parser.ts';
import { parseIPv4 as ip, PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import type { PacketTuple } from '../../dataplane/verdict.ts';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/iptables/${name}`, import.meta.url), 'utf8');
const pkt = (proto: number, src: string, sport: number, dst: string, dport: number): PacketTuple => ({ proto, src: ip(src), dst: ip(dst), sport, dport });

t.test('seed 000, ClusterIP: the DNS query of the seed is DNATed to 10.64.1.7:53 and masqueraded', async (t) => {
  const ev = linearFromText(fixture('seed-000-clusterip.save'), { localAddresses: ['172.16.1.35'] });
  // conntrack: src=172.16.1.35 dst=10.32.0.10 sport=44560 dport=53 src=10.64.1.7 dst=10.64.1.1 (masqueraded reply)
  t.same(ev.evaluate(pkt(PROTO_UDP, '172.16.1.35', 44560, '10.32.0.10', 53)), {
    kind: 'dnat',
    service: 'kube-system/kube-dns:dns',
    affinitySeconds: 0,
    candidates: [{ endpoint: '10.64.1.7:53', probability: 1, masquerade: true }],
  });
  // a pod inside the cluster CIDR keeps its address
  t.same(ev.evaluate(pkt(PROTO_UDP, '10.64.1.20', 40000, '10.32.0.10', 53)), {
    kind: 'dnat',
    service: 'kube-system/kube-dns:dns',
    affinitySeconds: 0,
    candidates: [{ endpoint: '10.64.1.7:53', probability: 1, masquerade: false }],
  });
  // the endpoint calling its own service: hairpin, masqueraded
  const hairpin = ev.evaluate(pkt(PROTO_UDP, '10.64.1.7', 40000, '10.32.0.10', 53));
  t.same(hairpin.kind === 'dnat' && hairpin.candidates, [{ endpoint: '10.64.1.7:53', probability: 1, masquerade: true }]);
  // TCP to the same address: its chain is not in the seed, so nothing happens
  t.same(ev.evaluate(pkt(PROTO_TCP, '172.16.1.35', 44560, '10.32.0.10', 53)), { kind: 'nomatch' });
  const s = ev.sample(pkt(PROTO_UDP, '172.16.1.35', 44560, '10.32.0.10', 53), 0);
  t.equal(s.kind, 'dnat');
  t.equal(s.endpoint, '10.64.1.7:53');
  t.equal(s.endpointAddr, ip('10.64.1.7'));
  t.equal(s.endpointPort, 53);
  t.equal(s.masquerade, true);
  // PREROUTING(1) KUBE-SERVICES(1..3) KUBE-SVC(2) KUBE-MARK-MASQ(1) KUBE-SEP(2); POSTROUTING(1) KUBE-POSTROUTING(1)
  t.equal(s.rulesVisited, 1 + 3 + 2 + 1 + 2 + 1 + 1);
});

t.test('seed 000, NodePort: 30080 on the node address goes to 10.64.1.13:80, masqueraded', async (t) => {
  const ev = linearFromText(fixture('seed-000-nodeport.save'), { localAddresses: ['172.16.1.35'] });
  // conntrack: src=172.16.1.35 dst=172.16.1.35 sport=35814 dport=30080 src=10.64.1.13 dst=10.64.1.1
  const want = { kind: 'dnat', service: 'default/web-svc:nginx-svc-port', affinitySeconds: 0, candidates: [{ endpoint: '10.64.1.13:80', probability: 1, masquerade: true }] };
  t.same(ev.evaluate(pkt(PROTO_TCP, '172.16.1.35', 35814, '172.16.1.35', 30080)), want);
  t.same(ev.evaluate(pkt(PROTO_TCP, '198.51.100.7', 35814, '172.16.1.35', 30080)), want, 'from outside the node too (the old layout masquerades every NodePort flow)');
  t.same(ev.evaluate(pkt(PROTO_TCP, '10.64.1.30', 35814, '10.32.0.159', 8080)), { ...want, candidates: [{ endpoint: '10.64.1.13:80', probability: 1, masquerade: false }] });
  t.same(ev.evaluate(pkt(PROTO_TCP, '198.51.100.7', 35814, '172.16.1.36', 30080)), { kind: 'nomatch' }, 'not a local address: no NodePort');
  t.same(ev.evaluate(pkt(PROTO_UDP, '198.51.100.7', 35814, '172.16.1.35', 30080)), { kind: 'nomatch' }, 'UDP: not this NodePort');
});

t.test('seed 004: nginx balances 10.42.0.199 and 10.42.0.200 at one half each', async (t) => {
  const ev = linearFromText(fixture('seed-004-nginx.save'), { localAddresses: ['172.16.1.35'] });
  t.same(ev.evaluate(pkt(PROTO_TCP, '198.51.100.7', 40000, '10.110.199.45', 80)), {
    kind: 'dnat',
    service: 'default/nginx:80-80',
    affinitySeconds: 0,
    candidates: [
      { endpoint: '10.42.0.199:80', probability: 0.5, masquerade: true },
      { endpoint: '10.42.0.200:80', probability: 0.5, masquerade: true },
    ],
  });
  const pod = ev.evaluate(pkt(PROTO_TCP, '10.42.0.7', 40000, '10.110.199.45', 80));
  t.same(pod.kind === 'dnat' && pod.candidates.map((c) => c.masquerade), [false, false]);
});

t.test('jump returns, RETURN returns, goto does not come back, MARK goes on, POSTROUTING sees the mark', async (t) => {
  const text = [
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':POSTROUTING ACCEPT [0:0]',
    ':A - [0:0]',
    ':B - [0:0]',
    ':C - [0:0]',
    '-A PREROUTING -j A', //                                                            r1
    '-A PREROUTING -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.2.0.1:81', //  r2
    '-A A -d 10.0.0.1/32 -j B', //                                                      r3
    '-A A -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.1.0.1:80', // r4
    '-A A -p tcp -m tcp --dport 81 -g C', //                                            r5
    '-A A -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.3.0.1:81', //           r6 (skipped by the goto)
    '-A B -j MARK --set-xmark 0x1/0x1', //                                              r7
    '-A B -m mark --mark 0x1/0x1 -j RETURN', //                                         r8
    '-A B -j DNAT --to-destination 10.9.9.9:9', //                                      r9 (never)
    '-A POSTROUTING -m mark --mark 0x1/0x1 -j MASQUERADE', //                          r10
    'COMMIT',
  ].join('\n');
  const ev = linearFromText(text, { localAddresses: [] });
  const a = ev.sample(pkt(PROTO_TCP, '1.1.1.1', 1000, '10.0.0.1', 80), 0);
  t.equal(a.kind, 'dnat');
  t.equal(a.endpoint, '10.1.0.1:80');
  t.equal(a.masquerade, true, 'the mark set in B reaches POSTROUTING');
  t.equal(a.rulesVisited, 6, 'r1 r3 r7 r8 r4, then r10');
  const b = ev.sample(pkt(PROTO_TCP, '1.1.1.1', 1000, '10.0.0.7', 81), 0);
  t.equal(b.endpoint, '10.2.0.1:81', 'C ends and returns to PREROUTING, not to A');
  t.equal(b.masquerade, false);
  t.equal(b.rulesVisited, 6, 'r1 r3 r4 r5 (C is empty) r2, then r10');
  const c = ev.sample(pkt(PROTO_TCP, '1.1.1.1', 1000, '10.0.0.7', 82), 0);
  t.equal(c.kind, 'nomatch');
  t.equal(c.rulesVisited, 6, 'r1 r3 r4 r5 r6 r2');
  t.equal(ev.rulesVisited, 6 + 6 + 6, 'rulesVisited adds up over calls');
});

t.test('a built-in chain\'s end and RETURN in it give its policy; a DROP policy is not a service\'s drop', async (t) => {
  const text = '*filter\n:FORWARD DROP [0:0]\n:INPUT ACCEPT [0:0]\n-A FORWARD -d 10.0.0.1/32 -j RETURN\n-A FORWARD -j REJECT\nCOMMIT\n';
  const ev = linearFromText(text, { localAddresses: [] });
  t.same(ev.evaluate(pkt(PROTO_TCP, '1.1.1.1', 1, '10.0.0.1', 80)), { kind: 'nomatch' });
  t.same(ev.evaluate(pkt(PROTO_TCP, '1.1.1.1', 1, '10.0.0.2', 80)), { kind: 'reject', service: '' });
});

t.test('the golden rule set: REJECT, DROP with reasons, policies, firewall, hairpin, affinity', async (t) => {
  const ev = linearFromText(fixture('golden-restore.txt'), { localAddresses: ['172.16.1.35'] });
  const e = (proto: number, src: string, dst: string, dport: number) => ev.evaluate(pkt(proto, src, 40000, dst, dport));
  t.same(e(PROTO_SCTP, '10.64.1.9', '10.32.0.200', 9999), { kind: 'reject', service: 'default/empty' });
  t.same(e(PROTO_SCTP, '198.51.100.7', '172.16.1.35', 30001), { kind: 'reject', service: 'default/empty' });
  t.same(e(PROTO_SCTP, '198.51.100.7', '100.64.0.11', 9999), { kind: 'reject', service: 'default/empty' });
  t.same(e(PROTO_TCP, '10.64.1.9', '10.32.1.3', 9090), { kind: 'drop', service: 'prod/local-elsewhere:grpc', reason: 'no_local_endpoints' });
  t.same(e(PROTO_TCP, '198.51.100.7', '192.168.99.12', 80), { kind: 'drop', service: 'prod/remote-only:http', reason: 'no_local_endpoints' });
  t.same(e(PROTO_TCP, '198.51.100.7', '172.16.1.35', 30081), { kind: 'drop', service: 'prod/remote-only:http', reason: 'no_local_endpoints' });
  // pods are not subject to the external policy: they go to the cluster chain
  t.same(e(PROTO_TCP, '10.64.1.9', '192.168.99.12', 80), {
    kind: 'dnat', service: 'prod/remote-only:http', affinitySeconds: 0, candidates: [{ endpoint: '10.42.7.30:80', probability: 1, masquerade: false }],
  });
  // load-balancer source ranges
  t.same(e(PROTO_TCP, '8.8.8.8', '100.64.0.10', 80), { kind: 'drop', service: 'default/nginx:80-80', reason: 'source_range' });
  const local = { kind: 'dnat', service: 'default/nginx:80-80', affinitySeconds: 600, candidates: [{ endpoint: '10.64.1.20:80', probability: 1, masquerade: false }] };
  t.same(e(PROTO_TCP, '203.0.113.9', '100.64.0.10', 80), local, 'admitted, Local policy: the local endpoint, source kept');
  t.same(e(PROTO_TCP, '100.64.0.10', '100.64.0.10', 80), local, 'the LB IP itself is admitted (a range holds the node)');
  t.same(e(PROTO_TCP, '198.51.100.7', '172.16.1.35', 32754), local, 'NodePort, Local policy');
  // traffic from the node itself to an external IP: masqueraded, sent to the cluster chain
  const fromNode = e(PROTO_TCP, '172.16.1.35', '192.168.99.11', 80);
  t.same(fromNode.kind === 'dnat' && fromNode.candidates.map((c) => [c.endpoint, c.masquerade]), [
    ['10.64.1.20:80', true],
    ['10.42.7.21:80', true],
    ['10.42.7.22:80', true],
  ]);
  const dns = e(PROTO_UDP, '10.64.1.7', '10.32.0.10', 53);
  t.same(dns, {
    kind: 'dnat', service: 'kube-system/kube-dns:dns', affinitySeconds: 0,
    candidates: [
      { endpoint: '10.64.1.7:53', probability: 0.5, masquerade: true }, // hairpin
      { endpoint: '10.64.1.8:53', probability: 0.5, masquerade: false },
    ],
  });
  t.same(e(PROTO_UDP, '10.64.1.9', '10.32.1.2', 53), {
    kind: 'dnat', service: 'prod/node-local-dns', affinitySeconds: 0, candidates: [{ endpoint: '10.64.1.40:53', probability: 1, masquerade: false }],
  });
  t.same(e(PROTO_SCTP, '10.64.1.9', '10.32.1.4', 9999), {
    kind: 'dnat', service: 'prod/draining:sctp', affinitySeconds: 0, candidates: [{ endpoint: '10.64.1.60:9999', probability: 1, masquerade: false }],
  });
  // three endpoints: iptables' stored probabilities, round(p * 2^31) / 2^31
  const three = e(PROTO_TCP, '198.51.100.7', '10.110.199.45', 80);
  t.same(three.kind === 'dnat' && three.candidates.map((c) => c.probability), [715827883 / 2 ** 31, (1 - 715827883 / 2 ** 31) / 2, (1 - 715827883 / 2 ** 31) / 2]);
  t.same(e(PROTO_UDP, '10.64.1.9', '10.32.0.10', 54), { kind: 'nomatch' });
  t.same(e(PROTO_TCP, '10.64.1.9', '10.32.0.10', 53).kind, 'dnat');
});

t.test('sample draws as the kernel does: (u32 & 0x7fffffff) < round(p * 2^31)', async (t) => {
  const draws: number[] = [];
  const ev = linearFromText(fixture('seed-004-nginx.save'), { localAddresses: [], random: () => draws.shift()! });
  const go = (r: number) => {
    draws.push(r);
    return ev.sample(pkt(PROTO_TCP, '198.51.100.7', 40000, '10.110.199.45', 80), 0).endpoint;
  };
  t.equal(go(0.2), '10.42.0.199:80'); // 858993459 < 2^30
  t.equal(go(0.3), '10.42.0.200:80'); // 1288490188 >= 2^30
  t.equal(go(0.7), '10.42.0.199:80', 'the top bit is masked off: 0.7 draws like 0.2');
  t.equal(go(0.249999999), '10.42.0.199:80');
  t.equal(go(0.25), '10.42.0.200:80', '2^30 itself is not below the threshold');
  t.equal(draws.length, 0, 'one draw per statistic rule visited');
});

t.test('ClientIP affinity: recent --set / --rcheck --seconds --reap, per client', async (t) => {
  let next = 0.9; // not taken at the first statistic rule...
  const ev = linearFromText(fixture('golden-restore.txt'), { localAddresses: ['172.16.1.35'], random: () => next });
  const at = (client: string, nowMs: number) => ev.sample(pkt(PROTO_TCP, client, 40000, '10.110.199.45', 80), nowMs).endpoint;
  // 0.9 → u & 0x7fffffff = 0.8 * 2^31: not below 1/3 nor 1/2: the last endpoint
  t.equal(at('198.51.100.7', 1000), '10.42.7.22:80');
  next = 0.1; // would now pick the first
  t.equal(at('198.51.100.7', 2000), '10.42.7.22:80', 'the same client sticks');
  t.equal(at('198.51.100.7', 1000 + 600_000), '10.42.7.22:80', 'still within 600 s of the last --set (at 2 s)');
  t.equal(at('198.51.100.8', 3000), '10.64.1.20:80', 'another client draws');
  t.equal(at('198.51.100.7', 2000 + 600_000 + 601_000), '10.64.1.20:80', 'after the timeout: drawn again');
  ev.clearAffinity();
  next = 0.9;
  t.equal(at('198.51.100.8', 4000), '10.42.7.22:80', 'clearAffinity forgets');
  // evaluate ignores affinity state
  const v = ev.evaluate(pkt(PROTO_TCP, '198.51.100.7', 40000, '10.110.199.45', 80));
  t.equal(v.kind === 'dnat' && v.candidates.length, 3);
});

t.test('recent lists hold recentListSize addresses, the least recently set going first', async (t) => {
  let r = 0.9;
  const ev = linearFromText(fixture('golden-restore.txt'), { localAddresses: [], random: () => r, recentListSize: 2 });
  const at = (client: string, nowMs: number) => ev.sample(pkt(PROTO_TCP, client, 40000, '10.110.199.45', 80), nowMs).endpoint;
  for (const c of ['198.51.100.1', '198.51.100.2', '198.51.100.3']) t.equal(at(c, 1000), '10.42.7.22:80');
  r = 0.1;
  t.equal(at('198.51.100.3', 2000), '10.42.7.22:80', 'kept');
  t.equal(at('198.51.100.2', 2000), '10.42.7.22:80', 'kept');
  t.equal(at('198.51.100.1', 2000), '10.64.1.20:80', 'pushed out of the list by the third client');
});

t.test('statistic --mode nth: a counter per rule in sample, 1/every in evaluate', async (t) => {
  const text = '*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 10.1.0.1:80\n-A PREROUTING -j DNAT --to-destination 10.1.0.2:80\nCOMMIT\n';
  const ev = linearFromText(text, { localAddresses: [] });
  const seq = Array.from({ length: 6 }, () => ev.sample(pkt(PROTO_TCP, '1.1.1.1', 1, '9.9.9.9', 80), 0).endpoint);
  t.same(seq, ['10.1.0.2:80', '10.1.0.2:80', '10.1.0.1:80', '10.1.0.2:80', '10.1.0.2:80', '10.1.0.1:80']);
  const v = ev.evaluate(pkt(PROTO_TCP, '1.1.1.1', 1, '9.9.9.9', 80));
  t.same(v.kind === 'dnat' && v.candidates.map((c) => [c.endpoint, c.probability]), [['10.1.0.1:80', 1 / 3], ['10.1.0.2:80', 1 - 1 / 3]]);
});

t.test('the pre-1.24 layout: KUBE-XLB-, KUBE-MARK-DROP and kubelet\'s KUBE-FIREWALL', async (t) => {
  const ev = linearFromText(fixture('pre-1.24-layout.save'), { localAddresses: ['192.168.0.2', '1.2.3.4'] });
  const e = (src: string, dst: string, dport: number) => ev.evaluate(pkt(PROTO_TCP, src, 40000, dst, dport));
  t.same(e('8.8.8.8', '1.2.3.4', 80), { kind: 'drop', service: 'ns2/svc2:p80', reason: 'source_range' });
  t.same(e('203.0.113.5', '1.2.3.4', 80), { kind: 'drop', service: 'ns2/svc2:p80', reason: 'no_local_endpoints' });
  t.same(e('8.8.8.8', '192.168.0.2', 3003), {
    kind: 'dnat', service: 'ns3/svc3:p80', affinitySeconds: 0, candidates: [{ endpoint: '10.180.0.3:80', probability: 1, masquerade: false }],
  });
  const np = e('8.8.8.8', '192.168.0.2', 3004);
  t.same(np.kind === 'dnat' && np.candidates, [
    { endpoint: '10.180.0.4:80', probability: 0.5, masquerade: true },
    { endpoint: '10.180.0.5:80', probability: 0.5, masquerade: true },
  ]);
});

t.test('undefined chains are empty; loops are refused; bad local addresses are refused', async (t) => {
  const partial = linearFromText('*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-MISSING\n-A PREROUTING -j DNAT --to-destination 10.0.0.9:1\nCOMMIT\n', { localAddresses: [] });
  t.equal(partial.sample(pkt(PROTO_TCP, '1.1.1.1', 1, '2.2.2.2', 3), 0).endpoint, '10.0.0.9:1');
  const loop = new LinearEvaluator(parseIptablesSave('*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A PREROUTING -j A\n-A A -j B\n-A B -j A\nCOMMIT\n'), { localAddresses: [] });
  t.throws(() => loop.sample(pkt(PROTO_TCP, '1.1.1.1', 1, '2.2.2.2', 3), 0), /a loop\?/);
  const gotoLoop = new LinearEvaluator(parseIptablesSave('*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n-A PREROUTING -j A\n-A A -g A\nCOMMIT\n'), { localAddresses: [] });
  t.throws(() => gotoLoop.sample(pkt(PROTO_TCP, '1.1.1.1', 1, '2.2.2.2', 3), 0), /a loop\?/);
  t.throws(() => linearFromText('*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n', { localAddresses: ['node-a'] }), /localAddresses: 'node-a'/);
  t.throws(() => linearFromText('*nat\n-A X -j Y\n', { localAddresses: [] }), /line 2: chain 'X' is not declared/);
});

t.test('serviceFromComment reads every comment kube-proxy writes', async (t) => {
  const cases: [string, string | null][] = [
    ['ns/svc:p cluster IP', 'ns/svc:p'],
    ['ns/svc:p external IP', 'ns/svc:p'],
    ['ns/svc:p loadbalancer IP', 'ns/svc:p'],
    ['ns/svc has no endpoints', 'ns/svc'],
    ['ns/svc:p has no local endpoints', 'ns/svc:p'],
    ['ns/svc:p traffic not accepted by KUBE-FW-ABC', 'ns/svc:p'],
    ['ns/svc:p -> 10.0.0.1:80', 'ns/svc:p'],
    ['masquerade traffic for ns/svc:p external destinations', 'ns/svc:p'],
    ['pod traffic for ns/svc:p external destinations', 'ns/svc:p'],
    ['masquerade LOCAL traffic for ns/svc:p external destinations', 'ns/svc:p'],
    ['route LOCAL traffic for ns/svc:p external destinations', 'ns/svc:p'],
    ['route LOCAL traffic for ns/svc:p LB IP to service chain', 'ns/svc:p'],
    ['other traffic to ns/svc:p will be dropped by KUBE-PROXY-FIREWALL', 'ns/svc:p'],
    ['ns/svc:p', 'ns/svc:p'],
    ['kubernetes service portals', null],
    ['Redirect pods trying to reach external loadbalancer VIP to clusterIP', null],
    ['flanneld masq', null],
  ];
  for (const [c, want] of cases) t.equal(serviceFromComment(c), want, c);
});
