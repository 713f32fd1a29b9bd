/**
 * Synthetic rule sets for benchmarks: N services, each with one TCP port and
 * E endpoints, ClusterIPs in 10.96.0.0/12, pods in 10.64.0.0/10, the first
 * services (up to the NodePort range) with a NodePort. Deterministic.
 */
import type { RuleSet, Service } from '../control/types.ts';
import { formatIPv4, parseIPv4 } from '../dataplane/addr.ts';

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
}

export function syntheticRuleSet(n: number, o: GenOptions = {}): RuleSet {
  const e = o.endpoints ?? 3;
  const nodePorts = Math.min(o.nodePorts ?? Math.min(n, 2000), 2767);
  const cipBase = parseIPv4(o.clusterIPBase ?? '10.96.0.10');
  const podBase = parseIPv4(o.podBase ?? '10.64.0.10');
  const pods = Math.max(1, Math.min(o.pods ?? n * e, 1 << 20));
  const services: Service[] = [];
  for (let i = 0; i < n; i++) {
    const endpoints = [];
    for (let j = 0; j < e; j++) endpoints.push({ address: formatIPv4(podBase + ((i * e + j) % pods)), nodeLocal: j === 0 });
    services.push({
      namespace: `ns-${Math.floor(i / 100)}`,
      name: `svc-${i}`,
      clusterIP: formatIPv4(cipBase + i),
      ports: [{ name: 'p', protocol: o.protocol ?? 'TCP', port: o.port ?? 80, targetPort: o.targetPort ?? 8080, ...(i < nodePorts ? { nodePort: 30000 + i } : {}) }],
      endpoints,
    });
  }
  return {
    apiVersion: 'tunproxy.dev/v1',
    node: { name: 'bench-node', addresses: o.nodeAddresses ?? ['192.168.77.1', '10.64.0.1'], masqueradeAddress: '10.64.0.1', clusterCIDR: o.clusterCIDR ?? '10.64.0.0/10' },
    services,
  };
}
