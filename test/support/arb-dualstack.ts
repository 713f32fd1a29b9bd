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
import { parseIPv4, PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import { formatIPv6, parseIPv6, parseCidr6 } from '../../dataplane/addr6.ts';
import type { PacketTuple6 } from '../../dataplane/decider6.ts';
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

/**
 * IPv6 packets for a dual-stack rule set: mostly to its IPv6 ClusterIPs,
 * external and load-balancer IPs and NodePorts on the node's IPv6 addresses,
 * from pods of the IPv6 cluster CIDR, its endpoints, the node, its source
 * ranges or outside; sometimes another port or protocol, sometimes a miss.
 */
export function packet6For(rs: RuleSet): fc.Arbitrary<PacketTuple6> {
  const protoNum = (p: string) => (p === 'TCP' ? PROTO_TCP : p === 'UDP' ? PROTO_UDP : PROTO_SCTP);
  const v6 = (a: string) => a.includes(':');
  const dsts: { dst: string; dport: number; proto: number }[] = [];
  const node6 = rs.node.addresses.filter(v6);
  for (const s of rs.services) {
    const ips = (s.clusterIPs ?? (s.clusterIP ? [s.clusterIP] : [])).filter(v6);
    for (const p of s.ports) {
      const proto = protoNum(p.protocol);
      for (const ip of [...ips, ...(s.externalIPs ?? []).filter(v6), ...(s.loadBalancerIPs ?? []).filter(v6)]) dsts.push({ dst: ip, dport: p.port, proto });
      if (p.nodePort) for (const a of node6) dsts.push({ dst: a, dport: p.nodePort, proto });
    }
  }
  const srcs: string[] = ['2001:db8:7::7', '2001:db8:7::8', ...node6];
  const cidr6 = (rs.node.clusterCIDR ?? '').split(',').find(v6);
  if (cidr6) {
    // a pod of the IPv6 cluster CIDR (its host part .77)
    const pod = parseCidr6(cidr6)!.net.slice();
    pod[3] = (pod[3] + 77) >>> 0;
    srcs.push(formatIPv6(pod));
  }
  for (const s of rs.services) for (const e of s.endpoints ?? []) if (v6(e.address)) srcs.push(e.address);
  for (const s of rs.services) for (const r of s.loadBalancerSourceRanges ?? []) if (v6(r)) srcs.push(formatIPv6(parseCidr6(r)!.net));
  const protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP];
  const miss = fc.record({ dst: fc.constant('fd00:ffff::1'), dport: fc.integer({ min: 1, max: 65535 }), proto: fc.constantFrom(...protos) });
  const dest = dsts.length === 0
    ? miss
    : fc.oneof(
        { weight: 6, arbitrary: fc.constantFrom(...dsts) },
        { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...dsts), fc.integer({ min: 1, max: 65535 }), fc.constantFrom(...protos), fc.boolean()).map(([d, port, proto, changePort]) => (changePort ? { ...d, dport: port } : { ...d, proto })) },
        { weight: 1, arbitrary: miss },
      );
  return fc.record({ d: dest, src: fc.constantFrom(...srcs), sport: fc.integer({ min: 1024, max: 65535 }) }).map(({ d, src, sport }) => ({ proto: d.proto, src: parseIPv6(src)!, dst: parseIPv6(d.dst)!, sport, dport: d.dport }));
}
