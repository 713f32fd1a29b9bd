/**
 * The IPv6 packet path through the real pieces: a dual-stack rule set
 * validated and compiled (tables.v6), packets built byte by byte, and every
 * translated packet's checksum verified in full.
 */
import t from 'tap';
import { validateRuleSet } from '../../control/validate.ts';
import { compile } from '../../control/compile.ts';
import type { RuleSet, Service } from '../../control/types.ts';
import { parseIPv6, formatIPv6 } from '../../dataplane/addr6.ts';
import { Pipeline, V_FORWARD, V_REPLY, V_DROP, V_PASS } from '../../dataplane/pipeline.ts';
import { Rng } from '../../dataplane/select.ts';
import { writeIpv6Header, ipv6Walk, Ipv6Chain, l4Checksum6, l4Checksum6Valid, ipv6SrcInto, ipv6DstInto } from '../../dataplane/wire/ipv6.ts';
import { buildIcmpv6Error, icmpv6Check, icmpv6ChecksumValid, icmpv6FillChecksum, writeIcmpv6EchoHeader } from '../../dataplane/wire/icmpv6.ts';
import type { Tables } from '../../dataplane/tables.ts';

const A = (s: string): Uint32Array => parseIPv6(s)!;
const node = { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' };
const web: Service = {
  namespace: 'default', name: 'web', clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
  ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack',
  ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }, { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
  endpoints: [{ address: '10.64.1.7' }, { address: 'fd00:10:64:1::7' }],
};
const empty: Service = {
  namespace: 'default', name: 'empty', clusterIP: 'fd00:10:96::e', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
  ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 80 }], endpoints: [],
};
function tables(n = node, ...services: Service[]): Tables {
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node: n, services: services.length ? services : [web, empty] } satisfies RuleSet);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return compile(r.model);
}

const CLIENT = '2001:db8::35';
const VIP = 'fd00:10:96::a';
const POD = 'fd00:10:64:1::7';
const MASQ = 'fd00:50::2';

function udp(src: string, dst: string, sport: number, dport: number, payload = 'hello'): Uint8Array {
  const len = 8 + payload.length;
  const b = new Uint8Array(40 + len);
  writeIpv6Header(b, 0, len, 17, 64, A(src), 0, A(dst), 0);
  b[40] = sport >> 8; b[41] = sport; b[42] = dport >> 8; b[43] = dport; b[44] = len >> 8; b[45] = len;
  b.set(Buffer.from(payload), 48);
  const k = l4Checksum6(b, 0, 40, len, 6, 17);
  b[46] = k >> 8; b[47] = k;
  return b;
}
function tcp(src: string, dst: string, sport: number, dport: number, flags: number): Uint8Array {
  const b = new Uint8Array(60);
  writeIpv6Header(b, 0, 20, 6, 64, A(src), 0, A(dst), 0);
  b[40] = sport >> 8; b[41] = sport; b[42] = dport >> 8; b[43] = dport;
  b[52] = 0x50; b[53] = flags; b[54] = 0xff; b[55] = 0xff;
  const k = l4Checksum6(b, 0, 40, 20, 16, 6);
  b[56] = k >> 8; b[57] = k;
  return b;
}
function addrs(b: Uint8Array): [string, string, number, number] {
  const w = new Uint32Array(8);
  ipv6SrcInto(b, 0, w, 0);
  ipv6DstInto(b, 0, w, 4);
  const c = new Ipv6Chain();
  ipv6Walk(b, 0, c);
  return [formatIPv6(w, 0), formatIPv6(w, 4), (b[c.l4Off] << 8) | b[c.l4Off + 1], (b[c.l4Off + 2] << 8) | b[c.l4Off + 3]];
}
function sumOk(b: Uint8Array): boolean {
  const c = new Ipv6Chain();
  ipv6Walk(b, 0, c);
  if (c.proto === 58) return icmpv6ChecksumValid(b, 0, c.l4Off, c.l4Len);
  return l4Checksum6Valid(b, 0, c.l4Off, c.l4Len, c.proto);
}

t.test('UDP to an IPv6 ClusterIP from outside: DNAT, masquerade to the node\'s IPv6 address, the reply back', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(1) });
  const p = udp(CLIENT, VIP, 40000, 53);
  t.equal(pl.process(p, 0, p.length, tb, 0), V_FORWARD);
  t.same(addrs(p), [MASQ, POD, 40000, 5353], 'to the endpoint, from the masquerade address, the client port kept');
  t.ok(sumOk(p));
  const r = udp(POD, MASQ, 5353, 40000, 'world');
  t.equal(pl.process(r, 0, r.length, tb, 1), V_FORWARD);
  t.same(addrs(r), [VIP, CLIENT, 53, 40000], 'the reply comes from the ClusterIP');
  t.ok(sumOk(r));
  const p2 = udp(CLIENT, VIP, 40000, 53);
  t.equal(pl.process(p2, 0, p2.length, tb, 2), V_FORWARD);
  t.same(addrs(p2), [MASQ, POD, 40000, 5353]);
  const s = pl.counters.snapshot();
  t.equal(s.events.new_flows, 1);
  t.equal(s.events.established, 1);
  t.equal(s.events.replies, 1);
  t.equal(s.events.masqueraded, 1);
  t.equal(s.events.ipv6_packets, 3);
  const ct6 = pl.ipv6().conntrack;
  t.equal(ct6.size, 1);
  t.match(ct6.list(2), /^udp      17 \d+ src=2001:db8::35 dst=fd00:10:96::a sport=40000 dport=53 src=fd00:10:64:1::7 dst=fd00:50::2 sport=5353 dport=40000 mark=0 use=1\n$/);
  t.equal(pl.conntrack.size, 0, 'the IPv4 table is not used');
});

t.test('TCP from a pod: no masquerade; a second flow on a taken masquerade tuple gets another port', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(2) });
  const p = tcp('fd00:10:64:9::1', VIP, 33000, 80, 0x02);
  t.equal(pl.process(p, 0, p.length, tb, 0), V_FORWARD);
  t.same(addrs(p), ['fd00:10:64:9::1', POD, 33000, 8080]);
  t.ok(sumOk(p));
  // two outside clients with the same source port: the second gets a fresh masquerade port
  const a = tcp('2001:db8::1', VIP, 44444, 80, 0x02);
  const b = tcp('2001:db8::2', VIP, 44444, 80, 0x02);
  t.equal(pl.process(a, 0, a.length, tb, 1), V_FORWARD);
  t.equal(pl.process(b, 0, b.length, tb, 1), V_FORWARD);
  t.equal(addrs(a)[2], 44444);
  t.not(addrs(b)[2], 44444, 'the masquerade tuple was taken: another port');
  t.ok(sumOk(b));
});

t.test('no endpoints: ICMPv6 port unreachable from the ClusterIP (REJECT)', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(3) });
  const p = tcp(CLIENT, 'fd00:10:96::e', 5555, 80, 0x02);
  const orig = p.slice();
  t.equal(pl.process(p, 0, p.length, tb, 0), V_REPLY);
  const e = pl.reply.subarray(0, pl.replyLen);
  const c = new Ipv6Chain();
  t.equal(ipv6Walk(e, 0, c), 0);
  t.equal(c.proto, 58);
  t.same([e[40], e[41]], [1, 4], 'destination unreachable, port unreachable');
  t.same(addrs(e).slice(0, 2), ['fd00:10:96::e', CLIENT]);
  t.ok(icmpv6ChecksumValid(e, 0, 40, c.l4Len));
  t.same(Buffer.from(e.subarray(48)), Buffer.from(orig), 'the whole packet quoted');
  t.equal(pl.counters.snapshot().events.rejected, 1);
});

t.test('ICMPv6 errors of a tracked flow: quote and outer header translated both ways', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(4) });
  const p = udp(CLIENT, VIP, 40001, 53);
  t.equal(pl.process(p, 0, p.length, tb, 0), V_FORWARD); // now MASQ:40001 -> POD:5353
  // the endpoint answers port unreachable about the translated packet
  const e = new Uint8Array(300);
  let n = buildIcmpv6Error(e, 0, p, 0, p.length, 1, 4, A(POD), 0);
  t.equal(pl.process(e, 0, n, tb, 1), V_FORWARD);
  t.same(addrs(e).slice(0, 2), [VIP, CLIENT], 'outer: from the ClusterIP to the client');
  const q = new Ipv6Chain();
  const c = new Ipv6Chain();
  ipv6Walk(e, 0, c);
  t.equal(icmpv6Check(e, c.l4Off, c.l4Len, q), 0);
  t.same(Buffer.from(e.subarray(48, n)), Buffer.from(udp(CLIENT, VIP, 40001, 53)), 'the quote is the packet the client sent');
  t.ok(icmpv6ChecksumValid(e, 0, 40, n - 40));
  // packet too big on the way back: a router near the client, about a reply (VIP -> client)
  const reply = udp(VIP, CLIENT, 53, 40001, 'x'.repeat(100));
  const ptb = new Uint8Array(400);
  n = buildIcmpv6Error(ptb, 0, reply, 0, reply.length, 2, 0, A('2001:db8::fe'), 0, 1280);
  // the router's error is addressed to the reply's source, the ClusterIP
  t.equal(pl.process(ptb, 0, n, tb, 2), V_FORWARD);
  t.same(addrs(ptb).slice(0, 2), ['2001:db8::fe', POD], 'outer: to the endpoint that sent the reply');
  ipv6Walk(ptb, 0, c);
  icmpv6Check(ptb, c.l4Off, c.l4Len, q);
  t.same(Buffer.from(ptb.subarray(48, n)), Buffer.from(udp(POD, MASQ, 5353, 40001, 'x'.repeat(100))), 'the quote is the reply as the endpoint sent it');
  t.ok(icmpv6ChecksumValid(ptb, 0, 40, n - 40));
  t.equal(pl.counters.snapshot().events.icmp_errors_translated, 2);
});

function fragments(src: string, dst: string): [Uint8Array, Uint8Array] {
  // a 40-byte UDP datagram (8 header + 32 data) in two fragments: 24 + 16 bytes
  const full = udp(src, dst, 40002, 53, 'abcdefghijklmnopqrstuvwxyz012345');
  const f1 = new Uint8Array(40 + 8 + 24);
  writeIpv6Header(f1, 0, 32, 44, 64, A(src), 0, A(dst), 0);
  f1.set([17, 0, 0, 1, 0xca, 0xfe, 0xf0, 0x0d], 40);
  f1.set(full.subarray(40, 64), 48);
  const f2 = new Uint8Array(40 + 8 + 16);
  writeIpv6Header(f2, 0, 24, 44, 64, A(src), 0, A(dst), 0);
  f2.set([17, 0, 0, 24, 0xca, 0xfe, 0xf0, 0x0d], 40);
  f2.set(full.subarray(64), 48);
  return [f1, f2];
}

t.test('fragments follow their first fragment', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(5) });
  const [f1, f2] = fragments(CLIENT, VIP);
  t.equal(pl.process(f1, 0, f1.length, tb, 0), V_FORWARD);
  t.same(addrs(f1).slice(0, 2), [MASQ, POD]);
  t.equal(pl.process(f2, 0, f2.length, tb, 0), V_FORWARD);
  t.same(addrs(f2).slice(0, 2), [MASQ, POD]);
  // reassembled, the UDP checksum is right for the translated addresses
  const whole = new Uint8Array(80);
  whole.set(f1.subarray(0, 40));
  whole[4] = 0; whole[5] = 40; whole[6] = 17;
  whole.set(f1.subarray(48), 40);
  whole.set(f2.subarray(48), 64);
  t.ok(l4Checksum6Valid(whole, 0, 40, 40, 17));
  t.equal(pl.counters.snapshot().events.fragments_translated, 1);
  // a later fragment to a service whose first fragment was not seen
  const [, lone] = fragments('2001:db8::77', VIP);
  t.equal(pl.process(lone, 0, lone.length, tb, 0), V_DROP);
  t.equal(pl.counters.snapshot().drops.fragment_no_flow, 1);
});

t.test('malformed IPv6 is dropped under a named reason; echo and other addresses pass', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(6) });
  const bad = udp(CLIENT, VIP, 1, 53);
  bad[6] = 60; // destination options whose length runs past the payload
  bad[41] = 200;
  t.equal(pl.process(bad, 0, bad.length, tb, 0), V_DROP);
  t.equal(pl.counters.malformed.get('ipv6_ext_truncated'), 1);
  const short = udp(CLIENT, VIP, 1, 53);
  t.equal(pl.process(short, 0, 30, tb, 0), V_DROP);
  t.equal(pl.counters.malformed.get('too_short'), 1);
  const echo = new Uint8Array(48);
  writeIpv6Header(echo, 0, 8, 58, 64, A(CLIENT), 0, A(VIP), 0);
  writeIcmpv6EchoHeader(echo, 40, 128, 1, 1);
  icmpv6FillChecksum(echo, 0, 40, 8);
  t.equal(pl.process(echo, 0, echo.length, tb, 0), V_PASS);
  const other = udp(CLIENT, '2001:db8:ffff::1', 1, 53);
  t.equal(pl.process(other, 0, other.length, tb, 0), V_PASS);
  t.equal(pl.counters.snapshot().drops.malformed, 2);
});

t.test('without IPv6 tables, IPv6 passes untouched (as before)', async (t) => {
  const tb = tables({ addresses: ['192.168.50.2'], clusterCIDR: '10.64.0.0/16' }, { ...web, clusterIPs: undefined, ipFamilies: undefined, ipFamilyPolicy: undefined, endpoints: [{ address: '10.64.1.7' }] });
  t.notOk(tb.v6);
  const pl = new Pipeline();
  const p = udp(CLIENT, VIP, 1, 53);
  const before = p.slice();
  t.equal(pl.process(p, 0, p.length, tb, 0), V_PASS);
  t.same(p, before);
  t.equal(pl.counters.snapshot().events.non_ipv4, 1);
});

t.test('an IPv6 service on a node without an IPv6 address is refused before the packet path', async (t) => {
  // (the packet path still drops such a flow as ipv6_no_masquerade_address should tables ever hold one)
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node: { addresses: ['192.168.50.2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' }, services: [web] });
  t.notOk(r.ok);
  if (!r.ok) t.match(r.errors[0].message, /node.addresses has no IPv6 address/);
});

t.test('a partial TCP checksum from the TUN (NEEDS_CSUM) stays partial through DNAT and masquerade', async (t) => {
  const tb = tables();
  const pl = new Pipeline({ rng: new Rng(7) });
  const p = tcp(CLIENT, VIP, 45000, 80, 0x18);
  // the partial form: the pseudo-header sum, not complemented, in the checksum field
  const { pseudoHeaderSum6 } = await import('../../dataplane/wire/ipv6.ts');
  const ps = pseudoHeaderSum6(p, 0, 6, 20);
  p[56] = ps >> 8; p[57] = ps;
  const buf = new Uint8Array(10 + p.length);
  buf[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
  buf[6] = 40; buf[8] = 16; // csum_start 40 (the TCP header), csum_offset 16 (little-endian)
  buf.set(p, 10);
  t.equal(pl.process(buf, 10, p.length, tb, 0, 0), V_FORWARD);
  const out = buf.subarray(10);
  t.same(addrs(out), [MASQ, POD, 45000, 8080]);
  t.equal(buf[0] & 1, 1, 'still NEEDS_CSUM');
  // what the kernel does next: sum from csum_start, complement, store
  const { checksumRaw } = await import('../../dataplane/wire/checksum.ts');
  const k = ~checksumRaw(out, 40, 20, 0) & 0xffff;
  out[56] = k >> 8; out[57] = k;
  t.ok(l4Checksum6Valid(out, 0, 40, 20, 6), 'completed, the checksum is right for the translated packet');
});

t.test('ClientIP affinity keys an IPv6 client by its whole address: a client with the same 32-bit fold does not inherit another\'s endpoint', async (t) => {
  const sticky: Service = {
    namespace: 'default', name: 'sticky', clusterIP: 'fd00:10:96::5', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
    sessionAffinity: 'ClientIP',
    ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }],
    endpoints: Array.from({ length: 8 }, (_, i) => ({ address: `fd00:10:64:1::${i + 1}` })),
  };
  const tb = tables(node, sticky);
  // A and B differ in two words by the same bits, so their xor folds are equal
  const a = A('2001:db8:0:0:0:1:0:2');
  const b = Uint32Array.of(a[0], a[1], a[2] ^ 0x00070000, a[3] ^ 0x00070000);
  t.equal((a[0] ^ a[1] ^ a[2] ^ a[3]) >>> 0, (b[0] ^ b[1] ^ b[2] ^ b[3]) >>> 0, 'the two clients fold alike');
  t.not(formatIPv6(a, 0), formatIPv6(b, 0));
  const CA = formatIPv6(a, 0);
  const CB = formatIPv6(b, 0);
  const pl = new Pipeline({ rng: new Rng(5) });
  const dstOf = (src: string, sport: number): string => {
    const p = udp(src, 'fd00:10:96::5', sport, 53);
    t.equal(pl.process(p, 0, p.length, tb, 0), V_FORWARD);
    return addrs(p)[1];
  };
  const first = dstOf(CA, 41000);
  for (let i = 1; i <= 5; i++) t.equal(dstOf(CA, 41000 + i), first, `A's flow ${i} sticks to ${first}`);
  const hitsBefore = pl.counters.snapshot().events.affinity_hits;
  // B's flows: each a fresh choice or B's own affinity, never A's entry
  const bFirst = dstOf(CB, 42000);
  t.equal(pl.counters.snapshot().events.affinity_hits, hitsBefore, 'B\'s first flow is no affinity hit (A\'s entry is not B\'s)');
  for (let i = 1; i <= 3; i++) t.equal(dstOf(CB, 42000 + i), bFirst, `B's flow ${i} sticks to its own ${bFirst}`);
});
