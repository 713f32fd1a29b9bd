/**
 * What every route works on: the dataplane (rule set holder, pipeline,
 * connection table), the state directory, and the one way a rule set gets in
 * force through the API — `apply`: If-Match check, validate, compile, swap,
 * then save to the state directory. Node runs one request handler at a time
 * and `holder.apply` is synchronous, so two writers never interleave: each
 * PUT/PATCH is checked and swapped against the generation it saw.
 */
import { Dataplane } from '../dataplane.ts';
import type { StateStore } from '../persist.ts';
import type { RuleSet } from '../types.ts';
import { GenerationMismatch } from '../runtime.ts';
import type { ApplyResult, RuleSetHolder } from '../runtime.ts';
import type { PacketSide } from '../worker/packet-side.ts';
import { LocalPacketSide } from '../worker/packet-side.ts';
import { RuleSetError } from '../validate.ts';
import { ApiError } from './errors.ts';

export interface ApplyAnswer extends ApplyResult {
  /** the rule set is on disk in the state directory (false when there is none, or the write failed) */
  persisted: boolean;
  persistError?: string;
}

export interface ContextOptions {
  store?: StateStore | null;
  /** /readyz answers ready only when a TUN device is attached (tunproxy run) */
  requireLoop?: boolean;
  /** largest body for rule sets, batches and imports (bytes) */
  bodyLimit?: number;
}

export const DEFAULT_BODY_LIMIT = 64 * 1024 * 1024;
export const SMALL_BODY_LIMIT = 64 * 1024;

/**
 * The two halves the API works on: the rule-set holder (validate, compile,
 * swap: in the API's thread) and the packet side (counters, conntrack: in
 * the same thread for tests and the library, in the packet thread behind
 * messages under tunproxy run).
 */
export interface ControlSide {
  readonly holder: RuleSetHolder;
  readonly packets: PacketSide;
}

export class ApiContext {
  readonly holder: RuleSetHolder;
  readonly packets: PacketSide;
  readonly store: StateStore | null;
  readonly requireLoop: boolean;
  readonly bodyLimit: number;
  /** wall-clock time the rule set in force was swapped in */
  inForceSince: Date | null = null;
  applies = 0;
  /** rule-set changes the API refused (any 4xx/5xx answer to PUT, PATCH, DELETE of rules, or an import with apply) */
  rejections = 0;
  private readonly closers: Array<() => void> = [];

  constructor(side: Dataplane | ControlSide, o: ContextOptions = {}) {
    this.holder = side.holder;
    this.packets = side instanceof Dataplane ? new LocalPacketSide(side) : side.packets;
    const holder = this.holder;
    this.store = o.store ?? null;
    this.requireLoop = o.requireLoop ?? false;
    this.bodyLimit = o.bodyLimit ?? DEFAULT_BODY_LIMIT;
    if (holder.ruleSet !== null) this.inForceSince = new Date();
    const onSwap = () => {
      this.inForceSince = new Date();
    };
    holder.onSwap(onSwap);
  }

  get generation(): number {
    return this.holder.generation;
  }

  get ruleSet(): RuleSet | null {
    return this.holder.ruleSet;
  }

  /** The rule set in force, or a 409 telling how to put one in force. */
  requireRuleSet(): RuleSet {
    const rs = this.holder.ruleSet;
    if (rs === null) throw new ApiError(409, 'no_rule_set', 'no rule set is in force yet: PUT /v1/ruleset (tunproxy apply -f FILE) first');
    return rs;
  }

  /**
   * In a candidate rule set (a parsed request body, ours to change), put the
   * node and the service objects in force wherever the candidate has an equal
   * one. The document is the same; the holder sees by identity what changed.
   */
  reuseUnchanged(candidate: unknown): void {
    const prev = this.holder.ruleSet;
    if (prev === null || typeof candidate !== 'object' || candidate === null) return;
    const c = candidate as { node?: unknown; services?: unknown };
    if (!Array.isArray(c.services)) return;
    if (sameJson(c.node, prev.node)) c.node = prev.node;
    // the service at the same position first (a client that sends the whole set keeps its order), else
    // the holder's index by name (no map of every service built per PUT); sameJson compares the names too
    const next = c.services as unknown[];
    const inForce = prev.services;
    for (let i = 0; i < next.length; i++) {
      const s = next[i] as { namespace?: unknown; name?: unknown } | null;
      if (typeof s !== 'object' || s === null || typeof s.namespace !== 'string' || typeof s.name !== 'string') continue;
      const here = i < inForce.length ? inForce[i] : undefined;
      const old = here !== undefined && here.name === s.name && here.namespace === s.namespace ? here : this.holder.serviceNamed(s.namespace, s.name);
      if (old !== undefined && sameJson(s, old)) next[i] = old;
    }
  }

  onClose(fn: () => void): void {
    this.closers.push(fn);
  }

  close(): void {
    for (const fn of this.closers.splice(0)) fn();
  }

  /**
   * Validate, compile, swap, save. Throws ApiError 400 (every error with its
   * path) or 412 (If-Match stale) and then nothing has changed.
   * `whole`: the candidate is a whole rule set sent by a client (PUT, an
   * import): the services equal to those in force are replaced by the
   * objects in force, so that the holder validates and compiles only the
   * services that changed (kube-proxy's partial sync) when few did.
   * `replaced`: the candidate is the rule set in force with the service at
   * that position replaced, nothing else (RuleSetHolder.apply).
   * `jsonText`: the candidate's JSON text as the client sent it (what the
   * state directory writes instead of stringifying the rule set again).
   */
  async apply(candidate: unknown, ifGeneration: number | undefined, whole = false, replaced?: number, jsonText?: string): Promise<ApplyAnswer> {
    let r: ApplyResult;
    try {
      if (whole) this.reuseUnchanged(candidate);
      // the candidate's own JSON text (a PUT's body): saved as it came if the candidate goes into force
      if (jsonText !== undefined && this.store !== null && typeof candidate === 'object' && candidate !== null) this.store.textOf(candidate as RuleSet, jsonText);
      r = this.holder.apply(candidate, ifGeneration, replaced);
    } catch (e) {
      throw toApiError(e);
    }
    this.applies++;
    // The save starts now, while the packet thread takes the tables: the two are independent (this thread
    // writes and syncs the file, that one makes the entries' views in slices between its batches, which
    // takes longer the busier it is), and the answer waits for both instead of for one after the other.
    // A crash between the two leaves the new rule set saved but never answered, which a restart loads:
    // the state a client that retries its PUT asks for anyway.
    const store = this.store;
    const saving = store === null ? null : store.saveRuleSet(this.holder.ruleSet!, r.generation).then(() => null, (e: unknown) => e as Error);
    // in force when the answer comes: the packet thread has swapped these tables in
    await this.packets.whenInForce(r.generation);
    const answer: ApplyAnswer = { ...r, persisted: false };
    if (store !== null && saving !== null) {
      const failed = await saving;
      // the rules are in force (the answer must say so); a save failure is reported, and retried by the next apply
      if (failed === null) answer.persisted = store.savedGeneration >= r.generation;
      else answer.persistError = failed.message;
    }
    return answer;
  }
}

/** Deep equality of JSON values (objects compared key by key, in any order). */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameJson(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  // for-in over parsed JSON (plain objects: own enumerable keys only), no key arrays made: a full PUT
  // compares every service it is sent with the one in force, and most differ a few keys in
  let na = 0;
  for (const k in a) {
    na++;
    if (!Object.prototype.hasOwnProperty.call(b, k) || !sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  }
  let nb = 0;
  for (const _ in b) nb++;
  return na === nb;
}

export function toApiError(e: unknown): Error {
  if (e instanceof GenerationMismatch) {
    return new ApiError(412, 'generation_mismatch', `If-Match: ${e.message}`, { extra: { generation: e.current, expected: e.expected }, headers: { etag: etagOf(e.current) } });
  }
  if (e instanceof RuleSetError) {
    return new ApiError(400, 'rule_set_rejected', `the rule set was rejected (${e.errors.length} error${e.errors.length === 1 ? '' : 's'}); the rule set in force is unchanged. ${e.errors.slice(0, 3).map((x) => `${x.path}: ${x.message}`).join('; ')}${e.errors.length > 3 ? '; ...' : ''}`, { errors: e.errors });
  }
  return e as Error;
}

export function etagOf(generation: number): string {
  return `"${generation}"`;
}

/**
 * If-Match → the generation the writer expects, or undefined when there is
 * none. Accepts `"12"`, `12`, `*` (any rule set in force) and a list
 * (`"11", "12"`: any of them).
 */
export function parseIfMatch(header: string | string[] | undefined, current: number): number | undefined {
  if (header === undefined) return undefined;
  const text = Array.isArray(header) ? header.join(',') : header;
  const values = text.split(',').map((v) => v.trim()).filter((v) => v !== '');
  if (values.length === 0) throw new ApiError(400, 'bad_if_match', 'If-Match is empty: send the generation you read, like If-Match: "12"');
  const gens: number[] = [];
  for (const v of values) {
    if (v === '*') {
      if (current === 0) throw new ApiError(412, 'generation_mismatch', 'If-Match: *: no rule set is in force yet', { extra: { generation: 0 } });
      return current;
    }
    const m = /^(?:W\/)?"?(\d{1,15})"?$/.exec(v);
    if (!m || v.startsWith('W/')) throw new ApiError(400, 'bad_if_match', `If-Match ${JSON.stringify(v)} is not a generation: send the ETag of GET /v1/ruleset, like If-Match: "12"`);
    gens.push(Number(m[1]));
  }
  return gens.includes(current) ? current : gens[0];
}
