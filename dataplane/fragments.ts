/**
 * IP fragments: the first fragment carries the L4 header and is translated
 * with its flow; the later ones (no ports) follow it, found by
 * (src, dst, protocol, IP identification), for netfilter's 30 s
 * reassembly-like window.
 */
import { LRUCache } from 'lru-cache';
import type { ConntrackEntry } from './conntrack.ts';

export interface FragmentFlow {
  src: number;
  dst: number;
  proto: number;
  ident: number;
  entry: ConntrackEntry;
  direction: number;
  expires: number;
}

export const FRAGMENT_TIMEOUT_MS = 30_000;

function key(src: number, dst: number, proto: number, ident: number): number {
  let h = Math.imul(src ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ dst, 0xc2b2ae35);
  const lo = (h ^ (h >>> 16)) >>> 0;
  // 32 bits of address hash, 16 bits of ident, 5 bits of protocol: below 2^53
  return (lo * 65536 + ident) * 32 + (proto & 31);
}

export class FragmentTable {
  private readonly cache: LRUCache<number, FragmentFlow>;
  constructor(max = 4096) {
    this.cache = new LRUCache<number, FragmentFlow>({ max });
  }
  remember(src: number, dst: number, proto: number, ident: number, entry: ConntrackEntry, direction: number, now: number): void {
    const k = key(src, dst, proto, ident);
    const f = this.cache.get(k);
    if (f !== undefined) {
      f.src = src; f.dst = dst; f.proto = proto; f.ident = ident; f.entry = entry; f.direction = direction; f.expires = now + FRAGMENT_TIMEOUT_MS;
    } else this.cache.set(k, { src, dst, proto, ident, entry, direction, expires: now + FRAGMENT_TIMEOUT_MS });
  }
  find(src: number, dst: number, proto: number, ident: number, now: number): FragmentFlow | null {
    const f = this.cache.get(key(src, dst, proto, ident));
    if (f === undefined || f.src !== src || f.dst !== dst || f.proto !== proto || f.ident !== ident || f.expires <= now) return null;
    return f;
  }
  get size(): number {
    return this.cache.size;
  }
}

/** An IPv6 first fragment's flow: later fragments (same src, dst, upper protocol, 32-bit identification) follow it. */
export interface FragmentFlow6 {
  /** src words then dst words */
  readonly addrs: Uint32Array;
  proto: number;
  ident: number;
  entry: ConntrackEntry;
  direction: number;
  expires: number;
}

function key6(w: Uint32Array, o: number, proto: number, ident: number): number {
  let h = Math.imul(w[o] ^ w[o + 1] ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ w[o + 2] ^ w[o + 3], 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 16) ^ w[o + 4] ^ w[o + 5], 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ w[o + 6] ^ w[o + 7] ^ ident, 0xc2b2ae35);
  const lo = (h ^ (h >>> 16)) >>> 0;
  return lo * 256 + (proto & 0xff);
}

/** The IPv6 counterpart of FragmentTable: the same window, keys over 128-bit addresses, verified in full. */
export class FragmentTable6 {
  private readonly cache: LRUCache<number, FragmentFlow6>;
  constructor(max = 4096) {
    this.cache = new LRUCache<number, FragmentFlow6>({ max });
  }
  /** w[o..o+4) the source, w[o+4..o+8) the destination */
  remember(w: Uint32Array, o: number, proto: number, ident: number, entry: ConntrackEntry, direction: number, now: number): void {
    const k = key6(w, o, proto, ident);
    let f = this.cache.get(k);
    if (f === undefined) {
      f = { addrs: new Uint32Array(8), proto, ident, entry, direction, expires: 0 };
      this.cache.set(k, f);
    }
    f.addrs.set(w.subarray(o, o + 8));
    f.proto = proto;
    f.ident = ident;
    f.entry = entry;
    f.direction = direction;
    f.expires = now + FRAGMENT_TIMEOUT_MS;
  }
  find(w: Uint32Array, o: number, proto: number, ident: number, now: number): FragmentFlow6 | null {
    const f = this.cache.get(key6(w, o, proto, ident));
    if (f === undefined || f.proto !== proto || f.ident !== ident || f.expires <= now) return null;
    const a = f.addrs;
    for (let i = 0; i < 8; i++) if (a[i] !== w[o + i]) return null;
    return f;
  }
  get size(): number {
    return this.cache.size;
  }
}
