/**
 * The compiled tables between threads: the control worker compiles, the
 * packet thread moves packets with the result.
 *
 * - `shareTables` puts every typed array of a snapshot on a
 *   SharedArrayBuffer (arrays already shared are kept as they are, so the
 *   incremental path, which shares the key indexes with the snapshot in
 *   force, copies nothing twice). A shared array crosses `postMessage`
 *   without a copy: the packet thread reads the very memory the worker wrote.
 *   Snapshots are immutable once swapped in, on both sides.
 * - The objects the slow paths read (ServicePortEntry, EndpointSet: names,
 *   affinity, Maglev, source ranges, trace, stale-flow removal) cannot be
 *   shared. `TablesEncoder` (worker) writes them as ints into shared arrays
 *   plus one string of names; `TablesMaterializer` (packet thread) builds the
 *   objects back in slices of bounded time (`step(budgetMs)`, run between
 *   packet batches), and only then is the snapshot swapped in. An entry the
 *   previous snapshot already had (same stamp: the incremental path kept the
 *   object) is reused, so a PATCH of a few services rebuilds only those.
 *
 * The message itself is small to deserialize: a dozen shared arrays and one
 * string (the service-port names, ~30 bytes each), never an object per service.
 */
import { performance } from 'node:perf_hooks';
import type { Cidr } from './addr.ts';
import { formatIPv4 } from './addr.ts';
import { VipIndex } from './hashtable.ts';
import type { EndpointEntry, EndpointSet, ServicePortEntry, Tables } from './tables.ts';

type IntArray = Int32Array | Uint16Array | Uint8Array | Float64Array;

function onShared<T extends IntArray>(a: T): T {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const sab = new SharedArrayBuffer(Math.max(a.byteLength, 8));
  const c = new (a.constructor as new (b: SharedArrayBuffer, o: number, n: number) => T)(sab, 0, a.length);
  c.set(a as never);
  return c;
}

/** The same snapshot with every typed array on a SharedArrayBuffer (copied once; shared ones kept). */
export function shareTables(t: Tables): Tables {
  return {
    ...t,
    serviceRows: onShared(t.serviceRows),
    endpointFlat: onShared(t.endpointFlat),
    nodePorts: onShared(t.nodePorts),
    localAddrs: onShared(t.localAddrs),
    vipIndex: t.vipIndex.rawSlots.buffer instanceof SharedArrayBuffer ? t.vipIndex : VipIndex.fromSlots(onShared(t.vipIndex.rawSlots), t.vipIndex.size),
    vipAddrs: t.vipAddrs.rawSlots.buffer instanceof SharedArrayBuffer ? t.vipAddrs : VipIndex.fromSlots(onShared(t.vipAddrs.rawSlots), t.vipAddrs.size),
  };
}

// per service-port entry, E ints in `entries`
const E = 22;
const E_LIVE = 0;
const E_UID = 1;
const E_PROTO = 2;
const E_CLUSTER_IP = 3;
const E_HAS_CLUSTER_IP = 4;
const E_PORT = 5;
const E_NODE_PORT = 6;
const E_FLAGS = 7;
const E_AFFINITY_MS = 8;
const E_EXT = 9; // start, count in pool
const E_LB = 11;
const E_RANGES = 13; // start, count of (net, mask, bits) triples in pool
const E_LBSRC = 15;
const E_INTERNAL = 17; // set ids, -1 for null
const E_CLUSTER = 18;
const E_LOCAL = 19;
const E_NAME = 20; // start, length in names
const EF_HAS_ENDPOINTS = 1;
const EF_EXTERNAL_LOCAL = 2;
const EF_HAS_EXTERNAL_ENDPOINTS = 4;
const EF_HAS_RANGES = 8;

// per endpoint set, S ints in `sets`
const S = 5;
const S_FLAT_START = 0;
const S_COUNT = 1;
const S_MAGLEV_START = 2; // -1: none
const S_MAGLEV_LEN = 3;
const S_INDEXED = 4;

export interface TablesWire {
  readonly generation: number;
  readonly liveServicePorts: number;
  readonly loadBalancing: number;
  readonly masqueradeAll: boolean;
  readonly masqueradeAddr: number;
  readonly clusterCIDR: Cidr | null;
  readonly cidrNet: number;
  readonly cidrMask: number;
  readonly serviceRows: Int32Array;
  readonly endpointFlat: Int32Array;
  readonly nodePorts: Int32Array;
  readonly localAddrs: Int32Array;
  readonly vipSlots: Int32Array;
  readonly vipSize: number;
  readonly addrSlots: Int32Array;
  readonly addrSize: number;
  readonly count: number;
  readonly entries: Int32Array;
  readonly stamps: Float64Array;
  readonly pool: Int32Array;
  readonly sets: Int32Array;
  /** per endpoint pair of endpointFlat: 1 when node-local */
  readonly flatNodeLocal: Uint8Array;
  readonly maglev: Uint16Array;
  readonly names: string;
}

function sharedInt32(n: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(Math.max(n, 2) * 4), 0, n);
}

/** Worker side: a (shared) snapshot → its wire form. Keeps a stamp per entry object across calls. */
export class TablesEncoder {
  private readonly stampOf = new WeakMap<ServicePortEntry, number>();
  private nextStamp = 1;

  encode(t: Tables): TablesWire {
    if (!(t.serviceRows.buffer instanceof SharedArrayBuffer)) t = shareTables(t);
    const n = t.services.length;
    const entries = sharedInt32(n * E);
    const stamps = new Float64Array(new SharedArrayBuffer(Math.max(n, 1) * 8), 0, n);
    const pool: number[] = [];
    const setIds = new Map<EndpointSet, number>();
    const setInts: number[] = [];
    const maglevAt = new Map<Uint16Array, number>();
    const maglevs: Uint16Array[] = [];
    let maglevLen = 0;
    const flatNodeLocal = new Uint8Array(new SharedArrayBuffer(Math.max(t.endpointFlat.length / 2, 1)), 0, t.endpointFlat.length / 2);
    let names = '';
    const nameParts: string[] = [];
    let nameLen = 0;
    const setId = (set: EndpointSet | null): number => {
      if (set === null) return -1;
      let id = setIds.get(set);
      if (id !== undefined) return id;
      id = setIds.size;
      setIds.set(set, id);
      let mStart = -1;
      let mLen = 0;
      if (set.maglev !== null) {
        let at = maglevAt.get(set.maglev);
        if (at === undefined) {
          at = maglevLen;
          maglevAt.set(set.maglev, at);
          maglevs.push(set.maglev);
          maglevLen += set.maglev.length;
        }
        mStart = at;
        mLen = set.maglev.length;
      }
      setInts.push(set.flatStart, set.endpoints.length, mStart, mLen, set.index.size > 0 ? 1 : 0);
      for (let i = 0; i < set.endpoints.length; i++) if (set.endpoints[i].nodeLocal) flatNodeLocal[set.flatStart + i] = 1;
      return id;
    };
    const list = (o: number, addrs: readonly number[]) => {
      entries[o] = pool.length;
      entries[o + 1] = addrs.length;
      for (const a of addrs) pool.push(a | 0);
    };
    for (let i = 0; i < n; i++) {
      const s = t.services[i];
      let st = this.stampOf.get(s);
      if (st === undefined) {
        st = this.nextStamp++;
        this.stampOf.set(s, st);
      }
      stamps[i] = st;
      const o = i * E;
      entries[o + E_LIVE] = s.live ? 1 : 0;
      entries[o + E_UID] = s.uid | 0;
      entries[o + E_PROTO] = s.protocol;
      entries[o + E_CLUSTER_IP] = s.clusterIP | 0;
      entries[o + E_HAS_CLUSTER_IP] = s.clusterIP >= 0 ? 1 : 0;
      entries[o + E_PORT] = s.port;
      entries[o + E_NODE_PORT] = s.nodePort;
      entries[o + E_FLAGS] = (s.hasEndpoints ? EF_HAS_ENDPOINTS : 0) | (s.externalPolicyLocal ? EF_EXTERNAL_LOCAL : 0) | (s.hasExternalEndpoints ? EF_HAS_EXTERNAL_ENDPOINTS : 0) | (s.sourceRanges !== null ? EF_HAS_RANGES : 0);
      entries[o + E_AFFINITY_MS] = s.affinityMs;
      list(o + E_EXT, s.externalIPs);
      list(o + E_LB, s.loadBalancerIPs);
      entries[o + E_RANGES] = pool.length;
      entries[o + E_RANGES + 1] = s.sourceRanges === null ? 0 : s.sourceRanges.length;
      if (s.sourceRanges !== null) for (const r of s.sourceRanges) pool.push(r.net | 0, r.mask | 0, r.bits);
      list(o + E_LBSRC, s.lbSourceIPs);
      entries[o + E_INTERNAL] = setId(s.internal);
      entries[o + E_CLUSTER] = setId(s.cluster);
      entries[o + E_LOCAL] = setId(s.local);
      entries[o + E_NAME] = nameLen;
      entries[o + E_NAME + 1] = s.name.length;
      nameParts.push(s.name);
      nameLen += s.name.length;
    }
    names = nameParts.join('');
    const poolArr = sharedInt32(pool.length);
    poolArr.set(pool);
    const setsArr = sharedInt32(setInts.length);
    setsArr.set(setInts);
    const maglev = new Uint16Array(new SharedArrayBuffer(Math.max(maglevLen, 1) * 2), 0, maglevLen);
    for (const m of maglevs) maglev.set(m, maglevAt.get(m)!);
    return {
      generation: t.generation,
      liveServicePorts: t.liveServicePorts,
      loadBalancing: t.loadBalancing,
      masqueradeAll: t.masqueradeAll,
      masqueradeAddr: t.masqueradeAddr,
      clusterCIDR: t.clusterCIDR === null ? null : { net: t.clusterCIDR.net, mask: t.clusterCIDR.mask, bits: t.clusterCIDR.bits },
      cidrNet: t.cidrNet,
      cidrMask: t.cidrMask,
      serviceRows: t.serviceRows,
      endpointFlat: t.endpointFlat,
      nodePorts: t.nodePorts,
      localAddrs: t.localAddrs,
      vipSlots: t.vipIndex.rawSlots,
      vipSize: t.vipIndex.size,
      addrSlots: t.vipAddrs.rawSlots,
      addrSize: t.vipAddrs.size,
      count: n,
      entries,
      stamps,
      pool: poolArr,
      sets: setsArr,
      flatNodeLocal,
      maglev,
      names,
    };
  }
}

const NO_INDEX: ReadonlyMap<number, number> = new Map();
const NO_ADDRS: readonly number[] = Object.freeze([]);

/** What the packet thread keeps of a materialized snapshot to reuse its entries next time. */
export interface Materialized {
  readonly tables: Tables;
  readonly stamps: Float64Array;
}

/**
 * Packet-thread side: the wire form → a Tables snapshot, built in slices.
 * `step(budgetMs)` works until the budget is spent (checked every 64
 * entries) and returns true when the snapshot is complete (`result`).
 */
export class TablesMaterializer {
  readonly wire: TablesWire;
  private readonly prev: Materialized | null;
  private readonly services: ServicePortEntry[];
  private readonly setObjs: Array<EndpointSet | null | undefined>;
  private next = 0;
  reused = 0;
  built = 0;
  slices = 0;
  /** the longest slice (ms) */
  maxSliceMs = 0;

  constructor(wire: TablesWire, prev: Materialized | null) {
    this.wire = wire;
    this.prev = prev;
    this.services = new Array<ServicePortEntry>(wire.count);
    this.setObjs = new Array(wire.sets.length / S);
  }

  get done(): boolean {
    return this.next >= this.wire.count;
  }

  step(budgetMs: number): boolean {
    const t0 = performance.now();
    const w = this.wire;
    const prev = this.prev;
    const prevServices = prev?.tables.services;
    const prevStamps = prev?.stamps;
    this.slices++;
    while (this.next < w.count) {
      const stop = Math.min(w.count, this.next + 64);
      for (let i = this.next; i < stop; i++) {
        if (prevServices !== undefined && i < prevServices.length && prevStamps![i] === w.stamps[i]) {
          this.services[i] = prevServices[i];
          this.reused++;
        } else {
          this.services[i] = this.entry(i);
          this.built++;
        }
      }
      this.next = stop;
      if (performance.now() - t0 >= budgetMs) break;
    }
    const ms = performance.now() - t0;
    if (ms > this.maxSliceMs) this.maxSliceMs = ms;
    return this.done;
  }

  /** Every step at once (for callers that are not on the packet thread, and tests). */
  all(): Materialized {
    while (!this.step(Infinity));
    return this.result();
  }

  result(): Materialized {
    if (!this.done) throw new Error('TablesMaterializer: not done');
    const w = this.wire;
    const tables: Tables = {
      generation: w.generation,
      vipIndex: VipIndex.fromSlots(w.vipSlots, w.vipSize),
      vipAddrs: VipIndex.fromSlots(w.addrSlots, w.addrSize),
      nodePorts: w.nodePorts,
      localAddrs: w.localAddrs,
      clusterCIDR: w.clusterCIDR,
      cidrNet: w.cidrNet,
      cidrMask: w.cidrMask,
      masqueradeAll: w.masqueradeAll,
      masqueradeAddr: w.masqueradeAddr,
      loadBalancing: w.loadBalancing,
      services: this.services,
      liveServicePorts: w.liveServicePorts,
      serviceRows: w.serviceRows,
      endpointFlat: w.endpointFlat,
      linear: null,
    };
    return { tables, stamps: w.stamps };
  }

  private addrs(start: number, count: number): readonly number[] {
    if (count === 0) return NO_ADDRS;
    const out = new Array<number>(count);
    for (let k = 0; k < count; k++) out[k] = this.wire.pool[start + k] >>> 0;
    return out;
  }

  private set(id: number): EndpointSet | null {
    if (id < 0) return null;
    const have = this.setObjs[id];
    if (have !== undefined) return have;
    const w = this.wire;
    const o = id * S;
    const flatStart = w.sets[o + S_FLAT_START];
    const count = w.sets[o + S_COUNT];
    const endpoints = new Array<EndpointEntry>(count);
    const index = w.sets[o + S_INDEXED] === 1 ? new Map<number, number>() : NO_INDEX;
    for (let k = 0; k < count; k++) {
      const addr = w.endpointFlat[(flatStart + k) * 2] >>> 0;
      const port = w.endpointFlat[(flatStart + k) * 2 + 1];
      endpoints[k] = { addr, port, nodeLocal: w.flatNodeLocal[flatStart + k] === 1, text: `${formatIPv4(addr)}:${port}` };
      if (index !== NO_INDEX) (index as Map<number, number>).set(addr * 65536 + port, k);
    }
    const ms = w.sets[o + S_MAGLEV_START];
    const set: EndpointSet = { endpoints, flatStart, maglev: ms < 0 ? null : w.maglev.subarray(ms, ms + w.sets[o + S_MAGLEV_LEN]), index };
    this.setObjs[id] = set;
    return set;
  }

  private entry(i: number): ServicePortEntry {
    const w = this.wire;
    const e = w.entries;
    const o = i * E;
    const flags = e[o + E_FLAGS];
    let ranges: Cidr[] | null = null;
    if ((flags & EF_HAS_RANGES) !== 0) {
      ranges = [];
      const start = e[o + E_RANGES];
      for (let k = 0; k < e[o + E_RANGES + 1]; k++) {
        const p = start + k * 3;
        ranges.push({ net: w.pool[p] >>> 0, mask: w.pool[p + 1] >>> 0, bits: w.pool[p + 2] });
      }
    }
    return {
      index: i,
      live: e[o + E_LIVE] === 1,
      name: w.names.slice(e[o + E_NAME], e[o + E_NAME] + e[o + E_NAME + 1]),
      uid: e[o + E_UID] >>> 0,
      protocol: e[o + E_PROTO],
      clusterIP: e[o + E_HAS_CLUSTER_IP] === 1 ? e[o + E_CLUSTER_IP] >>> 0 : -1,
      externalIPs: this.addrs(e[o + E_EXT], e[o + E_EXT + 1]),
      loadBalancerIPs: this.addrs(e[o + E_LB], e[o + E_LB + 1]),
      port: e[o + E_PORT],
      nodePort: e[o + E_NODE_PORT],
      hasEndpoints: (flags & EF_HAS_ENDPOINTS) !== 0,
      internal: this.set(e[o + E_INTERNAL]),
      cluster: this.set(e[o + E_CLUSTER]),
      local: this.set(e[o + E_LOCAL]),
      externalPolicyLocal: (flags & EF_EXTERNAL_LOCAL) !== 0,
      hasExternalEndpoints: (flags & EF_HAS_EXTERNAL_ENDPOINTS) !== 0,
      affinityMs: e[o + E_AFFINITY_MS],
      sourceRanges: ranges,
      lbSourceIPs: this.addrs(e[o + E_LBSRC], e[o + E_LBSRC + 1]),
    };
  }
}
