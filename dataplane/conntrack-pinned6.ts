/**
 * The pinned IPv6 connection table: every flow of the IPv6 table (Conntrack6)
 * is also a record in a second file beside the IPv4 one,
 * <pin-dir>/<tun>.ct6, mapped MAP_SHARED and written on insert, on every
 * packet that changes a flow and on removal, exactly as the IPv4 table
 * (conntrack-pinned.ts, whose header, checks, provenance, checksum, record
 * bracket, recovery and file handling this file reuses: only the record's
 * fixed part is IPv6's own).
 *
 * File layout, version 1 (little-endian; read only in the boot that wrote it):
 *
 *   header, 256 bytes: as the IPv4 file's (conntrack-pinned.ts), with
 *     0  u32  magic 0x36435054 ("TPC6"; an IPv4 file where an IPv6 one belongs,
 *             or the reverse, is set aside with that reason)
 *     4  u32  layout version (1)
 *    12  u32  record size (144)
 *
 *   record i at 256 + 144 i: the flow in slot i of the IPv6 table
 *     0  u32  seq: odd while the record is being written, even when whole
 *     4  u32  checksum of bytes 8..91 (the parts fixed for the flow's life)
 *     8  u8   protocol as the outside sees it: 6, 17, 132, 58 (0: empty record), 3 bytes 0
 *    12  u16  original source port   14 u16 original destination port
 *    16  u16  reply source port      18 u16 reply destination port
 *    20  i32  service index          24 u32 FNV-1a hash of the service name
 *    28  16 B original source        44 16 B original destination
 *    60  16 B reply source (the endpoint)   76 16 B reply destination
 *             (each address as four uint32 words of Conntrack6's side array:
 *             the address's network-order words, stored little-endian)
 *    92  u8   state                  93 u8  flags: 1 seen reply, 2 assured, 4 masquerade
 *    96  f64  deadline, CLOCK_BOOTTIME ms
 *   104  f64  created, CLOCK_BOOTTIME ms
 *   112  f64  original packets  120 f64 original bytes  128 f64 reply packets  136 f64 reply bytes
 *
 * Bytes 92..143 are the IPv4 record's 44..95 (the shared changing part).
 * A torn record (seq odd) or a damaged one (checksum, protocol, state,
 * flags, numbers out of range) is skipped and counted, never trusted.
 */
import { PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import type { ConntrackOptions } from './conntrack.ts';
import type { ConntrackEntry } from './conntrack-entry.ts';
import { Conntrack6, CT6_WORDS, PROTO_ICMPV6, type ConntrackInfo6 } from './conntrack6.ts';
import {
  checkRecord,
  checkedStore,
  FLAG_MASQUERADE,
  HW,
  PIN6_RECORD_SIZE,
  PIN_LAYOUT_V6,
  PinnedTable,
  recoverImage,
  withPinnedHooks,
  type OpenPinnedOptions,
  type PinnedFound,
  type PinnedRecordCommon,
  type PinnedStore,
  type PinnedTableConntrack,
  type PinRecovery,
} from './conntrack-pinned.ts';

export { PIN6_RECORD_SIZE, PIN_LAYOUT_V6 };

/** record fields, byte offsets */
export const R6_PROTO = 8;
export const R6_ORIG_PORTS = 12;
export const R6_REPLY_PORTS = 16;
export const R6_SERVICE_INDEX = 20;
export const R6_SERVICE_NAME_HASH = 24;
export const R6_ORIG_SRC = 28;
export const R6_ORIG_DST = 44;
export const R6_REPLY_SRC = 60;
export const R6_REPLY_DST = 76;
export const R6_STATE = 92;
export const R6_FLAGS = 93;
export const R6_DEADLINE = 96;
export const R6_CREATED = 104;
export const R6_ORIG_PACKETS = 112;

/** One IPv6 record read back and checked. */
export interface PinnedRecord6 extends PinnedRecordCommon {
  /** the tuple's 16 words (origSrc, origDst, replySrc, replyDst), as Conntrack6.insert6 takes them */
  words: Uint32Array;
  origSport: number;
  origDport: number;
  replySport: number;
  replyDport: number;
}

const tracked6 = (p: number): boolean => p === PROTO_TCP || p === PROTO_UDP || p === PROTO_ICMPV6 || p === PROTO_SCTP;
const RW6 = PIN6_RECORD_SIZE / 4;

/** Read IPv6 record `i` of a file image. Returns 'empty', 'torn', 'damaged', or the record. */
export function readRecord6(w: Int32Array, f: Float64Array, i: number): PinnedRecord6 | 'empty' | 'torn' | 'damaged' {
  const b = HW + i * RW6;
  const rec = { words: new Uint32Array(CT6_WORDS), origSport: 0, origDport: 0, replySport: 0, replyDport: 0 } as PinnedRecord6;
  const status = checkRecord(w, f, b, PIN_LAYOUT_V6, tracked6, R6_SERVICE_INDEX / 4, rec);
  if (status !== null) return status;
  const p1 = w[b + 3];
  const p2 = w[b + 4];
  rec.origSport = p1 & 0xffff;
  rec.origDport = p1 >>> 16;
  rec.replySport = p2 & 0xffff;
  rec.replyDport = p2 >>> 16;
  for (let k = 0; k < CT6_WORDS; k++) rec.words[k] = w[b + 7 + k];
  return rec;
}

/**
 * A Conntrack6 whose every flow is also a record in a pinned store of the
 * IPv6 layout: insert6 writes the record, update its changing part, a
 * removal moves the last record into the hole and empties the last one (the
 * same hooks, and the same cost per packet, as the IPv4 PinnedConntrack).
 */
export class PinnedConntrack6 extends withPinnedHooks(Conntrack6) implements PinnedTableConntrack {
  readonly pin: PinnedStore;

  constructor(options: ConntrackOptions, pin: PinnedStore) {
    super(options);
    this.pin = checkedStore(pin, PIN_LAYOUT_V6, 'pinned conntrack6', this.maxEntries);
  }

  private writeAll(e: ConntrackEntry): void {
    this.pin.writeAll6(e._slot, e, this.protoOf(e), this.wordArray, this.wordsAt(e));
  }

  /** recover() puts records back that are in the file already: no write for those (its `rewrite` writes what moved) */
  private recovering = false;

  // every insert goes through insert6Keyed (insert6 hashes, then calls it; the packet path calls it with its keys)
  override insert6Keyed(
    proto: number, t: Uint32Array, origSport: number, origDport: number, replySport: number, replyDport: number,
    now: number, info: ConntrackInfo6, origHi: number, origLo: number, replyHi: number, replyLo: number,
  ): ConntrackEntry | null {
    const e = super.insert6Keyed(proto, t, origSport, origDport, replySport, replyDport, now, info, origHi, origLo, replyHi, replyLo);
    if (e !== null && !this.recovering) this.writeAll(e);
    return e;
  }

  /**
   * Put the flows of a checked IPv6 file image (its bytes, header included)
   * back into this (empty) table; `names` resolve the records' name hashes.
   */
  recover(image: Uint8Array, names: Iterable<string> = [], now: number = this.clock()): PinRecovery {
    const info = { serviceName: '', serviceIndex: -1, masquerade: false };
    this.recovering = true;
    try {
      return this.recoverWith(image, names, now, info);
    } finally {
      this.recovering = false;
    }
  }

  private recoverWith(image: Uint8Array, names: Iterable<string>, now: number, info: ConntrackInfo6): PinRecovery {
    return recoverImage<PinnedRecord6>(image, {
      read: readRecord6,
      put: (rec, name, t) => {
        info.serviceName = name;
        info.serviceIndex = rec.serviceIndex;
        info.masquerade = (rec.flags & FLAG_MASQUERADE) !== 0;
        return super.insert6(rec.proto, rec.words, rec.origSport, rec.origDport, rec.replySport, rec.replyDport, t, info);
      },
      rewrite: (e) => this.writeAll(e),
    }, this.pin.bootOffset, names, now);
  }
}

/** The IPv6 pinned table of a `tunproxy run` (open / finish / abandon / close as PinnedTable's). */
export function openPinnedTable6(o: OpenPinnedOptions): PinnedTable<PinnedConntrack6> {
  return PinnedTable.openLayout(o, PIN_LAYOUT_V6, (opts, store) => new PinnedConntrack6(opts, store));
}

/** open and finish in one, for a caller that knows the service names already. */
export function openPinnedConntrack6(o: OpenPinnedOptions): { conntrack: PinnedConntrack6; path: string; found: PinnedFound } {
  const t = openPinnedTable6(o);
  const found = t.finish(o.serviceNames ?? []);
  return { conntrack: t.conntrack, path: t.path, found };
}
