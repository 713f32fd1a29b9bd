/**
 * From the cache to the tables. A sync converts the dirty services, puts them
 * into the list in force (unchanged services stay the same objects: the
 * holder's incremental path validates and compiles only the changed ones; a
 * deleted service's slot is filled by the last one) and applies it. What the
 * validator refuses in one service (a NodePort clash, ...) is logged with its
 * namespace/name and counted; that service keeps its previous version in
 * force (or stays out), the rest goes on.
 *
 * SyncRunner is kube-proxy's BoundedFrequencyRunner: a sync runs at most once
 * per --min-sync-period (the start of one to the start of the next), every
 * request in between is coalesced into the next one, and a full resync runs
 * every fullSyncPeriod.
 */
import { performance } from 'node:perf_hooks';
import type { NodeSpec, RuleSet, Service } from '../types.ts';
import { API_VERSION } from '../types.ts';
import { RuleSetError } from '../validate.ts';
import type { ApplyResult } from '../runtime.ts';
import type { KubeCache } from './cache.ts';
import type { RuleSetSink } from './adapter.ts';

export interface SyncReport {
  keys: string[];
  full: boolean;
  result: ApplyResult | null;
  /** services refused (conversion or validation): "ns/name: reason" */
  rejected: Array<{ object: string; reason: string }>;
  ms: number;
}

export interface SyncerOptions {
  sink: RuleSetSink;
  cache: KubeCache;
  /** node fields not from the Node object (masqueradeAddress, nodePortRange, clusterCIDR override) */
  nodeDefaults?: Partial<NodeSpec>;
  log: (msg: string) => void;
}

const keyOf = (s: Service): string => `${s.namespace}/${s.name}`;

export class ServiceSyncer {
  /** the service list in force, and where each service is in it */
  private services: Service[] = [];
  private pos = new Map<string, number>();
  private node: NodeSpec | null = null;
  /** why a service is left out (skipped by kube-proxy's rules), for the status */
  readonly skipped = new Map<string, string>();
  rejectedTotal = 0;
  syncs = 0;

  constructor(private readonly o: SyncerOptions) {}

  get inForce(): readonly Service[] {
    return this.services;
  }

  private nodeSpec(): NodeSpec {
    const info = this.o.cache.nodeInfo();
    const d = this.o.nodeDefaults ?? {};
    const n: NodeSpec = { ...d, addresses: d.addresses && d.addresses.length ? d.addresses : info.addresses };
    if (!d.clusterCIDR && info.podCIDR) n.clusterCIDR = info.podCIDR;
    n.name = this.o.cache.nodeName;
    return n;
  }

  /** One sync: the dirty services (or, `full`, every service) into the tables. */
  async sync(full = false): Promise<SyncReport> {
    const t0 = performance.now();
    const cache = this.o.cache;
    const rejected: SyncReport['rejected'] = [];
    const keys = full ? [...new Set([...cache.services.keys(), ...this.pos.keys(), ...cache.take()])] : cache.take();
    let node = this.node;
    if (cache.nodeDirty || node === null || full) {
      const n = this.nodeSpec();
      if (node === null || JSON.stringify(n) !== JSON.stringify(node)) node = n;
      cache.nodeDirty = false;
    }
    // the next list: a copy whose unchanged entries are the same objects
    const next = full ? this.services.map((s) => ({ ...s })) : this.services.slice();
    const pos = new Map(this.pos);
    const put = (key: string, svc: Service) => {
      const i = pos.get(key);
      if (i === undefined) {
        pos.set(key, next.length);
        next.push(svc);
      } else next[i] = svc;
    };
    const remove = (key: string) => {
      const i = pos.get(key);
      if (i === undefined) return;
      const last = next.pop()!;
      pos.delete(key);
      if (i < next.length) {
        next[i] = last;
        pos.set(keyOf(last), i);
      }
    };
    for (const key of keys) {
      const b = cache.build(key);
      if ('gone' in b) {
        remove(key);
        this.skipped.delete(key);
      } else if ('skip' in b) {
        remove(key);
        this.skipped.set(key, b.skip);
      } else if ('bad' in b) {
        // the version in force (if any) stays: bad input leaves the running state unchanged
        rejected.push({ object: `Service ${key}`, reason: b.bad });
      } else {
        this.skipped.delete(key);
        put(key, b.service);
        for (const w of b.warnings) this.o.log(`warning: ${w}`);
        for (const p of b.sliceProblems) rejected.push({ object: p.slice(0, p.indexOf(': ')), reason: p.slice(p.indexOf(': ') + 2) });
      }
    }
    for (const r of cache.rejected.splice(0)) rejected.push(r);
    if (node === null || node.addresses.length === 0) {
      // nothing to serve NodePorts on yet: wait for the Node object (its InternalIP)
      for (const k of keys) cache.dirty.add(k);
      this.report(rejected);
      return { keys, full, result: null, rejected, ms: performance.now() - t0 };
    }
    let result: ApplyResult | null = null;
    for (let round = 0; round < 8; round++) {
      const rs: RuleSet = { apiVersion: API_VERSION, node, services: next };
      try {
        result = await this.o.sink.apply(rs);
        break;
      } catch (e) {
        if (!(e instanceof RuleSetError)) throw e;
        const refused = new Map<string, string[]>();
        const other: string[] = [];
        for (const err of e.errors) {
          const m = /^services\[(\d+)\]/.exec(err.path);
          const svc = m ? next[Number(m[1])] : undefined;
          if (!svc) {
            other.push(`${err.path}: ${err.message}`);
            continue;
          }
          const list = refused.get(keyOf(svc)) ?? [];
          list.push(`${err.path.replace(/^services\[\d+\]\.?/, '') || '(service)'}: ${err.message}`);
          refused.set(keyOf(svc), list);
        }
        if (refused.size === 0) {
          // the node part is refused (an address the validator does not take): the rules in force stay
          rejected.push({ object: `Node ${cache.nodeName}`, reason: other.join('; ') });
          node = this.node;
          if (node === null) break;
          continue;
        }
        for (const [key, msgs] of refused) {
          rejected.push({ object: `Service ${key}`, reason: `refused by the rule-set validator: ${msgs.join('; ')}` });
          const before = this.pos.has(key) ? this.services[this.pos.get(key)!] : undefined;
          if (before !== undefined) put(key, before);
          else remove(key);
        }
      }
    }
    if (result !== null) {
      this.services = next;
      this.pos = pos;
      this.node = node;
      this.syncs++;
    }
    this.report(rejected);
    return { keys, full, result, rejected, ms: performance.now() - t0 };
  }

  private report(rejected: SyncReport['rejected']): void {
    this.rejectedTotal += rejected.length;
    for (const r of rejected) this.o.log(`rejected ${r.object}: ${r.reason}`);
  }
}

/** kube-proxy's BoundedFrequencyRunner: at most one run per minIntervalMs, requests in between coalesced. */
export class SyncRunner {
  private last = -Infinity;
  private running = false;
  private pending = false;
  private fullPending = false;
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private periodic: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly minIntervalMs: number,
    private readonly fn: (full: boolean) => Promise<void>,
    fullSyncPeriodMs = 3_600_000,
  ) {
    if (fullSyncPeriodMs > 0) {
      this.periodic = setInterval(() => this.run(true), fullSyncPeriodMs);
      this.periodic.unref();
    }
  }

  /** Ask for a sync (full: every service, the periodic resync). */
  run(full = false): void {
    if (this.stopped) return;
    if (full) this.fullPending = true;
    if (this.running) {
      this.pending = true;
      return;
    }
    if (this.timer || this.immediate) return;
    const wait = this.last + this.minIntervalMs - performance.now();
    // setImmediate: every event of the chunk being read joins this sync
    if (wait <= 0) this.immediate = setImmediate(() => void this.exec());
    else this.timer = setTimeout(() => void this.exec(), wait);
  }

  private async exec(): Promise<void> {
    this.timer = null;
    this.immediate = null;
    if (this.stopped) return;
    this.running = true;
    this.last = performance.now();
    const full = this.fullPending;
    this.fullPending = false;
    try {
      await this.fn(full);
    } finally {
      this.running = false;
      if (this.pending) {
        this.pending = false;
        this.run();
      }
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    if (this.periodic) clearInterval(this.periodic);
  }
}
