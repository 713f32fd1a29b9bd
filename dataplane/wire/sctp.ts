/**
 * SCTP common header view (RFC 9260 §3.1). The checksum is CRC32c over the
 * whole SCTP packet with the checksum field taken as zero, no pseudo-header,
 * stored least significant byte first (RFC 9260 App. A). Port setters leave
 * the CRC stale: call sctpFillChecksum afterwards (rewriteSrc/rewriteDst in
 * rewrite.ts do).
 */

import { get16, get32, put16 } from './bytes.ts';
import { crc32cUpdate, crc32cZeros } from './checksum.ts';
import { WIRE_OK, WIRE_TOO_SHORT } from './error.ts';

export const SCTP_SRC_PORT = 0;
export const SCTP_DST_PORT = 2;
export const SCTP_VERIFICATION_TAG = 4;
export const SCTP_CHECKSUM = 8;
export const SCTP_COMMON_HEADER_LEN = 12;
/** first chunk's type byte (when there is one) */
export const SCTP_FIRST_CHUNK_TYPE = 12;

export const SCTP_CHUNK_DATA = 0;
export const SCTP_CHUNK_INIT = 1;
export const SCTP_CHUNK_INIT_ACK = 2;
export const SCTP_CHUNK_SACK = 3;
export const SCTP_CHUNK_HEARTBEAT = 4;
export const SCTP_CHUNK_HEARTBEAT_ACK = 5;
export const SCTP_CHUNK_ABORT = 6;
export const SCTP_CHUNK_SHUTDOWN = 7;
export const SCTP_CHUNK_SHUTDOWN_ACK = 8;
export const SCTP_CHUNK_ERROR = 9;
export const SCTP_CHUNK_COOKIE_ECHO = 10;
export const SCTP_CHUNK_COOKIE_ACK = 11;
export const SCTP_CHUNK_SHUTDOWN_COMPLETE = 14;

/** The checked entry: WIRE_TOO_SHORT when len < 12. Never throws. */
export function sctpCheck(buf: Uint8Array, off: number, len: number): number {
  return len < SCTP_COMMON_HEADER_LEN ? WIRE_TOO_SHORT : WIRE_OK;
}

export function sctpSrcPort(buf: Uint8Array, off: number): number {
  return get16(buf, off + SCTP_SRC_PORT);
}

export function sctpDstPort(buf: Uint8Array, off: number): number {
  return get16(buf, off + SCTP_DST_PORT);
}

export function sctpVerificationTag(buf: Uint8Array, off: number): number {
  return get32(buf, off + SCTP_VERIFICATION_TAG);
}

/** The stored CRC32c (read least significant byte first), unsigned. */
export function sctpChecksum(buf: Uint8Array, off: number): number {
  const o = off + SCTP_CHECKSUM;
  return (buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)) >>> 0;
}

/** Type of the first chunk, or -1 when the packet has no chunk bytes. */
export function sctpFirstChunkType(buf: Uint8Array, off: number, len: number): number {
  return len > SCTP_FIRST_CHUNK_TYPE ? buf[off + SCTP_FIRST_CHUNK_TYPE] : -1;
}

/** Set the source port (CRC left stale). */
export function setSctpSrcPort(buf: Uint8Array, off: number, port: number): void {
  put16(buf, off + SCTP_SRC_PORT, port);
}

/** Set the destination port (CRC left stale). */
export function setSctpDstPort(buf: Uint8Array, off: number, port: number): void {
  put16(buf, off + SCTP_DST_PORT, port);
}

/** CRC32c of the `len`-byte SCTP packet at `off`, checksum field taken as zero. */
export function sctpChecksumCompute(buf: Uint8Array, off: number, len: number): number {
  let c = crc32cUpdate(0xffffffff, buf, off, SCTP_CHECKSUM);
  c = crc32cZeros(c, 4);
  c = crc32cUpdate(c, buf, off + SCTP_COMMON_HEADER_LEN, len - SCTP_COMMON_HEADER_LEN);
  return ~c >>> 0;
}

/** Store the CRC32c of the `len`-byte SCTP packet at `off`. */
export function sctpFillChecksumAt(buf: Uint8Array, off: number, len: number): void {
  const c = sctpChecksumCompute(buf, off, len);
  const o = off + SCTP_CHECKSUM;
  buf[o] = c;
  buf[o + 1] = c >>> 8;
  buf[o + 2] = c >>> 16;
  buf[o + 3] = c >>> 24;
}

/** Recompute and store the CRC32c of the SCTP packet inside the IPv4 packet at `ipOff` (the whole IPv4 payload). */
export function sctpFillChecksum(buf: Uint8Array, ipOff: number): void {
  const hlen = (buf[ipOff] & 0x0f) << 2;
  sctpFillChecksumAt(buf, ipOff + hlen, get16(buf, ipOff + 2) - hlen);
}

/** Does the CRC32c of the SCTP packet inside the IPv4 packet at `ipOff` verify? */
export function sctpChecksumValid(buf: Uint8Array, ipOff: number): boolean {
  const hlen = (buf[ipOff] & 0x0f) << 2;
  const off = ipOff + hlen;
  return sctpChecksumCompute(buf, off, get16(buf, ipOff + 2) - hlen) === sctpChecksum(buf, off);
}
