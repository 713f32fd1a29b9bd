/**
 * Dual-stack rule sets (Kubernetes' ipFamilies, ipFamilyPolicy, clusterIPs):
 * what validation accepts, the errors it gives (each naming its field), and
 * the model it builds — one view of each service port per family, as
 * kube-proxy's meta-proxier gives each family's proxier.
 */
import t from 'tap';
import { validateRuleSet } from '../../control/validate.ts';
import { addr6, ADDR6_BASE, isIPv6, formatAddr, serviceFamilies } from '../../control/model.ts';
import { formatIPv4 } from '../../dataplane/addr.ts';
import { RuleSetHolder } from '../../control/runtime.ts';
import type { RuleSet, Service } from '../../control/types.ts';

const node = { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' };
const web = (over: Partial<Service> = {}): Service => ({
  namespace: 'default',
  name: 'web',
  clusterIP: '10.96.0.10',
  clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
  ipFamilies: ['IPv4', 'IPv6'],
  ipFamilyPolicy: 'RequireDualStack',
  ports: [
    { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 },
    { name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 },
  ],
  endpoints: [
    { address: '10.64.1.7' },
    { address: 'fd00:10:64:1::7', nodeLocal: true },
    { address: '10.64.2.9', ready: false },
    { address: 'fd00:10:64:2::9' },
  ],
  ...over,
});
const rs = (...services: Service[]): RuleSet => ({ apiVersion: 'tunproxy.dev/v1', node: { ...node }, services });
function errorsOf(x: unknown): string[] {
  const r = validateRuleSet(x);
  return r.ok ? [] : r.errors.map((e) => `${e.path}: ${e.message}`);
}

t.test('a dual-stack service: one model per family, each with its own addresses', async (t) => {
  const r = validateRuleSet(rs(web()));
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  const ports = r.model.ports;
  t.same(ports.map((p) => `${p.family} ${p.name} ${p.clusterIP}`), [
    '4 default/web:http 10.96.0.10',
    '4 default/web:dns 10.96.0.10',
    '6 default/web:http fd00:10:96::a',
    '6 default/web:dns fd00:10:96::a',
  ]);
  const [h4, , h6] = ports;
  t.notOk(isIPv6(h4.clusterAddr));
  t.ok(isIPv6(h6.clusterAddr));
  t.equal(formatAddr(h6.clusterAddr), 'fd00:10:96::a');
  t.same([...addr6.words(h6.clusterAddr)], [0xfd000010, 0x00960000, 0, 0xa]);
  t.same(h4.endpoints.map((e) => e.text), ['10.64.1.7:8080', '10.64.2.9:8080']);
  t.same(h4.clusterEndpoints.map((e) => e.text), ['10.64.1.7:8080'], 'IPv4: the ready endpoint only');
  t.same(h6.endpoints.map((e) => e.text), ['[fd00:10:64:1::7]:8080', '[fd00:10:64:2::9]:8080']);
  t.same(h6.clusterEndpoints.map((e) => e.address), ['fd00:10:64:1::7', 'fd00:10:64:2::9']);
  t.equal(h6.nodePort, 30080, 'the NodePort answers in both families');
  t.same(r.model.portsOf(4).map((p) => p.family), [4, 4]);
  t.same(r.model.portsOf(6).map((p) => p.family), [6, 6]);
  // the node
  const n = r.model.node;
  t.equal(n.masqueradeAddress, '192.168.50.2');
  t.equal(n.masqueradeAddress6, 'fd00:50::2');
  t.equal(formatAddr(n.masqueradeAddr6), 'fd00:50::2');
  t.equal(n.clusterCIDR, '10.64.0.0/16');
  t.equal(n.clusterCIDR6, 'fd00:10:64::/56');
  t.equal(n.cidr6!.bits, 56);
  t.same(n.addrs4.map(formatAddr), ['192.168.50.2']);
  t.same(n.addrs6.map(formatAddr), ['fd00:50::2']);
});

t.test('families default as Kubernetes defaults them', async (t) => {
  t.same(serviceFamilies({ ...web(), ipFamilies: undefined }), [4, 6], 'from clusterIPs');
  t.same(serviceFamilies({ ...web(), ipFamilies: undefined, clusterIPs: undefined, clusterIP: 'fd00:10:96::1' }), [6], 'from clusterIP');
  t.same(serviceFamilies({ ...web(), ipFamilies: undefined, clusterIPs: undefined, clusterIP: 'None' }), [4, 6], 'headless: from its endpoints');
  t.same(serviceFamilies({ ...web(), ipFamilies: undefined, clusterIPs: undefined, clusterIP: undefined, endpoints: [] }), [4], 'nothing: IPv4');
  t.same(serviceFamilies({ ...web(), ipFamilies: ['IPv6', 'IPv4'], clusterIPs: ['fd00:10:96::a', '10.96.0.10'], clusterIP: 'fd00:10:96::a' }), [6, 4], 'IPv6 primary');
  // an IPv6-only service, the model in ipFamilies order
  const r = validateRuleSet(rs(web({ clusterIP: 'fd00:10:96::b', clusterIPs: undefined, ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack', endpoints: [{ address: 'fd00:10:64:1::8' }] })));
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  t.same(r.model.ports.map((p) => p.family), [6, 6]);
  t.equal(r.model.portsOf(4).length, 0);
});

t.test('a mismatch of families is an error naming the field', async (t) => {
  const v4only = { clusterIPs: undefined, ipFamilies: ['IPv4'] as ('IPv4' | 'IPv6')[], ipFamilyPolicy: 'SingleStack' as const };
  t.same(errorsOf(rs(web(v4only))), [
    "services[0].endpoints[1].address: fd00:10:64:1::7 is IPv6, but the service's IP families are [IPv4]",
    "services[0].endpoints[3].address: fd00:10:64:2::9 is IPv6, but the service's IP families are [IPv4]",
  ]);
  t.same(errorsOf(rs(web({ clusterIPs: ['10.96.0.11', 'fd00:10:96::a'] }))), ['services[0].clusterIPs[0]: "10.96.0.11" must equal clusterIP "10.96.0.10"']);
  t.same(errorsOf(rs(web({ clusterIPs: ['10.96.0.10', '10.96.0.11'] }))), [
    'services[0].clusterIPs[1]: "10.96.0.11" is a second IPv4 address: a dual-stack service has one ClusterIP per family',
    'services[0].clusterIPs[1]: "10.96.0.11" is IPv4, but ipFamilies[1] is IPv6',
  ]);
  t.same(errorsOf(rs(web({ ipFamilies: ['IPv6', 'IPv4'] }))), [
    'services[0].clusterIP: 10.96.0.10 is IPv4, but ipFamilies[0] is IPv6',
    'services[0].clusterIPs[0]: "10.96.0.10" is IPv4, but ipFamilies[0] is IPv6',
    'services[0].clusterIPs[1]: "fd00:10:96::a" is IPv6, but ipFamilies[1] is IPv4',
  ]);
  t.same(errorsOf(rs(web({ ipFamilyPolicy: 'SingleStack' }))), ['services[0].ipFamilyPolicy: SingleStack takes one IP family, but the service lists two (ipFamilies, clusterIPs)']);
  t.same(errorsOf(rs(web({ ...v4only, ipFamilyPolicy: 'RequireDualStack', endpoints: [] }))), [
    'services[0].ipFamilyPolicy: RequireDualStack needs both IP families: list them in ipFamilies (and a ClusterIP of each in clusterIPs)',
  ]);
  t.same(errorsOf(rs(web({ ipFamilies: ['IPv4', 'IPv4'] }))), ['services[0].ipFamilies[1]: IPv4 is listed twice']);
  t.same(errorsOf(rs(web({ ipFamilies: ['IPv4'] }))), ['services[0].clusterIPs[1]: "fd00:10:96::a" is IPv6, but ipFamilies lists only [IPv4]', 'services[0].ipFamilyPolicy: RequireDualStack needs both IP families: list them in ipFamilies (and a ClusterIP of each in clusterIPs)']);
  t.same(errorsOf(rs(web({ ipFamilies: ['IPv5' as 'IPv4'] }))), ['services[0].ipFamilies[0]: "IPv5" is not one of IPv4, IPv6']);
  t.same(errorsOf(rs(web({ ...v4only, endpoints: [], externalIPs: ['203.0.113.7', '2001:db8::7'] }))), [
    "services[0].externalIPs[1]: 2001:db8::7 is IPv6, but the service's IP families are [IPv4]",
  ]);
  t.same(errorsOf(rs(web({ ...v4only, endpoints: [], loadBalancerIPs: ['203.0.113.8'], loadBalancerSourceRanges: ['2001:db8::/32'] }))), [
    "services[0].loadBalancerSourceRanges[0]: 2001:db8::/32 is IPv6, but the service's IP families are [IPv4]",
  ]);
  t.same(errorsOf(rs(web({ clusterIPs: ['10.96.0.10', 'fd00:10:96::zz'] }))), ['services[0].clusterIPs[1]: "fd00:10:96::zz" is not an IPv6 address']);
  // an IPv6 service on a node without an IPv6 address
  const v4node = rs(web());
  v4node.node.addresses = ['192.168.50.2'];
  v4node.node.clusterCIDR = '10.64.0.0/16';
  t.same(errorsOf(v4node), ['services[0]: default/web is IPv6 (its IP families are [IPv4, IPv6]), but node.addresses has no IPv6 address (to answer NodePorts on and masquerade to)']);
});

t.test('node: dual-stack pairs', async (t) => {
  const bad = (over: object) => errorsOf({ ...rs(), node: { ...node, ...over } });
  t.same(bad({ clusterCIDR: '10.64.0.0/16,10.65.0.0/16' }), ['node.clusterCIDR: "10.64.0.0/16,10.65.0.0/16": a dual-stack pair needs one of each IP family, not two IPv4']);
  t.same(bad({ clusterCIDR: 'fd00::/129' }), ['node.clusterCIDR: "fd00::/129" is not an IPv6 CIDR (like fd00:10:244::/56)']);
  t.same(bad({ masqueradeAddress: '192.168.50.2,fd00:50::2,10.0.0.1' }), ['node.masqueradeAddress: "192.168.50.2,fd00:50::2,10.0.0.1": at most two, one per IP family ("IPv4,IPv6")']);
  t.same(bad({ addresses: ['192.168.50.2', 'fd00:50::zz'] }), ['node.addresses[1]: "fd00:50::zz" is not an IPv6 address']);
  const r = validateRuleSet({ ...rs(), node: { addresses: ['fd00:50::3', '192.168.50.2', 'fd00:10:64::1'], clusterCIDR: 'fd00:10:64::/56' } });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  t.equal(r.model.node.masqueradeAddress6, 'fd00:10:64::1', 'default: the first IPv6 node address inside the IPv6 clusterCIDR');
  t.equal(r.model.node.masqueradeAddress, '192.168.50.2', 'IPv4: the first IPv4 address');
  t.equal(r.model.node.clusterCIDR, null);
  const m = validateRuleSet({ ...rs(), node: { addresses: ['192.168.50.2', 'fd00:50::2'], masqueradeAddress: 'fd00:50::9,192.168.50.9' } });
  if (!m.ok) throw new Error(JSON.stringify(m.errors));
  t.equal(m.model.node.masqueradeAddress, '192.168.50.9');
  t.equal(m.model.node.masqueradeAddress6, 'fd00:50::9');
});

t.test('conflicts in each family; IPv6 keys never meet IPv4 ones', async (t) => {
  const other = web({ name: 'other', clusterIP: '10.96.0.20', clusterIPs: ['10.96.0.20', 'fd00:10:96::a'], ports: [{ name: 'http', protocol: 'TCP', port: 80 }] });
  t.same(errorsOf(rs(web(), other)), [
    'services[1].ports[0]: fd00:10:96::a:80/TCP (cluster IP) is already used by services[0].ports[0] (default/web:http cluster IP)',
  ]);
  // the IPv6 ClusterIP as pool number 2^32 + i, and the IPv4 address i: distinct keys
  const v6 = addr6.intern('fd00:10:96::77');
  const twin = formatIPv4(v6 - ADDR6_BASE);
  const a = web({ name: 'a', clusterIP: 'fd00:10:96::77', clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, endpoints: [] });
  const b = web({ name: 'b', clusterIP: twin, clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, endpoints: [], ports: [{ name: 'http', protocol: 'TCP', port: 80 }] });
  t.same(errorsOf(rs(a, b)), [], `fd00:10:96::77 and ${twin} do not conflict`);
  // a NodePort is the node's, whatever the family: a dual-stack service holds it once; a second service may not
  const np = web({ name: 'np', clusterIP: 'fd00:10:96::99', clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, endpoints: [], ports: [{ name: 'x', protocol: 'TCP', port: 81, nodePort: 30080 }] });
  t.same(errorsOf(rs(web(), np)), ['services[1].ports[0].nodePort: 30080/TCP is already the NodePort of services[0].ports[0] (default/web:http)']);
  // the ClusterIP of either family may not be a node address
  t.same(errorsOf(rs(web({ clusterIPs: ['10.96.0.10', 'fd00:50::2'] }))), ['services[0].clusterIPs: fd00:50::2 is a node address']);
});

t.test('the IPv4 tables of a dual-stack rule set, full and incremental', async (t) => {
  // until the IPv6 tables come, compile holds each service's IPv4 ports; entries stay aligned with their owners
  const h = new RuleSetHolder({ incremental: true });
  const v6only = web({ name: 'six', clusterIP: 'fd00:10:96::6', clusterIPs: undefined, ipFamilies: ['IPv6'], ipFamilyPolicy: undefined, endpoints: [{ address: 'fd00:10:64::6' }], ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30081 }] });
  const four = web({ name: 'four', clusterIP: '10.96.0.44', clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, endpoints: [{ address: '10.64.4.4' }], ports: [{ name: 'http', protocol: 'TCP', port: 80 }] });
  t.equal(h.apply(rs(v6only, web(), four)).mode, 'full');
  const names = () => h.current!.services.filter((s) => s.live).map((s) => s.name);
  t.same(names(), ['default/web:http', 'default/web:dns', 'default/four:http']);
  const four2 = { ...four, endpoints: [{ address: '10.64.4.5' }] };
  t.equal(h.apply(rs(v6only, web(), four2)).mode, 'incremental');
  t.same(names(), ['default/web:http', 'default/web:dns', 'default/four:http']);
  const e = h.current!.services.find((s) => s.live && s.name === 'default/four:http')!;
  t.same(e.cluster!.endpoints.map((x) => x.text), ['10.64.4.5:80']);
});

t.test('an incremental apply checks IPv6 keys against the IPv6 tables in force', async (t) => {
  // enough IPv4 services that one more is an incremental apply, an IPv6-only service in force
  const filler = Array.from({ length: 300 }, (_, i) =>
    web({ name: `f${i}`, clusterIP: `10.96.${1 + (i >> 8)}.${i & 255}`, clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, endpoints: [{ address: '10.64.4.4' }], ports: [{ name: 'http', protocol: 'TCP', port: 80 }] }),
  );
  const six = (name: string, over: Partial<Service> = {}): Service =>
    web({ name, clusterIP: 'fd00:10:96::6', clusterIPs: undefined, ipFamilies: ['IPv6'], ipFamilyPolicy: undefined, externalIPs: ['2001:db8::e'], endpoints: [{ address: 'fd00:10:64::6' }], ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30081 }], ...over });
  const h = new RuleSetHolder({ incremental: true });
  h.apply(rs(...filler, six('a')));
  const gen = h.generation;
  const add = (s: Service): string[] => {
    try {
      t.equal(h.apply({ ...h.ruleSet!, services: [...h.ruleSet!.services, s] }).mode, 'incremental');
      return [];
    } catch (e) {
      return (e as { errors: { path: string; message: string }[] }).errors.map((x) => `${x.path}: ${x.message}`);
    }
  };
  t.same(add(six('b', { externalIPs: [], ports: [{ name: 'http', protocol: 'TCP', port: 80 }] })), [
    'services[301].ports[0]: fd00:10:96::6:80/TCP (cluster IP) is already used by services[300].ports[0] (default/a:http cluster IP)',
  ]);
  t.same(add(six('c', { clusterIP: 'fd00:10:96::c', ports: [{ name: 'http', protocol: 'TCP', port: 80 }] })), [
    'services[301].ports[0]: 2001:db8::e:80/TCP (external IP) is already used by services[300].ports[0] (default/a:http external IP)',
  ]);
  t.same(add(six('d', { clusterIP: 'fd00:10:96::d', externalIPs: [] })), ['services[301].ports[0].nodePort: 30081/TCP is already the NodePort of services[300].ports[0] (default/a:http)']);
  // an IPv4 service may not take the IPv6-only service's NodePort either
  t.same(add(web({ name: 'e', clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, clusterIP: '10.96.9.9', endpoints: [{ address: '10.64.4.4' }], ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30081 }] })), [
    'services[301].ports[0].nodePort: 30081/TCP is already the NodePort of services[300].ports[0] (default/a:http)',
  ]);
  t.equal(h.generation, gen, 'every conflicting change refused: the rule set in force stays');
  // the same address and port once the holder is gone (replaced in the same apply): accepted
  const rs0 = h.ruleSet!;
  t.equal(h.apply({ ...rs0, services: [...rs0.services.slice(0, 300), six('b')] }).mode, 'incremental');
  t.same(h.current!.v6!.base.services.filter((s) => s.live).map((s) => s.name), ['default/b:http']);
});
