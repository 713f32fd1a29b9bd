import t from 'tap';
import fc from 'fast-check';
import { checksumRaw, crc32c, crc32cUpdate, crc32cZeros, fold } from '../../dataplane/wire/checksum.ts';
import { refSum } from './wire-gen.ts';

/** Bit-at-a-time CRC32c, the textbook definition (reflected, polynomial 0x82f63b78). */
function refCrc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const b of bytes) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

const slice = fc.tuple(fc.uint8Array({ maxLength: 200 }), fc.nat(), fc.nat()).map(([b, o, l]) => {
  const off = b.length === 0 ? 0 : o % (b.length + 1);
  const len = l % (b.length - off + 1);
  return { b, off, len };
});

t.test('CRC32c (slicing-by-8) equals the bitwise definition at any offset and length', async (t) => {
  fc.assert(fc.property(slice, fc.nat(), ({ b, off, len }, cut) => {
    const want = refCrc32c(b.subarray(off, off + len));
    const k = len === 0 ? 0 : cut % (len + 1);
    const split = ~crc32cUpdate(crc32cUpdate(0xffffffff, b, off, k), b, off + k, len - k) >>> 0;
    return crc32c(b, off, len) === want && split === want;
  }), { numRuns: 1000 });
  fc.assert(fc.property(fc.integer({ min: 0, max: 100 }), (n) =>
    (~crc32cZeros(0xffffffff, n) >>> 0) === refCrc32c(new Uint8Array(n))), { numRuns: 100 });
  t.pass('crc32c verified');
});

t.test('checksumRaw equals a reference ones\' complement sum at any offset and length', async (t) => {
  fc.assert(fc.property(slice, fc.integer({ min: 0, max: 0xffff }), ({ b, off, len }, initial) =>
    checksumRaw(b, off, len, initial) === refSum(b.subarray(off, off + len), initial) &&
    checksumRaw(b, off, len, initial) === fold(refSum(b.subarray(off, off + len)) + initial)), { numRuns: 1000 });
  t.pass('checksumRaw verified');
});
