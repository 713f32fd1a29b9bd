/**
 * Node setup: what steers a real node's service traffic into the TUN, the
 * way the lab's node namespace is wired (scripts/lab.ts), with iproute2 only.
 *
 *   table 7470      default dev <tun>
 *   main            <ClusterIP | external IP | LB IP>/32 dev <tun>    (per service, kept in step at every sync)
 *   rule pref 7400  iif <tun> goto 7499                               (written back by tunproxy: local/main)
 *   rule pref 7450  to <node address> ipproto tcp|udp dport <NodePort range> lookup 7470
 *   rule pref 7460  from <pod CIDR> ipproto tcp|udp|icmp|sctp lookup 7470
 *                   (the pods' packets: replies of translated flows are un-NATed; the rest is written back unchanged)
 *   rule pref 7499  lookup local, and the pref-0 local rule removed    (NodePorts would hit local first)
 *
 * Dual-stack: the same in IPv6 with `ip -6` (/128 routes, the node's IPv6
 * addresses, the IPv6 pod CIDR of kube-proxy's pair "v4,v6"), but for the
 * pods' ICMPv6, which stays out of the TUN: neighbour discovery must stay on
 * the pod's link.
 *
 * The static part is put in place at the first sync (the Node object gives
 * the addresses and the pod CIDR), the /32 routes follow every sync, and
 * everything is undone at stop, the local rule put back at pref 0 first.
 * With dryRun, nothing is run: each `ip` command is printed as it would run.
 */
import { spawnSync } from 'node:child_process';
import type { RuleSet } from '../types.ts';

export const TUN_TABLE = 7470;

export interface NodeSetupOptions {
  tun: string;
  dryRun: boolean;
  log: (msg: string) => void;
  /** run the commands in this network namespace (tests); default: the agent's own */
  netns?: string;
}

const v6 = (a: string): boolean => a.includes(':');
/** the part of one family of a value or of kube-proxy's dual-stack pair "v4,v6" */
const partOf = (text: string | undefined, six: boolean): string | undefined => text?.split(',').map((x) => x.trim()).find((x) => v6(x) === six);
const hostRoute = (a: string): string => `${a}/${v6(a) ? 128 : 32}`;

export class NodeSetup {
  private staticLines: string[] | null = null;
  private staticLines6: string[] | null = null;
  private routes = new Set<string>();

  constructor(private readonly o: NodeSetupOptions) {}

  /** Run `ip -batch` lines (-force: the others go on when one fails); returns the errors. */
  private exec(lines: string[], family?: 6): string[] {
    if (lines.length === 0) return [];
    if (this.o.dryRun) {
      for (const l of lines) this.o.log(`node setup (dry run): ip ${family === 6 ? '-6 ' : ''}${l}`);
      return [];
    }
    const argv = [...(this.o.netns ? ['-n', this.o.netns] : []), ...(family === 6 ? ['-6'] : []), '-force', '-batch', '-'];
    const r = spawnSync('ip', argv, { input: lines.join('\n') + '\n', encoding: 'utf8' });
    if (r.error) return [`ip could not run: ${r.error.message}`];
    return (r.stderr ?? '').split('\n').filter((l) => l.trim() !== '');
  }

  /** The static rules for these node addresses, pod CIDR and NodePort range. */
  static staticPlan(tun: string, rs: RuleSet): string[] {
    const range = rs.node.nodePortRange ?? '30000-32767';
    const lines = [`route replace default dev ${tun} table ${TUN_TABLE}`, `rule add pref 7400 iif ${tun} goto 7499`];
    for (const a of rs.node.addresses) if (!v6(a)) for (const p of ['tcp', 'udp']) lines.push(`rule add pref 7450 to ${a}/32 ipproto ${p} dport ${range} lookup ${TUN_TABLE}`);
    const cidr = partOf(rs.node.clusterCIDR, false);
    if (cidr) for (const p of ['tcp', 'udp', 'icmp', 'sctp']) lines.push(`rule add pref 7460 from ${cidr} ipproto ${p} lookup ${TUN_TABLE}`);
    lines.push('rule add pref 7499 lookup local', 'rule del pref 0 lookup local');
    return lines;
  }

  /** The same in IPv6 (run with `ip -6`), when the node has an IPv6 address; else none. The pods' ICMPv6 stays out. */
  static staticPlan6(tun: string, rs: RuleSet): string[] {
    const six = rs.node.addresses.filter(v6);
    if (six.length === 0) return [];
    const range = rs.node.nodePortRange ?? '30000-32767';
    const lines = [`route replace default dev ${tun} table ${TUN_TABLE}`, `rule add pref 7400 iif ${tun} goto 7499`];
    for (const a of six) for (const p of ['tcp', 'udp']) lines.push(`rule add pref 7450 to ${a}/128 ipproto ${p} dport ${range} lookup ${TUN_TABLE}`);
    const cidr = partOf(rs.node.clusterCIDR, true);
    if (cidr) for (const p of ['tcp', 'udp', 'sctp']) lines.push(`rule add pref 7460 from ${cidr} ipproto ${p} lookup ${TUN_TABLE}`);
    lines.push('rule add pref 7499 lookup local', 'rule del pref 0 lookup local');
    return lines;
  }

  /** The host routes into the TUN (/32, /128): every ClusterIP of either family, external IP and load-balancer IP that is not a node address. */
  static routesOf(rs: RuleSet): Set<string> {
    const local = new Set(rs.node.addresses);
    const out = new Set<string>();
    for (const s of rs.services) {
      const cips = (s.clusterIPs ?? (s.clusterIP ? [s.clusterIP] : [])).filter((c) => c !== 'None');
      for (const v of [...cips, ...(s.externalIPs ?? []), ...(s.loadBalancerIPs ?? [])]) if (!local.has(v)) out.add(v);
    }
    return out;
  }

  /** Bring the node in line with the rule set in force. */
  update(rs: RuleSet): void {
    const errors: string[] = [];
    const plan = NodeSetup.staticPlan(this.o.tun, rs);
    if (this.staticLines === null || plan.join('\n') !== this.staticLines.join('\n')) {
      if (this.staticLines !== null) errors.push(...this.exec(NodeSetup.undoStatic(this.staticLines)));
      errors.push(...this.exec(plan));
      this.staticLines = plan;
    }
    const plan6 = NodeSetup.staticPlan6(this.o.tun, rs);
    if ((this.staticLines6 ?? []).join('\n') !== plan6.join('\n')) {
      if (this.staticLines6 !== null) errors.push(...this.exec(NodeSetup.undoStatic(this.staticLines6), 6));
      errors.push(...this.exec(plan6, 6));
      this.staticLines6 = plan6.length > 0 ? plan6 : null;
    }
    const want = NodeSetup.routesOf(rs);
    const lines: string[] = [];
    // (an address in a line tells ip its family: one batch for both)
    for (const r of this.routes) if (!want.has(r)) lines.push(`route del ${hostRoute(r)} dev ${this.o.tun}`);
    for (const r of want) if (!this.routes.has(r)) lines.push(`route replace ${hostRoute(r)} dev ${this.o.tun}`);
    errors.push(...this.exec(lines));
    this.routes = want;
    for (const e of errors) this.o.log(`node setup: ${e}`);
  }

  private static undoStatic(lines: string[]): string[] {
    // the local rule back at pref 0 before anything else goes
    const out = ['rule add pref 0 lookup local'];
    for (const l of [...lines].reverse()) {
      if (l === 'rule del pref 0 lookup local') continue;
      if (l.startsWith('rule add ')) out.push(l.replace('rule add ', 'rule del '));
      else if (l.startsWith('route replace ')) out.push(l.replace('route replace ', 'route del '));
    }
    return out;
  }

  /** Take everything out again (at stop). */
  undo(): void {
    // the local rule back first: the node's own addresses answer again before anything else changes
    const lines = [...(this.staticLines ? NodeSetup.undoStatic(this.staticLines) : []), ...[...this.routes].map((r) => `route del ${hostRoute(r)} dev ${this.o.tun}`)];
    const lines6 = this.staticLines6 ? NodeSetup.undoStatic(this.staticLines6) : [];
    this.routes.clear();
    this.staticLines = null;
    this.staticLines6 = null;
    for (const e of [...this.exec(lines), ...this.exec(lines6, 6)]) this.o.log(`node setup undo: ${e}`);
  }
}
