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
import type { EndpointEntry, EndpointSet, ServicePortEntry, Tables } from '../dataplane/tables.ts';
import {
  VIP_CLUSTER, VIP_EXTERNAL, VIP_LOADBALANCER, LB_MAGLEV, LB_RANDOM,
  ROW, R_FLAGS, R_CLUSTER_START, R_CLUSTER_COUNT, R_LOCAL_START, R_LOCAL_COUNT,
  F_HAS_ENDPOINTS, F_EXTERNAL_LOCAL, F_HAS_EXTERNAL_ENDPOINTS, F_HAS_INTERNAL, F_INTERNAL_LOCAL, F_FIREWALL, F_SLOW_SELECT,
} from '../dataplane/tables.ts';
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
  let flatLen = 0;
  for (const sp of model.ports) flatLen += sp.clusterEndpoints.length + sp.localEndpoints.length;
  const endpointFlat = new Int32Array(flatLen * 2);
  let flatNext = 0;
  const endpointSet = (eps: EndpointModel[], affinity: boolean): EndpointSet | null => {
    if (eps.length === 0) return null;
    const endpoints = eps.map(entry);
    const flatStart = flatNext;
    for (const e of endpoints) {
      endpointFlat[flatNext * 2] = e.addr | 0;
      endpointFlat[flatNext * 2 + 1] = e.port;
      flatNext++;
    }
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
    return { endpoints, flatStart, maglev: table, index };
  };

  let vipCount = 0;
  for (const sp of model.ports) vipCount += (sp.clusterIP ? 1 : 0) + sp.externalIPs.length + sp.loadBalancerIPs.length;
  const vipIndex = new VipIndex(vipCount);
  const vipAddrs = new Set<number>();
  const addVip = (addr: number, s: ServicePortEntry, kind: number) => {
    vipIndex.set(addr, protoIndex(s.protocol) * 65536 + s.port, (s.index << 2) | kind);
    vipAddrs.add(addr | 0);
  };
  const nodePorts = new Int32Array(3 * 65536).fill(-1);
  const services: ServicePortEntry[] = [];
  const serviceRows = new Int32Array(model.ports.length * ROW);
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
    const o = s.index * ROW;
    serviceRows[o + R_FLAGS] =
      (s.hasEndpoints ? F_HAS_ENDPOINTS : 0) |
      (s.externalPolicyLocal ? F_EXTERNAL_LOCAL : 0) |
      (s.hasExternalEndpoints ? F_HAS_EXTERNAL_ENDPOINTS : 0) |
      (s.internal !== null ? F_HAS_INTERNAL : 0) |
      (s.internal !== null && s.internal === local && local !== cluster ? F_INTERNAL_LOCAL : 0) |
      (ranges !== null ? F_FIREWALL : 0) |
      (affinity || maglev ? F_SLOW_SELECT : 0);
    serviceRows[o + R_CLUSTER_START] = cluster ? cluster.flatStart : 0;
    serviceRows[o + R_CLUSTER_COUNT] = cluster ? cluster.endpoints.length : 0;
    serviceRows[o + R_LOCAL_START] = local ? local.flatStart : 0;
    serviceRows[o + R_LOCAL_COUNT] = local ? local.endpoints.length : 0;
    if (s.clusterIP >= 0) addVip(s.clusterIP, s, VIP_CLUSTER);
    for (const a of sp.externalIPs) addVip(parseIPv4(a), s, VIP_EXTERNAL);
    for (const a of sp.loadBalancerIPs) addVip(parseIPv4(a), s, VIP_LOADBALANCER);
    if (s.nodePort !== 0) nodePorts[protoIndex(proto) * 65536 + s.nodePort] = s.index;
  }
  const cidr = node.clusterCIDR === null ? null : parseCidr(node.clusterCIDR);
  return {
    generation: opts.generation ?? 1,
    serviceRows,
    endpointFlat,
    vipIndex,
    vipAddrs,
    nodePorts,
    localAddrs: Int32Array.from(node.addresses.map((a) => parseIPv4(a) | 0)),
    clusterCIDR: cidr,
    cidrNet: cidr === null ? 1 : cidr.net | 0,
    cidrMask: cidr === null ? 0 : cidr.mask | 0,
    masqueradeAll: node.masqueradeAll,
    masqueradeAddr: parseIPv4(node.masqueradeAddress),
    loadBalancing: maglev ? LB_MAGLEV : LB_RANDOM,
    services,
  };
}
