/**
 * NAT rewrites in one call: change an address (and port) in an IPv4 packet
 * and fix every checksum that covers it, incrementally (RFC 1624), the way
 * Linux's nf_nat_ipv4_manip_pkt / l4proto manip functions do.
 *
 * "port" means: TCP/UDP/SCTP source or destination port; for ICMP echo
 * request/reply the identifier, in both directions (as netfilter treats the
 * echo id). A negative `newPort` leaves the port as it is.
 *
 * The packet must have passed ipv4Check and the L4 checked entry; an L4
 * header shorter than its fixed size is left alone (IP header only).
 *
 * `partial` (a GSO super-packet, or any packet whose virtio header says
 * NEEDS_CSUM): the TCP/UDP checksum field holds only the pseudo-header sum,
 * not complemented, that the kernel completes later over the whole segment.
 * The sum is updated for the changed address and left alone for a changed
 * port (ports are in the part still to be summed); it is never turned into a
 * full checksum. The IPv4 header checksum is always complete and updated.
 */

import { get16, get32, put16, put32 } from './bytes.ts';
import { csumReplace16, csumReplace32, udpCsumReplace16, udpCsumReplace32 } from './checksum.ts';
import { sctpFillChecksumAt } from './sctp.ts';
import { ipv4HeaderLen } from './ipv4.ts';





// The wire's named offsets, flags and protocol numbers, as defined in ipv4.ts, tcp.ts, udp.ts, sctp.ts, icmp.ts and ../addr.ts
// (test/unit/wire-names.test.ts checks that every one here equals its definition there).
// Copied, not imported: an imported binding is read through its module cell with a TDZ
// check on every use, which cost ~10 ns per established packet (bench:packet, 166 → 176 ns);
// a module-local const with a literal value is folded into the code like the literal.
const IPV4_TOTAL_LEN = 2;
const IPV4_PROTOCOL = 9;
const IPV4_SRC = 12;
const IPV4_DST = 16;
const IPV4_FLAGS_FRAG = 6;
const IPV4_FRAG_OFFSET_MASK = 0x1fff;
const IPV4_FLAG_MF = 0x2000;
const TCP_SRC_PORT = 0;
const TCP_DST_PORT = 2;
const IPV4_CHECKSUM = 10;
const TCP_CHECKSUM = 16;
const TCP_MIN_HEADER_LEN = 20;
const UDP_CHECKSUM = 6;
const UDP_HEADER_LEN = 8;
const SCTP_COMMON_HEADER_LEN = 12;
const ICMP_CHECKSUM = 2;
const ICMP_IDENT = 4;
const ICMP_TYPE = 0;
const ICMP_QUOTE = 8;
const ICMP_HEADER_LEN = 8;
const ICMP_ECHO_REQUEST = 8;
const ICMP_ECHO_REPLY = 0;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_SCTP = 132;
const PROTO_ICMP = 1;
// TCP, UDP and SCTP put the source and destination ports at the same offsets (TCP_SRC_PORT, TCP_DST_PORT)

function rewriteAddrPort(
  buf: Uint8Array, ipOff: number, addrAt: number, portAt: number, newAddr: number, newPort: number, partial: boolean,
): void {
  newAddr = newAddr >>> 0;
  const ao = ipOff + addrAt;
  const oldAddr = get32(buf, ao);
  put32(buf, ao, newAddr);
  put16(buf, ipOff + IPV4_CHECKSUM, csumReplace32(get16(buf, ipOff + IPV4_CHECKSUM), oldAddr, newAddr));

  const flagsFrag = get16(buf, ipOff + IPV4_FLAGS_FRAG);
  if ((flagsFrag & IPV4_FRAG_OFFSET_MASK) !== 0) return; // non-first fragment: no L4 header here
  const hlen = ipv4HeaderLen(buf, ipOff);
  const l4 = ipOff + hlen;
  const l4len = get16(buf, ipOff + IPV4_TOTAL_LEN) - hlen;
  const proto = buf[ipOff + IPV4_PROTOCOL];

  if (partial && (proto === PROTO_TCP || proto === PROTO_UDP)) {
    const co = l4 + (proto === PROTO_TCP ? TCP_CHECKSUM : UDP_CHECKSUM);
    if (l4len < (proto === PROTO_TCP ? TCP_MIN_HEADER_LEN : UDP_HEADER_LEN)) return;
    // the pseudo-header sum s is stored as is: s' = s - old + new = ~csumReplace32(~s, old, new)
    put16(buf, co, ~csumReplace32(~get16(buf, co) & 0xffff, oldAddr, newAddr) & 0xffff);
    if (newPort >= 0) put16(buf, l4 + portAt, newPort);
  } else if (proto === PROTO_TCP) {
    if (l4len < TCP_MIN_HEADER_LEN) return;
    let c = csumReplace32(get16(buf, l4 + TCP_CHECKSUM), oldAddr, newAddr);
    if (newPort >= 0) {
      const po = l4 + portAt;
      c = csumReplace16(c, get16(buf, po), newPort);
      put16(buf, po, newPort);
    }
    put16(buf, l4 + TCP_CHECKSUM, c);
  } else if (proto === PROTO_UDP) {
    if (l4len < UDP_HEADER_LEN) return;
    let c = udpCsumReplace32(get16(buf, l4 + UDP_CHECKSUM), oldAddr, newAddr);
    if (newPort >= 0) {
      const po = l4 + portAt;
      c = udpCsumReplace16(c, get16(buf, po), newPort);
      put16(buf, po, newPort);
    }
    put16(buf, l4 + UDP_CHECKSUM, c);
  } else if (proto === PROTO_SCTP) {
    if (l4len < SCTP_COMMON_HEADER_LEN) return;
    if (newPort >= 0) put16(buf, l4 + portAt, newPort);
    // CRC32c covers the whole SCTP packet: recompute when it is all here
    // (a first fragment with MF set keeps a stale CRC: it cannot be fixed from one fragment)
    if ((flagsFrag & IPV4_FLAG_MF) === 0) sctpFillChecksumAt(buf, l4, l4len);
  } else if (proto === PROTO_ICMP) {
    // ICMP has no pseudo-header: an address change needs nothing; echo ident is the port
    if (l4len < ICMP_HEADER_LEN || newPort < 0) return;
    const t = buf[l4 + ICMP_TYPE];
    if (t !== ICMP_ECHO_REQUEST && t !== ICMP_ECHO_REPLY) return;
    const old = get16(buf, l4 + ICMP_IDENT);
    put16(buf, l4 + ICMP_IDENT, newPort);
    put16(buf, l4 + ICMP_CHECKSUM, csumReplace16(get16(buf, l4 + ICMP_CHECKSUM), old, newPort));
  }
}

/**
 * Source NAT on the IPv4 packet at `ipOff`: source address := newAddr,
 * source port (ICMP echo: identifier) := newPort (unless negative); fixes
 * the IPv4 header checksum and the L4 checksum (TCP, UDP with a non-zero
 * checksum; SCTP CRC32c recomputed; ICMP echo checksum for the identifier).
 * A non-first fragment gets only its IPv4 header rewritten. ICMP errors get
 * only the outer address; their quote is icmpQuoteRewriteSrc/Dst's job.
 */
export function rewriteSrc(buf: Uint8Array, ipOff: number, newAddr: number, newPort: number, partial = false): void {
  rewriteAddrPort(buf, ipOff, IPV4_SRC, TCP_SRC_PORT, newAddr, newPort, partial);
}

/** Destination NAT: as rewriteSrc, on the destination address and port. */
export function rewriteDst(buf: Uint8Array, ipOff: number, newAddr: number, newPort: number, partial = false): void {
  rewriteAddrPort(buf, ipOff, IPV4_DST, TCP_DST_PORT, newAddr, newPort, partial);
}

function quoteRewrite(
  buf: Uint8Array, ipOff: number, addrAt: number, portAt: number, newAddr: number, newPort: number,
): void {
  newAddr = newAddr >>> 0;
  const hlen = ipv4HeaderLen(buf, ipOff);
  const io = ipOff + hlen; // ICMP header
  const qo = io + ICMP_QUOTE; // quoted IPv4 header
  const quoted = get16(buf, ipOff + IPV4_TOTAL_LEN) - hlen - ICMP_QUOTE; // bytes of quote present
  let ic = get16(buf, io + ICMP_CHECKSUM); // outer ICMP checksum, covers everything below

  const ao = qo + addrAt;
  const oldAddr = get32(buf, ao);
  put32(buf, ao, newAddr);
  ic = csumReplace32(ic, oldAddr, newAddr);
  const oldQc = get16(buf, qo + IPV4_CHECKSUM);
  const newQc = csumReplace32(oldQc, oldAddr, newAddr);
  put16(buf, qo + IPV4_CHECKSUM, newQc);
  ic = csumReplace16(ic, oldQc, newQc);

  if ((get16(buf, qo + IPV4_FLAGS_FRAG) & IPV4_FRAG_OFFSET_MASK) === 0) {
    const qhlen = ipv4HeaderLen(buf, qo);
    const q4 = qo + qhlen;
    const q4len = quoted - qhlen; // quoted L4 bytes present (not the original length)
    const proto = buf[qo + IPV4_PROTOCOL];
    if (proto === PROTO_TCP || proto === PROTO_UDP || proto === PROTO_SCTP) {
      let oldPort = 0;
      if (newPort >= 0 && q4len >= 4) {
        const po = q4 + portAt;
        oldPort = get16(buf, po);
        put16(buf, po, newPort);
        ic = csumReplace16(ic, oldPort, newPort);
      }
      // the quoted L4 checksum, when quoted, is fixed too (as Linux does); SCTP's CRC is left as quoted
      const co = proto === PROTO_TCP ? TCP_CHECKSUM : proto === PROTO_UDP ? UDP_CHECKSUM : -1;
      if (co >= 0 && q4len >= co + 2) {
        const oldC = get16(buf, q4 + co);
        let c: number;
        if (proto === PROTO_TCP) {
          c = csumReplace32(oldC, oldAddr, newAddr);
          if (newPort >= 0) c = csumReplace16(c, oldPort, newPort);
        } else {
          c = udpCsumReplace32(oldC, oldAddr, newAddr);
          if (newPort >= 0) c = udpCsumReplace16(c, oldPort, newPort);
        }
        put16(buf, q4 + co, c);
        ic = csumReplace16(ic, oldC, c);
      }
    } else if (proto === PROTO_ICMP && newPort >= 0 && q4len >= ICMP_HEADER_LEN) {
      const t = buf[q4 + ICMP_TYPE];
      if (t === ICMP_ECHO_REQUEST || t === ICMP_ECHO_REPLY) {
        const oldId = get16(buf, q4 + ICMP_IDENT);
        put16(buf, q4 + ICMP_IDENT, newPort);
        ic = csumReplace16(ic, oldId, newPort);
        const oldC = get16(buf, q4 + ICMP_CHECKSUM);
        const c = csumReplace16(oldC, oldId, newPort);
        put16(buf, q4 + ICMP_CHECKSUM, c);
        ic = csumReplace16(ic, oldC, c);
      }
    }
  }
  put16(buf, io + ICMP_CHECKSUM, ic);
}

/**
 * For an ICMP error inside the IPv4 packet at `ipOff` (checked: ipv4Check
 * and icmpCheck): translate the quoted packet's source address and port
 * (ICMP echo: identifier; negative newPort keeps it). Fixes the quoted IPv4
 * header checksum, the quoted TCP/UDP checksum when the quote holds it
 * (UDP 0 stays 0; the quoted ICMP echo checksum too; a quoted SCTP CRC is
 * left as is, it covers bytes not quoted), and the outer ICMP checksum, all
 * incrementally. The outer IPv4 header is not touched: use rewriteSrc /
 * rewriteDst on it (port -1) for the outer addresses.
 */
export function icmpQuoteRewriteSrc(buf: Uint8Array, ipOff: number, newAddr: number, newPort: number): void {
  quoteRewrite(buf, ipOff, IPV4_SRC, TCP_SRC_PORT, newAddr, newPort);
}

/** As icmpQuoteRewriteSrc, for the quoted packet's destination address and port. */
export function icmpQuoteRewriteDst(buf: Uint8Array, ipOff: number, newAddr: number, newPort: number): void {
  quoteRewrite(buf, ipOff, IPV4_DST, TCP_DST_PORT, newAddr, newPort);
}
