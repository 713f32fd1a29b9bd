/**
 * The IPv6 connection table: the IPv4 table's core (conntrack.ts: the key
 * index, eviction, expiry, sweeps, the TCP/UDP/SCTP state machine, counters)
 * with 128-bit addresses, and IPv4 entries no bigger than before.
 *
 * How: a flow is the same ConntrackEntry object as an IPv4 flow (one hidden
 * class, so the shared code stays monomorphic on entries); its four
 * addresses live outside it, in a side array of words owned by this table,
 * 16 uint32 per flow at the flow's slot (origSrc, origDst, replySrc,
 * replyDst, each four network-order words, addr6.ts). When a flow moves to
 * another slot (a removal fills its hole with the last flow) its words move
 * with it. The entry's 32-bit address fields hold an xor fold of each
 * address (not an address: read addresses with address()/entryWords()).
 *
 * Keys: a seeded 64-bit hash of (proto, the eight words of src and dst,
 * ports) per direction; every lookup verifies all words, so a collision is
 * a miss, never a wrong match, as in the IPv4 table.
 *
 * ICMPv6 echo is keyed by its identifier like ICMP echo; callers pass
 * protocol 58, the table keeps such a flow under protocol 1 (its echo
 * class: same timeouts, same state handling) and shows 58 in listings and
 * snapshots.
 *
 * Bytes per flow: the IPv4 flow's (entry + two index keys) + 64 bytes of
 * words (bench:packet `conntrackBytesPerEntryV6`).
 */

import { PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import { formatIPv6, parseIPv6 } from './addr6.ts';
import { Conntrack, type ConntrackOptions } from './conntrack.ts';
import { ConntrackEntry } from './conntrack-entry.ts';
import { formatConntrackL6, type FormatOptions } from './conntrack-format.ts';
import { checkSnapshotItemOf, snapshotItem, type ConntrackSnapshotItem, type SnapshotFamily } from './conntrack-snapshot.ts';
import { initialTimeout } from './conntrack-state.ts';

export const PROTO_ICMPV6 = 58;
/** words per flow in the side array */
export const CT6_WORDS = 16;
/** offsets of the four addresses in a 16-word tuple */
export const CT6_ORIG_SRC = 0;
export const CT6_ORIG_DST = 4;
export const CT6_REPLY_SRC = 8;
export const CT6_REPLY_DST = 12;

/** What the NAT chose for a new IPv6 flow (the endpoint is the reply tuple's source). */
export interface ConntrackInfo6 {
  serviceName: string;
  serviceIndex: number;
  masquerade: boolean;
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * The 64-bit hash of an IPv6 tuple as two int32 halves (out[0] hi, out[1]
 * lo): a seeded murmur3 lane and a multiply-rotate lane over (proto, src
 * words, dst words, ports), each finished with murmur3's fmix; src at
 * w[so..so+4), dst at w[dd..dd+4). Written out word by word (no calls: this
 * runs twice per new flow and once per packet).
 */
export function conntrackHash6(
  seed: number, proto: number, w: Uint32Array, so: number, dd: number, sport: number, dport: number, out: Int32Array,
): void {
  const ports = (sport << 16) | (dport & 0xffff);
  let a = seed ^ proto ^ 0x6000000;
  let b = (seed ^ 0x9e3779b9 ^ (proto << 24) ^ 0x66) | 0;
  let k: number;
  k = Math.imul(w[so], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[so], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[so + 1], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[so + 1], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[so + 2], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[so + 2], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[so + 3], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[so + 3], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[dd], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[dd], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[dd + 1], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[dd + 1], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[dd + 2], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[dd + 2], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(w[dd + 3], 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ w[dd + 3], 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  k = Math.imul(ports, 0xcc9e2d51); k = (k << 15) | (k >>> 17); a ^= Math.imul(k, 0x1b873593); a = (a << 13) | (a >>> 19); a = (Math.imul(a, 5) + 0xe6546b64) | 0;
  b = Math.imul(b ^ ports, 0x27d4eb2d); b = (b << 17) | (b >>> 15);
  out[0] = fmix(a ^ 37);
  out[1] = fmix(b ^ 37);
}

function fold(w: Uint32Array, o: number): number {
  return w[o] ^ w[o + 1] ^ w[o + 2] ^ w[o + 3];
}

function same4(a: Uint32Array, ao: number, b: Uint32Array, bo: number): boolean {
  return a[ao] === b[bo] && a[ao + 1] === b[bo + 1] && a[ao + 2] === b[bo + 2] && a[ao + 3] === b[bo + 3];
}

function checkProto6(proto: number): void {
  if (proto !== PROTO_TCP && proto !== PROTO_UDP && proto !== PROTO_ICMPV6 && proto !== PROTO_SCTP) {
    throw new RangeError(`conntrack6: protocol ${proto} is not tracked (TCP 6, UDP 17, SCTP 132, ICMPv6 58)`);
  }
}

const IPV6_FAMILY: SnapshotFamily<Uint32Array> = {
  parseAddr: (text) => parseIPv6(text),
  name: 'IPv6',
  tracked: (p) => p === PROTO_TCP || p === PROTO_UDP || p === PROTO_ICMPV6 || p === PROTO_SCTP,
  trackedText: 'TCP 6, UDP 17, SCTP 132, ICMPv6 58',
};

export class Conntrack6 extends Conntrack {
  /** @internal the side array: CT6_WORDS words per slot */
  private readonly words: Uint32Array;
  private readonly scratch = new Uint32Array(CT6_WORDS);
  /**
   * The key (hi, lo) of the tuple the last lookup6 hashed, and of the tuple
   * the last isTupleInUse6 hashed, kept apart from `hash` (which a removal
   * overwrites): a new flow's packet path hands them back to insert6Keyed,
   * so a new flow hashes each of its two tuples once.
   */
  lookupHi = 0;
  lookupLo = 0;
  probeHi = 0;
  probeLo = 0;

  constructor(options: ConntrackOptions = {}) {
    super(options);
    // preallocated whole, as the key index is: growing it by doubling copied up to 64 MB at a time and,
    // as external memory, brought full collections of the whole heap with it (bench:packet's new IPv6
    // flows at 100 000 services: 1.39x IPv4 before, 1.28-1.31x after). The pages are the kernel's zero
    // pages until a flow is written: the resident size grows with the flows, not with --conntrack-max.
    this.words = new Uint32Array(CT6_WORDS * this.maxEntries);
  }

  // the IPv4 entry points do not apply to this table
  override lookup(): ConntrackEntry | null {
    throw new TypeError('conntrack6: use lookup6 (IPv6 addresses are words)');
  }
  override insert(): ConntrackEntry | null {
    throw new TypeError('conntrack6: use insert6 (IPv6 addresses are words)');
  }
  override isTupleInUse(): boolean {
    throw new TypeError('conntrack6: use isTupleInUse6 (IPv6 addresses are words)');
  }
  override removeByEndpoint(): number {
    throw new TypeError('conntrack6: use removeByEndpoint6 (IPv6 addresses are words)');
  }

  /**
   * Hash an IPv6 tuple into this.hash (hi, lo). Tests may override it (in a
   * subclass) to force collisions.
   */
  protected hashTuple6(proto: number, w: Uint32Array, so: number, dd: number, sport: number, dport: number): void {
    conntrackHash6(this.seed, proto, w, so, dd, sport, dport, this.hash);
  }

  /** the key of entry `e` in direction `dir`, into this.hash */
  private hashEntry(e: ConntrackEntry, slot: number, dir: number): void {
    const b = slot * CT6_WORDS + (dir === 0 ? CT6_ORIG_SRC : CT6_REPLY_SRC);
    if (dir === 0) this.hashTuple6(e.proto, this.words, b, b + 4, e.origSport, e.origDport);
    else this.hashTuple6(e.proto, this.words, b, b + 4, e.replySport, e.replyDport);
  }

  protected override removeKeys(e: ConntrackEntry): void {
    const h = this.hash;
    this.hashEntry(e, e._slot, 0);
    this.index.remove(h[0], h[1]);
    this.hashEntry(e, e._slot, 1);
    this.index.remove(h[0], h[1]);
  }

  protected override moveSlot(last: ConntrackEntry, from: number, to: number): void {
    this.flows[to] = last;
    last._slot = to;
    this.words.copyWithin(to * CT6_WORDS, from * CT6_WORDS, from * CT6_WORDS + CT6_WORDS);
    const h = this.hash;
    this.hashEntry(last, to, 0);
    this.index.setValue(h[0], h[1], to * 2);
    this.hashEntry(last, to, 1);
    this.index.setValue(h[0], h[1], to * 2 + 1);
  }

  /**
   * The flow a packet belongs to, or null; sets lastDirection. `w` holds
   * the packet's source at w[so..so+4) and destination at w[dd..dd+4).
   * `proto` 58 for ICMPv6 (echo identifier as both ports).
   */
  lookup6(proto: number, w: Uint32Array, so: number, dd: number, sport: number, dport: number, now: number): ConntrackEntry | null {
    const p = proto === PROTO_ICMPV6 ? PROTO_ICMP : proto;
    this.hashTuple6(p, w, so, dd, sport, dport);
    const hi = this.hash[0];
    const lo = this.hash[1];
    this.lookupHi = hi;
    this.lookupLo = lo;
    const v = this.index.find(hi, lo);
    if (v < 0) return null;
    const slot = v >>> 1;
    const e = this.flows[slot];
    const dir = v & 1;
    const ws = this.words;
    const b = slot * CT6_WORDS + (dir === 0 ? CT6_ORIG_SRC : CT6_REPLY_SRC);
    if (e.proto !== p || !same4(ws, b, w, so) || !same4(ws, b + 4, w, dd)) return null;
    if (dir === 0) {
      if (e.origSport !== sport || e.origDport !== dport) return null;
    } else if (e.replySport !== sport || e.replyDport !== dport) {
      return null;
    }
    if (e.expires <= now) {
      this.expired++;
      this.unlink(e);
      return null;
    }
    e._touched = 1;
    this.lastDirection = dir;
    return e;
  }

  /** As Conntrack.isTupleInUse, for an IPv6 tuple (masquerade port choice). */
  isTupleInUse6(proto: number, w: Uint32Array, so: number, dd: number, sport: number, dport: number, now?: number): boolean {
    const p = proto === PROTO_ICMPV6 ? PROTO_ICMP : proto;
    this.hashTuple6(p, w, so, dd, sport, dport);
    const hi = this.hash[0];
    const lo = this.hash[1];
    this.probeHi = hi;
    this.probeLo = lo;
    const v = this.index.find(hi, lo);
    if (v < 0) return false;
    if (now !== undefined) {
      const e = this.flows[v >>> 1];
      if (e.expires <= now) {
        this.expired++;
        this.unlink(e);
        return false;
      }
    }
    return true;
  }

  private vacate6(hi: number, lo: number, p: number, t: Uint32Array, to: number, sport: number, dport: number, now: number): boolean {
    const v = this.index.find(hi, lo);
    if (v < 0) return true;
    const e = this.flows[v >>> 1];
    if (e.expires <= now) {
      this.expired++;
      this.unlink(e);
      return true;
    }
    const b = e._slot * CT6_WORDS;
    const ws = this.words;
    const isOrig = same4(ws, b, t, to) && same4(ws, b + 4, t, to + 4) && e.origSport === sport && e.origDport === dport;
    const isReply = same4(ws, b + 8, t, to) && same4(ws, b + 12, t, to + 4) && e.replySport === sport && e.replyDport === dport;
    if (e.proto === p && (isOrig || isReply)) this.clashes++;
    else this.collisions++;
    this.lastInsertFull = false;
    return false;
  }

  /**
   * Track a new IPv6 flow: `t` holds the 16 words of its tuple (CT6_ORIG_SRC,
   * CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST; the endpoint is the reply
   * source), read and copied. As Conntrack.insert: null when refused
   * (clashes, collisions), a least recently used flow evicted when full;
   * call update() with the first packet.
   */
  insert6(
    proto: number, t: Uint32Array, origSport: number, origDport: number, replySport: number, replyDport: number,
    now: number, info: ConntrackInfo6,
  ): ConntrackEntry | null {
    checkProto6(proto);
    const p = proto === PROTO_ICMPV6 ? PROTO_ICMP : proto;
    const h = this.hash;
    this.hashTuple6(p, t, CT6_ORIG_SRC, CT6_ORIG_DST, origSport, origDport);
    const origHi = h[0];
    const origLo = h[1];
    this.hashTuple6(p, t, CT6_REPLY_SRC, CT6_REPLY_DST, replySport, replyDport);
    return this.insert6Keyed(proto, t, origSport, origDport, replySport, replyDport, now, info, origHi, origLo, h[0], h[1]);
  }

  /**
   * insert6 with both keys hashed already: (origHi, origLo) is what lookup6
   * left in lookupHi/lookupLo for the original tuple, (replyHi, replyLo) what
   * isTupleInUse6 left in probeHi/probeLo for the reply tuple (the packet
   * path asks both just before it inserts). Keys that are not those tuples'
   * would file the flow where no lookup finds it: use insert6 otherwise.
   */
  insert6Keyed(
    proto: number, t: Uint32Array, origSport: number, origDport: number, replySport: number, replyDport: number,
    now: number, info: ConntrackInfo6, origHi: number, origLo: number, replyHi: number, replyLo: number,
  ): ConntrackEntry | null {
    checkProto6(proto);
    const p = proto === PROTO_ICMPV6 ? PROTO_ICMP : proto;
    if (origHi === replyHi && origLo === replyLo) {
      if (same4(t, 0, t, 8) && same4(t, 4, t, 12) && origSport === replySport && origDport === replyDport) this.clashes++;
      else this.collisions++;
      this.lastInsertFull = false;
      return null;
    }
    if (!this.vacate6(origHi, origLo, p, t, CT6_ORIG_SRC, origSport, origDport, now)) return null;
    if (!this.vacate6(replyHi, replyLo, p, t, CT6_REPLY_SRC, replySport, replyDport, now)) return null;
    const slot = this.freeSlot(now);
    if (slot < 0) return null;
    const e = new ConntrackEntry(
      p, fold(t, 0), fold(t, 4), origSport, origDport, fold(t, 8), fold(t, 12), replySport, replyDport,
      now, now + initialTimeout(this.t, p), info.serviceName, info.serviceIndex, info.masquerade,
    );
    if (slot === this.flows.length) this.flows.push(e);
    else this.flows[slot] = e;
    e._slot = slot;
    const ws = this.words;
    const b = slot * CT6_WORDS;
    for (let i = 0; i < CT6_WORDS; i++) ws[b + i] = t[i];
    this.index.insert(origHi, origLo, slot * 2);
    this.index.insert(replyHi, replyLo, slot * 2 + 1);
    this.inserts++;
    return e;
  }

  /**
   * The words of a live flow's tuple: a view of 16 words (CT6_ORIG_SRC …),
   * valid until the table changes (copy what you keep). Not for the packet
   * path: use wordsOf/wordsAt there.
   */
  entryWords(e: ConntrackEntry): Uint32Array {
    if (!e.live) throw new Error('conntrack6: the flow is no longer in the table');
    return this.words.subarray(e._slot * CT6_WORDS, e._slot * CT6_WORDS + CT6_WORDS);
  }

  /** The side array itself (for the packet path, no allocation): the flow's tuple is at wordsAt(e). */
  get wordArray(): Uint32Array {
    return this.words;
  }

  /** Where a live flow's 16 words start in wordArray. */
  wordsAt(e: ConntrackEntry): number {
    return e._slot * CT6_WORDS;
  }

  /** One address of a live flow as text: which = CT6_ORIG_SRC, … */
  address(e: ConntrackEntry, which: number): string {
    return formatIPv6(this.words, e._slot * CT6_WORDS + which);
  }

  /** The protocol as the outside sees it (58 for ICMPv6). */
  protoOf(e: ConntrackEntry): number {
    return e.proto === PROTO_ICMP ? PROTO_ICMPV6 : e.proto;
  }

  /** The stale-entry fix for IPv6: remove the flows whose endpoint is w[o..o+4) port `port` (ICMPv6: any id). */
  removeByEndpoint6(proto: number, w: Uint32Array, o: number, port: number): number {
    const p = proto === PROTO_ICMPV6 ? PROTO_ICMP : proto;
    const anyPort = p === PROTO_ICMP;
    return this.deleteWhere((e) => e.proto === p && same4(this.words, e._slot * CT6_WORDS + CT6_REPLY_SRC, w, o) && (anyPort || e.replySport === port));
  }

  override list(now: number = this.clock(), options?: FormatOptions): string {
    let out = '';
    for (const e of this.entries(now)) {
      out += formatConntrackL6(e, now, {
        origSrc: this.address(e, CT6_ORIG_SRC),
        origDst: this.address(e, CT6_ORIG_DST),
        replySrc: this.address(e, CT6_REPLY_SRC),
        replyDst: this.address(e, CT6_REPLY_DST),
      }, options) + '\n';
    }
    return out;
  }

  override snapshot(now: number = this.clock()): ConntrackSnapshotItem[] {
    const items: ConntrackSnapshotItem[] = [];
    for (const e of this.entries(now)) {
      items.push(snapshotItem(e, now, this.protoOf(e), this.address(e, CT6_ORIG_SRC), this.address(e, CT6_ORIG_DST), this.address(e, CT6_REPLY_SRC), this.address(e, CT6_REPLY_DST)));
    }
    return items;
  }

  /** As Conntrack.restore, for IPv6 items (addresses as IPv6 text, ICMPv6 as 58). */
  override restore(items: unknown, now: number = this.clock()): number {
    if (!Array.isArray(items)) throw new TypeError('conntrack restore: expected an array of flows');
    const checked = items.map((item, i) => checkSnapshotItemOf(item, i, IPV6_FAMILY));
    const t = this.scratch;
    let n = 0;
    for (const it of checked) {
      if (it.remainingMs <= 0) continue;
      t.set(it.origSrc, CT6_ORIG_SRC);
      t.set(it.origDst, CT6_ORIG_DST);
      t.set(it.replySrc, CT6_REPLY_SRC);
      t.set(it.replyDst, CT6_REPLY_DST);
      const e = this.insert6(it.proto, t, it.origSport, it.origDport, it.replySport, it.replyDport, now, {
        serviceName: it.serviceName,
        serviceIndex: it.serviceIndex,
        masquerade: it.masquerade,
      });
      if (e === null) continue;
      e.state = it.state;
      e.expires = now + it.remainingMs;
      e.created = now - it.ageMs;
      e.seenReply = it.seenReply;
      e.assured = it.assured;
      e.origPackets = it.origPackets;
      e.origBytes = it.origBytes;
      e.replyPackets = it.replyPackets;
      e.replyBytes = it.replyBytes;
      n++;
    }
    return n;
  }
}
