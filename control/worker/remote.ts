/**
 * The control worker's view of the packet thread: every call is a small
 * message to PacketHost (host.ts) and a reply. Compiled tables go as their
 * wire form (tables-wire.ts: shared arrays, no copy).
 */
import type { MessagePort } from 'node:worker_threads';
import type { Tables } from '../../dataplane/tables.ts';
import { TablesEncoder } from '../../dataplane/tables-wire.ts';
import { sharedBuffers } from '../../dataplane/shared-arrays.ts';
import type { ConntrackQuery } from '../api/conntrack.ts';
import type { FlowChunk } from './flows.ts';
import { FlowRecord } from './flows.ts';
import type { InstallInfo, Reply, Request } from './host.ts';
import type { PacketSide, PacketStats, TraceFlow, TracePacket6 } from './packet-side.ts';

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

export class RemotePacketSide implements PacketSide {
  readonly local = false;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly encoder = new TablesEncoder();
  /** generation → the promise of its swap on the packet thread */
  private readonly installs = new Map<number, Promise<InstallInfo>>();
  private inForce = 0;
  /**
   * per snapshot sent and not yet superseded on the packet thread, the shared
   * buffers of its tables' arrays (oldest first): given back to the pool
   * (shared-arrays.ts) once a newer snapshot is in force there and no snapshot
   * still pending or in force uses them
   */
  private sent: Array<{ generation: number; buffers: SharedArrayBuffer[] }> = [];
  /** called with every snapshot's install report */
  onInstalled: ((info: InstallInfo) => void) | null = null;

  constructor(private readonly port: MessagePort) {}

  /** Handle one message from the packet thread; false when it is not a reply. */
  handle(m: unknown): boolean {
    const r = m as Reply;
    if (typeof r !== 'object' || r === null || typeof r.id !== 'number' || typeof r.ok !== 'boolean') return false;
    const p = this.pending.get(r.id);
    if (p === undefined) return true;
    this.pending.delete(r.id);
    if (r.ok) p.resolve(r.value);
    else p.reject(new Error(r.error));
    return true;
  }

  private call<T>(req: DistributiveOmit<Request, 'id'>, id = this.nextId++): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.port.postMessage({ ...req, id });
    });
  }

  /** Send a snapshot to the packet thread (the holder's onSwap). */
  sendTables(t: Tables, linear: { text: string; text6?: string | null; localAddresses: string[] } | null): Promise<InstallInfo> {
    const wire = this.encoder.encode(t);
    this.sent.push({ generation: t.generation, buffers: tablesBuffers(t) });
    const p = this.call<InstallInfo>({ op: 'tables', wire, linear }).then((info) => {
      if (info.generation > this.inForce) this.inForce = info.generation;
      if (!info.skipped) this.release(info.generation);
      this.installs.delete(t.generation);
      this.onInstalled?.(info);
      return info;
    });
    this.installs.set(t.generation, p);
    p.catch(() => this.installs.delete(t.generation));
    return p;
  }

  /**
   * The packet thread swapped in `generation`: it reads no older snapshot's
   * tables any more (Loop.setTables swaps between two batches; the views it
   * keeps read the wire form's own arrays, not these), and this thread's
   * holder reads only its newest, which is sent. The buffers only older
   * snapshots used go back to the pool for the next copies.
   */
  private release(generation: number): void {
    const keep = new Set<SharedArrayBuffer>();
    for (const s of this.sent) if (s.generation >= generation) for (const b of s.buffers) keep.add(b);
    for (const s of this.sent) {
      if (s.generation >= generation) continue;
      for (const b of s.buffers) {
        if (keep.has(b)) continue;
        keep.add(b); // once
        sharedBuffers.give(b);
      }
    }
    this.sent = this.sent.filter((s) => s.generation >= generation);
  }

  async whenInForce(generation: number): Promise<void> {
    if (generation <= this.inForce) return;
    const p = this.installs.get(generation);
    if (p !== undefined) await p;
  }

  stats(): Promise<PacketStats> {
    return this.call<PacketStats>({ op: 'stats' });
  }

  now(): Promise<number> {
    return this.call<number>({ op: 'now' });
  }

  async listFlows(q: ConntrackQuery, limit: number, onChunk: (c: FlowChunk) => Promise<void> | void) {
    const id = this.nextId++;
    let c = await this.call<FlowChunk>({ op: 'list', q, limit }, id);
    const now = c.now;
    try {
      for (;;) {
        await onChunk(c);
        if (c.done) return { now, matched: c.matched, shown: c.shown };
        c = await this.call<FlowChunk>({ op: 'list-next' }, id);
      }
    } catch (e) {
      this.port.postMessage({ op: 'list-cancel', id });
      throw e;
    }
  }

  deleteFlows(q: ConntrackQuery): Promise<{ deleted: number; entries: number }> {
    return this.call({ op: 'delete', q });
  }

  traceFlow(p: { proto: number; src: number; dst: number; sport: number; dport: number }, aff: { generation: number; svcIndex: number; setLocal: boolean } | null) {
    return this.traced(this.call<{ now: number; flow: TraceFlow | null; affinityIndex: number }>({ op: 'trace', p, aff }));
  }

  traceFlow6(p: TracePacket6, aff: { generation: number; svcIndex: number; setLocal: boolean } | null) {
    const q = { proto: p.proto, src: Array.from(p.src), dst: Array.from(p.dst), sport: p.sport, dport: p.dport };
    return this.traced(this.call<{ now: number; flow: TraceFlow | null; affinityIndex: number }>({ op: 'trace6', p: q, aff }));
  }

  private traced(answer: Promise<{ now: number; flow: TraceFlow | null; affinityIndex: number }>) {
    return answer.then((r) => {
      // a class does not survive the message: give the flow its accessors back
      if (r.flow !== null) r.flow.flow = Object.assign(new FlowRecord(), r.flow.flow);
      return r;
    });
  }
}

/** The shared buffers of the arrays a snapshot's IPv4 tables are made of (the pool's kind of buffer: see shared-arrays.ts). */
function tablesBuffers(t: Tables): SharedArrayBuffer[] {
  const out: SharedArrayBuffer[] = [];
  for (const a of [t.serviceRows, t.endpointFlat, t.nodePorts, t.localAddrs, t.vipIndex.rawSlots, t.vipAddrs.rawSlots]) {
    if (a.buffer instanceof SharedArrayBuffer && !out.includes(a.buffer)) out.push(a.buffer);
  }
  return out;
}
