import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseDocument, LineCounter, isMap, isSeq, stringify as toYaml } from 'yaml';
import type { Node as YamlNode } from 'yaml';
import { importKubernetes, jsonItemOffsets, KubernetesImportError } from '../../control/kubernetes.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { ruleSetModel } from '../../control/model.ts';
import type { RuleSet } from '../../control/types.ts';
import { goldenKubectlList, noisyKubectlList, noiseItems, list, service, endpointSlice } from '../fixtures/kubectl-list.ts';

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
    'Service default/v6-only',
    'EndpointSlice default/v6-only-v6v6v',
    'EndpointSlice default/fqdn-f1f2f',
  ]);
  t.match(r.skipped.map((s) => s.reason), [/headless/, /its service default\/headless is skipped/, /ExternalName/, /IPv6/, /IPv6/, /FQDN/]);
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
  t.same(r.ruleSet.node.addresses, ['172.16.1.35']);
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
