/**
 * The running dataplane as the control side sees it: the rule set in force,
 * its generation, and the one place where a new rule set is validated,
 * compiled and swapped in. A rejected rule set leaves the running one in force.
 *
 * When the new rule set is the one in force with a few services changed
 * (the API's PATCH and DELETE build it that way: the other service objects
 * are the same objects), only those services are validated and modelled
 * (`validateServices`, the same conflict code as a full validation, against
 * the keys of the tables in force) and compiled (`patchTables`). Anything
 * else takes the full path. Both give the same model and the same tables and
 * accept and refuse the same rule sets (test/property/incremental.test.ts).
 * What is left here: finding what changed, and swapping.
 */
import { performance } from 'node:perf_hooks';
import type { RuleSet, Service } from './types.ts';
import { validateRuleSet, validateServices, RuleSetError } from './validate.ts';
import type { KeyHolder, KeysInForce } from './validate.ts';
import { compile, compile6, patchTables, patchTables6 } from './compile.ts';
import { RuleSetModel, servicePortName, isIPv6, addr6 } from './model.ts';
import type { ServiceModel } from './model.ts';
import type { Tables } from '../dataplane/tables.ts';
import type { Tables6 } from '../dataplane/tables6.ts';
import type { SampleDecider } from '../dataplane/verdict.ts';
import type { SampleDecider6 } from '../dataplane/decider6.ts';
import { writeIptables } from './iptables/writer.ts';
import { linearFromText } from './iptables/linear.ts';
import { protoIndex } from '../dataplane/addr.ts';

export interface ApplyResult {
  generation: number;
  compileMs: number;
  services: number;
  servicePorts: number;
  /** "full" or "incremental" */
  mode: 'full' | 'incremental';
}

export type SwapFn = (t: Tables) => void;

/**
 * At most this many services added or removed go the incremental way, or a
 * quarter of the services in force when that is more. Measured in one
 * process on the AMD machine (bench/gen.ts's rule sets, new endpoints for
 * every Nth service, four runs each): at 100 000 services, 5 % changed
 * 760-1 048 ms the full way against 100-118 ms the incremental one, 10 %
 * 602-825 against 221-290, 25 % 605-812 against 396-491; at 10 000, 5 %
 * 61-102 against 9-25, 25 % 58-126 against 34-86. A change costs in
 * proportion to its size, a full apply in proportion to the whole.
 */
const MAX_INCREMENTAL = 256;
/** The most services a change may add or remove and still go the incremental way, for `inForce` services in force. */
export const maxIncremental = (inForce: number): number => Math.max(MAX_INCREMENTAL, inForce >> 2);

interface Diff {
  /** indexes in the rule set in force */
  removed: number[];
  /** indexes in the new rule set */
  added: number[];
}

/** Which services differ (by object identity) between two service lists, when few enough do (at most `max`; else null: the full path). */
export function diffServices(prev: readonly Service[], next: readonly Service[], max = maxIncremental(prev.length)): Diff | null {
  if (Math.abs(next.length - prev.length) > max) return null;
  // same positions: replaced in place, appended at the end
  const common = Math.min(prev.length, next.length);
  const removed: number[] = [];
  const added: number[] = [];
  for (let i = 0; i < common && removed.length <= max; i++) {
    if (prev[i] !== next[i]) {
      removed.push(i);
      added.push(i);
    }
  }
  if (removed.length <= max && (prev.length <= next.length || removed.length === 0)) {
    for (let i = common; i < next.length; i++) added.push(i);
    for (let i = common; i < prev.length; i++) removed.push(i);
    if (added.length <= max && removed.length <= max) return { removed, added };
  }
  // a run removed or inserted in the middle: common prefix and suffix
  let p = 0;
  while (p < common && prev[p] === next[p]) p++;
  let s = 0;
  while (s < common - p && prev[prev.length - 1 - s] === next[next.length - 1 - s]) s++;
  const r = prev.length - s - p;
  const a = next.length - s - p;
  if (r > max || a > max) return null;
  return { removed: Array.from({ length: r }, (_, k) => p + k), added: Array.from({ length: a }, (_, k) => p + k) };
}

/** The service ("ns/name") of a service-port name "ns/name[:port]": a namespace and a name hold no ':'. */
function serviceKeyOf(name: string): string {
  const c = name.indexOf(':');
  return c < 0 ? name : name.slice(0, c);
}

/**
 * The keys held in the tables in force by the services that stay: what an
 * incremental apply's services are checked against (`stays`: the entry's
 * service stays; `position`: its index in the new rule set).
 */
function keysOfTables(t: Tables, owners: readonly Service[], byName: ReadonlyMap<string, Service>, stays: (s: Service) => boolean, position: (s: Service) => number): KeysInForce {
  // the holder of a key: the entry's service (IPv4 entries: `owners`, aligned with t.services; IPv6
  // entries: by the entry's name, "ns/name[:port]", whose first ':' ends the service's key), if it stays
  const holderOf = (owner: Service | undefined, name: string, kind: number): KeyHolder | null => {
    if (owner === undefined || !stays(owner)) return null;
    const pi = owner.ports.findIndex((p) => servicePortName(owner, p) === name);
    return { where: `services[${position(owner)}].ports[${pi}] (${owner.namespace}/${owner.name}:${owner.ports[pi].name}`, kind };
  };
  return {
    vip(addr, proto, port) {
      const pp = protoIndex(proto) * 65536 + port;
      if (isIPv6(addr)) {
        // the IPv6 tables key an address by its id (Addr6Ids), then (id, protocol+port) in their own VIP index
        const t6 = t.v6;
        if (t6 === undefined || t6 === null) return null;
        const id = t6.ids.get(addr6.words(addr), 0);
        const v = id < 0 ? -1 : t6.base.vipIndex.get(id, pp);
        if (v < 0) return null;
        const name = t6.base.services[v >> 2].name;
        return holderOf(byName.get(serviceKeyOf(name)), name, v & 3);
      }
      const v = t.vipIndex.get(addr, pp);
      return v < 0 ? null : holderOf(owners[v >> 2], t.services[v >> 2].name, v & 3);
    },
    nodePort(proto, port) {
      const k = protoIndex(proto) * 65536 + port;
      const e = t.nodePorts[k];
      if (e >= 0) return holderOf(owners[e], t.services[e].name, 0);
      // an IPv6-only service's NodePort is in the IPv6 tables only (the node's either way)
      const b6 = t.v6?.base;
      const e6 = b6 === undefined ? -1 : b6.nodePorts[k];
      return e6 < 0 ? null : holderOf(byName.get(serviceKeyOf(b6!.services[e6].name)), b6!.services[e6].name, 0);
    },
    service(key) {
      const s = byName.get(key);
      return s !== undefined && stays(s) ? position(s) : -1;
    },
  };
}

/** Services replaced where they stand (the same positions removed and added): the common change. */
function inPlaceDiff(diff: Diff): boolean {
  const { removed, added } = diff;
  if (removed.length !== added.length) return false;
  for (let k = 0; k < removed.length; k++) if (removed[k] !== added[k]) return false;
  return true;
}

/** Services only appended after the `had` in force (a service added): every other one keeps its position. */
function appendDiff(diff: Diff, had: number): boolean {
  const { removed, added } = diff;
  if (removed.length !== 0) return false;
  for (let k = 0; k < added.length; k++) if (added[k] !== had + k) return false;
  return true;
}

/**
 * The services' models of the next rule set: those in force with the diff's
 * removed ones out and the added ones in, in rule-set order. The array in
 * force is written (its model is given up), so a replacement where they
 * stand, or an addition at the end, costs only the changed services.
 */
function spliceServices(prev: ServiceModel[], diff: Diff, added: readonly ServiceModel[]): ServiceModel[] {
  const { removed, added: at } = diff;
  if (inPlaceDiff(diff)) {
    for (let k = 0; k < at.length; k++) prev[at[k]] = added[k];
    return prev;
  }
  if (appendDiff(diff, prev.length)) {
    for (let k = 0; k < added.length; k++) prev.push(added[k]);
    return prev;
  }
  // else merge: both index lists are ascending
  const n = prev.length - removed.length + at.length;
  const out: ServiceModel[] = new Array(n);
  let a = 0;
  let r = 0;
  let p = 0;
  for (let i = 0; i < n; i++) {
    if (a < at.length && at[a] === i) {
      out[i] = added[a++];
      continue;
    }
    while (r < removed.length && removed[r] === p) {
      r++;
      p++;
    }
    out[i] = prev[p++];
  }
  return out;
}

export class RuleSetHolder {
  private mdl: RuleSetModel | null = null;
  private rs: RuleSet | null = null;
  private tables: Tables | null = null;
  private gen = 0;
  private readonly swaps: SwapFn[] = [];
  /** per entry of tables.services: the Service object it came from */
  private owners: Service[] = [];
  /** "ns/name" → the Service object in force */
  private byNameMap: Map<string, Service> | null = new Map<string, Service>();
  /** Service object in force → its entries in tables.services */
  private entriesOfMap: Map<Service, number[]> | null = new Map<Service, number[]>();
  /** each service's position in the rule set in force (built on first use, kept across in-place changes) */
  private positions: Map<Service, number> | null = null;
  /** the durations of the last syncs (ms), for kube-proxy-style sync metrics */
  readonly syncListeners: Array<(ms: number, ok: boolean) => void> = [];
  private readonly allowIncremental: boolean;
  /** 'linear': new flows are decided by walking kube-proxy's rules (written from the rule set) instead of the hash tables */
  readonly decider: 'compiled' | 'linear';
  /** with decider 'linear': the walk of the rule set in force, for the pipeline's `linear` option */
  private lin: SampleDecider | null = null;
  /** the same for IPv6 packets: kube-proxy's ip6tables rules walked (null when the tables have no IPv6 part) */
  private lin6: SampleDecider6 | null = null;

  /** applied to every snapshot before it is kept and swapped in (the control worker puts its arrays on shared memory) */
  private readonly prepare: ((t: Tables) => Tables) | null;
  /**
   * The incremental path writes the next snapshot into the arrays of the one
   * in force (control/compile.ts patchTables), and the next model and owner
   * list into theirs: a change costs in proportion to its size. Only when no
   * other thread reads the tables (default: when there is no `prepare`, i.e.
   * the tables stay in this thread and the loop swaps them between batches).
   */
  private readonly inPlace: boolean;
  /** endpoint pairs in the tables in force that no row points at (replaced sets): compacted by a full compile past the live ones */
  private freedPairs = 0;
  /** the same for the IPv6 tables (compacted by compiling them whole) */
  private freedPairs6 = 0;
  /** "ns/name" → its entries in the IPv6 tables (tables.v6.base.services); built when first asked */
  private entries6Map: Map<string, number[]> | null = null;

  constructor(opts: { incremental?: boolean; decider?: 'compiled' | 'linear'; prepare?: (t: Tables) => Tables; inPlace?: boolean } = {}) {
    this.allowIncremental = opts.incremental ?? true;
    this.decider = opts.decider ?? 'compiled';
    this.prepare = opts.prepare ?? null;
    this.inPlace = opts.inPlace ?? this.prepare === null;
  }

  get ruleSet(): RuleSet | null {
    return this.rs;
  }
  /** the numeric model of the rule set in force (what the writers read) */
  get model(): RuleSetModel | null {
    return this.mdl;
  }
  get current(): Tables | null {
    return this.tables;
  }
  /** With decider 'linear', the linear walk of kube-proxy's rules for the rule set in force (set it as the pipeline's `linear`, with the tables); else null. */
  get linear(): SampleDecider | null {
    return this.lin;
  }
  /** With decider 'linear', the walk of kube-proxy's ip6tables rules for the rule set in force (the pipeline's `linear6`); else null. */
  get linear6(): SampleDecider6 | null {
    return this.lin6;
  }
  get generation(): number {
    return this.gen;
  }

  /** Before the first rule set: go on counting generations from `n` (the last one saved before a restart). */
  resumeGeneration(n: number): void {
    if (this.rs === null && Number.isInteger(n) && n > this.gen) this.gen = n;
  }

  /** Called with every new snapshot (the loop's setTables). */
  onSwap(fn: SwapFn): void {
    this.swaps.push(fn);
  }

  /**
   * Validate, compile and swap. Throws RuleSetError (every error with its
   * path) and changes nothing when the rule set is rejected.
   * `ifGeneration`: apply only if the generation in force is this one.
   */
  /**
   * The services in force by `${namespace}/${name}`. A full apply leaves it
   * to be built when first asked (a PATCH, a partial PUT, a PUT in another
   * order): a client that replaces every service each time never pays for it.
   */
  private get byName(): Map<string, Service> {
    let m = this.byNameMap;
    if (m === null) {
      m = new Map();
      const models = this.mdl?.services ?? [];
      for (let i = 0; i < models.length; i++) m.set(models[i].key, models[i].service);
      this.byNameMap = m;
    }
    return m;
  }

  /** Each service's entries in the (IPv4) tables, from `owners`; built when first asked, as byName. */
  private get entriesOf(): Map<Service, number[]> {
    let m = this.entriesOfMap;
    if (m === null) {
      m = new Map();
      const models = this.mdl?.services ?? [];
      for (let i = 0; i < models.length; i++) m.set(models[i].service, []);
      const owners = this.owners;
      for (let e = 0; e < owners.length; e++) m.get(owners[e])?.push(e);
      this.entriesOfMap = m;
    }
    return m;
  }

  /**
   * Build now what a full apply leaves to the first change to build (the
   * services by name, each service's entries, their positions): the control
   * worker calls it when idle after a full apply, so that the first one-service
   * change after a full sync does not pay for it (at 10 000 services, ~12 of
   * its ~64 ms in `tunproxy run`, AMD machine). Nothing when they are there.
   */
  prepareIncremental(): void {
    if (this.rs === null) return;
    void this.byName;
    void this.entriesOf;
    if (this.positions === null) {
      const pos = new Map<Service, number>();
      const list = this.rs.services;
      for (let i = 0; i < list.length; i++) pos.set(list[i], i);
      this.positions = pos;
    }
  }

  /** The service of that namespace and name in the rule set in force (the object itself), if any. */
  serviceNamed(namespace: string, name: string): Service | undefined {
    return this.byName.get(`${namespace}/${name}`);
  }

  /**
   * The position of a service in the rule set in force, or -1: O(1) after
   * the first call following a full apply (the API's PATCH and PUT of one
   * service find it here instead of walking 100 000 services).
   */
  indexOf(namespace: string, name: string): number {
    const rs = this.rs;
    if (rs === null) return -1;
    const svc = this.byName.get(`${namespace}/${name}`);
    if (svc === undefined) return -1;
    if (this.positions === null) this.prepareIncremental();
    return this.positions!.get(svc) ?? -1;
  }

  /**
   * Validate, compile and swap `input`. `replaced`: the caller built it from
   * the rule set in force by replacing the service at that position alone
   * (the API's PATCH of one service): the incremental path takes that as
   * its diff instead of comparing every service (checked: same length, that
   * position changed; otherwise the diff is computed as usual).
   */
  apply(input: unknown, ifGeneration?: number, replaced?: number): ApplyResult {
    const t0 = performance.now();
    if (ifGeneration !== undefined && ifGeneration !== this.gen) {
      throw new GenerationMismatch(this.gen, ifGeneration);
    }
    let result: ApplyResult;
    try {
      result = (this.allowIncremental ? this.incremental(input, t0, replaced) : null) ?? this.full(input, t0);
    } catch (e) {
      for (const l of this.syncListeners) l(performance.now() - t0, false);
      throw e;
    }
    for (const fn of this.swaps) fn(this.tables!);
    for (const l of this.syncListeners) l(result.compileMs, true);
    return result;
  }

  private full(input: unknown, t0: number): ApplyResult {
    const v = validateRuleSet(input);
    if (!v.ok) throw new RuleSetError(v.errors);
    const rs = v.ruleSet;
    const tables = compile(v.model, { generation: this.gen + 1 });
    const owners: Service[] = [];
    const models = v.model.services;
    for (let i = 0; i < models.length; i++) {
      const sm = models[i];
      const svc = sm.service;
      // one entry per service port the tables hold (IPv4 ones: compile's portsOf(4))
      for (let k = 0; k < sm.ports.length; k++) if (sm.ports[k].family === 4) owners.push(svc);
    }
    // the indexes by name and by service: built when first asked (byName, entriesOf)
    this.commit(v.model, tables, owners, null, null);
    this.positions = null;
    this.freedPairs = 0;
    this.freedPairs6 = 0;
    this.entries6Map = null;
    return this.result(t0, 'full');
  }

  /** The few-services-changed path; null when it does not apply (then the full path runs). */
  private incremental(input: unknown, t0: number, replaced?: number): ApplyResult | null {
    const prevModel = this.mdl;
    const prev = this.rs;
    const prevTables = this.tables;
    if (prev === null || prevTables === null || prevModel === null) return null;
    if (typeof input !== 'object' || input === null || Array.isArray(input)) return null;
    const o = input as Record<string, unknown>;
    for (const k of Object.keys(o)) if (k !== 'apiVersion' && k !== 'node' && k !== 'services') return null;
    if (o.apiVersion !== prev.apiVersion || !Array.isArray(o.services)) return null;
    if (o.node !== prev.node && JSON.stringify(o.node) !== JSON.stringify(prev.node)) return null;
    // too many tombstones or unreferenced endpoint pairs: compact with a full compile
    if (prevTables.services.length > 2 * prevTables.liveServicePorts + 1024) return null;
    if (this.freedPairs > prevTables.endpointPairs - this.freedPairs + 65536) return null;
    const next = o.services as Service[];
    const hinted = replaced !== undefined && next.length === prev.services.length && replaced >= 0 && replaced < next.length && next[replaced] !== prev.services[replaced];
    const diff = hinted ? { removed: [replaced], added: [replaced] } : diffServices(prev.services, next);
    if (diff === null) return null;

    const addedSvcs = diff.added.map((i) => next[i]);
    const removedSvcs = new Set(diff.removed.map((i) => prev.services[i]));
    // the added services: each on its own, among themselves and against the keys of the services that stay
    const stays = (s: Service): boolean => !removedSvcs.has(s);
    const keys = keysOfTables(prevTables, this.owners, this.byName, stays, (s) => next.indexOf(s));
    const v = validateServices(prevModel.node, addedSvcs, diff.added, keys);
    if (!v.ok) throw new RuleSetError(v.errors);

    const removedEntries: number[] = [];
    for (const s of removedSvcs) removedEntries.push(...(this.entriesOf.get(s) ?? []));
    const rs: RuleSet = o as unknown as RuleSet;
    // IPv6 service ports added or removed? (asked before the model in force is spliced in place)
    // (the removed services' models by their positions in the rule set in force: no walk over every service)
    const v6Changed = v.services.some((s) => s.ports.some((p) => p.family === 6)) || diff.removed.some((i) => prevModel.services[i].ports.some((p) => p.family === 6));
    // from here on nothing can fail: in place, the tables, model and owners in force are written
    const inPlace = this.inPlace;
    const patched = patchTables(prevTables, prevModel.node, removedEntries, v.services, this.gen + 1, inPlace);
    let tables = patched.tables;
    const { entries, freedPairs } = patched;
    // the holder's own arrays (the services' models, the entries' owners) are written in place either way:
    // no other thread reads them, and at 100 000 services each copy is 0.8 MB of memory touched for the
    // first time (a large object), ~2.5 ms of a one-service change on the AMD machine
    const model = new RuleSetModel(rs, prevModel.node, spliceServices(prevModel.services as ServiceModel[], diff, v.services));
    // IPv6 service ports changed: the IPv6 tables are patched the same way (or compiled again, whole,
    // when they have none yet or too many tombstones or freed endpoint pairs)
    if (v6Changed) tables = { ...tables, v6: this.patch6(prevTables, prevModel, removedSvcs, addedSvcs, v.services, model) };
    const owners = this.owners;
    const byName = this.byName;
    const entriesOf = this.entriesOf;
    for (const s of removedSvcs) {
      entriesOf.delete(s);
      if (byName.get(`${s.namespace}/${s.name}`) === s) byName.delete(`${s.namespace}/${s.name}`);
    }
    addedSvcs.forEach((svc, k) => {
      for (const e of entries[k]) owners[e] = svc;
      entriesOf.set(svc, entries[k]);
      byName.set(`${svc.namespace}/${svc.name}`, svc);
    });
    // positions: the same after a replacement where they stand or an addition at the end, else built again when next asked
    const positions = this.positions;
    if (positions !== null && (inPlaceDiff(diff) || appendDiff(diff, prev.services.length))) {
      for (const s of removedSvcs) positions.delete(s);
      diff.added.forEach((i) => positions.set(next[i], i));
    } else this.positions = null;
    this.commit(model, tables, owners, byName, entriesOf);
    this.freedPairs += freedPairs;
    return this.result(t0, 'incremental');
  }

  /** Each service's entries in the IPv6 tables, by "ns/name" (from the entries' names), built when first asked. */
  private entries6(t6: Tables6): Map<string, number[]> {
    let m = this.entries6Map;
    if (m === null) {
      m = new Map();
      const list = t6.base.services;
      for (let e = 0; e < list.length; e++) {
        if (!list[e].live) continue;
        const key = serviceKeyOf(list[e].name);
        const es = m.get(key);
        if (es === undefined) m.set(key, [e]);
        else es.push(e);
      }
      this.entries6Map = m;
    }
    return m;
  }

  /** The IPv6 tables after an incremental change that touched IPv6 service ports (cannot fail). */
  private patch6(prevTables: Tables, prevModel: RuleSetModel, removedSvcs: ReadonlySet<Service>, addedSvcs: readonly Service[], added: readonly ServiceModel[], model: RuleSetModel): Tables6 | null {
    const p6 = prevTables.v6;
    const compact = (t6: Tables6) => t6.base.services.length > 2 * t6.base.liveServicePorts + 1024 || this.freedPairs6 > t6.base.endpointPairs - this.freedPairs6 + 65536;
    if (p6 !== undefined && p6 !== null && !compact(p6)) {
      const e6 = this.entries6(p6);
      const removed: number[] = [];
      for (const s of removedSvcs) removed.push(...(e6.get(`${s.namespace}/${s.name}`) ?? []));
      const r = patchTables6(p6, prevModel.node, removed, added, this.gen + 1);
      if (r !== null) {
        for (const s of removedSvcs) e6.delete(`${s.namespace}/${s.name}`);
        addedSvcs.forEach((s, k) => {
          if (r.entries[k].length > 0) e6.set(`${s.namespace}/${s.name}`, r.entries[k]);
        });
        this.freedPairs6 += r.freedPairs;
        return r.tables;
      }
    }
    this.entries6Map = null;
    this.freedPairs6 = 0;
    return compile6(model, this.gen + 1);
  }

  private commit(model: RuleSetModel, tables: Tables, owners: Service[], byName: Map<string, Service> | null, entriesOf: Map<Service, number[]> | null): void {
    if (this.prepare !== null) tables = this.prepare(tables);
    // --decider linear: kube-proxy's rules written from the model as iptables-restore text and parsed
    // back, for the pipeline (its `linear` option, set with the tables: control/dataplane.ts). Kept on
    // purpose, though the model would suffice to build rule objects: the walk is the oracle of what
    // iptables would load, and building it from the text keeps one writer (no second model → rules
    // path that could disagree with the text) and runs writer and parser every time. In tunproxy run
    // the text is also the form the rules cross to the packet thread in (control/worker/control-worker.ts),
    // so the holder there builds no walk.
    if (this.decider === 'linear') {
      this.lin = linearFromText(writeIptables(model), { localAddresses: model.node.addresses });
      // IPv6: the ip6tables half, as kube-proxy's IPv6 proxier writes it, when the tables have an IPv6 part
      this.lin6 = tables.v6 ? linearFromText(writeIptables(model, { family: 6 }), { localAddresses: model.node.addresses, family: 6 }) : null;
    }
    this.mdl = model;
    this.rs = model.ruleSet;
    this.tables = tables;
    this.gen = tables.generation;
    this.owners = owners;
    this.byNameMap = byName;
    this.entriesOfMap = entriesOf;
  }

  private result(t0: number, mode: 'full' | 'incremental'): ApplyResult {
    return { generation: this.gen, compileMs: performance.now() - t0, services: this.rs!.services.length, servicePorts: this.tables!.liveServicePorts, mode };
  }
}

export class GenerationMismatch extends Error {
  readonly current: number;
  readonly expected: number;
  constructor(current: number, expected: number) {
    super(`the rule set in force is generation ${current}, not ${expected}: fetch it again and retry`);
    this.name = 'GenerationMismatch';
    this.current = current;
    this.expected = expected;
  }
}
