/**
 * The iptables importer's chain readers: the state of one import and the
 * methods that read kube-proxy's chains into it (nat KUBE-SERVICES and
 * KUBE-NODEPORTS, the filter table's rules, KUBE-SVC-/KUBE-SVL-/KUBE-XLB-/
 * KUBE-EXT-/KUBE-FW-/KUBE-SEP- chains, kube-proxy's infrastructure chains,
 * the rules left over). RuleSetBuilder (import-build.ts) turns that state
 * into a rule set; Importer (importer.ts) runs both.
 */
import { formatIPv4 } from '../../dataplane/addr.ts';
import { formatIPv6 } from '../../dataplane/addr6.ts';
import type { ParsedIptables, Rule, Table } from './parser.ts';
import { serviceFromComment } from './linear.ts';
import { endpointChain, SVC_PREFIX, SVL_PREFIX, SEP_PREFIX, XLB_PREFIX } from './hash.ts';
import type { NotUnderstood, ImportOptions, EndpointRec, PortRec, Claim } from './import-rules.ts';
import { hostCidr, cidrTextContains, canonicalCidr, FILTER_RANK, classifyComment, dportOf, protoOf, hostOf, cidrOf, jumpOf, hasUnknown, addrtypeOf, recentOf, statisticOf, chainRole, POD_RULE, TARGET_KINDS, KUBE_INFRA_CHAINS, softwareOf, foreignChain, extraConditions, unexpectedInChain, onlyDstLocal } from './import-rules.ts';

export abstract class ChainReader {
  readonly notUnderstood: NotUnderstood[] = [];
  readonly otherSoftware: NotUnderstood[] = [];
  readonly limits: NotUnderstood[] = [];
  readonly warnings: string[] = [];
  /** address:port/proto (or NodePort port/proto) → the chain a conditional or not-understood rule for it jumps to, and its line */
  protected readonly conditional = new Map<string, { target: string | null; line: number }>();
  protected nodeAddressesFrom: 'option' | 'dump' | null = null;
  protected readonly nodePortRange: string | null;
  protected readonly localhostNodePortLines: number[] = [];
  protected readonly understood = new Set<Rule>();
  protected readonly reported = new Set<Rule>();
  protected readonly ports = new Map<string, PortRec>();
  protected readonly chainOwner = new Map<string, PortRec>();
  protected readonly processed = new Set<string>();
  protected readonly nat: Table | undefined;
  protected readonly filter: Table | undefined;
  protected nodeAddresses: string[] | null;
  protected clusterCIDRs: string[] = [];
  protected masqueradeAll = false;
  protected mark: number | null = null;

  constructor(protected readonly parsed: ParsedIptables, opts: ImportOptions) {
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
  protected exclude(rec: PortRec, kind: string, ip: string, line: number): void {
    rec.excluded.set(ip, line);
    if (kind === 'cluster' && rec.tainted === null) rec.tainted = { line, reason: `its ClusterIP rule matches only some packets` };
  }

  /** Other software's rule: left to the kernel, listed apart. */
  protected other(r: Rule, reason: string): void {
    if (this.reported.has(r)) return;
    this.reported.add(r);
    this.otherSoftware.push({ line: r.line, text: r.text.trim(), reason });
    this.otherChains.push([r.table, r.chain]);
  }

  protected readonly otherChains: [string, string][] = [];

  protected limit(r: Rule | null, line: number, reason: string): void {
    this.limits.push({ line: r?.line ?? line, text: r ? r.text.trim() : '', reason });
  }

  /** The node's addresses where the dump names them: `-d ADDRESS -j KUBE-NODEPORTS` (kube-proxy's --nodeport-addresses). */
  protected nodeAddressesFromDump(): void {
    if (this.nodeAddresses) return;
    const found: string[] = [];
    for (const r of this.chain(this.nat, 'KUBE-SERVICES')?.rules ?? []) {
      const a = jumpOf(r) === 'KUBE-NODEPORTS' ? hostOf(r.dst) : null;
      if (a !== null && !a.startsWith('127.') && a !== '::1' && !found.includes(a)) found.push(a);
    }
    if (found.length > 0) {
      this.nodeAddresses = found;
      this.nodeAddressesFrom = 'dump';
      this.warn(`the node's addresses are taken from the dump's NodePort rules (-d … -j KUBE-NODEPORTS): ${found.join(', ')}`);
    }
  }

  protected ok(r: Rule): void {
    this.understood.add(r);
  }

  protected no(r: Rule, reason: string): void {
    if (this.reported.has(r)) return;
    this.reported.add(r);
    this.notUnderstood.push({ line: r.line, text: r.text.trim(), reason });
    // a rule not understood in a service port's own chains: what the kernel does for that port is not known
    const owner = this.chainOwner.get(r.chain);
    if (owner && owner.tainted === null) owner.tainted = { line: r.line, reason };
  }

  protected warn(message: string): void {
    if (!this.warnings.includes(message)) this.warnings.push(message);
  }

  protected port(name: string, proto: 'tcp' | 'udp' | 'sctp'): PortRec {
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
  protected seen(rec: PortRec, table: 'nat' | 'filter', r: Rule): void {
    if (table === 'nat') rec.natOrder = Math.min(rec.natOrder, r.line);
    else rec.filterOrder = Math.min(rec.filterOrder, r.line);
    const key = `${table} ${r.chain}`;
    rec.chainOrder.set(key, Math.min(rec.chainOrder.get(key) ?? Infinity, r.line));
  }

  protected setServicePort(rec: PortRec, port: number, r: Rule): void {
    if (rec.port === null) rec.port = port;
    else if (rec.port !== port) this.warn(`${rec.name}: rules disagree on the service port (${rec.port}, ${port} at line ${r.line})`);
  }

  protected setClusterIP(rec: PortRec, ip: string, r: Rule): void {
    if (rec.clusterIP === null) rec.clusterIP = ip;
    else if (rec.clusterIP !== ip) this.warn(`${rec.name}: rules disagree on the ClusterIP (${rec.clusterIP}, ${ip} at line ${r.line})`);
  }

  protected chain(table: Table | undefined, name: string) {
    return table?.chains.get(name);
  }

  /** Follow a jump from a rule of `rec`; a chain the dump lacks is reported on the jumping rule. */
  protected follow(rec: PortRec, target: string, from: Rule): void {
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

  protected masqueradeRule(rec: PortRec, r: Rule): boolean {
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

  protected clusterCIDR(cidr: string, r: Rule): void {
    if (!this.clusterCIDRs.includes(cidr)) {
      if (this.clusterCIDRs.length > 0) this.warn(`more than one cluster CIDR (${this.clusterCIDRs[0]}, ${cidr} at line ${r.line}): the first is kept`);
      this.clusterCIDRs.push(cidr);
    }
  }

  protected endpointOf(rec: PortRec, sep: string, from: Rule): EndpointRec | null {
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
        if (t.addr6) {
          const a = formatIPv6(t.addr6);
          ep = { address: a, port: t.port, text: `[${a}]:${t.port}` };
        } else {
          ep = { address: formatIPv4(t.addr), port: t.port, text: `${formatIPv4(t.addr)}:${t.port}` };
        }
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
  protected policyChain(rec: PortRec, chain: string, rules: Rule[], role: 'svc' | 'svl'): void {
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
  protected xlbChain(rec: PortRec, chain: string, rules: Rule[]): void {
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
  protected extChain(rec: PortRec, rules: Rule[]): void {
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
  protected fwChain(rec: PortRec, rules: Rule[]): void {
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
  protected markDropLimit(rec: PortRec, r: Rule): void {
    this.limit(r, r.line, `${rec.name}: the kernel only marks this traffic for dropping (KUBE-MARK-DROP); kubelet's KUBE-FIREWALL drops it where it is delivered to the node (INPUT), while forwarded packets go on unserved; tunproxy drops it (source_range / no_local_endpoints) either way`);
  }

  protected fwSources: Map<PortRec, { cidr: string; rule: Rule }[]> | null = null;

  /** The trailing `-s <LB IP>` rules kube-proxy adds when a source range holds the node are not source ranges. */
  protected settleSourceRanges(rec: PortRec): void {
    const sources = this.fwSources?.get(rec);
    if (!sources) return;
    const k = rec.lbIPs.length;
    let ranges = sources.map((s) => s.cidr);
    if (k > 0 && sources.length > k) {
      const tail = sources.slice(sources.length - k);
      const tailIsLbIPs = tail.every((s, i) => s.cidr === hostCidr(rec.lbIPs[i]));
      const head = ranges.slice(0, ranges.length - k);
      const nodeAddrs = this.nodeAddresses;
      const holdsNode = nodeAddrs !== null && head.some((c) => nodeAddrs.some((a) => cidrTextContains(c, a)));
      if (tailIsLbIPs && (nodeAddrs === null || holdsNode)) {
        ranges = head;
        rec.lbIPSources = true;
        if (nodeAddrs === null) {
          this.warn(`${rec.name}: its firewall chain admits the load-balancer IPs as sources (a source range holds the node), but the node's addresses are not known: give them with --node-address`);
        }
      }
    }
    rec.sourceRanges = ranges.map(canonicalCidr);
  }

  protected natServices(): void {
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

  protected nodePortsHookConditional = false;

  protected natNodePorts(): void {
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
  protected filterConditions(r: Rule): boolean {
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

  protected filterRules(): void {
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

  protected infrastructure(): void {
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

  protected masqMark: number | null = null;

  /** Everything not yet accounted for: other software's chains, stale or unknown KUBE- chains. */
  protected leftovers(): void {
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
  protected otherMasquerade(): void {
    const n = this.otherSoftware.filter((o, i) => this.otherChains[i][0] === 'nat' && /-j (MASQUERADE|SNAT)\b/.test(o.text));
    if (n.length > 0) this.warn(`${n.length} rule${n.length === 1 ? '' : 's'} of other software masquerade in the nat table (line${n.length === 1 ? '' : 's'} ${n.map((o) => o.line).join(', ')}): the kernel still applies them to the packets tunproxy sends on, after its own masquerade decision`);
  }

  /** "left to the kernel: N rules in chains …" */
  protected leftToKernel(): string | null {
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

}
