/**
 * Compiler: the numeric model of a validated rule set (control/model.ts) →
 * the immutable Tables snapshot the packet path reads (dataplane/tables.ts).
 * It reads only the model: no address is parsed here. Runs off the hot path;
 * the result is swapped in by one assignment.
 *
 * Two ways: `compile` builds everything; `patchTables` builds the next
 * snapshot from the one in force when a few services changed (the API's
 * PATCH) and touches only the changed services' entries. Removed entries stay
 * as tombstones (`live: false`, unreachable: their keys are gone), and
 * replaced endpoint sets as unreferenced pairs in `endpointFlat`, until the
 * next full compile.
 *
 * `patchTables` works one of two ways:
 * - `inPlace` (the holder's tables are read by no other thread: tunproxy as a
 *   library, the API in the packet thread's process): the next snapshot is
 *   written into the arrays of the one in force, which it shares. Rows are
 *   rewritten where they stand, endpoint pairs and new rows appended into the
 *   arrays' spare room (grown by a quarter when full: amortized), keys set and
 *   deleted in the VIP indexes in place. A change costs in proportion to its
 *   size: a one-service PATCH on 100 000 services writes a few dozen ints.
 *   The snapshot in force is given up by this (its arrays now read as the new
 *   one): that is safe because the apply runs on the thread that moves the
 *   packets, between two batches, and the loop swaps the new snapshot in
 *   before its next batch — no batch ever sees a table change under it.
 * - a copy (the tables are shared with the packet thread, which may be in the
 *   middle of a batch: the control worker of tunproxy run): the typed arrays
 *   are copied (a few MB at 100 000 services, ~ms) and the copy patched; the
 *   key indexes are shared when the keys did not change.
 */
import type { RuleSet } from './types.ts';
import { addr6, ADDR6_BASE, modelOf, portsOfFamily } from './model.ts';
import type { Addr, EndpointModel, NodeModel, RuleSetModel, ServiceModel, ServicePortModel } from './model.ts';
import { Addr6Ids, EP6_PORT, EP6_STRIDE, type Tables6 } from '../dataplane/tables6.ts';
import { protoIndex } from '../dataplane/addr.ts';
import { VipIndex } from '../dataplane/hashtable.ts';
import type { EndpointEntry, EndpointSet, ServicePortEntry, Tables } from '../dataplane/tables.ts';
import {
  VIP_CLUSTER, VIP_EXTERNAL, VIP_LOADBALANCER, LB_MAGLEV, LB_RANDOM, ANY_PORT,
  ROW, R_FLAGS, R_CLUSTER_START, R_CLUSTER_COUNT, R_LOCAL_START, R_LOCAL_COUNT,
  F_HAS_ENDPOINTS, F_EXTERNAL_LOCAL, F_HAS_EXTERNAL_ENDPOINTS, F_HAS_INTERNAL, F_INTERNAL_LOCAL, F_FIREWALL, F_SLOW_SELECT,
} from '../dataplane/tables.ts';
import { buildMaglev, fnv1a } from '../dataplane/select.ts';

const NO_INDEX: ReadonlyMap<number, number> = new Map();
const NO_ADDRS: readonly number[] = Object.freeze([]);

export interface CompileOptions {
  generation?: number;
}

/** `a`, or a copy of it with room for `need` ints and a quarter more (the incremental path appends). */
function withRoom(a: Int32Array, need: number): Int32Array {
  if (need <= a.length) return a;
  const b = new Int32Array(Math.max(need, a.length + (a.length >> 2) + 1024));
  b.set(a);
  return b;
}

/** `v`, or a copy of it with slots for `keys` keys and a quarter more. */
function indexWithRoom(v: VipIndex, keys: number): VipIndex {
  return keys * 2 <= v.capacity ? v : v.copy(keys + (keys >> 2) + 64);
}

/** How compile6 gives the Builder IPv6 addresses as ids: a key address (looked up by packets) and an endpoint. */
interface AddrIds {
  key(a: Addr): number;
  endpoint(e: EndpointModel): EndpointModel;
}

/** The arrays a snapshot is made of, while it is being built. */
class Builder {
  readonly node: NodeModel;
  readonly maglev: boolean;
  services: ServicePortEntry[];
  serviceRows: Int32Array;
  endpointFlat: Int32Array;
  flatNext: number;
  vipIndex: VipIndex;
  /** (addr, ANY_PORT) → how many VIP keys use the address */
  vipAddrs: VipIndex;
  nodePorts: Int32Array;
  live: number;
  /** endpoint pairs of endpointFlat that rows no longer point at (replaced or removed entries' sets) */
  freedPairs = 0;
  private readonly maglevCache = new Map<string, Uint16Array>();
  /** the IPv6 tables' ids for addresses (compile6), null for IPv4 (an Addr is its own key) */
  private readonly ids: AddrIds | null;

  constructor(node: NodeModel, init: { services: ServicePortEntry[]; serviceRows: Int32Array; endpointFlat: Int32Array; flatNext: number; vipIndex: VipIndex; vipAddrs: VipIndex; nodePorts: Int32Array; live: number }, ids: AddrIds | null = null) {
    this.node = node;
    this.ids = ids;
    this.maglev = node.loadBalancing === 'maglev';
    this.services = init.services;
    this.serviceRows = init.serviceRows;
    this.endpointFlat = init.endpointFlat;
    this.flatNext = init.flatNext;
    this.vipIndex = init.vipIndex;
    this.vipAddrs = init.vipAddrs;
    this.nodePorts = init.nodePorts;
    this.live = init.live;
  }

  private endpointSet(eps: EndpointModel[], affinity: boolean): EndpointSet | null {
    if (eps.length === 0) return null;
    // the model's endpoints are the entries (an EndpointModel is an EndpointEntry with more fields):
    // nothing is made per endpoint, and the model, which the holder keeps anyway, holds them
    const endpoints: readonly EndpointEntry[] = eps;
    const flatStart = this.flatNext;
    const flat = this.endpointFlat;
    for (const e of endpoints) {
      flat[this.flatNext * 2] = e.addr | 0;
      flat[this.flatNext * 2 + 1] = e.port;
      this.flatNext++;
    }
    let table: Uint16Array | null = null;
    if (this.maglev) {
      const key = eps.map((e) => e.text).join(',');
      table = this.maglevCache.get(key) ?? null;
      if (table === null) {
        table = buildMaglev(eps.map((e) => e.text), this.node.maglevTableSize);
        this.maglevCache.set(key, table);
      }
    }
    let index = NO_INDEX;
    if (affinity) {
      const m = new Map<number, number>();
      endpoints.forEach((e, i) => m.set(e.addr * 65536 + e.port, i));
      index = m;
    }
    return { endpoints, flatStart, maglev: table, index };
  }

  private addVip(addr: number, s: ServicePortEntry, kind: number): void {
    this.vipIndex.set(addr, protoIndex(s.protocol) * 65536 + s.port, (s.index << 2) | kind);
    const n = this.vipAddrs.get(addr, ANY_PORT);
    this.vipAddrs.set(addr, ANY_PORT, n < 0 ? 1 : n + 1);
  }

  private removeVip(addr: number, s: ServicePortEntry): void {
    this.vipIndex.delete(addr, protoIndex(s.protocol) * 65536 + s.port);
    const n = this.vipAddrs.get(addr, ANY_PORT);
    if (n <= 1) this.vipAddrs.delete(addr, ANY_PORT);
    else this.vipAddrs.set(addr, ANY_PORT, n - 1);
  }

  /** Append the entry of one service port (its row, endpoints, VIP keys, NodePort). */
  add(sp: ServicePortModel): ServicePortEntry {
    const s = this.entryAt(sp, this.services.length);
    this.services.push(s);
    this.live++;
    if (s.clusterIP >= 0) this.addVip(s.clusterIP, s, VIP_CLUSTER);
    for (const a of s.externalIPs) this.addVip(a, s, VIP_EXTERNAL);
    for (const a of s.loadBalancerIPs) this.addVip(a, s, VIP_LOADBALANCER);
    if (s.nodePort !== 0) this.nodePorts[protoIndex(s.protocol) * 65536 + s.nodePort] = s.index;
    return s;
  }

  /** Rebuild the entry at `index` for a service port with the same keys (VIPs, NodePort): the keys stay as they are. */
  replace(sp: ServicePortModel, index: number): ServicePortEntry {
    this.freedPairs += this.rowPairs(index);
    const s = this.entryAt(sp, index);
    this.services[index] = s;
    return s;
  }

  /** The entry of one service port at `index`, with its row and its endpoints in the flat array. */
  private entryAt(sp: ServicePortModel, index: number): ServicePortEntry {
    const affinity = sp.affinitySeconds > 0;
    // IPv6: the addresses as the IPv6 tables' ids (the model itself is not copied)
    const ids = this.ids;
    const clusterEps = ids === null ? sp.clusterEndpoints : sp.clusterEndpoints.map(ids.endpoint);
    const cluster = sp.usesClusterPolicyChain ? this.endpointSet(clusterEps, affinity) : null;
    const sameSet = sp.usesLocalPolicyChain && cluster !== null && sp.localEndpoints.length === sp.clusterEndpoints.length && sp.localEndpoints.every((e, i) => e === sp.clusterEndpoints[i]);
    const local = sp.usesLocalPolicyChain ? (sameSet ? cluster : this.endpointSet(ids === null ? sp.localEndpoints : sp.localEndpoints.map(ids.endpoint), affinity)) : null;
    const ranges = sp.usesFirewallChain ? sp.sourceRanges : null;
    const proto = sp.protocolNumber;
    const ext = sp.externalAddrs.length === 0 ? NO_ADDRS : ids === null ? sp.externalAddrs : sp.externalAddrs.map(ids.key);
    const lb = sp.loadBalancerAddrs.length === 0 ? NO_ADDRS : ids === null ? sp.loadBalancerAddrs : sp.loadBalancerAddrs.map(ids.key);
    const s: ServicePortEntry = {
      index,
      live: true,
      name: sp.name,
      // fnv1a of "name/proto" (what loop.ts recomputes from a flow's service name), without making the string
      uid: fnv1a(sp.proto, fnv1a('/', fnv1a(sp.name))),
      protocol: proto,
      clusterIP: ids === null || sp.clusterAddr < 0 ? sp.clusterAddr : ids.key(sp.clusterAddr),
      externalIPs: ext,
      loadBalancerIPs: lb,
      port: sp.portNumber,
      nodePort: sp.nodePort,
      hasEndpoints: sp.hasEndpoints,
      internal: sp.hasInternalEndpoints ? (sp.internalPolicyLocal ? local : cluster) : null,
      cluster,
      local,
      externalPolicyLocal: sp.externalPolicyLocal,
      hasExternalEndpoints: sp.hasExternalEndpoints,
      affinityMs: sp.affinitySeconds * 1000,
      sourceRanges: ranges,
      lbSourceIPs: sp.usesFirewallChain && sp.allowFromNode ? lb : NO_ADDRS,
    };
    const rows = this.serviceRows;
    const o = s.index * ROW;
    rows[o + R_FLAGS] =
      (s.hasEndpoints ? F_HAS_ENDPOINTS : 0) |
      (s.externalPolicyLocal ? F_EXTERNAL_LOCAL : 0) |
      (s.hasExternalEndpoints ? F_HAS_EXTERNAL_ENDPOINTS : 0) |
      (s.internal !== null ? F_HAS_INTERNAL : 0) |
      (s.internal !== null && s.internal === local && local !== cluster ? F_INTERNAL_LOCAL : 0) |
      (ranges !== null ? F_FIREWALL : 0) |
      (affinity || this.maglev ? F_SLOW_SELECT : 0);
    rows[o + R_CLUSTER_START] = cluster ? cluster.flatStart : 0;
    rows[o + R_CLUSTER_COUNT] = cluster ? cluster.endpoints.length : 0;
    rows[o + R_LOCAL_START] = local ? local.flatStart : 0;
    rows[o + R_LOCAL_COUNT] = local ? local.endpoints.length : 0;
    return s;
  }

  /** The endpoint pairs the row at `index` points at (its local set counted apart when it is not the cluster set). */
  private rowPairs(index: number): number {
    const r = this.serviceRows;
    const o = index * ROW;
    const local = r[o + R_LOCAL_START] !== r[o + R_CLUSTER_START] || r[o + R_CLUSTER_COUNT] === 0 ? r[o + R_LOCAL_COUNT] : 0;
    return r[o + R_CLUSTER_COUNT] + local;
  }

  /** Make an entry unreachable: its keys go, its row is cleared, a tombstone keeps its index. */
  remove(index: number): void {
    const s = this.services[index];
    if (!s.live) return;
    this.freedPairs += this.rowPairs(index);
    if (s.clusterIP >= 0) this.removeVip(s.clusterIP, s);
    for (const a of s.externalIPs) this.removeVip(a, s);
    for (const a of s.loadBalancerIPs) this.removeVip(a, s);
    const np = protoIndex(s.protocol) * 65536 + s.nodePort;
    if (s.nodePort !== 0 && this.nodePorts[np] === index) this.nodePorts[np] = -1;
    this.serviceRows.fill(0, index * ROW, index * ROW + ROW);
    this.services[index] = { ...s, live: false, hasEndpoints: false, internal: null, cluster: null, local: null, clusterIP: -1, externalIPs: [], loadBalancerIPs: [], nodePort: 0 };
    this.live--;
  }

  tables(generation: number): Tables {
    const node = this.node;
    const cidr = node.cidr;
    return {
      generation,
      serviceRows: this.serviceRows,
      endpointFlat: this.endpointFlat,
      endpointPairs: this.flatNext,
      vipIndex: this.vipIndex,
      vipAddrs: this.vipAddrs,
      nodePorts: this.nodePorts,
      localAddrs: Int32Array.from(node.addrs4, (a) => a | 0),
      clusterCIDR: cidr,
      cidrNet: cidr === null ? 1 : cidr.net | 0,
      cidrMask: cidr === null ? 0 : cidr.mask | 0,
      masqueradeAll: node.masqueradeAll,
      masqueradeAddr: node.masqueradeAddr,
      loadBalancing: this.maglev ? LB_MAGLEV : LB_RANDOM,
      services: this.services,
      liveServicePorts: this.live,
    };
  }
}

function vipCount(ports: ServicePortModel[]): number {
  let n = 0;
  for (const sp of ports) n += (sp.clusterAddr >= 0 ? 1 : 0) + sp.externalAddrs.length + sp.loadBalancerAddrs.length;
  return n;
}

function flatCount(ports: ServicePortModel[]): number {
  let n = 0;
  for (const sp of ports) n += sp.clusterEndpoints.length + sp.localEndpoints.length;
  return n;
}

/** The tables of a rule set: from its model (or from a rule set already validated, modelled here). */
export function compile(input: RuleSet | RuleSetModel, opts: CompileOptions = {}): Tables {
  const model = modelOf(input);
  const node = model.node;
  // IPv4 service ports (IPv6 ones are compiled by the IPv6 tables: V6-CONTRACT, v6dp)
  const ports = model.portsOf(4);
  const b = new Builder(node, {
    services: [],
    serviceRows: new Int32Array(ports.length * ROW),
    endpointFlat: new Int32Array(flatCount(ports) * 2),
    flatNext: 0,
    vipIndex: new VipIndex(vipCount(ports)),
    vipAddrs: new VipIndex(vipCount(ports)),
    nodePorts: new Int32Array(3 * 65536).fill(-1),
    live: 0,
  });
  for (const sp of ports) b.add(sp);
  const t = b.tables(opts.generation ?? 1);
  const v6 = compile6(model, opts.generation ?? 1);
  return v6 === null ? t : { ...t, v6 };
}

/**
 * The IPv6 half (kube-proxy's IPv6 proxier): the family-6 service ports
 * compiled by the same Builder with every IPv6 address replaced by a dense
 * id (dataplane/tables6.ts), plus the id map, the words, the IPv6 cluster
 * CIDR, masquerade address and source ranges. Null when the rule set has no
 * IPv6 service port and the node no IPv6 address.
 */
export function compile6(model: RuleSetModel, generation = 1): Tables6 | null {
  const node = model.node;
  const ports = model.portsOf(6);
  if (ports.length === 0 && node.addrs6.length === 0) return null;
  // dense ids by the address's index in the pool (addr6): no Map keyed by doubles, no Set
  const idAt = new Int32Array(addr6.size).fill(-1);
  const isKeyed = new Uint8Array(addr6.size);
  const keyed: number[] = [];
  let words = new Uint32Array(256);
  let nIds = 0;
  const idOf = (a: Addr): number => {
    const p = a - ADDR6_BASE;
    let i = idAt[p];
    if (i < 0) {
      i = idAt[p] = nIds++;
      if (nIds * 4 > words.length) {
        const grown = new Uint32Array(words.length * 2);
        grown.set(words);
        words = grown;
      }
      words.set(addr6.words(a), i * 4);
    }
    return i;
  };
  // ids a packet's address is looked up by (node, ClusterIP, external, LB addresses): keyed;
  // endpoints get ids for their words only (a smaller probe table: fewer cache misses per lookup)
  const id = (a: Addr): number => {
    const i = idOf(a);
    if (isKeyed[a - ADDR6_BASE] === 0) {
      isKeyed[a - ADDR6_BASE] = 1;
      keyed.push(i);
    }
    return i;
  };
  for (const a of node.addrs6) id(a);
  const masqId = node.masqueradeAddr6 >= 0 ? idOf(node.masqueradeAddr6) : -1;
  // the models with ids for addresses (endpoint models mapped once each: the Builder compares them by identity)
  const eps = new Map<EndpointModel, EndpointModel>();
  const ep = (e: EndpointModel): EndpointModel => {
    let m = eps.get(e);
    if (m === undefined) eps.set(e, (m = { ...e, addr: idOf(e.addr) }));
    return m;
  };
  const b = new Builder(
    node,
    {
      services: [],
      serviceRows: new Int32Array(ports.length * ROW),
      endpointFlat: new Int32Array(flatCount(ports) * 2),
      flatNext: 0,
      vipIndex: new VipIndex(vipCount(ports)),
      vipAddrs: new VipIndex(vipCount(ports)),
      nodePorts: new Int32Array(3 * 65536).fill(-1),
      live: 0,
    },
    { key: id, endpoint: ep },
  );
  for (const sp of ports) b.add(sp);
  const base: Tables = {
    ...b.tables(generation),
    localAddrs: Int32Array.from(node.addrs6, id),
    clusterCIDR: null,
    cidrNet: 1,
    cidrMask: 0,
    masqueradeAddr: masqId,
  };
  const index = new Addr6Ids(keyed.length);
  const w = words.slice(0, nIds * 4);
  for (const i of keyed) index.set(w, i * 4, i);
  // each keyed address's first (protocol, port) with the VIP index's answer for it, in its slot (Addr6Ids: the hint)
  const vips = base.vipIndex;
  for (const sp of ports) {
    const pp = protoIndex(sp.protocolNumber) * 65536 + sp.portNumber;
    const hint = (a: Addr): void => {
      const i = idAt[a - ADDR6_BASE];
      const v = vips.get(i, pp);
      if (v >= 0) index.hint(w, i * 4, pp, v);
    };
    if (sp.clusterAddr >= 0) hint(sp.clusterAddr);
    for (const a of sp.externalAddrs) hint(a);
    for (const a of sp.loadBalancerAddrs) hint(a);
  }
  // the endpoints in flat order with their words inline (Tables6.endpoints6)
  const ef = base.endpointFlat;
  const endpoints6 = new Uint32Array((ef.length >> 1) * EP6_STRIDE);
  for (let k = 0; k < ef.length >> 1; k++) {
    const id = ef[2 * k];
    const o = k * EP6_STRIDE;
    endpoints6[o] = w[id * 4]; endpoints6[o + 1] = w[id * 4 + 1]; endpoints6[o + 2] = w[id * 4 + 2]; endpoints6[o + 3] = w[id * 4 + 3];
    endpoints6[o + EP6_PORT] = ef[2 * k + 1];
  }
  return {
    base,
    ids: index,
    words: w,
    endpoints6,
    cidr6: node.cidr6,
    masqId,
    sourceRanges6: ports.map((sp) => (sp.usesFirewallChain ? sp.sourceRanges6 : null)),
  };
}

/** Same protocol, port, ClusterIP, external and LB IPs and NodePort: the same keys in the indexes. */
function sameKeys(e: ServicePortEntry, sp: ServicePortModel): boolean {
  if (!e.live || e.protocol !== sp.protocolNumber || e.port !== sp.portNumber || e.nodePort !== sp.nodePort) return false;
  if (e.clusterIP !== sp.clusterAddr) return false;
  if (e.externalIPs.length !== sp.externalAddrs.length || e.loadBalancerIPs.length !== sp.loadBalancerAddrs.length) return false;
  for (let i = 0; i < sp.externalAddrs.length; i++) if (e.externalIPs[i] !== sp.externalAddrs[i]) return false;
  for (let i = 0; i < sp.loadBalancerAddrs.length; i++) if (e.loadBalancerIPs[i] !== sp.loadBalancerAddrs[i]) return false;
  return true;
}

/** What `patchTables` gives back. */
export interface Patched {
  tables: Tables;
  /** per added service, the indexes of its entries in tables.services */
  entries: number[][];
  /** endpoint pairs no row points at any more (the replaced and removed entries' sets) */
  freedPairs: number;
}

/**
 * The next snapshot after `removed` service-port entries (indexes into
 * prev.services) went and the `added` services' models came, everything else
 * as in `prev`, on `node` (the node of the model in force: unchanged).
 * `inPlace`: written into prev's arrays (see the top of this file: only when
 * no other thread reads them); else into copies.
 */
export function patchTables(prev: Tables, node: NodeModel, removed: readonly number[], added: readonly ServiceModel[], generation: number, inPlace = false): Patched {
  const models = added.map((s) => portsOfFamily(s.ports, 4));
  let newPorts = 0;
  let newFlat = 0;
  let newVips = 0;
  for (const m of models) {
    newPorts += m.length;
    newFlat += flatCount(m);
    newVips += vipCount(m);
  }
  // the common PATCH: the same service ports with other endpoints or policies, the same keys:
  // rebuild their entries where they are; the key indexes stay as they are
  const byName = new Map<string, number>();
  for (const i of removed) byName.set(prev.services[i].name, i);
  const inPlaceAt: number[][] = [];
  let sameKeysAll = newPorts === removed.length;
  for (const m of models) {
    const at: number[] = [];
    for (const sp of m) {
      const i = byName.get(sp.name);
      if (i === undefined || !sameKeys(prev.services[i], sp)) sameKeysAll = false;
      else at.push(i);
    }
    inPlaceAt.push(at);
  }
  const flatUsed = prev.endpointPairs;
  const flatNeed = (flatUsed + newFlat) * 2;
  if (sameKeysAll) {
    const b = new Builder(node, {
      services: inPlace ? (prev.services as ServicePortEntry[]) : prev.services.slice(),
      serviceRows: inPlace ? prev.serviceRows : prev.serviceRows.slice(),
      endpointFlat: inPlace ? withRoom(prev.endpointFlat, flatNeed) : copyInto(new Int32Array(flatNeed), prev.endpointFlat, flatUsed * 2),
      flatNext: flatUsed,
      vipIndex: prev.vipIndex,
      vipAddrs: prev.vipAddrs,
      nodePorts: prev.nodePorts,
      live: prev.liveServicePorts,
    });
    const entries = models.map((m, k) => m.map((sp, j) => b.replace(sp, inPlaceAt[k][j]).index));
    return { tables: withV6(b.tables(generation), prev), entries, freedPairs: b.freedPairs };
  }

  const rowsNeed = (prev.services.length + newPorts) * ROW;
  const b = new Builder(node, {
    services: inPlace ? (prev.services as ServicePortEntry[]) : prev.services.slice(),
    serviceRows: inPlace ? withRoom(prev.serviceRows, rowsNeed) : copyInto(new Int32Array(rowsNeed), prev.serviceRows, prev.services.length * ROW),
    endpointFlat: inPlace ? withRoom(prev.endpointFlat, flatNeed) : copyInto(new Int32Array(flatNeed), prev.endpointFlat, flatUsed * 2),
    flatNext: flatUsed,
    vipIndex: inPlace ? indexWithRoom(prev.vipIndex, prev.vipIndex.size + newVips) : prev.vipIndex.copy(prev.vipIndex.size + newVips),
    vipAddrs: inPlace ? indexWithRoom(prev.vipAddrs, prev.vipAddrs.size + newVips) : prev.vipAddrs.copy(prev.vipAddrs.size + newVips),
    nodePorts: inPlace ? prev.nodePorts : prev.nodePorts.slice(),
    live: prev.liveServicePorts,
  });
  for (const i of removed) b.remove(i);
  const entries = models.map((m) => m.map((sp) => b.add(sp).index));
  return { tables: withV6(b.tables(generation), prev), entries, freedPairs: b.freedPairs };
}

/** An incremental snapshot keeps the IPv6 tables in force (the holder compiles them again when IPv6 service ports changed). */
function withV6(t: Tables, prev: Tables): Tables {
  return prev.v6 ? { ...t, v6: prev.v6 } : t;
}

/** `to` with the first `n` ints of `from` copied in. */
function copyInto(to: Int32Array, from: Int32Array, n: number): Int32Array {
  to.set(n === from.length ? from : from.subarray(0, n));
  return to;
}
