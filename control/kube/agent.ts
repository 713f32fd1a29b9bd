/**
 * `tunproxy run --kubernetes`: the node agent. List-and-watch (the
 * @kubernetes/client-node informer, ListWatch) of Services, EndpointSlices
 * (discovery.k8s.io/v1) and this node's Node object feeds the cache
 * (cache.ts); the sync runner (sync.ts) puts the changed services in force
 * through the incremental path, at most once per --min-sync-period.
 *
 * Watching, as kube-proxy's reflector does:
 * - the first list is paged (limit 500 + continue) and gives the resource
 *   version the watch starts from; watches ask for bookmarks
 *   (allowWatchBookmarks) and end after timeoutSeconds (5-10 min), then
 *   resume from the last resource version seen (event or bookmark);
 * - 410 Gone (as the watch's HTTP status or as an ERROR event) re-lists;
 *   objects missing from the new list are deleted (nothing stale stays);
 * - a dropped connection reconnects from the resource version; a failed
 *   list or watch (server down) retries with exponential backoff
 *   (0.5 s doubling to 30 s, jittered), reset once a list or event arrives.
 */
import { performance } from 'node:perf_hooks';
import { CoreV1Api, DiscoveryV1Api, KubeConfig, ListWatch, Watch } from '@kubernetes/client-node';
import type { KubernetesObject } from '@kubernetes/client-node';
import { Counter, Gauge, Histogram, Registry, exponentialBuckets } from 'prom-client';
import type { NodeSpec } from '../types.ts';
import { KubeCache } from './cache.ts';
import type { EventType, Obj } from './cache.ts';
import { ServiceSyncer, SyncRunner } from './sync.ts';
import type { SyncReport } from './sync.ts';
import type { RuleSetSink } from './adapter.ts';
import { HealthCheckNodePorts, HealthzServer } from './health.ts';
import type { HealthState } from './health.ts';

export type Kind = 'service' | 'endpointslice' | 'node';

export interface KubeAgentOptions {
  /** the cluster: a KubeConfig, a kubeconfig file, or (neither) the in-cluster service account */
  kubeConfig?: KubeConfig;
  kubeconfigFile?: string;
  /** this node's name (--hostname-override, else the host name) */
  nodeName: string;
  sink: RuleSetSink;
  /** --min-sync-period in ms (default 1000; 0: every change at once) */
  minSyncPeriodMs?: number;
  /** full resync period (default 1 h, like kube-proxy's FullSyncPeriod) */
  fullSyncPeriodMs?: number;
  /** "0.0.0.0:10256"; null: no healthz server */
  healthzBindAddress?: string | null;
  /** /healthz turns 503 when a change waits longer than this (default 60 s: kube-proxy's 2 × sync period) */
  healthTimeoutMs?: number;
  /** where the health-check NodePorts listen (default 0.0.0.0; null: not served) */
  healthCheckBindHost?: string | null;
  nodeDefaults?: Partial<NodeSpec>;
  /** the Prometheus registry the agent's metrics go in (the API server's, under tunproxy run) */
  registry?: Registry;
  log?: (msg: string) => void;
  /** every watch event, as it arrives (benchmarks, tests) */
  onEvent?: (kind: Kind, type: string, obj: Obj) => void;
  /** every sync, once its rules are in force (or refused) */
  onSync?: (r: SyncReport) => void;
  /** initial delay of the retry backoff (ms; default 500) */
  backoffMs?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The client library's Watch, asking for bookmarks and a server-side timeout, and seeing every event first. */
class ReflectorWatch extends Watch {
  private lastEnd = 0;
  constructor(
    config: KubeConfig,
    private readonly seen: (type: string, obj: Obj) => void,
    private readonly pause: () => number,
    private readonly stopped: () => boolean,
  ) {
    super(config);
  }
  override async watch(path: string, q: Record<string, string | number | boolean | undefined>, callback: (phase: string, apiObj: any, watchObj?: any) => void, done: (err: any) => void): Promise<AbortController> {
    // a connection that keeps dropping at once is not retried in a tight loop
    if (performance.now() - this.lastEnd < 1000) await sleep(this.pause());
    // stopped meanwhile: no new connection (the informer's stop() only aborts the request it knows)
    if (this.stopped()) return new AbortController();
    const params = { ...q, allowWatchBookmarks: true, timeoutSeconds: 300 + Math.floor(Math.random() * 300) };
    const controller = await super.watch(
      path,
      params,
      (phase, obj, w) => {
        this.seen(phase, obj);
        callback(phase, obj, w);
      },
      (err) => {
        this.lastEnd = performance.now();
        done(err);
      },
    );
    if (this.stopped()) controller.abort();
    return controller;
  }
}

interface ListResult {
  items: any[];
  metadata?: { resourceVersion?: string; _continue?: string };
}

/** A paged list (limit 500 + continue), as the reflector lists: one resource version for all pages. */
async function pagedList(page: (cont: string | undefined) => Promise<ListResult>): Promise<ListResult> {
  const items: any[] = [];
  let cont: string | undefined;
  let rv = '';
  do {
    const r = await page(cont);
    items.push(...(r.items ?? []));
    rv = r.metadata?.resourceVersion ?? rv;
    cont = r.metadata?._continue || undefined;
  } while (cont);
  return { items, metadata: { resourceVersion: rv } };
}

export class KubeAgent {
  readonly cache: KubeCache;
  readonly syncer: ServiceSyncer;
  readonly runner: SyncRunner;
  readonly health: HealthState = { queuedAt: 0, updatedAt: 0 };
  readonly healthz: HealthzServer;
  readonly hcNodePorts: HealthCheckNodePorts | null;
  readonly kc: KubeConfig;
  private informers: Array<{ kind: Kind; lw: ListWatch<KubernetesObject>; synced: boolean; backoff: number; retry: NodeJS.Timeout | null }> = [];
  private stopped = false;
  private readonly log: (msg: string) => void;
  private readonly metrics: {
    events: Counter<'kind' | 'type'>;
    rejected: Counter<'kind'>;
    relists: Counter<'kind'>;
    watchErrors: Counter<'kind'>;
    syncs: Counter<'mode'>;
    syncLatency: Histogram;
    pending: Gauge;
  };
  private firstSyncLogged = false;
  private waitingForNodeLogged = 0;

  constructor(private readonly o: KubeAgentOptions) {
    this.log = o.log ?? ((m) => process.stderr.write(`tunproxy: kubernetes: ${m}\n`));
    if (o.kubeConfig) this.kc = o.kubeConfig;
    else {
      this.kc = new KubeConfig();
      if (o.kubeconfigFile) {
        try {
          this.kc.loadFromFile(o.kubeconfigFile);
        } catch (e) {
          throw new Error(`--kubeconfig ${o.kubeconfigFile}: ${(e as Error).message}`);
        }
      } else {
        if (!process.env.KUBERNETES_SERVICE_HOST) throw new Error('--kubernetes: not inside a cluster (no KUBERNETES_SERVICE_HOST for the service account): give --kubeconfig FILE');
        this.kc.loadFromCluster();
      }
    }
    if (!this.kc.getCurrentCluster()) throw new Error('--kubernetes: the kubeconfig names no current cluster');
    this.cache = new KubeCache(o.nodeName);
    const registry = o.registry ?? new Registry();
    const reg = [registry];
    this.metrics = {
      events: new Counter({ name: 'tunproxy_kube_watch_events_total', help: 'Watch events and listed objects received, by kind and type.', labelNames: ['kind', 'type'], registers: reg }),
      rejected: new Counter({ name: 'tunproxy_kube_objects_rejected_total', help: 'Kubernetes objects refused (not readable, or refused by the rule-set validator); the rest of the cluster is served.', labelNames: ['kind'], registers: reg }),
      relists: new Counter({ name: 'tunproxy_kube_relists_total', help: 'Full lists (the first, and after 410 Gone).', labelNames: ['kind'], registers: reg }),
      watchErrors: new Counter({ name: 'tunproxy_kube_watch_errors_total', help: 'Lists and watches that failed (retried with backoff).', labelNames: ['kind'], registers: reg }),
      syncs: new Counter({ name: 'tunproxy_kube_syncs_total', help: 'Syncs of the changed services into the tables, by mode (incremental, full, refused).', labelNames: ['mode'], registers: reg }),
      syncLatency: new Histogram({ name: 'tunproxy_kube_network_programming_duration_seconds', help: "From the first change a sync takes in to its rules in force (like kube-proxy's network_programming_duration).", buckets: exponentialBuckets(0.001, 2, 16), registers: reg }),
      pending: new Gauge({ name: 'tunproxy_kube_pending_services', help: 'Services changed and not yet synced.', registers: reg, collect: () => this.metrics.pending.set(this.cache.dirty.size) }),
    };
    this.syncer = new ServiceSyncer({ sink: o.sink, cache: this.cache, nodeDefaults: o.nodeDefaults, log: this.log });
    this.runner = new SyncRunner(o.minSyncPeriodMs ?? 1000, (full) => this.sync(full), o.fullSyncPeriodMs ?? 3_600_000);
    this.healthz = new HealthzServer(this.health, o.healthTimeoutMs ?? 60_000, registry);
    this.hcNodePorts = o.healthCheckBindHost === null ? null : new HealthCheckNodePorts(o.healthCheckBindHost ?? '0.0.0.0', this.log, () => this.healthz.healthy());
  }

  get synced(): boolean {
    return this.informers.length > 0 && this.informers.every((i) => i.synced);
  }

  async start(): Promise<void> {
    if (this.o.healthzBindAddress !== null) {
      const port = await this.healthz.start(this.o.healthzBindAddress ?? '0.0.0.0:10256');
      this.log(`healthz on ${this.o.healthzBindAddress ?? '0.0.0.0:10256'} (port ${port})`);
    }
    const core = this.kc.makeApiClient(CoreV1Api);
    const discovery = this.kc.makeApiClient(DiscoveryV1Api);
    const node = this.o.nodeName;
    this.informer('service', '/api/v1/services', (cont) => core.listServiceForAllNamespaces({ limit: 500, _continue: cont }) as Promise<ListResult>);
    this.informer('endpointslice', '/apis/discovery.k8s.io/v1/endpointslices', (cont) => discovery.listEndpointSliceForAllNamespaces({ limit: 500, _continue: cont }) as Promise<ListResult>);
    this.informer('node', '/api/v1/nodes', (cont) => core.listNode({ limit: 500, _continue: cont, fieldSelector: `metadata.name=${node}` }) as Promise<ListResult>, `metadata.name=${node}`);
    this.log(`watching services, endpointslices and node ${node} on ${this.kc.getCurrentCluster()!.server} (min sync period ${this.o.minSyncPeriodMs ?? 1000} ms)`);
  }

  private informer(kind: Kind, path: string, page: (cont: string | undefined) => Promise<ListResult>, fieldSelector?: string): void {
    const rec = { kind, lw: null as unknown as ListWatch<KubernetesObject>, synced: false, backoff: this.o.backoffMs ?? 500, retry: null as NodeJS.Timeout | null };
    const watch = new ReflectorWatch(this.kc, (type, obj) => this.onWatchEvent(kind, type, obj), () => rec.backoff, () => this.stopped);
    const list = async () => {
      const r = await pagedList(page);
      this.metrics.relists.inc({ kind });
      rec.backoff = this.o.backoffMs ?? 500;
      // the informer files the listed objects right after this resolves; the sync that follows sees them
      setImmediate(() => {
        rec.synced = true;
        this.changed();
      });
      // the generated client turns the objects into its model classes: plain JSON again, as a watch delivers them
      return { ...r, items: r.items.map((i) => JSON.parse(JSON.stringify(i))) } as any;
    };
    const lw = new ListWatch<KubernetesObject>(path, watch, list, false, undefined, fieldSelector);
    rec.lw = lw;
    const on = (type: EventType) => (obj: KubernetesObject) => this.onObject(kind, type, obj as unknown as Obj);
    lw.on('add', on('add'));
    lw.on('update', on('update'));
    lw.on('delete', on('delete'));
    lw.on('error', (err: any) => {
      if (this.stopped) return;
      this.metrics.watchErrors.inc({ kind });
      const wait = Math.round(rec.backoff * (0.8 + Math.random() * 0.4));
      this.log(`${kind}s: ${err?.statusCode ? `HTTP ${err.statusCode} ` : ''}${err?.message ?? err}; retrying in ${wait} ms`);
      rec.backoff = Math.min(rec.backoff * 2, 30_000);
      rec.retry = setTimeout(() => {
        rec.retry = null;
        if (!this.stopped) void lw.start();
      }, wait);
    });
    this.informers.push(rec);
    void lw.start();
  }

  private onWatchEvent(kind: Kind, type: string, obj: Obj): void {
    this.metrics.events.inc({ kind, type });
    const rec = this.informers.find((i) => i.kind === kind);
    if (rec) rec.backoff = this.o.backoffMs ?? 500;
    if (type === 'ERROR') this.log(`${kind}s: watch ERROR ${(obj as any)?.code ?? ''} ${(obj as any)?.message ?? ''}: ${(obj as any)?.code === 410 ? 're-listing' : 'reconnecting'}`);
    this.o.onEvent?.(kind, type, obj);
  }

  private onObject(kind: Kind, type: EventType, obj: Obj): void {
    if (kind === 'service') this.cache.onService(type, obj);
    else if (kind === 'endpointslice') this.cache.onSlice(type, obj);
    else this.cache.onNode(type, obj);
    this.changed();
  }

  private changed(): void {
    if (this.health.queuedAt === 0) this.health.queuedAt = Date.now();
    // kube-proxy waits for the first list of every informer before its first sync
    if (this.synced) this.runner.run();
  }

  private async sync(full: boolean): Promise<void> {
    const t0 = performance.now();
    const queuedAt = this.health.queuedAt;
    this.health.queuedAt = 0;
    let r: SyncReport;
    try {
      r = await this.syncer.sync(full);
    } catch (e) {
      this.log(`sync failed: ${(e as Error).stack ?? e}`);
      this.metrics.syncs.inc({ mode: 'refused' });
      if (this.health.queuedAt === 0) this.health.queuedAt = queuedAt;
      return;
    }
    for (const x of r.rejected) this.metrics.rejected.inc({ kind: x.object.split(' ')[0] });
    if (r.result === null) {
      // waiting for the Node object (its addresses), or everything refused: still queued
      if (this.health.queuedAt === 0) this.health.queuedAt = queuedAt || Date.now();
      const now = Date.now();
      if (this.cache.node === null && now - this.waitingForNodeLogged > 10_000) {
        this.waitingForNodeLogged = now;
        this.log(`waiting for Node ${this.o.nodeName} (its addresses): no rules put in force yet`);
      }
    } else {
      this.health.updatedAt = Date.now();
      this.metrics.syncs.inc({ mode: full ? 'full' : r.result.mode });
      if (queuedAt) this.metrics.syncLatency.observe((this.health.updatedAt - queuedAt) / 1000);
      if (!this.firstSyncLogged) {
        this.firstSyncLogged = true;
        this.log(`first sync: generation ${r.result.generation}, ${r.result.services} services, ${r.result.servicePorts} service ports in ${(performance.now() - t0).toFixed(1)} ms`);
      }
    }
    if (this.hcNodePorts) {
      const local = new Map<string, number>();
      for (const s of this.syncer.inForce) {
        if (s.externalTrafficPolicy !== 'Local') continue;
        local.set(`${s.namespace}/${s.name}`, (s.endpoints ?? []).filter((e) => e.nodeLocal && e.ready !== false && !e.terminating).length);
      }
      await this.hcNodePorts.update(this.cache.healthCheckNodePorts(), local);
    }
    this.o.onSync?.(r);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.runner.stop();
    for (const i of this.informers) {
      if (i.retry) clearTimeout(i.retry);
      await i.lw.stop();
    }
    await this.healthz.close();
    await this.hcNodePorts?.close();
  }
}
