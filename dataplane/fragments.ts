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
