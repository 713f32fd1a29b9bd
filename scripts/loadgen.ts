/**
 * Load generator for the lab: crafts IPv4 or IPv6 packets on a raw socket
 * (npm raw-socket, IP_HDRINCL / IPV6_HDRINCL) so that it can pick every
 * packet's source address and port, and times request → answer.
 *
 * IPv6: a target that is an IPv6 address makes the run IPv6 (the sources are
 * then an IPv6 CIDR of at least /96: the address varies in its last 32 bits).
 * Packets carry a 40-byte IPv6 header (hop limit 64, no extension headers);
 * the UDP and TCP checksums cover IPv6's pseudo-header (RFC 8200 §8.1; a UDP
 * checksum of 0 is sent as 0xffff).
 *
 * Modes
 *   new          UDP request/response, every request from a fresh 5-tuple (the
 *                next source address and port of --sources × ports 1024-65535):
 *                each one is the first packet of a flow, the one that walks the rules
 *   established  UDP request/response over one 5-tuple (conntrack hits only)
 *   tcp-connect  a SYN from a fresh 5-tuple; the answer is the SYN-ACK; the
 *                client kernel resets the half-open connection (no socket owns it)
 * Loops: closed (--concurrency K requests in flight, the default) or open
 * (--rate R requests/s, paced by 1 ms ticks). Bounded by --seconds and
 * --count, whichever ends first; a request not answered within --timeout-ms
 * is counted lost. RTTs go into an HDR histogram (hdr-histogram-js, 3
 * significant digits, ns).
 *
 * The UDP target must echo the payload (bench/e2e-responder.c does; the lab's
 * pod servers answer UDP "echo" ports too). The source addresses must be
 * local to the namespace the generator runs in (e.g. `ip route add local
 * 192.168.80.0/20 dev lo`) and routed back to it by the node; the kernel's ICMP
 * port unreachable for the answers (no UDP socket owns the ports) should be
 * dropped in that namespace's OUTPUT (bench/e2e-lab.ts does both).
 *
 * Ceiling: with --ceiling ADDR:PORT the same run is first made against a
 * plain routed destination (no NAT, e.g. an endpoint's own address); a result
 * within 20 % of that rate is flagged (nearCeiling): the generator, not the
 * path under test, may be what limits it.
 *
 * CLI:   node --import tsx scripts/loadgen.ts --target 10.96.0.10:53 --mode new \
 *          --sources 192.168.80.0/20 --seconds 5 [--concurrency 32 | --rate 20000] [--json]
 *        IPv6: --target [fd00:10:96::a]:53 --sources fd00:80::/116 (a /96 or longer)
 * Agent: node --import tsx scripts/loadgen.ts --agent   (one JSON LoadSpec per stdin
 *        line, one JSON LoadResult per stdout line; used by bench/e2e.ts)
 */
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as hdr from 'hdr-histogram-js';
import { parseCidr, parseIPv4 } from '../dataplane/addr.ts';
import { canonicalIPv6, looksIPv6, parseCidr6, parseIPv6 } from '../dataplane/addr6.ts';
import { RawIp } from './loadgen-raw.ts';

export type LoadMode = 'new' | 'established' | 'tcp-connect';

export interface LoadSpec {
  mode: LoadMode;
  /** destination address (a ClusterIP, a NodePort address, an endpoint...) */
  target: string;
  port: number;
  /** source addresses: a CIDR local to this namespace (AnyIP route) or one address */
  sources: string;
  /** measuring time (s), after the warm-up */
  seconds: number;
  /** at most this many requests (after the warm-up); default unbounded */
  count?: number;
  /** closed loop: requests in flight (default 32, at most 65536) */
  concurrency?: number;
  /** open loop: requests per second (closed loop when absent) */
  rate?: number;
  /** a request not answered after this long is lost (default 1000 ms) */
  timeoutMs?: number;
  /** warm-up before measuring (default min(300 ms, seconds/10)) */
  warmupMs?: number;
  /** UDP payload bytes (default 32, at least 8) */
  payload?: number;
  /** first index in the (source address × source port) space: runs in one lab never reuse a 5-tuple */
  tupleOffset?: number;
  /** source port of the established flow (default 1023, outside the new-flow ports) */
  establishedPort?: number;
}

export interface RttSummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface LoadResult {
  mode: LoadMode;
  target: string;
  port: number;
  loop: 'closed' | 'open';
  concurrency: number | null;
  rate: number | null;
  /** measured window (s) */
  seconds: number;
  /** requests sent in the window */
  sent: number;
  /** answered in the window */
  completed: number;
  /** not answered within timeoutMs */
  lost: number;
  /** TCP: answered by a RST instead of a SYN-ACK */
  refused: number;
  /** completed / seconds: new flows/s in the new and tcp-connect modes, requests/s when established */
  perSec: number;
  /** request → answer, microseconds */
  rttUs: RttSummary;
  sendErrors: number;
  firstSendError: string;
  /** 5-tuples taken from the space, from tupleOffset (the next run starts at tupleOffset + tuplesUsed) */
  tuplesUsed: number;
}

const PROTO_UDP = 17;
const PROTO_TCP = 6;
const SLOT_BITS = 16;
const SLOTS = 1 << SLOT_BITS;
const SLOT_MASK = SLOTS - 1;
const PORT_LO = 1024;
const PORT_COUNT = 65536 - PORT_LO;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_ACK = 0x10;

// ------------------------------------------------------------------ packets

function sum16(buf: Uint8Array, off: number, len: number, acc: number): number {
  let i = off;
  const end = off + len - 1;
  for (; i < end; i += 2) acc += (buf[i] << 8) | buf[i + 1];
  if (i === end) acc += buf[i] << 8;
  return acc;
}

function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return ~acc & 0xffff;
}

function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 8;
  b[o + 1] = v & 0xff;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

function get32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/** An IPv4 header (20 bytes) at 0; the kernel fills in the checksum and the ID (IP_HDRINCL). */
function ipHeader(b: Uint8Array, total: number, proto: number, src: number, dst: number): void {
  b[0] = 0x45;
  b[1] = 0;
  put16(b, 2, total);
  put16(b, 4, 0);
  put16(b, 6, 0x4000); // DF
  b[8] = 64;
  b[9] = proto;
  put16(b, 10, 0);
  put32(b, 12, src);
  put32(b, 16, dst);
}

/** The pseudo-header sum of an L4 checksum. */
function pseudo(src: number, dst: number, proto: number, len: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
}

// ------------------------------------------------------------------ IPv6 packets

const IP6_HLEN = 40;

/** An IPv6 header (40 bytes) at 0: version 6, traffic class and flow label 0, hop limit 64. */
function ip6Header(b: Uint8Array, payloadLen: number, next: number, src: ArrayLike<number>, dst: ArrayLike<number>): void {
  put32(b, 0, 0x60000000);
  put16(b, 4, payloadLen);
  b[6] = next;
  b[7] = 64;
  for (let i = 0; i < 4; i++) {
    put32(b, 8 + 4 * i, src[i]);
    put32(b, 24 + 4 * i, dst[i]);
  }
}

/** IPv6's pseudo-header sum: both addresses, the upper-layer length (32 bits) and the next header. */
function pseudo6(src: ArrayLike<number>, dst: ArrayLike<number>, next: number, len: number): number {
  let acc = next + (len >>> 16) + (len & 0xffff);
  for (let i = 0; i < 4; i++) acc += (src[i] >>> 16) + (src[i] & 0xffff) + (dst[i] >>> 16) + (dst[i] & 0xffff);
  return acc;
}

/** IPv6 UDP request: IPv6 + UDP + payload (the request id in the first 4 bytes, then zeros); its length. Addresses: four network-order words. */
export function buildUdp6(b: Uint8Array, src: ArrayLike<number>, sport: number, dst: ArrayLike<number>, dport: number, id: number, payload: number): number {
  const udpLen = 8 + payload;
  const total = IP6_HLEN + udpLen;
  ip6Header(b, udpLen, PROTO_UDP, src, dst);
  put16(b, 40, sport);
  put16(b, 42, dport);
  put16(b, 44, udpLen);
  put16(b, 46, 0);
  put32(b, 48, id);
  b.fill(0, 52, total);
  let c = fold(sum16(b, 40, udpLen, pseudo6(src, dst, PROTO_UDP, udpLen)));
  if (c === 0) c = 0xffff;
  put16(b, 46, c);
  return total;
}

/** IPv6 TCP SYN with an MSS option (1440); the initial sequence number is the request id. */
export function buildSyn6(b: Uint8Array, src: ArrayLike<number>, sport: number, dst: ArrayLike<number>, dport: number, id: number): number {
  const tcpLen = 24;
  const total = IP6_HLEN + tcpLen;
  ip6Header(b, tcpLen, PROTO_TCP, src, dst);
  const o = IP6_HLEN;
  put16(b, o, sport);
  put16(b, o + 2, dport);
  put32(b, o + 4, id);
  put32(b, o + 8, 0);
  b[o + 12] = (tcpLen / 4) << 4;
  b[o + 13] = TCP_SYN;
  put16(b, o + 14, 64240);
  put16(b, o + 16, 0);
  put16(b, o + 18, 0);
  b[o + 20] = 2; // MSS
  b[o + 21] = 4;
  put16(b, o + 22, 1440);
  put16(b, o + 16, fold(sum16(b, o, tcpLen, pseudo6(src, dst, PROTO_TCP, tcpLen))));
  return total;
}

/** UDP request: IP + UDP + payload (the request id in the first 4 bytes, then zeros); returns its length. */
export function buildUdp(b: Uint8Array, src: number, sport: number, dst: number, dport: number, id: number, payload: number): number {
  const udpLen = 8 + payload;
  const total = 20 + udpLen;
  ipHeader(b, total, PROTO_UDP, src, dst);
  put16(b, 20, sport);
  put16(b, 22, dport);
  put16(b, 24, udpLen);
  put16(b, 26, 0);
  put32(b, 28, id);
  b.fill(0, 32, total);
  let c = fold(sum16(b, 20, udpLen, pseudo(src, dst, PROTO_UDP, udpLen)));
  if (c === 0) c = 0xffff;
  put16(b, 26, c);
  return total;
}

/** TCP SYN with an MSS option; the initial sequence number is the request id. */
export function buildSyn(b: Uint8Array, src: number, sport: number, dst: number, dport: number, id: number): number {
  const tcpLen = 24;
  const total = 20 + tcpLen;
  ipHeader(b, total, PROTO_TCP, src, dst);
  put16(b, 20, sport);
  put16(b, 22, dport);
  put32(b, 24, id);
  put32(b, 28, 0);
  b[32] = (tcpLen / 4) << 4;
  b[33] = TCP_SYN;
  put16(b, 34, 64240);
  put16(b, 36, 0);
  put16(b, 38, 0);
  b[40] = 2; // MSS
  b[41] = 4;
  put16(b, 42, 1460);
  put16(b, 36, fold(sum16(b, 20, tcpLen, pseudo(src, dst, PROTO_TCP, tcpLen))));
  return total;
}

// ------------------------------------------------------------------ the run

export interface SourceSpace {
  /** IPv4: the first address; IPv6: the last 32 bits of the first address */
  base: number;
  count: number;
  /** IPv6 only: the first address's four words (its last word = base) */
  base6?: Uint32Array;
}

export function parseSources(text: string): SourceSpace {
  if (looksIPv6(text)) {
    const c6 = parseCidr6(text);
    if (!c6) throw new Error(`loadgen: --sources "${text}" is not an IPv6 address or CIDR`);
    if (c6.bits < 96) throw new Error(`loadgen: --sources "${text}": an IPv6 source range must be /96 or longer (its addresses vary in the last 32 bits)`);
    return { base: c6.net[3], count: 2 ** (128 - c6.bits), base6: c6.net };
  }
  const c = parseCidr(text.includes('/') ? text : `${text}/32`);
  if (!c) throw new Error(`loadgen: --sources "${text}" is not an IPv4 address or CIDR`);
  const count = 2 ** (32 - c.bits);
  return { base: c.net >>> 0, count };
}

/** The i-th 5-tuple's source: addresses vary fastest, then ports 1024-65535 (IPv6: `src` is the address's last word). */
export function tupleAt(space: SourceSpace, i: number): { src: number; sport: number } {
  const a = i % space.count;
  const p = Math.floor(i / space.count) % PORT_COUNT;
  return { src: (space.base + a) >>> 0, sport: PORT_LO + p };
}

function checkSpec(s: LoadSpec): void {
  if (!['new', 'established', 'tcp-connect'].includes(s.mode)) throw new Error(`loadgen: mode "${s.mode}" is not new, established or tcp-connect`);
  const v6 = looksIPv6(s.target);
  if (v6 ? parseIPv6(s.target) === null : parseIPv4(s.target) < 0) throw new Error(`loadgen: target "${s.target}" is not an ${v6 ? 'IPv6' : 'IPv4'} address`);
  if (!Number.isInteger(s.port) || s.port < 1 || s.port > 65535) throw new Error(`loadgen: port ${s.port} is not 1-65535`);
  if (!(s.seconds > 0) || s.seconds > 3600) throw new Error(`loadgen: seconds ${s.seconds} must be within (0, 3600]`);
  if (s.count !== undefined && !(Number.isInteger(s.count) && s.count > 0)) throw new Error(`loadgen: count ${s.count} must be a positive integer`);
  if (s.rate !== undefined && !(s.rate > 0 && s.rate <= 5e6)) throw new Error(`loadgen: rate ${s.rate} must be within (0, 5e6]`);
  const k = s.concurrency ?? 32;
  if (!Number.isInteger(k) || k < 1 || k > SLOTS) throw new Error(`loadgen: concurrency ${k} must be an integer 1-${SLOTS}`);
  if ((s.payload ?? 32) < 8 || (s.payload ?? 32) > 1400) throw new Error(`loadgen: payload ${s.payload} must be 8-1400 bytes`);
  const space = parseSources(s.sources);
  if (v6 !== !!space.base6) throw new Error(`loadgen: sources "${s.sources}" and target "${s.target}" are not of one IP family`);
}

function summarize(h: hdr.Histogram): RttSummary {
  if (h.totalCount === 0) return { count: 0, p50: 0, p90: 0, p99: 0, max: 0, mean: 0 };
  const us = (ns: number) => Math.round(ns / 100) / 10;
  return {
    count: h.totalCount,
    p50: us(h.getValueAtPercentile(50)),
    p90: us(h.getValueAtPercentile(90)),
    p99: us(h.getValueAtPercentile(99)),
    max: us(h.maxValue),
    mean: us(h.mean),
  };
}

/** Run one load and resolve with what it measured. Needs root (raw socket) in the client's namespace. */
export function runLoad(spec: LoadSpec): Promise<LoadResult> {
  checkSpec(spec);
  const mode = spec.mode;
  const tcp = mode === 'tcp-connect';
  const v6 = looksIPv6(spec.target);
  const dst = v6 ? 0 : parseIPv4(spec.target) >>> 0;
  // IPv6: the target's words, its text as the raw socket reports sources, the source address being built
  const dst6 = v6 ? parseIPv6(spec.target)! : new Uint32Array(4);
  const dstText6 = v6 ? canonicalIPv6(spec.target)! : '';
  const src6 = new Uint32Array(4);
  const dport = spec.port;
  const space = parseSources(spec.sources);
  if (space.base6) src6.set(space.base6);
  const payload = spec.payload ?? 32;
  const open = spec.rate !== undefined;
  const k = open ? SLOTS : (spec.concurrency ?? 32);
  const timeoutMs = spec.timeoutMs ?? 1000;
  const warmupMs = spec.warmupMs ?? Math.min(300, spec.seconds * 100);
  const maxCount = spec.count ?? Infinity;
  const estPort = spec.establishedPort ?? 1023;
  let tupleNext = spec.tupleOffset ?? 0;
  const tupleFirst = tupleNext;

  const hist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120e9, numberOfSignificantValueDigits: 3 });
  const slotId = new Uint32Array(SLOTS);
  const slotGen = new Uint16Array(SLOTS);
  const slotTime = new Float64Array(SLOTS); // 0: free
  const tx = Buffer.alloc(2048);

  let measuring = false;
  let stopping = false;
  let sent = 0;
  let completed = 0;
  let lost = 0;
  let refused = 0;
  let inFlight = 0;
  let nextOpenSlot = 0;
  let tStart = 0;
  let tEnd = 0;

  return new Promise<LoadResult>((resolve, reject) => {
    let sock: RawIp;
    const sendOn = (slot: number): void => {
      const gen = (slotGen[slot] = (slotGen[slot] + 1) & 0xffff);
      const id = ((gen << SLOT_BITS) | slot) >>> 0;
      let len: number;
      if (v6) {
        if (mode === 'established') {
          src6[3] = space.base;
          len = buildUdp6(tx, src6, estPort, dst6, dport, id, payload);
        } else {
          const t = tupleAt(space, tupleNext++);
          src6[3] = t.src;
          len = tcp ? buildSyn6(tx, src6, t.sport, dst6, dport, id) : buildUdp6(tx, src6, t.sport, dst6, dport, id, payload);
        }
      } else if (mode === 'established') {
        len = buildUdp(tx, space.base, estPort, dst, dport, id, payload);
      } else {
        const t = tupleAt(space, tupleNext++);
        len = tcp ? buildSyn(tx, t.src, t.sport, dst, dport, id) : buildUdp(tx, t.src, t.sport, dst, dport, id, payload);
      }
      slotId[slot] = id;
      slotTime[slot] = performance.now();
      inFlight++;
      if (measuring) sent++;
      if (!sock.send(tx, len, spec.target)) {
        // the kernel refused it (e.g. no route): free the slot, count it lost
        slotTime[slot] = 0;
        inFlight--;
        if (measuring) lost++;
      }
    };
    const mayStart = (): boolean => !stopping && (!measuring || sent < maxCount);

    const answered = (id: number, rst: boolean): void => {
      const slot = id & SLOT_MASK;
      const t0 = slotTime[slot];
      if (t0 === 0 || slotId[slot] !== id) return; // late (already counted lost) or not ours
      const now = performance.now();
      slotTime[slot] = 0;
      inFlight--;
      if (measuring) {
        if (rst) refused++;
        else {
          completed++;
          hist.recordValue(Math.max(1, Math.round((now - t0) * 1e6)));
        }
      }
      if (!open && mayStart()) sendOn(slot);
      else if (stopping && inFlight === 0) finish();
    };

    // IPv6: the raw socket hands over the L4 header on (no IPv6 header) and the source as text
    const onPacket6 = (b: Buffer, len: number, source: string): void => {
      if (len < 8 || source !== dstText6) return; // answers come from the address we sent to
      if (((b[0] << 8) | b[1]) !== dport) return;
      if (tcp) {
        if (len < 20) return;
        const flags = b[13];
        const ack = get32(b, 8);
        if ((flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK)) answered((ack - 1) >>> 0, false);
        else if (flags & TCP_RST && flags & TCP_ACK) answered((ack - 1) >>> 0, true);
      } else {
        if (len < 12) return;
        answered(get32(b, 8), false);
      }
    };

    const onPacket = (b: Buffer, len: number): void => {
      if (len < 28 || (b[0] >>> 4) !== 4) return;
      const ihl = (b[0] & 0x0f) << 2;
      if (get32(b, 12) !== dst) return; // answers come from the address we sent to
      const l4 = ihl;
      if (((b[l4] << 8) | b[l4 + 1]) !== dport) return;
      if (tcp) {
        if (b[9] !== PROTO_TCP || len < l4 + 20) return;
        const flags = b[l4 + 13];
        const ack = get32(b, l4 + 8);
        if ((flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK)) answered((ack - 1) >>> 0, false);
        else if (flags & TCP_RST && flags & TCP_ACK) answered((ack - 1) >>> 0, true);
      } else {
        if (b[9] !== PROTO_UDP || len < l4 + 12) return;
        answered(get32(b, l4 + 8), false);
      }
    };

    try {
      sock = v6 ? new RawIp(tcp ? PROTO_TCP : PROTO_UDP, onPacket6, 6) : new RawIp(tcp ? PROTO_TCP : PROTO_UDP, onPacket);
    } catch (e) {
      reject(e);
      return;
    }

    let finished = false;
    let pacer: NodeJS.Timeout | null = null;
    let reaper: NodeJS.Timeout | null = null;
    let stopTimer: NodeJS.Timeout | null = null;
    let warmTimer: NodeJS.Timeout | null = null;
    let drainTimer: NodeJS.Timeout | null = null;
    function finish(): void {
      if (finished) return;
      finished = true;
      for (const tm of [pacer, reaper, stopTimer, warmTimer, drainTimer]) if (tm) clearTimeout(tm);
      if (pacer) clearInterval(pacer);
      if (reaper) clearInterval(reaper);
      sock.close();
      const seconds = (tEnd || performance.now()) / 1000 - tStart / 1000;
      resolve({
        mode,
        target: spec.target,
        port: dport,
        loop: open ? 'open' : 'closed',
        concurrency: open ? null : k,
        rate: open ? spec.rate! : null,
        seconds: Math.round(seconds * 1e4) / 1e4,
        sent,
        completed,
        lost,
        refused,
        perSec: seconds > 0 ? Math.round((completed / seconds) * 10) / 10 : 0,
        rttUs: summarize(hist),
        sendErrors: sock.sendErrors,
        firstSendError: sock.firstSendError,
        tuplesUsed: tupleNext - tupleFirst,
      });
    }

    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      tEnd = performance.now();
      if (inFlight === 0) return finish();
      // answers to requests still in flight count, up to the timeout
      drainTimer = setTimeout(() => {
        // what is still out now is lost
        for (let s = 0; s < SLOTS; s++) if (slotTime[s] !== 0) lost++;
        finish();
      }, timeoutMs);
    };

    // lost requests: free their slots (and send the next one in a closed loop)
    reaper = setInterval(() => {
      const now = performance.now();
      const limit = open ? SLOTS : k;
      for (let s = 0; s < limit; s++) {
        const t0 = slotTime[s];
        if (t0 !== 0 && now - t0 > timeoutMs) {
          slotTime[s] = 0;
          inFlight--;
          if (measuring) lost++;
          if (!open && mayStart()) sendOn(s);
        }
      }
      if (measuring && sent >= maxCount && !stopping) stop();
      if (stopping && inFlight === 0) finish();
    }, Math.min(50, Math.max(5, timeoutMs / 4)));

    const begin = (): void => {
      measuring = true;
      hist.reset();
      tStart = performance.now();
      stopTimer = setTimeout(stop, spec.seconds * 1000);
    };

    if (open) {
      const rate = spec.rate!;
      let t0 = performance.now();
      let issued = 0;
      let warm = warmupMs > 0;
      pacer = setInterval(() => {
        if (stopping) return;
        const now = performance.now();
        if (warm && now - t0 >= warmupMs) {
          warm = false;
          begin();
          t0 = now;
          issued = 0;
        }
        const due = Math.floor(((now - t0) / 1000) * rate) - issued;
        for (let i = 0; i < due && mayStart(); i++) {
          const s = nextOpenSlot;
          nextOpenSlot = (nextOpenSlot + 1) & SLOT_MASK;
          if (slotTime[s] !== 0) {
            // 65 536 requests outstanding: the oldest is lost
            slotTime[s] = 0;
            inFlight--;
            if (measuring) lost++;
          }
          sendOn(s);
          issued++;
        }
        if (measuring && sent >= maxCount) stop();
      }, 1);
      if (!warm) begin();
    } else {
      if (warmupMs <= 0) begin();
      for (let s = 0; s < k && mayStart(); s++) sendOn(s);
      if (warmupMs > 0) warmTimer = setTimeout(begin, warmupMs);
    }
  });
}

/** The ceiling check: is `perSec` within 20 % of what the generator reached on a plain routed path? */
export function nearCeiling(perSec: number, ceilingPerSec: number | null | undefined): boolean {
  return !!ceilingPerSec && perSec >= 0.8 * ceilingPerSec;
}

export function formatResult(r: LoadResult, ceiling?: LoadResult | null): string {
  const rtt = r.rttUs;
  const lines = [
    `${r.mode} → ${r.target}:${r.port}, ${r.loop} loop ${r.loop === 'closed' ? `K=${r.concurrency}` : `${r.rate}/s`}, ${r.seconds.toFixed(2)} s`,
    `  ${r.perSec.toFixed(0)} ${r.mode === 'established' ? 'requests' : 'new flows'}/s; ${r.completed} answered, ${r.lost} lost${r.refused ? `, ${r.refused} refused (RST)` : ''}${r.sendErrors ? `, ${r.sendErrors} send errors (${r.firstSendError})` : ''}`,
    `  RTT µs: p50 ${rtt.p50}  p90 ${rtt.p90}  p99 ${rtt.p99}  max ${rtt.max}  (mean ${rtt.mean}, ${rtt.count} samples)`,
  ];
  if (ceiling) {
    lines.push(
      `  ceiling (plain routed path, no NAT, ${ceiling.target}:${ceiling.port}): ${ceiling.perSec.toFixed(0)}/s, p50 ${ceiling.rttUs.p50} µs` +
        (nearCeiling(r.perSec, ceiling.perSec) ? ' — WITHIN 20 % OF THE GENERATOR\'S CEILING: the generator may be the limit' : ''),
    );
  }
  return lines.join('\n');
}

// ------------------------------------------------------------------ CLI / agent

function parseArgs(argv: string[]): Record<string, string | boolean> {
  const out: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`loadgen: unexpected argument "${a}"`);
    const key = a.slice(2);
    if (['agent', 'json', 'help'].includes(key)) out[key] = true;
    else {
      const v = argv[++i];
      if (v === undefined) throw new Error(`loadgen: --${key} needs a value`);
      out[key] = v;
    }
  }
  return out;
}

function hostPort(text: string, what: string): { address: string; port: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(text) ?? /^\[([0-9A-Fa-f:.]+)\]:(\d+)$/.exec(text);
  if (!m) throw new Error(`loadgen: ${what} "${text}" is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)`);
  return { address: m[1], port: Number(m[2]) };
}

const USAGE = `usage: loadgen --target ADDR:PORT|[ADDR6]:PORT --sources CIDR [--mode new|established|tcp-connect]
               [--seconds S] [--count N] [--concurrency K | --rate R] [--timeout-ms MS]
               [--payload BYTES] [--tuple-offset I] [--ceiling ADDR:PORT] [--json]
       loadgen --agent      (JSON LoadSpec lines on stdin, JSON LoadResult lines on stdout)`;

async function agent(): Promise<void> {
  const rl = createInterface({ input: process.stdin });
  process.stdout.write(JSON.stringify({ ready: true, pid: process.pid }) + '\n');
  for await (const line of rl) {
    if (!line.trim()) continue;
    try {
      const spec = JSON.parse(line) as LoadSpec;
      const r = await runLoad(spec);
      process.stdout.write(JSON.stringify(r) + '\n');
    } catch (e) {
      process.stdout.write(JSON.stringify({ error: (e as Error).message }) + '\n');
    }
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (o.help) {
    console.log(USAGE);
    return;
  }
  if (o.agent) return agent();
  if (typeof o.target !== 'string' || typeof o.sources !== 'string') throw new Error(`loadgen: --target and --sources are required\n${USAGE}`);
  const t = hostPort(o.target, '--target');
  const num = (k: string): number | undefined => {
    if (o[k] === undefined) return undefined;
    const n = Number(o[k]);
    if (!Number.isFinite(n)) throw new Error(`loadgen: --${k} "${o[k]}" is not a number`);
    return n;
  };
  const spec: LoadSpec = {
    mode: (o.mode as LoadMode) ?? 'new',
    target: t.address,
    port: t.port,
    sources: o.sources,
    seconds: num('seconds') ?? 5,
    count: num('count'),
    concurrency: num('concurrency'),
    rate: num('rate'),
    timeoutMs: num('timeout-ms'),
    payload: num('payload'),
    tupleOffset: num('tuple-offset'),
  };
  let ceiling: LoadResult | null = null;
  if (typeof o.ceiling === 'string') {
    const c = hostPort(o.ceiling, '--ceiling');
    ceiling = await runLoad({ ...spec, target: c.address, port: c.port });
    spec.tupleOffset = (spec.tupleOffset ?? 0) + ceiling.tuplesUsed;
  }
  const r = await runLoad(spec);
  if (o.json) console.log(JSON.stringify({ ...r, ceiling, nearCeiling: nearCeiling(r.perSec, ceiling?.perSec) }));
  else console.log(formatResult(r, ceiling));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error((e as Error).message);
    process.exitCode = 1;
  });
}
