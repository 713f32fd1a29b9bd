import t from 'tap';
import { readFileSync } from 'node:fs';
import type { RuleSet } from '../../control/types.ts';
import { writeIptables, probabilityText, partialRestoreText, LARGE_CLUSTER_ENDPOINTS_THRESHOLD } from '../../control/iptables/writer.ts';

const fixture = (name: string) => new URL(`../fixtures/iptables/${name}`, import.meta.url);

/** table → chain → rules in order, and the declared chains */
function byChain(text: string): Map<string, { declared: Set<string>; rules: Map<string, string[]> }> {
  const out = new Map<string, { declared: Set<string>; rules: Map<string, string[]> }>();
  let cur: { declared: Set<string>; rules: Map<string, string[]> } | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      cur = { declared: new Set(), rules: new Map() };
      out.set(line.slice(1), cur);
    } else if (line.startsWith(':')) cur!.declared.add(line.split(' ')[0].slice(1));
    else if (line.startsWith('-A ')) {
      const chain = line.split(' ')[1];
      const list = cur!.rules.get(chain) ?? [];
      list.push(line);
      cur!.rules.set(chain, list);
    }
  }
  return out;
}

t.test('golden: a rule set with every feature gives the restore input kube-proxy writes', async (t) => {
  const rs = JSON.parse(readFileSync(fixture('golden-ruleset.json'), 'utf8')) as RuleSet;
  const expected = readFileSync(fixture('golden-restore.txt'), 'utf8');
  t.equal(writeIptables(rs), expected);
});

t.test('kube-proxy\'s own expectation (proxier_test.go TestOverallIPTablesRulesWithMultipleServices)', async (t) => {
  // The services and endpoints of that test; node IP 192.168.0.2, cluster CIDR 10.0.0.0/8.
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['192.168.0.2'], clusterCIDR: '10.0.0.0/8' },
    services: [
      { namespace: 'ns1', name: 'svc1', clusterIP: '172.30.0.41', ports: [{ name: 'p80', protocol: 'TCP', port: 80 }], endpoints: [{ address: '10.180.0.1' }] },
      {
        namespace: 'ns2', name: 'svc2', clusterIP: '172.30.0.42', externalTrafficPolicy: 'Local',
        ports: [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3001 }],
        loadBalancerIPs: ['1.2.3.4'], externalIPs: ['192.168.99.22'],
        endpoints: [{ address: '10.180.0.2' }],
      },
      { namespace: 'ns3', name: 'svc3', clusterIP: '172.30.0.43', ports: [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3003 }], endpoints: [{ address: '10.180.0.3' }] },
      {
        namespace: 'ns4', name: 'svc4', clusterIP: '172.30.0.44', externalIPs: ['192.168.99.33'],
        ports: [{ name: 'p80', protocol: 'TCP', port: 80, targetPort: 80 }],
        endpoints: [{ address: '10.180.0.4' }, { address: '10.180.0.5', nodeLocal: true }],
      },
      {
        namespace: 'ns5', name: 'svc5', clusterIP: '172.30.0.45', externalTrafficPolicy: 'Cluster',
        ports: [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3002 }],
        loadBalancerIPs: ['5.6.7.8'], loadBalancerSourceRanges: ['203.0.113.0/25'],
        endpoints: [{ address: '10.180.0.3' }],
      },
      { namespace: 'ns6', name: 'svc6', clusterIP: '172.30.0.46', ports: [{ name: 'p80', protocol: 'TCP', port: 80, targetPort: 80 }] },
    ],
  };
  // kube-proxy's expected output, per chain (its assertion compares chain by chain). Left out: the
  // health check node port rule and kubelet's KUBE-FIREWALL, which a rule set does not carry; and its
  // fake iptables lacks --random-fully.
  const filter: Record<string, string[]> = {
    'KUBE-SERVICES': ['-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT'],
    'KUBE-EXTERNAL-SERVICES': [
      '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP',
      '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP',
      '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP',
    ],
    'KUBE-FORWARD': [
      '-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP',
      '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
      '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    ],
    'KUBE-PROXY-FIREWALL': ['-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP'],
  };
  const nat: Record<string, string[]> = {
    'KUBE-NODEPORTS': [
      '-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT',
      '-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK',
      '-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C',
    ],
    'KUBE-SERVICES': [
      '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O',
      '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT',
      '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT',
      '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT',
      '-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK',
      '-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK',
      '-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK',
      '-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C',
      '-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C',
      '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
    ],
    'KUBE-EXT-4SW47YFZTEDKD3PK': [
      '-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ',
      '-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK',
    ],
    'KUBE-EXT-GNZBNJ2PO5MGZ6GT': [
      '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT',
      '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
      '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT',
    ],
    'KUBE-EXT-NUKIZ6OKUXPJNT4C': [
      '-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ',
      '-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C',
    ],
    'KUBE-EXT-X27LE4BHSL4DOUIK': [
      '-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ',
      '-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK',
    ],
    'KUBE-FW-NUKIZ6OKUXPJNT4C': [
      '-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C',
      '-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"',
    ],
    'KUBE-MARK-MASQ': ['-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000'],
    'KUBE-POSTROUTING': [
      '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
      '-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000',
      '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE',
    ],
    'KUBE-SEP-C6EBXVWJJZMIWKLZ': [
      '-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ',
      '-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80',
    ],
    'KUBE-SEP-I77PXRDZVX7PMWMN': [
      '-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ',
      '-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80',
    ],
    'KUBE-SEP-OYPFS5VJICHGATKP': [
      '-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ',
      '-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80',
    ],
    'KUBE-SEP-RS4RBKLTHTF2IUXJ': [
      '-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ',
      '-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80',
    ],
    'KUBE-SEP-SXIVWICOYRO3J4NJ': [
      '-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ',
      '-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80',
    ],
    'KUBE-SEP-UKSFD7AGPMPPLUHC': [
      '-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ',
      '-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80',
    ],
    'KUBE-SVC-4SW47YFZTEDKD3PK': [
      '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
      '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC',
      '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ',
    ],
    'KUBE-SVC-GNZBNJ2PO5MGZ6GT': [
      '-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
      '-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ',
    ],
    'KUBE-SVC-NUKIZ6OKUXPJNT4C': [
      '-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
      '-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN',
    ],
    'KUBE-SVC-X27LE4BHSL4DOUIK': [
      '-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
      '-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP',
    ],
    'KUBE-SVC-XPGD46QRK7WJZT7O': [
      '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
      '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ',
    ],
  };
  const got = byChain(writeIptables(rs, { withHooks: false }).replace(' -j MASQUERADE --random-fully', ' -j MASQUERADE'));
  for (const [table, want] of [['filter', filter], ['nat', nat]] as const) {
    const g = got.get(table)!;
    t.same([...g.declared].sort(), Object.keys(want).concat(table === 'filter' ? ['KUBE-NODEPORTS'] : []).sort(), `${table} chains declared`);
    t.same(Object.fromEntries(g.rules), want, `${table} rules, chain by chain`);
  }
});

t.test('without hooks: only kube-proxy\'s own chains, as in its restore input', async (t) => {
  const rs = JSON.parse(readFileSync(fixture('golden-ruleset.json'), 'utf8')) as RuleSet;
  const text = writeIptables(rs, { withHooks: false });
  t.notMatch(text, /^:(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) /m);
  t.notMatch(text, /^-A (INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) /m);
  t.equal(text, writeIptables(rs).split('\n').filter((l) => !/^(:|-A )(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) /.test(l)).join('\n'));
});

t.test('masqueradeAll, no cluster CIDR, another mark', async (t) => {
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.0.1'], masqueradeAll: true, masqueradeMark: '0x1000', clusterCIDR: '10.64.0.0/16' },
    services: [{ namespace: 'a', name: 'b', clusterIP: '10.96.0.1', ports: [{ name: 'x', protocol: 'TCP', port: 80 }], endpoints: [{ address: '10.64.0.2' }] }],
  };
  const text = writeIptables(rs, { withHooks: false });
  t.match(text, '-A KUBE-SVC-');
  t.match(text, '-m comment --comment "a/b:x cluster IP" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j KUBE-MARK-MASQ\n');
  t.notMatch(text, '! -s 10.64.0.0/16');
  t.match(text, '-A KUBE-MARK-MASQ -j MARK --or-mark 0x1000\n');
  t.match(text, '-A KUBE-POSTROUTING -m mark ! --mark 0x1000/0x1000 -j RETURN\n');
  t.match(text, '-m mark --mark 0x1000/0x1000 -j ACCEPT\n');
  // no cluster CIDR and no masqueradeAll: no masquerade rule for the ClusterIP at all
  const plain = writeIptables({ ...rs, node: { addresses: ['172.16.0.1'] } }, { withHooks: false });
  t.notMatch(plain, /cluster IP" .* -j KUBE-MARK-MASQ/);
});

t.test('large cluster mode leaves the comments off endpoint rules, as kube-proxy past 1000 endpoints', async (t) => {
  const endpoints = Array.from({ length: LARGE_CLUSTER_ENDPOINTS_THRESHOLD + 1 }, (_, i) => ({ address: `10.64.${i >> 8}.${i & 255}` }));
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.0.1'] },
    services: [{ namespace: 'a', name: 'big', clusterIP: '10.96.0.1', sessionAffinity: 'ClientIP', ports: [{ name: '', protocol: 'TCP', port: 80 }], endpoints }],
  };
  const text = writeIptables(rs, { withHooks: false });
  t.match(text, /\n-A KUBE-SVC-\S+ -m recent --name KUBE-SEP-\S+ --rcheck --seconds 10800 --reap -j KUBE-SEP-/);
  t.match(text, /\n-A KUBE-SVC-\S+ -m statistic --mode random --probability 0\.0009990010 -j KUBE-SEP-/);
  t.match(text, /\n-A KUBE-SEP-\S+ -s 10\.64\.0\.0 -j KUBE-MARK-MASQ\n/);
  t.match(text, /\n-A KUBE-SEP-\S+ -m recent --name KUBE-SEP-\S+ --set -m tcp -p tcp -j DNAT --to-destination 10\.64\.0\.0:80\n/);
  t.match(text, '-m comment --comment "a/big cluster IP"');
  t.notMatch(writeIptables(rs, { withHooks: false, largeClusterMode: false }), /\n-A KUBE-SEP-\S+ -s /);
});

t.test('probabilities: Go\'s %0.10f of 1/n, ties to even', async (t) => {
  t.equal(probabilityText(2), '0.5000000000');
  t.equal(probabilityText(3), '0.3333333333');
  t.equal(probabilityText(6), '0.1666666667');
  t.equal(probabilityText(7), '0.1428571429');
  t.equal(probabilityText(1000), '0.0010000000');
  t.equal(probabilityText(2048), '0.0004882812'); // 0.00048828125: an exact tie, rounded to even
  t.equal(probabilityText(10240), '0.0000976563'); // 1/10240 is not exact in binary: just above the tie
  t.equal(probabilityText(4096), '0.0002441406'); // 0.000244140625: below half
});

t.test('headless services (no ClusterIP) get no rules, as kube-proxy skips them', async (t) => {
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.0.1'] },
    services: [{ namespace: 'a', name: 'headless', clusterIP: 'None', ports: [{ name: 'x', protocol: 'TCP', port: 80, nodePort: 30000 }], endpoints: [{ address: '10.64.0.2' }] }],
  };
  t.notMatch(writeIptables(rs), 'a/headless');
});

t.test('partialRestoreText: kube-proxy\'s partial sync after one service is added', async (t) => {
  const rs = JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
  const extra = { namespace: 'extra', name: 'added', clusterIP: '10.32.9.9', ports: [{ name: 'p', protocol: 'TCP' as const, port: 81, targetPort: 8081 }], endpoints: [{ address: '10.64.9.1' }, { address: '10.64.9.2' }] };
  const before = writeIptables(rs);
  const text = partialRestoreText(before, writeIptables({ ...rs, services: [...rs.services, extra] }, { withHooks: false }));
  const lines = text.trimEnd().split('\n');
  t.same([lines[0], lines.includes('COMMIT'), lines.at(-1)], ['*filter', true, 'COMMIT']);
  t.ok(lines.includes(':KUBE-SERVICES - [0:0]'), 'KUBE-SERVICES is written whole (its declaration flushes it)');
  t.ok(lines.some((l) => l.startsWith('-A KUBE-SERVICES') && l.includes('10.32.9.9')), 'with the new ClusterIP');
  t.equal(lines.filter((l) => /^:KUBE-(SVC|SEP)-/.test(l)).length, 3, 'the new service\'s SVC chain and its two SEP chains, no other');
  t.notOk(lines.some((l) => /^-A (INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) /.test(l)), 'built-in chains untouched');
});
