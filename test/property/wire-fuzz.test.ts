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
import { readFileSync } from 'node:fs';
import { Pipeline, V_DROP, V_FORWARD, V_PASS, V_REPLY } from '../../dataplane/pipeline.ts';
import { Conntrack } from '../../dataplane/conntrack.ts';
import { Rng } from '../../dataplane/select.ts';
import { compile } from '../../control/compile.ts';
import { parseRuleSet } from '../../control/validate.ts';
import { completeChecksum } from '../../dataplane/gso.ts';
import { vnetCheck, vnetNeedsCsum, vnetCsumStart, vnetCsumOffset, writeVnetHeader } from '../../dataplane/wire/virtio.ts';
import { checksumsValid } from '../support/packets.ts';
import { makePartial } from '../support/vnet.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

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

// ---- the pipeline behind a virtio-net header (a TUN with offloads): random and plausible headers
t.test('virtio headers, plausible and random, in front of valid and mutated packets: the pipeline never throws, never writes outside, never forwards a wrong checksum', async (t) => {
  const tables = compile(parseRuleSet(JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'))));
  const pl = new Pipeline({ conntrack: new Conntrack({ clock: () => 1e6 }), rng: new Rng(7) });
  // services of the demo rule set, so that NAT happens: web-svc TCP, kube-dns UDP, empty-svc (REJECT), a NodePort
  const targets = [
    [6, '10.32.0.159', 8080], [17, '10.32.0.10', 53], [6, '10.32.0.200', 80], [6, '172.16.1.35', 30080], [17, '10.64.1.99', 9],
  ] as const;
  const u16 = fc.integer({ min: 0, max: 0xffff });
  const u8 = fc.integer({ min: 0, max: 255 });
  // -1: what the kernel would put there for this packet (GSO type of its protocol, its header length, its checksum field)
  const plausible = fc.record({
    flags: fc.constantFrom(0, 1, 1, 3),
    gsoType: fc.constantFrom(-1, -1, 0, 0x80),
    gsoSize: fc.integer({ min: 1, max: 1500 }),
    hdrLen: fc.constant(-1),
    csum: fc.constant(-1 as const),
  });
  const random = fc.record({
    flags: fc.oneof(fc.constantFrom(0, 1, 2, 3), u8),
    gsoType: fc.oneof(fc.constantFrom(0, 1, 5, 0x81, 4, 3), u8),
    gsoSize: fc.oneof(fc.integer({ min: 1, max: 1500 }), u16),
    hdrLen: fc.oneof(fc.constant(-1), u16),
    csum: fc.oneof(fc.constant(-1 as const), fc.tuple(u16, u16)),
  });
  const header = fc.oneof({ arbitrary: plausible, weight: 3 }, { arbitrary: random, weight: 1 });
  const seen = [0, 0, 0, 0];
  fc.assert(fc.property(
    packetSpec, fc.integer({ min: 0, max: targets.length - 1 }), header, fc.oneof(fc.constant([]), fc.array(mutation, { maxLength: 3 })), fc.integer({ min: 0, max: 4 }),
    (spec, ti, h, muts, off) => {
      const [proto, dst, dport] = targets[ti];
      const s = { ...spec, proto, dst: parseIPv4(dst), dport, udpNoChecksum: false, payload: spec.payload };
      const [p] = buildPacket(s, 0);
      const hl = (p[0] & 15) * 4;
      const l4h = proto === 6 ? (p[hl + 12] >> 4) * 4 : 8;
      const b = new Uint8Array(off + 10 + p.length + 8).fill(SENTINEL);
      const [cs, co] = h.csum === -1 ? [hl, proto === 6 ? 16 : 6] : h.csum;
      const gsoType = h.gsoType === -1 ? (proto === 6 ? 1 : 5) : h.gsoType === 0x80 ? (proto === 6 ? 0x81 : 0) : h.gsoType;
      writeVnetHeader(b, off, gsoType !== 0 && h.gsoType < 0 ? 1 : h.flags, gsoType, h.hdrLen === -1 ? hl + l4h : h.hdrLen, h.gsoSize, cs, co);
      if ((b[off] & 1) !== 0) makePartial(p); // the packet is what the header says it is
      b.set(p, off + 10);
      for (const m of muts) b[off + 10 + (m.at % p.length)] = m.value;
      let v: number;
      try {
        v = pl.process(b, off + 10, p.length, tables, 1e6, off);
      } catch {
        return false;
      }
      for (let i = 0; i < off; i++) if (b[i] !== SENTINEL) return false;
      for (let i = off + 10 + p.length; i < b.length; i++) if (b[i] !== SENTINEL) return false;
      seen[v]++;
      if (v === V_DROP) return pl.lastDrop >= 0 && [...pl.counters.malformed.keys()].every((k) => k !== 'unknown_wire_error');
      if (v === V_REPLY) return checksumsValid(pl.reply.subarray(0, pl.replyLen));
      if (v !== V_FORWARD && v !== V_PASS) return false;
      if (muts.length > 0 || v === V_PASS) return true; // a mutated packet may have come in with a wrong checksum
      if (vnetCheck(b, off, 10 + p.length) !== WIRE_OK) return false;
      const ip = b.slice(off + 10, off + 10 + p.length);
      if (vnetNeedsCsum(b, off)) completeChecksum(ip, 0, vnetCsumStart(b, off), vnetCsumOffset(b, off));
      return checksumsValid(ip);
    }), RUNS);
  t.ok(seen[V_FORWARD] > 100 && seen[V_DROP] > 100 && seen[V_REPLY] > 10, `forwarded (NAT) ${seen[V_FORWARD]}, replied ${seen[V_REPLY]}, dropped ${seen[V_DROP]}, passed ${seen[V_PASS]}`);
});
