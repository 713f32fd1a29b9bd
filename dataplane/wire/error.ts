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
];

/** "too_short", "bad_ihl", …; "unknown_wire_error" for a code outside the list. */
export function wireErrorName(code: number): string {
  const i = -code;
  return i >= 0 && i < NAMES.length && Number.isInteger(i) ? NAMES[i] : 'unknown_wire_error';
}
