import t from 'tap';
import { rewriteSrc, rewriteDst, icmpQuoteRewriteSrc, icmpQuoteRewriteDst } from '../../dataplane/wire/rewrite.ts';
import { ipv4Check, ipv4ChecksumValid, writeIpv4Header, ipv4FillChecksum } from '../../dataplane/wire/ipv4.ts';
import { tcpChecksumValid, tcpChecksum, tcpChecksumCompute } from '../../dataplane/wire/tcp.ts';
import { udpChecksum, udpChecksumValid, writeUdpHeader, udpFillChecksum } from '../../dataplane/wire/udp.ts';
import { sctpChecksumValid } from '../../dataplane/wire/sctp.ts';
import { icmpChecksumValid, icmpQuotedIpOff, buildIcmpError, writeIcmpEchoHeader, icmpFillChecksum } from '../../dataplane/wire/icmp.ts';
import { WIRE_OK } from '../../dataplane/wire/error.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}
const ip = parseIPv4;

// Before and after, each built independently (a separate reference implementation) and checked with tcpdump -vvv.
const SYN = '4500003c3a2c40004006ea020a4001010a40010d 8be600508f2b6a1100000000a002faf0ff170000020405b40402080a0014b1e20000000001030307';
const SYN_DNAT = '4500003c3a2c40004006e90a0a4001010a400205 8be61f908f2b6a1100000000a002faf0dedf0000020405b40402080a0014b1e20000000001030307';
const SYN_DNAT_SNAT = '4500003c3a2c40004006ea0a0a4000010a400205 ee481f908f2b6a1100000000a002faf07d7d0000020405b40402080a0014b1e20000000001030307';
const DNS = '4500005200010000401164f00a4001010a60000a cf090035003e99b3 beef010000010000000000000a6b756265726e657465730764656661756c740373766307636c7573746572056c6f63616c0000010001';
const DNS_DNAT = '4500005200010000401162130a4001010a400307 cf0914e9003e8222 beef010000010000000000000a6b756265726e657465730764656661756c740373766307636c7573746572056c6f63616c0000010001';
const ECHO_DATA = '101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f4041424344454647';
const ECHO = '450000545d4140004001c6da0a4001010a40010d 080022fd1c2d0001' + ECHO_DATA;
const ECHO_SNAT = '450000545d4140004001e070c0a831020a40010d 0800bf2880010001' + ECHO_DATA;
const SCTP_INIT = '45000034777740004084a8290a4001010a600505 9c400f1c00000000189fc7da010000141a2b3c4d0001a000000affff0badcafe';
const SCTP_INIT_DNAT = '45000034777740004084a94a0a4001010a400404 9c400f1d000000003d541c2d010000141a2b3c4d0001a000000affff0badcafe';
const FRAG_TAIL = '45000024424200b9401122240a4001010a60000a a0a1a2a3a4a5a6a7a8a9aaabacadaeaf';
const FRAG_TAIL_DNAT = '45000024424200b940111f470a4001010a400307 a0a1a2a3a4a5a6a7a8a9aaabacadaeaf';
// port unreachable about the DNATed DNS query, from the endpoint 10.64.3.7 (quotes 10.64.1.1:53001 -> 10.64.3.7:5353)
const UNREACH_FROM_ENDPOINT = '45c00038000000004001617e0a4003070a400101 030396a900000000 4500005200010000401162130a4001010a400307 cf0914e9003e8222';
// what the client must see: from the ClusterIP 10.96.0.10, quoting its own packet to 10.96.0.10:53
const UNREACH_FROM_CLUSTERIP = '45c00038000000004001645b0a60000a0a400101 030393cc00000000 4500005200010000401164f00a4001010a60000a cf090035003e99b3';
// the same for the SYN (8 quoted TCP bytes: ports and sequence number, no checksum)
const UNREACH_SYN_FROM_ENDPOINT = '45c0003800000000400162800a4002050a400101 0303584900000000 4500003c3a2c40004006e90a0a4001010a400205 8be61f908f2b6a11';
const UNREACH_SYN_FROM_CLUSTERIP = '45c0003800000000400163780a40010d0a400101 0303778900000000 4500003c3a2c40004006ea020a4001010a40010d 8be600508f2b6a11';

t.test('TCP SYN: DNAT to an endpoint, then masquerade, then back', async (t) => {
  const b = hex(SYN);
  rewriteDst(b, 0, ip('10.64.2.5'), 8080);
  t.same(b, hex(SYN_DNAT));
  rewriteSrc(b, 0, ip('10.64.0.1'), 61000);
  t.same(b, hex(SYN_DNAT_SNAT));
  t.ok(ipv4ChecksumValid(b, 0));
  t.ok(tcpChecksumValid(b, 0));
  // reverse NAT restores the original bytes exactly
  rewriteSrc(b, 0, ip('10.64.1.1'), 35814);
  rewriteDst(b, 0, ip('10.64.1.13'), 80);
  t.same(b, hex(SYN));
});

t.test('negative port keeps the port; address-only change still fixes the pseudo-header', async (t) => {
  const b = hex(SYN);
  rewriteDst(b, 0, ip('10.64.2.5'), -1);
  t.equal((b[22] << 8) | b[23], 80);
  t.ok(ipv4ChecksumValid(b, 0));
  t.ok(tcpChecksumValid(b, 0));
  t.equal(tcpChecksum(b, 20), tcpChecksumCompute(b, 0));
});

t.test('UDP DNS query to the ClusterIP: DNAT to kube-dns endpoint', async (t) => {
  const b = hex(DNS);
  rewriteDst(b, 0, ip('10.64.3.7'), 5353);
  t.same(b, hex(DNS_DNAT));
  t.ok(udpChecksumValid(b, 0));
});

t.test('UDP with a zero checksum keeps it zero', async (t) => {
  const b = hex(DNS);
  b[26] = 0;
  b[27] = 0;
  rewriteDst(b, 0, ip('10.64.3.7'), 5353);
  rewriteSrc(b, 0, ip('10.64.0.1'), 40000);
  t.equal(udpChecksum(b, 20), 0);
  t.ok(ipv4ChecksumValid(b, 0));
  t.same(Array.from(b.subarray(20, 26)), [0x9c, 0x40, 0x14, 0xe9, 0x00, 0x3e], 'ports 40000 -> 5353, length kept');
  t.same(b.subarray(28), hex(DNS).subarray(28), 'payload untouched');
});

t.test('ICMP echo: SNAT changes the source and the identifier', async (t) => {
  const b = hex(ECHO);
  rewriteSrc(b, 0, ip('192.168.49.2'), 0x8001);
  t.same(b, hex(ECHO_SNAT));
  // the reply comes back to 192.168.49.2 with ident 0x8001: reverse SNAT restores the ident
  const r = new Uint8Array(84);
  writeIpv4Header(r, 0, 84, 0x1111, 0, 64, 1, ip('10.64.1.13'), ip('192.168.49.2'));
  writeIcmpEchoHeader(r, 20, 0, 0x8001, 1);
  r.set(hex(ECHO_DATA), 28);
  icmpFillChecksum(r, 0);
  rewriteDst(r, 0, ip('10.64.1.1'), 0x1c2d);
  t.equal((r[24] << 8) | r[25], 0x1c2d);
  t.ok(icmpChecksumValid(r, 0));
  t.ok(ipv4ChecksumValid(r, 0));
});

t.test('SCTP INIT: DNAT recomputes the CRC32c', async (t) => {
  const b = hex(SCTP_INIT);
  rewriteDst(b, 0, ip('10.64.4.4'), 3869);
  t.same(b, hex(SCTP_INIT_DNAT));
  t.ok(sctpChecksumValid(b, 0));
});

t.test('a non-first fragment gets only its IPv4 header rewritten', async (t) => {
  const b = hex(FRAG_TAIL);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  rewriteDst(b, 0, ip('10.64.3.7'), 5353);
  t.same(b, hex(FRAG_TAIL_DNAT), 'payload bytes (which are not a UDP header) untouched');
});

t.test('a first fragment (MF set) gets its L4 checksum updated incrementally', async (t) => {
  // UDP datagram of 8 + 32 bytes, sent whole to compute the checksum, then cut to its first 24 payload bytes
  const whole = new Uint8Array(60);
  writeIpv4Header(whole, 0, 60, 9, 0, 64, 17, ip('10.64.1.1'), ip('10.96.0.10'));
  writeUdpHeader(whole, 20, 1000, 53, 40);
  for (let i = 28; i < 60; i++) whole[i] = i * 7;
  udpFillChecksum(whole, 0);
  const first = whole.slice(0, 44);
  first[2] = 0; first[3] = 44;
  first[6] = 0x20; // MF
  ipv4FillChecksum(first, 0);
  rewriteDst(first, 0, ip('10.64.3.7'), 5353);
  rewriteDst(whole, 0, ip('10.64.3.7'), 5353);
  t.equal(udpChecksum(first, 20), udpChecksum(whole, 20));
  t.ok(udpChecksumValid(whole, 0));
  t.ok(ipv4ChecksumValid(first, 0));
});

t.test('ICMP error about a DNATed UDP flow: quote and outer header translated back', async (t) => {
  const b = hex(UNREACH_FROM_ENDPOINT);
  t.ok(icmpChecksumValid(b, 0));
  icmpQuoteRewriteDst(b, 0, ip('10.96.0.10'), 53);
  rewriteSrc(b, 0, ip('10.96.0.10'), -1);
  t.same(b, hex(UNREACH_FROM_CLUSTERIP), 'quoted header, quoted UDP checksum, ICMP and IP checksums all as built independently');
  const q = icmpQuotedIpOff(b, 0);
  t.ok(ipv4ChecksumValid(b, q));
});

t.test('ICMP error about a DNATed TCP flow (quote without the TCP checksum)', async (t) => {
  const b = hex(UNREACH_SYN_FROM_ENDPOINT);
  icmpQuoteRewriteDst(b, 0, ip('10.64.1.13'), 80);
  rewriteSrc(b, 0, ip('10.64.1.13'), -1);
  t.same(b, hex(UNREACH_SYN_FROM_CLUSTERIP));
});

t.test('ICMP error about a masqueraded flow: quoted source and outer destination', async (t) => {
  // client 10.64.1.1:53001 was masqueraded to 10.64.0.1:40000 and DNATed to 10.64.3.7:5353;
  // the endpoint's port unreachable goes to 10.64.0.1 quoting 10.64.0.1:40000 -> 10.64.3.7:5353
  const sent = hex(DNS_DNAT);
  rewriteSrc(sent, 0, ip('10.64.0.1'), 40000);
  const err = new Uint8Array(56);
  t.equal(buildIcmpError(err, 0, sent, 0, sent.length, 3, 3, ip('10.64.3.7')), 56);
  icmpQuoteRewriteSrc(err, 0, ip('10.64.1.1'), 53001);
  icmpQuoteRewriteDst(err, 0, ip('10.96.0.10'), 53);
  rewriteDst(err, 0, ip('10.64.1.1'), -1);
  rewriteSrc(err, 0, ip('10.96.0.10'), -1);
  t.same(err, hex(UNREACH_FROM_CLUSTERIP));
});

t.test('ICMP error quoting an ICMP echo: the quoted identifier is translated', async (t) => {
  // echo SNATed to 192.168.49.2 ident 0x8001; a router answers TTL exceeded to 192.168.49.2
  const sent = hex(ECHO_SNAT);
  const err = new Uint8Array(56);
  t.equal(buildIcmpError(err, 0, sent, 0, sent.length, 11, 0, ip('10.64.0.254')), 56);
  icmpQuoteRewriteSrc(err, 0, ip('10.64.1.1'), 0x1c2d);
  rewriteDst(err, 0, ip('10.64.1.1'), -1);
  const want = new Uint8Array(56);
  buildIcmpError(want, 0, hex(ECHO), 0, 84, 11, 0, ip('10.64.0.254'));
  t.same(err, want, 'same as the error the router would have sent about the untranslated echo');
});
