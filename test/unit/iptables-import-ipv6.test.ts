/**
 * Importing kube-proxy's IPv6 rules: an ip6tables-save dump alone (an IPv6
 * node), and beside the iptables-save dump of the same node (dual-stack:
 * services merged by name). What the two dumps disagree on is named.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RuleSet } from '../../control/types.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { importIptables, PLACEHOLDER_REMOTE_ENDPOINT6 } from '../../control/iptables/importer.ts';
import { importIptablesDualStack } from '../../control/iptables/import-dual.ts';
import { writeIptables } from '../../control/iptables/writer.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIX = join(ROOT, 'test/fixtures/iptables/');
const V6 = readFileSync(join(FIX, 'kube-proxy-v1.29-ipv6.save'), 'utf8');
const DUAL = JSON.parse(readFileSync(join(FIX, 'dualstack-ruleset.json'), 'utf8')) as RuleSet;

t.test('an ip6tables-save dump alone: an IPv6 rule set, everything understood', async (t) => {
  const r = importIptables(V6, { nodeAddresses: ['2001:db8:1::2'] });
  t.same(r.notUnderstood, []);
  t.same(r.errors, []);
  t.same(r.warnings, []);
  t.same(r.limits, [], 'no localhost-NodePort limit: kube-proxy never served IPv6 NodePorts on ::1');
  const rs = r.ruleSet;
  t.same(rs.node, { addresses: ['2001:db8:1::2'], clusterCIDR: 'fd00:10::/64' });
  t.same(
    rs.services.map((s) => [`${s.namespace}/${s.name}`, s.clusterIP, s.ports.map((p) => `${p.protocol}/${p.port}${p.nodePort ? ':' + p.nodePort : ''}`).join(), (s.endpoints ?? []).map((e) => e.address).join()]),
    [
      ['ns1/svc1', 'fd00:30::41', 'TCP/80', 'fd00:10::1,fd00:10::4'],
      ['ns2/svc2', 'fd00:30::42', 'TCP/80:30001', 'fd00:10::2'],
      ['ns5/svc5', 'fd00:30::45', 'TCP/80:30002', 'fd00:10::3'],
      ['ns6/svc6', 'fd00:30::46', 'TCP/80', ''],
    ],
  );
  const svc5 = rs.services[2];
  t.same([svc5.loadBalancerIPs, svc5.loadBalancerSourceRanges, svc5.sessionAffinity], [['2001:db8:5::8'], ['2001:db8:203::/48'], 'ClientIP']);
  t.same([rs.services[1].externalIPs, rs.services[1].externalTrafficPolicy], [['2001:db8:99::22'], 'Local']);
  const v = validateRuleSet(rs);
  t.ok(v.ok);
  t.same(v.ok && v.model.ports.map((p) => p.family), [6, 6, 6, 6]);
  // the node's address from the dump's -d ADDRESS -j KUBE-NODEPORTS
  const withAddr = V6.replace(/(-A KUBE-SERVICES) (-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain") -m addrtype --dst-type LOCAL/, '$1 -d 2001:db8:1::2/128 $2');
  t.not(withAddr, V6);
  const r2 = importIptables(withAddr);
  t.same(r2.ruleSet.node.addresses, ['2001:db8:1::2']);
  t.equal(r2.nodeAddressesFrom, 'dump');
});

t.test('an IPv6 service with endpoints on other nodes only: the IPv6 placeholder', async (t) => {
  const text = [
    '*filter',
    ':KUBE-SERVICES - [0:0]',
    ':KUBE-EXTERNAL-SERVICES - [0:0]',
    '-A KUBE-SERVICES -m comment --comment "a/b:p has no local endpoints" -m tcp -p tcp -d fd00:96::1 --dport 80 -j DROP',
    'COMMIT',
    '*nat',
    ':KUBE-SERVICES - [0:0]',
    'COMMIT',
  ].join('\n');
  const r = importIptables(text, { nodeAddresses: ['fd00:50::2'], family: 6 });
  t.match(r.warnings.join('\n'), new RegExp(`placeholder endpoint ${PLACEHOLDER_REMOTE_ENDPOINT6.replace(/[.:]/g, '\\$&')}`));
});

t.test('dual stack: the iptables and ip6tables dumps of one node give back the dual-stack rule set', async (t) => {
  const v = validateRuleSet(DUAL);
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  const r = importIptablesDualStack(writeIptables(v.model), writeIptables(v.model, { family: 6 }), { nodeAddresses: DUAL.node.addresses });
  t.same(r.notUnderstood, []);
  t.same(r.errors, []);
  const rs = r.ruleSet;
  t.equal(rs.node.clusterCIDR, '10.64.0.0/16,fd00:10:64::/56');
  const web = rs.services.find((s) => s.name === 'web')!;
  t.same([web.clusterIP, web.clusterIPs, web.ipFamilies, web.ipFamilyPolicy], ['10.96.0.10', ['10.96.0.10', 'fd00:10:96::a'], ['IPv4', 'IPv6'], 'RequireDualStack']);
  t.same(web.ports.map((p) => [p.name, p.port, p.targetPort, p.nodePort]), [['http', 80, 8080, 30080], ['dns', 53, 5353, undefined]]);
  t.same((web.endpoints ?? []).map((e) => e.address).sort(), ['10.64.1.7', '10.64.2.9', 'fd00:10:64:1::7', 'fd00:10:64:2::9']);
  const lb = rs.services.find((s) => s.name === 'lb')!;
  t.same(lb.clusterIPs, ['10.96.0.12', 'fd00:10:96::c'], 'IPv4 first: the dumps do not tell the primary family');
  t.same([lb.loadBalancerIPs, lb.externalIPs, lb.loadBalancerSourceRanges], [['203.0.113.8', '2001:db8:5::8'], ['2001:db8:99::22'], ['198.51.100.0/24', '2001:db8:203::/48']]);
  t.same(rs.services.find((s) => s.name === 'v6only')!.clusterIP, 'fd00:10:96::b');
  t.notOk(rs.services.find((s) => s.name === 'v6only')!.clusterIPs, 'single-stack: no clusterIPs');
  // each family's rules written again are the dumps' rules
  const lines = (x: string) => x.split('\n').sort().join('\n');
  const back = validateRuleSet(rs);
  if (!back.ok) throw new Error(JSON.stringify(back.errors));
  t.equal(lines(writeIptables(back.model, { family: 6 })), lines(writeIptables(v.model, { family: 6 })));
  t.equal(lines(writeIptables(back.model)), lines(writeIptables(v.model)));
});

t.test('dual stack: disagreements are named, the narrower choice is made', async (t) => {
  const v = validateRuleSet(DUAL);
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  const four = writeIptables(v.model);
  // the IPv6 dump without web's NodePort rule, and with another masquerade mark
  const six = writeIptables(v.model, { family: 6 })
    .split('\n')
    .filter((l) => !l.startsWith('-A KUBE-NODEPORTS -m comment --comment default/web:http'))
    .join('\n')
    .replaceAll('0x4000', '0x8000');
  const r = importIptablesDualStack(four, six, { nodeAddresses: DUAL.node.addresses });
  t.same(r.errors, []);
  const web = r.ruleSet.services.find((s) => s.name === 'web')!;
  t.equal(web.ports[0].nodePort, undefined, 'a NodePort in one dump only is left out');
  t.match(r.limits.map((l) => l.reason).join('\n'), /default\/web:http: NodePort 30080 in the iptables dump, none in the ip6tables dump: left out/);
  t.match(r.warnings.join('\n'), /disagree on the masquerade mark \(iptables: default, ip6tables: 0x8000\)/);
  t.ok(r.notUnderstood.every((n) => n.family === 4 || n.family === 6));
  // an error names the dump
  t.throws(() => importIptablesDualStack(four, '*filter\nCOMMIT\n'), /^ip6tables dump: no KUBE-SERVICES chain/);
  t.throws(() => importIptablesDualStack(six, six), /^iptables dump: IPv6 in an iptables dump/);
});

t.test('tunproxy import iptables FILE --ip6tables FILE6: one dual-stack rule set; FILE alone may be ip6tables-save output', async (t) => {
  const v = validateRuleSet(DUAL);
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  const dir = mkdtempSync(join(tmpdir(), 'tp-imp6-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f4 = join(dir, 'node.save');
  const f6 = join(dir, 'node6.save');
  writeFileSync(f4, writeIptables(v.model));
  const cli = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const p = spawn(process.execPath, [join(ROOT, 'bin/tunproxy.js'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      p.on('error', reject);
      p.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  writeFileSync(f6, writeIptables(v.model, { family: 6 }));
  const both = await cli(['import', 'iptables', f4, '--ip6tables', f6, '--node-address', '192.168.50.2,fd00:50::2', '-q']);
  t.equal(both.code, 0, both.stderr);
  const rs = JSON.parse(both.stdout) as RuleSet;
  t.same(rs.services.find((s) => s.name === 'web')!.clusterIPs, ['10.96.0.10', 'fd00:10:96::a']);
  t.same(rs.node.addresses, ['192.168.50.2', 'fd00:50::2']);
  // a rule not understood in the IPv6 dump is reported with that file's name
  const bad = V6.replace('COMMIT', '-A KUBE-SERVICES -m foo --bar 1 -j ACCEPT\nCOMMIT');
  const fb = join(dir, 'bad6.save');
  writeFileSync(fb, bad);
  const partial = await cli(['import', 'iptables', f4, '--ip6tables', fb, '--node-address', '192.168.50.2,fd00:50::2', '-q']);
  t.equal(partial.code, 3, 'partial');
  t.match(partial.stderr, new RegExp(`${fb.replace(/[.]/g, '\\.')}:\\d+: not understood`));
  const alone = await cli(['import', 'iptables', join(FIX, 'kube-proxy-v1.29-ipv6.save'), '--node-address', '2001:db8:1::2', '-q']);
  t.equal(alone.code, 0, alone.stderr);
  t.equal((JSON.parse(alone.stdout) as RuleSet).services.length, 4);
  const badAddr = await cli(['import', 'iptables', f4, '--node-address', 'fd00::zz']);
  t.equal(badAddr.code, 1);
  t.match(badAddr.stderr, /--node-address fd00::zz: not an IPv6 address/);
});
