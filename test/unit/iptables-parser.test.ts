import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseIptablesSave, splitArgs, tableRules } from '../../control/iptables/parser.ts';
import type { Rule, Match } from '../../control/iptables/parser.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/iptables/${name}`, import.meta.url), 'utf8');

function only(text: string): Rule {
  const p = parseIptablesSave(text);
  if (p.errors.length) throw new Error(JSON.stringify(p.errors));
  const rules = [...p.tables.values()].flatMap((t) => [...t.chains.values()].flatMap((c) => c.rules));
  if (rules.length !== 1) throw new Error(`${rules.length} rules`);
  return rules[0];
}

const strip = (r: Rule) => ({ src: r.src && { ...r.src, text: '' }, dst: r.dst && { ...r.dst, text: '' }, protocol: r.protocol, matches: r.matches, target: r.target, comment: r.comment });

t.test('kube-proxy\'s argument order and iptables-save\'s give the same rule', async (t) => {
  const restore = only('*nat\n:KUBE-SVC-X - [0:0]\n-A KUBE-SVC-X -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp -p udp -d 10.32.0.10 --dport 53 ! -s 10.64.1.0/24 -j KUBE-MARK-MASQ\nCOMMIT\n');
  const saved = only('*nat\n:KUBE-SVC-X - [0:0]\n-A KUBE-SVC-X ! -s 10.64.1.0/24 -d 10.32.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ\nCOMMIT\n');
  t.same(strip(restore), strip(saved));
  t.same(saved.src, { net: parseIPv4('10.64.1.0'), mask: 0xffffff00, bits: 24, invert: true, text: '10.64.1.0/24' });
  t.same(saved.dst, { net: parseIPv4('10.32.0.10'), mask: 0xffffffff, bits: 32, invert: false, text: '10.32.0.10/32' });
  t.same(saved.protocol, { name: 'udp', number: 17, invert: false });
  t.same(saved.matches, [
    { kind: 'comment', comment: 'kube-system/kube-dns:dns cluster IP' },
    { kind: 'port', module: 'udp', dport: { lo: 53, hi: 53 }, dportInvert: false, sport: null, sportInvert: false },
  ]);
  t.same(saved.target, { kind: 'jump', chain: 'KUBE-MARK-MASQ', goto: false });
  t.equal(saved.comment, 'kube-system/kube-dns:dns cluster IP');
  t.equal(saved.chain, 'KUBE-SVC-X');
  t.equal(saved.table, 'nat');
  t.equal(saved.line, 3);
});

t.test('the matches and targets kube-proxy uses', async (t) => {
  const r = (args: string) => only(`*nat\n:C - [0:0]\n-A C ${args}\nCOMMIT\n`);
  t.same(r('-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A').matches, [{ kind: 'statistic', mode: 'random', probability: 0.33333333349, invert: false }]);
  t.same(r('-m statistic --mode nth --every 3 --packet 1 -j RETURN').matches, [{ kind: 'statistic', mode: 'nth', every: 3, packet: 1, invert: false }]);
  t.same(r('-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A').matches, [
    { kind: 'recent', name: 'KUBE-SEP-A', action: 'rcheck', seconds: 10800, reap: true, hitcount: null, mask: 0xffffffff, side: 'src', invert: false },
  ]);
  t.same(r('-m recent --name KUBE-SEP-A --set -m tcp -p tcp -j DNAT --to-destination 10.64.1.7:53').target, {
    kind: 'DNAT', addr: parseIPv4('10.64.1.7'), port: 53, portHi: 53, text: '10.64.1.7:53',
  });
  t.same(r('-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS').matches, [{ kind: 'addrtype', srcType: null, srcInvert: false, dstType: ['LOCAL'], dstInvert: false }]);
  t.same(r('-m addrtype ! --src-type LOCAL -j RETURN').matches, [{ kind: 'addrtype', srcType: ['LOCAL'], srcInvert: true, dstType: null, dstInvert: false }]);
  t.same(r('-m mark ! --mark 0x4000/0x4000 -j RETURN').matches, [{ kind: 'mark', value: 0x4000, mask: 0x4000, invert: true }]);
  t.same(r('-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT').matches, [{ kind: 'conntrack', ctstate: ['RELATED', 'ESTABLISHED'], invert: false }]);
  t.same(r('-p tcp -m tcp ! --dport 1000:2000 --sport 53 -j ACCEPT').matches, [{ kind: 'port', module: 'tcp', dport: { lo: 1000, hi: 2000 }, dportInvert: true, sport: { lo: 53, hi: 53 }, sportInvert: false }]);
  t.same(r('-p tcp --dport 80 -j ACCEPT').matches, [{ kind: 'port', module: 'tcp', dport: { lo: 80, hi: 80 }, dportInvert: false, sport: null, sportInvert: false }], 'implicit -m tcp after -p tcp');
  t.same(r('-p udp -m multiport --dports 53,5353:5355 -j ACCEPT').matches, [{ kind: 'multiport', dir: 'dst', ports: [{ lo: 53, hi: 53 }, { lo: 5353, hi: 5355 }], invert: false }]);
  // MARK in every spelling: mark = (mark & ~mask) ^ value
  t.same(r('-j MARK --set-xmark 0x4000/0x4000').target, { kind: 'MARK', value: 0x4000, mask: 0x4000 });
  t.same(r('-j MARK --or-mark 0x4000').target, { kind: 'MARK', value: 0x4000, mask: 0x4000 });
  t.same(r('-j MARK --xor-mark 0x4000').target, { kind: 'MARK', value: 0x4000, mask: 0 });
  t.same(r('-j MARK --set-xmark 0x4000/0x0').target, { kind: 'MARK', value: 0x4000, mask: 0 });
  t.same(r('-j MARK --and-mark 0xffffbfff').target, { kind: 'MARK', value: 0, mask: 0x4000 });
  t.same(r('-j MARK --set-mark 0x1').target, { kind: 'MARK', value: 1, mask: 0xffffffff });
  t.same(r('-j MASQUERADE --random-fully').target, { kind: 'MASQUERADE', randomFully: true, random: false, toPorts: null });
  t.same(r('-j REJECT --reject-with icmp-port-unreachable').target, { kind: 'REJECT', rejectWith: 'icmp-port-unreachable' });
  t.same(r('-g KUBE-SVC-A').target, { kind: 'jump', chain: 'KUBE-SVC-A', goto: true });
  t.same(r('-j RETURN').target, { kind: 'RETURN' });
  t.equal(r('-m comment --comment "other traffic to a/b:c will be dropped by KUBE-PROXY-FIREWALL"').target, null, 'a rule without a target');
  t.same(r('-s 10.0.0.0/255.0.0.0 -j ACCEPT').src, { net: parseIPv4('10.0.0.0'), mask: 0xff000000, bits: 8, invert: false, text: '10.0.0.0/255.0.0.0' });
});

t.test('iptables-save -c: counters before rules and on chain lines', async (t) => {
  const p = parseIptablesSave(fixture('with-other-software.save'));
  t.same(p.errors, []);
  t.same([...p.tables.keys()], ['mangle', 'nat', 'filter']);
  const nat = p.tables.get('nat')!;
  t.same(nat.chains.get('OUTPUT')!.counters, { packets: 3, bytes: 90 });
  t.equal(nat.chains.get('OUTPUT')!.policy, 'ACCEPT');
  t.equal(nat.chains.get('KUBE-SERVICES')!.policy, null);
  const out = nat.chains.get('OUTPUT')!.rules[0];
  t.same(out.counters, { packets: 6, bytes: 180 });
  t.same(out.target, { kind: 'jump', chain: 'KUBE-SERVICES', goto: false });
  // other software: interfaces, negated addresses, their own chains
  const docker = nat.chains.get('POSTROUTING')!.rules.find((r) => r.outInterface !== null)!;
  t.same(docker.outInterface, { name: 'docker0', invert: true });
  t.same(docker.target, { kind: 'MASQUERADE', randomFully: false, random: false, toPorts: null });
  t.ok(p.tables.get('mangle')!.chains.has('KUBE-PROXY-CANARY'));
  t.equal(tableRules(p, 'filter').filter((r) => r.chain.startsWith('DOCKER')).length, 2);
});

t.test('modules and targets it does not evaluate are kept as unknown parts, with their arguments', async (t) => {
  const r = only('*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m physdev --physdev-is-in -m set --match-set kube dst,dst -m comment --comment x -j LOG --log-prefix "dropped: " --log-level 4\nCOMMIT\n');
  const unknown = r.matches.filter((m): m is Extract<Match, { kind: 'unknown' }> => m.kind === 'unknown');
  t.same(unknown.map((m) => [m.module, m.args]), [
    ['physdev', ['--physdev-is-in']],
    ['set', ['--match-set', 'kube', 'dst,dst']],
  ]);
  t.same(r.target, { kind: 'unknown', name: 'LOG', args: ['--log-prefix', 'dropped: ', '--log-level', '4'], reason: "target 'LOG' is not evaluated" });
  const syn = only('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 --tcp-flags SYN,ACK SYN -j ACCEPT\nCOMMIT\n');
  t.equal(syn.matches[0].kind, 'unknown', 'a known module with an option not evaluated');
});

t.test('what it cannot read: line-numbered errors, the rest still parsed', async (t) => {
  const text = [
    '# a comment', //                                          1
    '*nat', //                                                 2
    ':KUBE-SERVICES - [0:0]', //                               3
    ':PREROUTING - [0:0]', //                                  4 built-in chain without a policy
    '-A KUBE-SERVICES -p tcp -m tcp --dport http -j ACCEPT', // 5 port name
    '-A KUBE-NOWHERE -j ACCEPT', //                            6 chain not declared
    '-A KUBE-SERVICES -d 10.0.0.1/33 -j ACCEPT', //            7 prefix too long
    '-A KUBE-SERVICES -d 300.1.1.1 -j ACCEPT', //              8 not an address
    '-A KUBE-SERVICES --frobnicate 1 -j ACCEPT', //           9 unknown option
    '-A KUBE-SERVICES -m comment --comment "unterminated', // 10
    '-A KUBE-SERVICES -j DNAT', //                            11 DNAT without destination
    '-A KUBE-SERVICES -p tcp -j ACCEPT ! ', //                12 dangling !
    '-Z KUBE-SERVICES', //                                    13 unsupported command
    '[1:x] -A KUBE-SERVICES -j ACCEPT', //                    14 bad counters
    '-A KUBE-SERVICES -d 10.0.0.1 -p tcp -m tcp --dport 80 -j ACCEPT', // 15 fine
    'COMMIT', //                                              16
    '-A KUBE-SERVICES -j ACCEPT', //                          17 outside a table
    '*filter', //                                             18 never committed
  ].join('\n');
  const p = parseIptablesSave(text);
  t.same(
    p.errors.map((e) => e.line),
    [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18],
  );
  const msg = (line: number) => p.errors.find((e) => e.line === line)!.message;
  t.match(msg(4), /built-in chain PREROUTING needs a policy/);
  t.match(msg(5), /--dport http: not a port/);
  t.match(msg(6), /chain 'KUBE-NOWHERE' is not declared/);
  t.match(msg(7), /prefix length 33/);
  t.match(msg(8), /-d 300\.1\.1\.1: not an IPv4 address/);
  t.match(msg(9), /unknown option '--frobnicate'/);
  t.match(msg(10), /unterminated quote/);
  t.match(msg(11), /DNAT without --to-destination/);
  t.match(msg(12), /'!' at the end/);
  t.match(msg(13), /unsupported command/);
  t.match(msg(14), /bad counters/);
  t.match(msg(17), /outside a table/);
  t.match(msg(18), /table 'filter' has no COMMIT/);
  const rules = tableRules(p, 'nat');
  t.equal(rules.length, 1, 'the good rule is kept');
  t.equal(rules[0].line, 15);
});

t.test('IPv6 dumps are flagged', async (t) => {
  t.ok(parseIptablesSave('# Generated by ip6tables-save v1.8.9\n*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n').ipv6);
  const p = parseIptablesSave('*nat\n:KUBE-SEP-A - [0:0]\n-A KUBE-SEP-A -p tcp -j DNAT --to-destination [fd00::1]:80\nCOMMIT\n');
  t.ok(p.ipv6);
  t.match(p.errors[0].message, /IPv6/);
  t.notOk(parseIptablesSave(fixture('seed-000-clusterip.save')).ipv6);
});

t.test('restore commands: -I inserts, -N/-X create and delete, a chain line flushes', async (t) => {
  const p = parseIptablesSave('*filter\n:C - [0:0]\n-A C -j ACCEPT\n-I C -j DROP\n-I C 2 -j RETURN\n-N D\n-X D\n:C - [0:0]\n-A C -j REJECT\nCOMMIT\n');
  t.same(p.errors, []);
  t.same(tableRules(p, 'filter').map((r) => r.target!.kind), ['REJECT']);
  const q = parseIptablesSave('*filter\n:C - [0:0]\n-A C -j ACCEPT\n-I C -j DROP\n-I C 2 -j RETURN\nCOMMIT\n');
  t.same(tableRules(q, 'filter').map((r) => r.target!.kind), ['DROP', 'RETURN', 'ACCEPT']);
  t.notOk(q.tables.get('filter')!.chains.has('D'));
});

t.test('splitArgs quotes like iptables-restore', async (t) => {
  t.same(splitArgs('-A X -m comment --comment "a \\"b\\" c" -j Y'), ['-A', 'X', '-m', 'comment', '--comment', 'a "b" c', '-j', 'Y']);
  t.same(splitArgs('  -A\tX  "" '), ['-A', 'X', '']);
  t.throws(() => splitArgs('--comment "open'), /unterminated quote/);
});

t.test('the seeds and fixtures parse without errors', async (t) => {
  for (const f of ['seed-000-clusterip.save', 'seed-000-nodeport.save', 'seed-004-nginx.save', 'pre-1.24-layout.save', 'golden-restore.txt', 'with-other-software.save']) {
    t.same(parseIptablesSave(fixture(f)).errors, [], f);
  }
});
