/**
 *   GET /v1/stats   counters, connection table, rule set, loop, state directory, memory as JSON
 *   GET /metrics    the same for Prometheus (prom-client, text format 0.0.4)
 *   GET /healthz    the process answers (200)
 *   GET /readyz     200 when a rule set is in force (and, under `tunproxy run`, a TUN device attached), else 503
 *   GET /v1         the routes
 *
 * Metrics, read from the dataplane's own counters at scrape time (nothing is
 * counted twice on the packet path):
 *   tunproxy_packets_total{verdict}, tunproxy_bytes_total{verdict}, tunproxy_drops_total{reason},
 *   tunproxy_malformed_total{error}, tunproxy_events_total{event}, tunproxy_lookups_total,
 *   tunproxy_conntrack_entries, tunproxy_conntrack_max, tunproxy_conntrack_{inserts,evictions,collisions,clashes,full,expired}_total,
 *   the IPv6 table's as tunproxy_conntrack6_entries, _max, tunproxy_conntrack6_{inserts,...,expired}_total,
 *   tunproxy_affinity_entries, tunproxy_ruleset_generation, tunproxy_services, tunproxy_service_ports,
 *   tunproxy_sync_proxy_rules_duration_seconds (histogram, like kube-proxy's: every validate+compile+swap),
 *   tunproxy_sync_proxy_rules_last_timestamp_seconds, tunproxy_sync_proxy_rules_rejected_total,
 *   tunproxy_api_ruleset_rejected_total,
 *   tunproxy_state_saved_generation, tunproxy_packet_thread_event_loop_delay_{max,p99}_seconds,
 *   tunproxy_packet_thread_heap_used_bytes, tunproxy_packet_thread_external_memory_bytes,
 *   and the process_* / nodejs_* defaults (under tunproxy run: of the control worker's thread).
 */
import type { FastifyInstance } from 'fastify';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, exponentialBuckets } from 'prom-client';
import { DROP_REASONS, EVENTS } from '../../dataplane/counters.ts';
import { VERDICTS } from '../../dataplane/verdict.ts';
import type { ApiContext } from './context.ts';
import type { RuleSet } from '../types.ts';
import type { ConntrackStats, PacketStats, ThreadHeap } from '../worker/packet-side.ts';
import { threadHeap } from '../worker/packet-side.ts';
import { mallocInfo } from '../../dataplane/pin/index.ts';
import type { MallocInfo } from '../../dataplane/pin/index.ts';
import { processTrimmer } from '../malloc-trim.ts';
import type { TrimStats } from '../malloc-trim.ts';

export class ApiMetrics {
  readonly registry = new Registry();
  readonly syncDuration: Histogram;
  private lastSyncOk = 0;
  private syncRejected = 0;
  /** the packet side's counters, fetched (one small message) before each scrape */
  private snap: PacketStats | null = null;
  private readonly ctx: ApiContext;

  /** The metrics text: the packet side's counters are fetched first, then every collector reads them. */
  async scrape(): Promise<string> {
    this.snap = await this.ctx.packets.stats();
    return this.registry.metrics();
  }

  constructor(ctx: ApiContext) {
    this.ctx = ctx;
    const r = this.registry;
    const holder = ctx.holder;
    const EMPTY: number[] = [];
    const c = {
      get packets() { return self.snap?.raw.packets ?? EMPTY; },
      get bytes() { return self.snap?.raw.bytes ?? EMPTY; },
      get drops() { return self.snap?.raw.drops ?? EMPTY; },
      get events() { return self.snap?.raw.events ?? EMPTY; },
      get malformed() { return Object.entries(self.snap?.counters.malformed ?? {}); },
    };
    const self = this;
    const counter = (name: string, help: string, labelNames: string[], fill: (m: Counter) => void) =>
      new Counter({
        name,
        help,
        labelNames,
        registers: [r],
        collect() {
          this.reset();
          fill(this);
        },
      });
    const gauge = (name: string, help: string, value: () => number) =>
      new Gauge({
        name,
        help,
        registers: [r],
        collect() {
          this.set(value());
        },
      });
    counter('tunproxy_packets_total', 'Packets by verdict (forward: translated and written back, reply: answered by a generated packet, drop, pass: written back unchanged).', ['verdict'], (m) => VERDICTS.forEach((v, i) => m.inc({ verdict: v }, c.packets[i])));
    counter('tunproxy_bytes_total', 'Bytes (IP total length) by verdict.', ['verdict'], (m) => VERDICTS.forEach((v, i) => m.inc({ verdict: v }, c.bytes[i])));
    counter('tunproxy_drops_total', 'Dropped packets by reason.', ['reason'], (m) => DROP_REASONS.forEach((v, i) => m.inc({ reason: v }, c.drops[i])));
    counter('tunproxy_malformed_total', 'Malformed packets by wire error.', ['error'], (m) => {
      for (const [k, v] of c.malformed) m.inc({ error: k }, v);
    });
    counter('tunproxy_events_total', 'How packets were handled (new flows, established, replies, masqueraded, affinity hits...).', ['event'], (m) => EVENTS.forEach((v, i) => m.inc({ event: v }, c.events[i])));
    counter('tunproxy_lookups_total', 'Service lookups in the compiled tables (first packets of flows).', [], (m) => m.inc(c.events[EVENTS.indexOf('lookups')]));
    // one connection table's figures: the IPv4 table as tunproxy_conntrack_*, the IPv6 one (0 until the first
    // IPv6 packet) as tunproxy_conntrack6_* (the IPv4 names kept as they were, no label added)
    const conntrackMetrics = (prefix: string, table: string, of: () => ConntrackStats | null) => {
      gauge(`${prefix}_entries`, `Flows in the ${table}.`, () => of()?.entries ?? 0);
      gauge(`${prefix}_max`, `Size of the ${table} (like nf_conntrack_max).`, () => of()?.max ?? 0);
      for (const [k, help] of [
        ['inserts', `Flows inserted in the ${table}.`],
        ['evictions', `Flows pushed out of the full ${table}.`],
        ['collisions', 'Inserts refused: a hash key taken by another flow.'],
        ['clashes', 'Inserts refused: the tuple is already tracked.'],
        ['full', 'Inserts refused: the table full of assured flows where the eviction looked (netfilter\'s "table full, dropping packet").'],
        ['expired', 'Flows removed because their timer ran out.'],
      ] as const) counter(`${prefix}_${k}_total`, help, [], (m) => m.inc(of()?.[k] ?? 0));
    };
    conntrackMetrics('tunproxy_conntrack', 'connection table', () => self.snap?.conntrack ?? null);
    conntrackMetrics('tunproxy_conntrack6', 'IPv6 connection table', () => self.snap?.conntrack6 ?? null);
    gauge('tunproxy_packet_thread_event_loop_delay_max_seconds', 'Longest the packet thread waited to run since start (monitorEventLoopDelay): what the control side may not cost it.', () => (self.snap?.eventLoop.maxMs ?? 0) / 1000);
    gauge('tunproxy_packet_thread_heap_used_bytes', "The packet thread's V8 heap: its objects.", () => self.snap?.heap.usedBytes ?? 0);
    gauge('tunproxy_packet_thread_external_memory_bytes', "The packet thread's V8 heap: the memory outside it kept by its objects (buffers, typed arrays).", () => self.snap?.heap.externalBytes ?? 0);
    gauge('tunproxy_packet_thread_event_loop_delay_p99_seconds', '99th percentile of the packet thread\'s event-loop delay since start.', () => (self.snap?.eventLoop.p99Ms ?? 0) / 1000);
    counter('tunproxy_packet_thread_naps_total', 'Sleeps the packet thread took in its control work to leave its CPU to ordinary tasks (--packet-priority fifo, --packet-nap).', [], (m) => m.inc(self.snap?.eventLoop.naps ?? 0));
    counter('tunproxy_packet_thread_nap_seconds_total', 'Time the packet thread slept in those naps.', [], (m) => m.inc((self.snap?.eventLoop.napMs ?? 0) / 1000));
    gauge('tunproxy_affinity_entries', 'ClientIP session-affinity entries.', () => self.snap?.affinity.entries ?? 0);
    gauge('tunproxy_ruleset_generation', 'Generation of the rule set in force (0: none).', () => holder.generation);
    gauge('tunproxy_services', 'Services in the rule set in force.', () => holder.ruleSet?.services.length ?? 0);
    gauge('tunproxy_service_ports', 'Service ports in the rule set in force.', () => servicePorts(holder.ruleSet));
    this.syncDuration = new Histogram({
      name: 'tunproxy_sync_proxy_rules_duration_seconds',
      help: 'Time to validate, compile and swap in a rule set (like kube-proxy\'s sync_proxy_rules_duration_seconds).',
      buckets: exponentialBuckets(0.001, 2, 15),
      registers: [r],
    });
    gauge('tunproxy_sync_proxy_rules_last_timestamp_seconds', 'When a rule set was last swapped in (seconds since the epoch).', () => this.lastSyncOk / 1000);
    counter('tunproxy_sync_proxy_rules_rejected_total', 'Rule sets the validator refused (from the API or a SIGHUP reload); the rules in force stayed.', [], (m) => m.inc(this.syncRejected));
    counter('tunproxy_api_ruleset_rejected_total', 'Rule-set changes the API refused (schema, validation, stale If-Match).', [], (m) => m.inc(ctx.rejections));
    gauge('tunproxy_state_saved_generation', 'Newest rule-set generation written to the state directory (0: none).', () => ctx.store?.savedGeneration ?? 0);
    gauge('tunproxy_state_journal_records', 'Changes in the state directory\'s rule-set journal, not yet folded into the rule-set file.', () => ctx.store?.journalRecords ?? 0);
    collectDefaultMetrics({ register: r });

    const listener = (ms: number, ok: boolean) => {
      if (ok) {
        this.syncDuration.observe(ms / 1000);
        this.lastSyncOk = Date.now();
      } else this.syncRejected++;
    };
    const listeners = holder.syncListeners;
    listeners.push(listener);
    ctx.onClose(() => {
      const i = listeners.indexOf(listener);
      if (i >= 0) listeners.splice(i, 1);
    });
  }
}

export const ROUTES: Array<[string, string, string]> = [
  ['GET', '/v1/ruleset', 'the rule set in force (ETag: its generation)'],
  ['PUT', '/v1/ruleset', 'replace the rule set (If-Match: "<generation>")'],
  ['GET', '/v1/ruleset/schema', "the rule set's JSON schema"],
  ['GET', '/v1/services', 'the services (?namespace=)'],
  ['PATCH', '/v1/services', 'a batch: {"upsert": [...], "delete": [{namespace, name}], "endpoints": [{namespace, name, set, remove}]}'],
  ['GET', '/v1/services/{namespace}/{name}', 'one service'],
  ['PUT', '/v1/services/{namespace}/{name}', 'add or replace one service'],
  ['PATCH', '/v1/services/{namespace}/{name}', 'change one service (JSON merge patch)'],
  ['DELETE', '/v1/services/{namespace}/{name}', 'delete one service'],
  ['POST', '/v1/import/iptables', "iptables-save text in, rule set out (?apply=true&allowPartial=true&nodeAddresses=)"],
  ['POST', '/v1/import/kubernetes', 'kubectl get services,endpointslices -A -o json in, rule set out (?apply=true&nodeName=&nodeAddresses=&clusterCIDR=)'],
  ['GET', '/v1/conntrack', 'tracked flows (?protocol&src&dst&sport&dport&address&port&service&endpoint&format=text|json&limit)'],
  ['DELETE', '/v1/conntrack', 'remove tracked flows (same filters, or all=true)'],
  ['POST', '/v1/trace', '{"protocol","source":"ip:port","destination":"ip:port"}: tunproxy\'s decision beside kube-proxy\'s rules'],
  ['GET', '/v1/stats', 'counters as JSON'],
  ['GET', '/metrics', 'Prometheus metrics'],
  ['GET', '/healthz', 'liveness'],
  ['GET', '/readyz', 'readiness'],
];

export function servicePorts(rs: RuleSet | null): number {
  let n = 0;
  if (rs !== null) for (const s of rs.services) n += s.ports.length;
  return n;
}

/**
 * The process's resident memory and each thread's heap: under `tunproxy run`
 * the packet thread and the control worker are two V8 heaps; in one thread
 * (the library, tests) both are the same heap, and `controlThread` is null.
 * `malloc`: the C heap of every thread (glibc's arenas) and what the trimmer
 * gave back (control/malloc-trim.ts); null without glibc or the addon.
 */
export function memoryOf(ctx: ApiContext, p: PacketStats): { rssBytes: number; packetThread: ThreadHeap; controlThread: ThreadHeap | null; malloc: (MallocInfo & TrimStats) | null } {
  const m = mallocInfo();
  return { rssBytes: process.memoryUsage.rss(), packetThread: p.heap, controlThread: ctx.packets.local ? null : threadHeap(), malloc: m === null ? null : { ...m, ...processTrimmer.stats } };
}

export async function statsOf(ctx: ApiContext) {
  const holder = ctx.holder;
  const p = await ctx.packets.stats();
  return {
    generation: holder.generation,
    ruleSet: {
      services: holder.ruleSet?.services.length ?? 0,
      servicePorts: servicePorts(holder.ruleSet),
      inForceSince: ctx.inForceSince?.toISOString() ?? null,
      applies: ctx.applies,
      rejected: ctx.rejections,
    },
    uptimeSeconds: (Date.now() - p.startedAt) / 1000,
    counters: p.counters,
    conntrack: p.conntrack,
    // the IPv6 connection table's, null until the first IPv6 packet
    conntrack6: p.conntrack6,
    affinity: p.affinity,
    loop: p.loop,
    // the generation the packet thread has swapped in: `generation` (the holder's) once the tables reached the loop
    packetThread: { generation: p.generation, eventLoopDelay: p.eventLoop },
    memory: memoryOf(ctx, p),
    // journalRecords: changes in <tun>.ruleset.journal not yet folded into the rule-set file
    state: ctx.store ? { dir: ctx.store.dir, savedGeneration: ctx.store.savedGeneration, journalRecords: ctx.store.journalRecords, lastError: ctx.store.lastError?.message ?? null } : null,
    status: p.status,
  };
}

export function registerObserveRoutes(app: FastifyInstance, ctx: ApiContext, metrics: ApiMetrics): void {
  app.get('/v1', async () => ({ routes: ROUTES.map(([method, path, what]) => ({ method, path, what })) }));
  app.get('/v1/stats', async () => statsOf(ctx));
  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.scrape();
    return reply.type(metrics.registry.contentType).send(text);
  });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const reasons: string[] = [];
    if (ctx.holder.ruleSet === null) reasons.push('no rule set in force (PUT /v1/ruleset)');
    if (ctx.requireLoop && (await ctx.packets.stats()).loop === null) reasons.push('no TUN device attached yet');
    if (reasons.length > 0) return reply.code(503).send({ status: 'not ready', reasons, generation: ctx.generation });
    return { status: 'ready', generation: ctx.generation };
  });
}
