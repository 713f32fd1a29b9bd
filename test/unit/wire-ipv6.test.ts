/**
 * IPv6 wire views with literal bytes. Every packet below was printed by
 * `tcpdump -nn -vvv -r` from a pcap (LINKTYPE_RAW) and found well-formed,
 * its checksums "[udp sum ok]", "cksum … (correct)", "[icmp6 sum ok]"
 * (test/property/wire-ipv6.test.ts re-runs tcpdump over rewritten ones).
 */
import t from 'tap';
import { parseIPv6, formatIPv6 } from '../../dataplane/addr6.ts';
import {
  ipv6Check, ipv6Walk, ipv6WalkTo, Ipv6Chain, ipv6IsFragment, ipv6IsFirstFragment, ipv6PayloadLen, ipv6TotalLen,
  ipv6NextHeader, ipv6HopLimit, ipv6TrafficClass, ipv6FlowLabel, ipv6SrcWord, ipv6DstWord, ipv6SrcInto, ipv6DstInto,
  isIpv6Packet, l4Checksum6, l4Checksum6Valid, writeIpv6Header, IPV6_MAX_EXT_HEADERS, IPV6_MAX_EXT_BYTES,
} from '../../dataplane/wire/ipv6.ts';
import {
  icmpv6Check, icmpv6Type, icmpv6Code, icmpv6Ident, icmpv6Seq, icmpv6Param, icmpv6ChecksumValid, icmpv6ChecksumCompute,
  buildIcmpv6Error, icmpv6ErrorPermitted, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, ICMPV6_PKT_TOOBIG,
} from '../../dataplane/wire/icmpv6.ts';
import { rewriteSrc6, rewriteDst6, icmpv6QuoteRewriteSrc, icmpv6QuoteRewriteDst } from '../../dataplane/wire/ipv6-rewrite.ts';
import {
  WIRE_OK, WIRE_TOO_SHORT, WIRE_NOT_IPV6, WIRE_BAD_PAYLOAD_LENGTH, WIRE_IPV6_EXT_TRUNCATED, WIRE_IPV6_EXT_TOO_MANY,
  WIRE_IPV6_EXT_TOO_LONG, WIRE_IPV6_HOPOPTS_NOT_FIRST, WIRE_IPV6_FRAGMENT_REPEATED, WIRE_BAD_ICMPV6_QUOTE, WIRE_NO_ROOM,
  wireErrorName,
} from '../../dataplane/wire/error.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}
const A = (s: string): Uint32Array => parseIPv6(s)!;

// UDP 2001:db8::1.5000 > fd00:10:96::a.53 "hello", hlim 64: [udp sum ok]
const UDP = '60000000000d1140 20010db8000000000000000000000001 fd00001000960000000000000000000a 13880035000d7cda 68656c6c6f';
// TCP SYN fd00:10:244:1::5.40000 > fd00:10:96::a.80, seq 100, win 64800, [mss 1420,sackOK,nop,wscale 7,eol]: cksum 0xd919 (correct)
const SYN = '6000000000200640 fd000010024400010000000000000005 fd00001000960000000000000000000a 9c40005000000064000000008002fd20d91900000204058c0402010303070000';
// HBH (padn) RT6 (type 0, segleft 0) DSTOPT (padn) frag (0x12345678:0|13, atomic) then the UDP datagram above
const CHAIN = '60000000002d0040 20010db8000000000000000000000001 fd00001000960000000000000000000a 2b00010400000000 3c00000000000000 2c00010400000000 1100000012345678 13880035000d7cda68656c6c6f';
// frag (0xcafef00d:0|24): the first fragment of a 40-byte UDP datagram (checksum c56b over all of it)
const FRAG1 = '6000000000202c40 20010db8000000000000000000000001 fd00001000960000000000000000000a 11000001cafef00d 138800350028c56ba0a1a2a3a4a5a6a7a8a9aaabacadaeaf';
// frag (0xcafef00d:24|16): its second fragment
const FRAG2 = '6000000000182c40 20010db8000000000000000000000001 fd00001000960000000000000000000a 11000018cafef00d b0b1b2b3b4b5b6b7b8b9babbbcbdbebf';
// ICMP6 echo request, id 4660, seq 1, "ping": [icmp6 sum ok]
const ECHO = '60000000000c3a40 20010db8000000000000000000000001 fd00001000960000000000000000000a 800063481234000170696e67';
// ICMP6 destination unreachable, unreachable port, fd00:10:96::a udp port 53 (about UDP): [icmp6 sum ok]
const UNREACH = '60000000003d3a40 fd00001000960000000000000000000a 20010db8000000000000000000000001 010461ea00000000' + UDP;
// ICMP6 packet too big, mtu 1280, from fd00::100 about SYN: [icmp6 sum ok]
const TOOBIG = '6000000000503a40 fd000000000000000000000000000100 fd000010024400010000000000000005 020094df00000500' + SYN;

t.test('a UDP datagram, field by field', async (t) => {
  const b = hex(UDP);
  t.equal(ipv6Check(b, 0, b.length), WIRE_OK);
  t.ok(isIpv6Packet(b, 0, b.length));
  t.equal(ipv6PayloadLen(b, 0), 13);
  t.equal(ipv6TotalLen(b, 0), 53);
  t.equal(ipv6NextHeader(b, 0), 17);
  t.equal(ipv6HopLimit(b, 0), 64);
  t.equal(ipv6TrafficClass(b, 0), 0);
  t.equal(ipv6FlowLabel(b, 0), 0);
  t.equal(ipv6SrcWord(b, 0, 0), 0x20010db8);
  t.equal(ipv6SrcWord(b, 0, 3), 1);
  t.equal(ipv6DstWord(b, 0, 3), 0x0a);
  const w = new Uint32Array(8);
  ipv6SrcInto(b, 0, w, 0);
  ipv6DstInto(b, 0, w, 4);
  t.equal(formatIPv6(w, 0), '2001:db8::1');
  t.equal(formatIPv6(w, 4), 'fd00:10:96::a');
  const c = new Ipv6Chain();
  t.equal(ipv6Walk(b, 0, c), WIRE_OK);
  t.same([c.proto, c.l4Off, c.l4Len, c.fragHdrOff, c.extCount, c.extBytes], [17, 40, 13, -1, 0, 0]);
  t.notOk(ipv6IsFragment(c));
  t.ok(l4Checksum6Valid(b, 0, 40, 13, 17));
  t.equal(l4Checksum6(b, 0, 40, 13, 6, 17), 0x7cda);
});

t.test('a header with traffic class and flow label', async (t) => {
  const b = hex(UDP);
  b[0] = 0x6b; b[1] = 0x8f; b[2] = 0x12; b[3] = 0x34;
  t.equal(ipv6TrafficClass(b, 0), 0xb8);
  t.equal(ipv6FlowLabel(b, 0), 0xf1234);
});

t.test('TCP SYN: the checksum with the IPv6 pseudo-header', async (t) => {
  const b = hex(SYN);
  const c = new Ipv6Chain();
  t.equal(ipv6Check(b, 0, b.length), WIRE_OK);
  t.equal(ipv6Walk(b, 0, c), WIRE_OK);
  t.same([c.proto, c.l4Off, c.l4Len], [6, 40, 32]);
  t.equal(l4Checksum6(b, 0, 40, 32, 16, 6), 0xd919);
  t.ok(l4Checksum6Valid(b, 0, 40, 32, 6));
});

t.test('the walk through hop-by-hop, routing, destination options and an atomic fragment', async (t) => {
  const b = hex(CHAIN);
  const c = new Ipv6Chain();
  t.equal(ipv6Check(b, 0, b.length), WIRE_OK);
  t.equal(ipv6Walk(b, 0, c), WIRE_OK);
  t.same([c.proto, c.l4Off, c.l4Len, c.extCount, c.extBytes, c.fragHdrOff, c.fragId], [17, 72, 13, 4, 32, 64, 0x12345678]);
  t.notOk(ipv6IsFragment(c), 'offset 0 and M clear: an atomic fragment (RFC 6946) is a whole packet');
  t.ok(l4Checksum6Valid(b, 0, 72, 13, 17), 'the pseudo-header length is the upper layer\'s, not the payload\'s');
});

t.test('fragments: the first carries the UDP header, the second stops at the fragment header', async (t) => {
  const c = new Ipv6Chain();
  const f1 = hex(FRAG1);
  t.equal(ipv6Walk(f1, 0, c), WIRE_OK);
  t.same([c.proto, c.l4Off, c.l4Len, c.fragOffset, c.moreFragments, c.fragId], [17, 48, 24, 0, 1, 0xcafef00d]);
  t.ok(ipv6IsFragment(c));
  t.ok(ipv6IsFirstFragment(c));
  const f2 = hex(FRAG2);
  t.equal(ipv6Walk(f2, 0, c), WIRE_OK);
  t.same([c.proto, c.l4Off, c.l4Len, c.fragOffset, c.moreFragments, c.fragId], [17, 48, 16, 24, 0, 0xcafef00d]);
  t.ok(ipv6IsFragment(c));
  t.notOk(ipv6IsFirstFragment(c));
  // the UDP checksum of the first fragment covers the reassembled datagram
  const whole = new Uint8Array(80);
  whole.set(f1.subarray(0, 40));
  whole[4] = 0; whole[5] = 40; whole[6] = 17;
  whole.set(f1.subarray(48), 40);
  whole.set(f2.subarray(48), 64);
  t.ok(l4Checksum6Valid(whole, 0, 40, 40, 17));
});

t.test('malformed packets and chains give named reasons', async (t) => {
  const c = new Ipv6Chain();
  const u = hex(UDP);
  t.equal(ipv6Check(u, 0, 39), WIRE_TOO_SHORT);
  t.equal(ipv6Check(u, 0, 52), WIRE_BAD_PAYLOAD_LENGTH, 'payload beyond the buffer');
  t.equal(ipv6Check(hex('45' + UDP.replace(/\s+/g, '').slice(2)), 0, 53), WIRE_NOT_IPV6);
  const jumbo = hex(UDP);
  jumbo[4] = 0; jumbo[5] = 0; jumbo[6] = 0;
  t.equal(ipv6Check(jumbo, 0, 53), WIRE_BAD_PAYLOAD_LENGTH, 'payload length 0 with hop-by-hop: a jumbogram');
  t.equal(wireErrorName(WIRE_BAD_PAYLOAD_LENGTH), 'bad_payload_length');
  t.equal(wireErrorName(WIRE_NOT_IPV6), 'not_ipv6');

  // truncated: the chain's routing header claims 16 bytes but the payload ends
  const tr = hex(CHAIN);
  tr[49] = 5;
  t.equal(ipv6Walk(tr, 0, c), WIRE_IPV6_EXT_TRUNCATED);
  t.equal(wireErrorName(WIRE_IPV6_EXT_TRUNCATED), 'ipv6_ext_truncated');
  t.equal(ipv6WalkTo(hex(CHAIN), 0, 60, c), WIRE_IPV6_EXT_TRUNCATED, 'a chain cut short by `end` (a quote)');
  t.equal(ipv6WalkTo(hex(CHAIN), 0, 41, c), WIRE_IPV6_EXT_TRUNCATED, 'not even the next-header and length bytes');

  // hop-by-hop after routing
  const hbh = hex(CHAIN);
  hbh[48] = 0; // routing's next header: hop-by-hop
  t.equal(ipv6Walk(hbh, 0, c), WIRE_IPV6_HOPOPTS_NOT_FIRST);
  t.equal(wireErrorName(WIRE_IPV6_HOPOPTS_NOT_FIRST), 'ipv6_hopopts_not_first');

  // two fragment headers
  const two = hex(CHAIN);
  two[64] = 44; // the fragment header's next header: another fragment header (the UDP bytes read as one)
  t.equal(ipv6Walk(two, 0, c), WIRE_IPV6_FRAGMENT_REPEATED);
  t.equal(wireErrorName(WIRE_IPV6_FRAGMENT_REPEATED), 'ipv6_fragment_repeated');

  // too many: IPV6_MAX_EXT_HEADERS + 1 destination-options headers of 8 bytes
  const many = (n: number, len8: number): Uint8Array => {
    const per = 8 * (len8 + 1);
    const b = new Uint8Array(40 + n * per + 8);
    writeIpv6Header(b, 0, n * per + 8, 60, 64, A('2001:db8::1'), 0, A('2001:db8::2'), 0);
    for (let i = 0; i < n; i++) {
      const o = 40 + i * per;
      b[o] = i === n - 1 ? 17 : 60;
      b[o + 1] = len8;
      b[o + 2] = 1; b[o + 3] = per - 4; // PadN over the rest
    }
    return b;
  };
  t.equal(ipv6Walk(many(IPV6_MAX_EXT_HEADERS, 0), 0, c), WIRE_OK);
  t.equal(c.extCount, IPV6_MAX_EXT_HEADERS);
  t.equal(ipv6Walk(many(IPV6_MAX_EXT_HEADERS + 1, 0), 0, c), WIRE_IPV6_EXT_TOO_MANY);
  t.equal(wireErrorName(WIRE_IPV6_EXT_TOO_MANY), 'ipv6_ext_too_many');
  // too long: 5 headers of 256 bytes = 1280 > IPV6_MAX_EXT_BYTES
  t.ok(5 * 256 > IPV6_MAX_EXT_BYTES && 4 * 256 <= IPV6_MAX_EXT_BYTES);
  t.equal(ipv6Walk(many(4, 31), 0, c), WIRE_OK);
  t.equal(ipv6Walk(many(5, 31), 0, c), WIRE_IPV6_EXT_TOO_LONG);
  t.equal(wireErrorName(WIRE_IPV6_EXT_TOO_LONG), 'ipv6_ext_too_long');
});

t.test('ICMPv6 echo', async (t) => {
  const b = hex(ECHO);
  const c = new Ipv6Chain();
  t.equal(ipv6Walk(b, 0, c), WIRE_OK);
  t.equal(c.proto, 58);
  t.equal(icmpv6Check(b, c.l4Off, c.l4Len), WIRE_OK);
  t.equal(icmpv6Type(b, 40), 128);
  t.equal(icmpv6Code(b, 40), 0);
  t.equal(icmpv6Ident(b, 40), 0x1234);
  t.equal(icmpv6Seq(b, 40), 1);
  t.ok(icmpv6ChecksumValid(b, 0, 40, 12));
  t.equal(icmpv6ChecksumCompute(b, 0, 40, 12), 0x6348);
  t.equal(icmpv6Check(b, 40, 7), WIRE_TOO_SHORT);
});

t.test('ICMPv6 errors: built as tcpdump printed them, quotes checked', async (t) => {
  const u = hex(UDP);
  const out = new Uint8Array(200);
  let n = buildIcmpv6Error(out, 0, u, 0, u.length, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, A('fd00:10:96::a'), 0);
  t.same(Buffer.from(out.subarray(0, n)).toString('hex'), UNREACH.replace(/\s+/g, ''));
  const s = hex(SYN);
  n = buildIcmpv6Error(out, 0, s, 0, s.length, ICMPV6_PKT_TOOBIG, 0, A('fd00::100'), 0, 1280);
  t.same(Buffer.from(out.subarray(0, n)).toString('hex'), TOOBIG.replace(/\s+/g, ''));
  const c = new Ipv6Chain();
  const q = new Ipv6Chain();
  const e = hex(TOOBIG);
  t.equal(ipv6Walk(e, 0, c), WIRE_OK);
  t.equal(icmpv6Check(e, c.l4Off, c.l4Len, q), WIRE_OK);
  t.equal(icmpv6Param(e, 40), 1280);
  t.same([q.proto, q.l4Off, q.l4Len], [6, 88, 32]);
  // in place, the same bytes
  const inPlace = new Uint8Array(200);
  inPlace.set(u);
  n = buildIcmpv6Error(inPlace, 0, inPlace, 0, u.length, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, A('fd00:10:96::a'), 0);
  t.same(Buffer.from(inPlace.subarray(0, n)).toString('hex'), UNREACH.replace(/\s+/g, ''));
  t.equal(buildIcmpv6Error(new Uint8Array(60), 0, u, 0, u.length, 1, 4, A('::1'), 0), WIRE_NO_ROOM);
  t.equal(buildIcmpv6Error(out, 0, u, 0, 30, 1, 4, A('::1'), 0), WIRE_TOO_SHORT);
  // a big packet is quoted up to the minimum MTU
  const big = new Uint8Array(40 + 1400);
  writeIpv6Header(big, 0, 1400, 17, 64, A('2001:db8::1'), 0, A('2001:db8::2'), 0);
  const bo = new Uint8Array(2000);
  t.equal(buildIcmpv6Error(bo, 0, big, 0, big.length, ICMPV6_PKT_TOOBIG, 0, A('fd00::1'), 0, 1280), 1280);
  // bad quotes
  const bad = hex(UNREACH);
  t.equal(icmpv6Check(bad, 40, 47), WIRE_BAD_ICMPV6_QUOTE, 'less than an IPv6 header quoted');
  bad[48] = 0x45;
  t.equal(icmpv6Check(bad, 40, bad.length - 40), WIRE_BAD_ICMPV6_QUOTE, 'the quote is not IPv6');
  t.equal(icmpv6Check(hex(UNREACH), 40, 8 + 40 + 4, q), WIRE_BAD_ICMPV6_QUOTE, 'the ports are not quoted');
  t.equal(wireErrorName(WIRE_BAD_ICMPV6_QUOTE), 'bad_icmpv6_quote');
});

t.test('when an ICMPv6 error may be sent (RFC 4443 §2.4 (e))', async (t) => {
  const c = new Ipv6Chain();
  const u = hex(UDP);
  ipv6Walk(u, 0, c);
  t.ok(icmpv6ErrorPermitted(u, 0, c, ICMPV6_DEST_UNREACH));
  const mc = hex(UDP);
  mc[24] = 0xff;
  t.notOk(icmpv6ErrorPermitted(mc, 0, c, ICMPV6_DEST_UNREACH), 'to a multicast destination');
  t.ok(icmpv6ErrorPermitted(mc, 0, c, ICMPV6_PKT_TOOBIG), 'packet too big may');
  const uns = hex(UDP);
  uns.fill(0, 8, 24);
  t.notOk(icmpv6ErrorPermitted(uns, 0, c, ICMPV6_DEST_UNREACH), 'from ::');
  const e = hex(UNREACH);
  ipv6Walk(e, 0, c);
  t.notOk(icmpv6ErrorPermitted(e, 0, c, ICMPV6_DEST_UNREACH), 'about an ICMPv6 error');
  const echo = hex(ECHO);
  ipv6Walk(echo, 0, c);
  t.ok(icmpv6ErrorPermitted(echo, 0, c, ICMPV6_DEST_UNREACH), 'about an echo request');
});

t.test('DNAT and SNAT rewrites keep every checksum right', async (t) => {
  const c = new Ipv6Chain();
  const pod = A('fd00:10:244:2::7');
  const masq = A('fd00::100');
  for (const [name, text, proto, csumAt] of [['udp', UDP, 17, 6], ['tcp', SYN, 6, 16], ['icmpv6 echo', ECHO, 58, 2], ['chain', CHAIN, 17, 6]] as const) {
    const b = hex(text);
    t.equal(ipv6Walk(b, 0, c), WIRE_OK);
    rewriteDst6(b, 0, c, pod, 0, proto === 58 ? -1 : 8080);
    rewriteSrc6(b, 0, c, masq, 0, 61000);
    const w = new Uint32Array(4);
    ipv6DstInto(b, 0, w, 0);
    t.equal(formatIPv6(w, 0), 'fd00:10:244:2::7', name);
    ipv6SrcInto(b, 0, w, 0);
    t.equal(formatIPv6(w, 0), 'fd00::100', name);
    if (proto !== 58) t.equal((b[c.l4Off + 2] << 8) | b[c.l4Off + 3], 8080, `${name}: dport`);
    t.equal((b[c.l4Off] << 8) | b[c.l4Off + 1], proto === 58 ? 128 << 8 : 61000, `${name}: sport`);
    if (proto === 58) t.equal(icmpv6Ident(b, c.l4Off), 61000, 'echo identifier as the port');
    const full = l4Checksum6(b, 0, c.l4Off, c.l4Len, csumAt, proto);
    t.equal((b[c.l4Off + csumAt] << 8) | b[c.l4Off + csumAt + 1], full, `${name}: incremental = full`);
  }
  // a non-first fragment: only the address
  const f2 = hex(FRAG2);
  ipv6Walk(f2, 0, c);
  const before = Buffer.from(f2.subarray(40)).toString('hex');
  rewriteDst6(f2, 0, c, pod, 0, 8080);
  t.equal(Buffer.from(f2.subarray(40)).toString('hex'), before, 'fragment data untouched');
  t.equal(ipv6DstWord(f2, 0, 3), 7);
});

t.test('an ICMPv6 error coming back has its quote translated', async (t) => {
  // the client sent UDP to the ClusterIP; DNAT made it pod fd00:10:244:2::7 port 8080 from masq fd00::100 port 61000;
  // the pod answers port unreachable about the translated packet; the NAT turns it back to what the client sent.
  const c = new Ipv6Chain();
  const q = new Ipv6Chain();
  const pod = A('fd00:10:244:2::7');
  const masq = A('fd00::100');
  const translated = hex(UDP);
  ipv6Walk(translated, 0, c);
  rewriteDst6(translated, 0, c, pod, 0, 8080);
  rewriteSrc6(translated, 0, c, masq, 0, 61000);
  const e = new Uint8Array(200);
  const n = buildIcmpv6Error(e, 0, translated, 0, translated.length, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, pod, 0);
  t.equal(ipv6Walk(e, 0, c), WIRE_OK);
  t.equal(icmpv6Check(e, c.l4Off, c.l4Len, q), WIRE_OK);
  icmpv6QuoteRewriteDst(e, c, q, A('fd00:10:96::a'), 0, 53);
  icmpv6QuoteRewriteSrc(e, c, q, A('2001:db8::1'), 0, 5000);
  rewriteSrc6(e, 0, c, A('fd00:10:96::a'), 0, -1);
  rewriteDst6(e, 0, c, A('2001:db8::1'), 0, -1);
  t.same(Buffer.from(e.subarray(0, n)).toString('hex'), UNREACH.replace(/\s+/g, ''), 'exactly the error the ClusterIP would have sent');
  t.ok(icmpv6ChecksumValid(e, 0, 40, n - 40));
  t.ok(l4Checksum6Valid(e, 48, 88, 13, 17), 'the quoted UDP checksum is right again');
});
