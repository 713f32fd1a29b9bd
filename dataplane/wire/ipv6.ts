/**
 * IPv6 header view (RFC 8200), in the manner of ipv4.ts: named field
 * offsets, checked entry points (ipv6Check for the fixed header, ipv6Walk
 * for the extension-header chain), then unchecked accessors over (buf, off).
 * Addresses are four 32-bit words in network order (dataplane/addr6.ts):
 * read into a caller's Uint32Array, never as objects.
 *
 * The walk follows hop-by-hop options, routing, destination options,
 * authentication (AH) and fragment headers to the upper layer, with limits
 * on their count (IPV6_MAX_EXT_HEADERS) and their total length
 * (IPV6_MAX_EXT_BYTES); a malformed chain gives a named wire error
 * (error.ts). A non-first fragment's walk stops after its fragment header:
 * its upper-layer header is in the first fragment.
 *
 * Checksums: IPv6 has no header checksum; TCP, UDP and ICMPv6 checksums
 * cover the IPv6 pseudo-header (RFC 8200 §8.1: src, dst, 32-bit upper-layer
 * length, next header = the upper-layer protocol). Full and incremental
 * (RFC 1624 over the eight 16-bit words of an address) forms are here.
 */

import { get16, get32, put16, put32 } from './bytes.ts';
import { checksumRaw, fold } from './checksum.ts';
import {
  WIRE_OK, WIRE_TOO_SHORT, WIRE_NOT_IPV6, WIRE_BAD_PAYLOAD_LENGTH, WIRE_IPV6_EXT_TRUNCATED,
  WIRE_IPV6_EXT_TOO_MANY, WIRE_IPV6_EXT_TOO_LONG, WIRE_IPV6_HOPOPTS_NOT_FIRST, WIRE_IPV6_FRAGMENT_REPEATED,
} from './error.ts';

// ---- field offsets ----
/** version (4 bits), traffic class (8), flow label (20) */
export const IPV6_VER_TC_FLOW = 0;
export const IPV6_PAYLOAD_LEN = 4;
export const IPV6_NEXT_HEADER = 6;
export const IPV6_HOP_LIMIT = 7;
export const IPV6_SRC = 8;
export const IPV6_DST = 24;
/** the fixed header */
export const IPV6_HEADER_LEN = 40;
/** the minimum link MTU (RFC 8200 §5): an ICMPv6 error never exceeds it */
export const IPV6_MIN_MTU = 1280;

// ---- next-header values ----
export const NEXTHDR_HOP = 0;
export const NEXTHDR_TCP = 6;
export const NEXTHDR_UDP = 17;
export const NEXTHDR_ROUTING = 43;
export const NEXTHDR_FRAGMENT = 44;
export const NEXTHDR_ESP = 50;
export const NEXTHDR_AUTH = 51;
export const NEXTHDR_ICMPV6 = 58;
export const NEXTHDR_NONE = 59;
export const NEXTHDR_DEST = 60;
export const NEXTHDR_SCTP = 132;

// ---- fragment header (8 bytes) ----
export const FRAG_NEXT_HEADER = 0;
/** fragment offset (13 bits, 8-byte units) << 3 | res (2) | M (1) */
export const FRAG_OFFSET_FLAGS = 2;
export const FRAG_IDENT = 4;
export const FRAG_HEADER_LEN = 8;
export const FRAG_OFFSET_MASK = 0xfff8;
export const FRAG_MF = 1;

/** extension headers walked at most; one more is a malformed chain (Linux: max_{hbh,dst}_opts_number 8) */
export const IPV6_MAX_EXT_HEADERS = 8;
/** extension-header bytes walked at most, all headers together */
export const IPV6_MAX_EXT_BYTES = 1024;

/** Version 6 in the first byte. */
export function isIpv6Packet(buf: Uint8Array, off: number, len: number): boolean {
  return len >= 1 && buf[off] >>> 4 === 6;
}

/**
 * The checked entry for the fixed header: 0 (WIRE_OK) when `len` bytes at
 * `off` hold an IPv6 header whose payload fits, else a negative code:
 * WIRE_TOO_SHORT (len < 40), WIRE_NOT_IPV6, WIRE_BAD_PAYLOAD_LENGTH (beyond
 * the buffer, or 0 with a next header other than "no next header": a
 * jumbogram, not supported). Bytes past the payload are ignored. Never throws.
 */
export function ipv6Check(buf: Uint8Array, off: number, len: number): number {
  if (len < IPV6_HEADER_LEN) return WIRE_TOO_SHORT;
  if (buf[off] >>> 4 !== 6) return WIRE_NOT_IPV6;
  const plen = get16(buf, off + IPV6_PAYLOAD_LEN);
  if (IPV6_HEADER_LEN + plen > len) return WIRE_BAD_PAYLOAD_LENGTH;
  if (plen === 0 && buf[off + IPV6_NEXT_HEADER] === NEXTHDR_HOP) return WIRE_BAD_PAYLOAD_LENGTH;
  return WIRE_OK;
}

/**
 * What ipv6Walk found. One instance per caller, reused for every packet (no
 * allocation per packet); fields are plain numbers.
 */
export class Ipv6Chain {
  /** the upper-layer protocol (TCP 6, UDP 17, ICMPv6 58, SCTP 132, NONE 59, ESP 50, …) */
  proto = 0;
  /** offset of the upper-layer header (of the fragment's data for a non-first fragment) */
  l4Off = 0;
  /** bytes from l4Off to the end of the payload */
  l4Len = 0;
  /** offset of the fragment header, -1 when none */
  fragHdrOff = -1;
  /** fragment offset in bytes (0 when no fragment header) */
  fragOffset = 0;
  /** the M flag: 1 when more fragments follow */
  moreFragments = 0;
  /** the fragment identification (unsigned), 0 when no fragment header */
  fragId = 0;
  /** extension headers walked */
  extCount = 0;
  /** their bytes */
  extBytes = 0;
}

/** Part of a fragmented packet (an atomic fragment, offset 0 and M clear, RFC 6946, is not). */
export function ipv6IsFragment(c: Ipv6Chain): boolean {
  return c.fragHdrOff >= 0 && (c.fragOffset !== 0 || c.moreFragments !== 0);
}

/** The fragment that carries the upper-layer header (or the whole packet). */
export function ipv6IsFirstFragment(c: Ipv6Chain): boolean {
  return c.fragOffset === 0;
}

/**
 * Walk the extension headers of the IPv6 packet at `off` (after ipv6Check)
 * up to `end` (exclusive; normally off + 40 + payload length, less for a
 * quoted packet) and fill `c`. Returns WIRE_OK or:
 * - WIRE_IPV6_EXT_TRUNCATED: a header's fixed part or its length runs past `end`;
 * - WIRE_IPV6_HOPOPTS_NOT_FIRST: hop-by-hop options not right after the fixed header;
 * - WIRE_IPV6_FRAGMENT_REPEATED: two fragment headers;
 * - WIRE_IPV6_EXT_TOO_MANY / WIRE_IPV6_EXT_TOO_LONG: past the limits.
 * Any other next header (TCP, UDP, ICMPv6, SCTP, ESP, no next header,
 * unknown) is the upper layer. Never throws.
 */
export function ipv6WalkTo(buf: Uint8Array, off: number, end: number, c: Ipv6Chain): number {
  let nh = buf[off + IPV6_NEXT_HEADER];
  let p = off + IPV6_HEADER_LEN;
  let count = 0;
  let bytes = 0;
  c.fragHdrOff = -1;
  c.fragOffset = 0;
  c.moreFragments = 0;
  c.fragId = 0;
  for (;;) {
    let hl: number;
    if (nh === NEXTHDR_HOP || nh === NEXTHDR_ROUTING || nh === NEXTHDR_DEST) {
      if (nh === NEXTHDR_HOP && count !== 0) return WIRE_IPV6_HOPOPTS_NOT_FIRST;
      if (p + 2 > end) return WIRE_IPV6_EXT_TRUNCATED;
      hl = (buf[p + 1] + 1) << 3;
    } else if (nh === NEXTHDR_AUTH) {
      if (p + 2 > end) return WIRE_IPV6_EXT_TRUNCATED;
      hl = (buf[p + 1] + 2) << 2;
    } else if (nh === NEXTHDR_FRAGMENT) {
      if (c.fragHdrOff >= 0) return WIRE_IPV6_FRAGMENT_REPEATED;
      hl = FRAG_HEADER_LEN;
      if (p + hl > end) return WIRE_IPV6_EXT_TRUNCATED;
      const w = get16(buf, p + FRAG_OFFSET_FLAGS);
      c.fragHdrOff = p;
      c.fragOffset = w & FRAG_OFFSET_MASK;
      c.moreFragments = w & FRAG_MF;
      c.fragId = get32(buf, p + FRAG_IDENT);
    } else {
      break;
    }
    if (p + hl > end) return WIRE_IPV6_EXT_TRUNCATED;
    count++;
    bytes += hl;
    if (count > IPV6_MAX_EXT_HEADERS) return WIRE_IPV6_EXT_TOO_MANY;
    if (bytes > IPV6_MAX_EXT_BYTES) return WIRE_IPV6_EXT_TOO_LONG;
    nh = buf[p];
    p += hl;
    if (c.fragOffset !== 0) break; // a non-first fragment: the rest is data
  }
  c.proto = nh;
  c.l4Off = p;
  c.l4Len = end - p;
  c.extCount = count;
  c.extBytes = bytes;
  return WIRE_OK;
}

/** ipv6WalkTo over the whole payload of a checked packet. */
export function ipv6Walk(buf: Uint8Array, off: number, c: Ipv6Chain): number {
  return ipv6WalkTo(buf, off, off + IPV6_HEADER_LEN + get16(buf, off + IPV6_PAYLOAD_LEN), c);
}

// ---- accessors (unchecked: call after ipv6Check) ----

export function ipv6TrafficClass(buf: Uint8Array, off: number): number {
  return ((buf[off] & 0x0f) << 4) | (buf[off + 1] >>> 4);
}

export function ipv6FlowLabel(buf: Uint8Array, off: number): number {
  return ((buf[off + 1] & 0x0f) << 16) | (buf[off + 2] << 8) | buf[off + 3];
}

export function ipv6PayloadLen(buf: Uint8Array, off: number): number {
  return get16(buf, off + IPV6_PAYLOAD_LEN);
}

/** The whole packet's length: 40 + payload length. */
export function ipv6TotalLen(buf: Uint8Array, off: number): number {
  return IPV6_HEADER_LEN + get16(buf, off + IPV6_PAYLOAD_LEN);
}

export function ipv6NextHeader(buf: Uint8Array, off: number): number {
  return buf[off + IPV6_NEXT_HEADER];
}

export function ipv6HopLimit(buf: Uint8Array, off: number): number {
  return buf[off + IPV6_HOP_LIMIT];
}

/** Word i (0..3) of the source address, unsigned. */
export function ipv6SrcWord(buf: Uint8Array, off: number, i: number): number {
  return get32(buf, off + IPV6_SRC + (i << 2));
}

/** Word i (0..3) of the destination address, unsigned. */
export function ipv6DstWord(buf: Uint8Array, off: number, i: number): number {
  return get32(buf, off + IPV6_DST + (i << 2));
}

/** Copy the 16 address bytes at `at` into out[o..o+4) as words. */
export function readAddr6(buf: Uint8Array, at: number, out: Uint32Array, o: number): void {
  out[o] = get32(buf, at);
  out[o + 1] = get32(buf, at + 4);
  out[o + 2] = get32(buf, at + 8);
  out[o + 3] = get32(buf, at + 12);
}

/** Write the words w[o..o+4) as 16 address bytes at `at`. */
export function writeAddr6(buf: Uint8Array, at: number, w: ArrayLike<number>, o: number): void {
  put32(buf, at, w[o]);
  put32(buf, at + 4, w[o + 1]);
  put32(buf, at + 8, w[o + 2]);
  put32(buf, at + 12, w[o + 3]);
}

export function ipv6SrcInto(buf: Uint8Array, off: number, out: Uint32Array, o: number): void {
  readAddr6(buf, off + IPV6_SRC, out, o);
}

export function ipv6DstInto(buf: Uint8Array, off: number, out: Uint32Array, o: number): void {
  readAddr6(buf, off + IPV6_DST, out, o);
}

export function setIpv6HopLimit(buf: Uint8Array, off: number, hops: number): void {
  buf[off + IPV6_HOP_LIMIT] = hops;
}

/**
 * Write a 40-byte IPv6 header (traffic class 0, flow label 0). Returns 40.
 */
export function writeIpv6Header(
  buf: Uint8Array, off: number, payloadLen: number, nextHeader: number, hopLimit: number,
  src: ArrayLike<number>, srcOff: number, dst: ArrayLike<number>, dstOff: number,
): number {
  buf[off] = 0x60;
  buf[off + 1] = 0;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  put16(buf, off + IPV6_PAYLOAD_LEN, payloadLen);
  buf[off + IPV6_NEXT_HEADER] = nextHeader;
  buf[off + IPV6_HOP_LIMIT] = hopLimit;
  writeAddr6(buf, off + IPV6_SRC, src, srcOff);
  writeAddr6(buf, off + IPV6_DST, dst, dstOff);
  return IPV6_HEADER_LEN;
}

// ---- checksums ----

/**
 * Sum of the IPv6 pseudo-header of the packet at `ipOff` (its src and dst as
 * they are in the buffer, the 32-bit upper-layer length, the protocol),
 * folded, not complemented.
 */
export function pseudoHeaderSum6(buf: Uint8Array, ipOff: number, protocol: number, l4Len: number): number {
  return checksumRaw(buf, ipOff + IPV6_SRC, 32, (l4Len >>> 16) + (l4Len & 0xffff) + protocol);
}

/**
 * The checksum an upper-layer region of `len` bytes at `l4Off` (TCP, UDP,
 * ICMPv6) should carry, its checksum field at l4Off + csumAt taken as zero,
 * with the pseudo-header of the IPv6 packet at `ipOff`. Complemented; the
 * UDP rule (0 → 0xffff) is the caller's.
 */
export function l4Checksum6(buf: Uint8Array, ipOff: number, l4Off: number, len: number, csumAt: number, protocol: number): number {
  let s = pseudoHeaderSum6(buf, ipOff, protocol, len);
  s = checksumRaw(buf, l4Off, csumAt, s);
  s = checksumRaw(buf, l4Off + csumAt + 2, len - csumAt - 2, s);
  return ~s & 0xffff;
}

/** Does the stored upper-layer checksum (field included) verify with the pseudo-header? */
export function l4Checksum6Valid(buf: Uint8Array, ipOff: number, l4Off: number, len: number, protocol: number): boolean {
  return checksumRaw(buf, l4Off, len, pseudoHeaderSum6(buf, ipOff, protocol, len)) === 0xffff;
}

/**
 * The RFC 1624 delta for an address changing from the 16 bytes at
 * buf[at..] to the words w[o..o+4): Σ~old16 + Σnew16, folded. Apply it
 * to any checksum covering the address with csumApplyDelta (once per
 * checksum: the L4 checksum, an ICMPv6 checksum, …). Read before the write.
 */
export function addr6Delta(buf: Uint8Array, at: number, w: ArrayLike<number>, o: number): number {
  let s = 0;
  for (let i = 0; i < 16; i += 2) s += ~((buf[at + i] << 8) | buf[at + i + 1]) & 0xffff;
  for (let k = 0; k < 4; k++) {
    const v = w[o + k];
    s += (v >>> 16) + (v & 0xffff);
  }
  return fold(s);
}

/** HC' = ~(~HC + delta) (RFC 1624 eqn. 3), delta from addr6Delta or a sum of ~old + new words. */
export function csumApplyDelta(check: number, delta: number): number {
  let s = (~check & 0xffff) + delta;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** UDP's csumApplyDelta: 0 ("no checksum") stays 0, a computed 0 is sent as 0xffff. */
export function udpCsumApplyDelta(check: number, delta: number): number {
  if (check === 0) return 0;
  const c = csumApplyDelta(check, delta);
  return c === 0 ? 0xffff : c;
}
