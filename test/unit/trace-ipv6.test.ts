/**
 * `tunproxy trace` for IPv6 packets: offline against a node's ip6tables-save
 * dump (the seeds-like fixture kube-proxy-v1.29-ipv6.save), alone or beside
 * its iptables-save (`--ip6tables`), and against a dual-stack rule set; the
 * chain walk through the ip6tables rules rule by rule, tunproxy's side from
 * the IPv6 tables (compiledVerdict6), and a clear error when an IPv6 packet
 * is traced without IPv6 rules. Also POST /v1/trace with an IPv6 packet, live:
 * the IPv6 connection table's flow and the IPv6 affinity table's answer.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importIptables } from '../../control/iptables/importer.ts';
import { compile } from '../../control/compile.ts';
import { cachedLinear, traceAnswer, tracePacket, TraceRequestError } from '../../control/trace.ts';
import type { TraceRequest } from '../../control/trace.ts';
import { Dataplane } from '../../control/dataplane.ts';
import { startApi } from '../../control/server.ts';
import { ApiClient } from '../../control/client.ts';
import type { RuleSet } from '../../control/types.ts';
import { V_FORWARD } from '../../dataplane/verdict.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const FIX = join(ROOT, 'test/fixtures/iptables/');
const V6 = readFileSync(join(FIX, 'kube-proxy-v1.29-ipv6.save'), 'utf8');
const V4 = readFileSync(join(FIX, 'kube-proxy-v1.29.save'), 'utf8');
const NODE6 = '2001:db8:1::2';

function answer(source: string, destination: string, protocol = 'tcp') {
  const rs = importIptables(V6, { nodeAddresses: [NODE6] }).ruleSet;
  return traceAnswer({
    rs, tables: compile(rs), generation: 0, request: { protocol, source, destination }, live: null,
    linear: (family) => ({ cached: cachedLinear(V6, [...rs.node.addresses, '::1'], '', family), built: false }), nowMs: 0,
  });
}

t.test('an IPv6 packet through the ip6tables dump: the walk rule by rule, and the compiled verdict beside it', async (t) => {
  const a = answer('[2001:db8:203::1]:40000', '[2001:db8:5::8]:80');
  t.equal(a.packet.family, 'ipv6');
  t.same(a.tunproxy.verdict, { kind: 'dnat', service: 'ns5/svc5:p80', affinitySeconds: 10800, candidates: [{ endpoint: '[fd00:10::3]:80', probability: 1, masquerade: true }] });
  t.same(a.kubeProxy!.verdict, a.tunproxy.verdict);
  t.equal(a.agree, true);
  t.equal(a.tunproxy.table, 'load-balancer IP');
  t.equal(a.tunproxy.masquerade.address, NODE6);
  t.equal(a.kubeProxy!.rulesOf, 'ip6tables');
  t.same(a.kubeProxy!.chainWalk.map((s) => `${s.matched ? '+' : '-'} ${s.table} ${s.rule}`), [
    '+ nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '- nat -A KUBE-SERVICES -d fd00:30::41/128 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O',
    '- nat -A KUBE-SERVICES -d fd00:30::42/128 -p tcp -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT',
    '- nat -A KUBE-SERVICES -d 2001:db8:99::22/128 -p tcp -m comment --comment "ns2/svc2:p80 external IP" -m tcp --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT',
    '- nat -A KUBE-SERVICES -d fd00:30::45/128 -p tcp -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C',
    '+ nat -A KUBE-SERVICES -d 2001:db8:5::8/128 -p tcp -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C',
    '+ nat -A KUBE-FW-NUKIZ6OKUXPJNT4C -s 2001:db8:203::/48 -m comment --comment "ns5/svc5:p80 loadbalancer IP" -j KUBE-EXT-NUKIZ6OKUXPJNT4C',
    '+ nat -A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ',
    '+ nat -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000',
    '+ nat -A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C',
    '- nat -A KUBE-SVC-NUKIZ6OKUXPJNT4C ! -s fd00:10::/64 -d fd00:30::45/128 -p tcp -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
    '- nat -A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> [fd00:10::3]:80" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-444PU7POPLHL2BLW --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j KUBE-SEP-444PU7POPLHL2BLW',
    '+ nat -A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> [fd00:10::3]:80" -j KUBE-SEP-444PU7POPLHL2BLW',
    '- nat -A KUBE-SEP-444PU7POPLHL2BLW -s fd00:10::3/128 -m comment --comment "ns5/svc5:p80" -j KUBE-MARK-MASQ',
    '+ nat -A KUBE-SEP-444PU7POPLHL2BLW -p tcp -m comment --comment "ns5/svc5:p80" -m recent --set --name KUBE-SEP-444PU7POPLHL2BLW --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -m tcp -j DNAT --to-destination [fd00:10::3]:80',
    '+ nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    '- nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '+ nat -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0',
    '+ nat -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
  ]);
  // no endpoints: the walk goes on into the filter table's REJECT
  const reject = answer('[2001:db8::9]:40000', '[fd00:30::46]:80');
  t.same(reject.tunproxy.verdict, { kind: 'reject', service: 'ns6/svc6:p80' });
  t.equal(reject.agree, true);
  const last = reject.kubeProxy!.chainWalk.at(-1)!;
  t.same([last.table, last.chain, last.matched], ['filter', 'KUBE-SERVICES', true]);
  t.match(last.rule, /-d fd00:30::46\/128 .* -j REJECT --reject-with icmp6-port-unreachable$/);
  t.match(reject.tunproxy.explanation.join('\n'), /ICMPv6 port unreachable/);
  // the others of the fixture: both sides agree on each
  const cases: Array<[string, string, object]> = [
    ['[2001:db8::9]:40000', '[fd00:30::41]:80', { kind: 'dnat', service: 'ns1/svc1:p80' }],
    ['[fd00:10::4]:40000', '[fd00:30::41]:80', { kind: 'dnat', candidates: [{ endpoint: '[fd00:10::1]:80', masquerade: false }, { endpoint: '[fd00:10::4]:80', masquerade: true }] }],
    ['[2001:db8:7::1]:40000', '[2001:db8:5::8]:80', { kind: 'drop', reason: 'source_range' }],
    ['[2001:db8::9]:40000', '[2001:db8:99::22]:80', { kind: 'drop', reason: 'no_local_endpoints' }],
    ['[2001:db8::9]:40000', `[${NODE6}]:30002`, { kind: 'dnat', service: 'ns5/svc5:p80' }],
    ['[2001:db8::9]:40000', '[fd00:30::99]:80', { kind: 'nomatch' }],
  ];
  for (const [s, d, v] of cases) {
    const x = answer(s, d);
    t.match(x.tunproxy.verdict, v, `${s} > ${d}: tunproxy`);
    t.equal(x.agree, true, `${s} > ${d}: agree`);
  }
  t.match(answer('[fd00:10::4]:40000', '[fd00:30::41]:80').tunproxy.explanation.join('\n'), /masquerade only for the endpoint that is the source itself \(hairpin\)/);
  t.match(answer('[fd00:10::9]:40000', '[fd00:30::41]:80').tunproxy.explanation.join('\n'), /no masquerade: the source is a pod in the IPv6 cluster CIDR/);
});

t.test('trace requests: one family per packet, [IPv6]:port, and rules of the packet\'s family', async (t) => {
  const rs = importIptables(V6, { nodeAddresses: [NODE6] }).ruleSet;
  const bad: Array<[TraceRequest, string, RegExp]> = [
    [{ protocol: 'tcp', source: '[2001:db8::9]:1', destination: '10.0.0.1:80' }, 'destination', /a packet's addresses are of one family/],
    [{ protocol: 'tcp', source: '[2001:db8::g]:1', destination: '[fd00::1]:80' }, 'source', /"2001:db8::g" is not an IPv6 address/],
    [{ protocol: 'tcp', source: '2001:db8::9:1', destination: '[fd00::1]:80' }, 'source', /\[address\]:port/],
    [{ protocol: 'tcp', source: '[2001:db8::9]:0', destination: '[fd00::1]:80' }, 'source', /port 0 is outside/],
    [{ protocol: 'tcp', source: '[2001:db8::9]:1', destination: '[fd00::1]:80', local: true }, 'source', /node address/],
  ];
  for (const [req, path, message] of bad) {
    try {
      tracePacket(rs, req);
      t.fail(`${JSON.stringify(req)} accepted`);
    } catch (e) {
      t.ok(e instanceof TraceRequestError, JSON.stringify(req));
      t.equal((e as TraceRequestError).path, path);
      t.match((e as Error).message, message);
    }
  }
  t.equal(tracePacket(rs, { protocol: 'tcp', source: `[${NODE6}]:1`, destination: '[fd00:30::41]:80', local: true }).family, 6);
  // IPv4 rules for an IPv6 packet: refused, naming the family
  t.throws(
    () => traceAnswer({
      rs, tables: compile(rs), generation: 0, request: { protocol: 'tcp', source: '[2001:db8::9]:1', destination: '[fd00:30::41]:80' }, live: null,
      linear: () => ({ cached: cachedLinear(V4, ['192.168.0.2'], ''), built: false }), nowMs: 0,
    }),
    /an IPv6 packet is walked through ip6tables rules, and the rules given are iptables ones/,
  );
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}
function cli(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    // nothing listens on that socket: the offline trace does not ask
    const p = spawn(process.execPath, [join(ROOT, 'bin/tunproxy.js'), ...args], { cwd: ROOT, env: { ...process.env, TUNPROXY_SOCKET: '/nonexistent/tp.sock' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('tunproxy trace --iptables with IPv6 packets (offline)', async (t) => {
  const v6 = join(FIX, 'kube-proxy-v1.29-ipv6.save');
  const v4 = join(FIX, 'kube-proxy-v1.29.save');
  const [alone, dual, dual4, noV6, mixed, rules] = await Promise.all([
    cli(['trace', '--iptables', v6, '--node-address', NODE6, 'tcp', '[2001:db8::9]:40000', '[fd00:30::46]:80']),
    cli(['trace', '--iptables', v4, '--ip6tables', v6, '--node-address', `192.168.0.2,${NODE6}`, 'tcp', '[2001:db8:203::1]:40000', '[2001:db8:5::8]:80']),
    cli(['trace', '--iptables', v4, '--ip6tables', v6, '--node-address', `192.168.0.2,${NODE6}`, 'tcp', '10.0.0.2:40000', '172.30.0.41:80']),
    cli(['trace', '--iptables', v4, '--node-address', '192.168.0.2', 'tcp', '[2001:db8::9]:40000', '[fd00:30::41]:80']),
    cli(['trace', '--iptables', v6, 'tcp', '[2001:db8::9]:40000', '10.0.0.1:80']),
    cli(['trace', '--rules', join(FIX, 'dualstack-ruleset.json'), 'tcp', '[2001:db8::9]:40000', '[fd00:10:96::b]:443']),
  ]);
  t.equal(alone.code, 0, alone.stderr);
  t.equal(alone.stdout, [
    `TCP [2001:db8::9]:40000 -> [fd00:30::46]:80   (offline, ip6tables dump ${v6})`,
    '',
    'tunproxy:   REJECT ns6/svc6:p80 (no endpoints: ICMPv6 port unreachable)   [ClusterIP table]',
    '  - ClusterIP [fd00:30::46]:80 belongs to ns6/svc6:p80 (IPv6 ClusterIP table)',
    '  - ns6/svc6:p80 has no endpoints: answered with ICMPv6 port unreachable (kube-proxy\'s REJECT)',
    '',
    'kube-proxy: REJECT ns6/svc6:p80 (no endpoints: ICMPv6 port unreachable)   [ip6tables, 55 rules]',
    '  - one walk as the kernel makes it: 16 rules visited',
    '',
    'agree: yes',
    '',
  ].join('\n'));
  t.equal(dual.code, 0, dual.stderr);
  t.match(dual.stdout, /offline, ip6tables dump .*kube-proxy-v1\.29-ipv6\.save[\s\S]*tunproxy: +DNAT ns5\/svc5:p80[\s\S]*\[fd00:10::3\]:80 +100\.0% +masquerade to 2001:db8:1::2[\s\S]*kube-proxy: DNAT ns5\/svc5:p80 .*\[ip6tables, 55 rules\][\s\S]*agree: yes/);
  t.equal(dual4.code, 0, dual4.stderr);
  t.match(dual4.stdout, /offline, iptables dump .*kube-proxy-v1\.29\.save[\s\S]*kube-proxy: DNAT ns1\/svc1:p80 +\[iptables, \d+ rules\][\s\S]*agree: yes/, 'an IPv4 packet beside an ip6tables dump: the iptables one');
  t.equal(noV6.code, 2);
  t.equal(noV6.stdout, '');
  t.match(noV6.stderr, /an IPv6 packet \(\[fd00:30::41\]:80\) is walked through the node's ip6tables rules, and .*kube-proxy-v1\.29\.save is iptables-save output \(IPv4 rules only\): give the node's ip6tables-save dump with --ip6tables FILE6/);
  t.equal(mixed.code, 2);
  t.match(mixed.stderr, /of one family/);
  t.equal(rules.code, 0, rules.stderr);
  t.match(rules.stdout, /tunproxy: +DNAT default\/v6only:https \(ClientIP affinity 10800 s\)[\s\S]*kube-proxy: DNAT default\/v6only:https[\s\S]*\[ip6tables, \d+ rules\][\s\S]*agree: yes/);
});

t.test('POST /v1/trace with an IPv6 packet: the IPv6 tables beside the ip6tables rules written for the rule set', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-trace6-'));
  const sock = join(dir, 'api.sock');
  const dp = new Dataplane({ clock: () => 1_000_000 });
  dp.holder.apply(JSON.parse(readFileSync(join(FIX, 'dualstack-ruleset.json'), 'utf8')) as RuleSet);
  const srv = await startApi(dp, { socket: sock });
  t.teardown(async () => {
    await srv.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const c = new ApiClient({ socket: sock });
  type A = { packet: { family: string }; tunproxy: { verdict: { kind: string; candidates: Array<{ endpoint: string }> } }; kubeProxy: { rulesOf: string; chainWalk: unknown[] }; agree: boolean };
  const r = await c.request<A>('POST', '/v1/trace', { body: { protocol: 'TCP', source: '[2001:db8::9]:40000', destination: '[fd00:10:96::a]:80' } });
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.equal(r.body.packet.family, 'ipv6');
  t.equal(r.body.tunproxy.verdict.kind, 'dnat');
  t.same(r.body.tunproxy.verdict.candidates.map((x) => x.endpoint).sort(), ['[fd00:10:64:1::7]:8080', '[fd00:10:64:2::9]:8080']);
  t.equal(r.body.kubeProxy.rulesOf, 'ip6tables');
  t.ok(r.body.kubeProxy.chainWalk.length > 5);
  t.equal(r.body.agree, true);
  const v4 = await c.request<A>('POST', '/v1/trace', { body: { protocol: 'TCP', source: '192.168.77.2:40000', destination: '10.96.0.10:80' } });
  t.equal(v4.body.kubeProxy.rulesOf, 'iptables');
  t.equal(v4.body.agree, true);
  const bad = await c.request<{ message: string; errors: Array<{ path: string }> }>('POST', '/v1/trace', { body: { protocol: 'TCP', source: '[2001:db8::9]:40000', destination: '10.96.0.10:80' } });
  t.equal(bad.status, 400);
  t.match(bad.body.message, /of one family/);
  t.equal(bad.body.errors[0].path, 'destination');
});

t.test('a live IPv6 trace reads the IPv6 connection table and the IPv6 affinity table', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-trace6-live-'));
  const sock = join(dir, 'api.sock');
  const dp = new Dataplane({ clock: () => 1_000_000 });
  // an IPv6 service with ClientIP affinity and two endpoints
  dp.holder.apply({
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' },
    services: [{
      namespace: 'default', name: 'dns6', clusterIP: 'fd00:10:96::a', ipFamilies: ['IPv6'], sessionAffinity: 'ClientIP',
      ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }],
      endpoints: [{ address: 'fd00:10:64:1::7' }, { address: 'fd00:10:64:2::9' }],
    }],
  } as RuleSet);
  const srv = await startApi(dp, { socket: sock });
  t.teardown(async () => {
    await srv.close();
    rmSync(dir, { recursive: true, force: true });
  });
  // UDP [2001:db8::35]:40000 > [fd00:10:96::a]:53 "hello", through the pipeline: a flow, and the client remembered
  const b = new Uint8Array(Buffer.from('60000000000d114020010db8000000000000000000000035fd00001000960000000000000000000a9c400035000df3ed68656c6c6f', 'hex'));
  t.equal(dp.pipeline.process(b, 0, b.length, dp.tables!, 1_000_000), V_FORWARD);
  const flow = dp.pipeline.conntrackV6!;
  t.equal(flow.size, 1);
  const c = new ApiClient({ socket: sock });
  type A = { tunproxy: { conntrack: { direction: string; flow: { protocol: string; original: { src: string; dst: string; sport: number }; endpoint: string } } | null; affinity: { seconds: number; hit: string | null } | null; explanation: string[] } };
  const trace = async (source: string) => (await c.request<A>('POST', '/v1/trace', { body: { protocol: 'UDP', source, destination: '[fd00:10:96::a]:53', kubeProxy: false } })).body.tunproxy;
  const same = await trace('[2001:db8::35]:40000');
  t.equal(same.conntrack?.direction, 'original', 'the packet belongs to the tracked flow');
  t.equal(same.conntrack?.flow.original.src, '2001:db8::35');
  t.equal(same.conntrack?.flow.original.dst, 'fd00:10:96::a');
  const endpoint = same.conntrack!.flow.endpoint;
  t.match(endpoint, /^\[fd00:10:64:[12]::[79]\]:5353$/);
  t.same(same.affinity, { seconds: 10800, hit: endpoint }, 'the affinity table remembers the client with the flow\'s endpoint');
  t.ok(same.explanation.some((l) => l.includes('tracked flow')));
  const other = await trace('[2001:db8::35]:40001');
  t.equal(other.conntrack, null, 'another source port: no flow');
  t.equal(other.affinity?.hit, endpoint, 'but the same client: the same endpoint');
  t.ok(other.explanation.includes(`ClientIP affinity: 2001:db8::35 is remembered with ${endpoint}, which a new flow gets`));
  // 2001:db8:0:35:: folds to the same 32 bits as 2001:db8::35: another client all the same
  const fold = await trace('[2001:db8:0:35::]:40000');
  t.same(fold.affinity, { seconds: 10800, hit: null }, 'a client with the same 32-bit fold is not remembered');
  t.equal(flow.size, 1, 'the traces made no flow');
  t.equal(dp.pipeline.ipv6Path!.affinity.hits, 0, 'and counted no affinity hit');
});
