/**
 * The per-packet function: bytes in, a verdict and (rewritten in place, or
 * generated) bytes out. No I/O; the state it reads and writes is the
 * connection table and the session-affinity table it is given, and the
 * clock is a parameter. See ../DESIGN.md "Data flow".
 *
 *   1. parse (wire views, no copy)
 *   2. conntrack hit → rewrite with the stored translation
 *   3. miss: service lookup → endpoint select → conntrack insert → DNAT (+SNAT)
 *   4. no endpoints → ICMP port unreachable, like kube-proxy's REJECT
 *
 * With a virtio-net header in front (a TUN opened with IFF_VNET_HDR, see
 * wire/virtio.ts), a packet may be a GSO super-packet of up to 64 KiB: it is
 * checked against its header, NATed once (the header goes back unchanged:
 * nothing moves), counted as the segments the wire carries, and its partial
 * checksum (NEEDS_CSUM) is kept partial: see process()'s `vnet` argument
 * and vnetPrepare.
 */
import { Conntrack } from './conntrack.ts';
import type { ConntrackEntry, ConntrackInfo } from './conntrack.ts';
import { CT_UPDATE_REOPEN } from './conntrack.ts';
import type { Tables } from './tables.ts';
import { isServiceAddress, lookup, LookupResult, LOOKUP_DNAT, LOOKUP_REJECT, LOOKUP_DROP_NO_LOCAL, LOOKUP_DROP_SOURCE_RANGE } from './tables.ts';
import { AffinityTable, Rng, selectEndpoint } from './select.ts';
import {
  Counters,
  D_MALFORMED, D_NO_LOCAL_ENDPOINTS, D_SOURCE_RANGE, D_CONNTRACK_COLLISION, D_CONNTRACK_FULL, D_NAT_PORT_EXHAUSTED, D_FRAGMENT_NO_FLOW, D_NO_ENDPOINTS, D_SCTP_FRAGMENTED,
  E_NEW_FLOWS, E_ESTABLISHED, E_REPLIES, E_REJECTED, E_ICMP_ERRORS, E_FRAGMENTS, E_MASQUERADED, E_HAIRPIN, E_AFFINITY_HITS, E_LOOKUPS,
  E_GSO_SUPER_PACKETS, E_GSO_SEGMENTS, E_CHECKSUMS_COMPLETED, E_GSO_SEGMENTED,
} from './counters.ts';
import { get16, get32 } from './wire/bytes.ts';
import { ipv4Check, ipv4HeaderLen } from './wire/ipv4.ts';
import { tcpCheck } from './wire/tcp.ts';
import { udpCheck } from './wire/udp.ts';
import { sctpCheck } from './wire/sctp.ts';
import { icmpCheck, isIcmpError, buildIcmpError, icmpErrorPermitted, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH } from './wire/icmp.ts';
import { rewriteSrc, rewriteDst, icmpQuoteRewriteSrc, icmpQuoteRewriteDst } from './wire/rewrite.ts';
import { wireErrorName } from './wire/error.ts';
import { FragmentTable } from './fragments.ts';
import { Conntrack6 } from './conntrack6.ts';
import { Pipeline6 } from './pipeline6.ts';
import {
  vnetCheck, vnetMatch, vnetSegments, vnetClearNeedsCsum, vnetCsumStart, vnetCsumOffset, vnetGsoSize,
  VIRTIO_NET_HDR_LEN, VNET_F_NEEDS_CSUM, VNET_GSO_NONE,
} from './wire/virtio.ts';
import { WIRE_BAD_VNET_CSUM } from './wire/error.ts';
import { gsoSegment, completeChecksum } from './gso.ts';
import type { PacketTuple, SampleDecider } from './verdict.ts';
import type { SampleDecider6 } from './decider6.ts';
import { V_DROP, V_FORWARD, V_PASS, V_REPLY } from './verdict.ts';

export { V_FORWARD, V_REPLY, V_DROP, V_PASS } from './verdict.ts';

/**
 * Conntrack's update() counted the super-packet as one packet (when it
 * counted it at all: not for an INVALID one): make it the segments the wire
 * carries, ceil(payload / gso_size), as the kernel's counters would read.
 */
function countSegments(e: ConntrackEntry, dir: number, before: number, segs: number): void {
  if (dir === DIR_ORIGINAL) {
    if (e.origPackets === before + 1) e.origPackets += segs - 1;
  } else if (e.replyPackets === before + 1) {
    e.replyPackets += segs - 1;
  }
}

export interface PipelineOptions {
  conntrack?: Conntrack;
  /** the IPv6 connection table (default: one like `conntrack`, made on the first IPv6 packet) */
  conntrack6?: Conntrack6;
  affinity?: AffinityTable;
  rng?: Rng;
  /** size of the buffer generated replies (ICMP errors) are written into; RFC 1812 suggests 576 */
  replyBufferSize?: number;
  /** decide new flows by walking kube-proxy's rules instead of the hash tables (see Pipeline.linear) */
  linear?: SampleDecider | null;
  /** the same for new IPv6 flows: kube-proxy's ip6tables rules walked (see Pipeline.linear6) */
  linear6?: SampleDecider6 | null;
}

// The wire's named offsets, flags and protocol numbers, as defined in wire/ipv4.ts, wire/tcp.ts, wire/udp.ts, wire/sctp.ts, wire/icmp.ts and addr.ts
// (test/unit/wire-names.test.ts checks that every one here equals its definition there).
// Copied, not imported: an imported binding is read through its module cell with a TDZ
// check on every use, which cost ~10 ns per established packet (bench:packet, 166 → 176 ns);
// a module-local const with a literal value is folded into the code like the literal.
const IPV4_VER_IHL = 0;
const IPV4_TOTAL_LEN = 2;
const IPV4_PROTOCOL = 9;
const IPV4_SRC = 12;
const IPV4_DST = 16;
const IPV4_FLAGS_FRAG = 6;
const IPV4_FRAG_OFFSET_MASK = 0x1fff;
const IPV4_FLAG_MF = 0x2000;
const IPV4_IDENT = 4;
const TCP_SRC_PORT = 0;
const TCP_DST_PORT = 2;
const TCP_FLAGS = 13;
const UDP_SRC_PORT = 0;
const UDP_DST_PORT = 2;
const IP_VERSION_4 = 4;
const IP_VERSION_6 = 6;
const SCTP_COMMON_HEADER_LEN = 12;
const ICMP_TYPE = 0;
const ICMP_QUOTE = 8;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_SCTP = 132;
const PROTO_ICMP = 1;
const SCTP_SRC_PORT = 0;
const SCTP_DST_PORT = 2;
const SCTP_FIRST_CHUNK_TYPE = 12;
const DIR_ORIGINAL = 0;
/** the source and destination ports: the first 4 bytes of a TCP, UDP or SCTP header */
const L4_PORTS_LEN = 4;

/**
 * The packet whose flow is being created, as the new-flow path passes it
 * along: one per pipeline, filled in place (no 12- or 18-argument calls, no
 * allocation). The decision's fields (endpoint, masquerade, service) are
 * filled by the decider before the conntrack insert and the rewrite.
 */
class NewFlow {
  off = 0;
  total = 0;
  proto = 0;
  src = 0;
  dst = 0;
  sport = 0;
  dport = 0;
  /** TCP flags, or the first SCTP chunk's type (-1 when none) */
  flags = 0;
  /** the IPv4 flags and fragment offset field */
  fragField = 0;
  epAddr = 0;
  epPort = 0;
  masquerade = false;
  hairpin = false;
  serviceName = '';
  /** -1: decided by the linear walk (no tables entry) */
  serviceIndex = 0;
}

export class Pipeline {
  readonly conntrack: Conntrack;
  readonly affinity: AffinityTable;
  readonly rng: Rng;
  readonly counters = new Counters();
  readonly fragments = new FragmentTable();
  /** a generated packet (V_REPLY) is here, `replyLen` bytes long */
  readonly reply: Uint8Array;
  replyLen = 0;
  /** the drop reason index of the last V_DROP */
  lastDrop = -1;
  /** the entry the last forwarded packet belonged to (null for passes) */
  lastEntry: ConntrackEntry | null = null;
  private readonly out = new LookupResult();
  private readonly tuple: PacketTuple = { proto: 0, src: 0, dst: 0, sport: 0, dport: 0 };
  private readonly info: ConntrackInfo = { serviceName: '', serviceIndex: 0, endpointAddr: 0, endpointPort: 0, masquerade: false };
  /** the packet in hand: its TCP/UDP checksum is partial (NEEDS_CSUM): rewrites keep it so */
  private partial = false;
  /** the packet in hand: the segments it stands for on the wire (1 unless a GSO super-packet) */
  private segments = 1;
  /** the packet in hand: header bytes every segment repeats (IPv4 + L4), for wire byte counts */
  private segHeader = 0;
  /** the packet in hand: its gso_size (when segments > 1) */
  private gsoSize = 0;
  /** where a super-packet's first segment is built when an ICMP error must quote it (allocated on first use) */
  private segScratch: Uint8Array | null = null;
  private readonly segOffsets = new Uint32Array(1);
  private readonly segLengths = new Uint32Array(1);
  private readonly flow = new NewFlow();
  /**
   * When set, new flows are decided by walking kube-proxy's rules (a
   * comparison mode: tunproxy run --decider linear) instead of the hash
   * tables, which then serve only the established flows' masquerade address.
   * Built from each rule set with its tables and set by the control side
   * between batches, when the tables are swapped (control/dataplane.ts,
   * control/worker/host.ts): the tables hold what the hot path needs and nothing else.
   */
  linear: SampleDecider | null;
  /** Pipeline.linear for new IPv6 flows: the walk of kube-proxy's ip6tables rules (dataplane/pipeline6-linear.ts), set with the tables likewise */
  linear6: SampleDecider6 | null;

  constructor(o: PipelineOptions = {}) {
    this.conntrack = o.conntrack ?? new Conntrack();
    this.affinity = o.affinity ?? new AffinityTable();
    this.rng = o.rng ?? new Rng();
    this.reply = new Uint8Array(o.replyBufferSize ?? 576);
    this.linear = o.linear ?? null;
    this.linear6 = o.linear6 ?? null;
    this.conntrack6 = o.conntrack6 ?? null;
  }

  /** the IPv6 path (pipeline6.ts), made with its connection table on the first IPv6 packet */
  private v6: Pipeline6 | null = null;
  private conntrack6: Conntrack6 | null;

  /** The IPv6 connection table, null until the first IPv6 packet made the IPv6 path. */
  get conntrackV6(): Conntrack6 | null {
    return this.v6 === null ? null : this.v6.conntrack;
  }

  /** The IPv6 path if an IPv6 packet made it (its affinity table: a trace reads it without making the path). */
  get ipv6Path(): Pipeline6 | null {
    return this.v6;
  }

  /** The IPv6 path: its connection table (Conntrack6), fragments and affinity. */
  ipv6(): Pipeline6 {
    if (this.v6 === null) {
      const ct = this.conntrack;
      this.v6 = new Pipeline6(this, this.conntrack6 ?? new Conntrack6({ maxEntries: ct.maxEntries, timeouts: ct.timeouts, clock: ct.clock }));
    }
    return this.v6;
  }

  // a super-packet counts as the segments the wire carries, with their headers
  private drop(reason: number, len: number): number {
    const n = this.segments;
    this.counters.drops[reason] += n;
    this.counters.packets[V_DROP] += n;
    this.counters.bytes[V_DROP] += len + (n - 1) * this.segHeader;
    this.lastDrop = reason;
    return V_DROP;
  }

  private verdict(v: number, len: number): number {
    const n = this.segments;
    this.counters.packets[v] += n;
    this.counters.bytes[v] += len + (n - 1) * this.segHeader;
    return v;
  }

  private malformed(code: number, len: number): number {
    const name = wireErrorName(code);
    this.counters.malformed.set(name, (this.counters.malformed.get(name) ?? 0) + 1);
    return this.drop(D_MALFORMED, len);
  }

  /**
   * Process one packet at buf[off .. off+len). Returns V_FORWARD (rewritten
   * in place, write it back), V_REPLY (write `reply[0 .. replyLen)` instead),
   * V_DROP (reason in `lastDrop` and the counters) or V_PASS (untouched).
   * Never throws on any input.
   *
   * `vnet`: the offset of the packet's virtio-net header (its IP header at
   * off = vnet + 10), or -1 when there is none. A header that is not all
   * "nothing to do" is checked against the packet (inconsistent: dropped as
   * malformed with a bad_vnet_* / vnet_*_mismatch detail) and may be changed
   * in place (a partial checksum on another protocol is completed and its
   * NEEDS_CSUM cleared); for V_FORWARD and V_PASS write it back with the packet.
   */
  process(buf: Uint8Array, off: number, len: number, tables: Tables, now: number, vnet = -1): number {
    this.lastEntry = null;
    this.partial = false;
    this.segments = 1;
    this.segHeader = 0;
    if (len < 1) return this.malformed(-1, len);
    if (vnet >= 0 && (buf[vnet] | buf[vnet + 1]) !== 0) {
      // whatever the packet, a header the kernel would refuse is never written back
      const ve = vnetCheck(buf, vnet, off - vnet + len);
      if (ve !== 0) return this.malformed(ve, len);
    }
    const version = buf[off + IPV4_VER_IHL] >> 4;
    if (version !== IP_VERSION_4) {
      if (version === IP_VERSION_6) return this.ipv6().process(buf, off, len, tables, now, vnet);
      return this.malformed(-2, len);
    }
    const err = ipv4Check(buf, off, len);
    if (err !== 0) return this.malformed(err, len);
    const hlen = ipv4HeaderLen(buf, off);
    const total = get16(buf, off + IPV4_TOTAL_LEN);
    const proto = buf[off + IPV4_PROTOCOL];
    const src = get32(buf, off + IPV4_SRC);
    const dst = get32(buf, off + IPV4_DST);
    const fragField = get16(buf, off + IPV4_FLAGS_FRAG);
    if (vnet >= 0 && (buf[vnet] | buf[vnet + 1]) !== 0) {
      const ve = this.vnetPrepare(buf, vnet, off, total, proto);
      if (ve !== 0) return this.malformed(ve, total);
    }
    if ((fragField & IPV4_FRAG_OFFSET_MASK) !== 0) return this.laterFragment(buf, off, total, proto, src, dst, tables, now);

    const l4 = off + hlen;
    const l4len = total - hlen;
    let sport = 0;
    let dport = 0;
    let flags = 0;
    if (proto === PROTO_TCP) {
      const e = tcpCheck(buf, l4, l4len);
      if (e !== 0) return this.malformed(e, total);
      sport = get16(buf, l4 + TCP_SRC_PORT);
      dport = get16(buf, l4 + TCP_DST_PORT);
      flags = buf[l4 + TCP_FLAGS];
    } else if (proto === PROTO_UDP) {
      const e = udpCheck(buf, l4, l4len);
      if (e !== 0) return this.malformed(e, total);
      sport = get16(buf, l4 + UDP_SRC_PORT);
      dport = get16(buf, l4 + UDP_DST_PORT);
    } else if (proto === PROTO_SCTP) {
      const e = sctpCheck(buf, l4, l4len);
      if (e !== 0) return this.malformed(e, total);
      sport = get16(buf, l4 + SCTP_SRC_PORT);
      dport = get16(buf, l4 + SCTP_DST_PORT);
      flags = l4len > SCTP_COMMON_HEADER_LEN ? buf[l4 + SCTP_FIRST_CHUNK_TYPE] : -1; // the first chunk's type drives the SCTP state
    } else if (proto === PROTO_ICMP) {
      const e = icmpCheck(buf, l4, l4len);
      if (e !== 0) return this.malformed(e, total);
      if (isIcmpError(buf[l4 + ICMP_TYPE])) return this.icmpError(buf, off, total, l4, now);
      // ICMP echo and the rest: kube-proxy's rules match TCP/UDP/SCTP only
      return this.verdict(V_PASS, total);
    } else {
      return this.verdict(V_PASS, total);
    }

    const ct = this.conntrack;
    const entry = ct.lookup(proto, src, dst, sport, dport, now);
    if (entry !== null) {
      const dir = ct.lastDirection;
      const segs = this.segments;
      const before = dir === DIR_ORIGINAL ? entry.origPackets : entry.replyPackets;
      if (ct.update(entry, dir, flags, total + (segs - 1) * this.segHeader, now) === CT_UPDATE_REOPEN) {
        // a new SYN on a closed flow's tuple: netfilter starts a new connection (and a new choice)
        ct.delete(entry);
        return this.newFlow(buf, this.fill(off, total, proto, src, dst, sport, dport, flags, fragField), tables, now);
      }
      if (segs > 1) countSegments(entry, dir, before, segs);
      this.translate(buf, off, entry, dir, src, dst, sport, dport);
      this.counters.events[dir === DIR_ORIGINAL ? E_ESTABLISHED : E_REPLIES]++;
      if ((fragField & IPV4_FLAG_MF) !== 0) this.fragments.remember(src, dst, proto, get16(buf, off + IPV4_IDENT), entry, dir, now);
      this.lastEntry = entry;
      return this.verdict(V_FORWARD, total);
    }
    return this.newFlow(buf, this.fill(off, total, proto, src, dst, sport, dport, flags, fragField), tables, now);
  }

  /** The packet's tuple into the pipeline's one NewFlow (the parse's locals, once, where a new flow starts). */
  private fill(off: number, total: number, proto: number, src: number, dst: number, sport: number, dport: number, flags: number, fragField: number): NewFlow {
    const f = this.flow;
    f.off = off;
    f.total = total;
    f.proto = proto;
    f.src = src;
    f.dst = dst;
    f.sport = sport;
    f.dport = dport;
    f.flags = flags;
    f.fragField = fragField;
    return f;
  }

  /** Rewrite a packet of a tracked flow: original direction → the reply tuple's view, reply → the original's. */
  private translate(buf: Uint8Array, off: number, e: ConntrackEntry, dir: number, src: number, dst: number, sport: number, dport: number): void {
    let nSrc: number, nDst: number, nSport: number, nDport: number;
    if (dir === DIR_ORIGINAL) {
      nSrc = e.replyDst; nSport = e.replyDport; nDst = e.replySrc; nDport = e.replySport;
    } else {
      nSrc = e.origDst; nSport = e.origDport; nDst = e.origSrc; nDport = e.origSport;
    }
    if (nDst !== dst || nDport !== dport) rewriteDst(buf, off, nDst, nDport, this.partial);
    if (nSrc !== src || nSport !== sport) rewriteSrc(buf, off, nSrc, nSport, this.partial);
  }

  private newFlow(buf: Uint8Array, f: NewFlow, tables: Tables, now: number): number {
    const out = this.out;
    this.counters.events[E_LOOKUPS]++;
    if (this.linear !== null) return this.newFlowLinear(buf, f, this.linear, tables, now);
    const r = lookup(tables, f.proto, f.src, f.dst, f.dport, out);
    if (r !== LOOKUP_DNAT) {
      if (r === LOOKUP_REJECT) return this.reject(buf, f.off, f.total, f.dst);
      if (r === LOOKUP_DROP_NO_LOCAL) return this.drop(D_NO_LOCAL_ENDPOINTS, f.total);
      if (r === LOOKUP_DROP_SOURCE_RANGE) return this.drop(D_SOURCE_RANGE, f.total);
      return this.verdict(V_PASS, f.total);
    }
    if (f.proto === PROTO_SCTP && (f.fragField & IPV4_FLAG_MF) !== 0) return this.drop(D_SCTP_FRAGMENTED, f.total);
    const hits = this.affinity.hits;
    const k = selectEndpoint(tables, out, f.proto, f.src, f.dst, f.sport, f.dport, now, this.rng, this.affinity);
    if (this.affinity.hits !== hits) this.counters.events[E_AFFINITY_HITS]++;
    const svc = tables.services[out.svcIndex];
    f.epAddr = tables.endpointFlat[2 * k] >>> 0;
    f.epPort = tables.endpointFlat[2 * k + 1];
    f.hairpin = f.epAddr === f.src;
    f.masquerade = out.masquerade || f.hairpin;
    f.serviceName = svc.name;
    f.serviceIndex = svc.index;
    return this.translateNew(buf, f, tables, now);
  }

  /** Conntrack insert (with a masquerade port that never reuses a tuple in use) and the first rewrite. */
  private translateNew(buf: Uint8Array, f: NewFlow, tables: Tables, now: number): number {
    const ct = this.conntrack;
    const { proto, src, sport, epAddr, epPort, total } = f;
    // the reply tuple: endpoint → (masquerade address | client), keeping the client's port when it is free
    const replyDst = f.masquerade ? tables.masqueradeAddr : src;
    let replyDport = sport;
    if (ct.isTupleInUse(proto, epAddr, replyDst, epPort, replyDport)) {
      replyDport = this.allocatePort(proto, epAddr, replyDst, epPort);
      if (replyDport < 0) return this.drop(D_NAT_PORT_EXHAUSTED, total);
    }
    const info = this.info;
    info.serviceName = f.serviceName;
    info.serviceIndex = f.serviceIndex;
    info.endpointAddr = epAddr;
    info.endpointPort = epPort;
    info.masquerade = f.masquerade;
    const entry = ct.insert(proto, src, f.dst, sport, f.dport, epAddr, replyDst, epPort, replyDport, now, info);
    if (entry === null) return this.drop(ct.lastInsertFull ? D_CONNTRACK_FULL : D_CONNTRACK_COLLISION, total);
    rewriteDst(buf, f.off, epAddr, epPort, this.partial);
    if (replyDst !== src || replyDport !== sport) rewriteSrc(buf, f.off, replyDst, replyDport, this.partial);
    const segs = this.segments;
    ct.update(entry, DIR_ORIGINAL, f.flags, total + (segs - 1) * this.segHeader, now);
    if (segs > 1) countSegments(entry, DIR_ORIGINAL, 0, segs);
    const ev = this.counters.events;
    ev[E_NEW_FLOWS]++;
    if (f.masquerade) ev[E_MASQUERADED]++;
    if (f.hairpin) ev[E_HAIRPIN]++;
    if ((f.fragField & IPV4_FLAG_MF) !== 0) this.fragments.remember(src, f.dst, proto, get16(buf, f.off + IPV4_IDENT), entry, DIR_ORIGINAL, now);
    this.lastEntry = entry;
    return this.verdict(V_FORWARD, total);
  }

  /** The same as newFlow, with kube-proxy's rules walked linearly deciding (tunproxy run --decider linear). */
  private newFlowLinear(buf: Uint8Array, f: NewFlow, linear: SampleDecider, tables: Tables, now: number): number {
    const p = this.tuple;
    p.proto = f.proto; p.src = f.src; p.dst = f.dst; p.sport = f.sport; p.dport = f.dport;
    const s = linear.sample(p, now);
    if (s.kind === 'reject') return this.reject(buf, f.off, f.total, f.dst);
    if (s.kind === 'drop') return this.drop(s.reason === 'no_local_endpoints' ? D_NO_LOCAL_ENDPOINTS : D_SOURCE_RANGE, f.total);
    if (s.kind !== 'dnat') return this.verdict(V_PASS, f.total);
    if (f.proto === PROTO_SCTP && (f.fragField & IPV4_FLAG_MF) !== 0) return this.drop(D_SCTP_FRAGMENTED, f.total);
    f.epAddr = s.endpointAddr >>> 0;
    f.epPort = s.endpointPort;
    f.masquerade = s.masquerade;
    f.hairpin = f.epAddr === f.src;
    f.serviceName = s.service;
    f.serviceIndex = -1;
    return this.translateNew(buf, f, tables, now);
  }

  /** A source port for (endpoint → masquerade address) that no tracked flow uses, like nf_nat's random-fully. */
  private allocatePort(proto: number, epAddr: number, masqAddr: number, epPort: number): number {
    for (let tries = 0; tries < 256; tries++) {
      const p = 1024 + this.rng.below(65536 - 1024);
      if (!this.conntrack.isTupleInUse(proto, epAddr, masqAddr, epPort, p)) return p;
    }
    return -1;
  }

  /** kube-proxy's REJECT: ICMP port unreachable back to the client, from the address it tried. */
  private reject(buf: Uint8Array, off: number, total: number, dst: number): number {
    if (!icmpErrorPermitted(buf, off, total)) return this.drop(D_NO_ENDPOINTS, total);
    if (this.segments > 1 || this.partial) return this.rejectSuper(buf, off, total, dst);
    const n = buildIcmpError(this.reply, 0, buf, off, total, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, dst, 0);
    if (n <= 0) return this.drop(D_NO_ENDPOINTS, total);
    this.replyLen = n;
    this.counters.events[E_REJECTED]++;
    return this.verdict(V_REPLY, total);
  }

  /**
   * REJECT of a super-packet (or of a packet whose checksum is partial): the
   * error quotes what a host would have received, the first segment with
   * complete checksums, built in software (gso.ts). One error per super-packet.
   */
  private rejectSuper(buf: Uint8Array, off: number, total: number, dst: number): number {
    let scratch = this.segScratch;
    if (scratch === null) scratch = this.segScratch = new Uint8Array(65536);
    const gso = this.segments > 1 ? this.gsoSize : 65535;
    const k = gsoSegment(buf, off, gso, scratch, 0, 0, this.segOffsets, this.segLengths, 1);
    if (k !== 1) return this.malformed(k, total);
    this.counters.events[E_GSO_SEGMENTED]++;
    const n = buildIcmpError(this.reply, 0, scratch, 0, this.segLengths[0], ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, dst, 0);
    if (n <= 0) return this.drop(D_NO_ENDPOINTS, total);
    this.replyLen = n;
    this.counters.events[E_REJECTED]++;
    return this.verdict(V_REPLY, total);
  }

  /**
   * Check the virtio header at `vnet` against the IPv4 packet at `off`
   * (ipv4Check passed) and take what it says: a partial TCP/UDP checksum
   * stays partial (this.partial), a partial checksum on another protocol is
   * completed now, a GSO super-packet counts as its segments. Returns 0 or a
   * wire error (the packet is then malformed).
   */
  private vnetPrepare(buf: Uint8Array, vnet: number, off: number, total: number, proto: number): number {
    const ve = vnetCheck(buf, vnet, VIRTIO_NET_HDR_LEN + total);
    if (ve !== 0) return ve;
    const hlen = (buf[off] & 0x0f) << 2;
    const l4len = total - hlen;
    if (proto === PROTO_TCP) {
      const e = tcpCheck(buf, off + hlen, l4len);
      if (e !== 0) return e;
    } else if (proto === PROTO_UDP) {
      const e = udpCheck(buf, off + hlen, l4len);
      if (e !== 0) return e;
    }
    const m = vnetMatch(buf, vnet, off, proto);
    if (m !== 0) return m;
    if ((buf[vnet] & VNET_F_NEEDS_CSUM) !== 0) {
      if (proto === PROTO_TCP || proto === PROTO_UDP) {
        this.partial = true;
      } else {
        if ((get16(buf, off + 6) & 0x3fff) !== 0) return WIRE_BAD_VNET_CSUM;
        completeChecksum(buf, off, vnetCsumStart(buf, vnet), vnetCsumOffset(buf, vnet));
        vnetClearNeedsCsum(buf, vnet);
        this.counters.events[E_CHECKSUMS_COMPLETED]++;
      }
    }
    if ((buf[vnet + 1] & 0x7f) !== VNET_GSO_NONE) {
      const hdr = hlen + (proto === PROTO_TCP ? (buf[off + hlen + 12] >>> 4) << 2 : 8);
      const gso = vnetGsoSize(buf, vnet);
      this.gsoSize = gso;
      this.segHeader = hdr;
      this.segments = vnetSegments(total - hdr, gso);
      const ev = this.counters.events;
      ev[E_GSO_SUPER_PACKETS]++;
      ev[E_GSO_SEGMENTS] += this.segments;
    }
    return 0;
  }

  /**
   * An ICMP error (destination unreachable, time exceeded, fragmentation
   * needed, ...) about a packet of a tracked flow: the outer header travels
   * like a packet of the flow in the error's direction, and the quoted
   * header is put back the way its sender saw it.
   */
  private icmpError(buf: Uint8Array, off: number, total: number, l4: number, now: number): number {
    const q = l4 + ICMP_QUOTE;
    const qProto = buf[q + IPV4_PROTOCOL];
    if (qProto !== PROTO_TCP && qProto !== PROTO_UDP && qProto !== PROTO_SCTP) return this.verdict(V_PASS, total);
    const qhl = ipv4HeaderLen(buf, q);
    if (q + qhl + L4_PORTS_LEN > off + total) return this.verdict(V_PASS, total);
    const qSrc = get32(buf, q + IPV4_SRC);
    const qDst = get32(buf, q + IPV4_DST);
    const qSport = get16(buf, q + qhl + TCP_SRC_PORT);
    const qDport = get16(buf, q + qhl + TCP_DST_PORT);
    // the error travels opposite to the quoted packet: look the flow up by the quoted packet reversed
    const ct = this.conntrack;
    const e = ct.lookup(qProto, qDst, qSrc, qDport, qSport, now);
    if (e === null) return this.verdict(V_PASS, total);
    const dir = ct.lastDirection;
    const src = get32(buf, off + IPV4_SRC);
    const dst = get32(buf, off + IPV4_DST);
    if (dir === DIR_ORIGINAL) {
      // a client's error about a reply it got: quoted (VIP → client) becomes (endpoint → replyDst)
      icmpQuoteRewriteSrc(buf, off, e.replySrc, e.replySport);
      icmpQuoteRewriteDst(buf, off, e.replyDst, e.replyDport);
      if (dst === e.origDst) rewriteDst(buf, off, e.replySrc, -1);
      if (src === e.origSrc && e.replyDst !== src) rewriteSrc(buf, off, e.replyDst, -1);
    } else {
      // an endpoint's (or a router's) error about a packet it got: quoted (masq → endpoint) becomes (client → VIP)
      icmpQuoteRewriteSrc(buf, off, e.origSrc, e.origSport);
      icmpQuoteRewriteDst(buf, off, e.origDst, e.origDport);
      if (dst === e.replyDst && dst !== e.origSrc) rewriteDst(buf, off, e.origSrc, -1);
      if (src === e.replySrc) rewriteSrc(buf, off, e.origDst, -1);
    }
    this.counters.events[E_ICMP_ERRORS]++;
    this.lastEntry = e;
    return this.verdict(V_FORWARD, total);
  }

  /** A later fragment: follows its first fragment's translation (addresses only: no L4 header here). */
  private laterFragment(buf: Uint8Array, off: number, total: number, proto: number, src: number, dst: number, tables: Tables, now: number): number {
    const f = this.fragments.find(src, dst, proto, get16(buf, off + IPV4_IDENT), now);
    if (f === null) {
      // not part of a translated flow we saw: leave it unless it heads for a service address
      if (isServiceAddress(tables, dst)) return this.drop(D_FRAGMENT_NO_FLOW, total);
      return this.verdict(V_PASS, total);
    }
    const e = f.entry;
    let nSrc: number, nDst: number;
    if (f.direction === DIR_ORIGINAL) {
      nSrc = e.replyDst; nDst = e.replySrc;
    } else {
      nSrc = e.origDst; nDst = e.origSrc;
    }
    if (nDst !== dst) rewriteDst(buf, off, nDst, -1);
    if (nSrc !== src) rewriteSrc(buf, off, nSrc, -1);
    this.counters.events[E_FRAGMENTS]++;
    this.lastEntry = e;
    return this.verdict(V_FORWARD, total);
  }
}
