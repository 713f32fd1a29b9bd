import t from 'tap';
import { parseIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { Conntrack, ConntrackEntry, CT_DIR_ORIGINAL as O, CT_DIR_REPLY as R, formatConntrackL } from '../../dataplane/conntrack.ts';

/**
 * Expected lines are byte-for-byte `conntrack -L` output (conntrack-tools
 * 1.4.7): the first two from the kube-proxy seeds (/work/shared/seeds), the
 * others captured from a real kernel in a throwaway network namespace.
 */

const ip = (s: string): number => parseIPv4(s);
const FIN = 0x01;
const SYN = 0x02;
const PSH = 0x08;
const ACK = 0x10;

function insert(
  ct: Conntrack,
  proto: number,
  orig: [string, string, number, number],
  reply: [string, string, number, number],
  now: number,
  masquerade = false,
): ConntrackEntry {
  const e = ct.insert(proto, ip(orig[0]), ip(orig[1]), orig[2], orig[3], ip(reply[0]), ip(reply[1]), reply[2], reply[3], now, {
    serviceName: 'ns/svc:port',
    serviceIndex: 0,
    endpointAddr: ip(reply[0]),
    endpointPort: reply[2],
    masquerade,
  });
  if (e === null) throw new Error('insert refused');
  return e;
}

t.test('the seed UDP line: DNS through the ClusterIP, masqueraded, answered', async (t) => {
  const ct = new Conntrack({ seed: 1 });
  const e = insert(ct, PROTO_UDP, ['172.16.1.35', '10.32.0.10', 44560, 53], ['10.64.1.7', '10.64.1.1', 53, 44560], 1000, true);
  ct.update(e, O, 0, 73, 1000);
  ct.update(e, R, 0, 140, 1005);
  t.equal(
    formatConntrackL(e, 10_005),
    'udp      17 21 src=172.16.1.35 dst=10.32.0.10 sport=44560 dport=53 src=10.64.1.7 dst=10.64.1.1 sport=53 dport=44560 mark=0 use=1',
  );
  t.equal(
    ct.list(10_005),
    'udp      17 21 src=172.16.1.35 dst=10.32.0.10 sport=44560 dport=53 src=10.64.1.7 dst=10.64.1.1 sport=53 dport=44560 mark=0 use=1\n',
  );
});

t.test('the seed TCP line: a NodePort connection in TIME_WAIT', async (t) => {
  const ct = new Conntrack({ seed: 2 });
  const e = insert(ct, PROTO_TCP, ['172.16.1.35', '172.16.1.35', 35814, 30080], ['10.64.1.13', '10.64.1.1', 80, 35814], 0, true);
  const steps: Array<[number, number]> = [
    [O, SYN],
    [R, SYN | ACK],
    [O, ACK],
    [O, PSH | ACK],
    [R, PSH | ACK],
    [O, FIN | ACK],
    [R, ACK],
    [R, FIN | ACK],
    [O, ACK],
  ];
  let now = 0;
  for (const [dir, flags] of steps) ct.update(e, dir, flags, 60, (now += 7));
  t.equal(
    formatConntrackL(e, now + 48_000),
    'tcp      6 72 TIME_WAIT src=172.16.1.35 dst=172.16.1.35 sport=35814 dport=30080 src=10.64.1.13 dst=10.64.1.1 sport=80 dport=35814 [ASSURED] mark=0 use=1',
  );
});

t.test('ESTABLISHED and [UNREPLIED] as a live kernel prints them', async (t) => {
  const ct = new Conntrack({ seed: 3 });
  const tcp = insert(ct, PROTO_TCP, ['10.99.0.1', '10.99.0.1', 50602, 9000], ['10.99.0.1', '10.99.0.1', 9000, 50602], 0);
  ct.update(tcp, O, SYN, 60, 0);
  ct.update(tcp, R, SYN | ACK, 60, 0);
  ct.update(tcp, O, ACK, 52, 0);
  ct.update(tcp, O, PSH | ACK, 53, 0);
  t.equal(
    formatConntrackL(tcp, 1),
    'tcp      6 431999 ESTABLISHED src=10.99.0.1 dst=10.99.0.1 sport=50602 dport=9000 src=10.99.0.1 dst=10.99.0.1 sport=9000 dport=50602 [ASSURED] mark=0 use=1',
  );
  const udp = insert(ct, PROTO_UDP, ['10.99.0.1', '10.99.0.1', 35266, 5354], ['10.99.0.1', '10.99.0.1', 5354, 35266], 0);
  ct.update(udp, O, 0, 29, 0);
  t.equal(
    formatConntrackL(udp, 1),
    'udp      17 29 src=10.99.0.1 dst=10.99.0.1 sport=35266 dport=5354 [UNREPLIED] src=10.99.0.1 dst=10.99.0.1 sport=5354 dport=35266 mark=0 use=1',
  );
});

t.test('ICMP echo shows type, code and id instead of ports', async (t) => {
  const ct = new Conntrack({ seed: 4 });
  const e = insert(ct, PROTO_ICMP, ['10.99.0.1', '10.99.0.2', 17185, 17185], ['10.99.0.2', '10.99.0.1', 17185, 17185], 0);
  ct.update(e, O, 0, 84, 0);
  t.equal(
    formatConntrackL(e, 500),
    'icmp     1 29 src=10.99.0.1 dst=10.99.0.2 type=8 code=0 id=17185 [UNREPLIED] src=10.99.0.2 dst=10.99.0.1 type=0 code=0 id=17185 mark=0 use=1',
  );
  ct.update(e, R, 0, 84, 0);
  t.equal(
    formatConntrackL(e, 500),
    'icmp     1 29 src=10.99.0.1 dst=10.99.0.2 type=8 code=0 id=17185 src=10.99.0.2 dst=10.99.0.1 type=0 code=0 id=17185 mark=0 use=1',
  );
});

t.test('with counters, as with net.netfilter.nf_conntrack_acct=1', async (t) => {
  const ct = new Conntrack({ seed: 5 });
  const udp = insert(ct, PROTO_UDP, ['10.99.0.1', '10.99.0.1', 33702, 5999], ['10.99.0.1', '10.99.0.1', 5999, 33702], 0);
  ct.update(udp, O, 0, 33, 0);
  t.equal(
    formatConntrackL(udp, 1, { counters: true }),
    'udp      17 29 src=10.99.0.1 dst=10.99.0.1 sport=33702 dport=5999 packets=1 bytes=33 [UNREPLIED] src=10.99.0.1 dst=10.99.0.1 sport=5999 dport=33702 packets=0 bytes=0 mark=0 use=1',
  );
  const tcp = insert(ct, PROTO_TCP, ['10.99.0.1', '10.99.0.1', 39234, 9000], ['10.99.0.1', '10.99.0.1', 9000, 39234], 0);
  ct.update(tcp, O, SYN, 60, 0);
  ct.update(tcp, R, SYN | ACK, 60, 0);
  ct.update(tcp, O, ACK, 52, 0);
  ct.update(tcp, O, PSH | ACK, 53, 0);
  ct.update(tcp, R, ACK, 52, 0);
  t.equal(
    formatConntrackL(tcp, 1, { counters: true }),
    'tcp      6 431999 ESTABLISHED src=10.99.0.1 dst=10.99.0.1 sport=39234 dport=9000 packets=3 bytes=165 src=10.99.0.1 dst=10.99.0.1 sport=9000 dport=39234 packets=2 bytes=112 [ASSURED] mark=0 use=1',
  );
});

t.test('SCTP prints its state like TCP (libnetfilter_conntrack template; not checked against a kernel here)', async (t) => {
  const ct = new Conntrack({ seed: 6 });
  const e = insert(ct, PROTO_SCTP, ['172.16.1.35', '10.32.0.20', 5000, 3868], ['10.64.1.9', '10.64.1.1', 3868, 5000], 0, true);
  ct.update(e, O, 1, 100, 0);
  t.equal(
    formatConntrackL(e, 0),
    'sctp     132 30 COOKIE_WAIT src=172.16.1.35 dst=10.32.0.20 sport=5000 dport=3868 [UNREPLIED] src=10.64.1.9 dst=10.64.1.1 sport=3868 dport=5000 mark=0 use=1',
  );
  ct.update(e, R, 2, 100, 0);
  t.equal(
    formatConntrackL(e, 1),
    'sctp     132 431999 ESTABLISHED src=172.16.1.35 dst=10.32.0.20 sport=5000 dport=3868 src=10.64.1.9 dst=10.64.1.1 sport=3868 dport=5000 [ASSURED] mark=0 use=1',
  );
});

t.test('list(): one line per live flow, expired ones left out; remaining time rounds down, never negative', async (t) => {
  const ct = new Conntrack({ seed: 7, clock: () => 10_000 });
  const a = insert(ct, PROTO_UDP, ['10.0.0.1', '10.32.0.10', 1000, 53], ['10.64.1.7', '10.0.0.1', 53, 1000], 0);
  const b = insert(ct, PROTO_UDP, ['10.0.0.2', '10.32.0.10', 1000, 53], ['10.64.1.7', '10.0.0.2', 53, 1000], 0);
  a.expires = 12_999;
  b.expires = 9_000;
  t.equal(
    ct.list(),
    'udp      17 2 src=10.0.0.1 dst=10.32.0.10 sport=1000 dport=53 [UNREPLIED] src=10.64.1.7 dst=10.0.0.1 sport=53 dport=1000 mark=0 use=1\n',
  );
  t.match(formatConntrackL(b, 10_000), /^udp {6}17 0 src=10\.0\.0\.2 /);
  t.equal(new Conntrack().list(0), '');
});
