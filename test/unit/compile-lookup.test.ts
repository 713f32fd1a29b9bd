import t from 'tap';
import { readFileSync } from 'node:fs';
import { compile } from '../../control/compile.ts';
import { parseRuleSet } from '../../control/validate.ts';
import { compiledVerdict } from '../../dataplane/tables.ts';
import { parseIPv4, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import type { RuleSet, Service } from '../../control/types.ts';

const demo = (): RuleSet => JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'));
const ip = parseIPv4;
const pkt = (proto: number, src: string, dst: string, dport: number, sport = 40000) => ({ proto, src: ip(src), dst: ip(dst), sport, dport });

t.test('ClusterIP: uniform candidates, masquerade only from outside the cluster CIDR, hairpin per endpoint', async (t) => {
  const tables = compile(parseRuleSet(demo()));
  t.same(compiledVerdict(tables, pkt(PROTO_UDP, '172.16.1.35', '10.32.0.10', 53, 44560)), {
    kind: 'dnat', service: 'kube-system/kube-dns:dns', affinitySeconds: 0,
    candidates: [
      { endpoint: '10.64.1.7:53', probability: 0.5, masquerade: true },
      { endpoint: '10.64.1.8:53', probability: 0.5, masquerade: true },
    ],
  });
  t.same(compiledVerdict(tables, pkt(PROTO_UDP, '10.64.1.7', '10.32.0.10', 53)), {
    kind: 'dnat', service: 'kube-system/kube-dns:dns', affinitySeconds: 0,
    candidates: [
      { endpoint: '10.64.1.7:53', probability: 0.5, masquerade: true }, // hairpin
      { endpoint: '10.64.1.8:53', probability: 0.5, masquerade: false },
    ],
  });
  const web = compiledVerdict(tables, pkt(PROTO_TCP, '10.64.1.50', '10.32.0.159', 8080));
  t.equal(web.kind, 'dnat');
  if (web.kind === 'dnat') {
    t.same(web.candidates.map((c) => c.endpoint), ['10.64.1.13:80', '10.64.1.14:80', '10.64.1.15:80']);
    t.ok(web.candidates.every((c) => Math.abs(c.probability - 1 / 3) < 1e-12 && !c.masquerade));
  }
});

t.test('wrong port, protocol or address: no match', async (t) => {
  const tables = compile(parseRuleSet(demo()));
  t.same(compiledVerdict(tables, pkt(PROTO_TCP, '172.16.1.35', '10.32.0.10', 54)), { kind: 'nomatch' });
  t.same(compiledVerdict(tables, pkt(PROTO_UDP, '172.16.1.35', '10.32.0.10', 9153)), { kind: 'nomatch' });
  t.same(compiledVerdict(tables, pkt(PROTO_TCP, '172.16.1.35', '10.32.0.11', 53)), { kind: 'nomatch' });
  // a NodePort answers only on the node's own addresses
  t.same(compiledVerdict(tables, pkt(PROTO_TCP, '172.16.1.99', '10.32.0.10', 30080)), { kind: 'nomatch' });
});

t.test('NodePort: on every local address, always masqueraded with externalTrafficPolicy Cluster', async (t) => {
  const tables = compile(parseRuleSet(demo()));
  for (const dst of ['172.16.1.35', '10.64.1.1']) {
    const v = compiledVerdict(tables, pkt(PROTO_TCP, '172.16.1.99', dst, 30080, 35814));
    t.equal(v.kind, 'dnat');
    if (v.kind === 'dnat') {
      t.equal(v.service, 'default/web-svc:nginx-svc-port');
      t.ok(v.candidates.every((c) => c.masquerade));
    }
  }
  // a pod reaching a NodePort is masqueraded too (KUBE-EXT- marks everything)
  const v = compiledVerdict(tables, pkt(PROTO_TCP, '10.64.1.50', '10.64.1.1', 30080));
  t.ok(v.kind === 'dnat' && v.candidates.every((c) => c.masquerade));
});

t.test('no endpoints: REJECT (ICMP port unreachable)', async (t) => {
  const tables = compile(parseRuleSet(demo()));
  t.same(compiledVerdict(tables, pkt(PROTO_TCP, '172.16.1.99', '10.32.0.200', 80)), { kind: 'reject', service: 'default/empty-svc:http' });
});

function svcWith(extra: Partial<Service>, endpoints: Service['endpoints']): RuleSet {
  const rs = demo();
  rs.services = [{
    namespace: 'ns', name: 'lb', clusterIP: '10.32.1.1',
    ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 31000, targetPort: 8080 }],
    ...extra, endpoints,
  }];
  return parseRuleSet(rs);
}

t.test('externalTrafficPolicy Local: node-local endpoints, source kept; pods and the node short-circuit', async (t) => {
  const rs = svcWith({ externalTrafficPolicy: 'Local', externalIPs: ['192.0.2.10'] }, [
    { address: '10.64.1.20', nodeLocal: true },
    { address: '10.64.2.21', nodeLocal: false },
  ]);
  const tables = compile(rs);
  const outside = compiledVerdict(tables, pkt(PROTO_TCP, '198.51.100.7', '172.16.1.35', 31000));
  t.same(outside, { kind: 'dnat', service: 'ns/lb:http', affinitySeconds: 0, candidates: [{ endpoint: '10.64.1.20:8080', probability: 1, masquerade: false }] });
  const viaExternalIP = compiledVerdict(tables, pkt(PROTO_TCP, '198.51.100.7', '192.0.2.10', 80));
  t.same(viaExternalIP, outside);
  // a pod: to all endpoints, not masqueraded
  const pod = compiledVerdict(tables, pkt(PROTO_TCP, '10.64.1.50', '192.0.2.10', 80));
  t.ok(pod.kind === 'dnat' && pod.candidates.length === 2 && pod.candidates.every((c) => !c.masquerade));
  // the node itself: to all endpoints, masqueraded
  const node = compiledVerdict(tables, pkt(PROTO_TCP, '172.16.1.35', '192.0.2.10', 80));
  t.ok(node.kind === 'dnat' && node.candidates.length === 2 && node.candidates.every((c) => c.masquerade));
  // ClusterIP traffic is unaffected by externalTrafficPolicy
  const cip = compiledVerdict(tables, pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80));
  t.ok(cip.kind === 'dnat' && cip.candidates.length === 2);
});

t.test('externalTrafficPolicy Local without local endpoints: external traffic dropped, ClusterIP served', async (t) => {
  const tables = compile(svcWith({ externalTrafficPolicy: 'Local' }, [{ address: '10.64.2.21', nodeLocal: false }]));
  t.same(compiledVerdict(tables, pkt(PROTO_TCP, '198.51.100.7', '172.16.1.35', 31000)), { kind: 'drop', service: 'ns/lb:http', reason: 'no_local_endpoints' });
  t.equal(compiledVerdict(tables, pkt(PROTO_TCP, '10.64.1.50', '172.16.1.35', 31000)).kind, 'dnat');
  t.equal(compiledVerdict(tables, pkt(PROTO_TCP, '198.51.100.7', '10.32.1.1', 80)).kind, 'dnat');
});

t.test('internalTrafficPolicy Local: ClusterIP to local endpoints only, dropped when there are none', async (t) => {
  const tables = compile(svcWith({ internalTrafficPolicy: 'Local' }, [
    { address: '10.64.1.20', nodeLocal: true },
    { address: '10.64.2.21', nodeLocal: false },
  ]));
  const v = compiledVerdict(tables, pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80));
  t.ok(v.kind === 'dnat' && v.candidates.length === 1 && v.candidates[0].endpoint === '10.64.1.20:8080');
  const none = compile(svcWith({ internalTrafficPolicy: 'Local' }, [{ address: '10.64.2.21', nodeLocal: false }]));
  t.same(compiledVerdict(none, pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80)), { kind: 'drop', service: 'ns/lb:http', reason: 'no_local_endpoints' });
  // NodePort traffic still uses the cluster-wide endpoints
  t.equal(compiledVerdict(none, pkt(PROTO_TCP, '198.51.100.7', '172.16.1.35', 31000)).kind, 'dnat');
});

t.test('terminating endpoints are used only when nothing else serves', async (t) => {
  const both = compile(svcWith({}, [
    { address: '10.64.1.20', ready: false, serving: true, terminating: true },
    { address: '10.64.1.21' },
  ]));
  const v = compiledVerdict(both, pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80));
  t.ok(v.kind === 'dnat' && v.candidates.length === 1 && v.candidates[0].endpoint === '10.64.1.21:8080');
  const onlyTerminating = compile(svcWith({}, [
    { address: '10.64.1.20', ready: false, serving: true, terminating: true },
    { address: '10.64.1.22', ready: false, serving: false, terminating: true },
  ]));
  const w = compiledVerdict(onlyTerminating, pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80));
  t.ok(w.kind === 'dnat' && w.candidates.length === 1 && w.candidates[0].endpoint === '10.64.1.20:8080');
  const notReady = compile(svcWith({}, [{ address: '10.64.1.20', ready: false }]));
  t.same(compiledVerdict(notReady, pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80)), { kind: 'reject', service: 'ns/lb:http' });
});

t.test('loadBalancerSourceRanges: admitted sources reach the endpoints, others are dropped', async (t) => {
  const tables = compile(svcWith({ loadBalancerIPs: ['203.0.113.5'], loadBalancerSourceRanges: ['198.51.100.0/24'] }, [{ address: '10.64.1.20' }]));
  t.equal(compiledVerdict(tables, pkt(PROTO_TCP, '198.51.100.7', '203.0.113.5', 80)).kind, 'dnat');
  t.same(compiledVerdict(tables, pkt(PROTO_TCP, '192.0.2.1', '203.0.113.5', 80)), { kind: 'drop', service: 'ns/lb:http', reason: 'source_range' });
  // the ranges do not apply to the NodePort or the ClusterIP (as in kube-proxy)
  t.equal(compiledVerdict(tables, pkt(PROTO_TCP, '192.0.2.1', '172.16.1.35', 31000)).kind, 'dnat');
  t.equal(compiledVerdict(tables, pkt(PROTO_TCP, '192.0.2.1', '10.32.1.1', 80)).kind, 'dnat');
  // a range that contains a node address admits the LB IP itself as a source
  const fromNode = compile(svcWith({ loadBalancerIPs: ['203.0.113.5'], loadBalancerSourceRanges: ['172.16.1.0/24'] }, [{ address: '10.64.1.20' }]));
  t.equal(compiledVerdict(fromNode, pkt(PROTO_TCP, '203.0.113.5', '203.0.113.5', 80)).kind, 'dnat');
});

t.test('session affinity and masqueradeAll show in the verdict', async (t) => {
  const rs = svcWith({ sessionAffinity: 'ClientIP' }, [{ address: '10.64.1.20' }]);
  rs.node.masqueradeAll = true;
  const v = compiledVerdict(compile(rs), pkt(PROTO_TCP, '10.64.1.50', '10.32.1.1', 80));
  t.same(v, { kind: 'dnat', service: 'ns/lb:http', affinitySeconds: 10800, candidates: [{ endpoint: '10.64.1.20:8080', probability: 1, masquerade: true }] });
});

t.test('without a cluster CIDR nothing is masqueraded on the ClusterIP', async (t) => {
  const rs = demo();
  delete rs.node.clusterCIDR;
  const v = compiledVerdict(compile(parseRuleSet(rs)), pkt(PROTO_UDP, '172.16.1.99', '10.32.0.10', 53));
  t.ok(v.kind === 'dnat' && v.candidates.every((c) => !c.masquerade));
});
