/**
 * What the control API needs of the packet thread, as asynchronous calls:
 * counters, the connection table (listed and deleted in slices), a flow's
 * tracked state and affinity for a trace, and "is generation N in force".
 *
 * Two implementations: `LocalPacketSide` when the API runs in the same
 * thread as the dataplane (tests, the library), and `RemotePacketSide`
 * (remote.ts) in the control worker of `tunproxy run`, which asks the packet
 * thread by messages that `PacketHost` (host.ts) answers. Either way the
 * packet thread works at most one slice (SLICE_MS) per turn on a request.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import type { IntervalHistogram } from 'node:perf_hooks';
import type { Dataplane } from '../dataplane.ts';
import type { LoopStats } from '../../dataplane/loop.ts';
import type { Tables } from '../../dataplane/tables.ts';
import type { Conntrack } from '../../dataplane/conntrack.ts';
import type { ConntrackQuery } from '../api/conntrack.ts';
import { conntrackFilter } from '../api/conntrack.ts';
import { EVENTS } from '../../dataplane/counters.ts';
import { packetCpuShare } from '../../dataplane/cpu-share.ts';
import { CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST } from '../../dataplane/conntrack6.ts';
import type { FlowChunk, FlowRecord } from './flows.ts';
import { FIELDS, FlowLister, deleteFlowsSliced, packFlow, unpackFlow } from './flows.ts';

/** One connection table's size and counters (`conntrack -S`'s, and tunproxy's refusals). */
export interface ConntrackStats {
  entries: number;
  max: number;
  inserts: number;
  evictions: number;
  collisions: number;
  clashes: number;
  full: number;
  expired: number;
}

export interface PacketStats {
  counters: { packets: Record<string, number>; bytes: Record<string, number>; drops: Record<string, number>; events: Record<string, number>; malformed: Record<string, number> };
  raw: { packets: number[]; bytes: number[]; drops: number[]; events: number[]; lookups: number };
  conntrack: ConntrackStats;
  /** the IPv6 connection table's, null until the first IPv6 packet made the IPv6 path */
  conntrack6: ConntrackStats | null;
  affinity: { entries: number; hits: number };
  loop: (LoopStats & { device: string }) | null;
  status: string;
  startedAt: number;
  /** generation of the tables the packet thread has in force (0: none) */
  generation: number;
  /** the packet thread's event-loop delay since the dataplane started (monitorEventLoopDelay, 1 ms resolution) */
  /** naps, napMs: the packet thread's sleeps to leave its CPU to ordinary tasks (dataplane/cpu-share.ts; 0 unless --packet-priority fifo) */
  eventLoop: { maxMs: number; p99Ms: number; meanMs: number; naps: number; napMs: number };
  /** the packet thread's JavaScript heap (threadHeap) */
  heap: ThreadHeap;
}

/**
 * One thread's JavaScript heap, from V8 (no system call: the packet thread
 * answers it between batches): the heap's objects (`usedBytes`), what V8
 * holds for them (`totalBytes`), the memory outside the heap that its objects
 * keep alive (`externalBytes`: buffers, typed arrays; a SharedArrayBuffer is
 * counted by each thread that holds it) and what V8 itself allocated with
 * malloc (`mallocedBytes`). What tells a leak on one thread from the other.
 */
export interface ThreadHeap {
  usedBytes: number;
  totalBytes: number;
  externalBytes: number;
  mallocedBytes: number;
}

export function threadHeap(): ThreadHeap {
  const h = getHeapStatistics();
  return { usedBytes: h.used_heap_size, totalBytes: h.total_heap_size, externalBytes: h.external_memory, mallocedBytes: h.malloced_memory };
}

const delays = new WeakMap<Dataplane, IntervalHistogram>();
/** The event-loop delay of the thread that moves packets (started on the first call, in that thread). */
function eventLoopOf(dp: Dataplane): PacketStats['eventLoop'] {
  let h = delays.get(dp);
  if (h === undefined) {
    h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    delays.set(dp, h);
  }
  const ms = (ns: number) => (Number.isFinite(ns) ? Math.round(ns / 1e3) / 1e3 : 0);
  return { maxMs: ms(h.max), p99Ms: ms(h.percentile(99)), meanMs: ms(h.mean), naps: packetCpuShare.naps, napMs: Math.round(packetCpuShare.napMsTotal * 1000) / 1000 };
}

/** Start measuring the packet thread's event-loop delay now (tunproxy run does at start). */
export function watchEventLoop(dp: Dataplane): void {
  eventLoopOf(dp);
}

export interface TraceFlow {
  direction: 'original' | 'reply';
  flow: FlowRecord;
}

/** An IPv6 packet as a trace asks about it: source and destination as four words each. */
export interface TracePacket6 {
  proto: number;
  src: ArrayLike<number>;
  dst: ArrayLike<number>;
  sport: number;
  dport: number;
}

export interface PacketSide {
  /** the packets move in this thread (no packet thread of their own) */
  readonly local: boolean;
  stats(): Promise<PacketStats>;
  /** the packet thread's clock (ms) */
  now(): Promise<number>;
  /** the flows the query selects, chunk by chunk (`onChunk` is awaited before the next slice is taken) */
  listFlows(q: ConntrackQuery, limit: number, onChunk: (c: FlowChunk) => Promise<void> | void): Promise<{ now: number; matched: number; shown: number }>;
  deleteFlows(q: ConntrackQuery): Promise<{ deleted: number; entries: number }>;
  /** the tracked flow a packet belongs to, and the endpoint index affinity remembers (-1) for the service port the trace found */
  traceFlow(p: { proto: number; src: number; dst: number; sport: number; dport: number }, affinity: { generation: number; svcIndex: number; setLocal: boolean } | null): Promise<{ now: number; flow: TraceFlow | null; affinityIndex: number }>;
  /** the same for an IPv6 packet (addresses as four words each): the IPv6 connection table and affinity */
  traceFlow6(p: TracePacket6, affinity: { generation: number; svcIndex: number; setLocal: boolean } | null): Promise<{ now: number; flow: TraceFlow | null; affinityIndex: number }>;
  /** resolves once the packet thread has tables of this generation (or newer) in force */
  whenInForce(generation: number): Promise<void>;
}

export function statsOfDataplane(dp: Dataplane): PacketStats {
  const p = dp.pipeline;
  const c = p.counters;
  const ctStats = (ct: Conntrack): ConntrackStats => ({ entries: ct.size, max: ct.maxEntries, inserts: ct.inserts, evictions: ct.evictions, collisions: ct.collisions, clashes: ct.clashes, full: ct.full, expired: ct.expired });
  const ct6 = p.conntrackV6;
  return {
    counters: c.snapshot(),
    raw: { packets: Array.from(c.packets), bytes: Array.from(c.bytes), drops: Array.from(c.drops), events: Array.from(c.events), lookups: c.events[EVENTS.indexOf('lookups')] },
    conntrack: ctStats(p.conntrack),
    conntrack6: ct6 === null ? null : ctStats(ct6),
    affinity: { entries: p.affinity.size, hits: p.affinity.hits },
    loop: dp.loop ? { device: dp.loop.device.name, ...dp.loop.stats } : null,
    status: dp.statusLine(),
    startedAt: dp.startedAt,
    generation: dp.tables?.generation ?? 0,
    eventLoop: eventLoopOf(dp),
    heap: threadHeap(),
  };
}

/** The packet-thread half of a trace (shared by both sides). */
export function traceFlowOn(dp: Dataplane, tables: Tables | null, p: { proto: number; src: number; dst: number; sport: number; dport: number }, aff: { generation: number; svcIndex: number; setLocal: boolean } | null) {
  const ct = dp.pipeline.conntrack;
  const now = ct.now();
  const e = ct.lookup(p.proto, p.src, p.dst, p.sport, p.dport, now);
  let flow: TraceFlow | null = null;
  if (e !== null) {
    const a = new Float64Array(FIELDS);
    packFlow(e, a, 0);
    flow = { direction: ct.lastDirection === 0 ? 'original' : 'reply', flow: unpackFlow(a, 0, e.serviceName) };
  }
  let affinityIndex = -1;
  if (aff !== null && tables !== null && tables.generation === aff.generation) {
    const svc = tables.services[aff.svcIndex];
    const set = svc ? (aff.setLocal ? svc.local : svc.cluster) : null;
    if (svc && set) {
      const hits = dp.pipeline.affinity.hits;
      affinityIndex = dp.pipeline.affinity.get(svc, set, p.src, now);
      dp.pipeline.affinity.hits = hits; // a trace is not a hit
    }
  }
  return { now, flow, affinityIndex };
}

/** traceFlowOn for an IPv6 packet: the IPv6 connection table and the IPv6 path's affinity table (neither made if missing). */
export function traceFlowOn6(dp: Dataplane, tables: Tables | null, p: TracePacket6, aff: { generation: number; svcIndex: number; setLocal: boolean } | null) {
  const pl = dp.pipeline;
  const now = pl.conntrack.now();
  const w = new Uint32Array(8);
  w.set(Array.from(p.src), 0);
  w.set(Array.from(p.dst), 4);
  const ct6 = pl.conntrackV6;
  let flow: TraceFlow | null = null;
  if (ct6 !== null) {
    const e = ct6.lookup6(p.proto, w, 0, 4, p.sport, p.dport, now);
    if (e !== null) {
      const a = new Float64Array(FIELDS);
      packFlow(e, a, 0);
      const addrs6 = { origSrc: ct6.address(e, CT6_ORIG_SRC), origDst: ct6.address(e, CT6_ORIG_DST), replySrc: ct6.address(e, CT6_REPLY_SRC), replyDst: ct6.address(e, CT6_REPLY_DST) };
      flow = { direction: ct6.lastDirection === 0 ? 'original' : 'reply', flow: unpackFlow(a, 0, e.serviceName, addrs6) };
    }
  }
  let affinityIndex = -1;
  const t6 = tables?.v6 ?? null;
  const path = pl.ipv6Path;
  if (aff !== null && t6 !== null && path !== null && tables!.generation === aff.generation) {
    const svc = t6.base.services[aff.svcIndex];
    const set = svc ? (aff.setLocal ? svc.local : svc.cluster) : null;
    if (svc && set) {
      // as Pipeline6's new flow asks it: the whole client address, keyed by its 32-bit fold
      const a6 = path.affinity;
      const hits = a6.hits;
      a6.client6(w, 0);
      affinityIndex = a6.get(svc, set, (w[0] ^ w[1] ^ w[2] ^ w[3]) >>> 0, now);
      a6.hits = hits; // a trace is not a hit
    }
  }
  return { now, flow, affinityIndex };
}

/** The API in the dataplane's own thread (tests, the library): the same slices, without messages. */
export class LocalPacketSide implements PacketSide {
  readonly local = true;
  constructor(private readonly dp: Dataplane) {}

  async stats(): Promise<PacketStats> {
    return statsOfDataplane(this.dp);
  }

  async now(): Promise<number> {
    return this.dp.pipeline.conntrack.now();
  }

  async listFlows(q: ConntrackQuery, limit: number, onChunk: (c: FlowChunk) => Promise<void> | void) {
    const f = conntrackFilter(q, this.dp.pipeline.conntrackV6);
    const lister = new FlowLister(this.dp.pipeline.conntrack, f.pred, limit, this.dp.pipeline.conntrackV6, f.pred6);
    for (;;) {
      const c = lister.next();
      await onChunk(c);
      if (c.done) return { now: lister.now, matched: c.matched, shown: c.shown };
      await new Promise((r) => setImmediate(r));
    }
  }

  async deleteFlows(q: ConntrackQuery) {
    const ct6 = this.dp.pipeline.conntrackV6;
    const f = conntrackFilter(q, ct6);
    const deleted = (await deleteFlowsSliced(this.dp.pipeline.conntrack, f.pred)) + (ct6 === null ? 0 : await deleteFlowsSliced(ct6, f.pred6));
    return { deleted, entries: this.dp.pipeline.conntrack.size + (ct6?.size ?? 0) };
  }

  async traceFlow(p: { proto: number; src: number; dst: number; sport: number; dport: number }, aff: { generation: number; svcIndex: number; setLocal: boolean } | null) {
    return traceFlowOn(this.dp, this.dp.tables, p, aff);
  }

  async traceFlow6(p: TracePacket6, aff: { generation: number; svcIndex: number; setLocal: boolean } | null) {
    return traceFlowOn6(this.dp, this.dp.tables, p, aff);
  }

  async whenInForce(): Promise<void> {}
}
