import t from 'tap';
import {
  fold, checksumFinish, checksumRaw, internetChecksum, ipv4HeaderChecksum, pseudoHeaderSum,
  csumReplace16, csumReplace32, udpCsumReplace16, udpCsumReplace32, checksumVerifies,
  crc32c, crc32cUpdate, crc32cZeros,
} from '../../dataplane/wire/checksum.ts';

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

t.test('RFC 1071 §3 numerical example', async (t) => {
  // bytes 00 01 f2 03 f4 f5 f6 f7: sum 0x2ddf0 folds to 0xddf2
  const b = hex('0001 f203 f4f5 f6f7');
  t.equal(checksumRaw(b, 0, 8, 0), 0xddf2);
  t.equal(internetChecksum(b, 0, 8), 0x220d);
  t.equal(checksumFinish(0x2ddf0), 0x220d);
  // the same sum in pieces (even boundaries) and from a non-zero offset
  const padded = hex('ffff 0001 f203 f4f5 f6f7');
  t.equal(checksumRaw(padded, 2, 8, 0), 0xddf2);
  t.equal(checksumRaw(b, 4, 4, checksumRaw(b, 0, 4, 0)), 0xddf2);
});

t.test('odd length pads the last byte with zero', async (t) => {
  const b = hex('0102 03');
  t.equal(checksumRaw(b, 0, 3, 0), 0x0102 + 0x0300);
  t.equal(checksumRaw(b, 0, 0, 0x1234), 0x1234);
});

t.test('fold: end-around carry, large sums', async (t) => {
  t.equal(fold(0), 0);
  t.equal(fold(0xffff), 0xffff);
  t.equal(fold(0x10000), 1);
  t.equal(fold(0x1fffe), 0xffff);
  t.equal(fold(0xffffffff), 0xffff);
  // above 2^32: 0x1_0000_0000 ≡ 1 (mod 0xffff)
  t.equal(fold(0x100000000), 1);
  t.equal(fold(2 ** 40 + 5), fold((2 ** 40) % 0xffff + 5));
});

t.test('IPv4 header checksum of a known header (0xb861)', async (t) => {
  const h = hex('4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7');
  t.equal(ipv4HeaderChecksum(h, 0), 0xb861);
  t.ok(checksumVerifies(h, 0, 20, 0));
  h[11] = 0x62;
  t.notOk(checksumVerifies(h, 0, 20, 0));
  t.equal(ipv4HeaderChecksum(h, 0), 0xb861, 'the stored checksum field is not counted');
});

t.test('pseudo-header sum', async (t) => {
  // 10.64.1.1 -> 10.64.1.13, TCP, 40 bytes: 0x0a40+0x0101+0x0a40+0x010d+6+40
  t.equal(pseudoHeaderSum(0x0a400101, 0x0a40010d, 6, 40), 0x0a40 + 0x0101 + 0x0a40 + 0x010d + 6 + 40);
  t.equal(pseudoHeaderSum(0xffffffff, 0xffffffff, 17, 0xffff), fold(0xffff * 5 + 17));
});

t.test('RFC 1624 §4 example: eqn. 3 gives 0x0000, not eqn. 2\'s 0xffff', async (t) => {
  // other octets sum to 0xcd7a; m = 0x5555 -> m' = 0x3285; HC = ~(0xcd7a + 0x5555) = 0xdd2f
  t.equal(csumReplace16(0xdd2f, 0x5555, 0x3285), 0x0000);
  // recomputation gives the same
  t.equal(checksumFinish(0xcd7a + 0x3285), 0x0000);
});

t.test('csumReplace16/32 agree with recomputation on a real header', async (t) => {
  const h = hex('4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7');
  // TTL 64 -> 63: word at 8 changes 0x4011 -> 0x3f11
  const c = csumReplace16(0xb861, 0x4011, 0x3f11);
  h[8] = 0x3f;
  t.equal(c, ipv4HeaderChecksum(h, 0));
  // source 192.168.0.1 -> 10.64.1.1
  const c2 = csumReplace32(c, 0xc0a80001, 0x0a400101);
  h.set([10, 64, 1, 1], 12);
  t.equal(c2, ipv4HeaderChecksum(h, 0));
  // no change, no difference
  t.equal(csumReplace32(c2, 0x0a400101, 0x0a400101), c2);
  t.equal(csumReplace16(c2, 0x1234, 0x1234), c2);
});

t.test('UDP rule: 0 stays 0, a computed 0 becomes 0xffff', async (t) => {
  t.equal(udpCsumReplace16(0, 0x1234, 0x4321), 0);
  t.equal(udpCsumReplace32(0, 0x0a000001, 0x0a000002), 0);
  // the RFC 1624 example again: the plain update yields 0, UDP sends 0xffff
  t.equal(udpCsumReplace16(0xdd2f, 0x5555, 0x3285), 0xffff);
  // and from 0xffff (a computed zero) it goes on like any other value
  t.equal(udpCsumReplace16(0xffff, 0x3285, 0x5555), csumReplace16(0x0000, 0x3285, 0x5555));
  t.equal(udpCsumReplace16(0xffff, 0x3285, 0x5555), 0xdd2f);
  t.equal(udpCsumReplace32(0x1234, 0x0a000001, 0x0a000002), csumReplace32(0x1234, 0x0a000001, 0x0a000002));
});

t.test('CRC32c: check value and RFC 3720 B.4 vectors', async (t) => {
  t.equal(crc32c(Buffer.from('123456789'), 0, 9), 0xe3069283);
  t.equal(crc32c(new Uint8Array(32), 0, 32), 0x8a9136aa);
  t.equal(crc32c(new Uint8Array(32).fill(0xff), 0, 32), 0x62a8ab43);
  const inc = Uint8Array.from({ length: 32 }, (_, i) => i);
  t.equal(crc32c(inc, 0, 32), 0x46dd794e);
  t.equal(crc32c(inc, 0, 0), 0);
  // in pieces, and zeros fed without a buffer
  const c = crc32cUpdate(crc32cUpdate(0xffffffff, inc, 0, 10), inc, 10, 22);
  t.equal(~c >>> 0, 0x46dd794e);
  t.equal(~crc32cZeros(0xffffffff, 32) >>> 0, 0x8a9136aa);
});
