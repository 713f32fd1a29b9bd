/**
 * A rule set as the iptables-restore input kube-proxy (iptables mode, v1.28+)
 * writes in syncProxyRules: a *filter and a *nat table, chain declarations
 * before rules, arguments in kube-proxy's order (not iptables-save's).
 *
 * `family: 6` writes the ip6tables-restore input of kube-proxy's IPv6 proxier
 * (its meta-proxier runs one per family) from the rule set's family-6 service
 * ports: the same tables and chains, IPv6 addresses and CIDRs, the cluster CIDR
 * and source ranges of IPv6, KUBE-SEP- DNAT to `[address]:port` (its chain
 * name hashed from that text, as kube-proxy's endpoint String()). REJECT is
 * written bare, as kube-proxy does: ip6tables' default is
 * icmp6-port-unreachable (ip6tables-save prints it so).
 *
 * With `withHooks` (the default) the jumps from the built-in chains that
 * kube-proxy installs separately with `iptables -I` are written too, so that
 * the file alone makes a working kube-proxy dataplane in a namespace.
 */
import type { RuleSet } from '../types.ts';
import type { ServicePortModel, EndpointModel, NodeModel, RuleSetModel } from '../model.ts';
import { modelOf } from '../model.ts';
import { formatCidr } from '../../dataplane/addr.ts';
import { formatCidr6 } from '../../dataplane/addr6.ts';
import { clusterPolicyChain, localPolicyChain, externalChain, firewallChain, endpointChain } from './hash.ts';

export interface WriteOptions {
  /** also write the built-in chains' jumps into kube-proxy's chains (default true) */
  withHooks?: boolean;
  /**
   * kube-proxy's "large cluster mode": past 1000 endpoints it leaves the
   * comments off the KUBE-SEP- rules and the KUBE-SVC-/KUBE-SVL- endpoint
   * rules. Default: as kube-proxy decides (more than 1000 endpoints).
   */
  largeClusterMode?: boolean;
  /** which proxier's rules: 4 (iptables-restore input, the default) or 6 (ip6tables-restore input) */
  family?: 4 | 6;
}

/** kube-proxy's threshold (largeClusterEndpointsThreshold) */
export const LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000;

/** The hook rules kube-proxy ensures in the built-in chains (iptablesJumpChains, as left by its prepends). */
const FILTER_HOOKS = [
  '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
  '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
  '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
  '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
  '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
  '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
  '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
  '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
  '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
];

const NAT_HOOKS = [
  '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
  '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
  '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
];

function chainLine(chain: string): string {
  return `:${chain} - [0:0]`;
}

/**
 * kube-proxy's computeProbability: Go's fmt "%0.10f" of 1/n. Go rounds an
 * exact tie to even where JavaScript's toFixed rounds it up (1/2048), so
 * ties are settled here.
 */
export function probabilityText(n: number): string {
  const x = 1 / n;
  // only 1/2^k is exact in binary, so only it can sit exactly halfway (1/2048 = 0.00048828125)
  if (!Number.isInteger(Math.log2(n))) return x.toFixed(10);
  const full = x.toFixed(20);
  const dot = full.indexOf('.');
  const rest = full.slice(dot + 11);
  if (rest === '5' + '0'.repeat(rest.length - 1)) {
    const truncated = full.slice(0, dot + 11);
    const last = truncated.charCodeAt(truncated.length - 1) - 48;
    return last % 2 === 0 ? truncated : x.toFixed(10);
  }
  return x.toFixed(10);
}

/** One service port's chain names. */
export interface ServicePortChains {
  cluster: string;
  local: string;
  external: string;
  firewall: string;
}

export function servicePortChains(p: ServicePortModel): ServicePortChains {
  return {
    cluster: clusterPolicyChain(p.name, p.proto),
    local: localPolicyChain(p.name, p.proto),
    external: externalChain(p.name, p.proto),
    firewall: firewallChain(p.name, p.proto),
  };
}

class Buffers {
  filterChains: string[] = [];
  filterRules: string[] = [];
  natChains: string[] = [];
  natRules: string[] = [];
}

/** kube-proxy's endpoint String(): net.JoinHostPort, "10.64.1.7:53" or "[fd00:10::7]:53" */
export function endpointText(ep: EndpointModel): string {
  return ep.address.includes(':') ? `[${ep.address}]:${ep.port}` : `${ep.address}:${ep.port}`;
}

function writeServiceToEndpointRules(
  b: Buffers,
  p: ServicePortModel,
  chain: string,
  endpoints: EndpointModel[],
  largeClusterMode: boolean,
): void {
  const comment = (ep: EndpointModel) => (largeClusterMode ? '' : ` -m comment --comment "${p.name} -> ${endpointText(ep)}"`);
  if (p.affinitySeconds > 0) {
    for (const ep of endpoints) {
      const sep = endpointChain(p.name, p.proto, endpointText(ep));
      b.natRules.push(`-A ${chain}${comment(ep)} -m recent --name ${sep} --rcheck --seconds ${p.affinitySeconds} --reap -j ${sep}`);
    }
  }
  const n = endpoints.length;
  for (let i = 0; i < n; i++) {
    const ep = endpoints[i];
    const sep = endpointChain(p.name, p.proto, endpointText(ep));
    const stat = i < n - 1 ? ` -m statistic --mode random --probability ${probabilityText(n - i)}` : '';
    b.natRules.push(`-A ${chain}${comment(ep)}${stat} -j ${sep}`);
  }
}

function writeServicePort(b: Buffers, node: NodeModel, p: ServicePortModel, largeClusterMode: boolean): void {
  const clusterCIDR = p.family === 6 ? node.clusterCIDR6 : node.clusterCIDR;
  const clusterIP = p.clusterIP;
  if (clusterIP === null) return; // headless: kube-proxy skips the service entirely
  const proto = p.proto;
  const name = p.name;
  const c = servicePortChains(p);
  const internalTrafficChain = p.internalPolicyLocal ? c.local : c.cluster;
  const externalPolicyChain = p.externalPolicyLocal ? c.local : c.cluster;
  const loadBalancerTrafficChain = p.usesFirewallChain ? c.firewall : c.external;
  const m = `-m ${proto} -p ${proto}`;

  let internalFilterTarget = '';
  let internalFilterComment = '';
  let externalFilterTarget = '';
  let externalFilterComment = '';
  if (!p.hasEndpoints) {
    internalFilterTarget = externalFilterTarget = 'REJECT';
    internalFilterComment = externalFilterComment = `"${name} has no endpoints"`;
  } else {
    if (!p.hasInternalEndpoints) {
      internalFilterTarget = 'DROP';
      internalFilterComment = `"${name} has no local endpoints"`;
    }
    if (!p.hasExternalEndpoints) {
      externalFilterTarget = 'DROP';
      externalFilterComment = `"${name} has no local endpoints"`;
    }
  }

  // ClusterIP
  if (p.hasInternalEndpoints) {
    b.natRules.push(`-A KUBE-SERVICES -m comment --comment "${name} cluster IP" ${m} -d ${clusterIP} --dport ${p.portNumber} -j ${internalTrafficChain}`);
  } else {
    b.filterRules.push(`-A KUBE-SERVICES -m comment --comment ${internalFilterComment} ${m} -d ${clusterIP} --dport ${p.portNumber} -j ${internalFilterTarget}`);
  }

  // external IPs
  for (const ip of p.externalIPs) {
    if (p.hasEndpoints) {
      b.natRules.push(`-A KUBE-SERVICES -m comment --comment "${name} external IP" ${m} -d ${ip} --dport ${p.portNumber} -j ${c.external}`);
    }
    if (!p.hasExternalEndpoints) {
      b.filterRules.push(`-A KUBE-EXTERNAL-SERVICES -m comment --comment ${externalFilterComment} ${m} -d ${ip} --dport ${p.portNumber} -j ${externalFilterTarget}`);
    }
  }

  // load-balancer IPs
  for (const ip of p.loadBalancerIPs) {
    if (p.hasEndpoints) {
      b.natRules.push(`-A KUBE-SERVICES -m comment --comment "${name} loadbalancer IP" ${m} -d ${ip} --dport ${p.portNumber} -j ${loadBalancerTrafficChain}`);
    }
    if (p.usesFirewallChain) {
      b.filterRules.push(`-A KUBE-PROXY-FIREWALL -m comment --comment "${name} traffic not accepted by ${c.firewall}" ${m} -d ${ip} --dport ${p.portNumber} -j DROP`);
    }
  }
  if (!p.hasExternalEndpoints) {
    for (const ip of p.loadBalancerIPs) {
      b.filterRules.push(`-A KUBE-EXTERNAL-SERVICES -m comment --comment ${externalFilterComment} ${m} -d ${ip} --dport ${p.portNumber} -j ${externalFilterTarget}`);
    }
  }

  // NodePort
  const nodePort = p.nodePort;
  if (nodePort !== 0) {
    if (p.hasEndpoints) {
      b.natRules.push(`-A KUBE-NODEPORTS -m comment --comment ${name} ${m} --dport ${nodePort} -j ${c.external}`);
    }
    if (!p.hasExternalEndpoints) {
      b.filterRules.push(`-A KUBE-EXTERNAL-SERVICES -m comment --comment ${externalFilterComment} -m addrtype --dst-type LOCAL ${m} --dport ${nodePort} -j ${externalFilterTarget}`);
    }
  }

  // internal traffic: masquerade off-cluster sources
  if (p.hasInternalEndpoints) {
    const args = `-m comment --comment "${name} cluster IP" ${m} -d ${clusterIP} --dport ${p.portNumber}`;
    if (node.masqueradeAll) {
      b.natRules.push(`-A ${internalTrafficChain} ${args} -j KUBE-MARK-MASQ`);
    } else if (clusterCIDR !== null) {
      b.natRules.push(`-A ${internalTrafficChain} ${args} ! -s ${clusterCIDR} -j KUBE-MARK-MASQ`);
    }
  }

  // external traffic
  if (p.usesExternalTrafficChain) {
    b.natChains.push(chainLine(c.external));
    if (!p.externalPolicyLocal) {
      b.natRules.push(`-A ${c.external} -m comment --comment "masquerade traffic for ${name} external destinations" -j KUBE-MARK-MASQ`);
    } else {
      if (clusterCIDR !== null) {
        b.natRules.push(`-A ${c.external} -m comment --comment "pod traffic for ${name} external destinations" -s ${clusterCIDR} -j ${c.cluster}`);
      }
      b.natRules.push(`-A ${c.external} -m comment --comment "masquerade LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`);
      b.natRules.push(`-A ${c.external} -m comment --comment "route LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${c.cluster}`);
    }
    if (p.hasExternalEndpoints) {
      b.natRules.push(`-A ${c.external} -j ${externalPolicyChain}`);
    }
  }

  // loadBalancerSourceRanges
  if (p.usesFirewallChain) {
    b.natChains.push(chainLine(c.firewall));
    const args = `-A ${c.firewall} -m comment --comment "${name} loadbalancer IP"`;
    const ranges = p.family === 6 ? p.sourceRanges6.map(formatCidr6) : p.sourceRanges.map(formatCidr);
    for (const cidr of ranges) b.natRules.push(`${args} -s ${cidr} -j ${c.external}`);
    if (p.allowFromNode) {
      for (const ip of p.loadBalancerIPs) b.natRules.push(`${args} -s ${ip} -j ${c.external}`);
    }
    b.natRules.push(`-A ${c.firewall} -m comment --comment "other traffic to ${name} will be dropped by KUBE-PROXY-FIREWALL"`);
  }

  if (p.usesClusterPolicyChain) {
    b.natChains.push(chainLine(c.cluster));
    writeServiceToEndpointRules(b, p, c.cluster, p.clusterEndpoints, largeClusterMode);
  }
  if (p.usesLocalPolicyChain) {
    b.natChains.push(chainLine(c.local));
    writeServiceToEndpointRules(b, p, c.local, p.localEndpoints, largeClusterMode);
  }

  for (const ep of p.allReachableEndpoints) {
    const sep = endpointChain(name, proto, endpointText(ep));
    b.natChains.push(chainLine(sep));
    const head = largeClusterMode ? `-A ${sep}` : `-A ${sep} -m comment --comment ${name}`;
    b.natRules.push(`${head} -s ${ep.address} -j KUBE-MARK-MASQ`);
    const recent = p.affinitySeconds > 0 ? ` -m recent --name ${sep} --set` : '';
    b.natRules.push(`${head}${recent} ${m} -j DNAT --to-destination ${endpointText(ep)}`);
  }
}

/**
 * kube-proxy's iptables-restore input for the rule set's IPv4 service ports (`family: 6`: the
 * ip6tables-restore input for its IPv6 ones), from its model (or a rule set already validated, modelled here).
 */
export function writeIptables(input: RuleSet | RuleSetModel, opts: WriteOptions = {}): string {
  const withHooks = opts.withHooks ?? true;
  const family = opts.family ?? 4;
  const model = modelOf(input);
  const node = model.node;
  const mark = node.masqueradeMark;
  const ports = model.portsOf(family);
  // each family's proxier counts its own endpoints
  let totalEndpoints = 0;
  for (const p of ports) totalEndpoints += p.endpoints.length;
  const largeClusterMode = opts.largeClusterMode ?? totalEndpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;

  const b = new Buffers();
  for (const chain of ['KUBE-SERVICES', 'KUBE-EXTERNAL-SERVICES', 'KUBE-FORWARD', 'KUBE-NODEPORTS', 'KUBE-PROXY-FIREWALL']) {
    b.filterChains.push(chainLine(chain));
  }
  for (const chain of ['KUBE-SERVICES', 'KUBE-NODEPORTS', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ']) {
    b.natChains.push(chainLine(chain));
  }
  b.natRules.push(`-A KUBE-POSTROUTING -m mark ! --mark ${mark}/${mark} -j RETURN`);
  b.natRules.push(`-A KUBE-POSTROUTING -j MARK --xor-mark ${mark}`);
  b.natRules.push('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully');
  b.natRules.push(`-A KUBE-MARK-MASQ -j MARK --or-mark ${mark}`);

  for (const p of ports) writeServicePort(b, node, p, largeClusterMode);

  b.natRules.push('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS');
  b.filterRules.push('-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP');
  b.filterRules.push(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark ${mark}/${mark} -j ACCEPT`);
  b.filterRules.push('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT');

  const out: string[] = ['*filter'];
  const append = (lines: string[]) => {
    for (let i = 0; i < lines.length; i++) out.push(lines[i]);
  };
  if (withHooks) append([':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]']);
  append(b.filterChains);
  if (withHooks) append(FILTER_HOOKS);
  append(b.filterRules);
  out.push('COMMIT', '*nat');
  if (withHooks) append([':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]']);
  append(b.natChains);
  if (withHooks) append(NAT_HOOKS);
  append(b.natRules);
  out.push('COMMIT');
  return out.join('\n') + '\n';
}

/** kube-proxy's top-level chains: a partial sync writes them whole every time */
const ALWAYS_WRITTEN = new Set([
  'KUBE-SERVICES',
  'KUBE-EXTERNAL-SERVICES',
  'KUBE-FORWARD',
  'KUBE-NODEPORTS',
  'KUBE-PROXY-FIREWALL',
  'KUBE-POSTROUTING',
  'KUBE-MARK-MASQ',
]);

function declaredChains(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(/^:(\S+) /gm)) out.add(m[1]);
  return out;
}

/**
 * kube-proxy's partial sync (MinimizeIPTablesRestore) after adding one
 * service, for `iptables-restore --noflush`: the top-level chains are always
 * rewritten whole (their `:CHAIN` line flushes them), the new service's chains
 * are written, every other chain is left alone.
 */
export function partialRestoreText(before: string, after: string): string {
  const old = declaredChains(before);
  const keep = (chain: string) => ALWAYS_WRITTEN.has(chain) || !old.has(chain);
  const out: string[] = [];
  for (const line of after.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('*') || line === 'COMMIT') out.push(line);
    else if (line.startsWith(':')) {
      if (keep(line.slice(1).split(' ')[0])) out.push(line);
    } else if (line.startsWith('-A ')) {
      if (keep(line.split(' ')[1])) out.push(line);
    }
  }
  return out.join('\n') + '\n';
}
