/**
 * The lab of `npm run bench:e2e`: one topology for every mode, built fresh for
 * each (mode, size) so that nothing one mode leaves in the kernel (netfilter
 * hooks, conntrack entries, a TUN) is there when the next one is measured.
 *
 *   client ${prefix}-client                  node ${prefix}-node                          pods ${prefix}-pod-<i>
 *   eth0 192.168.77.2/24  ──────veth──────── veth-client 192.168.77.1/24
 *   local 192.168.80.0/20 dev lo (sources)   route 192.168.80.0/20 via 192.168.77.2
 *   default via 192.168.77.1                 vp<i> 10.64.0.1/32 ──────veth──────────── eth0 <endpoint>/32
 *                                            route <endpoint>/32 dev vp<i>               default via 10.64.0.1
 *   client pod ${prefix}-cpod                                                            e2e-responder: UDP echo,
 *   eth0 10.120.16.1/32 ─────veth─────────── vcpod 10.64.0.1/32                          TCP listen
 *   local 10.120.0.0/20 dev lo (sources)     route 10.120.16.1/32 dev vcpod,
 *   default via 10.64.0.1                          10.120.0.0/20 via 10.120.16.1
 *
 * Why my own builder and not scripts/lab.ts: the kernel modes need the node
 * to forward with its own netfilter rules doing the NAT and no TUN steering at
 * all, and the load generator needs thousands of source addresses on both
 * clients (AnyIP `local` routes, routed back by one route each, so no ARP per
 * address) — neither is what lab.ts builds, and it belongs to someone else.
 *
 * The client addresses are outside the cluster CIDR (10.64.0.0/10: masquerade
 * applies); the client pod's are inside it (source preserved).
 *
 * With `tun: true` (tunproxy) the node also gets what lab.ts does for a TUN:
 * tun0 up, the service CIDR routed into it, the pods' TCP/UDP/ICMP sent into
 * it (policy rules ahead of the local table, so replies to the masquerade
 * address are un-NATed by tunproxy), and packets written back routed by
 * local/main. Without it the node is a plain router and the kernel's
 * iptables/nftables rules do the NAT.
 *
 * In the clients, an nftables filter rule drops the ICMP port-unreachable the
 * kernel would send for every answer (the generator reads them on a raw
 * socket; no UDP socket owns those ports); no conntrack is loaded there.
 *
 * With `ipv6: true` every link also carries IPv6, the same shape (no IPv4
 * part changes):
 *
 *   client eth0 fd00:77::2/64, local fd00:80::/116 dev lo (sources), default via fd00:77::1
 *   node   veth-client fd00:77::1/64, route fd00:80::/116 via fd00:77::2;
 *          vp<i>, vcpod fd00:10:64::1/128 (the IPv6 masquerade address), route <endpoint6>/128 dev vp<i>,
 *          fd00:10:64:120::1/128 dev vcpod, fd00:10:64:121::/116 via fd00:10:64:120::1
 *   pods   eth0 <endpoint6>/128, route fd00:10:64::1/128 dev eth0, default via fd00:10:64::1
 *   client pod eth0 fd00:10:64:120::1/128, local fd00:10:64:121::/116 dev lo (sources)
 * IPv6 is switched on in every namespace before any device is made (so the
 * devices inherit it) without duplicate address detection (accept_dad=0 and
 * every address `nodad`) or router solicitations; the node forwards. With a
 * TUN: tun0 gets no link-local address (`addrgenmode none`, so the kernel
 * sends no neighbour discovery, MLD or RS into it), the IPv6 service CIDR
 * fd00:10:96::/108 is routed into it, and `ip -6 rule`s send the pods' TCP
 * and UDP into it (not ICMPv6: neighbour discovery must stay on the pod's
 * link, or the node never resolves the pod). The responders answer on both families
 * (--ipv6). The clients drop their ICMPv6 destination-unreachable too.
 */
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addNetns, deleteNetns, ip, ipBatch, listNetns, netnsPids, nsRun, nsSpawn, nsSysctl } from '../scripts/ns.ts';
import { compileC } from '../scripts/harness.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

export const NODE_ADDRESS = '192.168.77.1';
export const CLIENT_ADDRESS = '192.168.77.2';
export const CLIENT_SOURCES = '192.168.80.0/20';
export const MASQUERADE_ADDRESS = '10.64.0.1';
export const CLIENT_POD_ADDRESS = '10.120.16.1';
export const CLIENT_POD_SOURCES = '10.120.0.0/20';
export const TUN_NAME = 'tun0';

export const NODE_ADDRESS6 = 'fd00:77::1';
export const CLIENT_ADDRESS6 = 'fd00:77::2';
export const CLIENT_SOURCES6 = 'fd00:80::/116';
export const MASQUERADE_ADDRESS6 = 'fd00:10:64::1';
export const CLIENT_POD_ADDRESS6 = 'fd00:10:64:120::1';
export const CLIENT_POD_SOURCES6 = 'fd00:10:64:121::/116';
export const SERVICE_CIDR6 = 'fd00:10:96::/108';

/** IPv6 on, without duplicate address detection or router solicitations (as scripts/lab.ts) */
const IPV6_ON = {
  'net.ipv6.conf.all.disable_ipv6': 0,
  'net.ipv6.conf.default.disable_ipv6': 0,
  'net.ipv6.conf.all.accept_dad': 0,
  'net.ipv6.conf.default.accept_dad': 0,
  'net.ipv6.conf.all.router_solicitations': 0,
  'net.ipv6.conf.default.router_solicitations': 0,
  'net.ipv6.conf.all.accept_ra': 0,
  'net.ipv6.conf.default.accept_ra': 0,
};
const TUN_TABLE = 100;

export interface E2eLabOptions {
  /** namespaces are `${prefix}-...`; must start with "tp-" */
  prefix: string;
  /** endpoint addresses: one pod namespace with a responder each */
  endpoints: string[];
  /** the responders' UDP echo port and TCP listening port */
  udpPort: number;
  tcpPort: number;
  /** tunproxy's lab: a TUN and the routing into it */
  tun: boolean;
  /** routed into the TUN (default 10.96.0.0/12) */
  serviceCIDR?: string;
  /** node-namespace sysctls (e.g. conntrack timeouts for the kernel modes) */
  nodeSysctls?: Record<string, string | number>;
  /** IPv6 too (dual-stack links); `endpoints6`: the pods' IPv6 addresses, one per pod, in the order of `endpoints` */
  ipv6?: boolean;
  endpoints6?: string[];
  /** routed into the TUN with ipv6 (default fd00:10:96::/108) */
  serviceCIDR6?: string;
}

export interface E2eLab {
  prefix: string;
  nodeNs: string;
  clientNs: string;
  clientPodNs: string;
  podNs: string[];
  tun: boolean;
  responderPids: number[];
  down(): Promise<void>;
}

/** Compile bench/e2e-responder.c into build/e2e/ (once; again when the source is newer). */
export function buildResponder(): string {
  return compileC(join(ROOT, 'bench', 'e2e-responder.c'), join(ROOT, 'build', 'e2e', 'e2e-responder'));
}

const DROP_PORT_UNREACHABLE = [
  'add table ip loadgen',
  'add chain ip loadgen out { type filter hook output priority 0 ; }',
  'add rule ip loadgen out icmp type destination-unreachable drop',
].join('\n');
const DROP_PORT_UNREACHABLE6 = [
  'add table ip6 loadgen6',
  'add chain ip6 loadgen6 out { type filter hook output priority 0 ; }',
  'add rule ip6 loadgen6 out icmpv6 type destination-unreachable drop',
].join('\n');

function startResponder(bin: string, ns: string, udpPort: number, tcpPort: number, v6: boolean): Promise<ChildProcess> {
  const child = nsSpawn(ns, [bin, '--udp', String(udpPort), '--tcp', String(tcpPort), ...(v6 ? ['--ipv6'] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`e2e-responder in ${ns} not ready in 10 s: ${err}`)), 10_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('ready')) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`e2e-responder in ${ns} exited (${code}): ${err}`));
    });
  });
}

function isOurs(pid: number, bin: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] === bin;
  } catch {
    return false;
  }
}

async function stopPids(pids: number[]): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  const t0 = Date.now();
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  while (pids.some(alive) && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 20));
  for (const pid of pids) if (alive(pid)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/** Remove every namespace `${prefix}-*`, stopping the responders found in them first (by PID). */
export async function e2eLabDown(prefix: string, pids: number[] = []): Promise<void> {
  if (!/^tp-[A-Za-z0-9-]+$/.test(prefix)) throw new Error(`e2e lab: prefix "${prefix}" must start with "tp-"`);
  const namespaces = listNetns(`${prefix}-`);
  const bin = join(ROOT, 'build', 'e2e', 'e2e-responder');
  const found = new Set(pids);
  for (const ns of namespaces) for (const pid of netnsPids(ns)) if (isOurs(pid, bin)) found.add(pid);
  await stopPids([...found]);
  for (const ns of namespaces) deleteNetns(ns);
}

export async function e2eLabUp(o: E2eLabOptions): Promise<E2eLab> {
  const { prefix } = o;
  if (!/^tp-[A-Za-z0-9-]{1,30}$/.test(prefix)) throw new Error(`e2e lab: prefix "${prefix}" must start with "tp-" (letters, digits, "-")`);
  const bin = buildResponder();
  await e2eLabDown(prefix);
  const nodeNs = `${prefix}-node`;
  const clientNs = `${prefix}-client`;
  const clientPodNs = `${prefix}-cpod`;
  const podNs = o.endpoints.map((_, i) => `${prefix}-pod-${i}`);
  const pids: number[] = [];
  const v6 = !!o.ipv6;
  if (v6 && (o.endpoints6?.length ?? 0) !== o.endpoints.length) throw new Error(`e2e lab ${prefix}: ipv6 needs one IPv6 endpoint address per pod (${o.endpoints.length}), got ${o.endpoints6?.length ?? 0}`);
  try {
    for (const ns of [nodeNs, clientNs, clientPodNs, ...podNs]) addNetns(ns);
    // IPv6 before any device exists, so that every device inherits it
    if (v6) for (const ns of [nodeNs, clientNs, clientPodNs, ...podNs]) nsSysctl(ns, IPV6_ON);
    if (v6) nsSysctl(nodeNs, { 'net.ipv6.conf.all.forwarding': 1 });
    const node6: string[] = [];
    nsSysctl(nodeNs, {
      'net.ipv4.ip_forward': 1,
      'net.ipv4.conf.all.rp_filter': 0,
      'net.ipv4.conf.default.rp_filter': 0,
      'net.ipv4.conf.default.accept_local': 1,
      ...(o.nodeSysctls ?? {}),
    });
    const node: string[] = [];
    // client
    ip(['-n', nodeNs, 'link', 'add', 'veth-client', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', clientNs]);
    node.push(`addr add ${NODE_ADDRESS}/24 dev veth-client`, 'link set veth-client up', `route add ${CLIENT_SOURCES} via ${CLIENT_ADDRESS} dev veth-client`);
    ipBatch(clientNs, [
      `addr add ${CLIENT_ADDRESS}/24 dev eth0`,
      'link set eth0 up',
      `route add default via ${NODE_ADDRESS} dev eth0`,
      `route add local ${CLIENT_SOURCES} dev lo table local`,
    ]);
    // client pod
    ip(['-n', nodeNs, 'link', 'add', 'vcpod', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', clientPodNs]);
    node.push(
      `addr add ${MASQUERADE_ADDRESS}/32 dev vcpod`,
      'link set vcpod up',
      `route add ${CLIENT_POD_ADDRESS}/32 dev vcpod`,
      `route add ${CLIENT_POD_SOURCES} via ${CLIENT_POD_ADDRESS} dev vcpod`,
    );
    ipBatch(clientPodNs, [
      `addr add ${CLIENT_POD_ADDRESS}/32 dev eth0`,
      'link set eth0 up',
      `route add ${MASQUERADE_ADDRESS}/32 dev eth0 scope link`,
      `route add default via ${MASQUERADE_ADDRESS} dev eth0 src ${CLIENT_POD_ADDRESS}`,
      `route add local ${CLIENT_POD_SOURCES} dev lo table local`,
    ]);
    if (v6) {
      node6.push(
        `addr add ${NODE_ADDRESS6}/64 dev veth-client nodad`,
        `route add ${CLIENT_SOURCES6} via ${CLIENT_ADDRESS6} dev veth-client`,
        `addr add ${MASQUERADE_ADDRESS6}/128 dev vcpod nodad`,
        `route add ${CLIENT_POD_ADDRESS6}/128 dev vcpod`,
        `route add ${CLIENT_POD_SOURCES6} via ${CLIENT_POD_ADDRESS6} dev vcpod`,
      );
      ipBatch(
        clientNs,
        [`addr add ${CLIENT_ADDRESS6}/64 dev eth0 nodad`, `route add default via ${NODE_ADDRESS6} dev eth0`, `route add local ${CLIENT_SOURCES6} dev lo table local`],
        6,
      );
      ipBatch(
        clientPodNs,
        [
          `addr add ${CLIENT_POD_ADDRESS6}/128 dev eth0 nodad`,
          `route add ${MASQUERADE_ADDRESS6}/128 dev eth0`,
          `route add default via ${MASQUERADE_ADDRESS6} dev eth0 src ${CLIENT_POD_ADDRESS6}`,
          `route add local ${CLIENT_POD_SOURCES6} dev lo table local`,
        ],
        6,
      );
    }
    for (const ns of [clientNs, clientPodNs]) {
      nsSysctl(ns, { 'net.ipv4.conf.all.rp_filter': 0, 'net.ipv4.conf.default.rp_filter': 0 });
      nsRun(ns, ['nft', '-f', '-'], { input: DROP_PORT_UNREACHABLE + '\n' + (v6 ? DROP_PORT_UNREACHABLE6 + '\n' : '') });
    }
    // pods
    o.endpoints.forEach((addr, i) => {
      const v = `vp${i}`;
      ip(['-n', nodeNs, 'link', 'add', v, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', podNs[i]]);
      node.push(`addr add ${MASQUERADE_ADDRESS}/32 dev ${v}`, `link set ${v} up`, `route add ${addr}/32 dev ${v}`);
      ipBatch(podNs[i], [
        `addr add ${addr}/32 dev eth0`,
        'link set eth0 up',
        `route add ${MASQUERADE_ADDRESS}/32 dev eth0 scope link`,
        `route add default via ${MASQUERADE_ADDRESS} dev eth0 src ${addr}`,
      ]);
      if (v6) {
        const a6 = o.endpoints6![i];
        node6.push(`addr add ${MASQUERADE_ADDRESS6}/128 dev ${v} nodad`, `route add ${a6}/128 dev ${v}`);
        ipBatch(podNs[i], [`addr add ${a6}/128 dev eth0 nodad`, `route add ${MASQUERADE_ADDRESS6}/128 dev eth0`, `route add default via ${MASQUERADE_ADDRESS6} dev eth0 src ${a6}`], 6);
      }
    });
    if (o.tun) {
      ip(['-n', nodeNs, 'tuntap', 'add', 'dev', TUN_NAME, 'mode', 'tun']);
      // (IPv6: no link-local address on the TUN, so the kernel sends no neighbour discovery, MLD or RS into it)
      if (v6) node.push(`link set ${TUN_NAME} addrgenmode none`);
      node.push(
        `link set ${TUN_NAME} mtu 1500 up`,
        `route add ${o.serviceCIDR ?? '10.96.0.0/12'} dev ${TUN_NAME}`,
        `route add default dev ${TUN_NAME} table ${TUN_TABLE}`,
        // the pods' packets (answers to un-NAT, also those to the masquerade address) into the TUN
        ...o.endpoints.flatMap((_, i) => ['tcp', 'udp', 'icmp'].map((p) => `rule add pref 60 iif vp${i} ipproto ${p} lookup ${TUN_TABLE}`)),
        'rule add pref 100 lookup local',
        'rule del pref 0 lookup local',
      );
      if (v6) {
        node6.push(
          `route add ${o.serviceCIDR6 ?? SERVICE_CIDR6} dev ${TUN_NAME}`,
          `route add default dev ${TUN_NAME} table ${TUN_TABLE}`,
          // (not ICMPv6: the pods' neighbour discovery must stay on their link, or the node never resolves them
          // and the first flows to a pod are lost; scripts/lab.ts does the same)
          ...o.endpoints.flatMap((_, i) => ['tcp', 'udp'].map((p) => `rule add pref 60 iif vp${i} ipproto ${p} lookup ${TUN_TABLE}`)),
          'rule add pref 100 lookup local',
          'rule del pref 0 lookup local',
        );
      }
    }
    ipBatch(nodeNs, node);
    // (after the IPv4 batch: the devices are up)
    ipBatch(nodeNs, node6, 6);
    if (o.tun) nsSysctl(nodeNs, { [`net.ipv4.conf.${TUN_NAME}.accept_local`]: 1, [`net.ipv4.conf.${TUN_NAME}.rp_filter`]: 0 });
    for (const ns of podNs) pids.push((await startResponder(bin, ns, o.udpPort, o.tcpPort, v6)).pid!);
  } catch (e) {
    await e2eLabDown(prefix, pids);
    throw new Error(`e2e lab ${prefix}: building failed and everything was removed again: ${(e as Error).message}`, { cause: e });
  }
  return {
    prefix,
    nodeNs,
    clientNs,
    clientPodNs,
    podNs,
    tun: o.tun,
    responderPids: pids,
    down: () => e2eLabDown(prefix, pids),
  };
}
