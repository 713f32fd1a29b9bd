/**
 * UDP header view (RFC 768). A checksum of 0 means "no checksum"; a computed
 * checksum of 0 is sent as 0xffff. Setters keep a 0 checksum at 0.
 */

import { get16, get32, put16 } from './bytes.ts';
import { udpCsumReplace16, l4Checksum, checksumRaw, pseudoHeaderSum } from './checksum.ts';
import { WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_UDP_LENGTH } from './error.ts';

export const UDP_SRC_PORT = 0;
export const UDP_DST_PORT = 2;
export const UDP_LENGTH = 4;
export const UDP_CHECKSUM = 6;
export const UDP_HEADER_LEN = 8;

/**
 * The checked entry over the `len` bytes of a datagram at `off` (the IPv4
 * payload length): WIRE_TOO_SHORT when len < 8, WIRE_BAD_UDP_LENGTH when the
 * length field is < 8 or > len. Never throws.
 */
export function udpCheck(buf: Uint8Array, off: number, len: number): number {
  if (len < UDP_HEADER_LEN) return WIRE_TOO_SHORT;
  const l = get16(buf, off + UDP_LENGTH);
  if (l < UDP_HEADER_LEN || l > len) return WIRE_BAD_UDP_LENGTH;
  return WIRE_OK;
}

export function udpSrcPort(buf: Uint8Array, off: number): number {
  return get16(buf, off + UDP_SRC_PORT);
}

export function udpDstPort(buf: Uint8Array, off: number): number {
  return get16(buf, off + UDP_DST_PORT);
}

/** The length field: header + payload. */
export function udpLength(buf: Uint8Array, off: number): number {
  return get16(buf, off + UDP_LENGTH);
}

export function udpChecksum(buf: Uint8Array, off: number): number {
  return get16(buf, off + UDP_CHECKSUM);
}

/** Set the source port; a non-zero checksum is updated incrementally, 0 stays 0. */
export function setUdpSrcPort(buf: Uint8Array, off: number, port: number): void {
  const old = get16(buf, off + UDP_SRC_PORT);
  put16(buf, off + UDP_SRC_PORT, port);
  put16(buf, off + UDP_CHECKSUM, udpCsumReplace16(get16(buf, off + UDP_CHECKSUM), old, port));
}

/** Set the destination port; a non-zero checksum is updated incrementally, 0 stays 0. */
export function setUdpDstPort(buf: Uint8Array, off: number, port: number): void {
  const old = get16(buf, off + UDP_DST_PORT);
  put16(buf, off + UDP_DST_PORT, port);
  put16(buf, off + UDP_CHECKSUM, udpCsumReplace16(get16(buf, off + UDP_CHECKSUM), old, port));
}

/**
 * The checksum the UDP datagram inside the IPv4 packet at `ipOff` should
 * carry, over its length field's bytes with the pseudo-header; a computed 0
 * is returned as 0xffff.
 */
export function udpChecksumCompute(buf: Uint8Array, ipOff: number): number {
  const off = ipOff + ((buf[ipOff] & 0x0f) << 2);
  const c = l4Checksum(buf, off, get16(buf, off + UDP_LENGTH), UDP_CHECKSUM, get32(buf, ipOff + 12), get32(buf, ipOff + 16), 17);
  return c === 0 ? 0xffff : c;
}

/** Recompute and store the UDP checksum of the packet at `ipOff` in full (never stores 0). */
export function udpFillChecksum(buf: Uint8Array, ipOff: number): void {
  put16(buf, ipOff + ((buf[ipOff] & 0x0f) << 2) + UDP_CHECKSUM, udpChecksumCompute(buf, ipOff));
}

/** Does the UDP checksum of the packet at `ipOff` verify? A 0 checksum ("none") counts as valid. */
export function udpChecksumValid(buf: Uint8Array, ipOff: number): boolean {
  const off = ipOff + ((buf[ipOff] & 0x0f) << 2);
  if (get16(buf, off + UDP_CHECKSUM) === 0) return true;
  const len = get16(buf, off + UDP_LENGTH);
  const ps = pseudoHeaderSum(get32(buf, ipOff + 12), get32(buf, ipOff + 16), 17, len);
  return checksumRaw(buf, off, len, ps) === 0xffff;
}

/** Write an 8-byte UDP header with checksum 0 (fill it with udpFillChecksum, or leave 0 for none). Returns 8. */
export function writeUdpHeader(buf: Uint8Array, off: number, srcPort: number, dstPort: number, length: number): number {
  put16(buf, off + UDP_SRC_PORT, srcPort);
  put16(buf, off + UDP_DST_PORT, dstPort);
  put16(buf, off + UDP_LENGTH, length);
  put16(buf, off + UDP_CHECKSUM, 0);
  return UDP_HEADER_LEN;
}
