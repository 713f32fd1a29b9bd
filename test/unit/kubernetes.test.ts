import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseDocument, LineCounter, isMap, isSeq, stringify as toYaml } from 'yaml';
import type { Node as YamlNode } from 'yaml';
import { importKubernetes, jsonItemOffsets, KubernetesImportError } from '../../control/kubernetes.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { ruleSetModel } from '../../control/model.ts';
import type { RuleSet } from '../../control/types.ts';
import { goldenKubectlList, noisyKubectlList, noiseItems, list, service, endpointSlice, dualStackKubectlList } from '../fixtures/kubectl-list.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
const NODE = { nodeName: 'node-a', nodeAddresses: ['172.16.1.35'], clusterCIDR: '10.64.1.0/24' };

/** What kube-proxy acts on, per service port, endpoints in "ip:port" order: two rule sets with the same model proxy alike. */
function model(rs: RuleSet) {
  return ruleSetModel(rs)
    .ports.map((p) => ({
      name: p.name,
      protocol: p.protocol,
      port: p.port.port,
      nodePort: p.port.nodePort ?? 0,
      clusterIP: p.clusterIP,
      externalIPs: p.externalIPs,
      loadBalancerIPs: p.loadBalancerIPs,
      ranges: p.loadBalancerSourceRanges,
      affinity: p.affinitySeconds,
      iLocal: p.internalPolicyLocal,
      eLocal: p.externalPolicyLocal,
      endpoints: p.endpoints.map((e) => `${e.text} ready=${e.ready} serving=${e.serving} terminating=${e.terminating} local=${e.nodeLocal}`).sort(),
    }))
    .sort((a, b) => (a.name < b.name ? -1 : 1));
}

/** Independent oracle for item lines: the yaml library's node ranges (JSON is YAML). */
function yamlItemLines(text: string): number[] {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc });
  const items = isMap(doc.contents) ? (doc.contents.get('items', true) as YamlNode) : null;
  if (!items || !isSeq(items)) return [];
  return items.items.map((n) => lc.linePos((n as YamlNode).range![0]).line);
}

t.test('the golden cluster as kubectl JSON imports to a rule set that proxies like golden-ruleset.json', async (t) => {
  const text = JSON.stringify(goldenKubectlList(), null, 2);
  const r = importKubernetes(text, NODE);
  t.same(r.notUnderstood, [], 'everything understood');
  t.same(r.skipped, []);
  t.equal(r.objects, 16);
  t.ok(validateRuleSet(r.ruleSet).ok, 'a valid rule set');
  t.same(r.ruleSet.node, { addresses: ['172.16.1.35'], name: 'node-a', clusterCIDR: '10.64.1.0/24' });
  t.same(model(r.ruleSet), model(golden), 'same service ports, addresses, policies and endpoints as the golden rule set');
  t.match(r.warnings, [/default\/empty.*hostname "lb\.example\.com"/], 'the hostname-only ingress is named');
  // endpoints in kube-proxy's "ip:port" order
  const nginx = r.ruleSet.services.find((s) => s.name === 'nginx')!;
  t.same(nginx.endpoints!.map((e) => e.address), ['10.42.7.21', '10.42.7.22', '10.64.1.20']);
  t.same(nginx.endpoints![2], { address: '10.64.1.20', ports: { '80-80': 80 }, nodeLocal: true });
  const dns = r.ruleSet.services.find((s) => s.name === 'kube-dns')!;
  t.same(dns.endpoints, [
    { address: '10.64.1.7', ports: { dns: 53, 'dns-tcp': 53, metrics: 9153 } },
    { address: '10.64.1.8', ports: { dns: 53, 'dns-tcp': 53 } },
  ], 'endpoints of two slices, each with the ports its slice serves');
});

t.test('line numbers of the items: the JSON scanner agrees with a YAML parser on kubectl-shaped and odd JSON', async (t) => {
  const text = JSON.stringify(noisyKubectlList(), null, 2);
  const lines = text.split('\n');
  const scanned = jsonItemOffsets(text).map((o) => text.slice(0, o).split('\n').length);
  t.same(scanned, yamlItemLines(text), 'same lines as the yaml library');
  t.equal(scanned[0], 4, 'the first item opens on line 4 ({, apiVersion, items, {)');
  for (const l of scanned) t.equal(lines[l - 1].trim(), '{', `line ${l} opens an item`);
  // strings with brackets, escapes and quotes, an "items" key nested deeper, scalars among the items
  const odd = '{"kind":"List","metadata":{"items":[9]},\n"note":"a ] } \\" [ {",\n"items":[ {"kind":"Service","x":"]"},\n 7,\n "s",\n[1,2], {"kind":"Pod"}]}';
  t.same(jsonItemOffsets(odd).map((o) => odd.slice(0, o).split('\n').length), yamlItemLines(odd));
  t.same(jsonItemOffsets(odd).map((o) => odd[o]), ['{', '7', '"', '[', '{']);
});

t.test('a real cluster\'s noise: skipped objects and objects not understood, each with its line', async (t) => {
  const text = JSON.stringify(noisyKubectlList(), null, 2);
  const r = importKubernetes(text, NODE);
  const lineOf = (name: string) => {
    const idx = text.split('\n').findIndex((l) => l.includes(`"name": "${name}"`));
    // the item opens a few lines above its metadata.name
    const lines = text.split('\n');
    let i = idx;
    while (lines[i] !== '    {') i--;
    return i + 1;
  };
  t.same(
    r.notUnderstood.map((n) => [n.object, n.line]),
    [
      ['Pod default/stray-pod', lineOf('stray-pod')],
      ['Endpoints default/web-svc', lineOf('web-svc') > 0 ? r.notUnderstood[1].line : -1],
      ['Service default/bad-proto', lineOf('bad-proto')],
      ['Service default/bad-nodeport', lineOf('bad-nodeport')],
    ],
  );
  t.match(r.notUnderstood[0].reason, /kind Pod is not imported/);
  t.match(r.notUnderstood[1].reason, /v1 Endpoints are not read.*endpointslices/);
  t.match(r.notUnderstood[2].reason, /protocol "ICMP" is not TCP, UDP or SCTP/);
  t.match(r.notUnderstood[3].reason, /refused by the rule-set validator: ports\[0\]\.nodePort: 40000 is outside 30000-32767/);
  t.equal(text.split('\n')[r.notUnderstood[1].line - 1], '    {');
  t.same(r.skipped.map((s) => s.object), [
    'Service default/headless',
    'EndpointSlice default/headless-h1h2h',
    'Service default/external-db',
    'EndpointSlice default/fqdn-f1f2f',
  ]);
  t.match(r.skipped.map((s) => s.reason), [/headless/, /its service default\/headless is skipped/, /ExternalName/, /FQDN/]);
  t.same(model(r.ruleSet), model(golden), 'the rest is imported as without the noise');
  t.ok(validateRuleSet(r.ruleSet).ok);
});

t.test('kubectl -o yaml reads the same, with YAML line numbers', async (t) => {
  const doc = noisyKubectlList();
  const yamlText = toYaml(doc);
  const fromJson = importKubernetes(JSON.stringify(doc), NODE);
  const fromYaml = importKubernetes(yamlText, NODE);
  t.same(fromYaml.ruleSet, fromJson.ruleSet);
  t.same(fromYaml.notUnderstood.map((n) => n.object), fromJson.notUnderstood.map((n) => n.object));
  const lines = yamlText.split('\n');
  for (const n of fromYaml.notUnderstood) t.match(lines[n.line - 1], /^\s*- /, `line ${n.line} starts an item`);
});

t.test('node addresses come from the Node item when not given; without them, a warning', async (t) => {
  const node = { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: '172.16.1.35' }, { type: 'InternalIP', address: 'fd00::35' }, { type: 'Hostname', address: 'node-a' }] } };
  const other = { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-b' }, status: { addresses: [{ type: 'InternalIP', address: '172.16.1.36' }] } };
  const r = importKubernetes(JSON.stringify(list([node, other, ...(goldenKubectlList().items as Record<string, unknown>[])])), { nodeName: 'node-a', clusterCIDR: '10.64.1.0/24' });
  t.same(r.ruleSet.node.addresses, ['172.16.1.35', 'fd00::35'], 'InternalIP/ExternalIP of both families');
  t.same(r.skipped.map((s) => s.object), ['Node node-b']);
  t.ok(validateRuleSet(r.ruleSet).ok);
  const bare = importKubernetes(JSON.stringify(goldenKubectlList()));
  t.same(bare.ruleSet.node.addresses, []);
  t.ok(bare.warnings.some((w) => /node's addresses are not in the input/.test(w)), 'the missing addresses are a warning');
  t.ok(bare.warnings.some((w) => /not valid: node\.addresses/.test(w)), 'and the rule set says it is not valid yet');
  t.notOk(bare.ruleSet.services.some((s) => s.endpoints?.some((e) => e.nodeLocal)), 'no nodeName: no endpoint is node-local');
});

t.test('conditions as kube-proxy reads them: nil ready is ready, nil serving is ready; slices merge per address', async (t) => {
  const items = [
    service('a', 's', { clusterIP: '10.32.5.1', ports: [{ name: 'p', protocol: 'TCP', port: 80 }, { name: 'q', protocol: 'UDP', port: 81 }] }),
    endpointSlice('a', 's', 'one', [{ name: 'p', protocol: 'TCP', port: 8080 }], [{ ip: '10.64.1.5', ready: null, serving: null, terminating: null }, { ip: '10.64.1.6', ready: false, serving: null }]),
    endpointSlice('a', 's', 'two', [{ name: 'q', protocol: 'UDP', port: 8081 }, { name: 'zz', protocol: 'TCP', port: 1 }, { name: 'p', protocol: 'UDP', port: 2 }], [{ ip: '10.64.1.5' }]),
  ];
  const r = importKubernetes(JSON.stringify(list(items)), NODE);
  t.same(r.ruleSet.services[0].endpoints, [
    { address: '10.64.1.5', ports: { p: 8080, q: 8081 } },
    { address: '10.64.1.6', ports: { p: 8080 }, ready: false },
  ]);
  t.match(r.warnings, [/port "zz" is not a port of a\/s/, /port "p" is UDP here but TCP in a\/s/]);
});

t.test('input that is no kubectl output is an error with a line', async (t) => {
  t.throws(() => importKubernetes(''), KubernetesImportError);
  const bad = '{\n  "items": [\n    {"kind": "Service",\n  ]\n}';
  const e = t.throws(() => importKubernetes(bad)) as KubernetesImportError;
  t.match(e.message, /not valid JSON \(line 4\)/);
  t.equal(e.line, 4);
  t.throws(() => importKubernetes('{"kind":"ServiceList"}'), /expected a v1 List with items/);
  t.throws(() => importKubernetes('items: [\n  - a\n  b: :'), /not valid JSON or YAML/);
  // a single Service object is fine
  const one = importKubernetes(JSON.stringify(service('x', 'y', { clusterIP: '10.32.9.9', ports: [{ name: '', protocol: 'TCP', port: 1 }] })), NODE);
  t.equal(one.ruleSet.services.length, 1);
  t.same(noiseItems().notUnderstood.length, 4);
});

t.test('progress is reported while importing', async (t) => {
  const items = [];
  for (let i = 0; i < 2500; i++) items.push(service('p', `s${i}`, { clusterIP: `10.33.${i >> 8}.${i & 255}`, ports: [{ name: '', protocol: 'TCP', port: 80 }] }));
  const seen: Array<[number, number]> = [];
  const r = importKubernetes(JSON.stringify(list(items)), { ...NODE, onProgress: (d, n) => seen.push([d, n]), progressEvery: 1000 });
  t.same(seen, [[1000, 2500], [2000, 2500], [2500, 2500]]);
  t.equal(r.ruleSet.services.length, 2500);
});

t.test('dual stack: Services with clusterIPs of both families, IPv4 and IPv6 EndpointSlices', async (t) => {
  const r = importKubernetes(JSON.stringify(dualStackKubectlList(), null, 2), { nodeName: 'node-a', clusterCIDR: '10.64.1.0/24,fd00:10:64:1::/64' });
  t.same(r.notUnderstood, []);
  t.same(r.skipped, []);
  t.same(r.ruleSet.node.addresses, ['172.16.1.35', 'fd00:50::35']);
  const v = validateRuleSet(r.ruleSet);
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  const by = (n: string) => r.ruleSet.services.find((s) => s.name === n)!;
  t.same([by('web').clusterIP, by('web').clusterIPs, by('web').ipFamilies, by('web').ipFamilyPolicy], ['10.96.0.10', ['10.96.0.10', 'fd00:10:96::a'], ['IPv4', 'IPv6'], 'RequireDualStack']);
  t.same(by('web').endpoints, [
    { address: '10.64.1.7', ports: { http: 8080 }, nodeLocal: true },
    { address: '10.64.2.9', ports: { http: 8080 } },
    { address: 'fd00:10:64:1::7', ports: { http: 8080 }, nodeLocal: true },
    { address: 'fd00:10:64:2::9', ports: { http: 8080 }, ready: false, serving: true, terminating: true },
  ]);
  t.same([by('lb').clusterIPs, by('lb').ipFamilies, by('lb').ipFamilyPolicy], [['fd00:10:96::c', '10.96.0.12'], ['IPv6', 'IPv4'], 'PreferDualStack']);
  t.same([by('lb').loadBalancerIPs, by('lb').loadBalancerSourceRanges], [['2001:db8:5::8', '203.0.113.8'], ['2001:db8:203::/48', '198.51.100.0/24']]);
  t.same([by('v6-only').clusterIP, by('v6-only').clusterIPs, by('v6-only').endpoints!.map((e) => e.address)], ['fd00:10:96::b', undefined, ['fd00:10:64:3::3']]);
  // an IPv4-only service: its IPv6 external IP and IPv6 slice are left out, each named
  t.same([by('v4-only').externalIPs, by('v4-only').endpoints!.map((e) => e.address)], [['192.168.99.20'], ['10.64.1.8']]);
  t.match(r.warnings.join('\n'), /spec\.externalIPs 2001:db8:99::20 is IPv6 but the service has no IPv6 ClusterIP/);
  t.match(r.warnings.join('\n'), /EndpointSlice default\/v4-only-stray .*addressType IPv6 but default\/v4-only has no IPv6 ClusterIP/);
  // the model: one view per family, each with its own endpoints
  const ports = v.model.ports.map((p) => `${p.family} ${p.name} ${p.clusterIP} ${p.endpoints.map((e) => e.address).join(',')}`);
  t.same([...ports].sort(), [
    '4 default/lb 10.96.0.12 10.64.1.20',
    '4 default/v4-only:dns 10.96.0.20 10.64.1.8',
    '4 default/web:http 10.96.0.10 10.64.1.7,10.64.2.9',
    '6 default/lb fd00:10:96::c fd00:10:64:1::20',
    '6 default/v6-only:https fd00:10:96::b fd00:10:64:3::3',
    '6 default/web:http fd00:10:96::a fd00:10:64:1::7,fd00:10:64:2::9',
  ]);
  t.same(v.model.portsOf(6).map((p) => p.name).sort(), ['default/lb', 'default/v6-only:https', 'default/web:http']);
});

t.test('dual stack: what cannot be read is named', async (t) => {
  const svc = (spec: Record<string, unknown>) => service('default', 'x', { ports: [{ name: 'p', protocol: 'TCP', port: 80 }], ...spec });
  const r = importKubernetes(
    JSON.stringify(
      list([
        svc({ clusterIP: '10.96.0.1', clusterIPs: ['10.96.0.1', '10.96.0.2'], ipFamilies: ['IPv4', 'IPv4'] }),
        { ...svc({ clusterIP: '10.96.0.3', clusterIPs: ['10.96.0.3', 'fd00::3'], ipFamilies: ['IPv6', 'IPv4'] }), metadata: { namespace: 'default', name: 'y' } },
        { ...svc({ clusterIP: 'fd00::zz', ipFamilies: ['IPv6'] }), metadata: { namespace: 'default', name: 'z' } },
        { ...svc({ clusterIP: 'fd00::4', ipFamilies: ['IPv6'], ipFamilyPolicy: 'Sometimes' }), metadata: { namespace: 'default', name: 'w' } },
        endpointSlice('default', 'x', 'bad', [{ name: 'p', protocol: 'TCP', port: 80 }], [{ ip: '10.64.1.1' }], 'IPv6'),
      ]),
    ),
    NODE,
  );
  t.match(r.notUnderstood.map((n) => `${n.object}: ${n.reason}`), [
    /Service default\/x: spec\.clusterIPs \["10\.96\.0\.1","10\.96\.0\.2"\]: two IPv4 addresses/,
    /Service default\/y: spec\.ipFamilies \["IPv6","IPv4"\] do not match spec\.clusterIPs \["10\.96\.0\.3","fd00::3"\]/,
    /Service default\/z: spec\.clusterIPs\[0\] "fd00::zz" is not an IPv4 or IPv6 address/,
    /Service default\/w: spec\.ipFamilyPolicy "Sometimes" is not SingleStack, PreferDualStack or RequireDualStack/,
  ]);
});
