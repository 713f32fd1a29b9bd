import t from 'tap';
import { PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { parseIPv6, formatIPv6 } from '../../dataplane/addr6.ts';
import { Conntrack, CT_DIR_ORIGINAL, CT_DIR_REPLY, TCP_CT_ESTABLISHED } from '../../dataplane/conntrack.ts';
import { Conntrack6, CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST, PROTO_ICMPV6, type ConntrackInfo6 } from '../../dataplane/conntrack6.ts';

const A = (s: string): Uint32Array => parseIPv6(s)!;
const CLIENT = '2001:db8::35';
const VIP = 'fd00:10:96::a';
const POD = 'fd00:10:244:1::7';
const MASQ = 'fd00::1';
const info: ConntrackInfo6 = { serviceName: 'kube-system/kube-dns:dns', serviceIndex: 2, masquerade: true };

function tuple(os: string, od: string, rs: string, rd: string): Uint32Array {
  const w = new Uint32Array(16);
  w.set(A(os), CT6_ORIG_SRC);
  w.set(A(od), CT6_ORIG_DST);
  w.set(A(rs), CT6_REPLY_SRC);
  w.set(A(rd), CT6_REPLY_DST);
  return w;
}
/** a packet's src then dst words */
function pkt(src: string, dst: string): Uint32Array {
  const w = new Uint32Array(8);
  w.set(A(src), 0);
  w.set(A(dst), 4);
  return w;
}

t.test('an IPv6 flow is found from both directions, every word checked', async (t) => {
  const ct = new Conntrack6({ seed: 1 });
  const e = ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), 44560, 53, 53, 44560, 1000, info)!;
  t.ok(e);
  t.equal(ct.size, 1);
  t.equal(ct.keyCount, 2);
  t.equal(ct.lookup6(PROTO_UDP, pkt(CLIENT, VIP), 0, 4, 44560, 53, 1001), e);
  t.equal(ct.lastDirection, CT_DIR_ORIGINAL);
  t.equal(ct.lookup6(PROTO_UDP, pkt(POD, MASQ), 0, 4, 53, 44560, 1001), e);
  t.equal(ct.lastDirection, CT_DIR_REPLY);
  t.equal(ct.lookup6(PROTO_UDP, pkt('2001:db8::36', VIP), 0, 4, 44560, 53, 1001), null, 'another source');
  t.equal(ct.lookup6(PROTO_UDP, pkt('2001:db8:0:1::35', VIP), 0, 4, 44560, 53, 1001), null, 'a different word 1');
  t.equal(ct.lookup6(PROTO_TCP, pkt(CLIENT, VIP), 0, 4, 44560, 53, 1001), null, 'another protocol');
  t.equal(ct.address(e, CT6_ORIG_SRC), CLIENT);
  t.equal(ct.address(e, CT6_ORIG_DST), VIP);
  t.equal(ct.address(e, CT6_REPLY_SRC), POD);
  t.equal(ct.address(e, CT6_REPLY_DST), MASQ);
  t.equal(formatIPv6(ct.entryWords(e), CT6_REPLY_SRC), POD);
  t.equal(ct.wordArray[ct.wordsAt(e) + CT6_REPLY_SRC + 3], 7);
  // state machine shared with IPv4: a UDP flow's reply is seen
  ct.update(e, CT_DIR_ORIGINAL, 0, 100, 1001);
  ct.update(e, CT_DIR_REPLY, 0, 120, 1002);
  t.ok(e.seenReply);
  t.equal(e.replyBytes, 120);
});

t.test('clashes, identical tuples, the IPv4 entry points refused', async (t) => {
  const ct = new Conntrack6({ seed: 2 });
  t.ok(ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), 1, 53, 53, 1, 0, info));
  t.equal(ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, POD, 'fd00::2'), 1, 53, 53, 1, 0, info), null, 'the original tuple is taken');
  t.equal(ct.clashes, 1);
  t.equal(ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, CLIENT, VIP), 1, 53, 1, 53, 0, info), null, 'original = reply');
  t.equal(ct.clashes, 2);
  t.ok(ct.isTupleInUse6(PROTO_UDP, pkt(POD, MASQ), 0, 4, 53, 1));
  t.notOk(ct.isTupleInUse6(PROTO_UDP, pkt(POD, MASQ), 0, 4, 53, 2));
  t.throws(() => ct.insert6(47, tuple(CLIENT, VIP, POD, MASQ), 1, 1, 1, 1, 0, info), /protocol 47 is not tracked/);
  t.throws(() => (ct as Conntrack).lookup(PROTO_UDP, 1, 2, 3, 4, 0), /use lookup6/);
  t.throws(() => (ct as Conntrack).insert(PROTO_UDP, 1, 2, 3, 4, 1, 2, 3, 4, 0, { serviceName: '', serviceIndex: -1, endpointAddr: 1, endpointPort: 3, masquerade: false }), /use insert6/);
  t.throws(() => (ct as Conntrack).removeByEndpoint(PROTO_UDP, 1, 2), /removeByEndpoint6/);
});

/** every tuple hashes to one of 4 keys: collisions all the time */
class Colliding6 extends Conntrack6 {
  protected override hashTuple6(proto: number, w: Uint32Array, so: number, dd: number): void {
    this.hash[0] = w[so + 3] & 3;
    this.hash[1] = proto + (w[dd + 3] & 0);
  }
}

t.test('a colliding hash: refused and counted, never a wrong match', async (t) => {
  const ct = new Colliding6({ seed: 0 });
  t.ok(ct.insert6(PROTO_UDP, tuple('2001:db8::1', VIP, POD, '2001:db8::2'), 1, 53, 53, 1, 0, info));
  t.equal(ct.insert6(PROTO_UDP, tuple('2001:db8:1::1', VIP, POD, '2001:db8::3'), 1, 53, 53, 1, 0, info), null, 'same key, other tuple');
  t.equal(ct.collisions, 1);
  t.equal(ct.lookup6(PROTO_UDP, pkt('2001:db8:1::1', VIP), 0, 4, 1, 53, 0), null, 'the key matches, the words do not');
});

t.test('removals move the last flow and its words; eviction and expiry keep the table consistent', async (t) => {
  const ct = new Conntrack6({ seed: 3, maxEntries: 8 });
  const flows = [];
  for (let i = 0; i < 8; i++) {
    const c = `2001:db8::${(i + 1).toString(16)}`;
    flows.push(ct.insert6(PROTO_TCP, tuple(c, VIP, POD, MASQ), 1000 + i, 80, 8080, 1000 + i, 0, info)!);
  }
  t.equal(ct.size, 8);
  ct.delete(flows[2]);
  t.equal(ct.size, 7);
  t.equal(ct.address(flows[7], CT6_ORIG_SRC), '2001:db8::8', 'the last flow took slot 2 with its words');
  t.equal(flows[7]._slot, 2);
  for (let i = 0; i < 8; i++) {
    const c = `2001:db8::${(i + 1).toString(16)}`;
    const hit = ct.lookup6(PROTO_TCP, pkt(c, VIP), 0, 4, 1000 + i, 80, 1);
    t.equal(hit, i === 2 ? null : flows[i], `flow ${i} original`);
    const back = ct.lookup6(PROTO_TCP, pkt(POD, MASQ), 0, 4, 8080, 1000 + i, 1);
    t.equal(back, i === 2 ? null : flows[i], `flow ${i} reply`);
  }
  // full: two more inserts evict (no flow untouched since the hand passed: the hand takes one anyway)
  t.ok(ct.insert6(PROTO_TCP, tuple('2001:db8::100', VIP, POD, MASQ), 1, 80, 8080, 1, 2, info));
  t.ok(ct.insert6(PROTO_TCP, tuple('2001:db8::101', VIP, POD, MASQ), 2, 80, 8080, 2, 2, info));
  t.equal(ct.size, 8);
  let found = 0;
  for (const e of ct.entries()) {
    const w = ct.entryWords(e);
    const o = new Uint32Array(8);
    o.set(w.subarray(0, 8));
    t.equal(ct.lookup6(e.proto, o, 0, 4, e.origSport, e.origDport, 3), e, 'every live flow is found by its words');
    found++;
  }
  t.equal(found, 8);
  // expiry: TCP NONE state lives tcpSynSent (120 s)
  t.equal(ct.expire(200_000), 8);
  t.equal(ct.size, 0);
  t.equal(ct.keyCount, 0);
});

t.test('removeByEndpoint6, ICMPv6 echo as its own class', async (t) => {
  const ct = new Conntrack6({ seed: 4 });
  ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), 1, 53, 53, 1, 0, info);
  ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, 'fd00:10:244:1::8', MASQ), 2, 53, 53, 2, 0, info);
  const echo = ct.insert6(PROTO_ICMPV6, tuple(CLIENT, VIP, POD, MASQ), 0x1234, 0x1234, 0x1234, 0x1234, 0, info)!;
  t.ok(echo);
  t.equal(ct.protoOf(echo), 58);
  t.equal(ct.lookup6(PROTO_ICMPV6, pkt(POD, MASQ), 0, 4, 0x1234, 0x1234, 1), echo);
  ct.update(echo, CT_DIR_ORIGINAL, 0, 64, 1);
  t.equal(echo.expires, 1 + ct.timeouts.icmp, 'the ICMP timeout');
  t.equal(ct.removeByEndpoint6(PROTO_UDP, A(POD), 0, 53), 1);
  t.equal(ct.size, 2);
  t.equal(ct.removeByEndpoint6(PROTO_ICMPV6, A(POD), 0, 0), 1, 'ICMPv6: any identifier');
  t.equal(ct.size, 1);
});

t.test('conntrack -L for IPv6, snapshot and restore', async (t) => {
  const ct = new Conntrack6({ seed: 5 });
  const e = ct.insert6(PROTO_TCP, tuple(CLIENT, VIP, POD, MASQ), 44560, 80, 8080, 44560, 0, info)!;
  ct.update(e, CT_DIR_ORIGINAL, 0x02, 80, 0);
  ct.update(e, CT_DIR_REPLY, 0x12, 80, 1);
  ct.update(e, CT_DIR_ORIGINAL, 0x10, 72, 2);
  t.equal(e.state, TCP_CT_ESTABLISHED);
  const echo = ct.insert6(PROTO_ICMPV6, tuple(CLIENT, VIP, POD, MASQ), 7, 7, 7, 7, 0, info)!;
  ct.update(echo, CT_DIR_ORIGINAL, 0, 64, 0);
  t.equal(
    ct.list(2),
    'tcp      6 432000 ESTABLISHED src=2001:db8::35 dst=fd00:10:96::a sport=44560 dport=80 src=fd00:10:244:1::7 dst=fd00::1 sport=8080 dport=44560 [ASSURED] mark=0 use=1\n' +
      'icmpv6   58 29 src=2001:db8::35 dst=fd00:10:96::a type=128 code=0 id=7 [UNREPLIED] src=fd00:10:244:1::7 dst=fd00::1 type=129 code=0 id=7 mark=0 use=1\n',
  );
  const snap = ct.snapshot(2);
  t.equal(snap[0].origSrc, CLIENT);
  t.equal(snap[1].proto, 58);
  const back = new Conntrack6({ seed: 9 });
  t.equal(back.restore(JSON.parse(JSON.stringify(snap)), 100), 2);
  t.equal(back.list(100), ct.list(2));
  t.same(back.snapshot(100), snap);
  // a bad item names itself and its field, nothing is loaded
  const bad = JSON.parse(JSON.stringify(snap));
  bad[1].replyDst = '10.0.0.1';
  const empty = new Conntrack6();
  t.throws(() => empty.restore(bad), /item 1: replyDst must be an IPv6 address, got "10.0.0.1"/);
  t.equal(empty.size, 0);
  bad[1].replyDst = MASQ;
  bad[1].proto = 1;
  t.throws(() => empty.restore(bad), /item 1: proto 1 is not tracked \(TCP 6, UDP 17, SCTP 132, ICMPv6 58\)/);
  // the IPv4 table still refuses IPv6 text
  t.throws(() => new Conntrack().restore(snap), /item 0: origSrc must be an IPv4 address/);
});

t.test('the side array grows past its first size', async (t) => {
  const ct = new Conntrack6({ seed: 6, maxEntries: 5000 });
  for (let i = 0; i < 3000; i++) {
    const w = tuple(CLIENT, VIP, POD, MASQ);
    w[3] = i; // client ::i
    if (ct.insert6(PROTO_UDP, w, 1000, 53, 53, 1000 + i, 0, info) === null) t.fail(`insert ${i}`);
  }
  let ok = 0;
  const p = pkt(CLIENT, VIP);
  for (let i = 0; i < 3000; i++) {
    p[3] = i;
    if (ct.lookup6(PROTO_UDP, p, 0, 4, 1000, 53, 1) !== null) ok++;
  }
  t.equal(ok, 3000);
});

t.test('insert6Keyed with the keys lookup6 and isTupleInUse6 left files the flow where insert6 does', async (t) => {
  const a = new Conntrack6({ seed: 7 });
  const b = new Conntrack6({ seed: 7 });
  const tw = tuple(CLIENT, VIP, POD, MASQ);
  // the packet path: a miss for the packet's tuple, then the reply tuple asked
  t.equal(b.lookup6(PROTO_UDP, pkt(CLIENT, VIP), 0, 4, 44560, 53, 1000), null);
  t.equal(b.isTupleInUse6(PROTO_UDP, tw, CT6_REPLY_SRC, CT6_REPLY_DST, 53, 44560), false);
  const eb = b.insert6Keyed(PROTO_UDP, tw, 44560, 53, 53, 44560, 1000, info, b.lookupHi, b.lookupLo, b.probeHi, b.probeLo)!;
  const ea = a.insert6(PROTO_UDP, tw, 44560, 53, 53, 44560, 1000, info)!;
  for (const [ct, e, name] of [[a, ea, 'insert6'], [b, eb, 'insert6Keyed']] as const) {
    t.equal(ct.lookup6(PROTO_UDP, pkt(CLIENT, VIP), 0, 4, 44560, 53, 1001), e, `${name}: found from the client`);
    t.equal(ct.lookup6(PROTO_UDP, pkt(POD, MASQ), 0, 4, 53, 44560, 1001), e, `${name}: found from the endpoint`);
    t.equal(ct.isTupleInUse6(PROTO_UDP, tw, CT6_REPLY_SRC, CT6_REPLY_DST, 53, 44560), true, `${name}: the reply tuple is in use`);
    t.equal(ct.keyCount, 2);
  }
  // a removal between the lookup and the insert (an expired flow unlinked) does not disturb the kept keys
  const c = new Conntrack6({ seed: 7 });
  const old = c.insert6(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), 44561, 53, 53, 44561, 0, info)!;
  c.update(old, CT_DIR_ORIGINAL, 0, 100, 0);
  t.equal(c.lookup6(PROTO_UDP, pkt(CLIENT, VIP), 0, 4, 44561, 53, 10_000_000), null, 'the old flow ran out: removed by the lookup');
  t.equal(c.size, 0);
  t.equal(c.isTupleInUse6(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), CT6_REPLY_SRC, CT6_REPLY_DST, 53, 44561), false);
  const ec = c.insert6Keyed(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), 44561, 53, 53, 44561, 10_000_000, info, c.lookupHi, c.lookupLo, c.probeHi, c.probeLo)!;
  t.equal(c.lookup6(PROTO_UDP, pkt(CLIENT, VIP), 0, 4, 44561, 53, 10_000_001), ec, 'the new flow is found');
  t.equal(c.lookup6(PROTO_UDP, pkt(POD, MASQ), 0, 4, 53, 44561, 10_000_001), ec, 'from both sides');
});
