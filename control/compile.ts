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
 *   are copied (a few MB at 100 000 services, ~ms; into buffers the packet
 *   thread let go of: shared-arrays.ts SharedBufferPool) and the copy
 *   patched; the key indexes are shared when the keys did not change. The
 *   array of entries (`services`) is written in place either way: the packet
 *   thread never reads it (it gets the wire form), and the new snapshot says
 *   which positions changed (`Tables.changed`) for the wire encoder.
 *
 * Every typed array either way makes is on a SharedArrayBuffer: the control
 * worker hands the snapshot to the packet thread as it is (tables-wire.ts
 * shareTables keeps shared arrays), where arrays of its own would each be
 * made and then copied to shared memory once more — 2.4 MB a PUT of 10 000
 * services, memory touched for the first time twice (bench:put-cold).
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
import { copyShared, extendShared, roomyBytes, sharedBuffers, sharedInt32 } from '../dataplane/shared-arrays.ts';

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
  endpoint(e: EndpointModel): EndpointEntry;
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

  private endpointSet(eps: readonly EndpointEntry[], affinity: boolean): EndpointSet | null {
    if (eps.length === 0) return null;
    // the model's endpoints are the entries (an EndpointModel is an EndpointEntry with more fields):
    // nothing is made per endpoint, and the model, which the holder keeps anyway, holds them
    const endpoints: readonly EndpointEntry[] = eps;
    const flatStart = this.flatNext;
    const flat = this.endpointFlat;
    for (let i = 0; i < endpoints.length; i++) {
      const e = endpoints[i];
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
    return { endpoints, flatStart, maglev: table, index, wireMarks: null, wireId: -1 };
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
    for (let i = 0; i < s.externalIPs.length; i++) this.addVip(s.externalIPs[i], s, VIP_EXTERNAL);
    for (let i = 0; i < s.loadBalancerIPs.length; i++) this.addVip(s.loadBalancerIPs[i], s, VIP_LOADBALANCER);
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
      servingKept: sp.endpoints.length > sp.clusterEndpoints.length ? servingKept(sp, ids === null ? null : ids.endpoint) : NO_ADDRS,
      wireEncoder: null,
      wireStamp: 0,
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
    // a new object, stamped anew by the encoder (not the live entry it was copied from)
    this.services[index] = { ...s, live: false, hasEndpoints: false, internal: null, cluster: null, local: null, clusterIP: -1, externalIPs: [], loadBalancerIPs: [], nodePort: 0, wireEncoder: null, wireStamp: 0 };
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
  for (let i = 0; i < ports.length; i++) n += (ports[i].clusterAddr >= 0 ? 1 : 0) + ports[i].externalAddrs.length + ports[i].loadBalancerAddrs.length;
  return n;
}

function flatCount(ports: ServicePortModel[]): number {
  let n = 0;
  for (let i = 0; i < ports.length; i++) n += ports[i].clusterEndpoints.length + ports[i].localEndpoints.length;
  return n;
}

/** A Builder with every one of `ports` added, into arrays made for them (`ids`: the IPv6 tables' address ids). */
function built(node: NodeModel, ports: ServicePortModel[], ids: AddrIds | null): Builder {
  const b = new Builder(
    node,
    {
      services: [],
      serviceRows: sharedInt32(ports.length * ROW),
      endpointFlat: sharedInt32(flatCount(ports) * 2),
      flatNext: 0,
      vipIndex: new VipIndex(vipCount(ports), { shared: true }),
      vipAddrs: new VipIndex(vipCount(ports), { shared: true }),
      nodePorts: sharedInt32(3 * 65536).fill(-1),
      live: 0,
    },
    ids,
  );
  for (let i = 0; i < ports.length; i++) b.add(ports[i]);
  return b;
}

/** The tables of a rule set: from its model (or from a rule set already validated, modelled here). */
export function compile(input: RuleSet | RuleSetModel, opts: CompileOptions = {}): Tables {
  const model = modelOf(input);
  const node = model.node;
  // IPv4 service ports (IPv6 ones are compiled by the IPv6 tables: V6-CONTRACT, v6dp)
  const t = built(node, model.portsOf(4), null).tables(opts.generation ?? 1);
  const v6 = compile6(model, opts.generation ?? 1);
  return v6 === null ? t : { ...t, v6 };
}

/**
 * IPv6 addresses → the IPv6 tables' dense ids, by the address's index in the
 * pool `addr6` (no Map keyed by doubles). Keyed ids are those a packet's
 * address is looked up by (node, ClusterIP, external, LB addresses: they go
 * in Addr6Ids); endpoints get ids for their words only (a smaller probe
 * table: fewer cache misses per lookup). Endpoint models are mapped once each
 * (the Builder compares them by identity). Starts empty (compile6) or from
 * the ids of the tables in force (patchTables6).
 */
class Ids6 implements AddrIds {
  readonly idAt: Int32Array;
  readonly isKeyed: Uint8Array;
  words: Uint32Array;
  n: number;
  /** ids keyed by this builder, in order */
  readonly keyed: number[] = [];
  private readonly eps = new Map<EndpointModel, EndpointEntry>();

  /** false while `words` is the tables in force's array (read by the packet thread): copied before the first write */
  private own: boolean;

  constructor(from: Tables6 | null = null) {
    const size = addr6.size;
    this.idAt = new Int32Array(size).fill(-1);
    this.isKeyed = new Uint8Array(size);
    if (from?.build !== undefined) {
      this.idAt.set(from.build.idAt);
      this.isKeyed.set(from.build.isKeyed);
      this.n = from.words.length >> 2;
      this.words = from.words;
      this.own = false;
    } else {
      this.n = 0;
      this.words = new Uint32Array(256);
      this.own = true;
    }
  }

  readonly idOf = (a: Addr): number => {
    const p = a - ADDR6_BASE;
    let i = this.idAt[p];
    if (i < 0) {
      i = this.idAt[p] = this.n++;
      if (!this.own || this.n * 4 > this.words.length) {
        const grown = new Uint32Array(Math.max(256, this.words.length * 2));
        grown.set(this.words);
        this.words = grown;
        this.own = true;
      }
      addr6.copyWords(a, this.words, i * 4);
    }
    return i;
  };

  readonly key = (a: Addr): number => {
    const i = this.idOf(a);
    if (this.isKeyed[a - ADDR6_BASE] === 0) {
      this.isKeyed[a - ADDR6_BASE] = 1;
      this.keyed.push(i);
    }
    return i;
  };

  /** the tables' entry of an endpoint: what EndpointEntry holds, its address an id (not a copy of the whole model) */
  readonly endpoint = (e: EndpointModel): EndpointEntry => {
    let m = this.eps.get(e);
    if (m === undefined) this.eps.set(e, (m = { addr: this.idOf(e.addr), port: e.port, nodeLocal: e.nodeLocal, text: e.text }));
    return m;
  };

  /** the words of every id so far, exactly (the array in force itself when no id was added) */
  trimmedWords(): Uint32Array {
    return !this.own ? this.words : this.words.slice(0, this.n * 4);
  }
}

/** endpoints6 for the flat pairs [from, to) of `ef`, written into `out` (Tables6.endpoints6) */
function fillEndpoints6(out: Uint32Array, ef: Int32Array, w: Uint32Array, from: number, to: number): void {
  for (let k = from; k < to; k++) {
    const id = ef[2 * k];
    const o = k * EP6_STRIDE;
    out[o] = w[id * 4]; out[o + 1] = w[id * 4 + 1]; out[o + 2] = w[id * 4 + 2]; out[o + 3] = w[id * 4 + 3];
    out[o + EP6_PORT] = ef[2 * k + 1];
  }
}

/** Each VIP key of an IPv6 entry (its addresses already ids) as (id, protoPort). */
function vipKeys6(e: ServicePortEntry, f: (id: number, pp: number) => void): void {
  const pp = protoIndex(e.protocol) * 65536 + e.port;
  if (e.clusterIP >= 0) f(e.clusterIP, pp);
  for (const a of e.externalIPs) f(a, pp);
  for (const a of e.loadBalancerIPs) f(a, pp);
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
  const ids = new Ids6();
  for (const a of node.addrs6) ids.key(a);
  const masqId = node.masqueradeAddr6 >= 0 ? ids.idOf(node.masqueradeAddr6) : -1;
  const b = built(node, ports, ids);
  const base: Tables = {
    ...b.tables(generation),
    localAddrs: Int32Array.from(node.addrs6, ids.key),
    clusterCIDR: null,
    cidrNet: 1,
    cidrMask: 0,
    masqueradeAddr: masqId,
  };
  const w = ids.trimmedWords();
  const index = new Addr6Ids(ids.keyed.length);
  for (const i of ids.keyed) index.set(w, i * 4, i);
  // each keyed address's first (protocol, port) with the VIP index's answer for it, in its slot (Addr6Ids: the hint)
  const vips = base.vipIndex;
  for (const e of base.services) {
    vipKeys6(e, (id, pp) => {
      const v = vips.get(id, pp);
      if (v >= 0) index.hint(w, id * 4, pp, v);
    });
  }
  // the endpoints in flat order with their words inline (Tables6.endpoints6)
  const ef = base.endpointFlat;
  const endpoints6 = new Uint32Array((ef.length >> 1) * EP6_STRIDE);
  fillEndpoints6(endpoints6, ef, w, 0, ef.length >> 1);
  return {
    base,
    ids: index,
    words: w,
    endpoints6,
    cidr6: node.cidr6,
    masqId,
    sourceRanges6: ports.map((sp) => (sp.usesFirewallChain ? sp.sourceRanges6 : null)),
    build: { idAt: ids.idAt, isKeyed: ids.isKeyed },
  };
}

/** What `patchTables6` gives back. */
export interface Patched6 {
  tables: Tables6;
  /** per added service, the indexes of its IPv6 entries in tables.base.services */
  entries: number[][];
  /** endpoint pairs no row points at any more */
  freedPairs: number;
}

/**
 * The IPv6 half's incremental patch (patchTables for the IPv6 tables): the
 * `removed` entries (indexes into prev.base.services) go, the `added`
 * services' IPv6 ports come, everything else as in `prev`. Always into
 * copies (the packet thread reads the arrays in force); new addresses get
 * new ids after the others, ids no key uses any more stay (compacted by the
 * next full compile). Null when `prev` carries no record of its ids (then
 * compile6 runs).
 */
export function patchTables6(prev: Tables6, node: NodeModel, removed: readonly number[], added: readonly ServiceModel[], generation: number): Patched6 | null {
  if (prev.build === undefined) return null;
  const pb = prev.base;
  const ids = new Ids6(prev);
  const flatUsed = pb.endpointPairs;
  // the common PATCH: the same service ports with other endpoints or policies, the same keys: their
  // entries rebuilt where they are; the key indexes and the address ids (and their hints) stay as they are
  const { models, newPorts, newFlat, newVips, sameKeysAll: same, at } = changeOf(pb, removed, added, 6, ids.idAt);
  // new arrays on shared memory: the control worker's shareTables keeps them as they are (no second copy)
  const b = new Builder(
    node,
    {
      services: pb.services.slice(),
      serviceRows: sharedCopy(pb.serviceRows, pb.services.length * ROW, (pb.services.length + (same ? 0 : newPorts)) * ROW),
      endpointFlat: sharedCopy(pb.endpointFlat, flatUsed * 2, (flatUsed + newFlat) * 2),
      flatNext: flatUsed,
      vipIndex: same ? pb.vipIndex : pb.vipIndex.copy(pb.vipIndex.size + newVips),
      vipAddrs: same ? pb.vipAddrs : pb.vipAddrs.copy(pb.vipAddrs.size + newVips),
      nodePorts: same ? pb.nodePorts : sharedCopy(pb.nodePorts),
      live: pb.liveServicePorts,
    },
    ids,
  );
  // the VIP keys that change: their hints are refreshed once the index is final
  const touched: number[] = [];
  const touch = (id: number, pp: number): void => void touched.push(id, pp);
  let entries: ServicePortEntry[][];
  if (same) {
    entries = models.map((m, k) => m.map((sp, j) => b.replace(sp, at[k][j])));
  } else {
    for (const i of removed) {
      vipKeys6(pb.services[i], touch);
      b.remove(i);
    }
    entries = models.map((m) => m.map((sp) => b.add(sp)));
    for (const es of entries) for (const e of es) vipKeys6(e, touch);
  }
  const base: Tables = { ...b.tables(generation), localAddrs: pb.localAddrs, clusterCIDR: null, cidrNet: 1, cidrMask: 0, masqueradeAddr: prev.masqId };
  const w = ids.trimmedWords();
  let index = prev.ids;
  if (ids.keyed.length > 0 || touched.length > 0) {
    index = prev.ids.copy(prev.ids.size + ids.keyed.length);
    for (const i of ids.keyed) index.set(w, i * 4, i);
    for (let k = 0; k < touched.length; k += 2) index.refreshHint(w, touched[k] * 4, touched[k + 1], base.vipIndex.get(touched[k], touched[k + 1]));
  }
  const endpoints6 = new Uint32Array(new SharedArrayBuffer(Math.max(b.flatNext * EP6_STRIDE * 4, 8)), 0, b.flatNext * EP6_STRIDE);
  endpoints6.set(prev.endpoints6.subarray(0, flatUsed * EP6_STRIDE));
  fillEndpoints6(endpoints6, base.endpointFlat, w, flatUsed, b.flatNext);
  const sourceRanges6 = prev.sourceRanges6.slice();
  if (!same) for (const i of removed) sourceRanges6[i] = null;
  models.forEach((m, k) => m.forEach((sp, j) => (sourceRanges6[entries[k][j].index] = sp.usesFirewallChain ? sp.sourceRanges6 : null)));
  return {
    tables: { base, ids: index, words: w, endpoints6, cidr6: prev.cidr6, masqId: prev.masqId, sourceRanges6, build: { idAt: ids.idAt, isKeyed: ids.isKeyed } },
    entries: entries.map((es) => es.map((e) => e.index)),
    freedPairs: b.freedPairs,
  };
}

/**
 * The port's serving endpoints (ready, or serving while terminating) that
 * neither its cluster nor its local set holds, as (addr, port) pairs
 * (`endpoint`: the IPv6 tables' id form): ServicePortEntry.servingKept.
 */
function servingKept(sp: ServicePortModel, endpoint: ((e: EndpointModel) => EndpointEntry) | null): readonly number[] {
  let out: number[] | null = null;
  const large = sp.clusterEndpoints.length + sp.localEndpoints.length > 16;
  const chosen = large ? new Set([...sp.clusterEndpoints, ...sp.localEndpoints]) : null;
  for (const e of sp.endpoints) {
    if (!(e.ready || e.serving)) continue;
    if (chosen !== null ? chosen.has(e) : sp.clusterEndpoints.includes(e) || sp.localEndpoints.includes(e)) continue;
    const x = endpoint === null ? e : endpoint(e);
    (out ??= []).push(x.addr, x.port);
  }
  return out ?? NO_ADDRS;
}

/**
 * Same protocol, port, ClusterIP, external and LB IPs and NodePort: the same
 * keys in the indexes. `idAt`: the entry is an IPv6 one (its addresses are
 * ids: the model's are compared by their ids, an address without one differs).
 */
function sameKeys(e: ServicePortEntry, sp: ServicePortModel, idAt: Int32Array | null = null): boolean {
  if (!e.live || e.protocol !== sp.protocolNumber || e.port !== sp.portNumber || e.nodePort !== sp.nodePort) return false;
  const key = (a: Addr): number => {
    if (idAt === null || a < 0) return a;
    const i = a - ADDR6_BASE < idAt.length ? idAt[a - ADDR6_BASE] : -1;
    return i < 0 ? -2 : i;
  };
  if (e.clusterIP !== key(sp.clusterAddr)) return false;
  if (e.externalIPs.length !== sp.externalAddrs.length || e.loadBalancerIPs.length !== sp.loadBalancerAddrs.length) return false;
  for (let i = 0; i < sp.externalAddrs.length; i++) if (e.externalIPs[i] !== key(sp.externalAddrs[i])) return false;
  for (let i = 0; i < sp.loadBalancerAddrs.length; i++) if (e.loadBalancerIPs[i] !== key(sp.loadBalancerAddrs[i])) return false;
  return true;
}

/**
 * What an incremental change adds, for patchTables and patchTables6: the
 * added services' ports of the family, the room they need, and whether they
 * are the removed entries' ports with the same keys (`at`: where each one
 * stands, when `sameKeysAll`).
 */
function changeOf(prev: Tables, removed: readonly number[], added: readonly ServiceModel[], family: 4 | 6, idAt: Int32Array | null) {
  const models = added.map((s) => portsOfFamily(s.ports, family));
  let newPorts = 0;
  let newFlat = 0;
  let newVips = 0;
  for (const m of models) {
    newPorts += m.length;
    newFlat += flatCount(m);
    newVips += vipCount(m);
  }
  const byName = new Map<string, number>();
  for (const i of removed) byName.set(prev.services[i].name, i);
  const at: number[][] = [];
  let sameKeysAll = newPorts === removed.length;
  for (const m of models) {
    const a: number[] = [];
    for (const sp of m) {
      const i = byName.get(sp.name);
      if (i === undefined || !sameKeys(prev.services[i], sp, idAt)) sameKeysAll = false;
      else a.push(i);
    }
    at.push(a);
  }
  return { models, newPorts, newFlat, newVips, sameKeysAll, at };
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
  // the common PATCH: the same service ports with other endpoints or policies, the same keys:
  // rebuild their entries where they are; the key indexes stay as they are
  const { models, newPorts, newFlat, newVips, sameKeysAll, at: inPlaceAt } = changeOf(prev, removed, added, 4, null);
  const flatUsed = prev.endpointPairs;
  const flatNeed = (flatUsed + newFlat) * 2;
  // the Builder writes endpoint pairs only past flatUsed (replaced sets' pairs are left, counted as freed):
  // appended into prev's own shared buffer while it has room, which prev's rows never point past
  const flat = (): Int32Array => (inPlace ? withRoom(prev.endpointFlat, flatNeed) : extendShared(Int32Array, prev.endpointFlat, flatUsed * 2, flatNeed));
  if (sameKeysAll) {
    const b = new Builder(node, {
      services: prev.services as ServicePortEntry[],
      serviceRows: inPlace ? prev.serviceRows : sharedCopy(prev.serviceRows),
      endpointFlat: flat(),
      flatNext: flatUsed,
      vipIndex: prev.vipIndex,
      vipAddrs: prev.vipAddrs,
      nodePorts: prev.nodePorts,
      live: prev.liveServicePorts,
    });
    const entries = models.map((m, k) => m.map((sp, j) => b.replace(sp, inPlaceAt[k][j]).index));
    return { tables: withChange(withV6(b.tables(generation), prev), prev, [], entries), entries, freedPairs: b.freedPairs };
  }

  const rowsUsed = prev.services.length * ROW;
  const rowsNeed = rowsUsed + newPorts * ROW;
  // rows: a removal writes a tombstone into its row, so prev's rows are copied; services only added
  // write rows past prev's only: appended in place as the endpoint pairs
  const rows = inPlace ? withRoom(prev.serviceRows, rowsNeed) : removed.length === 0 ? extendShared(Int32Array, prev.serviceRows, rowsUsed, rowsNeed) : sharedCopy(prev.serviceRows, rowsUsed, rowsNeed);
  const b = new Builder(node, {
    services: prev.services as ServicePortEntry[],
    serviceRows: rows,
    endpointFlat: flat(),
    flatNext: flatUsed,
    vipIndex: inPlace ? indexWithRoom(prev.vipIndex, prev.vipIndex.size + newVips) : prev.vipIndex.copy(prev.vipIndex.size + newVips),
    vipAddrs: inPlace ? indexWithRoom(prev.vipAddrs, prev.vipAddrs.size + newVips) : prev.vipAddrs.copy(prev.vipAddrs.size + newVips),
    nodePorts: inPlace ? prev.nodePorts : sharedCopy(prev.nodePorts),
    live: prev.liveServicePorts,
  });
  for (const i of removed) b.remove(i);
  const entries = models.map((m) => m.map((sp) => b.add(sp).index));
  return { tables: withChange(withV6(b.tables(generation), prev), prev, removed, entries), entries, freedPairs: b.freedPairs };
}

/** `t` with the positions the patch from `prev` wrote (Tables.changed): the removed entries' and the added ones'. */
function withChange(t: Tables, prev: Tables, removed: readonly number[], entries: readonly number[][]): Tables {
  const positions = removed.slice();
  for (const e of entries) for (const i of e) positions.push(i);
  return { ...t, changed: { from: prev.generation, positions } };
}

/**
 * Ahead of the next change into copies (the control worker, when idle after
 * a swap): the shared-buffer pool holds a buffer, its pages touched, for
 * each copy `patchTables` makes of `t`'s arrays: the rows (a replacement or
 * a removal), and the two VIP indexes and the NodePort array (new keys). The
 * first change after a full apply then touches no memory for them either;
 * later ones find the buffers of the snapshots the packet thread let go of
 * (control/worker/remote.ts). At 100 000 services ~13 MB, made once.
 */
export function prepareCopies(t: Tables): void {
  const need = new Map<number, number>();
  const add = (bytes: number) => need.set(bytes, (need.get(bytes) ?? 0) + 1);
  // the sizes copyShared and IntPairTable.copy ask for (the rows as they are, and with a service port
  // more: nearly always the same size class, else both)
  const rowsBytes = (n: number) => roomyBytes(Math.max(n + (n >> 2), 8) * 4);
  const rows = t.serviceRows.length;
  add(rowsBytes(rows));
  if (rowsBytes(rows + ROW) !== rowsBytes(rows)) add(rowsBytes(rows + ROW));
  add(t.vipIndex.rawSlots.byteLength);
  add(t.vipAddrs.rawSlots.byteLength);
  const np = t.nodePorts.length;
  add(roomyBytes(Math.max(np + (np >> 2), 8) * 4));
  for (const [bytes, count] of need) sharedBuffers.ensure(bytes, count);
}

/** An incremental snapshot keeps the IPv6 tables in force (the holder compiles them again when IPv6 service ports changed). */
function withV6(t: Tables, prev: Tables): Tables {
  return prev.v6 ? { ...t, v6: prev.v6 } : t;
}

/** A new shared array of `n` ints (all of `from` by default) beginning with the first `used` of `from`, with room to append (copyShared). */
function sharedCopy(from: Int32Array, used = from.length, n = from.length): Int32Array {
  return copyShared(Int32Array, from, used, n);
}
