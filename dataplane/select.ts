/**
 * Endpoint selection for a new flow: uniform random (what kube-proxy's
 * `-m statistic --mode random` chains produce), ClientIP session affinity
 * (what `-m recent --rcheck --seconds T --reap` gives), and Maglev consistent
 * hashing (opt-in per rule set).
 */
import { LRUCache } from 'lru-cache';
import type { EndpointSet, ServicePortEntry, Tables, LookupResult } from './tables.ts';
import { ROW, R_FLAGS, F_SLOW_SELECT } from './tables.ts';

/** xorshift128+ with a settable seed: fast, and repeatable in tests. */
export class Rng {
  private s0 = 0x9e3779b9 | 0;
  private s1 = 0x243f6a88 | 0;
  private s2 = 0xb7e15162 | 0;
  private s3 = 0x7f4a7c15 | 0;
  constructor(seed?: number) {
    this.seed(seed ?? (Math.random() * 0x100000000) >>> 0);
  }
  seed(seed: number): void {
    this.s0 = seed | 0 || 1;
    this.s1 = Math.imul(seed ^ 0x5bd1e995, 0x27d4eb2d) | 0;
    this.s2 = Math.imul(seed ^ 0x1b873593, 0x85ebca6b) | 0;
    this.s3 = Math.imul(seed ^ 0xcc9e2d51, 0xc2b2ae35) | 0;
    for (let i = 0; i < 8; i++) this.next32();
  }
  /** xoshiro128** step: a uniform unsigned 32-bit integer */
  next32(): number {
    const r = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9);
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r >>> 0;
  }
  /** uniform integer in [0, n) */
  below(n: number): number {
    return Math.floor((this.next32() / 0x100000000) * n);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** 32-bit FNV-1a of a string (stable service ids, maglev offsets). */
export function fnv1a(s: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A 32-bit mix of a flow's 5-tuple (Maglev's flow hash). */
export function flowHash(proto: number, src: number, dst: number, sport: number, dport: number): number {
  let h = Math.imul(src ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ dst, 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 16) ^ ((sport << 16) | dport), 0x27d4eb2d);
  h = Math.imul(h ^ (h >>> 15) ^ proto, 0x165667b1);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4): each endpoint
 * walks its own permutation of the M slots (offset, skip from two hashes of its
 * name) and they take turns claiming the next free slot of their permutation.
 * M must be prime so that every skip visits every slot.
 */
export function buildMaglev(names: readonly string[], m: number): Uint16Array {
  const n = names.length;
  const table = new Uint16Array(m);
  if (n === 0) return table;
  const filled = new Uint8Array(m);
  const offset = new Uint32Array(n);
  const skip = new Uint32Array(n);
  const next = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    offset[i] = fnv1a(names[i], 0x811c9dc5) % m;
    skip[i] = (fnv1a(names[i], 0x050c5d1f) % (m - 1)) + 1;
  }
  let placed = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      let c = (offset[i] + next[i] * skip[i]) % m;
      while (filled[c] === 1) {
        next[i]++;
        c = (offset[i] + next[i] * skip[i]) % m;
      }
      table[c] = i;
      filled[c] = 1;
      next[i]++;
      if (++placed === m) return table;
    }
  }
}

interface AffinityEntry {
  name: string;
  addr: number;
  port: number;
  expires: number;
  /** an IPv6 table's: the client's four words (the key holds only their 32-bit fold); 0 in an IPv4 table */
  c0: number;
  c1: number;
  c2: number;
  c3: number;
}

/**
 * ClientIP session affinity: (service, client address) → endpoint, for the
 * service's timeout after the last new flow, like kube-proxy's `recent` lists
 * (refreshed by `--set` on each new connection, checked with `--rcheck --seconds`).
 */
export class AffinityTable {
  /**
   * made at the first entry: an LRUCache of `max` allocates its arrays whole
   * (two of 8 MB at 2^20), which the packet thread's heap would carry, and
   * every mark-compact trace, on a node whose services have no ClientIP affinity
   */
  private cache: LRUCache<number, AffinityEntry> | null = null;
  private readonly max: number;
  hits = 0;
  /**
   * An IPv6 table: a client is 128 bits, the key (and selectEndpoint's
   * `src`) its 32-bit fold; each entry keeps the whole address and answers
   * only the client whose address it is (set by client6 before each
   * selection). Two clients with the same fold take turns in one entry:
   * each may lose its affinity to the other, never gets the other's.
   */
  private readonly six: boolean;
  private c0 = 0;
  private c1 = 0;
  private c2 = 0;
  private c3 = 0;
  constructor(max = 1 << 20, six = false) {
    this.max = max;
    this.six = six;
  }
  /** IPv6 tables: the client of the next get/set is w[o..o+4). */
  client6(w: ArrayLike<number>, o: number): void {
    this.c0 = w[o];
    this.c1 = w[o + 1];
    this.c2 = w[o + 2];
    this.c3 = w[o + 3];
  }
  private static key(uid: number, client: number): number {
    return (uid & 0x1fffff) * 0x100000000 + client;
  }
  /** The remembered endpoint index in `set`, or -1. */
  get(svc: ServicePortEntry, set: EndpointSet, client: number, now: number): number {
    const e = this.cache?.get(AffinityTable.key(svc.uid, client));
    if (e === undefined || e.name !== svc.name || e.expires <= now) return -1;
    if (this.six && (e.c0 !== this.c0 || e.c1 !== this.c1 || e.c2 !== this.c2 || e.c3 !== this.c3)) return -1;
    const i = set.index.get(e.addr * 65536 + e.port);
    if (i === undefined) return -1;
    this.hits++;
    return i;
  }
  set(svc: ServicePortEntry, client: number, addr: number, port: number, now: number): void {
    const k = AffinityTable.key(svc.uid, client);
    const cache = (this.cache ??= new LRUCache<number, AffinityEntry>({ max: this.max }));
    const e = cache.get(k);
    const expires = now + svc.affinityMs;
    if (e !== undefined && e.name === svc.name) {
      e.addr = addr;
      e.port = port;
      e.expires = expires;
      e.c0 = this.c0;
      e.c1 = this.c1;
      e.c2 = this.c2;
      e.c3 = this.c3;
    } else cache.set(k, { name: svc.name, addr, port, expires, c0: this.c0, c1: this.c1, c2: this.c2, c3: this.c3 });
  }
  get size(): number {
    return this.cache?.size ?? 0;
  }
  clear(): void {
    this.cache?.clear();
  }
}

/**
 * Choose the endpoint for a new flow among the set `lookup` put in `out`:
 * affinity first (when the service has it), then Maglev (when the set has a
 * table) or uniform random. Returns the endpoint's position in
 * `t.endpointFlat` (pairs: address | 0, port).
 */
export function selectEndpoint(
  t: Tables,
  out: LookupResult,
  proto: number,
  src: number,
  dst: number,
  sport: number,
  dport: number,
  now: number,
  rng: Rng,
  affinity: AffinityTable | null,
): number {
  const n = out.count;
  if ((t.serviceRows[out.svcIndex * ROW + R_FLAGS] & F_SLOW_SELECT) === 0) {
    return out.flatStart + (n === 1 ? 0 : rng.below(n));
  }
  const svc = t.services[out.svcIndex];
  const set = (out.setLocal ? svc.local : svc.cluster)!;
  if (svc.affinityMs > 0 && affinity !== null) {
    const i = affinity.get(svc, set, src, now);
    if (i >= 0) {
      const e = set.endpoints[i];
      affinity.set(svc, src, e.addr, e.port, now);
      return out.flatStart + i;
    }
  }
  const i = n === 1 ? 0 : set.maglev !== null ? set.maglev[flowHash(proto, src, dst, sport, dport) % set.maglev.length] : rng.below(n);
  if (svc.affinityMs > 0 && affinity !== null) {
    const e = set.endpoints[i];
    affinity.set(svc, src, e.addr, e.port, now);
  }
  return out.flatStart + i;
}
