import t from 'tap';
import {
  icmpCheck, icmpType, icmpCode, icmpChecksum, icmpIdent, icmpSeq, icmpNextHopMtu, icmpQuoteOff, icmpQuotedIpOff,
  setIcmpIdent, icmpChecksumCompute, icmpFillChecksum, icmpChecksumValid, writeIcmpEchoHeader,
  isIcmpError, isIcmpEcho, icmpErrorPermitted, buildIcmpError,
  ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED,
  ICMP_TTL_EXCEEDED, ICMP_QUOTE,
} from '../../dataplane/wire/icmp.ts';
import {
  ipv4Check, ipv4Src, ipv4Dst, ipv4Protocol, ipv4PayloadOff, ipv4PayloadLen, ipv4ChecksumValid, ipv4Ttl, ipv4Tos,
  ipv4HeaderLen, writeIpv4Header,
} from '../../dataplane/wire/ipv4.ts';
import { udpSrcPort, udpDstPort } from '../../dataplane/wire/udp.ts';
import { WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_ICMP_QUOTE, WIRE_BAD_IHL, WIRE_NO_ROOM, wireErrorName } from '../../dataplane/wire/error.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

// Literal packets; checksums checked with tcpdump -vvv (no "bad cksum" / "wrong icmp cksum").
// ICMP echo request 10.64.1.1 -> 10.64.1.13, id 0x1c2d seq 1, 56 bytes of data (10..47)
const ECHO = '450000545d4140004001c6da0a4001010a40010d 080022fd1c2d0001 ' +
  '101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f4041424344454647';
// UDP DNS query 10.64.1.1:53001 -> 10.96.0.10:53
const DNS = '4500005200010000401164f00a4001010a60000a cf090035003e99b3 beef010000010000000000000a6b756265726e657465730764656661756c740373766307636c7573746572056c6f63616c0000010001';
// ICMP port unreachable 10.96.0.10 -> 10.64.1.1 (TOS 0xc0, TTL 64, id 0), quoting DNS's header + 8 bytes
const PORT_UNREACH = '45c00038000000004001645b0a60000a0a400101 030393cc00000000 4500005200010000401164f00a4001010a60000a cf090035003e99b3';
// UDP 10.64.1.7:5000 -> 10.64.1.13:5001 "hello" with a Router Alert option (IHL 6)
const WITH_OPTIONS = '460000250101000001110d300a4001070a40010d94040000 13881389000d7e5d68656c6c6f';

t.test('echo request: accessors and checksum', async (t) => {
  const b = hex(ECHO);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  const o = ipv4PayloadOff(b, 0);
  t.equal(icmpCheck(b, o, ipv4PayloadLen(b, 0)), WIRE_OK);
  t.equal(icmpType(b, o), ICMP_ECHO_REQUEST);
  t.equal(icmpCode(b, o), 0);
  t.equal(icmpChecksum(b, o), 0x22fd);
  t.equal(icmpIdent(b, o), 0x1c2d);
  t.equal(icmpSeq(b, o), 1);
  t.ok(isIcmpEcho(icmpType(b, o)));
  t.notOk(isIcmpError(icmpType(b, o)));
  t.equal(icmpChecksumCompute(b, 0), 0x22fd);
  t.ok(icmpChecksumValid(b, 0));
  setIcmpIdent(b, o, 0x8001);
  t.equal(icmpIdent(b, o), 0x8001);
  t.equal(icmpChecksum(b, o), icmpChecksumCompute(b, 0));
  t.equal(icmpChecksum(b, o), 0xbf28, 'the checksum an independent computation gives for ident 0x8001');
  b[o + 40] ^= 0xff;
  t.notOk(icmpChecksumValid(b, 0));
  icmpFillChecksum(b, 0);
  t.ok(icmpChecksumValid(b, 0));
});

t.test('writeIcmpEchoHeader rebuilds the echo request', async (t) => {
  const want = hex(ECHO);
  const b = new Uint8Array(84);
  writeIpv4Header(b, 0, 84, 0x5d41, 0x4000, 64, 1, parseIPv4('10.64.1.1'), parseIPv4('10.64.1.13'));
  t.equal(writeIcmpEchoHeader(b, 20, ICMP_ECHO_REQUEST, 0x1c2d, 1), 8);
  b.set(want.subarray(28), 28);
  icmpFillChecksum(b, 0);
  t.same(b, want);
});

t.test('types', async (t) => {
  for (const ty of [3, 4, 5, 11, 12]) t.ok(isIcmpError(ty), `type ${ty} is an error`);
  for (const ty of [0, 8, 13, 14, 9, 10, 255]) t.notOk(isIcmpError(ty), `type ${ty} is not an error`);
  t.ok(isIcmpEcho(ICMP_ECHO_REPLY));
  t.notOk(isIcmpEcho(ICMP_DEST_UNREACH));
});

t.test('port unreachable: the quoted header and its tuple', async (t) => {
  const b = hex(PORT_UNREACH);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  const o = ipv4PayloadOff(b, 0);
  t.equal(icmpCheck(b, o, ipv4PayloadLen(b, 0)), WIRE_OK);
  t.ok(icmpChecksumValid(b, 0));
  t.equal(icmpType(b, o), ICMP_DEST_UNREACH);
  t.equal(icmpCode(b, o), ICMP_PORT_UNREACH);
  const q = icmpQuotedIpOff(b, 0);
  t.equal(q, icmpQuoteOff(o));
  t.equal(q, 28);
  t.equal(ipv4Src(b, q), parseIPv4('10.64.1.1'));
  t.equal(ipv4Dst(b, q), parseIPv4('10.96.0.10'));
  t.equal(ipv4Protocol(b, q), 17);
  t.ok(ipv4ChecksumValid(b, q));
  const qp = ipv4PayloadOff(b, q);
  t.equal(udpSrcPort(b, qp), 53001);
  t.equal(udpDstPort(b, qp), 53);
});

t.test('icmpCheck refuses short messages and bad quotes', async (t) => {
  const b = hex(PORT_UNREACH);
  const o = 20;
  t.equal(icmpCheck(b, o, 7), WIRE_TOO_SHORT);
  t.equal(icmpCheck(b, o, 27), WIRE_BAD_ICMP_QUOTE, 'no room for a quoted header');
  t.equal(icmpCheck(b, o, 35), WIRE_BAD_ICMP_QUOTE, 'quoted header without 8 bytes after it');
  t.equal(wireErrorName(icmpCheck(b, o, 35)), 'bad_icmp_quote');
  t.equal(icmpCheck(b, o, 36), WIRE_OK);
  const v6 = b.slice();
  v6[o + ICMP_QUOTE] = 0x65;
  t.equal(icmpCheck(v6, o, 36), WIRE_BAD_ICMP_QUOTE, 'quoted version 6');
  const ihl4 = b.slice();
  ihl4[o + ICMP_QUOTE] = 0x44;
  t.equal(icmpCheck(ihl4, o, 36), WIRE_BAD_ICMP_QUOTE, 'quoted IHL 4');
  const ihl6 = b.slice();
  ihl6[o + ICMP_QUOTE] = 0x46;
  t.equal(icmpCheck(ihl6, o, 36), WIRE_BAD_ICMP_QUOTE, 'quoted IHL 6 needs 4 more bytes');
  // an echo needs only its 8 bytes
  const e = hex(ECHO);
  t.equal(icmpCheck(e, 20, 8), WIRE_OK);
});

t.test('buildIcmpError: the port unreachable kube-proxy\'s REJECT sends, byte for byte', async (t) => {
  const orig = hex(DNS);
  const out = new Uint8Array(100).fill(0xee);
  const n = buildIcmpError(out, 0, orig, 0, orig.length, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, parseIPv4('10.96.0.10'));
  t.equal(n, 56);
  t.same(out.subarray(0, n), hex(PORT_UNREACH));
  t.equal(out[n], 0xee, 'nothing written past the packet');
  // at an offset
  const out2 = new Uint8Array(70);
  t.equal(buildIcmpError(out2, 10, orig, 0, orig.length, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, parseIPv4('10.96.0.10')), 56);
  t.same(out2.subarray(10, 66), hex(PORT_UNREACH));
});

t.test('buildIcmpError in place (out === orig, same offset)', async (t) => {
  const b = new Uint8Array(120);
  b.set(hex(DNS), 4);
  const n = buildIcmpError(b, 4, b, 4, 82, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, parseIPv4('10.96.0.10'));
  t.equal(n, 56);
  t.same(b.subarray(4, 60), hex(PORT_UNREACH));
});

t.test('buildIcmpError quotes options, short datagrams, carries the MTU; refuses bad input', async (t) => {
  const orig = hex(WITH_OPTIONS);
  const out = new Uint8Array(100);
  const n = buildIcmpError(out, 0, orig, 0, orig.length, ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED, parseIPv4('10.64.0.1'));
  t.equal(n, 20 + 8 + 24 + 8, 'header with its option + 8 bytes');
  t.equal(ipv4Check(out, 0, n, true), WIRE_OK);
  t.equal(icmpCheck(out, 20, n - 20), WIRE_OK);
  t.ok(icmpChecksumValid(out, 0));
  t.equal(ipv4Dst(out, 0), parseIPv4('10.64.1.7'), 'to the original source');
  t.equal(ipv4Src(out, 0), parseIPv4('10.64.0.1'));
  t.equal(ipv4Ttl(out, 0), 64);
  t.equal(ipv4Tos(out, 0), 0xc0);
  t.equal(ipv4HeaderLen(out, icmpQuotedIpOff(out, 0)), 24);
  t.same(out.subarray(28, 60), orig.subarray(0, 32));

  // a datagram with fewer than 8 payload bytes is quoted whole
  const tiny = new Uint8Array(24);
  writeIpv4Header(tiny, 0, 24, 7, 0, 64, 253, parseIPv4('10.64.1.1'), parseIPv4('10.64.1.2'));
  tiny.set([1, 2, 3, 4], 20);
  const m = buildIcmpError(out, 0, tiny, 0, 24, ICMP_DEST_UNREACH, 2, parseIPv4('10.64.1.2'));
  t.equal(m, 20 + 8 + 24);
  t.ok(icmpChecksumValid(out, 0));

  // fragmentation needed carries the next-hop MTU
  const dns = hex(DNS);
  const k = buildIcmpError(out, 0, dns, 0, dns.length, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, parseIPv4('10.64.0.1'), 1400);
  t.equal(k, 56);
  t.equal(icmpNextHopMtu(out, 20), 1400);
  t.ok(icmpChecksumValid(out, 0));

  // refused: no room, malformed original
  t.equal(buildIcmpError(new Uint8Array(55), 0, dns, 0, dns.length, 3, 3, 1), WIRE_NO_ROOM);
  t.equal(buildIcmpError(new Uint8Array(100), 50, dns, 0, dns.length, 3, 3, 1), WIRE_NO_ROOM);
  const bad = dns.slice();
  bad[0] = 0x43;
  t.equal(buildIcmpError(out, 0, bad, 0, bad.length, 3, 3, 1), WIRE_BAD_IHL);
  t.equal(buildIcmpError(out, 0, dns, 0, 10, 3, 3, 1), WIRE_TOO_SHORT);
});

t.test('icmpErrorPermitted (RFC 1122 §3.2.2)', async (t) => {
  const dns = hex(DNS);
  t.ok(icmpErrorPermitted(dns, 0, dns.length));
  const withAddr = (at: number, a: string) => {
    const c = dns.slice();
    const v = parseIPv4(a);
    c[at] = v >>> 24; c[at + 1] = v >>> 16; c[at + 2] = v >>> 8; c[at + 3] = v;
    return c;
  };
  const withSrc = (a: string) => withAddr(12, a);
  const withDst = (a: string) => withAddr(16, a);
  for (const a of ['0.0.0.0', '255.255.255.255', '224.0.0.1', '239.1.2.3', '240.0.0.1', '127.0.0.1']) {
    t.notOk(icmpErrorPermitted(withSrc(a), 0, 82), `source ${a}`);
  }
  for (const a of ['224.0.0.251', '255.255.255.255']) t.notOk(icmpErrorPermitted(withDst(a), 0, 82), `destination ${a}`);
  const frag = dns.slice();
  frag[7] = 1; // offset 8 bytes
  t.notOk(icmpErrorPermitted(frag, 0, 82), 'non-first fragment');
  const firstFrag = dns.slice();
  firstFrag[6] = 0x20; // MF, offset 0
  t.ok(icmpErrorPermitted(firstFrag, 0, 82), 'first fragment');
  const err = hex(PORT_UNREACH);
  t.notOk(icmpErrorPermitted(err, 0, err.length), 'an ICMP error');
  const echo = hex(ECHO);
  t.ok(icmpErrorPermitted(echo, 0, echo.length), 'an ICMP echo');
});
