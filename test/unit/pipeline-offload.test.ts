/**
 * The pipeline on GSO super-packets (a TUN with IFF_VNET_HDR and offloads):
 * NAT once per super-packet, the partial checksum kept partial and updated,
 * conntrack counting segments, inconsistent headers dropped by name, a
 * REJECT quoting the first segment.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { Pipeline, V_FORWARD, V_REPLY, V_DROP, V_PASS } from '../../dataplane/pipeline.ts';
import { Conntrack } from '../../dataplane/conntrack.ts';
import { Rng } from '../../dataplane/select.ts';
import { compile } from '../../control/compile.ts';
import { parseRuleSet } from '../../control/validate.ts';
import type { RuleSet } from '../../control/types.ts';
import { pkt, hex, tuple, checksumsValid, SYN, ACK, PSH } from '../support/packets.ts';
import { superPacket } from '../support/vnet.ts';
import { get16, get32, put16 } from '../../dataplane/wire/bytes.ts';
import { pseudoHeaderSum } from '../../dataplane/wire/checksum.ts';
import { ipv4ChecksumValid } from '../../dataplane/wire/ipv4.ts';
import { completeChecksum } from '../../dataplane/gso.ts';
import { vnetFlags } from '../../dataplane/wire/virtio.ts';

function setup() {
  const rs: RuleSet = JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'));
  rs.services[1].endpoints = [{ address: '10.64.1.13', nodeLocal: true }];
  const now = 1_000_000;
  const ct = new Conntrack({ clock: () => now });
  const pl = new Pipeline({ conntrack: ct, rng: new Rng(1) });
  const tables = compile(parseRuleSet(rs));
  // with a vnet header at 0, the IP packet at 10
  const runV = (b: Uint8Array) => pl.process(b, 10, b.length - 10, tables, now, 0);
  const run = (b: Uint8Array) => pl.process(b, 0, b.length, tables, now);
  return { pl, ct, runV, run };
}

const CLIENT = { src: '172.16.1.99', dst: '10.32.0.159', sport: 35814, dport: 8080 };
const REPLY = { src: '10.64.1.13', dst: '10.64.1.1', sport: 80, dport: 35814 };

/** The TCP/UDP checksum field holds the pseudo-header sum of the packet's addresses now (what NEEDS_CSUM means). */
function seedRight(ip: Uint8Array): boolean {
  const hl = (ip[0] & 15) * 4;
  const proto = ip[9];
  const want = pseudoHeaderSum(get32(ip, 12), get32(ip, 16), proto, get16(ip, 2) - hl);
  return get16(ip, hl + (proto === 6 ? 16 : 6)) === want;
}

t.test('a TCP super-packet through a ClusterIP with masquerade: NAT once, header unchanged, checksum partial and right', async (t) => {
  const { pl, ct, runV, run } = setup();
  t.equal(run(pkt({ ...CLIENT, flags: SYN })), V_FORWARD);
  t.equal(run(pkt({ ...REPLY, flags: SYN | ACK })), V_FORWARD);
  // 10 000 bytes in segments of 1448: 7 on the wire
  const sp = superPacket({ ...CLIENT, flags: ACK | PSH }, 1448, 10_000);
  const header = hex(sp.subarray(0, 10));
  t.equal(runV(sp), V_FORWARD);
  const ip = sp.subarray(10);
  t.equal(hex(sp.subarray(0, 10)), header, 'the virtio header goes back as it came');
  t.equal(tuple(ip), '10.64.1.1:35814 > 10.64.1.13:80');
  t.ok(ipv4ChecksumValid(ip, 0), 'the IPv4 header checksum is complete and right');
  t.ok(seedRight(ip), 'the TCP checksum field is the pseudo-header sum of the new addresses, not a full checksum');
  const copy = ip.slice();
  completeChecksum(copy, 0, 20, 16);
  t.ok(checksumsValid(copy), 'completed as the kernel will, it verifies');
  // the reply direction, a super-packet too
  const back = superPacket({ ...REPLY, flags: ACK }, 1448, 3000);
  t.equal(runV(back), V_FORWARD);
  t.equal(tuple(back.subarray(10)), '10.32.0.159:8080 > 172.16.1.99:35814');
  t.ok(seedRight(back.subarray(10)));
  // counters: segments on the wire, bytes with every segment's headers
  const e = ct.lookup(6, 0xac100163, 0x0a20009f, 35814, 8080, 1_000_000)!;
  t.equal(e.origPackets, 1 + 7, 'the SYN, then the super-packet counting as ceil(10000 / 1448) = 7');
  t.equal(e.origBytes, 40 + 10_040 + 6 * 40, 'each segment with its headers');
  t.equal(e.replyPackets, 1 + 3);
  const s = pl.counters.snapshot();
  t.equal(s.events.gso_super_packets, 2);
  t.equal(s.events.gso_segments, 10);
  t.equal(s.packets.forward, 2 + 7 + 3);
});

t.test('a packet with a partial checksum but no GSO: port and address NAT keep it partial', async (t) => {
  const { runV, run } = setup();
  const syn = superPacket({ ...CLIENT, flags: SYN }, 0);
  t.equal(runV(syn), V_FORWARD);
  t.equal(vnetFlags(syn, 0), 1, 'still NEEDS_CSUM');
  t.ok(seedRight(syn.subarray(10)));
  t.equal(run(pkt({ ...REPLY, flags: SYN | ACK })), V_FORWARD);
});

t.test('a UDP super-packet (USO) through a NodePort-less ClusterIP; ICMP with NEEDS_CSUM is completed', async (t) => {
  const { pl, runV } = setup();
  const sp = superPacket({ proto: 17, src: '10.64.1.50', dst: '10.32.0.10', sport: 5353, dport: 53 }, 1200, 5000);
  t.equal(runV(sp), V_FORWARD);
  const ip = sp.subarray(10);
  t.ok(get32(ip, 16) === 0x0a400107 || get32(ip, 16) === 0x0a400108, 'DNAT to a kube-dns endpoint');
  t.ok(seedRight(ip));
  t.equal(pl.counters.snapshot().events.gso_segments, 5);
  // ICMP echo with a partial checksum (csum_start 20, offset 2): completed in software, flag cleared
  const echo = pkt({ proto: 1, src: '10.64.1.50', dst: '10.64.1.13', sport: 7, dport: 7, payload: 'ping' });
  put16(echo, 22, 0);
  const b = new Uint8Array(10 + echo.length);
  b.set([1, 0, 0, 0, 0, 0, 20, 0, 2, 0]);
  b.set(echo, 10);
  t.equal(runV(b), V_PASS);
  t.ok(checksumsValid(b.subarray(10)), 'the ICMP checksum is complete');
  t.equal(vnetFlags(b, 0), 0);
  t.equal(pl.counters.snapshot().events.checksums_completed, 1);
});

t.test('inconsistent virtio headers are dropped as malformed, by name, never forwarded', async (t) => {
  const { pl, runV } = setup();
  const mk = (f: (b: Uint8Array) => void, p = superPacket({ ...CLIENT, flags: ACK }, 1448, 4000)) => (f(p), p);
  const cases: Array<[string, Uint8Array]> = [
    ['bad_vnet_gso_size', mk((b) => { b[4] = 0; b[5] = 0; })],
    ['bad_vnet_flags', mk((b) => { b[0] = 0x05; })],
    ['bad_vnet_hdr_len', mk((b) => { b[2] = 0xff; b[3] = 0xff; })],
    ['bad_vnet_csum', mk((b) => { b[6] = 0xff; b[7] = 0xff; })],
    ['vnet_csum_mismatch', mk((b) => { b[8] = 6; })],
    ['vnet_gso_mismatch', mk((b) => { b[1] = 5; })],
    ['vnet_gso_mismatch', superPacket({ ...CLIENT, flags: ACK, proto: 132 } as never, 0)],
  ];
  // the last: an SCTP packet whose header says TCP GSO
  const sctp = cases[cases.length - 1][1];
  sctp[1] = 1; sctp[4] = 100;
  for (const [want, b] of cases) {
    pl.counters.malformed.clear();
    t.equal(runV(b), V_DROP, want);
    t.same(Object.keys(Object.fromEntries(pl.counters.malformed)), [want]);
  }
  t.ok(pl.counters.snapshot().drops.malformed >= cases.length, 'each counted under drops.malformed (a super-packet as its segments)');
});

t.test('REJECT of a super-packet: one ICMP error quoting its first segment, with complete checksums', async (t) => {
  const { pl, runV } = setup();
  // empty-svc 10.32.0.200:80 has no endpoints
  const sp = superPacket({ src: '172.16.1.99', dst: '10.32.0.200', sport: 40000, dport: 80, flags: ACK }, 1000, 5000);
  t.equal(runV(sp), V_REPLY);
  const r = pl.reply.subarray(0, pl.replyLen);
  t.ok(checksumsValid(r), 'the ICMP error verifies');
  t.equal(r[20], 3, 'destination unreachable');
  const q = r.subarray(28);
  t.equal(get16(q, 2), 1040, 'the quoted IPv4 header is the first segment: 40 + gso_size bytes');
  t.ok(ipv4ChecksumValid(q, 0));
  t.equal(pl.counters.snapshot().events.gso_segmented, 1);
});
