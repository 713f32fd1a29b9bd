/**
 * IPv4 addresses as unsigned 32-bit numbers (host order: 10.0.0.1 = 0x0a000001),
 * CIDRs as (network, mask) pairs, and the numeric keys the tables are indexed by.
 */

/** Parse dotted-quad IPv4 text; returns -1 when the text is not an IPv4 address (no leading zeros, no spaces). */
export function parseIPv4(text: string): number {
  const n = text.length;
  if (n < 7 || n > 15) return -1;
  let v = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  let lead = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || ++dots > 3) return -1;
      v = v * 256 + part;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits === 0) lead = c;
      else if (lead === 48) return -1; // a leading zero
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return -1;
    } else return -1;
  }
  if (dots !== 3 || digits === 0) return -1;
  return v * 256 + part;
}

export function formatIPv4(a: number): string {
  return `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

export interface Cidr {
  /** network address, host bits cleared */
  readonly net: number;
  /** mask as an unsigned number (0xffffff00 for /24) */
  readonly mask: number;
  readonly bits: number;
}

export function maskOf(bits: number): number {
  return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
}

/** Parse "10.0.0.0/8" (or a bare address = /32); null when malformed. */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const bitsText = slash < 0 ? '32' : text.slice(slash + 1);
  if (!/^[0-9]{1,2}$/.test(bitsText)) return null;
  const bits = Number(bitsText);
  if (bits > 32) return null;
  const a = parseIPv4(addrText);
  if (a < 0) return null;
  const mask = maskOf(bits);
  return { net: (a & mask) >>> 0, mask, bits };
}

export function formatCidr(c: Cidr): string {
  return `${formatIPv4(c.net)}/${c.bits}`;
}

export function cidrContains(c: Cidr, addr: number): boolean {
  return ((addr & c.mask) >>> 0) === c.net;
}

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_SCTP = 132;

export type ProtocolName = 'TCP' | 'UDP' | 'SCTP';

export function protocolNumber(p: ProtocolName): number {
  return p === 'TCP' ? PROTO_TCP : p === 'UDP' ? PROTO_UDP : PROTO_SCTP;
}

export function protocolName(n: number): ProtocolName | null {
  return n === PROTO_TCP ? 'TCP' : n === PROTO_UDP ? 'UDP' : n === PROTO_SCTP ? 'SCTP' : null;
}

/** 0 TCP, 1 UDP, 2 SCTP, -1 other: two bits of a table key. */
export function protoIndex(proto: number): number {
  return proto === PROTO_TCP ? 0 : proto === PROTO_UDP ? 1 : proto === PROTO_SCTP ? 2 : -1;
}

/** (address, protocol, port) in one number below 2^50: ((addr*4)+protoIndex)*65536+port. */
export function vipKey(addr: number, proto: number, port: number): number {
  return (addr * 4 + protoIndex(proto)) * 65536 + port;
}

/** (protocol, port) for NodePorts. */
export function nodePortKey(proto: number, port: number): number {
  return protoIndex(proto) * 65536 + port;
}
