/**
 * The iptables importer's rule helpers: the records it reads a dump into
 * (PortRec, EndpointRec, Claim), its result and error types, and the small
 * functions that read one rule (its port, protocol, jump, comment kind,
 * addrtype/recent/statistic matches, whose software a chain is).
 */
import type { RuleSet } from '../types.ts';
import { formatIPv4, parseIPv4, parseCidr, cidrContains, formatCidr } from '../../dataplane/addr.ts';
import { formatIPv6, parseIPv6, parseCidr6, cidr6Contains, formatCidr6 } from '../../dataplane/addr6.ts';
import type { Rule, AddrMatch } from './parser.ts';
import { SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX, XLB_PREFIX } from './hash.ts';
import { LOCALHOST_NODEPORTS_LIMIT } from '../limits.ts';

export interface NotUnderstood {
  /** 1-based line in the text */
  line: number;
  /** in a dual-stack import (importIptablesDualStack): which dump the line is in, 4 (iptables-save) or 6 (ip6tables-save) */
  family?: 4 | 6;
  text: string;
  reason: string;
}

export interface ImportResult {
  ruleSet: RuleSet;
  /** kube-proxy's rules (or rules in kube-proxy's chains) not understood: the import is partial */
  notUnderstood: NotUnderstood[];
  /** other software's rules (docker, flannel, libvirt, ...): left to the kernel, not part of a rule set; the import is not partial for them */
  otherSoftware: NotUnderstood[];
  /** "left to the kernel: N rules in chains …" (null when there are none) */
  leftToKernel: string | null;
  /**
   * kube-proxy's rules understood but served narrower by tunproxy than by the kernel (or not at all),
   * and services or ports shadowed by an earlier rule for the same address and port: each with its line and why
   */
  limits: NotUnderstood[];
  warnings: string[];
  /** where node.addresses came from */
  nodeAddressesFrom: 'option' | 'dump' | null;
  /** the rule set's validation errors (empty: the rule set is valid) */
  errors: { path: string; message: string }[];
  /** lines that do not parse as iptables-save text (also in notUnderstood) */
  parseErrors: NotUnderstood[];
}

export interface ImportOptions {
  /** the dump's family: 4 (iptables-save) or 6 (ip6tables-save); default: told from the text (detectFamily) */
  family?: 4 | 6;
  /** the node's addresses (else read from the dump's rules where they name them); also tell whether a source range admits the node */
  nodeAddresses?: string[];
  /** the NodePort range ("LOW-HIGH"); default: 30000-32767, widened to the dump's NodePorts when they fall outside it */
  nodePortRange?: string;
}

/** The text of a limit every import with localhost NodePorts reports (also in the README and `trace`). */
export { LOCALHOST_NODEPORTS_LIMIT };

/** The text cannot be imported at all (IPv6 in an iptables dump, or no kube-proxy chains). */
export class IptablesImportError extends Error {
  readonly line: number;
  constructor(message: string, line = 0) {
    super(message);
    this.name = 'IptablesImportError';
    this.line = line;
  }
}

/** Documentation address (TEST-NET-1) standing for endpoints the dump shows exist on other nodes but does not name. */
export const PLACEHOLDER_REMOTE_ENDPOINT = '192.0.2.1';
/** The same for an ip6tables dump: the discard-only prefix (RFC 6666). */
export const PLACEHOLDER_REMOTE_ENDPOINT6 = '100::1';

export interface EndpointRec {
  address: string;
  port: number;
  text: string;
}

export interface PortRec {
  key: string;
  /** "ns/name:port" */
  name: string;
  proto: 'tcp' | 'udp' | 'sctp';
  clusterIP: string | null;
  port: number | null;
  nodePort: number | null;
  externalIPs: string[];
  lbIPs: string[];
  /** external or load-balancer IPs of a port without endpoints (the filter rules do not tell which) */
  unclassifiedIPs: string[];
  sourceRanges: string[];
  /** FW chain admits the LB IPs as sources (a range holds the node) */
  lbIPSources: boolean;
  iTPLocal: boolean;
  eTPLocal: boolean;
  affinitySeconds: number;
  /** KUBE-SVC- endpoints in chain order; null when no such chain was read */
  clusterEndpoints: EndpointRec[] | null;
  /** KUBE-SVL- / KUBE-XLB- endpoints */
  localEndpoints: EndpointRec[] | null;
  /** the filter table says the service has endpoints but none here (DROP "has no local endpoints") */
  hasRemoteOnly: boolean;
  /** chains it jumps to that the dump does not define */
  missing: string[];
  /** ordering: first line in the nat and filter tables, and in each chain ("nat KUBE-SERVICES") */
  natOrder: number;
  filterOrder: number;
  chainOrder: Map<string, number>;
  /** its external traffic (or firewall) chain is missing from the dump: its NodePort and external addresses are left out */
  externalUnknown: { line: number; chain: string } | null;
  /** its ClusterIP masquerade rule: "all" (masqueradeAll), the cluster CIDR of "! -s CIDR", or null (none) */
  masqForm: string | null;
  /** addresses the port is served on by the kernel for some packets only: not imported for it */
  excluded: Map<string, number>;
  /** a rule of its own chains was not understood: the port is left out (never broader than the kernel) */
  tainted: { line: number; reason: string } | null;
  /** the rules claiming an address:port (ClusterIP, external, load-balancer IP) or a NodePort, by rank (nat lines before filter lines) */
  claims: Claim[];
}

export interface Claim {
  kind: 'cluster' | 'external' | 'lb' | 'nodePort';
  /** the address (null for a NodePort) */
  ip: string | null;
  port: number;
  /** nat rules rank before filter rules: the kernel's nat PREROUTING decides before the filter table */
  rank: number;
  line: number;
}

export const FILTER_RANK = 1e9;

export const SERVICE_SUFFIXES: [RegExp, string][] = [
  [/^(\S+) cluster IP$/, 'cluster'],
  [/^(\S+) external IP$/, 'external'],
  [/^(\S+) loadbalancer IP$/, 'lb'],
  [/^(\S+) has no endpoints$/, 'noEndpoints'],
  [/^(\S+) has no local endpoints$/, 'noLocal'],
  [/^(\S+) traffic not accepted by (\S+)$/, 'firewall'],
];

export function classifyComment(comment: string | null): { name: string; kind: string } | null {
  if (comment === null) return null;
  for (const [re, kind] of SERVICE_SUFFIXES) {
    const m = re.exec(comment);
    if (m) return { name: m[1], kind };
  }
  return null;
}

export function isIPProto(name: string | undefined): name is 'tcp' | 'udp' | 'sctp' {
  return name === 'tcp' || name === 'udp' || name === 'sctp';
}

/** the rule's single destination port (`--dport N`, not inverted), or null */
export function dportOf(r: Rule): number | null {
  for (const m of r.matches) {
    if (m.kind === 'port' && m.dport && !m.dportInvert && m.dport.lo === m.dport.hi) return m.dport.lo;
  }
  return null;
}

export function protoOf(r: Rule): 'tcp' | 'udp' | 'sctp' | null {
  if (r.protocol && !r.protocol.invert && isIPProto(r.protocol.name)) return r.protocol.name;
  if (r.protocol && !r.protocol.invert) {
    const n = r.protocol.number;
    return n === 6 ? 'tcp' : n === 17 ? 'udp' : n === 132 ? 'sctp' : null;
  }
  return null;
}

export function hostOf(a: AddrMatch | null): string | null {
  if (!a || a.invert) return null;
  if (a.net6) return a.bits === 128 ? formatIPv6(a.net6) : null;
  if (a.mask !== 0xffffffff) return null;
  return formatIPv4(a.net);
}

export function cidrOf(a: AddrMatch): string {
  if (a.net6) return `${formatIPv6(a.net6)}/${a.bits}`;
  return a.bits >= 0 ? `${formatIPv4(a.net)}/${a.bits}` : a.text;
}

/** an address as a host CIDR: /32 (IPv4), /128 (IPv6) */
export function hostCidr(ip: string): string {
  return ip.includes(':') ? `${ip}/128` : `${ip}/32`;
}

/** Does the CIDR text (either family) hold the address text? */
export function cidrTextContains(cidr: string, ip: string): boolean {
  if (cidr.includes(':')) {
    const c = parseCidr6(cidr);
    const a = ip.includes(':') ? parseIPv6(ip) : null;
    return c !== null && a !== null && cidr6Contains(c, a);
  }
  const c = parseCidr(cidr);
  const a = parseIPv4(ip);
  return c !== null && a >= 0 && cidrContains(c, a);
}

/** The CIDR text in canonical form (either family); as given when it does not parse. */
export function canonicalCidr(cidr: string): string {
  if (cidr.includes(':')) {
    const c = parseCidr6(cidr);
    return c ? formatCidr6(c) : cidr;
  }
  const c = parseCidr(cidr);
  return c ? formatCidr(c) : cidr;
}

export function jumpOf(r: Rule): string | null {
  return r.target && r.target.kind === 'jump' ? r.target.chain : null;
}

export function hasUnknown(r: Rule): string | null {
  for (const m of r.matches) if (m.kind === 'unknown') return m.reason;
  if (r.target && r.target.kind === 'unknown') return r.target.reason;
  if (r.inInterface || r.outInterface) return 'interface matches are not part of a rule set';
  if (r.fragment) return 'fragment matches are not part of a rule set';
  return null;
}

export function addrtypeOf(r: Rule): { src: string[] | null; dst: string[] | null } | null {
  for (const m of r.matches) if (m.kind === 'addrtype') return { src: m.srcInvert ? null : m.srcType, dst: m.dstInvert ? null : m.dstType };
  return null;
}

export function recentOf(r: Rule) {
  for (const m of r.matches) if (m.kind === 'recent') return m;
  return null;
}

export function statisticOf(r: Rule) {
  for (const m of r.matches) if (m.kind === 'statistic') return m;
  return null;
}

export function chainRole(chain: string): 'svc' | 'svl' | 'ext' | 'fw' | 'xlb' | 'sep' | null {
  if (chain.startsWith(SVC_PREFIX)) return 'svc';
  if (chain.startsWith(SVL_PREFIX)) return 'svl';
  if (chain.startsWith(EXT_PREFIX)) return 'ext';
  if (chain.startsWith(FW_PREFIX)) return 'fw';
  if (chain.startsWith(XLB_PREFIX)) return 'xlb';
  if (chain.startsWith(SEP_PREFIX)) return 'sep';
  return null;
}

/** the comment of kube-proxy's rule sending pods' traffic for external destinations to the cluster policy chain */
export const POD_RULE = /^(pod traffic for \S+ external destinations|Redirect pods trying to reach external loadbalancer VIP to clusterIP)$/;

/** kube-proxy's own chains that carry no service data */
export const TARGET_KINDS = new Set(['ACCEPT', 'DROP', 'RETURN', 'REJECT', 'MASQUERADE', 'SNAT', 'DNAT', 'MARK', 'LOG']);

export const KUBE_INFRA_CHAINS = new Set([
  'KUBE-SERVICES', 'KUBE-NODEPORTS', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ', 'KUBE-MARK-DROP', 'KUBE-EXTERNAL-SERVICES',
  'KUBE-FORWARD', 'KUBE-PROXY-FIREWALL', 'KUBE-FIREWALL', 'KUBE-PROXY-CANARY', 'KUBE-KUBELET-CANARY',
]);

/** Whose chain it likely is, by the prefixes well-known software uses. */
export function softwareOf(chain: string): string | null {
  const known: [RegExp, string][] = [
    [/^DOCKER/, 'docker'],
    [/^FLANNEL/, 'flannel'],
    [/^(cali-|felix-)/, 'calico'],
    [/^(CILIUM_|OLD_CILIUM_)/, 'cilium'],
    [/^WEAVE/, 'weave'],
    [/^(CNI-|cni-)/, 'CNI plugins (portmap, bridge)'],
    [/^KUBE-ROUTER/, 'kube-router'],
    [/^ISTIO_/, 'istio'],
    [/^(LIBVIRT_|libvirt)/, 'libvirt'],
    [/^(ufw-|ufw6-)/, 'ufw'],
    [/^(f2b-|fail2ban)/, 'fail2ban'],
    [/^(IN_|OUT_|FWD_|FWDI_|FWDO_|POST_|PRE_)public/, 'firewalld'],
    [/^KUBE-IPVS|^KUBE-LOAD-BALANCER|^KUBE-NODE-PORT$/, 'kube-proxy in IPVS mode'],
    [/^KIND-/, 'kind'],
    [/^IP-MASQ-AGENT$/, 'ip-masq-agent'],
    [/^(CILIUM-|cilium-)/, 'cilium'],
    [/^(ANTREA-)/, 'antrea'],
    [/^(AWS-|AWS_)/, 'the AWS VPC CNI'],
  ];
  for (const [re, who] of known) if (re.test(chain)) return who;
  return null;
}

export function foreignChain(chain: string): string {
  const who = softwareOf(chain);
  return who ? `chain ${chain} is ${who}'s, not kube-proxy's` : `chain ${chain} is not kube-proxy's`;
}

/**
 * Merge sequences that are each in the same underlying order into one order
 * (a topological sort, ties to the lowest rank). `cycle.found` tells whether
 * the sequences disagreed (then the lowest-ranked node broke the cycle).
 */
export function mergeOrders<T>(sequences: T[][], rank: (x: T) => number, cycle: { found: boolean } = { found: false }): T[] {
  const nodes = new Set<T>();
  const succ = new Map<T, Set<T>>();
  const indeg = new Map<T, number>();
  for (const seq of sequences) {
    for (const x of seq) {
      if (!nodes.has(x)) {
        nodes.add(x);
        succ.set(x, new Set());
        indeg.set(x, 0);
      }
    }
    for (let i = 0; i + 1 < seq.length; i++) {
      const a = seq[i];
      const b = seq[i + 1];
      if (a === b || succ.get(a)!.has(b)) continue;
      succ.get(a)!.add(b);
      indeg.set(b, indeg.get(b)! + 1);
    }
  }
  const out: T[] = [];
  const ready = [...nodes].filter((x) => indeg.get(x) === 0);
  while (out.length < nodes.size) {
    if (ready.length === 0) {
      // a cycle: the sequences disagree; take the lowest-ranked remaining node
      cycle.found = true;
      const rest = [...nodes].filter((x) => !out.includes(x)).sort((a, b) => rank(a) - rank(b));
      ready.push(rest[0]);
      indeg.set(rest[0], 0);
    }
    ready.sort((a, b) => rank(a) - rank(b));
    const x = ready.shift()!;
    if (out.includes(x)) continue;
    out.push(x);
    for (const y of succ.get(x)!) {
      const d = indeg.get(y)! - 1;
      indeg.set(y, d);
      if (d === 0) ready.push(y);
    }
  }
  return out;
}

/** A KUBE-SERVICES / KUBE-NODEPORTS rule's conditions beyond kube-proxy's plain -d/-p/--dport/comment, in words; null when none. */
export function extraConditions(r: Rule, allowDst: boolean): string | null {
  const words: string[] = [];
  for (const m of r.matches) {
    if (m.kind === 'unknown') words.push(`-m ${m.module} ${m.args.join(' ')}`.trim());
    else if (m.kind === 'addrtype') words.push(`-m addrtype${m.srcType ? `${m.srcInvert ? ' !' : ''} --src-type ${m.srcType.join(',')}` : ''}${m.dstType ? `${m.dstInvert ? ' !' : ''} --dst-type ${m.dstType.join(',')}` : ''}`);
    else if (m.kind === 'mark') words.push(`-m mark${m.invert ? ' !' : ''} --mark 0x${m.value.toString(16)}/0x${m.mask.toString(16)}`);
    else if (m.kind === 'recent' || m.kind === 'statistic' || m.kind === 'multiport' || m.kind === 'conntrack') words.push(`-m ${m.kind}`);
    else if (m.kind === 'port' && (m.sport || m.dportInvert)) words.push('a source port or inverted port match');
  }
  if (r.src) words.push(`${r.src.invert ? '! ' : ''}-s ${cidrOf(r.src)}`);
  if (!allowDst && r.dst) words.push(`-d ${cidrOf(r.dst)}`);
  if (r.inInterface) words.push(`-i ${r.inInterface.invert ? '! ' : ''}${r.inInterface.name}`);
  if (r.outInterface) words.push(`-o ${r.outInterface.invert ? '! ' : ''}${r.outInterface.name}`);
  if (r.fragment) words.push('-f');
  return words.length > 0 ? words.join(' ') : null;
}

/**
 * In a service port's own chains (KUBE-SVC-/SVL-/EXT-/XLB-/FW-/SEP-): matches kube-proxy never writes
 * there (marks, other addrtype forms, conntrack, interfaces, unknown modules), in words; null when none.
 * Source matches and `--src-type LOCAL` are checked where kube-proxy writes them.
 */
export function unexpectedInChain(r: Rule): string | null {
  const rest = {
    ...r,
    src: null,
    dst: null,
    matches: r.matches.filter((m) => m.kind !== 'statistic' && m.kind !== 'recent' && !(m.kind === 'addrtype' && !m.srcInvert && m.srcType?.length === 1 && m.srcType[0] === 'LOCAL' && !m.dstType)),
  };
  return extraConditions(rest, true);
}

/** `-m addrtype --dst-type LOCAL` and nothing else of addrtype */
export function onlyDstLocal(r: Rule): boolean {
  let found = false;
  for (const m of r.matches) {
    if (m.kind !== 'addrtype') continue;
    if (m.srcType || m.dstInvert || !m.dstType || m.dstType.length !== 1 || m.dstType[0] !== 'LOCAL') return false;
    found = true;
  }
  return found;
}

