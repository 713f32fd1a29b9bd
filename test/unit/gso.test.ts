import t from 'tap';
import { gsoSegment, completeChecksum } from '../../dataplane/gso.ts';
import { checksumsValid, hex, fromHex, ACK, PSH, FIN } from '../support/packets.ts';
import { superPacket } from '../support/vnet.ts';
import { get16, get32 } from '../../dataplane/wire/bytes.ts';
import { wireErrorName } from '../../dataplane/wire/error.ts';

t.test('a TCP super-packet becomes its segments: headers copied, lengths, ids, sequence numbers, flags, checksums', async (t) => {
  // 10 payload bytes, gso_size 4: segments of 4, 4, 2; FIN|PSH only on the last
  const sp = superPacket({ src: '10.0.0.1', dst: '10.0.0.2', sport: 40000, dport: 5201, flags: ACK | PSH | FIN, seq: 0xfffffffe, payload: fromHex('00112233445566778899') }, 4);
  const out = new Uint8Array(1000);
  const offs = new Uint32Array(8);
  const lens = new Uint32Array(8);
  const n = gsoSegment(sp, 10, 4, out, 0, 10, offs, lens, 8);
  t.equal(n, 3);
  const segs = [0, 1, 2].map((k) => out.subarray(offs[k], offs[k] + lens[k]));
  t.same(segs.map((s) => s.length), [10 + 44, 10 + 44, 10 + 42]);
  for (const [k, s] of segs.entries()) {
    t.equal(hex(s.subarray(0, 10)), '00'.repeat(10), 'a virtio header saying "one packet, checksum complete"');
    const ip = s.subarray(10);
    t.ok(checksumsValid(ip), `segment ${k}: IP and TCP checksums verify`);
    t.equal(get16(ip, 2), ip.length);
    t.equal(get16(ip, 4), (0x1234 + k) & 0xffff, 'IP id + k');
    t.equal(get32(ip, 24), (0xfffffffe + 4 * k) >>> 0, 'seq + k * gso_size (wrapping)');
    t.equal(ip[33], k === 2 ? ACK | PSH | FIN : ACK, 'FIN and PSH on the last segment only');
  }
  t.equal(hex(segs[0].subarray(50)), '00112233');
  t.equal(hex(segs[2].subarray(50)), '8899');
  // only the first, e.g. to quote it
  t.equal(gsoSegment(sp, 10, 4, out, 0, 0, offs, lens, 1), 1);
  t.equal(lens[0], 44);
  t.ok(checksumsValid(out.subarray(0, 44)));
});

t.test('UDP (USO): length field and checksum per datagram', async (t) => {
  const sp = superPacket({ proto: 17, src: '10.0.0.1', dst: '10.0.0.2', sport: 40000, dport: 5201 }, 1400, 3000);
  const out = new Uint8Array(5000);
  const offs = new Uint32Array(4);
  const lens = new Uint32Array(4);
  t.equal(gsoSegment(sp, 10, 1400, out, 0, 0, offs, lens, 4), 3);
  t.same([...lens.subarray(0, 3)], [1428, 1428, 228]);
  for (let k = 0; k < 3; k++) {
    const ip = out.subarray(offs[k], offs[k] + lens[k]);
    t.ok(checksumsValid(ip));
    t.equal(get16(ip, 24), lens[k] - 20, 'UDP length');
  }
});

t.test('refusals, by name', async (t) => {
  const sp = superPacket({ src: '10.0.0.1', dst: '10.0.0.2', sport: 1, dport: 2, flags: ACK }, 4, 10);
  const small = new Uint8Array(60);
  const offs = new Uint32Array(8);
  const lens = new Uint32Array(8);
  t.equal(wireErrorName(gsoSegment(sp, 10, 4, small, 0, 0, offs, lens, 8)), 'no_room');
  t.equal(wireErrorName(gsoSegment(sp, 10, 4, new Uint8Array(1000), 0, 0, new Uint32Array(2), lens, 8)), 'no_room');
  t.equal(wireErrorName(gsoSegment(sp, 10, 0, new Uint8Array(1000), 0, 0, offs, lens, 8)), 'bad_vnet_gso_size');
  const icmp = superPacket({ proto: 6, src: '10.0.0.1', dst: '10.0.0.2', sport: 1, dport: 2, flags: ACK }, 4, 10);
  icmp[10 + 9] = 1;
  t.equal(wireErrorName(gsoSegment(icmp, 10, 4, new Uint8Array(1000), 0, 0, offs, lens, 8)), 'vnet_gso_mismatch');
});

t.test('completing a partial checksum gives the full one', async (t) => {
  const sp = superPacket({ src: '10.0.0.1', dst: '10.0.0.2', sport: 40000, dport: 5201, flags: ACK }, 0, 333);
  const ip = sp.subarray(10);
  t.notOk(checksumsValid(ip), 'partial: does not verify as it is');
  completeChecksum(ip, 0, 20, 16);
  t.ok(checksumsValid(ip));
});
