/**
 * The connection table read and changed from the packet thread in slices of
 * bounded time, for listings and deletes that the control side asks for.
 *
 * A listing is taken flow by flow over many turns of the event loop (one
 * slice of at most SLICE_MS per turn, then packets move again), so it is not
 * an atomic snapshot — no more than the kernel's `conntrack -L`, a netlink
 * dump over many messages: a flow that comes or goes during the listing may
 * be in it or not. The flows travel as numbers (FIELDS per flow in a
 * Float64Array whose buffer is transferred, the service names beside them)
 * and are formatted on the control side.
 */
import { performance } from 'node:perf_hooks';
import type { Conntrack, ConntrackEntry } from '../../dataplane/conntrack.ts';
import type { Conntrack6 } from '../../dataplane/conntrack6.ts';
import { CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST } from '../../dataplane/conntrack6.ts';
import { formatConntrackL, formatConntrackL6 } from '../../dataplane/conntrack-format.ts';
import type { FormatOptions } from '../../dataplane/conntrack-format.ts';
import { SLICE_MS } from '../../dataplane/loop.ts';
import { packetCpuShare } from '../../dataplane/cpu-share.ts';

/** A flow as plain data: what `formatConntrackL` and `flowJson` read of a ConntrackEntry. */
export class FlowRecord {
  proto = 0;
  origSrc = 0;
  origDst = 0;
  origSport = 0;
  origDport = 0;
  replySrc = 0;
  replyDst = 0;
  replySport = 0;
  replyDport = 0;
  expires = 0;
  created = 0;
  state = 0;
  seenReply = false;
  assured = false;
  origPackets = 0;
  origBytes = 0;
  replyPackets = 0;
  replyBytes = 0;
  masquerade = false;
  serviceName = '';
  /** an IPv6 flow: its addresses as text (original src, dst, reply src, dst); null for IPv4 */
  addrs6: FlowAddrs6 | null = null;
  get endpointAddr(): number {
    return this.replySrc;
  }
  get endpointPort(): number {
    return this.replySport;
  }
}

export const FIELDS = 19;

/** An IPv6 flow's addresses as text (the numeric address fields of its record are 0). */
export interface FlowAddrs6 {
  origSrc: string;
  origDst: string;
  replySrc: string;
  replyDst: string;
}

/** One `conntrack -L` line of a flow of either family. */
export function formatFlowL(f: FlowRecord, now: number, options?: FormatOptions): string {
  const e = f as unknown as ConntrackEntry;
  return f.addrs6 === null ? formatConntrackL(e, now, options) : formatConntrackL6(e, now, f.addrs6, options);
}

export function packFlow(e: ConntrackEntry, a: Float64Array, o: number): void {
  a[o] = e.proto;
  a[o + 1] = e.origSrc;
  a[o + 2] = e.origDst;
  a[o + 3] = e.origSport;
  a[o + 4] = e.origDport;
  a[o + 5] = e.replySrc;
  a[o + 6] = e.replyDst;
  a[o + 7] = e.replySport;
  a[o + 8] = e.replyDport;
  a[o + 9] = e.expires;
  a[o + 10] = e.created;
  a[o + 11] = e.state;
  a[o + 12] = e.seenReply ? 1 : 0;
  a[o + 13] = e.assured ? 1 : 0;
  a[o + 14] = e.origPackets;
  a[o + 15] = e.origBytes;
  a[o + 16] = e.replyPackets;
  a[o + 17] = e.replyBytes;
  a[o + 18] = e.masquerade ? 1 : 0;
}

export function unpackFlow(a: Float64Array, o: number, serviceName: string, addrs6: FlowAddrs6 | null = null): FlowRecord {
  const f = new FlowRecord();
  f.proto = a[o];
  f.origSrc = a[o + 1];
  f.origDst = a[o + 2];
  f.origSport = a[o + 3];
  f.origDport = a[o + 4];
  f.replySrc = a[o + 5];
  f.replyDst = a[o + 6];
  f.replySport = a[o + 7];
  f.replyDport = a[o + 8];
  f.expires = a[o + 9];
  f.created = a[o + 10];
  f.state = a[o + 11];
  f.seenReply = a[o + 12] === 1;
  f.assured = a[o + 13] === 1;
  f.origPackets = a[o + 14];
  f.origBytes = a[o + 15];
  f.replyPackets = a[o + 16];
  f.replyBytes = a[o + 17];
  f.masquerade = a[o + 18] === 1;
  f.serviceName = serviceName;
  f.addrs6 = addrs6;
  return f;
}

/** One slice of a listing: `count` flows packed in `data`, their service names in `names`. */
export interface FlowChunk {
  data: Float64Array;
  names: string[];
  count: number;
  /** flows that matched so far (also those past the limit) */
  matched: number;
  shown: number;
  done: boolean;
  /** the packet thread's clock when the listing began (ms) */
  now: number;
  /** per flow: its addresses as text when it is an IPv6 flow, else null (absent: all IPv4) */
  addrs6?: (FlowAddrs6 | null)[];
}

export function unpackChunk(c: FlowChunk): FlowRecord[] {
  const out = new Array<FlowRecord>(c.count);
  for (let i = 0; i < c.count; i++) out[i] = unpackFlow(c.data, i * FIELDS, c.names[i], c.addrs6?.[i] ?? null);
  return out;
}

/** At most this many flows per chunk (~150 KB). */
export const CHUNK_FLOWS = 1024;

/**
 * A listing of the flows `pred` accepts, taken in slices: each `next()`
 * works at most SLICE_MS (the clock is read every 256 flows) and returns the
 * flows it found; flows past `limit` are counted, not shown.
 */
export class FlowLister {
  private it: IterableIterator<ConntrackEntry>;
  /** the IPv6 table, listed after the IPv4 one (null: none, or being listed now) */
  private next6: Conntrack6 | null;
  private in6: Conntrack6 | null = null;
  private matched = 0;
  private shown = 0;
  private finished = false;
  readonly now: number;

  /**
   * `ct6`: the IPv6 connection table (Pipeline.conntrackV6), listed after the IPv4 one; `pred6`
   * says which IPv6 flows to list (the filters on IPv4 addresses match none: default none).
   */
  constructor(
    ct: Conntrack,
    private readonly pred: (e: ConntrackEntry) => boolean,
    private readonly limit: number,
    ct6: Conntrack6 | null = null,
    private readonly pred6: (e: ConntrackEntry) => boolean = () => false,
  ) {
    this.now = ct.now();
    this.it = ct.entries(this.now);
    this.next6 = ct6;
  }

  next(): FlowChunk {
    const data = new Float64Array(CHUNK_FLOWS * FIELDS);
    const names: string[] = [];
    let addrs6: (FlowAddrs6 | null)[] | undefined;
    let count = 0;
    const t0 = performance.now();
    let k = 0;
    while (!this.finished && count < CHUNK_FLOWS) {
      const r = this.it.next();
      if (r.done) {
        if (this.next6 !== null && this.next6.size > 0) {
          this.in6 = this.next6;
          this.next6 = null;
          this.it = this.in6.entries(this.now);
          continue;
        }
        this.finished = true;
        break;
      }
      const e = r.value;
      const six = this.in6;
      if (six === null ? this.pred(e) : this.pred6(e)) {
        this.matched++;
        if (this.shown < this.limit) {
          this.shown++;
          packFlow(e, data, count * FIELDS);
          names.push(e.serviceName);
          if (six !== null) {
            addrs6 ??= new Array<FlowAddrs6 | null>(count).fill(null);
            addrs6.push({ origSrc: six.address(e, CT6_ORIG_SRC), origDst: six.address(e, CT6_ORIG_DST), replySrc: six.address(e, CT6_REPLY_SRC), replyDst: six.address(e, CT6_REPLY_DST) });
          } else addrs6?.push(null);
          count++;
        }
      }
      if (++k % 256 === 0 && performance.now() - t0 >= SLICE_MS) break;
    }
    return { data, names, count, matched: this.matched, shown: this.shown, done: this.finished, now: this.now, addrs6 };
  }
}

/** Remove the flows `pred` accepts, in slices of at most SLICE_MS, one per turn of the event loop. */
export function deleteFlowsSliced(ct: Conntrack, pred: (e: ConntrackEntry) => boolean): Promise<number> {
  const cursor = { at: Infinity };
  let deleted = 0;
  return new Promise((resolve) => {
    const slice = () => {
      packetCpuShare.check();
      const t0 = performance.now();
      do {
        deleted += ct.sweepSome(cursor, 256, pred);
        if (cursor.at < 0) return resolve(deleted);
      } while (performance.now() - t0 < SLICE_MS);
      setImmediate(slice);
    };
    slice();
  });
}
