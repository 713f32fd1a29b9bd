/**
 * The lab: a self-contained set of network namespaces, all named
 * `${prefix}-...`, built from a rule set, in which tunproxy (or the C
 * forwarder) runs as a node's Service dataplane. Nothing is added to the root
 * namespace: veth pairs are created inside the namespaces.
 *
 *   client (${prefix}-client)            node (${prefix}-node)                   pods (${prefix}-pod-10-64-1-13, ...)
 *   eth0 192.168.77.2/24  ─────veth───── veth-client 192.168.77.1/24
 *   default via 192.168.77.1             tun0 (persistent TUN, mtu 1500)
 *                                        vp0  10.64.1.1/32 ─────veth──────────── eth0 10.64.1.13/32
 *                                             route 10.64.1.13/32 dev vp0          route 10.64.1.1 dev eth0
 *                                                   src 192.168.77.1               default via 10.64.1.1
 *   (192.168.77.1 = node.addresses[0]; 10.64.1.1 = the masquerade address: node.masqueradeAddress, else
 *    the first node address inside clusterCIDR, else node.addresses[0]; other node addresses go on lo)
 *
 * Node namespace routing (what sends packets into the TUN):
 *   main table     every ClusterIP, external IP, load-balancer IP /32 (or serviceCIDRs) dev tun0
 *   table 100      default dev tun0
 *   rule pref 1    iif tun0 goto 100                       (written back by the dataplane: local/main)
 *   rule pref 50   to <node address> ipproto tcp|udp dport <NodePort range> lookup 100
 *   rule pref 51   to <external/LB IP that is a node address> ipproto P dport <port> lookup 100
 *   rule pref 55   iif veth-client goto 100                (the client's other packets: local/main)
 *   rule pref 58   to <node address other than the masquerade address> lookup local
 *                  (the node's own traffic with its pods, sourced from that address, bypasses the TUN)
 *   rule pref 60   iif vp<i> goto 70                       (one per pod)
 *   rule pref 65   goto 100                                (not from a pod: local/main)
 *   rule pref 70   ipproto tcp|udp|icmp|sctp lookup 100    (the pods' IP traffic: replies to un-NAT,
 *                  pod -> service, pod -> anywhere; ARP's lookups, protocol 0, fall through to local)
 *   rule pref 100  lookup local                            (moved from pref 0, behind the rules above)
 *   sysctls        ip_forward=1, rp_filter=0, tun0 accept_local=1 (written-back packets may come
 *                  from the node's own masquerade or NodePort address)
 * Dual-stack: when node.addresses holds an IPv6 address, the lab is built in
 * both families. The same links carry IPv6 (the node's first IPv6 address on
 * veth-client/64, the client ::2 of that /64 by default, every IPv6 endpoint a
 * pod namespace of its own, linked to the IPv6 masquerade address /128 like the
 * IPv4 pods), IPv6 service addresses /128 dev tun0, and the same rules with
 * `ip -6 rule`, but for one difference: pref 70 sends the pods' TCP, UDP and
 * SCTP into the TUN and not ICMPv6, whose neighbour discovery must stay on the
 * pod's link (an ICMPv6 error from a pod to a masqueraded client is therefore
 * not un-NATed in the lab). DAD and router solicitations are off; the TUN has
 * no IPv6 link-local address (addrgenmode none), so the kernel sends nothing
 * of its own into it.
 * A packet the dataplane writes back is routed by the local and main tables
 * only (pref 1). Since every IP packet from a pod enters the TUN, the dataplane
 * must write back, unchanged, every packet that is neither a service packet
 * nor part of a tracked connection (pod -> client, pod -> pod), or that
 * traffic is lost.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cidrContains, formatIPv4, parseCidr, parseIPv4 } from '../dataplane/addr.ts';
import { looksIPv6, parseIPv6, formatIPv6, parseCidr6, cidr6Contains, canonicalIPv6 } from '../dataplane/addr6.ts';
import type { Cidr } from '../dataplane/addr.ts';
import type { RuleSet } from '../control/types.ts';
import {
  addNetns,
  deleteNetns,
  ip,
  ipBatch,
  listNetns,
  netnsPids,
  nsExec,
  nsRun,
  nsSpawn,
  nsSysctl,
} from './ns.ts';
import type { ExecResult, RunOptions } from './ns.ts';
import { formatListen } from './pod-server.ts';
import type { PodListen } from './pod-server.ts';

export const DEFAULT_STATE_DIR = '/run/tunproxy-lab';
/** the policy-routing table whose default route is the TUN */
export const TUN_TABLE = 100;
export const CLIENT_VETH = 'veth-client';
/** the IP protocols (numbers) sent from the pods into the TUN: TCP, UDP, ICMP, SCTP */
const POD_PROTOCOLS = [6, 17, 1, 132];
const POD_SERVER = fileURLToPath(new URL('./pod-server.ts', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../', import.meta.url));

export interface LabOptions {
  /** every namespace is named `${prefix}-...`; must start with "tp-" */
  prefix: string;
  ruleSet: RuleSet;
  /** the TUN device in the node namespace (default "tun0") */
  tunName?: string;
  /** create the TUN with multi_queue (then open every queue with multiQueue) */
  multiQueue?: boolean;
  /** the client's address (default: the first free host of the node's /clientPrefixLength, from .2) */
  clientAddress?: string;
  /** prefix length of the client/node link (default 24) */
  clientPrefixLength?: number;
  /** the client's IPv6 address in a dual-stack lab (default: ::2 of the node's first IPv6 address's /64, or the next free) */
  clientAddress6?: string;
  /** also build a "client pod" in the cluster CIDR that is no endpoint (true: pick its address) */
  clientPod?: boolean | string;
  /** route these CIDRs into the TUN instead of each service address inside them */
  serviceCIDRs?: string[];
  /** start the pod servers (default true) */
  podServers?: boolean;
  /** where the state file and pod-server logs go (default /run/tunproxy-lab) */
  stateDir?: string;
}

export interface LabPod {
  ns: string;
  address: string;
  /** the node-side veth of this pod (in the node namespace) */
  nodeVeth: string;
  /** what the pod server listens on */
  listens: PodListen[];
  /** PID of the pod server, when started */
  pid?: number;
}

export interface Lab {
  prefix: string;
  tunName: string;
  /** client, node, the pods, the client pod: every namespace of the lab */
  namespaces: string[];
  client: {
    ns: string;
    address: string;
    nodeAddress: string;
    /** dual-stack: the client's IPv6 address (null in an IPv4 lab) */
    address6: string | null;
    /** dual-stack: the node's IPv6 address on the client link */
    nodeAddress6: string | null;
  };
  node: {
    ns: string;
    /** the node's IPv4 addresses */
    addresses: string[];
    /** the node's IPv6 addresses (empty in an IPv4 lab) */
    addresses6: string[];
    masqueradeAddress: string;
    /** dual-stack: the IPv6 masquerade address (the pods' IPv6 gateway), else null */
    masqueradeAddress6: string | null;
    clientVeth: string;
    nodePortRange: [number, number];
    /** the destinations routed into the TUN by the main table */
    serviceRoutes: string[];
  };
  pods: LabPod[];
  clientPod?: { ns: string; address: string; nodeVeth: string };
  serverPids: number[];
  /** run argv inside ns; resolves with its result (never rejects on a non-zero exit) */
  exec(ns: string, argv: string[], opts?: { input?: string; timeoutMs?: number }): Promise<ExecResult>;
  /** run argv inside ns synchronously; throws when it fails; returns stdout */
  run(ns: string, argv: string[], opts?: RunOptions): string;
  spawn(ns: string, argv: string[], opts?: SpawnOptions): ChildProcess;
  /** the pod namespace of an endpoint address */
  podFor(address: string): LabPod;
  down(): Promise<LabDownResult>;
}

interface LabState {
  prefix: string;
  namespaces: string[];
  servers: { pid: number; ns: string }[];
  createdAt: string;
}

// ------------------------------------------------------------------ reading the rule set

function addr(text: string, what: string): number {
  const a = parseIPv4(text);
  if (a < 0) throw new Error(`lab: ${what} "${text}" is not an IPv4 address`);
  return a;
}

/** An address of either family, checked; IPv6 comes back in canonical form. */
function anyAddr(text: string, what: string): string {
  if (!looksIPv6(text)) return (addr(text, what), text);
  const c = canonicalIPv6(text);
  if (c === null) throw new Error(`lab: ${what} "${text}" is not an IPv6 address`);
  return c;
}

/** the IPv4 (or IPv6) parts of a value or a dual-stack pair "IPv4,IPv6" */
const partOf = (text: string | undefined, v6: boolean): string | undefined => text?.split(',').map((x) => x.trim()).find((x) => looksIPv6(x) === v6);

function parseRange(text: string | undefined): [number, number] {
  const m = /^(\d+)-(\d+)$/.exec(text ?? '30000-32767');
  const lo = m ? Number(m[1]) : NaN;
  const hi = m ? Number(m[2]) : NaN;
  if (!m || lo < 1 || hi > 65535 || lo > hi) throw new Error(`lab: node.nodePortRange "${text}" is not LOW-HIGH within 1-65535`);
  return [lo, hi];
}

/** node.masqueradeAddress, else the first node address inside clusterCIDR, else node.addresses[0] (control/types.ts). */
export function masqueradeAddressOf(rs: RuleSet): string {
  const given = partOf(rs.node.masqueradeAddress, false);
  if (given) return given;
  const cidrText = partOf(rs.node.clusterCIDR, false);
  const cidr = cidrText ? parseCidr(cidrText) : null;
  const inside = cidr && rs.node.addresses.find((a) => parseIPv4(a) >= 0 && cidrContains(cidr, parseIPv4(a)));
  return inside || rs.node.addresses.find((a) => !looksIPv6(a)) || rs.node.addresses[0];
}

/** The IPv6 masquerade address, as control/model.ts picks it (the IPv6 part of masqueradeAddress, else the first IPv6 node address inside the IPv6 clusterCIDR, else the first IPv6 node address), or null. */
export function masqueradeAddress6Of(rs: RuleSet): string | null {
  const given = partOf(rs.node.masqueradeAddress, true);
  if (given) return canonicalIPv6(given);
  const cidrText = partOf(rs.node.clusterCIDR, true);
  const cidr = cidrText ? parseCidr6(cidrText) : null;
  const six = rs.node.addresses.filter(looksIPv6);
  const inside = cidr && six.find((a) => cidr6Contains(cidr, parseIPv6(a)!));
  const pick = inside || six[0];
  return pick ? canonicalIPv6(pick) : null;
}

/** The servers each endpoint address needs: TCP ports serve HTTP, UDP ports named like dns answer DNS, others echo. */
export function podListens(rs: RuleSet): Map<string, PodListen[]> {
  const out = new Map<string, Map<string, PodListen>>();
  for (const svc of rs.services) {
    for (const ep of svc.endpoints ?? []) {
      const address = anyAddr(ep.address, `endpoint address of ${svc.namespace}/${svc.name}`);
      const byPort = out.get(address) ?? new Map<string, PodListen>();
      out.set(address, byPort);
      for (const sp of svc.ports) {
        const port =
          ep.ports?.[sp.name] ??
          (typeof sp.targetPort === 'number' ? sp.targetPort : sp.targetPort === undefined ? sp.port : undefined);
        if (port === undefined || sp.protocol === 'SCTP') continue; // named targetPort unknown here; no SCTP in Node
        const dns = sp.protocol === 'UDP' && (/dns/i.test(sp.name) || port === 53);
        const kind = sp.protocol === 'TCP' ? 'http' : dns ? 'dns' : 'echo';
        const key = `${sp.protocol}:${port}`;
        if (!byPort.has(key) || kind === 'dns') byPort.set(key, { protocol: sp.protocol, port, kind });
      }
    }
  }
  return new Map([...out].map(([a, m]) => [a, [...m.values()]]));
}

/** Name of the pod namespace of an address: `${prefix}-pod-10-64-1-13`. */
export function podNamespace(prefix: string, address: string): string {
  return `${prefix}-pod-${address.replaceAll('.', '-').replaceAll(':', '-')}`;
}

function stateFile(stateDir: string, prefix: string): string {
  return join(stateDir, `${prefix}.json`);
}

function checkPrefix(prefix: string): void {
  if (!/^tp-[A-Za-z0-9-]{1,40}$/.test(prefix))
    throw new Error(`lab: prefix "${prefix}" must start with "tp-" and hold only letters, digits and "-" (at most 43 characters)`);
}

// ------------------------------------------------------------------ up

export async function labUp(opts: LabOptions): Promise<Lab> {
  const { prefix, ruleSet: rs } = opts;
  checkPrefix(prefix);
  const tunName = opts.tunName ?? 'tun0';
  if (tunName.length > 15 || !/^[\w.-]+$/.test(tunName)) throw new Error(`lab: tunName "${tunName}" is not a valid interface name (at most 15 characters)`);
  const stateDir = opts.stateDir ?? DEFAULT_STATE_DIR;
  if (!rs?.node?.addresses?.length) throw new Error('lab: ruleSet.node.addresses must hold at least one address (the client-facing one first)');

  // --- everything derived from the rule set, checked before anything is built
  const allNodeAddresses = rs.node.addresses.map((a) => anyAddr(a, 'node address'));
  const nodeAddresses = allNodeAddresses.filter((a) => !looksIPv6(a));
  const nodeAddresses6 = allNodeAddresses.filter(looksIPv6);
  if (nodeAddresses.length === 0) throw new Error('lab: ruleSet.node.addresses must hold an IPv4 address (the client-facing one, first)');
  const nodeAddress = nodeAddresses[0];
  const masq = masqueradeAddressOf(rs);
  addr(masq, 'node.masqueradeAddress');
  // dual-stack: the node's first IPv6 address faces the client; the IPv6 pods hang off the IPv6 masquerade address
  const dual = nodeAddresses6.length > 0;
  const nodeAddress6 = dual ? nodeAddresses6[0] : null;
  const masq6 = dual ? masqueradeAddress6Of(rs) : null;
  const plen = opts.clientPrefixLength ?? 24;
  const clientNet = parseCidr(`${nodeAddress}/${plen}`);
  if (!clientNet || plen < 8 || plen > 30) throw new Error(`lab: clientPrefixLength ${plen} must be within 8..30`);
  const nodePortRange = parseRange(rs.node.nodePortRange);
  const listens = podListens(rs);
  const nodeSet = new Set(allNodeAddresses);
  const podAddresses = [...listens.keys()].filter((a) => !nodeSet.has(a) && a !== masq && a !== masq6);
  if (!dual && podAddresses.some(looksIPv6)) throw new Error('lab: an endpoint is IPv6 but node.addresses has no IPv6 address (a dual-stack lab needs one)');
  let clientAddress6: string | null = null;
  if (nodeAddress6 !== null) {
    const used6 = new Set([...nodeSet, ...podAddresses, masq6]);
    clientAddress6 = opts.clientAddress6 ? anyAddr(opts.clientAddress6, 'clientAddress6') : firstFree6(nodeAddress6, used6);
  }
  const clientAddress = opts.clientAddress ?? firstFree(clientNet, new Set([...nodeSet, ...podAddresses]));
  addr(clientAddress, 'clientAddress');
  if (!cidrContains(clientNet, parseIPv4(clientAddress))) throw new Error(`lab: clientAddress ${clientAddress} is not inside ${nodeAddress}/${plen}`);
  const serviceCidrs = (opts.serviceCIDRs ?? []).map((c) => {
    const p = parseCidr(c);
    if (!p) throw new Error(`lab: serviceCIDRs entry "${c}" is not a CIDR`);
    return p;
  });
  const routed = new Set<string>(serviceCidrs.map((c) => `${formatIPv4(c.net)}/${c.bits}`));
  const routed6 = new Set<string>();
  const localServicePorts: { address: string; protocol: string; port: number }[] = [];
  const inClientNet: string[] = [];
  for (const svc of rs.services) {
    const vips = [
      ...(svc.clusterIPs ?? (svc.clusterIP ? [svc.clusterIP] : [])).filter((c) => c !== 'None'),
      ...(svc.externalIPs ?? []),
      ...(svc.loadBalancerIPs ?? []),
    ].map((v) => anyAddr(v, `service address of ${svc.namespace}/${svc.name}`));
    for (const v of vips) {
      if (looksIPv6(v)) {
        if (!dual) throw new Error(`lab: ${svc.namespace}/${svc.name} has the IPv6 address ${v} but node.addresses has no IPv6 address`);
        if (nodeSet.has(v)) for (const sp of svc.ports) localServicePorts.push({ address: v, protocol: sp.protocol.toLowerCase(), port: sp.port });
        else routed6.add(`${v}/128`);
        continue;
      }
      const a = addr(v, `service address of ${svc.namespace}/${svc.name}`);
      if (nodeSet.has(v)) {
        // an external/LB IP that is a node address: only its ports go to the TUN
        for (const sp of svc.ports) localServicePorts.push({ address: v, protocol: sp.protocol.toLowerCase(), port: sp.port });
        continue;
      }
      if (cidrContains(clientNet, a)) inClientNet.push(v);
      if (!serviceCidrs.some((c) => cidrContains(c, a))) routed.add(`${v}/32`);
    }
  }
  const nodePortProtocols = new Set<string>();
  for (const svc of rs.services) for (const sp of svc.ports) if (sp.nodePort) nodePortProtocols.add(sp.protocol.toLowerCase());
  if (nodePortProtocols.size === 0) nodePortProtocols.add('tcp').add('udp');

  const clientNs = `${prefix}-client`;
  const nodeNs = `${prefix}-node`;
  const pods: LabPod[] = podAddresses.map((a, i) => ({
    ns: podNamespace(prefix, a),
    address: a,
    nodeVeth: `vp${i}`,
    listens: listens.get(a) ?? [],
  }));
  let clientPod: Lab['clientPod'];
  if (opts.clientPod) {
    const cidr = rs.node.clusterCIDR ? parseCidr(rs.node.clusterCIDR) : null;
    const used = new Set([...nodeSet, masq, ...podAddresses, clientAddress]);
    const a = typeof opts.clientPod === 'string' ? opts.clientPod : pickClientPod(masq, cidr, used);
    addr(a, 'clientPod address');
    if (used.has(a)) throw new Error(`lab: clientPod address ${a} is already used in the lab`);
    clientPod = { ns: `${prefix}-cpod`, address: a, nodeVeth: 'vcpod' };
  }
  const namespaces = [clientNs, nodeNs, ...pods.map((p) => p.ns), ...(clientPod ? [clientPod.ns] : [])];

  // --- idempotent: whatever had this prefix goes first
  await labDown(prefix, { stateDir });
  const state: LabState = { prefix, namespaces, servers: [], createdAt: new Date().toISOString() };
  mkdirSync(join(stateDir, prefix), { recursive: true });
  writeFileSync(stateFile(stateDir, prefix), JSON.stringify(state, null, 2));

  try {
    for (const ns of namespaces) addNetns(ns);
    if (dual) for (const ns of namespaces) nsSysctl(ns, IPV6_ON);
    if (dual) nsSysctl(nodeNs, { 'net.ipv6.conf.all.forwarding': 1 });
    const node6Lines: string[] = [];
    const rule6Lines: string[] = [];

    // node: sysctls first, so the devices created below inherit them
    nsSysctl(nodeNs, {
      'net.ipv4.ip_forward': 1,
      'net.ipv4.conf.all.rp_filter': 0,
      'net.ipv4.conf.default.rp_filter': 0,
      'net.ipv4.conf.default.accept_local': 1,
    });

    // client <-> node
    ip(['-n', nodeNs, 'link', 'add', CLIENT_VETH, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', clientNs]);
    const nodeLines = [
      `addr add ${nodeAddress}/${plen} dev ${CLIENT_VETH}`,
      `link set ${CLIENT_VETH} up`,
      ...nodeAddresses.slice(1).map((a) => `addr add ${a}/32 dev lo`),
    ];
    ipBatch(clientNs, [
      `addr add ${clientAddress}/${plen} dev eth0`,
      'link set eth0 up',
      `route add default via ${nodeAddress} dev eth0`,
      // service addresses inside the client's own subnet would be ARPed for: send them to the node
      ...inClientNet.map((v) => `route add ${v}/32 via ${nodeAddress} dev eth0`),
    ]);
    if (dual) {
      ipBatch(clientNs, [`addr add ${clientAddress6}/64 dev eth0 nodad`, `route add default via ${nodeAddress6} dev eth0`], 6);
      node6Lines.push(`addr add ${nodeAddress6}/64 dev ${CLIENT_VETH} nodad`, ...nodeAddresses6.slice(1).map((a) => `addr add ${a}/128 dev lo nodad`));
    }

    // the TUN (persistent, up without a reader: tunproxy attaches by name)
    ip(['-n', nodeNs, 'tuntap', 'add', 'dev', tunName, 'mode', 'tun', ...(opts.multiQueue ? ['multi_queue'] : [])]);
    // (dual-stack: no IPv6 link-local on the TUN, so the kernel sends no MLD or router solicitation into it)
    if (dual) nodeLines.push(`link set ${tunName} addrgenmode none`);
    nodeLines.push(`link set ${tunName} mtu 1500 up`, `route add default dev ${tunName} table ${TUN_TABLE}`);
    if (dual) node6Lines.push(`route add default dev ${tunName} table ${TUN_TABLE}`);

    // pods (and the client pod): calico-style /32 links to the node's masquerade address
    // the source of the node's own packets to its pods: a node address that is not the masquerade address, so
    // that the pods' replies to it can be told from replies to masqueraded traffic (which go through the TUN)
    const nodeSource = nodeAddresses.find((a) => a !== masq) ?? masq;
    const nodeSource6 = nodeAddresses6.find((a) => a !== masq6) ?? masq6;
    const podLinks = [...pods.map((p) => ({ ns: p.ns, address: p.address, nodeVeth: p.nodeVeth })), ...(clientPod ? [clientPod] : [])];
    for (const p of podLinks) {
      ip(['-n', nodeNs, 'link', 'add', p.nodeVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', p.ns]);
      if (looksIPv6(p.address)) {
        nodeLines.push(`link set ${p.nodeVeth} up`);
        node6Lines.push(`addr add ${masq6}/128 dev ${p.nodeVeth} nodad`, `route add ${p.address}/128 dev ${p.nodeVeth} src ${nodeSource6}`);
        ipBatch(
          p.ns,
          ['link set eth0 up', `addr add ${p.address}/128 dev eth0 nodad`, `route add ${masq6}/128 dev eth0`, `route add default via ${masq6} dev eth0 src ${p.address}`],
          6,
        );
        continue;
      }
      nodeLines.push(
        `addr add ${masq}/32 dev ${p.nodeVeth}`,
        `link set ${p.nodeVeth} up`,
        `route add ${p.address}/32 dev ${p.nodeVeth} src ${nodeSource}`,
      );
      ipBatch(p.ns, [
        `addr add ${p.address}/32 dev eth0`,
        'link set eth0 up',
        `route add ${masq}/32 dev eth0 scope link`,
        `route add default via ${masq} dev eth0 src ${p.address}`,
      ]);
    }
    if (!podLinks.length && !nodeSet.has(masq)) nodeLines.push(`addr add ${masq}/32 dev lo`);
    if (dual && !podLinks.some((p) => looksIPv6(p.address)) && !nodeSet.has(masq6!)) node6Lines.push(`addr add ${masq6}/128 dev lo nodad`);

    // into the TUN: services by the main table, NodePorts and pod traffic by policy rules
    nodeLines.push(...[...routed].map((r) => `route add ${r} dev ${tunName}`));
    node6Lines.push(...[...routed6].map((r) => `route add ${r} dev ${tunName}`));
    // (the number of rules a packet walks stays constant in the number of pods but for one goto per pod)
    const range = `${nodePortRange[0]}-${nodePortRange[1]}`;
    nodeLines.push(
      'rule add pref 100 lookup local',
      // written back by the dataplane: routed by local/main only
      `rule add pref 1 iif ${tunName} goto 100`,
      // NodePorts on every node address, from the client, the pods and the node itself
      ...nodeAddresses.flatMap((a) =>
        [...nodePortProtocols].map((proto) => `rule add pref 50 to ${a}/32 ipproto ${proto} dport ${range} lookup ${TUN_TABLE}`),
      ),
      ...localServicePorts
        .filter((l) => l.protocol !== 'sctp' && !looksIPv6(l.address))
        .map((l) => `rule add pref 51 to ${l.address}/32 ipproto ${l.protocol} dport ${l.port} lookup ${TUN_TABLE}`),
      // the client's other packets: by local/main (services are in main)
      `rule add pref 55 iif ${CLIENT_VETH} goto 100`,
      // the node's own traffic with its pods (from a node address that is not the masquerade address) stays local
      ...nodeAddresses.filter((a) => a !== masq).map((a) => `rule add pref 58 to ${a}/32 lookup local`),
      // from a pod: on to pref 70; anything else: local/main
      ...podLinks.map((p) => `rule add pref 60 iif ${p.nodeVeth} goto 70`),
      'rule add pref 65 goto 100',
      // the pods' IP traffic into the TUN (TCP, UDP, ICMP, SCTP); ARP's route lookups (protocol 0) fall
      // through to the local table, so the node still answers ARP for the masquerade address
      ...POD_PROTOCOLS.map((proto) => `rule add pref 70 ipproto ${proto} lookup ${TUN_TABLE}`),
      'rule del pref 0 lookup local',
    );
    ipBatch(nodeNs, nodeLines);
    if (dual) {
      // the same rules in IPv6, but pref 70: the pods' TCP, UDP and SCTP, not ICMPv6 (neighbour discovery stays on the link)
      rule6Lines.push(
        'rule add pref 100 lookup local',
        `rule add pref 1 iif ${tunName} goto 100`,
        ...nodeAddresses6.flatMap((a) => [...nodePortProtocols].map((proto) => `rule add pref 50 to ${a}/128 ipproto ${proto} dport ${range} lookup ${TUN_TABLE}`)),
        ...localServicePorts
          .filter((l) => l.protocol !== 'sctp' && looksIPv6(l.address))
          .map((l) => `rule add pref 51 to ${l.address}/128 ipproto ${l.protocol} dport ${l.port} lookup ${TUN_TABLE}`),
        `rule add pref 55 iif ${CLIENT_VETH} goto 100`,
        ...nodeAddresses6.filter((a) => a !== masq6).map((a) => `rule add pref 58 to ${a}/128 lookup local`),
        ...podLinks.map((p) => `rule add pref 60 iif ${p.nodeVeth} goto 70`),
        'rule add pref 65 goto 100',
        ...POD_PROTOCOLS.filter((proto) => proto !== 1).map((proto) => `rule add pref 70 ipproto ${proto} lookup ${TUN_TABLE}`),
        'rule del pref 0 lookup local',
      );
      ipBatch(nodeNs, [...node6Lines, ...rule6Lines], 6);
    }
    nsSysctl(nodeNs, {
      [`net.ipv4.conf.${tunName}.accept_local`]: 1,
      [`net.ipv4.conf.${tunName}.rp_filter`]: 0,
    });

    // the real servers
    if (opts.podServers !== false) {
      const started = pods.filter((p) => p.listens.length).map((p) => startPodServer(p, join(stateDir, prefix)));
      for (const s of started) state.servers.push({ pid: s.pid, ns: s.pod.ns });
      writeFileSync(stateFile(stateDir, prefix), JSON.stringify(state, null, 2));
      await Promise.all(started.map((s) => s.ready));
    }
  } catch (e) {
    await labDown(prefix, { stateDir });
    throw new Error(`lab ${prefix}: building failed and everything was removed again: ${(e as Error).message}`, { cause: e });
  }

  const lab: Lab = {
    prefix,
    tunName,
    namespaces,
    client: { ns: clientNs, address: clientAddress, nodeAddress, address6: clientAddress6, nodeAddress6 },
    node: {
      ns: nodeNs,
      addresses: nodeAddresses,
      addresses6: nodeAddresses6,
      masqueradeAddress: masq,
      masqueradeAddress6: masq6,
      clientVeth: CLIENT_VETH,
      nodePortRange,
      serviceRoutes: [...routed, ...routed6],
    },
    pods,
    clientPod,
    serverPids: state.servers.map((s) => s.pid),
    exec: (ns, argv, o) => nsExec(ns, argv, o),
    run: (ns, argv, o) => nsRun(ns, argv, o),
    spawn: (ns, argv, o) => nsSpawn(ns, argv, o),
    podFor(address) {
      const want = looksIPv6(address) ? canonicalIPv6(address) : address;
      const p = pods.find((x) => x.address === want);
      if (!p) throw new Error(`lab ${prefix}: no pod has address ${address}`);
      return p;
    },
    down: () => labDown(prefix, { stateDir }),
  };
  return lab;
}

/** IPv6 in the lab's namespaces: on, without duplicate address detection or router solicitations */
const IPV6_ON = {
  'net.ipv6.conf.all.disable_ipv6': 0,
  'net.ipv6.conf.default.disable_ipv6': 0,
  'net.ipv6.conf.all.accept_dad': 0,
  'net.ipv6.conf.default.accept_dad': 0,
  'net.ipv6.conf.all.router_solicitations': 0,
  'net.ipv6.conf.default.router_solicitations': 0,
};

/** The first free host (from ::2) of the /64 of `node6`. */
function firstFree6(node6: string, used: Set<string | null>): string {
  const w = parseIPv6(node6)!;
  for (let h = 2; h < 65536; h++) {
    const a = formatIPv6([w[0], w[1], 0, h]);
    if (!used.has(a)) return a;
  }
  throw new Error(`lab: no free client IPv6 address in the /64 of ${node6}`);
}

function firstFree(net: Cidr, used: Set<string>): string {
  for (let h = 2; h < 2 ** (32 - net.bits) - 1; h++) {
    const a = formatIPv4(net.net + h);
    if (!used.has(a)) return a;
  }
  throw new Error(`lab: no free client address in ${formatIPv4(net.net)}/${net.bits}`);
}

function pickClientPod(masq: string, cidr: Cidr | null, used: Set<string>): string {
  const base = (parseIPv4(masq) & 0xffffff00) >>> 0;
  for (let h = 250; h >= 2; h--) {
    const a = base + h;
    if ((!cidr || cidrContains(cidr, a)) && !used.has(formatIPv4(a))) return formatIPv4(a);
  }
  throw new Error(`lab: no free client-pod address near ${masq}; give clientPod an address`);
}

function startPodServer(pod: LabPod, logDir: string): { pod: LabPod; pid: number; ready: Promise<void> } {
  const log = join(logDir, `${pod.ns}.log`);
  const fd = openSync(log, 'w');
  const args = [process.execPath, '--import', 'tsx', POD_SERVER, '--address', pod.address, ...pod.listens.flatMap((l) => ['--listen', formatListen(l)])];
  const child = nsSpawn(pod.ns, args, { detached: true, stdio: ['ignore', fd, fd], cwd: REPO_ROOT });
  closeSync(fd);
  child.unref();
  if (!child.pid) throw new Error(`pod server for ${pod.address} did not start`);
  pod.pid = child.pid;
  let exited: string | null = null;
  child.on('exit', (code, signal) => (exited = signal ? `signal ${signal}` : `exit ${code}`));
  const ready = new Promise<void>((resolve, reject) => {
    const t0 = Date.now();
    const tick = (): void => {
      const text = existsSync(log) ? readFileSync(log, 'utf8') : '';
      if (/^ready /m.test(text)) return resolve();
      if (exited || Date.now() - t0 > 15_000)
        return reject(new Error(`pod server ${pod.address} in ${pod.ns} ${exited ? `stopped (${exited})` : 'did not get ready in 15 s'}: ${text.trim()}`));
      setTimeout(tick, 25);
    };
    tick();
  });
  return { pod, pid: child.pid, ready };
}

// ------------------------------------------------------------------ down

export interface LabDownResult {
  /** namespaces deleted */
  namespaces: string[];
  /** pod-server PIDs stopped */
  stopped: number[];
  /** other processes still inside the lab's namespaces (not started by the lab: not touched) */
  others: number[];
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
}

function isPodServer(pid: number): boolean {
  return cmdline(pid).includes(POD_SERVER);
}

async function stopPids(pids: number[]): Promise<number[]> {
  const stopped: number[] = [];
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
      stopped.push(pid);
    } catch {
      /* gone already */
    }
  }
  const t0 = Date.now();
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  while (stopped.some(alive) && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
  for (const pid of stopped) if (alive(pid)) process.kill(pid, 'SIGKILL');
  return stopped;
}

/**
 * Remove the lab with this prefix: stop the pod servers it started (by PID, checked against
 * the state file and their command line), delete every namespace named `${prefix}-...`, and the
 * state file. Safe to call when nothing is there.
 */
export async function labDown(prefix: string, opts: { stateDir?: string } = {}): Promise<LabDownResult> {
  checkPrefix(prefix);
  const stateDir = opts.stateDir ?? DEFAULT_STATE_DIR;
  const file = stateFile(stateDir, prefix);
  let state: LabState | null = null;
  try {
    state = JSON.parse(readFileSync(file, 'utf8')) as LabState;
  } catch {
    state = null;
  }
  const namespaces = listNetns(`${prefix}-`);
  const servers = new Set<number>();
  for (const s of state?.servers ?? []) if (isPodServer(s.pid)) servers.add(s.pid);
  // pod servers whose state file was lost: found inside the lab's own namespaces
  for (const ns of namespaces) for (const pid of netnsPids(ns)) if (isPodServer(pid)) servers.add(pid);
  const stopped = await stopPids([...servers]);
  const others: number[] = [];
  for (const ns of namespaces) for (const pid of netnsPids(ns)) if (!stopped.includes(pid)) others.push(pid);
  for (const ns of namespaces) deleteNetns(ns);
  rmSync(file, { force: true });
  rmSync(join(stateDir, prefix), { recursive: true, force: true });
  return { namespaces, stopped, others };
}
