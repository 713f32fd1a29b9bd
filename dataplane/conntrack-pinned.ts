/**
 * The pinned connection table: every flow of the table also lives, as one
 * fixed-size record, in a file mapped MAP_SHARED (dataplane/pin), by default
 * /dev/shm/tunproxy/<tun>.ct. The process writes it with plain typed-array
 * stores on insert, on every packet that changes a flow (state, deadline,
 * counters) and on removal; nothing is flushed, nothing is copied. When the
 * process dies (kill -9, a crash, the OOM killer) the pages stay in /dev/shm,
 * and the next `tunproxy run` finds the file, checks it, rebuilds the
 * in-process index from its records and goes on — the way Cilium's agent
 * finds its pinned BPF maps after a restart.
 *
 * File layout, version 1 (little-endian, as the machine that wrote it; a file
 * is only ever read in the boot it was written in):
 *
 *   header, 256 bytes
 *     0  u32  magic 0x54435054 ("TPCT")
 *     4  u32  layout version (1)
 *     8  u32  header size (256)
 *    12  u32  record size (96)
 *    16  u32  capacity (records)
 *    20  u32  0
 *    24  f64  created, ms since the epoch
 *    32  40 B boot id (/proc/sys/kernel/random/boot_id), ASCII, NUL padded
 *    72  64 B network namespace: readlink /proc/self/ns/net and its SO_NETNS_COOKIE,
 *             "net:[4026532281] cookie 12", ASCII, NUL padded
 *   136  u32  pid of the writer
 *   140  u32  checksum of bytes 0..139
 *   144  u32  1 = a process has it open, 2 = closed cleanly (SIGTERM)
 *
 *   record i at 256 + 96 i: the flow in slot i of the table (slots are dense)
 *     0  u32  seq: odd while the record is being written, even when whole
 *     4  u32  checksum of bytes 8..43 (the parts fixed for the flow's life)
 *     8  u8   protocol (0: empty record), 3 bytes 0
 *    12  u32  original source        16 u32 original destination
 *    20  u16  original source port   22 u16 original destination port
 *    24  u32  reply source (the endpoint)  28 u32 reply destination
 *    32  u16  reply source port      34 u16 reply destination port
 *    36  i32  service index          40 u32 FNV-1a hash of the service name
 *    44  u8   state                  45 u8  flags: 1 seen reply, 2 assured, 4 masquerade
 *    48  f64  deadline, CLOCK_BOOTTIME ms (one clock for the boot: it survives the process)
 *    56  f64  created, CLOCK_BOOTTIME ms
 *    64  f64  original packets  72 f64 original bytes  80 f64 reply packets  88 f64 reply bytes
 *
 * A record whose seq is odd was torn by the crash (the process died between
 * the first and the last store of one update); one whose checksum does not
 * match, or whose fields are out of range, is damaged. Both are skipped and
 * counted, never trusted. A file of another boot (no connection of then is
 * alive), another network namespace, another layout version, or with a bad
 * header is set aside (renamed *.set-aside-<time>) with the reason.
 *
 * The service name is kept as a hash: on recovery it is resolved against the
 * names of the rule set in force (the saved one, normally the same); a name
 * that no longer exists comes back as '' (the flow still forwards; it is
 * listed without its service).
 *
 * IPv6 flows live in a second file beside this one, <tun>.ct6
 * (conntrack-pinned6.ts): the same header with its own magic ("TPC6") and
 * record size, records of 144 bytes with 128-bit addresses. Everything but
 * the records' fixed part is shared, and written by the code here: the
 * header and its checks (PinLayout says which family a file is), the seq
 * bracket and checksum of a record, its changing part (state, flags,
 * deadline, created, counters: the last 52 bytes of a record of either
 * family, at `stateWord`), moves, recovery's checks and counts, and the
 * open / finish / set aside / close of the file (PinnedTable).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import { Conntrack, stateName, type ConntrackEntry, type ConntrackInfo, type ConntrackOptions } from './conntrack.ts';
import { boottimeMs, DEFAULT_PIN_DIR, mapNewFile, netnsCookie } from './pin/index.ts';
import { hostProvenance } from './provenance.ts';
import type { Provenance } from './provenance.ts';

export { DEFAULT_PIN_DIR };

export const PIN_MAGIC = 0x54435054;
/** the IPv6 file's magic, "TPC6" */
export const PIN6_MAGIC = 0x36435054;
export const PIN_LAYOUT_VERSION = 1;
export const PIN_HEADER_SIZE = 256;
export const PIN_RECORD_SIZE = 96;
export const PIN6_RECORD_SIZE = 144;

/**
 * What a pinned file holds: its family's magic, layout version and record
 * size, and where a record's changing part starts (the int32 word of the
 * state and flags; the six float64s follow it). A record's fixed part is its
 * words 2 .. stateWord, the checksum covers exactly those.
 */
export interface PinLayout {
  readonly family: 'IPv4' | 'IPv6';
  readonly magic: number;
  readonly version: number;
  readonly recordSize: number;
  readonly stateWord: number;
}

export const PIN_LAYOUT_V4: PinLayout = Object.freeze({ family: 'IPv4', magic: PIN_MAGIC, version: PIN_LAYOUT_VERSION, recordSize: PIN_RECORD_SIZE, stateWord: 11 });
export const PIN_LAYOUT_V6: PinLayout = Object.freeze({ family: 'IPv6', magic: PIN6_MAGIC, version: PIN_LAYOUT_VERSION, recordSize: PIN6_RECORD_SIZE, stateWord: 23 });
const LAYOUTS = [PIN_LAYOUT_V4, PIN_LAYOUT_V6];

/** record fields, byte offsets */
export const R_SEQ = 0;
export const R_CHECK = 4;
export const R_PROTO = 8;
export const R_ORIG_SRC = 12;
export const R_ORIG_DST = 16;
export const R_ORIG_SPORT = 20;
export const R_ORIG_DPORT = 22;
export const R_REPLY_SRC = 24;
export const R_REPLY_DST = 28;
export const R_REPLY_SPORT = 32;
export const R_REPLY_DPORT = 34;
export const R_SERVICE_INDEX = 36;
export const R_SERVICE_NAME_HASH = 40;
export const R_STATE = 44;
export const R_FLAGS = 45;
export const R_DEADLINE = 48;
export const R_CREATED = 56;
export const R_ORIG_PACKETS = 64;
export const R_ORIG_BYTES = 72;
export const R_REPLY_PACKETS = 80;
export const R_REPLY_BYTES = 88;

export const FLAG_SEEN_REPLY = 1;
export const FLAG_ASSURED = 2;
export const FLAG_MASQUERADE = 4;

const H_CHECK = 140;
const H_STATE = 144;
export const PIN_OPEN = 1;
export const PIN_CLOSED = 2;

/** where the records start, in int32 words */
export const HW = PIN_HEADER_SIZE / 4;
const HF = PIN_HEADER_SIZE / 8;

/** This boot and this network namespace: where a pinned table is valid (the namespace with its cookie). */
export type PinProvenance = Provenance;

export function pinProvenance(): PinProvenance {
  const host = hostProvenance();
  let netns = host.netns;
  // the inode of a namespace that is gone may be given to a new one: the cookie is not reused
  const cookie = netns === '' ? null : netnsCookie();
  if (cookie !== null) netns += ` cookie ${cookie}`;
  return { bootId: host.bootId, netns };
}

/** FNV-1a over the UTF-16 code units of a name, as a uint32 (0 for ''). */
export function serviceNameHash(name: string): number {
  if (name === '') return 0;
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0 || 1;
}

function mix(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** murmur3-style checksum of int32 words [from, to) of `w` (seeded, finalized), as an int32. */
export function wordsChecksum(w: Int32Array, from: number, to: number): number {
  let h = 0x1bad5eed;
  for (let i = from; i < to; i++) h = mix(h, w[i]);
  h ^= (to - from) * 4;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

function putAscii(u8: Uint8Array, off: number, len: number, s: string): void {
  for (let i = 0; i < len; i++) u8[off + i] = i < s.length ? s.charCodeAt(i) & 0x7f : 0;
}

function getAscii(u8: Uint8Array, off: number, len: number): string {
  let s = '';
  for (let i = 0; i < len && u8[off + i] !== 0; i++) s += String.fromCharCode(u8[off + i]);
  return s;
}

/** The file's size for a capacity (IPv4 records unless another layout is given). */
export function pinFileSize(capacity: number, layout: PinLayout = PIN_LAYOUT_V4): number {
  return PIN_HEADER_SIZE + capacity * layout.recordSize;
}

/** Write a version-1 header (of `layout`'s family, IPv4 by default) into the first 256 bytes of `buf`. */
export function writeHeader(buf: ArrayBuffer, capacity: number, prov: PinProvenance, createdMs: number, pid: number, layout: PinLayout = PIN_LAYOUT_V4): void {
  const u8 = new Uint8Array(buf, 0, PIN_HEADER_SIZE);
  const w = new Int32Array(buf, 0, HW);
  const f = new Float64Array(buf, 0, HF);
  u8.fill(0);
  w[0] = layout.magic;
  w[1] = layout.version;
  w[2] = PIN_HEADER_SIZE;
  w[3] = layout.recordSize;
  w[4] = capacity;
  f[3] = createdMs;
  putAscii(u8, 32, 40, prov.bootId);
  putAscii(u8, 72, 64, prov.netns);
  w[136 / 4] = pid;
  w[H_CHECK / 4] = wordsChecksum(w, 0, H_CHECK / 4);
  w[H_STATE / 4] = PIN_OPEN;
}

export interface PinHeader {
  version: number;
  capacity: number;
  createdMs: number;
  bootId: string;
  netns: string;
  pid: number;
  /** PIN_OPEN (the writer was running, or crashed) or PIN_CLOSED (stopped cleanly) */
  state: number;
}

/**
 * Check a whole file's bytes (header and records) against this boot and
 * namespace. Returns the header, or the reason the file must not be trusted.
 */
export function checkHeader(bytes: Uint8Array, prov: PinProvenance, layout: PinLayout = PIN_LAYOUT_V4): { ok: true; header: PinHeader } | { ok: false; reason: string } {
  if (bytes.byteLength < PIN_HEADER_SIZE) return { ok: false, reason: `${bytes.byteLength} bytes, shorter than the ${PIN_HEADER_SIZE}-byte header` };
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + PIN_HEADER_SIZE);
  const w = new Int32Array(buf);
  const u8 = new Uint8Array(buf);
  if (w[0] !== layout.magic) {
    const other = LAYOUTS.find((l) => l.magic === w[0]);
    if (other !== undefined) return { ok: false, reason: `an ${other.family} connection table where an ${layout.family} one belongs (magic)` };
    return { ok: false, reason: 'not a tunproxy connection table (bad magic)' };
  }
  if (w[1] !== layout.version) return { ok: false, reason: `layout version ${w[1] >>> 0}; this tunproxy reads version ${layout.version}` };
  if (w[H_CHECK / 4] !== wordsChecksum(w, 0, H_CHECK / 4)) return { ok: false, reason: 'header checksum mismatch (damaged header)' };
  if (w[2] !== PIN_HEADER_SIZE || w[3] !== layout.recordSize) return { ok: false, reason: `header size ${w[2]} / record size ${w[3]}, expected ${PIN_HEADER_SIZE} / ${layout.recordSize}` };
  const capacity = w[4];
  if (capacity < 1 || bytes.byteLength !== pinFileSize(capacity, layout)) return { ok: false, reason: `${bytes.byteLength} bytes for a capacity of ${capacity} records (expected ${pinFileSize(capacity, layout)}): truncated?` };
  const header: PinHeader = {
    version: w[1],
    capacity,
    createdMs: new Float64Array(buf)[3],
    bootId: getAscii(u8, 32, 40),
    netns: getAscii(u8, 72, 64),
    pid: w[136 / 4],
    state: w[H_STATE / 4],
  };
  if (prov.bootId !== '' && header.bootId !== prov.bootId) return { ok: false, reason: `written in another boot (${header.bootId}, this is ${prov.bootId}): no connection of then is alive` };
  if (prov.netns !== '' && header.netns !== prov.netns) return { ok: false, reason: `written in another network namespace (${header.netns}, this is ${prov.netns})` };
  return { ok: true, header };
}

/** How a recovery went: flows back in the table, and every record left out, by reason. */
export interface PinRecovery {
  records: number;
  restored: number;
  /** seq odd: the writer died in the middle of this record's update */
  torn: number;
  /** checksum mismatch or a field out of range */
  damaged: number;
  /** the deadline passed while no process ran */
  expired: number;
  /** the tuple is already in the table (a record duplicated by a crash during a move) or refused by insert */
  clashes: number;
  /** the service name hash matched no service of the rule set in force */
  unresolvedNames: number;
}

/**
 * The pinned store: typed-array views over the mapped file. Slot i of the
 * table is record i. Writes are plain stores; `seq` brackets every update.
 * One class for both families (one hidden class on the packet path): the
 * fixed part of a record is written by writeAll (IPv4) or writeAll6 (IPv6),
 * everything else is shared.
 */
export class PinnedStore {
  readonly capacity: number;
  readonly buffer: ArrayBuffer;
  readonly layout: PinLayout;
  /** int32 view of the whole file */
  readonly w: Int32Array;
  readonly f: Float64Array;
  readonly u8: Uint8Array;
  /** add to a conntrack time (the table's clock) to get CLOCK_BOOTTIME ms */
  bootOffset: number;
  /** record size in int32 words */
  private readonly rw: number;
  /** the record's word of state and flags (the changing part starts there) */
  private readonly sw: number;
  private lastName = '';
  private lastNameHash = 0;

  constructor(buffer: ArrayBuffer, capacity: number, bootOffset: number, layout: PinLayout = PIN_LAYOUT_V4) {
    const size = pinFileSize(capacity, layout);
    if (buffer.byteLength < size) throw new RangeError(`pinned store: ${buffer.byteLength} bytes is too small for ${capacity} ${layout.family} records`);
    this.buffer = buffer;
    this.capacity = capacity;
    this.layout = layout;
    this.w = new Int32Array(buffer, 0, size / 4);
    this.f = new Float64Array(buffer, 0, size / 8);
    this.u8 = new Uint8Array(buffer, 0, size);
    this.bootOffset = bootOffset;
    this.rw = layout.recordSize / 4;
    this.sw = layout.stateWord;
  }

  private nameHash(name: string): number {
    if (name !== this.lastName) {
      this.lastName = name;
      this.lastNameHash = serviceNameHash(name);
    }
    return this.lastNameHash;
  }

  /** The whole record of an IPv4 flow (on insert). */
  writeAll(slot: number, e: ConntrackEntry): void {
    const w = this.w;
    const b = HW + slot * this.rw;
    const seq = w[b] | 1; // odd: being written
    w[b] = seq;
    w[b + 2] = e.proto;
    w[b + 3] = e._origSrc;
    w[b + 4] = e._origDst;
    w[b + 5] = e.origSport | (e.origDport << 16);
    w[b + 6] = e._replySrc;
    w[b + 7] = e._replyDst;
    w[b + 8] = e.replySport | (e.replyDport << 16);
    w[b + 9] = e.serviceIndex;
    w[b + 10] = this.nameHash(e.serviceName);
    w[b + 1] = wordsChecksum(w, b + 2, b + 11);
    this.writeBody(b, e);
    w[b] = (seq + 1) | 0;
  }

  /**
   * The whole record of an IPv6 flow (on insert): `proto` as the outside
   * sees it (58 for ICMPv6), the flow's 16 address words at words[wo..wo+16)
   * (Conntrack6's side array: origSrc, origDst, replySrc, replyDst).
   */
  writeAll6(slot: number, e: ConntrackEntry, proto: number, words: Uint32Array, wo: number): void {
    const w = this.w;
    const b = HW + slot * this.rw;
    const seq = w[b] | 1;
    w[b] = seq;
    w[b + 2] = proto;
    w[b + 3] = e.origSport | (e.origDport << 16);
    w[b + 4] = e.replySport | (e.replyDport << 16);
    w[b + 5] = e.serviceIndex;
    w[b + 6] = this.nameHash(e.serviceName);
    for (let i = 0; i < 16; i++) w[b + 7 + i] = words[wo + i];
    w[b + 1] = wordsChecksum(w, b + 2, b + 23);
    this.writeBody(b, e);
    w[b] = (seq + 1) | 0;
  }

  /** The parts a packet changes: state, flags, deadline, counters (on every update). */
  writeDynamic(slot: number, e: ConntrackEntry): void {
    const w = this.w;
    const b = HW + slot * this.rw;
    const seq = w[b] | 1;
    w[b] = seq;
    this.writeBody(b, e);
    w[b] = (seq + 1) | 0;
  }

  private writeBody(b: number, e: ConntrackEntry): void {
    const f = this.f;
    const s = b + this.sw;
    const fb = (s + 1) >> 1;
    this.w[s] = e.state | ((e.seenReply ? FLAG_SEEN_REPLY : 0) | (e.assured ? FLAG_ASSURED : 0) | (e.masquerade ? FLAG_MASQUERADE : 0)) << 8;
    f[fb] = e.expires + this.bootOffset;
    f[fb + 1] = e.created + this.bootOffset;
    f[fb + 2] = e.origPackets;
    f[fb + 3] = e.origBytes;
    f[fb + 4] = e.replyPackets;
    f[fb + 5] = e.replyBytes;
  }

  /** Record `from` copied to `to` (the table moved its last flow into a hole). */
  move(from: number, to: number): void {
    const w = this.w;
    const rw = this.rw;
    const s = HW + from * rw;
    const d = HW + to * rw;
    const seq = w[d] | 1;
    w[d] = seq;
    for (let i = 1; i < rw; i++) w[d + i] = w[s + i];
    w[d] = (seq + 1) | 0;
  }

  /** Record emptied (protocol 0). */
  clear(slot: number): void {
    const w = this.w;
    const rw = this.rw;
    const b = HW + slot * rw;
    w[b + 2] = 0; // protocol first: from here on the record is empty
    for (let i = 0; i < rw; i++) w[b + i] = 0;
  }

  clearAll(): void {
    this.w.fill(0, HW);
  }

  markClosed(): void {
    this.w[H_STATE / 4] = PIN_CLOSED;
  }
}

/** What a record of either family holds beside its tuple. */
export interface PinnedRecordCommon {
  proto: number;
  serviceIndex: number;
  serviceNameHash: number;
  state: number;
  flags: number;
  deadline: number;
  created: number;
  origPackets: number;
  origBytes: number;
  replyPackets: number;
  replyBytes: number;
}

/** One IPv4 record read back and checked: the fields of a flow. */
export interface PinnedRecord extends PinnedRecordCommon {
  origSrc: number;
  origDst: number;
  origSport: number;
  origDport: number;
  replySrc: number;
  replyDst: number;
  replySport: number;
  replyDport: number;
}

const finiteCount = (x: number): boolean => Number.isFinite(x) && x >= 0 && x <= Number.MAX_SAFE_INTEGER && Math.floor(x) === x;

/**
 * The checks every record of either family goes through: empty, torn (seq
 * odd), damaged (checksum of the fixed part, protocol, state, flags,
 * deadline, counters). Returns the status, or the record's changing part
 * read into `out` (with proto, serviceIndex and serviceNameHash at words
 * 2, `svcWord`, `svcWord + 1`) and null.
 */
export function checkRecord(
  w: Int32Array, f: Float64Array, b: number, layout: PinLayout, tracked: (proto: number) => boolean, svcWord: number, out: PinnedRecordCommon,
): 'empty' | 'torn' | 'damaged' | null {
  const proto = w[b + 2];
  if (w[b] === 0 && proto === 0) return 'empty';
  if ((w[b] & 1) !== 0) return 'torn';
  const s = b + layout.stateWord;
  if (w[b + 1] !== wordsChecksum(w, b + 2, s)) return 'damaged';
  if (!tracked(proto)) return 'damaged';
  const sw = w[s];
  const state = sw & 0xff;
  const flags = (sw >>> 8) & 0xff;
  if ((sw >>> 16) !== 0 || (flags & ~7) !== 0) return 'damaged';
  if ((proto === PROTO_TCP || proto === PROTO_SCTP) && state !== 0 && stateName(proto, state) === '') return 'damaged';
  const fb = (s + 1) >> 1;
  const deadline = f[fb];
  const created = f[fb + 1];
  if (!Number.isFinite(deadline) || !Number.isFinite(created)) return 'damaged';
  const op = f[fb + 2], ob = f[fb + 3], rp = f[fb + 4], rb = f[fb + 5];
  if (!finiteCount(op) || !finiteCount(ob) || !finiteCount(rp) || !finiteCount(rb)) return 'damaged';
  out.proto = proto;
  out.serviceIndex = w[b + svcWord];
  out.serviceNameHash = w[b + svcWord + 1] >>> 0;
  out.state = state;
  out.flags = flags;
  out.deadline = deadline;
  out.created = created;
  out.origPackets = op;
  out.origBytes = ob;
  out.replyPackets = rp;
  out.replyBytes = rb;
  return null;
}

const tracked4 = (p: number): boolean => p === PROTO_TCP || p === PROTO_UDP || p === PROTO_ICMP || p === PROTO_SCTP;

/**
 * Read IPv4 record `i` of a file image (int32 and float64 views of it).
 * Returns 'empty', 'torn', 'damaged', or the record.
 */
export function readRecord(w: Int32Array, f: Float64Array, i: number): PinnedRecord | 'empty' | 'torn' | 'damaged' {
  const b = HW + i * (PIN_RECORD_SIZE / 4);
  const rec = { origSrc: 0, origDst: 0, origSport: 0, origDport: 0, replySrc: 0, replyDst: 0, replySport: 0, replyDport: 0 } as PinnedRecord;
  const status = checkRecord(w, f, b, PIN_LAYOUT_V4, tracked4, 9, rec);
  if (status !== null) return status;
  const p1 = w[b + 5];
  const p2 = w[b + 8];
  rec.origSrc = w[b + 3] >>> 0;
  rec.origDst = w[b + 4] >>> 0;
  rec.origSport = p1 & 0xffff;
  rec.origDport = p1 >>> 16;
  rec.replySrc = w[b + 6] >>> 0;
  rec.replyDst = w[b + 7] >>> 0;
  rec.replySport = p2 & 0xffff;
  rec.replyDport = p2 >>> 16;
  return rec;
}

/** What recovery needs of a table of either family: put one checked record back. */
export interface RecoverTarget<R extends PinnedRecordCommon> {
  /** the checked record at index i, or why it is left out */
  read(w: Int32Array, f: Float64Array, i: number): R | 'empty' | 'torn' | 'damaged';
  /** insert the record's flow (its service name resolved), without writing its record; null when refused */
  put(rec: R, serviceName: string, now: number): ConntrackEntry | null;
  /** write the whole record of a flow put back (its state, lifetime and counters set) */
  rewrite(e: ConntrackEntry): void;
}

/**
 * Put the flows of a checked file image (`image`: its bytes, header
 * included) into a table through `target`; `bootOffset` turns the table's
 * time into CLOCK_BOOTTIME, `names` resolve the records' name hashes.
 */
export function recoverImage<R extends PinnedRecordCommon>(
  image: Uint8Array, target: RecoverTarget<R>, bootOffset: number, names: Iterable<string>, now: number,
): PinRecovery {
  const copy = image.byteOffset % 8 === 0 ? image : image.slice();
  const w = new Int32Array(copy.buffer, copy.byteOffset, copy.byteLength >> 2);
  const f = new Float64Array(copy.buffer, copy.byteOffset, copy.byteLength >> 3);
  const capacity = w[4];
  const byHash = new Map<number, string>();
  for (const n of names) byHash.set(serviceNameHash(n), n);
  const r: PinRecovery = { records: 0, restored: 0, torn: 0, damaged: 0, expired: 0, clashes: 0, unresolvedNames: 0 };
  const bootNow = now + bootOffset;
  for (let i = 0; i < capacity; i++) {
    const rec = target.read(w, f, i);
    if (rec === 'empty') continue;
    r.records++;
    if (rec === 'torn') {
      r.torn++;
      continue;
    }
    if (rec === 'damaged') {
      r.damaged++;
      continue;
    }
    if (rec.deadline <= bootNow) {
      r.expired++;
      continue;
    }
    let name = '';
    if (rec.serviceNameHash !== 0) {
      const found = byHash.get(rec.serviceNameHash);
      if (found === undefined) r.unresolvedNames++;
      else name = found;
    }
    const e = target.put(rec, name, now);
    if (e === null) {
      r.clashes++;
      continue;
    }
    e.state = rec.state;
    e.seenReply = (rec.flags & FLAG_SEEN_REPLY) !== 0;
    e.assured = (rec.flags & FLAG_ASSURED) !== 0;
    e.expires = rec.deadline - bootOffset;
    e.created = rec.created - bootOffset;
    e.origPackets = rec.origPackets;
    e.origBytes = rec.origBytes;
    e.replyPackets = rec.replyPackets;
    e.replyBytes = rec.replyBytes;
    target.rewrite(e);
    r.restored++;
  }
  return r;
}

/** The part of a pinned table of either family that PinnedTable drives. */
export interface PinnedTableConntrack {
  readonly pin: PinnedStore;
  readonly maxEntries: number;
  recover(image: Uint8Array, names?: Iterable<string>, now?: number): PinRecovery;
}

/**
 * A Conntrack whose every flow is also a record in a pinned store. The
 * table's logic is Conntrack's; this class only mirrors slots into records:
 * insert writes the record, update its changing part, a removal moves the
 * last record into the hole and empties the last one.
 */
/** A Conntrack class (IPv4's or IPv6's) with its constructor's arguments. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type ConntrackClass = abstract new (...args: any[]) => Conntrack;

/**
 * The hooks every pinned table has, whatever its family: a packet that
 * changes a flow writes the record's changing part, a removal moves the last
 * record into the hole and empties the last one, a clear empties the store,
 * a restore writes the restored flows' records again. (Each family writes
 * the whole record on insert in its own class: the tuple is the family's.)
 */
export function withPinnedHooks<B extends ConntrackClass>(Base: B) {
  abstract class PinnedHooks extends Base {
    abstract readonly pin: PinnedStore;

    override update(entry: ConntrackEntry, direction: number, flags: number, bytes: number, now: number): number {
      const r = super.update(entry, direction, flags, bytes, now);
      if (entry.live) this.pin.writeDynamic(entry._slot, entry);
      return r;
    }

    protected override unlink(e: ConntrackEntry): void {
      if (!e.live) return;
      const slot = e._slot;
      const last = this.size - 1;
      super.unlink(e);
      if (slot !== last) this.pin.move(last, slot);
      this.pin.clear(last);
    }

    override clear(): void {
      super.clear();
      this.pin.clearAll();
    }

    override restore(items: unknown, now: number = this.clock()): number {
      const n = super.restore(items, now);
      // restore() sets state, lifetime and counters after the insert: write the records again
      for (const e of this.entries()) this.pin.writeDynamic(e._slot, e);
      return n;
    }
  }
  return PinnedHooks;
}

/** `pin`, once it holds records of `layout` and room for `maxEntries` (what a pinned table's constructor checks). */
export function checkedStore(pin: PinnedStore, layout: PinLayout, what: string, maxEntries: number): PinnedStore {
  if (pin.layout !== layout) throw new TypeError(`${what}: the store holds ${pin.layout.family} records, this table ${layout.family} flows`);
  if (pin.capacity < maxEntries) throw new RangeError(`${what}: the store holds ${pin.capacity} records, the table up to ${maxEntries}`);
  return pin;
}

export class PinnedConntrack extends withPinnedHooks(Conntrack) implements PinnedTableConntrack {
  readonly pin: PinnedStore;

  constructor(options: ConntrackOptions, pin: PinnedStore) {
    super(options);
    this.pin = checkedStore(pin, PIN_LAYOUT_V4, 'pinned conntrack', this.maxEntries);
  }

  override insert(
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
    const e = super.insert(proto, origSrc, origDst, origSport, origDport, replySrc, replyDst, replySport, replyDport, now, info);
    if (e !== null) this.pin.writeAll(e._slot, e);
    return e;
  }

  /**
   * Put the flows of a checked file image (`image`: its bytes, header
   * included) back into this (empty) table. `names`: the service names of
   * the rule set in force, to resolve the records' name hashes.
   */
  recover(image: Uint8Array, names: Iterable<string> = [], now: number = this.clock()): PinRecovery {
    const info: ConntrackInfo = { serviceName: '', serviceIndex: -1, endpointAddr: 0, endpointPort: 0, masquerade: false };
    return recoverImage<PinnedRecord>(image, {
      read: readRecord,
      put: (rec, name, t) => {
        info.serviceName = name;
        info.serviceIndex = rec.serviceIndex;
        info.endpointAddr = rec.replySrc;
        info.endpointPort = rec.replySport;
        info.masquerade = (rec.flags & FLAG_MASQUERADE) !== 0;
        return super.insert(rec.proto, rec.origSrc, rec.origDst, rec.origSport, rec.origDport, rec.replySrc, rec.replyDst, rec.replySport, rec.replyDport, t, info);
      },
      rewrite: (e) => this.pin.writeAll(e._slot, e),
    }, this.pin.bootOffset, names, now);
  }
}

/** What became of the table file found at start. */
export type PinnedFound =
  | { status: 'none' }
  | { status: 'recovered'; header: PinHeader; recovery: PinRecovery }
  | { status: 'set-aside'; reason: string; movedTo: string };

/** Rename an untrusted table aside under a name that exists nowhere yet. */
export function setAsidePinned(path: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[:.]/g, '-');
  let target = `${path}.set-aside-${stamp}`;
  for (let i = 1; existsSync(target); i++) target = `${path}.set-aside-${stamp}-${i}`;
  renameSync(path, target);
  return target;
}

export interface OpenPinnedOptions extends ConntrackOptions {
  /** directory of the pinned tables (DEFAULT_PIN_DIR) */
  dir: string;
  /** file name without the directory, e.g. "tun0.ct" (IPv4) or "tun0.ct6" (IPv6) */
  name: string;
  provenance?: PinProvenance;
  /** service names of the rule set in force (resolve the records' name hashes) */
  serviceNames?: Iterable<string>;
}

/**
 * The pinned table of a `tunproxy run`, of either family: open() checks the
 * file found at dir/name (a foreign or damaged one is set aside at once) and
 * builds the new table in a file beside it (<name>.new-<pid>); finish() puts
 * the old file's good records into the new table and renames the new file
 * over the old one. Between the two the caller loads the rule set, whose
 * service names resolve the records' name hashes. A crash before finish()
 * leaves the old file as it was (the next start removes the leftover .new-
 * file). The capacity is the table's maxEntries: a smaller --conntrack-max
 * than before evicts on insert. PinnedTable.open makes the IPv4 table;
 * conntrack-pinned6.ts's openPinnedTable6 the IPv6 one.
 */
export class PinnedTable<C extends PinnedTableConntrack = PinnedConntrack> {
  readonly conntrack: C;
  readonly path: string;
  readonly layout: PinLayout;
  private readonly tmp: string;
  private image: Uint8Array | null;
  private header: PinHeader | null;
  private setAside: { reason: string; movedTo: string } | null;
  found: PinnedFound | null = null;

  private constructor(conntrack: C, layout: PinLayout, path: string, tmp: string, image: Uint8Array | null, header: PinHeader | null, setAside: { reason: string; movedTo: string } | null) {
    this.conntrack = conntrack;
    this.layout = layout;
    this.path = path;
    this.tmp = tmp;
    this.image = image;
    this.header = header;
    this.setAside = setAside;
  }

  /** The IPv4 table. */
  static open(o: OpenPinnedOptions): PinnedTable<PinnedConntrack> {
    return PinnedTable.openLayout(o, PIN_LAYOUT_V4, (opts, store) => new PinnedConntrack(opts, store));
  }

  /** A table of `layout`'s family, made by `make` over its new store. */
  static openLayout<T extends PinnedTableConntrack>(o: OpenPinnedOptions, layout: PinLayout, make: (o: ConntrackOptions, store: PinnedStore) => T): PinnedTable<T> {
    const prov = o.provenance ?? pinProvenance();
    mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    const path = join(o.dir, o.name);
    // a start that died before finish() left its new file: the old one is still whole
    for (const f of readdirSync(o.dir)) if (f.startsWith(`${o.name}.new-`)) rmSync(join(o.dir, f), { force: true });
    let image: Uint8Array | null = null;
    let header: PinHeader | null = null;
    let aside: { reason: string; movedTo: string } | null = null;
    if (existsSync(path)) {
      const bytes = readFileSync(path);
      const c = checkHeader(bytes, prov, layout);
      if (c.ok) {
        image = bytes;
        header = c.header;
      } else aside = { reason: c.reason, movedTo: setAsidePinned(path) };
    }
    const capacity = o.maxEntries ?? 262144;
    const tmp = `${path}.new-${process.pid}`;
    const buf = mapNewFile(tmp, pinFileSize(capacity, layout));
    try {
      writeHeader(buf, capacity, prov, Date.now(), process.pid, layout);
      const clock = o.clock ?? (() => performance.now());
      const store = new PinnedStore(buf, capacity, boottimeMs() - clock(), layout);
      return new PinnedTable<T>(make(o, store), layout, path, tmp, image, header, aside);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
  }

  /** Recover the old file's flows (when there was a good one) and take its place. Once. */
  finish(serviceNames: Iterable<string> = []): PinnedFound {
    if (this.found !== null) return this.found;
    let found: PinnedFound = this.setAside !== null ? { status: 'set-aside', ...this.setAside } : { status: 'none' };
    if (this.image !== null && this.header !== null) {
      found = { status: 'recovered', header: this.header, recovery: this.conntrack.recover(this.image, serviceNames) };
      this.image = null;
    }
    renameSync(this.tmp, this.path);
    this.found = found;
    return found;
  }

  /**
   * The process ends before finish() (an error at start, or stopped while waiting for a rule
   * set): remove the new file; the old one stays for the next start. A no-op after finish().
   */
  abandon(): void {
    if (this.found === null) rmSync(this.tmp, { force: true });
  }

  /** SIGTERM: the table stays in the file (the next start recovers it), marked closed cleanly. */
  close(): void {
    this.conntrack.pin.markClosed();
  }
}

/** open() and finish() in one, for a caller that knows the service names already. */
export function openPinnedConntrack(o: OpenPinnedOptions): { conntrack: PinnedConntrack; path: string; found: PinnedFound } {
  const t = PinnedTable.open(o);
  const found = t.finish(o.serviceNames ?? []);
  return { conntrack: t.conntrack, path: t.path, found };
}
