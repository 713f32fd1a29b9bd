import t from 'tap';
import fc from 'fast-check';
import { packetSpec, buildPacket } from './wire-gen.ts';
import {
  ipv4Check, ipv4PayloadOff, ipv4PayloadLen, ipv4IsFirstFragment, ipv4Protocol, ipv4TotalLen, ipv4Src, ipv4Dst,
  ipv4HeaderLen, ipv4FragOffset, isIpv6, ipVersion,
} from '../../dataplane/wire/ipv4.ts';
import { tcpCheck, tcpSrcPort, tcpDstPort, tcpHeaderLen, tcpFlags } from '../../dataplane/wire/tcp.ts';
import { udpCheck, udpSrcPort, udpDstPort, udpLength } from '../../dataplane/wire/udp.ts';
import { sctpCheck, sctpSrcPort, sctpFirstChunkType } from '../../dataplane/wire/sctp.ts';
import {
  icmpCheck, isIcmpError, icmpQuotedIpOff, buildIcmpError, icmpChecksumValid, icmpErrorPermitted,
} from '../../dataplane/wire/icmp.ts';
import { rewriteSrc, rewriteDst, icmpQuoteRewriteSrc, icmpQuoteRewriteDst } from '../../dataplane/wire/rewrite.ts';
import { WIRE_OK, wireErrorName } from '../../dataplane/wire/error.ts';

const SENTINEL = 0xa5;
const RUNS = { numRuns: 1500 };

function isU(v: number, max: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= max;
}

/**
 * The pipeline's use of the views: checked entries first, then accessors and
 * rewrites only on what passed. Returns false if an accessor gave a value
 * that is not a field value (a read past the packet gives undefined → NaN/0
 * patterns we would not see otherwise).
 */
function pipelineLike(b: Uint8Array, off: number, len: number, addr: number, port: number): boolean {
  const r = ipv4Check(b, off, len);
  if (wireErrorName(r) === 'unknown_wire_error') return false;
  if (r !== WIRE_OK) return true;
  const total = ipv4TotalLen(b, off);
  if (!(total <= len && ipv4HeaderLen(b, off) <= total)) return false;
  if (!isU(ipv4Src(b, off), 0xffffffff) || !isU(ipv4Dst(b, off), 0xffffffff)) return false;
  if (!isU(ipv4FragOffset(b, off), 0xfff8)) return false;
  const l4 = ipv4PayloadOff(b, off);
  const l4len = ipv4PayloadLen(b, off);
  if (!ipv4IsFirstFragment(b, off)) {
    rewriteDst(b, off, addr, port);
    return true;
  }
  const proto = ipv4Protocol(b, off);
  if (proto === 6) {
    if (tcpCheck(b, l4, l4len) !== WIRE_OK) return true;
    if (!isU(tcpSrcPort(b, l4), 0xffff) || !isU(tcpDstPort(b, l4), 0xffff) || tcpHeaderLen(b, l4) > l4len || !isU(tcpFlags(b, l4), 255)) return false;
  } else if (proto === 17) {
    if (udpCheck(b, l4, l4len) !== WIRE_OK) return true;
    if (!isU(udpSrcPort(b, l4), 0xffff) || !isU(udpDstPort(b, l4), 0xffff) || udpLength(b, l4) > l4len) return false;
  } else if (proto === 132) {
    if (sctpCheck(b, l4, l4len) !== WIRE_OK) return true;
    if (!isU(sctpSrcPort(b, l4), 0xffff) || sctpFirstChunkType(b, l4, l4len) > 255) return false;
  } else if (proto === 1) {
    if (icmpCheck(b, l4, l4len) !== WIRE_OK) return true;
    if (isIcmpError(b[l4])) {
      const q = icmpQuotedIpOff(b, off);
      if (!isU(ipv4Src(b, q), 0xffffffff)) return false;
      icmpQuoteRewriteDst(b, off, addr, port);
      icmpQuoteRewriteSrc(b, off, addr ^ 1, port);
      rewriteSrc(b, off, addr, -1);
      return true;
    }
  }
  rewriteDst(b, off, addr, port);
  rewriteSrc(b, off, addr ^ 0xff, port);
  return true;
}

/** Run pipelineLike on the bytes placed at `off` between sentinels; nothing outside the packet may change. */
function runGuarded(bytes: Uint8Array, off: number, addr: number, port: number): boolean {
  const b = new Uint8Array(off + bytes.length + 16).fill(SENTINEL);
  b.set(bytes, off);
  const ok = pipelineLike(b, off, bytes.length, addr, port);
  for (let i = 0; i < off; i++) if (b[i] !== SENTINEL) return false;
  // writes stay within the IPv4 total length (when the packet passed) and always within len
  const r = ipv4Check(b, off, bytes.length);
  const end = off + (r === WIRE_OK ? ipv4TotalLen(b, off) : bytes.length);
  for (let i = end; i < b.length; i++) if (i >= off + bytes.length ? b[i] !== SENTINEL : b[i] !== bytes[i - off]) return false;
  return ok;
}

const mutation = fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) });

t.test('checked entries and rewrites on random bytes: no throw, no write outside the packet', async (t) => {
  const bytes = fc.tuple(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 }), fc.uint8Array({ maxLength: 120 }))
    .map(([ver, ihl, rest]) => {
      const b = rest.slice();
      if (b.length > 0) b[0] = (ver === 0 ? 4 : ver === 1 ? 6 : ver) << 4 | ihl;
      if (b.length > 3 && ihl % 2 === 0) { b[2] = 0; b[3] = b.length - (ihl % 4); } // often a plausible total length
      return b;
    });
  fc.assert(fc.property(bytes, fc.integer({ min: 0, max: 5 }), fc.nat(), fc.integer({ min: -1, max: 0xffff }), (b, off, addr, port) =>
    runGuarded(b, off, addr >>> 0, port)), RUNS);
  t.pass('random bytes');
});

t.test('mutated and truncated valid packets (including ICMP errors about them)', async (t) => {
  fc.assert(fc.property(
    packetSpec, fc.array(mutation, { maxLength: 4 }), fc.nat(), fc.boolean(), fc.integer({ min: 0, max: 3 }), fc.nat(),
    fc.integer({ min: -1, max: 0xffff }),
    (s, muts, cut, asError, off, addr, port) => {
      let [p] = buildPacket(s, 0);
      if (asError) {
        const e = new Uint8Array(100);
        const n = buildIcmpError(e, 0, p, 0, p.length, 3, 3, 0x0a000001);
        if (n < 0) return false;
        p = e.slice(0, n);
      }
      for (const m of muts) p[m.at % p.length] = m.value;
      const len = cut % 3 === 0 ? p.length - (cut % Math.min(p.length, 30)) : p.length;
      return runGuarded(p.subarray(0, len), off, addr >>> 0, port);
    }), RUNS);
  t.pass('mutated packets');
});

t.test('checked entries never throw for any (buf, off, len) inside the buffer', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), fc.nat(), fc.nat(), (b, o, l) => {
    const off = b.length === 0 ? 0 : o % b.length;
    const len = (b.length - off) === 0 ? 0 : l % (b.length - off + 1);
    const codes = [ipv4Check(b, off, len, true), tcpCheck(b, off, len), udpCheck(b, off, len), sctpCheck(b, off, len), icmpCheck(b, off, len)];
    void isIpv6(b, off, len);
    return codes.every((c) => Number.isInteger(c) && c <= 0 && wireErrorName(c) !== 'unknown_wire_error') &&
      isU(ipVersion(b, off, len) + 1, 16);
  }), RUNS);
  t.pass('no throws');
});

t.test('buildIcmpError on arbitrary input: a refusal or a well-formed error, never a write past its length', async (t) => {
  fc.assert(fc.property(
    packetSpec, fc.array(mutation, { maxLength: 3 }), fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 120 }),
    (s, muts, outOff, outLen) => {
      const [p] = buildPacket(s, 0);
      for (const m of muts) p[m.at % p.length] = m.value;
      const out = new Uint8Array(outOff + outLen).fill(SENTINEL);
      const n = buildIcmpError(out, outOff, p, 0, p.length, 3, 3, 0x0a600001, 0);
      if (n < 0) {
        if (wireErrorName(n) === 'unknown_wire_error') return false;
        return out.every((v) => v === SENTINEL);
      }
      if (ipv4Check(out, outOff, n, true) !== WIRE_OK) return false;
      // the quote is the header + 8 bytes, or the whole datagram when it is shorter (which icmpCheck then refuses)
      const quoted = n - 28;
      const qhlen = (out[outOff + 28] & 15) * 4;
      if (icmpCheck(out, outOff + 20, n - 20) !== WIRE_OK && quoted >= qhlen + 8) return false;
      if (!icmpChecksumValid(out, outOff)) return false;
      void icmpErrorPermitted(p, 0, p.length);
      for (let i = 0; i < outOff; i++) if (out[i] !== SENTINEL) return false;
      for (let i = outOff + n; i < out.length; i++) if (out[i] !== SENTINEL) return false;
      return true;
    }), RUNS);
  t.pass('builder verified');
});
