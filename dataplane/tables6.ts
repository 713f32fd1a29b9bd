/**
 * The IPv6 tables: kube-proxy's IPv6 proxier compiled, answered in O(1) for
 * a 128-bit destination.
 *
 * How: every IPv6 address the tables know (ClusterIPs, external and LB IPs,
 * endpoints, the node's addresses, the masquerade address) gets a small
 * dense id at compile time; `ids` maps a 128-bit address a packet is looked
 * up by (the node's, ClusterIPs, external and LB IPs: not endpoints) to its
 * id (one probe of an open-addressing table of words), `words` maps any id
 * back to its four words. `base` is an ordinary Tables (tables.ts) compiled from the
 * family-6 service-port models with ids in place of addresses, so the VIP
 * index, NodePorts, rows, endpoint sets, Maglev and affinity are the IPv4
 * machinery unchanged. What depends on the source's full 128 bits (the
 * cluster CIDR, loadBalancerSourceRanges) is checked on words here.
 */
import { cidr6Contains, equal6, hash4, type Cidr6 } from './addr6.ts';
import type { Verdict } from './verdict.ts';
import type { PacketTuple6 } from './decider6.ts';
import { protoIndex } from './addr.ts';
import {
  isLocal, LookupResult, ROW, R_FLAGS, R_CLUSTER_START, R_CLUSTER_COUNT, R_LOCAL_START, R_LOCAL_COUNT,
  F_HAS_ENDPOINTS, F_EXTERNAL_LOCAL, F_HAS_EXTERNAL_ENDPOINTS, F_HAS_INTERNAL, F_INTERNAL_LOCAL, F_FIREWALL,
  VIP_CLUSTER, VIP_LOADBALANCER, VIA_NODEPORT, ANY_PORT,
  LOOKUP_NOMATCH, LOOKUP_DNAT, LOOKUP_REJECT, LOOKUP_DROP_NO_LOCAL, LOOKUP_DROP_SOURCE_RANGE,
  type Tables,
  verdictOf,
} from './tables.ts';

/**
 * A slot: the four words, id + 1 (0 = empty), then a hint: one (protoPort,
 * VIP index value) pair of the address (-1 = none) and a pad word. Eight
 * words, 32 bytes: with the array's start 32-byte aligned (a large array's
 * backing store is page-aligned) a slot never straddles a cache line.
 */
const STRIDE = 8;
const S_ID = 4;
const S_HINT_KEY = 5;
const S_HINT_VALUE = 6;

/**
 * 128-bit address → small id: open addressing with linear probing over one
 * Int32Array (STRIDE words per slot), built once, immutable after. No
 * allocation per lookup.
 *
 * The hint: a new flow to an IPv6 ClusterIP would take two probes at two
 * places in memory (this table for the id, then the VIP index for (id,
 * protoPort)); at 100 000 services each is a cache miss. So each address
 * keeps, beside its id, the VIP index's answer for one of its (protocol,
 * port) keys (a service with one port: its only one), and lookup6 reads it
 * from the slot it already has in cache. Other ports probe the VIP index.
 */
export class Addr6Ids {
  readonly slots: Int32Array;
  private readonly mask: number;
  size = 0;

  constructor(expected: number, slots?: Int32Array) {
    if (slots !== undefined) {
      if (slots.length % STRIDE !== 0) throw new Error(`Addr6Ids: ${slots.length} words is not a whole number of ${STRIDE}-word slots`);
      this.slots = slots;
      this.mask = slots.length / STRIDE - 1;
      let n = 0;
      for (let i = S_ID; i < slots.length; i += STRIDE) if (slots[i] !== 0) n++;
      this.size = n;
      return;
    }
    let cap = 16;
    while (cap < expected * 2) cap *= 2;
    this.mask = cap - 1;
    this.slots = new Int32Array(cap * STRIDE);
  }

  /** Where the address w[o..o+4) is in `slots` (its first word), or -1. */
  find(w: ArrayLike<number>, o: number): number {
    const s = this.slots;
    const a = w[o] | 0, b = w[o + 1] | 0, c = w[o + 2] | 0, d = w[o + 3] | 0;
    let i = hash4(w, o) & this.mask;
    for (;;) {
      const p = i * STRIDE;
      if (s[p + S_ID] === 0) return -1;
      if (s[p + 3] === d && s[p] === a && s[p + 1] === b && s[p + 2] === c) return p;
      i = (i + 1) & this.mask;
    }
  }

  /** The id of the address w[o..o+4), or -1. */
  get(w: ArrayLike<number>, o: number): number {
    const p = this.find(w, o);
    return p < 0 ? -1 : this.slots[p + S_ID] - 1;
  }

  /** Insert (build time only); the capacity must hold it (expected given to the constructor). */
  set(w: ArrayLike<number>, o: number, id: number): void {
    if ((this.size + 1) * 2 > this.mask + 1) throw new Error('Addr6Ids: full (more addresses than expected)');
    const s = this.slots;
    let i = hash4(w, o) & this.mask;
    for (;;) {
      const p = i * STRIDE;
      if (s[p + S_ID] === 0) {
        s[p] = w[o]; s[p + 1] = w[o + 1]; s[p + 2] = w[o + 2]; s[p + 3] = w[o + 3];
        s[p + S_ID] = id + 1;
        s[p + S_HINT_KEY] = -1;
        this.size++;
        return;
      }
      if (s[p] === (w[o] | 0) && s[p + 1] === (w[o + 1] | 0) && s[p + 2] === (w[o + 2] | 0) && s[p + 3] === (w[o + 3] | 0)) {
        s[p + S_ID] = id + 1;
        return;
      }
      i = (i + 1) & this.mask;
    }
  }

  /**
   * Build time: remember the VIP index's value for (this address, protoPort)
   * in the address's slot, unless it holds one already. The caller passes
   * exactly what the VIP index answers for that key.
   */
  hint(w: ArrayLike<number>, o: number, protoPort: number, value: number): void {
    const p = this.find(w, o);
    if (p < 0) throw new Error('Addr6Ids: a hint for an address that has no id');
    if (this.slots[p + S_HINT_KEY] !== -1) return;
    this.slots[p + S_HINT_KEY] = protoPort;
    this.slots[p + S_HINT_VALUE] = value;
  }

  /**
   * Patch time (a copy, never the table in force): after the VIP index
   * changed for (this address, protoPort), `value` being its answer now
   * (-1: the key went): a hint for that key takes the new value or is
   * cleared; an address without a hint takes this one.
   */
  refreshHint(w: ArrayLike<number>, o: number, protoPort: number, value: number): void {
    const p = this.find(w, o);
    if (p < 0) return;
    const s = this.slots;
    if (s[p + S_HINT_KEY] === protoPort) {
      if (value < 0) s[p + S_HINT_KEY] = -1;
      else s[p + S_HINT_VALUE] = value;
    } else if (s[p + S_HINT_KEY] === -1 && value >= 0) {
      s[p + S_HINT_KEY] = protoPort;
      s[p + S_HINT_VALUE] = value;
    }
  }

  /** A copy with room for `expected` addresses (the same slots when they fit, else every address again, hints kept). */
  copy(expected: number): Addr6Ids {
    const s = this.slots;
    if (expected * 2 <= this.mask + 1) return new Addr6Ids(0, s.slice());
    const c = new Addr6Ids(expected);
    for (let p = 0; p < s.length; p += STRIDE) {
      if (s[p + S_ID] === 0) continue;
      c.set(s, p, s[p + S_ID] - 1);
      const q = c.find(s, p);
      c.slots[q + S_HINT_KEY] = s[p + S_HINT_KEY];
      c.slots[q + S_HINT_VALUE] = s[p + S_HINT_VALUE];
    }
    return c;
  }
}

/** words per endpoint in Tables6.endpoints6: the address's four, the port, three unused */
export const EP6_STRIDE = 8;
export const EP6_PORT = 4;

export interface Tables6 {
  /** the family-6 service ports compiled as Tables, every address an id of `ids` */
  readonly base: Tables;
  /** the node's, ClusterIP, external and LB addresses → id (endpoints are not keyed) */
  readonly ids: Addr6Ids;
  /** id → four words at id * 4 (every id, endpoints included) */
  readonly words: Uint32Array;
  /**
   * base.endpointFlat's positions with the endpoint's address inline: at
   * k * EP6_STRIDE its four words, then its port (32 bytes, one cache line
   * or half of one): a new flow reads its endpoint from one place, not the
   * flat pair then the words of the id.
   */
  readonly endpoints6: Uint32Array;
  /** the IPv6 cluster CIDR (null: none, then ClusterIP traffic is masqueraded only with masqueradeAll) */
  readonly cidr6: Cidr6 | null;
  /** the id of the IPv6 masquerade address, -1 when the node has none (masquerading flows are then dropped) */
  readonly masqId: number;
  /** per service index: its IPv6 loadBalancerSourceRanges when it has a firewall (KUBE-FW-), else null */
  readonly sourceRanges6: readonly (readonly Cidr6[] | null)[];
  /**
   * The control side's record of the ids, for the incremental patch
   * (control/compile.ts patchTables6): per address of the model's pool, its
   * id (-1: none) and whether it is keyed. Not sent to the packet thread.
   */
  readonly build?: { readonly idAt: Int32Array; readonly isKeyed: Uint8Array };
}

/** Is the address w[o..o+4) a ClusterIP, external IP or LB IP of some IPv6 service (any port)? */
export function isServiceAddress6(t: Tables6, w: ArrayLike<number>, o: number): boolean {
  const id = t.ids.get(w, o);
  return id >= 0 && t.base.vipAddrs.get(id, ANY_PORT) > 0;
}

function inCidr6(t: Tables6, w: Uint32Array, o: number): boolean {
  return t.cidr6 !== null && cidr6Contains(t.cidr6, w, o);
}

function inRanges6(ranges: readonly Cidr6[] | null, w: Uint32Array, o: number): boolean {
  if (ranges === null) return false;
  for (let i = 0; i < ranges.length; i++) if (cidr6Contains(ranges[i], w, o)) return true;
  return false;
}

function useSet(rows: Int32Array, o: number, local: boolean, out: LookupResult): void {
  out.setLocal = local;
  out.flatStart = rows[o + (local ? R_LOCAL_START : R_CLUSTER_START)];
  out.count = rows[o + (local ? R_LOCAL_COUNT : R_CLUSTER_COUNT)];
}

function external6(t6: Tables6, rows: Int32Array, o: number, flags: number, w: Uint32Array, so: number, out: LookupResult): boolean {
  if ((flags & F_EXTERNAL_LOCAL) === 0) {
    useSet(rows, o, false, out);
    out.masquerade = true;
    return true;
  }
  if (inCidr6(t6, w, so)) {
    useSet(rows, o, false, out);
    out.masquerade = false;
    return true;
  }
  if (isLocal(t6.base, t6.ids.get(w, so))) {
    useSet(rows, o, false, out);
    out.masquerade = true;
    return true;
  }
  if ((flags & F_HAS_EXTERNAL_ENDPOINTS) === 0) return false;
  useSet(rows, o, true, out);
  out.masquerade = false;
  return true;
}

/**
 * tables.ts's `lookup` for an IPv6 packet: the source at w[so..so+4), the
 * destination at w[dd..dd+4) (its id: one probe; not a service or node
 * address: no match; the source's id is looked up only where a decision
 * needs it: eTP Local, LB source admission). Same order of decisions (nat
 * table, then filter's REJECT and DROP), same results in `out`; endpoints in
 * base.endpointFlat are (id, port) pairs.
 */
export function lookup6(t6: Tables6, proto: number, w: Uint32Array, so: number, dd: number, dport: number, out: LookupResult): number {
  out.svcIndex = -1;
  out.masquerade = false;
  const ids = t6.ids;
  const p = ids.find(w, dd);
  if (p < 0) return LOOKUP_NOMATCH;
  const pi = protoIndex(proto);
  if (pi < 0) return LOOKUP_NOMATCH;
  const slots = ids.slots;
  const dstId = slots[p + S_ID] - 1;
  const t = t6.base;
  const protoPort = pi * 65536 + dport;
  const rows = t.serviceRows;
  // the VIP index's answer, from the address's slot when it holds this key (Addr6Ids: the hint)
  const v = slots[p + S_HINT_KEY] === protoPort ? slots[p + S_HINT_VALUE] : t.vipIndex.get(dstId, protoPort);
  let firewalled = false;
  let vo = 0;
  let vflags = 0;
  if (v >= 0) {
    const si = v >> 2;
    const kind = v & 3;
    vo = si * ROW;
    vflags = rows[vo + R_FLAGS];
    out.svcIndex = si;
    out.via = kind;
    if (kind === VIP_CLUSTER) {
      if ((vflags & F_HAS_INTERNAL) !== 0) {
        useSet(rows, vo, (vflags & F_INTERNAL_LOCAL) !== 0, out);
        out.masquerade = t.masqueradeAll || (t6.cidr6 !== null && !inCidr6(t6, w, so));
        return LOOKUP_DNAT;
      }
    } else if ((vflags & F_HAS_ENDPOINTS) !== 0) {
      if (kind === VIP_LOADBALANCER && (vflags & F_FIREWALL) !== 0) {
        const s = t.services[si];
        if (!inRanges6(t6.sourceRanges6[si], w, so)) {
          const srcId = s.lbSourceIPs.length === 0 ? -1 : t6.ids.get(w, so);
          if (srcId < 0 || s.lbSourceIPs.indexOf(srcId) < 0) firewalled = true;
        }
      }
      if (!firewalled && external6(t6, rows, vo, vflags, w, so, out)) return LOOKUP_DNAT;
    }
  }
  const dstLocal = isLocal(t, dstId);
  const npi = dstLocal ? t.nodePorts[protoPort] : -1;
  let nflags = 0;
  if (npi >= 0) {
    nflags = rows[npi * ROW + R_FLAGS];
    if ((nflags & F_HAS_ENDPOINTS) !== 0 && external6(t6, rows, npi * ROW, nflags, w, so, out)) {
      out.svcIndex = npi;
      out.via = VIA_NODEPORT;
      return LOOKUP_DNAT;
    }
  }
  out.masquerade = false;
  out.count = 0;
  if (v >= 0) {
    out.svcIndex = v >> 2;
    out.via = v & 3;
    if (firewalled || ((v & 3) === VIP_LOADBALANCER && (vflags & F_FIREWALL) !== 0)) return LOOKUP_DROP_SOURCE_RANGE;
    if ((vflags & F_HAS_ENDPOINTS) === 0) return LOOKUP_REJECT;
    if ((v & 3) === VIP_CLUSTER) {
      if (!dstLocal) return LOOKUP_DROP_NO_LOCAL;
    } else if ((vflags & F_HAS_EXTERNAL_ENDPOINTS) === 0) return LOOKUP_DROP_NO_LOCAL;
  }
  if (npi >= 0 && (nflags & (F_HAS_ENDPOINTS | F_HAS_EXTERNAL_ENDPOINTS)) !== (F_HAS_ENDPOINTS | F_HAS_EXTERNAL_ENDPOINTS)) {
    out.svcIndex = npi;
    out.via = VIA_NODEPORT;
    return (nflags & F_HAS_ENDPOINTS) !== 0 ? LOOKUP_DROP_NO_LOCAL : LOOKUP_REJECT;
  }
  out.svcIndex = -1;
  return LOOKUP_NOMATCH;
}

/**
 * The IPv6 lookup as a `Verdict`, every candidate with its probability
 * (tests, trace, the oracle comparison with the linear walk of kube-proxy's
 * ip6tables rules): tables.ts's compiledVerdict for a PacketTuple6.
 */
export function compiledVerdict6(t6: Tables6, p: PacketTuple6): Verdict {
  const w = new Uint32Array(8);
  w.set(p.src, 0);
  w.set(p.dst, 4);
  const out = new LookupResult();
  const r = lookup6(t6, p.proto, w, 0, 4, p.dport, out);
  // hairpin: the endpoint (an id) is the source itself
  return verdictOf(t6.base, r, out, (e) => equal6(t6.words, e.addr * 4, p.src, 0));
}
