import t from 'tap';
import {
  base32,
  portProtoHash,
  clusterPolicyChain,
  localPolicyChain,
  externalChain,
  firewallChain,
  endpointChain,
  isServiceChainName,
} from '../../control/iptables/hash.ts';

t.test('base32 is RFC 4648 (standard alphabet, test vectors of section 10, without padding)', async (t) => {
  const enc = (s: string) => base32(new TextEncoder().encode(s));
  t.equal(enc(''), '');
  t.equal(enc('f'), 'MY');
  t.equal(enc('fo'), 'MZXQ');
  t.equal(enc('foo'), 'MZXW6');
  t.equal(enc('foob'), 'MZXW6YQ');
  t.equal(enc('fooba'), 'MZXW6YTB');
  t.equal(enc('foobar'), 'MZXW6YTBOI');
});

t.test('service chains of the seeds', async (t) => {
  // seeds/000: kube-dns and kubernetes
  t.equal(clusterPolicyChain('kube-system/kube-dns:dns', 'udp'), 'KUBE-SVC-TCOU7JCQXEZGVUNU');
  t.equal(clusterPolicyChain('default/kubernetes:https', 'tcp'), 'KUBE-SVC-NPX46M4PTMTKRN6Y');
  t.equal(clusterPolicyChain('kube-system/kube-dns:dns-tcp', 'tcp'), 'KUBE-SVC-ERIFXISQEP7F7OF4');
  t.equal(clusterPolicyChain('kube-system/kube-dns:metrics', 'tcp'), 'KUBE-SVC-JD5MR3NA4I4DYORP');
  t.equal(clusterPolicyChain('default/web-svc:nginx-svc-port', 'tcp'), 'KUBE-SVC-YVE4DVDYZJRPV46I');
  // seeds/004: nginx (KUBE-EXT- and KUBE-SVC- share the hash)
  t.equal(clusterPolicyChain('default/nginx:80-80', 'tcp'), 'KUBE-SVC-OVTWZ4GROBJZO4C5');
  t.equal(externalChain('default/nginx:80-80', 'tcp'), 'KUBE-EXT-OVTWZ4GROBJZO4C5');
  t.equal(localPolicyChain('default/nginx:80-80', 'tcp'), 'KUBE-SVL-OVTWZ4GROBJZO4C5');
  t.equal(firewallChain('default/nginx:80-80', 'tcp'), 'KUBE-FW-OVTWZ4GROBJZO4C5');
});

t.test('endpoint chains of the seeds: hash of name + protocol + "ip:port"', async (t) => {
  t.equal(endpointChain('kube-system/kube-dns:dns', 'udp', '10.64.1.7:53'), 'KUBE-SEP-TYGHG4DTIAC24P3K');
  t.equal(endpointChain('default/web-svc:nginx-svc-port', 'tcp', '10.64.1.13:80'), 'KUBE-SEP-CC3QGOI23D5U3CR7');
  t.equal(endpointChain('default/nginx:80-80', 'tcp', '10.42.0.199:80'), 'KUBE-SEP-ZGUCVTBPJNCW75NN');
  t.equal(endpointChain('default/nginx:80-80', 'tcp', '10.42.0.200:80'), 'KUBE-SEP-UIOQG3KKGTPDCR56');
});

t.test('the protocol is lowercased, and is part of the hash', async (t) => {
  t.equal(portProtoHash('kube-system/kube-dns:dns', 'UDP'), 'TCOU7JCQXEZGVUNU');
  t.not(portProtoHash('kube-system/kube-dns:dns', 'tcp'), portProtoHash('kube-system/kube-dns:dns', 'udp'));
  t.match(portProtoHash('a/b', 'sctp'), /^[A-Z2-7]{16}$/);
});

t.test('chain names stay within iptables\' 28 characters', async (t) => {
  const long = 'a-very-long-namespace-name/a-very-long-service-name:a-long-port-name';
  for (const c of [clusterPolicyChain(long, 'tcp'), localPolicyChain(long, 'tcp'), externalChain(long, 'tcp'), firewallChain(long, 'tcp'), endpointChain(long, 'tcp', '10.0.0.1:80')]) {
    t.ok(c.length <= 28, c);
  }
});

t.test('isServiceChainName', async (t) => {
  for (const c of ['KUBE-SVC-X', 'KUBE-SVL-X', 'KUBE-EXT-X', 'KUBE-FW-X', 'KUBE-SEP-X', 'KUBE-XLB-X']) t.ok(isServiceChainName(c), c);
  for (const c of ['KUBE-SERVICES', 'KUBE-NODEPORTS', 'KUBE-MARK-MASQ', 'DOCKER']) t.notOk(isServiceChainName(c), c);
});
