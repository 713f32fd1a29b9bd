import t from 'tap';
import fc from 'fast-check';
import { packetSpec, buildPacket, refChecksumsOk, refSum, type PacketSpec } from './wire-gen.ts';
import { rewriteSrc, rewriteDst, icmpQuoteRewriteSrc, icmpQuoteRewriteDst } from '../../dataplane/wire/rewrite.ts';
import {
  ipv4Check, ipv4Checksum, ipv4FillChecksum, setIpv4Src, setIpv4Dst, setIpv4Ttl, ipv4PayloadOff, ipv4PayloadLen,
} from '../../dataplane/wire/ipv4.ts';
import { ipv4HeaderChecksum, checksumRaw, csumReplace16, csumReplace32, fold } from '../../dataplane/wire/checksum.ts';
import { tcpCheck, tcpChecksumCompute, setTcpSrcPort, setTcpDstPort } from '../../dataplane/wire/tcp.ts';
import { udpCheck, udpChecksumCompute, setUdpSrcPort, setUdpDstPort } from '../../dataplane/wire/udp.ts';
import { sctpChecksumValid } from '../../dataplane/wire/sctp.ts';
import {
  icmpCheck, icmpChecksumCompute, icmpChecksumValid, icmpQuotedIpOff, setIcmpIdent, buildIcmpError,
} from '../../dataplane/wire/icmp.ts';
import { WIRE_OK } from '../../dataplane/wire/error.ts';

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const port = fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.constant(-1));
const op = fc.record({ dir: fc.constantFrom('src', 'dst'), addr: u32, port });
const RUNS = { numRuns: 300 };

/** The spec after a rewrite: what a packet built from scratch with the translated tuple looks like. */
function translated(s: PacketSpec, dir: string, addr: number, p: number): PacketSpec {
  const n = { ...s };
  if (dir === 'src') n.src = addr; else n.dst = addr;
  if (p >= 0) {
    if (s.proto === 1) n.sport = p; // ICMP echo: the identifier in both directions
    else if (dir === 'src') n.sport = p; else n.dport = p;
  }
  return n;
}

t.test('full checksums agree with an independent reference', async (t) => {
  fc.assert(fc.property(packetSpec, fc.integer({ min: 0, max: 7 }), (s, off) => {
    const [b, len] = buildPacket(s, off, 3);
    if (ipv4Check(b, off, len, true) !== WIRE_OK) return false;
    const ok = refChecksumsOk(b, off);
    if (!ok.ip || !ok.l4) return false;
    if (s.proto === 132 && !sctpChecksumValid(b, off)) return false;
    // checksumRaw over any split at an even boundary equals the reference sum
    const n = b.length - off;
    const cut = Math.min(n, 2 * (s.ident % 40));
    return checksumRaw(b, off + cut, n - cut, checksumRaw(b, off, cut, 0)) === refSum(b.subarray(off));
  }), RUNS);
  t.pass('full computations verified by the reference');
});

t.test('rewriteSrc/rewriteDst: incremental checksums equal a packet built from scratch, after every rewrite', async (t) => {
  fc.assert(fc.property(packetSpec, fc.array(op, { minLength: 1, maxLength: 4 }), fc.integer({ min: 0, max: 5 }), (s0, ops, off) => {
    const [b, len] = buildPacket(s0, off, 2);
    let s = s0;
    for (const o of ops) {
      if (o.dir === 'src') rewriteSrc(b, off, o.addr, o.port);
      else rewriteDst(b, off, o.addr, o.port);
      s = translated(s, o.dir, o.addr, o.port);
      const [want] = buildPacket(s, off, 2);
      if (!Buffer.from(b).equals(Buffer.from(want))) return false;
      // and directly against the full recomputations
      if (ipv4Checksum(b, off) !== ipv4HeaderChecksum(b, off)) return false;
      const l4 = ipv4PayloadOff(b, off);
      const stored = (b[l4 + (s.proto === 6 ? 16 : s.proto === 17 ? 6 : 2)] << 8) | b[l4 + (s.proto === 6 ? 17 : s.proto === 17 ? 7 : 3)];
      if (s.proto === 6 && stored !== tcpChecksumCompute(b, off)) return false;
      if (s.proto === 17 && stored !== (s.udpNoChecksum ? 0 : udpChecksumCompute(b, off))) return false;
      if (s.proto === 1 && stored !== icmpChecksumCompute(b, off)) return false;
      if (s.proto === 132 && !sctpChecksumValid(b, off)) return false;
    }
    return len === b.length - off - 2;
  }), RUNS);
  t.pass('300 random packets × up to 4 rewrites');
});

t.test('port and ident setters, IPv4 setters: incremental = recomputed', async (t) => {
  fc.assert(fc.property(packetSpec, fc.integer({ min: 0, max: 0xffff }), u32, fc.integer({ min: 0, max: 255 }), (s, p, a, ttl) => {
    const [b] = buildPacket(s, 0);
    const l4 = ipv4PayloadOff(b, 0);
    let want: Uint8Array;
    if (s.proto === 6) {
      setTcpSrcPort(b, l4, p);
      setTcpDstPort(b, l4, p ^ 0x5555);
      [want] = buildPacket({ ...s, sport: p, dport: p ^ 0x5555 });
    } else if (s.proto === 17) {
      setUdpSrcPort(b, l4, p);
      setUdpDstPort(b, l4, p ^ 0x5555);
      [want] = buildPacket({ ...s, sport: p, dport: p ^ 0x5555 });
    } else if (s.proto === 1) {
      setIcmpIdent(b, l4, p);
      [want] = buildPacket({ ...s, sport: p });
    } else {
      return true;
    }
    if (!Buffer.from(b).equals(Buffer.from(want))) return false;
    // IPv4 setters (L4 untouched on purpose: the header checksum only)
    setIpv4Src(b, 0, a);
    setIpv4Dst(b, 0, a ^ 0x0f0f0f0f);
    setIpv4Ttl(b, 0, ttl);
    return ipv4Checksum(b, 0) === ipv4HeaderChecksum(b, 0) && refChecksumsOk(b, 0).ip;
  }), RUNS);
  t.pass('setters verified');
});

t.test('RFC 1624 eqn. 3 equals recomputation for any sum and any 16/32-bit change', async (t) => {
  fc.assert(fc.property(fc.integer({ min: 1, max: 0xffff }), u32, u32, (rest, oldV, newV) => {
    // a header whose other words sum to `rest`, with a 32-bit field oldV -> newV
    const before = ~fold(rest + (oldV >>> 16) + (oldV & 0xffff)) & 0xffff;
    const after = ~fold(rest + (newV >>> 16) + (newV & 0xffff)) & 0xffff;
    const o16 = oldV & 0xffff, n16 = newV & 0xffff;
    const before16 = ~fold(rest + o16) & 0xffff;
    const after16 = ~fold(rest + n16) & 0xffff;
    return csumReplace32(before, oldV, newV) === after && csumReplace16(before16, o16, n16) === after16;
  }), { numRuns: 2000 });
  t.pass('eqn. 3 verified');
});

t.test('a non-first fragment: only address and IPv4 checksum change', async (t) => {
  fc.assert(fc.property(packetSpec, fc.integer({ min: 1, max: 0x1fff }), op, (s, fragUnits, o) => {
    const [b, len] = buildPacket(s, 0);
    b[6] = (b[6] & 0xe0) | (fragUnits >>> 8);
    b[7] = fragUnits & 0xff;
    ipv4FillChecksum(b, 0);
    const want = b.slice();
    const at = o.dir === 'src' ? 12 : 16;
    want[at] = o.addr >>> 24; want[at + 1] = o.addr >>> 16; want[at + 2] = o.addr >>> 8; want[at + 3] = o.addr;
    ipv4FillChecksum(want, 0);
    if (o.dir === 'src') rewriteSrc(b, 0, o.addr, o.port); else rewriteDst(b, 0, o.addr, o.port);
    return len > 0 && Buffer.from(b).equals(Buffer.from(want));
  }), RUNS);
  t.pass('fragments verified');
});

/** An ICMP error quoting all of `orig` (RFC 1812 allows quoting as much as fits). */
function errorQuotingAll(orig: Uint8Array, type: number, from: number): Uint8Array {
  const e = new Uint8Array(28 + orig.length);
  const n = buildIcmpError(e, 0, orig, 0, orig.length, type, 0, from);
  if (n < 0) throw new Error(`buildIcmpError: ${n}`);
  e.set(orig, 28);
  e[2] = e.length >>> 8; e[3] = e.length & 0xff;
  ipv4FillChecksum(e, 0);
  e[22] = 0; e[23] = 0;
  const c = ~checksumRaw(e, 20, e.length - 20, 0) & 0xffff;
  e[22] = c >>> 8; e[23] = c & 0xff;
  return e;
}

t.test('ICMP quote translation: equals the error about the translated packet (8-byte and whole quotes)', async (t) => {
  fc.assert(fc.property(packetSpec, op, fc.constantFrom(3, 11, 12), u32, fc.boolean(), (s, o, type, from, whole) => {
    const [orig] = buildPacket(s, 0);
    const s2 = translated(s, o.dir, o.addr, o.port);
    const [orig2] = buildPacket(s2, 0);
    let e: Uint8Array, want: Uint8Array;
    if (whole) {
      e = errorQuotingAll(orig, type, from);
      want = errorQuotingAll(orig2, type, from);
    } else {
      e = new Uint8Array(100);
      want = new Uint8Array(100);
      const n = buildIcmpError(e, 0, orig, 0, orig.length, type, 0, from);
      buildIcmpError(want, 0, orig2, 0, orig2.length, type, 0, from);
      e = e.subarray(0, n);
      want = want.subarray(0, n);
    }
    if (ipv4Check(e, 0, e.length, true) !== WIRE_OK) return false;
    if (icmpCheck(e, ipv4PayloadOff(e, 0), ipv4PayloadLen(e, 0)) !== WIRE_OK) return false;
    if (o.dir === 'src') icmpQuoteRewriteSrc(e, 0, o.addr, o.port);
    else icmpQuoteRewriteDst(e, 0, o.addr, o.port);
    if (!icmpChecksumValid(e, 0)) return false;
    if (!refChecksumsOk(e, icmpQuotedIpOff(e, 0)).ip) return false;
    if (s.proto === 132 && whole) {
      // the quoted SCTP CRC covers the whole packet and is left as quoted: compare all but those 4 bytes
      const q4 = icmpQuotedIpOff(e, 0) + 20 + s.ipOptions.length;
      for (let i = 20; i < e.length; i++) if ((i < q4 + 8 || i >= q4 + 12) && i !== 22 && i !== 23 && e[i] !== want[i]) return false;
      return true;
    }
    // the outer header is addressed to the quoted source, so compare the ICMP message
    return Buffer.from(e.subarray(20)).equals(Buffer.from(want.subarray(20)));
  }), RUNS);
  t.pass('quote translation verified');
});
