/**
 * The IPv6 tables through the real path: a dual-stack rule set validated
 * (control/validate.ts), compiled (control/compile.ts: compile → tables.v6),
 * then asked with lookup6 for 128-bit destinations: ClusterIP, NodePort on
 * the node's IPv6 address, external and LB IPs, source ranges, REJECT,
 * eTP Local, and a source inside / outside the IPv6 cluster CIDR.
 */
import t from 'tap';
import { validateRuleSet } from '../../control/validate.ts';
import { compile } from '../../control/compile.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { formatIPv6 } from '../../dataplane/addr6.ts';
import { PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { lookup6, isServiceAddress6, type Tables6 } from '../../dataplane/tables6.ts';
import { LookupResult, LOOKUP_DNAT, LOOKUP_REJECT, LOOKUP_NOMATCH, LOOKUP_DROP_SOURCE_RANGE, VIP_CLUSTER, VIP_EXTERNAL, VIP_LOADBALANCER, VIA_NODEPORT } from '../../dataplane/tables.ts';
import type { RuleSet, Service } from '../../control/types.ts';
import { RuleSetHolder } from '../../control/runtime.ts';

const node = { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' };
const web: Service = {
  namespace: 'default', name: 'web',
  clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
  ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack',
  externalIPs: ['2001:db8:e::1'],
  ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 }, { name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }],
  endpoints: [{ address: '10.64.1.7' }, { address: 'fd00:10:64:1::7', nodeLocal: true }, { address: 'fd00:10:64:2::9' }],
};
const empty: Service = {
  namespace: 'default', name: 'empty', clusterIP: 'fd00:10:96::e', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
  ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 80 }], endpoints: [],
};
const lb: Service = {
  namespace: 'default', name: 'lb', clusterIP: 'fd00:10:96::b', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
  loadBalancerIPs: ['2001:db8:1b::1'], loadBalancerSourceRanges: ['2001:db8:cafe::/48'],
  externalTrafficPolicy: 'Local',
  ports: [{ name: 'https', protocol: 'TCP', port: 443, targetPort: 8443, nodePort: 30443 }],
  endpoints: [{ address: 'fd00:10:64:3::3' }],
};

function tablesOf(...services: Service[]): Tables6 {
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node, services } satisfies RuleSet);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  const t = compile(r.model);
  if (!t.v6) throw new Error('no IPv6 tables');
  return t.v6;
}

function ask(t6: Tables6, proto: number, src: string, dst: string, dport: number, out = new LookupResult()): { r: number; out: LookupResult; eps: string[] } {
  const w = new Uint32Array(8);
  w.set(parseIPv6(src)!, 0);
  w.set(parseIPv6(dst)!, 4);
  const r = lookup6(t6, proto, w, 0, 4, dport, out);
  const eps: string[] = [];
  if (r === LOOKUP_DNAT) {
    for (let i = 0; i < out.count; i++) {
      const id = t6.base.endpointFlat[2 * (out.flatStart + i)];
      eps.push(`[${formatIPv6(t6.words, id * 4)}]:${t6.base.endpointFlat[2 * (out.flatStart + i) + 1]}`);
    }
  }
  return { r, out, eps };
}

t.test('ClusterIP: DNAT to the IPv6 endpoints; masquerade outside the IPv6 cluster CIDR', async (t) => {
  const t6 = tablesOf(web, empty, lb);
  t.equal(t6.base.services.length, 4, 'the IPv6 service ports only: web http, web dns, empty, lb');
  let a = ask(t6, PROTO_TCP, 'fd00:10:64:9::1', 'fd00:10:96::a', 80);
  t.equal(a.r, LOOKUP_DNAT);
  t.equal(a.out.via, VIP_CLUSTER);
  t.same(a.eps, ['[fd00:10:64:1::7]:8080', '[fd00:10:64:2::9]:8080']);
  t.notOk(a.out.masquerade, 'a pod source');
  a = ask(t6, PROTO_TCP, '2001:db8::99', 'fd00:10:96::a', 80);
  t.ok(a.out.masquerade, 'outside the cluster CIDR: masqueraded');
  a = ask(t6, PROTO_UDP, '2001:db8::99', 'fd00:10:96::a', 53);
  t.same(a.eps, ['[fd00:10:64:1::7]:5353', '[fd00:10:64:2::9]:5353']);
  t.equal(ask(t6, PROTO_UDP, '2001:db8::99', 'fd00:10:96::a', 54).r, LOOKUP_NOMATCH, 'another port');
  t.equal(ask(t6, PROTO_TCP, '2001:db8::99', 'fd00:10:96::f', 80).r, LOOKUP_NOMATCH, 'not a service address');
  t.ok(isServiceAddress6(t6, parseIPv6('fd00:10:96::a')!, 0));
  t.notOk(isServiceAddress6(t6, parseIPv6('fd00:10:96::f')!, 0));
  t.notOk(isServiceAddress6(t6, parseIPv6('10.96.0.10'.replace(/.*/, '::ffff:10.96.0.10'))!, 0), 'an IPv4-mapped address is not the IPv4 ClusterIP');
  t.ok(t6.ids.size < t6.words.length / 4, 'endpoints have words, not keys');
  t.equal(t6.ids.get(parseIPv6('fd00:10:64:1::7')!, 0), -1, 'an endpoint is not a key');
  t.ok(t6.ids.get(parseIPv6('fd00:50::2')!, 0) >= 0, 'a node address is');
  t.equal(formatIPv6(t6.words, t6.masqId * 4), 'fd00:50::2', 'the masquerade address: the node\'s IPv6 address');
});

t.test('no endpoints: REJECT (ICMPv6 port unreachable)', async (t) => {
  const t6 = tablesOf(web, empty, lb);
  t.equal(ask(t6, PROTO_TCP, '2001:db8::99', 'fd00:10:96::e', 80).r, LOOKUP_REJECT);
});

t.test('external IP and NodePort on the node\'s IPv6 address', async (t) => {
  const t6 = tablesOf(web, empty, lb);
  let a = ask(t6, PROTO_TCP, '2001:db8::99', '2001:db8:e::1', 80);
  t.equal(a.r, LOOKUP_DNAT);
  t.equal(a.out.via, VIP_EXTERNAL);
  t.ok(a.out.masquerade, 'eTP Cluster: external traffic is masqueraded');
  a = ask(t6, PROTO_TCP, '2001:db8::99', 'fd00:50::2', 30080);
  t.equal(a.r, LOOKUP_DNAT);
  t.equal(a.out.via, VIA_NODEPORT);
  t.same(a.eps, ['[fd00:10:64:1::7]:8080', '[fd00:10:64:2::9]:8080']);
  t.equal(ask(t6, PROTO_TCP, '2001:db8::99', 'fd00:50::3', 30080).r, LOOKUP_NOMATCH, 'not a node address');
});

t.test('LB IP with IPv6 source ranges and eTP Local', async (t) => {
  const t6 = tablesOf(web, empty, lb);
  let a = ask(t6, PROTO_TCP, '2001:db8:cafe:1::5', '2001:db8:1b::1', 443);
  t.equal(a.r, LOOKUP_DROP_SOURCE_RANGE, 'admitted, but eTP Local without a local endpoint falls through: KUBE-PROXY-FIREWALL drops it (as for IPv4)');
  a = ask(t6, PROTO_TCP, '2001:db8:beef::5', '2001:db8:1b::1', 443);
  t.equal(a.r, LOOKUP_DROP_SOURCE_RANGE, 'outside the source ranges');
  t.equal(a.out.via, VIP_LOADBALANCER);
  a = ask(t6, PROTO_TCP, 'fd00:10:64:7::5', '2001:db8:1b::1', 443);
  t.equal(a.r, LOOKUP_DROP_SOURCE_RANGE, 'a pod outside the ranges too');
  // with a local endpoint: admitted sources reach it
  const local = tablesOf(web, empty, { ...lb, endpoints: [{ address: 'fd00:10:64:3::3', nodeLocal: true }] } as Service);
  a = ask(local, PROTO_TCP, '2001:db8:cafe:1::5', '2001:db8:1b::1', 443);
  t.equal(a.r, LOOKUP_DNAT);
  t.same(a.eps, ['[fd00:10:64:3::3]:8443']);
  t.notOk(a.out.masquerade, 'eTP Local keeps the source');
});

t.test('an IPv4-only rule set has no IPv6 tables; the IPv4 half is unchanged', async (t) => {
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node: { addresses: ['192.168.50.2'], clusterCIDR: '10.64.0.0/16' }, services: [{ namespace: 'a', name: 'b', clusterIP: '10.96.0.1', ports: [{ name: 'p', protocol: 'TCP', port: 80, targetPort: 80 }], endpoints: [{ address: '10.64.0.5' }] }] });
  if (!r.ok) throw new Error('invalid');
  const t4 = compile(r.model);
  t.notOk(t4.v6);
  const d = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node, services: [web] });
  if (!d.ok) throw new Error('invalid');
  const both = compile(d.model);
  t.equal(both.services.length, 2, 'IPv4 tables: the IPv4 service ports');
  t.equal(both.v6!.base.services.length, 2);
});

t.test('a PATCH of an IPv6 service (the incremental path) brings the IPv6 tables up to date', async (t) => {
  const h = new RuleSetHolder({ incremental: true });
  const rsOf = (...services: Service[]): RuleSet => ({ apiVersion: 'tunproxy.dev/v1', node, services });
  t.equal(h.apply(rsOf(web, empty, lb)).mode, 'full');
  t.equal(ask(h.current!.v6!, PROTO_TCP, '2001:db8::99', 'fd00:10:96::e', 80).r, LOOKUP_REJECT);
  const filled = { ...empty, endpoints: [{ address: 'fd00:10:64:5::5' }] };
  t.equal(h.apply(rsOf(web, filled, lb)).mode, 'incremental');
  const a = ask(h.current!.v6!, PROTO_TCP, '2001:db8::99', 'fd00:10:96::e', 80);
  t.equal(a.r, LOOKUP_DNAT);
  t.same(a.eps, ['[fd00:10:64:5::5]:80']);
  // an IPv4-only change keeps the IPv6 tables as they are
  const before = h.current!.v6;
  const web2 = { ...web, endpoints: [...web.endpoints!, { address: '10.64.1.8' }] };
  t.equal(h.apply(rsOf(web2, filled, lb)).mode, 'incremental');
  t.not(h.current!.v6, before, 'web is dual-stack: its IPv6 half is compiled again');
  const four: Service = { namespace: 'default', name: 'four', clusterIP: '10.96.0.44', ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 80 }], endpoints: [{ address: '10.64.4.4' }] };
  h.apply(rsOf(web2, filled, lb, four));
  const kept = h.current!.v6;
  t.equal(h.apply(rsOf(web2, filled, lb, { ...four, endpoints: [{ address: '10.64.4.5' }] })).mode, 'incremental');
  t.equal(h.current!.v6, kept, 'an IPv4-only service changed: the same IPv6 tables');
});

t.test('the hint in an address slot: the hinted (protocol, port) and the others answer as the VIP index does', async (t) => {
  const multi: Service = {
    namespace: 'default', name: 'multi', clusterIP: 'fd00:10:96::d', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
    ports: [
      { name: 'dns-udp', protocol: 'UDP', port: 53, targetPort: 5353 },
      { name: 'dns-tcp', protocol: 'TCP', port: 53, targetPort: 5353 },
      { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 },
    ],
    endpoints: [{ address: 'fd00:10:64:4::4' }],
  };
  const t6 = tablesOf(web, multi);
  const vip = parseIPv6('fd00:10:96::d')!;
  const p = t6.ids.find(vip, 0);
  t.ok(p >= 0, 'the ClusterIP has a slot');
  // slot: four words, id + 1, hint key, hint value, pad
  t.equal(t6.ids.slots[p + 5], 1 * 65536 + 53, 'its hint is its first port: UDP (protocol index 1) 53');
  const seen = new Set<number>();
  for (const [proto, port] of [[PROTO_UDP, 53], [PROTO_TCP, 53], [PROTO_TCP, 80]] as const) {
    const a = ask(t6, proto, 'fd00:10:64:9::1', 'fd00:10:96::d', port);
    t.equal(a.r, LOOKUP_DNAT, `${proto}/${port} DNATs`);
    t.same(a.eps, [`[fd00:10:64:4::4]:${port === 80 ? 8080 : 5353}`], `${proto}/${port}: the endpoint and target port`);
    t.equal(a.out.svcIndex, t6.base.vipIndex.get(t6.ids.get(vip, 0), (proto === PROTO_TCP ? 0 : 1) * 65536 + port) >> 2, `${proto}/${port}: the service port the VIP index names`);
    seen.add(a.out.svcIndex);
  }
  t.equal(seen.size, 3, 'three service ports, three answers');
  t.equal(ask(t6, PROTO_UDP, 'fd00:10:64:9::1', 'fd00:10:96::d', 80).r, LOOKUP_NOMATCH, 'a port the service has not: no match');
  t.equal(ask(t6, PROTO_TCP, 'fd00:10:64:9::1', 'fd00:10:96::d', 8080).r, LOOKUP_NOMATCH, 'nor its target port');
});

t.test('endpoints6: endpointFlat\'s positions with each endpoint\'s words and port inline, also after the wire', async (t) => {
  const { TablesEncoder, TablesMaterializer, shareTables } = await import('../../dataplane/tables-wire.ts');
  const { EP6_STRIDE, EP6_PORT } = await import('../../dataplane/tables6.ts');
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node, services: [web, empty, lb] } satisfies RuleSet);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  const compiled = compile(r.model);
  const wired = new TablesMaterializer(structuredClone(new TablesEncoder().encode(shareTables(compiled))), null).all().tables;
  for (const [what, t6] of [['compiled', compiled.v6!], ['through the wire', wired.v6!]] as const) {
    const ef = t6.base.endpointFlat;
    t.equal(t6.endpoints6.length, (ef.length / 2) * EP6_STRIDE, `${what}: one slot per flat position`);
    const seen: string[] = [];
    for (let k = 0; k < ef.length / 2; k++) {
      const o = k * EP6_STRIDE;
      t.equal(formatIPv6(t6.endpoints6, o), formatIPv6(t6.words, ef[2 * k] * 4), `${what}: position ${k}'s words are its id's`);
      t.equal(t6.endpoints6[o + EP6_PORT], ef[2 * k + 1], `${what}: position ${k}'s port`);
      seen.push(`[${formatIPv6(t6.endpoints6, o)}]:${t6.endpoints6[o + EP6_PORT]}`);
    }
    t.ok(seen.includes('[fd00:10:64:1::7]:5353') && seen.includes('[fd00:10:64:3::3]:8443'), `${what}: ${seen.join(' ')}`);
  }
});
