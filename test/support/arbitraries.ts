/**
 * fast-check arbitraries: valid random rule sets and packets aimed at them.
 *
 * `arbRuleSet()` gives 1–N services with 1–3 ports each (TCP/UDP/SCTP, unique
 * port/protocol within the service), sometimes a NodePort (30000–32767,
 * unique per protocol across the rule set), external IPs, load-balancer IPs
 * with source ranges (sometimes admitting the node), ClientIP affinity,
 * external/internal traffic policy Local, 0–4 endpoints with random
 * ready/serving/terminating/nodeLocal (sometimes with a per-port `ports` map
 * leaving a port out), a node with 1–2 addresses, usually a cluster CIDR,
 * sometimes masqueradeAll. Every VIP:port/protocol is unique: ClusterIPs,
 * external IPs and load-balancer IPs come from disjoint pools and are never
 * shared between services.
 *
 * `packetFor(rs)` gives PacketTuples that mostly hit a ClusterIP, external
 * IP, load-balancer IP or NodePort of `rs` and sometimes miss (wrong port,
 * wrong protocol, unknown address), from a pod inside the cluster CIDR, a
 * client outside it, a node address, an endpoint's own address (hairpin), a
 * source inside or outside the load-balancer source ranges, or an LB IP.
 */
import fc from 'fast-check';
import type { RuleSet, Service, ServicePort, Endpoint } from '../../control/types.ts';
import { API_VERSION } from '../../control/types.ts';
import type { PacketTuple } from '../../dataplane/verdict.ts';
import { parseIPv4, parseCidr, formatIPv4, protocolNumber, PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import type { ProtocolName } from '../../dataplane/addr.ts';

export interface RuleSetArbOptions {
  /** default 1 */
  minServices?: number;
  /** default 6 */
  maxServices?: number;
  /** default 4 */
  maxEndpoints?: number;
  /**
   * dual-stack rule sets: the node gets an IPv6 address and an IPv6 cluster CIDR beside its IPv4 ones,
   * and each service is IPv4-only, dual-stack (either family primary) or IPv6-only (Kubernetes'
   * ipFamilies, ipFamilyPolicy, clusterIPs), its endpoints and addresses in its families
   */
  dualStack?: boolean;
}

const PROTOCOLS: ProtocolName[] = ['TCP', 'UDP', 'SCTP'];
const PORT_NAMES = ['http', 'https', 'dns', 'dns-tcp', 'metrics', 'grpc', 'admin', '80-80', 'web', 'p8080'];
const SERVICE_NAMES = ['web', 'api', 'db', 'cache', 'kube-dns', 'nginx', 'frontend', 'backend'];
const NAMESPACES = ['default', 'kube-system', 'prod', 'team-a'];
const CLUSTER_CIDRS = ['10.64.0.0/16', '10.42.0.0/24', '10.244.0.0/16'];
/** one range holds the node addresses (172.16.0.0/16): the LB IPs are then admitted as sources too */
const SOURCE_RANGES = ['203.0.113.0/25', '198.51.100.0/24', '172.16.0.0/16', '192.0.2.128/25'];

interface PortShape {
  protocol: ProtocolName;
  port: number;
  nodePort: boolean;
  targetPort: number | null;
}

type EndpointState = 'ready' | 'servingTerminating' | 'terminating' | 'notReady';

interface EndpointShape {
  pod: number;
  state: EndpointState;
  nodeLocal: boolean;
  /** per service port: port number, or 0 = the endpoint does not carry that port */
  ports: number[];
}

interface ServiceShape {
  namespace: string;
  name: string;
  ports: PortShape[];
  portNames: string[];
  externalIPs: number;
  lbIPs: number;
  sourceRanges: string[];
  affinity: number | null;
  explicitAffinityTimeout: boolean;
  eTPLocal: boolean;
  iTPLocal: boolean;
  endpoints: EndpointShape[];
  portsMap: boolean;
}

const portShape: fc.Arbitrary<PortShape> = fc.record({
  protocol: fc.constantFrom(...PROTOCOLS),
  port: fc.oneof(fc.constantFrom(53, 80, 443, 8080, 9153), fc.integer({ min: 1, max: 65535 })),
  nodePort: fc.boolean(),
  targetPort: fc.option(fc.integer({ min: 1, max: 65535 }), { freq: 2 }),
});

function endpointShape(nports: number): fc.Arbitrary<EndpointShape> {
  return fc.record({
    pod: fc.integer({ min: 0, max: 15 }),
    state: fc.constantFrom<EndpointState>('ready', 'ready', 'ready', 'servingTerminating', 'terminating', 'notReady'),
    nodeLocal: fc.boolean(),
    ports: fc.array(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 1, max: 65535 }) }, { weight: 1, arbitrary: fc.constant(0) }), {
      minLength: nports,
      maxLength: nports,
    }),
  });
}

function serviceShape(maxEndpoints: number): fc.Arbitrary<ServiceShape> {
  return fc
    .array(portShape, { minLength: 1, maxLength: 3 })
    .map((ports) => {
      const seen = new Set<string>();
      return ports.filter((p) => {
        const k = `${p.protocol}/${p.port}`;
        if (seen.has(k)) return false;
        seen.add(k);
        return true;
      });
    })
    .chain((ports) =>
      fc.record({
        namespace: fc.constantFrom(...NAMESPACES),
        name: fc.constantFrom(...SERVICE_NAMES),
        ports: fc.constant(ports),
        portNames: fc
          .shuffledSubarray(PORT_NAMES, { minLength: ports.length, maxLength: ports.length })
          .chain((names) => (ports.length === 1 ? fc.constantFrom(names, ['']) : fc.constant(names))),
        externalIPs: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 }) }),
        lbIPs: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 }) }),
        sourceRanges: fc.oneof({ weight: 1, arbitrary: fc.constant([] as string[]) }, { weight: 1, arbitrary: fc.shuffledSubarray(SOURCE_RANGES, { minLength: 1, maxLength: 2 }) }),
        affinity: fc.option(fc.oneof(fc.constant(10800), fc.integer({ min: 1, max: 86400 })), { freq: 3 }),
        explicitAffinityTimeout: fc.boolean(),
        eTPLocal: fc.boolean(),
        iTPLocal: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
        endpoints: fc.uniqueArray(endpointShape(ports.length), { maxLength: maxEndpoints, selector: (e) => e.pod }),
        portsMap: fc.boolean(),
      }),
    );
}

function endpointFlags(state: EndpointState): Pick<Endpoint, 'ready' | 'serving' | 'terminating'> {
  switch (state) {
    case 'ready':
      return {};
    case 'servingTerminating':
      return { ready: false, serving: true, terminating: true };
    case 'terminating':
      return { ready: false, serving: false, terminating: true };
    case 'notReady':
      return { ready: false };
  }
}

/** An IPv4 address's IPv6 twin in a /96 of `prefix` ("fd00:10:96::" + the address's low 32 bits). */
function twin6(prefix: string, v4: string): string {
  const a = parseIPv4(v4);
  return `${prefix}${(a >>> 16).toString(16)}:${(a & 0xffff).toString(16)}`;
}

/** Turn an IPv4 rule set into a dual-stack one: families[i] says what service i becomes. */
function dualStack(rs: RuleSet, families: number[]): void {
  rs.node.addresses.push(twin6('fd00:172:16::', rs.node.addresses[0]));
  rs.node.clusterCIDR = rs.node.clusterCIDR ? `${rs.node.clusterCIDR},fd00:10:200::/64` : 'fd00:10:200::/64';
  rs.services.forEach((svc, i) => {
    const mode = families[i % families.length];
    if (mode === 0) return;
    const v4 = svc.clusterIP!;
    const v6 = twin6('fd00:10:96::', v4);
    const eps4 = svc.endpoints ?? [];
    const eps6 = eps4.map((e) => ({ ...e, address: twin6('fd00:10:200::', e.address) }));
    const ext6 = (l: string[] | undefined) => l?.map((a) => twin6('2001:db8:99::', a));
    if (mode === 3) {
      svc.clusterIP = v6;
      svc.ipFamilies = ['IPv6'];
      svc.endpoints = eps6;
      if (svc.externalIPs) svc.externalIPs = ext6(svc.externalIPs);
      if (svc.loadBalancerIPs) svc.loadBalancerIPs = ext6(svc.loadBalancerIPs);
      if (svc.loadBalancerSourceRanges) svc.loadBalancerSourceRanges = ['2001:db8::/32', 'fd00:172:16::/64'].slice(0, svc.loadBalancerSourceRanges.length);
      return;
    }
    svc.ipFamilyPolicy = i % 2 === 0 ? 'RequireDualStack' : 'PreferDualStack';
    svc.ipFamilies = mode === 1 ? ['IPv4', 'IPv6'] : ['IPv6', 'IPv4'];
    svc.clusterIPs = mode === 1 ? [v4, v6] : [v6, v4];
    svc.clusterIP = svc.clusterIPs[0];
    svc.endpoints = [...eps4, ...eps6];
    if (svc.externalIPs) svc.externalIPs = [...svc.externalIPs, ...ext6(svc.externalIPs)!];
  });
}

/** A random valid rule set. */
export function arbRuleSet(opts: RuleSetArbOptions = {}): fc.Arbitrary<RuleSet> {
  const minServices = opts.minServices ?? 1;
  const maxServices = opts.maxServices ?? 6;
  const maxEndpoints = opts.maxEndpoints ?? 4;
  return fc
    .record({
      services: fc.array(serviceShape(maxEndpoints), { minLength: minServices, maxLength: maxServices }),
      nodeAddrs: fc.uniqueArray(fc.integer({ min: 1, max: 0xfffe }), { minLength: 1, maxLength: 2 }),
      clusterCIDR: fc.option(fc.constantFrom(...CLUSTER_CIDRS), { freq: 5 }),
      masqueradeAll: fc.oneof({ weight: 7, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      mark: fc.constantFrom(undefined, undefined, undefined, '0x4000', '0x1000'),
      clusterIPs: fc.uniqueArray(fc.integer({ min: 1, max: 0xfffe }), { minLength: maxServices, maxLength: maxServices }),
      externalPool: fc.uniqueArray(fc.integer({ min: 1, max: 254 }), { minLength: 2 * maxServices, maxLength: 2 * maxServices }),
      lbPool: fc.uniqueArray(fc.integer({ min: 1, max: 0xfffe }), { minLength: 2 * maxServices, maxLength: 2 * maxServices }),
      podPool: fc.uniqueArray(fc.integer({ min: 2, max: 250 }), { minLength: 16, maxLength: 16 }),
      nodePortPool: fc.uniqueArray(fc.integer({ min: 30000, max: 32767 }), { minLength: 3 * maxServices, maxLength: 3 * maxServices }),
      // 0 IPv4 only, 1 dual-stack IPv4 primary, 2 dual-stack IPv6 primary, 3 IPv6 only (used with opts.dualStack)
      families: fc.array(fc.integer({ min: 0, max: 3 }), { minLength: maxServices, maxLength: maxServices }),
    })
    .map((g) => {
      const cidr = g.clusterCIDR;
      const podBase = parseCidr(cidr ?? '10.200.0.0/16')!.net;
      const podSpan = cidr === '10.42.0.0/24' ? 1 : 4;
      const podAddr = (i: number) => formatIPv4(podBase + (i % podSpan) * 256 + g.podPool[i]);
      const nodeAddresses = g.nodeAddrs.map((n) => formatIPv4(parseIPv4('172.16.0.0') + n));
      const nodePortCursor: Record<string, number> = { TCP: 0, UDP: 0, SCTP: 0 };
      let ext = 0;
      let lb = 0;
      const names = new Set<string>();
      const services: Service[] = g.services.map((s, i) => {
        let name = s.name;
        for (let k = 2; names.has(`${s.namespace}/${name}`); k++) name = `${s.name}-${k}`;
        names.add(`${s.namespace}/${name}`);
        const ports: ServicePort[] = s.ports.map((p, j) => {
          const sp: ServicePort = { name: s.portNames[j], protocol: p.protocol, port: p.port };
          if (p.nodePort) sp.nodePort = g.nodePortPool[nodePortCursor[p.protocol]++];
          if (p.targetPort !== null) sp.targetPort = p.targetPort;
          return sp;
        });
        const svc: Service = {
          namespace: s.namespace,
          name,
          clusterIP: formatIPv4(parseIPv4('10.96.0.0') + g.clusterIPs[i]),
          ports,
        };
        if (s.externalIPs > 0) {
          svc.externalIPs = [];
          for (let k = 0; k < s.externalIPs; k++) svc.externalIPs.push(formatIPv4(parseIPv4('192.168.99.0') + g.externalPool[ext++]));
        }
        if (s.lbIPs > 0) {
          svc.loadBalancerIPs = [];
          for (let k = 0; k < s.lbIPs; k++) svc.loadBalancerIPs.push(formatIPv4(parseIPv4('100.64.0.0') + g.lbPool[lb++]));
          if (s.sourceRanges.length > 0) svc.loadBalancerSourceRanges = s.sourceRanges;
        }
        if (s.affinity !== null) {
          svc.sessionAffinity = 'ClientIP';
          if (s.affinity !== 10800 || s.explicitAffinityTimeout) svc.sessionAffinityTimeoutSeconds = s.affinity;
        }
        if (s.eTPLocal) svc.externalTrafficPolicy = 'Local';
        if (s.iTPLocal) svc.internalTrafficPolicy = 'Local';
        svc.endpoints = s.endpoints.map((e) => {
          const ep: Endpoint = { address: podAddr(e.pod), ...endpointFlags(e.state) };
          if (e.nodeLocal) ep.nodeLocal = true;
          if (s.portsMap) {
            ep.ports = {};
            ports.forEach((p, j) => {
              if (e.ports[j] !== 0) ep.ports![p.name] = e.ports[j];
            });
          }
          return ep;
        });
        return svc;
      });
      const rs: RuleSet = { apiVersion: API_VERSION, node: { addresses: nodeAddresses }, services };
      if (cidr !== null) rs.node.clusterCIDR = cidr;
      if (opts.dualStack) dualStack(rs, g.families);
      if (g.masqueradeAll) rs.node.masqueradeAll = true;
      if (g.mark !== undefined) rs.node.masqueradeMark = g.mark;
      return rs;
    });
}

interface Destination {
  dst: number;
  dport: number;
  proto: number;
}

/** The IPv4 ones among addresses or CIDRs (packetFor aims IPv4 packets; IPv6 ones are the dual-stack tests' own) */
const v4 = (l: readonly string[]): string[] => l.filter((a) => !a.includes(':'));
/** the service's IPv4 ClusterIP, if any */
const clusterIP4 = (svc: Service): string | null => v4(svc.clusterIPs ?? (svc.clusterIP && svc.clusterIP !== 'None' ? [svc.clusterIP] : []))[0] ?? null;

function destinations(rs: RuleSet): Destination[] {
  const out: Destination[] = [];
  for (const svc of rs.services) {
    for (const p of svc.ports) {
      const proto = protocolNumber(p.protocol);
      const cip = clusterIP4(svc);
      if (cip !== null) out.push({ dst: parseIPv4(cip), dport: p.port, proto });
      for (const ip of v4(svc.externalIPs ?? [])) out.push({ dst: parseIPv4(ip), dport: p.port, proto });
      for (const ip of v4(svc.loadBalancerIPs ?? [])) out.push({ dst: parseIPv4(ip), dport: p.port, proto });
      if (p.nodePort) for (const a of v4(rs.node.addresses)) out.push({ dst: parseIPv4(a), dport: p.nodePort, proto });
    }
  }
  return out;
}

function addrIn(cidr: string): fc.Arbitrary<number> {
  const c = parseCidr(cidr)!;
  const size = 2 ** (32 - c.bits);
  return fc.integer({ min: 0, max: size - 1 }).map((k) => (c.net + k) >>> 0);
}

function sources(rs: RuleSet): fc.Arbitrary<number> {
  const choices: fc.WeightedArbitrary<number>[] = [];
  const cidr = v4((rs.node.clusterCIDR ?? '').split(','))[0];
  if (cidr) choices.push({ weight: 3, arbitrary: addrIn(cidr) });
  choices.push({ weight: 3, arbitrary: addrIn('198.18.0.0/15') });
  choices.push({ weight: 2, arbitrary: fc.constantFrom(...v4(rs.node.addresses).map(parseIPv4)) });
  const endpoints = rs.services.flatMap((s) => v4((s.endpoints ?? []).map((e) => e.address)).map(parseIPv4));
  if (endpoints.length > 0) choices.push({ weight: 2, arbitrary: fc.constantFrom(...endpoints) });
  const ranges = [...new Set(rs.services.flatMap((s) => v4(s.loadBalancerSourceRanges ?? [])))];
  if (ranges.length > 0) choices.push({ weight: 2, arbitrary: fc.constantFrom(...ranges).chain(addrIn) });
  const lbs = rs.services.flatMap((s) => v4(s.loadBalancerIPs ?? [])).map(parseIPv4);
  if (lbs.length > 0) choices.push({ weight: 1, arbitrary: fc.constantFrom(...lbs) });
  choices.push({ weight: 1, arbitrary: fc.integer({ min: 0x01000000, max: 0xdfffffff }) });
  return fc.oneof(...choices);
}

/** Packets for `rs`: mostly hits on its VIPs and NodePorts, sometimes misses. */
export function packetFor(rs: RuleSet): fc.Arbitrary<PacketTuple> {
  const dsts = destinations(rs);
  const protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP];
  const dest: fc.WeightedArbitrary<Destination>[] = [
    // a random destination (nearly always a miss)
    {
      weight: 1,
      arbitrary: fc.record({ dst: fc.integer({ min: 0x0a600000, max: 0x0a60ffff }), dport: fc.integer({ min: 1, max: 65535 }), proto: fc.constantFrom(...protos) }),
    },
  ];
  if (dsts.length > 0) {
    dest.push({ weight: 6, arbitrary: fc.constantFrom(...dsts) });
    // right address, another port or protocol
    dest.push({
      weight: 1,
      arbitrary: fc.tuple(fc.constantFrom(...dsts), fc.integer({ min: 1, max: 65535 }), fc.constantFrom(...protos), fc.boolean()).map(([d, port, proto, changePort]) =>
        changePort ? { ...d, dport: port } : { ...d, proto },
      ),
    });
  }
  return fc.record({
    d: fc.oneof(...dest),
    src: sources(rs),
    sport: fc.integer({ min: 1024, max: 65535 }),
  }).map(({ d, src, sport }) => ({ proto: d.proto, src, dst: d.dst, sport, dport: d.dport }));
}

/** A rule set with `n` packets for it. */
export function arbRuleSetWithPackets(n: number, opts: RuleSetArbOptions = {}): fc.Arbitrary<{ rs: RuleSet; packets: PacketTuple[] }> {
  return arbRuleSet(opts).chain((rs) => fc.record({ rs: fc.constant(rs), packets: fc.array(packetFor(rs), { minLength: n, maxLength: n }) }));
}

/**
 * One step of a random sequence of changes, `[at, from, kind]`: kind 0 gives
 * the service at `at` the endpoints of the donor's service `from`, 1 adds
 * the donor's service (renamed), 2 removes the service at `at`, 3 puts the
 * donor's services in place of all. (With no service, kinds 0 and 2 do 3.)
 */
export function changeServices(cur: RuleSet, donor: RuleSet, [at, from, kind]: readonly [number, number, number]): RuleSet {
  let services = cur.services.slice();
  const pick = donor.services[from % donor.services.length];
  const i = at % Math.max(1, services.length);
  if (kind === 0 && services.length > 0) services[i] = { ...services[i], endpoints: pick.endpoints };
  else if (kind === 1) services.push({ ...pick, name: `${pick.name}-${at % 1000}` });
  else if (kind === 2 && services.length > 0) services.splice(i, 1);
  else services = donor.services.slice(); // a whole other rule set
  return { ...cur, services };
}
