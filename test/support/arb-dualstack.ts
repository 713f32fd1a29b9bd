/**
 * Random valid dual-stack rule sets: arbRuleSet's IPv4 rule sets with each
 * service made IPv4-only, IPv6-only or dual-stack (either family first), its
 * IPv6 addresses the IPv4 ones mapped into fd00::/96 (CIDRs likewise, prefix
 * + 96), so that what holds what (pods in the cluster CIDR, the node in a
 * source range) is the same in both families. A dual-stack service's IPv6
 * endpoints are some of its IPv4 ones, mapped: a family may have fewer, or
 * none. The node has both families' addresses and cluster CIDRs.
 */
import fc from 'fast-check';
import type { RuleSet, Service } from '../../control/types.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';
import { formatIPv6 } from '../../dataplane/addr6.ts';
import { arbRuleSet } from './arbitraries.ts';
import type { RuleSetArbOptions } from './arbitraries.ts';

/** 10.64.1.7 → fd00::a40:107 */
export function mapToV6(v4: string): string {
  return formatIPv6([0xfd000000, 0, 0, parseIPv4(v4)]);
}

export function mapCidrToV6(cidr: string): string {
  const [a, bits] = cidr.split('/');
  return `${mapToV6(a)}/${96 + Number(bits ?? 32)}`;
}

type Mode = 'v4' | 'v6' | 'dual46' | 'dual64';

function convert(s: Service, mode: Mode, keep6: boolean[]): Service {
  if (mode === 'v4') return s;
  const m = (xs: string[] | undefined) => xs?.map(mapToV6);
  const six: Service = {
    ...s,
    ...(s.externalIPs ? { externalIPs: m(s.externalIPs) } : {}),
    ...(s.loadBalancerIPs ? { loadBalancerIPs: m(s.loadBalancerIPs) } : {}),
    ...(s.loadBalancerSourceRanges ? { loadBalancerSourceRanges: s.loadBalancerSourceRanges.map(mapCidrToV6) } : {}),
    endpoints: (s.endpoints ?? []).map((e) => ({ ...e, address: mapToV6(e.address) })),
  };
  const v4IP = s.clusterIP!;
  const v6IP = mapToV6(v4IP);
  if (mode === 'v6') return { ...six, clusterIP: v6IP, ipFamilies: ['IPv6'] };
  const out: Service = {
    ...s,
    clusterIP: mode === 'dual46' ? v4IP : v6IP,
    clusterIPs: mode === 'dual46' ? [v4IP, v6IP] : [v6IP, v4IP],
    ipFamilies: mode === 'dual46' ? ['IPv4', 'IPv6'] : ['IPv6', 'IPv4'],
    ipFamilyPolicy: 'RequireDualStack',
  };
  const join = (a: string[] | undefined, b: string[] | undefined) => (a || b ? [...(a ?? []), ...(b ?? [])] : undefined);
  const ext = join(s.externalIPs, six.externalIPs);
  if (ext) out.externalIPs = ext;
  const lb = join(s.loadBalancerIPs, six.loadBalancerIPs);
  if (lb) out.loadBalancerIPs = lb;
  const ranges = join(s.loadBalancerSourceRanges, six.loadBalancerSourceRanges);
  if (ranges) out.loadBalancerSourceRanges = ranges;
  out.endpoints = [...(s.endpoints ?? []), ...(six.endpoints ?? []).filter((_, i) => keep6[i % keep6.length] ?? true)];
  return out;
}

/** A random valid rule set with services of both families. */
export function arbDualStackRuleSet(opts: RuleSetArbOptions = {}): fc.Arbitrary<RuleSet> {
  return fc
    .record({
      rs: arbRuleSet(opts),
      modes: fc.array(fc.constantFrom<Mode>('v4', 'v6', 'dual46', 'dual46', 'dual64'), { minLength: 8, maxLength: 8 }),
      keep6: fc.array(fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), { minLength: 1, maxLength: 4 }),
    })
    .map(({ rs, modes, keep6 }) => {
      const node: RuleSet['node'] = { ...rs.node, addresses: [...rs.node.addresses, ...rs.node.addresses.map(mapToV6)] };
      if (rs.node.clusterCIDR !== undefined) node.clusterCIDR = `${rs.node.clusterCIDR},${mapCidrToV6(rs.node.clusterCIDR)}`;
      return { ...rs, node, services: rs.services.map((s, i) => convert(s, modes[i % modes.length], keep6)) };
    });
}
