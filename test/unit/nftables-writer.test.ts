/**
 * kube-proxy's nftables-mode transaction: chain names hashed as kube-proxy
 * hashes them (its own test expectations), the verdict-map dispatch, the
 * numgen endpoint choice, DNAT and masquerade rules, and the incremental
 * add-one-service transaction.
 */
import t from 'tap';
import type { RuleSet } from '../../control/types.ts';
import {
  hashAndTruncate,
  masqueradeMarkText,
  writeNftables,
  writeNftablesServiceAdd,
} from '../../control/nftables/writer.ts';

const rs: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { addresses: ['192.168.0.2'], clusterCIDR: '10.0.0.0/8' },
  services: [
    {
      namespace: 'ns1',
      name: 'svc1',
      clusterIP: '172.30.0.41',
      ports: [{ name: 'p80', protocol: 'TCP', port: 80, targetPort: 80 }],
      endpoints: [{ address: '10.180.0.1' }],
    },
    {
      namespace: 'ns2',
      name: 'svc2',
      clusterIP: '172.30.0.42',
      ports: [{ name: 'p53', protocol: 'UDP', port: 53, targetPort: 5353, nodePort: 3001 }],
      endpoints: [{ address: '10.180.0.2' }, { address: '10.180.0.3' }, { address: '10.180.0.4' }],
    },
    {
      namespace: 'ns3',
      name: 'gone',
      clusterIP: '172.30.0.43',
      ports: [{ name: 'p80', protocol: 'TCP', port: 80 }],
      endpoints: [],
    },
  ],
};

t.test('chain-name hashes are kube-proxy\'s (pkg/proxy/nftables proxier_test.go)', async (t) => {
  t.equal(hashAndTruncate('ns1/svc1/tcp/p80'), 'ULMVA6XW-ns1/svc1/tcp/p80');
  t.equal(hashAndTruncate('ns1/svc1/tcp/p80__10.180.0.1/80'), '5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80');
  const long = 'a'.repeat(300);
  const h = hashAndTruncate(long);
  t.equal(h.length, 240, 'truncated to chainNameBaseLengthMax');
  t.ok(h.endsWith('...'));
});

t.test('masquerade mark is printed like Go\'s %#08x', async (t) => {
  t.equal(masqueradeMarkText('0x4000'), '0x004000');
  t.equal(masqueradeMarkText('16384'), '0x004000');
  t.throws(() => masqueradeMarkText('zero'), /masqueradeMark "zero"/);
});

t.test('full transaction', async (t) => {
  const text = writeNftables(rs);
  const lines = text.trimEnd().split('\n');
  t.equal(lines[0], 'add table ip kube-proxy { comment "rules for kube-proxy" ; }');
  t.ok(lines.includes('add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }'));
  t.ok(lines.includes('add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }'));
  t.ok(lines.includes('add rule ip kube-proxy nat-prerouting jump services'));
  t.ok(lines.includes('add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips'));
  t.ok(lines.includes('add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports'));
  t.ok(lines.includes('add rule ip kube-proxy masquerading masquerade fully-random'));
  t.ok(lines.includes('add element ip kube-proxy nodeport-ips { 192.168.0.2 }'));
  // svc1: one endpoint, masquerade off-cluster sources, DNAT
  t.ok(lines.includes('add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }'));
  t.ok(lines.includes('add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade'));
  t.ok(lines.includes('add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }'));
  t.ok(lines.includes('add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade'));
  t.ok(lines.includes('add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80'));
  // svc2: three endpoints in one numgen vmap, NodePort through the external chain
  const numgen = lines.find((l) => l.includes('ns2/svc2/udp/p53 numgen'));
  t.match(numgen, /numgen random mod 3 vmap \{ 0 : goto endpoint-\S+__10\.180\.0\.2\/5353 , 1 : goto endpoint-\S+__10\.180\.0\.3\/5353 , 2 : goto endpoint-\S+__10\.180\.0\.4\/5353 \}$/);
  const np = lines.find((l) => l.startsWith('add element ip kube-proxy service-nodeports'));
  t.match(np, /^add element ip kube-proxy service-nodeports \{ udp \. 3001 : goto external-\S+-ns2\/svc2\/udp\/p53 \}$/);
  t.ok(lines.some((l) => /^add rule ip kube-proxy external-\S+ns2\/svc2\/udp\/p53 jump mark-for-masquerade$/.test(l)));
  // no endpoints: REJECT through the no-endpoint-services map, no service chain
  t.ok(lines.includes('add element ip kube-proxy no-endpoint-services { 172.30.0.43 . tcp . 80 comment "ns3/gone:p80" : goto reject-chain }'));
  t.notOk(lines.some((l) => l.includes('ns3/gone/tcp/p80') && l.startsWith('add chain')), 'no chain for a service without endpoints');
  // every chain a rule or an element refers to is declared before it is used
  const declared = new Set<string>();
  for (const l of lines) {
    const m = /^add chain ip kube-proxy (\S+)/.exec(l);
    if (m) declared.add(m[1]);
    for (const ref of l.matchAll(/(?:goto|jump) ([\w./-]+)/g)) if (!declared.has(ref[1])) t.fail(`${ref[1]} is used before it is declared`);
  }
  t.ok(declared.size > 10, 'chains declared');
});

t.test('adding one service: only its chains, rules and map elements', async (t) => {
  const svc = {
    namespace: 'ns4',
    name: 'new',
    clusterIP: '172.30.0.44',
    ports: [{ name: 'p', protocol: 'UDP' as const, port: 53, targetPort: 5353 }],
    endpoints: [{ address: '10.180.0.9' }, { address: '10.180.0.10' }],
  };
  const lines = writeNftablesServiceAdd(rs, svc).trimEnd().split('\n');
  t.notOk(lines.some((l) => /table|flush map|nat-prerouting/.test(l)), 'nothing global');
  t.equal(lines.filter((l) => l.startsWith('add chain')).length, 3, 'service chain + 2 endpoint chains');
  t.equal(lines.filter((l) => l.startsWith('add element')).length, 1);
  t.match(lines.find((l) => l.startsWith('add element')), /service-ips \{ 172\.30\.0\.44 \. udp \. 53 : goto service-\S+-ns4\/new\/udp\/p \}/);
  t.ok(lines.some((l) => l.includes('dnat to 10.180.0.10:5353')));
});
