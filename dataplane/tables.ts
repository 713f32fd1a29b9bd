/**
 * The compiled snapshot: hash maps keyed by numbers, built off the hot path by
 * control/compile.ts and swapped by one assignment, between two packet
 * batches. A batch never sees its tables change: a full compile makes new
 * arrays; a few services changed are written into the arrays in force only
 * where the apply runs on the packet thread itself, between batches (else
 * into copies: control/compile.ts patchTables). `lookup` answers, in O(1)
 * in the number of services, what kube-proxy's nat and filter chains decide
 * for the first packet of a flow (see control/iptables/linear.ts for the walk
 * it must agree with).
 */
import type { Cidr } from './addr.ts';
import { cidrContains, protoIndex, formatIPv4 } from './addr.ts';
import type { VipIndex } from './hashtable.ts';
import type { Candidate, Verdict, PacketTuple } from './verdict.ts';
import type { Tables6 } from './tables6.ts';

export interface EndpointEntry {
  readonly addr: number;
  readonly port: number;
  readonly nodeLocal: boolean;
  /** "10.64.1.7:53" */
  readonly text: string;
}

/** The endpoints one policy chain (KUBE-SVC- or KUBE-SVL-) chooses among. */
export interface EndpointSet {
  readonly endpoints: readonly EndpointEntry[];
  /** where these endpoints start in Tables.endpointFlat (pairs: addr | 0, port) */
  readonly flatStart: number;
  /** Maglev lookup table (endpoint index per slot) when the rule set asks for maglev, else null */
  readonly maglev: Uint16Array | null;
  /** (addr * 65536 + port) → index, for session-affinity hits */
  readonly index: ReadonlyMap<number, number>;
  /**
   * The wire encoder's mark (dataplane/tables-wire.ts TablesEncoder): the
   * token of the encoding that gave this set an id (a new token at each full
   * encoding), and that id. compile makes its sets with null and -1; the
   * packet thread's sets (materialized, never encoded) have neither. Written
   * only by the encoder. Fields, not a Map keyed by the set: a Map gives
   * every new object an identity hash, ~200 ns each on the AMD machine; a
   * full encoding of 10 000 services took ~21 ms with the Map and ~17 ms
   * with the fields, of 100 000 ~200 and ~165 ms.
   */
  wireMarks?: object | null;
  wireId?: number;
}

export interface ServicePortEntry {
  /** position in Tables.services */
  readonly index: number;
  /** false for a tombstone left by an incremental update (unreachable: no keys point at it) */
  readonly live: boolean;
  /** kube-proxy's service-port name "ns/name:port" */
  readonly name: string;
  /** stable across compiles (hash of the name): keys the session-affinity table */
  readonly uid: number;
  readonly protocol: number;
  /** -1 when headless */
  readonly clusterIP: number;
  readonly externalIPs: readonly number[];
  readonly loadBalancerIPs: readonly number[];
  readonly port: number;
  /** 0 when none */
  readonly nodePort: number;
  readonly hasEndpoints: boolean;
  /** endpoints for ClusterIP traffic; null → REJECT (no endpoints) or DROP (no local endpoints) */
  readonly internal: EndpointSet | null;
  /** KUBE-SVC-: cluster-wide endpoints */
  readonly cluster: EndpointSet | null;
  /** KUBE-SVL-: node-local endpoints */
  readonly local: EndpointSet | null;
  readonly externalPolicyLocal: boolean;
  /** eTP Local without local endpoints (external traffic dropped unless short-circuited) */
  readonly hasExternalEndpoints: boolean;
  /** ClientIP affinity in ms, 0 = none */
  readonly affinityMs: number;
  /** loadBalancerSourceRanges (KUBE-FW-), null when the LB IPs admit everyone */
  readonly sourceRanges: readonly Cidr[] | null;
  /** LB IPs admitted as sources too (a source range contains a node address) */
  readonly lbSourceIPs: readonly number[];
  /**
   * Serving endpoints that neither set holds (terminating ones while ready
   * ones exist), as (addr, port) pairs: no new flow goes to them, but their
   * UDP/SCTP flows are kept, as kube-proxy clears the conntrack entries only
   * of endpoints that stopped serving. Usually empty.
   */
  readonly servingKept: readonly number[];
  /**
   * The wire encoder's stamp (dataplane/tables-wire.ts TablesEncoder): the
   * encoder that stamped this entry object, and the stamp, which names the
   * object in the wire form (the packet thread keeps the view of an entry
   * whose stamp it had). compile makes its entries with null and 0, and an
   * entry made from another by a spread must set them again (else the copy
   * would pass for the entry it was made from); the packet thread's views
   * have neither. Fields, not a WeakMap keyed by the entry (an identity hash
   * for every new object): a full encoding of 10 000 services ~17 → ~13 ms,
   * of 100 000 ~165 → ~120 ms (AMD machine).
   */
  wireEncoder?: object | null;
  wireStamp?: number;
}

export const VIP_CLUSTER = 0;
export const VIP_EXTERNAL = 1;
export const VIP_LOADBALANCER = 2;
export const VIA_NODEPORT = 3;

/** the protoPort of VipIndex keys that stand for a whole address (above any protoIndex*65536+port) */
export const ANY_PORT = 0x3ffff;

/** Is `addr` a ClusterIP, external IP or LB IP of some service (any port)? */
export function isServiceAddress(t: Tables, addr: number): boolean {
  return t.vipAddrs.get(addr, ANY_PORT) > 0;
}

export const LB_RANDOM = 0;
export const LB_MAGLEV = 1;

/*
 * The hot path reads typed arrays only: the VIP index gives
 * (service index << 2 | VIP kind); `serviceRows` holds per service port
 * ROW ints: flags, the cluster set's start and count, the local set's start
 * and count in `endpointFlat`. Objects (ServicePortEntry, EndpointSet) are for
 * the slow paths (affinity, Maglev, source ranges) and for reading.
 */
export const ROW = 8;
export const R_FLAGS = 0;
export const R_CLUSTER_START = 1;
export const R_CLUSTER_COUNT = 2;
export const R_LOCAL_START = 3;
export const R_LOCAL_COUNT = 4;

export const F_HAS_ENDPOINTS = 1;
export const F_EXTERNAL_LOCAL = 2;
export const F_HAS_EXTERNAL_ENDPOINTS = 4;
export const F_HAS_INTERNAL = 8;
export const F_INTERNAL_LOCAL = 16;
export const F_FIREWALL = 32;
/** affinity or Maglev: the choice needs the objects */
export const F_SLOW_SELECT = 64;

export interface Tables {
  readonly generation: number;
  /** ClusterIP, external IPs and load-balancer IPs: (addr, protoIndex*65536+port) → serviceIndex << 2 | VIP kind */
  readonly vipIndex: VipIndex;
  /** (addr, ANY_PORT) → how many VIP keys use that address: every ClusterIP, external IP and LB IP */
  readonly vipAddrs: VipIndex;
  /** protoIndex*65536+port → index in `services`, -1 when none; answered only for local destinations */
  readonly nodePorts: Int32Array;
  /** what `-m addrtype --dst-type LOCAL` matches, as signed 32-bit numbers */
  readonly localAddrs: Int32Array;
  readonly clusterCIDR: Cidr | null;
  /** clusterCIDR as signed net and mask; mask 0 and net 1 when none (matches nothing) */
  readonly cidrNet: number;
  readonly cidrMask: number;
  readonly masqueradeAll: boolean;
  /** SNAT source for masqueraded flows */
  readonly masqueradeAddr: number;
  readonly loadBalancing: number;
  readonly services: readonly ServicePortEntry[];
  /** entries of `services` that are live (not tombstones) */
  readonly liveServicePorts: number;
  /** ROW ints per service port (see R_*); may be longer than services.length * ROW (room to append) */
  readonly serviceRows: Int32Array;
  /** endpoint pairs: addr | 0, port (the array may be longer than the pairs in use: room the incremental path appends into) */
  readonly endpointFlat: Int32Array;
  /** endpoint pairs in use at the start of endpointFlat */
  readonly endpointPairs: number;
  /** the IPv6 tables (tables6.ts), absent when the rule set has no IPv6 service port and the node no IPv6 address */
  readonly v6?: Tables6 | null;
  /**
   * Set by an incremental patch (control/compile.ts patchTables): the
   * generation it was made from and the positions of `services` whose entry
   * changed (replaced, removed or appended). The patch writes the entries
   * into the `services` array of that generation, which both snapshots then
   * share: the control worker's wire encoder encodes these positions instead
   * of comparing two arrays of every entry (copying the array was 0.8 MB of
   * fresh memory per change at 100 000 services).
   */
  readonly changed?: TablesChange;
}

export interface TablesChange {
  readonly from: number;
  readonly positions: readonly number[];
}

export const LOOKUP_NOMATCH = 0;
export const LOOKUP_DNAT = 1;
export const LOOKUP_REJECT = 2;
export const LOOKUP_DROP_NO_LOCAL = 3;
export const LOOKUP_DROP_SOURCE_RANGE = 4;

/** Filled by `lookup`; one per caller, reused for every packet (no allocation). */
export class LookupResult {
  /** the service port decided on, -1 for no match */
  svcIndex = -1;
  /** the endpoint set chosen among: false = cluster (KUBE-SVC-), true = local (KUBE-SVL-) */
  setLocal = false;
  /** its endpoints in Tables.endpointFlat: pairs from flatStart */
  flatStart = 0;
  count = 0;
  /** masquerade before the endpoint is known (hairpin adds src === endpoint) */
  masquerade = false;
  /** VIP_CLUSTER / VIP_EXTERNAL / VIP_LOADBALANCER / VIA_NODEPORT */
  via = 0;
}

export function resultService(t: Tables, out: LookupResult): ServicePortEntry {
  return t.services[out.svcIndex];
}

export function resultSet(t: Tables, out: LookupResult): EndpointSet {
  const s = t.services[out.svcIndex];
  return (out.setLocal ? s.local : s.cluster)!;
}

/** Is `addr` one of the node's own addresses? (a handful: a scan beats a hash) */
export function isLocal(t: Tables, addr: number): boolean {
  const a = addr | 0;
  const l = t.localAddrs;
  for (let i = 0; i < l.length; i++) if (l[i] === a) return true;
  return false;
}

function inCidr(t: Tables, addr: number): boolean {
  return (addr & t.cidrMask) === t.cidrNet;
}

function inRanges(ranges: readonly Cidr[], src: number): boolean {
  for (let i = 0; i < ranges.length; i++) if (cidrContains(ranges[i], src)) return true;
  return false;
}

function useSet(rows: Int32Array, o: number, local: boolean, out: LookupResult): void {
  out.setLocal = local;
  out.flatStart = rows[o + (local ? R_LOCAL_START : R_CLUSTER_START)];
  out.count = rows[o + (local ? R_LOCAL_COUNT : R_CLUSTER_COUNT)];
}

/**
 * External traffic (NodePort, external IP, LB IP) through KUBE-EXT-: with
 * externalTrafficPolicy Cluster always masqueraded to cluster-wide endpoints;
 * with Local, pod and node sources short-circuit to the cluster endpoints,
 * others keep their source and go to node-local endpoints only.
 * Returns false when the EXT chain falls through (no local endpoints).
 */
function external(t: Tables, rows: Int32Array, o: number, flags: number, src: number, out: LookupResult): boolean {
  if ((flags & F_EXTERNAL_LOCAL) === 0) {
    useSet(rows, o, false, out);
    out.masquerade = true;
    return true;
  }
  if (inCidr(t, src)) {
    useSet(rows, o, false, out);
    out.masquerade = false;
    return true;
  }
  if (isLocal(t, src)) {
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
 * The decision for the first packet of a flow, in the order netfilter makes it:
 * the nat table first (only services with endpoints have rules there), then,
 * when nothing DNATed the packet, the filter table's REJECT and DROP rules.
 */
export function lookup(t: Tables, proto: number, src: number, dst: number, dport: number, out: LookupResult): number {
  out.svcIndex = -1;
  out.masquerade = false;
  const pi = protoIndex(proto);
  if (pi < 0) return LOOKUP_NOMATCH;
  const protoPort = pi * 65536 + dport;
  const rows = t.serviceRows;
  const v = t.vipIndex.get(dst, protoPort);
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
        out.masquerade = t.masqueradeAll || (t.clusterCIDR !== null && !inCidr(t, src));
        return LOOKUP_DNAT;
      }
    } else if ((vflags & F_HAS_ENDPOINTS) !== 0) {
      if (kind === VIP_LOADBALANCER && (vflags & F_FIREWALL) !== 0) {
        const s = t.services[si];
        if (!inRanges(s.sourceRanges!, src) && s.lbSourceIPs.indexOf(src) < 0) firewalled = true;
      }
      if (!firewalled && external(t, rows, vo, vflags, src, out)) return LOOKUP_DNAT;
    }
  }
  const dstLocal = isLocal(t, dst);
  const npi = dstLocal ? t.nodePorts[protoPort] : -1;
  let nflags = 0;
  if (npi >= 0) {
    nflags = rows[npi * ROW + R_FLAGS];
    if ((nflags & F_HAS_ENDPOINTS) !== 0 && external(t, rows, npi * ROW, nflags, src, out)) {
      out.svcIndex = npi;
      out.via = VIA_NODEPORT;
      return LOOKUP_DNAT;
    }
  }
  // filter table: KUBE-PROXY-FIREWALL, then KUBE-SERVICES (FORWARD only) / KUBE-EXTERNAL-SERVICES
  out.masquerade = false;
  out.count = 0;
  if (v >= 0) {
    out.svcIndex = v >> 2;
    out.via = v & 3;
    // KUBE-PROXY-FIREWALL comes first in INPUT and FORWARD and drops whatever reached an LB IP
    // with source ranges without being DNATed: refused sources, and admitted ones that fell through
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

/** The lookup as a `Verdict` with every candidate's probability (for tests, trace and the oracle comparison). */
export function compiledVerdict(t: Tables, p: PacketTuple): Verdict {
  const out = new LookupResult();
  const r = lookup(t, p.proto, p.src, p.dst, p.dport, out);
  return verdictOf(t, r, out, (e) => e.addr === p.src);
}

/**
 * A lookup's answer `r` (LOOKUP_*) and `out` as a `Verdict`: the candidates with
 * their probabilities, each masqueraded when the lookup says so or when it is
 * the packet's own source (`isSource`: hairpin). Shared by both families.
 */
export function verdictOf(t: Tables, r: number, out: LookupResult, isSource: (e: EndpointEntry) => boolean): Verdict {
  const s = out.svcIndex < 0 ? null : t.services[out.svcIndex];
  switch (r) {
    case LOOKUP_DNAT: {
      const set = resultSet(t, out);
      const n = set.endpoints.length;
      const counts = new Array<number>(n).fill(0);
      if (set.maglev !== null) for (let i = 0; i < set.maglev.length; i++) counts[set.maglev[i]]++;
      const candidates: Candidate[] = set.endpoints.map((e, i) => ({
        endpoint: e.text,
        probability: set.maglev !== null ? counts[i] / set.maglev.length : 1 / n,
        masquerade: out.masquerade || isSource(e),
      }));
      return { kind: 'dnat', service: s!.name, affinitySeconds: s!.affinityMs / 1000, candidates };
    }
    case LOOKUP_REJECT:
      return { kind: 'reject', service: s!.name };
    case LOOKUP_DROP_NO_LOCAL:
      return { kind: 'drop', service: s!.name, reason: 'no_local_endpoints' };
    case LOOKUP_DROP_SOURCE_RANGE:
      return { kind: 'drop', service: s!.name, reason: 'source_range' };
    default:
      return { kind: 'nomatch' };
  }
}

export function describeEndpoint(addr: number, port: number): string {
  return `${formatIPv4(addr)}:${port}`;
}
