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
 *   shared. `TablesEncoder` (worker) writes them as ints into shared arrays,
 *   the names as UTF-16 code units; `TablesMaterializer` (packet thread) makes one
 *   small view object per entry (ServicePortView: the numbers read from the
 *   shared ints, the name, address lists and endpoint sets made when first
 *   read) in slices of
 *   bounded time (`step(budgetMs)`, run between packet batches), and only
 *   then is the snapshot swapped in. An entry the previous snapshot already
 *   had (same stamp: the incremental path kept the object) keeps its view,
 *   so a PATCH of a few services makes only those.
 *
 *   Why views and not the objects themselves: 100 000 services made eagerly
 *   are ~800 000 objects on the packet thread, and V8's scavenges copying
 *   them held the thread 5-30 ms at a time (measured with --trace-gc); one
 *   view per entry is ~8x fewer, and most entries are never read.
 *
 * The message itself is small to deserialize: a dozen shared arrays and a
 * few numbers, never an object per service nor a string of every name (which
 * postMessage would copy into the packet thread's heap on every swap).
 */
import { performance } from 'node:perf_hooks';
import type { Cidr } from './addr.ts';
import { formatIPv4 } from './addr.ts';
import { VipIndex } from './hashtable.ts';
import type { EndpointEntry, EndpointSet, ServicePortEntry, Tables } from './tables.ts';
import type { Cidr6 } from './addr6.ts';
import { Addr6Ids, type Tables6 } from './tables6.ts';
import { extendShared, sharedInt32 } from './shared-arrays.ts';

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
    ...(t.v6 ? { v6: shareTables6(t.v6) } : {}),
  };
}

// per service-port entry, E ints in `entries`
const E = 24;
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
const E_KEPT = 22; // start, count of ints ((addr, port) pairs) in pool
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
  readonly endpointPairs: number;
  readonly nodePorts: Int32Array;
  readonly localAddrs: Int32Array;
  readonly vipSlots: Int32Array;
  readonly vipSize: number;
  readonly addrSlots: Int32Array;
  readonly addrSize: number;
  /** service-port entries (Tables.services' length) */
  readonly count: number;
  /**
   * per entry (by position), its slot in `entries` and `stamps`: an encoding
   * by difference appends a changed entry in a new slot instead of copying
   * every entry (shared-arrays.ts `extendShared`)
   */
  readonly slots: Int32Array;
  /** E ints per slot */
  readonly entries: Int32Array;
  /** per slot, the stamp of the entry object encoded there (TablesEncoder) */
  readonly stamps: Float64Array;
  readonly pool: Int32Array;
  readonly sets: Int32Array;
  /** per endpoint pair of endpointFlat: 1 when node-local */
  readonly flatNodeLocal: Uint8Array;
  readonly maglev: Uint16Array;
  /**
   * the service-port names, one after the other, as UTF-16 code units on
   * shared memory (entry: start and length at E_NAME): a string would be
   * copied by postMessage into the packet thread's heap on every swap
   * (3.6 MB at 100 000 services, a PATCH's too), these cross without a copy
   */
  readonly names: Uint16Array;
  /** the IPv6 tables (tables6.ts), when the snapshot has them */
  readonly v6?: Tables6Wire | null;
}

/** What the encoder remembers of its last wire form, to encode the next one by difference. */
interface LastEncoding {
  services: readonly ServicePortEntry[];
  /** the generation encoded, and its count of entries (`services` may have grown since: Tables.changed) */
  generation: number;
  count: number;
  wire: TablesWire;
  poolLen: number;
  setCount: number;
  maglevLen: number;
  /** the token on the sets given ids in this encoding's `sets` (EndpointSet.wireMarks): a new one at each full encoding */
  setMarks: object;
  maglevAt: Map<Uint16Array, number>;
  /** ints, sets and characters appended since the last full encoding */
  appended: number;
  base: number;
}

/** `prev`'s first `used` code units, then those of `add` (extendShared). */
function growChars(prev: Uint16Array, used: number, add: readonly string[]): Uint16Array {
  let n = used;
  for (const x of add) n += x.length;
  const a = extendShared(Uint16Array, prev, used, n);
  let at = used;
  for (const x of add) for (let k = 0; k < x.length; k++) a[at++] = x.charCodeAt(k);
  return a;
}
const NO_CHARS = new Uint16Array(0);
const NO_INTS = new Int32Array(0);
const NO_STAMPS = new Float64Array(0);

/** `prev`'s first `used` ints, then `add` (extendShared). */
function growInt32(prev: Int32Array, used: number, add: readonly number[]): Int32Array {
  const a = extendShared(Int32Array, prev, used, used + add.length);
  for (let k = 0; k < add.length; k++) a[used + k] = add[k];
  return a;
}

/**
 * Worker side: a (shared) snapshot → its wire form. Gives each entry object
 * a stamp, kept on the entry across calls (ServicePortEntry.wireStamp).
 * When most entries are the objects of the last snapshot encoded (the
 * incremental path: a PATCH), only the others are encoded: each in a new
 * slot, its lists, sets and name appended, all past the end of the last
 * wire form, in the same shared buffers while they have room (`extendShared`: the older wire forms, which the packet thread may
 * still read, are never written); only the slot of every position is copied
 * (4 bytes an entry). A full encoding starts over when the appended part
 * outgrows the rest.
 */
export class TablesEncoder {
  private nextStamp = 1;
  private last: LastEncoding | null = null;
  /** how the last call went (for tests and logs) */
  lastMode: 'full' | 'difference' = 'full';

  /** The entry object's stamp from this encoder (ServicePortEntry.wireStamp), given at its first encoding. */
  private stamp(s: ServicePortEntry): number {
    if (s.wireEncoder === this) return s.wireStamp!;
    const st = this.nextStamp++;
    s.wireEncoder = this;
    s.wireStamp = st;
    return st;
  }

  /** the IPv6 half's own encoder (its entries are other objects) */
  private v6Encoder: TablesEncoder | null = null;

  encode(t: Tables): TablesWire {
    const wire = this.encode4(t);
    if (!t.v6) return wire;
    if (this.v6Encoder === null) this.v6Encoder = new TablesEncoder();
    return { ...wire, v6: encodeTables6(t.v6, this.v6Encoder) };
  }

  private encode4(t: Tables): TablesWire {
    // compile's arrays are on shared memory already (kept as they are); the rest (localAddrs, a patched index) copied
    t = shareTables(t);
    const last = this.last;
    const n = t.services.length;
    if (last !== null && n >= last.count && last.appended < last.base) {
      let changed: number[] | null = null;
      const c = t.changed;
      if (c !== undefined && c.from === last.generation) {
        // patched from the snapshot encoded last, into its array of entries: the positions it names
        const seen = new Set<number>();
        changed = [];
        for (const i of c.positions) if (i < n && !seen.has(i)) (seen.add(i), changed.push(i));
        for (let i = last.count; i < n; i++) if (!seen.has(i)) changed.push(i);
        changed.sort((a, b) => a - b);
      } else if (t.services !== last.services) {
        // another array: compared entry by entry (an array written in place without a change list is encoded whole)
        const prev = last.services;
        changed = [];
        for (let i = 0; i < last.count && changed.length * 8 <= n; i++) if (t.services[i] !== prev[i]) changed.push(i);
        for (let i = last.count; i < n && changed.length * 8 <= n; i++) changed.push(i);
      }
      if (changed !== null && changed.length * 8 <= n) {
        this.lastMode = 'difference';
        return this.encodeDifference(t, last, changed);
      }
    }
    this.lastMode = 'full';
    return this.encodeFull(t);
  }

  private encodeFull(t: Tables): TablesWire {
    const n = t.services.length;
    const slots = sharedInt32(n);
    const entries = extendShared(Int32Array, NO_INTS, 0, n * E);
    const stamps = extendShared(Float64Array, NO_STAMPS, 0, n);
    const st = new EncodeState({}, new Map(), 0, 0, 0, 0, new Uint8Array(new SharedArrayBuffer(Math.max(t.endpointFlat.length / 2, 1)), 0, t.endpointFlat.length / 2));
    for (let i = 0; i < n; i++) {
      slots[i] = i;
      stamps[i] = this.stamp(t.services[i]);
      st.entry(t.services[i], entries, i * E);
    }
    const pool = growInt32(NO_INTS, 0, st.pool);
    const sets = growInt32(NO_INTS, 0, st.setInts);
    const maglev = extendShared(Uint16Array, NO_CHARS, 0, st.maglevLen);
    for (const m of st.maglevs) maglev.set(m, st.maglevAt.get(m)!);
    const wire = wireOf(t, n, slots, entries, stamps, pool, sets, st.flatNodeLocal, maglev, growChars(NO_CHARS, 0, st.names));
    this.last = { services: t.services, generation: t.generation, count: n, wire, poolLen: pool.length, setCount: sets.length / S, maglevLen: st.maglevLen, setMarks: st.setMarks, maglevAt: st.maglevAt, appended: 0, base: Math.max(1024, pool.length + sets.length + wire.names.length + n) };
    return wire;
  }

  private encodeDifference(t: Tables, last: LastEncoding, changed: readonly number[]): TablesWire {
    const n = t.services.length;
    const pw = last.wire;
    // the positions' slots copied (4 bytes an entry); each changed entry in a new slot after the last wire form's
    const slots = sharedInt32(n);
    slots.set(pw.slots);
    const used = pw.stamps.length;
    const entries = extendShared(Int32Array, pw.entries, used * E, (used + changed.length) * E);
    const stamps = extendShared(Float64Array, pw.stamps, used, used + changed.length);
    const flatPairs = t.endpointFlat.length / 2;
    const flatNodeLocal = new Uint8Array(new SharedArrayBuffer(Math.max(flatPairs, 1)), 0, flatPairs);
    flatNodeLocal.set(pw.flatNodeLocal.subarray(0, Math.min(pw.flatNodeLocal.length, flatPairs)));
    const st = new EncodeState(last.setMarks, last.maglevAt, last.poolLen, last.setCount, last.maglevLen, pw.names.length, flatNodeLocal);
    let slot = used;
    for (const i of changed) {
      slots[i] = slot;
      stamps[slot] = this.stamp(t.services[i]);
      st.entry(t.services[i], entries, slot * E);
      slot++;
    }
    const pool = growInt32(pw.pool, last.poolLen, st.pool);
    const sets = growInt32(pw.sets, last.setCount * S, st.setInts);
    let maglev = pw.maglev;
    if (st.maglevLen > last.maglevLen) {
      maglev = extendShared(Uint16Array, pw.maglev, last.maglevLen, st.maglevLen);
      for (const m of st.maglevs) maglev.set(m, st.maglevAt.get(m)!);
    }
    const wire = wireOf(t, n, slots, entries, stamps, pool, sets, flatNodeLocal, maglev, growChars(pw.names, pw.names.length, st.names));
    const added = st.pool.length + st.setInts.length + (wire.names.length - pw.names.length) + changed.length * E;
    this.last = { ...last, services: t.services, generation: t.generation, count: n, wire, poolLen: pool.length, setCount: sets.length / S, maglevLen: st.maglevLen, appended: last.appended + added };
    return wire;
  }
}

/** Appends entries' variable parts (address lists, sets, Maglev tables, names) after what is there. */
class EncodeState {
  readonly pool: number[] = [];
  readonly setInts: number[] = [];
  readonly maglevs: Uint16Array[] = [];
  readonly names: string[] = [];
  constructor(
    readonly setMarks: object,
    readonly maglevAt: Map<Uint16Array, number>,
    private readonly poolBase: number,
    private setCount: number,
    public maglevLen: number,
    private nameLen: number,
    readonly flatNodeLocal: Uint8Array,
  ) {}

  private setId(set: EndpointSet | null): number {
    if (set === null) return -1;
    if (set.wireMarks === this.setMarks) return set.wireId!;
    const id = this.setCount++;
    set.wireMarks = this.setMarks;
    set.wireId = id;
    let mStart = -1;
    let mLen = 0;
    if (set.maglev !== null) {
      let at = this.maglevAt.get(set.maglev);
      if (at === undefined) {
        at = this.maglevLen;
        this.maglevAt.set(set.maglev, at);
        this.maglevs.push(set.maglev);
        this.maglevLen += set.maglev.length;
      }
      mStart = at;
      mLen = set.maglev.length;
    }
    this.setInts.push(set.flatStart, set.endpoints.length, mStart, mLen, set.index.size > 0 ? 1 : 0);
    for (let i = 0; i < set.endpoints.length; i++) if (set.endpoints[i].nodeLocal) this.flatNodeLocal[set.flatStart + i] = 1;
    return id;
  }

  private list(entries: Int32Array, o: number, addrs: readonly number[]): void {
    entries[o] = this.poolBase + this.pool.length;
    entries[o + 1] = addrs.length;
    for (let i = 0; i < addrs.length; i++) this.pool.push(addrs[i] | 0);
  }

  entry(s: ServicePortEntry, entries: Int32Array, o: number): void {
    entries[o + E_LIVE] = s.live ? 1 : 0;
    entries[o + E_UID] = s.uid | 0;
    entries[o + E_PROTO] = s.protocol;
    entries[o + E_CLUSTER_IP] = s.clusterIP | 0;
    entries[o + E_HAS_CLUSTER_IP] = s.clusterIP >= 0 ? 1 : 0;
    entries[o + E_PORT] = s.port;
    entries[o + E_NODE_PORT] = s.nodePort;
    entries[o + E_FLAGS] = (s.hasEndpoints ? EF_HAS_ENDPOINTS : 0) | (s.externalPolicyLocal ? EF_EXTERNAL_LOCAL : 0) | (s.hasExternalEndpoints ? EF_HAS_EXTERNAL_ENDPOINTS : 0) | (s.sourceRanges !== null ? EF_HAS_RANGES : 0);
    entries[o + E_AFFINITY_MS] = s.affinityMs;
    this.list(entries, o + E_EXT, s.externalIPs);
    this.list(entries, o + E_LB, s.loadBalancerIPs);
    entries[o + E_RANGES] = this.poolBase + this.pool.length;
    entries[o + E_RANGES + 1] = s.sourceRanges === null ? 0 : s.sourceRanges.length;
    const ranges = s.sourceRanges;
    if (ranges !== null) for (let i = 0; i < ranges.length; i++) this.pool.push(ranges[i].net | 0, ranges[i].mask | 0, ranges[i].bits);
    this.list(entries, o + E_LBSRC, s.lbSourceIPs);
    this.list(entries, o + E_KEPT, s.servingKept);
    entries[o + E_INTERNAL] = this.setId(s.internal);
    entries[o + E_CLUSTER] = this.setId(s.cluster);
    entries[o + E_LOCAL] = this.setId(s.local);
    entries[o + E_NAME] = this.nameLen;
    entries[o + E_NAME + 1] = s.name.length;
    this.names.push(s.name);
    this.nameLen += s.name.length;
  }
}

function wireOf(t: Tables, n: number, slots: Int32Array, entries: Int32Array, stamps: Float64Array, pool: Int32Array, sets: Int32Array, flatNodeLocal: Uint8Array, maglev: Uint16Array, names: Uint16Array): TablesWire {
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
    endpointPairs: t.endpointPairs,
    nodePorts: t.nodePorts,
    localAddrs: t.localAddrs,
    vipSlots: t.vipIndex.rawSlots,
    vipSize: t.vipIndex.size,
    addrSlots: t.vipAddrs.rawSlots,
    addrSize: t.vipAddrs.size,
    count: n,
    slots,
    entries,
    stamps,
    pool,
    sets,
    flatNodeLocal,
    maglev,
    names,
  };
}

const NO_INDEX: ReadonlyMap<number, number> = new Map();
const NO_ADDRS: readonly number[] = Object.freeze([]);

/** What the packet thread keeps of a materialized snapshot to reuse its entries next time. */
export interface Materialized {
  readonly tables: Tables;
  /** the wire form's slots and stamps (the stamp of entry i: stamps[slots[i]]); no slots: no stamps (blankSpare) */
  readonly slots: Int32Array | null;
  readonly stamps: Float64Array;
  /** the IPv6 half's (its base Tables), to reuse its entries next time too */
  readonly v6?: Materialized;
}

/** One wire form and the endpoint sets already built from it (by set id). */
class WireCtx {
  readonly w: TablesWire;
  /** the sets made so far, by id: a Map, not an array of every set (~1 MB at 100 000 services made on each swap, for the few sets packets read) */
  private readonly sets = new Map<number, EndpointSet>();
  constructor(w: TablesWire) {
    this.w = w;
  }

  set(id: number): EndpointSet | null {
    if (id < 0) return null;
    const have = this.sets.get(id);
    if (have !== undefined) return have;
    const w = this.w;
    const o = id * S;
    const flatStart = w.sets[o + S_FLAT_START];
    const count = w.sets[o + S_COUNT];
    const endpoints = new Array<EndpointEntry>(count);
    const index = w.sets[o + S_INDEXED] === 1 ? new Map<number, number>() : NO_INDEX;
    for (let k = 0; k < count; k++) {
      const addr = w.endpointFlat[(flatStart + k) * 2] >>> 0;
      const port = w.endpointFlat[(flatStart + k) * 2 + 1];
      endpoints[k] = new EndpointView(addr, port, w.flatNodeLocal[flatStart + k] === 1);
      if (index !== NO_INDEX) (index as Map<number, number>).set(addr * 65536 + port, k);
    }
    const ms = w.sets[o + S_MAGLEV_START];
    const set: EndpointSet = { endpoints, flatStart, maglev: ms < 0 ? null : w.maglev.subarray(ms, ms + w.sets[o + S_MAGLEV_LEN]), index };
    this.sets.set(id, set);
    return set;
  }

  addrs(start: number, count: number): readonly number[] {
    if (count === 0) return NO_ADDRS;
    const out = new Array<number>(count);
    for (let k = 0; k < count; k++) out[k] = this.w.pool[start + k] >>> 0;
    return out;
  }
}

/** An endpoint; its text ("10.64.1.7:53") made when first read. */
class EndpointView implements EndpointEntry {
  readonly addr: number;
  readonly port: number;
  readonly nodeLocal: boolean;
  private _text: string | null = null;
  constructor(addr: number, port: number, nodeLocal: boolean) {
    this.addr = addr;
    this.port = port;
    this.nodeLocal = nodeLocal;
  }
  get text(): string {
    return (this._text ??= `${formatIPv4(this.addr)}:${this.port}`);
  }
}

/** What a view made when first read (one object, only for the entries something read). */
class ViewCache {
  name: string | null = null;
  ext: readonly number[] | null = null;
  lb: readonly number[] | null = null;
  lbsrc: readonly number[] | null = null;
  kept: readonly number[] | null = null;
  ranges: readonly Cidr[] | null | undefined = undefined;
  sets: [EndpointSet | null, EndpointSet | null, EndpointSet | null] | null = null;
}

/**
 * A service-port entry over the wire form: two fields (the wire form and the
 * position) and a cache made on the first read of a name, an address list,
 * the source ranges or the endpoint sets (a new flow of the service,
 * affinity, Maglev, a trace); the numbers are read from the shared ints on
 * every access. ~40 bytes per entry on the packet thread's heap, so that a
 * snapshot of 100 000 services costs its scavenges and mark-compacts little.
 * A view the next snapshot keeps (same stamp) is rebound to the new wire
 * form, where its entry reads the same.
 */
class ServicePortView implements ServicePortEntry {
  private ctx: WireCtx;
  readonly index: number;
  /** the first of its E ints in the wire form's entries (its slot's) */
  private at: number;
  private cache: ViewCache | null = null;

  constructor(ctx: WireCtx, i: number) {
    this.ctx = ctx;
    this.index = i;
    this.at = ctx.w.slots[i] * E;
  }

  /** the wire form this view reads */
  wireForm(): TablesWire {
    return this.ctx.w;
  }

  /**
   * Read the entry at the same position of the next snapshot's wire form.
   * `same`: it is the entry this view was (the same stamp), and what the
   * view made when first read stays; else that is forgotten (the cache
   * object is kept, emptied): a view of the snapshot before the one in force
   * (TablesMaterializer's `spare`) taken for another entry. The endpoint
   * sets point into their wire form's Maglev pool: made again from the new
   * one either way, so that no old wire form stays alive through a view.
   */
  rebind(ctx: WireCtx, same: boolean): void {
    this.ctx = ctx;
    this.at = ctx.w.slots[this.index] * E;
    const c = this.cache;
    if (c === null) return;
    c.sets = null;
    if (same) return;
    c.name = null;
    c.ext = null;
    c.lb = null;
    c.lbsrc = null;
    c.kept = null;
    c.ranges = undefined;
  }

  private int(field: number): number {
    return this.ctx.w.entries[this.at + field];
  }
  private c(): ViewCache {
    return (this.cache ??= new ViewCache());
  }
  get live(): boolean {
    return this.int(E_LIVE) === 1;
  }
  get uid(): number {
    return this.int(E_UID) >>> 0;
  }
  get protocol(): number {
    return this.int(E_PROTO);
  }
  get clusterIP(): number {
    return this.int(E_HAS_CLUSTER_IP) === 1 ? this.int(E_CLUSTER_IP) >>> 0 : -1;
  }
  get port(): number {
    return this.int(E_PORT);
  }
  get nodePort(): number {
    return this.int(E_NODE_PORT);
  }
  get hasEndpoints(): boolean {
    return (this.int(E_FLAGS) & EF_HAS_ENDPOINTS) !== 0;
  }
  get externalPolicyLocal(): boolean {
    return (this.int(E_FLAGS) & EF_EXTERNAL_LOCAL) !== 0;
  }
  get hasExternalEndpoints(): boolean {
    return (this.int(E_FLAGS) & EF_HAS_EXTERNAL_ENDPOINTS) !== 0;
  }
  get affinityMs(): number {
    return this.int(E_AFFINITY_MS);
  }
  get name(): string {
    const c = this.c();
    return (c.name ??= this.readName());
  }
  /** The name, not kept on the view when it was not yet (a reading of every name once must not leave a cache on each). */
  peekName(): string {
    return this.cache?.name ?? this.readName();
  }
  private readName(): string {
    const at = this.int(E_NAME);
    return String.fromCharCode.apply(null, this.ctx.w.names.subarray(at, at + this.int(E_NAME + 1)) as unknown as number[]);
  }
  get externalIPs(): readonly number[] {
    const c = this.c();
    return (c.ext ??= this.ctx.addrs(this.int(E_EXT), this.int(E_EXT + 1)));
  }
  get loadBalancerIPs(): readonly number[] {
    const c = this.c();
    return (c.lb ??= this.ctx.addrs(this.int(E_LB), this.int(E_LB + 1)));
  }
  get lbSourceIPs(): readonly number[] {
    const c = this.c();
    return (c.lbsrc ??= this.ctx.addrs(this.int(E_LBSRC), this.int(E_LBSRC + 1)));
  }
  get servingKept(): readonly number[] {
    const c = this.c();
    return (c.kept ??= this.ctx.addrs(this.int(E_KEPT), this.int(E_KEPT + 1)));
  }
  get sourceRanges(): readonly Cidr[] | null {
    const c = this.c();
    if (c.ranges === undefined) {
      if ((this.int(E_FLAGS) & EF_HAS_RANGES) === 0) c.ranges = null;
      else {
        const pool = this.ctx.w.pool;
        const ranges: Cidr[] = [];
        const start = this.int(E_RANGES);
        for (let k = 0; k < this.int(E_RANGES + 1); k++) {
          const p = start + k * 3;
          ranges.push({ net: pool[p] >>> 0, mask: pool[p + 1] >>> 0, bits: pool[p + 2] });
        }
        c.ranges = ranges;
      }
    }
    return c.ranges;
  }
  /** the three sets at once, from one wire form: shared sets stay one object */
  private sets(): [EndpointSet | null, EndpointSet | null, EndpointSet | null] {
    const c = this.c();
    return (c.sets ??= [this.ctx.set(this.int(E_INTERNAL)), this.ctx.set(this.int(E_CLUSTER)), this.ctx.set(this.int(E_LOCAL))]);
  }
  get internal(): EndpointSet | null {
    return this.sets()[0];
  }
  get cluster(): EndpointSet | null {
    return this.sets()[1];
  }
  get local(): EndpointSet | null {
    return this.sets()[2];
  }
}

/**
 * A spare for the snapshot after `m` (TablesMaterializer's `spare`) made
 * ahead, while nothing is being swapped: one view per entry of `m` (and of
 * its IPv6 half), over the same wire form, read by nothing, with no stamp
 * (every entry taken from it is made again). The packet thread makes it
 * before the packets move (tunproxy run, at the first rule set), so that even
 * the first full change after the start allocates no views while they move.
 */
export function blankSpare(m: Materialized): Materialized {
  const first = m.tables.services[0];
  const n = first instanceof ServicePortView ? m.tables.services.length : 0;
  const services = new Array<ServicePortEntry>(n);
  if (first instanceof ServicePortView) {
    const ctx = new WireCtx(first.wireForm());
    for (let i = 0; i < n; i++) services[i] = new ServicePortView(ctx, i);
  }
  const tables: Tables = { ...m.tables, services };
  return { tables, slots: null, stamps: NO_STAMPS, ...(m.v6 ? { v6: blankSpare(m.v6) } : {}) };
}

/**
 * The names of a snapshot's service ports, by position. On a materialized
 * snapshot they are read from the wire form and not kept on the views: at
 * start-up the pinned tables' recovery reads every name once, and keeping
 * them would leave ~140 bytes per service port on the packet thread's heap
 * for good (100 000 services: 14 MB more for every mark-compact to trace).
 */
export function serviceNames(t: Tables): string[] {
  const list = t.services;
  const out = new Array<string>(list.length);
  for (let i = 0; i < list.length; i++) {
    const s = list[i];
    out[i] = s instanceof ServicePortView ? s.peekName() : s.name;
  }
  return out;
}

/**
 * Packet-thread side: the wire form → a Tables snapshot, in slices.
 * `step(budgetMs)` works until the budget is spent (the clock is read every
 * 256 entries) and returns true when the snapshot is complete (`result`).
 * Each entry takes, in this order:
 *  - the view of the snapshot in force (`prev`) at its position, when the
 *    entry is the same (same stamp): the two snapshots share it (`reused`);
 *  - else the view at its position in `spare`, the snapshot before the one
 *    in force, which no packet reads any more, unless the snapshot in force
 *    shares it (`recycled`): its fields point to the new wire form;
 *  - else a new view (`built`), the only allocation per entry.
 * A full swap of 100 000 services allocated 100 000 views (5 MB) on the
 * packet thread; with a spare, the third and later swaps allocate none, and
 * the packet thread's scavenges have nothing of them to copy.
 * Everything else is made when first read.
 */
export class TablesMaterializer {
  readonly wire: TablesWire;
  private readonly ctx: WireCtx;
  private readonly prev: Materialized | null;
  /** the snapshot before `prev`, no longer in force: its views are taken for other entries */
  private readonly spare: Materialized | null;
  private readonly services: ServicePortEntry[];
  private next = 0;
  reused = 0;
  recycled = 0;
  built = 0;
  slices = 0;
  /** the longest slice (ms) */
  maxSliceMs = 0;

  /** the IPv6 half's base, materialized in the same slices after the IPv4 entries */
  private readonly v6: TablesMaterializer | null;

  /**
   * `spare`: a snapshot materialized before `prev` that nothing reads any
   * more (not in force, not waiting to be swapped in): the caller's promise,
   * for the views it has that `prev` does not share are changed in place.
   */
  constructor(wire: TablesWire, prev: Materialized | null, spare: Materialized | null = null) {
    this.wire = wire;
    this.ctx = new WireCtx(wire);
    this.prev = prev;
    this.spare = spare !== null && spare !== prev && spare.tables !== prev?.tables ? spare : null;
    // the spare's array of entries too (every position is written before the swap), cut or grown to the
    // count: a new array of 100 000 entries is 0.8 MB touched for the first time on this thread, in one
    // go (~2.4 ms on the AMD machine), for every service added. Grown by push (the array stays packed;
    // V8 grows its room by half, so a later addition finds room)
    const old = this.spare?.tables.services as ServicePortEntry[] | undefined;
    if (old !== undefined && old !== prev?.tables.services) {
      if (old.length > wire.count) old.length = wire.count;
      else while (old.length < wire.count) old.push(undefined as unknown as ServicePortEntry);
      this.services = old;
    } else this.services = new Array<ServicePortEntry>(wire.count);
    this.v6 = wire.v6 ? new TablesMaterializer(wire.v6.base, prev?.v6 ?? null, this.spare?.v6 ?? null) : null;
  }

  get done(): boolean {
    return this.next >= this.wire.count && (this.v6 === null || this.v6.done);
  }

  step(budgetMs: number): boolean {
    const t0 = performance.now();
    const w = this.wire;
    const prevServices = this.prev?.tables.services;
    const prevSlots = this.prev?.slots ?? null;
    const prevStamps = this.prev?.stamps;
    const spareServices = this.spare?.tables.services;
    const spareSlots = this.spare?.slots ?? null;
    const spareStamps = this.spare?.stamps;
    const slots = w.slots;
    this.slices++;
    while (this.next < w.count) {
      const stop = Math.min(w.count, this.next + 256);
      for (let i = this.next; i < stop; i++) {
        const inForce = prevServices !== undefined && i < prevServices.length ? prevServices[i] : undefined;
        const stamp = w.stamps[slots[i]];
        if (inForce instanceof ServicePortView && prevSlots !== null && prevStamps![prevSlots[i]] === stamp) {
          inForce.rebind(this.ctx, true);
          this.services[i] = inForce;
          this.reused++;
          continue;
        }
        const old = spareServices !== undefined && i < spareServices.length ? spareServices[i] : undefined;
        // a view the snapshot in force shares (kept from the spare) is read by packets: never taken
        if (old instanceof ServicePortView && old !== inForce) {
          old.rebind(this.ctx, spareSlots !== null && spareStamps![spareSlots[i]] === stamp);
          this.services[i] = old;
          this.recycled++;
        } else {
          this.services[i] = new ServicePortView(this.ctx, i);
          this.built++;
        }
      }
      this.next = stop;
      if (performance.now() - t0 >= budgetMs) break;
    }
    const v6 = this.v6;
    if (v6 !== null && this.next >= w.count && !v6.done) {
      // what is left of this slice's budget (at least one chunk of 256 entries: every slice moves on)
      const r0 = v6.reused;
      const c0 = v6.recycled;
      const b0 = v6.built;
      v6.step(budgetMs - (performance.now() - t0));
      this.reused += v6.reused - r0;
      this.recycled += v6.recycled - c0;
      this.built += v6.built - b0;
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
      endpointPairs: w.endpointPairs,
    };
    if (w.v6 && this.v6 !== null) {
      const m6 = this.v6.result();
      return { tables: { ...tables, v6: tables6From(w.v6, m6.tables) }, slots: w.slots, stamps: w.stamps, v6: m6 };
    }
    return { tables, slots: w.slots, stamps: w.stamps };
  }
}

// ---- the IPv6 tables (tables6.ts) ------------------------------------------------
// The IPv6 half is a Tables of its own (addresses are ids) plus the id map, the
// words, the IPv6 cluster CIDR, masquerade id and source ranges. Its Tables goes
// through the same encoding; the id map and words are shared arrays; the CIDRs
// are small plain objects (typed arrays), copied by postMessage.

export interface Tables6Wire {
  readonly base: TablesWire;
  readonly idSlots: Int32Array;
  readonly words: Uint32Array;
  readonly endpoints6: Uint32Array;
  readonly cidr6: Cidr6 | null;
  readonly masqId: number;
  readonly sourceRanges6: readonly (readonly Cidr6[] | null)[];
}

function onShared32(a: Uint32Array): Uint32Array {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const c = new Uint32Array(new SharedArrayBuffer(Math.max(a.byteLength, 8)), 0, a.length);
  c.set(a);
  return c;
}

/** The IPv6 tables with every typed array on a SharedArrayBuffer. */
export function shareTables6(t6: Tables6): Tables6 {
  const slots = t6.ids.slots;
  return {
    ...t6,
    base: shareTables(t6.base),
    ids: slots.buffer instanceof SharedArrayBuffer ? t6.ids : new Addr6Ids(0, onShared(slots)),
    words: onShared32(t6.words),
    endpoints6: onShared32(t6.endpoints6),
  };
}

function encodeTables6(t6: Tables6, enc: TablesEncoder): Tables6Wire {
  const s = shareTables6(t6);
  return { base: enc.encode(s.base), idSlots: s.ids.slots, words: s.words, endpoints6: s.endpoints6, cidr6: s.cidr6, masqId: s.masqId, sourceRanges6: s.sourceRanges6 };
}

function tables6From(w: Tables6Wire, base: Tables): Tables6 {
  return {
    base,
    ids: new Addr6Ids(0, w.idSlots),
    words: w.words,
    endpoints6: w.endpoints6,
    cidr6: w.cidr6,
    masqId: w.masqId,
    sourceRanges6: w.sourceRanges6,
  };
}

