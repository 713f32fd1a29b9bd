import t from 'tap';
import {
  vnetCheck, vnetMatch, vnetSegments, vnetFlags, vnetGsoType, vnetHdrLen, vnetGsoSize, vnetCsumStart, vnetCsumOffset,
  vnetIsGso, vnetNeedsCsum, writeVnetHeader, writeVnetNone, vnetClearNeedsCsum,
  VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_ECN, VIRTIO_NET_HDR_LEN,
} from '../../dataplane/wire/virtio.ts';
import { wireErrorName, WIRE_OK } from '../../dataplane/wire/error.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}
const name = (c: number): string => wireErrorName(c);

// virtio_net_hdr as a TUN with TSO hands it over (little-endian fields):
// flags NEEDS_CSUM, gso TCPV4, hdr_len 40, gso_size 1448, csum_start 20, csum_offset 16
const HDR = '01 01 2800 a805 1400 1000';
// + a TCP/IPv4 packet 10.0.0.1:40000 -> 10.0.0.2:5201, total length 0x0050 (80): 20 + 20 + 40 bytes payload,
//   (IP header checksum 0x7ad8), TCP checksum field = pseudo-header sum (0x0a00+0x0001+0x0a00+0x0002+6+60 = 0x1445)
const IP = '45000050abcd40004006 7ad8 0a000001 0a000002';
const TCP = '9c401451 00000001 00000000 5010faf0 1445 0000';
const PAYLOAD = '00'.repeat(40);

t.test('fields at their offsets, little-endian', async (t) => {
  const b = hex(HDR + IP + TCP + PAYLOAD);
  t.equal(VIRTIO_NET_HDR_LEN, 10);
  t.equal(vnetFlags(b, 0), VNET_F_NEEDS_CSUM);
  t.equal(vnetGsoType(b, 0), VNET_GSO_TCPV4);
  t.equal(vnetHdrLen(b, 0), 40);
  t.equal(vnetGsoSize(b, 0), 1448);
  t.equal(vnetCsumStart(b, 0), 20);
  t.equal(vnetCsumOffset(b, 0), 16);
  t.ok(vnetIsGso(b, 0));
  t.ok(vnetNeedsCsum(b, 0));
  t.equal(vnetCheck(b, 0, b.length), WIRE_OK);
  t.equal(vnetMatch(b, 0, 10, 6), WIRE_OK);
  const w = new Uint8Array(10);
  writeVnetHeader(w, 0, 1, 1, 40, 1448, 20, 16);
  t.equal(Buffer.from(w).toString('hex'), HDR.replace(/\s+/g, ''));
  writeVnetNone(w, 0);
  t.equal(Buffer.from(w).toString('hex'), '00'.repeat(10));
  const c = hex(HDR);
  vnetClearNeedsCsum(c, 0);
  t.equal(Buffer.from(c).toString('hex'), '00012800a80500000000', 'NEEDS_CSUM, csum_start and csum_offset cleared');
});

t.test('the checked entry refuses what a TUN never hands over, by name', async (t) => {
  const pkt = IP + TCP + PAYLOAD;
  const cases: Array<[string, string]> = [
    ['01 01 2800 a805 1400', 'too_short'],
    ['05 01 2800 a805 1400 1000', 'bad_vnet_flags'],
    ['01 03 2800 a805 1400 1000', 'bad_vnet_gso_type'], // UFO
    ['01 07 2800 a805 1400 1000', 'bad_vnet_gso_type'],
    ['01 85 2800 a805 1400 1000', 'bad_vnet_gso_type'], // ECN on USO
    ['01 01 2800 0000 1400 1000', 'bad_vnet_gso_size'],
    ['01 01 5100 a805 1400 1000', 'bad_vnet_hdr_len'], // 81 > 80
    ['01 01 2800 a805 4000 1000', 'bad_vnet_csum'], // 64 + 16 + 2 > 80
    ['00 01 2800 a805 1400 1000', 'bad_vnet_csum'], // GSO without NEEDS_CSUM
  ];
  for (const [h, want] of cases) {
    const b = hex(h + (want === 'too_short' ? '' : pkt));
    t.equal(name(vnetCheck(b, 0, b.length)), want, `${h} → ${want}`);
  }
  const ecn = hex('01 81 2800 a805 1400 1000' + pkt);
  t.equal(vnetCheck(ecn, 0, ecn.length), WIRE_OK, 'TCPV4 | ECN is fine');
  t.equal(vnetGsoType(ecn, 0) & ~VNET_GSO_ECN, VNET_GSO_TCPV4);
  const none = hex('00'.repeat(10) + pkt);
  t.equal(vnetCheck(none, 0, none.length), WIRE_OK, 'all zero: nothing to do');
});

t.test('the header must describe the packet behind it', async (t) => {
  const b = hex(HDR + IP + TCP + PAYLOAD);
  t.equal(name(vnetMatch(b, 0, 10, 17)), 'vnet_gso_mismatch', 'TCPV4 on UDP');
  const frag = hex(HDR + IP + TCP + PAYLOAD);
  frag[10 + 6] = 0x20; // MF
  t.equal(name(vnetMatch(frag, 0, 10, 6)), 'vnet_gso_mismatch', 'GSO on a fragment');
  const v6 = hex('01 04 2800 a805 1400 1000' + IP + TCP + PAYLOAD);
  t.equal(name(vnetMatch(v6, 0, 10, 6)), 'vnet_gso_mismatch', 'TCPV6 on IPv4');
  const start = hex('01 01 2800 a805 1800 1000' + IP + TCP + PAYLOAD);
  t.equal(name(vnetMatch(start, 0, 10, 6)), 'vnet_csum_mismatch', 'csum_start not the TCP header');
  const offset = hex('01 00 0000 0000 1400 0600' + IP + TCP + PAYLOAD);
  t.equal(name(vnetMatch(offset, 0, 10, 6)), 'vnet_csum_mismatch', 'csum_offset of UDP on TCP');
  const empty = hex(HDR + '45000028abcd40004006 7b00 0a000001 0a000002' + TCP);
  t.equal(name(vnetMatch(empty, 0, 10, 6)), 'bad_vnet_hdr_len', 'GSO without payload');
});

t.test('segments on the wire: ceil(payload / gso_size)', async (t) => {
  t.equal(vnetSegments(40, 1448), 1);
  t.equal(vnetSegments(1448, 1448), 1);
  t.equal(vnetSegments(1449, 1448), 2);
  t.equal(vnetSegments(65483, 1448), 46);
  t.equal(vnetSegments(100, 0), 1);
});
