/**
 * Two ways that must agree: NAT on a packet whose TCP/UDP checksum is partial
 * (the pseudo-header sum, NEEDS_CSUM), completed afterwards as the kernel
 * does, gives the packet NAT on the complete checksum gives; and a
 * super-packet segmented in software gives packets that verify and carry the
 * payload in order.
 */
import t from 'tap';
import fc from 'fast-check';
import { packetSpec, buildPacket } from './wire-gen.ts';
import { rewriteDst, rewriteSrc } from '../../dataplane/wire/rewrite.ts';
import { completeChecksum, gsoSegment } from '../../dataplane/gso.ts';
import { checksumsValid } from '../support/packets.ts';
import { makePartial } from '../support/vnet.ts';
import { get16, get32 } from '../../dataplane/wire/bytes.ts';
import { vnetSegments } from '../../dataplane/wire/virtio.ts';

const RUNS = { numRuns: 1000 };
const tcpOrUdp = packetSpec.map((s) => ({ ...s, proto: s.proto === 17 || s.proto === 1 ? 17 : 6, udpNoChecksum: false }));

t.test('NAT on a partial checksum, completed, equals NAT on the complete checksum', async (t) => {
  fc.assert(fc.property(tcpOrUdp, fc.boolean(), fc.nat(), fc.integer({ min: -1, max: 0xffff }), fc.boolean(), (s, dst, addr, port, both) => {
    const [full] = buildPacket(s, 0);
    const partial = full.slice();
    makePartial(partial);
    const nat = (b: Uint8Array, p: boolean) => {
      if (dst || both) rewriteDst(b, 0, addr >>> 0, port, p);
      if (!dst || both) rewriteSrc(b, 0, (addr ^ 0x5a5a) >>> 0, port, p);
    };
    nat(full, false);
    nat(partial, true);
    const hl = (full[0] & 15) * 4;
    const co = hl + (s.proto === 6 ? 16 : 6);
    completeChecksum(partial, 0, hl, s.proto === 6 ? 16 : 6);
    if (!checksumsValid(partial) || !checksumsValid(full)) return false;
    // the same bytes, but for the two spellings of a zero sum (0x0000 / 0xffff) in the L4 checksum
    for (let i = 0; i < full.length; i++) {
      if (i === co || i === co + 1) continue;
      if (full[i] !== partial[i]) return false;
    }
    const a = get16(full, co);
    const b = get16(partial, co);
    return a === b || (a === 0 && b === 0xffff) || (a === 0xffff && b === 0);
  }), RUNS);
  t.pass('agree');
});

t.test('segmentation: every segment verifies, payload in order, sequence numbers follow, ceil(payload / gso_size) of them', async (t) => {
  const big = fc.record({ spec: tcpOrUdp, len: fc.integer({ min: 1, max: 9000 }), gso: fc.integer({ min: 1, max: 2000 }), partial: fc.boolean() });
  fc.assert(fc.property(big, ({ spec, len, gso, partial }) => {
    const payload = Uint8Array.from({ length: len }, (_, i) => (i * 131 + 7) & 255);
    const [p] = buildPacket({ ...spec, payload }, 0);
    if (partial) makePartial(p);
    const hl = (p[0] & 15) * 4;
    const l4h = spec.proto === 6 ? (p[hl + 12] >> 4) * 4 : 8;
    const n = vnetSegments(len, gso);
    if (n > 4096) return true;
    const out = new Uint8Array(p.length + n * (hl + l4h + 10));
    const offs = new Uint32Array(n);
    const lens = new Uint32Array(n);
    if (gsoSegment(p, 0, gso, out, 0, 10, offs, lens, n) !== n) return false;
    let at = 0;
    for (let k = 0; k < n; k++) {
      const seg = out.subarray(offs[k] + 10, offs[k] + lens[k]);
      if (!checksumsValid(seg)) return false;
      if (get16(seg, 2) !== seg.length) return false;
      const data = seg.subarray(hl + l4h);
      if (data.length !== Math.min(gso, len - at)) return false;
      for (let i = 0; i < data.length; i++) if (data[i] !== payload[at + i]) return false;
      if (spec.proto === 6 && get32(seg, hl + 4) !== ((get32(p, hl + 4) + at) >>> 0)) return false;
      at += data.length;
    }
    return at === len;
  }), { numRuns: 300 });
  t.pass('segments');
});
