/**
 * kube-proxy's iptables (iptables-save output or its own restore input) →
 * a rule set.
 *
 * Starts from what names services — the `"ns/name:port cluster IP"`,
 * `external IP`, `loadbalancer IP` rules of nat KUBE-SERVICES, the rules of
 * KUBE-NODEPORTS, the REJECT/DROP rules of the filter table — and follows the
 * jumps: KUBE-SVC-/KUBE-SVL- (endpoints in order, ClientIP affinity),
 * KUBE-EXT- (external traffic policy), KUBE-FW- (source ranges), KUBE-SEP-
 * (the DNAT target: the endpoint). Reads the current layout (v1.24+:
 * KUBE-EXT-, KUBE-SVL-, KUBE-PROXY-FIREWALL) and the older one (KUBE-XLB-,
 * KUBE-FW- ending in KUBE-MARK-DROP, NodePort masquerade rules in
 * KUBE-SVC-/KUBE-NODEPORTS), either argument order, with or without counters.
 *
 * Nothing is dropped silently: every rule it does not turn into the rule set
 * is listed in `notUnderstood` with its line and why (chains of other
 * software, unknown matches, chains the dump references but does not define),
 * and `warnings` says what could not be told from the text.
 */
import type { RuleSet, Service, ServicePort, Endpoint } from '../types.ts';
import { API_VERSION } from '../types.ts';
import { DEFAULT_AFFINITY_SECONDS, DEFAULT_MASQUERADE_MARK, DEFAULT_NODEPORT_RANGE, ruleSetModel } from '../model.ts';
import { validateRuleSet } from '../validate.ts';
import { LOCALHOST_NODEPORTS_LIMIT } from '../limits.ts';
import type { ProtocolName } from '../../dataplane/addr.ts';
import { formatIPv4, parseIPv4, parseCidr, cidrContains, formatCidr } from '../../dataplane/addr.ts';
import type { ParsedIptables, Rule, Table, AddrMatch } from './parser.ts';
import { parseIptablesSave } from './parser.ts';
import { serviceFromComment } from './linear.ts';
import { endpointChain, SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX, XLB_PREFIX } from './hash.ts';

export interface NotUnderstood {
  /** 1-based line in the text */
  line: number;
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
  /** the node's addresses (else read from the dump's rules where they name them); also tell whether a source range admits the node */
  nodeAddresses?: string[];
  /** the NodePort range ("LOW-HIGH"); default: 30000-32767, widened to the dump's NodePorts when they fall outside it */
  nodePortRange?: string;
}

/** The text of a limit every import with localhost NodePorts reports (also in the README and `trace`). */
export { LOCALHOST_NODEPORTS_LIMIT };

/** The text cannot be imported at all (an IPv6 dump, or no kube-proxy chains). */
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

interface EndpointRec {
  address: string;
  port: number;
  text: string;
}

interface PortRec {
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

interface Claim {
  kind: 'cluster' | 'external' | 'lb' | 'nodePort';
  /** the address (null for a NodePort) */
  ip: string | null;
  port: number;
  /** nat rules rank before filter rules: the kernel's nat PREROUTING decides before the filter table */
  rank: number;
  line: number;
}

const FILTER_RANK = 1e9;

const SERVICE_SUFFIXES: [RegExp, string][] = [
  [/^(\S+) cluster IP$/, 'cluster'],
  [/^(\S+) external IP$/, 'external'],
  [/^(\S+) loadbalancer IP$/, 'lb'],
  [/^(\S+) has no endpoints$/, 'noEndpoints'],
  [/^(\S+) has no local endpoints$/, 'noLocal'],
  [/^(\S+) traffic not accepted by (\S+)$/, 'firewall'],
];

function classifyComment(comment: string | null): { name: string; kind: string } | null {
  if (comment === null) return null;
  for (const [re, kind] of SERVICE_SUFFIXES) {
    const m = re.exec(comment);
    if (m) return { name: m[1], kind };
  }
  return null;
}

function isIPProto(name: string | undefined): name is 'tcp' | 'udp' | 'sctp' {
  return name === 'tcp' || name === 'udp' || name === 'sctp';
}

/** the rule's single destination port (`--dport N`, not inverted), or null */
function dportOf(r: Rule): number | null {
  for (const m of r.matches) {
    if (m.kind === 'port' && m.dport && !m.dportInvert && m.dport.lo === m.dport.hi) return m.dport.lo;
  }
  return null;
}

function protoOf(r: Rule): 'tcp' | 'udp' | 'sctp' | null {
  if (r.protocol && !r.protocol.invert && isIPProto(r.protocol.name)) return r.protocol.name;
  if (r.protocol && !r.protocol.invert) {
    const n = r.protocol.number;
    return n === 6 ? 'tcp' : n === 17 ? 'udp' : n === 132 ? 'sctp' : null;
  }
  return null;
}

function hostOf(a: AddrMatch | null): string | null {
  if (!a || a.invert || a.mask !== 0xffffffff) return null;
  return formatIPv4(a.net);
}

function cidrOf(a: AddrMatch): string {
  return a.bits >= 0 ? `${formatIPv4(a.net)}/${a.bits}` : a.text;
}

function jumpOf(r: Rule): string | null {
  return r.target && r.target.kind === 'jump' ? r.target.chain : null;
}

function hasUnknown(r: Rule): string | null {
  for (const m of r.matches) if (m.kind === 'unknown') return m.reason;
  if (r.target && r.target.kind === 'unknown') return r.target.reason;
  if (r.inInterface || r.outInterface) return 'interface matches are not part of a rule set';
  if (r.fragment) return 'fragment matches are not part of a rule set';
  return null;
}

function addrtypeOf(r: Rule): { src: string[] | null; dst: string[] | null } | null {
  for (const m of r.matches) if (m.kind === 'addrtype') return { src: m.srcInvert ? null : m.srcType, dst: m.dstInvert ? null : m.dstType };
  return null;
}

function recentOf(r: Rule) {
  for (const m of r.matches) if (m.kind === 'recent') return m;
  return null;
}

function statisticOf(r: Rule) {
  for (const m of r.matches) if (m.kind === 'statistic') return m;
  return null;
}

function chainRole(chain: string): 'svc' | 'svl' | 'ext' | 'fw' | 'xlb' | 'sep' | null {
  if (chain.startsWith(SVC_PREFIX)) return 'svc';
  if (chain.startsWith(SVL_PREFIX)) return 'svl';
  if (chain.startsWith(EXT_PREFIX)) return 'ext';
  if (chain.startsWith(FW_PREFIX)) return 'fw';
  if (chain.startsWith(XLB_PREFIX)) return 'xlb';
  if (chain.startsWith(SEP_PREFIX)) return 'sep';
  return null;
}

/** the comment of kube-proxy's rule sending pods' traffic for external destinations to the cluster policy chain */
const POD_RULE = /^(pod traffic for \S+ external destinations|Redirect pods trying to reach external loadbalancer VIP to clusterIP)$/;

/** kube-proxy's own chains that carry no service data */
const TARGET_KINDS = new Set(['ACCEPT', 'DROP', 'RETURN', 'REJECT', 'MASQUERADE', 'SNAT', 'DNAT', 'MARK', 'LOG']);

const KUBE_INFRA_CHAINS = new Set([
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

function foreignChain(chain: string): string {
  const who = softwareOf(chain);
  return who ? `chain ${chain} is ${who}'s, not kube-proxy's` : `chain ${chain} is not kube-proxy's`;
}

/**
 * Merge sequences that are each in the same underlying order into one order
 * (a topological sort, ties to the lowest rank). `cycle.found` tells whether
 * the sequences disagreed (then the lowest-ranked node broke the cycle).
 */
function mergeOrders<T>(sequences: T[][], rank: (x: T) => number, cycle: { found: boolean } = { found: false }): T[] {
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
function extraConditions(r: Rule, allowDst: boolean): string | null {
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
function unexpectedInChain(r: Rule): string | null {
  const rest = {
    ...r,
    src: null,
    dst: null,
    matches: r.matches.filter((m) => m.kind !== 'statistic' && m.kind !== 'recent' && !(m.kind === 'addrtype' && !m.srcInvert && m.srcType?.length === 1 && m.srcType[0] === 'LOCAL' && !m.dstType)),
  };
  return extraConditions(rest, true);
}

/** `-m addrtype --dst-type LOCAL` and nothing else of addrtype */
function onlyDstLocal(r: Rule): boolean {
  let found = false;
  for (const m of r.matches) {
    if (m.kind !== 'addrtype') continue;
    if (m.srcType || m.dstInvert || !m.dstType || m.dstType.length !== 1 || m.dstType[0] !== 'LOCAL') return false;
    found = true;
  }
  return found;
}

class Importer {
  readonly notUnderstood: NotUnderstood[] = [];
  readonly otherSoftware: NotUnderstood[] = [];
  readonly limits: NotUnderstood[] = [];
  readonly warnings: string[] = [];
  /** address:port/proto (or NodePort port/proto) → the chain a conditional or not-understood rule for it jumps to, and its line */
  private readonly conditional = new Map<string, { target: string | null; line: number }>();
  private nodeAddressesFrom: 'option' | 'dump' | null = null;
  private readonly nodePortRange: string | null;
  private readonly localhostNodePortLines: number[] = [];
  private readonly understood = new Set<Rule>();
  private readonly reported = new Set<Rule>();
  private readonly ports = new Map<string, PortRec>();
  private readonly chainOwner = new Map<string, PortRec>();
  private readonly processed = new Set<string>();
  private readonly nat: Table | undefined;
  private readonly filter: Table | undefined;
  private nodeAddresses: string[] | null;
  private clusterCIDRs: string[] = [];
  private masqueradeAll = false;
  private mark: number | null = null;

  constructor(private readonly parsed: ParsedIptables, opts: ImportOptions) {
    this.nat = parsed.tables.get('nat');
    this.filter = parsed.tables.get('filter');
    this.nodeAddresses = opts.nodeAddresses && opts.nodeAddresses.length > 0 ? opts.nodeAddresses : null;
    if (this.nodeAddresses) this.nodeAddressesFrom = 'option';
    this.nodePortRange = opts.nodePortRange ?? null;
  }

  /**
   * An address served by the kernel for some packets only: left out of the port. A ClusterIP (one per
   * service, shared by its ports) cannot be left out of one port alone: the port is left out.
   */
  private exclude(rec: PortRec, kind: string, ip: string, line: number): void {
    rec.excluded.set(ip, line);
    if (kind === 'cluster' && rec.tainted === null) rec.tainted = { line, reason: `its ClusterIP rule matches only some packets` };
  }

  /** Other software's rule: left to the kernel, listed apart. */
  private other(r: Rule, reason: string): void {
    if (this.reported.has(r)) return;
    this.reported.add(r);
    this.otherSoftware.push({ line: r.line, text: r.text.trim(), reason });
    this.otherChains.push([r.table, r.chain]);
  }

  private readonly otherChains: [string, string][] = [];

  private limit(r: Rule | null, line: number, reason: string): void {
    this.limits.push({ line: r?.line ?? line, text: r ? r.text.trim() : '', reason });
  }

  /** The node's addresses where the dump names them: `-d ADDRESS -j KUBE-NODEPORTS` (kube-proxy's --nodeport-addresses). */
  private nodeAddressesFromDump(): void {
    if (this.nodeAddresses) return;
    const found: string[] = [];
    for (const r of this.chain(this.nat, 'KUBE-SERVICES')?.rules ?? []) {
      const a = jumpOf(r) === 'KUBE-NODEPORTS' ? hostOf(r.dst) : null;
      if (a !== null && !a.startsWith('127.') && !found.includes(a)) found.push(a);
    }
    if (found.length > 0) {
      this.nodeAddresses = found;
      this.nodeAddressesFrom = 'dump';
      this.warn(`the node's addresses are taken from the dump's NodePort rules (-d … -j KUBE-NODEPORTS): ${found.join(', ')}`);
    }
  }

  private ok(r: Rule): void {
    this.understood.add(r);
  }

  private no(r: Rule, reason: string): void {
    if (this.reported.has(r)) return;
    this.reported.add(r);
    this.notUnderstood.push({ line: r.line, text: r.text.trim(), reason });
    // a rule not understood in a service port's own chains: what the kernel does for that port is not known
    const owner = this.chainOwner.get(r.chain);
    if (owner && owner.tainted === null) owner.tainted = { line: r.line, reason };
  }

  private warn(message: string): void {
    if (!this.warnings.includes(message)) this.warnings.push(message);
  }

  private port(name: string, proto: 'tcp' | 'udp' | 'sctp'): PortRec {
    const key = `${name}|${proto}`;
    let rec = this.ports.get(key);
    if (!rec) {
      rec = {
        key,
        name,
        proto,
        clusterIP: null,
        port: null,
        nodePort: null,
        externalIPs: [],
        lbIPs: [],
        unclassifiedIPs: [],
        sourceRanges: [],
        lbIPSources: false,
        iTPLocal: false,
        eTPLocal: false,
        affinitySeconds: 0,
        clusterEndpoints: null,
        localEndpoints: null,
        hasRemoteOnly: false,
        missing: [],
        natOrder: Infinity,
        filterOrder: Infinity,
        chainOrder: new Map(),
        claims: [],
        excluded: new Map(),
        masqForm: null,
        externalUnknown: null,
        tainted: null,
      };
      this.ports.set(key, rec);
    }
    return rec;
  }

  /** where the port first shows in each table (restore input lists rules in kube-proxy's write order) */
  private seen(rec: PortRec, table: 'nat' | 'filter', r: Rule): void {
    if (table === 'nat') rec.natOrder = Math.min(rec.natOrder, r.line);
    else rec.filterOrder = Math.min(rec.filterOrder, r.line);
    const key = `${table} ${r.chain}`;
    rec.chainOrder.set(key, Math.min(rec.chainOrder.get(key) ?? Infinity, r.line));
  }

  private setServicePort(rec: PortRec, port: number, r: Rule): void {
    if (rec.port === null) rec.port = port;
    else if (rec.port !== port) this.warn(`${rec.name}: rules disagree on the service port (${rec.port}, ${port} at line ${r.line})`);
  }

  private setClusterIP(rec: PortRec, ip: string, r: Rule): void {
    if (rec.clusterIP === null) rec.clusterIP = ip;
    else if (rec.clusterIP !== ip) this.warn(`${rec.name}: rules disagree on the ClusterIP (${rec.clusterIP}, ${ip} at line ${r.line})`);
  }

  private chain(table: Table | undefined, name: string) {
    return table?.chains.get(name);
  }

  /** Follow a jump from a rule of `rec`; a chain the dump lacks is reported on the jumping rule. */
  private follow(rec: PortRec, target: string, from: Rule): void {
    const role = chainRole(target);
    if (role === null) return;
    const owner = this.chainOwner.get(target);
    if (owner && owner !== rec) {
      this.warn(`chain ${target} is used by both ${owner.name} and ${rec.name} (line ${from.line})`);
      return;
    }
    this.chainOwner.set(target, rec);
    if (this.processed.has(target)) return;
    this.processed.add(target);
    const chain = this.chain(this.nat, target);
    if (!chain) {
      rec.missing.push(target);
      this.notUnderstood.push({
        line: from.line,
        text: from.text.trim(),
        reason: `jumps to ${target}, which the dump does not define (a partial dump?): what it does for ${rec.name} is unknown`,
      });
      // without its chain, what the kernel does there is unknown: left out rather than rejected (never broader).
      // An external traffic or firewall chain only concerns the NodePort and the external/load-balancer IPs.
      if (role === 'ext' || role === 'fw' || role === 'xlb') rec.externalUnknown = { line: from.line, chain: target };
      else if (rec.tainted === null) rec.tainted = { line: from.line, reason: `the dump does not define ${target}` };
      return;
    }
    switch (role) {
      case 'svc':
      case 'svl':
        this.policyChain(rec, target, chain.rules, role);
        break;
      case 'xlb':
        this.xlbChain(rec, target, chain.rules);
        break;
      case 'ext':
        this.extChain(rec, chain.rules);
        break;
      case 'fw':
        this.fwChain(rec, chain.rules);
        break;
      case 'sep':
        break; // read by the policy chain that jumps here
    }
  }

  private masqueradeRule(rec: PortRec, r: Rule): boolean {
    // "<name> cluster IP" masquerade: off-cluster sources (or everything with masqueradeAll)
    if (jumpOf(r) !== 'KUBE-MARK-MASQ') return false;
    const dst = hostOf(r.dst);
    const port = dportOf(r);
    // v1.22-v1.23: "<name> external IP" / "loadbalancer IP" masquerade in the service chain, off-cluster sources only
    const kind = classifyComment(r.comment)?.kind;
    if ((kind === 'external' || kind === 'lb') && dst !== null && port !== null && extraConditions({ ...r, src: null }, true) === null) {
      if (r.src && !r.src.invert) return false;
      if (r.src) {
        this.clusterCIDR(cidrOf(r.src), r);
        this.limit(r, r.line, `${rec.name}: kube-proxy (v1.22-v1.23 layout) does not masquerade pods of ${cidrOf(r.src)} reaching ${dst}:${port}; tunproxy masquerades all traffic to external and load-balancer IPs of an externalTrafficPolicy Cluster service, as kube-proxy v1.24+ does`);
      }
      this.ok(r);
      return true;
    }
    if (extraConditions({ ...r, src: null }, true) !== null || addrtypeOf(r) || statisticOf(r) || recentOf(r)) return false;
    if (dst !== null && port !== null && (rec.clusterIP === null || dst === rec.clusterIP)) {
      if (r.src && r.src.invert) this.clusterCIDR(cidrOf(r.src), r);
      else if (!r.src) this.masqueradeAll = true;
      else return false;
      rec.masqForm = r.src ? cidrOf(r.src) : 'all';
      this.ok(r);
      return true;
    }
    // pre-1.24: NodePort traffic masqueraded in KUBE-SVC- / KUBE-NODEPORTS
    if (!r.dst && !r.src && port !== null && (rec.nodePort === null || rec.nodePort === port)) {
      if (rec.nodePort === null) rec.nodePort = port;
      this.ok(r);
      return true;
    }
    return false;
  }

  private clusterCIDR(cidr: string, r: Rule): void {
    if (!this.clusterCIDRs.includes(cidr)) {
      if (this.clusterCIDRs.length > 0) this.warn(`more than one cluster CIDR (${this.clusterCIDRs[0]}, ${cidr} at line ${r.line}): the first is kept`);
      this.clusterCIDRs.push(cidr);
    }
  }

  private endpointOf(rec: PortRec, sep: string, from: Rule): EndpointRec | null {
    const chain = this.chain(this.nat, sep);
    if (!chain) {
      rec.missing.push(sep);
      if (!this.processed.has(sep)) {
        this.processed.add(sep);
        this.notUnderstood.push({
          line: from.line,
          text: from.text.trim(),
          reason: `jumps to ${sep}, which the dump does not define (a partial dump?): that endpoint of ${rec.name} is unknown`,
        });
      }
      if (rec.tainted === null) rec.tainted = { line: from.line, reason: `the dump does not define ${sep}` };
      return null;
    }
    this.chainOwner.set(sep, rec);
    this.processed.add(sep);
    let ep: EndpointRec | null = null;
    for (const r of chain.rules) {
      const t = r.target;
      const why = hasUnknown(r) ?? unexpectedInChain(r) ?? (addrtypeOf(r) || statisticOf(r) || recentOf(r)?.action === 'rcheck' || r.dst || (r.src && (r.src.invert || jumpOf(r) !== 'KUBE-MARK-MASQ')) ? 'a match kube-proxy does not write in an endpoint chain' : null);
      if (why) {
        this.no(r, hasUnknown(r) ?? `conditions kube-proxy does not write in an endpoint chain (${why})`);
        continue;
      }
      if (t && t.kind === 'DNAT') {
        if (t.port === null) {
          this.no(r, 'DNAT without a port: the endpoint port is not known');
          continue;
        }
        const rp = protoOf(r);
        if (rp !== null && rp !== rec.proto) this.warn(`${sep}: DNAT for ${rp} in a ${rec.proto} service port (line ${r.line})`);
        ep = { address: formatIPv4(t.addr), port: t.port, text: `${formatIPv4(t.addr)}:${t.port}` };
        this.ok(r);
      } else if (jumpOf(r) === 'KUBE-MARK-MASQ' && hostOf(r.src) !== null) {
        this.ok(r); // hairpin: the endpoint talking to its own service
      } else {
        this.no(r, `not a rule kube-proxy writes in an endpoint chain`);
      }
    }
    if (ep) {
      for (const r of chain.rules) {
        if (jumpOf(r) === 'KUBE-MARK-MASQ' && hostOf(r.src) !== null && hostOf(r.src) !== ep.address) {
          this.warn(`${sep}: the hairpin rule's source ${hostOf(r.src)} is not the endpoint ${ep.address} (line ${r.line})`);
        }
      }
      if (endpointChain(rec.name, rec.proto, ep.text) !== sep) {
        this.warn(`${sep} is not the chain name kube-proxy gives ${rec.name} -> ${ep.text} (${endpointChain(rec.name, rec.proto, ep.text)}); imported anyway`);
      }
    } else {
      this.warn(`${sep} (${rec.name}) has no DNAT rule: endpoint left out`);
    }
    return ep;
  }

  /** KUBE-SVC- / KUBE-SVL-: masquerade rule, affinity rules, then one jump per endpoint */
  private policyChain(rec: PortRec, chain: string, rules: Rule[], role: 'svc' | 'svl'): void {
    const eps: EndpointRec[] = [];
    const affinityEps: EndpointRec[] = [];
    const probabilities: (number | null)[] = [];
    for (const r of rules) {
      const why = hasUnknown(r) ?? unexpectedInChain(r);
      if (why) {
        this.no(r, hasUnknown(r) ?? `conditions kube-proxy does not write in a service chain (${why})`);
        continue;
      }
      if (this.masqueradeRule(rec, r)) continue;
      const target = jumpOf(r);
      if (r.src || r.dst || addrtypeOf(r)) {
        this.no(r, `not a rule kube-proxy writes in ${role === 'svc' ? 'a cluster' : 'a local'} policy chain (a source, destination or addrtype match)`);
        continue;
      }
      if (target === 'KUBE-MARK-DROP' && r.comment !== null && r.comment.endsWith('has no local endpoints')) {
        this.ok(r); // pre-1.24: no local endpoints for external traffic
        this.markDropLimit(rec, r);
        continue;
      }
      if (target !== null && target.startsWith(SEP_PREFIX)) {
        const recent = recentOf(r);
        const ep = this.endpointOf(rec, target, r);
        if (recent) {
          if (recent.action !== 'rcheck' || recent.seconds === null) {
            this.no(r, 'a recent match other than kube-proxy\'s --rcheck --seconds');
            continue;
          }
          if (rec.affinitySeconds !== 0 && rec.affinitySeconds !== recent.seconds) {
            this.warn(`${rec.name}: affinity timeouts differ (${rec.affinitySeconds}, ${recent.seconds} at line ${r.line})`);
          }
          rec.affinitySeconds = recent.seconds;
          if (ep) affinityEps.push(ep);
          this.ok(r);
          continue;
        }
        const stat = statisticOf(r);
        if (stat && (stat.mode !== 'random' || stat.invert)) {
          this.no(r, 'a statistic match other than --mode random');
          continue;
        }
        probabilities.push(stat ? stat.probability : null);
        if (ep) eps.push(ep);
        this.ok(r);
        continue;
      }
      this.no(r, `not a rule kube-proxy writes in ${role === 'svc' ? 'a cluster' : 'a local'} policy chain`);
    }
    // kube-proxy gives endpoint i of n the probability 1/(n-i), the last one no statistic match
    const n = probabilities.length;
    for (let i = 0; i < n; i++) {
      const p = probabilities[i];
      const want = i === n - 1 ? null : 1 / (n - i);
      const fits = want === null ? p === null : p !== null && Math.abs(p - want) < 1e-8;
      if (!fits) {
        this.warn(`${chain} (${rec.name}): endpoint probabilities are not kube-proxy's equal shares; the imported endpoints share equally`);
        break;
      }
    }
    const list = eps.length > 0 || affinityEps.length === 0 ? eps : affinityEps;
    if (role === 'svc') rec.clusterEndpoints = list;
    else rec.localEndpoints = list;
  }

  /** pre-1.24 KUBE-XLB-: externalTrafficPolicy Local (the short-circuit rules, then the local endpoints) */
  private xlbChain(rec: PortRec, chain: string, rules: Rule[]): void {
    rec.eTPLocal = true;
    const endpointRules: Rule[] = [];
    for (const r of rules) {
      const why = hasUnknown(r) ?? unexpectedInChain(r) ?? (r.dst || (r.src && r.src.invert) ? 'a destination or inverted source match' : null);
      if (why) {
        this.no(r, hasUnknown(r) ?? `conditions kube-proxy does not write in a service chain (${why})`);
        continue;
      }
      const target = jumpOf(r);
      const local = addrtypeOf(r)?.src?.includes('LOCAL') === true;
      if (target !== null && target.startsWith(SVC_PREFIX)) {
        if (!!r.src === local || (r.src && !POD_RULE.test(r.comment ?? ''))) {
          this.no(r, 'a jump to the cluster policy chain that is neither kube-proxy\'s pod rule nor its --src-type LOCAL rule');
          continue;
        }
        if (r.src && !r.src.invert) this.clusterCIDR(cidrOf(r.src), r);
        this.ok(r);
        this.follow(rec, target, r);
        continue;
      }
      if (target === 'KUBE-MARK-MASQ' && local && !r.src) {
        this.ok(r);
        continue;
      }
      endpointRules.push(r);
    }
    this.policyChain(rec, chain, endpointRules, 'svl');
  }

  /** KUBE-EXT-: masquerade (Cluster) or the short-circuit rules (Local), then the policy chain */
  private extChain(rec: PortRec, rules: Rule[]): void {
    for (const r of rules) {
      const why = hasUnknown(r) ?? unexpectedInChain(r) ?? (r.dst || (r.src && r.src.invert) ? 'a destination or inverted source match' : null);
      if (why) {
        this.no(r, hasUnknown(r) ?? `conditions kube-proxy does not write in a service chain (${why})`);
        continue;
      }
      if (statisticOf(r) || recentOf(r)) {
        this.no(r, 'not a rule kube-proxy writes in an external traffic chain (statistic or recent)');
        continue;
      }
      const target = jumpOf(r);
      const c = r.comment ?? '';
      if (target === 'KUBE-MARK-MASQ' && !addrtypeOf(r) && !r.src) {
        rec.eTPLocal = false;
        this.ok(r);
      } else if (target === 'KUBE-MARK-MASQ' && addrtypeOf(r)?.src?.includes('LOCAL') && !r.src) {
        rec.eTPLocal = true;
        this.ok(r);
      } else if (target !== null && target.startsWith(SVC_PREFIX) && r.src && !r.src.invert && !addrtypeOf(r) && POD_RULE.test(c)) {
        rec.eTPLocal = true; // pod traffic for external destinations
        this.clusterCIDR(cidrOf(r.src), r);
        this.ok(r);
        this.follow(rec, target, r);
      } else if (target !== null && target.startsWith(SVC_PREFIX) && addrtypeOf(r)?.src?.includes('LOCAL') && !r.src) {
        rec.eTPLocal = true;
        this.ok(r);
        this.follow(rec, target, r);
      } else if (target !== null && (target.startsWith(SVC_PREFIX) || target.startsWith(SVL_PREFIX)) && !r.src && !addrtypeOf(r)) {
        if (target.startsWith(SVL_PREFIX)) rec.eTPLocal = true;
        this.ok(r);
        this.follow(rec, target, r);
      } else {
        this.no(r, `not a rule kube-proxy writes in an external traffic chain${c ? '' : ''}`);
      }
    }
  }

  /** KUBE-FW-: one rule per source range, the LB IPs when a range holds the node, then the drop */
  private fwChain(rec: PortRec, rules: Rule[]): void {
    const sources: { cidr: string; rule: Rule }[] = [];
    for (const r of rules) {
      const why = hasUnknown(r) ?? unexpectedInChain(r) ?? (r.dst || (r.src && r.src.invert) ? 'a destination or inverted source match' : null);
      if (why) {
        this.no(r, hasUnknown(r) ?? `conditions kube-proxy does not write in a service chain (${why})`);
        continue;
      }
      const target = jumpOf(r);
      if (addrtypeOf(r) || statisticOf(r) || recentOf(r)) {
        this.no(r, 'not a rule kube-proxy writes in a firewall chain (addrtype, statistic or recent)');
        continue;
      }
      if (r.src && !r.src.invert && target !== null && chainRole(target) !== null && chainRole(target) !== 'sep') {
        sources.push({ cidr: cidrOf(r.src), rule: r });
        this.ok(r);
        this.follow(rec, target, r);
      } else if (target === null && r.comment !== null && r.comment.startsWith('other traffic to ')) {
        this.ok(r);
      } else if (target === 'KUBE-MARK-DROP' && !r.src) {
        this.ok(r); // pre-1.24
        this.markDropLimit(rec, r);
      } else if (target === 'KUBE-MARK-MASQ' && !r.src) {
        this.ok(r); // pre-1.21: LB traffic masqueraded in the FW chain
      } else if (target !== null && chainRole(target) !== null && !r.src) {
        // pre-1.24 without source ranges: straight on
        this.ok(r);
        this.follow(rec, target, r);
      } else {
        this.no(r, 'not a rule kube-proxy writes in a firewall chain');
      }
    }
    rec.sourceRanges = sources.map((s) => s.cidr);
    this.fwSources = this.fwSources ?? new Map();
    this.fwSources.set(rec, sources);
  }

  /** pre-1.24: KUBE-MARK-DROP only marks; kubelet's KUBE-FIREWALL drops marked packets on INPUT/OUTPUT, not when forwarded */
  private markDropLimit(rec: PortRec, r: Rule): void {
    this.limit(r, r.line, `${rec.name}: the kernel only marks this traffic for dropping (KUBE-MARK-DROP); kubelet's KUBE-FIREWALL drops it where it is delivered to the node (INPUT), while forwarded packets go on unserved; tunproxy drops it (source_range / no_local_endpoints) either way`);
  }

  private fwSources: Map<PortRec, { cidr: string; rule: Rule }[]> | null = null;

  /** The trailing `-s <LB IP>` rules kube-proxy adds when a source range holds the node are not source ranges. */
  private settleSourceRanges(rec: PortRec): void {
    const sources = this.fwSources?.get(rec);
    if (!sources) return;
    const k = rec.lbIPs.length;
    let ranges = sources.map((s) => s.cidr);
    if (k > 0 && sources.length > k) {
      const tail = sources.slice(sources.length - k);
      const tailIsLbIPs = tail.every((s, i) => s.cidr === `${rec.lbIPs[i]}/32`);
      const head = ranges.slice(0, ranges.length - k);
      const nodeAddrs = this.nodeAddresses;
      const holdsNode = nodeAddrs !== null && head.some((c) => {
        const p = parseCidr(c);
        return p !== null && nodeAddrs.some((a) => parseIPv4(a) >= 0 && cidrContains(p, parseIPv4(a)));
      });
      if (tailIsLbIPs && (nodeAddrs === null || holdsNode)) {
        ranges = head;
        rec.lbIPSources = true;
        if (nodeAddrs === null) {
          this.warn(`${rec.name}: its firewall chain admits the load-balancer IPs as sources (a source range holds the node), but the node's addresses are not known: give them with --node-address`);
        }
      }
    }
    rec.sourceRanges = ranges.map((c) => {
      const p = parseCidr(c);
      return p ? formatCidr(p) : c;
    });
  }

  private natServices(): void {
    const chain = this.chain(this.nat, 'KUBE-SERVICES');
    if (!chain) return;
    for (const r of chain.rules) {
      if (jumpOf(r) === 'KUBE-NODEPORTS') {
        const at = addrtypeOf(r);
        const plainHook = onlyDstLocal(r) ? extraConditions({ ...r, matches: r.matches.filter((m) => m.kind !== 'addrtype') }, true) === null : !at && extraConditions(r, true) === null;
        if (!plainHook) {
          // the kernel answers NodePorts only for some packets: tunproxy cannot tell which, so none is imported
          this.no(r, hasUnknown(r) ?? `a jump to KUBE-NODEPORTS with conditions tunproxy does not model (${extraConditions(r, true)}): no NodePort is imported`);
          this.nodePortsHookConditional = true;
          continue;
        }
        if (at?.dst?.includes('LOCAL') || r.dst) {
          this.ok(r);
          if (!at && r.dst && !(r.dst.net === 0x7f000000 && r.dst.bits === 8) && this.nodeAddressesFrom === 'option' && this.nodeAddresses!.some((a) => a !== hostOf(r.dst))) this.warn('NodePorts answer only on the addresses the dump names (kube-proxy\'s --nodeport-addresses); tunproxy answers them on every node address in node.addresses');
          continue;
        }
      }
      const c = classifyComment(r.comment);
      const proto = protoOf(r);
      const dst = hostOf(r.dst);
      const port = dportOf(r);
      const target = jumpOf(r);
      const key = dst !== null && port !== null && proto !== null ? `${dst}:${port}/${proto}` : null;
      const why = hasUnknown(r);
      const serviceRule = c !== null && ['cluster', 'external', 'lb'].includes(c.kind) && proto !== null && dst !== null && port !== null && target !== null;
      // conditions kube-proxy's plain rules do not have (physdev, addrtype, marks, source matches) make the kernel
      // serve the address for some packets only: tunproxy cannot tell which, so it leaves the address out
      const masqRule = target === 'KUBE-MARK-MASQ';
      const extra = serviceRule && !masqRule ? extraConditions(r, true) : null;
      if (serviceRule && extra !== null) {
        const rec = this.port(c!.name, proto!);
        this.seen(rec, 'nat', r);
        this.setServicePort(rec, port!, r);
        if (onlyDstLocal(r) && extraConditions({ ...r, matches: r.matches.filter((m) => m.kind !== 'addrtype') }, true) === null) {
          // `-m addrtype --dst-type LOCAL`: the same as the plain rule where the address is the node's, else it never matches
          if (this.nodeAddresses?.includes(dst!)) {
            // fall through to the plain handling below
          } else {
            this.ok(r);
            this.exclude(rec, c!.kind, dst!, r.line);
            this.limit(r, r.line, `${c!.name}: ${key} is served by this rule only when ${dst} is a node address, which it is not (${this.nodeAddresses?.join(', ') || 'no node address known'}): not imported from this rule`);
            continue;
          }
        } else {
          const known = /physdev/.test(extra) && /addrtype/.test(extra);
          if (known) this.ok(r);
          else this.no(r, why ?? `conditions tunproxy does not model (${extra})`);
          if (!this.conditional.has(key!)) this.conditional.set(key!, { target, line: r.line });
          this.exclude(rec, c!.kind, dst!, r.line);
          this.limit(r, r.line, `${c!.name}: the kernel sends ${key} to ${target} only for packets with ${extra}; tunproxy cannot tell those packets apart, so this address is left out for every source (narrower than the kernel)`);
          continue;
        }
      } else if (why) {
        this.no(r, why);
        if (key !== null && !this.conditional.has(key)) this.conditional.set(key, { target, line: r.line });
        continue;
      }
      if (!c || !['cluster', 'external', 'lb'].includes(c.kind)) {
        this.no(r, r.comment === null ? 'no comment naming the service port' : `comment "${r.comment}" does not name a service's cluster, external or load-balancer IP`);
        if (key !== null && !this.conditional.has(key)) this.conditional.set(key, { target, line: r.line });
        continue;
      }
      if (proto === null || dst === null || port === null || target === null) {
        this.no(r, 'expected -d <address> -p tcp|udp|sctp --dport <port> -j <chain>');
        continue;
      }
      const rec = this.port(c.name, proto);
      this.seen(rec, 'nat', r);
      this.setServicePort(rec, port, r);
      if (!masqRule) {
        // an earlier rule for the same address and port that matches only some packets sends those elsewhere
        const earlier = this.conditional.get(key!);
        if (earlier && earlier.target !== target) {
          this.ok(r);
          this.exclude(rec, c.kind, dst, r.line);
          this.limit(r, r.line, `${c.name}: ${key} is taken first, for some packets, by the rule at line ${earlier.line}; tunproxy cannot tell those packets apart, so ${dst} is left out of ${c.name}`);
          continue;
        }
        if (earlier && earlier.target === target && rec.excluded.get(dst) === earlier.line) {
          // the conditional rule sends its packets where this one sends all the others: served for every source
          rec.excluded.delete(dst);
          const at = this.limits.findIndex((l) => l.line === earlier.line);
          if (at >= 0) this.limits.splice(at, 1);
        }
        rec.claims.push({ kind: c.kind as Claim['kind'], ip: dst, port, rank: r.line, line: r.line });
      }
      if (c.kind === 'cluster') {
        this.setClusterIP(rec, dst, r);
        if (masqRule) {
          // before v1.13 the masquerade rule sat in KUBE-SERVICES
          if (r.src && r.src.invert) this.clusterCIDR(cidrOf(r.src), r);
          else if (!r.src) this.masqueradeAll = true;
          else {
            this.no(r, `a masquerade rule for the ClusterIP with a source match kube-proxy does not write (${cidrOf(r.src)})`);
            continue;
          }
          rec.masqForm = r.src ? cidrOf(r.src) : 'all';
          this.ok(r);
          continue;
        }
        if (target.startsWith(SVL_PREFIX)) rec.iTPLocal = true;
        else if (!target.startsWith(SVC_PREFIX)) {
          this.no(r, `a ClusterIP rule jumping to ${target}, not a KUBE-SVC-/KUBE-SVL- chain`);
          continue;
        }
      } else if (c.kind === 'external') {
        if (masqRule) {
          if (extraConditions(r, true) !== null) {
            this.no(r, `a masquerade rule for an external IP with conditions kube-proxy does not write (${extraConditions(r, true)})`);
            continue;
          }
          this.ok(r);
          continue;
        }
        if (!rec.externalIPs.includes(dst)) rec.externalIPs.push(dst);
      } else {
        if (masqRule) {
          this.no(r, 'a masquerade rule for a load-balancer IP in KUBE-SERVICES');
          continue;
        }
        if (!rec.lbIPs.includes(dst)) rec.lbIPs.push(dst);
      }
      this.ok(r);
      this.follow(rec, target, r);
    }
  }

  private nodePortsHookConditional = false;

  private natNodePorts(): void {
    const chain = this.chain(this.nat, 'KUBE-NODEPORTS');
    if (!chain) return;
    if (this.nodePortsHookConditional) {
      for (const r of chain.rules) this.no(r, 'KUBE-NODEPORTS is reached only for some packets (see the jump to it): NodePorts are left out');
      return;
    }
    for (const r of chain.rules) {
      if (r.dst && r.dst.net === 0x7f000000 && r.dst.bits === 8 && !r.dst.invert) {
        // kube-proxy's --iptables-localhost-nodeports (with route_localnet): tunproxy does not serve them
        this.ok(r);
        this.localhostNodePortLines.push(r.line);
        continue;
      }
      const name = serviceFromComment(r.comment);
      const proto = protoOf(r);
      const port = dportOf(r);
      const target = jumpOf(r);
      const key = proto !== null && port !== null ? `NodePort ${port}/${proto}` : null;
      const why = hasUnknown(r) ?? extraConditions(r, false);
      if (why) {
        this.no(r, hasUnknown(r) ?? `conditions tunproxy does not model (${why})`);
        if (key !== null && !this.conditional.has(key)) this.conditional.set(key, { target, line: r.line });
        continue;
      }
      if (name === null || proto === null || port === null || target === null) {
        this.no(r, 'expected -m comment --comment <service port> -p tcp|udp|sctp --dport <nodePort> -j <chain>');
        continue;
      }
      const rec = this.port(name, proto);
      this.seen(rec, 'nat', r);
      const earlier = this.conditional.get(key!);
      if (earlier && earlier.target !== target) {
        this.ok(r);
        this.limit(r, r.line, `${name}: ${key} is taken first, for some packets, by the rule at line ${earlier.line}; tunproxy cannot tell those packets apart, so the NodePort is left out of ${name}`);
        continue;
      }
      if (target !== 'KUBE-MARK-MASQ') rec.claims.push({ kind: 'nodePort', ip: null, port, rank: r.line, line: r.line });
      if (rec.nodePort !== null && rec.nodePort !== port) this.warn(`${name}: two NodePorts (${rec.nodePort}, ${port} at line ${r.line}); the first is kept`);
      if (rec.nodePort === null) rec.nodePort = port;
      this.ok(r);
      if (target === 'KUBE-MARK-MASQ') continue; // pre-1.24
      if (target.startsWith(XLB_PREFIX)) rec.eTPLocal = true;
      this.follow(rec, target, r);
    }
  }

  /**
   * A filter rule for a service port with conditions kube-proxy does not write: not understood, and the
   * port is left out (the kernel rejects or drops only some of its packets). True when so.
   */
  private filterConditions(r: Rule): boolean {
    // the NodePort form: `-m addrtype --dst-type LOCAL` with no destination address
    const plain = { ...r, matches: r.matches.filter((m) => !(m.kind === 'addrtype' && onlyDstLocal(r) && !r.dst)) };
    const extra = hasUnknown(r) ?? extraConditions(plain, true);
    if (extra === null) return false;
    this.no(r, hasUnknown(r) ?? `conditions tunproxy does not model (${extra})`);
    const c = classifyComment(r.comment);
    const proto = protoOf(r);
    if (c && proto) {
      const rec = this.port(c.name, proto);
      if (rec.tainted === null) rec.tainted = { line: r.line, reason: `conditions tunproxy does not model (${extra})` };
    }
    return true;
  }

  private filterRules(): void {
    const services = this.chain(this.filter, 'KUBE-SERVICES');
    for (const r of services?.rules ?? []) {
      if (this.filterConditions(r)) continue;
      const c = classifyComment(r.comment);
      const proto = protoOf(r);
      const dst = hostOf(r.dst);
      const port = dportOf(r);
      const t = r.target?.kind;
      if (!c || (c.kind !== 'noEndpoints' && c.kind !== 'noLocal') || proto === null || dst === null || port === null || (t !== 'REJECT' && t !== 'DROP')) {
        this.no(r, 'not a "has no endpoints" REJECT or "has no local endpoints" DROP rule for a ClusterIP');
        continue;
      }
      const rec = this.port(c.name, proto);
      this.seen(rec, 'filter', r);
      this.setClusterIP(rec, dst, r);
      this.setServicePort(rec, port, r);
      if (c.kind === 'noLocal') {
        rec.iTPLocal = true;
        rec.hasRemoteOnly = true;
      }
      rec.claims.push({ kind: 'cluster', ip: dst, port, rank: FILTER_RANK + r.line, line: r.line });
      this.ok(r);
    }
    const ext = this.chain(this.filter, 'KUBE-EXTERNAL-SERVICES');
    for (const r of ext?.rules ?? []) {
      if (this.filterConditions(r)) continue;
      const c = classifyComment(r.comment);
      const proto = protoOf(r);
      const port = dportOf(r);
      const t = r.target?.kind;
      if (!c || (c.kind !== 'noEndpoints' && c.kind !== 'noLocal') || proto === null || port === null || (t !== 'REJECT' && t !== 'DROP')) {
        this.no(r, 'not a "has no endpoints" REJECT or "has no local endpoints" DROP rule for an external IP or NodePort');
        continue;
      }
      const rec = this.port(c.name, proto);
      this.seen(rec, 'filter', r);
      if (c.kind === 'noLocal') rec.eTPLocal = true;
      const dst = hostOf(r.dst);
      if (dst !== null) {
        this.setServicePort(rec, port, r);
        if (!rec.externalIPs.includes(dst) && !rec.lbIPs.includes(dst) && !rec.unclassifiedIPs.includes(dst)) rec.unclassifiedIPs.push(dst);
        rec.claims.push({ kind: 'external', ip: dst, port, rank: FILTER_RANK + r.line, line: r.line });
      } else if (addrtypeOf(r)?.dst?.includes('LOCAL') && !r.dst) {
        rec.claims.push({ kind: 'nodePort', ip: null, port, rank: FILTER_RANK + r.line, line: r.line });
        if (rec.nodePort === null) rec.nodePort = port;
        else if (rec.nodePort !== port) this.warn(`${rec.name}: two NodePorts (${rec.nodePort}, ${port} at line ${r.line}); the first is kept`);
      } else {
        this.no(r, 'expected -d <address> or -m addrtype --dst-type LOCAL');
        continue;
      }
      this.ok(r);
    }
    const fw = this.chain(this.filter, 'KUBE-PROXY-FIREWALL');
    for (const r of fw?.rules ?? []) {
      const c = classifyComment(r.comment);
      const proto = protoOf(r);
      const dst = hostOf(r.dst);
      if (c?.kind === 'firewall' && proto !== null && dst !== null && r.target?.kind === 'DROP' && !hasUnknown(r)) {
        const rec = this.port(c.name, proto);
        this.seen(rec, 'filter', r);
        if (!rec.lbIPs.includes(dst)) rec.lbIPs.push(dst);
        this.ok(r);
      } else {
        this.no(r, 'not a "traffic not accepted by KUBE-FW-…" DROP rule');
      }
    }
  }

  private infrastructure(): void {
    const mark = (value: number) => {
      if (this.mark === null) this.mark = value;
      else if (this.mark !== value) this.warn(`masquerade marks differ (0x${this.mark.toString(16)}, 0x${value.toString(16)})`);
    };
    for (const r of this.chain(this.nat, 'KUBE-MARK-MASQ')?.rules ?? []) {
      const t = r.target;
      if (t && t.kind === 'MARK' && (t.mask === t.value || t.mask === 0xffffffff) && t.value !== 0 && !hasUnknown(r) && !r.src && !r.dst) {
        mark(t.value);
        this.ok(r);
      } else this.no(r, 'KUBE-MARK-MASQ should only set the masquerade mark');
    }
    for (const r of this.chain(this.nat, 'KUBE-MARK-DROP')?.rules ?? []) {
      if (r.target?.kind === 'MARK') this.ok(r);
      else this.no(r, 'KUBE-MARK-DROP should only set the drop mark');
    }
    for (const r of this.chain(this.nat, 'KUBE-POSTROUTING')?.rules ?? []) {
      const t = r.target;
      if (hasUnknown(r)) this.no(r, hasUnknown(r)!);
      else if (t && (t.kind === 'MASQUERADE' || t.kind === 'RETURN' || t.kind === 'MARK')) this.ok(r);
      else this.no(r, 'not one of kube-proxy\'s KUBE-POSTROUTING rules');
    }
    for (const r of this.chain(this.filter, 'KUBE-FORWARD')?.rules ?? []) {
      const t = r.target?.kind;
      if (!hasUnknown(r) && (t === 'ACCEPT' || t === 'DROP')) this.ok(r);
      else this.no(r, 'not one of kube-proxy\'s KUBE-FORWARD rules');
    }
    for (const r of this.chain(this.filter, 'KUBE-FIREWALL')?.rules ?? []) {
      if (r.target?.kind === 'DROP') this.ok(r); // kubelet's localnet / marked-packet drops
      else this.no(r, 'not one of kubelet\'s KUBE-FIREWALL rules');
    }
    for (const r of this.chain(this.filter, 'KUBE-NODEPORTS')?.rules ?? []) {
      // the health check NodePort kube-proxy itself answers (externalTrafficPolicy Local): accepted, not a service
      if (r.comment?.endsWith('health check node port') && r.target?.kind === 'ACCEPT' && !hasUnknown(r)) this.ok(r);
      else this.no(r, 'not a health check node port rule');
    }
    // hooks from the built-in chains
    for (const table of [this.nat, this.filter]) {
      if (!table) continue;
      for (const chain of table.chains.values()) {
        if (chain.policy === null) continue;
        for (const r of chain.rules) {
          const target = jumpOf(r);
          if (target !== null && KUBE_INFRA_CHAINS.has(target) && !hasUnknown(r) && !r.src && !r.dst) this.ok(r);
          else if (target !== null && target.startsWith('KUBE-') && softwareOf(target) === null && !KUBE_INFRA_CHAINS.has(target)) this.no(r, `jumps to ${target} from a built-in chain: not kube-proxy's layout`);
          else if (target !== null && KUBE_INFRA_CHAINS.has(target)) this.no(r, `a jump to ${target} with conditions kube-proxy does not write`);
          else {
            const who = target !== null ? softwareOf(target) : null;
            this.other(r, `a rule of ${who ?? 'other software'} in the built-in chain ${chain.name} (${table.name})${target !== null && !TARGET_KINDS.has(target) ? `, jumping to ${target}` : ''}`);
          }
        }
      }
    }
    if (this.mark !== null) this.masqMark = this.mark;
  }

  private masqMark: number | null = null;

  /** Everything not yet accounted for: other software's chains, stale or unknown KUBE- chains. */
  private leftovers(): void {
    for (const [tname, table] of this.parsed.tables) {
      for (const chain of table.chains.values()) {
        const ours = chain.name.startsWith('KUBE-') && softwareOf(chain.name) === null;
        const isInfra = KUBE_INFRA_CHAINS.has(chain.name);
        const role = chainRole(chain.name);
        if (tname !== 'nat' && tname !== 'filter') {
          for (const r of chain.rules) this.other(r, `table ${tname} is not read (kube-proxy writes only nat and filter)`);
          continue;
        }
        if (!ours && chain.policy === null) {
          for (const r of chain.rules) this.other(r, foreignChain(chain.name));
          continue;
        }
        for (const r of chain.rules) {
          if (this.understood.has(r) || this.reported.has(r)) continue;
          if (role !== null && !this.processed.has(chain.name)) this.no(r, `${chain.name} is not reached from KUBE-SERVICES or KUBE-NODEPORTS (a stale chain?)`);
          else if (ours && !isInfra && role === null) this.no(r, `chain ${chain.name} is not one kube-proxy (iptables mode) writes`);
          else this.no(r, 'not understood');
        }
      }
    }
    // other software that runs before kube-proxy in nat PREROUTING / OUTPUT can take packets kube-proxy would serve
    for (const hook of ['PREROUTING', 'OUTPUT']) {
      const rules = this.chain(this.nat, hook)?.rules ?? [];
      const at = rules.findIndex((r) => jumpOf(r) === 'KUBE-SERVICES');
      if (at < 0) continue;
      const before = rules.slice(0, at).filter((r) => !this.understood.has(r));
      if (before.length > 0) {
        this.limit(before[0], before[0].line, `${before.length} rule${before.length === 1 ? '' : 's'} of other software run${before.length === 1 ? 's' : ''} before kube-proxy's in nat ${hook} (from line ${before[0].line}): packets they translate or accept never reach kube-proxy's rules in the kernel, and tunproxy does not know which`);
      }
    }
    // other software setting kube-proxy's masquerade mark: the kernel masquerades those packets, tunproxy does not
    const mark = this.masqMark ?? 0x4000;
    for (const table of [this.nat, this.filter]) {
      for (const chain of table?.chains.values() ?? []) {
        if (chain.name === 'KUBE-MARK-MASQ' || (chain.name.startsWith('KUBE-') && softwareOf(chain.name) === null)) continue;
        for (const r of chain.rules) {
          const t = r.target;
          if (t && t.kind === 'MARK' && (t.value & mark) !== 0 && (t.mask & mark) !== 0) {
            this.limit(r, r.line, `other software sets kube-proxy's masquerade mark 0x${mark.toString(16)} (chain ${chain.name}): the kernel masquerades those packets; tunproxy does not`);
          }
        }
      }
    }
  }

  /** Other software's MASQUERADE/SNAT in nat POSTROUTING still applies to the packets tunproxy writes back. */
  private otherMasquerade(): void {
    const n = this.otherSoftware.filter((o, i) => this.otherChains[i][0] === 'nat' && /-j (MASQUERADE|SNAT)\b/.test(o.text));
    if (n.length > 0) this.warn(`${n.length} rule${n.length === 1 ? '' : 's'} of other software masquerade in the nat table (line${n.length === 1 ? '' : 's'} ${n.map((o) => o.line).join(', ')}): the kernel still applies them to the packets tunproxy sends on, after its own masquerade decision`);
  }

  /** "left to the kernel: N rules in chains …" */
  private leftToKernel(): string | null {
    if (this.otherSoftware.length === 0) return null;
    const byChain = new Map<string, number>();
    for (const [table, chain] of this.otherChains) byChain.set(`${table} ${chain}`, (byChain.get(`${table} ${chain}`) ?? 0) + 1);
    const parts = [...byChain].map(([k, n]) => {
      const [table, c] = k.split(' ');
      const who = softwareOf(c);
      return `${c} (${table}, ${n}${who ? ', ' + who : ''})`;
    });
    const n = this.otherSoftware.length;
    return `left to the kernel: ${n} rule${n === 1 ? '' : 's'} of other software in chains ${parts.join(', ')}`;
  }

  private readonly parseErrors: NotUnderstood[] = [];

  run(): ImportResult {
    for (const e of this.parsed.errors) {
      const text = e.line > 0 ? this.lineText(e.line) : '';
      this.notUnderstood.push({ line: e.line, text, reason: e.message });
      this.parseErrors.push({ line: e.line, text, reason: e.message });
    }
    this.infrastructure();
    this.nodeAddressesFromDump();
    this.natServices();
    this.natNodePorts();
    this.filterRules();
    for (const rec of this.ports.values()) this.settleSourceRanges(rec);
    this.leftovers();
    this.otherMasquerade();
    this.notUnderstood.sort((a, b) => a.line - b.line);
    this.otherSoftware.sort((a, b) => a.line - b.line);
    const ruleSet = this.build();
    const errors = this.validate(ruleSet);
    this.limits.sort((a, b) => a.line - b.line);
    return {
      ruleSet,
      notUnderstood: this.notUnderstood,
      otherSoftware: this.otherSoftware,
      leftToKernel: this.leftToKernel(),
      limits: this.limits,
      warnings: this.warnings,
      nodeAddressesFrom: this.nodeAddressesFrom,
      errors,
      parseErrors: this.parseErrors,
    };
  }

  private lines: string[] | null = null;
  private text = '';
  setText(text: string): void {
    this.text = text;
  }
  private lineText(line: number): string {
    if (!this.lines) this.lines = this.text.split('\n');
    return (this.lines[line - 1] ?? '').trim();
  }

  private build(): RuleSet {
    // external and load-balancer IPs are the service's, shared by its ports: a port the kernel serves on one
    // of them for some packets only cannot be served there for all, so it is left out
    const serviceIPs = new Map<string, Set<string>>();
    const svcKey = (rec: PortRec) => rec.name.replace(/:[^/]*$/, '');
    for (const rec of this.ports.values()) {
      let set = serviceIPs.get(svcKey(rec));
      if (!set) serviceIPs.set(svcKey(rec), (set = new Set()));
      for (const ip of [...rec.externalIPs, ...rec.lbIPs, ...rec.unclassifiedIPs]) set.add(ip);
    }
    for (const rec of this.ports.values()) {
      if (rec.tainted === null && rec.externalUnknown !== null && serviceIPs.get(svcKey(rec))!.size > 0) {
        rec.tainted = { line: rec.externalUnknown.line, reason: `the dump does not define ${rec.externalUnknown.chain}, and the service has external or load-balancer IPs` };
      }
      if (rec.tainted !== null) continue;
      for (const [ip, line] of rec.excluded) {
        if (serviceIPs.get(svcKey(rec))!.has(ip)) {
          rec.tainted = { line, reason: `the service's address ${ip} is served for this port only for some packets` };
          break;
        }
      }
    }
    // one masquerade setting for the node: ports whose ClusterIP masquerade rule says otherwise are left out
    const dnatting = [...this.ports.values()].filter((rec) => rec.tainted === null && rec.clusterIP !== null && ((rec.iTPLocal ? rec.localEndpoints : rec.clusterEndpoints)?.length ?? 0) > 0).sort((a, b) => a.natOrder - b.natOrder);
    if (dnatting.length > 0) {
      const form = dnatting[0].masqForm ?? 'none';
      this.masqueradeAll = form === 'all';
      if (form !== 'all' && form !== 'none') this.clusterCIDRs = [form, ...this.clusterCIDRs.filter((c) => c !== form)];
      for (const rec of dnatting) {
        const f = rec.masqForm ?? 'none';
        if (f !== form) rec.tainted = { line: rec.natOrder, reason: `its ClusterIP masquerade rule (${f === 'all' ? 'every source' : f === 'none' ? 'none' : '! -s ' + f}) differs from the node's (${form === 'all' ? 'every source' : form === 'none' ? 'none' : '! -s ' + form}, ${dnatting[0].name})` };
      }
    }
    const recs = [...this.ports.values()].filter((rec) => {
      if (rec.tainted === null && rec.port === null) {
        const line = rec.claims[0]?.line ?? 0;
        this.limit(null, line, `${rec.name}: left out: no rule in the dump gives its service port number`);
        return false;
      }
      if (rec.tainted === null) return true;
      this.limit(null, rec.tainted.line, `${rec.name}: left out: a rule of its own chains (line ${rec.tainted.line}) is not understood (${rec.tainted.reason}), so what the kernel does for it is not known`);
      return false;
    });
    // services, then their ports, in the order the tables list them: kube-proxy writes one
    // service's ports together, so each table's order of services is part of one order
    const services = new Map<string, { ns: string; name: string; ports: { rec: PortRec; portName: string }[] }>();
    for (const rec of recs) {
      const slash = rec.name.indexOf('/');
      const colon = rec.name.indexOf(':', slash + 1);
      if (slash <= 0) {
        this.warn(`"${rec.name}" is not a service port name (namespace/name:port); left out`);
        continue;
      }
      const ns = rec.name.slice(0, slash);
      const name = colon < 0 ? rec.name.slice(slash + 1) : rec.name.slice(slash + 1, colon);
      const portName = colon < 0 ? '' : rec.name.slice(colon + 1);
      const key = `${ns}/${name}`;
      let s = services.get(key);
      if (!s) {
        s = { ns, name, ports: [] };
        services.set(key, s);
      }
      s.ports.push({ rec, portName });
    }
    type Svc = { ns: string; name: string; ports: { rec: PortRec; portName: string }[] };
    type P = { rec: PortRec; portName: string };
    // each chain lists services in kube-proxy's order; so does each table of restore input, but
    // not iptables-save's (it sorts chains): table order is used only where it agrees with the chains
    const chainKeys = new Set<string>();
    for (const r of recs) for (const k of r.chainOrder.keys()) chainKeys.add(k);
    const at = <X>(items: X[], key: (x: X) => number) => items.filter((x) => key(x) !== Infinity).sort((a, b) => key(a) - key(b));
    const order = <X>(items: X[], lineIn: (x: X, chain: string) => number, tableLine: (x: X, t: 'nat' | 'filter') => number): X[] => {
      const rank = (x: X) => Math.min(tableLine(x, 'nat'), tableLine(x, 'filter'));
      const byChain = [...chainKeys].map((k) => at(items, (x) => lineIn(x, k)));
      const byTable = [at(items, (x) => tableLine(x, 'nat')), at(items, (x) => tableLine(x, 'filter'))];
      const cycle = { found: false };
      const both = mergeOrders([...byChain, ...byTable], rank, cycle);
      return cycle.found ? mergeOrders(byChain, rank) : both;
    };
    const portLine = (p: P, k: string) => p.rec.chainOrder.get(k) ?? Infinity;
    const portTable = (p: P, t: 'nat' | 'filter') => (t === 'nat' ? p.rec.natOrder : p.rec.filterOrder);
    const all = [...services.values()];
    const serviceOrder = order<Svc>(
      all,
      (s, k) => Math.min(...s.ports.map((p) => portLine(p, k))),
      (s, t) => Math.min(...s.ports.map((p) => portTable(p, t))),
    );
    for (const s of serviceOrder) s.ports = order<P>(s.ports, portLine, portTable);

    const out: Service[] = [];
    for (const s of serviceOrder) out.push(this.buildService(s.ns, s.name, s.ports));

    this.resolveConflicts(out);
    const rs: RuleSet = { apiVersion: API_VERSION, node: { addresses: this.nodeAddresses ?? [] }, services: out.filter((s) => s.ports.length > 0) };
    if (this.nodeAddresses === null) this.warn("the node's addresses are not in this dump (no -d ADDRESS -j KUBE-NODEPORTS rule names them): node.addresses is empty; give them with --node-address");
    this.nodePorts(rs);
    if (this.localhostNodePortLines.length > 0) {
      const lines = this.localhostNodePortLines;
      this.limit(null, lines[0], `${LOCALHOST_NODEPORTS_LIMIT} (${lines.length} rule${lines.length === 1 ? '' : 's'} with -d 127.0.0.0/8 in KUBE-NODEPORTS, line${lines.length === 1 ? '' : 's'} ${lines.join(', ')})`);
    } else if (rs.services.some((s) => s.ports.some((p) => p.nodePort !== undefined))) {
      this.limit(null, 0, `${LOCALHOST_NODEPORTS_LIMIT} (kube-proxy before v1.26 answered NodePorts on 127.0.0.1 where route_localnet was set)`);
    }
    if (this.clusterCIDRs.length > 0) rs.node.clusterCIDR = this.clusterCIDRs[0];
    if (this.masqueradeAll) rs.node.masqueradeAll = true;
    if (this.masqMark !== null) {
      const text = '0x' + this.masqMark.toString(16);
      if (text !== DEFAULT_MASQUERADE_MARK) rs.node.masqueradeMark = text;
    }
    this.check(rs);
    return rs;
  }

  private buildService(ns: string, name: string, ports: { rec: PortRec; portName: string }[]): Service {
    const svc: Service = { namespace: ns, name, ports: [] };
    const first = <T>(f: (r: PortRec) => T | null): T | null => {
      for (const p of ports) {
        const v = f(p.rec);
        if (v !== null) return v;
      }
      return null;
    };
    const clusterIP = first((r) => r.clusterIP);
    if (clusterIP !== null) svc.clusterIP = clusterIP;
    else this.warn(`${ns}/${name}: no ClusterIP rule in the dump`);

    // external and load-balancer IPs are the service's; ports without endpoints do not say which is which
    const ext: string[] = [];
    const lb: string[] = [];
    for (const { rec } of ports) {
      for (const ip of rec.externalIPs) if (!ext.includes(ip)) ext.push(ip);
      for (const ip of rec.lbIPs) if (!lb.includes(ip)) lb.push(ip);
    }
    for (const { rec } of ports) {
      for (const ip of rec.unclassifiedIPs) {
        if (ext.includes(ip) || lb.includes(ip)) continue;
        ext.push(ip);
        this.warn(`${rec.name}: ${ip} has no endpoints, so the dump does not say whether it is an external IP or a load-balancer IP; imported as an external IP`);
      }
    }
    if (ext.length > 0) svc.externalIPs = ext;
    if (lb.length > 0) svc.loadBalancerIPs = lb;
    const ranges = first((r) => (r.sourceRanges.length > 0 ? r.sourceRanges : null));
    if (ranges !== null && lb.length > 0) svc.loadBalancerSourceRanges = ranges;

    const affinity = first((r) => (r.affinitySeconds > 0 ? r.affinitySeconds : null));
    if (affinity !== null) {
      svc.sessionAffinity = 'ClientIP';
      if (affinity !== DEFAULT_AFFINITY_SECONDS) svc.sessionAffinityTimeoutSeconds = affinity;
    }
    if (ports.some((p) => p.rec.eTPLocal)) svc.externalTrafficPolicy = 'Local';
    if (ports.some((p) => p.rec.iTPLocal)) svc.internalTrafficPolicy = 'Local';

    // endpoints: per port, the cluster chain's order, then local-only ones (serving and terminating)
    interface EpFlags {
      address: string;
      ready: boolean;
      nodeLocal: boolean;
      ports: Map<string, number>;
    }
    const flags = new Map<string, EpFlags>();
    const sequences: string[][] = [];
    const note = (address: string, portName: string, port: number, ready: boolean, nodeLocal: boolean) => {
      let f = flags.get(address);
      if (!f) {
        f = { address, ready, nodeLocal, ports: new Map() };
        flags.set(address, f);
      }
      // "not ready" is the firm evidence (a local endpoint outside the cluster set); "ready" only means "in a cluster set"
      f.ready = f.ready && ready;
      f.nodeLocal = f.nodeLocal || nodeLocal;
      const was = f.ports.get(portName);
      if (was !== undefined && was !== port) this.warn(`${ns}/${name}: endpoint ${address} has two ports for ${portName || '(unnamed)'} (${was}, ${port}); the first is kept`);
      else f.ports.set(portName, port);
    };
    for (const { rec, portName } of ports) {
      for (const m of rec.missing) {
        const what =
          m.startsWith(EXT_PREFIX) ? 'its external traffic policy is unknown (Cluster assumed)'
          : m.startsWith(FW_PREFIX) ? 'its load-balancer source ranges are unknown'
          : m.startsWith(SEP_PREFIX) ? 'that endpoint is left out'
          : 'its endpoints are unknown';
        this.warn(`${rec.name}: the dump does not define ${m}: ${what}`);
      }
      const cl = rec.clusterEndpoints;
      const lo = rec.localEndpoints;
      const seq: string[] = [];
      if (cl && lo) {
        const clTexts = new Set(cl.map((e) => e.text));
        const subset = lo.every((e) => clTexts.has(e.text));
        const disjoint = lo.every((e) => !clTexts.has(e.text));
        if (!subset && !disjoint) this.warn(`${rec.name}: local endpoints are neither a subset of nor apart from the cluster endpoints`);
        const loTexts = new Set(lo.map((e) => e.text));
        for (const e of cl) {
          note(e.address, portName, e.port, true, loTexts.has(e.text));
          seq.push(e.address);
        }
        for (const e of lo) {
          if (clTexts.has(e.text)) continue;
          // local endpoints outside the cluster set: serving and terminating (no local one ready)
          note(e.address, portName, e.port, false, true);
          seq.push(e.address);
        }
      } else if (cl) {
        for (const e of cl) {
          note(e.address, portName, e.port, true, false);
          seq.push(e.address);
        }
      } else if (lo) {
        for (const e of lo) {
          note(e.address, portName, e.port, true, true);
          seq.push(e.address);
        }
      } else if (rec.hasRemoteOnly) {
        note(PLACEHOLDER_REMOTE_ENDPOINT, portName, rec.port ?? 1, true, false);
        seq.push(PLACEHOLDER_REMOTE_ENDPOINT);
        this.warn(`${rec.name}: has endpoints only on other nodes, which an iptables dump does not name; a placeholder endpoint ${PLACEHOLDER_REMOTE_ENDPOINT} stands for them`);
      }
      sequences.push(seq);
    }
    // a cluster (or local) set holds either ready endpoints or (none being ready) serving-and-terminating
    // ones: one serving-and-terminating endpoint in it makes all of it so
    for (let changed = true; changed; ) {
      changed = false;
      for (const cl of ports.flatMap(({ rec }) => [rec.clusterEndpoints ?? [], rec.localEndpoints ?? []])) {
        if (cl.some((e) => !flags.get(e.address)!.ready)) {
          for (const e of cl) {
            const f = flags.get(e.address)!;
            if (f.ready) {
              f.ready = false;
              changed = true;
            }
          }
        }
      }
    }
    const firstSeen = new Map<string, number>();
    sequences.forEach((seq, i) => seq.forEach((a, j) => firstSeen.has(a) || firstSeen.set(a, i * 1000 + j)));
    const order = mergeOrders(sequences, (a) => firstSeen.get(a)!);

    // ports: a single endpoint port per service port (and every endpoint carrying every port) fits targetPort
    const portNames = ports.map((p) => p.portName);
    const uniform = portNames.every((pn) => {
      const values = new Set<number>();
      for (const a of order) {
        const v = flags.get(a)!.ports.get(pn);
        if (v === undefined) return false;
        values.add(v);
      }
      return values.size <= 1;
    });
    for (const { rec, portName } of ports) {
      const sp: ServicePort = { name: portName, protocol: rec.proto.toUpperCase() as ProtocolName, port: rec.port ?? 0 };
      if (rec.port === null) this.warn(`${rec.name}: the service port number is not in the dump`);
      // a NodePort whose nat rule matches only some packets (or is not understood) is not imported from the filter rules either
      if (rec.nodePort !== null && rec.externalUnknown !== null) {
        this.limit(null, rec.externalUnknown.line, `${rec.name}: NodePort ${rec.nodePort} left out: the dump does not define ${rec.externalUnknown.chain}, where the kernel sends it`);
      } else if (rec.nodePort !== null && !this.nodePortsHookConditional && !this.conditional.has(`NodePort ${rec.nodePort}/${rec.proto}`)) sp.nodePort = rec.nodePort;
      this.recOf.set(sp, rec);
      if (uniform && order.length > 0) {
        const tp = flags.get(order[0])!.ports.get(portName)!;
        if (tp !== sp.port) sp.targetPort = tp;
      }
      svc.ports.push(sp);
    }
    svc.endpoints = order.map((a) => {
      const f = flags.get(a)!;
      const ep: Endpoint = { address: a };
      if (!f.ready) {
        ep.ready = false;
        ep.serving = true;
        ep.terminating = true;
      }
      if (f.nodeLocal) ep.nodeLocal = true;
      if (!uniform) ep.ports = Object.fromEntries(f.ports);
      return ep;
    });
    return svc;
  }

  /** The NodePort range: --node-port-range, else the default widened to the dump's NodePorts. */
  private nodePorts(rs: RuleSet): void {
    if (this.nodePortRange !== null) {
      rs.node.nodePortRange = this.nodePortRange;
      return;
    }
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of rs.services) for (const p of s.ports) if (p.nodePort !== undefined) {
      lo = Math.min(lo, p.nodePort);
      hi = Math.max(hi, p.nodePort);
    }
    if (lo === Infinity) return;
    const [dlo, dhi] = DEFAULT_NODEPORT_RANGE.split('-').map(Number);
    if (lo >= dlo && hi <= dhi) return;
    rs.node.nodePortRange = `${Math.min(lo, dlo)}-${Math.max(hi, dhi)}`;
    this.warn(`the dump's NodePorts (${lo}-${hi}) fall outside the default range ${DEFAULT_NODEPORT_RANGE}: node.nodePortRange is ${rs.node.nodePortRange} (--node-port-range sets it)`);
  }

  /**
   * Two services on one address:port, or one NodePort claimed twice: the kernel takes the first rule in
   * chain order (nat before filter); the later claims are left out, each reported with its line.
   */
  private resolveConflicts(services: Service[]): void {
    type C = Claim & { svc: Service; sp: ServicePort; rec: PortRec };
    const claims: C[] = [];
    for (const svc of services) for (const sp of svc.ports) {
      const rec = this.recOf.get(sp);
      if (rec) for (const c of rec.claims) claims.push({ ...c, svc, sp, rec });
    }
    claims.sort((a, b) => a.rank - b.rank);
    const owner = new Map<string, C>();
    const dropPort = new Set<ServicePort>();
    for (const c of claims) {
      const key = c.kind === 'nodePort' ? `NodePort ${c.port}/${c.rec.proto}` : `${c.ip}:${c.port}/${c.rec.proto}`;
      const first = owner.get(key);
      if (!first) {
        owner.set(key, c);
        continue;
      }
      if (first.rec === c.rec) continue;
      const what = c.kind === 'nodePort' ? key : `${key} (${c.kind === 'cluster' ? 'ClusterIP' : c.kind === 'external' ? 'external IP' : 'load-balancer IP'})`;
      const loser = `${c.svc.namespace}/${c.svc.name}${c.sp.name ? ':' + c.sp.name : ''}`;
      let action: string;
      if (c.kind === 'nodePort') {
        if (c.sp.nodePort === c.port) delete c.sp.nodePort;
        action = 'its NodePort is left out';
      } else if (c.kind === 'cluster') {
        dropPort.add(c.sp);
        action = 'the port is left out';
      } else {
        const list = c.kind === 'external' ? c.svc.externalIPs : c.svc.loadBalancerIPs;
        if (list) {
          const i = list.indexOf(c.ip!);
          if (i >= 0) list.splice(i, 1);
          if (list.length === 0) {
            if (c.kind === 'external') delete c.svc.externalIPs;
            else {
              delete c.svc.loadBalancerIPs;
              delete c.svc.loadBalancerSourceRanges;
            }
          }
        }
        action = `${c.ip} is left out of the service (all its ports)`;
      }
      this.limit(null, c.line, `shadowed: ${what} of ${loser} (line ${c.line}) is taken first by ${first.rec.name} (line ${first.line}), as in the kernel: ${action}`);
    }
    for (const svc of services) if (svc.ports.some((p) => dropPort.has(p))) svc.ports = svc.ports.filter((p) => !dropPort.has(p));
  }

  /** The imported rule set's validation errors; no node address gets the flag to use. */
  private validate(rs: RuleSet): { path: string; message: string }[] {
    const r = validateRuleSet(rs);
    if (r.ok) return [];
    return r.errors.map((e) =>
      e.path === 'node.addresses' && rs.node.addresses.length === 0
        ? { path: e.path, message: "no node address: the dump names none (no -d ADDRESS -j KUBE-NODEPORTS rule); give them with --node-address ADDRESS" }
        : e,
    );
  }

  private readonly recOf = new Map<ServicePort, PortRec>();

  /** Warn where the imported rule set would not give back the endpoints read. */
  private check(rs: RuleSet): void {
    let model;
    try {
      model = ruleSetModel(rs);
    } catch (e) {
      this.warn(`the imported rule set does not model: ${(e as Error).message}`);
      return;
    }
    for (const p of model.ports) {
      const rec = this.ports.get(`${p.name}|${p.proto}`);
      if (!rec) continue;
      const want = (rec.clusterEndpoints ?? []).map((e) => e.text).join(',');
      const got = p.usesClusterPolicyChain ? p.clusterEndpoints.map((e) => e.text).join(',') : '';
      if (rec.clusterEndpoints !== null && want !== got) this.warn(`${p.name}: the imported endpoints give the cluster chain [${got}], the dump has [${want}]`);
      const wantL = (rec.localEndpoints ?? []).map((e) => e.text).join(',');
      const gotL = p.usesLocalPolicyChain ? p.localEndpoints.map((e) => e.text).join(',') : '';
      if (rec.localEndpoints !== null && wantL !== gotL) this.warn(`${p.name}: the imported endpoints give the local chain [${gotL}], the dump has [${wantL}]`);
    }
  }
}

/**
 * Import kube-proxy's iptables rules (iptables-save output, with or without
 * counters, or kube-proxy's restore input). Throws IptablesImportError for an
 * IPv6 dump or text without kube-proxy's chains.
 */
export function importIptables(text: string, opts: ImportOptions = {}): ImportResult {
  const parsed = parseIptablesSave(text);
  if (parsed.ipv6) {
    const line = parsed.errors.find((e) => /IPv6/.test(e.message))?.line ?? 0;
    throw new IptablesImportError(
      `this is an IPv6 dump (ip6tables-save or IPv6 addresses${line ? `, line ${line}` : ''}): tunproxy handles IPv4 only; import the output of iptables-save, not ip6tables-save`,
      line,
    );
  }
  const nat = parsed.tables.get('nat');
  const filter = parsed.tables.get('filter');
  if (!nat?.chains.has('KUBE-SERVICES') && !filter?.chains.has('KUBE-SERVICES')) {
    const first = parsed.errors[0];
    throw new IptablesImportError(
      `no KUBE-SERVICES chain in a nat or filter table: not kube-proxy's iptables rules (iptables mode)${first ? `; first parse error, line ${first.line}: ${first.message}` : ''}`,
      first?.line ?? 0,
    );
  }
  const imp = new Importer(parsed, opts);
  imp.setText(text);
  return imp.run();
}
