/**
 * The iptables importer's rule-set building: the ports read by ChainReader
 * (import-chains.ts) → services, ports and endpoints of a rule set, NodePort
 * range, conflicts between ports, validation and the endpoint check.
 */
import type { RuleSet, Service, ServicePort, Endpoint } from '../types.ts';
import { API_VERSION } from '../types.ts';
import { DEFAULT_AFFINITY_SECONDS, DEFAULT_MASQUERADE_MARK, DEFAULT_NODEPORT_RANGE, ruleSetModel } from '../model.ts';
import { validateRuleSet } from '../validate.ts';
import type { ProtocolName } from '../../dataplane/addr.ts';
import { EXT_PREFIX, FW_PREFIX, SEP_PREFIX } from './hash.ts';
import type { PortRec, Claim } from './import-rules.ts';
import { PLACEHOLDER_REMOTE_ENDPOINT, PLACEHOLDER_REMOTE_ENDPOINT6, mergeOrders, LOCALHOST_NODEPORTS_LIMIT } from './import-rules.ts';
import { ChainReader } from './import-chains.ts';
import { endpointText } from './writer.ts';

export abstract class RuleSetBuilder extends ChainReader {

  protected build(): RuleSet {
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
    } else if (this.parsed.family !== 6 && rs.services.some((s) => s.ports.some((p) => p.nodePort !== undefined))) {
      // (kube-proxy never served IPv6 NodePorts on localhost: route_localnet is IPv4's)
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

  protected buildService(ns: string, name: string, ports: { rec: PortRec; portName: string }[]): Service {
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
        const placeholder = this.parsed.family === 6 ? PLACEHOLDER_REMOTE_ENDPOINT6 : PLACEHOLDER_REMOTE_ENDPOINT;
        note(placeholder, portName, rec.port ?? 1, true, false);
        seq.push(placeholder);
        this.warn(`${rec.name}: has endpoints only on other nodes, which an iptables dump does not name; a placeholder endpoint ${placeholder} stands for them`);
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
  protected nodePorts(rs: RuleSet): void {
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
  protected resolveConflicts(services: Service[]): void {
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
  protected validate(rs: RuleSet): { path: string; message: string }[] {
    const r = validateRuleSet(rs);
    if (r.ok) return [];
    return r.errors.map((e) =>
      e.path === 'node.addresses' && rs.node.addresses.length === 0
        ? { path: e.path, message: "no node address: the dump names none (no -d ADDRESS -j KUBE-NODEPORTS rule); give them with --node-address ADDRESS" }
        : e,
    );
  }

  protected readonly recOf = new Map<ServicePort, PortRec>();

  /** Warn where the imported rule set would not give back the endpoints read. */
  protected check(rs: RuleSet): void {
    let model;
    try {
      model = ruleSetModel(rs);
    } catch (e) {
      this.warn(`the imported rule set does not model: ${(e as Error).message}`);
      return;
    }
    for (const p of model.portsOf(this.parsed.family)) {
      const rec = this.ports.get(`${p.name}|${p.proto}`);
      if (!rec) continue;
      const want = (rec.clusterEndpoints ?? []).map((e) => e.text).join(',');
      const got = p.usesClusterPolicyChain ? p.clusterEndpoints.map(endpointText).join(',') : '';
      if (rec.clusterEndpoints !== null && want !== got) this.warn(`${p.name}: the imported endpoints give the cluster chain [${got}], the dump has [${want}]`);
      const wantL = (rec.localEndpoints ?? []).map((e) => e.text).join(',');
      const gotL = p.usesLocalPolicyChain ? p.localEndpoints.map(endpointText).join(',') : '';
      if (rec.localEndpoints !== null && wantL !== gotL) this.warn(`${p.name}: the imported endpoints give the local chain [${gotL}], the dump has [${wantL}]`);
    }
  }
}
