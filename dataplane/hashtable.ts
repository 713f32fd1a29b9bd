/**
 * An open-addressing hash table from (IPv4 address, protocol+port) to a small
 * integer, on one typed array (address, protocol+port, value interleaved, so
 * a probe touches one cache line): no boxing of addresses above 2^31, no
 * allocation per lookup. A snapshot's index is immutable once swapped in;
 * while one is built (the incremental path patches a copy of the index in
 * force) keys are deleted by backward shift, so no tombstones accumulate.
 */
const STRIDE = 4; // addr, protoPort (-1 = empty), value, spare
export class VipIndex {
  private readonly mask: number;
  private readonly slots: Int32Array;
  size = 0;

  constructor(expected: number, slots?: Int32Array) {
    if (slots !== undefined) {
      this.mask = slots.length / STRIDE - 1;
      this.slots = slots;
      return;
    }
    let cap = 16;
    while (cap < expected * 2) cap *= 2;
    this.mask = cap - 1;
    this.slots = new Int32Array(cap * STRIDE);
    for (let i = 1; i < this.slots.length; i += STRIDE) this.slots[i] = -1;
  }

  private static slot(addr: number, protoPort: number): number {
    let h = Math.imul(addr ^ 0x9e3779b9, 0x85ebca6b);
    h ^= Math.imul(protoPort, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x27d4eb2d);
    return h ^ (h >>> 16);
  }

  /** Insert or replace. `addr` may be signed or unsigned; `protoPort` = protoIndex * 65536 + port. */
  set(addr: number, protoPort: number, value: number): void {
    const a = addr | 0;
    const s = this.slots;
    let i = VipIndex.slot(a, protoPort) & this.mask;
    for (;;) {
      const o = i * STRIDE;
      const p = s[o + 1];
      if (p === -1) {
        if (this.size * 2 >= this.mask + 1) throw new Error('VipIndex is full: built with too small an expected size');
        s[o] = a;
        s[o + 1] = protoPort;
        s[o + 2] = value;
        this.size++;
        return;
      }
      if (p === protoPort && s[o] === a) {
        s[o + 2] = value;
        return;
      }
      i = (i + 1) & this.mask;
    }
  }

  /** The value, or -1. */
  get(addr: number, protoPort: number): number {
    const a = addr | 0;
    const s = this.slots;
    let i = VipIndex.slot(a, protoPort) & this.mask;
    for (;;) {
      const o = i * STRIDE;
      const p = s[o + 1];
      if (p === -1) return -1;
      if (p === protoPort && s[o] === a) return s[o + 2];
      i = (i + 1) & this.mask;
    }
  }

  /** Remove a key (backward-shift deletion keeps linear probing correct without tombstones). Returns whether it was there. */
  delete(addr: number, protoPort: number): boolean {
    const a = addr | 0;
    const s = this.slots;
    const mask = this.mask;
    let i = VipIndex.slot(a, protoPort) & mask;
    for (;;) {
      const o = i * STRIDE;
      const p = s[o + 1];
      if (p === -1) return false;
      if (p === protoPort && s[o] === a) break;
      i = (i + 1) & mask;
    }
    // shift later members of the cluster back into the hole when their home slot allows it
    let hole = i;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const oj = j * STRIDE;
      if (s[oj + 1] === -1) break;
      const home = VipIndex.slot(s[oj], s[oj + 1]) & mask;
      // can the entry at j move to the hole? only if its home is not in (hole, j] cyclically
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!inRange) {
        const oh = hole * STRIDE;
        s[oh] = s[oj];
        s[oh + 1] = s[oj + 1];
        s[oh + 2] = s[oj + 2];
        hole = j;
      }
    }
    s[hole * STRIDE + 1] = -1;
    this.size--;
    return true;
  }

  /** Slots in all; at most half of them are ever used (set throws past that: grow with copy). */
  get capacity(): number {
    return this.mask + 1;
  }

  /** The slot array (addr, protoPort, value, spare per slot) and the key count: to share the index with another thread. */
  get rawSlots(): Int32Array {
    return this.slots;
  }

  /** An index over slots made by another VipIndex (e.g. on a SharedArrayBuffer from the control worker): no copy. */
  static fromSlots(slots: Int32Array, size: number): VipIndex {
    const cap = slots.length / STRIDE;
    if (!Number.isInteger(cap) || cap < 16 || (cap & (cap - 1)) !== 0) throw new Error(`VipIndex.fromSlots: ${slots.length} ints is not a power-of-two number of ${STRIDE}-int slots`);
    // through the constructor: the same hidden class as every other VipIndex (the lookup stays monomorphic)
    const v = new VipIndex(0, slots);
    v.size = size;
    return v;
  }

  /** A copy with room for `expected` keys in all (rehashed when it needs more slots). */
  copy(expected: number): VipIndex {
    const n = new VipIndex(Math.max(expected, this.size));
    if (n.mask === this.mask) {
      n.slots.set(this.slots);
      n.size = this.size;
      return n;
    }
    const s = this.slots;
    for (let o = 0; o < s.length; o += STRIDE) if (s[o + 1] !== -1) n.set(s[o], s[o + 1], s[o + 2]);
    return n;
  }

  /** Every key and value (for tests and listings). */
  *entries(): IterableIterator<[addr: number, protoPort: number, value: number]> {
    const s = this.slots;
    for (let o = 0; o < s.length; o += STRIDE) if (s[o + 1] !== -1) yield [s[o], s[o + 1], s[o + 2]];
  }

  get bytes(): number {
    return this.slots.byteLength;
  }
}
