/**
 * IPv6 rewrites against two oracles: the full checksum computation (the
 * incremental updates must give the same bits) and tcpdump -vvv, which
 * verifies TCP, UDP and ICMPv6 checksums over the IPv6 pseudo-header.
 */
import t from 'tap';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeIpv6Header, ipv6Walk, Ipv6Chain, l4Checksum6, l4Checksum6Valid } from '../../dataplane/wire/ipv6.ts';
import { buildIcmpv6Error, icmpv6Check, icmpv6ChecksumValid, icmpv6FillChecksum } from '../../dataplane/wire/icmpv6.ts';
import { rewriteSrc6, rewriteDst6, rewriteBoth6, rewriteBothKnown6, icmpv6QuoteRewriteSrc, icmpv6QuoteRewriteDst } from '../../dataplane/wire/ipv6-rewrite.ts';

const haveTcpdump = spawnSync('tcpdump', ['--version']).status === 0;

// global unicast 2001:db8::/32 addresses
const addr = fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 0xffffffff }))
  .map(([a, b, c]) => Uint32Array.of(0x20010db8, a, b, c));
const port = fc.integer({ min: 30000, max: 30999 });
const spec = fc.record({
  proto: fc.constantFrom(6, 17, 58),
  src: addr, dst: addr, sport: port, dport: port,
  payload: fc.uint8Array({ minLength: 0, maxLength: 40 }),
  udpZero: fc.boolean(),
  newSrc: addr, newDst: addr, nsport: port, ndport: port,
  asError: fc.boolean(),
});
type Spec = typeof spec extends fc.Arbitrary<infer T> ? T : never;

function build(s: Spec): Uint8Array {
  const l4h = s.proto === 6 ? 20 : 8;
  const len = l4h + s.payload.length;
  const b = new Uint8Array(40 + len);
  writeIpv6Header(b, 0, len, s.proto, 64, s.src, 0, s.dst, 0);
  const o = 40;
  if (s.proto === 58) {
    b[o] = 128;
    b[o + 4] = s.sport >> 8; b[o + 5] = s.sport; b[o + 7] = 1;
  } else {
    b[o] = s.sport >> 8; b[o + 1] = s.sport; b[o + 2] = s.dport >> 8; b[o + 3] = s.dport;
    if (s.proto === 6) { b[o + 12] = 0x50; b[o + 13] = 0x18; b[o + 14] = 0xff; }
    else { b[o + 4] = len >> 8; b[o + 5] = len; }
  }
  b.set(s.payload, o + l4h);
  const at = s.proto === 6 ? 16 : s.proto === 17 ? 6 : 2;
  let k = l4Checksum6(b, 0, o, len, at, s.proto);
  if (s.proto === 17 && k === 0) k = 0xffff;
  b[o + at] = k >> 8; b[o + at + 1] = k;
  return b;
}

function valid(b: Uint8Array, c: Ipv6Chain): boolean {
  if (c.proto === 58) return icmpv6ChecksumValid(b, 0, c.l4Off, c.l4Len);
  return l4Checksum6Valid(b, 0, c.l4Off, c.l4Len, c.proto);
}

function translate(s: Spec): Uint8Array {
  const b = build(s);
  const c = new Ipv6Chain();
  ipv6Walk(b, 0, c);
  rewriteDst6(b, 0, c, s.newDst, 0, s.proto === 58 ? -1 : s.ndport);
  rewriteSrc6(b, 0, c, s.newSrc, 0, s.nsport);
  if (!s.asError) return b;
  // an error about the original packet (sent by its destination), translated as the NAT translates replies' errors
  const orig = build(s);
  const e = new Uint8Array(200);
  const n = buildIcmpv6Error(e, 0, orig, 0, orig.length, 1, 4, s.dst, 0);
  const q = new Ipv6Chain();
  ipv6Walk(e, 0, c);
  if (icmpv6Check(e, c.l4Off, c.l4Len, q) !== 0) throw new Error('quote');
  icmpv6QuoteRewriteSrc(e, c, q, s.newSrc, 0, s.nsport);
  icmpv6QuoteRewriteDst(e, c, q, s.newDst, 0, s.proto === 58 ? -1 : s.ndport);
  rewriteDst6(e, 0, c, s.newSrc, 0, -1);
  rewriteSrc6(e, 0, c, s.newDst, 0, -1);
  return e.subarray(0, n);
}

t.test('incremental rewrites give the same checksum as a full computation', async (t) => {
  fc.assert(fc.property(spec, (s) => {
    const b = translate(s);
    const c = new Ipv6Chain();
    ipv6Walk(b, 0, c);
    if (!valid(b, c)) return false;
    if (s.asError) {
      const q = new Ipv6Chain();
      icmpv6Check(b, c.l4Off, c.l4Len, q);
      // the quote is the whole translated packet: its own checksum must verify too
      if (q.proto === 58) return icmpv6ChecksumValid(b, c.l4Off + 8, q.l4Off, q.l4Len);
      return l4Checksum6Valid(b, c.l4Off + 8, q.l4Off, q.l4Len, q.proto);
    }
    return true;
  }), { numRuns: 2000, seed: 61 });
  t.pass('2000 random packets');
  // UDP checksum 0 ("none") stays 0 across a rewrite
  const s = fc.sample(spec, { numRuns: 1, seed: 7 })[0];
  const b = build({ ...s, proto: 17, asError: false });
  b[46] = 0; b[47] = 0;
  const c = new Ipv6Chain();
  ipv6Walk(b, 0, c);
  rewriteSrc6(b, 0, c, s.newSrc, 0, 1234);
  t.equal((b[46] << 8) | b[47], 0);
  void icmpv6FillChecksum;
});

t.test('rewriteBoth6 gives the bytes of rewriteDst6 then rewriteSrc6', async (t) => {
  fc.assert(fc.property(spec, fc.boolean(), fc.boolean(), (s, keepD, keepS) => {
    const a = build(s);
    const b = build(s);
    const c = new Ipv6Chain();
    ipv6Walk(a, 0, c);
    const w = new Uint32Array(8);
    w.set(s.newDst, 0);
    w.set(s.newSrc, 4);
    const dp = keepD ? -1 : s.ndport;
    const sp = keepS ? -1 : s.nsport;
    rewriteDst6(a, 0, c, w, 0, s.proto === 58 ? -1 : dp);
    rewriteSrc6(a, 0, c, w, 4, sp);
    rewriteBoth6(b, 0, c, w, 0, s.proto === 58 ? -1 : dp, 4, sp);
    return Buffer.from(a).equals(Buffer.from(b));
  }), { numRuns: 3000, seed: 62 });
  t.pass('3000 random packets');
});

t.test('rewriteBothKnown6 (the packet\'s words in hand) gives the bytes of rewriteBoth6', async (t) => {
  // the target may share words with the packet (a DNAT within one /64): some words unchanged
  const mix = (a: Uint32Array, b: Uint32Array, m: number) => a.map((v, i) => ((m >> i) & 1 ? b[i] : v));
  fc.assert(fc.property(spec, fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 }), (s, md, ms) => {
    const a = build(s);
    const b = build(s);
    const c = new Ipv6Chain();
    ipv6Walk(a, 0, c);
    const w = new Uint32Array(8);
    w.set(mix(s.newDst, s.dst, md), 0);
    w.set(mix(s.newSrc, s.src, ms), 4);
    const old = new Uint32Array(8);
    old.set(s.src, 0);
    old.set(s.dst, 4);
    const osp = s.proto === 58 ? -1 : s.sport;
    const odp = s.proto === 58 ? -1 : s.dport;
    rewriteBoth6(a, 0, c, w, 0, s.proto === 58 ? -1 : s.ndport, 4, s.nsport);
    rewriteBothKnown6(b, 0, c, old, 0, osp, odp, w, 0, s.proto === 58 ? -1 : s.ndport, 4, s.nsport);
    return Buffer.from(a).equals(Buffer.from(b));
  }), { numRuns: 3000, seed: 63 });
  t.pass('3000 random packets (TCP, UDP with and without a checksum, ICMPv6 echo through the fallback)');
});

t.test('tcpdump -vvv finds every rewritten IPv6 checksum correct', { skip: haveTcpdump ? false : 'tcpdump is not installed (the outside checksum oracle)' }, async (t) => {
  const cases = fc.sample(spec, { numRuns: 300, seed: 20261206 });
  const packets = cases.map(translate);
  const head = Buffer.alloc(24);
  head.writeUInt32LE(0xa1b2c3d4, 0); head.writeUInt16LE(2, 4); head.writeUInt16LE(4, 6);
  head.writeUInt32LE(65535, 16); head.writeUInt32LE(101, 20); // LINKTYPE_RAW
  const parts = [head];
  for (const p of packets) {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(p.length, 8); h.writeUInt32LE(p.length, 12);
    parts.push(h, Buffer.from(p));
  }
  const dir = mkdtempSync(join(tmpdir(), 'tp-wire6-'));
  try {
    const file = join(dir, 'v6.pcap');
    writeFileSync(file, Buffer.concat(parts));
    const r = spawnSync('tcpdump', ['-nn', '-vvv', '-r', file], { encoding: 'utf8' });
    t.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    t.equal(lines.length, packets.length, 'one line per packet');
    let ok = 0;
    for (let i = 0; i < lines.length; i++) {
      const l = lines[i];
      const good = /\[udp sum ok\]|cksum 0x[0-9a-f]+ \(correct\)|\[icmp6 sum ok\]/.test(l) && !/\[bad |\(incorrect/.test(l);
      if (good) ok++;
      else t.fail(`packet ${i}: ${l}`);
    }
    t.equal(ok, packets.length, 'every checksum correct according to tcpdump');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
