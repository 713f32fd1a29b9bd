/**
 * An open-addressing hash table from (IPv4 address, protocol+port) to a small
 * integer, on one typed array (address, protocol+port, value interleaved, so
 * a probe touches one cache line): no boxing of addresses above 2^31, no
 * allocation per lookup. Built once per snapshot, immutable afterwards, so
 * no deletion is needed.
 */
const STRIDE = 4; // addr, protoPort (-1 = empty), value, spare
export class VipIndex {
  private readonly mask: number;
  private readonly slots: Int32Array;
  size = 0;

  constructor(expected: number) {
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

  get bytes(): number {
    return this.slots.byteLength;
  }
}
