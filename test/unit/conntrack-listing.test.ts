/**
 * The connection table's listings (SIGUSR1, GET /v1/conntrack, `tunproxy
 * conntrack -L`) cover both families: FlowLister walks the IPv4 table, then
 * the IPv6 one, in slices; the flows travel as numbers plus, for IPv6, their
 * addresses as text; formatFlowL and flowJson print each family's own way.
 */
import t from 'tap';
import { PROTO_UDP, parseIPv4 } from '../../dataplane/addr.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { Conntrack } from '../../dataplane/conntrack.ts';
import { Conntrack6, CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST } from '../../dataplane/conntrack6.ts';
import { FlowLister, unpackChunk, formatFlowL } from '../../control/worker/flows.ts';
import { conntrackFilter, flowJson } from '../../control/api/conntrack.ts';
import type { ConntrackEntry } from '../../dataplane/conntrack.ts';

function tables() {
  let now = 1000;
  const clock = () => now;
  const ct = new Conntrack({ seed: 1, clock });
  const ct6 = new Conntrack6({ seed: 2, clock });
  const v4 = ct.insert(PROTO_UDP, parseIPv4('172.16.1.35'), parseIPv4('10.32.0.10'), 44560, 53, parseIPv4('10.64.1.7'), parseIPv4('10.64.1.1'), 53, 44560, now, { serviceName: 'kube-system/kube-dns:dns', serviceIndex: 0, masquerade: true, endpointAddr: parseIPv4('10.64.1.7'), endpointPort: 53 })!;
  const w = new Uint32Array(16);
  w.set(parseIPv6('2001:db8::35')!, CT6_ORIG_SRC);
  w.set(parseIPv6('fd00:10:96::a')!, CT6_ORIG_DST);
  w.set(parseIPv6('fd00:10:244:1::7')!, CT6_REPLY_SRC);
  w.set(parseIPv6('fd00::1')!, CT6_REPLY_DST);
  const v6 = ct6.insert6(PROTO_UDP, w, 40000, 53, 53, 40000, now, { serviceName: 'kube-system/kube-dns:dns', serviceIndex: 0, masquerade: true })!;
  ct.update(v4, 0, 0, 60, now);
  ct6.update(v6, 0, 0, 80, now);
  now += 1500;
  return { ct, ct6 };
}

t.test('a listing gives the IPv4 flows, then the IPv6 ones, each printed as conntrack -L prints it', async (t) => {
  const { ct, ct6 } = tables();
  const f = conntrackFilter({});
  const l = new FlowLister(ct, f.pred, Infinity, ct6, f.pred6);
  const c = l.next();
  t.equal(c.done, true);
  t.equal(c.count, 2);
  const lines = unpackChunk(c).map((x) => formatFlowL(x, c.now));
  t.match(lines[0], /^udp {6}17 28 src=172\.16\.1\.35 dst=10\.32\.0\.10 sport=44560 dport=53 \[UNREPLIED\] src=10\.64\.1\.7 dst=10\.64\.1\.1 sport=53 dport=44560 mark=0 use=1$/);
  t.match(lines[1], /^udp {6}17 28 src=2001:db8::35 dst=fd00:10:96::a sport=40000 dport=53 \[UNREPLIED\] src=fd00:10:244:1::7 dst=fd00::1 sport=53 dport=40000 mark=0 use=1$/);
  const j = flowJson(unpackChunk(c)[1] as unknown as ConntrackEntry, c.now);
  t.same(j.original.src, '2001:db8::35');
  t.same(j.reply.dst, 'fd00::1');
  t.equal(j.endpoint, '[fd00:10:244:1::7]:53');
  t.equal(flowJson(unpackChunk(c)[0] as unknown as ConntrackEntry, c.now).endpoint, '10.64.1.7:53');
});

t.test('filters: on an IPv4 address they match no IPv6 flow; the others apply to both families', async (t) => {
  const { ct, ct6 } = tables();
  const count = (q: Record<string, string>) => {
    const f = conntrackFilter(q);
    return new FlowLister(ct, f.pred, Infinity, ct6, f.pred6).next().count;
  };
  t.equal(count({ protocol: 'udp' }), 2);
  t.equal(count({ protocol: 'tcp' }), 0);
  t.equal(count({ dport: '53' }), 2);
  t.equal(count({ service: 'kube-system/kube-dns' }), 2);
  t.equal(count({ src: '172.16.1.35' }), 1, 'an IPv4 address: the IPv4 flow only');
  t.equal(count({ sport: '40000' }), 1, 'a port: the IPv6 flow');
});

t.test('limit counts both families; an empty IPv6 table adds nothing', async (t) => {
  const { ct, ct6 } = tables();
  const f = conntrackFilter({});
  const c = new FlowLister(ct, f.pred, 1, ct6, f.pred6).next();
  t.equal(c.count, 1);
  t.equal(c.matched, 2);
  const c2 = new FlowLister(ct, f.pred, Infinity, new Conntrack6({ seed: 3 }), f.pred6).next();
  t.equal(c2.count, 1);
  t.equal(c2.addrs6, undefined, 'no IPv6 flow: no address texts travel');
});
