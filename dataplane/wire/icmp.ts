/**
 * ICMPv4 view (RFC 792, RFC 1122 §3.2.2, RFC 1812 §4.3): echo (ident/seq)
 * and error messages (the quoted IPv4 header + at least 8 bytes of its
 * payload at offset 8), and a builder for error messages as kube-proxy's
 * REJECT sends them (icmp-port-unreachable).
 */

import { get16, get32, put16, put32 } from './bytes.ts';
import { csumReplace16, checksumRaw, ipv4HeaderChecksum } from './checksum.ts';
import { WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_ICMP_QUOTE, WIRE_NO_ROOM } from './error.ts';
import { ipv4Check } from './ipv4.ts';

export const ICMP_TYPE = 0;
export const ICMP_CODE = 1;
export const ICMP_CHECKSUM = 2;
/** echo request/reply: identifier (the "port" of an ICMP echo flow) */
export const ICMP_IDENT = 4;
/** echo request/reply: sequence number */
export const ICMP_SEQ = 6;
/** errors: 4 unused bytes (destination unreachable code 4 carries the next-hop MTU in the last two) */
export const ICMP_UNUSED = 4;
export const ICMP_NEXT_HOP_MTU = 6;
/** errors: the quoted IPv4 header (+ ≥ 8 bytes of its payload) starts here */
export const ICMP_QUOTE = 8;
export const ICMP_HEADER_LEN = 8;

// types
export const ICMP_ECHO_REPLY = 0;
export const ICMP_DEST_UNREACH = 3;
export const ICMP_SOURCE_QUENCH = 4;
export const ICMP_REDIRECT = 5;
export const ICMP_ECHO_REQUEST = 8;
export const ICMP_TIME_EXCEEDED = 11;
export const ICMP_PARAMETER_PROBLEM = 12;

// destination unreachable codes
export const ICMP_NET_UNREACH = 0;
export const ICMP_HOST_UNREACH = 1;
export const ICMP_PROTO_UNREACH = 2;
export const ICMP_PORT_UNREACH = 3;
export const ICMP_FRAG_NEEDED = 4;
export const ICMP_NET_PROHIBITED = 9;
export const ICMP_HOST_PROHIBITED = 10;
export const ICMP_ADMIN_PROHIBITED = 13;
// time exceeded codes
export const ICMP_TTL_EXCEEDED = 0;
export const ICMP_FRAG_REASSEMBLY_EXCEEDED = 1;

/** Error messages, the ones that quote an IPv4 header: 3, 4, 5, 11, 12. */
export function isIcmpError(type: number): boolean {
  return type === 3 || type === 11 || type === 12 || type === 4 || type === 5;
}

/** Echo request or reply: the messages whose identifier is NATed like a port. */
export function isIcmpEcho(type: number): boolean {
  return type === ICMP_ECHO_REQUEST || type === ICMP_ECHO_REPLY;
}

/**
 * The checked entry over the `len` bytes of an ICMP message at `off` (the
 * IPv4 payload length): WIRE_TOO_SHORT when len < 8; for error types,
 * WIRE_BAD_ICMP_QUOTE unless a version-4 header with IHL ≥ 5 and 8 bytes
 * after it are quoted. Never throws.
 */
export function icmpCheck(buf: Uint8Array, off: number, len: number): number {
  if (len < ICMP_HEADER_LEN) return WIRE_TOO_SHORT;
  if (!isIcmpError(buf[off])) return WIRE_OK;
  if (len < ICMP_QUOTE + 20) return WIRE_BAD_ICMP_QUOTE;
  const q = buf[off + ICMP_QUOTE];
  const qhlen = (q & 0x0f) << 2;
  if (q >>> 4 !== 4 || qhlen < 20 || ICMP_QUOTE + qhlen + 8 > len) return WIRE_BAD_ICMP_QUOTE;
  return WIRE_OK;
}

export function icmpType(buf: Uint8Array, off: number): number {
  return buf[off + ICMP_TYPE];
}

export function icmpCode(buf: Uint8Array, off: number): number {
  return buf[off + ICMP_CODE];
}

export function icmpChecksum(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMP_CHECKSUM);
}

export function icmpIdent(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMP_IDENT);
}

export function icmpSeq(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMP_SEQ);
}

/** Destination unreachable / fragmentation needed: the next-hop MTU (RFC 1191). */
export function icmpNextHopMtu(buf: Uint8Array, off: number): number {
  return get16(buf, off + ICMP_NEXT_HOP_MTU);
}

/** Offset of the quoted IPv4 header of an error message at `off`. */
export function icmpQuoteOff(off: number): number {
  return off + ICMP_QUOTE;
}

/**
 * For an ICMP error inside the IPv4 packet at `ipOff` (checked with
 * ipv4Check + icmpCheck): the offset of the quoted IPv4 header. Its tuple
 * reads with the ipv4/tcp/udp accessors (ports at ipv4PayloadOff of it);
 * its total length is the original datagram's, not what was quoted.
 */
export function icmpQuotedIpOff(buf: Uint8Array, ipOff: number): number {
  return ipOff + ((buf[ipOff] & 0x0f) << 2) + ICMP_QUOTE;
}

/** Set the echo identifier; the ICMP checksum is updated incrementally. */
export function setIcmpIdent(buf: Uint8Array, off: number, ident: number): void {
  const old = get16(buf, off + ICMP_IDENT);
  put16(buf, off + ICMP_IDENT, ident);
  put16(buf, off + ICMP_CHECKSUM, csumReplace16(get16(buf, off + ICMP_CHECKSUM), old, ident));
}

/** The checksum the ICMP message inside the IPv4 packet at `ipOff` should carry (whole IPv4 payload, no pseudo-header). */
export function icmpChecksumCompute(buf: Uint8Array, ipOff: number): number {
  const hlen = (buf[ipOff] & 0x0f) << 2;
  const off = ipOff + hlen;
  const len = get16(buf, ipOff + 2) - hlen;
  const s = checksumRaw(buf, off, ICMP_CHECKSUM, 0);
  return ~checksumRaw(buf, off + ICMP_CHECKSUM + 2, len - ICMP_CHECKSUM - 2, s) & 0xffff;
}

/** Recompute and store the ICMP checksum of the packet at `ipOff` in full. */
export function icmpFillChecksum(buf: Uint8Array, ipOff: number): void {
  put16(buf, ipOff + ((buf[ipOff] & 0x0f) << 2) + ICMP_CHECKSUM, icmpChecksumCompute(buf, ipOff));
}

/** Does the ICMP checksum of the packet at `ipOff` verify? */
export function icmpChecksumValid(buf: Uint8Array, ipOff: number): boolean {
  const hlen = (buf[ipOff] & 0x0f) << 2;
  return checksumRaw(buf, ipOff + hlen, get16(buf, ipOff + 2) - hlen, 0) === 0xffff;
}

/** Write an 8-byte echo header (type ICMP_ECHO_REQUEST or ICMP_ECHO_REPLY), checksum 0. Returns 8. */
export function writeIcmpEchoHeader(buf: Uint8Array, off: number, type: number, ident: number, seq: number): number {
  buf[off + ICMP_TYPE] = type;
  buf[off + ICMP_CODE] = 0;
  put16(buf, off + ICMP_CHECKSUM, 0);
  put16(buf, off + ICMP_IDENT, ident);
  put16(buf, off + ICMP_SEQ, seq);
  return ICMP_HEADER_LEN;
}

/**
 * May an ICMP error be sent about the (checked) IPv4 packet at `off`?
 * RFC 1122 §3.2.2 / RFC 1812 §4.3.2.7: not about an ICMP error, nor a
 * non-first fragment, nor a source that is not one host (0.0.0.0, limited
 * broadcast, multicast, class E, loopback), nor a multicast or limited-
 * broadcast destination. (Subnet broadcasts are not known here.)
 */
export function icmpErrorPermitted(buf: Uint8Array, off: number, len: number): boolean {
  if ((get16(buf, off + 6) & 0x1fff) !== 0) return false;
  const src = get32(buf, off + 12);
  const dst = get32(buf, off + 16);
  const srcTop = src >>> 24;
  if (src === 0 || srcTop >= 224 || srcTop === 127) return false;
  if (dst >>> 28 === 0xe || dst === 0xffffffff) return false;
  if (buf[off + 9] === 1) {
    const hlen = (buf[off] & 0x0f) << 2;
    // an ICMP message too short to show its type is not answered either
    if (get16(buf, off + 2) - hlen < 1 || hlen >= len) return false;
    if (isIcmpError(buf[off + hlen])) return false;
  }
  return true;
}

/**
 * Build a complete IPv4 + ICMP error packet at `out[outOff]` about the
 * packet `orig[origOff .. origOff+origLen)`: type/code as given (e.g.
 * ICMP_DEST_UNREACH / ICMP_PORT_UNREACH), from `srcAddr` to the original
 * source, TTL 64, TOS = original TOS precedence cleared | 0xc0 (internet
 * control, as Linux's icmp_send), ident 0, no DF; the body quotes the
 * original IPv4 header (options included) and the first 8 bytes of its
 * payload (fewer if the datagram has fewer), per RFC 792. `mtu` goes to the
 * next-hop MTU field (for ICMP_FRAG_NEEDED; 0 otherwise). Both checksums
 * are filled. `out` may be `orig` (building in place, or at another
 * offset of the same buffer); two different views over overlapping memory
 * are not supported.
 *
 * Returns the number of bytes written, or a negative wire error: the
 * original's ipv4Check code, or WIRE_NO_ROOM when `out` has no room. Whether
 * an error may be sent at all is icmpErrorPermitted's question.
 */
export function buildIcmpError(
  out: Uint8Array, outOff: number, orig: Uint8Array, origOff: number, origLen: number,
  type: number, code: number, srcAddr: number, mtu = 0,
): number {
  const chk = ipv4Check(orig, origOff, origLen);
  if (chk !== WIRE_OK) return chk;
  const ohlen = (orig[origOff] & 0x0f) << 2;
  const ototal = get16(orig, origOff + 2);
  const quoteLen = Math.min(ohlen + 8, ototal);
  const total = 20 + ICMP_HEADER_LEN + quoteLen;
  if (outOff < 0 || outOff + total > out.length) return WIRE_NO_ROOM;
  const tos = (orig[origOff + 1] & 0x1e) | 0xc0;
  const origSrc = get32(orig, origOff + 12);
  const io = outOff + 20;
  // the quote first, so that building in place (out === orig) reads it before the headers overwrite it
  if (orig === out) {
    out.copyWithin(io + ICMP_QUOTE, origOff, origOff + quoteLen);
  } else {
    for (let i = 0; i < quoteLen; i++) out[io + ICMP_QUOTE + i] = orig[origOff + i];
  }
  // outer IPv4 header
  out[outOff] = 0x45;
  out[outOff + 1] = tos;
  put16(out, outOff + 2, total);
  put16(out, outOff + 4, 0);
  put16(out, outOff + 6, 0);
  out[outOff + 8] = 64;
  out[outOff + 9] = 1;
  put16(out, outOff + 10, 0);
  put32(out, outOff + 12, srcAddr);
  put32(out, outOff + 16, origSrc);
  put16(out, outOff + 10, ipv4HeaderChecksum(out, outOff));
  // ICMP header
  out[io] = type;
  out[io + 1] = code;
  put16(out, io + 2, 0);
  put16(out, io + 4, 0);
  put16(out, io + 6, mtu);
  put16(out, io + 2, ~checksumRaw(out, io, ICMP_HEADER_LEN + quoteLen, 0) & 0xffff);
  return total;
}
