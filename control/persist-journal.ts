/**
 * The rule-set journal of the state directory (`<tun>.ruleset.journal`,
 * beside `<tun>.ruleset.json`): a change of a few services is saved as one
 * appended line instead of the whole rule set written again, which held the
 * answer to a one-service PUT 28-97 ms at 10 000 services and 258-724 ms at
 * 100 000 (stringify, 27 MB written, fsync).
 *
 *   line 1   {"kind":"TunproxyRuleSetJournal","version":1,"base":{"bytes":N,"crc32":"xxxxxxxx"}}
 *            the rule-set file the records apply to (its length and CRC-32)
 *   line 2…  <crc32 of the JSON, 8 hex digits> {"generation":G,"upsert":[service…],"delete":["ns/name"…]}
 *            (positional: also "put":[[index, service]…],"length":N)
 *
 * A record replays as: the services named in `delete` are removed, then each
 * service of `upsert` replaces the one of its namespace/name, or is appended
 * when there is none. That reproduces the rule set in force exactly, order
 * included: a service replaced in place, appended, deleted, or moved to the
 * end (the API's changes) is a record of that service; one inserted before
 * the end is a record of every service after it deleted and appended again.
 * A record may instead be positional (`put`, `length`: the list cut or grown
 * to `length`, then services put at their places): a service replaced or
 * appended, the list cut, or — the kube agent's way of removing one — a
 * removed service's place taken by the last one. `serviceChange` returns
 * null when a field besides `services` changed or the record would name
 * more than MAX_JOURNAL_SERVICES services: the whole rule set is written
 * instead.
 *
 * Trust: a journal whose base does not match the rule-set file is from
 * before the last whole write (which holds all its changes) and is ignored.
 * A last line without its newline or with a wrong CRC is an append that a
 * crash cut short (never answered): dropped. A bad line before the last is
 * damage: the records before it are applied, the journal is set aside, and
 * the start says so.
 */
import * as zlib from 'node:zlib';
import type { RuleSet, Service } from './types.ts';

export const JOURNAL_KIND = 'TunproxyRuleSetJournal';
export const JOURNAL_VERSION = 1;
/** a change of more services than this is written as the whole rule set */
export const MAX_JOURNAL_SERVICES = 1024;
/** consecutive services deleted that the diff looks past before it gives up */
const LOOKAHEAD = 16;

export interface ServiceChange {
  upsert: Service[];
  delete: string[];
  /**
   * the positional form, the kube agent's way (a removed service's place is
   * taken by the last one): the list cut or grown to `length`, then each
   * service put at its index; applied after `delete` and `upsert`
   */
  put?: Array<[number, Service]>;
  length?: number;
}

export interface JournalRecord extends ServiceChange {
  generation: number;
}

const keyOf = (s: Service): string => `${s.namespace}/${s.name}`;

/** zlib's CRC-32 (node >= 20.15), else the same in JavaScript (package.json allows node 20.0) */
const nativeCrc32 = (zlib as { crc32?: (data: string | Uint8Array) => number }).crc32;
let crcTable: Int32Array | null = null;

/** CRC-32 (IEEE, zlib's) of bytes, table-driven. */
export function crc32js(bytes: Uint8Array): number {
  if (crcTable === null) {
    crcTable = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c;
    }
  }
  let c = -1;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** The CRC-32 of a text's UTF-8 bytes, as 8 hex digits. */
export function crcHex(text: string | Uint8Array): string {
  const c = nativeCrc32 !== undefined ? nativeCrc32(text) : crc32js(typeof text === 'string' ? Buffer.from(text) : text);
  return (c >>> 0).toString(16).padStart(8, '0');
}

/** The rule-set file a journal applies to: its length in bytes and its CRC-32. */
export interface JournalBase {
  bytes: number;
  crc32: string;
}

/** The base of a rule-set file: from its text, or from its bytes as written. */
export function journalBase(base: string | Uint8Array): JournalBase {
  return { bytes: typeof base === 'string' ? Buffer.byteLength(base) : base.length, crc32: crcHex(base) };
}

/** The journal's first line: the rule-set file the records apply to. */
export function journalHeader(base: JournalBase): string {
  return JSON.stringify({ kind: JOURNAL_KIND, version: JOURNAL_VERSION, base: { bytes: base.bytes, crc32: base.crc32 } }) + '\n';
}

/** One record as a journal line (newline included). */
export function journalLine(r: JournalRecord): string {
  const json = JSON.stringify(r.put !== undefined ? { generation: r.generation, upsert: r.upsert, delete: r.delete, put: r.put, length: r.length } : { generation: r.generation, upsert: r.upsert, delete: r.delete });
  return `${crcHex(json)} ${json}\n`;
}

/**
 * The change from `prev` to `next` as a record's lists, when replaying it on
 * `prev` gives exactly `next`; null when it cannot (see the module comment)
 * or changes more than `max` services. `positional`: the positional form may
 * be used (the store stops using it once a record deleted services by key,
 * so that places in the journal never count holes). Services are compared by identity:
 * the API builds the next rule set from the services in force and shares the
 * ones it did not change, so a walk over both lists costs a comparison per
 * service and no string.
 */
export function serviceChange(prev: RuleSet, next: RuleSet, max = MAX_JOURNAL_SERVICES, positional = true): ServiceChange | null {
  for (const k of new Set([...Object.keys(prev), ...Object.keys(next)])) {
    if (k === 'services') continue;
    const a = (prev as unknown as Record<string, unknown>)[k];
    const b = (next as unknown as Record<string, unknown>)[k];
    if (a !== b && JSON.stringify(a) !== JSON.stringify(b)) return null;
  }
  const a = prev.services;
  const b = next.services;
  const byKey = keyChange(a, b, max);
  if (!positional) return byKey;
  // the positional form: every place holds the same service but a few (replaced, appended, the list cut, a removed
  // service's place taken by the last one); taken when it names fewer services than the key form (on a tie, when the
  // key form deletes: the store writes no positional record after a deletion by key)
  const put: Array<[number, Service]> = [];
  const most = Math.min(max, byKey === null ? max : byKey.upsert.length + byKey.delete.length - (byKey.delete.length > 0 ? 0 : 1));
  for (let i = 0; i < b.length; i++) {
    if (i < a.length && a[i] === b[i]) continue;
    if (put.length >= most) return byKey;
    put.push([i, b[i]]);
  }
  if (byKey !== null && put.length === 0 && a.length === b.length) return byKey; // no change
  return { upsert: [], delete: [], put, length: b.length };
}

/** serviceChange's key form (`upsert`, `delete`), or null. */
function keyChange(a: readonly Service[], b: readonly Service[], max: number): ServiceChange | null {
  const upsert: Service[] = [];
  const del: string[] = [];
  let i = 0;
  let j = 0;
  while (j < b.length) {
    if (i < a.length && a[i] === b[j]) {
      i++;
      j++;
      continue;
    }
    if (upsert.length + del.length >= max) return null;
    if (i >= a.length) {
      upsert.push(b[j++]); // appended
      continue;
    }
    const kb = keyOf(b[j]);
    if (keyOf(a[i]) === kb) {
      upsert.push(b[j++]); // replaced in place
      i++;
      continue;
    }
    // a[i .. i+k-1] deleted, a[i+k] is b[j] (or the service b[j] replaces)
    let k = 1;
    while (k <= LOOKAHEAD && i + k < a.length && a[i + k] !== b[j] && keyOf(a[i + k]) !== kb) k++;
    if (k <= LOOKAHEAD && i + k < a.length) {
      for (let m = 0; m < k; m++) del.push(keyOf(a[i + m]));
      i += k;
      continue;
    }
    // the tails: every service left in a deleted, every one left in b appended (a move to the end included)
    if (a.length - i + (b.length - j) + upsert.length + del.length > max) return null;
    for (; i < a.length; i++) del.push(keyOf(a[i]));
    for (; j < b.length; j++) upsert.push(b[j]);
  }
  if (a.length - i + upsert.length + del.length > max) return null;
  for (; i < a.length; i++) del.push(keyOf(a[i]));
  return { upsert, delete: del };
}

/** `services` with the records replayed on it, in order (a new array; the services themselves are the records'). */
export function replayRecords(services: readonly Service[], records: readonly ServiceChange[]): Service[] {
  // one index for every record: a deleted service leaves a hole, filled in at the end
  let out: Array<Service | null | undefined> = services.slice();
  const at = new Map<string, number>();
  out.forEach((s, i) => at.set(keyOf(s!), i));
  let holes = 0;
  for (const r of records) {
    for (const k of r.delete) {
      const i = at.get(k);
      if (i !== undefined) {
        out[i] = null;
        at.delete(k);
        holes++;
      }
    }
    for (const s of r.upsert) {
      const k = keyOf(s);
      const i = at.get(k);
      if (i === undefined) {
        at.set(k, out.length);
        out.push(s);
      } else out[i] = s;
    }
    if (r.put !== undefined && r.length !== undefined) {
      // places are those of the list without holes (the store never writes this form after deletions, but a replay must not depend on it)
      if (holes > 0) {
        out = out.filter((s) => s !== null);
        at.clear();
        out.forEach((s, i) => s && at.set(keyOf(s), i));
        holes = 0;
      }
      for (let i = r.length; i < out.length; i++) {
        const s = out[i];
        if (s && at.get(keyOf(s)) === i) at.delete(keyOf(s));
      }
      out.length = r.length;
      for (const [i, s] of r.put) {
        const old = out[i];
        if (old && at.get(keyOf(old)) === i) at.delete(keyOf(old));
        out[i] = s;
        at.set(keyOf(s), i);
      }
    }
  }
  return out.filter((s): s is Service => s !== null && s !== undefined);
}

export type ReadJournal =
  /** no journal, or one of another rule-set file (`stale`: ignored, the file holds its changes) */
  | { status: 'none' | 'stale'; records: JournalRecord[] }
  /**
   * `records`: the good ones, in order; `tornTail`: the last line was cut
   * short and dropped; `damage`: why a line before the last is bad (the
   * records before it are given, the journal must be set aside), or null
   */
  | { status: 'ok'; records: JournalRecord[]; tornTail: boolean; damage: string | null };

function isRecord(x: unknown): x is JournalRecord {
  const r = x as JournalRecord;
  return (
    typeof x === 'object' && x !== null && Number.isInteger(r.generation) && r.generation > 0 &&
    Array.isArray(r.upsert) && r.upsert.every((s) => typeof s === 'object' && s !== null && typeof s.namespace === 'string' && typeof s.name === 'string') &&
    Array.isArray(r.delete) && r.delete.every((k) => typeof k === 'string') &&
    (r.put === undefined ||
      (Number.isInteger(r.length) && r.length! >= 0 && Array.isArray(r.put) &&
        r.put.every((p) => Array.isArray(p) && p.length === 2 && Number.isInteger(p[0]) && p[0] >= 0 && p[0] < r.length! && typeof p[1] === 'object' && p[1] !== null && typeof p[1].namespace === 'string' && typeof p[1].name === 'string')))
  );
}

/** A record line (without its newline) as its record, or why it is not one. */
function recordOfLine(raw: string): JournalRecord | string {
  const sp = raw.indexOf(' ');
  const json = raw.slice(sp + 1);
  if (sp !== 8 || raw.slice(0, 8) !== crcHex(json)) return 'its CRC-32 does not match';
  let r: unknown;
  try {
    r = JSON.parse(json);
  } catch {
    return 'not JSON';
  }
  return isRecord(r) ? r : 'not a record ({generation, upsert, delete})';
}

/** The generation of a journal text's last good record (0: none), whatever file it applies to. */
export function lastJournalGeneration(text: string): number {
  const lines = text.split('\n');
  for (let i = lines.length - 1; i >= 1; i--) {
    const r = recordOfLine(lines[i]);
    if (typeof r !== 'string') return r.generation;
  }
  return 0;
}

/** Read a journal's text against the rule-set file's text it should apply to. */
export function readJournal(text: string, baseText: string): ReadJournal {
  const nl = text.indexOf('\n');
  if (nl < 0) return { status: 'stale', records: [] }; // a header cut short: written before its base, never used
  let head: { kind?: unknown; version?: unknown; base?: { bytes?: unknown; crc32?: unknown } };
  try {
    head = JSON.parse(text.slice(0, nl));
  } catch {
    return { status: 'ok', records: [], tornTail: false, damage: 'its first line is not the journal header' };
  }
  if (head?.kind !== JOURNAL_KIND) return { status: 'ok', records: [], tornTail: false, damage: `its first line is not a ${JOURNAL_KIND} header` };
  if (head.version !== JOURNAL_VERSION) return { status: 'ok', records: [], tornTail: false, damage: `version ${JSON.stringify(head.version)} is not supported (expected ${JOURNAL_VERSION})` };
  const base = journalBase(baseText);
  if (head.base?.bytes !== base.bytes || head.base?.crc32 !== base.crc32) return { status: 'stale', records: [] };
  const records: JournalRecord[] = [];
  let at = nl + 1;
  let line = 2;
  while (at < text.length) {
    const end = text.indexOf('\n', at);
    const last = end < 0 || end === text.length - 1;
    const raw = text.slice(at, end < 0 ? text.length : end);
    const bad = (why: string): ReadJournal => (last ? { status: 'ok', records, tornTail: true, damage: null } : { status: 'ok', records, tornTail: false, damage: `line ${line}: ${why}` });
    if (end < 0) return bad('no newline');
    const r = recordOfLine(raw);
    if (typeof r === 'string') return bad(r);
    if (records.length > 0 && r.generation <= records[records.length - 1].generation) return bad(`generation ${r.generation} does not follow ${records[records.length - 1].generation}`);
    records.push(r);
    at = end + 1;
    line++;
  }
  return { status: 'ok', records, tornTail: false, damage: null };
}
