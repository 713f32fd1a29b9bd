/**
 * IPv4 header view (RFC 791), in the manner of smoltcp's `wire::ipv4` and
 * gVisor's `header.IPv4`: named field offsets, one checked entry point, then
 * unchecked accessors over (buf, off). Addresses are unsigned 32-bit numbers
 * (10.0.0.1 = 0x0a000001, as in dataplane/addr.ts). Options (IHL > 5) are
 * passed through untouched.
 */

import { get16, get32, put16, put32 } from './bytes.ts';
import { csumReplace16, csumReplace32, checksumRaw, ipv4HeaderChecksum } from './checksum.ts';
import {
  WIRE_OK, WIRE_TOO_SHORT, WIRE_NOT_IPV4, WIRE_BAD_IHL, WIRE_BAD_TOTAL_LENGTH, WIRE_BAD_HEADER_CHECKSUM,
} from './error.ts';

// ---- field offsets ----
export const IPV4_VER_IHL = 0;
export const IPV4_TOS = 1;
export const IPV4_TOTAL_LEN = 2;
export const IPV4_IDENT = 4;
export const IPV4_FLAGS_FRAG = 6;
export const IPV4_TTL = 8;
export const IPV4_PROTOCOL = 9;
export const IPV4_CHECKSUM = 10;
export const IPV4_SRC = 12;
export const IPV4_DST = 16;
/** header length without options */
export const IPV4_MIN_HEADER_LEN = 20;
/** header length with the most options (IHL 15) */
export const IPV4_MAX_HEADER_LEN = 60;

// ---- flags / fragment word (the 16 bits at IPV4_FLAGS_FRAG) ----
export const IPV4_FLAG_DF = 0x4000;
export const IPV4_FLAG_MF = 0x2000;
/** fragment offset in 8-byte units */
export const IPV4_FRAG_OFFSET_MASK = 0x1fff;

export const IP_VERSION_4 = 4;
export const IP_VERSION_6 = 6;

/** The version nibble of the first byte, or -1 when the buffer is empty. */
export function ipVersion(buf: Uint8Array, off: number, len: number): number {
  return len < 1 ? -1 : buf[off] >>> 4;
}

/** Version 6: the pipeline passes such packets through and counts them. */
export function isIpv6(buf: Uint8Array, off: number, len: number): boolean {
  return len >= 1 && buf[off] >>> 4 === IP_VERSION_6;
}

/**
 * The checked entry: 0 (WIRE_OK) when `len` bytes at `off` hold a well-formed
 * IPv4 header whose total length fits in the buffer, else a negative code:
 * - WIRE_TOO_SHORT: len < 20, or len < IHL*4;
 * - WIRE_NOT_IPV4: version is not 4;
 * - WIRE_BAD_IHL: IHL < 5;
 * - WIRE_BAD_TOTAL_LENGTH: total length < IHL*4 or > len (bytes past the
 *   total length, e.g. link padding, are allowed and ignored);
 * - WIRE_BAD_HEADER_CHECKSUM: only with `verifyChecksum`.
 * Never throws, whatever the bytes (off + len must lie within buf).
 */
export function ipv4Check(buf: Uint8Array, off: number, len: number, verifyChecksum = false): number {
  if (len < IPV4_MIN_HEADER_LEN) return WIRE_TOO_SHORT;
  const vihl = buf[off];
  if (vihl >>> 4 !== IP_VERSION_4) return WIRE_NOT_IPV4;
  const hlen = (vihl & 0x0f) << 2;
  if (hlen < IPV4_MIN_HEADER_LEN) return WIRE_BAD_IHL;
  if (hlen > len) return WIRE_TOO_SHORT;
  const total = get16(buf, off + IPV4_TOTAL_LEN);
  if (total < hlen || total > len) return WIRE_BAD_TOTAL_LENGTH;
  if (verifyChecksum && checksumRaw(buf, off, hlen, 0) !== 0xffff) return WIRE_BAD_HEADER_CHECKSUM;
  return WIRE_OK;
}

// ---- accessors (unchecked: call after ipv4Check) ----

/** IHL in 32-bit words. */
export function ipv4Ihl(buf: Uint8Array, off: number): number {
  return buf[off] & 0x0f;
}

/** Header length in bytes (IHL*4), options included. */
export function ipv4HeaderLen(buf: Uint8Array, off: number): number {
  return (buf[off] & 0x0f) << 2;
}

export function ipv4Tos(buf: Uint8Array, off: number): number {
  return buf[off + IPV4_TOS];
}

export function ipv4TotalLen(buf: Uint8Array, off: number): number {
  return get16(buf, off + IPV4_TOTAL_LEN);
}

export function ipv4Ident(buf: Uint8Array, off: number): number {
  return get16(buf, off + IPV4_IDENT);
}

/** The fragment offset in bytes (the field is in 8-byte units). */
export function ipv4FragOffset(buf: Uint8Array, off: number): number {
  return (get16(buf, off + IPV4_FLAGS_FRAG) & IPV4_FRAG_OFFSET_MASK) << 3;
}

export function ipv4MoreFragments(buf: Uint8Array, off: number): boolean {
  return (buf[off + IPV4_FLAGS_FRAG] & 0x20) !== 0;
}

export function ipv4DontFragment(buf: Uint8Array, off: number): boolean {
  return (buf[off + IPV4_FLAGS_FRAG] & 0x40) !== 0;
}

/** Part of a fragmented datagram: MF set or a non-zero offset. */
export function ipv4IsFragment(buf: Uint8Array, off: number): boolean {
  return (get16(buf, off + IPV4_FLAGS_FRAG) & (IPV4_FLAG_MF | IPV4_FRAG_OFFSET_MASK)) !== 0;
}

/** Offset 0: the whole datagram, or the fragment that carries the L4 header. */
export function ipv4IsFirstFragment(buf: Uint8Array, off: number): boolean {
  return (get16(buf, off + IPV4_FLAGS_FRAG) & IPV4_FRAG_OFFSET_MASK) === 0;
}

export function ipv4Ttl(buf: Uint8Array, off: number): number {
  return buf[off + IPV4_TTL];
}

export function ipv4Protocol(buf: Uint8Array, off: number): number {
  return buf[off + IPV4_PROTOCOL];
}

export function ipv4Checksum(buf: Uint8Array, off: number): number {
  return get16(buf, off + IPV4_CHECKSUM);
}

export function ipv4Src(buf: Uint8Array, off: number): number {
  return get32(buf, off + IPV4_SRC);
}

export function ipv4Dst(buf: Uint8Array, off: number): number {
  return get32(buf, off + IPV4_DST);
}

/** Offset of the payload (the L4 header): off + IHL*4. */
export function ipv4PayloadOff(buf: Uint8Array, off: number): number {
  return off + ((buf[off] & 0x0f) << 2);
}

/** Payload length: total length - IHL*4. */
export function ipv4PayloadLen(buf: Uint8Array, off: number): number {
  return get16(buf, off + IPV4_TOTAL_LEN) - ((buf[off] & 0x0f) << 2);
}

/** Does the stored header checksum verify? */
export function ipv4ChecksumValid(buf: Uint8Array, off: number): boolean {
  return checksumRaw(buf, off, (buf[off] & 0x0f) << 2, 0) === 0xffff;
}

// ---- setters ----

/** Set the source address; the header checksum is updated incrementally (RFC 1624). L4 checksums are not touched. */
export function setIpv4Src(buf: Uint8Array, off: number, addr: number): void {
  const o = off + IPV4_SRC;
  const old = get32(buf, o);
  put32(buf, o, addr);
  put16(buf, off + IPV4_CHECKSUM, csumReplace32(get16(buf, off + IPV4_CHECKSUM), old, addr >>> 0));
}

/** Set the destination address; the header checksum is updated incrementally. L4 checksums are not touched. */
export function setIpv4Dst(buf: Uint8Array, off: number, addr: number): void {
  const o = off + IPV4_DST;
  const old = get32(buf, o);
  put32(buf, o, addr);
  put16(buf, off + IPV4_CHECKSUM, csumReplace32(get16(buf, off + IPV4_CHECKSUM), old, addr >>> 0));
}

/** Set the TTL; the header checksum is updated incrementally (TTL shares a word with the protocol). */
export function setIpv4Ttl(buf: Uint8Array, off: number, ttl: number): void {
  const o = off + IPV4_TTL;
  const oldWord = get16(buf, o);
  buf[o] = ttl;
  put16(buf, off + IPV4_CHECKSUM, csumReplace16(get16(buf, off + IPV4_CHECKSUM), oldWord, get16(buf, o)));
}

/** Recompute and store the header checksum in full. */
export function ipv4FillChecksum(buf: Uint8Array, off: number): void {
  put16(buf, off + IPV4_CHECKSUM, ipv4HeaderChecksum(buf, off));
}

/**
 * Write a 20-byte IPv4 header (no options, TOS 0) with its checksum filled.
 * `flagsFrag` is the raw 16-bit flags/fragment word (IPV4_FLAG_DF, …).
 * Returns 20, the header length.
 */
export function writeIpv4Header(
  buf: Uint8Array, off: number, totalLen: number, ident: number, flagsFrag: number,
  ttl: number, protocol: number, src: number, dst: number,
): number {
  buf[off] = 0x45;
  buf[off + IPV4_TOS] = 0;
  put16(buf, off + IPV4_TOTAL_LEN, totalLen);
  put16(buf, off + IPV4_IDENT, ident);
  put16(buf, off + IPV4_FLAGS_FRAG, flagsFrag);
  buf[off + IPV4_TTL] = ttl;
  buf[off + IPV4_PROTOCOL] = protocol;
  put16(buf, off + IPV4_CHECKSUM, 0);
  put32(buf, off + IPV4_SRC, src);
  put32(buf, off + IPV4_DST, dst);
  put16(buf, off + IPV4_CHECKSUM, ipv4HeaderChecksum(buf, off));
  return IPV4_MIN_HEADER_LEN;
}
