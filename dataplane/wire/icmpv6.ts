/**
 * ICMPv6 view (RFC 4443): echo (identifier/sequence, NATed like a port) and
 * the four error messages, which carry as much of the offending packet as
 * fits in the minimum MTU (the quote starts at offset 8). The checksum
 * covers the IPv6 pseudo-header (next header 58), unlike ICMPv4's. A
 * builder makes errors as Linux's icmp6_send does them (kube-proxy's REJECT:
 * destination unreachable / port unreachable).
 */

import { get16, get32, put16, put32 } from './bytes.ts';
import { checksumRaw } from './checksum.ts';
import { WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_ICMPV6_QUOTE, WIRE_NO_ROOM } from './error.ts';
import {
  IPV6_HEADER_LEN, IPV6_MIN_MTU, IPV6_PAYLOAD_LEN, IPV6_SRC, IPV6_DST, NEXTHDR_ICMPV6,
  ipv6Check, ipv6WalkTo, pseudoHeaderSum6, writeAddr6, type Ipv6Chain,
} from './ipv6.ts';

export const ICMPV6_TYPE = 0;
export const ICMPV6_CODE = 1;
export const ICMPV6_CHECKSUM = 2;
/** echo: identifier */
export const ICMPV6_IDENT = 4;
/** echo: sequence number */
export const ICMPV6_SEQ = 6;
/** errors: 32 bits: the MTU (packet too big), the pointer (parameter problem), unused otherwise */
export const ICMPV6_PARAM = 4;
/** errors: the quoted packet starts here */
export const ICMPV6_QUOTE = 8;
export const ICMPV6_HEADER_LEN = 8;

// types
export const ICMPV6_DEST_UNREACH = 1;
export const ICMPV6_PKT_TOOBIG = 2;
export const ICMPV6_TIME_EXCEED = 3;
export const ICMPV6_PARAMPROB = 4;
export const ICMPV6_ECHO_REQUEST = 128;
export const ICMPV6_ECHO_REPLY = 129;

// destination unreachable codes
export const ICMPV6_NOROUTE = 0;
export const ICMPV6_ADM_PROHIBITED = 1;
export const ICMPV6_NOT_NEIGHBOUR = 2;
export const ICMPV6_ADDR_UNREACH = 3;
export const ICMPV6_PORT_UNREACH = 4;
export const ICMPV6_POLICY_FAIL = 5;
export const ICMPV6_REJECT_ROUTE = 6;
// time exceeded codes
export const ICMPV6_EXC_HOPLIMIT = 0;
export const ICMPV6_EXC_FRAGTIME = 1;
// parameter problem codes
export const ICMPV6_HDR_FIELD = 0;
export const ICMPV6_UNK_NEXTHDR = 1;
export const ICMPV6_UNK_OPTION = 2;

/** Error messages (types 0..127, RFC 4443 §2.1); the four known ones quote a packet. */
export function isIcmpv6Error(type: number): boolean {
  return type < 128;
}

/** The errors that quote the offending packet: 1, 2, 3, 4. */
export function isIcmpv6QuotingError(type: number): boolean {
  return type >= 1 && type <= 4;
}

export function isIcmpv6Echo(type: number): boolean {
  return type === ICMPV6_ECHO_REQUEST || type === ICMPV6_ECHO_REPLY;
}

/**
 * The checked entry over the `len` bytes of an ICMPv6 message at `off`:
 * WIRE_TOO_SHORT when len < 8; for the quoting errors WIRE_BAD_ICMPV6_QUOTE
 * unless a version-6 header is quoted whose extension headers, as far as
 * quoted, walk cleanly to the upper layer, with 8 bytes of it quoted (the
 * ports) unless the quoted packet is a non-first fragment. `q`, when given,
 * is filled with the quoted packet's walk (its offsets are absolute). Never throws.
 */
export function icmpv6Check(buf: Uint8Array, off: number, len: number, q?: Ipv6Chain): number {
  if (len < ICMPV6_HEADER_LEN) return WIRE_TOO_SHORT;
  if (!isIcmpv6QuotingError(buf[off])) return WIRE_OK;
  const qo = off + ICMPV6_QUOTE;
  const qlen = len - ICMPV6_QUOTE;
  if (qlen < IPV6_HEADER_LEN || buf[qo] >>> 4 !== 6) return WIRE_BAD_ICMPV6_QUOTE;
  if (q === undefined) return WIRE_OK;
  const end = Math.min(off + len, qo + IPV6_HEADER_LEN + get16(buf, qo + IPV6_PAYLOAD_LEN));
  if (ipv6WalkTo(buf, qo, end, q) !== WIRE_OK) return WIRE_BAD_ICMPV6_QUOTE;
  if (q.fragOffset === 0 && q.l4Len < 8) return WIRE_BAD_ICMPV6_QUOTE;
  return WIRE_OK;
}

export function icmpv6Type(buf: Uint8Array, off: number): number {
  return buf[off + ICMPV6_TYPE];
}

export function icmpv6Code(buf: Uint8Array, off: number): number {
  return buf[off + ICMPV6_CODE];
}

export function icmpv6Checksum(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMPV6_CHECKSUM);
}

export function icmpv6Ident(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMPV6_IDENT);
}

export function icmpv6Seq(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMPV6_SEQ);
}

/** Packet too big: the MTU; parameter problem: the pointer (32 bits, unsigned). */
export function icmpv6Param(buf: Uint8Array, off: number): number {
  return get32(buf, off + ICMPV6_PARAM);
}

/** The checksum the ICMPv6 message of `len` bytes at `l4Off` in the IPv6 packet at `ipOff` should carry. */
export function icmpv6ChecksumCompute(buf: Uint8Array, ipOff: number, l4Off: number, len: number): number {
  let s = pseudoHeaderSum6(buf, ipOff, NEXTHDR_ICMPV6, len);
  s = checksumRaw(buf, l4Off, ICMPV6_CHECKSUM, s);
  return ~checksumRaw(buf, l4Off + ICMPV6_CHECKSUM + 2, len - ICMPV6_CHECKSUM - 2, s) & 0xffff;
}

export function icmpv6FillChecksum(buf: Uint8Array, ipOff: number, l4Off: number, len: number): void {
  put16(buf, l4Off + ICMPV6_CHECKSUM, icmpv6ChecksumCompute(buf, ipOff, l4Off, len));
}

export function icmpv6ChecksumValid(buf: Uint8Array, ipOff: number, l4Off: number, len: number): boolean {
  return checksumRaw(buf, l4Off, len, pseudoHeaderSum6(buf, ipOff, NEXTHDR_ICMPV6, len)) === 0xffff;
}

/** Write an 8-byte echo header (ICMPV6_ECHO_REQUEST / _REPLY), checksum 0. Returns 8. */
export function writeIcmpv6EchoHeader(buf: Uint8Array, off: number, type: number, ident: number, seq: number): number {
  buf[off + ICMPV6_TYPE] = type;
  buf[off + ICMPV6_CODE] = 0;
  put16(buf, off + ICMPV6_CHECKSUM, 0);
  put16(buf, off + ICMPV6_IDENT, ident);
  put16(buf, off + ICMPV6_SEQ, seq);
  return ICMPV6_HEADER_LEN;
}

function isMulticast6(buf: Uint8Array, at: number): boolean {
  return buf[at] === 0xff;
}

function isUnspecified6(buf: Uint8Array, at: number): boolean {
  return (get32(buf, at) | get32(buf, at + 4) | get32(buf, at + 8) | get32(buf, at + 12)) === 0;
}

/**
 * May an ICMPv6 error of `type` be sent about the walked IPv6 packet at
 * `off` (RFC 4443 §2.4 (e))? Not about an ICMPv6 error message, nor from a
 * packet whose source is unspecified or multicast, nor to a multicast
 * destination (except packet too big and parameter problem code 2, which
 * the caller asks with `type` ICMPV6_PKT_TOOBIG).
 */
export function icmpv6ErrorPermitted(buf: Uint8Array, off: number, c: Ipv6Chain, type: number): boolean {
  if (isUnspecified6(buf, off + IPV6_SRC) || isMulticast6(buf, off + IPV6_SRC)) return false;
  if (type !== ICMPV6_PKT_TOOBIG && isMulticast6(buf, off + IPV6_DST)) return false;
  if (c.proto === NEXTHDR_ICMPV6 && c.fragOffset === 0) {
    if (c.l4Len < 1) return false;
    if (isIcmpv6Error(buf[c.l4Off])) return false;
  }
  return true;
}

/**
 * Build a complete IPv6 + ICMPv6 error at `out[outOff]` about the packet
 * `orig[origOff .. origOff+origLen)`: type/code as given (e.g.
 * ICMPV6_DEST_UNREACH / ICMPV6_PORT_UNREACH), `param` in the 32-bit field
 * (the MTU for packet too big, the pointer for parameter problem), from
 * src[srcOff..+4) to the original source, hop limit 64, traffic class 0.
 * The body quotes as much of the original packet as keeps the error within
 * 1280 bytes (RFC 4443 §2.4 (c)), or within `maxTotal` when smaller (a
 * reply buffer's size). The checksum is filled. `out` may be
 * `orig` (in place); two views over overlapping memory are not supported.
 * Returns the bytes written, or a negative wire error (the original's
 * ipv6Check code, WIRE_NO_ROOM).
 */
export function buildIcmpv6Error(
  out: Uint8Array, outOff: number, orig: Uint8Array, origOff: number, origLen: number,
  type: number, code: number, src: ArrayLike<number>, srcOff: number, param = 0, maxTotal = IPV6_MIN_MTU,
): number {
  const chk = ipv6Check(orig, origOff, origLen);
  if (chk !== WIRE_OK) return chk;
  const ototal = IPV6_HEADER_LEN + get16(orig, origOff + IPV6_PAYLOAD_LEN);
  const quoteLen = Math.min(ototal, Math.min(maxTotal, IPV6_MIN_MTU) - IPV6_HEADER_LEN - ICMPV6_HEADER_LEN);
  if (quoteLen < IPV6_HEADER_LEN) return WIRE_NO_ROOM;
  const total = IPV6_HEADER_LEN + ICMPV6_HEADER_LEN + quoteLen;
  if (outOff < 0 || outOff + total > out.length) return WIRE_NO_ROOM;
  const io = outOff + IPV6_HEADER_LEN;
  const qo = io + ICMPV6_QUOTE;
  if (orig === out) out.copyWithin(qo, origOff, origOff + quoteLen);
  else for (let i = 0; i < quoteLen; i++) out[qo + i] = orig[origOff + i];
  // the outer header; the destination is the quoted source (read from the copy)
  out[outOff] = 0x60;
  out[outOff + 1] = 0;
  out[outOff + 2] = 0;
  out[outOff + 3] = 0;
  put16(out, outOff + IPV6_PAYLOAD_LEN, ICMPV6_HEADER_LEN + quoteLen);
  out[outOff + 6] = NEXTHDR_ICMPV6;
  out[outOff + 7] = 64;
  writeAddr6(out, outOff + IPV6_SRC, src, srcOff);
  for (let i = 0; i < 16; i++) out[outOff + IPV6_DST + i] = out[qo + IPV6_SRC + i];
  out[io] = type;
  out[io + 1] = code;
  put16(out, io + ICMPV6_CHECKSUM, 0);
  put32(out, io + ICMPV6_PARAM, param);
  icmpv6FillChecksum(out, outOff, io, ICMPV6_HEADER_LEN + quoteLen);
  return total;
}
