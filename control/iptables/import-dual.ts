/**
 * A dual-stack node's kube-proxy rules → one rule set: the iptables-save dump
 * (its IPv4 proxier) and the ip6tables-save dump (its IPv6 proxier) imported
 * each on its own (importIptables), then merged by service and service-port
 * name, as kube-proxy's meta-proxier splits one Service between its two
 * proxiers: a service in both dumps becomes dual-stack (clusterIPs IPv4 then
 * IPv6, ipFamilies, RequireDualStack), its ports joined by name, its endpoints
 * and addresses the union of both families'. What the two dumps disagree on
 * (a port's number or protocol, its NodePort, the service's affinity or
 * traffic policies, the node's masquerade settings) is named in `limits` or
 * `warnings`, never merged silently; where tunproxy would serve a family the
 * kernel does not (a NodePort in one dump only), the narrower choice is made.
 */
import type { RuleSet, Service, ServicePort, Endpoint } from '../types.ts';
import { validateRuleSet } from '../validate.ts';
import type { ImportOptions, ImportResult, NotUnderstood } from './import-rules.ts';
import { mergeOrders } from './import-rules.ts';
import { importIptables } from './importer.ts';

const keyOf = (s: Service) => `${s.namespace}/${s.name}`;

/** one order holding both (each in its own order): the IPv4 dump's first where they do not say */
function bothOrders(a: string[], b: string[]): string[] {
  const ia = new Map(a.map((x, i) => [x, i]));
  const ib = new Map(b.map((x, i) => [x, i]));
  return mergeOrders([a, b], (x) => ia.get(x) ?? (ib.get(x) ?? 0) + 0.5);
}
const portKey = (p: ServicePort) => p.name;

/** the endpoint port of `sp` on `ep` as the model reads it (ports map, else targetPort, else port); undefined when none */
function endpointPortOf(ep: Endpoint, sp: ServicePort): number | undefined {
  if (ep.ports) return ep.ports[sp.name];
  return typeof sp.targetPort === 'number' ? sp.targetPort : sp.targetPort === undefined ? sp.port : undefined;
}

function union(a: string[] | undefined, b: string[] | undefined): string[] | undefined {
  const out = [...(a ?? [])];
  for (const x of b ?? []) if (!out.includes(x)) out.push(x);
  return out.length > 0 ? out : undefined;
}

function widenRange(a: string | undefined, b: string | undefined): string | undefined {
  if (a === undefined || b === undefined) return a ?? b;
  const [alo, ahi] = a.split('-').map(Number);
  const [blo, bhi] = b.split('-').map(Number);
  return `${Math.min(alo, blo)}-${Math.max(ahi, bhi)}`;
}

class Merger {
  readonly limits: NotUnderstood[] = [];
  readonly warnings: string[] = [];

  limit(reason: string): void {
    this.limits.push({ line: 0, text: '', reason });
  }

  /** One service in both dumps: dual-stack. */
  service(s4: Service, s6: Service): Service {
    const name = keyOf(s4);
    const out: Service = { namespace: s4.namespace, name: s4.name, ports: [] };
    if (s4.clusterIP !== undefined && s6.clusterIP !== undefined) {
      out.clusterIP = s4.clusterIP;
      out.clusterIPs = [s4.clusterIP, s6.clusterIP];
      out.ipFamilies = ['IPv4', 'IPv6'];
      out.ipFamilyPolicy = 'RequireDualStack';
    } else if (s4.clusterIP !== undefined || s6.clusterIP !== undefined) {
      out.clusterIP = s4.clusterIP ?? s6.clusterIP;
    }
    const ext = union(s4.externalIPs, s6.externalIPs);
    if (ext) out.externalIPs = ext;
    const lb = union(s4.loadBalancerIPs, s6.loadBalancerIPs);
    if (lb) out.loadBalancerIPs = lb;
    const ranges = union(s4.loadBalancerSourceRanges, s6.loadBalancerSourceRanges);
    if (ranges) out.loadBalancerSourceRanges = ranges;
    const lb4 = (s4.loadBalancerIPs ?? []).length > 0;
    const lb6 = (s6.loadBalancerIPs ?? []).length > 0;
    if (lb4 && lb6 && (s4.loadBalancerSourceRanges === undefined) !== (s6.loadBalancerSourceRanges === undefined)) {
      this.warnOnce(`${name}: only the ${s4.loadBalancerSourceRanges ? 'iptables' : 'ip6tables'} dump restricts its load-balancer IPs to source ranges; the rule set restricts both families' (as one Service's loadBalancerSourceRanges does)`);
    }
    for (const f of ['sessionAffinity', 'sessionAffinityTimeoutSeconds', 'externalTrafficPolicy', 'internalTrafficPolicy'] as const) {
      if (s4[f] !== s6[f]) this.warnOnce(`${name}: the dumps disagree on ${f} (iptables: ${s4[f] ?? 'default'}, ip6tables: ${s6[f] ?? 'default'}); the iptables dump's is kept`);
      if (s4[f] !== undefined) (out as unknown as Record<string, unknown>)[f] = s4[f];
    }

    // ports by name; a port in one dump only is served in that family only if the other has none of it
    // in the order of both dumps (each lists a service's ports in its order)
    const ports4 = new Map(s4.ports.map((p) => [portKey(p), p]));
    const ports6 = new Map(s6.ports.map((p) => [portKey(p), p]));
    const names = bothOrders(s4.ports.map(portKey), s6.ports.map(portKey));
    const pairs = names.map((n) => ({ name: n, p4: ports4.get(n) ?? null, p6: ports6.get(n) ?? null }));

    const eps4 = s4.endpoints ?? [];
    const eps6 = s6.endpoints ?? [];
    // every endpoint carries its ports explicitly when the two families' target ports differ
    let explicit = eps4.some((e) => e.ports) || eps6.some((e) => e.ports);
    const merged: ServicePort[] = [];
    for (const { name: pn, p4, p6 } of pairs) {
      if (p4 && p6 && (p4.protocol !== p6.protocol || p4.port !== p6.port)) {
        this.limit(`${name}:${pn}: the dumps disagree on the port (iptables ${p4.protocol} ${p4.port}, ip6tables ${p6.protocol} ${p6.port}): the IPv6 one is left out`);
        merged.push({ ...p4 });
        continue;
      }
      if (!p4 || !p6) {
        const only = (p4 ?? p6)!;
        this.limit(`${name}:${pn || '(unnamed)'}: only the ${p4 ? 'iptables' : 'ip6tables'} dump has this port; the rule set serves it in both families (one Service's ports are both families')`);
        merged.push({ ...only });
        explicit = true;
        continue;
      }
      const sp: ServicePort = { ...p4 };
      if (p4.nodePort !== p6.nodePort) {
        delete sp.nodePort;
        this.limit(`${name}:${pn || '(unnamed)'}: NodePort ${p4.nodePort ?? 'none'} in the iptables dump, ${p6.nodePort ?? 'none'} in the ip6tables dump: left out (a NodePort answers in both families)`);
      }
      if (p4.targetPort !== p6.targetPort) explicit = true;
      merged.push(sp);
    }
    out.ports = merged;
    const portsOf = (ep: Endpoint, side: Service): Record<string, number> => {
      const m: Record<string, number> = {};
      for (const sp of side.ports) {
        const v = endpointPortOf(ep, sp);
        if (v !== undefined && merged.some((p) => p.name === sp.name && p.protocol === sp.protocol && p.port === sp.port)) m[sp.name] = v;
      }
      return m;
    };
    const endpoints: Endpoint[] = [];
    for (const [eps, side] of [[eps4, s4], [eps6, s6]] as const) {
      for (const e of eps) {
        const ep: Endpoint = { ...e };
        if (explicit) ep.ports = portsOf(e, side);
        endpoints.push(ep);
      }
    }
    if (explicit) for (const sp of out.ports) delete sp.targetPort;
    out.endpoints = endpoints;
    return out;
  }

  private warnOnce(m: string): void {
    if (!this.warnings.includes(m)) this.warnings.push(m);
  }
}

/**
 * Import a dual-stack node's two dumps: `v4Text` from iptables-save, `v6Text`
 * from ip6tables-save. Services of one name in both become dual-stack. Entries
 * of notUnderstood, otherSoftware, limits and parseErrors carry `family`, the
 * dump their line is in; warnings from the IPv6 dump start with "ip6tables: ".
 * Throws IptablesImportError (naming the dump) where importIptables would.
 */
export function importIptablesDualStack(v4Text: string, v6Text: string, opts: ImportOptions = {}): ImportResult {
  const name = (family: 4 | 6, f: () => ImportResult): ImportResult => {
    try {
      return f();
    } catch (e) {
      if (e instanceof Error) e.message = `${family === 6 ? 'ip6tables' : 'iptables'} dump: ${e.message}`;
      throw e;
    }
  };
  const r4 = name(4, () => importIptables(v4Text, { ...opts, family: 4 }));
  const r6 = name(6, () => importIptables(v6Text, { ...opts, family: 6 }));
  const m = new Merger();
  const a = r4.ruleSet;
  const b = r6.ruleSet;
  const node: RuleSet['node'] = { ...a.node, addresses: [...new Set([...a.node.addresses, ...b.node.addresses])] };
  if (a.node.clusterCIDR !== undefined && b.node.clusterCIDR !== undefined) node.clusterCIDR = `${a.node.clusterCIDR},${b.node.clusterCIDR}`;
  else if (b.node.clusterCIDR !== undefined) node.clusterCIDR = b.node.clusterCIDR;
  // masqueradeAll shows only in a dump with ClusterIP rules to endpoints: one such dump saying so is enough
  const dnats = (r: RuleSet) => r.services.some((s) => s.clusterIP !== undefined && (s.endpoints ?? []).length > 0);
  if (b.node.masqueradeAll) node.masqueradeAll = true;
  if ((a.node.masqueradeAll ?? false) !== (b.node.masqueradeAll ?? false) && dnats(a) && dnats(b)) {
    m.warnings.push(`the dumps disagree on masquerading every ClusterIP flow (iptables: ${a.node.masqueradeAll ?? false}, ip6tables: ${b.node.masqueradeAll ?? false}); masqueradeAll is one setting of the node: every ClusterIP flow is masqueraded`);
  }
  if ((a.node.masqueradeMark ?? '') !== (b.node.masqueradeMark ?? '')) {
    m.warnings.push(`the dumps disagree on the masquerade mark (iptables: ${a.node.masqueradeMark ?? 'default'}, ip6tables: ${b.node.masqueradeMark ?? 'default'}); the iptables dump's is kept`);
  }
  const range = widenRange(a.node.nodePortRange, b.node.nodePortRange);
  if (range !== undefined) node.nodePortRange = range;

  // services in the order of both dumps
  const four = new Map(a.services.map((s) => [keyOf(s), s]));
  const six = new Map(b.services.map((s) => [keyOf(s), s]));
  const services: Service[] = bothOrders(a.services.map(keyOf), b.services.map(keyOf)).map((k) => {
    const s4 = four.get(k);
    const s6 = six.get(k);
    return s4 && s6 ? m.service(s4, s6) : (s4 ?? s6)!;
  });
  const ruleSet: RuleSet = { apiVersion: a.apiVersion, node, services };

  const tag = (family: 4 | 6, xs: NotUnderstood[]) => xs.map((x) => ({ ...x, family }));
  const both = (f: (r: ImportResult) => NotUnderstood[]) => [...tag(4, f(r4)), ...tag(6, f(r6))];
  const v = validateRuleSet(ruleSet);
  return {
    ruleSet,
    notUnderstood: both((r) => r.notUnderstood),
    otherSoftware: both((r) => r.otherSoftware),
    leftToKernel: [r4.leftToKernel, r6.leftToKernel && `ip6tables: ${r6.leftToKernel}`].filter((x) => x).join('; ') || null,
    limits: [...both((r) => r.limits), ...m.limits],
    warnings: [...r4.warnings, ...r6.warnings.map((w) => `ip6tables: ${w}`), ...m.warnings],
    nodeAddressesFrom: r4.nodeAddressesFrom ?? r6.nodeAddressesFrom,
    errors: v.ok ? [] : v.errors,
    parseErrors: both((r) => r.parseErrors),
  };
}
