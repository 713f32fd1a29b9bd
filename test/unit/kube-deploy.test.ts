/**
 * What ships for running in a cluster, checked against the code: the RBAC
 * grants list/watch of exactly what the agent watches; the DaemonSet has what
 * the issue asks (hostNetwork, NET_ADMIN, /dev/net/tun, the state directory,
 * /healthz probes) and only flags `tunproxy run` knows; the Grafana dashboard
 * queries only metrics tunproxy exports. Also the flag parsing and the node
 * setup's plan (--dry-run prints it).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { parseAllDocuments } from 'yaml';
import { KubeConfig } from '@kubernetes/client-node';
import { Registry } from 'prom-client';
import { Dataplane } from '../../control/dataplane.ts';
import { ApiContext } from '../../control/api/context.ts';
import { ApiMetrics } from '../../control/api/observe.ts';
import { KubeAgent } from '../../control/kube/agent.ts';
import { holderSink } from '../../control/kube/adapter.ts';
import { checkKubeFlags, parseDuration } from '../../control/kube/run.ts';
import { NodeSetup } from '../../control/kube/nodesetup.ts';
import { parseBindAddress } from '../../control/kube/health.ts';
import type { RuleSet } from '../../control/types.ts';

const root = new URL('../../', import.meta.url);
const docs = (f: string) => parseAllDocuments(readFileSync(new URL(f, root), 'utf8')).map((d) => d.toJS());

t.test('RBAC: list and watch of services, endpointslices and nodes, nothing more', async (t) => {
  const [sa, role, binding] = docs('deploy/rbac.yaml');
  t.equal(sa.kind, 'ServiceAccount');
  t.same(role.rules, [
    { apiGroups: [''], resources: ['services', 'nodes'], verbs: ['list', 'watch'] },
    { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
  ]);
  t.same(binding.subjects, [{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace }]);
  t.equal(binding.roleRef.name, role.metadata.name);
});

t.test('DaemonSet: hostNetwork, NET_ADMIN, /dev/net/tun, state on the host, /healthz probes, known flags', async (t) => {
  const [ds] = docs('deploy/daemonset.yaml');
  const spec = ds.spec.template.spec;
  const c = spec.containers[0];
  t.equal(spec.hostNetwork, true);
  t.equal(spec.serviceAccountName, docs('deploy/rbac.yaml')[0].metadata.name);
  t.same(c.securityContext.capabilities.add, ['NET_ADMIN', 'SYS_NICE'], 'NET_ADMIN, and SYS_NICE for --packet-priority fifo');
  const vol = (name: string) => spec.volumes.find((v: any) => v.name === name);
  const mount = (path: string) => c.volumeMounts.find((m: any) => m.mountPath === path);
  t.equal(vol(mount('/dev/net/tun').name).hostPath.path, '/dev/net/tun');
  t.ok(c.args.includes(`--state-dir=${mount('/var/lib/tunproxy').mountPath}`) && vol(mount('/var/lib/tunproxy').name).hostPath, 'the state directory is on the host');
  t.same([c.readinessProbe.httpGet, c.livenessProbe.httpGet.port], [{ path: '/healthz', port: 10256 }, 10256]);
  const help = spawnSync(process.execPath, [new URL('bin/tunproxy.js', root).pathname, 'run', '--help'], { encoding: 'utf8' }).stdout;
  for (const a of c.args.filter((x: string) => x.startsWith('--'))) t.ok(help.includes(a.split('=')[0] + ' ') || help.includes(a.split('=')[0] + '\n'), `tunproxy run knows ${a.split('=')[0]}`);
  // the TUN holder: a native sidecar (an init container that keeps running), on the socket run is given
  const h = spec.initContainers.find((x: any) => x.name === 'tun-holder');
  t.equal(h.restartPolicy, 'Always', 'a native sidecar: started first, kept while tunproxy restarts');
  t.equal(h.args[0], 'tun-holder');
  const hhelp = spawnSync(process.execPath, [new URL('bin/tunproxy.js', root).pathname, 'tun-holder', '--help'], { encoding: 'utf8' }).stdout;
  for (const a of h.args.filter((x: string) => x.startsWith('--'))) t.ok(hhelp.includes(a.split('=')[0] + ' '), `tunproxy tun-holder knows ${a.split('=')[0]}`);
  const sock = h.args.find((x: string) => x.startsWith('--socket='))!.split('=')[1];
  t.ok(c.args.includes(`--tun-holder=${sock}`), 'run is given the holder\'s socket');
  t.ok(h.args.includes('--tun=tun0') && c.args.includes('--tun=tun0'), 'the same device');
  t.same(h.volumeMounts.map((m: any) => m.mountPath).sort(), ['/dev/net/tun', '/run/tunproxy'], 'the device and the socket directory, shared with tunproxy');
});

t.test('Dockerfile: every addon source binding.gyp builds is in the build stage before npm ci', async (t) => {
  const gyp = JSON.parse(readFileSync(new URL('binding.gyp', root), 'utf8')) as { targets: Array<{ sources: string[] }> };
  const lines = readFileSync(new URL('Dockerfile', root), 'utf8').split('\n');
  const ci = lines.findIndex((l) => /^RUN .*npm ci/.test(l));
  const copied = lines.slice(0, ci).filter((l) => l.startsWith('COPY ')).flatMap((l) => l.split(/\s+/).slice(1, -1));
  for (const src of gyp.targets.flatMap((x) => x.sources)) t.ok(copied.includes(src), `${src} is copied before npm ci builds it`);
});

t.test('the Grafana dashboard queries only metrics tunproxy exports', async (t) => {
  const dash = JSON.parse(readFileSync(new URL('deploy/grafana-dashboard.json', root), 'utf8'));
  const dp = new Dataplane();
  const ctx = new ApiContext(dp);
  const api = new ApiMetrics(ctx);
  const kc = new KubeConfig();
  kc.loadFromOptions({ clusters: [{ name: 'c', server: 'http://127.0.0.1:1', skipTLSVerify: true }], users: [{ name: 'u' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' });
  const agentRegistry = new Registry();
  new KubeAgent({ kubeConfig: kc, nodeName: 'n', sink: holderSink(dp.holder), registry: agentRegistry, healthzBindAddress: null }).runner.stop();
  const known = new Set([...(await api.registry.getMetricsAsJSON()), ...(await agentRegistry.getMetricsAsJSON())].map((m) => m.name));
  const used = new Set<string>();
  for (const p of dash.panels) for (const q of p.targets) for (const m of q.expr.matchAll(/\b((?:tunproxy|process)_[a-z_]+)/g)) used.add(m[1].replace(/_(bucket|sum|count)$/, ''));
  t.ok(used.size >= 15, `${used.size} metrics used`);
  for (const m of used) t.ok(known.has(m), `${m} is exported`);
  t.equal(new Set(dash.panels.map((p: any) => p.id)).size, dash.panels.length, 'panel ids unique');
});

t.test('flags: durations as kube-proxy takes them; --rules and --kubernetes exclude each other', async (t) => {
  t.equal(parseDuration('1s', 'f'), 1000);
  t.equal(parseDuration('0', 'f'), 0);
  t.equal(parseDuration('250ms', 'f'), 250);
  t.equal(parseDuration('1.5s', 'f'), 1500);
  t.throws(() => parseDuration('10', '--min-sync-period'), /--min-sync-period: "10" is not a duration/);
  t.throws(() => checkKubeFlags({ tun: 't', kubernetes: true, rules: 'x.json', minSyncPeriod: '1s', healthzBindAddress: '' }), /--rules and --kubernetes exclude each other/);
  t.throws(() => checkKubeFlags({ tun: 't', kubeconfig: 'k', minSyncPeriod: '1s', healthzBindAddress: '' }), /--kubeconfig needs --kubernetes/);
  t.throws(() => checkKubeFlags({ tun: 't', kubernetes: true, dryRun: true, minSyncPeriod: '1s', healthzBindAddress: '' }), /--dry-run .* --node-setup/);
  t.same(parseBindAddress('0.0.0.0:10256'), { host: '0.0.0.0', port: 10256 });
  t.same(parseBindAddress(':10256'), { host: '0.0.0.0', port: 10256 });
  t.throws(() => parseBindAddress('10256'), /--healthz-bind-address 10256: expected HOST:PORT/);
});

t.test('node setup --dry-run prints the ip commands, routes follow the syncs, undo reverses', async (t) => {
  const logs: string[] = [];
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.1.35'], clusterCIDR: '10.64.1.0/24' },
    services: [{ namespace: 'd', name: 'a', clusterIP: '10.32.0.10', externalIPs: ['172.16.1.35', '192.168.99.11'], ports: [{ name: 'p', protocol: 'TCP', port: 80 }] }],
  };
  const s = new NodeSetup({ tun: 'tun0', dryRun: true, log: (m) => logs.push(m) });
  s.update(rs);
  t.same(logs.map((l) => l.replace('node setup (dry run): ', '')), [
    'ip route replace default dev tun0 table 7470',
    'ip rule add pref 7400 iif tun0 goto 7499',
    'ip rule add pref 7450 to 172.16.1.35/32 ipproto tcp dport 30000-32767 lookup 7470',
    'ip rule add pref 7450 to 172.16.1.35/32 ipproto udp dport 30000-32767 lookup 7470',
    'ip rule add pref 7460 from 10.64.1.0/24 ipproto tcp lookup 7470',
    'ip rule add pref 7460 from 10.64.1.0/24 ipproto udp lookup 7470',
    'ip rule add pref 7460 from 10.64.1.0/24 ipproto icmp lookup 7470',
    'ip rule add pref 7460 from 10.64.1.0/24 ipproto sctp lookup 7470',
    'ip rule add pref 7499 lookup local',
    'ip rule del pref 0 lookup local',
    'ip route replace 10.32.0.10/32 dev tun0',
    'ip route replace 192.168.99.11/32 dev tun0',
  ], 'the static plan, then a /32 route per service address that is not a node address');
  logs.length = 0;
  s.update({ ...rs, services: [{ ...rs.services[0], externalIPs: [] }] });
  t.same(logs, ['node setup (dry run): ip route del 192.168.99.11/32 dev tun0'], 'a sync changes only the routes that changed');
  logs.length = 0;
  s.undo();
  t.equal(logs[0], 'node setup (dry run): ip rule add pref 0 lookup local', 'undo puts the local rule back first');
  t.ok(logs.includes('node setup (dry run): ip route del 10.32.0.10/32 dev tun0') && logs.includes('node setup (dry run): ip rule del pref 7499 lookup local'));
});
