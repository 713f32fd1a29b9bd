/**
 * The IPv6 packet path: what pipeline.ts does for IPv4, for IPv6 packets
 * (Pipeline.process hands them here; the IPv4 path is not touched).
 *
 *   parse: fixed header, extension-header walk (wire/ipv6.ts; a malformed
 *          chain is dropped as malformed with its wire reason), L4 header;
 *   conntrack hit (Conntrack6) → rewrite with the other tuple;
 *   miss → lookup6 (tables6.ts) → endpoint select (select.ts: random,
 *          affinity, Maglev, as for IPv4) → DNAT to the IPv6 endpoint,
 *          masquerade to the node's IPv6 masquerade address with the same
 *          port rules (keep the client's port when free, else a random free one);
 *   no endpoints → ICMPv6 destination unreachable / port unreachable (REJECT);
 *   ICMPv6 errors about a tracked flow (packet too big, unreachable, time
 *          exceeded, parameter problem) → outer header and quote translated;
 *   later fragments follow their first fragment (FragmentTable6).
 *
 * Every drop has a named reason (counters.ts), the same ones as IPv4 where
 * the cause is the same. A partial TCP/UDP checksum from the TUN (NEEDS_CSUM,
 * GSO super-packets with TSO6) stays partial through the rewrites; a GSO
 * super-packet counts as one packet here (IPv4 counts its segments). No allocation per packet once warm (a first
 * fragment remembered allocates its record, as for IPv4).
 */
import { PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import type { ConntrackEntry } from './conntrack.ts';
import { CT_UPDATE_REOPEN } from './conntrack.ts';
import { Conntrack6, CT6_ORIG_DST, CT6_ORIG_SRC, CT6_REPLY_DST, CT6_REPLY_SRC } from './conntrack6.ts';
import {
  Counters, D_MALFORMED, D_NO_LOCAL_ENDPOINTS, D_SOURCE_RANGE,
  D_CONNTRACK_COLLISION, D_CONNTRACK_FULL, D_NAT_PORT_EXHAUSTED, D_FRAGMENT_NO_FLOW, D_NO_ENDPOINTS, D_SCTP_FRAGMENTED,
  D_IPV6_NO_MASQUERADE_ADDRESS,
  E_NEW_FLOWS, E_ESTABLISHED, E_REPLIES, E_REJECTED, E_ICMP_ERRORS, E_FRAGMENTS, E_MASQUERADED, E_HAIRPIN,
  E_AFFINITY_HITS, E_LOOKUPS, E_IPV6, E_CHECKSUMS_COMPLETED, E_NON_IPV4,
} from './counters.ts';
import { FragmentTable6 } from './fragments.ts';
import { V_DROP, V_FORWARD, V_PASS, V_REPLY } from './verdict.ts';
import { AffinityTable, selectEndpoint, type Rng } from './select.ts';
import { LookupResult, LOOKUP_DNAT, LOOKUP_REJECT, LOOKUP_DROP_NO_LOCAL, LOOKUP_DROP_SOURCE_RANGE, type Tables } from './tables.ts';
import { lookup6, isServiceAddress6, EP6_PORT, EP6_STRIDE, type Tables6 } from './tables6.ts';
import { get16, get32, put16 } from './wire/bytes.ts';
import { checksumRaw } from './wire/checksum.ts';
import { wireErrorName } from './wire/error.ts';
import { buildIcmpv6Error, icmpv6Check, icmpv6ErrorPermitted } from './wire/icmpv6.ts';
import { ipv6Check, ipv6Walk, Ipv6Chain } from './wire/ipv6.ts';
import { icmpv6QuoteRewriteDst, icmpv6QuoteRewriteSrc, rewriteBoth6, rewriteBothKnown6, rewriteDst6, rewriteSrc6 } from './wire/ipv6-rewrite.ts';
import { tcpCheck } from './wire/tcp.ts';
import { sctpCheck } from './wire/sctp.ts';
import type { SampleDecider6 } from './decider6.ts';
import { newFlowLinear6 } from './pipeline6-linear.ts';

// copied, not imported (see pipeline.ts)
const IPV6_SRC = 8;
const IPV6_PAYLOAD_LEN = 4;
const IPV6_HEADER_LEN = 40;
const FRAG_IDENT = 4;
const TCP_FLAGS = 13;
const SCTP_FIRST_CHUNK_TYPE = 12;
const SCTP_COMMON_HEADER_LEN = 12;
const UDP_LENGTH = 4;
const UDP_HEADER_LEN = 8;
const PROTO_ICMPV6 = 58;
const ICMPV6_DEST_UNREACH = 1;
const ICMPV6_PORT_UNREACH = 4;
const ICMPV6_QUOTE = 8;
const DIR_ORIGINAL = 0;
const VNET_F_NEEDS_CSUM = 1;

/** What the IPv6 path shares with the Pipeline that owns it (the Pipeline itself). */
export interface Pipeline6Host {
  readonly counters: Counters;
  readonly reply: Uint8Array;
  replyLen: number;
  lastDrop: number;
  lastEntry: ConntrackEntry | null;
  readonly rng: Rng;
  /** --decider linear: new flows decided by the walk of kube-proxy's ip6tables rules (pipeline6-linear.ts) */
  readonly linear6: SampleDecider6 | null;
}

function same4(a: Uint32Array, ao: number, b: Uint32Array, bo: number): boolean {
  return a[ao] === b[bo] && a[ao + 1] === b[bo + 1] && a[ao + 2] === b[bo + 2] && a[ao + 3] === b[bo + 3];
}

export class Pipeline6 {
  readonly conntrack: Conntrack6;
  readonly affinity: AffinityTable;
  readonly fragments = new FragmentTable6();
  private readonly host: Pipeline6Host;
  private readonly chain = new Ipv6Chain();
  private readonly quote = new Ipv6Chain();
  /** the packet's source (0..3) and destination (4..7) words */
  private readonly w = new Uint32Array(8);
  /** a quoted packet's tuple reversed: its destination (0..3) then its source (4..7) */
  private readonly qw = new Uint32Array(8);
  /** the new flow's 16-word tuple for Conntrack6.insert6 */
  private readonly tw = new Uint32Array(16);
  private readonly out = new LookupResult();
  private readonly info = { serviceName: '', serviceIndex: 0, masquerade: false };
  /** a view of the last packet buffer, to read the addresses' words */
  private dv: DataView = new DataView(new ArrayBuffer(0));
  private dvBuf: Uint8Array | null = null;
  /** the packet in hand: its TCP/UDP checksum is partial (virtio NEEDS_CSUM; a GSO super-packet's too): rewrites keep it so */
  private partial = false;

  constructor(host: Pipeline6Host, conntrack?: Conntrack6, affinity?: AffinityTable) {
    this.host = host;
    this.conntrack = conntrack ?? new Conntrack6();
    this.affinity = affinity ?? new AffinityTable(undefined, true);
  }

  private drop(reason: number, len: number): number {
    const c = this.host.counters;
    c.drops[reason]++;
    c.packets[V_DROP]++;
    c.bytes[V_DROP] += len;
    this.host.lastDrop = reason;
    return V_DROP;
  }

  private verdict(v: number, len: number): number {
    const c = this.host.counters;
    c.packets[v]++;
    c.bytes[v] += len;
    return v;
  }

  private malformed(code: number, len: number): number {
    const name = wireErrorName(code);
    const m = this.host.counters.malformed;
    m.set(name, (m.get(name) ?? 0) + 1);
    return this.drop(D_MALFORMED, len);
  }

  /**
   * One IPv6 packet at buf[off .. off+len) (its virtio header at `vnet`, or
   * -1, already checked by Pipeline.process). Verdicts as Pipeline.process.
   * Without IPv6 tables (no IPv6 service, no IPv6 node address) the packet
   * passes untouched and counts as non_ipv4, as before.
   */
  process(buf: Uint8Array, off: number, len: number, tables: Tables, now: number, vnet: number): number {
    const t6 = tables.v6;
    if (t6 === undefined || t6 === null) {
      // no IPv6 service and no IPv6 node address: untouched, as before IPv6 was handled
      this.host.counters.events[E_NON_IPV4]++;
      return this.verdict(V_PASS, len);
    }
    const err = ipv6Check(buf, off, len);
    if (err !== 0) return this.malformed(err, len);
    const total = IPV6_HEADER_LEN + get16(buf, off + IPV6_PAYLOAD_LEN);
    this.host.counters.events[E_IPV6]++;
    const c = this.chain;
    const nh = buf[off + 6];
    if (nh === PROTO_TCP || nh === PROTO_UDP) {
      // no extension header (the common case): the walk's answer without the walk
      c.proto = nh;
      c.l4Off = off + IPV6_HEADER_LEN;
      c.l4Len = total - IPV6_HEADER_LEN;
      c.fragHdrOff = -1;
      c.fragOffset = 0;
      c.moreFragments = 0;
      c.fragId = 0;
      c.extCount = 0;
      c.extBytes = 0;
    } else {
      const we = ipv6Walk(buf, off, c);
      if (we !== 0) return this.malformed(we, total);
    }
    this.partial = false;
    if (vnet >= 0 && (buf[vnet] & VNET_F_NEEDS_CSUM) !== 0) {
      if (c.proto === PROTO_TCP || c.proto === PROTO_UDP) {
        // a partial TCP/UDP checksum (and maybe a GSO super-packet): the rewrites keep it partial, the kernel completes it
        this.partial = true;
      } else {
        // on another protocol: complete it now (csum_start, csum_offset from the IPv6 header)
        const start = buf[vnet + 6] | (buf[vnet + 7] << 8);
        const at = buf[vnet + 8] | (buf[vnet + 9] << 8);
        if (start + at + 2 > total) return this.malformed(-14, total);
        // the field holds the pseudo-header sum: summed with the rest, complemented
        const k = ~checksumRaw(buf, off + start, total - start, 0) & 0xffff;
        put16(buf, off + start + at, k === 0 ? 0xffff : k);
        buf[vnet] &= ~VNET_F_NEEDS_CSUM;
        this.host.counters.events[E_CHECKSUMS_COMPLETED]++;
      }
    }
    const w = this.w;
    // the addresses' eight words through a DataView of the packet's buffer (one load each, byte-swapped),
    // kept while the loop hands over the same buffer
    let dv = this.dv;
    if (this.dvBuf !== buf) {
      dv = this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      this.dvBuf = buf;
    }
    const a = off + IPV6_SRC;
    w[0] = dv.getUint32(a); w[1] = dv.getUint32(a + 4); w[2] = dv.getUint32(a + 8); w[3] = dv.getUint32(a + 12);
    w[4] = dv.getUint32(a + 16); w[5] = dv.getUint32(a + 20); w[6] = dv.getUint32(a + 24); w[7] = dv.getUint32(a + 28);
    if (c.fragOffset !== 0) return this.laterFragment(buf, off, total, t6, now);

    const proto = c.proto;
    const l4 = c.l4Off;
    const l4len = c.l4Len;
    const more = c.moreFragments !== 0;
    let sport = 0;
    let dport = 0;
    let flags = 0;
    if (proto === PROTO_TCP) {
      const e = tcpCheck(buf, l4, l4len);
      if (e !== 0) return this.malformed(e, total);
      sport = get16(buf, l4);
      dport = get16(buf, l4 + 2);
      flags = buf[l4 + TCP_FLAGS];
    } else if (proto === PROTO_UDP) {
      if (l4len < UDP_HEADER_LEN) return this.malformed(-1, total);
      const ul = get16(buf, l4 + UDP_LENGTH);
      // a first fragment carries the header of a longer datagram
      if (ul < UDP_HEADER_LEN || (!more && ul > l4len)) return this.malformed(-7, total);
      sport = get16(buf, l4);
      dport = get16(buf, l4 + 2);
    } else if (proto === PROTO_SCTP) {
      const e = sctpCheck(buf, l4, l4len);
      if (e !== 0) return this.malformed(e, total);
      sport = get16(buf, l4);
      dport = get16(buf, l4 + 2);
      flags = l4len > SCTP_COMMON_HEADER_LEN ? buf[l4 + SCTP_FIRST_CHUNK_TYPE] : -1;
    } else if (proto === PROTO_ICMPV6) {
      const e = icmpv6Check(buf, l4, l4len, this.quote);
      if (e !== 0) return this.malformed(e, total);
      const type = buf[l4];
      if (type >= 1 && type <= 4) return this.icmpError(buf, off, total, now);
      // echo and the rest: kube-proxy's rules match TCP/UDP/SCTP only
      return this.verdict(V_PASS, total);
    } else {
      return this.verdict(V_PASS, total);
    }

    const ct = this.conntrack;
    const entry = ct.lookup6(proto, w, 0, 4, sport, dport, now);
    if (entry !== null) {
      const dir = ct.lastDirection;
      if (ct.update(entry, dir, flags, total, now) === CT_UPDATE_REOPEN) {
        ct.delete(entry);
        return this.newFlow(buf, off, total, t6, proto, sport, dport, flags, now);
      }
      this.translate(buf, off, entry, dir, sport, dport);
      this.host.counters.events[dir === DIR_ORIGINAL ? E_ESTABLISHED : E_REPLIES]++;
      if (more) this.fragments.remember(w, 0, proto, get32(buf, c.fragHdrOff + FRAG_IDENT), entry, dir, now);
      this.host.lastEntry = entry;
      return this.verdict(V_FORWARD, total);
    }
    return this.newFlow(buf, off, total, t6, proto, sport, dport, flags, now);
  }

  /** A packet of a tracked flow: original direction → the reply tuple's view, reply → the original's. */
  private translate(buf: Uint8Array, off: number, e: ConntrackEntry, dir: number, sport: number, dport: number): void {
    const ws = this.conntrack.wordArray;
    const b = this.conntrack.wordsAt(e);
    const w = this.w;
    let nSrc: number, nDst: number, nSport: number, nDport: number;
    if (dir === DIR_ORIGINAL) {
      nSrc = b + CT6_REPLY_DST; nSport = e.replyDport; nDst = b + CT6_REPLY_SRC; nDport = e.replySport;
    } else {
      nSrc = b + CT6_ORIG_DST; nSport = e.origDport; nDst = b + CT6_ORIG_SRC; nDport = e.origSport;
    }
    const c = this.chain;
    const dChange = !same4(ws, nDst, w, 4) || nDport !== dport;
    const sChange = !same4(ws, nSrc, w, 0) || nSport !== sport;
    if (dChange && sChange && !this.partial) rewriteBothKnown6(buf, off, c, w, 0, sport, dport, ws, nDst, nDport, nSrc, nSport);
    else {
      if (dChange) rewriteDst6(buf, off, c, ws, nDst, nDport, this.partial);
      if (sChange) rewriteSrc6(buf, off, c, ws, nSrc, nSport, this.partial);
    }
  }

  private newFlow(buf: Uint8Array, off: number, total: number, t6: Tables6, proto: number, sport: number, dport: number, flags: number, now: number): number {
    const out = this.out;
    const w = this.w;
    const ev = this.host.counters.events;
    ev[E_LOOKUPS]++;
    const lin = this.host.linear6;
    if (lin !== null) return newFlowLinear6(lin, this.host, this.conntrack, this.fragments, this.chain, w, this.partial, t6, buf, off, total, proto, sport, dport, flags, now);
    const r = lookup6(t6, proto, w, 0, 4, dport, out);
    if (r !== LOOKUP_DNAT) {
      if (r === LOOKUP_REJECT) return this.reject(buf, off, total);
      if (r === LOOKUP_DROP_NO_LOCAL) return this.drop(D_NO_LOCAL_ENDPOINTS, total);
      if (r === LOOKUP_DROP_SOURCE_RANGE) return this.drop(D_SOURCE_RANGE, total);
      return this.verdict(V_PASS, total);
    }
    const c = this.chain;
    if (proto === PROTO_SCTP && c.moreFragments !== 0) return this.drop(D_SCTP_FRAGMENTED, total);
    const base = t6.base;
    // the client as selection keys it: a 32-bit fold; the affinity table checks the whole address (client6)
    const client = (w[0] ^ w[1] ^ w[2] ^ w[3]) >>> 0;
    const aff = this.affinity;
    aff.client6(w, 0);
    const hits = aff.hits;
    // the destination as the selection's flow hash sees it (Maglev): a 32-bit fold, as for the client
    const dst32 = (w[4] ^ w[5] ^ w[6] ^ w[7]) >>> 0;
    const k = selectEndpoint(base, out, proto, client, dst32, sport, dport, now, this.host.rng, aff);
    if (aff.hits !== hits) ev[E_AFFINITY_HITS]++;
    const svc = base.services[out.svcIndex];
    // the endpoint's words and port from one place (Tables6.endpoints6, in endpointFlat's order)
    const eps = t6.endpoints6;
    const eo = k * EP6_STRIDE;
    const epPort = eps[eo + EP6_PORT];
    const hairpin = same4(eps, eo, w, 0);
    const masquerade = out.masquerade || hairpin;
    // the tuple: original (src, dst), reply (endpoint, masquerade address | client)
    const tw = this.tw;
    for (let i = 0; i < 8; i++) tw[i] = w[i];
    for (let i = 0; i < 4; i++) tw[CT6_REPLY_SRC + i] = eps[eo + i];
    if (masquerade) {
      if (t6.masqId < 0) return this.drop(D_IPV6_NO_MASQUERADE_ADDRESS, total);
      const words = t6.words;
      for (let i = 0; i < 4; i++) tw[CT6_REPLY_DST + i] = words[t6.masqId * 4 + i];
    } else {
      for (let i = 0; i < 4; i++) tw[CT6_REPLY_DST + i] = w[i];
    }
    const ct = this.conntrack;
    let replyDport = sport;
    if (ct.isTupleInUse6(proto, tw, CT6_REPLY_SRC, CT6_REPLY_DST, epPort, replyDport)) {
      replyDport = this.allocatePort(proto, epPort);
      if (replyDport < 0) return this.drop(D_NAT_PORT_EXHAUSTED, total);
    }
    const info = this.info;
    info.serviceName = svc.name;
    info.serviceIndex = svc.index;
    info.masquerade = masquerade;
    // both keys as lookup6 (this packet's tuple, in process) and the last isTupleInUse6 (the reply tuple) hashed them
    const entry = ct.insert6Keyed(proto, tw, sport, dport, epPort, replyDport, now, info, ct.lookupHi, ct.lookupLo, ct.probeHi, ct.probeLo);
    if (entry === null) return this.drop(ct.lastInsertFull ? D_CONNTRACK_FULL : D_CONNTRACK_COLLISION, total);
    if (this.partial) {
      rewriteDst6(buf, off, c, tw, CT6_REPLY_SRC, epPort, true);
      if (masquerade || replyDport !== sport) rewriteSrc6(buf, off, c, tw, CT6_REPLY_DST, replyDport, true);
    } else if (masquerade || replyDport !== sport) rewriteBoth6(buf, off, c, tw, CT6_REPLY_SRC, epPort, CT6_REPLY_DST, replyDport);
    else rewriteDst6(buf, off, c, tw, CT6_REPLY_SRC, epPort);
    ct.update(entry, DIR_ORIGINAL, flags, total, now);
    ev[E_NEW_FLOWS]++;
    if (masquerade) ev[E_MASQUERADED]++;
    if (hairpin) ev[E_HAIRPIN]++;
    if (c.moreFragments !== 0) this.fragments.remember(w, 0, proto, get32(buf, c.fragHdrOff + FRAG_IDENT), entry, DIR_ORIGINAL, now);
    this.host.lastEntry = entry;
    return this.verdict(V_FORWARD, total);
  }

  /** A masquerade source port no tracked flow uses for (endpoint → masquerade address), like nf_nat's random-fully. */
  private allocatePort(proto: number, epPort: number): number {
    for (let tries = 0; tries < 256; tries++) {
      const p = 1024 + this.host.rng.below(65536 - 1024);
      if (!this.conntrack.isTupleInUse6(proto, this.tw, CT6_REPLY_SRC, CT6_REPLY_DST, epPort, p)) return p;
    }
    return -1;
  }

  /** kube-proxy's REJECT: ICMPv6 destination unreachable / port unreachable, from the address the client tried. */
  private reject(buf: Uint8Array, off: number, total: number): number {
    if (!icmpv6ErrorPermitted(buf, off, this.chain, ICMPV6_DEST_UNREACH)) return this.drop(D_NO_ENDPOINTS, total);
    const h = this.host;
    const n = buildIcmpv6Error(h.reply, 0, buf, off, total, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, this.w, 4, 0, h.reply.length);
    if (n <= 0) return this.drop(D_NO_ENDPOINTS, total);
    h.replyLen = n;
    h.counters.events[E_REJECTED]++;
    return this.verdict(V_REPLY, total);
  }

  /**
   * An ICMPv6 error about a packet of a tracked flow (packet too big on the
   * way back, unreachable, time exceeded, parameter problem): the outer
   * header travels like a packet of the flow in the error's direction, the
   * quoted packet is put back the way its sender saw it.
   */
  private icmpError(buf: Uint8Array, off: number, total: number, now: number): number {
    const q = this.quote;
    const qProto = q.proto;
    if (qProto !== PROTO_TCP && qProto !== PROTO_UDP && qProto !== PROTO_SCTP) return this.verdict(V_PASS, total);
    if (q.fragOffset !== 0 || q.l4Len < 4) return this.verdict(V_PASS, total);
    const c = this.chain;
    const qo = c.l4Off + ICMPV6_QUOTE;
    const qw = this.qw;
    // the quoted packet reversed: its destination is the error's flow source
    for (let i = 0; i < 4; i++) {
      qw[i] = get32(buf, qo + 24 + (i << 2));
      qw[4 + i] = get32(buf, qo + 8 + (i << 2));
    }
    const qSport = get16(buf, q.l4Off);
    const qDport = get16(buf, q.l4Off + 2);
    const ct = this.conntrack;
    const e = ct.lookup6(qProto, qw, 0, 4, qDport, qSport, now);
    if (e === null) return this.verdict(V_PASS, total);
    const dir = ct.lastDirection;
    const ws = ct.wordArray;
    const b = ct.wordsAt(e);
    const w = this.w;
    if (dir === DIR_ORIGINAL) {
      // a client's error about a reply it got: quoted (VIP → client) becomes (endpoint → replyDst)
      icmpv6QuoteRewriteSrc(buf, c, q, ws, b + CT6_REPLY_SRC, e.replySport);
      icmpv6QuoteRewriteDst(buf, c, q, ws, b + CT6_REPLY_DST, e.replyDport);
      if (same4(w, 4, ws, b + CT6_ORIG_DST)) rewriteDst6(buf, off, c, ws, b + CT6_REPLY_SRC, -1);
      if (same4(w, 0, ws, b + CT6_ORIG_SRC) && !same4(ws, b + CT6_REPLY_DST, w, 0)) rewriteSrc6(buf, off, c, ws, b + CT6_REPLY_DST, -1);
    } else {
      // an endpoint's (or a router's) error about a packet it got: quoted (masq → endpoint) becomes (client → VIP)
      icmpv6QuoteRewriteSrc(buf, c, q, ws, b + CT6_ORIG_SRC, e.origSport);
      icmpv6QuoteRewriteDst(buf, c, q, ws, b + CT6_ORIG_DST, e.origDport);
      if (same4(w, 4, ws, b + CT6_REPLY_DST) && !same4(w, 4, ws, b + CT6_ORIG_SRC)) rewriteDst6(buf, off, c, ws, b + CT6_ORIG_SRC, -1);
      if (same4(w, 0, ws, b + CT6_REPLY_SRC)) rewriteSrc6(buf, off, c, ws, b + CT6_ORIG_DST, -1);
    }
    this.host.counters.events[E_ICMP_ERRORS]++;
    this.host.lastEntry = e;
    return this.verdict(V_FORWARD, total);
  }

  /** A later fragment: follows its first fragment's translation (addresses only). */
  private laterFragment(buf: Uint8Array, off: number, total: number, t6: Tables6, now: number): number {
    const c = this.chain;
    const w = this.w;
    const f = this.fragments.find(w, 0, c.proto, c.fragId, now);
    if (f === null) {
      if (isServiceAddress6(t6, w, 4)) return this.drop(D_FRAGMENT_NO_FLOW, total);
      return this.verdict(V_PASS, total);
    }
    const e = f.entry;
    if (!e.live) return this.drop(D_FRAGMENT_NO_FLOW, total);
    const ws = this.conntrack.wordArray;
    const b = this.conntrack.wordsAt(e);
    let nSrc: number, nDst: number;
    if (f.direction === DIR_ORIGINAL) {
      nSrc = b + CT6_REPLY_DST; nDst = b + CT6_REPLY_SRC;
    } else {
      nSrc = b + CT6_ORIG_DST; nDst = b + CT6_ORIG_SRC;
    }
    if (!same4(ws, nDst, w, 4)) rewriteDst6(buf, off, c, ws, nDst, -1);
    if (!same4(ws, nSrc, w, 0)) rewriteSrc6(buf, off, c, ws, nSrc, -1);
    this.host.counters.events[E_FRAGMENTS]++;
    this.host.lastEntry = e;
    return this.verdict(V_FORWARD, total);
  }
}
