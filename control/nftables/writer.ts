/**
 * A rule set as the nftables transaction kube-proxy's nftables mode writes
 * (pkg/proxy/nftables/proxier.go, setupNFTables + syncProxyRules, through
 * knftables): one table `ip kube-proxy`, base chains at the dstnat/srcnat
 * priorities, the `service-ips` and `service-nodeports` verdict maps that
 * dispatch a packet to its service chain in one lookup, per-service chains
 * that pick an endpoint with `numgen random mod N vmap { ... }`, per-endpoint
 * chains that DNAT, and masquerade by mark (mark-for-masquerade, then
 * masquerading in nat-postrouting).
 *
 * IPv6: kube-proxy runs one proxier per family, the IPv6 one in `table ip6
 * kube-proxy` (setupNFTables: ipX = "ip6", ipvX_addr = "ipv6_addr"); `family:
 * 6` writes that table from the rule set's family-6 service ports, endpoints
 * DNATed to `[address]:port`.
 *
 * The text is `nft -f` input. `writeNftables` is a full sync into an empty or
 * existing table (every object added and flushed first, as kube-proxy does);
 * `writeNftablesServiceAdd` is the incremental transaction that adds one
 * service to a loaded table: its chains and its map elements (`add element`).
 */
import { createHash } from 'node:crypto';
import { base32 } from '../iptables/hash.ts';
import type { RuleSet, Service } from '../types.ts';
import { modelOf, nodeModel, serviceModel } from '../model.ts';
import type { EndpointModel, NodeModel, RuleSetModel, ServicePortModel } from '../model.ts';
import { formatCidr } from '../../dataplane/addr.ts';
import { formatCidr6 } from '../../dataplane/addr6.ts';

export const KUBE_PROXY_TABLE = 'kube-proxy';
/** the nftables family and address type of each IP family's table */
const NFT_FAMILY = { 4: 'ip', 6: 'ip6' } as const;
const ADDR_TYPE = { 4: 'ipv4_addr', 6: 'ipv6_addr' } as const;

export interface NftWriteOptions {
  /** which proxier's table: 4 (`ip kube-proxy`, the default) or 6 (`ip6 kube-proxy`) */
  family?: 4 | 6;
}

// kube-proxy's names for its fixed chains, sets and maps
export const SERVICES_CHAIN = 'services';
export const SERVICE_IPS_MAP = 'service-ips';
export const SERVICE_NODEPORTS_MAP = 'service-nodeports';
export const NODEPORT_IPS_SET = 'nodeport-ips';
export const ENDPOINTS_CHECK_CHAIN = 'endpoints-check';
export const NO_ENDPOINT_SERVICES_MAP = 'no-endpoint-services';
export const NO_ENDPOINT_NODEPORTS_MAP = 'no-endpoint-nodeports';
export const REJECT_CHAIN = 'reject-chain';
export const FIREWALL_IPS_MAP = 'firewall-ips';
export const FIREWALL_CHECK_CHAIN = 'firewall-check';
export const MARK_MASQ_CHAIN = 'mark-for-masquerade';
export const MASQUERADING_CHAIN = 'masquerading';

/** kube-proxy's base chains: name, type, hook, priority (dstnat = -100, srcnat = 100). */
const BASE_CHAINS: Array<[string, string, string, number]> = [
  ['filter-prerouting', 'filter', 'prerouting', -110],
  ['filter-input', 'filter', 'input', -110],
  ['filter-forward', 'filter', 'forward', -110],
  ['filter-output', 'filter', 'output', -110],
  ['nat-prerouting', 'nat', 'prerouting', -100],
  ['nat-output', 'nat', 'output', -100],
  ['nat-postrouting', 'nat', 'postrouting', 100],
];

/** kube-proxy's nftablesJumpChains: destination, source base chain, extra match. */
const JUMP_CHAINS: Array<[string, string, string]> = [
  [ENDPOINTS_CHECK_CHAIN, 'filter-input', 'ct state new'],
  [ENDPOINTS_CHECK_CHAIN, 'filter-forward', 'ct state new'],
  [ENDPOINTS_CHECK_CHAIN, 'filter-output', 'ct state new'],
  [FIREWALL_CHECK_CHAIN, 'filter-prerouting', 'ct state new'],
  [FIREWALL_CHECK_CHAIN, 'filter-output', 'ct state new'],
  [SERVICES_CHAIN, 'nat-output', ''],
  [SERVICES_CHAIN, 'nat-prerouting', ''],
  [MASQUERADING_CHAIN, 'nat-postrouting', ''],
];

/** nftables' NFT_NAME_MAXLEN - 1 (knftables.NameLengthMax) */
const NAME_LENGTH_MAX = 256;
/** kube-proxy's chainNameBaseLengthMax: NameLengthMax - chainNamePrefixLengthMax (16) */
const CHAIN_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - 16;

/** kube-proxy's hashAndTruncate: the first 8 base32 characters of sha256(name), "-", name; truncated with "...". */
export function hashAndTruncate(name: string): string {
  const encoded = base32(createHash('sha256').update(name, 'utf8').digest()); // only the first 8 characters are used: padding never shows
  let out = `${encoded.slice(0, 8)}-${name}`;
  if (out.length > CHAIN_NAME_BASE_LENGTH_MAX) out = out.slice(0, CHAIN_NAME_BASE_LENGTH_MAX - 3) + '...';
  return out;
}

/** "HASH-namespace/name/proto/portname" (servicePortChainNameBase). */
export function servicePortChainNameBase(p: ServicePortModel): string {
  return hashAndTruncate(`${p.service.namespace}/${p.service.name}/${p.proto}/${p.port.name}`);
}

/**
 * "HASH-namespace/name/proto/portname__10.64.0.10/8080" (servicePortEndpointChainNameBase); an IPv6
 * endpoint's colons become dots (not allowed in a chain name): "…__fd00.10..7/8080".
 */
export function endpointChainNameBase(p: ServicePortModel, ep: EndpointModel): string {
  const ip = ep.address.includes(':') ? ep.address.replaceAll(':', '.') : ep.address;
  return hashAndTruncate(`${p.service.namespace}/${p.service.name}/${p.proto}/${p.port.name}__${ip}/${ep.port}`);
}

export interface NftChains {
  cluster: string;
  local: string;
  external: string;
  firewall: string;
}

export function nftServiceChains(p: ServicePortModel): NftChains {
  const base = servicePortChainNameBase(p);
  return { cluster: `service-${base}`, local: `local-${base}`, external: `external-${base}`, firewall: `firewall-${base}` };
}

export function nftEndpointChain(p: ServicePortModel, ep: EndpointModel): string {
  return `endpoint-${endpointChainNameBase(p, ep)}`;
}

function nftAffinitySet(p: ServicePortModel, ep: EndpointModel): string {
  return `affinity-${endpointChainNameBase(p, ep)}`;
}

/** kube-proxy's masquerade mark text: fmt "%#08x" of the mark ("0x004000"). */
export function masqueradeMarkText(mark: string): string {
  const n = Number(mark);
  if (!Number.isInteger(n) || n <= 0 || n > 0xffffffff) throw new Error(`node.masqueradeMark "${mark}" is not a 32-bit mark`);
  return '0x' + n.toString(16).padStart(6, '0');
}

/** An nftables transaction in kube-proxy's order (knftables writes one operation per line). */
class Tx {
  readonly lines: string[] = [];
  private readonly ensured = new Set<string>();
  /** "ip kube-proxy" / "ip6 kube-proxy" */
  readonly T: string;
  /** "ip" / "ip6": the address match keyword */
  readonly ipX: string;
  /** "ipv4_addr" / "ipv6_addr" */
  readonly addrType: string;
  constructor(readonly family: 4 | 6) {
    this.ipX = NFT_FAMILY[family];
    this.T = `${this.ipX} ${KUBE_PROXY_TABLE}`;
    this.addrType = ADDR_TYPE[family];
  }
  add(op: string): void {
    this.lines.push(op);
  }
  chain(name: string): void {
    this.lines.push(`add chain ${this.T} ${name}`);
  }
  /** kube-proxy's ensureChain: add and flush once per transaction */
  ensureChain(name: string): void {
    if (this.ensured.has(name)) return;
    this.ensured.add(name);
    this.lines.push(`add chain ${this.T} ${name}`, `flush chain ${this.T} ${name}`);
  }
  rule(chain: string, rule: string, comment?: string): void {
    this.lines.push(`add rule ${this.T} ${chain} ${rule}${comment !== undefined ? ` comment ${quote(comment)}` : ''}`);
  }
  element(setOrMap: string, key: string, value?: string, comment?: string): void {
    const c = comment !== undefined ? ` comment ${quote(comment)}` : '';
    this.lines.push(`add element ${this.T} ${setOrMap} { ${key}${c}${value !== undefined ? ` : ${value}` : ''} }`);
  }
  text(): string {
    return this.lines.join('\n') + '\n';
  }
}

function quote(s: string): string {
  if (/["\\\n]/.test(s)) throw new Error(`nftables comment ${JSON.stringify(s)} holds a quote, backslash or newline`);
  return `"${s}"`;
}

function setup(tx: Tx, node: NodeModel): void {
  const mark = masqueradeMarkText(node.masqueradeMark);
  tx.add(`add table ${tx.T} { comment "rules for kube-proxy" ; }`);
  for (const [name, type, hook, prio] of BASE_CHAINS) {
    tx.add(`add chain ${tx.T} ${name} { type ${type} hook ${hook} priority ${prio} ; }`);
    tx.add(`flush chain ${tx.T} ${name}`);
  }
  for (const [dst, src, extra] of JUMP_CHAINS) {
    tx.ensureChain(dst);
    tx.rule(src, `${extra ? extra + ' ' : ''}jump ${dst}`);
  }
  for (const c of [SERVICES_CHAIN, MASQUERADING_CHAIN, MARK_MASQ_CHAIN]) tx.ensureChain(c);
  tx.rule(MARK_MASQ_CHAIN, `mark set mark or ${mark}`);
  tx.rule(MASQUERADING_CHAIN, `mark and ${mark} == 0 return`);
  tx.rule(MASQUERADING_CHAIN, `mark set mark xor ${mark}`);
  tx.rule(MASQUERADING_CHAIN, 'masquerade fully-random');

  // NodePorts on the node's addresses (kube-proxy's --nodeport-addresses: the node IPs)
  tx.add(`add set ${tx.T} ${NODEPORT_IPS_SET} { type ${tx.addrType} ; comment "IPs that accept NodePort traffic" ; }`);
  tx.add(`flush set ${tx.T} ${NODEPORT_IPS_SET}`);
  for (const a of node.addresses) if (a.includes(':') === (tx.family === 6)) tx.element(NODEPORT_IPS_SET, a);

  tx.add(`add map ${tx.T} ${NO_ENDPOINT_SERVICES_MAP} { type ${tx.addrType} . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }`);
  tx.add(`add map ${tx.T} ${NO_ENDPOINT_NODEPORTS_MAP} { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }`);
  tx.add(`add chain ${tx.T} ${REJECT_CHAIN} { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }`);
  tx.add(`flush chain ${tx.T} ${REJECT_CHAIN}`);
  tx.rule(REJECT_CHAIN, 'reject');
  tx.rule(ENDPOINTS_CHECK_CHAIN, `${tx.ipX} daddr . meta l4proto . th dport vmap @${NO_ENDPOINT_SERVICES_MAP}`);
  tx.rule(ENDPOINTS_CHECK_CHAIN, `${tx.ipX} daddr @${NODEPORT_IPS_SET} meta l4proto . th dport vmap @${NO_ENDPOINT_NODEPORTS_MAP}`);

  tx.add(`add map ${tx.T} ${FIREWALL_IPS_MAP} { type ${tx.addrType} . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }`);
  tx.ensureChain(FIREWALL_CHECK_CHAIN);
  tx.rule(FIREWALL_CHECK_CHAIN, `${tx.ipX} daddr . meta l4proto . th dport vmap @${FIREWALL_IPS_MAP}`);

  tx.add(`add map ${tx.T} ${SERVICE_IPS_MAP} { type ${tx.addrType} . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`);
  tx.add(`add map ${tx.T} ${SERVICE_NODEPORTS_MAP} { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }`);
  tx.rule(SERVICES_CHAIN, `${tx.ipX} daddr . meta l4proto . th dport vmap @${SERVICE_IPS_MAP}`);
  tx.rule(SERVICES_CHAIN, `${tx.ipX} daddr @${NODEPORT_IPS_SET} meta l4proto . th dport vmap @${SERVICE_NODEPORTS_MAP}`);

  // syncProxyRules: the maps are rebuilt in full on every sync
  for (const m of [FIREWALL_IPS_MAP, NO_ENDPOINT_SERVICES_MAP, NO_ENDPOINT_NODEPORTS_MAP, SERVICE_IPS_MAP, SERVICE_NODEPORTS_MAP]) {
    tx.add(`flush map ${tx.T} ${m}`);
  }
}

function writeServiceToEndpointRules(tx: Tx, p: ServicePortModel, chain: string, endpoints: EndpointModel[]): void {
  if (p.affinitySeconds > 0) {
    for (const ep of endpoints) tx.rule(chain, `${tx.ipX} saddr @${nftAffinitySet(p, ep)} goto ${nftEndpointChain(p, ep)}`);
  }
  const elements = endpoints.map((ep, i) => `${i} : goto ${nftEndpointChain(p, ep)}`).join(' , ');
  tx.rule(chain, `numgen random mod ${endpoints.length} vmap { ${elements} }`);
}

function writeServicePort(tx: Tx, node: NodeModel, p: ServicePortModel): void {
  const clusterCIDR = p.family === 6 ? node.clusterCIDR6 : node.clusterCIDR;
  const clusterIP = p.clusterIP;
  if (clusterIP === null) return; // headless: nothing
  const proto = p.proto;
  const port = p.portNumber;
  const c = nftServiceChains(p);
  const name = p.name;

  for (const ep of p.allReachableEndpoints) tx.ensureChain(nftEndpointChain(p, ep));
  if (p.usesClusterPolicyChain) tx.ensureChain(c.cluster);
  if (p.usesLocalPolicyChain) tx.ensureChain(c.local);
  const internalTrafficChain = p.internalPolicyLocal ? c.local : c.cluster;
  const externalPolicyChain = p.externalPolicyLocal ? c.local : c.cluster;
  if (p.usesExternalTrafficChain) tx.ensureChain(c.external);

  let internalVerdict = '';
  let externalVerdict = '';
  if (!p.hasEndpoints) {
    internalVerdict = externalVerdict = `goto ${REJECT_CHAIN}`;
  } else {
    if (!p.hasInternalEndpoints) internalVerdict = 'drop';
    if (!p.hasExternalEndpoints) externalVerdict = 'drop';
  }

  const key = (ip: string) => `${ip} . ${proto} . ${port}`;
  if (p.hasInternalEndpoints) tx.element(SERVICE_IPS_MAP, key(clusterIP), `goto ${internalTrafficChain}`);
  else tx.element(NO_ENDPOINT_SERVICES_MAP, key(clusterIP), internalVerdict, name);

  for (const ip of p.externalIPs) {
    if (p.hasEndpoints) tx.element(SERVICE_IPS_MAP, key(ip), `goto ${c.external}`);
    if (!p.hasExternalEndpoints) tx.element(NO_ENDPOINT_SERVICES_MAP, key(ip), externalVerdict, name);
  }

  if (p.usesFirewallChain) {
    tx.ensureChain(c.firewall);
    const sources = p.family === 6 ? p.sourceRanges6.map(formatCidr6) : p.sourceRanges.map(formatCidr);
    if (p.allowFromNode) sources.push(...p.loadBalancerIPs);
    tx.rule(c.firewall, `${tx.ipX} saddr != { ${sources.join(', ')} } drop`);
  }
  for (const ip of p.loadBalancerIPs) {
    if (p.hasEndpoints) tx.element(SERVICE_IPS_MAP, key(ip), `goto ${c.external}`);
    if (p.usesFirewallChain) tx.element(FIREWALL_IPS_MAP, key(ip), `goto ${c.firewall}`, name);
  }
  if (!p.hasExternalEndpoints) for (const ip of p.loadBalancerIPs) tx.element(NO_ENDPOINT_SERVICES_MAP, key(ip), externalVerdict, name);

  const nodePort = p.nodePort;
  if (nodePort !== 0) {
    if (p.hasEndpoints) tx.element(SERVICE_NODEPORTS_MAP, `${proto} . ${nodePort}`, `goto ${c.external}`);
    if (!p.hasExternalEndpoints) tx.element(NO_ENDPOINT_NODEPORTS_MAP, `${proto} . ${nodePort}`, externalVerdict, name);
  }

  // internal traffic: masquerade what does not come from the cluster CIDR
  if (p.hasInternalEndpoints) {
    const match = `${tx.ipX} daddr ${clusterIP} ${proto} dport ${port}`;
    if (node.masqueradeAll) tx.rule(internalTrafficChain, `${match} jump ${MARK_MASQ_CHAIN}`);
    else if (clusterCIDR !== null) tx.rule(internalTrafficChain, `${match} ${tx.ipX} saddr != ${clusterCIDR} jump ${MARK_MASQ_CHAIN}`);
  }

  if (p.usesExternalTrafficChain) {
    if (!p.externalPolicyLocal) {
      tx.rule(c.external, `jump ${MARK_MASQ_CHAIN}`);
    } else {
      if (clusterCIDR !== null) tx.rule(c.external, `${tx.ipX} saddr ${clusterCIDR} goto ${c.cluster}`, 'short-circuit pod traffic');
      tx.rule(c.external, `fib saddr type local jump ${MARK_MASQ_CHAIN}`, 'masquerade local traffic');
      tx.rule(c.external, `fib saddr type local goto ${c.cluster}`, 'short-circuit local traffic');
    }
    if (p.hasExternalEndpoints) tx.rule(c.external, `goto ${externalPolicyChain}`);
  }

  if (p.affinitySeconds > 0) {
    for (const ep of p.allReachableEndpoints) {
      tx.add(`add set ${tx.T} ${nftAffinitySet(p, ep)} { type ${tx.addrType} ; flags dynamic,timeout ; timeout ${p.affinitySeconds}s ; }`);
    }
  }
  if (p.usesClusterPolicyChain) writeServiceToEndpointRules(tx, p, c.cluster, p.clusterEndpoints);
  if (p.usesLocalPolicyChain) writeServiceToEndpointRules(tx, p, c.local, p.localEndpoints);

  for (const ep of p.allReachableEndpoints) {
    const chain = nftEndpointChain(p, ep);
    tx.rule(chain, `${tx.ipX} saddr ${ep.address} jump ${MARK_MASQ_CHAIN}`);
    if (p.affinitySeconds > 0) tx.rule(chain, `update @${nftAffinitySet(p, ep)} { ${tx.ipX} saddr }`);
    tx.rule(chain, `meta l4proto ${proto} dnat to ${p.family === 6 ? `[${ep.address}]` : ep.address}:${ep.port}`);
  }
}

/** kube-proxy's nftables-mode transaction for the rule set's IPv4 ports (`family: 6`: its `ip6` table for the IPv6 ones), `nft -f` input. */
export function writeNftables(input: RuleSet | RuleSetModel, opts: NftWriteOptions = {}): string {
  const model = modelOf(input);
  const tx = new Tx(opts.family ?? 4);
  setup(tx, model.node);
  for (const p of model.portsOf(tx.family)) writeServicePort(tx, model.node, p);
  return tx.text();
}

/**
 * The transaction that adds one service to a table loaded with writeNftables
 * of the same node: the service's chains and rules, then its map elements
 * (`add element ... service-ips { ... }`), without touching anything else.
 */
export function writeNftablesServiceAdd(input: RuleSet | RuleSetModel, svc: Service, opts: NftWriteOptions = {}): string {
  const node = input instanceof Object && 'ruleSet' in input ? input.node : nodeModel(input as RuleSet);
  const tx = new Tx(opts.family ?? 4);
  for (const p of serviceModel(svc, node).ports) if (p.family === tx.family) writeServicePort(tx, node, p);
  return tx.text();
}

/** Delete kube-proxy's table (what `kube-proxy --cleanup` does for nftables); `family: 6`: the `ip6` one. */
export function deleteNftablesText(opts: NftWriteOptions = {}): string {
  const t = `${NFT_FAMILY[opts.family ?? 4]} ${KUBE_PROXY_TABLE}`;
  return `add table ${t}\ndelete table ${t}\n`;
}
