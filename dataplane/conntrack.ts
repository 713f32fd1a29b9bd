/**
 * The connection table: one entry per flow, found from both directions.
 *
 * A flow has an original tuple (the first packet as it arrived, before NAT)
 * and a reply tuple (the reply packets as they arrive, before reverse NAT:
 * src = endpoint, dst = masquerade address or the original source, sport =
 * endpoint port, dport = SNAT port or the original source port). One entry
 * per flow, found from both directions: the key index holds two numeric keys
 * per flow, original-key -> (slot, ORIGINAL) and reply-key -> (slot, REPLY).
 * A key is a 64-bit hash of the tuple (two 32-bit murmur3 mixes, held as two
 * int32s, seeded per table like netfilter's nf_conntrack_hash_rnd; the brief's
 * single 53-bit number would be boxed by V8); the entry keeps both tuples
 * and every lookup verifies them, so a hash collision is a miss, never a
 * wrong match, and an insert whose key is taken by another live flow is
 * refused and counted, never overwritten.
 *
 * Storage: a preallocated open-addressing index (conntrack-index.ts, typed
 * array, no allocation per lookup) and a dense array of entries. When the
 * table is full (maxEntries, like nf_conntrack_max) an insert evicts a flow
 * that is not assured and not looked up recently (CLOCK second chance, an LRU
 * approximation); assured flows are never evicted, as netfilter's early drop
 * spares them: when the slots the hand looks at hold only assured flows, the
 * new flow is refused (`full`, netfilter's "table full, dropping packet").
 *
 * Per-packet use (no allocation on an established flow):
 *
 *   const e = ct.lookup(proto, src, dst, sport, dport, now);
 *   if (e !== null) {
 *     const dir = ct.lastDirection;                 // CT_DIR_ORIGINAL / CT_DIR_REPLY
 *     const r = ct.update(e, dir, tcpFlags, ipTotalLength, now);
 *     // CT_UPDATE_OK / _IGNORED: translate with the other tuple
 *     // CT_UPDATE_INVALID: netfilter's ctstate INVALID (kube-proxy drops it)
 *     // CT_UPDATE_REOPEN: the old flow is gone; handle as a new flow
 *   } else {
 *     // miss: service lookup, endpoint select, SNAT port (isTupleInUse),
 *     const n = ct.insert(proto, ...orig, ...reply, now, info);
 *     if (n === null) drop('conntrack_insert_failed') else ct.update(n, CT_DIR_ORIGINAL, ...)
 *   }
 *
 * insert() does not count the packet: call update() for every packet,
 * the first one included. Addresses are unsigned 32-bit numbers (addr.ts);
 * ICMP echo is keyed by its identifier in both port slots (sport = dport = id).
 */

import { formatIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import {
  initialTimeout,
  resolveTimeouts,
  SCTP_CLOSING_CHUNK_ABORT,
  SCTP_CLOSING_CHUNK_SHUTDOWN_COMPLETE,
  SCTP_CT_CLOSED,
  SCTP_CT_COOKIE_WAIT,
  SCTP_CT_ESTABLISHED,
  TCP_CT_ESTABLISHED,
  TCP_CT_IGNORE,
  TCP_CT_INVALID,
  TCP_CT_SYN_RECV,
  TCP_CT_SYN_SENT,
  TCP_CT_TIME_WAIT,
  TCP_RST_SET,
  tcpFlagsIndex,
  tcpFlagsValid,
  tcpNextState,
  tcpTimeoutTable,
  UDP_STREAM_AFTER_MS,
  type Timeouts,
} from './conntrack-state.ts';
import { TupleIndex } from './conntrack-index.ts';
import { conntrackHash, ConntrackEntry, type ConntrackInfo } from './conntrack-entry.ts';
import { formatConntrackList, type FormatOptions } from './conntrack-format.ts';
import { restoreEntries, snapshotEntries, type ConntrackSnapshotItem } from './conntrack-snapshot.ts';

export * from './conntrack-state.ts';
export * from './conntrack-entry.ts';
export * from './conntrack-format.ts';
export * from './conntrack-snapshot.ts';

/** Direction of a packet relative to its flow (enum ip_conntrack_dir). */
export const CT_DIR_ORIGINAL = 0;
export const CT_DIR_REPLY = 1;

/** update(): the packet advanced or refreshed the flow. */
export const CT_UPDATE_OK = 0;
/** update(): netfilter's sIG: the packet passes, state and timer unchanged (a retransmitted SYN/ACK, ...). */
export const CT_UPDATE_IGNORED = 1;
/** update(): netfilter's sIV / tcp_error(): the packet is ctstate INVALID; state, timer and counters unchanged. */
export const CT_UPDATE_INVALID = 2;
/**
 * update(): a SYN on a TIME_WAIT/CLOSE flow opens a new connection with the
 * same tuple. Like netfilter (nf_ct_kill + NF_REPEAT) the old entry has been
 * removed: handle the packet as the first packet of a new flow.
 */
export const CT_UPDATE_REOPEN = 3;

export interface ConntrackOptions {
  /** flows tracked at most (nf_conntrack_max); default 262144 */
  maxEntries?: number;
  /** milliseconds; used where a method's `now` is omitted. Default performance.now() */
  clock?: () => number;
  timeouts?: Partial<Timeouts>;
  /** hash seed; default random per table (a fixed seed makes keys reproducible) */
  seed?: number;
}

// ---- the table ------------------------------------------------------------------

/**
 * How many slots the eviction hand looks at for one insert: the first flow
 * that is expired, or neither assured nor looked up since the hand last
 * passed, is taken; else the first one not assured it passed; else the new
 * flow is refused. An insert into a full table stays O(1).
 */
const MAX_CLOCK_STEPS = 64;

/** @internal throws unless the protocol is tracked (IPv4: TCP, UDP, ICMP, SCTP) */
export function checkProto(proto: number): void {
  if (proto !== PROTO_TCP && proto !== PROTO_UDP && proto !== PROTO_ICMP && proto !== PROTO_SCTP) {
    throw new RangeError(`conntrack: protocol ${proto} is not tracked (TCP 6, UDP 17, SCTP 132, ICMP 1)`);
  }
}

export class Conntrack {
  /** direction of the last successful lookup(): CT_DIR_ORIGINAL or CT_DIR_REPLY */
  lastDirection = 0;
  /** flows inserted */
  inserts = 0;
  /** flows pushed out because the table was full */
  evictions = 0;
  /** inserts refused because a key was taken by another flow's different tuple */
  collisions = 0;
  /** inserts refused because the original or reply tuple is already tracked (netfilter's insert clash) */
  clashes = 0;
  /** inserts refused because the table was full and the slots the eviction hand looked at held only assured flows (netfilter's `drop`) */
  full = 0;
  /** why the last insert() that returned null did: true when the table was full (`full`), false for a taken key (written on refusals only: read it just after a null) */
  lastInsertFull = false;
  /** flows removed because their timer ran out (sweep, lookup, insert or eviction found them dead) */
  expired = 0;

  readonly maxEntries: number;
  readonly timeouts: Readonly<Timeouts>;
  readonly clock: () => number;
  readonly seed: number;

  /** tuple hash -> slot * 2 + direction */
  protected readonly index: TupleIndex;
  /** hashTuple's result: [hi, lo] */
  protected readonly hash = new Int32Array(2);
  /** live flows, dense; entry._slot is the position */
  protected readonly flows: ConntrackEntry[] = [];
  /** the eviction clock's hand: the next slot it looks at */
  private hand = 0;
  /** where a partial expire() sweep continues */
  private sweepCursor = -1;
  private readonly tcpTimeouts: Float64Array;
  protected readonly t: Timeouts;

  constructor(options: ConntrackOptions = {}) {
    const maxEntries = options.maxEntries ?? 262144;
    if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > 2 ** 26) {
      throw new RangeError(`conntrack: maxEntries must be an integer from 1 to 2^26, got ${maxEntries}`);
    }
    if (options.clock !== undefined && typeof options.clock !== 'function') {
      throw new TypeError('conntrack: clock must be a function returning milliseconds');
    }
    if (options.seed !== undefined && !Number.isInteger(options.seed)) {
      throw new TypeError(`conntrack: seed must be an integer, got ${options.seed}`);
    }
    this.maxEntries = maxEntries;
    this.t = resolveTimeouts(options.timeouts);
    this.timeouts = Object.freeze({ ...this.t });
    this.tcpTimeouts = tcpTimeoutTable(this.t);
    this.clock = options.clock ?? (() => performance.now());
    this.seed = options.seed !== undefined ? options.seed | 0 : crypto.getRandomValues(new Int32Array(1))[0];
    this.index = new TupleIndex(2 * maxEntries);
  }

  /** tracked flows (each has two keys) */
  get size(): number {
    return this.flows.length;
  }

  /** keys in the index: always 2 × size */
  get keyCount(): number {
    return this.index.size;
  }

  now(): number {
    return this.clock();
  }

  /**
   * Hash a tuple into this.hash[0] (hi) and this.hash[1] (lo), int32 each.
   * Tests may override it (in a subclass) to force collisions.
   */
  protected hashTuple(proto: number, src: number, dst: number, sport: number, dport: number): void {
    conntrackHash(this.seed, proto, src, dst, sport, dport, this.hash);
  }

  /**
   * The flow a packet belongs to, or null. Sets `lastDirection`. A flow whose
   * timer ran out (expires <= now) is removed and reported as a miss.
   */
  lookup(proto: number, src: number, dst: number, sport: number, dport: number, now: number): ConntrackEntry | null {
    this.hashTuple(proto, src, dst, sport, dport);
    const v = this.index.find(this.hash[0], this.hash[1]);
    if (v < 0) return null;
    const e = this.flows[v >>> 1];
    const dir = v & 1;
    const s = src | 0;
    const d = dst | 0;
    if (dir === 0) {
      if (e._origSrc !== s || e._origDst !== d || e.origSport !== sport || e.origDport !== dport || e.proto !== proto) return null;
    } else if (e._replySrc !== s || e._replyDst !== d || e.replySport !== sport || e.replyDport !== dport || e.proto !== proto) {
      return null; // a different tuple with the same key
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

  /**
   * Whether a tuple is unusable for a new flow: a live flow has it as its
   * original or reply tuple, or its key is taken (insert would be refused).
   * The NAT asks this when it picks a masquerade source port, like nf_nat's
   * nf_nat_used_tuple. With `now`, a flow found expired is removed first.
   */
  isTupleInUse(proto: number, src: number, dst: number, sport: number, dport: number, now?: number): boolean {
    this.hashTuple(proto, src, dst, sport, dport);
    const v = this.index.find(this.hash[0], this.hash[1]);
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

  /**
   * Track a new flow. Returns the entry, or null when refused: the original
   * and reply tuples are identical, one of them is already tracked
   * (`clashes`), a key is taken by a different tuple (`collisions`), or the
   * table is full of assured flows where the eviction hand looked (`full`,
   * `lastInsertFull`). When the table is full a least recently used flow that
   * is not assured is evicted (`evictions`).
   * The entry starts in state NONE (TCP) with its protocol's initial lifetime;
   * call update() with the first packet. `info` is read, not kept (a scratch
   * object reused for every insert is fine); its serviceName is kept by reference.
   */
  insert(
    proto: number,
    origSrc: number,
    origDst: number,
    origSport: number,
    origDport: number,
    replySrc: number,
    replyDst: number,
    replySport: number,
    replyDport: number,
    now: number,
    info: ConntrackInfo,
  ): ConntrackEntry | null {
    checkProto(proto);
    if ((info.endpointAddr | 0) !== (replySrc | 0) || (proto !== PROTO_ICMP && info.endpointPort !== replySport)) {
      throw new Error(
        `conntrack insert: endpoint ${formatIPv4(info.endpointAddr >>> 0)}:${info.endpointPort} is not the reply tuple's source ${formatIPv4(replySrc >>> 0)}:${replySport}`,
      );
    }
    this.hashTuple(proto, origSrc, origDst, origSport, origDport);
    const origHi = this.hash[0];
    const origLo = this.hash[1];
    this.hashTuple(proto, replySrc, replyDst, replySport, replyDport);
    const replyHi = this.hash[0];
    const replyLo = this.hash[1];
    if (origHi === replyHi && origLo === replyLo) {
      if ((origSrc | 0) === (replySrc | 0) && (origDst | 0) === (replyDst | 0) && origSport === replySport && origDport === replyDport) {
        this.clashes++;
      } else {
        this.collisions++;
      }
      this.lastInsertFull = false;
      return null;
    }
    if (!this.vacate(origHi, origLo, proto, origSrc, origDst, origSport, origDport, now)) return null;
    if (!this.vacate(replyHi, replyLo, proto, replySrc, replyDst, replySport, replyDport, now)) return null;
    const slot = this.freeSlot(now);
    if (slot < 0) return null;
    const e = new ConntrackEntry(
      proto,
      origSrc,
      origDst,
      origSport,
      origDport,
      replySrc,
      replyDst,
      replySport,
      replyDport,
      now,
      now + initialTimeout(this.t, proto),
      info.serviceName,
      info.serviceIndex,
      info.masquerade,
    );
    if (slot === this.flows.length) this.flows.push(e);
    else this.flows[slot] = e;
    e._slot = slot;
    this.index.insert(origHi, origLo, slot * 2);
    this.index.insert(replyHi, replyLo, slot * 2 + 1);
    this.inserts++;
    return e;
  }

  /** true when the hash is free (or was held by an expired flow, now removed); counts the refusal otherwise */
  private vacate(hi: number, lo: number, proto: number, src: number, dst: number, sport: number, dport: number, now: number): boolean {
    const v = this.index.find(hi, lo);
    if (v < 0) return true;
    const e = this.flows[v >>> 1];
    if (e.expires <= now) {
      this.expired++;
      this.unlink(e);
      return true;
    }
    if (hasTuple(e, proto, src, dst, sport, dport)) this.clashes++;
    else this.collisions++;
    this.lastInsertFull = false;
    return false;
  }

  /**
   * The slot a new flow goes into: the next one while the table has room,
   * else one evictForInsert frees; -1 (counted in `full`) when it frees none.
   */
  protected freeSlot(now: number): number {
    if (this.flows.length < this.maxEntries) return this.flows.length;
    const slot = this.evictForInsert(now);
    if (slot < 0) {
      this.full++;
      this.lastInsertFull = true;
    }
    return slot;
  }

  /**
   * The table is full: free one slot for a new flow, CLOCK (second chance)
   * style, an approximation of least-recently-used, sparing assured flows
   * as netfilter's early drop does (an established connection is never
   * pushed out by new ones). The hand walks at most MAX_CLOCK_STEPS slots:
   * an expired flow is taken; a flow not assured and not looked up since the
   * hand last passed (_touched) is taken, one looked up is spared once and
   * its bit cleared; assured flows are passed over. If none was taken, the
   * first flow not assured that the hand passed is; if every slot it looked
   * at held an assured flow, -1 (the hand has moved on: the next insert
   * looks further).
   */
  protected evictForInsert(now: number): number {
    const flows = this.flows;
    const n = flows.length;
    let h = this.hand < n ? this.hand : 0;
    let spared = -1;
    for (let steps = 0; steps < MAX_CLOCK_STEPS; steps++) {
      const e = flows[h];
      if (e.expires <= now) {
        this.expired++;
        return this.takeSlot(e, h);
      }
      if (!e.assured) {
        if (e._touched === 0) {
          this.evictions++;
          return this.takeSlot(e, h);
        }
        e._touched = 0;
        if (spared < 0) spared = h;
      }
      h = h + 1 === n ? 0 : h + 1;
    }
    this.hand = h;
    if (spared < 0) return -1;
    this.evictions++;
    return this.takeSlot(flows[spared], spared);
  }

  /** evictForInsert's end: `e` out of the index and dead, its slot `h` returned, the hand just past it */
  private takeSlot(e: ConntrackEntry, h: number): number {
    this.removeKeys(e);
    e._slot = -1;
    e.live = false;
    this.hand = h + 1;
    return h;
  }

  protected removeKeys(e: ConntrackEntry): void {
    const h = this.hash;
    this.hashTuple(e.proto, e._origSrc, e._origDst, e.origSport, e.origDport);
    this.index.remove(h[0], h[1]);
    this.hashTuple(e.proto, e._replySrc, e._replyDst, e.replySport, e.replyDport);
    this.index.remove(h[0], h[1]);
  }

  /** remove both keys and the slot (the last flow moves into it); a no-op for a flow already removed */
  protected unlink(e: ConntrackEntry): void {
    if (!e.live) return;
    this.removeKeys(e);
    const flows = this.flows;
    const slot = e._slot;
    const last = flows.pop()!;
    if (last !== e) this.moveSlot(last, flows.length, slot);
    e._slot = -1;
    e.live = false;
  }

  /** the last flow (at slot `from`, just popped) fills the hole at `to`: its keys point there now */
  protected moveSlot(last: ConntrackEntry, from: number, to: number): void {
    this.flows[to] = last;
    last._slot = to;
    const h = this.hash;
    this.hashTuple(last.proto, last._origSrc, last._origDst, last.origSport, last.origDport);
    this.index.setValue(h[0], h[1], to * 2);
    this.hashTuple(last.proto, last._replySrc, last._replyDst, last.replySport, last.replyDport);
    this.index.setValue(h[0], h[1], to * 2 + 1);
    void from;
  }

  /** Remove a flow; false when it was no longer in the table. */
  delete(entry: ConntrackEntry): boolean {
    if (!entry.live) return false;
    this.unlink(entry);
    return true;
  }

  /** Remove every flow the predicate accepts; returns how many. */
  deleteWhere(pred: (entry: ConntrackEntry) => boolean): number {
    const flows = this.flows;
    let n = 0;
    // backwards: removing flows[i] moves the (already visited) last flow into i
    for (let i = flows.length - 1; i >= 0; i--) {
      if (i >= flows.length) continue;
      const e = flows[i];
      if (pred(e) && e.live) {
        this.unlink(e);
        n++;
      }
    }
    return n;
  }

  /**
   * The stale-entry fix: remove every flow whose endpoint (the reply tuple's
   * source) is addr:port for this protocol, when that endpoint leaves the rule
   * set, so no packet keeps going to a gone backend (kube-proxy's stale UDP
   * conntrack problem). For ICMP the port is ignored.
   */
  removeByEndpoint(proto: number, addr: number, port: number): number {
    const a = addr | 0;
    const anyPort = proto === PROTO_ICMP;
    return this.deleteWhere((e) => e.proto === proto && e._replySrc === a && (anyPort || e.replySport === port));
  }

  /** One pass for many endpoints: keep the flows `isLive` accepts, remove the rest. */
  removeStale(isLive: (entry: ConntrackEntry) => boolean): number {
    return this.deleteWhere((e) => !isLive(e));
  }

  /**
   * Sweep: remove flows whose timer ran out; returns how many. Off the hot
   * path (the loop runs it about once a second). A full sweep reads every
   * entry (about 20 ms at 1 million flows here); with `maxVisits` it checks at
   * most that many slots, continuing where the previous partial sweep
   * stopped, so the work can be spread (lookups remove expired flows they
   * meet in any case).
   */
  expire(now: number = this.clock(), maxVisits: number = Infinity): number {
    const flows = this.flows;
    let n = 0;
    if (maxVisits >= flows.length) {
      for (let i = flows.length - 1; i >= 0; i--) {
        const e = flows[i];
        if (e.expires <= now) {
          this.unlink(e);
          n++;
        }
      }
    } else {
      // downwards from the cursor: a removal moves the last flow (above, already seen this round) into the hole
      let i = this.sweepCursor;
      for (let visits = 0; visits < maxVisits && flows.length > 0; visits++) {
        if (i < 0 || i >= flows.length) i = flows.length - 1;
        const e = flows[i];
        if (e.expires <= now) {
          this.unlink(e);
          n++;
        }
        i--;
      }
      this.sweepCursor = i;
    }
    this.expired += n;
    return n;
  }

  /**
   * One slice of a sweep spread over many turns of the event loop: visits at
   * most `maxVisits` flows downwards from `cursor.at` (start with Infinity),
   * removing those `remove` accepts; returns how many. The sweep is complete
   * when `cursor.at` < 0. Flows may come and go between slices: a flow
   * present for the whole sweep is visited at least once (a removal moves the
   * last flow, already visited, into the hole); flows inserted meanwhile are not.
   */
  sweepSome(cursor: { at: number }, maxVisits: number, remove: (entry: ConntrackEntry) => boolean): number {
    const flows = this.flows;
    let i = Math.min(cursor.at, flows.length - 1);
    let n = 0;
    for (let visits = 0; visits < maxVisits && i >= 0; visits++, i--) {
      if (i >= flows.length) continue;
      const e = flows[i];
      if (remove(e) && e.live) {
        this.unlink(e);
        n++;
      }
    }
    cursor.at = i;
    return n;
  }

  /** Remove every flow (counters are kept). */
  clear(): void {
    for (const e of this.flows) {
      e.live = false;
      e._slot = -1;
    }
    this.flows.length = 0;
    this.index.clear();
    this.hand = 0;
  }

  /**
   * The tracked flows, each once, in slot order. With `now`, flows whose
   * timer ran out but that the sweep has not removed yet are skipped. The
   * consumer may delete the flow it was just given; it must not insert or
   * remove other flows while iterating (use deleteWhere).
   */
  *entries(now?: number): IterableIterator<ConntrackEntry> {
    const flows = this.flows;
    let i = 0;
    while (i < flows.length) {
      const e = flows[i];
      if (now === undefined || e.expires > now) yield e;
      // when e was removed, the last flow moved into slot i: look at it next
      if (flows[i] === e) i++;
    }
  }

  // ---- per-packet state -------------------------------------------------------

  /**
   * Account one packet of a flow and advance its state; sets
   * `expires = now + timeout(state)`. `flags` is the TCP flags byte for TCP,
   * the first chunk's type for SCTP, ignored for UDP and ICMP. `bytes` is
   * what the counters add (netfilter counts the IP total length).
   * Returns CT_UPDATE_OK, CT_UPDATE_IGNORED, CT_UPDATE_INVALID or CT_UPDATE_REOPEN.
   */
  update(entry: ConntrackEntry, direction: number, flags: number, bytes: number, now: number): number {
    switch (entry.proto) {
      case PROTO_TCP:
        return this.updateTcp(entry, direction, flags, bytes, now);
      case PROTO_UDP: {
        // nf_conntrack_udp_packet: the flags as they were before this packet
        let timeout = this.t.udp;
        if (entry.seenReply && now > entry.created + UDP_STREAM_AFTER_MS) {
          timeout = this.t.udpStream;
          entry.assured = true;
        }
        account(entry, direction, bytes);
        entry.expires = now + timeout;
        return CT_UPDATE_OK;
      }
      case PROTO_ICMP:
        account(entry, direction, bytes);
        entry.expires = now + this.t.icmp;
        return CT_UPDATE_OK;
      default:
        return this.updateSctp(entry, direction, flags, bytes, now);
    }
  }

  /** tcp_packet(), without sequence/window tracking (tcp_in_window) */
  private updateTcp(e: ConntrackEntry, dir: number, flags: number, bytes: number, now: number): number {
    if (!tcpFlagsValid(flags)) return CT_UPDATE_INVALID;
    const index = tcpFlagsIndex(flags);
    const old = e.state;
    const next = tcpNextState(dir, index, old);
    if (next === TCP_CT_INVALID) return CT_UPDATE_INVALID;
    if (next === TCP_CT_IGNORE) return CT_UPDATE_IGNORED;
    if (next === TCP_CT_SYN_SENT && old >= TCP_CT_TIME_WAIT) {
      // a closed or aborted connection reopened: netfilter kills it and starts over
      this.unlink(e);
      return CT_UPDATE_REOPEN;
    }
    let timeout = index === TCP_RST_SET ? this.t.tcpClose : this.tcpTimeouts[next];
    if (!e.seenReply) {
      if (index === TCP_RST_SET) {
        // "If only reply is a RST, we can consider ourselves not to have an
        // established connection": netfilter removes the flow at once
        account(e, dir, bytes);
        e.state = next;
        this.unlink(e);
        return CT_UPDATE_OK;
      }
      // ESTABLISHED without a reply: a flow picked up mid-stream
      if (next === TCP_CT_ESTABLISHED && timeout > this.t.tcpUnacknowledged) timeout = this.t.tcpUnacknowledged;
    } else if (!e.assured && (old === TCP_CT_SYN_RECV || old === TCP_CT_ESTABLISHED) && next === TCP_CT_ESTABLISHED) {
      e.assured = true;
    }
    e.state = next;
    account(e, dir, bytes);
    e.expires = now + timeout;
    return CT_UPDATE_OK;
  }

  /**
   * SCTP, a simple model (not netfilter's chunk-by-chunk machine): the first
   * packet puts the flow in COOKIE_WAIT (sctpUnreplied, 30 s); any packet once
   * a reply was seen makes it ESTABLISHED and ASSURED (sctpEstablished,
   * 5 days); an ABORT or SHUTDOWN COMPLETE chunk closes it (CLOSED, 10 s).
   */
  private updateSctp(e: ConntrackEntry, dir: number, chunkType: number, bytes: number, now: number): number {
    let timeout: number;
    if (chunkType === SCTP_CLOSING_CHUNK_ABORT || chunkType === SCTP_CLOSING_CHUNK_SHUTDOWN_COMPLETE || e.state === SCTP_CT_CLOSED) {
      e.state = SCTP_CT_CLOSED;
      timeout = this.t.sctpClosed;
    } else if (dir === CT_DIR_REPLY || e.seenReply) {
      e.state = SCTP_CT_ESTABLISHED;
      e.assured = true;
      timeout = this.t.sctpEstablished;
    } else {
      e.state = SCTP_CT_COOKIE_WAIT;
      timeout = this.t.sctpUnreplied;
    }
    account(e, dir, bytes);
    e.expires = now + timeout;
    return CT_UPDATE_OK;
  }

  // ---- listing, snapshot (conntrack-format.ts, conntrack-snapshot.ts) ----------------

  /** `conntrack -L` for the whole table: one line per live flow, each ending in "\n". */
  list(now: number = this.clock(), options?: FormatOptions): string {
    return formatConntrackList(this.entries(now), now, options);
  }

  /** Plain data (JSON-ready) for every live flow, lifetimes relative to `now`. */
  snapshot(now: number = this.clock()): ConntrackSnapshotItem[] {
    return snapshotEntries(this.entries(now), now);
  }

  /**
   * Load a snapshot (e.g. saved on SIGTERM by the previous process). Every
   * item is checked first; a malformed one throws naming the item and field,
   * and nothing is loaded. Returns how many flows were restored (an item
   * whose tuple clashes with a flow already in the table is skipped).
   */
  restore(items: unknown, now: number = this.clock()): number {
    return restoreEntries(this, items, now);
  }
}

function account(e: ConntrackEntry, dir: number, bytes: number): void {
  if (dir === CT_DIR_REPLY) {
    e.replyPackets++;
    e.replyBytes += bytes;
    e.seenReply = true;
  } else {
    e.origPackets++;
    e.origBytes += bytes;
  }
}

function hasTuple(e: ConntrackEntry, proto: number, src: number, dst: number, sport: number, dport: number): boolean {
  if (e.proto !== proto) return false;
  const s = src | 0;
  const d = dst | 0;
  return (
    (e._origSrc === s && e._origDst === d && e.origSport === sport && e.origDport === dport) ||
    (e._replySrc === s && e._replyDst === d && e.replySport === sport && e.replyDport === dport)
  );
}
