/**
 * Compiler: a validated rule set → the immutable Tables snapshot the packet
 * path reads (dataplane/tables.ts). Runs off the hot path; the result is
 * swapped in by one assignment.
 */
import type { RuleSet } from './types.ts';
import { ruleSetModel } from './model.ts';
import type { EndpointModel } from './model.ts';
import { parseIPv4, parseCidr, protocolNumber, protoIndex } from '../dataplane/addr.ts';
import { VipIndex } from '../dataplane/hashtable.ts';
import type { Cidr } from '../dataplane/addr.ts';
import type { EndpointEntry, EndpointSet, ServicePortEntry, Tables, VipEntry } from '../dataplane/tables.ts';
import { VIP_CLUSTER, VIP_EXTERNAL, VIP_LOADBALANCER, LB_MAGLEV, LB_RANDOM } from '../dataplane/tables.ts';
import { buildMaglev, fnv1a } from '../dataplane/select.ts';

const NO_INDEX: ReadonlyMap<number, number> = new Map();

export interface CompileOptions {
  generation?: number;
}

export function compile(rs: RuleSet, opts: CompileOptions = {}): Tables {
  const model = ruleSetModel(rs);
  const node = model.node;
  const maglev = node.loadBalancing === 'maglev';
  const endpointCache = new Map<string, EndpointEntry>();
  const maglevCache = new Map<string, Uint16Array>();

  const entry = (e: EndpointModel): EndpointEntry => {
    const k = e.nodeLocal ? e.text + 'L' : e.text;
    let x = endpointCache.get(k);
    if (x === undefined) {
      x = { addr: parseIPv4(e.address), port: e.port, nodeLocal: e.nodeLocal, text: e.text };
      endpointCache.set(k, x);
    }
    return x;
  };
  const endpointSet = (eps: EndpointModel[], affinity: boolean): EndpointSet | null => {
    if (eps.length === 0) return null;
    const endpoints = eps.map(entry);
    let table: Uint16Array | null = null;
    if (maglev) {
      const key = eps.map((e) => e.text).join(',');
      table = maglevCache.get(key) ?? null;
      if (table === null) {
        table = buildMaglev(eps.map((e) => e.text), node.maglevTableSize);
        maglevCache.set(key, table);
      }
    }
    let index = NO_INDEX;
    if (affinity) {
      const m = new Map<number, number>();
      endpoints.forEach((e, i) => m.set(e.addr * 65536 + e.port, i));
      index = m;
    }
    return { endpoints, maglev: table, index };
  };

  const vipEntries: VipEntry[] = [];
  let vipCount = 0;
  for (const sp of model.ports) vipCount += (sp.clusterIP ? 1 : 0) + sp.externalIPs.length + sp.loadBalancerIPs.length;
  const vipIndex = new VipIndex(vipCount);
  const vipAddrs = new Set<number>();
  const addVip = (addr: number, s: ServicePortEntry, kind: number) => {
    vipIndex.set(addr, protoIndex(s.protocol) * 65536 + s.port, vipEntries.length);
    vipEntries.push({ svc: s, kind });
    vipAddrs.add(addr | 0);
  };
  const nodePorts = new Int32Array(3 * 65536).fill(-1);
  const services: ServicePortEntry[] = [];
  for (const sp of model.ports) {
    const affinity = sp.affinitySeconds > 0;
    const cluster = sp.usesClusterPolicyChain ? endpointSet(sp.clusterEndpoints, affinity) : null;
    const sameSet = sp.usesLocalPolicyChain && cluster !== null && sp.localEndpoints.length === sp.clusterEndpoints.length && sp.localEndpoints.every((e, i) => e === sp.clusterEndpoints[i]);
    const local = sp.usesLocalPolicyChain ? (sameSet ? cluster : endpointSet(sp.localEndpoints, affinity)) : null;
    const ranges: Cidr[] | null = sp.usesFirewallChain ? sp.loadBalancerSourceRanges.map((r) => parseCidr(r)!) : null;
    const proto = protocolNumber(sp.protocol);
    const s: ServicePortEntry = {
      index: services.length,
      name: sp.name,
      uid: fnv1a(sp.name + '/' + sp.proto),
      protocol: proto,
      clusterIP: sp.clusterIP === null ? -1 : parseIPv4(sp.clusterIP),
      port: sp.port.port,
      nodePort: sp.port.nodePort ?? 0,
      hasEndpoints: sp.hasEndpoints,
      internal: sp.hasInternalEndpoints ? (sp.internalPolicyLocal ? local : cluster) : null,
      cluster,
      local,
      externalPolicyLocal: sp.externalPolicyLocal,
      hasExternalEndpoints: sp.hasExternalEndpoints,
      affinityMs: sp.affinitySeconds * 1000,
      sourceRanges: ranges,
      lbSourceIPs: sp.usesFirewallChain && sp.allowFromNode ? sp.loadBalancerIPs.map(parseIPv4) : [],
    };
    services.push(s);
    if (s.clusterIP >= 0) addVip(s.clusterIP, s, VIP_CLUSTER);
    for (const a of sp.externalIPs) addVip(parseIPv4(a), s, VIP_EXTERNAL);
    for (const a of sp.loadBalancerIPs) addVip(parseIPv4(a), s, VIP_LOADBALANCER);
    if (s.nodePort !== 0) nodePorts[protoIndex(proto) * 65536 + s.nodePort] = s.index;
  }
  return {
    generation: opts.generation ?? 1,
    vipIndex,
    vipEntries,
    vipAddrs,
    nodePorts,
    localAddrs: Int32Array.from(node.addresses.map((a) => parseIPv4(a) | 0)),
    clusterCIDR: node.clusterCIDR === null ? null : parseCidr(node.clusterCIDR),
    masqueradeAll: node.masqueradeAll,
    masqueradeAddr: parseIPv4(node.masqueradeAddress),
    loadBalancing: maglev ? LB_MAGLEV : LB_RANDOM,
    services,
  };
}
