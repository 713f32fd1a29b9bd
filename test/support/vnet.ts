/**
 * GSO super-packets for the offload tests: a packet from packets.ts with a
 * virtio-net header in front and its TCP/UDP checksum made partial (the
 * pseudo-header sum, as the kernel hands it over with NEEDS_CSUM).
 */
import { pkt } from './packets.ts';
import type { Pkt } from './packets.ts';
import { get16, get32, put16 } from '../../dataplane/wire/bytes.ts';
import { pseudoHeaderSum } from '../../dataplane/wire/checksum.ts';
import { writeVnetHeader, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_GSO_UDP_L4 } from '../../dataplane/wire/virtio.ts';

/** Replace the complete TCP/UDP checksum of the IPv4 packet at off by the pseudo-header sum (NEEDS_CSUM form). */
export function makePartial(b: Uint8Array, off = 0): void {
  const hl = (b[off] & 15) * 4;
  const proto = b[off + 9];
  const l4len = get16(b, off + 2) - hl;
  put16(b, off + hl + (proto === 6 ? 16 : 6), pseudoHeaderSum(get32(b, off + 12), get32(b, off + 16), proto, l4len));
}

/**
 * [virtio header | IPv4 packet]: a super-packet of p (its payload `payloadLen` bytes of a
 * pattern unless p.payload is given) with gso_size `gso` (0: not GSO, checksum still partial).
 */
export function superPacket(p: Pkt, gso: number, payloadLen = 0, o: { hdrLen?: number } = {}): Uint8Array {
  const payload = p.payload ?? Uint8Array.from({ length: payloadLen }, (_, i) => (i * 7 + 3) & 255);
  const ip = pkt({ ...p, payload });
  makePartial(ip);
  const proto = ip[9];
  const hl = (ip[0] & 15) * 4;
  const l4h = proto === 6 ? (ip[hl + 12] >> 4) * 4 : 8;
  const out = new Uint8Array(10 + ip.length);
  const type = gso === 0 ? VNET_GSO_NONE : proto === 6 ? VNET_GSO_TCPV4 : VNET_GSO_UDP_L4;
  writeVnetHeader(out, 0, VNET_F_NEEDS_CSUM, type, o.hdrLen ?? hl + l4h, gso, hl, proto === 6 ? 16 : 6);
  out.set(ip, 10);
  return out;
}
