/**
 * The TUN loop: batches of packets from the device through the pipeline and
 * back. A new table snapshot takes effect between two batches, never inside
 * one; conntrack expiry and stale-entry removal run off the hot path.
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
import type { Tables } from './tables.ts';
import { Pipeline, V_FORWARD, V_PASS, V_REPLY } from './pipeline.ts';
import type { ConntrackEntry } from './conntrack.ts';
import { PROTO_TCP } from './addr.ts';

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
  private pending: Tables | null = null;
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

  /** The snapshot in force. */
  get current(): Tables {
    return this.pending ?? this.tables;
  }

  /** Swap in a new snapshot: it takes effect before the next batch is processed. */
  setTables(t: Tables): void {
    this.pending = t;
    // with no traffic there is no next batch: apply it now, nothing is in flight
    if (!this.running) this.applyPending();
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
      this.expiryTimer = setInterval(() => {
        this.stats.expired += this.pipeline.conntrack.expire(this.clock());
      }, this.expiryIntervalMs);
      this.expiryTimer.unref();
    }
  }

  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.device.stopReadable();
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    this.expiryTimer = null;
    if (this.pending) this.applyPending();
  }

  private applyPending(): void {
    const t = this.pending;
    if (t === null) return;
    this.pending = null;
    const old = this.tables;
    this.tables = t;
    this.stats.tableSwaps++;
    this.stats.generation = t.generation;
    if (old !== t) setImmediate(() => this.removeStale(t));
    for (const cb of this.swapListeners) cb(t);
  }

  /**
   * UDP and SCTP entries whose endpoint left the service: removed, so the
   * next datagram of the same 5-tuple picks a live endpoint (kube-proxy's
   * stale UDP conntrack problem). TCP connections to a leaving endpoint are
   * left to finish, as with kube-proxy's graceful termination.
   */
  private removeStale(t: Tables): void {
    if (t !== this.tables) return; // superseded by a newer swap, which will do it
    const live = new Set<string>();
    for (const s of t.services) {
      for (const set of [s.cluster, s.local]) if (set) for (const e of set.endpoints) live.add(`${s.name}|${e.addr}|${e.port}`);
    }
    this.stats.staleRemoved += this.pipeline.conntrack.removeStale((e: ConntrackEntry) => e.proto === PROTO_TCP || live.has(`${e.serviceName}|${e.replySrc}|${e.replySport}`));
  }

  /** Read, process and write batches until the device is empty or it is time to yield. */
  drain(): void {
    if (this.device.vnetHeaderSize > 0) {
      this.drainPacked();
      return;
    }
    const dev = this.device;
    const buf = this.buf;
    const slot = this.slotSize;
    const hdr = dev.vnetHeaderSize;
    const lengths = this.lengths;
    const outOff = this.outOffsets;
    const outLen = this.outLengths;
    const pl = this.pipeline;
    for (let b = 0; b < this.batchesPerWake; b++) {
      const n = dev.readBatch(buf, slot, this.batch, lengths);
      if (n === 0) return;
      if (this.pending !== null) this.applyPending();
      const tables = this.tables;
      const now = this.clock();
      let w = 0;
      for (let i = 0; i < n; i++) {
        const off = i * slot;
        const v = pl.process(buf, off + hdr, lengths[i] - hdr, tables, now);
        if (v === V_FORWARD || v === V_PASS) {
          outOff[w] = off;
          outLen[w] = lengths[i];
          w++;
        } else if (v === V_REPLY) {
          // the generated packet replaces the one that caused it, in its slot (after a zeroed vnet header)
          buf.fill(0, off, off + hdr);
          buf.set(pl.reply.subarray(0, pl.replyLen), off + hdr);
          outOff[w] = off;
          outLen[w] = pl.replyLen + hdr;
          w++;
        }
      }
      if (w > 0) {
        const written = dev.writeBatch(buf, outOff, outLen, w);
        this.stats.packetsOut += written;
        this.stats.txDropped += w - written;
      }
      this.stats.batches++;
      this.stats.packetsIn += n;
      if (n < this.batch) return;
    }
  }

  /** drain() with a virtio header before every packet: packed reads, super-packets through the pipeline. */
  private drainPacked(): void {
    const dev = this.device;
    const buf = this.buf;
    const hdr = dev.vnetHeaderSize;
    const lengths = this.lengths;
    const inOff = this.inOffsets;
    const outOff = this.outOffsets;
    const outLen = this.outLengths;
    const pl = this.pipeline;
    for (let b = 0; b < this.batchesPerWake; b++) {
      const n = dev.readPacked!(buf, this.batch, PACKED_MIN_SLOT, PACKED_RESERVE, inOff, lengths);
      if (n === 0) return;
      if (this.pending !== null) this.applyPending();
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
        const v = pl.process(buf, off + hdr, len - hdr, tables, now, off);
        if (v === V_FORWARD || v === V_PASS) {
          outOff[w] = off;
          outLen[w] = len;
          w++;
        } else if (v === V_REPLY) {
          // in its place (readPacked left PACKED_MIN_SLOT bytes), after a header saying "nothing to do"
          buf.fill(0, off, off + hdr);
          buf.set(pl.reply.subarray(0, pl.replyLen), off + hdr);
          outOff[w] = off;
          outLen[w] = pl.replyLen + hdr;
          w++;
        }
      }
      if (w > 0) {
        const written = dev.writeBatch(buf, outOff, outLen, w);
        this.stats.packetsOut += written;
        this.stats.txDropped += w - written;
      }
      this.stats.batches++;
      this.stats.packetsIn += n;
      if (n < this.batch && buf.length - (inOff[n - 1] + lengths[n - 1]) >= PACKED_RESERVE + 64) return;
    }
  }
}

/** the largest packet a TUN with offloads hands over: a 64 KiB IP packet and its virtio header */
const PACKED_RESERVE = 65535 + 10;
const PACKED_RESERVE_ROUNDED = 65600;
/** every packet read gets at least this much room: a generated ICMP error (576 B) and its vnet header */
const PACKED_MIN_SLOT = 640;
