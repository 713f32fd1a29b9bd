/**
 * Random IPv4 packets for the wire property tests: a spec (the tuple and the
 * bytes around it) and a builder that lays it out with every checksum right,
 * plus a naive reference checksum written independently of
 * dataplane/wire/checksum.ts (Buffer reads, one word at a time, fold at the end).
 */
import fc from 'fast-check';
import { writeIpv4Header, ipv4FillChecksum } from '../../dataplane/wire/ipv4.ts';
import { writeTcpHeader, tcpFillChecksum } from '../../dataplane/wire/tcp.ts';
import { writeUdpHeader, udpFillChecksum } from '../../dataplane/wire/udp.ts';
import { writeIcmpEchoHeader, icmpFillChecksum } from '../../dataplane/wire/icmp.ts';
import { sctpFillChecksum } from '../../dataplane/wire/sctp.ts';

export interface PacketSpec {
  proto: number; // 6, 17, 132, 1 (echo)
  src: number;
  dst: number;
  sport: number; // ICMP: identifier
  dport: number; // ICMP: unused
  ttl: number;
  tos: number;
  ident: number;
  df: boolean;
  ipOptions: Uint8Array; // multiple of 4, ≤ 40
  l4Options: Uint8Array; // TCP only, multiple of 4, ≤ 40
  payload: Uint8Array;
  udpNoChecksum: boolean;
  icmpType: number; // 8 or 0
  seq: number;
}

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const words = (max: number) =>
  fc.integer({ min: 0, max }).chain((n) => fc.uint8Array({ minLength: n * 4, maxLength: n * 4 }));

export const packetSpec: fc.Arbitrary<PacketSpec> = fc.record({
  proto: fc.constantFrom(6, 17, 132, 1),
  src: u32,
  dst: u32,
  sport: u16,
  dport: u16,
  ttl: fc.integer({ min: 1, max: 255 }),
  tos: fc.integer({ min: 0, max: 255 }),
  ident: u16,
  df: fc.boolean(),
  ipOptions: fc.oneof(fc.constant(new Uint8Array(0)), words(10)),
  l4Options: fc.oneof(fc.constant(new Uint8Array(0)), words(10)),
  payload: fc.uint8Array({ maxLength: 120 }),
  udpNoChecksum: fc.boolean(),
  icmpType: fc.constantFrom(8, 0),
  seq: u32,
});

/** Lay the packet out at `off` in a buffer of `off + length + tail` bytes; returns [buffer, length]. */
export function buildPacket(s: PacketSpec, off = 0, tail = 0): [Uint8Array, number] {
  const hlen = 20 + s.ipOptions.length;
  const l4h = s.proto === 6 ? 20 + s.l4Options.length : s.proto === 132 ? 12 : 8;
  const total = hlen + l4h + s.payload.length;
  const b = new Uint8Array(off + total + tail);
  writeIpv4Header(b, off, total, s.ident, s.df ? 0x4000 : 0, s.ttl, s.proto, s.src, s.dst);
  b[off] = 0x40 | (hlen >>> 2);
  b[off + 1] = s.tos;
  b.set(s.ipOptions, off + 20);
  ipv4FillChecksum(b, off);
  const l4 = off + hlen;
  if (s.proto === 6) {
    writeTcpHeader(b, l4, s.sport, s.dport, s.seq, s.seq ^ 0x5a5a5a5a, 0x18, 502);
    b[l4 + 12] = (l4h >>> 2) << 4;
    b.set(s.l4Options, l4 + 20);
  } else if (s.proto === 17) {
    writeUdpHeader(b, l4, s.sport, s.dport, l4h + s.payload.length);
  } else if (s.proto === 132) {
    b[l4] = s.sport >>> 8; b[l4 + 1] = s.sport;
    b[l4 + 2] = s.dport >>> 8; b[l4 + 3] = s.dport;
    b[l4 + 4] = s.seq >>> 24; b[l4 + 5] = s.seq >>> 16; b[l4 + 6] = s.seq >>> 8; b[l4 + 7] = s.seq;
  } else {
    writeIcmpEchoHeader(b, l4, s.icmpType, s.sport, s.seq & 0xffff);
  }
  b.set(s.payload, l4 + l4h);
  if (s.proto === 6) tcpFillChecksum(b, off);
  else if (s.proto === 17) { if (!s.udpNoChecksum) udpFillChecksum(b, off); }
  else if (s.proto === 132) sctpFillChecksum(b, off);
  else icmpFillChecksum(b, off);
  return [b, total];
}

/** Reference ones' complement sum (not complemented), independent of checksumRaw. */
export function refSum(bytes: Uint8Array, initial = 0): number {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let s = initial;
  for (let i = 0; i + 1 < buf.length; i += 2) s += buf.readUInt16BE(i);
  if (buf.length % 2 === 1) s += buf[buf.length - 1] * 256;
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return s;
}

/** Reference: does the IPv4 packet's header checksum, and its TCP/UDP/ICMP checksum, verify? */
export function refChecksumsOk(b: Uint8Array, off: number): { ip: boolean; l4: boolean } {
  const hlen = (b[off] & 15) * 4;
  const total = b[off + 2] * 256 + b[off + 3];
  const ip = refSum(b.subarray(off, off + hlen)) === 0xffff;
  const proto = b[off + 9];
  const seg = b.subarray(off + hlen, off + total);
  const src = b.subarray(off + 12, off + 20);
  let l4 = true;
  if (proto === 6 || (proto === 17 && (seg[6] | seg[7]) !== 0)) {
    const len = proto === 17 ? seg[4] * 256 + seg[5] : seg.length;
    const pseudo = new Uint8Array(12);
    pseudo.set(src, 0);
    pseudo[9] = proto;
    pseudo[10] = len >>> 8;
    pseudo[11] = len & 0xff;
    l4 = refSum(seg.subarray(0, len), refSum(pseudo)) === 0xffff;
  } else if (proto === 1) {
    l4 = refSum(seg) === 0xffff;
  }
  return { ip, l4 };
}
