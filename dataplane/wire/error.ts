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
/** IP version nibble is not 6 (an IPv6 entry point) */
export const WIRE_NOT_IPV6 = -17;
/** IPv6 payload length beyond the buffer, or 0 (a jumbogram, RFC 2675: not supported) */
export const WIRE_BAD_PAYLOAD_LENGTH = -18;
/** an IPv6 extension header runs past the payload (or the quoted bytes) */
export const WIRE_IPV6_EXT_TRUNCATED = -19;
/** more IPv6 extension headers than IPV6_MAX_EXT_HEADERS */
export const WIRE_IPV6_EXT_TOO_MANY = -20;
/** IPv6 extension headers longer in all than IPV6_MAX_EXT_BYTES */
export const WIRE_IPV6_EXT_TOO_LONG = -21;
/** a hop-by-hop options header anywhere but right after the fixed header (RFC 8200 §4.3) */
export const WIRE_IPV6_HOPOPTS_NOT_FIRST = -22;
/** a second fragment header in one packet */
export const WIRE_IPV6_FRAGMENT_REPEATED = -23;
/** ICMPv6 error whose quoted IPv6 header (and its extension headers) is missing or malformed */
export const WIRE_BAD_ICMPV6_QUOTE = -24;

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
  'not_ipv6',
  'bad_payload_length',
  'ipv6_ext_truncated',
  'ipv6_ext_too_many',
  'ipv6_ext_too_long',
  'ipv6_hopopts_not_first',
  'ipv6_fragment_repeated',
  'bad_icmpv6_quote',
];

/** "too_short", "bad_ihl", …; "unknown_wire_error" for a code outside the list. */
export function wireErrorName(code: number): string {
  const i = -code;
  return i >= 0 && i < NAMES.length && Number.isInteger(i) ? NAMES[i] : 'unknown_wire_error';
}
