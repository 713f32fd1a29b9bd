import t from 'tap';
import { readFileSync } from 'node:fs';
import type { RuleSet } from '../../control/types.ts';
import { importIptables, IptablesImportError, PLACEHOLDER_REMOTE_ENDPOINT, softwareOf } from '../../control/iptables/importer.ts';
import { writeIptables } from '../../control/iptables/writer.ts';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/iptables/${name}`, import.meta.url), 'utf8');

t.test('seed 000, ClusterIP snapshot: kube-dns dns UDP 10.32.0.10:53 -> 10.64.1.7:53', async (t) => {
  const r = importIptables(fixture('seed-000-clusterip.save'), { nodeAddresses: ['172.16.1.35'] });
  t.same(r.ruleSet.node, { addresses: ['172.16.1.35'], clusterCIDR: '10.64.1.0/24' });
  const dns = r.ruleSet.services.find((s) => s.name === 'kube-dns')!;
  t.equal(dns.namespace, 'kube-system');
  t.equal(dns.clusterIP, '10.32.0.10');
  t.same(dns.ports, [{ name: 'dns', protocol: 'UDP', port: 53 }], 'the ports whose chains the seed does not show are left out, not rejected');
  t.same(dns.endpoints, [{ address: '10.64.1.7' }]);
  t.equal(r.ruleSet.services.find((s) => s.name === 'kubernetes'), undefined, 'default/kubernetes: its KUBE-SVC- chain is not in the seed');
  t.same(r.errors, []);
  // the chains the seed does not show are named, with the line that jumps there
  t.same(r.notUnderstood.map((n) => n.line), [26, 27, 29]);
  t.same(r.limits.filter((l) => /left out: a rule of its own chains/.test(l.reason)).map((l) => l.line), [26, 27, 29]);
  t.match(r.notUnderstood[0].reason, /jumps to KUBE-SVC-NPX46M4PTMTKRN6Y, which the dump does not define/);
  t.match(r.limits.map((l) => l.reason).join('\n'), /default\/kubernetes:https: left out: .*the dump does not define KUBE-SVC-NPX46M4PTMTKRN6Y/);
});

t.test('seed 000, NodePort snapshot: web-svc 10.32.0.159:8080 and NodePort 30080 -> 10.64.1.13:80', async (t) => {
  const r = importIptables(fixture('seed-000-nodeport.save'), { nodeAddresses: ['172.16.1.35'] });
  const web = r.ruleSet.services.find((s) => s.name === 'web-svc')!;
  t.same(r.ruleSet.services.map((s) => s.name), ['web-svc'], 'kube-dns and kubernetes: their chains are not in the seed');
  t.same(web, {
    namespace: 'default',
    name: 'web-svc',
    clusterIP: '10.32.0.159',
    ports: [{ name: 'nginx-svc-port', protocol: 'TCP', port: 8080, nodePort: 30080, targetPort: 80 }],
    endpoints: [{ address: '10.64.1.13' }],
  });
  t.equal(r.ruleSet.node.clusterCIDR, '10.64.1.0/24');
  t.equal(r.notUnderstood.length, 4, 'the four KUBE-SVC- chains the seed does not show');
  t.notOk(r.notUnderstood.some((n) => n.text.includes('30080')), 'the old NodePort masquerade rule is understood');
});

t.test('seed 004: nginx 10.110.199.45:80 -> 10.42.0.199:80, 10.42.0.200:80', async (t) => {
  const r = importIptables(fixture('seed-004-nginx.save'));
  t.same(r.ruleSet.services, [
    {
      namespace: 'default',
      name: 'nginx',
      clusterIP: '10.110.199.45',
      ports: [{ name: '80-80', protocol: 'TCP', port: 80 }],
      endpoints: [{ address: '10.42.0.199' }, { address: '10.42.0.200' }],
    },
  ]);
  t.match(r.limits.map((l) => l.reason).join('\n'), /default\/nginx:80-80: NodePort 32754 left out: the dump does not define KUBE-EXT-OVTWZ4GROBJZO4C5/);
  t.same(r.ruleSet.node, { addresses: [], clusterCIDR: '10.42.0.0/24' });
  t.match(r.warnings.join('\n'), /node's addresses are not in this dump .*give them with --node-address/);
  t.same(r.errors.map((e) => e.path), ['node.addresses'], 'not a valid rule set without a node address');
  t.match(r.errors[0].message, /--node-address/);
  t.match(r.warnings.join('\n'), /does not define KUBE-EXT-OVTWZ4GROBJZO4C5: its external traffic policy is unknown/);
  t.same(r.notUnderstood.map((n) => n.line), [27]);
});

t.test('kube-proxy\'s restore input: the golden rule set comes back as rules that write the same text', async (t) => {
  const golden = JSON.parse(fixture('golden-ruleset.json')) as RuleSet;
  const text = fixture('golden-restore.txt');
  const r = importIptables(text, { nodeAddresses: golden.node.addresses });
  t.same(r.notUnderstood, []);
  t.equal(writeIptables(r.ruleSet), text);
  const svc = (name: string) => r.ruleSet.services.find((s) => s.name === name)!;
  t.same(svc('nginx'), {
    namespace: 'default',
    name: 'nginx',
    clusterIP: '10.110.199.45',
    externalIPs: ['192.168.99.11'],
    loadBalancerIPs: ['100.64.0.10'],
    loadBalancerSourceRanges: ['203.0.113.0/25', '172.16.0.0/16'],
    sessionAffinity: 'ClientIP',
    sessionAffinityTimeoutSeconds: 600,
    externalTrafficPolicy: 'Local',
    ports: [{ name: '80-80', protocol: 'TCP', port: 80, nodePort: 32754 }],
    endpoints: [{ address: '10.64.1.20', nodeLocal: true }, { address: '10.42.7.21' }, { address: '10.42.7.22' }],
  });
  t.same(svc('kube-dns').endpoints, [
    { address: '10.64.1.7', ports: { dns: 53, 'dns-tcp': 53, metrics: 9153 } },
    { address: '10.64.1.8', ports: { dns: 53, 'dns-tcp': 53 } },
  ]);
  t.same(svc('node-local-dns').internalTrafficPolicy, 'Local');
  t.same(svc('node-local-dns').endpoints, [{ address: '10.64.1.40', nodeLocal: true }]);
  t.same(svc('local-elsewhere').endpoints, [{ address: PLACEHOLDER_REMOTE_ENDPOINT }], 'endpoints elsewhere, unnamed in the dump');
  t.same(svc('empty').externalIPs, ['192.168.99.13', '100.64.0.11'], 'without endpoints, LB IPs cannot be told from external IPs');
  t.same(svc('empty').endpoints, []);
  t.same(svc('remote-only').externalTrafficPolicy, 'Local');
  t.same(svc('remote-only').endpoints, [{ address: '10.42.7.30' }]);
  t.match(r.warnings.join('\n'), /prod\/local-elsewhere:grpc: has endpoints only on other nodes/);
});

t.test('real iptables-save -c output with docker and flannel: their rules are named, kube-proxy\'s imported', async (t) => {
  const golden = JSON.parse(fixture('golden-ruleset.json')) as RuleSet;
  const r = importIptables(fixture('with-other-software.save'), { nodeAddresses: ['172.16.1.35'] });
  t.equal(writeIptables(r.ruleSet), writeIptables(golden), 'the same rules as the golden rule set');
  const by = (s: string) => r.otherSoftware.filter((n) => n.text.includes(s));
  t.same(r.notUnderstood, [], 'other software does not make the import partial');
  t.same(r.errors, []);
  t.equal(r.otherSoftware.length, 14);
  t.ok(r.otherSoftware.every((n) => n.line > 0 && n.text.length > 0));
  t.same(by('-A FLANNEL-POSTRTG').map((n) => n.reason), Array(3).fill("chain FLANNEL-POSTRTG is flannel's, not kube-proxy's"));
  t.match(by('-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER')[0].reason, 'a rule of docker in the built-in chain PREROUTING (nat), jumping to DOCKER');
  t.match(by('-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE')[0].reason, 'a rule of other software in the built-in chain POSTROUTING (nat)');
  t.match(r.leftToKernel, /^left to the kernel: 14 rules of other software in chains .*DOCKER \(nat, 1, docker\).*FLANNEL-POSTRTG \(nat, 3, flannel\)/);
});

t.test('the pre-1.24 layout: KUBE-XLB-, KUBE-FW- with KUBE-MARK-DROP, NodePort masquerade in KUBE-NODEPORTS', async (t) => {
  const r = importIptables(fixture('pre-1.24-layout.save'), { nodeAddresses: ['192.168.0.2'] });
  t.same(r.notUnderstood, []);
  t.same(r.warnings, ["the dump's NodePorts (3001-3004) fall outside the default range 30000-32767: node.nodePortRange is 3001-32767 (--node-port-range sets it)"]);
  t.same(r.errors, [], 'valid: the NodePort range is taken from the dump');
  t.same(r.ruleSet, {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['192.168.0.2'], clusterCIDR: '10.0.0.0/8', nodePortRange: '3001-32767' },
    services: [
      {
        namespace: 'ns2', name: 'svc2', clusterIP: '172.30.0.42', loadBalancerIPs: ['1.2.3.4'], loadBalancerSourceRanges: ['203.0.113.0/25'],
        externalTrafficPolicy: 'Local', ports: [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3001 }], endpoints: [{ address: '10.180.0.2' }],
      },
      {
        namespace: 'ns3', name: 'svc3', clusterIP: '172.30.0.43', externalTrafficPolicy: 'Local',
        ports: [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3003 }], endpoints: [{ address: '10.180.0.3', nodeLocal: true }],
      },
      {
        namespace: 'ns4', name: 'svc4', clusterIP: '172.30.0.44',
        ports: [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3004 }], endpoints: [{ address: '10.180.0.4' }, { address: '10.180.0.5' }],
      },
    ],
  });
});

const base = (rules: string, filter = '') =>
  `*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-A - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n${rules}\nCOMMIT\n*filter\n:KUBE-NODEPORTS - [0:0]\n${filter}\nCOMMIT\n`;
const sep = (c: string, ep: string) => `-A ${c} -m comment --comment a/b:p -s ${ep.split(':')[0]} -j KUBE-MARK-MASQ\n-A ${c} -m comment --comment a/b:p -m tcp -p tcp -j DNAT --to-destination ${ep}`;

t.test('what it cannot turn into a rule set is listed with its line and why', async (t) => {
  const text = base(
    [
      '-A KUBE-SERVICES -m comment --comment "a/b:p cluster IP" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j KUBE-SVC-A',
      '-A KUBE-SVC-A -m comment --comment "a/b:p -> 10.0.0.1:80" -m statistic --mode random --probability 0.2 -j KUBE-SEP-A',
      '-A KUBE-SVC-A -m comment --comment "a/b:p -> 10.0.0.2:80" -j KUBE-SEP-B',
      '-A KUBE-SVC-A -m set --match-set x src -j KUBE-SEP-B',
      sep('KUBE-SEP-A', '10.0.0.1:80'),
      sep('KUBE-SEP-B', '10.0.0.2:80'),
    ].join('\n'),
    '-A KUBE-NODEPORTS -m comment --comment "a/b:p health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT',
  ) + '*nat\n:KUBE-SEP-STALE - [0:0]\n-A KUBE-SEP-STALE -j DNAT --to-destination 10.0.0.9:80\nCOMMIT\n';
  const r = importIptables(text);
  t.same(r.notUnderstood.map((n) => [n.line, n.reason]), [
    [11, "match module 'set' is not evaluated"],
    [23, 'KUBE-SEP-STALE is not reached from KUBE-SERVICES or KUBE-NODEPORTS (a stale chain?)'],
  ], 'the health check NodePort ACCEPT rule is kube-proxy\'s own: understood');
  t.match(r.warnings.join('\n'), /endpoint probabilities are not kube-proxy's equal shares/);
  t.same(r.ruleSet.services, [], 'a rule of its own chain not understood: the port is left out, never broader than the kernel');
  t.match(r.limits.map((l) => l.reason).join('\n'), /a\/b:p: left out: a rule of its own chains \(line 11\) is not understood/);
  t.equal(r.ruleSet.node.masqueradeMark, undefined, 'the default mark is left implicit');
});

t.test('a source range holding the node without node addresses: a warning says what to pass', async (t) => {
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.1.35'] },
    services: [{
      namespace: 'a', name: 'lb', clusterIP: '10.96.0.1', loadBalancerIPs: ['100.64.0.1'], loadBalancerSourceRanges: ['172.16.0.0/16'],
      ports: [{ name: 'p', protocol: 'TCP', port: 80 }], endpoints: [{ address: '10.0.0.1' }],
    }],
  };
  const text = writeIptables(rs);
  const without = importIptables(text);
  t.same(without.ruleSet.services[0].loadBalancerSourceRanges, ['172.16.0.0/16']);
  t.match(without.warnings.join('\n'), /a\/lb:p: its firewall chain admits the load-balancer IPs as sources .* give them with --node-address/);
  const withNode = importIptables(text, { nodeAddresses: ['172.16.1.35'] });
  t.equal(writeIptables(withNode.ruleSet), text);
  t.notMatch(withNode.warnings.join('\n'), /admits the load-balancer IPs/);
});

t.test('mark, masqueradeAll and the cluster CIDR come from the rules', async (t) => {
  const rs: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.1.35'], masqueradeAll: true, masqueradeMark: '0x1000', clusterCIDR: '10.64.0.0/16' },
    services: [{ namespace: 'a', name: 'b', clusterIP: '10.96.0.1', externalTrafficPolicy: 'Local', ports: [{ name: '', protocol: 'UDP', port: 53, nodePort: 30053 }], endpoints: [{ address: '10.64.0.5', nodeLocal: true }] }],
  };
  const r = importIptables(writeIptables(rs), { nodeAddresses: ['172.16.1.35'] });
  t.same(r.ruleSet.node, rs.node);
  t.same(r.ruleSet.services, rs.services);
});

t.test('refused: IPv6 inside an iptables dump, text without kube-proxy\'s chains', async (t) => {
  const v6 = '# Generated by ip6tables-save v1.8.9\n*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d fd00::10/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\nCOMMIT\n';
  t.throws(() => importIptables(v6, { family: 4 }), { name: 'IptablesImportError', message: /IPv6 in an iptables dump \(line 4\)/ });
  t.throws(() => importIptables('*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\n-A KUBE-SERVICES -d fd00::10/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\nCOMMIT\n'), { name: 'IptablesImportError', message: /IPv6 in an iptables dump \(line 4\)/ }, 'mixed families');
  t.doesNotThrow(() => importIptables(v6), 'an ip6tables-save dump is imported as IPv6');
  t.throws(() => importIptables('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n'), /no KUBE-SERVICES chain/);
  try {
    importIptables('garbage\n');
    t.fail('should throw');
  } catch (e) {
    t.ok(e instanceof IptablesImportError);
    t.match((e as Error).message, /line 1/);
  }
});

t.test('softwareOf names well-known software by chain prefix', async (t) => {
  t.equal(softwareOf('DOCKER-USER'), 'docker');
  t.equal(softwareOf('cali-FORWARD'), 'calico');
  t.equal(softwareOf('CILIUM_POST_nat'), 'cilium');
  t.equal(softwareOf('CNI-HOSTPORT-DNAT'), 'CNI plugins (portmap, bridge)');
  t.equal(softwareOf('KIND-MASQ-AGENT'), 'kind');
  t.equal(softwareOf('KUBE-SERVICES'), null);
});
