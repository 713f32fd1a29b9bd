/**
 * kube-proxy's rules from v1.10 to today, as its own proxier_test.go expects them in each era
 * (fixtures written from those expectations): every kube-proxy rule understood, the output a valid
 * rule set, what tunproxy serves narrower than the kernel reported with its line.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { importIptables, LOCALHOST_NODEPORTS_LIMIT } from '../../control/iptables/importer.ts';
import { validateRuleSet } from '../../control/validate.ts';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/iptables/${name}`, import.meta.url), 'utf8');
const svc = (r: ReturnType<typeof importIptables>, name: string) => r.ruleSet.services.find((s) => `${s.namespace}/${s.name}` === name);

t.test('every fixture dump imports to a rule set the validator accepts, or says why not', async (t) => {
  for (const [name, node] of [
    ['kube-proxy-v1.10.save', '192.168.0.2'],
    ['kube-proxy-v1.23.save', '192.168.0.2'],
    ['kube-proxy-v1.29.save', '192.168.0.2'],
    ['pre-1.24-layout.save', '192.168.0.2'],
    ['conflicts.save', null],
    ['with-other-software.save', '172.16.1.35'],
    ['golden-restore.txt', '172.16.1.35'],
    ['seed-000-clusterip.save', '172.16.1.35'],
    ['seed-000-nodeport.save', '172.16.1.35'],
    ['seed-004-nginx.save', '10.0.0.4'],
  ] as const) {
    const r = importIptables(fixture(name), node ? { nodeAddresses: [node] } : {});
    t.same(r.errors, [], `${name}: valid`);
    t.ok(validateRuleSet(r.ruleSet).ok, `${name}: the validator agrees`);
  }
  const without = importIptables(fixture('kube-proxy-v1.29.save'));
  t.same(without.errors.map((e) => e.path), ['node.addresses'], 'no node address given nor in the dump: not valid');
  t.match(without.errors[0].message, /--node-address/, 'the error names the flag');
});

t.test('v1.10: physdev/addrtype guarded external IPs are left out (narrower), masquerade in KUBE-SERVICES read', async (t) => {
  const r = importIptables(fixture('kube-proxy-v1.10.save'), { nodeAddresses: ['192.168.0.2'] });
  t.same(r.notUnderstood, [], 'every kube-proxy rule understood');
  t.same(r.otherSoftware, []);
  t.same(r.ruleSet.node, { addresses: ['192.168.0.2'], clusterCIDR: '10.244.0.0/16' });
  const s1 = svc(r, 'ns1/svc1')!;
  t.equal(s1.externalIPs, undefined, 'the external IP the kernel serves only for unbridged, non-local sources is not imported');
  t.same(s1.endpoints, [{ address: '10.244.1.5' }, { address: '10.244.2.6' }]);
  t.same(s1.ports, [{ name: 'p80', protocol: 'TCP', port: 80, targetPort: 8080 }]);
  t.same(svc(r, 'ns3/svc3')!.ports, [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 30003 }]);
  t.same(svc(r, 'ns6/svc6')!.endpoints, [], 'REJECT for no endpoints');
  const lim = r.limits.map((l) => `${l.line}: ${l.reason}`).join('\n');
  t.match(lim, /42: ns1\/svc1:p80: the kernel sends 192\.168\.99\.11:80\/tcp to KUBE-SVC-XPGD46QRK7WJZT7O only for packets with -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL/);
  t.match(lim, /43: ns1\/svc1:p80: 192\.168\.99\.11:80\/tcp is served by this rule only when 192\.168\.99\.11 is a node address/);
  // the external IP a node address: the --dst-type LOCAL rule serves it for every source
  const local = importIptables(fixture('kube-proxy-v1.10.save'), { nodeAddresses: ['192.168.0.2', '192.168.99.11'] });
  t.same(local.ruleSet.services.find((s) => s.name === 'svc1')!.externalIPs, ['192.168.99.11'], 'the physdev rule sends its packets to the chain the --dst-type LOCAL rule sends all others to: served for every source');
  t.notMatch(local.limits.map((l) => l.reason).join('\n'), /192\.168\.99\.11/);
});

t.test('v1.23: masquerade in KUBE-SVC-, external IP masquerade off-cluster, KUBE-XLB-, --random-fully, health check, INVALID drop', async (t) => {
  const r = importIptables(fixture('kube-proxy-v1.23.save'), { nodeAddresses: ['192.168.0.2'] });
  t.same(r.notUnderstood, [], 'every kube-proxy rule understood (the ! -s <cluster CIDR> external IP rule, the health check ACCEPT, ctstate INVALID DROP)');
  t.same(r.errors, []);
  t.same(r.ruleSet.node, { addresses: ['192.168.0.2'], clusterCIDR: '10.0.0.0/8', nodePortRange: '3001-32767' });
  t.same(svc(r, 'ns1/svc1')!.externalIPs, ['192.168.99.11']);
  t.same(svc(r, 'ns2/svc2')!.ports, [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3001 }]);
  t.same(svc(r, 'ns2/svc2')!.endpoints, [{ address: '10.180.0.2' }, { address: '10.180.2.1' }]);
  const s3 = svc(r, 'ns3/svc3')!;
  t.equal(s3.externalTrafficPolicy, 'Local');
  t.same(s3.loadBalancerIPs, ['1.2.3.4']);
  t.same(s3.endpoints, [{ address: '10.180.0.3', nodeLocal: true }, { address: '10.180.2.3' }]);
  t.same(svc(r, 'ns6/svc6')!.ports, [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3006 }]);
  t.match(r.limits.map((l) => l.reason).join('\n'), /does not masquerade pods of 10\.0\.0\.0\/8 reaching 192\.168\.99\.11:80/);
  t.match(r.warnings.join('\n'), /NodePorts \(3001-3006\) fall outside the default range/);
});

t.test('v1.29+: KUBE-EXT-/KUBE-FW-, nfacct counters, localhost NodePorts reported as not served', async (t) => {
  const r = importIptables(fixture('kube-proxy-v1.29.save'), { nodeAddresses: ['192.168.0.2'] });
  t.same(r.notUnderstood, [], 'nfacct (KUBE-FORWARD, localhost NodePorts) and the health check rule understood');
  t.same(r.errors, []);
  t.equal(r.ruleSet.node.nodePortRange, '3001-32767', "kube-proxy's test NodePorts 3001-3003: the range comes from the dump");
  const lh = r.limits.filter((l) => l.reason.startsWith(LOCALHOST_NODEPORTS_LIMIT));
  t.equal(lh.length, 1);
  t.match(lh[0].reason, /3 rules with -d 127\.0\.0\.0\/8 in KUBE-NODEPORTS, lines 69, 71, 73/);
  const s5 = svc(r, 'ns5/svc5')!;
  t.same(s5.loadBalancerIPs, ['5.6.7.8']);
  t.same(s5.loadBalancerSourceRanges, ['203.0.113.0/25']);
  t.equal(s5.sessionAffinity, 'ClientIP');
  t.same(s5.ports, [{ name: 'p80', protocol: 'TCP', port: 80, nodePort: 3002 }]);
  const s2 = svc(r, 'ns2/svc2')!;
  t.equal(s2.externalTrafficPolicy, 'Local');
  t.same(s2.externalIPs, ['192.168.99.22']);
  t.same(s2.loadBalancerIPs, ['1.2.3.4']);
  // a custom range wins, and NodePorts outside it make the import invalid (exit 1 on the command line)
  const narrow = importIptables(fixture('kube-proxy-v1.29.save'), { nodeAddresses: ['192.168.0.2'], nodePortRange: '30000-32767' });
  t.equal(narrow.ruleSet.node.nodePortRange, '30000-32767');
  t.ok(narrow.errors.some((e) => /nodePort/.test(e.path) && /outside 30000-32767/.test(e.message)), 'NodePorts outside --node-port-range are errors');
});

t.test('conflicts resolved as the kernel resolves them: the first rule in chain order wins, the others reported with their lines', async (t) => {
  const r = importIptables(fixture('conflicts.save'));
  t.same(r.errors, []);
  t.equal(r.nodeAddressesFrom, 'dump');
  t.same(r.ruleSet.node.addresses, ['192.168.0.2'], 'from -d 192.168.0.2 -j KUBE-NODEPORTS');
  t.ok(svc(r, 'ns1/a'), 'a keeps 172.30.0.50:80');
  t.equal(svc(r, 'ns1/b'), undefined, "b's only port is shadowed: left out");
  t.equal(svc(r, 'ns1/c')!.ports[0].nodePort, 3005);
  t.equal(svc(r, 'ns1/d')!.ports[0].nodePort, undefined, "d's NodePort is c's");
  t.same(svc(r, 'ns1/e')!.externalIPs, ['192.168.99.50']);
  t.equal(svc(r, 'ns1/f')!.externalIPs, undefined);
  const shadowed = r.limits.filter((l) => l.reason.startsWith('shadowed:')).map((l) => [l.line, l.reason]);
  t.same(shadowed, [
    [37, 'shadowed: NodePort 3005/tcp of ns1/d:p80 (line 37) is taken first by ns1/c:p80 (line 36), as in the kernel: its NodePort is left out'],
    [39, 'shadowed: 172.30.0.50:80/tcp (ClusterIP) of ns1/b:p80 (line 39) is taken first by ns1/a:p80 (line 38), as in the kernel: the port is left out'],
    [45, 'shadowed: 192.168.99.50:80/tcp (external IP) of ns1/f:p80 (line 45) is taken first by ns1/e:p80 (line 43), as in the kernel: 192.168.99.50 is left out of the service (all its ports)'],
  ]);
});

t.test("other software's rules: left to the kernel in a section of their own, not a partial import", async (t) => {
  const r = importIptables(fixture('with-other-software.save'), { nodeAddresses: ['172.16.1.35'] });
  t.same(r.notUnderstood, []);
  t.ok(r.otherSoftware.length > 0);
  t.match(r.leftToKernel, /^left to the kernel: \d+ rules of other software in chains /);
  t.match(r.warnings.join('\n'), /of other software masquerade in the nat table .*the kernel still applies them/);
});
