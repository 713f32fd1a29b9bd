/**
 * Why a checked entry point refused a buffer. The checked entries return 0
 * (WIRE_OK) or one of these negative codes; `wireErrorName` gives the name
 * that goes into drop counters ("malformed" with this as the detail).
 */

export const WIRE_OK = 0;
/** fewer bytes than the fixed header needs */
export const WIRE_TOO_SHORT = -1;
/** IP version nibble is not 4 */
export const WIRE_NOT_IPV4 = -2;
/** IPv4 IHL < 5 */
export const WIRE_BAD_IHL = -3;
/** IPv4 total length < header length, or beyond the buffer */
export const WIRE_BAD_TOTAL_LENGTH = -4;
/** IPv4 header checksum does not verify (only when asked to verify) */
export const WIRE_BAD_HEADER_CHECKSUM = -5;
/** TCP data offset < 5 or beyond the segment */
export const WIRE_BAD_DATA_OFFSET = -6;
/** UDP length field < 8 or beyond the datagram */
export const WIRE_BAD_UDP_LENGTH = -7;
/** ICMP error whose quoted IPv4 header + 8 bytes is missing or malformed */
export const WIRE_BAD_ICMP_QUOTE = -8;
/** a builder's output buffer has no room for the packet */
export const WIRE_NO_ROOM = -9;
/** virtio_net_hdr: flag bits other than NEEDS_CSUM / DATA_VALID */
export const WIRE_BAD_VNET_FLAGS = -10;
/** virtio_net_hdr: a GSO type the TUN never hands over (UFO, unknown, ECN without TCP) */
export const WIRE_BAD_VNET_GSO_TYPE = -11;
/** virtio_net_hdr: a GSO packet with gso_size 0 */
export const WIRE_BAD_VNET_GSO_SIZE = -12;
/** virtio_net_hdr: hdr_len beyond the packet, or shorter than the headers it must cover */
export const WIRE_BAD_VNET_HDR_LEN = -13;
/** virtio_net_hdr: csum_start + csum_offset outside the packet, or GSO without NEEDS_CSUM */
export const WIRE_BAD_VNET_CSUM = -14;
/** virtio_net_hdr: the GSO type does not match the packet (protocol, IP version, an IP fragment) */
export const WIRE_VNET_GSO_MISMATCH = -15;
/** virtio_net_hdr: a partial TCP/UDP checksum whose csum_start/csum_offset is not that header's checksum field */
export const WIRE_VNET_CSUM_MISMATCH = -16;

const NAMES = [
  'ok',
  'too_short',
  'not_ipv4',
  'bad_ihl',
  'bad_total_length',
  'bad_header_checksum',
  'bad_data_offset',
  'bad_udp_length',
  'bad_icmp_quote',
  'no_room',
  'bad_vnet_flags',
  'bad_vnet_gso_type',
  'bad_vnet_gso_size',
  'bad_vnet_hdr_len',
  'bad_vnet_csum',
  'vnet_gso_mismatch',
  'vnet_csum_mismatch',
];

/** "too_short", "bad_ihl", …; "unknown_wire_error" for a code outside the list. */
export function wireErrorName(code: number): string {
  const i = -code;
  return i >= 0 && i < NAMES.length && Number.isInteger(i) ? NAMES[i] : 'unknown_wire_error';
}
