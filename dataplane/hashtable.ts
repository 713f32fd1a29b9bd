/**
 * The one int-pair hash table of the project: open addressing with linear
 * probing from a pair of 32-bit integers to a non-negative integer, on one
 * typed array of 4-int slots [a, b, value + 1, spare] (a probe reads one slot, one
 * cache line), deleted by backward shift (Knuth 6.4, algorithm R: no
 * tombstones accumulate). No boxing of keys above 2^31, no allocation per
 * lookup, no double crossing a call.
 *
 * It keys:
 * - the VIP index and the VIP address counts of the compiled tables
 *   (address, protoIndex * 65536 + port), and validation's conflict check;
 * - the connection table's key index (a tuple's 64-bit hash as two halves:
 *   dataplane/conntrack-index.ts names the operations in its words).
 *
 * Why not a Map (DESIGN.md): a Map with 53-bit (heap-number) keys boxes a key
 * per lookup; at 1 million flows it measured 0.7 M lookups/s against 2.4 M/s
 * for this layout, and ~80 more bytes per flow.
 */
/**
 * Slot [a, b, value + 1, spare]: 0 in the value word (EMPTY) is a free slot,
 * so that new slots need no filling. A table is made on zeroed memory, whose
 * pages the kernel gives only when first written: the connection table's
 * index for the default --conntrack-max (32 MB with the IPv6 one) costs no
 * memory and no start-up time until flows fill it (filling free slots with
 * -1 touched every page at the start: ~90 ms of a ~1.2 s start on the AMD
 * machine, at 2.8 ms per MB touched for the first time).
 */
import { sharedBuffers } from './shared-arrays.ts';

const STRIDE = 4; // a, b, value + 1 (EMPTY = free), spare
const EMPTY = 0;

export interface IntPairTableOptions {
  /** the table is at most this full (default ½) */
  load?: number;
  /**
   * `a` is already a well-mixed hash (the connection table's tuple hash):
   * its low bits are the home slot, as they are. Else (addresses and ports,
   * which differ in few bits) both halves are mixed first.
   */
  prehashed?: boolean;
  /** slots made by another table of the same layout (another thread's, on shared memory): no copy */
  slots?: Int32Array;
  /**
   * new slots on a SharedArrayBuffer: the compiled tables' indexes, which the
   * control worker sends to the packet thread as they are (no copy to shared
   * memory afterwards)
   */
  shared?: boolean;
}

export class IntPairTable {
  private readonly mask: number;
  private readonly slots: Int32Array;
  private readonly prehashed: boolean;
  /** keys it may hold: set/insert throw past it (the table stays at most `load` full) */
  readonly maxKeys: number;
  /** keys held */
  size = 0;

  /** Room for `expected` keys with the table at most `load` full (slots: the least power of two, ≥ 16, that allows it). */
  constructor(expected: number, o: IntPairTableOptions = {}) {
    const load = o.load ?? 0.5;
    let cap = 16;
    if (o.slots !== undefined) cap = o.slots.length / STRIDE;
    else while (cap * load < expected) cap *= 2;
    // every field in the same order on every path: one hidden class for every table (monomorphic lookups)
    this.mask = cap - 1;
    this.slots = o.slots ?? (o.shared === true ? new Int32Array(sharedBuffers.take(cap * STRIDE * 4)) : new Int32Array(cap * STRIDE));
    this.prehashed = o.prehashed ?? false;
    this.maxKeys = Math.floor(cap * load);
  }

  /** The home slot of a key, before the mask. */
  private home(a: number, b: number): number {
    if (this.prehashed) return a;
    let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b);
    h ^= Math.imul(b, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x27d4eb2d);
    return h ^ (h >>> 16);
  }

  /** The value, or -1. `a` may be signed or unsigned (an address). */
  get(a: number, b: number): number {
    const x = a | 0;
    const s = this.slots;
    const mask = this.mask;
    let i = this.home(x, b) & mask;
    for (;;) {
      const o = i * STRIDE;
      const v = s[o + 2];
      if (v === EMPTY) return -1;
      if (s[o] === x && s[o + 1] === b) return v - 1;
      i = (i + 1) & mask;
    }
  }

  /** Insert or replace; `value` ≥ 0. */
  set(a: number, b: number, value: number): void {
    const x = a | 0;
    const s = this.slots;
    const mask = this.mask;
    let i = this.home(x, b) & mask;
    for (;;) {
      const o = i * STRIDE;
      if (s[o + 2] === EMPTY) {
        this.put(o, x, b, value);
        return;
      }
      if (s[o] === x && s[o + 1] === b) {
        s[o + 2] = value + 1;
        return;
      }
      i = (i + 1) & mask;
    }
  }

  /** Add a key the caller knows is absent (one probe run, no comparisons); `value` ≥ 0. */
  insert(a: number, b: number, value: number): void {
    const x = a | 0;
    const s = this.slots;
    const mask = this.mask;
    let i = this.home(x, b) & mask;
    while (s[i * STRIDE + 2] !== EMPTY) i = (i + 1) & mask;
    this.put(i * STRIDE, x, b, value);
  }

  private put(o: number, a: number, b: number, value: number): void {
    if (this.size >= this.maxKeys) throw new Error(`hash table full (${this.maxKeys} keys): made with too small an expected size`);
    const s = this.slots;
    s[o] = a;
    s[o + 1] = b;
    s[o + 2] = value + 1;
    this.size++;
  }

  /** Replace the value of a present key; false when absent. */
  replace(a: number, b: number, value: number): boolean {
    const x = a | 0;
    const s = this.slots;
    const mask = this.mask;
    let i = this.home(x, b) & mask;
    for (;;) {
      const o = i * STRIDE;
      if (s[o + 2] === EMPTY) return false;
      if (s[o] === x && s[o + 1] === b) {
        s[o + 2] = value + 1;
        return true;
      }
      i = (i + 1) & mask;
    }
  }

  /** Remove a key; false when absent. Later members of its probe run shift back into the hole. */
  delete(a: number, b: number): boolean {
    const x = a | 0;
    const s = this.slots;
    const mask = this.mask;
    let i = this.home(x, b) & mask;
    for (;;) {
      const o = i * STRIDE;
      if (s[o + 2] === EMPTY) return false;
      if (s[o] === x && s[o + 1] === b) break;
      i = (i + 1) & mask;
    }
    let hole = i;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const oj = j * STRIDE;
      if (s[oj + 2] === EMPTY) break;
      const home = this.home(s[oj], s[oj + 1]) & mask;
      // the entry at j may move back to the hole only if its home is not cyclically within (hole, j]
      const stays = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (stays) continue;
      const oh = hole * STRIDE;
      s[oh] = s[oj];
      s[oh + 1] = s[oj + 1];
      s[oh + 2] = s[oj + 2];
      hole = j;
    }
    const oh = hole * STRIDE;
    s[oh] = 0;
    s[oh + 1] = 0;
    s[oh + 2] = EMPTY;
    this.size--;
    return true;
  }

  clear(): void {
    this.slots.fill(0);
    this.size = 0;
  }

  /** Slots in all. */
  get capacity(): number {
    return this.mask + 1;
  }

  /** The slot array (a, b, value + 1, spare per slot): to share the table with another thread. */
  get rawSlots(): Int32Array {
    return this.slots;
  }

  /** A table over slots made by another one (e.g. on a SharedArrayBuffer from the control worker): no copy. */
  static fromSlots(slots: Int32Array, size: number, prehashed = false): IntPairTable {
    const cap = slots.length / STRIDE;
    if (!Number.isInteger(cap) || cap < 16 || (cap & (cap - 1)) !== 0) throw new Error(`IntPairTable.fromSlots: ${slots.length} ints is not a power-of-two number of ${STRIDE}-int slots`);
    // through the constructor: the same hidden class as every other table (lookups stay monomorphic)
    const t = new IntPairTable(0, { slots, prehashed });
    t.size = size;
    return t;
  }

  /** A copy (load ½) with room for `expected` keys in all (rehashed when it needs more slots), on shared memory when this one is. */
  copy(expected: number): IntPairTable {
    const shared = this.slots.buffer instanceof SharedArrayBuffer;
    let cap = 16;
    while (cap * 0.5 < Math.max(expected, this.size)) cap *= 2;
    if (cap - 1 === this.mask) {
      // the same slots: copied as they are (on shared memory, into a buffer that needs no zeroing first)
      const bytes = this.slots.byteLength;
      const slots = shared ? new Int32Array(sharedBuffers.take(bytes, bytes)) : new Int32Array(this.slots.length);
      slots.set(this.slots);
      const n = new IntPairTable(0, { prehashed: this.prehashed, slots });
      n.size = this.size;
      return n;
    }
    const n = new IntPairTable(Math.max(expected, this.size), { prehashed: this.prehashed, shared });
    const s = this.slots;
    for (let o = 0; o < s.length; o += STRIDE) if (s[o + 2] !== EMPTY) n.insert(s[o], s[o + 1], s[o + 2] - 1);
    return n;
  }

  /** Every key and value (for tests and listings). */
  *entries(): IterableIterator<[a: number, b: number, value: number]> {
    const s = this.slots;
    for (let o = 0; o < s.length; o += STRIDE) if (s[o + 2] !== EMPTY) yield [s[o], s[o + 1], s[o + 2] - 1];
  }

  get bytes(): number {
    return this.slots.byteLength;
  }
}

/** The VIP index of the compiled tables (address, protoIndex * 65536 + port) → value: the int-pair table. */
export { IntPairTable as VipIndex };
