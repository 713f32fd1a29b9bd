/**
 * The TUN loop: batches of packets from the device through the pipeline and
 * back. A new table snapshot takes effect as soon as it is given (the loop's
 * thread is then between two batches), never inside one; conntrack expiry and
 * stale-entry removal run off the hot path.
 *
 * Buffers. Without a virtio header (offloads off) packets are at most an MTU:
 * `batch` slots of `slotSize` (64 × 2048 B = 128 KiB). With one (offloads on)
 * a packet is up to 64 KiB + 10: instead of 64 slots of that size (4 MiB,
 * mostly unused by small packets) packets are read one after another into
 * one buffer (readPacked): each takes its length rounded up to 64 bytes, at
 * least 640 (room for a generated ICMP error in its place), and reading stops
 * while less than one largest packet is left. The default buffer,
 * batch × 2048 + 2 × 64 KiB (≈ 256 KiB at batch 64), holds the whole batch of
 * MTU-sized packets or at least 3 super-packets per read call.
 */
import { performance } from 'node:perf_hooks';
import type { EndpointSet, ServicePortEntry, Tables } from './tables.ts';
import { Pipeline, V_FORWARD, V_PASS, V_REPLY } from './pipeline.ts';
import type { Conntrack, ConntrackEntry } from './conntrack.ts';
import { CT6_REPLY_SRC, CT6_WORDS } from './conntrack6.ts';
import { PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import { fnv1a } from './select.ts';
import { packetCpuShare } from './cpu-share.ts';

/**
 * The longest the loop's own housekeeping (conntrack expiry, stale-flow
 * removal after a swap) holds the thread in one turn of the event loop (ms).
 */
export const SLICE_MS = 1;
/** index entries the stale-flow sweep clears between two reads of the clock (128 KiB: 0.05-0.4 ms on fresh pages, which took 0.4-3 ms a MiB) */
const STALE_CLEAR = 32768;

/** What the loop needs of a TUN device (dataplane/tun TunDevice). */
export interface PacketDevice {
  readonly name: string;
  readonly vnetHeaderSize: number;
  readBatch(buf: Uint8Array, slotSize: number, maxPackets: number, lengths: Uint32Array): number;
  /** needed when vnetHeaderSize > 0 (see TunDevice.readPacked) */
  readPacked?(buf: Uint8Array, maxPackets: number, minSlot: number, reserve: number, offsets: Uint32Array, lengths: Uint32Array): number;
  writeBatch(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number;
  onReadable(cb: (err: Error | null) => void): void;
  stopReadable(): void;
}

export interface LoopOptions {
  /** packets per read/write call (default 64) */
  batch?: number;
  /** bytes per slot of the shared buffer (default 2048: an MTU-1500 packet plus room for a vnet header); without a vnet header only */
  slotSize?: number;
  /** with a vnet header: bytes of the packed read buffer (default batch × 2048 + 2 × 65600) */
  packedBytes?: number;
  /** batches per readiness callback before yielding to the event loop (default 32) */
  batchesPerWake?: number;
  /** clock in ms (default performance.now) */
  clock?: () => number;
  /** conntrack expiry sweep period in ms (default 1000; 0 = off) */
  expiryIntervalMs?: number;
}

export interface LoopStats {
  batches: number;
  packetsIn: number;
  packetsOut: number;
  /** packets the device did not take (its queue was full) */
  txDropped: number;
  tableSwaps: number;
  generation: number;
  staleRemoved: number;
  expired: number;
}

export class Loop {
  readonly pipeline: Pipeline;
  readonly device: PacketDevice;
  readonly slotSize: number;
  readonly batch: number;
  private tables: Tables;
  private readonly buf: Uint8Array;
  private readonly lengths: Uint32Array;
  /** with a vnet header: where readPacked put each packet */
  private readonly inOffsets: Uint32Array;
  /** bytes of packet buffer this loop holds */
  readonly bufferBytes: number;
  private readonly outOffsets: Uint32Array;
  private readonly outLengths: Uint32Array;
  private readonly batchesPerWake: number;
  private readonly clock: () => number;
  private expiryTimer: NodeJS.Timeout | null = null;
  private readonly expiryIntervalMs: number;
  private running = false;
  private expiring = false;
  private staleKeys = new Int32Array(0);
  private staleVals = new Int32Array(0);
  /** set when polling the device failed and the loop stopped */
  pollError: Error | null = null;
  private swapListeners: Array<(t: Tables) => void> = [];
  readonly stats: LoopStats = { batches: 0, packetsIn: 0, packetsOut: 0, txDropped: 0, tableSwaps: 0, generation: 0, staleRemoved: 0, expired: 0 };

  constructor(device: PacketDevice, pipeline: Pipeline, tables: Tables, o: LoopOptions = {}) {
    this.device = device;
    this.pipeline = pipeline;
    this.tables = tables;
    this.stats.generation = tables.generation;
    this.batch = o.batch ?? 64;
    this.slotSize = o.slotSize ?? 2048;
    if (this.slotSize < 576 + device.vnetHeaderSize) throw new Error(`slotSize ${this.slotSize} is too small: generated ICMP errors need 576 bytes`);
    this.batchesPerWake = o.batchesPerWake ?? 32;
    this.clock = o.clock ?? (() => performance.now());
    this.expiryIntervalMs = o.expiryIntervalMs ?? 1000;
    if (device.vnetHeaderSize > 0) {
      if (!device.readPacked) throw new Error(`device ${device.name} has a vnet header but no readPacked`);
      const bytes = o.packedBytes ?? this.batch * 2048 + 2 * PACKED_RESERVE_ROUNDED;
      if (bytes < PACKED_RESERVE) throw new Error(`packedBytes ${bytes} is too small: a super-packet needs ${PACKED_RESERVE} bytes`);
      if (pipeline.reply.length + device.vnetHeaderSize > PACKED_MIN_SLOT)
        throw new Error(`the pipeline's reply buffer (${pipeline.reply.length} bytes) does not fit in the ${PACKED_MIN_SLOT} bytes a packet's place holds`);
      this.buf = new Uint8Array(bytes);
    } else {
      this.buf = new Uint8Array(this.batch * this.slotSize);
    }
    this.bufferBytes = this.buf.length;
    this.inOffsets = new Uint32Array(this.batch);
    this.lengths = new Uint32Array(this.batch);
    this.outOffsets = new Uint32Array(this.batch);
    this.outLengths = new Uint32Array(this.batch);
  }

  /** The snapshot in force: the next batch is decided with it (a snapshot is swapped in as soon as it is given). */
  get applied(): Tables {
    return this.tables;
  }

  /**
   * Swap in a new snapshot, now: this runs on the packet thread between two
   * batches (a batch is read, decided and written in one synchronous drain),
   * so no packet is in flight. Not deferred to the next batch: with no
   * traffic that would leave the stale-flow sweep waiting for the next
   * packet, which would then meet a removed endpoint's flow before the
   * sweep ran (kube-proxy clears them right after its sync).
   */
  setTables(t: Tables): void {
    const old = this.tables;
    this.tables = t;
    this.stats.tableSwaps++;
    this.stats.generation = t.generation;
    if (old !== t) setImmediate(() => this.removeStale(t));
    for (const cb of this.swapListeners) cb(t);
  }

  /** Called after each swap took effect (e.g. to report the generation in force). */
  onSwap(cb: (t: Tables) => void): void {
    this.swapListeners.push(cb);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.device.onReadable((err) => {
      if (err) {
        // polling the device failed (it went away?): say so once and stop, rather than crash the process
        this.pollError = err;
        process.emitWarning(`tunproxy: polling ${this.device.name} failed: ${err.message}; the loop stops`);
        this.stop();
        return;
      }
      this.drain();
    });
    if (this.expiryIntervalMs > 0) {
      this.expiryTimer = setInterval(() => this.expireSliced(), this.expiryIntervalMs);
      this.expiryTimer.unref();
    }
  }

  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.device.stopReadable();
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    this.expiryTimer = null;
  }

  /**
   * The conntrack expiry sweep, in slices of at most SLICE_MS each (4096
   * flows between clock reads, ~0.1 ms at 1 M flows), one slice per turn of
   * the event loop, so packets wait at most one slice for it; a full sweep
   * of 1 M flows (~20 ms of work) is spread over ~20 turns.
   */
  private expireSliced(): void {
    if (this.expiring) return;
    this.expiring = true;
    const ct = this.pipeline.conntrack;
    let left = ct.size;
    // the IPv6 table: 4096 flows a turn, continuing where the last call stopped
    const ct6 = this.pipeline.conntrackV6;
    if (ct6 !== null) this.stats.expired += ct6.expire(this.clock(), 4096);
    const slice = () => {
      if (!this.running) {
        this.expiring = false;
        return;
      }
      packetCpuShare.check();
      const t0 = performance.now();
      do {
        const k = Math.min(left, 4096);
        this.stats.expired += ct.expire(this.clock(), k);
        left -= k;
      } while (left > 0 && performance.now() - t0 < SLICE_MS);
      if (left > 0) setImmediate(slice);
      else this.expiring = false;
    };
    slice();
  }

  /**
   * UDP and SCTP entries whose endpoint stopped serving the service (left it,
   * or no longer ready nor serving): removed, so the next datagram of the
   * same 5-tuple picks a live endpoint (kube-proxy's stale UDP conntrack
   * problem). An endpoint still serving while terminating keeps its flows
   * (ServicePortEntry.servingKept), as kube-proxy clears only endpoints that
   * stopped serving. TCP connections to a leaving endpoint are left to
   * finish, as with kube-proxy's graceful termination. The IPv4 table first,
   * then the IPv6 one (its flows' endpoints compared by their four words).
   *
   * Runs after the swap in slices of at most SLICE_MS each (the clock is read
   * every 256 items), one per turn of the event loop: first an index from
   * each live entry's uid (a number: no strings are made) to its position, on
   * typed arrays (cleared STALE_CLEAR entries at a time, then built),
   * ~100 000 entries in a few slices, then a sweep of the
   * connection table (conntrack.sweepSome) that finds each UDP/SCTP flow's
   * service port (where it was when the flow began, else by uid) and checks
   * its endpoint against the port's sets. A newer swap abandons it and starts its own.
   * Flows created meanwhile were decided with the new tables.
   */
  private removeStale(t: Tables): void {
    if (t !== this.tables) return; // superseded by a newer swap, which will do it
    const ct = this.pipeline.conntrack;
    const ct6 = this.pipeline.conntrackV6;
    const t6 = t.v6;
    const v6 = (): void => {
      if (ct6 === null || ct6.size === 0 || t6 === undefined || t6 === null) return;
      const flowWords = ct6.wordArray;
      const idWords = t6.words;
      this.sweepStale(t, t6.base.services, ct6, (e, addr, port) => {
        if (e.replySport !== port) return false;
        const o = e._slot * CT6_WORDS + CT6_REPLY_SRC;
        const w = addr * 4;
        return flowWords[o] === idWords[w] && flowWords[o + 1] === idWords[w + 1] && flowWords[o + 2] === idWords[w + 2] && flowWords[o + 3] === idWords[w + 3];
      }, null);
    };
    // an empty table has no stale flow: no index of the services is built for it (10 000 services: ~10 ms of this thread)
    if (ct.size === 0) return v6();
    this.sweepStale(t, t.services, ct, (e, addr, port) => e.replySrc === addr && e.replySport === port, v6);
  }

  /** removeStale for one family's services and table; `then` runs when it is done. */
  private sweepStale(t: Tables, services: readonly ServicePortEntry[], ct: Conntrack, isEndpoint: (e: ConntrackEntry, addr: number, port: number) => boolean, then: (() => void) | null): void {
    // uid → entry index, open addressing on typed arrays (nothing for the GC to trace);
    // -2: several live entries share the uid (a 32-bit hash collision), then byName decides
    let cap = 16;
    while (cap < services.length * 2) cap *= 2;
    // kept from one swap to the next (a few MB at 100 000 services: not made again every time)
    if (this.staleKeys.length !== cap) {
      this.staleKeys = new Int32Array(cap);
      this.staleVals = new Int32Array(cap);
    }
    const keys = this.staleKeys;
    const vals = this.staleVals;
    // vals is cleared (-1) in the slices, STALE_CLEAR entries at a time, not here at once: clearing the
    // 1 MB of 100 000 services in one go, the first touch of fresh pages, held this thread 0.4–3 ms
    // right after the swap (bench:reliability put-100k, a timeline of the packet thread), ahead of
    // the first slice: the longest gap of the stream
    let cleared = 0;
    const byName = new Map<string, number>();
    const slot = (uid: number): number => {
      let h = Math.imul(uid, 0x9e3779b1) & (cap - 1);
      while (vals[h] !== -1 && keys[h] !== (uid | 0)) h = (h + 1) & (cap - 1);
      return h;
    };
    const uidOf = new Map<string, number>();
    const cursor = { at: Infinity };
    let i = 0;
    const has = (set: EndpointSet | null, e: ConntrackEntry): boolean => {
      if (set === null) return false;
      const eps = set.endpoints;
      for (let k = 0; k < eps.length; k++) if (isEndpoint(e, eps[k].addr, eps[k].port)) return true;
      return false;
    };
    const kept = (pairs: readonly number[], e: ConntrackEntry): boolean => {
      for (let k = 0; k < pairs.length; k += 2) if (isEndpoint(e, pairs[k], pairs[k + 1])) return true;
      return false;
    };
    const find = (e: ConntrackEntry): number => {
      // most flows: their service port is where it was when the flow began
      const at = e.serviceIndex;
      if (at >= 0 && at < services.length && services[at].live && services[at].name === e.serviceName) return at;
      let u = uidOf.get(e.serviceName);
      if (u === undefined) {
        // the compiler's uid: the service-port name and its protocol
        u = fnv1a(`${e.serviceName}/${e.proto === PROTO_UDP ? 'udp' : e.proto === PROTO_SCTP ? 'sctp' : String(e.proto)}`);
        uidOf.set(e.serviceName, u);
      }
      const si = vals[slot(u)];
      if (si === -2) return byName.get(e.serviceName) ?? -1;
      return si >= 0 && services[si].name === e.serviceName ? si : -1;
    };
    const stale = (e: ConntrackEntry): boolean => {
      if (e.proto === PROTO_TCP) return false;
      const si = find(e);
      if (si < 0) return true;
      const s = services[si];
      return !has(s.cluster, e) && !has(s.local, e) && !kept(s.servingKept, e);
    };
    const slice = () => {
      if (t !== this.tables) return;
      packetCpuShare.check();
      const t0 = performance.now();
      do {
        if (cleared < cap) {
          const stop = Math.min(cap, cleared + STALE_CLEAR);
          vals.fill(-1, cleared, stop);
          cleared = stop;
        } else if (i < services.length) {
          const stop = Math.min(services.length, i + 256);
          for (; i < stop; i++) {
            const s = services[i];
            if (!s.live) continue;
            const h = slot(s.uid);
            const had = vals[h];
            if (had === -1) {
              keys[h] = s.uid | 0;
              vals[h] = i;
            } else {
              if (had >= 0) byName.set(services[had].name, had);
              vals[h] = -2;
              byName.set(s.name, i);
            }
          }
        } else {
          this.stats.staleRemoved += ct.sweepSome(cursor, 256, stale);
          if (cursor.at < 0) {
            if (then !== null) setImmediate(then);
            return;
          }
        }
      } while (performance.now() - t0 < SLICE_MS);
      setImmediate(slice);
    };
    slice();
  }

  /**
   * Read, process and write batches until the device is empty or it is time to yield. Without a
   * virtio header packet i is read into slot i (readBatch); with one, packets are read one after
   * another into the buffer (readPacked, room for super-packets). Either way packet i is at
   * inOffsets[i], lengths[i] long, and forwardBatch takes it from there.
   */
  drain(): void {
    const dev = this.device;
    const buf = this.buf;
    const lengths = this.lengths;
    const inOff = this.inOffsets;
    const packed = dev.vnetHeaderSize > 0;
    const slot = this.slotSize;
    for (let b = 0; b < this.batchesPerWake; b++) {
      let n: number;
      if (packed) n = dev.readPacked!(buf, this.batch, PACKED_MIN_SLOT, PACKED_RESERVE, inOff, lengths);
      else {
        n = dev.readBatch(buf, slot, this.batch, lengths);
        for (let i = 0; i < n; i++) inOff[i] = i * slot;
      }
      if (n === 0) return;
      this.forwardBatch(n);
      if (n < this.batch && (!packed || buf.length - (inOff[n - 1] + lengths[n - 1]) >= PACKED_RESERVE + 64)) return;
    }
  }

  /** The n packets read: each through the pipeline, the ones to send written back in one call. */
  private forwardBatch(n: number): void {
    const buf = this.buf;
    const hdr = this.device.vnetHeaderSize;
    const lengths = this.lengths;
    const inOff = this.inOffsets;
    const outOff = this.outOffsets;
    const outLen = this.outLengths;
    const pl = this.pipeline;
    const tables = this.tables;
    const now = this.clock();
    let w = 0;
    for (let i = 0; i < n; i++) {
      const off = inOff[i];
      const len = lengths[i];
      if (len < hdr) {
        pl.process(buf, off, 0, tables, now); // counted as malformed (too_short)
        continue;
      }
      const v = pl.process(buf, off + hdr, len - hdr, tables, now, hdr > 0 ? off : -1);
      if (v === V_FORWARD || v === V_PASS) {
        outOff[w] = off;
        outLen[w] = len;
        w++;
      } else if (v === V_REPLY) {
        // the generated packet replaces the one that caused it, in its place (a slot, or the
        // PACKED_MIN_SLOT bytes readPacked leaves), after a header saying "nothing to do"
        buf.fill(0, off, off + hdr);
        buf.set(pl.reply.subarray(0, pl.replyLen), off + hdr);
        outOff[w] = off;
        outLen[w] = pl.replyLen + hdr;
        w++;
      }
    }
    if (w > 0) {
      const written = this.device.writeBatch(buf, outOff, outLen, w);
      this.stats.packetsOut += written;
      this.stats.txDropped += w - written;
    }
    this.stats.batches++;
    this.stats.packetsIn += n;
  }
}

/** the largest packet a TUN with offloads hands over: a 64 KiB IP packet and its virtio header */
const PACKED_RESERVE = 65535 + 10;
const PACKED_RESERVE_ROUNDED = 65600;
/** every packet read gets at least this much room: a generated ICMP error (576 B) and its vnet header */
const PACKED_MIN_SLOT = 640;
