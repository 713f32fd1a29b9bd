/**
 * Snapshot and restore of the connection table: plain JSON-ready items, one
 * per live flow, lifetimes relative to the moment of the snapshot; restore
 * checks every item first (a malformed one throws naming the item and field,
 * and nothing is loaded). Split out of conntrack.ts, which re-exports it and
 * keeps Conntrack.snapshot()/restore() as the entry points.
 */

import { formatIPv4, parseIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import { stateName, stateNumber } from './conntrack-state.ts';
import type { ConntrackEntry, ConntrackInfo } from './conntrack-entry.ts';

/** What restore needs of a table: its insert(). */
export interface ConntrackInserter {
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
  ): ConntrackEntry | null;
}

/** Plain data (JSON-ready) for every flow given, lifetimes relative to `now`. */
export function snapshotEntries(entries: Iterable<ConntrackEntry>, now: number): ConntrackSnapshotItem[] {
  const items: ConntrackSnapshotItem[] = [];
  for (const e of entries) {
    items.push(snapshotItem(e, now, e.proto, formatIPv4(e.origSrc), formatIPv4(e.origDst), formatIPv4(e.replySrc), formatIPv4(e.replyDst)));
  }
  return items;
}

/** One flow as a snapshot item: its protocol as shown and its addresses as text given (either family). */
export function snapshotItem(e: ConntrackEntry, now: number, proto: number, origSrc: string, origDst: string, replySrc: string, replyDst: string): ConntrackSnapshotItem {
  return {
    proto,
    origSrc,
    origDst,
    origSport: e.origSport,
    origDport: e.origDport,
    replySrc,
    replyDst,
    replySport: e.replySport,
    replyDport: e.replyDport,
    state: stateName(e.proto, e.state),
    remainingMs: e.expires - now,
    ageMs: now - e.created,
    seenReply: e.seenReply,
    assured: e.assured,
    origPackets: e.origPackets,
    origBytes: e.origBytes,
    replyPackets: e.replyPackets,
    replyBytes: e.replyBytes,
    serviceName: e.serviceName,
    serviceIndex: e.serviceIndex,
    masquerade: e.masquerade,
  };
}

/**
 * Load snapshot items into a table. Every item is checked first; a malformed
 * one throws naming the item and field, and nothing is loaded. Returns how
 * many flows were restored (an item whose tuple clashes with a flow already
 * in the table is skipped).
 */
export function restoreEntries(ct: ConntrackInserter, items: unknown, now: number): number {
  if (!Array.isArray(items)) throw new TypeError('conntrack restore: expected an array of flows');
  const checked = items.map((item, i) => checkSnapshotItem(item, i));
  const names = new Map<string, string>();
  let n = 0;
  for (const it of checked) {
    if (it.remainingMs <= 0) continue;
    let serviceName = names.get(it.serviceName);
    if (serviceName === undefined) {
      serviceName = it.serviceName;
      names.set(serviceName, serviceName);
    }
    const e = ct.insert(it.proto, it.origSrc, it.origDst, it.origSport, it.origDport, it.replySrc, it.replyDst, it.replySport, it.replyDport, now, {
      serviceName,
      serviceIndex: it.serviceIndex,
      endpointAddr: it.replySrc,
      endpointPort: it.replySport,
      masquerade: it.masquerade,
    });
    if (e === null) continue;
    e.state = it.state;
    e.expires = now + it.remainingMs;
    e.created = now - it.ageMs;
    e.seenReply = it.seenReply;
    e.assured = it.assured;
    e.origPackets = it.origPackets;
    e.origBytes = it.origBytes;
    e.replyPackets = it.replyPackets;
    e.replyBytes = it.replyBytes;
    n++;
  }
  return n;
}

export interface ConntrackSnapshotItem {
  proto: number;
  origSrc: string;
  origDst: string;
  origSport: number;
  origDport: number;
  replySrc: string;
  replyDst: string;
  replySport: number;
  replyDport: number;
  /** conntrack -L's state name ('' for UDP and ICMP) */
  state: string;
  remainingMs: number;
  ageMs: number;
  seenReply: boolean;
  assured: boolean;
  origPackets: number;
  origBytes: number;
  replyPackets: number;
  replyBytes: number;
  serviceName: string;
  serviceIndex: number;
  masquerade: boolean;
}

/** A snapshot item once checked: addresses as A (a number for IPv4, words for IPv6), the state as its number. */
export type CheckedSnapshotItem<A> = Omit<ConntrackSnapshotItem, 'origSrc' | 'origDst' | 'replySrc' | 'replyDst' | 'state'> & {
  origSrc: A;
  origDst: A;
  replySrc: A;
  replyDst: A;
  state: number;
};

/** How a family's snapshot items are checked: its address parser and its tracked protocols. */
export interface SnapshotFamily<A> {
  /** the parsed address, or null when the text is not one */
  parseAddr(text: string): A | null;
  /** "IPv4", "IPv6" */
  name: string;
  tracked(proto: number): boolean;
  /** "TCP 6, UDP 17, SCTP 132, ICMP 1" */
  trackedText: string;
}

const IPV4_FAMILY: SnapshotFamily<number> = {
  parseAddr: (text) => {
    const a = parseIPv4(text);
    return a < 0 ? null : a;
  },
  name: 'IPv4',
  tracked: (proto) => proto === PROTO_TCP || proto === PROTO_UDP || proto === PROTO_ICMP || proto === PROTO_SCTP,
  trackedText: 'TCP 6, UDP 17, SCTP 132, ICMP 1',
};

type CheckedItem = CheckedSnapshotItem<number>;

function checkSnapshotItem(item: unknown, i: number): CheckedItem {
  return checkSnapshotItemOf(item, i, IPV4_FAMILY);
}

/** Check one snapshot item of a family; throws naming the item and field. */
export function checkSnapshotItemOf<A>(item: unknown, i: number, family: SnapshotFamily<A>): CheckedSnapshotItem<A> {
  const where = `conntrack restore: item ${i}`;
  if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new TypeError(`${where}: expected an object`);
  const o = item as Record<string, unknown>;
  const num = (field: string, min: number, max: number): number => {
    const v = o[field];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new RangeError(`${where}: ${field} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const finite = (field: string): number => {
    const v = o[field];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new RangeError(`${where}: ${field} must be a finite number, got ${JSON.stringify(v)}`);
    return v;
  };
  const addr = (field: string): A => {
    const v = o[field];
    const a = typeof v === 'string' ? family.parseAddr(v) : null;
    if (a === null) throw new RangeError(`${where}: ${field} must be an ${family.name} address, got ${JSON.stringify(v)}`);
    return a;
  };
  const bool = (field: string): boolean => {
    const v = o[field];
    if (typeof v !== 'boolean') throw new TypeError(`${where}: ${field} must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const proto = num('proto', 0, 255);
  if (!family.tracked(proto)) {
    throw new RangeError(`${where}: proto ${proto} is not tracked (${family.trackedText})`);
  }
  const stateText = o.state;
  if (typeof stateText !== 'string') throw new TypeError(`${where}: state must be a string, got ${JSON.stringify(stateText)}`);
  const state = stateNumber(proto, stateText);
  if (state < 0) throw new RangeError(`${where}: state "${stateText}" is not a ${proto === PROTO_TCP ? 'TCP' : proto === PROTO_SCTP ? 'SCTP' : 'stateless protocol\'s'} state`);
  const serviceName = o.serviceName;
  if (typeof serviceName !== 'string') throw new TypeError(`${where}: serviceName must be a string, got ${JSON.stringify(serviceName)}`);
  const serviceIndex = o.serviceIndex;
  if (typeof serviceIndex !== 'number' || !Number.isInteger(serviceIndex) || serviceIndex < -1) {
    throw new RangeError(`${where}: serviceIndex must be an integer >= -1, got ${JSON.stringify(serviceIndex)}`);
  }
  return {
    proto,
    origSrc: addr('origSrc'),
    origDst: addr('origDst'),
    origSport: num('origSport', 0, 65535),
    origDport: num('origDport', 0, 65535),
    replySrc: addr('replySrc'),
    replyDst: addr('replyDst'),
    replySport: num('replySport', 0, 65535),
    replyDport: num('replyDport', 0, 65535),
    state,
    remainingMs: finite('remainingMs'),
    ageMs: finite('ageMs'),
    seenReply: bool('seenReply'),
    assured: bool('assured'),
    origPackets: num('origPackets', 0, Number.MAX_SAFE_INTEGER),
    origBytes: num('origBytes', 0, Number.MAX_SAFE_INTEGER),
    replyPackets: num('replyPackets', 0, Number.MAX_SAFE_INTEGER),
    replyBytes: num('replyBytes', 0, Number.MAX_SAFE_INTEGER),
    serviceName,
    serviceIndex,
    masquerade: bool('masquerade'),
  };
}
