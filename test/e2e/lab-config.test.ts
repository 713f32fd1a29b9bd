/**
 * What the lab derives from a rule set, and the pod server's DNS answers, as
 * pure functions (no namespaces, no root needed).
 */
import t from 'tap';
import type { RuleSet } from '../../control/types.ts';
import { masqueradeAddressOf, podListens, podNamespace } from '../../scripts/lab.ts';
import { dnsAnswer, formatListen, parseListen } from '../../scripts/pod-server.ts';

const base = (node: RuleSet['node'], services: RuleSet['services'] = []): RuleSet => ({ apiVersion: 'tunproxy.dev/v1', node, services });

t.test('the masquerade address: explicit, else the first node address in clusterCIDR, else the first', async (t) => {
  t.equal(masqueradeAddressOf(base({ addresses: ['192.168.77.1', '10.64.1.1'], masqueradeAddress: '10.64.9.9' })), '10.64.9.9');
  t.equal(masqueradeAddressOf(base({ addresses: ['192.168.77.1', '10.64.1.1'], clusterCIDR: '10.64.0.0/16' })), '10.64.1.1');
  t.equal(masqueradeAddressOf(base({ addresses: ['192.168.77.1', '10.64.1.1'], clusterCIDR: '10.99.0.0/16' })), '192.168.77.1');
  t.equal(masqueradeAddressOf(base({ addresses: ['192.168.77.1'] })), '192.168.77.1');
});

t.test('pod servers per endpoint address, from the service ports and the endpoint ports', async (t) => {
  const rs = base({ addresses: ['192.168.77.1'] }, [
    {
      namespace: 'kube-system',
      name: 'kube-dns',
      clusterIP: '10.96.0.10',
      ports: [
        { name: 'dns', protocol: 'UDP', port: 53, targetPort: 53 },
        { name: 'dns-tcp', protocol: 'TCP', port: 53, targetPort: 53 },
        { name: 'metrics', protocol: 'TCP', port: 9153, targetPort: 'metrics' },
      ],
      endpoints: [{ address: '10.64.1.5', ports: { dns: 5353, 'dns-tcp': 5353, metrics: 9153 } }, { address: '10.64.1.6' }],
    },
    {
      namespace: 'default',
      name: 'echo',
      clusterIP: '10.96.0.20',
      ports: [
        { name: 'echo', protocol: 'UDP', port: 7 },
        { name: 'sctp', protocol: 'SCTP', port: 9 },
      ],
      endpoints: [{ address: '10.64.1.6' }],
    },
  ]);
  const l = podListens(rs);
  t.same([...l.keys()], ['10.64.1.5', '10.64.1.6']);
  t.same(l.get('10.64.1.5'), [
    { protocol: 'UDP', port: 5353, kind: 'dns' },
    { protocol: 'TCP', port: 5353, kind: 'http' },
    { protocol: 'TCP', port: 9153, kind: 'http' },
  ], 'endpoint ports by port name win over targetPort');
  t.same(l.get('10.64.1.6'), [
    { protocol: 'UDP', port: 53, kind: 'dns' },
    { protocol: 'TCP', port: 53, kind: 'http' },
    { protocol: 'UDP', port: 7, kind: 'echo' },
  ], 'numeric targetPort, else the port; a named targetPort without endpoint ports and SCTP are left out');
  t.equal(podNamespace('tp-demo', '10.64.1.13'), 'tp-demo-pod-10-64-1-13');
  t.throws(() => podListens(base({ addresses: ['1.1.1.1'] }, [{ namespace: 'a', name: 'b', ports: [], endpoints: [{ address: '10.64.1' }] }])), {
    message: 'lab: endpoint address of a/b "10.64.1" is not an IPv4 address',
  });
});

t.test('--listen specs', async (t) => {
  t.same(parseListen('tcp:80'), { protocol: 'TCP', port: 80, kind: 'http' });
  t.same(parseListen('udp:53:dns'), { protocol: 'UDP', port: 53, kind: 'dns' });
  t.same(parseListen('udp:5000'), { protocol: 'UDP', port: 5000, kind: 'echo' });
  t.equal(formatListen(parseListen('udp:7:raw')), 'udp:7:raw');
  t.throws(() => parseListen('udp:70000'), /--listen udp:70000: expected tcp:PORT or udp:PORT/);
  t.throws(() => parseListen('tcp:80:dns'), /TCP ports serve http/);
});

t.test('DNS answers, byte for byte', async (t) => {
  // id 0x1234, RD, one question: a.b A IN
  const query = new Uint8Array([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 1, 0x62, 0, 0, 1, 0, 1]);
  const a = dnsAnswer(query, '10.64.1.13', '10.64.1.13:53', '10.64.1.1:40000');
  t.same([...a!], [
    0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, // QR RD RA, 1 question, 1 answer
    1, 0x61, 1, 0x62, 0, 0, 1, 0, 1, // the question again
    0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 64, 1, 13, // a.b A IN TTL 0 10.64.1.13
  ]);
  const txtQuery = new Uint8Array(query);
  txtQuery[18] = 16; // TXT
  const txt = Buffer.from(dnsAnswer(txtQuery, '10.64.1.13', '10.64.1.13:53', '10.64.1.1:40000')!);
  t.equal(txt.readUInt16BE(6), 1, 'one TXT answer');
  const text = 'endpoint=10.64.1.13:53 client=10.64.1.1:40000';
  t.equal(txt.readUInt16BE(query.length + 10), text.length + 1, 'RDLENGTH = the string and its length byte');
  t.equal(txt[query.length + 12], text.length, 'the character-string length');
  t.match(txt.toString('latin1'), /endpoint=10\.64\.1\.13:53 client=10\.64\.1\.1:40000$/, 'TXT names the endpoint and the client it saw');
  const aaaa = new Uint8Array(query);
  aaaa[18] = 28;
  t.same([...dnsAnswer(aaaa, '10.64.1.13', 'e', 'c')!.subarray(2, 8)], [0x81, 0x80, 0, 1, 0, 0], 'AAAA: NOERROR, no answer');
  const broken = new Uint8Array([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, 0x61]);
  t.same([...dnsAnswer(broken, '10.64.1.13', 'e', 'c')!], [0x12, 0x34, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0], 'a cut question: FORMERR');
  t.equal(dnsAnswer(new Uint8Array(5), '10.64.1.13', 'e', 'c'), null, 'shorter than a header: no answer');
});
