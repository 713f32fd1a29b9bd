/**
 * The connection table's key index: an open-addressing hash table (linear
 * probing, backward-shift deletion, no tombstones) from a 64-bit tuple hash,
 * held as two int32 halves, to a small integer value. One preallocated
 * Int32Array of 16-byte slots [hi, lo, value, unused]: a probe reads one
 * slot; nothing is allocated, and no double crosses a call (V8 would box it).
 *
 * Why not lru-cache (DESIGN.md's first choice): its Map with 2 million
 * 53-bit (heap-number) keys measured 0.7 M lookups/s at 1 million flows
 * against 2.4 M/s for this table, ~80 more bytes per flow, and a boxed key
 * per lookup. Recency for eviction is kept by the table (CLOCK), not here.
 */

const EMPTY = -1;
/** the table is sized so it is at most this full when holding maxKeys keys */
const MAX_LOAD = 0.7;
const STRIDE = 4;

export class TupleIndex {
  /** slots (a power of two) */
  readonly capacity: number;
  /** keys it may hold */
  readonly maxKeys: number;
  /** keys held */
  size = 0;
  private readonly mask: number;
  /** slot i: [i*4] hash hi, [i*4+1] hash lo, [i*4+2] value (EMPTY when free) */
  private readonly slots: Int32Array;

  constructor(maxKeys: number) {
    if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new RangeError(`conntrack index: maxKeys must be a positive integer, got ${maxKeys}`);
    let cap = 16;
    while (cap * MAX_LOAD < maxKeys) cap *= 2;
    this.capacity = cap;
    this.maxKeys = maxKeys;
    this.mask = cap - 1;
    this.slots = new Int32Array(cap * STRIDE);
    this.clear();
  }

  /** The value stored for the hash (hi, lo), or -1. */
  find(hi: number, lo: number): number {
    const s = this.slots;
    const mask = this.mask;
    let i = hi & mask;
    for (;;) {
      const b = i * STRIDE;
      const v = s[b + 2];
      if (v === EMPTY) return -1;
      if (s[b] === hi && s[b + 1] === lo) return v;
      i = (i + 1) & mask;
    }
  }

  /** Add a hash that is not present (the caller checked with find). value >= 0. */
  insert(hi: number, lo: number, value: number): void {
    if (this.size >= this.maxKeys) throw new Error(`conntrack index: full (${this.maxKeys} keys)`);
    const s = this.slots;
    const mask = this.mask;
    let i = hi & mask;
    while (s[i * STRIDE + 2] !== EMPTY) i = (i + 1) & mask;
    const b = i * STRIDE;
    s[b] = hi;
    s[b + 1] = lo;
    s[b + 2] = value;
    this.size++;
  }

  /** Replace the value of a present hash; false when absent. */
  setValue(hi: number, lo: number, value: number): boolean {
    const s = this.slots;
    const mask = this.mask;
    let i = hi & mask;
    for (;;) {
      const b = i * STRIDE;
      if (s[b + 2] === EMPTY) return false;
      if (s[b] === hi && s[b + 1] === lo) {
        s[b + 2] = value;
        return true;
      }
      i = (i + 1) & mask;
    }
  }

  /** Remove a hash; false when absent. Later slots of the probe run shift back into the hole. */
  remove(hi: number, lo: number): boolean {
    const s = this.slots;
    const mask = this.mask;
    let i = hi & mask;
    for (;;) {
      const b = i * STRIDE;
      if (s[b + 2] === EMPTY) return false;
      if (s[b] === hi && s[b + 1] === lo) break;
      i = (i + 1) & mask;
    }
    // backward-shift deletion (Knuth 6.4, algorithm R)
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const bj = j * STRIDE;
      if (s[bj + 2] === EMPTY) break;
      const h = s[bj] & mask;
      // the slot at j may move back to i only if its home is not cyclically within (i, j]
      const stays = i <= j ? i < h && h <= j : i < h || h <= j;
      if (stays) continue;
      const bi = i * STRIDE;
      s[bi] = s[bj];
      s[bi + 1] = s[bj + 1];
      s[bi + 2] = s[bj + 2];
      i = j;
    }
    const bi = i * STRIDE;
    s[bi] = 0;
    s[bi + 1] = 0;
    s[bi + 2] = EMPTY;
    this.size--;
    return true;
  }

  clear(): void {
    const s = this.slots;
    for (let b = 0; b < s.length; b += STRIDE) {
      s[b] = 0;
      s[b + 1] = 0;
      s[b + 2] = EMPTY;
    }
    this.size = 0;
  }
}
