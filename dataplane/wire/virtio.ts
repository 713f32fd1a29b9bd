/**
 * struct virtio_net_hdr (include/uapi/linux/virtio_net.h), the 10 bytes a TUN
 * opened with IFF_VNET_HDR puts in front of every packet, in the manner of
 * the other views: named field offsets, one checked entry, small accessors.
 *
 *   0  flags        u8     NEEDS_CSUM (1): the L4 checksum field holds only the
 *                          pseudo-header sum; the sum from csum_start to the end
 *                          is still to be added. DATA_VALID (2): already verified.
 *   1  gso_type     u8     NONE 0, TCPV4 1, UDP (UFO) 3, TCPV6 4, UDP_L4 (USO) 5; | ECN 0x80
 *   2  hdr_len      le16   bytes of headers to repeat in every segment (the kernel
 *                          may give the linear head length, which can be larger)
 *   4  gso_size     le16   payload bytes per segment (the MSS)
 *   6  csum_start   le16   where checksumming starts (the L4 header), from the IP header
 *   8  csum_offset  le16   where, from csum_start, the checksum is stored (TCP 16, UDP 6)
 *
 * The TUN device's vnet header is little-endian (TUNSETVNETLE's default on a
 * little-endian host; this module reads and writes it as little-endian).
 * Offsets `off` are those of the virtio header; the IP packet follows at
 * off + VIRTIO_NET_HDR_LEN.
 */

import { get16 } from './bytes.ts';
import {
  WIRE_OK, WIRE_TOO_SHORT, WIRE_BAD_VNET_FLAGS, WIRE_BAD_VNET_GSO_TYPE, WIRE_BAD_VNET_GSO_SIZE,
  WIRE_BAD_VNET_HDR_LEN, WIRE_BAD_VNET_CSUM, WIRE_VNET_GSO_MISMATCH, WIRE_VNET_CSUM_MISMATCH,
} from './error.ts';

export const VIRTIO_NET_HDR_LEN = 10;

// ---- field offsets ----
export const VNET_FLAGS = 0;
export const VNET_GSO_TYPE = 1;
export const VNET_HDR_LEN = 2;
export const VNET_GSO_SIZE = 4;
export const VNET_CSUM_START = 6;
export const VNET_CSUM_OFFSET = 8;

// ---- flags ----
export const VNET_F_NEEDS_CSUM = 1;
export const VNET_F_DATA_VALID = 2;
export const VNET_F_RSC_INFO = 4;

// ---- gso_type ----
export const VNET_GSO_NONE = 0;
export const VNET_GSO_TCPV4 = 1;
export const VNET_GSO_UDP = 3;
export const VNET_GSO_TCPV6 = 4;
export const VNET_GSO_UDP_L4 = 5;
export const VNET_GSO_ECN = 0x80;

function le16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

function putLe16(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
}

export function vnetFlags(buf: Uint8Array, off: number): number {
  return buf[off + VNET_FLAGS];
}

/** The GSO type with the ECN bit (compare `& 0x7f` with VNET_GSO_*). */
export function vnetGsoType(buf: Uint8Array, off: number): number {
  return buf[off + VNET_GSO_TYPE];
}

export function vnetHdrLen(buf: Uint8Array, off: number): number {
  return le16(buf, off + VNET_HDR_LEN);
}

export function vnetGsoSize(buf: Uint8Array, off: number): number {
  return le16(buf, off + VNET_GSO_SIZE);
}

export function vnetCsumStart(buf: Uint8Array, off: number): number {
  return le16(buf, off + VNET_CSUM_START);
}

export function vnetCsumOffset(buf: Uint8Array, off: number): number {
  return le16(buf, off + VNET_CSUM_OFFSET);
}

/** Is the packet a GSO super-packet (gso_type other than NONE)? */
export function vnetIsGso(buf: Uint8Array, off: number): boolean {
  return (buf[off + VNET_GSO_TYPE] & 0x7f) !== VNET_GSO_NONE;
}

/** Does the L4 checksum field hold only the pseudo-header sum (NEEDS_CSUM)? */
export function vnetNeedsCsum(buf: Uint8Array, off: number): boolean {
  return (buf[off + VNET_FLAGS] & VNET_F_NEEDS_CSUM) !== 0;
}

/** Write the 10 bytes. Returns VIRTIO_NET_HDR_LEN. */
export function writeVnetHeader(
  buf: Uint8Array, off: number, flags: number, gsoType: number,
  hdrLen: number, gsoSize: number, csumStart: number, csumOffset: number,
): number {
  buf[off + VNET_FLAGS] = flags;
  buf[off + VNET_GSO_TYPE] = gsoType;
  putLe16(buf, off + VNET_HDR_LEN, hdrLen);
  putLe16(buf, off + VNET_GSO_SIZE, gsoSize);
  putLe16(buf, off + VNET_CSUM_START, csumStart);
  putLe16(buf, off + VNET_CSUM_OFFSET, csumOffset);
  return VIRTIO_NET_HDR_LEN;
}

/** A header saying "one packet, checksums complete" (what a generated packet carries). */
export function writeVnetNone(buf: Uint8Array, off: number): number {
  return writeVnetHeader(buf, off, 0, VNET_GSO_NONE, 0, 0, 0, 0);
}

/** Clear NEEDS_CSUM (after the checksum was completed in software). */
export function vnetClearNeedsCsum(buf: Uint8Array, off: number): void {
  buf[off + VNET_FLAGS] &= ~VNET_F_NEEDS_CSUM;
  putLe16(buf, off + VNET_CSUM_START, 0);
  putLe16(buf, off + VNET_CSUM_OFFSET, 0);
}

/**
 * The checked entry over `len` bytes at `off`: the virtio header plus the
 * packet after it. What it checks does not need the IP header:
 * - WIRE_TOO_SHORT: len < 10;
 * - WIRE_BAD_VNET_FLAGS: bits other than NEEDS_CSUM and DATA_VALID;
 * - WIRE_BAD_VNET_GSO_TYPE: not NONE/TCPV4/TCPV6/UDP_L4, ECN on a non-TCP type,
 *   or UFO (never enabled here);
 * - WIRE_BAD_VNET_CSUM: NEEDS_CSUM with csum_start + csum_offset + 2 past the
 *   packet, or a GSO packet without NEEDS_CSUM;
 * - WIRE_BAD_VNET_GSO_SIZE: GSO with gso_size 0;
 * - WIRE_BAD_VNET_HDR_LEN: GSO with hdr_len past the packet.
 * That the GSO type and the checksum location match the packet's protocol
 * is vnetMatch's job, once the IP and L4 headers are checked.
 */
export function vnetCheck(buf: Uint8Array, off: number, len: number): number {
  if (len < VIRTIO_NET_HDR_LEN) return WIRE_TOO_SHORT;
  const flags = buf[off + VNET_FLAGS];
  if ((flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) !== 0) return WIRE_BAD_VNET_FLAGS;
  const t = buf[off + VNET_GSO_TYPE];
  const base = t & 0x7f;
  if (base !== VNET_GSO_NONE && base !== VNET_GSO_TCPV4 && base !== VNET_GSO_TCPV6 && base !== VNET_GSO_UDP_L4) return WIRE_BAD_VNET_GSO_TYPE;
  if ((t & VNET_GSO_ECN) !== 0 && base !== VNET_GSO_TCPV4 && base !== VNET_GSO_TCPV6) return WIRE_BAD_VNET_GSO_TYPE;
  const plen = len - VIRTIO_NET_HDR_LEN;
  const needs = (flags & VNET_F_NEEDS_CSUM) !== 0;
  if (needs && le16(buf, off + VNET_CSUM_START) + le16(buf, off + VNET_CSUM_OFFSET) + 2 > plen) return WIRE_BAD_VNET_CSUM;
  if (base !== VNET_GSO_NONE) {
    if (!needs) return WIRE_BAD_VNET_CSUM;
    if (le16(buf, off + VNET_GSO_SIZE) === 0) return WIRE_BAD_VNET_GSO_SIZE;
    if (le16(buf, off + VNET_HDR_LEN) > plen) return WIRE_BAD_VNET_HDR_LEN;
  }
  return WIRE_OK;
}

/**
 * The second check, once the IPv4 packet at `ipOff` passed ipv4Check and its
 * L4 header (TCP/UDP) passed tcpCheck/udpCheck: does the virtio header at
 * `off` describe this packet?
 * - WIRE_VNET_GSO_MISMATCH: GSO TCPV4 on anything but an unfragmented TCP/IPv4
 *   packet, UDP_L4 on anything but unfragmented UDP, TCPV6 on IPv4;
 * - WIRE_BAD_VNET_HDR_LEN: GSO whose payload (after the IP and L4 headers) is empty;
 * - WIRE_VNET_CSUM_MISMATCH: NEEDS_CSUM on TCP/UDP whose csum_start is not the
 *   L4 header or whose csum_offset is not its checksum field.
 * NEEDS_CSUM on another protocol is not checked here: the pipeline completes
 * such a checksum in software (vnetCheck made sure it lies in the packet).
 */
export function vnetMatch(buf: Uint8Array, off: number, ipOff: number, proto: number): number {
  const t = buf[off + VNET_GSO_TYPE] & 0x7f;
  const needs = (buf[off + VNET_FLAGS] & VNET_F_NEEDS_CSUM) !== 0;
  const hlen = (buf[ipOff] & 0x0f) << 2;
  const fragmented = (get16(buf, ipOff + 6) & 0x3fff) !== 0;
  if (t !== VNET_GSO_NONE) {
    if (fragmented) return WIRE_VNET_GSO_MISMATCH;
    if (t === VNET_GSO_TCPV4 ? proto !== 6 : t === VNET_GSO_UDP_L4 ? proto !== 17 : true) return WIRE_VNET_GSO_MISMATCH;
    const total = get16(buf, ipOff + 2);
    const l4h = proto === 6 ? (buf[ipOff + hlen + 12] >>> 4) << 2 : 8;
    if (hlen + l4h >= total) return WIRE_BAD_VNET_HDR_LEN;
  }
  if (needs && (proto === 6 || proto === 17)) {
    if (fragmented) return WIRE_VNET_CSUM_MISMATCH;
    if (le16(buf, off + VNET_CSUM_START) !== hlen) return WIRE_VNET_CSUM_MISMATCH;
    if (le16(buf, off + VNET_CSUM_OFFSET) !== (proto === 6 ? 16 : 6)) return WIRE_VNET_CSUM_MISMATCH;
  }
  return WIRE_OK;
}

/**
 * The segments a super-packet stands for on the wire: ceil(payload / gso_size),
 * the payload being what follows the IP and L4 headers; 1 for a non-GSO packet.
 */
export function vnetSegments(payloadLen: number, gsoSize: number): number {
  if (gsoSize <= 0 || payloadLen <= gsoSize) return 1;
  return Math.ceil(payloadLen / gsoSize);
}
