/**
 * Software segmentation and checksum completion for GSO super-packets, for
 * the packets that cannot stay super-packets (an ICMP error about one; see
 * pipeline.ts). The approach is that of Linux's tcp_gso_segment /
 * __udp_gso_segment and wireguard-go's tun/offload_linux.go (gsoSplit):
 * every segment gets a copy of the IPv4 and L4 headers, its share of the
 * payload (gso_size bytes, the last one the rest), then
 *   IPv4: total length, identification + k, header checksum recomputed;
 *   TCP:  sequence number + k * gso_size; FIN and PSH only on the last
 *         segment, CWR only on the first; checksum computed in full;
 *   UDP:  length field, checksum computed in full (a computed 0 is sent as 0xffff).
 * The input's L4 checksum field (a partial pseudo-header sum, or a full
 * checksum) is ignored: every segment leaves with a complete checksum.
 */
import { get16, get32, put16, put32 } from './wire/bytes.ts';
import { checksumRaw, ipv4HeaderChecksum, l4Checksum } from './wire/checksum.ts';
import { WIRE_NO_ROOM, WIRE_VNET_GSO_MISMATCH, WIRE_BAD_VNET_GSO_SIZE } from './wire/error.ts';

const PROTO_TCP = 6;
const PROTO_UDP = 17;

/**
 * Split the super-packet (IPv4, TCP or UDP) at src[ipOff ..] into segments of
 * at most `gsoSize` payload bytes, written one after another into `out` from
 * `outOff`, each preceded by `lead` zero bytes (room for a virtio header saying
 * "one packet, checksum complete"; 0 for none). Segment k's start (its lead
 * included) goes to offsets[k] and its length (lead included) to lengths[k].
 * At most `maxSegments` segments are produced (1: only the first, e.g. to quote
 * it in an ICMP error). Returns the count, or a negative wire error:
 * WIRE_VNET_GSO_MISMATCH (not TCP/UDP, or a fragment), WIRE_BAD_VNET_GSO_SIZE,
 * WIRE_NO_ROOM (out, offsets or lengths too small). The packet must have passed
 * ipv4Check and tcpCheck/udpCheck.
 */
export function gsoSegment(
  src: Uint8Array, ipOff: number, gsoSize: number,
  out: Uint8Array, outOff: number, lead: number,
  offsets: Uint32Array, lengths: Uint32Array, maxSegments: number,
): number {
  const hlen = (src[ipOff] & 0x0f) << 2;
  const total = get16(src, ipOff + 2);
  const proto = src[ipOff + 9];
  if ((get16(src, ipOff + 6) & 0x3fff) !== 0) return WIRE_VNET_GSO_MISMATCH;
  if (proto !== PROTO_TCP && proto !== PROTO_UDP) return WIRE_VNET_GSO_MISMATCH;
  if (gsoSize <= 0) return WIRE_BAD_VNET_GSO_SIZE;
  const l4 = ipOff + hlen;
  const l4h = proto === PROTO_TCP ? (src[l4 + 12] >>> 4) << 2 : 8;
  const hdr = hlen + l4h;
  const payload = total - hdr;
  const segs = payload <= 0 ? 1 : Math.ceil(payload / gsoSize);
  const n = segs < maxSegments ? segs : maxSegments;
  if (n > offsets.length || n > lengths.length) return WIRE_NO_ROOM;
  const id = get16(src, ipOff + 4);
  const seq = proto === PROTO_TCP ? get32(src, l4 + 4) : 0;
  const tcpFlags = proto === PROTO_TCP ? src[l4 + 13] : 0;
  const saddr = get32(src, ipOff + 12);
  const daddr = get32(src, ipOff + 16);
  let o = outOff;
  for (let k = 0; k < n; k++) {
    const start = hdr + k * gsoSize;
    const chunk = payload <= 0 ? 0 : Math.min(gsoSize, payload - k * gsoSize);
    const segLen = hdr + chunk;
    if (o + lead + segLen > out.length) return WIRE_NO_ROOM;
    out.fill(0, o, o + lead);
    const p = o + lead;
    out.set(src.subarray(ipOff, ipOff + hdr), p);
    out.set(src.subarray(ipOff + start, ipOff + start + chunk), p + hdr);
    put16(out, p + 2, segLen);
    put16(out, p + 4, (id + k) & 0xffff);
    put16(out, p + 10, 0);
    put16(out, p + 10, ipv4HeaderChecksum(out, p));
    const q = p + hlen;
    if (proto === PROTO_TCP) {
      put32(out, q + 4, (seq + k * gsoSize) >>> 0);
      let f = tcpFlags;
      if (k !== segs - 1) f &= ~0x09; // FIN, PSH: the last segment's
      if (k !== 0) f &= ~0x80; // CWR: the first segment's
      out[q + 13] = f;
      put16(out, q + 16, l4Checksum(out, q, l4h + chunk, 16, saddr, daddr, PROTO_TCP));
    } else {
      put16(out, q + 4, 8 + chunk);
      const c = l4Checksum(out, q, 8 + chunk, 6, saddr, daddr, PROTO_UDP);
      put16(out, q + 6, c === 0 ? 0xffff : c);
    }
    offsets[k] = o;
    lengths[k] = lead + segLen;
    o += lead + segLen;
  }
  return n;
}

/**
 * Complete a partial checksum in place (Linux's skb_checksum_help): the
 * field at ipOff + csumStart + csumOffset holds the pseudo-header sum; the
 * ones' complement sum from csumStart to the end of the IPv4 packet (that
 * field included) is stored complemented, a 0 as 0xffff.
 */
export function completeChecksum(buf: Uint8Array, ipOff: number, csumStart: number, csumOffset: number): void {
  const total = get16(buf, ipOff + 2);
  const s = checksumRaw(buf, ipOff + csumStart, total - csumStart, 0);
  const c = ~s & 0xffff;
  put16(buf, ipOff + csumStart + csumOffset, c === 0 ? 0xffff : c);
}
