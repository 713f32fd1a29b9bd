import t from 'tap';
import {
  ipv4Check, ipVersion, isIpv6, ipv4Ihl, ipv4HeaderLen, ipv4Tos, ipv4TotalLen, ipv4Ident, ipv4FragOffset,
  ipv4MoreFragments, ipv4DontFragment, ipv4IsFragment, ipv4IsFirstFragment, ipv4Ttl, ipv4Protocol,
  ipv4Checksum, ipv4Src, ipv4Dst, ipv4PayloadOff, ipv4PayloadLen, ipv4ChecksumValid,
  setIpv4Src, setIpv4Dst, setIpv4Ttl, ipv4FillChecksum, writeIpv4Header,
  IPV4_TTL, IPV4_FLAG_DF, IPV4_FLAG_MF,
} from '../../dataplane/wire/ipv4.ts';
import { ipv4HeaderChecksum } from '../../dataplane/wire/checksum.ts';
import {
  WIRE_OK, WIRE_TOO_SHORT, WIRE_NOT_IPV4, WIRE_BAD_IHL, WIRE_BAD_TOTAL_LENGTH, WIRE_BAD_HEADER_CHECKSUM,
  WIRE_BAD_DATA_OFFSET, WIRE_BAD_UDP_LENGTH, WIRE_BAD_ICMP_QUOTE, WIRE_NO_ROOM, wireErrorName,
} from '../../dataplane/wire/error.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

// TCP SYN 10.64.1.1:35814 -> 10.64.1.13:80, DF, TTL 64, id 0x3a2c (checksums checked by tcpdump -vvv: correct)
const SYN = '4500003c3a2c40004006ea020a4001010a40010d 8be600508f2b6a1100000000a002faf0ff170000020405b40402080a0014b1e20000000001030307';
// UDP 10.64.1.7:5000 -> 10.64.1.13:5001 "hello", TTL 1, IHL 6 with a Router Alert option (94 04 00 00)
const WITH_OPTIONS = '460000250101000001110d300a4001070a40010d94040000 13881389000d7e5d68656c6c6f';
// a non-first fragment: offset 185*8 = 1480, MF clear, 16 bytes of UDP payload data
const FRAG_TAIL = '45000024424200b9401122240a4001010a60000a a0a1a2a3a4a5a6a7a8a9aaabacadaeaf';

t.test('a TCP SYN header, field by field', async (t) => {
  const b = hex(SYN);
  t.equal(ipv4Check(b, 0, b.length), WIRE_OK);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  t.equal(ipVersion(b, 0, b.length), 4);
  t.notOk(isIpv6(b, 0, b.length));
  t.equal(ipv4Ihl(b, 0), 5);
  t.equal(ipv4HeaderLen(b, 0), 20);
  t.equal(ipv4Tos(b, 0), 0);
  t.equal(ipv4TotalLen(b, 0), 60);
  t.equal(ipv4Ident(b, 0), 0x3a2c);
  t.ok(ipv4DontFragment(b, 0));
  t.notOk(ipv4MoreFragments(b, 0));
  t.equal(ipv4FragOffset(b, 0), 0);
  t.notOk(ipv4IsFragment(b, 0));
  t.ok(ipv4IsFirstFragment(b, 0));
  t.equal(ipv4Ttl(b, 0), 64);
  t.equal(ipv4Protocol(b, 0), 6);
  t.equal(ipv4Checksum(b, 0), 0xea02);
  t.equal(ipv4Src(b, 0), parseIPv4('10.64.1.1'));
  t.equal(ipv4Dst(b, 0), parseIPv4('10.64.1.13'));
  t.equal(ipv4PayloadOff(b, 0), 20);
  t.equal(ipv4PayloadLen(b, 0), 40);
  t.ok(ipv4ChecksumValid(b, 0));
});

t.test('a header with options (IHL 6) passes, options untouched', async (t) => {
  const b = hex(WITH_OPTIONS);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  t.equal(ipv4HeaderLen(b, 0), 24);
  t.equal(ipv4PayloadOff(b, 0), 24);
  t.equal(ipv4PayloadLen(b, 0), 13);
  t.equal(ipv4Ttl(b, 0), 1);
  t.equal(ipv4HeaderChecksum(b, 0), 0x0d30, 'checksum covers the option bytes');
  setIpv4Dst(b, 0, parseIPv4('10.64.2.2'));
  t.same(Array.from(b.subarray(20, 24)), [0x94, 0x04, 0x00, 0x00], 'option bytes kept');
  t.ok(ipv4ChecksumValid(b, 0));
  t.equal(ipv4Checksum(b, 0), ipv4HeaderChecksum(b, 0));
});

t.test('at an offset inside a larger buffer, with trailing padding', async (t) => {
  const p = hex(SYN);
  const b = new Uint8Array(100);
  b.set(p, 7);
  t.equal(ipv4Check(b, 7, p.length + 5, true), WIRE_OK, 'bytes beyond the total length are allowed');
  t.equal(ipv4Src(b, 7), 0x0a400101);
  t.equal(ipv4PayloadOff(b, 7), 27);
});

t.test('fragments', async (t) => {
  const b = hex(FRAG_TAIL);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  t.ok(ipv4IsFragment(b, 0));
  t.notOk(ipv4IsFirstFragment(b, 0));
  t.notOk(ipv4MoreFragments(b, 0));
  t.equal(ipv4FragOffset(b, 0), 1480);
  // first fragment: MF set, offset 0
  const f = hex(SYN);
  f[6] = (IPV4_FLAG_MF >> 8);
  f[7] = 0;
  ipv4FillChecksum(f, 0);
  t.ok(ipv4MoreFragments(f, 0));
  t.notOk(ipv4DontFragment(f, 0));
  t.ok(ipv4IsFragment(f, 0));
  t.ok(ipv4IsFirstFragment(f, 0));
});

t.test('the checked entry refuses each malformed case with a named reason', async (t) => {
  const good = hex(SYN);
  const cases: [string, (b: Uint8Array) => number, number, string][] = [
    ['empty', (b) => ipv4Check(b, 0, 0), WIRE_TOO_SHORT, 'too_short'],
    ['19 bytes', (b) => ipv4Check(b, 0, 19), WIRE_TOO_SHORT, 'too_short'],
    ['version 6', (b) => { b[0] = 0x65; return ipv4Check(b, 0, b.length); }, WIRE_NOT_IPV4, 'not_ipv4'],
    ['version 0', (b) => { b[0] = 0x05; return ipv4Check(b, 0, b.length); }, WIRE_NOT_IPV4, 'not_ipv4'],
    ['IHL 4', (b) => { b[0] = 0x44; return ipv4Check(b, 0, b.length); }, WIRE_BAD_IHL, 'bad_ihl'],
    ['IHL 0', (b) => { b[0] = 0x40; return ipv4Check(b, 0, b.length); }, WIRE_BAD_IHL, 'bad_ihl'],
    ['IHL 15 in a 40-byte buffer', (b) => { b[0] = 0x4f; return ipv4Check(b, 0, 40); }, WIRE_TOO_SHORT, 'too_short'],
    ['total length beyond the buffer', (b) => ipv4Check(b, 0, 59), WIRE_BAD_TOTAL_LENGTH, 'bad_total_length'],
    ['total length 61', (b) => { b[3] = 61; return ipv4Check(b, 0, b.length); }, WIRE_BAD_TOTAL_LENGTH, 'bad_total_length'],
    ['total length < IHL*4', (b) => { b[2] = 0; b[3] = 19; return ipv4Check(b, 0, b.length); }, WIRE_BAD_TOTAL_LENGTH, 'bad_total_length'],
    ['total length < IHL*4 with options', (b) => { b[0] = 0x46; b[3] = 20; return ipv4Check(b, 0, b.length); }, WIRE_BAD_TOTAL_LENGTH, 'bad_total_length'],
    ['bad header checksum when verifying', (b) => { b[8] = 63; return ipv4Check(b, 0, b.length, true); }, WIRE_BAD_HEADER_CHECKSUM, 'bad_header_checksum'],
  ];
  for (const [name, run, code, reason] of cases) {
    const r = run(good.slice());
    t.equal(r, code, name);
    t.equal(wireErrorName(r), reason, `${name}: ${reason}`);
  }
  // without verification a stale checksum passes (policy left to the caller)
  const b = good.slice();
  b[8] = 63;
  t.equal(ipv4Check(b, 0, b.length), WIRE_OK);
});

t.test('IPv6 is told apart from IPv4', async (t) => {
  // the first bytes of an IPv6 header (version 6, traffic class 0, flow label 0)
  const v6 = hex('6000 0000 0014 0640 fe80 0000 0000 0000 0000 0000 0000 0001');
  t.equal(ipVersion(v6, 0, v6.length), 6);
  t.ok(isIpv6(v6, 0, v6.length));
  t.equal(ipv4Check(v6, 0, v6.length), WIRE_NOT_IPV4);
  t.equal(ipVersion(v6, 0, 0), -1);
  t.notOk(isIpv6(v6, 0, 0));
});

t.test('setters keep the header checksum right (incremental = recomputed)', async (t) => {
  const b = hex(SYN);
  setIpv4Dst(b, 0, parseIPv4('10.64.2.5'));
  t.equal(ipv4Dst(b, 0), 0x0a400205);
  t.equal(ipv4Checksum(b, 0), 0xe90a, 'the value an independent computation gives for the DNATed header');
  setIpv4Src(b, 0, parseIPv4('10.64.0.1'));
  t.equal(ipv4Checksum(b, 0), 0xea0a);
  setIpv4Src(b, 0, 0xffffffff);
  t.equal(ipv4Src(b, 0), 0xffffffff);
  t.equal(ipv4Checksum(b, 0), ipv4HeaderChecksum(b, 0));
  setIpv4Ttl(b, 0, 63);
  t.equal(b[IPV4_TTL], 63);
  t.equal(ipv4Checksum(b, 0), ipv4HeaderChecksum(b, 0));
  t.equal(ipv4Protocol(b, 0), 6, 'the protocol sharing the TTL word is kept');
  t.ok(ipv4ChecksumValid(b, 0));
  b[11] ^= 0xff;
  t.notOk(ipv4ChecksumValid(b, 0));
  ipv4FillChecksum(b, 0);
  t.ok(ipv4ChecksumValid(b, 0));
});

t.test('writeIpv4Header writes what the SYN carries', async (t) => {
  const b = new Uint8Array(20);
  t.equal(writeIpv4Header(b, 0, 60, 0x3a2c, IPV4_FLAG_DF, 64, 6, parseIPv4('10.64.1.1'), parseIPv4('10.64.1.13')), 20);
  t.same(b, hex(SYN).subarray(0, 20));
});

t.test('error names', async (t) => {
  t.equal(wireErrorName(WIRE_OK), 'ok');
  t.equal(wireErrorName(WIRE_BAD_DATA_OFFSET), 'bad_data_offset');
  t.equal(wireErrorName(WIRE_BAD_UDP_LENGTH), 'bad_udp_length');
  t.equal(wireErrorName(WIRE_BAD_ICMP_QUOTE), 'bad_icmp_quote');
  t.equal(wireErrorName(WIRE_NO_ROOM), 'no_room');
  t.equal(wireErrorName(-99), 'unknown_wire_error');
  t.equal(wireErrorName(1), 'unknown_wire_error');
  t.equal(wireErrorName(-1.5), 'unknown_wire_error');
});
