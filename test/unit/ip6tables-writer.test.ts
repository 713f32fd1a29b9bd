/**
 * kube-proxy's IPv6 proxier, written: the ip6tables-restore input (writeIptables
 * family 6) and the `ip6 kube-proxy` nftables table (writeNftables family 6) of a
 * dual-stack rule set, checked line by line against what kube-proxy writes, and
 * walked by the linear evaluator (parsed as ip6tables text) to the verdicts the
 * rule set means. The kernel's own check is test/e2e/ip6tables-kernel.test.ts.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import type { RuleSet } from '../../control/types.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { writeIptables, endpointText } from '../../control/iptables/writer.ts';
import { endpointChain } from '../../control/iptables/hash.ts';
import { parseIptablesSave } from '../../control/iptables/parser.ts';
import { LinearEvaluator } from '../../control/iptables/linear.ts';
import { writeNftables, writeNftablesServiceAdd, deleteNftablesText, endpointChainNameBase, hashAndTruncate } from '../../control/nftables/writer.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import type { PacketTuple6 } from '../../dataplane/decider6.ts';

const RS = JSON.parse(readFileSync(new URL('../fixtures/iptables/dualstack-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
const v = validateRuleSet(RS);
if (!v.ok) throw new Error(JSON.stringify(v.errors));
const model = v.model;
const pkt = (proto: number, src: string, sport: number, dst: string, dport: number): PacketTuple6 => ({ proto, src: parseIPv6(src)!, dst: parseIPv6(dst)!, sport, dport });
const V4_ADDR = /\b(?:\d{1,3}\.){3}\d{1,3}\b/;
const V6_ADDR = /[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*/;

t.test('iptables family 6: kube-proxy\'s IPv6 rules, only the IPv6 ports, [addr]:port DNAT', async (t) => {
  const text = writeIptables(model, { family: 6 });
  const lines = text.split('\n');
  t.notOk(lines.some((l) => l.startsWith('-A') && V4_ADDR.test(l.replace(/--probability \S+/, ''))), 'no IPv4 address in the IPv6 rules');
  const http = model.portsOf(6).find((p) => p.name === 'default/web:http')!;
  const ep = http.clusterEndpoints[0];
  t.equal(endpointText(ep), '[fd00:10:64:1::7]:8080', 'kube-proxy\'s endpoint String(): net.JoinHostPort');
  const sep = endpointChain('default/web:http', 'tcp', '[fd00:10:64:1::7]:8080');
  t.ok(lines.includes(`-A ${sep} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination [fd00:10:64:1::7]:8080`));
  t.ok(lines.includes(`-A ${sep} -m comment --comment default/web:http -s fd00:10:64:1::7 -j KUBE-MARK-MASQ`));
  t.ok(lines.some((l) => l.includes('"default/web:http -> [fd00:10:64:1::7]:8080" -m statistic --mode random --probability 0.5000000000')));
  t.ok(lines.some((l) => /-d fd00:10:96::a --dport 80 ! -s fd00:10:64::\/56 -j KUBE-MARK-MASQ$/.test(l)), 'masquerade off the IPv6 cluster CIDR');
  t.ok(lines.some((l) => l.includes('"pod traffic for default/lb external destinations" -s fd00:10:64::/56')));
  t.ok(lines.some((l) => l.includes('-s 2001:db8:203::/48 -j KUBE-EXT-')), 'the IPv6 source range');
  t.notOk(text.includes('198.51.100.0/24'), 'not the IPv4 one');
  t.ok(lines.includes('-A KUBE-SERVICES -m comment --comment "default/empty:p has no endpoints" -m sctp -p sctp -d fd00:10:96::d --dport 9000 -j REJECT'), 'REJECT bare, as kube-proxy writes it');
  t.ok(lines.some((l) => l.includes('-m recent --name KUBE-SEP-') && l.includes('--rcheck --seconds 10800 --reap')));
  t.notOk(text.includes('127.0.0.0/8'), 'no localhost NodePorts in IPv6');
  // the IPv4 rules of the same rule set: only the IPv4 ports
  const four = writeIptables(model);
  t.notOk(four.split('\n').some((l) => l.startsWith('-A') && /fd00|2001:db8/.test(l)), 'no IPv6 address in the IPv4 rules');
  t.ok(four.includes('-d 10.96.0.12 --dport 8080'), 'the IPv4 ClusterIP of the IPv6-primary service');
  t.ok(four.includes('--to-destination 10.64.1.7:8080'));
  t.ok(four.includes('! -s 10.64.0.0/16 -j KUBE-MARK-MASQ'));
  t.notOk(four.includes('v6only'), 'an IPv6-only service has no IPv4 rules');
});

t.test('iptables family 6, walked: the verdicts the rule set means', async (t) => {
  const parsed = parseIptablesSave(writeIptables(model, { family: 6 }), { family: 6 });
  t.same(parsed.errors, []);
  const ev = new LinearEvaluator(parsed, { localAddresses: RS.node.addresses });
  const out = '2001:db8:7::7';
  t.same(ev.evaluate6(pkt(PROTO_TCP, out, 40000, 'fd00:10:96::a', 80)), {
    kind: 'dnat',
    service: 'default/web:http',
    affinitySeconds: 0,
    candidates: [
      { endpoint: '[fd00:10:64:1::7]:8080', probability: 0.5, masquerade: true },
      { endpoint: '[fd00:10:64:2::9]:8080', probability: 0.5, masquerade: true },
    ],
  });
  const pod = ev.evaluate6(pkt(PROTO_UDP, 'fd00:10:64:5::5', 40000, 'fd00:10:96::a', 53));
  t.same(pod.kind === 'dnat' && pod.candidates.map((c) => [c.endpoint, c.masquerade]), [
    ['[fd00:10:64:1::7]:5353', false],
    ['[fd00:10:64:2::9]:5353', false],
  ]);
  t.equal(ev.evaluate6(pkt(PROTO_TCP, out, 40000, 'fd00:50::2', 30080)).kind, 'dnat', 'NodePort on the IPv6 node address');
  t.same(ev.evaluate6(pkt(PROTO_TCP, out, 40000, 'fd00:50::3', 30080)), { kind: 'nomatch' }, 'not a node address');
  t.match(ev.evaluate6(pkt(PROTO_TCP, out, 40000, 'fd00:10:96::b', 443)), { kind: 'dnat', affinitySeconds: 10800, candidates: [{ endpoint: '[fd00:10:64:3::3]:8443' }] });
  // Local policy through the firewall: the local endpoint only
  t.same(ev.evaluate6(pkt(PROTO_TCP, '2001:db8:203:1::1', 40000, '2001:db8:5::8', 8080)), {
    kind: 'dnat',
    service: 'default/lb',
    affinitySeconds: 0,
    candidates: [{ endpoint: '[fd00:10:64:1::20]:8080', probability: 1, masquerade: false }],
  });
  t.same(ev.evaluate6(pkt(PROTO_TCP, '2001:db8:204::1', 40000, '2001:db8:5::8', 8080)), { kind: 'drop', service: 'default/lb', reason: 'source_range' });
  t.same(ev.evaluate6(pkt(PROTO_SCTP, out, 40000, 'fd00:10:96::d', 9000)), { kind: 'reject', service: 'default/empty:p' });
});

t.test('nftables family 6: table ip6 kube-proxy, ipv6_addr, [addr]:port DNAT, chain names without colons', async (t) => {
  const text = writeNftables(model, { family: 6 });
  const lines = text.split('\n');
  t.ok(lines.every((l) => l === '' || / ip6 kube-proxy /.test(l)), 'every operation is on table ip6 kube-proxy');
  t.notOk(/\bipv4_addr\b|\bip (daddr|saddr)\b/.test(text));
  t.ok(lines.includes('add element ip6 kube-proxy nodeport-ips { fd00:50::2 }'), 'the IPv6 node address only');
  t.notOk(text.includes('192.168.50.2'));
  const http = model.portsOf(6).find((p) => p.name === 'default/web:http')!;
  const base = endpointChainNameBase(http, http.clusterEndpoints[0]);
  t.equal(base, hashAndTruncate('default/web/tcp/http__fd00.10.64.1..7/8080'), 'kube-proxy turns the IPv6 colons into dots');
  t.ok(lines.includes(`add rule ip6 kube-proxy endpoint-${base} meta l4proto tcp dnat to [fd00:10:64:1::7]:8080`));
  t.ok(lines.includes(`add rule ip6 kube-proxy endpoint-${base} ip6 saddr fd00:10:64:1::7 jump mark-for-masquerade`));
  t.ok(lines.some((l) => /ip6 daddr fd00:10:96::a tcp dport 80 ip6 saddr != fd00:10:64::\/56 jump mark-for-masquerade$/.test(l)));
  t.ok(lines.some((l) => l.includes('ip6 saddr != { 2001:db8:203::/48 } drop')));
  t.ok(lines.some((l) => l.includes('{ type ipv6_addr ; flags dynamic,timeout ; timeout 10800s ; }')), 'affinity sets of IPv6 addresses');
  t.ok(lines.some((l) => l.includes('update @affinity-') && l.includes('{ ip6 saddr }')));
  t.ok(lines.includes('add element ip6 kube-proxy no-endpoint-services { fd00:10:96::d . sctp . 9000 comment "default/empty:p" : goto reject-chain }'));
  const four = writeNftables(model);
  t.notOk(/fd00|2001:db8|ip6 /.test(four), 'the IPv4 table holds no IPv6');
  t.ok(four.includes('add element ip kube-proxy service-ips { 203.0.113.8 . tcp . 8080 : goto external-'), 'the IPv4 load-balancer IP');
  const add = writeNftablesServiceAdd(model, RS.services[1], { family: 6 });
  t.ok(add.includes('add element ip6 kube-proxy service-ips { fd00:10:96::b . tcp . 443 : goto service-'));
  t.equal(writeNftablesServiceAdd(model, RS.services[1]), '\n', 'an IPv6-only service adds nothing to the IPv4 table');
  t.equal(deleteNftablesText({ family: 6 }), 'add table ip6 kube-proxy\ndelete table ip6 kube-proxy\n');
});
