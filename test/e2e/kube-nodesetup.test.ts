/**
 * Node setup for real, inside a namespace of the test's own (never the
 * root namespace): the rules and routes that steer service traffic into the
 * TUN are in place after update(), follow a changed rule set, and undo()
 * leaves the namespace's routing exactly as it was.
 */
import t from 'tap';
import { NodeSetup } from '../../control/kube/nodesetup.ts';
import type { RuleSet } from '../../control/types.ts';
import { ip, netnsSkipReason, testPrefix, withNetns } from './helpers.ts';
import { nsSysctl } from '../../scripts/ns.ts';

const skip = netnsSkipReason({ tun: true });
if (skip) {
  t.plan(0, `node setup tests skipped: ${skip}`);
} else {
  t.test('node setup in a namespace: in place, kept in step, undone', async (t) => {
    const ns = `${testPrefix('kns')}`;
    withNetns(t, [ns]);
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    ip(['-n', ns, 'addr', 'add', '172.16.1.35/32', 'dev', 'lo']);
    ip(['-n', ns, 'tuntap', 'add', 'dev', 'tun0', 'mode', 'tun']);
    ip(['-n', ns, 'link', 'set', 'tun0', 'up']);
    nsSysctl(ns, { 'net.ipv4.ip_forward': 1 });
    const rulesBefore = ip(['-n', ns, 'rule']);
    const routesBefore = ip(['-n', ns, 'route', 'show', 'table', 'all']);
    const logs: string[] = [];
    const setup = new NodeSetup({ tun: 'tun0', dryRun: false, log: (m) => logs.push(m), netns: ns });
    const rs: RuleSet = {
      apiVersion: 'tunproxy.dev/v1',
      node: { addresses: ['172.16.1.35'], clusterCIDR: '10.64.1.0/24' },
      services: [{ namespace: 'd', name: 'a', clusterIP: '10.32.0.10', ports: [{ name: 'p', protocol: 'TCP', port: 80, nodePort: 30080 }] }],
    };
    setup.update(rs);
    t.same(logs, [], 'no command failed');
    const rules = ip(['-n', ns, 'rule']);
    t.match(rules, /7400:\s+from all iif tun0 goto 7499/);
    t.match(rules, /7450:\s+from all to 172\.16\.1\.35 ipproto tcp dport 30000-32767 lookup 7470/);
    t.match(rules, /7460:\s+from 10\.64\.1\.0\/24 ipproto udp lookup 7470/);
    t.match(rules, /7499:\s+from all lookup local/);
    t.notMatch(rules, /^0:\s+from all lookup local/m, 'the pref-0 local rule moved behind ours');
    t.match(ip(['-n', ns, 'route', 'get', '10.32.0.10']), /dev tun0/, 'a ClusterIP goes into the TUN');
    t.match(ip(['-n', ns, 'route', 'get', '172.16.1.35', 'ipproto', 'tcp', 'dport', '30080']), /dev tun0 table 7470/, 'a NodePort on the node address goes into the TUN');
    t.match(ip(['-n', ns, 'route', 'get', '172.16.1.35', 'ipproto', 'tcp', 'dport', '22']), /^local 172\.16\.1\.35 dev lo/, 'other ports on the node address stay local');
    t.match(ip(['-n', ns, 'route', 'get', '192.0.2.1', 'from', '10.64.1.7', 'iif', 'lo', 'ipproto', 'udp']), /dev tun0 table 7470/, "a pod's packet (to anywhere) goes into the TUN");

    setup.update({ ...rs, services: [{ ...rs.services[0], clusterIP: '10.32.0.11' }] });
    const main = ip(['-n', ns, 'route']);
    t.match(main, /10\.32\.0\.11 dev tun0/, 'the new ClusterIP is routed');
    t.notMatch(main, /10\.32\.0\.10 /, 'the old one is not');

    setup.undo();
    t.same(logs, [], 'undone without an error');
    t.equal(ip(['-n', ns, 'rule']), rulesBefore, 'the policy rules are as before');
    t.equal(ip(['-n', ns, 'route', 'show', 'table', 'all']), routesBefore, 'the routes are as before');
  });

  t.test('dual-stack node setup: the same in IPv6 (ip -6), the pods\' ICMPv6 kept out, undone', async (t) => {
    const ns = `${testPrefix('kns6')}`;
    withNetns(t, [ns]);
    nsSysctl(ns, { 'net.ipv6.conf.all.disable_ipv6': 0, 'net.ipv6.conf.default.disable_ipv6': 0, 'net.ipv6.conf.all.accept_dad': 0, 'net.ipv6.conf.default.accept_dad': 0 });
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    ip(['-n', ns, 'addr', 'add', '172.16.1.36/32', 'dev', 'lo']);
    ip(['-n', ns, 'addr', 'add', 'fd00:172:16:1::36/128', 'dev', 'lo', 'nodad']);
    ip(['-n', ns, 'tuntap', 'add', 'dev', 'tun0', 'mode', 'tun']);
    ip(['-n', ns, 'link', 'set', 'tun0', 'up']);
    nsSysctl(ns, { 'net.ipv4.ip_forward': 1, 'net.ipv6.conf.all.forwarding': 1 });
    const rulesBefore = ip(['-n', ns, 'rule']);
    const rules6Before = ip(['-n', ns, '-6', 'rule']);
    const routes6Before = ip(['-n', ns, '-6', 'route', 'show', 'table', 'all']);
    const logs: string[] = [];
    const setup = new NodeSetup({ tun: 'tun0', dryRun: false, log: (m) => logs.push(m), netns: ns });
    const rs: RuleSet = {
      apiVersion: 'tunproxy.dev/v1',
      node: { addresses: ['172.16.1.36', 'fd00:172:16:1::36'], clusterCIDR: '10.64.1.0/24,fd00:10:64:1::/64' },
      services: [
        {
          namespace: 'd',
          name: 'a',
          clusterIP: '10.32.0.20',
          clusterIPs: ['10.32.0.20', 'fd00:10:32::20'],
          ipFamilies: ['IPv4', 'IPv6'],
          ports: [{ name: 'p', protocol: 'TCP', port: 80, nodePort: 30080 }],
        },
      ],
    };
    setup.update(rs);
    t.same(logs, [], 'no command failed');
    t.match(ip(['-n', ns, 'rule']), /7460:\s+from 10\.64\.1\.0\/24 ipproto udp lookup 7470/, 'IPv4: the IPv4 half of the pod CIDR pair');
    const rules6 = ip(['-n', ns, '-6', 'rule']);
    t.match(rules6, /7400:\s+from all iif tun0 goto 7499/);
    t.match(rules6, /7450:\s+from all to fd00:172:16:1::36 ipproto tcp dport 30000-32767 lookup 7470/);
    t.match(rules6, /7460:\s+from fd00:10:64:1::\/64 ipproto tcp lookup 7470/);
    t.notMatch(rules6, /ipproto ipv6-icmp/, 'the pods\' ICMPv6 (neighbour discovery) stays out of the TUN');
    t.notMatch(rules6, /^0:\s+from all lookup local/m, 'the pref-0 local rule moved behind ours');
    t.match(ip(['-n', ns, 'route', 'get', 'fd00:10:32::20']), /dev tun0/, 'the IPv6 ClusterIP goes into the TUN');
    t.match(ip(['-n', ns, 'route', 'get', '10.32.0.20']), /dev tun0/, 'and the IPv4 one');
    t.match(ip(['-n', ns, '-6', 'route', 'get', 'fd00:172:16:1::36', 'ipproto', 'tcp', 'dport', '30080']), /dev tun0 table 7470/, 'an IPv6 NodePort goes into the TUN');
    t.match(ip(['-n', ns, '-6', 'route', 'get', 'fd00:172:16:1::36', 'ipproto', 'tcp', 'dport', '22']), /^local fd00:172:16:1::36 .*dev lo table local/, 'other ports on the node address stay local');
    setup.undo();
    t.same(logs, [], 'undone without an error');
    t.equal(ip(['-n', ns, 'rule']), rulesBefore, 'the IPv4 rules are as before');
    t.equal(ip(['-n', ns, '-6', 'rule']), rules6Before, 'the IPv6 rules are as before');
    t.equal(ip(['-n', ns, '-6', 'route', 'show', 'table', 'all']), routes6Before, 'the IPv6 routes are as before');
  });
}
