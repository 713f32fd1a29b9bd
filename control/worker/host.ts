/**
 * The packet thread's side of the control worker (tunproxy run): answers
 * the worker's requests, each in slices of at most SLICE_MS per turn of the
 * event loop, so that packets wait at most one slice:
 *
 *   tables   a compiled snapshot in wire form (shared arrays, no copy): the
 *            slow-path objects are built in slices (TablesMaterializer,
 *            SLICE_MS each), then the snapshot is swapped in (Loop.setTables,
 *            at once: this thread is between two batches); answered once it
 *            is in force. A
 *            snapshot superseded by a newer one still waiting is skipped.
 *   stats    counters (a few hundred numbers, one step)
 *   list     the connection table, one chunk per request (FlowLister)
 *   delete   flows removed in slices (Conntrack.sweepSome)
 *   trace    one conntrack lookup and one affinity lookup
 *
 * What stays on the packet thread and is not sliced: the swap itself (one
 * assignment), the counters' snapshot (~100 numbers), and, with
 * `--decider linear` only (a comparison mode), building the linear
 * evaluator from kube-proxy's rules text.
 */
import type { MessagePort, Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import type { Dataplane } from '../dataplane.ts';
import type { Tables } from '../../dataplane/tables.ts';
import type { TablesWire, Materialized } from '../../dataplane/tables-wire.ts';
import { TablesMaterializer, blankSpare } from '../../dataplane/tables-wire.ts';
import { SLICE_MS } from '../../dataplane/loop.ts';
import { packetCpuShare } from '../../dataplane/cpu-share.ts';
import { linearFromText } from '../iptables/linear.ts';
import { conntrackFilter } from '../api/conntrack.ts';
import type { ConntrackQuery } from '../api/conntrack.ts';
import { FlowLister, deleteFlowsSliced } from './flows.ts';
import { statsOfDataplane, traceFlowOn, traceFlowOn6 } from './packet-side.ts';
import type { TracePacket6 } from './packet-side.ts';

export type Request =
  | { op: 'tables'; id: number; wire: TablesWire; linear: LinearRules | null }
  | { op: 'stats'; id: number }
  | { op: 'now'; id: number }
  | { op: 'list'; id: number; q: ConntrackQuery; limit: number }
  | { op: 'list-next'; id: number }
  | { op: 'list-cancel'; id: number }
  | { op: 'delete'; id: number; q: ConntrackQuery }
  | { op: 'trace'; id: number; p: { proto: number; src: number; dst: number; sport: number; dport: number }; aff: { generation: number; svcIndex: number; setLocal: boolean } | null }
  | { op: 'trace6'; id: number; p: TracePacket6; aff: { generation: number; svcIndex: number; setLocal: boolean } | null };

/** --decider linear: kube-proxy's rules as iptables-restore text (text6: the ip6tables half, null when the tables have no IPv6 part) */
export interface LinearRules {
  text: string;
  text6?: string | null;
  localAddresses: string[];
}

export interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

export interface InstallInfo {
  generation: number;
  /** time from the message to the swap (ms) */
  ms: number;
  slices: number;
  maxSliceMs: number;
  reused: number;
  /** views of the snapshot before the one in force, taken for this one (TablesMaterializer) */
  recycled: number;
  built: number;
  skipped: boolean;
}

export class PacketHost {
  private readonly dp: Dataplane;
  private readonly port: MessagePort | Worker;
  private readonly queue: Array<Extract<Request, { op: 'tables' }> & { at: number }> = [];
  private busy = false;
  private last: Materialized | null = null;
  /** the snapshot installed before `last` */
  private spare: Materialized | null = null;
  private readonly listings = new Map<number, FlowLister>();
  /** called after each snapshot is in force (e.g. to attach the loop on the first one) */
  onInstalled: ((t: Tables, info: InstallInfo) => void) | null = null;
  /** the longest single slice any request took on this thread (ms), for tests and the status */
  maxSliceMs = 0;

  constructor(dp: Dataplane, port: MessagePort | Worker) {
    this.dp = dp;
    this.port = port;
  }

  /** listings under way (a client that goes away ends its listing) */
  get activeListings(): number {
    return this.listings.size;
  }

  /** Handle one message from the worker; false when it is not a request. */
  handle(m: unknown): boolean {
    const r = m as Request;
    if (typeof r !== 'object' || r === null || typeof (r as { op?: unknown }).op !== 'string') return false;
    try {
      switch (r.op) {
        case 'tables':
          this.queue.push({ ...r, at: performance.now() });
          this.pump();
          break;
        case 'stats':
          this.reply(r.id, statsOfDataplane(this.dp));
          break;
        case 'now':
          this.reply(r.id, this.dp.pipeline.conntrack.now());
          break;
        case 'list': {
          const f = conntrackFilter(r.q, this.dp.pipeline.conntrackV6);
          const l = new FlowLister(this.dp.pipeline.conntrack, f.pred, r.limit, this.dp.pipeline.conntrackV6, f.pred6);
          this.listings.set(r.id, l);
          this.sendChunk(r.id, l);
          break;
        }
        case 'list-next': {
          const l = this.listings.get(r.id);
          if (l === undefined) this.fail(r.id, 'no such listing');
          else setImmediate(() => this.sendChunk(r.id, l));
          break;
        }
        case 'list-cancel':
          this.listings.delete(r.id);
          break;
        case 'delete': {
          const ct = this.dp.pipeline.conntrack;
          const ct6 = this.dp.pipeline.conntrackV6;
          const f = conntrackFilter(r.q, ct6);
          Promise.all([deleteFlowsSliced(ct, f.pred), ct6 === null ? 0 : deleteFlowsSliced(ct6, f.pred6)]).then(
            ([d4, d6]) => this.reply(r.id, { deleted: d4 + d6, entries: ct.size + (ct6?.size ?? 0) }),
            (e: Error) => this.fail(r.id, e.message),
          );
          break;
        }
        case 'trace':
          this.reply(r.id, traceFlowOn(this.dp, this.dp.tables, r.p, r.aff));
          break;
        case 'trace6':
          this.reply(r.id, traceFlowOn6(this.dp, this.dp.tables, r.p, r.aff));
          break;
        default:
          return false;
      }
    } catch (e) {
      this.fail((r as { id: number }).id, (e as Error).message);
    }
    return true;
  }

  private reply(id: number, value: unknown, transfer?: ArrayBuffer[]): void {
    this.port.postMessage({ id, ok: true, value } satisfies Reply, transfer);
  }

  private fail(id: number, error: string): void {
    this.port.postMessage({ id, ok: false, error } satisfies Reply);
  }

  private sendChunk(id: number, l: FlowLister): void {
    if (!this.listings.has(id)) return;
    packetCpuShare.check();
    const t0 = performance.now();
    const c = l.next();
    this.note(performance.now() - t0);
    if (c.done) this.listings.delete(id);
    this.reply(id, c, [c.data.buffer as ArrayBuffer]);
  }

  private note(ms: number): void {
    if (ms > this.maxSliceMs) this.maxSliceMs = ms;
  }

  /**
   * Make the views the next snapshot will take (blankSpare) when there is no
   * spare yet: called by tunproxy run before the packets move, so that the
   * first full change after the start allocates none while they do.
   * Returns how many were made.
   */
  prepareSpare(): number {
    if (this.last === null || this.spare !== null) return 0;
    this.spare = blankSpare(this.last);
    return this.spare.tables.services.length + (this.spare.v6?.tables.services.length ?? 0);
  }

  /**
   * The snapshot before the last one installed, when no packet can read it
   * any more: the last one is the one the loop decides with (Loop.setTables
   * swaps it in at once), or there is no loop. Its views are recycled into
   * the next snapshot; null when that is not safe.
   */
  private spareSnapshot(): Materialized | null {
    const loop = this.dp.loop;
    if (this.spare === null || this.last === null) return null;
    return loop === null || loop.applied === this.last.tables ? this.spare : null;
  }

  /** Materialize the queued snapshots one after the other, in slices; a superseded one is skipped. */
  private pump(): void {
    if (this.busy) return;
    const job = this.queue.shift();
    if (job === undefined) return;
    this.busy = true;
    const skip = this.queue.length > 0;
    if (skip) {
      // a newer snapshot is waiting: this one would be replaced before a packet saw it
      this.reply(job.id, { generation: job.wire.generation, ms: performance.now() - job.at, slices: 0, maxSliceMs: 0, reused: 0, recycled: 0, built: 0, skipped: true } satisfies InstallInfo);
      this.busy = false;
      this.pump();
      return;
    }
    const m = new TablesMaterializer(job.wire, this.last, this.spareSnapshot());
    const slice = () => {
      packetCpuShare.check();
      let done: boolean;
      try {
        done = m.step(SLICE_MS);
      } catch (e) {
        this.busy = false;
        this.fail(job.id, `the packet thread could not take generation ${job.wire.generation}: ${(e as Error).message}`);
        this.pump();
        return;
      }
      this.note(m.maxSliceMs);
      if (!done) {
        setImmediate(slice);
        return;
      }
      const mat = m.result();
      const tables = mat.tables;
      this.spare = this.last;
      this.last = mat;
      // --decider linear (a comparison mode): the evaluator is a graph of objects, built here in one step,
      // and goes in as the pipeline's option together with the tables (between two batches, as they are)
      this.dp.pipeline.linear = job.linear !== null ? linearFromText(job.linear.text, { localAddresses: job.linear.localAddresses }) : null;
      const text6 = job.linear?.text6 ?? null;
      this.dp.pipeline.linear6 = text6 !== null ? linearFromText(text6, { localAddresses: job.linear!.localAddresses, family: 6 }) : null;
      this.dp.installTables(tables);
      const info: InstallInfo = { generation: tables.generation, ms: performance.now() - job.at, slices: m.slices, maxSliceMs: m.maxSliceMs, reused: m.reused, recycled: m.recycled, built: m.built, skipped: false };
      this.busy = false;
      this.reply(job.id, info);
      this.onInstalled?.(tables, info);
      this.pump();
    };
    slice();
  }
}
