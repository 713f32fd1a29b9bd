/**
 * The rule set: what kube-proxy acts on, as JSON (apiVersion tunproxy.dev/v1).
 * The JSON schema (control/schema.ts) describes exactly this shape; the
 * validator (control/validate.ts) fills in defaults and checks what a schema cannot.
 */
import type { ProtocolName } from '../dataplane/addr.ts';

export const API_VERSION = 'tunproxy.dev/v1';

export interface NodeSpec {
  /** node name (informational; kube-proxy's --hostname-override) */
  name?: string;
  /** the node's local addresses, IPv4 and IPv6: what `-m addrtype --dst-type LOCAL` matches; NodePorts answer on these */
  addresses: string[];
  /**
   * the source address used for masquerade (SNAT), or a dual-stack pair "IPv4,IPv6";
   * default per family: the first node address of that family inside clusterCIDR, else the first of that family
   */
  masqueradeAddress?: string;
  /** pod CIDR (kube-proxy's --cluster-cidr), or its dual-stack pair "10.244.0.0/16,fd00:10:244::/56"; traffic from outside it to a ClusterIP is masqueraded */
  clusterCIDR?: string;
  /** kube-proxy's --masquerade-all */
  masqueradeAll?: boolean;
  /** kube-proxy's --iptables-masquerade-bit, as a mark: "0x4000" by default */
  masqueradeMark?: string;
  /** "30000-32767" by default */
  nodePortRange?: string;
  /** endpoint selection for new flows: "random" (kube-proxy's statistic chains, default) or "maglev" */
  loadBalancing?: 'random' | 'maglev';
  /** Maglev lookup-table size, a prime (default 65537 for maglev... kept small in tests) */
  maglevTableSize?: number;
}

export interface ServicePort {
  /** port name; may be "" only when the service has a single port */
  name: string;
  protocol: ProtocolName;
  port: number;
  nodePort?: number;
  /** container port number, or the name of a port on the endpoints */
  targetPort?: number | string;
}

export interface Endpoint {
  address: string;
  /** port per service-port name (EndpointSlice ports); when absent, the numeric targetPort of each service port */
  ports?: Record<string, number>;
  ready?: boolean;       // default true
  serving?: boolean;     // default = ready
  terminating?: boolean; // default false
  /** the endpoint runs on this node (EndpointSlice nodeName == this node) */
  nodeLocal?: boolean;   // default false
}

export type IPFamily = 'IPv4' | 'IPv6';
export type IPFamilyPolicy = 'SingleStack' | 'PreferDualStack' | 'RequireDualStack';

export interface Service {
  namespace: string;
  name: string;
  /** "None" or absent for headless services (no ClusterIP rules); the primary family's ClusterIP (= clusterIPs[0]) */
  clusterIP?: string;
  /** a ClusterIP per family, in ipFamilies order (spec.clusterIPs); ["None"] for headless */
  clusterIPs?: string[];
  /** the service's IP families, primary first (spec.ipFamilies); default: the families of clusterIPs */
  ipFamilies?: IPFamily[];
  /** spec.ipFamilyPolicy: SingleStack (default) takes one family, RequireDualStack two, PreferDualStack one or two */
  ipFamilyPolicy?: IPFamilyPolicy;
  ports: ServicePort[];
  externalIPs?: string[];
  /** status.loadBalancer.ingress[].ip */
  loadBalancerIPs?: string[];
  loadBalancerSourceRanges?: string[];
  sessionAffinity?: 'None' | 'ClientIP';
  /** default 10800 */
  sessionAffinityTimeoutSeconds?: number;
  externalTrafficPolicy?: 'Cluster' | 'Local';
  internalTrafficPolicy?: 'Cluster' | 'Local';
  endpoints?: Endpoint[];
}

export interface RuleSet {
  apiVersion: string;
  node: NodeSpec;
  services: Service[];
}
