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

/** The same synthetic rule set in IPv6: every IPv4 address a.b.c.d becomes fd00::a.b.c.d (CIDRs: +96 bits), single-stack IPv6 services. */
export function ipv6RuleSet(rs: RuleSet): RuleSet {
  const v6 = (a: string): string => `fd00::${a}`;
  const cidr6 = (c: string): string => {
    const [a, bits] = c.split('/');
    return `${v6(a)}/${Number(bits) + 96}`;
  };
  const n = rs.node;
  return {
    ...rs,
    node: {
      ...n,
      addresses: [...n.addresses, ...n.addresses.map(v6)],
      masqueradeAddress: `${n.masqueradeAddress},${v6(n.masqueradeAddress!)}`,
      clusterCIDR: `${n.clusterCIDR},${cidr6(n.clusterCIDR!)}`,
    },
    services: rs.services.map((s) => ({
      ...s,
      clusterIP: v6(s.clusterIP!),
      ipFamilies: ['IPv6' as const],
      ipFamilyPolicy: 'SingleStack' as const,
      endpoints: (s.endpoints ?? []).map((e) => ({ ...e, address: v6(e.address) })),
    })),
  };
}
