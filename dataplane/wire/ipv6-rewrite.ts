/**
 * NAT rewrites on IPv6 packets, the counterpart of rewrite.ts: change an
 * address (four words) and a port and fix every checksum that covers them,
 * incrementally (RFC 1624), as Linux's nf_nat_ipv6_manip_pkt does. IPv6
 * has no header checksum; the TCP, UDP and ICMPv6 checksums cover the
 * pseudo-header, so an address change reaches them all (ICMPv6 included,
 * unlike ICMPv4). "Port" is as in rewrite.ts: TCP/UDP/SCTP ports, the
 * ICMPv6 echo identifier; a negative port leaves it.
 *
 * `c` is the packet's walk (ipv6Walk); a non-first fragment gets only its
 * address rewritten (its upper-layer header is in the first fragment, whose
 * rewrite fixes the checksum). `partial`: as in rewrite.ts (the TCP/UDP
 * checksum field holds the pseudo-header sum, updated for the address only).
 */

import { get16, put16 } from './bytes.ts';
import { csumReplace16, udpCsumReplace16 } from './checksum.ts';
import { sctpFillChecksumAt } from './sctp.ts';
import { addr6Delta, csumApplyDelta, udpCsumApplyDelta, writeAddr6, type Ipv6Chain } from './ipv6.ts';

// copied, not imported (see rewrite.ts: module-local literal consts are folded)
const IPV6_SRC = 8;
const IPV6_DST = 24;
const IPV6_HEADER_LEN = 40;
const IPV6_PAYLOAD_LEN = 4;
const TCP_SRC_PORT = 0;
const TCP_DST_PORT = 2;
const TCP_CHECKSUM = 16;
const TCP_MIN_HEADER_LEN = 20;
const UDP_CHECKSUM = 6;
const UDP_HEADER_LEN = 8;
const SCTP_COMMON_HEADER_LEN = 12;
const ICMPV6_CHECKSUM = 2;
const ICMPV6_IDENT = 4;
const ICMPV6_QUOTE = 8;
const ICMPV6_HEADER_LEN = 8;
const ICMPV6_ECHO_REQUEST = 128;
const ICMPV6_ECHO_REPLY = 129;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_SCTP = 132;
const PROTO_ICMPV6 = 58;

function rewriteAddrPort6(
  buf: Uint8Array, ipOff: number, c: Ipv6Chain, addrAt: number, portAt: number,
  w: ArrayLike<number>, wo: number, newPort: number, partial: boolean,
): void {
  const ao = ipOff + addrAt;
  const delta = addr6Delta(buf, ao, w, wo);
  writeAddr6(buf, ao, w, wo);
  if (c.fragOffset !== 0) return; // non-first fragment: no upper-layer header here
  const l4 = c.l4Off;
  const l4len = c.l4Len;
  const proto = c.proto;
  if (partial && (proto === PROTO_TCP || proto === PROTO_UDP)) {
    const co = l4 + (proto === PROTO_TCP ? TCP_CHECKSUM : UDP_CHECKSUM);
    if (l4len < (proto === PROTO_TCP ? TCP_MIN_HEADER_LEN : UDP_HEADER_LEN)) return;
    put16(buf, co, ~csumApplyDelta(~get16(buf, co) & 0xffff, delta) & 0xffff);
    if (newPort >= 0) put16(buf, l4 + portAt, newPort);
  } else if (proto === PROTO_TCP) {
    if (l4len < TCP_MIN_HEADER_LEN) return;
    let k = csumApplyDelta(get16(buf, l4 + TCP_CHECKSUM), delta);
    if (newPort >= 0) {
      const po = l4 + portAt;
      k = csumReplace16(k, get16(buf, po), newPort);
      put16(buf, po, newPort);
    }
    put16(buf, l4 + TCP_CHECKSUM, k);
  } else if (proto === PROTO_UDP) {
    if (l4len < UDP_HEADER_LEN) return;
    let k = udpCsumApplyDelta(get16(buf, l4 + UDP_CHECKSUM), delta);
    if (newPort >= 0) {
      const po = l4 + portAt;
      k = udpCsumReplace16(k, get16(buf, po), newPort);
      put16(buf, po, newPort);
    }
    put16(buf, l4 + UDP_CHECKSUM, k);
  } else if (proto === PROTO_SCTP) {
    if (l4len < SCTP_COMMON_HEADER_LEN) return;
    if (newPort >= 0) put16(buf, l4 + portAt, newPort);
    // CRC32c (no pseudo-header): recompute when the whole SCTP packet is here
    if (c.moreFragments === 0) sctpFillChecksumAt(buf, l4, l4len);
  } else if (proto === PROTO_ICMPV6) {
    if (l4len < ICMPV6_HEADER_LEN) return;
    let k = csumApplyDelta(get16(buf, l4 + ICMPV6_CHECKSUM), delta);
    const t = buf[l4];
    if (newPort >= 0 && (t === ICMPV6_ECHO_REQUEST || t === ICMPV6_ECHO_REPLY)) {
      const old = get16(buf, l4 + ICMPV6_IDENT);
      put16(buf, l4 + ICMPV6_IDENT, newPort);
      k = csumReplace16(k, old, newPort);
    }
    put16(buf, l4 + ICMPV6_CHECKSUM, k);
  }
}

/**
 * Source NAT on the walked IPv6 packet at `ipOff`: source := w[wo..wo+4),
 * source port (ICMPv6 echo: identifier) := newPort unless negative; fixes
 * the TCP/UDP/ICMPv6 checksum incrementally (SCTP: CRC recomputed). For an
 * ICMPv6 error only the outer address changes (and the ICMPv6 checksum for
 * it); the quote is icmpv6QuoteRewriteSrc/Dst's job.
 */
export function rewriteSrc6(buf: Uint8Array, ipOff: number, c: Ipv6Chain, w: ArrayLike<number>, wo: number, newPort: number, partial = false): void {
  rewriteAddrPort6(buf, ipOff, c, IPV6_SRC, TCP_SRC_PORT, w, wo, newPort, partial);
}

/** Destination NAT: as rewriteSrc6, on the destination address and port. */
export function rewriteDst6(buf: Uint8Array, ipOff: number, c: Ipv6Chain, w: ArrayLike<number>, wo: number, newPort: number, partial = false): void {
  rewriteAddrPort6(buf, ipOff, c, IPV6_DST, TCP_DST_PORT, w, wo, newPort, partial);
}

/**
 * Both translations of a NATed packet in one pass: destination :=
 * w[dAt..dAt+4) port dport, source := w[sAt..sAt+4) port sport (negative
 * ports kept), the TCP/UDP/ICMPv6 checksum updated once for all four
 * changes (the same bits as rewriteDst6 then rewriteSrc6). Not for
 * `partial` checksums (use those two).
 */
export function rewriteBoth6(
  buf: Uint8Array, ipOff: number, c: Ipv6Chain, w: ArrayLike<number>, dAt: number, dport: number, sAt: number, sport: number,
): void {
  const proto = c.proto;
  if (c.fragOffset !== 0 || (proto !== PROTO_TCP && proto !== PROTO_UDP && proto !== PROTO_ICMPV6)) {
    rewriteAddrPort6(buf, ipOff, c, IPV6_DST, TCP_DST_PORT, w, dAt, dport, false);
    rewriteAddrPort6(buf, ipOff, c, IPV6_SRC, TCP_SRC_PORT, w, sAt, sport, false);
    return;
  }
  const l4 = c.l4Off;
  const csumAt = proto === PROTO_TCP ? TCP_CHECKSUM : proto === PROTO_UDP ? UDP_CHECKSUM : ICMPV6_CHECKSUM;
  if (c.l4Len < (proto === PROTO_TCP ? TCP_MIN_HEADER_LEN : UDP_HEADER_LEN)) {
    rewriteAddrPort6(buf, ipOff, c, IPV6_DST, TCP_DST_PORT, w, dAt, dport, false);
    rewriteAddrPort6(buf, ipOff, c, IPV6_SRC, TCP_SRC_PORT, w, sAt, sport, false);
    return;
  }
  // Σ ~old + Σ new over the 32 address bytes at IPV6_SRC (src then dst) and the ports
  // per word: Σ~old16 + Σnew16 = (0x1fffe - (old >>> 16) - (old & 0xffff)) + (new >>> 16) + (new & 0xffff); written as read
  let s = 0;
  const a = ipOff + IPV6_SRC;
  for (let k = 0; k < 4; k++) {
    const o = a + (k << 2);
    const v = w[sAt + k];
    s += 0x1fffe - ((buf[o] << 8) | buf[o + 1]) - ((buf[o + 2] << 8) | buf[o + 3]) + (v >>> 16) + (v & 0xffff);
    buf[o] = v >>> 24; buf[o + 1] = v >>> 16; buf[o + 2] = v >>> 8; buf[o + 3] = v;
  }
  for (let k = 0; k < 4; k++) {
    const o = a + 16 + (k << 2);
    const v = w[dAt + k];
    s += 0x1fffe - ((buf[o] << 8) | buf[o + 1]) - ((buf[o + 2] << 8) | buf[o + 3]) + (v >>> 16) + (v & 0xffff);
    buf[o] = v >>> 24; buf[o + 1] = v >>> 16; buf[o + 2] = v >>> 8; buf[o + 3] = v;
  }
  const echo = proto === PROTO_ICMPV6 && (buf[l4] === ICMPV6_ECHO_REQUEST || buf[l4] === ICMPV6_ECHO_REPLY);
  if (proto !== PROTO_ICMPV6) {
    if (dport >= 0) {
      s += (~((buf[l4 + 2] << 8) | buf[l4 + 3]) & 0xffff) + dport;
      buf[l4 + 2] = dport >>> 8; buf[l4 + 3] = dport;
    }
    if (sport >= 0) {
      s += (~((buf[l4] << 8) | buf[l4 + 1]) & 0xffff) + sport;
      buf[l4] = sport >>> 8; buf[l4 + 1] = sport;
    }
  } else if (echo && sport >= 0) {
    s += (~((buf[l4 + ICMPV6_IDENT] << 8) | buf[l4 + ICMPV6_IDENT + 1]) & 0xffff) + sport;
    buf[l4 + ICMPV6_IDENT] = sport >>> 8; buf[l4 + ICMPV6_IDENT + 1] = sport;
  }
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  const co = l4 + csumAt;
  const old = (buf[co] << 8) | buf[co + 1];
  const k = proto === PROTO_UDP ? udpCsumApplyDelta(old, s) : csumApplyDelta(old, s);
  buf[co] = k >>> 8; buf[co + 1] = k;
}

/**
 * rewriteBoth6 for a packet whose addresses and ports the caller has read
 * already (the established path: the packet's words are in hand): `old`
 * holds its source at old[oo..oo+4) and destination at old[oo+4..oo+8), its
 * ports are oldSport/oldDport. The same bytes as rewriteBoth6 (the same
 * sums, word for word), without reading the 32 address bytes again and
 * without writing the words that do not change. TCP and UDP only, whole
 * packets with full checksums; anything else goes to rewriteBoth6.
 */
let rwBuf: Uint8Array | null = null;
let rwView: DataView = new DataView(new ArrayBuffer(0));

export function rewriteBothKnown6(
  buf: Uint8Array, ipOff: number, c: Ipv6Chain, old: Uint32Array, oo: number, oldSport: number, oldDport: number,
  w: Uint32Array, dAt: number, dport: number, sAt: number, sport: number,
): void {
  const proto = c.proto;
  const l4 = c.l4Off;
  if (c.fragOffset !== 0 || dport < 0 || sport < 0 || (proto !== PROTO_TCP && proto !== PROTO_UDP) || c.l4Len < (proto === PROTO_TCP ? TCP_MIN_HEADER_LEN : UDP_HEADER_LEN)) {
    rewriteBoth6(buf, ipOff, c, w, dAt, dport, sAt, sport);
    return;
  }
  let s = 0;
  const a = ipOff + IPV6_SRC;
  // the words through a DataView of the buffer (one big-endian store each), kept while the buffer is the same
  let dv = rwView;
  if (rwBuf !== buf) {
    dv = rwView = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    rwBuf = buf;
  }
  for (let k = 0; k < 8; k++) {
    const o = old[oo + k];
    const v = k < 4 ? w[sAt + k] : w[dAt + k - 4];
    s += 0x1fffe - (o >>> 16) - (o & 0xffff) + (v >>> 16) + (v & 0xffff);
    if (o !== v) dv.setUint32(a + (k << 2), v);
  }
  s += (~oldDport & 0xffff) + dport + (~oldSport & 0xffff) + sport;
  buf[l4] = sport >>> 8; buf[l4 + 1] = sport;
  buf[l4 + 2] = dport >>> 8; buf[l4 + 3] = dport;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  const co = l4 + (proto === PROTO_TCP ? TCP_CHECKSUM : UDP_CHECKSUM);
  const oc = (buf[co] << 8) | buf[co + 1];
  const k = proto === PROTO_UDP ? udpCsumApplyDelta(oc, s) : csumApplyDelta(oc, s);
  buf[co] = k >>> 8; buf[co + 1] = k;
}

function quoteRewrite6(
  buf: Uint8Array, c: Ipv6Chain, q: Ipv6Chain, addrAt: number, portAt: number,
  w: ArrayLike<number>, wo: number, newPort: number,
): void {
  const io = c.l4Off; // the outer ICMPv6 header
  const qo = io + ICMPV6_QUOTE; // the quoted IPv6 header
  let ic = get16(buf, io + ICMPV6_CHECKSUM);
  const ao = qo + addrAt;
  const delta = addr6Delta(buf, ao, w, wo);
  writeAddr6(buf, ao, w, wo);
  ic = csumApplyDelta(ic, delta);
  if (q.fragOffset === 0) {
    const q4 = q.l4Off;
    const q4len = q.l4Len; // quoted bytes of the upper layer
    const proto = q.proto;
    if (proto === PROTO_TCP || proto === PROTO_UDP || proto === PROTO_SCTP) {
      let oldPort = 0;
      if (newPort >= 0 && q4len >= 4) {
        const po = q4 + portAt;
        oldPort = get16(buf, po);
        put16(buf, po, newPort);
        ic = csumReplace16(ic, oldPort, newPort);
      }
      const co = proto === PROTO_TCP ? TCP_CHECKSUM : proto === PROTO_UDP ? UDP_CHECKSUM : -1;
      if (co >= 0 && q4len >= co + 2) {
        const oldC = get16(buf, q4 + co);
        let k: number;
        if (proto === PROTO_TCP) {
          k = csumApplyDelta(oldC, delta);
          if (newPort >= 0) k = csumReplace16(k, oldPort, newPort);
        } else {
          k = udpCsumApplyDelta(oldC, delta);
          if (newPort >= 0) k = udpCsumReplace16(k, oldPort, newPort);
        }
        put16(buf, q4 + co, k);
        ic = csumReplace16(ic, oldC, k);
      }
    } else if (proto === PROTO_ICMPV6 && q4len >= ICMPV6_HEADER_LEN) {
      const t = buf[q4];
      // the quoted ICMPv6 checksum covers the quoted pseudo-header: fix it for the address too
      const oldC = get16(buf, q4 + ICMPV6_CHECKSUM);
      let k = csumApplyDelta(oldC, delta);
      if (newPort >= 0 && (t === ICMPV6_ECHO_REQUEST || t === ICMPV6_ECHO_REPLY)) {
        const oldId = get16(buf, q4 + ICMPV6_IDENT);
        put16(buf, q4 + ICMPV6_IDENT, newPort);
        ic = csumReplace16(ic, oldId, newPort);
        k = csumReplace16(k, oldId, newPort);
      }
      put16(buf, q4 + ICMPV6_CHECKSUM, k);
      ic = csumReplace16(ic, oldC, k);
    }
  }
  put16(buf, io + ICMPV6_CHECKSUM, ic);
}

/**
 * For an ICMPv6 error (outer walk `c`, quote walk `q` from icmpv6Check):
 * translate the quoted packet's source address and port (echo: identifier;
 * negative keeps it), fixing the quoted TCP/UDP/ICMPv6 checksum when quoted
 * and the outer ICMPv6 checksum, incrementally. The outer header is not
 * touched: rewriteSrc6/rewriteDst6 (port -1) do the outer addresses.
 */
export function icmpv6QuoteRewriteSrc(buf: Uint8Array, c: Ipv6Chain, q: Ipv6Chain, w: ArrayLike<number>, wo: number, newPort: number): void {
  quoteRewrite6(buf, c, q, IPV6_SRC, TCP_SRC_PORT, w, wo, newPort);
}

/** As icmpv6QuoteRewriteSrc, for the quoted destination address and port. */
export function icmpv6QuoteRewriteDst(buf: Uint8Array, c: Ipv6Chain, q: Ipv6Chain, w: ArrayLike<number>, wo: number, newPort: number): void {
  quoteRewrite6(buf, c, q, IPV6_DST, TCP_DST_PORT, w, wo, newPort);
}

/** The end of the IPv6 packet at `ipOff`: off + 40 + payload length. */
export function ipv6End(buf: Uint8Array, ipOff: number): number {
  return ipOff + IPV6_HEADER_LEN + get16(buf, ipOff + IPV6_PAYLOAD_LEN);
}
