/**
 * The node agent against the API server double, through the real client
 * library: first list, incremental syncs, kube-proxy's EndpointSliceCache
 * merge, services left out, rejected objects, watch failures (dropped
 * connections, 410 Gone as an event and as a status, a server restart,
 * bookmarks), min-sync-period coalescing, /healthz and health-check NodePorts.
 */
import t from 'tap';
import { createServer } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { Registry } from 'prom-client';
import { RuleSetHolder } from '../../control/runtime.ts';
import { holderSink } from '../../control/kube/adapter.ts';
import { KubeAgent } from '../../control/kube/agent.ts';
import type { KubeAgentOptions } from '../../control/kube/agent.ts';
import type { SyncReport } from '../../control/kube/sync.ts';
import { importKubernetesObject } from '../../control/kubernetes.ts';
import { ApiServerDouble } from '../support/apiserver-double.ts';
import { goldenItems, noiseItems } from '../fixtures/kubectl-list.ts';
import { node, service, webService, webSlice } from '../support/kube-objects.ts';

const NODE = 'node-a';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

interface Rig {
  api: ApiServerDouble;
  holder: RuleSetHolder;
  agent: KubeAgent;
  syncs: SyncReport[];
  logs: string[];
  registry: Registry;
}

async function rig(t: { teardown(fn: () => Promise<void>): void }, objects: Record<string, any>[], opts: Partial<KubeAgentOptions> & { double?: ConstructorParameters<typeof ApiServerDouble>[0] } = {}): Promise<Rig> {
  const api = new ApiServerDouble({ bookmarkIntervalMs: 100, token: 'double-token-0123456789', ...opts.double });
  await api.start();
  api.apply(node(NODE, ['172.16.1.35'], '10.64.1.0/24'), ...objects);
  const kc = new KubeConfig();
  kc.loadFromString(api.kubeconfig());
  const holder = new RuleSetHolder();
  const syncs: SyncReport[] = [];
  const logs: string[] = [];
  const registry = new Registry();
  const agent = new KubeAgent({
    kubeConfig: kc,
    nodeName: NODE,
    sink: holderSink(holder),
    minSyncPeriodMs: 0,
    healthzBindAddress: '127.0.0.1:0',
    healthCheckBindHost: '127.0.0.1',
    registry,
    backoffMs: 50,
    log: (m) => logs.push(m),
    onSync: (r) => syncs.push(r),
    ...opts,
  });
  t.teardown(async () => {
    await agent.stop();
    await api.stop();
  });
  await agent.start();
  await until('the first sync', () => holder.generation > 0);
  return { api, holder, agent, syncs, logs, registry };
}

const svcNames = (h: RuleSetHolder) => h.ruleSet!.services.map((s) => `${s.namespace}/${s.name}`).sort();
const epsOf = (h: RuleSetHolder, key: string) => h.ruleSet!.services.find((s) => `${s.namespace}/${s.name}` === key)?.endpoints?.map((e) => e.address) ?? null;

t.test('the golden cluster through list-and-watch gives the rule set the kubectl importer gives', async (t) => {
  const noise = noiseItems();
  const items = [...goldenItems(), ...noise.skipped, ...noise.notUnderstood.filter((o) => o.kind === 'Service')];
  const r = await rig(t, items);
  const imported = importKubernetesObject({ items: [node(NODE, ['172.16.1.35'], '10.64.1.0/24'), ...items] }, { nodeName: NODE, clusterCIDR: '10.64.1.0/24' });
  const byKey = (rs: typeof imported.ruleSet) => Object.fromEntries(rs.services.map((s) => [`${s.namespace}/${s.name}`, s]));
  t.same(byKey(r.holder.ruleSet!), byKey(imported.ruleSet), 'every service as the importer converts it (same code)');
  t.same(r.holder.ruleSet!.node, { addresses: ['172.16.1.35'], clusterCIDR: '10.64.1.0/24', name: NODE }, "the node's addresses and pod CIDR from its Node object");
  t.notOk(svcNames(r.holder).includes('default/headless'), 'headless left out');
  t.notOk(svcNames(r.holder).includes('default/external-db'), 'ExternalName left out');
  t.match(r.agent.syncer.skipped.get('default/headless'), /headless/);
  t.match(r.logs.join('\n'), /rejected Service default\/bad-proto: spec\.ports\[0\]\.protocol "ICMP"/, 'a refused service is logged with its namespace/name and reason');
  t.match(r.logs.join('\n'), /rejected Service default\/bad-nodeport: refused by the rule-set validator: ports\[0\]\.nodePort/, 'also what the validator refuses');
  const metrics = await r.registry.metrics();
  t.match(metrics, /tunproxy_kube_objects_rejected_total\{kind="Service"\} 2/, 'and counted');
  t.ok(svcNames(r.holder).includes('default/nginx'), 'the rest of the cluster is served');
});

t.test('EndpointSlice changes are synced incrementally; slices of a service merge as in EndpointSliceCache', async (t) => {
  const r = await rig(t, [webService('default', 'web', '10.32.0.10'), webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.10' }, { ip: '10.64.1.11' }])]);
  t.same(epsOf(r.holder, 'default/web'), ['10.64.1.10', '10.64.1.11']);
  const gen = r.holder.generation;
  // a second slice: one new endpoint, one duplicate (on this node: the local copy wins)
  r.api.apply(webSlice('default', 'web', 'bbbbb', 8080, [{ ip: '10.64.1.11', nodeName: NODE }, { ip: '10.64.1.12', ready: false, serving: true, terminating: true }]));
  await until('the second slice', () => r.holder.generation > gen);
  const web = r.holder.ruleSet!.services.find((s) => s.name === 'web')!;
  t.same(web.endpoints, [
    { address: '10.64.1.10', ports: { http: 8080 } },
    { address: '10.64.1.11', ports: { http: 8080 }, nodeLocal: true },
    { address: '10.64.1.12', ports: { http: 8080 }, ready: false, serving: true, terminating: true },
  ], 'merged: a duplicate counts once, the local copy favoured, conditions kept');
  t.equal(r.syncs.at(-1)!.result!.mode, 'incremental', 'through the incremental path');
  r.api.remove({ kind: 'EndpointSlice', namespace: 'default', name: 'web-aaaaa' });
  await until('the slice deletion', () => epsOf(r.holder, 'default/web')!.length === 2);
  t.same(epsOf(r.holder, 'default/web'), ['10.64.1.11', '10.64.1.12']);
  // a service that gets the service-proxy-name label goes; a new service comes; deletion
  r.api.apply(webService('default', 'web', '10.32.0.10', 80, 8080, {}), service('default', 'other', { clusterIP: '10.32.0.11', ports: [{ name: 'http', protocol: 'TCP', port: 80 }] }));
  const labelled = webService('default', 'web', '10.32.0.10');
  labelled.metadata.labels['service.kubernetes.io/service-proxy-name'] = 'cilium';
  r.api.apply(labelled);
  await until('web left out', () => !svcNames(r.holder).includes('default/web'));
  t.same(svcNames(r.holder), ['default/other']);
  t.match(r.agent.syncer.skipped.get('default/web'), /service-proxy-name=cilium/);
});

t.test('a service the validator refuses keeps its previous version in force; the others change', async (t) => {
  const r = await rig(t, [
    service('default', 'a', { type: 'NodePort', clusterIP: '10.32.0.20', ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30080 }] }),
    service('default', 'b', { type: 'NodePort', clusterIP: '10.32.0.21', ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30081 }] }),
  ]);
  const gen = r.holder.generation;
  r.api.apply(
    service('default', 'b', { type: 'NodePort', clusterIP: '10.32.0.21', ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30080 }] }),
    webService('default', 'c', '10.32.0.22'),
  );
  await until('c', () => svcNames(r.holder).includes('default/c'));
  t.ok(r.holder.generation > gen);
  t.equal(r.holder.ruleSet!.services.find((s) => s.name === 'b')!.ports[0].nodePort, 30081, 'b keeps its NodePort 30081');
  t.match(r.logs.join('\n'), /rejected Service default\/b: refused by the rule-set validator: .*30080/, 'the clash is logged with b\'s name');
});

t.test('watch failures: dropped connections resume from the resource version; 410 re-lists; nothing stale stays', async (t) => {
  const r = await rig(t, [webService('default', 'web', '10.32.0.10'), webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.10' }])]);
  await until('three watches', () => r.api.watchRequests >= 3);
  const lists = r.api.listRequests;
  // 1. a dropped connection: the watch resumes from the last resource version, no re-list
  await sleep(150); // a bookmark went by
  const bookmarkRv = r.api.rv;
  const watches = r.api.watchRequests;
  r.api.dropWatches();
  r.api.apply(webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.10' }, { ip: '10.64.1.11' }]));
  await until('the change after the drop', () => epsOf(r.holder, 'default/web')!.length === 2);
  t.equal(r.api.listRequests, lists, 'no re-list after a dropped connection');
  await until('the three watches reconnected', () => r.api.watchRequests >= watches + 3);
  t.pass('the three watches reconnected');
  const resumed = r.api.requests.filter((q) => q.query.watch === 'true').slice(-3);
  t.ok(resumed.every((q) => Number(q.query.resourceVersion) >= bookmarkRv), `resumed from the bookmarked resource version or later (${resumed.map((q) => q.query.resourceVersion)} ≥ ${bookmarkRv})`);
  t.ok(resumed.every((q) => q.query.allowWatchBookmarks === 'true'), 'asking for bookmarks');

  // 2. 410 Gone as a watch ERROR event: while disconnected, a service is deleted and another added; history compacted
  r.api.dropWatches();
  r.api.remove({ kind: 'Service', namespace: 'default', name: 'web' });
  r.api.apply(webService('default', 'new', '10.32.0.12'));
  r.api.compact();
  await until('the re-list', () => svcNames(r.holder).join() === 'default/new');
  t.ok(r.api.listRequests > lists, 're-listed after 410');
  t.ok(r.api.requests.some((q) => q.query.watch === 'true' && q.status === 200) && r.logs.some((l) => /watch ERROR 410/.test(l)), 'the 410 came as a watch ERROR event');
  t.same(svcNames(r.holder), ['default/new'], 'the deleted service is gone, the new one in force');
});

t.test('410 as the HTTP status, and a server restart in the middle of a watch', async (t) => {
  const r = await rig(t, [webService('default', 'web', '10.32.0.10'), webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.10' }])], { double: { goneAsHttpStatus: true, bookmarkIntervalMs: 0 } });
  await until('three watches', () => r.api.watchRequests >= 3);
  const lists = r.api.listRequests;
  r.api.dropWatches();
  r.api.apply(webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.13' }]));
  r.api.compact();
  await until('the re-list after HTTP 410', () => epsOf(r.holder, 'default/web')?.[0] === '10.64.1.13');
  t.ok(r.api.requests.some((q) => q.status === 410), 'a watch was answered 410');
  t.ok(r.api.listRequests > lists, 're-listed');

  // restart: the listener is gone for 300 ms; objects change meanwhile; the watch cache is fresh afterwards
  const restarting = r.api.restart(300);
  await sleep(50);
  r.api.apply(webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.14' }, { ip: '10.64.1.15' }]));
  await restarting;
  await until('the change made while the server was down', () => epsOf(r.holder, 'default/web')?.join() === '10.64.1.14,10.64.1.15', 8000);
  t.ok(r.logs.some((l) => /retrying in \d+ ms/.test(l)), 'reconnected with backoff while the server was down');
  t.same(svcNames(r.holder), ['default/web'], 'nothing lost');
});

t.test('--min-sync-period coalesces a burst of changes', async (t) => {
  const r = await rig(t, [webService('default', 'web', '10.32.0.10')], { minSyncPeriodMs: 400 });
  await sleep(450);
  const before = r.syncs.length;
  for (let i = 0; i < 20; i++) {
    r.api.apply(webSlice('default', 'web', 'aaaaa', 8080, [{ ip: `10.64.1.${10 + i}` }]));
    await sleep(10);
  }
  await until('the last change', () => epsOf(r.holder, 'default/web')?.[0] === '10.64.1.29', 3000);
  const n = r.syncs.length - before;
  t.ok(n >= 1 && n <= 3, `20 changes in 200 ms: ${n} syncs (at most one per 400 ms)`);
});

t.test('/healthz: 200 after a sync, 503 while a change waits longer than the timeout; health-check NodePorts', async (t) => {
  const hc = await freePort();
  const r = await rig(t, [
    service('default', 'lb', { type: 'LoadBalancer', clusterIP: '10.32.0.30', externalTrafficPolicy: 'Local', healthCheckNodePort: hc, ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30090 }] }),
    webSlice('default', 'lb', 'aaaaa', 8080, [{ ip: '10.64.1.10', nodeName: NODE }, { ip: '10.42.7.1', nodeName: 'node-b' }]),
  ], { minSyncPeriodMs: 1500, healthTimeoutMs: 300 });
  const hz = `http://127.0.0.1:${r.agent.healthz.port}/healthz`;
  let res = await fetch(hz);
  const body = (await res.json()) as Record<string, string>;
  t.equal(res.status, 200, 'healthy after the first sync');
  t.ok(Date.parse(body.lastUpdated) > 0 && Date.parse(body.currentTime) >= Date.parse(body.lastUpdated), `lastUpdated and currentTime (${JSON.stringify(body)})`);
  res = await fetch(`http://127.0.0.1:${hc}/`);
  t.equal(res.status, 200, 'the health-check NodePort answers 200');
  t.same(await res.json(), { service: { namespace: 'default', name: 'lb' }, localEndpoints: 1, serviceProxyHealthy: true }, 'with the local endpoint count');
  // the local endpoint goes; the sync waits for the min sync period: /healthz turns 503 after 300 ms
  await sleep(100);
  r.api.apply(webSlice('default', 'lb', 'aaaaa', 8080, [{ ip: '10.42.7.1', nodeName: 'node-b' }]));
  await sleep(450);
  res = await fetch(hz);
  t.equal(res.status, 503, 'a change waiting longer than the health timeout: 503');
  await until('the sync', () => epsOf(r.holder, 'default/lb')?.join() === '10.42.7.1', 3000);
  await sleep(20);
  t.equal((await fetch(hz)).status, 200, 'healthy again once synced');
  res = await fetch(`http://127.0.0.1:${hc}/`);
  t.equal(res.status, 503, 'no local endpoint: the health-check NodePort answers 503');
  t.equal(((await res.json()) as { localEndpoints: number }).localEndpoints, 0);
  t.match(await (await fetch(`http://127.0.0.1:${r.agent.healthz.port}/metrics`)).text(), /tunproxy_kube_syncs_total/, '/metrics beside /healthz');
});

t.test('a full resync runs periodically and changes nothing that is in force', async (t) => {
  const r = await rig(t, [webService('default', 'web', '10.32.0.10'), webSlice('default', 'web', 'aaaaa', 8080, [{ ip: '10.64.1.10' }])], { fullSyncPeriodMs: 200 });
  const before = JSON.stringify(r.holder.ruleSet);
  await until('a full resync', () => r.syncs.some((s) => s.full && s.result !== null), 3000);
  const full = r.syncs.find((s) => s.full)!;
  t.same(full.keys, ['default/web'], 'every service converted again');
  t.equal(JSON.stringify(r.holder.ruleSet), before, 'the same rule set in force');
  t.same(full.rejected, []);
});
