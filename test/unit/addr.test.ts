import t from 'tap';
import { parseIPv4, formatIPv4, parseCidr, cidrContains, vipKey, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';

t.test('IPv4 text and numbers', async (t) => {
  t.equal(parseIPv4('10.32.0.10'), 0x0a20000a);
  t.equal(formatIPv4(0xc0a80101), '192.168.1.1');
  t.equal(parseIPv4('255.255.255.255'), 0xffffffff);
  t.equal(parseIPv4('256.1.1.1'), -1);
  t.equal(parseIPv4('1.2.3'), -1);
  t.equal(parseIPv4('01.2.3.4'), -1);
});

t.test('CIDR', async (t) => {
  const c = parseCidr('10.64.1.0/24')!;
  t.ok(cidrContains(c, parseIPv4('10.64.1.200')));
  t.notOk(cidrContains(c, parseIPv4('10.64.2.1')));
  t.equal(parseCidr('10.64.1.7')!.bits, 32);
  t.equal(parseCidr('0.0.0.0/0')!.mask, 0);
  t.equal(parseCidr('10.0.0.0/33'), null);
});

t.test('vip keys are distinct per protocol and port and fit in 2^53', async (t) => {
  const a = parseIPv4('255.255.255.255');
  t.ok(vipKey(a, PROTO_UDP, 65535) < 2 ** 53);
  t.not(vipKey(a, PROTO_TCP, 53), vipKey(a, PROTO_UDP, 53));
});
