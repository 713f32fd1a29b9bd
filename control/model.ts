/**
 * The rule set as kube-proxy sees it once defaults are applied: one entry per
 * service port, with its endpoints sorted into the sets kube-proxy's
 * CategorizeEndpoints (pkg/proxy/topology.go) produces. The compiler and the
 * iptables writer both start from here, so they agree by construction on
 * which endpoints serve which traffic.
 */
import type { RuleSet, Service, ServicePort, Endpoint } from './types.ts';
import type { ProtocolName } from '../dataplane/addr.ts';
import { parseCidr, parseIPv4, cidrContains } from '../dataplane/addr.ts';

export const DEFAULT_AFFINITY_SECONDS = 10800;
export const DEFAULT_MASQUERADE_MARK = '0x4000';
export const DEFAULT_NODEPORT_RANGE = '30000-32767';
export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;

export interface NodeModel {
  name: string;
  addresses: string[];
  masqueradeAddress: string;
  clusterCIDR: string | null;
  masqueradeAll: boolean;
  /** "0x4000" */
  masqueradeMark: string;
  nodePortRange: [number, number];
  loadBalancing: 'random' | 'maglev';
  maglevTableSize: number;
}

export interface EndpointModel {
  address: string;
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
  /** "tcp" | "udp" | "sctp", as in chain-name hashes and -p */
  proto: string;
  clusterIP: string | null;
  externalIPs: string[];
  loadBalancerIPs: string[];
  loadBalancerSourceRanges: string[];
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

export interface RuleSetModel {
  node: NodeModel;
  ports: ServicePortModel[];
}

export function servicePortName(svc: Service, port: ServicePort): string {
  return `${svc.namespace}/${svc.name}${port.name ? ':' + port.name : ''}`;
}

/** The node's settings with defaults applied (input assumed validated). */
export function nodeModel(rs: RuleSet): NodeModel {
  const n = rs.node;
  const cidr = n.clusterCIDR ?? null;
  let masq = n.masqueradeAddress;
  if (!masq) {
    const c = cidr ? parseCidr(cidr) : null;
    masq = (c && n.addresses.find((a) => cidrContains(c, parseIPv4(a)))) || n.addresses[0] || '0.0.0.0';
  }
  const range = (n.nodePortRange ?? DEFAULT_NODEPORT_RANGE).split('-').map(Number) as [number, number];
  return {
    name: n.name ?? '',
    addresses: n.addresses,
    masqueradeAddress: masq,
    clusterCIDR: cidr,
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

function endpointModel(ep: Endpoint, p: number): EndpointModel {
  const ready = ep.ready ?? true;
  return {
    address: ep.address,
    port: p,
    text: `${ep.address}:${p}`,
    ready,
    serving: ep.serving ?? ready,
    terminating: ep.terminating ?? false,
    nodeLocal: ep.nodeLocal ?? false,
  };
}

/** One service port as kube-proxy's syncProxyRules sees it. */
export function servicePortModel(svc: Service, port: ServicePort, nodeAddrs: string[]): ServicePortModel {
  const clusterIP = svc.clusterIP && svc.clusterIP !== 'None' ? svc.clusterIP : null;
  const externalIPs = svc.externalIPs ?? [];
  const loadBalancerIPs = svc.loadBalancerIPs ?? [];
  const ranges = svc.loadBalancerSourceRanges ?? [];
  const externallyAccessible = (port.nodePort ?? 0) !== 0 || externalIPs.length > 0 || loadBalancerIPs.length > 0;
  const internalPolicyLocal = svc.internalTrafficPolicy === 'Local';
  const externalPolicyLocal = externallyAccessible && svc.externalTrafficPolicy === 'Local';
  const usesCluster = !internalPolicyLocal || externallyAccessible;
  const usesLocal = internalPolicyLocal || externalPolicyLocal;

  const endpoints: EndpointModel[] = [];
  for (const ep of svc.endpoints ?? []) {
    const p = endpointPort(ep, port);
    if (p > 0) endpoints.push(endpointModel(ep, p));
  }

  // pkg/proxy/topology.go CategorizeEndpoints (without topology hints)
  let clusterEndpoints: EndpointModel[] = [];
  let localEndpoints: EndpointModel[] = [];
  let hasAny = false;
  if (usesCluster) {
    clusterEndpoints = endpoints.filter((e) => e.ready);
    if (clusterEndpoints.length === 0) clusterEndpoints = endpoints.filter((e) => e.serving && e.terminating);
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
  const nodeNums = nodeAddrs.map(parseIPv4);
  const allowFromNode = ranges.some((r) => {
    const c = parseCidr(r);
    return c !== null && nodeNums.some((a) => cidrContains(c, a));
  });
  return {
    service: svc,
    port,
    name: servicePortName(svc, port),
    protocol: port.protocol,
    proto: port.protocol.toLowerCase(),
    clusterIP,
    externalIPs,
    loadBalancerIPs,
    loadBalancerSourceRanges: ranges,
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

/** Every service port of a (validated) rule set, in rule-set order. */
export function ruleSetModel(rs: RuleSet): RuleSetModel {
  const node = nodeModel(rs);
  const ports: ServicePortModel[] = [];
  for (const svc of rs.services) for (const p of svc.ports) ports.push(servicePortModel(svc, p, node.addresses));
  return { node, ports };
}
