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

const IP_CSUM = 10;

function rewriteAddrPort(
  buf: Uint8Array, ipOff: number, addrAt: number, portAt: number, newAddr: number, newPort: number, partial: boolean,
): void {
  newAddr = newAddr >>> 0;
  const ao = ipOff + addrAt;
  const oldAddr = get32(buf, ao);
  put32(buf, ao, newAddr);
  put16(buf, ipOff + IP_CSUM, csumReplace32(get16(buf, ipOff + IP_CSUM), oldAddr, newAddr));

  const flagsFrag = get16(buf, ipOff + 6);
  if ((flagsFrag & 0x1fff) !== 0) return; // non-first fragment: no L4 header here
  const hlen = (buf[ipOff] & 0x0f) << 2;
  const l4 = ipOff + hlen;
  const l4len = get16(buf, ipOff + 2) - hlen;
  const proto = buf[ipOff + 9];

  if (partial && (proto === 6 || proto === 17)) {
    const co = l4 + (proto === 6 ? 16 : 6);
    if (l4len < (proto === 6 ? 20 : 8)) return;
    // the pseudo-header sum s is stored as is: s' = s - old + new = ~csumReplace32(~s, old, new)
    put16(buf, co, ~csumReplace32(~get16(buf, co) & 0xffff, oldAddr, newAddr) & 0xffff);
    if (newPort >= 0) put16(buf, l4 + portAt, newPort);
  } else if (proto === 6) {
    if (l4len < 20) return;
    let c = csumReplace32(get16(buf, l4 + 16), oldAddr, newAddr);
    if (newPort >= 0) {
      const po = l4 + portAt;
      c = csumReplace16(c, get16(buf, po), newPort);
      put16(buf, po, newPort);
    }
    put16(buf, l4 + 16, c);
  } else if (proto === 17) {
    if (l4len < 8) return;
    let c = udpCsumReplace32(get16(buf, l4 + 6), oldAddr, newAddr);
    if (newPort >= 0) {
      const po = l4 + portAt;
      c = udpCsumReplace16(c, get16(buf, po), newPort);
      put16(buf, po, newPort);
    }
    put16(buf, l4 + 6, c);
  } else if (proto === 132) {
    if (l4len < 12) return;
    if (newPort >= 0) put16(buf, l4 + portAt, newPort);
    // CRC32c covers the whole SCTP packet: recompute when it is all here
    // (a first fragment with MF set keeps a stale CRC: it cannot be fixed from one fragment)
    if ((flagsFrag & 0x2000) === 0) sctpFillChecksumAt(buf, l4, l4len);
  } else if (proto === 1) {
    // ICMP has no pseudo-header: an address change needs nothing; echo ident is the port
    if (l4len < 8 || newPort < 0) return;
    const t = buf[l4];
    if (t !== 8 && t !== 0) return;
    const old = get16(buf, l4 + 4);
    put16(buf, l4 + 4, newPort);
    put16(buf, l4 + 2, csumReplace16(get16(buf, l4 + 2), old, newPort));
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
  rewriteAddrPort(buf, ipOff, 12, 0, newAddr, newPort, partial);
}

/** Destination NAT: as rewriteSrc, on the destination address and port. */
export function rewriteDst(buf: Uint8Array, ipOff: number, newAddr: number, newPort: number, partial = false): void {
  rewriteAddrPort(buf, ipOff, 16, 2, newAddr, newPort, partial);
}

function quoteRewrite(
  buf: Uint8Array, ipOff: number, addrAt: number, portAt: number, newAddr: number, newPort: number,
): void {
  newAddr = newAddr >>> 0;
  const hlen = (buf[ipOff] & 0x0f) << 2;
  const io = ipOff + hlen; // ICMP header
  const qo = io + 8; // quoted IPv4 header
  const quoted = get16(buf, ipOff + 2) - hlen - 8; // bytes of quote present
  let ic = get16(buf, io + 2); // outer ICMP checksum, covers everything below

  const ao = qo + addrAt;
  const oldAddr = get32(buf, ao);
  put32(buf, ao, newAddr);
  ic = csumReplace32(ic, oldAddr, newAddr);
  const oldQc = get16(buf, qo + IP_CSUM);
  const newQc = csumReplace32(oldQc, oldAddr, newAddr);
  put16(buf, qo + IP_CSUM, newQc);
  ic = csumReplace16(ic, oldQc, newQc);

  if ((get16(buf, qo + 6) & 0x1fff) === 0) {
    const qhlen = (buf[qo] & 0x0f) << 2;
    const q4 = qo + qhlen;
    const q4len = quoted - qhlen; // quoted L4 bytes present (not the original length)
    const proto = buf[qo + 9];
    if (proto === 6 || proto === 17 || proto === 132) {
      let oldPort = 0;
      if (newPort >= 0 && q4len >= 4) {
        const po = q4 + portAt;
        oldPort = get16(buf, po);
        put16(buf, po, newPort);
        ic = csumReplace16(ic, oldPort, newPort);
      }
      // the quoted L4 checksum, when quoted, is fixed too (as Linux does); SCTP's CRC is left as quoted
      const co = proto === 6 ? 16 : proto === 17 ? 6 : -1;
      if (co >= 0 && q4len >= co + 2) {
        const oldC = get16(buf, q4 + co);
        let c: number;
        if (proto === 6) {
          c = csumReplace32(oldC, oldAddr, newAddr);
          if (newPort >= 0) c = csumReplace16(c, oldPort, newPort);
        } else {
          c = udpCsumReplace32(oldC, oldAddr, newAddr);
          if (newPort >= 0) c = udpCsumReplace16(c, oldPort, newPort);
        }
        put16(buf, q4 + co, c);
        ic = csumReplace16(ic, oldC, c);
      }
    } else if (proto === 1 && newPort >= 0 && q4len >= 8) {
      const t = buf[q4];
      if (t === 8 || t === 0) {
        const oldId = get16(buf, q4 + 4);
        put16(buf, q4 + 4, newPort);
        ic = csumReplace16(ic, oldId, newPort);
        const oldC = get16(buf, q4 + 2);
        const c = csumReplace16(oldC, oldId, newPort);
        put16(buf, q4 + 2, c);
        ic = csumReplace16(ic, oldC, c);
      }
    }
  }
  put16(buf, io + 2, ic);
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
  quoteRewrite(buf, ipOff, 12, 0, newAddr, newPort);
}

/** As icmpQuoteRewriteSrc, for the quoted packet's destination address and port. */
export function icmpQuoteRewriteDst(buf: Uint8Array, ipOff: number, newAddr: number, newPort: number): void {
  quoteRewrite(buf, ipOff, 16, 2, newAddr, newPort);
}
