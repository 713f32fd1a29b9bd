/**
 * The `tunproxy` command line, spawned as a user would run it
 * (node bin/tunproxy.js ...), against a real API server on a temporary Unix
 * socket: output, stderr lines and exit codes scripts rely on
 * (0 ok, 1 error, 2 usage, 3 partial).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { Dataplane } from '../../control/dataplane.ts';
import { startApi } from '../../control/server.ts';
import type { RuleSet } from '../../control/types.ts';
import { goldenKubectlList, noisyKubectlList } from '../fixtures/kubectl-list.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'bin/tunproxy.js');
const FIX = join(ROOT, 'test/fixtures/iptables/');
const golden = JSON.parse(readFileSync(join(FIX, 'golden-ruleset.json'), 'utf8')) as RuleSet;

const dir = mkdtempSync(join(tmpdir(), 'tp-cli-'));
const sock = join(dir, 'api.sock');
const dp = new Dataplane({ clock: () => 1_000_000 });
const srv = await startApi(dp, { socket: sock });
t.teardown(async () => {
  await srv.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], o: { input?: string; env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, TUNPROXY_SOCKET: sock, ...o.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
    p.stdin.end(o.input ?? '');
  });
}

const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

t.test('--help on every command, usage errors exit 2', async (t) => {
  const cmds = [[], ['run'], ['tun-holder'], ['apply'], ['get', 'ruleset'], ['get', 'services'], ['import', 'iptables'], ['import', 'kubernetes'], ['conntrack'], ['trace'], ['stats'], ['validate']];
  const bad = [['frobnicate'], ['apply'], ['trace', 'icmp', '1.2.3.4:5', '1.2.3.4:6'], ['get', 'services', 'no-slash']];
  const runs = await Promise.all([...cmds.map((c) => cli([...c, '--help'])), ...bad.map((c) => cli(c))]);
  cmds.forEach((c, i) => {
    t.equal(runs[i].code, 0, `tunproxy ${c.join(' ')} --help exits 0`);
    t.match(runs[i].stdout, new RegExp(`^Usage: tunproxy ${c.join(' ')}`.trim()), 'usage on stdout');
  });
  t.match(runs[6].stdout, /Exit status: 0 everything kube-proxy wrote was understood; 3 some/);
  t.match(runs[1].stdout, /--state-dir <dir>[\s\S]*--socket <path>[\s\S]*--listen <host:port>[\s\S]*--token-file/);
  for (const r of runs.slice(cmds.length)) t.equal(r.code, 2, `usage error exits 2: ${r.stderr.split('\n')[0]}`);
});

t.test('import iptables: the rule set on stdout, each rule not understood on stderr with its line, exit 0/3/1', async (t) => {
  const [partial, whole, stdin, missing, notKube, progress] = await Promise.all([
    cli(['import', 'iptables', join(FIX, 'seed-000-nodeport.save'), '--node-address', '172.16.1.35']),
    cli(['import', 'iptables', join(FIX, 'golden-restore.txt'), '--node-address', '172.16.1.35', '--node-name', 'node-a']),
    cli(['import', 'iptables', '-', '--node-address', '172.16.1.35', '-q', '-o', 'yaml'], { input: readFileSync(join(FIX, 'golden-restore.txt'), 'utf8') }),
    cli(['import', 'iptables', join(dir, 'nope.save')]),
    cli(['import', 'iptables', file('filter.save', '*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n')]),
    cli(['import', 'iptables', join(FIX, 'golden-restore.txt'), '--progress']),
  ]);
  t.equal(partial.code, 3, 'some rules not understood: exit 3');
  const rs = JSON.parse(partial.stdout) as RuleSet;
  t.equal(rs.services.length, 1, 'the ports whose chains the seed does not show are left out');
  const lines = readFileSync(join(FIX, 'seed-000-nodeport.save'), 'utf8').split('\n');
  const notUnderstood = partial.stderr.split('\n').filter((l) => / not understood: /.test(l));
  t.equal(notUnderstood.length, 4);
  for (const l of notUnderstood) {
    const m = /seed-000-nodeport\.save:(\d+): not understood: /.exec(l)!;
    t.ok(m, l);
    t.ok(partial.stderr.includes(`\n    ${lines[Number(m[1]) - 1]}\n`), `line ${m[1]} is quoted`);
  }
  t.match(partial.stderr, /1 service; 4 kube-proxy rules not understood/);
  t.equal(whole.code, 0, 'everything understood: exit 0');
  const w = JSON.parse(whole.stdout) as RuleSet;
  t.equal(w.services.length, 8);
  t.equal(w.node.name, 'node-a');
  t.equal(stdin.code, 0);
  delete w.node.name;
  t.same(parseYaml(stdin.stdout), w, 'stdin in, YAML out');
  t.equal(stdin.stderr, '', '-q: nothing on stderr when all is understood');
  t.equal(missing.code, 1);
  t.match(missing.stderr, /cannot read .*nope\.save: ENOENT/);
  t.equal(notKube.code, 1);
  t.match(notKube.stderr, /no KUBE-SERVICES chain/);
  t.match(progress.stderr, /parsing 0\.0 MiB of iptables rules[\s\S]*done in/);
});

t.test('import kubernetes: exit 0 when understood, 3 with each object on stderr, 1 on bad input; progress', async (t) => {
  const g = file('golden.json', JSON.stringify(goldenKubectlList(), null, 2));
  const noisyText = JSON.stringify(noisyKubectlList(), null, 2);
  const items = [];
  for (let i = 0; i < 1200; i++) items.push({ apiVersion: 'v1', kind: 'Service', metadata: { namespace: 'p', name: `s${i}` }, spec: { clusterIP: `10.33.${i >> 8}.${i & 255}`, ports: [{ port: 80 }] } });
  const node = ['--node-name', 'node-a', '--node-address', '172.16.1.35', '--cluster-cidr', '10.64.1.0/24'];
  const [ok, noisy, yaml, bad, badAddr, big] = await Promise.all([
    cli(['import', 'kubernetes', g, ...node]),
    cli(['import', 'k8s', file('noisy.json', noisyText), '--node-address', '172.16.1.35']),
    cli(['import', 'kubernetes', file('golden.yaml', toYaml(goldenKubectlList())), ...node, '-q']),
    cli(['import', 'kubernetes', file('bad.json', '{\n "items": [\n  {"kind": }\n ]\n}')]),
    cli(['import', 'kubernetes', g, '--node-address', '1.2.3']),
    cli(['import', 'kubernetes', file('big.json', JSON.stringify({ apiVersion: 'v1', kind: 'List', items })), '--node-address', '172.16.1.35', '--progress']),
  ]);
  t.equal(ok.code, 0, ok.stderr);
  const rs = JSON.parse(ok.stdout) as RuleSet;
  t.equal(rs.services.length, 8);
  t.same(rs.node, { addresses: ['172.16.1.35'], name: 'node-a', clusterCIDR: '10.64.1.0/24' });
  t.equal(noisy.code, 3);
  const lines = noisyText.split('\n');
  const nu = noisy.stderr.split('\n').filter((l) => / not understood: /.test(l));
  t.equal(nu.length, 4);
  for (const l of nu) t.equal(lines[Number(/noisy\.json:(\d+):/.exec(l)![1]) - 1], '    {', `${l.slice(0, 60)}... names the line the object opens on`);
  t.match(noisy.stderr, /noisy\.json:\d+: skipped Service default\/external-db: an ExternalName service/);
  t.equal(yaml.code, 0);
  t.same(JSON.parse(yaml.stdout), rs);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /bad\.json:3: not valid JSON \(line 3\)/);
  t.equal(badAddr.code, 1);
  t.match(badAddr.stderr, /--node-address 1\.2\.3: not an IPv4 address/);
  t.equal(big.code, 0);
  t.match(big.stderr, /big\.json: 500\/1200 \(41%\)[\s\S]*1200\/1200 \(100%\)/, 'progress on stderr');
});

t.test('apply, get: against the running tunproxy', async (t) => {
  const y = file('rules.yaml', toYaml(golden));
  let r = await cli(['apply', '-f', y]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /applied .*rules\.yaml: generation 1, 8 services, 10 service ports, in force after [\d.]+ ms/);
  t.same(dp.holder.ruleSet, golden);
  const [json, yaml, table, wide, one, none] = await Promise.all([
    cli(['get', 'ruleset']),
    cli(['get', 'ruleset', '-o', 'yaml']),
    cli(['get', 'services']),
    cli(['get', 'services', '-n', 'prod', '-o', 'wide']),
    cli(['get', 'svc', 'default/nginx', '-o', 'json']),
    cli(['get', 'services', 'default/nope']),
  ]);
  t.equal(json.code, 0);
  t.same(JSON.parse(json.stdout), golden);
  t.equal(json.stderr, 'generation 1\n');
  t.same(parseYaml(yaml.stdout), golden);
  t.equal(table.code, 0);
  const rows = table.stdout.trim().split('\n');
  t.match(rows[0], /^NAMESPACE\s+NAME\s+CLUSTER-IP\s+EXTERNAL-IP\s+PORT\(S\)\s+ENDPOINTS$/);
  t.equal(rows.length, 9);
  t.match(table.stdout, /default\s+nginx\s+10\.110\.199\.45\s+192\.168\.99\.11,100\.64\.0\.10\s+80:32754\/TCP\s+3\n/);
  t.match(table.stdout, /default\s+web-svc\s+10\.32\.0\.159\s+<none>\s+8080:30080\/TCP\s+2\/3 ready\n/);
  t.equal(wide.stdout.trim().split('\n').length, 5);
  t.match(wide.stdout, /node-local-dns .*None\s+Cluster\/Local/);
  t.same(JSON.parse(one.stdout), golden.services[2]);
  t.equal(none.code, 1);
  t.match(none.stderr, /no service default\/nope/);

  // rejected: exit 1, each error with its path; the rules in force unchanged
  const bad = structuredClone(golden) as unknown as Record<string, any>;
  bad.services[0].ports[0].port = 70000;
  bad.services[1].endpoints[0].weight = 1;
  const badFile = file('bad.json', JSON.stringify(bad));
  const nosock = ['--socket', join(dir, 'none.sock')];
  const [rejectedRun, stale, broken, dryBad, dryOk, noServer] = await Promise.all([
    cli(['apply', '-f', badFile]),
    cli(['apply', '-f', y, '--if-match', '7']),
    cli(['apply', '-f', file('broken.yaml', 'services: [\n')]),
    cli(['apply', '-f', badFile, '--dry-run', ...nosock]),
    cli(['apply', '-f', y, '--dry-run', ...nosock]),
    cli(['get', 'ruleset', ...nosock]),
  ]);
  t.equal(rejectedRun.code, 1);
  t.match(rejectedRun.stderr, /rule set was rejected \(2 errors\)[\s\S]*\n {2}services\[0\]\.ports\[0\]\.port: 70000 is outside 1-65535\n {2}services\[1\]\.endpoints\[0\]\.weight: unknown field/);
  t.equal(stale.code, 1);
  t.match(stale.stderr, /generation 1, not 7/);
  t.equal(broken.code, 1);
  t.match(broken.stderr, /broken\.yaml: not valid YAML or JSON/);
  t.equal(dryBad.code, 1, 'dry run: validated here, no server needed');
  t.match(dryBad.stderr, /rejected \(2 errors\)/);
  t.equal(dryOk.code, 0);
  t.match(dryOk.stderr, /valid: 8 services/);
  t.equal(noServer.code, 1);
  t.match(noServer.stderr, /no tunproxy API at .*none\.sock \(no such socket\): is tunproxy run going\?/);
  t.equal(dp.holder.generation, 1, 'nothing rejected changed the rules');
  r = await cli(['apply', '-f', y, '--if-match', '1']);
  t.equal(r.code, 0);
  t.equal(dp.holder.generation, 2);
});

t.test('import --apply: sent to the running tunproxy, only when everything was understood unless --allow-partial', async (t) => {
  const gen = dp.holder.generation;
  let r = await cli(['import', 'iptables', join(FIX, 'seed-000-nodeport.save'), '--apply', '-q']);
  t.equal(r.code, 3);
  t.match(r.stderr, /not applied: 4 not understood \(--allow-partial applies/);
  t.equal(dp.holder.generation, gen, 'not applied');
  r = await cli(['import', 'iptables', join(FIX, 'golden-restore.txt'), '--apply', '-q']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, new RegExp(`applied: generation ${gen + 1}, 8 services`));
  t.same(dp.holder.ruleSet!.node.addresses, golden.node.addresses, "the running tunproxy's node addresses");
  r = await cli(['import', 'kubernetes', file('noisy2.json', JSON.stringify(noisyKubectlList())), '--apply', '--allow-partial', '-q']);
  t.equal(r.code, 3, 'applied, but some was not understood');
  t.match(r.stderr, new RegExp(`applied: generation ${gen + 2}, 8 services`));
  t.equal(dp.holder.ruleSet!.node.name, 'node-a', "the running tunproxy's node name");
  t.ok(dp.holder.ruleSet!.services.find((s) => s.name === 'nginx')!.endpoints!.some((e) => e.nodeLocal), 'node-local endpoints from the node name');
});

t.test('conntrack, trace, stats', async (t) => {
  await cli(['apply', '-f', join(FIX, 'golden-ruleset.json')]);
  const syn = new Uint8Array(Buffer.from('450000281234400040061033c0a84d020a20009fa0281f90000003e85a5a59b2500201f61dd60000', 'hex'));
  dp.pipeline.process(syn, 0, syn.length, dp.tables!, 1_000_000);
  const [list, udp, json, delAll, both, trace, traceJson, traceBad, stats, statsJson] = await Promise.all([
    cli(['conntrack', '-L']),
    cli(['conntrack', '-p', 'udp']),
    cli(['conntrack', '-L', '-o', 'json', '-s', '192.168.77.2', '--dport', '8080']),
    cli(['conntrack', '-D']),
    cli(['conntrack', '-L', '-D']),
    cli(['trace', 'tcp', '192.168.77.2:40000', '10.110.199.45:80']),
    cli(['trace', 'udp', '10.64.1.99:5353', '10.32.0.10:53', '-o', 'json', '--no-kube-proxy']),
    cli(['trace', 'tcp', '192.168.77.2', '10.110.199.45:80']),
    cli(['stats']),
    cli(['stats', '-o', 'json']),
  ]);
  t.equal(list.code, 0);
  t.match(list.stdout, /^tcp {6}6 \d+ SYN_SENT src=192\.168\.77\.2 dst=10\.32\.0\.159 sport=41000 dport=8080 \[UNREPLIED\] src=10\.64\.1\.1[34] dst=172\.16\.1\.35 sport=80 dport=\d+ mark=0 use=1\n$/);
  t.match(list.stderr, /1 flow entries have been shown/);
  t.equal(udp.stdout, '');
  t.match(udp.stderr, /0 flow entries have been shown/);
  t.match(JSON.parse(json.stdout), { matched: 1, flows: [{ service: 'default/web-svc:nginx-svc-port', masquerade: true }] });
  t.equal(delAll.code, 1);
  t.match(delAll.stderr, /without a filter would remove every flow/);
  t.equal(both.code, 2);

  t.equal(trace.code, 0, trace.stderr);
  t.match(trace.stdout, /^TCP 192\.168\.77\.2:40000 -> 10\.110\.199\.45:80/);
  t.match(trace.stdout, /tunproxy: {3}DNAT default\/nginx:80-80 \(ClientIP affinity 600 s\) {3}\[ClusterIP table, cluster endpoints \(KUBE-SVC-\)\]/);
  t.match(trace.stdout, /10\.64\.1\.20:80 +33\.3% {2}masquerade to 172\.16\.1\.35/);
  t.match(trace.stdout, /kube-proxy: DNAT default\/nginx:80-80 .*\[iptables, \d+ rules\][\s\S]*one walk as the kernel makes it: \d+ rules visited/);
  t.match(trace.stdout, /\nagree: yes\n$/);
  t.match(JSON.parse(traceJson.stdout), { tunproxy: { verdict: { kind: 'dnat', service: 'kube-system/kube-dns:dns' } }, kubeProxy: null });
  t.equal(traceBad.code, 2);
  t.match(traceBad.stderr, /source 192\.168\.77\.2: expected ADDRESS:PORT/);

  t.equal(stats.code, 0);
  t.match(stats.stdout, /^rule set {5}generation \d+, 8 services, 10 service ports/);
  t.match(stats.stdout, /\npackets {6}forward=1 reply=0 drop=0 pass=0\n/);
  t.match(stats.stdout, /\nloop {9}no TUN device attached\n/);
  t.match(stats.stdout, /\nconntrack {4}1\/\d+ entries, 1 inserted, 0 evicted, 0 expired, 0 collisions, 0 clashes, 0 refused \(full\)\n/);
  t.notMatch(stats.stdout, /conntrack6/, 'no IPv6 table line before an IPv6 packet');
  t.match(JSON.parse(statsJson.stdout), { counters: { packets: { forward: 1 } }, conntrack: { entries: 1 }, conntrack6: null });

  const del = await cli(['conntrack', '-D', '--service', 'default/web-svc']);
  t.equal(del.code, 0);
  t.match(del.stderr, /1 flow entries have been deleted/);
  t.equal(dp.pipeline.conntrack.size, 0);
});

t.test('import iptables: other software left to the kernel (exit 0), no node address (exit 1 naming --node-address), the NodePort range', async (t) => {
  const [other, noNode, v129, narrow] = await Promise.all([
    cli(['import', 'iptables', join(FIX, 'with-other-software.save'), '--node-address', '172.16.1.35']),
    cli(['import', 'iptables', join(FIX, 'kube-proxy-v1.29.save')]),
    cli(['import', 'iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2']),
    cli(['import', 'iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2', '--node-port-range', '30000-32767']),
  ]);
  t.equal(other.code, 0, "docker's and flannel's rules do not make the import partial");
  t.match(other.stderr, /with-other-software\.save: left to the kernel: 14 rules of other software in chains .*DOCKER \(nat, 1, docker\)/);
  t.notMatch(other.stderr, /not understood:/);
  t.equal(noNode.code, 1, 'not a valid rule set without a node address');
  t.equal(noNode.stdout, '', 'nothing on stdout');
  t.match(noNode.stderr, /invalid rule set: node\.addresses: .*--node-address/);
  t.equal(v129.code, 0, v129.stderr);
  t.equal((JSON.parse(v129.stdout) as RuleSet).node.nodePortRange, '3001-32767');
  t.match(v129.stderr, /warning: the dump's NodePorts \(3001-3003\) fall outside the default range 30000-32767/);
  t.match(v129.stderr, /kube-proxy-v1\.29\.save:69: limit: not served: NodePorts on 127\.0\.0\.1 need route_localnet; tunproxy, like kube-proxy's nftables mode, does not serve them/);
  t.notMatch(v129.stderr, /nodeAddresses/, 'the flag is --node-address');
  t.equal(narrow.code, 1);
  t.match(narrow.stderr, /invalid rule set: services\[\d+\]\.ports\[0\]\.nodePort: 3001\/TCP? ?.*outside 30000-32767|nodePort.*outside 30000-32767/);
});

t.test('validate: a rule set or a dump, offline; exit 0, or 1 with every error', async (t) => {
  const bad = { ...golden, services: [{ ...golden.services[0], clusterIP: 'x' }, { ...golden.services[1], ports: [{ name: 'p', protocol: 'TCP', port: 70000 }] }] };
  const [ok, yaml, wrong, dump, dumpNoNode, stdin] = await Promise.all([
    cli(['validate', join(ROOT, 'examples/demo-ruleset.json')], { env: { TUNPROXY_SOCKET: join(dir, 'none.sock') } }),
    cli(['validate', file('rs.yaml', toYaml(golden))]),
    cli(['validate', file('bad.json', JSON.stringify(bad))]),
    cli(['validate', join(FIX, 'kube-proxy-v1.23.save'), '--node-address', '192.168.0.2']),
    cli(['validate', join(FIX, 'kube-proxy-v1.29.save')]),
    cli(['validate', '-'], { input: JSON.stringify(golden) }),
  ]);
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stdout, /demo-ruleset\.json: valid: 3 services/);
  t.equal(yaml.code, 0, yaml.stderr);
  t.equal(wrong.code, 1);
  t.match(wrong.stderr, /bad\.json: services\[0\]\.clusterIP: .*\n[\s\S]*bad\.json: services\[1\]\.ports\[0\]\.port: 70000 is outside 1-65535/);
  t.match(wrong.stderr, /not a valid rule set \(2 errors\)/);
  t.equal(dump.code, 0, dump.stderr);
  t.match(dump.stdout, /valid: an iptables dump that imports to a valid rule set of 4 services/);
  t.equal(dumpNoNode.code, 1);
  t.match(dumpNoNode.stderr, /--node-address/);
  t.equal(stdin.code, 0);
});

t.test('trace offline: --rules FILE|-, --iptables FILE, and import | trace --rules -', async (t) => {
  const rules = file('v129.json', (await cli(['import', 'iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2', '-q'])).stdout);
  const env = { TUNPROXY_SOCKET: join(dir, 'none.sock') }; // nothing listens there: the offline trace does not ask
  const [fromFile, fromDump, lb, localhost, json, noNode] = await Promise.all([
    cli(['trace', '--rules', rules, 'tcp', '10.0.0.2:40000', '172.30.0.41:80'], { env }),
    cli(['trace', '--iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2', 'tcp', '203.0.113.9:40000', '192.168.0.2:3003'], { env }),
    cli(['trace', '--iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2', 'tcp', '198.51.100.7:40000', '5.6.7.8:80'], { env }),
    cli(['trace', '--iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2', 'tcp', '127.0.0.1:40000', '127.0.0.1:3001'], { env }),
    cli(['trace', '--rules', rules, '-o', 'json', 'udp', '10.0.0.2:40000', '172.30.0.46:80'], { env }),
    cli(['trace', '--iptables', join(FIX, 'kube-proxy-v1.29.save'), 'tcp', '10.0.0.2:40000', '172.30.0.41:80'], { env }),
  ]);
  t.equal(fromFile.code, 0, fromFile.stderr);
  t.match(fromFile.stdout, /offline, rule set .*v129\.json[\s\S]*tunproxy: +DNAT ns1\/svc1:p80[\s\S]*10\.180\.0\.1:80 +100\.0%[\s\S]*kube-proxy: DNAT ns1\/svc1:p80[\s\S]*agree: yes/);
  t.equal(fromDump.code, 0, fromDump.stderr);
  t.match(fromDump.stdout, /offline, iptables dump[\s\S]*DNAT ns3\/svc3:p80[\s\S]*masquerade to 192\.168\.0\.2[\s\S]*agree: yes/);
  t.match(lb.stdout, /DROP ns5\/svc5:p80 \(source_range\)[\s\S]*kube-proxy: DROP ns5\/svc5:p80[\s\S]*agree: yes/, 'outside the source ranges: dropped by both');
  t.match(localhost.stdout, /tunproxy: +not served: NodePorts on 127\.0\.0\.1 need route_localnet; tunproxy, like kube-proxy's nftables mode, does not serve them/);
  t.notMatch(localhost.stdout, /tunproxy: +no service: the packet passes unchanged/);
  t.match(localhost.stdout, /kube-proxy: DNAT ns2\/svc2:p80[\s\S]*agree: NO/, "the dump's localhost NodePort rule DNATs what tunproxy does not serve");
  t.equal(json.code, 0);
  const a = JSON.parse(json.stdout);
  t.same(a.tunproxy.verdict, { kind: 'nomatch' }, 'svc6 is TCP; UDP to it is no service');
  t.equal(a.agree, true);
  t.equal(noNode.code, 1);
  t.match(noNode.stderr, /--node-address/);
  // the pipe
  const imported = await cli(['import', 'iptables', join(FIX, 'kube-proxy-v1.29.save'), '--node-address', '192.168.0.2', '-q']);
  const piped = await cli(['trace', '--rules', '-', 'tcp', '10.0.0.2:40000', '172.30.0.41:80'], { input: imported.stdout, env });
  t.equal(piped.code, 0, piped.stderr);
  t.match(piped.stdout, /offline, rule set stdin[\s\S]*DNAT ns1\/svc1:p80[\s\S]*agree: yes/);
  const empty = await cli(['trace', '--rules', '-', 'tcp', '10.0.0.2:40000', '172.30.0.41:80'], { input: '', env });
  t.equal(empty.code, 1, 'an import that failed (nothing on stdout) fails the trace too');
  t.match(empty.stderr, /stdin: empty: no rule set/);
});

t.test('the offline trace gives the API\'s answer for the same rule set (no tracked flow, no affinity state)', async (t) => {
  await cli(['apply', '-f', join(FIX, 'golden-ruleset.json')]);
  await cli(['conntrack', '-D']);
  const packets = [
    ['tcp', '192.168.77.2:40000', '10.110.199.45:80'],
    ['udp', '10.64.1.99:5353', '10.32.0.10:53'],
    ['tcp', '203.0.113.9:1234', '172.16.1.35:32754'],
    ['tcp', '198.18.0.1:5000', '100.64.0.10:80'],
    ['sctp', '10.64.1.99:5000', '10.32.0.200:9999'],
    ['tcp', '10.64.1.99:5000', '10.99.99.99:80'],
  ];
  for (const p of packets) {
    const [live, offline] = await Promise.all([cli(['trace', ...p, '-o', 'json']), cli(['trace', '--rules', join(FIX, 'golden-ruleset.json'), ...p, '-o', 'json'])]);
    t.equal(live.code, 0, live.stderr);
    t.equal(offline.code, 0, offline.stderr);
    const a = JSON.parse(live.stdout);
    const b = JSON.parse(offline.stdout);
    const pick = (x: any) => ({
      packet: x.packet,
      verdict: x.tunproxy.verdict,
      table: x.tunproxy.table,
      chain: x.tunproxy.chain,
      masquerade: x.tunproxy.masquerade,
      // affinity lines differ only in what is remembered (nothing offline)
      explanation: x.tunproxy.explanation.filter((l: string) => !/ClientIP affinity/.test(l)),
      kubeProxy: x.kubeProxy.verdict,
      rules: x.kubeProxy.rules,
      agree: x.agree,
      differences: x.differences,
    });
    t.same(pick(b), pick(a), `${p.join(' ')}: the same answer`);
  }
});
