/**
 * The rule set as kube-proxy sees it once defaults are applied: the numeric
 * model every later stage reads (compile, the incremental patch, the
 * iptables and nftables writers), built once by validation
 * (control/validate.ts) — kube-proxy's svcInfo/epInfo. One entry per service
 * port, with its endpoints sorted into the sets kube-proxy's
 * CategorizeEndpoints (pkg/proxy/topology.go) produces, so the compiler and
 * the writers agree by construction on which endpoints serve which traffic.
 *
 * Addresses. Every address of the model is an `Addr`: a number. An IPv4
 * address is its unsigned 32-bit value (0 ≤ a < 2^32, the fast path: a key
 * part, a typed-array element, compared with ===). IPv6 is planned into the
 * same type, so that no stage needs a second copy for it: an IPv6 address
 * will be a number ≥ 2^32, `2^32 + i`, naming entry i of the model's address
 * pool (`RuleSetModel.addr6`: four 32-bit words per address, network order),
 * interned so that equal addresses get equal numbers. Everything that only
 * keys, compares or counts addresses (conflict checks, diffs, the VIP index
 * key) then works unchanged; the few places that need the bits (the packet
 * path's wire form, the writers' text) branch on `isIPv6(a)`. The address
 * text of the input is kept beside the number for the writers (a reference
 * to the input's string, not a copy), so nothing formats it back.
 */
import type { RuleSet, Service, ServicePort, Endpoint } from './types.ts';
import type { Cidr, ProtocolName } from '../dataplane/addr.ts';
import { parseCidr, parseIPv4, cidrContains, protocolNumber } from '../dataplane/addr.ts';

/** An address of the model: IPv4 as its uint32 value; IPv6 (to come) as 2^32 + its index in `RuleSetModel.addr6`. */
export type Addr = number;
export const ADDR6_BASE = 2 ** 32;
export const isIPv6 = (a: Addr): boolean => a >= ADDR6_BASE;

export const DEFAULT_AFFINITY_SECONDS = 10800;
export const DEFAULT_MASQUERADE_MARK = '0x4000';
export const DEFAULT_NODEPORT_RANGE = '30000-32767';
export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;

export interface NodeModel {
  name: string;
  addresses: string[];
  /** the node's addresses as numbers */
  addrs: Addr[];
  masqueradeAddress: string;
  masqueradeAddr: Addr;
  /** the clusterCIDR text as given, or null */
  clusterCIDR: string | null;
  cidr: Cidr | null;
  masqueradeAll: boolean;
  /** "0x4000" */
  masqueradeMark: string;
  nodePortRange: [number, number];
  loadBalancing: 'random' | 'maglev';
  maglevTableSize: number;
}

export interface EndpointModel {
  address: string;
  addr: Addr;
  port: number;
  /** "10.64.1.7:53" */
  text: string;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  nodeLocal: boolean;
}

export interface ServicePortModel {
  service: Service;
  port: ServicePort;
  /** kube-proxy's service-port name: "ns/name:port", or "ns/name" for an unnamed port */
  name: string;
  protocol: ProtocolName;
  /** the IP protocol number (6, 17, 132) */
  protocolNumber: number;
  /** "tcp" | "udp" | "sctp", as in chain-name hashes and -p */
  proto: string;
  /** the service port (port.port) */
  portNumber: number;
  /** 0 when none */
  nodePort: number;
  clusterIP: string | null;
  /** -1 when headless */
  clusterAddr: Addr;
  externalIPs: string[];
  externalAddrs: Addr[];
  loadBalancerIPs: string[];
  loadBalancerAddrs: Addr[];
  loadBalancerSourceRanges: string[];
  sourceRanges: Cidr[];
  /** ClientIP affinity timeout, 0 when sessionAffinity is None */
  affinitySeconds: number;
  internalPolicyLocal: boolean;
  /** externalTrafficPolicy Local on an externally accessible port */
  externalPolicyLocal: boolean;
  /** has a NodePort, external IPs or load-balancer IPs */
  externallyAccessible: boolean;
  /** endpoints that carry this port, in rule-set order */
  endpoints: EndpointModel[];
  /** KUBE-SVC- endpoints: ready ones, or serving+terminating when none is ready */
  clusterEndpoints: EndpointModel[];
  /** KUBE-SVL- endpoints: local ready ones, or local serving+terminating when none is ready */
  localEndpoints: EndpointModel[];
  /** endpoints that get a KUBE-SEP- chain */
  allReachableEndpoints: EndpointModel[];
  /** any usable endpoint anywhere (else: REJECT) */
  hasEndpoints: boolean;
  hasInternalEndpoints: boolean;
  hasExternalEndpoints: boolean;
  usesClusterPolicyChain: boolean;
  usesLocalPolicyChain: boolean;
  usesExternalTrafficChain: boolean;
  /** loadBalancerSourceRanges on a service with LB IPs and endpoints: KUBE-FW- chain */
  usesFirewallChain: boolean;
  /** a source range contains a node address: the LB IPs are also admitted as sources */
  allowFromNode: boolean;
}

/** One service of the rule set: its object and its service ports' models. */
export interface ServiceModel {
  service: Service;
  /** "ns/name" */
  key: string;
  ports: ServicePortModel[];
}

/**
 * The model of a whole rule set. `services` follows the rule set's order;
 * `ports` is every service port in that order (made on first use, so that
 * the incremental path, which builds a model by replacing a few services,
 * does not pay for it).
 */
export class RuleSetModel {
  readonly ruleSet: RuleSet;
  readonly node: NodeModel;
  readonly services: readonly ServiceModel[];
  #ports: ServicePortModel[] | null = null;
  constructor(ruleSet: RuleSet, node: NodeModel, services: readonly ServiceModel[]) {
    this.ruleSet = ruleSet;
    this.node = node;
    this.services = services;
  }
  get ports(): ServicePortModel[] {
    if (this.#ports === null) {
      const out: ServicePortModel[] = [];
      for (const s of this.services) for (const p of s.ports) out.push(p);
      this.#ports = out;
    }
    return this.#ports;
  }
}

export function isRuleSetModel(x: RuleSet | RuleSetModel): x is RuleSetModel {
  return x instanceof RuleSetModel;
}

/** The model of a rule set already validated, or the model itself. */
export function modelOf(x: RuleSet | RuleSetModel): RuleSetModel {
  return x instanceof RuleSetModel ? x : ruleSetModel(x);
}

export function servicePortName(svc: Service, port: ServicePort): string {
  return `${svc.namespace}/${svc.name}${port.name ? ':' + port.name : ''}`;
}

/** The node's settings with defaults applied (input assumed validated). */
export function nodeModel(rs: RuleSet): NodeModel {
  const n = rs.node;
  const cidrText = n.clusterCIDR ?? null;
  const cidr = cidrText ? parseCidr(cidrText) : null;
  const addrs = n.addresses.map(parseIPv4);
  let masq = n.masqueradeAddress;
  if (!masq) {
    const i = cidr ? addrs.findIndex((a) => cidrContains(cidr, a)) : -1;
    masq = n.addresses[i < 0 ? 0 : i] ?? '0.0.0.0';
  }
  const range = (n.nodePortRange ?? DEFAULT_NODEPORT_RANGE).split('-').map(Number) as [number, number];
  return {
    name: n.name ?? '',
    addresses: n.addresses,
    addrs,
    masqueradeAddress: masq,
    masqueradeAddr: parseIPv4(masq),
    clusterCIDR: cidrText,
    cidr,
    masqueradeAll: n.masqueradeAll ?? false,
    masqueradeMark: n.masqueradeMark ?? DEFAULT_MASQUERADE_MARK,
    nodePortRange: range,
    loadBalancing: n.loadBalancing ?? 'random',
    maglevTableSize: n.maglevTableSize ?? DEFAULT_MAGLEV_TABLE_SIZE,
  };
}

function endpointPort(ep: Endpoint, port: ServicePort): number {
  if (ep.ports) return ep.ports[port.name] ?? -1;
  return typeof port.targetPort === 'number' ? port.targetPort : port.targetPort === undefined ? port.port : -1;
}

function endpointModel(ep: Endpoint, addr: Addr, p: number): EndpointModel {
  const ready = ep.ready ?? true;
  return {
    address: ep.address,
    addr,
    port: p,
    text: `${ep.address}:${p}`,
    ready,
    serving: ep.serving ?? ready,
    terminating: ep.terminating ?? false,
    nodeLocal: ep.nodeLocal ?? false,
  };
}

const LOWER: Record<ProtocolName, string> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };
const NO_ADDRS: Addr[] = [];
const NO_STRINGS: string[] = [];
const NO_CIDRS: Cidr[] = [];
const NO_ENDPOINTS: EndpointModel[] = [];
const addrsOf = (l: string[]): Addr[] => (l.length === 0 ? NO_ADDRS : l.map(parseIPv4));

/**
 * One service port as kube-proxy's syncProxyRules sees it. `epAddrs`: the
 * endpoints' addresses as numbers when the caller has them (validation
 * parsed them already), else they are parsed here.
 */
export function servicePortModel(svc: Service, port: ServicePort, node: NodeModel, epAddrs?: readonly Addr[]): ServicePortModel {
  const clusterIP = svc.clusterIP && svc.clusterIP !== 'None' ? svc.clusterIP : null;
  const externalIPs = svc.externalIPs ?? NO_STRINGS;
  const loadBalancerIPs = svc.loadBalancerIPs ?? NO_STRINGS;
  const ranges = svc.loadBalancerSourceRanges ?? NO_STRINGS;
  const nodePort = port.nodePort ?? 0;
  const externallyAccessible = nodePort !== 0 || externalIPs.length > 0 || loadBalancerIPs.length > 0;
  const internalPolicyLocal = svc.internalTrafficPolicy === 'Local';
  const externalPolicyLocal = externallyAccessible && svc.externalTrafficPolicy === 'Local';
  const usesCluster = !internalPolicyLocal || externallyAccessible;
  const usesLocal = internalPolicyLocal || externalPolicyLocal;

  const endpoints: EndpointModel[] = [];
  const eps = svc.endpoints;
  if (eps !== undefined) {
    for (let i = 0; i < eps.length; i++) {
      const ep = eps[i];
      const p = endpointPort(ep, port);
      if (p > 0) endpoints.push(endpointModel(ep, epAddrs !== undefined ? epAddrs[i] : parseIPv4(ep.address), p));
    }
  }

  // pkg/proxy/topology.go CategorizeEndpoints (without topology hints)
  let clusterEndpoints: EndpointModel[] = NO_ENDPOINTS;
  let localEndpoints: EndpointModel[] = NO_ENDPOINTS;
  let hasAny = false;
  if (usesCluster) {
    let ready = 0;
    for (const e of endpoints) if (e.ready) ready++;
    clusterEndpoints = ready === endpoints.length ? endpoints : ready > 0 ? endpoints.filter((e) => e.ready) : endpoints.filter((e) => e.serving && e.terminating);
    if (clusterEndpoints.length > 0) hasAny = true;
  }
  let allReachable: EndpointModel[];
  if (!usesLocal) {
    allReachable = clusterEndpoints;
  } else {
    let localReady = false;
    let localServingTerminating = false;
    for (const e of endpoints) {
      if (e.ready) {
        hasAny = true;
        if (e.nodeLocal) localReady = true;
      } else if (e.serving && e.terminating) {
        hasAny = true;
        if (e.nodeLocal) localServingTerminating = true;
      }
    }
    if (localReady) localEndpoints = endpoints.filter((e) => e.nodeLocal && e.ready);
    else if (localServingTerminating) localEndpoints = endpoints.filter((e) => e.nodeLocal && e.serving && e.terminating);
    if (!usesCluster) allReachable = localEndpoints;
    else {
      const seen = new Set(clusterEndpoints);
      allReachable = [...clusterEndpoints, ...localEndpoints.filter((e) => !seen.has(e))];
    }
  }

  const hasEndpoints = hasAny;
  const hasInternalEndpoints = internalPolicyLocal ? hasEndpoints && localEndpoints.length > 0 : hasEndpoints;
  const hasExternalEndpoints = externalPolicyLocal ? hasEndpoints && localEndpoints.length > 0 : hasEndpoints;
  const sourceRanges = ranges.length === 0 ? NO_CIDRS : ranges.map((r) => parseCidr(r)!);
  const allowFromNode = sourceRanges.some((c) => node.addrs.some((a) => cidrContains(c, a)));
  const loadBalancerAddrs = addrsOf(loadBalancerIPs);
  return {
    service: svc,
    port,
    name: servicePortName(svc, port),
    protocol: port.protocol,
    protocolNumber: protocolNumber(port.protocol),
    proto: LOWER[port.protocol],
    portNumber: port.port,
    nodePort,
    clusterIP,
    clusterAddr: clusterIP === null ? -1 : parseIPv4(clusterIP),
    externalIPs,
    externalAddrs: addrsOf(externalIPs),
    loadBalancerIPs,
    loadBalancerAddrs,
    loadBalancerSourceRanges: ranges,
    sourceRanges,
    affinitySeconds: svc.sessionAffinity === 'ClientIP' ? (svc.sessionAffinityTimeoutSeconds ?? DEFAULT_AFFINITY_SECONDS) : 0,
    internalPolicyLocal,
    externalPolicyLocal,
    externallyAccessible,
    endpoints,
    clusterEndpoints,
    localEndpoints,
    allReachableEndpoints: allReachable,
    hasEndpoints,
    hasInternalEndpoints,
    hasExternalEndpoints,
    usesClusterPolicyChain: clusterEndpoints.length > 0 && usesCluster,
    usesLocalPolicyChain: localEndpoints.length > 0 && usesLocal,
    usesExternalTrafficChain: hasEndpoints && externallyAccessible,
    usesFirewallChain: hasEndpoints && loadBalancerIPs.length > 0 && ranges.length > 0,
    allowFromNode,
  };
}

/** One service's model (input assumed validated). */
export function serviceModel(svc: Service, node: NodeModel, epAddrs?: readonly Addr[]): ServiceModel {
  const ports: ServicePortModel[] = new Array(svc.ports.length);
  for (let i = 0; i < svc.ports.length; i++) ports[i] = servicePortModel(svc, svc.ports[i], node, epAddrs);
  return { service: svc, key: `${svc.namespace}/${svc.name}`, ports };
}

/** The model of a rule set already validated (validateRuleSet builds it as it checks; this is for rule sets known good). */
export function ruleSetModel(rs: RuleSet): RuleSetModel {
  const node = nodeModel(rs);
  const services: ServiceModel[] = new Array(rs.services.length);
  for (let i = 0; i < rs.services.length; i++) services[i] = serviceModel(rs.services[i], node);
  return new RuleSetModel(rs, node, services);
}
