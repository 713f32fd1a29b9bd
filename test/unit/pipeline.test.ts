import t from 'tap';
import { readFileSync } from 'node:fs';
import { Pipeline, V_FORWARD, V_REPLY, V_DROP, V_PASS } from '../../dataplane/pipeline.ts';
import { Conntrack } from '../../dataplane/conntrack.ts';
import { Rng } from '../../dataplane/select.ts';
import { compile } from '../../control/compile.ts';
import { parseRuleSet } from '../../control/validate.ts';
import { DROP_REASONS } from '../../dataplane/counters.ts';
import type { RuleSet } from '../../control/types.ts';
import { pkt, hex, fromHex, tuple, checksumsValid, SYN, ACK, FIN, PSH } from '../support/packets.ts';
import { buildIcmpError } from '../../dataplane/wire/icmp.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';
import { get16 } from '../../dataplane/wire/bytes.ts';
import { ipv4ChecksumValid } from '../../dataplane/wire/ipv4.ts';

const demo = (): RuleSet => JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'));

/** The demo rule set with one endpoint per service, so that every choice is known. */
function oneEndpoint(): RuleSet {
  const rs = demo();
  rs.services[0].endpoints = [{ address: '10.64.1.7', nodeLocal: true }];
  rs.services[1].endpoints = [{ address: '10.64.1.13', nodeLocal: true }];
  rs.services.push({ namespace: 'default', name: 'sctp-svc', clusterIP: '10.32.0.50', ports: [{ name: 's', protocol: 'SCTP', port: 3868, targetPort: 3868 }], endpoints: [{ address: '10.64.1.20' }] });
  rs.services.push({ namespace: 'default', name: 'local-only', clusterIP: '10.32.0.60', externalIPs: ['192.0.2.60'], externalTrafficPolicy: 'Local', ports: [{ name: 'p', protocol: 'TCP', port: 80 }], endpoints: [{ address: '10.64.2.5', nodeLocal: false }] });
  rs.services.push({ namespace: 'default', name: 'lb', clusterIP: '10.32.0.70', loadBalancerIPs: ['203.0.113.70'], loadBalancerSourceRanges: ['198.51.100.0/24'], ports: [{ name: 'p', protocol: 'TCP', port: 443 }], endpoints: [{ address: '10.64.1.21' }] });
  return parseRuleSet(rs);
}

function setup(rs = oneEndpoint()) {
  let now = 1_000_000;
  const ct = new Conntrack({ clock: () => now });
  const pl = new Pipeline({ conntrack: ct, rng: new Rng(1) });
  const tables = compile(rs);
  const run = (b: Uint8Array) => pl.process(b, 0, b.length, tables, now);
  return { pl, ct, tables, run, advance: (ms: number) => (now += ms), now: () => now };
}

t.test('TCP through a ClusterIP from outside the cluster: handshake, data and teardown, byte-exact', async (t) => {
  const { pl, ct, run, advance } = setup();
  // SYN 172.16.1.99:35814 > 10.32.0.159:8080 (checksums verified by tcpdump -vvv)
  const syn = fromHex('45000028123440004006706aac1001630a20009f8be61f90111111114b4b4b4b500201f6918b0000');
  t.equal(run(syn), V_FORWARD);
  // DNAT to the endpoint, masquerade to the node's 10.64.1.1 keeping the client's port (as in the seed's tcpdump)
  t.equal(hex(syn), '45000028123440004006120f0a4001010a40010d8be60050111111114b4b4b4b500201f652700000');
  // SYN-ACK 10.64.1.13:80 > 10.64.1.1:35814 comes back as 10.32.0.159:8080 > 172.16.1.99:35814
  const synack = fromHex('45000028123440004006120f0a40010d0a40010100508be62222222278787878501201f6d5e30000');
  t.equal(run(synack), V_FORWARD);
  t.equal(hex(synack), '45000028123440004006706a0a20009fac1001631f908be62222222278787878501201f614ff0000');
  t.match(ct.list(), /^tcp      6 60 SYN_RECV src=172\.16\.1\.99 dst=10\.32\.0\.159 sport=35814 dport=8080 src=10\.64\.1\.13 dst=10\.64\.1\.1 sport=80 dport=35814 mark=0 use=1\n?$/);

  const c2s = [pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 35814, dport: 8080, flags: ACK }), pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 35814, dport: 8080, flags: ACK | PSH, payload: 'GET / HTTP/1.1\r\n\r\n' })];
  for (const p of c2s) {
    advance(1);
    t.equal(run(p), V_FORWARD);
    t.equal(tuple(p), '10.64.1.1:35814 > 10.64.1.13:80');
    t.ok(checksumsValid(p));
  }
  t.match(ct.list(), /ESTABLISHED .*\[ASSURED\]/);
  const resp = pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 35814, flags: ACK | PSH, payload: 'HTTP/1.1 200 OK\r\n\r\n' });
  t.equal(run(resp), V_FORWARD);
  t.equal(tuple(resp), '10.32.0.159:8080 > 172.16.1.99:35814');
  t.ok(checksumsValid(resp));
  // teardown: FIN from the client, FIN from the endpoint, last ACK
  for (const [p, want] of [
    [pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 35814, dport: 8080, flags: FIN | ACK }), '10.64.1.1:35814 > 10.64.1.13:80'],
    [pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 35814, flags: FIN | ACK }), '10.32.0.159:8080 > 172.16.1.99:35814'],
    [pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 35814, dport: 8080, flags: ACK }), '10.64.1.1:35814 > 10.64.1.13:80'],
  ] as const) {
    t.equal(run(p), V_FORWARD);
    t.equal(tuple(p), want);
    t.ok(checksumsValid(p));
  }
  t.match(ct.list(), /^tcp      6 120 TIME_WAIT /);
  const s = pl.counters.snapshot();
  t.equal(s.events.new_flows, 1);
  t.equal(s.events.masqueraded, 1);
  t.equal(s.packets.forward, 8);
});

t.test("the seeds' flows: UDP to kube-dns from the node, NodePort 30080 on the node's address", async (t) => {
  const { ct, run, advance } = setup();
  const q = fromHex('45000020432140004011404fac1001230a20000aae100035000cc285646e733f');
  t.equal(run(q), V_FORWARD);
  t.equal(hex(q), '45000020432140004011e1240a4001010a400107ae100035000c635b646e733f');
  t.equal(ct.list(), 'udp      17 30 src=172.16.1.35 dst=10.32.0.10 sport=44560 dport=53 [UNREPLIED] src=10.64.1.7 dst=10.64.1.1 sport=53 dport=44560 mark=0 use=1\n');
  const r = pkt({ proto: 17, src: '10.64.1.7', dst: '10.64.1.1', sport: 53, dport: 44560, payload: 'answer' });
  t.equal(run(r), V_FORWARD);
  t.equal(tuple(r), '10.32.0.10:53 > 172.16.1.35:44560');
  t.ok(checksumsValid(r));
  advance(9000);
  // exactly the seed's `conntrack -L` line
  t.equal(ct.list(), 'udp      17 21 src=172.16.1.35 dst=10.32.0.10 sport=44560 dport=53 src=10.64.1.7 dst=10.64.1.1 sport=53 dport=44560 mark=0 use=1\n');

  const np = pkt({ src: '172.16.1.35', dst: '172.16.1.35', sport: 35814, dport: 30080, flags: SYN });
  t.equal(run(np), V_FORWARD);
  t.equal(tuple(np), '10.64.1.1:35814 > 10.64.1.13:80');
  t.ok(checksumsValid(np));
  t.match(ct.list(), /tcp      6 120 SYN_SENT src=172\.16\.1\.35 dst=172\.16\.1\.35 sport=35814 dport=30080 \[UNREPLIED\] src=10\.64\.1\.13 dst=10\.64\.1\.1 sport=80 dport=35814 mark=0 use=1/);
});

t.test('a pod source inside the cluster CIDR is kept; hairpin is masqueraded', async (t) => {
  const { run, pl } = setup();
  const p = pkt({ src: '10.64.1.50', dst: '10.32.0.159', sport: 40000, dport: 8080, flags: SYN });
  t.equal(run(p), V_FORWARD);
  t.equal(tuple(p), '10.64.1.50:40000 > 10.64.1.13:80');
  const h = pkt({ src: '10.64.1.13', dst: '10.32.0.159', sport: 40001, dport: 8080, flags: SYN });
  t.equal(run(h), V_FORWARD);
  t.equal(tuple(h), '10.64.1.1:40001 > 10.64.1.13:80');
  const back = pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 40001, flags: SYN | ACK });
  t.equal(run(back), V_FORWARD);
  t.equal(tuple(back), '10.32.0.159:8080 > 10.64.1.13:40001');
  t.equal(pl.counters.snapshot().events.hairpin, 1);
});

t.test('masquerade never reuses a reply tuple in use: a clashing client gets another source port', async (t) => {
  const { run, pl } = setup();
  const a = pkt({ src: '172.16.1.98', dst: '10.32.0.159', sport: 5000, dport: 8080, flags: SYN });
  const b = pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 5000, dport: 8080, flags: SYN });
  t.equal(run(a), V_FORWARD);
  t.equal(run(b), V_FORWARD);
  t.equal(tuple(a), '10.64.1.1:5000 > 10.64.1.13:80');
  const bPort = get16(b, 20);
  t.not(bPort, 5000);
  t.ok(checksumsValid(b));
  // replies reach the right client each
  const ra = pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 5000, flags: SYN | ACK });
  const rb = pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: bPort, flags: SYN | ACK });
  run(ra);
  run(rb);
  t.equal(tuple(ra), '10.32.0.159:8080 > 172.16.1.98:5000');
  t.equal(tuple(rb), '10.32.0.159:8080 > 172.16.1.99:5000');
  t.equal(pl.conntrack.size, 2);
});

t.test('no endpoints: an ICMP port unreachable from the service address, quoting the packet', async (t) => {
  const { pl, run } = setup();
  const syn = pkt({ src: '172.16.1.99', dst: '10.32.0.200', sport: 40000, dport: 80, flags: SYN });
  t.equal(run(syn), V_REPLY);
  const r = pl.reply.subarray(0, pl.replyLen);
  t.equal(r[9], 1, 'ICMP');
  t.equal(tuple(r).split(' > ').map((x) => x.split(':')[0]).join(' > '), '10.32.0.200 > 172.16.1.99');
  const icmp = (r[0] & 15) * 4;
  t.same([r[icmp], r[icmp + 1]], [3, 3], 'destination unreachable, port unreachable');
  t.equal(hex(r.subarray(icmp + 8, icmp + 8 + 28)), hex(syn.subarray(0, 28)), 'quotes the IP header and 8 bytes of TCP');
  t.ok(checksumsValid(r));
  t.equal(pl.counters.snapshot().events.rejected, 1);
  // never an ICMP error about an ICMP error
  const err = new Uint8Array(600);
  const n = buildIcmpError(err, 0, syn, 0, syn.length, 3, 1, parseIPv4('10.32.0.200'), 0);
  const r2 = err.subarray(0, n);
  // addressed to the dead service, it is dropped and counted
  r2[16] = 10; r2[17] = 32; r2[18] = 0; r2[19] = 200;
  t.equal(run(r2), V_PASS, 'ICMP errors never reach the service lookup');
});

t.test('ICMP errors about a translated flow get their quoted header translated', async (t) => {
  const { run, pl } = setup();
  const q = pkt({ proto: 17, src: '172.16.1.35', dst: '10.32.0.10', sport: 44560, dport: 53, payload: 'dns?' });
  run(q);
  // the endpoint answers "port unreachable" about the packet it received (10.64.1.1:44560 > 10.64.1.7:53)
  const err = new Uint8Array(600);
  const n = buildIcmpError(err, 0, q, 0, q.length, 3, 3, parseIPv4('10.64.1.7'), 0);
  const e = err.subarray(0, n);
  t.equal(run(e), V_FORWARD);
  t.equal(tuple(e).replace(/:\d+/g, ''), '10.32.0.10 > 172.16.1.35', 'outer: from the service to the client');
  const quoted = e.subarray(28);
  t.equal(tuple(quoted), '172.16.1.35:44560 > 10.32.0.10:53', 'quoted: the packet as the client sent it');
  t.ok(checksumsValid(e), 'ICMP checksum');
  t.ok(ipv4ChecksumValid(quoted, 0), 'quoted IP header checksum');
  t.equal(pl.counters.snapshot().events.icmp_errors_translated, 1);
  // fragmentation needed from a router on the way back to the client about a reply: client-side direction
  const reply = pkt({ proto: 17, src: '10.64.1.7', dst: '10.64.1.1', sport: 53, dport: 44560, payload: 'ans' });
  run(reply); // now 10.32.0.10:53 > 172.16.1.35:44560
  const n2 = buildIcmpError(err, 0, reply, 0, reply.length, 3, 4, parseIPv4('172.16.1.35'), 1400);
  const e2 = err.subarray(0, n2);
  t.equal(run(e2), V_FORWARD);
  t.equal(tuple(e2).replace(/:\d+/g, ''), '10.64.1.1 > 10.64.1.7', 'outer: toward the endpoint');
  t.equal(tuple(e2.subarray(28)), '10.64.1.7:53 > 10.64.1.1:44560', 'quoted: the reply as the endpoint sent it');
  t.ok(checksumsValid(e2));
});

t.test('fragments follow their first fragment; strays to a service are dropped', async (t) => {
  const { run, pl } = setup();
  const first = pkt({ proto: 17, src: '172.16.1.99', dst: '10.32.0.10', sport: 1111, dport: 53, payload: 'x'.repeat(64), ident: 77 });
  first[6] = 0x20; // MF, offset 0 (DF cleared)
  first[7] = 0;
  // fix the IP checksum for the flag change
  first[10] = 0; first[11] = 0;
  let s = 0; for (let i = 0; i < 20; i += 2) s += (first[i] << 8) | first[i + 1]; while (s > 0xffff) s = (s & 0xffff) + (s >>> 16); s = ~s & 0xffff; first[10] = s >> 8; first[11] = s & 255;
  t.equal(run(first), V_FORWARD);
  t.equal(tuple(first), '10.64.1.1:1111 > 10.64.1.7:53');
  const later = new Uint8Array(first.subarray(0, 20 + 24));
  later[2] = 0; later[3] = 44;
  later[6] = 0x00; later[7] = 9; // offset 72 bytes, last fragment
  // addresses as sent by the client
  later.set([172, 16, 1, 99], 12); later.set([10, 32, 0, 10], 16);
  later[10] = 0; later[11] = 0;
  s = 0; for (let i = 0; i < 20; i += 2) s += (later[i] << 8) | later[i + 1]; while (s > 0xffff) s = (s & 0xffff) + (s >>> 16); s = ~s & 0xffff; later[10] = s >> 8; later[11] = s & 255;
  t.equal(run(later), V_FORWARD);
  t.same([...later.subarray(12, 20)], [10, 64, 1, 1, 10, 64, 1, 7]);
  t.ok(checksumsValid(later));
  const stray = new Uint8Array(later);
  stray.set([172, 16, 1, 99], 12); stray.set([10, 32, 0, 10], 16); stray[4] = 0; stray[5] = 99;
  stray[10] = 0; stray[11] = 0;
  s = 0; for (let i = 0; i < 20; i += 2) s += (stray[i] << 8) | stray[i + 1]; while (s > 0xffff) s = (s & 0xffff) + (s >>> 16); s = ~s & 0xffff; stray[10] = s >> 8; stray[11] = s & 255;
  t.equal(run(stray), V_DROP);
  t.equal(DROP_REASONS[pl.lastDrop], 'fragment_no_flow');
  stray.set([192, 0, 2, 1], 16);
  t.equal(run(stray), V_PASS, 'a stray fragment to a non-service address is left alone');
  t.equal(pl.counters.snapshot().events.fragments_translated, 1);
});

t.test('SCTP to an SCTP service is translated with its CRC32c recomputed', async (t) => {
  const { run } = setup();
  const p = pkt({ proto: 132, src: '172.16.1.99', dst: '10.32.0.50', sport: 3868, dport: 3868, payload: new Uint8Array([1, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1]) });
  t.equal(run(p), V_FORWARD);
  t.equal(tuple(p), '10.64.1.1:3868 > 10.64.1.20:3868');
  t.ok(checksumsValid(p));
});

t.test('drops have names: malformed, no local endpoints, source range', async (t) => {
  const { run, pl } = setup();
  const bad = pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 1, dport: 8080, flags: SYN });
  bad[0] = 0x44; // IHL 4
  t.equal(run(bad), V_DROP);
  t.equal(DROP_REASONS[pl.lastDrop], 'malformed');
  t.same(pl.counters.snapshot().malformed, { bad_ihl: 1 });
  t.equal(run(pkt({ src: '198.51.100.1', dst: '192.0.2.60', sport: 2, dport: 80, flags: SYN })), V_DROP);
  t.equal(DROP_REASONS[pl.lastDrop], 'no_local_endpoints');
  t.equal(run(pkt({ src: '192.0.2.1', dst: '203.0.113.70', sport: 3, dport: 443, flags: SYN })), V_DROP);
  t.equal(DROP_REASONS[pl.lastDrop], 'source_range');
  t.equal(run(pkt({ src: '198.51.100.9', dst: '203.0.113.70', sport: 3, dport: 443, flags: SYN })), V_FORWARD);
  const d = pl.counters.snapshot().drops;
  t.same([d.malformed, d.no_local_endpoints, d.source_range], [1, 1, 1]);
});

t.test('IPv6 and IPv4 traffic that is no service\'s pass untouched, and are counted', async (t) => {
  const { run, pl } = setup();
  // 2001:db8::1.1000 > 2001:db8::2.2000 UDP "ping" (tcpdump -vvv: udp sum ok): no IPv6 service's, no flow's
  const v6 = fromHex('60000000000c114020010db800000000000000000000000120010db800000000000000000000000203e807d0000cb9d870696e67');
  const before = hex(v6);
  t.equal(run(v6), V_PASS);
  t.equal(hex(v6), before);
  const other = pkt({ src: '10.64.1.50', dst: '10.64.1.13', sport: 1, dport: 80, flags: SYN });
  const o = hex(other);
  t.equal(run(other), V_PASS);
  t.equal(hex(other), o);
  const ping = pkt({ proto: 1, src: '172.16.1.99', dst: '10.32.0.10', sport: 7, dport: 0 });
  t.equal(run(ping), V_PASS, 'kube-proxy does not translate ICMP echo to a ClusterIP');
  const s = pl.counters.snapshot();
  t.equal(s.events.ipv6_packets, 1, 'the IPv6 packet went through the IPv6 path (the demo rule set is dual-stack)');
  t.equal(s.packets.pass, 3);
});

t.test('a SYN on a TIME_WAIT tuple starts a new connection', async (t) => {
  const { run, ct, advance } = setup();
  const c = (flags: number) => pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport: 999, dport: 8080, flags });
  const s = (flags: number) => pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 999, flags });
  for (const p of [c(SYN), s(SYN | ACK), c(ACK), c(FIN | ACK), s(FIN | ACK), c(ACK)]) { run(p); advance(1); }
  t.match(ct.list(), /TIME_WAIT/);
  t.equal(run(c(SYN)), V_FORWARD);
  t.match(ct.list(), /SYN_SENT/);
  t.equal(ct.size, 1);
});

t.test('UDP entries toward an endpoint that left are removed; the flow picks a live endpoint', async (t) => {
  const { run, ct, pl } = setup();
  const q = () => pkt({ proto: 17, src: '172.16.1.99', dst: '10.32.0.10', sport: 5353, dport: 53, payload: 'q' });
  const a = q();
  run(a);
  t.equal(tuple(a), '10.64.1.1:5353 > 10.64.1.7:53');
  const rs = oneEndpoint();
  rs.services[0].endpoints = [{ address: '10.64.1.8' }];
  const t2 = compile(rs, { generation: 2 });
  const live = new Set<string>();
  for (const s of t2.services) for (const set of [s.cluster, s.local]) if (set) for (const e of set.endpoints) live.add(`${s.name}|${e.addr}|${e.port}`);
  t.equal(ct.removeStale((e) => live.has(`${e.serviceName}|${e.replySrc}|${e.replySport}`)), 1);
  const b = q();
  t.equal(pl.process(b, 0, b.length, t2, 1_000_100), V_FORWARD);
  t.equal(tuple(b), '10.64.1.1:5353 > 10.64.1.8:53');
});

t.test('--decider linear: the same flows decided by walking kube-proxy\'s rules give the same translations', async (t) => {
  const { RuleSetHolder } = await import('../../control/runtime.ts');
  const h = new RuleSetHolder({ decider: 'linear' });
  h.apply(oneEndpoint());
  const tables = h.current!;
  t.ok(h.linear !== null, 'the holder made a linear decider');
  t.notOk('linear' in tables, 'the tables hold only what the hash lookup needs');
  const pl = new Pipeline({ rng: new Rng(1), linear: h.linear });
  const run = (b: Uint8Array) => pl.process(b, 0, b.length, tables, 1000);
  const syn = fromHex('45000028123440004006706aac1001630a20009f8be61f90111111114b4b4b4b500201f6918b0000');
  t.equal(run(syn), V_FORWARD);
  t.equal(hex(syn), '45000028123440004006120f0a4001010a40010d8be60050111111114b4b4b4b500201f652700000', 'byte for byte what the hash tables produce');
  const synack = fromHex('45000028123440004006120f0a40010d0a40010100508be62222222278787878501201f6d5e30000');
  t.equal(run(synack), V_FORWARD);
  t.equal(hex(synack), '45000028123440004006706a0a20009fac1001631f908be62222222278787878501201f614ff0000');
  t.equal(run(pkt({ src: '172.16.1.99', dst: '10.32.0.200', sport: 40000, dport: 80, flags: SYN })), V_REPLY, 'REJECT');
  t.equal(run(pkt({ src: '192.0.2.1', dst: '203.0.113.70', sport: 3, dport: 443, flags: SYN })), V_DROP, 'source range');
  t.equal(DROP_REASONS[pl.lastDrop], 'source_range');
  t.equal(run(pkt({ src: '10.64.1.50', dst: '10.64.1.13', sport: 1, dport: 80, flags: SYN })), V_PASS);
});

t.test('a full connection table of established connections: a new flow is dropped as conntrack_full, the connection goes on (netfilter keeps assured flows)', async (t) => {
  let now = 1_000_000;
  const ct = new Conntrack({ clock: () => now, maxEntries: 1 });
  const pl = new Pipeline({ conntrack: ct, rng: new Rng(1) });
  const tables = compile(oneEndpoint());
  const run = (b: Uint8Array) => pl.process(b, 0, b.length, tables, now);
  const c = (sport: number, flags: number) => pkt({ src: '172.16.1.99', dst: '10.32.0.159', sport, dport: 8080, flags });
  t.equal(run(c(35814, SYN)), V_FORWARD);
  t.equal(run(pkt({ src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 35814, flags: SYN | ACK })), V_FORWARD);
  now += 1;
  t.equal(run(c(35814, ACK)), V_FORWARD);
  t.match(ct.list(), /ESTABLISHED .*\[ASSURED\]/);
  const before = pl.counters.snapshot().drops.conntrack_full;
  t.equal(run(c(35815, SYN)), V_DROP, 'a new flow: the table is full of an assured flow');
  t.equal(DROP_REASONS[pl.lastDrop], 'conntrack_full');
  t.equal(pl.counters.snapshot().drops.conntrack_full, before + 1);
  t.equal(ct.full, 1);
  t.equal(ct.evictions, 0, 'nothing pushed out');
  const data = c(35814, ACK | PSH);
  t.equal(run(data), V_FORWARD, 'the established connection goes on');
  t.equal(tuple(data), '10.64.1.1:35814 > 10.64.1.13:80');
});
