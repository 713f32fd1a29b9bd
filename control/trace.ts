/**
 * What tunproxy would do with the first packet of a flow, and why, beside what
 * kube-proxy's iptables rules would do with it: the one answer behind both
 * `POST /v1/trace` (control/api/trace.ts, on the running dataplane, with its
 * connection table and affinity state) and the offline `tunproxy trace
 * --rules FILE` / `--iptables FILE` (control/commands/trace.ts, no root, no
 * device, no process).
 *
 * tunproxy's side: the compiled tables' lookup — a tracked flow the packet
 * belongs to (live only), the table that matched (ClusterIP, external IP,
 * load-balancer IP, NodePort), the service port, the policy chain's endpoint
 * candidates with their chances, a session-affinity hit (live only),
 * masquerade. kube-proxy's side: iptables rules walked linearly
 * (control/iptables/linear.ts) — those written by control/iptables/writer.ts
 * for the rule set, or, offline with `--iptables`, the node's own dump — the
 * verdict with its candidates and the rules visited on the way.
 *
 * IPv6: a packet of IPv6 addresses (`[fd00:30::41]:80`) is looked up in the
 * IPv6 tables (tables.v6: lookup6, compiledVerdict6) and walked through
 * kube-proxy's ip6tables rules (the IPv6 proxier's, written with `family: 6`,
 * or the node's `ip6tables-save` dump) by an evaluator of that family
 * (evaluate6); the source and destination are of one family.
 */
import { performance } from 'node:perf_hooks';
import type { EndpointSet, Tables } from '../dataplane/tables.ts';
import { compiledVerdict, lookup, LookupResult, resultSet, LOOKUP_DNAT, LOOKUP_DROP_NO_LOCAL, LOOKUP_DROP_SOURCE_RANGE, LOOKUP_REJECT, VIA_NODEPORT, VIP_CLUSTER, isLocal } from '../dataplane/tables.ts';
import type { PacketTuple, Verdict } from '../dataplane/verdict.ts';
import type { PacketTuple6 } from '../dataplane/decider6.ts';
import { compiledVerdict6, lookup6 } from '../dataplane/tables6.ts';
import { cidrContains, formatCidr, formatIPv4, parseIPv4, protocolNumber } from '../dataplane/addr.ts';
import { cidr6Contains, formatCidr6, formatIPv6, parseIPv6 } from '../dataplane/addr6.ts';
import type { ProtocolName } from '../dataplane/addr.ts';
import { writeIptables } from './iptables/writer.ts';
import { linearFromText } from './iptables/linear.ts';
import type { LinearEvaluator } from './iptables/linear.ts';
import type { RuleSet } from './types.ts';
import { LOCALHOST_NODEPORTS_LIMIT } from './limits.ts';

export interface TraceRequest {
  protocol: string;
  source: string;
  destination: string;
  /** the packet's input interface, for rules with -i (default: none) */
  inInterface?: string;
  /** the packet comes from a process on the node (its source must be a node address) */
  local?: boolean;
  /** also walk kube-proxy's rules (default true) */
  kubeProxy?: boolean;
}

const endpointText = { type: 'string', pattern: '^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]{2,45}\\]):[0-9]{1,5}$', description: 'address:port (IPv4) or [address]:port (IPv6)' } as const;
export const traceSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['protocol', 'source', 'destination'],
  properties: {
    protocol: { enum: ['TCP', 'UDP', 'SCTP', 'tcp', 'udp', 'sctp'] },
    source: endpointText,
    destination: endpointText,
    inInterface: { type: 'string', pattern: '^[A-Za-z0-9_.:@-]{1,15}$' },
    local: { type: 'boolean' },
    kubeProxy: { type: 'boolean' },
  },
} as const;

/** A trace request that cannot be answered: the field and why (the API answers 400 with it). */
export class TraceRequestError extends Error {
  constructor(readonly path: string, readonly reason: string, message: string) {
    super(message);
    this.name = 'TraceRequestError';
  }
}

/** ADDRESS:PORT (IPv4) or [ADDRESS]:PORT (IPv6, as Go's net.JoinHostPort and ip6tables-save write it) */
function hostPort(text: string, field: string): { v4: number; v6: Uint32Array | null; port: number } {
  const i = text.lastIndexOf(':');
  const host = text.slice(0, i);
  const p = Number(text.slice(i + 1));
  let v4 = -1;
  let v6: Uint32Array | null = null;
  if (host.startsWith('[') && host.endsWith(']')) {
    v6 = parseIPv6(host.slice(1, -1));
    if (v6 === null) throw new TraceRequestError(field, 'not an IPv6 address', `${field}: ${JSON.stringify(host.slice(1, -1))} is not an IPv6 address`);
  } else {
    v4 = parseIPv4(host);
    if (v4 < 0) {
      const why = host.includes(':') ? ' (an IPv6 address with a port is written [address]:port)' : '';
      throw new TraceRequestError(field, 'not an IPv4 address or [IPv6 address]', `${field}: ${JSON.stringify(host)} is not an IPv4 address or a bracketed IPv6 address${why}`);
    }
  }
  if (!(i > 0 && p >= 1 && p <= 65535)) throw new TraceRequestError(field, `port ${text.slice(i + 1)} is outside 1-65535`, `${field}: port ${text.slice(i + 1)} is outside 1-65535`);
  return { v4, v6, port: p };
}

export interface CachedLinear {
  ev: LinearEvaluator;
  /** the iptables text's lines (for the rule-by-rule walk) */
  lines: string[];
  buildMs: number;
  iptablesLines: number;
}

/** An evaluator over iptables text (`family`: 6 for ip6tables text; default: told from the text): its lines kept for the rule-by-rule walk. */
export function cachedLinear(text: string, localAddresses: string[], inInterface: string, family?: 4 | 6): CachedLinear {
  const t0 = performance.now();
  const ev = linearFromText(text, { localAddresses, inInterface, ...(family !== undefined ? { family } : {}) });
  const lines = text.split('\n');
  return { ev, lines, buildMs: performance.now() - t0, iptablesLines: lines.length - (text.endsWith('\n') ? 1 : 0) };
}

/** kube-proxy's rules for the rule set in force, walked linearly: built once per generation (and input interface and family). */
export class LinearCache {
  private generation = -1;
  private readonly byInterface = new Map<string, CachedLinear>();
  builds = 0;

  get(ctx: { readonly generation: number }, rs: RuleSet, inInterface: string, family: 4 | 6 = 4): { cached: CachedLinear; built: boolean } {
    if (this.generation !== ctx.generation) {
      this.byInterface.clear();
      this.generation = ctx.generation;
    }
    const key = `${family}/${inInterface}`;
    let c = this.byInterface.get(key);
    if (c !== undefined) return { cached: c, built: false };
    const t0 = performance.now();
    // IPv6: the IPv6 proxier's ip6tables rules
    c = cachedLinear(writeIptables(rs, { family }), rs.node.addresses, inInterface, family);
    c.buildMs = performance.now() - t0;
    if (this.byInterface.size >= 4) this.byInterface.clear();
    this.byInterface.set(key, c);
    this.builds++;
    return { cached: c, built: true };
  }
}

const VIA_NAMES = ['ClusterIP', 'external IP', 'load-balancer IP', 'NodePort'];

/** What differs between two verdicts (kind, service, endpoints, chances, masquerade); empty when they agree. */
export function verdictDifferences(a: Verdict, b: Verdict): string[] {
  const d: string[] = [];
  if (a.kind !== b.kind) return [`tunproxy: ${a.kind}, kube-proxy: ${b.kind}`];
  if (a.kind === 'nomatch' || b.kind === 'nomatch') return d;
  if (a.service !== b.service) d.push(`service: tunproxy ${a.service}, kube-proxy ${b.service}`);
  if (a.kind === 'drop' && b.kind === 'drop' && a.reason !== b.reason) d.push(`drop reason: tunproxy ${a.reason}, kube-proxy ${b.reason}`);
  if (a.kind === 'dnat' && b.kind === 'dnat') {
    const bm = new Map(b.candidates.map((c) => [c.endpoint, c]));
    for (const c of a.candidates) {
      const o = bm.get(c.endpoint);
      if (!o) d.push(`endpoint ${c.endpoint}: only tunproxy picks it`);
      else {
        if (Math.abs(o.probability - c.probability) > 1e-6) d.push(`endpoint ${c.endpoint}: chance ${c.probability.toFixed(6)} in tunproxy, ${o.probability.toFixed(6)} in kube-proxy`);
        if (o.masquerade !== c.masquerade) d.push(`endpoint ${c.endpoint}: masquerade ${c.masquerade} in tunproxy, ${o.masquerade} in kube-proxy`);
        bm.delete(c.endpoint);
      }
    }
    for (const e of bm.keys()) d.push(`endpoint ${e}: only kube-proxy picks it`);
    if (a.affinitySeconds !== b.affinitySeconds) d.push(`session affinity: ${a.affinitySeconds} s in tunproxy, ${b.affinitySeconds} s in kube-proxy`);
  }
  return d;
}

/** The running dataplane's state a live trace reads (the offline trace has none). */
export interface LiveState {
  now: number;
  /** the tracked flow the packet belongs to, or null */
  conntrack: { direction: string; flow: unknown } | null;
  /** the endpoint (index in the chosen set) ClientIP affinity remembers for the source, -1 when none or not asked */
  affinityIndex: number;
}

/** A packet of a tracked flow: said first, then what a new flow would get. */
function trackedWhy(conntrack: { direction: string } | null, why: string[]): void {
  if (conntrack !== null) why.push(`the packet belongs to a tracked flow (${conntrack.direction} direction): it is translated with the flow's stored tuples, not looked up again; below is what a new flow would get`);
}

/** The endpoint set a DNAT chooses from (both families): its chain's name, and the line saying so. */
function candidatesWhy(t: Tables, out: LookupResult, why: string[]): { set: ReturnType<typeof resultSet>; chain: string } {
  const set = resultSet(t, out);
  const chain = out.setLocal ? 'node-local endpoints (KUBE-SVL-)' : 'cluster endpoints (KUBE-SVC-)';
  why.push(`${set.endpoints.length} candidate endpoint${set.endpoints.length === 1 ? '' : 's'} from the ${chain}, chosen ${set.maglev ? 'by Maglev hashing' : 'at random'}`);
  return { set, chain };
}

/** No masquerade before the endpoint is chosen: hairpin only, or none (`podSource`: the source is in the cluster CIDR of its family). */
function noMasqueradeWhy(verdict: Verdict, out: LookupResult, podSource: boolean, cidrName: string, why: string[]): void {
  if (verdict.kind === 'dnat' && verdict.candidates.some((c) => c.masquerade)) why.push('masquerade only for the endpoint that is the source itself (hairpin)');
  else why.push(out.via === VIP_CLUSTER && podSource ? `no masquerade: the source is a pod in the ${cidrName}` : 'no masquerade: the source address is kept');
}

/** The answers that are not a DNAT (both families; `icmp`: ICMP or ICMPv6). */
function refusalWhy(r: number, svcName: string, srcText: string, icmp: string, why: string[]): void {
  if (r === LOOKUP_REJECT) why.push(`${svcName} has no endpoints: answered with ${icmp} port unreachable (kube-proxy's REJECT)`);
  else if (r === LOOKUP_DROP_NO_LOCAL) why.push(`${svcName} has no endpoint on this node and its traffic policy is Local: dropped (no_local_endpoints)`);
  else if (r === LOOKUP_DROP_SOURCE_RANGE) why.push(`${srcText} is outside the loadBalancerSourceRanges of ${svcName}: dropped (source_range)`);
}

/** Is dst:dport/proto a NodePort of the rule set on a loopback address (kube-proxy's localhost NodePorts)? */
function localhostNodePort(rs: RuleSet, pkt: PacketTuple): boolean {
  if (pkt.dst >>> 24 !== 127) return false;
  for (const s of rs.services) for (const p of s.ports) if (p.nodePort === pkt.dport && protocolNumber(p.protocol) === pkt.proto) return true;
  return false;
}

/** ClientIP affinity of a DNAT: what the affinity table remembers for the client (live), or that nothing is offline. */
function affinityWhy(ms: number, set: EndpointSet, client: string, live: LiveState | null, why: string[]): { seconds: number; hit: string | null } {
  if (live === null) {
    why.push(`ClientIP affinity (${ms / 1000} s): offline, nothing is remembered; a client keeps the endpoint it first got`);
    return { seconds: ms / 1000, hit: null };
  }
  const i = live.affinityIndex;
  why.push(i >= 0 ? `ClientIP affinity: ${client} is remembered with ${set.endpoints[i].text}, which a new flow gets` : `ClientIP affinity (${ms / 1000} s): nothing remembered for ${client} yet`);
  return { seconds: ms / 1000, hit: i >= 0 ? set.endpoints[i].text : null };
}

export function tunproxyDecision(t: Tables, rs: RuleSet, pkt: PacketTuple, live: LiveState | null) {
  const why: string[] = [];
  const t0 = performance.now();
  const out = new LookupResult();
  const r = lookup(t, pkt.proto, pkt.src, pkt.dst, pkt.dport, out);
  const lookupUs = (performance.now() - t0) * 1000;
  const verdict = compiledVerdict(t, pkt);
  const svc = out.svcIndex < 0 ? null : t.services[out.svcIndex];
  const dstText = `${formatIPv4(pkt.dst)}:${pkt.dport}`;

  // a flow the packet already belongs to
  const conntrack = live === null ? null : live.conntrack;
  trackedWhy(conntrack, why);

  const table = svc === null ? null : VIA_NAMES[out.via] ?? null;
  if (svc !== null) {
    const kind = out.via === VIA_NODEPORT ? `NodePort ${pkt.dport} of a node address` : `${VIA_NAMES[out.via]} ${dstText}`;
    why.push(`${kind} belongs to ${svc.name} (${table} table)`);
  } else if (localhostNodePort(rs, pkt)) {
    why.push(`${dstText}: ${LOCALHOST_NODEPORTS_LIMIT}`);
  } else {
    why.push(isLocal(t, pkt.dst) ? `${dstText} is a node address and no NodePort ${pkt.dport}/${pkt.proto}: not a service` : `${dstText} is no ClusterIP, external IP or load-balancer IP: not a service; the packet passes unchanged`);
  }
  let chain: string | null = null;
  let affinity: { seconds: number; hit: string | null } | null = null;
  if (r === LOOKUP_DNAT && svc !== null) {
    const c = candidatesWhy(t, out, why);
    const set = c.set;
    chain = c.chain;
    if (svc.affinityMs > 0) affinity = affinityWhy(svc.affinityMs, set, formatIPv4(pkt.src), live, why);
    if (out.masquerade) {
      const reason = out.via === VIP_CLUSTER ? (t.masqueradeAll ? 'masqueradeAll is set' : `the source is outside the cluster CIDR ${t.clusterCIDR ? formatCidr(t.clusterCIDR) : ''}`) : 'external traffic with externalTrafficPolicy Cluster (or from the node itself)';
      why.push(`masquerade: SNAT to ${formatIPv4(t.masqueradeAddr)} (${reason})`);
    } else noMasqueradeWhy(verdict, out, t.clusterCIDR !== null && cidrContains(t.clusterCIDR, pkt.src), 'cluster CIDR', why);
  } else if (svc !== null) refusalWhy(r, svc.name, formatIPv4(pkt.src), 'ICMP', why);
  return {
    verdict,
    table,
    service: svc?.name ?? null,
    chain,
    affinity,
    masquerade: { beforeEndpointChoice: out.masquerade, address: formatIPv4(t.masqueradeAddr) },
    conntrack,
    lookupMicros: Math.round(lookupUs * 1000) / 1000,
    explanation: why,
  };
}

/**
 * tunproxyDecision for an IPv6 packet: the IPv6 tables (tables.v6, lookup6
 * and compiledVerdict6); live, the IPv6 connection table's flow and what the
 * IPv6 affinity table remembers for the client.
 */
export function tunproxyDecision6(t: Tables, pkt: PacketTuple6, live: LiveState | null) {
  const why: string[] = [];
  const dstText = `[${formatIPv6(pkt.dst)}]:${pkt.dport}`;
  const srcText = formatIPv6(pkt.src);
  const conntrack = live === null ? null : live.conntrack;
  trackedWhy(conntrack, why);
  const t6 = t.v6 ?? null;
  if (t6 === null) {
    why.push(`${dstText}: the rule set has no IPv6 service and no IPv6 node address: tunproxy passes IPv6 packets untouched`);
    return { verdict: { kind: 'nomatch' } as Verdict, table: null, service: null, chain: null, affinity: null, masquerade: { beforeEndpointChoice: false, address: '' }, conntrack, lookupMicros: 0, explanation: why };
  }
  const w = new Uint32Array(8);
  w.set(pkt.src, 0);
  w.set(pkt.dst, 4);
  const t0 = performance.now();
  const out = new LookupResult();
  const r = lookup6(t6, pkt.proto, w, 0, 4, pkt.dport, out);
  const lookupUs = (performance.now() - t0) * 1000;
  const verdict = compiledVerdict6(t6, pkt);
  const base = t6.base;
  const svc = out.svcIndex < 0 ? null : base.services[out.svcIndex];
  const masqAddr = t6.masqId >= 0 ? formatIPv6(t6.words, t6.masqId * 4) : '';
  const table = svc === null ? null : VIA_NAMES[out.via] ?? null;
  if (svc !== null) {
    const kind = out.via === VIA_NODEPORT ? `NodePort ${pkt.dport} of a node address` : `${VIA_NAMES[out.via]} ${dstText}`;
    why.push(`${kind} belongs to ${svc.name} (IPv6 ${table} table)`);
  } else {
    why.push(isLocal(base, t6.ids.get(w, 4)) ? `${dstText} is a node address and no NodePort ${pkt.dport}/${pkt.proto}: not a service` : `${dstText} is no IPv6 ClusterIP, external IP or load-balancer IP: not a service; the packet passes unchanged`);
  }
  let chain: string | null = null;
  let affinity: { seconds: number; hit: string | null } | null = null;
  if (r === LOOKUP_DNAT && svc !== null) {
    const c = candidatesWhy(base, out, why);
    chain = c.chain;
    if (svc.affinityMs > 0) affinity = affinityWhy(svc.affinityMs, c.set, srcText, live, why);
    if (out.masquerade) {
      const reason = out.via === VIP_CLUSTER ? (base.masqueradeAll ? 'masqueradeAll is set' : `the source is outside the IPv6 cluster CIDR ${t6.cidr6 ? formatCidr6(t6.cidr6) : ''}`) : 'external traffic with externalTrafficPolicy Cluster (or from the node itself)';
      why.push(masqAddr ? `masquerade: SNAT to ${masqAddr} (${reason})` : `masquerade (${reason}), but the node has no IPv6 address to masquerade to: dropped (ipv6_no_masquerade_address)`);
    } else noMasqueradeWhy(verdict, out, t6.cidr6 !== null && cidr6Contains(t6.cidr6, pkt.src), 'IPv6 cluster CIDR', why);
  } else if (svc !== null) refusalWhy(r, svc.name, srcText, 'ICMPv6', why);
  return {
    verdict,
    table,
    service: svc?.name ?? null,
    chain,
    affinity,
    masquerade: { beforeEndpointChoice: out.masquerade, address: masqAddr },
    conntrack,
    lookupMicros: Math.round(lookupUs * 1000) / 1000,
    explanation: why,
  };
}

/** The packet of a trace request: IPv4 or IPv6 (both addresses of one family). */
export type TracedPacket =
  | { family: 4; protocol: ProtocolName; pkt: PacketTuple }
  | { family: 6; protocol: ProtocolName; pkt: PacketTuple6 };

/** The packet of a trace request, checked against the rule set (a local packet's source is a node address). */
export function tracePacket(rs: RuleSet, b: TraceRequest): TracedPacket {
  const s = hostPort(b.source, 'source');
  const d = hostPort(b.destination, 'destination');
  if ((s.v6 === null) !== (d.v6 === null)) {
    throw new TraceRequestError('destination', 'not of the source\'s family', `destination: ${b.destination} is ${d.v6 ? 'IPv6' : 'IPv4'} and source ${b.source} is ${s.v6 ? 'IPv6' : 'IPv4'}: a packet's addresses are of one family`);
  }
  const protocol = b.protocol.toUpperCase() as ProtocolName;
  const proto = protocolNumber(protocol);
  if (s.v6 !== null && d.v6 !== null) {
    const src6 = s.v6;
    if (b.local === true && !rs.node.addresses.some((a) => { const w = parseIPv6(a); return w !== null && w.every((x, i) => x === src6[i]); })) {
      throw new TraceRequestError('source', 'not a node address', `local: a packet from a process on the node has a node address as its source (${rs.node.addresses.join(', ')}), not ${formatIPv6(src6)}`);
    }
    return { family: 6, protocol, pkt: { proto, src: s.v6, dst: d.v6, sport: s.port, dport: d.port } };
  }
  if (b.local === true && !rs.node.addresses.includes(formatIPv4(s.v4))) {
    throw new TraceRequestError('source', 'not a node address', `local: a packet from a process on the node has a node address as its source (${rs.node.addresses.join(', ')}), not ${formatIPv4(s.v4)}`);
  }
  return { family: 4, protocol, pkt: { proto, src: s.v4, dst: d.v4, sport: s.port, dport: d.port } };
}

/** kube-proxy's side: the verdict of the linear walk, and one walk as the kernel makes it, rule by rule. */
export function kubeProxyDecision(cached: CachedLinear, built: boolean, pkt: PacketTuple | PacketTuple6, nowMs: number) {
  const ev = cached.ev;
  const six = typeof pkt.src !== 'number';
  if (six !== (ev.family === 6)) {
    throw new TraceRequestError('destination', `no ${six ? 'ip6tables' : 'iptables'} rules`, `an ${six ? 'IPv6' : 'IPv4'} packet is walked through ${six ? 'ip6tables' : 'iptables'} rules, and the rules given are ${ev.family === 6 ? 'ip6tables' : 'iptables'} ones`);
  }
  const t0 = performance.now();
  const verdict = six ? ev.evaluate6(pkt as PacketTuple6) : ev.evaluate(pkt as PacketTuple);
  const evaluateMs = performance.now() - t0;
  const { sample: s, steps } = ev.trace(pkt, nowMs);
  // which table each line is in: the last "*table" line above it
  const starts: Array<[number, string]> = [];
  cached.lines.forEach((l, i) => { if (l.startsWith('*')) starts.push([i + 1, l.slice(1)]); });
  const tableOf = (line: number): string => {
    let name = '';
    for (const [at, n] of starts) if (at <= line) name = n;
    return name;
  };
  return {
    verdict,
    // one walk as the kernel makes it: a draw at each statistic rule
    walk: { kind: s.kind, service: s.service, endpoint: s.endpoint || null, masquerade: s.masquerade, rulesVisited: s.rulesVisited, reason: s.reason },
    rulesVisited: s.rulesVisited,
    /** whose rules: iptables (IPv4) or ip6tables (IPv6) */
    rulesOf: ev.family === 6 ? 'ip6tables' : 'iptables',
    rules: ev.ruleCount,
    iptablesLines: cached.iptablesLines,
    // the walk rule by rule, as netfilter made it for this packet (first match, jumps, returns)
    chainWalk: steps.map((st) => {
      const text = cached.lines[st.line - 1] ?? '';
      return { table: tableOf(st.line), chain: /^(?:\[\d+:\d+\] )?-A (\S+)/.exec(text)?.[1] ?? '', line: st.line, rule: text, matched: st.matched };
    }),
    evaluateMs,
    builtForThisTrace: built,
    buildMs: cached.buildMs,
  };
}

export interface TraceInput {
  rs: RuleSet;
  tables: Tables;
  generation: number;
  request: TraceRequest;
  /** the running dataplane's connection table and affinity (null offline) */
  live: LiveState | null;
  /**
   * kube-proxy's rules of the packet's family walked linearly for this request (called only when
   * request.kubeProxy is not false; 6: its ip6tables rules). Throws TraceRequestError when there are none.
   */
  linear: (family: 4 | 6) => { cached: CachedLinear; built: boolean };
  nowMs: number;
}

/** The whole answer (the JSON of POST /v1/trace). Throws TraceRequestError for a request it cannot answer. */
export function traceAnswer(i: TraceInput) {
  const b = i.request;
  const tp = tracePacket(i.rs, b);
  const { protocol, pkt } = tp;
  const tunproxy = tp.family === 6 ? tunproxyDecision6(i.tables, tp.pkt, i.live) : tunproxyDecision(i.tables, i.rs, tp.pkt, i.live);
  let kubeProxy = null;
  let differences: string[] | null = null;
  if (b.kubeProxy !== false) {
    const { cached, built } = i.linear(tp.family);
    kubeProxy = kubeProxyDecision(cached, built, pkt, i.nowMs);
    differences = verdictDifferences(tunproxy.verdict, kubeProxy.verdict);
  }
  return {
    generation: i.generation,
    packet: { protocol, family: tp.family === 6 ? 'ipv6' : 'ipv4', source: b.source, destination: b.destination, inInterface: b.inInterface ?? null, local: b.local ?? false },
    tunproxy,
    kubeProxy,
    agree: differences === null ? null : differences.length === 0,
    differences,
  };
}

export type TraceAnswer = ReturnType<typeof traceAnswer>;
