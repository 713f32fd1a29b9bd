/**
 * Synthetic rule sets for benchmarks: N services, each with one TCP port and
 * E endpoints, ClusterIPs in 10.96.0.0/12, pods in 10.64.0.0/10, the first
 * services (up to the NodePort range) with a NodePort. Deterministic.
 *
 * `family`: 'ipv4' (the default: exactly the rule sets of before), 'ipv6'
 * (single-stack IPv6 services: ipFamilies ["IPv6"], ClusterIPs allocated in
 * order from the /108 service CIDR fd00:10:96::/108 as Kubernetes allocates
 * them, endpoints in the pod CIDR fd00:10:64::/48) or 'dual'
 * (RequireDualStack: ipFamilies ["IPv4", "IPv6"], clusterIPs [v4, v6], the
 * endpoints of both families). The node of an 'ipv6' or 'dual' set is
 * dual-stack: addresses, masqueradeAddress and clusterCIDR in both families.
 */
import type { Endpoint, RuleSet, Service } from '../control/types.ts';
import { formatIPv4, parseIPv4 } from '../dataplane/addr.ts';
import { formatIPv6, parseIPv6 } from '../dataplane/addr6.ts';

export type GenFamily = 'ipv4' | 'ipv6' | 'dual';

export interface GenOptions {
  endpoints?: number;
  /** how many services get a NodePort (default: min(N, 2000)) */
  nodePorts?: number;
  /** distinct pod addresses to draw endpoints from (default: N * endpoints, capped at 2^20) */
  pods?: number;
  clusterIPBase?: string;
  podBase?: string;
  nodeAddresses?: string[];
  clusterCIDR?: string;
  protocol?: 'TCP' | 'UDP';
  port?: number;
  targetPort?: number;
  /** default 'ipv4' */
  family?: GenFamily;
  /** the first IPv6 ClusterIP (default fd00:10:96::a, in the service CIDR fd00:10:96::/108) */
  clusterIPBase6?: string;
  /** the first IPv6 pod address (default fd00:10:64::a, in the pod CIDR fd00:10:64::/48) */
  podBase6?: string;
}

/** The IPv6 service CIDR the generator allocates from (a /108: 2^20 ClusterIPs, Kubernetes' largest IPv6 service range). */
export const SERVICE_CIDR6 = 'fd00:10:96::/108';
export const CLUSTER_CIDR6 = 'fd00:10:64::/48';
/** the dual-stack node of the 'ipv6' and 'dual' sets */
export const NODE_ADDRESSES6 = ['fd00:77::1', 'fd00:10:64::1'];
export const MASQUERADE_ADDRESS6 = 'fd00:10:64::1';

/** base + i in the low 32 bits (the ranges used here never carry out of them) */
function plus6(base: Uint32Array, i: number): string {
  const w = base.slice();
  const low = w[3] + i;
  if (low > 0xffffffff) throw new Error(`gen: IPv6 address ${formatIPv6(base)} + ${i} leaves the low 32 bits`);
  w[3] = low >>> 0;
  return formatIPv6(w);
}

export function syntheticRuleSet(n: number, o: GenOptions = {}): RuleSet {
  const e = o.endpoints ?? 3;
  const family = o.family ?? 'ipv4';
  const v4 = family !== 'ipv6';
  const v6 = family !== 'ipv4';
  if (v6 && n > 1 << 20) throw new Error(`gen: ${n} IPv6 services do not fit the /108 service CIDR (at most ${1 << 20})`);
  const nodePorts = Math.min(o.nodePorts ?? Math.min(n, 2000), 2767);
  const cipBase = parseIPv4(o.clusterIPBase ?? '10.96.0.10');
  const podBase = parseIPv4(o.podBase ?? '10.64.0.10');
  const cipBase6 = parseIPv6(o.clusterIPBase6 ?? 'fd00:10:96::a');
  const podBase6 = parseIPv6(o.podBase6 ?? 'fd00:10:64::a');
  if (!cipBase6 || !podBase6) throw new Error('gen: clusterIPBase6 / podBase6 must be IPv6 addresses');
  const pods = Math.max(1, Math.min(o.pods ?? n * e, 1 << 20));
  const services: Service[] = [];
  for (let i = 0; i < n; i++) {
    const endpoints: Endpoint[] = [];
    for (let j = 0; j < e; j++) {
      const pod = (i * e + j) % pods;
      if (v4) endpoints.push({ address: formatIPv4(podBase + pod), nodeLocal: j === 0 });
      if (v6) endpoints.push({ address: plus6(podBase6, pod), nodeLocal: j === 0 });
    }
    const ip4 = formatIPv4(cipBase + i);
    const ip6 = v6 ? plus6(cipBase6, i) : '';
    services.push({
      namespace: `ns-${Math.floor(i / 100)}`,
      name: `svc-${i}`,
      clusterIP: v4 ? ip4 : ip6,
      ...(family === 'ipv6' ? { clusterIPs: [ip6], ipFamilies: ['IPv6' as const], ipFamilyPolicy: 'SingleStack' as const } : {}),
      ...(family === 'dual' ? { clusterIPs: [ip4, ip6], ipFamilies: ['IPv4' as const, 'IPv6' as const], ipFamilyPolicy: 'RequireDualStack' as const } : {}),
      ports: [{ name: 'p', protocol: o.protocol ?? 'TCP', port: o.port ?? 80, targetPort: o.targetPort ?? 8080, ...(i < nodePorts ? { nodePort: 30000 + i } : {}) }],
      endpoints,
    });
  }
  const addresses4 = o.nodeAddresses ?? ['192.168.77.1', '10.64.0.1'];
  return {
    apiVersion: 'tunproxy.dev/v1',
    node:
      family === 'ipv4'
        ? { name: 'bench-node', addresses: addresses4, masqueradeAddress: '10.64.0.1', clusterCIDR: o.clusterCIDR ?? '10.64.0.0/10' }
        : {
            name: 'bench-node',
            addresses: [...addresses4, ...NODE_ADDRESSES6],
            masqueradeAddress: `10.64.0.1,${MASQUERADE_ADDRESS6}`,
            clusterCIDR: `${o.clusterCIDR ?? '10.64.0.0/10'},${CLUSTER_CIDR6}`,
          },
    services,
  };
}
