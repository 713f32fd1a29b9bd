/**
 * TCP header view (RFC 9293). Accessors take the offset of the TCP header;
 * checksum functions that need the pseudo-header take the offset of the
 * enclosing IPv4 header (`ipOff`) and find the segment from it.
 */

import { get16, get32, put16, put32 } from './bytes.ts';
import { csumReplace16, l4Checksum, checksumRaw, pseudoHeaderSum } from './checksum.ts';
import { WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_DATA_OFFSET } from './error.ts';

export const TCP_SRC_PORT = 0;
export const TCP_DST_PORT = 2;
export const TCP_SEQ = 4;
export const TCP_ACK = 8;
/** data offset (high nibble, in 32-bit words) */
export const TCP_DATA_OFF = 12;
export const TCP_FLAGS = 13;
export const TCP_WINDOW = 14;
export const TCP_CHECKSUM = 16;
export const TCP_URGENT = 18;
export const TCP_MIN_HEADER_LEN = 20;

// flag bits of the byte at TCP_FLAGS
export const TCP_FLAG_FIN = 0x01;
export const TCP_FLAG_SYN = 0x02;
export const TCP_FLAG_RST = 0x04;
export const TCP_FLAG_PSH = 0x08;
export const TCP_FLAG_ACK = 0x10;
export const TCP_FLAG_URG = 0x20;
export const TCP_FLAG_ECE = 0x40;
export const TCP_FLAG_CWR = 0x80;

/**
 * The checked entry over the `len` bytes of a segment at `off` (the IPv4
 * payload length): WIRE_TOO_SHORT when len < 20, WIRE_BAD_DATA_OFFSET when
 * the data offset is < 5 or its header runs past the segment. Never throws.
 */
export function tcpCheck(buf: Uint8Array, off: number, len: number): number {
  if (len < TCP_MIN_HEADER_LEN) return WIRE_TOO_SHORT;
  const hlen = (buf[off + TCP_DATA_OFF] >>> 4) << 2;
  if (hlen < TCP_MIN_HEADER_LEN || hlen > len) return WIRE_BAD_DATA_OFFSET;
  return WIRE_OK;
}

export function tcpSrcPort(buf: Uint8Array, off: number): number {
  return get16(buf, off + TCP_SRC_PORT);
}

export function tcpDstPort(buf: Uint8Array, off: number): number {
  return get16(buf, off + TCP_DST_PORT);
}

/** Sequence number, unsigned. */
export function tcpSeq(buf: Uint8Array, off: number): number {
  return get32(buf, off + TCP_SEQ);
}

/** Acknowledgment number, unsigned. */
export function tcpAck(buf: Uint8Array, off: number): number {
  return get32(buf, off + TCP_ACK);
}

/** Data offset in 32-bit words. */
export function tcpDataOffset(buf: Uint8Array, off: number): number {
  return buf[off + TCP_DATA_OFF] >>> 4;
}

/** Header length in bytes, options included. */
export function tcpHeaderLen(buf: Uint8Array, off: number): number {
  return (buf[off + TCP_DATA_OFF] >>> 4) << 2;
}

/** The flag byte (TCP_FLAG_SYN | TCP_FLAG_ACK | …). */
export function tcpFlags(buf: Uint8Array, off: number): number {
  return buf[off + TCP_FLAGS];
}

export function tcpWindow(buf: Uint8Array, off: number): number {
  return get16(buf, off + TCP_WINDOW);
}

export function tcpChecksum(buf: Uint8Array, off: number): number {
  return get16(buf, off + TCP_CHECKSUM);
}

export function tcpUrgent(buf: Uint8Array, off: number): number {
  return get16(buf, off + TCP_URGENT);
}

/** Set the source port; the TCP checksum is updated incrementally. */
export function setTcpSrcPort(buf: Uint8Array, off: number, port: number): void {
  const old = get16(buf, off + TCP_SRC_PORT);
  put16(buf, off + TCP_SRC_PORT, port);
  put16(buf, off + TCP_CHECKSUM, csumReplace16(get16(buf, off + TCP_CHECKSUM), old, port));
}

/** Set the destination port; the TCP checksum is updated incrementally. */
export function setTcpDstPort(buf: Uint8Array, off: number, port: number): void {
  const old = get16(buf, off + TCP_DST_PORT);
  put16(buf, off + TCP_DST_PORT, port);
  put16(buf, off + TCP_CHECKSUM, csumReplace16(get16(buf, off + TCP_CHECKSUM), old, port));
}

function segOff(buf: Uint8Array, ipOff: number): number {
  return ipOff + ((buf[ipOff] & 0x0f) << 2);
}

function segLen(buf: Uint8Array, ipOff: number): number {
  return get16(buf, ipOff + 2) - ((buf[ipOff] & 0x0f) << 2);
}

/** The checksum the TCP segment inside the IPv4 packet at `ipOff` should carry (full computation, pseudo-header included). */
export function tcpChecksumCompute(buf: Uint8Array, ipOff: number): number {
  return l4Checksum(buf, segOff(buf, ipOff), segLen(buf, ipOff), TCP_CHECKSUM, get32(buf, ipOff + 12), get32(buf, ipOff + 16), 6);
}

/** Recompute and store the TCP checksum of the packet at `ipOff` in full. */
export function tcpFillChecksum(buf: Uint8Array, ipOff: number): void {
  put16(buf, segOff(buf, ipOff) + TCP_CHECKSUM, tcpChecksumCompute(buf, ipOff));
}

/** Does the stored TCP checksum of the packet at `ipOff` verify? */
export function tcpChecksumValid(buf: Uint8Array, ipOff: number): boolean {
  const len = segLen(buf, ipOff);
  const ps = pseudoHeaderSum(get32(buf, ipOff + 12), get32(buf, ipOff + 16), 6, len);
  return checksumRaw(buf, segOff(buf, ipOff), len, ps) === 0xffff;
}

/**
 * Write a 20-byte TCP header (data offset 5, urgent 0, checksum 0: fill it
 * with tcpFillChecksum once the IP header and payload are in place). Returns 20.
 */
export function writeTcpHeader(
  buf: Uint8Array, off: number, srcPort: number, dstPort: number,
  seq: number, ack: number, flags: number, window: number,
): number {
  put16(buf, off + TCP_SRC_PORT, srcPort);
  put16(buf, off + TCP_DST_PORT, dstPort);
  put32(buf, off + TCP_SEQ, seq);
  put32(buf, off + TCP_ACK, ack);
  buf[off + TCP_DATA_OFF] = 5 << 4;
  buf[off + TCP_FLAGS] = flags;
  put16(buf, off + TCP_WINDOW, window);
  put16(buf, off + TCP_CHECKSUM, 0);
  put16(buf, off + TCP_URGENT, 0);
  return TCP_MIN_HEADER_LEN;
}
