/**
 * Packets for the pipeline tests: a terse builder over the wire tests'
 * reference builder (test/property/wire-gen.ts: every checksum filled),
 * hex in and out, and checks that every checksum in a packet verifies.
 */
import { buildPacket } from '../property/wire-gen.ts';
import type { PacketSpec } from '../property/wire-gen.ts';
import { parseIPv4, formatIPv4 } from '../../dataplane/addr.ts';
import { ipv4ChecksumValid } from '../../dataplane/wire/ipv4.ts';
import { tcpChecksumValid } from '../../dataplane/wire/tcp.ts';
import { udpChecksumValid } from '../../dataplane/wire/udp.ts';
import { icmpChecksumValid } from '../../dataplane/wire/icmp.ts';
import { sctpChecksumValid } from '../../dataplane/wire/sctp.ts';
import { get16, get32 } from '../../dataplane/wire/bytes.ts';

export interface Pkt {
  proto?: number;
  src: string;
  dst: string;
  sport: number;
  dport: number;
  flags?: number;
  seq?: number;
  payload?: string | Uint8Array;
  ident?: number;
  ttl?: number;
}

export const SYN = 0x02, ACK = 0x10, FIN = 0x01, RST = 0x04, PSH = 0x08;

/** A packet with correct checksums. For TCP, `flags` and `seq` (ack = 0). */
export function pkt(p: Pkt): Uint8Array {
  const payload = typeof p.payload === 'string' ? new TextEncoder().encode(p.payload) : p.payload ?? new Uint8Array(0);
  const spec: PacketSpec = {
    proto: p.proto ?? 6,
    src: parseIPv4(p.src),
    dst: parseIPv4(p.dst),
    sport: p.sport,
    dport: p.dport,
    ttl: p.ttl ?? 64,
    tos: 0,
    ident: p.ident ?? 0x1234,
    df: true,
    ipOptions: new Uint8Array(0),
    l4Options: new Uint8Array(0),
    payload,
    udpNoChecksum: false,
    icmpType: 8,
    seq: p.seq ?? 1000,
  };
  const [b, len] = buildPacket(spec);
  const out = b.subarray(0, len);
  if ((p.proto ?? 6) === 6 && p.flags !== undefined) {
    // set the flags byte and redo the TCP checksum the slow, independent way
    const hl = (out[0] & 15) * 4;
    out[hl + 13] = p.flags;
    out[hl + 16] = 0;
    out[hl + 17] = 0;
    const c = referenceL4Checksum(out);
    out[hl + 16] = c >> 8;
    out[hl + 17] = c & 255;
  }
  return out;
}

/** One's-complement checksum of the L4 segment with the pseudo-header, computed naively. */
function referenceL4Checksum(b: Uint8Array): number {
  const hl = (b[0] & 15) * 4;
  const total = (b[2] << 8) | b[3];
  const l4len = total - hl;
  let sum = 0;
  for (let i = 12; i < 20; i += 2) sum += (b[i] << 8) | b[i + 1];
  sum += b[9] + l4len;
  for (let i = 0; i < l4len; i += 2) sum += (b[hl + i] << 8) | (i + 1 < l4len ? b[hl + i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

export function fromHex(h: string): Uint8Array {
  return new Uint8Array(Buffer.from(h.replace(/\s+/g, ''), 'hex'));
}

/** "src:sport > dst:dport" of an IPv4 TCP/UDP/SCTP packet. */
export function tuple(b: Uint8Array): string {
  const hl = (b[0] & 15) * 4;
  return `${formatIPv4(get32(b, 12))}:${get16(b, hl)} > ${formatIPv4(get32(b, 16))}:${get16(b, hl + 2)}`;
}

/** Every checksum of the packet verifies (IP header, and TCP/UDP/ICMP/SCTP when it is a whole packet). */
export function checksumsValid(b: Uint8Array): boolean {
  if (!ipv4ChecksumValid(b, 0)) return false;
  if ((get16(b, 6) & 0x3fff) !== 0) return true; // a fragment: L4 checksum spans fragments
  switch (b[9]) {
    case 6: return tcpChecksumValid(b, 0);
    case 17: return udpChecksumValid(b, 0);
    case 1: return icmpChecksumValid(b, 0);
    case 132: return sctpChecksumValid(b, 0);
    default: return true;
  }
}
