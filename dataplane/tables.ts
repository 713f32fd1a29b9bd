/**
 * The compiled snapshot: hash maps keyed by numbers, built off the hot path by
 * control/compile.ts and swapped by one assignment. `lookup` answers, in O(1)
 * in the number of services, what kube-proxy's nat and filter chains decide
 * for the first packet of a flow (see control/iptables/linear.ts for the walk
 * it must agree with).
 */
import type { Cidr } from './addr.ts';
import { cidrContains, protoIndex, formatIPv4 } from './addr.ts';
import type { VipIndex } from './hashtable.ts';
import type { Candidate, Verdict, PacketTuple } from './verdict.ts';

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
  /** Maglev lookup table (endpoint index per slot) when the rule set asks for maglev, else null */
  readonly maglev: Uint16Array | null;
  /** (addr * 65536 + port) → index, for session-affinity hits */
  readonly index: ReadonlyMap<number, number>;
}

export interface ServicePortEntry {
  /** position in Tables.services */
  readonly index: number;
  /** kube-proxy's service-port name "ns/name:port" */
  readonly name: string;
  /** stable across compiles (hash of the name): keys the session-affinity table */
  readonly uid: number;
  readonly protocol: number;
  /** -1 when headless */
  readonly clusterIP: number;
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
}

export const VIP_CLUSTER = 0;
export const VIP_EXTERNAL = 1;
export const VIP_LOADBALANCER = 2;

export interface VipEntry {
  readonly svc: ServicePortEntry;
  readonly kind: number;
}

export const LB_RANDOM = 0;
export const LB_MAGLEV = 1;

export interface Tables {
  readonly generation: number;
  /** ClusterIP, external IPs and load-balancer IPs: (addr, protoIndex*65536+port) → index in `vipEntries` */
  readonly vipIndex: VipIndex;
  readonly vipEntries: readonly VipEntry[];
  /** every ClusterIP, external IP and LB IP (any port), as signed 32-bit numbers (addr | 0) */
  readonly vipAddrs: ReadonlySet<number>;
  /** protoIndex*65536+port → index in `services`, -1 when none; answered only for local destinations */
  readonly nodePorts: Int32Array;
  /** what `-m addrtype --dst-type LOCAL` matches, as signed 32-bit numbers */
  readonly localAddrs: Int32Array;
  readonly clusterCIDR: Cidr | null;
  readonly masqueradeAll: boolean;
  /** SNAT source for masqueraded flows */
  readonly masqueradeAddr: number;
  readonly loadBalancing: number;
  readonly services: readonly ServicePortEntry[];
}

export const LOOKUP_NOMATCH = 0;
export const LOOKUP_DNAT = 1;
export const LOOKUP_REJECT = 2;
export const LOOKUP_DROP_NO_LOCAL = 3;
export const LOOKUP_DROP_SOURCE_RANGE = 4;

/** Filled by `lookup`; one per caller, reused for every packet (no allocation). */
export class LookupResult {
  svc: ServicePortEntry | null = null;
  set: EndpointSet | null = null;
  /** masquerade before the endpoint is known (hairpin adds src === endpoint) */
  masquerade = false;
  /** VIP_CLUSTER / VIP_EXTERNAL / VIP_LOADBALANCER, or 3 for a NodePort */
  via = 0;
}

export const VIA_NODEPORT = 3;

/** Is `addr` one of the node's own addresses? (a handful: a scan beats a hash) */
export function isLocal(t: Tables, addr: number): boolean {
  const a = addr | 0;
  const l = t.localAddrs;
  for (let i = 0; i < l.length; i++) if (l[i] === a) return true;
  return false;
}

function inRanges(ranges: readonly Cidr[], src: number): boolean {
  for (let i = 0; i < ranges.length; i++) if (cidrContains(ranges[i], src)) return true;
  return false;
}

/**
 * External traffic (NodePort, external IP, LB IP) through KUBE-EXT-: with
 * externalTrafficPolicy Cluster always masqueraded to cluster-wide endpoints;
 * with Local, pod and node sources short-circuit to the cluster endpoints,
 * others keep their source and go to node-local endpoints only.
 * Returns false when the EXT chain falls through (no local endpoints).
 */
function external(t: Tables, s: ServicePortEntry, src: number, out: LookupResult): boolean {
  if (!s.externalPolicyLocal) {
    out.set = s.cluster;
    out.masquerade = true;
    return true;
  }
  if (t.clusterCIDR !== null && cidrContains(t.clusterCIDR, src)) {
    out.set = s.cluster;
    out.masquerade = false;
    return true;
  }
  if (isLocal(t, src)) {
    out.set = s.cluster;
    out.masquerade = true;
    return true;
  }
  if (s.local === null || !s.hasExternalEndpoints) return false;
  out.set = s.local;
  out.masquerade = false;
  return true;
}

/**
 * The decision for the first packet of a flow, in the order netfilter makes it:
 * the nat table first (only services with endpoints have rules there), then,
 * when nothing DNATed the packet, the filter table's REJECT and DROP rules.
 */
export function lookup(t: Tables, proto: number, src: number, dst: number, dport: number, out: LookupResult): number {
  out.svc = null;
  out.set = null;
  out.masquerade = false;
  const pi = protoIndex(proto);
  if (pi < 0) return LOOKUP_NOMATCH;
  const protoPort = pi * 65536 + dport;
  const vi = t.vipIndex.get(dst, protoPort);
  const v = vi < 0 ? undefined : t.vipEntries[vi];
  let firewalled = false;
  if (v !== undefined) {
    const s = v.svc;
    out.svc = s;
    out.via = v.kind;
    if (v.kind === VIP_CLUSTER) {
      if (s.internal !== null) {
        out.set = s.internal;
        out.masquerade = t.masqueradeAll || (t.clusterCIDR !== null && !cidrContains(t.clusterCIDR, src));
        return LOOKUP_DNAT;
      }
    } else if (s.hasEndpoints) {
      if (v.kind === VIP_LOADBALANCER && s.sourceRanges !== null && !inRanges(s.sourceRanges, src) && s.lbSourceIPs.indexOf(src) < 0) {
        firewalled = true;
      } else if (external(t, s, src, out)) {
        return LOOKUP_DNAT;
      }
    }
  }
  const dstLocal = isLocal(t, dst);
  const npi = dstLocal ? t.nodePorts[protoPort] : -1;
  const np = npi < 0 ? undefined : t.services[npi];
  if (np !== undefined && np.hasEndpoints) {
    if (external(t, np, src, out)) {
      out.svc = np;
      out.via = VIA_NODEPORT;
      return LOOKUP_DNAT;
    }
  }
  // filter table: KUBE-PROXY-FIREWALL, then KUBE-SERVICES (FORWARD only) / KUBE-EXTERNAL-SERVICES
  out.set = null;
  out.masquerade = false;
  if (v !== undefined) {
    const s = v.svc;
    out.svc = s;
    out.via = v.kind;
    if (firewalled) return LOOKUP_DROP_SOURCE_RANGE;
    if (!s.hasEndpoints) return LOOKUP_REJECT;
    if (v.kind === VIP_CLUSTER) {
      if (!dstLocal) return LOOKUP_DROP_NO_LOCAL;
    } else if (!s.hasExternalEndpoints) return LOOKUP_DROP_NO_LOCAL;
  }
  if (np !== undefined && !(np.hasEndpoints && np.hasExternalEndpoints)) {
    out.svc = np;
    out.via = VIA_NODEPORT;
    return np.hasEndpoints ? LOOKUP_DROP_NO_LOCAL : LOOKUP_REJECT;
  }
  out.svc = null;
  return LOOKUP_NOMATCH;
}

/** The lookup as a `Verdict` with every candidate's probability (for tests, trace and the oracle comparison). */
export function compiledVerdict(t: Tables, p: PacketTuple): Verdict {
  const out = new LookupResult();
  const r = lookup(t, p.proto, p.src, p.dst, p.dport, out);
  const s = out.svc;
  switch (r) {
    case LOOKUP_DNAT: {
      const set = out.set!;
      const n = set.endpoints.length;
      const counts = new Array<number>(n).fill(0);
      if (set.maglev !== null) for (let i = 0; i < set.maglev.length; i++) counts[set.maglev[i]]++;
      const candidates: Candidate[] = set.endpoints.map((e, i) => ({
        endpoint: e.text,
        probability: set.maglev !== null ? counts[i] / set.maglev.length : 1 / n,
        masquerade: out.masquerade || e.addr === p.src,
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
