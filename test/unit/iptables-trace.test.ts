import t from 'tap';
import { readFileSync } from 'node:fs';
import { writeIptables } from '../../control/iptables/writer.ts';
import { linearFromText } from '../../control/iptables/linear.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

t.test("trace: the walk through kube-proxy's chains, rule by rule, as netfilter makes it", async (t) => {
  const rs = JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'));
  rs.services[0].endpoints = [{ address: '10.64.1.7' }];
  const text = writeIptables(rs);
  const lines = text.split('\n');
  const ev = linearFromText(text, { localAddresses: rs.node.addresses });
  const { sample, steps } = ev.trace({ proto: 17, src: parseIPv4('172.16.1.99'), dst: parseIPv4('10.32.0.10'), sport: 5000, dport: 53 }, 0);
  t.equal(sample.kind, 'dnat');
  t.equal(sample.endpoint, '10.64.1.7:53');
  t.equal(steps.length, sample.rulesVisited, 'one step per rule visited');
  const walk = steps.map((s) => `${s.matched ? '+' : '-'} ${lines[s.line - 1]}`);
  t.same(walk, [
    '+ -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '+ -A KUBE-SERVICES -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp -p udp -d 10.32.0.10 --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU',
    '+ -A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp -p udp -d 10.32.0.10 --dport 53 ! -s 10.64.1.0/24 -j KUBE-MARK-MASQ',
    '+ -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000',
    '+ -A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> 10.64.1.7:53" -j KUBE-SEP-TYGHG4DTIAC24P3K',
    '- -A KUBE-SEP-TYGHG4DTIAC24P3K -m comment --comment kube-system/kube-dns:dns -s 10.64.1.7 -j KUBE-MARK-MASQ',
    '+ -A KUBE-SEP-TYGHG4DTIAC24P3K -m comment --comment kube-system/kube-dns:dns -m udp -p udp -j DNAT --to-destination 10.64.1.7:53',
    '+ -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    '- -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '+ -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000',
    '+ -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
  ]);
  // a miss walks every KUBE-SERVICES rule and finds nothing
  const miss = ev.trace({ proto: 6, src: parseIPv4('172.16.1.99'), dst: parseIPv4('10.32.0.99'), sport: 5000, dport: 80 }, 0);
  t.equal(miss.sample.kind, 'nomatch');
  t.ok(miss.steps.filter((s) => lines[s.line - 1].startsWith('-A KUBE-SERVICES')).length >= 4, 'every KUBE-SERVICES rule was tried');
  // tracing leaves sample as it was (no tracer left behind)
  const again = ev.sample({ proto: 17, src: parseIPv4('172.16.1.99'), dst: parseIPv4('10.32.0.10'), sport: 5001, dport: 53 }, 0);
  t.equal(again.rulesVisited, 11);
});
