import t from 'tap';
import {
  tcpCheck, tcpSrcPort, tcpDstPort, tcpSeq, tcpAck, tcpDataOffset, tcpHeaderLen, tcpFlags, tcpWindow,
  tcpChecksum, tcpUrgent, setTcpSrcPort, setTcpDstPort, tcpChecksumCompute, tcpFillChecksum, tcpChecksumValid,
  writeTcpHeader, TCP_FLAG_SYN, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_PSH, TCP_FLAG_URG,
  TCP_FLAG_ECE, TCP_FLAG_CWR, TCP_DATA_OFF,
} from '../../dataplane/wire/tcp.ts';
import {
  udpCheck, udpSrcPort, udpDstPort, udpLength, udpChecksum, setUdpSrcPort, setUdpDstPort,
  udpChecksumCompute, udpFillChecksum, udpChecksumValid, writeUdpHeader, UDP_LENGTH, UDP_CHECKSUM,
} from '../../dataplane/wire/udp.ts';
import {
  sctpCheck, sctpSrcPort, sctpDstPort, sctpVerificationTag, sctpChecksum, sctpFirstChunkType,
  sctpChecksumCompute, sctpFillChecksum, sctpFillChecksumAt, sctpChecksumValid, setSctpDstPort, SCTP_CHUNK_INIT,
} from '../../dataplane/wire/sctp.ts';
import { ipv4Check, ipv4PayloadOff, ipv4PayloadLen, writeIpv4Header, IPV4_FLAG_DF } from '../../dataplane/wire/ipv4.ts';
import { WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_DATA_OFFSET, WIRE_BAD_UDP_LENGTH, wireErrorName } from '../../dataplane/wire/error.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

// Literal packets; their checksums were checked with tcpdump -vvv ("cksum 0xff17 (correct)", "udp sum ok").
// TCP SYN 10.64.1.1:35814 -> 10.64.1.13:80, options mss 1460, sackOK, TS val 1356258 ecr 0, nop, wscale 7
const SYN = '4500003c3a2c40004006ea020a4001010a40010d 8be600508f2b6a1100000000a002faf0ff170000020405b40402080a0014b1e20000000001030307';
// the same SYN, DNATed to 10.64.2.5:8080 (built independently)
const SYN_DNAT = '4500003c3a2c40004006e90a0a4001010a400205 8be61f908f2b6a1100000000a002faf0dedf0000020405b40402080a0014b1e20000000001030307';
// UDP DNS query 10.64.1.1:53001 -> 10.96.0.10:53, id 0xbeef, A? kubernetes.default.svc.cluster.local.
const DNS = '4500005200010000401164f00a4001010a60000a cf090035003e99b3 beef010000010000000000000a6b756265726e657465730764656661756c740373766307636c7573746572056c6f63616c0000010001';
// SCTP INIT 10.64.1.1:40000 -> 10.96.5.5:3868, CRC32c stored least significant byte first
const SCTP_INIT = '45000034777740004084a8290a4001010a600505 9c400f1c00000000189fc7da010000141a2b3c4d0001a000000affff0badcafe';

t.test('TCP SYN: checked entry, accessors, checksum', async (t) => {
  const b = hex(SYN);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  const o = ipv4PayloadOff(b, 0);
  t.equal(tcpCheck(b, o, ipv4PayloadLen(b, 0)), WIRE_OK);
  t.equal(tcpSrcPort(b, o), 35814);
  t.equal(tcpDstPort(b, o), 80);
  t.equal(tcpSeq(b, o), 2401987089);
  t.equal(tcpAck(b, o), 0);
  t.equal(tcpDataOffset(b, o), 10);
  t.equal(tcpHeaderLen(b, o), 40);
  t.equal(tcpFlags(b, o), TCP_FLAG_SYN);
  t.equal(tcpFlags(b, o) & TCP_FLAG_ACK, 0);
  t.equal(tcpWindow(b, o), 64240);
  t.equal(tcpChecksum(b, o), 0xff17);
  t.equal(tcpUrgent(b, o), 0);
  t.equal(tcpChecksumCompute(b, 0), 0xff17);
  t.ok(tcpChecksumValid(b, 0));
  b[o + 30] ^= 1; // an option byte
  t.notOk(tcpChecksumValid(b, 0));
  tcpFillChecksum(b, 0);
  t.ok(tcpChecksumValid(b, 0));
});

t.test('TCP flag constants', async (t) => {
  t.same(
    [TCP_FLAG_FIN, TCP_FLAG_SYN, TCP_FLAG_RST, TCP_FLAG_PSH, TCP_FLAG_ACK, TCP_FLAG_URG, TCP_FLAG_ECE, TCP_FLAG_CWR],
    [1, 2, 4, 8, 16, 32, 64, 128],
  );
});

t.test('TCP checked entry refuses short segments and bad data offsets', async (t) => {
  const b = hex(SYN);
  const o = 20;
  const check = (bb: Uint8Array, len: number) => tcpCheck(bb, o, len);
  t.equal(check(b, 19), WIRE_TOO_SHORT);
  t.equal(check(b, 0), WIRE_TOO_SHORT);
  t.equal(check(b, 39), WIRE_BAD_DATA_OFFSET, 'data offset 10 (40 bytes) beyond a 39-byte segment');
  for (const doff of [0, 1, 4]) {
    const c = b.slice();
    c[o + TCP_DATA_OFF] = doff << 4;
    t.equal(check(c, 40), WIRE_BAD_DATA_OFFSET, `data offset ${doff}`);
    t.equal(wireErrorName(check(c, 40)), 'bad_data_offset');
  }
  const c = b.slice();
  c[o + TCP_DATA_OFF] = 15 << 4;
  t.equal(check(c, 40), WIRE_BAD_DATA_OFFSET, 'data offset 15 (60 bytes) in a 40-byte segment');
  t.equal(check(c, 60), WIRE_OK, 'data offset 15 fits a 60-byte segment');
  c[o + TCP_DATA_OFF] = 5 << 4;
  t.equal(check(c, 20), WIRE_OK, 'a bare 20-byte header');
});

t.test('TCP port setters update the checksum incrementally', async (t) => {
  const b = hex(SYN);
  setTcpDstPort(b, 20, 8080);
  t.equal(tcpDstPort(b, 20), 8080);
  t.equal(tcpChecksum(b, 20), tcpChecksumCompute(b, 0));
  setTcpSrcPort(b, 20, 61000);
  t.equal(tcpSrcPort(b, 20), 61000);
  t.ok(tcpChecksumValid(b, 0));
  t.equal(tcpChecksum(b, 20), tcpChecksumCompute(b, 0));
  // the DNATed SYN's checksum (0xdedf) is the old one with the address and port deltas applied
  const d = hex(SYN_DNAT);
  t.ok(tcpChecksumValid(d, 0));
  t.equal(tcpChecksum(d, 20), 0xdedf);
});

t.test('writeTcpHeader + writeIpv4Header + tcpFillChecksum rebuild the SYN', async (t) => {
  const want = hex(SYN);
  const b = new Uint8Array(60);
  writeIpv4Header(b, 0, 60, 0x3a2c, IPV4_FLAG_DF, 64, 6, parseIPv4('10.64.1.1'), parseIPv4('10.64.1.13'));
  t.equal(writeTcpHeader(b, 20, 35814, 80, 2401987089, 0, TCP_FLAG_SYN, 64240), 20);
  b[20 + TCP_DATA_OFF] = 10 << 4; // this SYN carries 20 bytes of options
  b.set(want.subarray(40), 40);
  tcpFillChecksum(b, 0);
  t.same(b, want);
});

t.test('UDP DNS query: checked entry, accessors, checksum', async (t) => {
  const b = hex(DNS);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  const o = ipv4PayloadOff(b, 0);
  t.equal(udpCheck(b, o, ipv4PayloadLen(b, 0)), WIRE_OK);
  t.equal(udpSrcPort(b, o), 53001);
  t.equal(udpDstPort(b, o), 53);
  t.equal(udpLength(b, o), 62);
  t.equal(udpChecksum(b, o), 0x99b3);
  t.equal(udpChecksumCompute(b, 0), 0x99b3);
  t.ok(udpChecksumValid(b, 0));
  b[o + 20] ^= 0x20;
  t.notOk(udpChecksumValid(b, 0));
  udpFillChecksum(b, 0);
  t.ok(udpChecksumValid(b, 0));
});

t.test('UDP checked entry refuses short datagrams and bad length fields', async (t) => {
  const b = hex(DNS);
  const o = 20;
  t.equal(udpCheck(b, o, 7), WIRE_TOO_SHORT);
  t.equal(udpCheck(b, o, 61), WIRE_BAD_UDP_LENGTH, 'length 62 beyond 61 bytes');
  t.equal(wireErrorName(udpCheck(b, o, 61)), 'bad_udp_length');
  for (const l of [0, 7]) {
    const c = b.slice();
    c[o + UDP_LENGTH] = 0;
    c[o + UDP_LENGTH + 1] = l;
    t.equal(udpCheck(c, o, 62), WIRE_BAD_UDP_LENGTH, `length ${l}`);
  }
  const c = b.slice();
  c[o + UDP_LENGTH + 1] = 8;
  t.equal(udpCheck(c, o, 62), WIRE_OK, 'a shorter length field (trailing bytes ignored) is fine');
});

t.test('UDP zero checksum: none; setters keep it zero; fill never stores 0', async (t) => {
  const b = hex(DNS);
  b[20 + UDP_CHECKSUM] = 0;
  b[20 + UDP_CHECKSUM + 1] = 0;
  t.ok(udpChecksumValid(b, 0), '0 means none');
  setUdpDstPort(b, 20, 5353);
  setUdpSrcPort(b, 20, 1024);
  t.equal(udpChecksum(b, 20), 0);
  t.equal(udpDstPort(b, 20), 5353);
  t.equal(udpSrcPort(b, 20), 1024);
  udpFillChecksum(b, 0);
  t.not(udpChecksum(b, 20), 0);
  t.ok(udpChecksumValid(b, 0));
});

t.test('UDP: a datagram whose computed checksum is 0 carries 0xffff', async (t) => {
  // 10.0.0.1:1 -> 10.0.0.2:2, 2 payload bytes chosen so that the ones' complement sum is 0xffff
  const b = new Uint8Array(30);
  writeIpv4Header(b, 0, 30, 0, 0, 64, 17, 0x0a000001, 0x0a000002);
  writeUdpHeader(b, 20, 1, 2, 10);
  // sum without payload: 0x0a00+0x0001+0x0a00+0x0002+17+10 + 1+2+10 = 0x142b; payload word = 0xffff - 0x142b
  const w = 0xffff - 0x142b;
  b[28] = w >>> 8;
  b[29] = w & 0xff;
  t.equal(udpChecksumCompute(b, 0), 0xffff);
  udpFillChecksum(b, 0);
  t.equal(udpChecksum(b, 20), 0xffff);
  t.ok(udpChecksumValid(b, 0));
  // and incremental setters that land on a computed 0 also store 0xffff
  setUdpSrcPort(b, 20, 2);
  setUdpSrcPort(b, 20, 1);
  t.equal(udpChecksum(b, 20), 0xffff);
});

t.test('SCTP INIT: CRC32c over the whole packet, stored little-endian', async (t) => {
  const b = hex(SCTP_INIT);
  t.equal(ipv4Check(b, 0, b.length, true), WIRE_OK);
  const o = ipv4PayloadOff(b, 0);
  const len = ipv4PayloadLen(b, 0);
  t.equal(sctpCheck(b, o, len), WIRE_OK);
  t.equal(sctpCheck(b, o, 11), WIRE_TOO_SHORT);
  t.equal(sctpSrcPort(b, o), 40000);
  t.equal(sctpDstPort(b, o), 3868);
  t.equal(sctpVerificationTag(b, o), 0);
  t.equal(sctpFirstChunkType(b, o, len), SCTP_CHUNK_INIT);
  t.equal(sctpFirstChunkType(b, o, 12), -1);
  t.equal(sctpChecksum(b, o), 0xdac79f18);
  t.equal(sctpChecksumCompute(b, o, len), 0xdac79f18);
  t.ok(sctpChecksumValid(b, 0));
  setSctpDstPort(b, o, 3869);
  t.notOk(sctpChecksumValid(b, 0), 'the port setter leaves the CRC stale');
  sctpFillChecksum(b, 0);
  t.ok(sctpChecksumValid(b, 0));
});

t.test('SCTP: known packets (header only, and a WebRTC INIT) verify', async (t) => {
  // 12-byte common header, ports 5000/5000, vtag 0, checksum bytes 06 a9 00 e1
  const h = hex('13881388 00000000 06a900e1');
  t.equal(sctpChecksumCompute(h, 0, 12), sctpChecksum(h, 0));
  t.equal(sctpChecksum(h, 0), 0xe100a906);
  const init = hex(
    '1388138800000000 81469dfc 010000565 5b964a500020000040008 00e86d1030c000000480080009c00fc180820000008002' +
    '00249febbb5c50c9bf759cb12c574fa45a51ba60177827945c31e65d5b0947e22206800400060001000080030006 80c10000',
  );
  t.equal(init.length, 100);
  t.equal(sctpChecksumCompute(init, 0, 100), sctpChecksum(init, 0));
  const z = init.slice();
  sctpFillChecksumAt(z, 0, 100);
  t.same(z, init);
});
