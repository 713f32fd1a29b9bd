/**
 * The state directory (`--state-dir`, /var/lib/tunproxy by default): the last
 * accepted rule set, so that a restart comes back with the rules it had, and
 * the connection table saved on SIGTERM, so that established connections
 * survive a restart.
 *
 *   <tun>.ruleset.json     the rule set, as plain rule-set JSON (it can be given
 *                          to `tunproxy apply -f` or `run --rules` as is): the
 *                          body of the PUT /v1/ruleset that put it in force, byte
 *                          for byte, else the rule set stringified
 *   <tun>.ruleset.journal  the changes of a few services since that file was
 *                          written, a line each (control/persist-journal.ts):
 *                          the file and its journal together are the rule set in
 *                          force. The file is written whole again when the journal
 *                          outgrows half of it, when nothing changed for a while
 *                          (5 s), at every start, and for any change the journal
 *                          cannot say (the node's fields, many services)
 *   <tun>.conntrack.json   {"kind":"TunproxyConntrack","version":1,"savedAt":<epoch ms>,
 *                          "bootId":..., "netns":..., "items":[...], "items6":[...]}
 *                          written on SIGTERM, read and removed on the next start;
 *                          items: the IPv4 flows, items6: the IPv6 flows (both
 *                          dataplane/conntrack-snapshot.ts items, IPv6 addresses as
 *                          text, ICMPv6 as protocol 58). A file without items6
 *                          (written before IPv6 flows were saved) has no IPv6 flows.
 *
 * (one pair per TUN device, so several tunproxy processes can share the
 * directory). A saved connection table is restored only in the boot and the
 * network namespace it was saved in: after a reboot no connection is alive,
 * and another namespace's flows are not this one's (it is left for its owner).
 *
 * Every write is atomic: a temporary file in the same directory, fsync,
 * rename over the old file, fsync of the directory. A reader sees the old
 * file or the new one, never a mix. A file that does not parse or does not
 * validate is damaged: it is renamed aside (`ruleset.json.damaged-<time>`),
 * reported, and never stops the start nor gets overwritten silently.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { open, rename, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { RuleSet } from './types.ts';
import { hostProvenance } from '../dataplane/provenance.ts';
import type { Provenance } from '../dataplane/provenance.ts';
import { validateRuleSet } from './validate.ts';
import type { ConntrackSnapshotItem } from '../dataplane/conntrack.ts';
import { journalBase, journalHeader, journalLine, lastJournalGeneration, readJournal, replayRecords, serviceChange } from './persist-journal.ts';
import type { JournalBase, JournalRecord } from './persist-journal.ts';

export const DEFAULT_STATE_DIR = '/var/lib/tunproxy';
export const RULESET_FILE = 'ruleset.json';
export const CONNTRACK_FILE = 'conntrack.json';
export const JOURNAL_FILE = 'ruleset.journal';
/** the journal is folded into the rule-set file once it is bigger than half of it, or than this */
const JOURNAL_MIN_BYTES = 64 * 1024;
/** ... and once no change came for this long */
export const DEFAULT_COMPACT_AFTER_MS = 5000;
const CONNTRACK_KIND = 'TunproxyConntrack';

/** This boot and this network namespace: where a saved connection table is valid. */
export type { Provenance };
export const currentProvenance = hostProvenance;

let tmpCounter = 0;
function tmpName(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${++tmpCounter}`);
}

function fsyncDir(dir: string): void {
  let fd = -1;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // some filesystems refuse fsync on a directory; the rename is still atomic
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

/** Write `data` to `path` atomically (temp file in the same directory, fsync, rename, fsync of the directory). */
export function writeFileAtomicSync(path: string, data: string | Uint8Array, mode = 0o600): void {
  const tmp = tmpName(path);
  const fd = openSync(tmp, 'wx', mode);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  fsyncDir(dirname(path));
}

/** The same, without blocking the event loop during the write and the fsync. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = tmpName(path);
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  fsyncDir(dirname(path));
}

/** Rename a damaged file aside under a name that exists nowhere yet; returns the new path. */
export function setAside(path: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[:.]/g, '-');
  let target = `${path}.damaged-${stamp}`;
  for (let i = 1; existsSync(target); i++) target = `${path}.damaged-${stamp}-${i}`;
  renameSync(path, target);
  return target;
}

export type LoadedRuleSet =
  | { status: 'none'; path: string }
  /**
   * `journal`: the changes replayed from the journal on the file's rule set,
   * and what was wrong with the journal (null: nothing)
   */
  | { status: 'ok'; path: string; ruleSet: RuleSet; bytes: number; savedAt: Date; journal: { records: number; note: string | null } }
  /** the file was renamed to `movedTo`; `reason` says what is wrong with it */
  | { status: 'damaged'; path: string; reason: string; movedTo: string };

export type LoadedConntrack =
  | { status: 'none'; path: string }
  /**
   * remainingMs/ageMs already account for the time since the save; flows that ran out are left out
   * (counted in expired, expired6). items: the IPv4 flows, items6: the IPv6 ones ([] for a file
   * without them). damaged6: why the IPv6 part cannot be read at all (then items6 is []), or null.
   */
  | {
      status: 'ok';
      path: string;
      items: ConntrackSnapshotItem[];
      items6: ConntrackSnapshotItem[];
      savedAt: Date;
      elapsedMs: number;
      expired: number;
      expired6: number;
      damaged6: string | null;
    }
  /** saved in another boot or network namespace: not restored, left in place */
  | { status: 'foreign'; path: string; reason: string }
  | { status: 'damaged'; path: string; reason: string; movedTo: string };

/** Saved items moved on by `elapsed` ms; those that ran out meanwhile are counted and left out. */
function agedItems(raw: unknown[], elapsed: number): { items: ConntrackSnapshotItem[]; expired: number } {
  const items: ConntrackSnapshotItem[] = [];
  let expired = 0;
  for (const it of raw as ConntrackSnapshotItem[]) {
    if (typeof it === 'object' && it !== null && typeof it.remainingMs === 'number' && typeof it.ageMs === 'number') {
      if (it.remainingMs - elapsed <= 0) {
        expired++;
        continue;
      }
      items.push({ ...it, remainingMs: it.remainingMs - elapsed, ageMs: it.ageMs + elapsed });
    } else items.push(it); // let restore() name what is wrong with it
  }
  return { items, expired };
}

/** A connection table a saved part is restored into (Conntrack, Conntrack6). */
export interface ConntrackRestoreTarget {
  /** checks every item first: throws naming the item and field, and loads nothing, when one is malformed */
  restore(items: unknown): number;
}

/** What came of restoring the parts of a saved connection table. */
export interface ConntrackPartsRestored {
  /** IPv4 flows restored; null when the part was not restored (the pinned IPv4 table supersedes it) */
  ipv4: number | null;
  /** IPv6 flows restored; null likewise */
  ipv6: number | null;
  /** the parts refused, with why: nothing of them was loaded, and the file must be set aside */
  damaged: Array<{ family: 'IPv4' | 'IPv6'; reason: string }>;
}

/**
 * Restore each family's part of a saved table into its own table (`ipv4`,
 * `ipv6`; null: that family's part is superseded by a pinned table and left
 * out). A damaged part is refused whole and reported; the other part is
 * still restored. The IPv6 table is asked for only when there are IPv6
 * flows (`ipv6` may make it on demand).
 */
export function restoreConntrackParts(
  saved: Extract<LoadedConntrack, { status: 'ok' }>, ipv4: ConntrackRestoreTarget | null, ipv6: (() => ConntrackRestoreTarget) | null,
): ConntrackPartsRestored {
  const r: ConntrackPartsRestored = { ipv4: null, ipv6: null, damaged: [] };
  if (ipv4 !== null) {
    try {
      r.ipv4 = ipv4.restore(saved.items);
    } catch (e) {
      r.damaged.push({ family: 'IPv4', reason: (e as Error).message });
    }
  }
  if (ipv6 !== null) {
    if (saved.damaged6 !== null) r.damaged.push({ family: 'IPv6', reason: saved.damaged6 });
    else if (saved.items6.length === 0) r.ipv6 = 0;
    else {
      try {
        r.ipv6 = ipv6().restore(saved.items6);
      } catch (e) {
        r.damaged.push({ family: 'IPv6', reason: (e as Error).message });
      }
    }
  }
  return r;
}

interface SaveWaiter {
  generation: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

/**
 * The state directory. Rule-set saves are queued and coalesced: while one is
 * being written, later ones replace each other and only the newest is written
 * next; `saveRuleSet` resolves once a generation at least as new is on disk.
 */
export class StateStore {
  readonly dir: string;
  readonly ruleSetPath: string;
  readonly conntrackPath: string;
  /** the generation of the saved rule set, beside it: a restart goes on counting from there */
  readonly generationPath: string;
  /** the changes since the rule-set file was written (persist-journal.ts) */
  readonly journalPath: string;
  /** the newest generation on disk (0: none written by this process) */
  savedGeneration = 0;
  /** the last save failure, null once a later save succeeded */
  lastError: Error | null = null;
  /** saves written: the whole rule set, or a record appended to the journal */
  saves = 0;
  /** of which journal records */
  appends = 0;
  /** records in the journal now (0 after the rule-set file is written whole) */
  journalRecords = 0;
  /** `whole`: write the whole rule set even if the journal could say the change (folding the journal in) */
  private next: { ruleSet: RuleSet; generation: number; whole: boolean } | null = null;
  /** the rule set the file and the journal hold together; null: unknown, the next save writes it whole */
  private onDisk: RuleSet | null = null;
  /** the rule-set file as last written: its bytes and CRC-32 (the journal's header names them) */
  private base: JournalBase = { bytes: 0, crc32: '' };
  /** the rule-set file as last written: its inode, size and time (a file changed by another hand is written whole again) */
  private baseStat = { ino: 0, size: -1, mtimeMs: 0 };
  private journalBytes = 0;
  /** a record of the journal deleted services by key: no positional record after it (see serviceChange) */
  private journalDeleted = false;
  /** open for appending once the journal has its header */
  private journal: FileHandle | null = null;
  private compactTimer: NodeJS.Timeout | null = null;
  private readonly compactAfterMs: number;
  /** rule sets whose JSON text is known (the body of a PUT): written as is, not stringified again */
  private readonly texts = new WeakMap<RuleSet, string>();
  private writing = 0;
  private pumping: Promise<void> | null = null;
  private waiters: SaveWaiter[] = [];
  private readonly provenance: Provenance;

  /**
   * `prefix`: file-name prefix, "tun0." for tunproxy run on tun0;
   * `compactAfterMs`: how long after the last change the journal is folded into the file
   */
  constructor(dir: string = DEFAULT_STATE_DIR, prefix = '', provenance: Provenance = currentProvenance(), opts: { compactAfterMs?: number } = {}) {
    this.dir = dir;
    this.ruleSetPath = join(dir, prefix + RULESET_FILE);
    this.conntrackPath = join(dir, prefix + CONNTRACK_FILE);
    this.generationPath = join(dir, prefix + 'generation');
    this.journalPath = join(dir, prefix + JOURNAL_FILE);
    this.provenance = provenance;
    this.compactAfterMs = opts.compactAfterMs ?? DEFAULT_COMPACT_AFTER_MS;
  }

  /** Create the directory (0700) when missing; throws when it cannot be created or is not a directory. */
  init(): void {
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new Error(`--state-dir ${this.dir}: cannot create it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (!statSync(this.dir).isDirectory()) throw new Error(`--state-dir ${this.dir}: not a directory`);
  }

  hasRuleSet(): boolean {
    return existsSync(this.ruleSetPath);
  }

  /**
   * Read the saved rule set: the file, and the changes of its journal
   * replayed on it. A file that does not parse or validate is set aside and
   * reported, never thrown; so is a damaged journal (the records before the
   * damage are kept), or one whose records do not validate (then the file
   * alone is the rule set).
   */
  loadRuleSet(): LoadedRuleSet {
    const path = this.ruleSetPath;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { status: 'none', path };
      throw new Error(`${path}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const damaged = (reason: string): LoadedRuleSet => ({ status: 'damaged', path, reason, movedTo: setAside(path) });
    if (text.trim() === '') return damaged('the file is empty');
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      return damaged(`not valid JSON (${(e as Error).message}; truncated?)`);
    }
    const j = this.readJournalFor(text);
    let savedAt = statSync(path).mtime;
    let records = 0;
    if (j.records.length > 0 && typeof doc === 'object' && doc !== null && Array.isArray((doc as RuleSet).services)) {
      const v = validateRuleSet({ ...(doc as RuleSet), services: replayRecords((doc as RuleSet).services, j.records) });
      if (v.ok) {
        records = j.records.length;
        savedAt = j.mtime ?? savedAt;
        return { status: 'ok', path, ruleSet: v.ruleSet, bytes: Buffer.byteLength(text), savedAt, journal: { records, note: j.note } };
      }
      const moved = existsSync(this.journalPath) ? `; moved to ${setAside(this.journalPath)}` : '';
      j.note = `${j.note ? `${j.note}; ` : ''}${this.journalPath}: its changes do not make a valid rule set (${v.errors[0].path}: ${v.errors[0].message}): the file alone is loaded${moved}`;
    }
    const v = validateRuleSet(doc);
    if (!v.ok) {
      const first = v.errors.slice(0, 3).map((e) => `${e.path}: ${e.message}`).join('; ');
      return damaged(`not a valid rule set (${v.errors.length} error${v.errors.length === 1 ? '' : 's'}: ${first})`);
    }
    return { status: 'ok', path, ruleSet: v.ruleSet, bytes: Buffer.byteLength(text), savedAt, journal: { records, note: j.note } };
  }

  /** The journal's good records for the rule-set file `baseText`, and what to say of the journal (it is set aside when damaged, removed when stale). */
  private readJournalFor(baseText: string): { records: JournalRecord[]; note: string | null; mtime: Date | null } {
    let text: string;
    let mtime: Date;
    try {
      text = readFileSync(this.journalPath, 'utf8');
      mtime = statSync(this.journalPath).mtime;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], note: null, mtime: null };
      return { records: [], note: `${this.journalPath}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): its changes are not loaded`, mtime: null };
    }
    const r = readJournal(text, baseText);
    if (r.status !== 'ok') {
      // stale: from before the file was last written whole, which holds its changes
      if (r.status === 'stale') rmSync(this.journalPath, { force: true });
      return { records: [], note: null, mtime: null };
    }
    let note: string | null = null;
    if (r.damage !== null) note = `${this.journalPath} is damaged (${r.damage}): the ${r.records.length} change${r.records.length === 1 ? '' : 's'} before it loaded, moved to ${setAside(this.journalPath)}`;
    else if (r.tornTail) note = `${this.journalPath}: its last change was cut short by a stop (never answered): left out`;
    return { records: r.records, note, mtime };
  }

  /**
   * The JSON text `ruleSet` was parsed from (a PUT's body, which the
   * validator accepted as it is): if this rule set is saved, the text is
   * written as it came instead of JSON.stringify of the rule set, which
   * cost 8-25 ms of the answer to a 10 000-service PUT (2.8 MB) and
   * ~80 ms at 100 000. The text must parse to exactly `ruleSet`.
   */
  textOf(ruleSet: RuleSet, text: string): void {
    this.texts.set(ruleSet, text);
  }

  /**
   * Queue the rule set of `generation` for writing. Resolves when it (or a
   * newer one) is on disk; rejects when that write failed.
   */
  saveRuleSet(ruleSet: RuleSet, generation: number): Promise<void> {
    if (generation <= this.savedGeneration) return Promise.resolve();
    // the same generation queued twice (the API and a swap listener) is written once
    if (generation > this.writing && (this.next === null || generation > this.next.generation)) this.next = { ruleSet, generation, whole: false };
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ generation, resolve, reject }));
    if (this.pumping === null) this.pumping = this.pump();
    return p;
  }

  /**
   * The generation of the last saved rule set (0 when none was saved or the
   * file does not hold a number), so that generations keep growing across
   * restarts and an If-Match taken before one cannot match after it. The
   * journal's last record counts too (its changes do not rewrite the file).
   */
  loadGeneration(): number {
    let g = 0;
    try {
      const n = Number(readFileSync(this.generationPath, 'utf8').trim());
      if (Number.isInteger(n) && n > 0) g = n;
    } catch {
      // none yet
    }
    let journal = '';
    try {
      journal = readFileSync(this.journalPath, 'utf8');
    } catch {
      // no journal
    }
    return Math.max(g, lastJournalGeneration(journal));
  }

  /** Wait until every queued save is done (successful or not). */
  async flush(): Promise<void> {
    while (this.pumping !== null) await this.pumping;
  }

  /** Stop the timer that folds the journal in (the process is stopping), and close the journal. */
  async close(): Promise<void> {
    if (this.compactTimer !== null) clearTimeout(this.compactTimer);
    this.compactTimer = null;
    await this.flush();
    await this.closeJournal();
  }

  private async pump(): Promise<void> {
    try {
      while (this.next !== null) {
        const job = this.next;
        this.next = null;
        this.writing = job.generation;
        let err: Error | null = null;
        const text = this.texts.get(job.ruleSet);
        this.texts.delete(job.ruleSet);
        try {
          // a change of a few services: one line appended to the journal; else (or when the journal is big) the whole rule set
          const small = !job.whole && this.onDisk !== null && this.journalBytes < Math.max(JOURNAL_MIN_BYTES, this.base.bytes / 2);
          const change = small ? serviceChange(this.onDisk!, job.ruleSet, undefined, !this.journalDeleted) : null;
          if (change !== null && (await this.untouched())) await this.append({ generation: job.generation, ...change });
          else await this.writeWhole(job.ruleSet, text, job.generation);
          this.onDisk = job.ruleSet;
          this.savedGeneration = Math.max(this.savedGeneration, job.generation);
          this.saves++;
          this.lastError = null;
        } catch (e) {
          // what is on disk is not known any more: the next save writes the whole rule set
          this.onDisk = null;
          await this.closeJournal();
          err = new Error(`cannot save the rule set to ${this.ruleSetPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
          this.lastError = err;
        }
        const keep: SaveWaiter[] = [];
        for (const w of this.waiters) {
          if (w.generation > job.generation) keep.push(w);
          else if (err) w.reject(err);
          else w.resolve();
        }
        this.waiters = keep;
      }
    } finally {
      this.pumping = null;
    }
  }

  /** The rule-set file written whole (atomically), the journal then emptied (removed: the file holds its changes). */
  private async writeWhole(ruleSet: RuleSet, text: string | undefined, generation: number): Promise<void> {
    // encoded once: the bytes written are the bytes the journal's header names (length, CRC-32)
    const data = Buffer.from(text !== undefined ? text : JSON.stringify(ruleSet, null, 1) + '\n');
    await this.closeJournal();
    await writeFileAtomic(this.ruleSetPath, data);
    // a crash before the journal is removed leaves one whose header names the old file: ignored at the start
    await unlink(this.journalPath).catch(() => {});
    this.base = journalBase(data);
    const st = statSync(this.ruleSetPath);
    this.baseStat = { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
    this.journalBytes = 0;
    this.journalRecords = 0;
    this.journalDeleted = false;
    await writeFileAtomic(this.generationPath, `${generation}\n`);
  }

  /**
   * Are the rule-set file and the journal still the ones this process wrote
   * (nobody removed, replaced or truncated them)? Else a record would apply
   * to a file that is not there, or go into a file no longer in the
   * directory: the rule set is written whole instead.
   */
  private async untouched(): Promise<boolean> {
    try {
      const st = await stat(this.ruleSetPath);
      if (st.ino !== this.baseStat.ino || st.size !== this.baseStat.size || st.mtimeMs !== this.baseStat.mtimeMs) return false;
      if (this.journal !== null) {
        const js = await this.journal.stat();
        if (js.nlink === 0 || js.size !== this.journalBytes) return false;
      } else if (existsSync(this.journalPath)) return false;
      return true;
    } catch {
      return false;
    }
  }

  /** One record appended to the journal and synced; the first after a whole write creates the journal with its header. */
  private async append(r: JournalRecord): Promise<void> {
    const line = journalLine(r);
    if (this.journal === null) {
      const data = journalHeader(this.base) + line;
      await writeFileAtomic(this.journalPath, data);
      this.journal = await open(this.journalPath, 'a');
      this.journalBytes = Buffer.byteLength(data);
    } else {
      await this.journal.appendFile(line);
      await this.journal.datasync();
      this.journalBytes += Buffer.byteLength(line);
    }
    this.journalRecords++;
    this.appends++;
    if (r.delete.length > 0) this.journalDeleted = true;
    this.armCompaction();
  }

  /** Fold the journal into the file once no change came for compactAfterMs. */
  private armCompaction(): void {
    if (this.compactTimer !== null) clearTimeout(this.compactTimer);
    this.compactTimer = setTimeout(() => {
      this.compactTimer = null;
      if (this.onDisk === null || this.journalRecords === 0 || this.next !== null) return;
      this.next = { ruleSet: this.onDisk, generation: this.savedGeneration, whole: true };
      if (this.pumping === null) this.pumping = this.pump();
    }, this.compactAfterMs);
    this.compactTimer.unref();
  }

  private async closeJournal(): Promise<void> {
    const fh = this.journal;
    this.journal = null;
    if (fh !== null) await fh.close().catch(() => {});
  }

  /**
   * Save the connection table (on SIGTERM): `items` the IPv4 flows, `items6` the IPv6 ones;
   * synchronous so that it completes before exit.
   */
  saveConntrack(items: ConntrackSnapshotItem[], now = Date.now(), items6: ConntrackSnapshotItem[] = []): void {
    writeFileAtomicSync(this.conntrackPath, JSON.stringify({ kind: CONNTRACK_KIND, version: 1, savedAt: now, ...this.provenance, items, items6 }) + '\n');
  }

  /**
   * Read the saved connection table, ages and lifetimes moved on by the time
   * since the save. The caller restores it (`conntrack.restore(items)`) and
   * then calls `consumeConntrack()`; if restore throws, `setAsideConntrack`.
   */
  loadConntrack(now = Date.now()): LoadedConntrack {
    const path = this.conntrackPath;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { status: 'none', path };
      throw new Error(`${path}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const damaged = (reason: string): LoadedConntrack => ({ status: 'damaged', path, reason, movedTo: setAside(path) });
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      return damaged(`not valid JSON (${(e as Error).message}; truncated?)`);
    }
    const d = doc as { kind?: unknown; version?: unknown; savedAt?: unknown; items?: unknown; bootId?: unknown; netns?: unknown };
    if (typeof doc !== 'object' || doc === null || d.kind !== CONNTRACK_KIND) return damaged(`not a tunproxy connection table (kind must be "${CONNTRACK_KIND}")`);
    if (d.version !== 1) return damaged(`version ${JSON.stringify(d.version)} is not supported (expected 1)`);
    const p = this.provenance;
    if (p.bootId !== '' && d.bootId !== p.bootId) return { status: 'foreign', path, reason: 'saved before the last reboot: no connection of then is alive' };
    if (p.netns !== '' && d.netns !== p.netns) return { status: 'foreign', path, reason: `saved in another network namespace (${String(d.netns)}, this is ${p.netns})` };
    if (typeof d.savedAt !== 'number' || !Number.isFinite(d.savedAt)) return damaged('savedAt must be a time in milliseconds since the epoch');
    if (!Array.isArray(d.items)) return damaged('items must be an array of flows');
    const elapsed = Math.max(0, now - d.savedAt);
    const v4 = agedItems(d.items, elapsed);
    // the IPv6 part: absent in a file of an older tunproxy (no IPv6 flows); not an array: damaged, never trusted
    const raw6 = (doc as { items6?: unknown }).items6;
    const damaged6 = raw6 === undefined || Array.isArray(raw6) ? null : 'items6 must be an array of flows';
    const v6 = agedItems(Array.isArray(raw6) ? raw6 : [], elapsed);
    return { status: 'ok', path, items: v4.items, items6: v6.items, savedAt: new Date(d.savedAt), elapsedMs: elapsed, expired: v4.expired, expired6: v6.expired, damaged6 };
  }

  /** The saved table was restored: remove it, so that a later start does not restore it again. */
  consumeConntrack(): void {
    try {
      unlinkSync(this.conntrackPath);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  /** The saved table was refused by restore(): set it aside; returns its new name. */
  setAsideConntrack(): string {
    return setAside(this.conntrackPath);
  }
}
