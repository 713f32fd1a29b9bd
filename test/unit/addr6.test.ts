import t from 'tap';
import fc from 'fast-check';
import { isIPv6, SocketAddress } from 'node:net';
import { parseIPv6, parseIPv6Into, formatIPv6, canonicalIPv6, parseCidr6, cidr6Contains, formatCidr6 } from '../../dataplane/addr6.ts';
import { Addr6Pool, ADDR6_BASE } from '../../control/model.ts';

t.test('IPv6 text to words and back', async (t) => {
  t.same([...parseIPv6('2001:db8::1')!], [0x20010db8, 0, 0, 1]);
  t.same([...parseIPv6('::')!], [0, 0, 0, 0]);
  t.same([...parseIPv6('::1')!], [0, 0, 0, 1]);
  t.same([...parseIPv6('fd00:10:96::a')!], [0xfd000010, 0x00960000, 0, 0xa]);
  t.same([...parseIPv6('::ffff:10.0.0.1')!], [0, 0, 0xffff, 0x0a000001]);
  t.same([...parseIPv6('1:2:3:4:5:6:7:8')!], [0x00010002, 0x00030004, 0x00050006, 0x00070008]);
  t.same([...parseIPv6('FE80::')!], [0xfe800000, 0, 0, 0]);
  t.equal(formatIPv6(parseIPv6('2001:0DB8:0000:0000:0001:0000:0000:0001')!), '2001:db8::1:0:0:1');
  t.equal(formatIPv6(parseIPv6('1:0:0:2:0:0:0:3')!), '1:0:0:2::3');
  t.equal(formatIPv6(parseIPv6('1:0:2:3:4:5:6:7')!), '1:0:2:3:4:5:6:7', 'one zero group is not compressed');
  t.equal(formatIPv6(parseIPv6('::ffff:1.2.3.4')!), '::ffff:1.2.3.4');
  t.equal(canonicalIPv6('fd00:10:96:0:0:0:0:a'), 'fd00:10:96::a');
  for (const bad of ['', ':', ':::', '1::2::3', '1:2:3:4:5:6:7:8:9', '12345::', 'g::1', '1:2:3:4:5:6:7', '1:', '::1.2.3', '10.0.0.1', 'fe80::1%eth0', '1:2:3:4:5:6:7::8:9'])
    t.equal(parseIPv6(bad), null, `refused: ${JSON.stringify(bad)}`);
  const out = new Uint32Array(8).fill(7);
  t.notOk(parseIPv6Into('nope', out, 4));
  t.same([...out], [7, 7, 7, 7, 7, 7, 7, 7], 'a refused parse leaves the output as it was');
  t.ok(parseIPv6Into('::2', out, 4));
  t.same([...out], [7, 7, 7, 7, 0, 0, 0, 2]);
});

t.test('IPv6 CIDR', async (t) => {
  const c = parseCidr6('fd00:10:244::/56')!;
  t.equal(c.bits, 56);
  t.ok(cidr6Contains(c, parseIPv6('fd00:10:244:ff::7')!));
  t.notOk(cidr6Contains(c, parseIPv6('fd00:10:245::7')!));
  t.equal(formatCidr6(parseCidr6('2001:db8::1/32')!), '2001:db8::/32', 'host bits cleared');
  t.equal(parseCidr6('::1')!.bits, 128);
  t.ok(cidr6Contains(parseCidr6('::/0')!, parseIPv6('2001:db8::1')!));
  t.equal(parseCidr6('fd00::/129'), null);
  t.equal(parseCidr6('fd00::/x'), null);
});

t.test('parse and format agree with the C library (inet_pton/inet_ntop through node:net)', async (t) => {
  const word = fc.integer({ min: 0, max: 0xffff });
  // groups biased to zero so that :: runs of every length occur
  const group = fc.oneof(fc.constant(0), fc.constant(0), word);
  t.doesNotThrow(() => fc.assert(
    fc.property(fc.array(group, { minLength: 8, maxLength: 8 }), fc.boolean(), (g, upper) => {
      let text = g.map((x) => x.toString(16)).join(':');
      if (upper) text = text.toUpperCase();
      const w = parseIPv6(text);
      if (w === null) return false;
      const libc = new SocketAddress({ address: text, family: 'ipv6' }).address;
      const ours = formatIPv6(w);
      if (ours !== libc) throw new Error(`${text}: ours ${ours}, libc ${libc}`);
      // and the canonical text parses back to the same words
      const back = parseIPv6(ours)!;
      return back.every((v, i) => v === w[i]);
    }),
    { numRuns: 3000 },
  ), 'format = inet_ntop over 3000 addresses');
  // validity: what we accept is exactly what node's isIPv6 accepts, over noisy strings
  const ch = fc.constantFrom(...'0123456789abcdefABCDEF:.:::'.split(''));
  t.doesNotThrow(() => fc.assert(
    fc.property(fc.array(ch, { maxLength: 46 }).map((a) => a.join('')), (s) => (parseIPv6(s) !== null) === isIPv6(s)),
    { numRuns: 20000 },
  ), 'accepted = inet_pton accepts, over 20000 strings');
});

t.test('Addr6Pool: one Addr per address, kept through the index growing', async (t) => {
  const pool = new Addr6Pool();
  const w = new Uint32Array(4);
  const seen: number[] = [];
  // 5 000 addresses: the index grows from 512 slots several times; the first words alike, so they collide in part
  let fresh = 0;
  for (let i = 0; i < 5000; i++) {
    w[0] = 0x20010db8; w[1] = 0; w[2] = i >>> 8; w[3] = (i * 2654435761) >>> 0;
    const a = pool.internWords(w);
    if (a === ADDR6_BASE + i) fresh++;
    seen.push(a);
  }
  t.equal(fresh, 5000, 'each new address gets the next Addr');
  t.equal(pool.size, 5000);
  let same = 0;
  for (let i = 0; i < 5000; i++) {
    w[0] = 0x20010db8; w[1] = 0; w[2] = i >>> 8; w[3] = (i * 2654435761) >>> 0;
    if (pool.internWords(w) === seen[i] && pool.words(seen[i]).every((x, k) => x === w[k])) same++;
  }
  t.equal(same, 5000, 'each address interned again gives its Addr, whose words are its own');
  t.equal(pool.size, 5000, 'nothing added the second time');
  t.equal(pool.intern('2001:db8::1'), pool.intern('2001:db8:0:0::1'), 'two texts of one address: one Addr');
  t.equal(pool.text(pool.intern('2001:DB8::a')), '2001:db8::a');
  t.equal(pool.intern('10.0.0.1'), -1, 'not IPv6');
});
