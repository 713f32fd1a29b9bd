import t from 'tap';
import { parseIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import {
  Conntrack,
  ConntrackEntry,
  CT_DIR_ORIGINAL,
  CT_DIR_REPLY,
  type ConntrackInfo,
  type ConntrackSnapshotItem,
} from '../../dataplane/conntrack.ts';

const ip = (s: string): number => {
  const a = parseIPv4(s);
  if (a < 0) throw new Error(`bad address ${s}`);
  return a;
};

const CLIENT = ip('172.16.1.35');
const CLUSTER_IP = ip('10.32.0.10');
const ENDPOINT = ip('10.64.1.7');
const MASQ = ip('10.64.1.1');

function info(endpointAddr: number, endpointPort: number, masquerade = true, serviceName = 'kube-system/kube-dns:dns', serviceIndex = 2): ConntrackInfo {
  return { serviceName, serviceIndex, endpointAddr, endpointPort, masquerade };
}

/** the seed's DNS flow: 172.16.1.35:44560 -> 10.32.0.10:53, DNAT to 10.64.1.7:53, masqueraded to 10.64.1.1 */
function dnsFlow(ct: Conntrack, now: number, sport = 44560): ConntrackEntry {
  const e = ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, sport, 53, ENDPOINT, MASQ, 53, sport, now, info(ENDPOINT, 53));
  if (e === null) throw new Error('insert refused');
  return e;
}

/** A table whose hash puts every tuple with the same (src ^ dst) low byte on the same 64-bit hash: forced collisions. */
class CollidingConntrack extends Conntrack {
  protected override hashTuple(proto: number, src: number, dst: number, sport: number, dport: number): void {
    this.hash[0] = (src ^ dst) & 0xff;
    this.hash[1] = proto;
  }
}

t.test('lookup finds one entry from both directions and reports the direction', async (t) => {
  const ct = new Conntrack({ seed: 1 });
  const e = dnsFlow(ct, 1000);
  t.equal(ct.size, 1);
  t.equal(ct.keyCount, 2);
  t.equal(ct.inserts, 1);

  ct.lastDirection = -1;
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 44560, 53, 1001), e, 'original direction');
  t.equal(ct.lastDirection, CT_DIR_ORIGINAL);
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, 1002), e, 'reply direction');
  t.equal(ct.lastDirection, CT_DIR_REPLY);

  // tuple fields read back unsigned, the endpoint is the reply source
  t.equal(e.origSrc, CLIENT);
  t.equal(e.origSrc, 0xac100123);
  t.equal(e.origDst, CLUSTER_IP);
  t.equal(e.replySrc, ENDPOINT);
  t.equal(e.replyDst, MASQ);
  t.equal(e.endpointAddr, ENDPOINT);
  t.equal(e.endpointPort, 53);
  t.equal(e.serviceName, 'kube-system/kube-dns:dns');
  t.equal(e.serviceIndex, 2);
  t.equal(e.masquerade, true);

  // addresses may be passed signed (x | 0) as well
  t.equal(ct.lookup(PROTO_UDP, CLIENT | 0, CLUSTER_IP | 0, 44560, 53, 1003), e);

  // near misses
  t.equal(ct.lookup(PROTO_TCP, CLIENT, CLUSTER_IP, 44560, 53, 1003), null, 'other protocol');
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 44561, 53, 1003), null, 'other port');
  t.equal(ct.lookup(PROTO_UDP, CLUSTER_IP, CLIENT, 53, 44560, 1003), null, 'the original tuple inverted is not the reply tuple under NAT');
  t.equal(ct.lookup(PROTO_UDP, MASQ, ENDPOINT, 44560, 53, 1003), null, 'the reply tuple inverted is not the original');
});

t.test('an expired flow is removed by lookup and reported as a miss', async (t) => {
  const ct = new Conntrack({ seed: 2 });
  const e = dnsFlow(ct, 0);
  ct.update(e, CT_DIR_ORIGINAL, 0, 60, 0); // expires at 30 000
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 44560, 53, 29_999), e, 'alive 1 ms before');
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, 30_000), null, 'dead at expires');
  t.equal(ct.size, 0);
  t.equal(ct.keyCount, 0);
  t.equal(ct.expired, 1);
  t.equal(e.live, false);
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 44560, 53, 1), null, 'both keys are gone');
});

t.test('insert refuses a tuple already in use and identical tuples', async (t) => {
  const ct = new Conntrack({ seed: 3 });
  const e = dnsFlow(ct, 0);
  // same original tuple again
  t.equal(ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 44560, 53, ENDPOINT, MASQ, 53, 40000, 1, info(ENDPOINT, 53)), null);
  t.equal(ct.clashes, 1);
  // a new original tuple whose reply tuple is taken
  t.equal(ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 44561, 53, ENDPOINT, MASQ, 53, 44560, 1, info(ENDPOINT, 53)), null);
  t.equal(ct.clashes, 2);
  // a new original tuple that is another flow's reply tuple
  t.equal(ct.insert(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, CLIENT, ENDPOINT, 7, 7, 1, info(CLIENT, 7)), null);
  t.equal(ct.clashes, 3);
  // original == reply
  const self = ip('10.99.0.1');
  t.equal(ct.insert(PROTO_ICMP, self, self, 4660, 4660, self, self, 4660, 4660, 1, info(self, 0, false)), null);
  t.equal(ct.clashes, 4);
  t.equal(ct.size, 1, 'nothing was overwritten');
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, 2), e);
  // once the holder expired, the tuple is free again
  t.not(ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 44561, 53, ENDPOINT, MASQ, 53, 44560, 40_000, info(ENDPOINT, 53)), null);
  t.equal(ct.expired, 1);
  t.equal(ct.size, 1);
});

t.test('insert checks its arguments', async (t) => {
  const ct = new Conntrack({ seed: 4 });
  t.throws(() => ct.insert(47, CLIENT, CLUSTER_IP, 0, 0, ENDPOINT, MASQ, 0, 0, 0, info(ENDPOINT, 0)), /protocol 47 is not tracked/);
  t.throws(
    () => ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 1, 53, ENDPOINT, MASQ, 53, 1, 0, info(ip('10.64.1.8'), 53)),
    /endpoint 10\.64\.1\.8:53 is not the reply tuple's source 10\.64\.1\.7:53/,
  );
  t.throws(() => ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 1, 53, ENDPOINT, MASQ, 53, 1, 0, info(ENDPOINT, 54)), /endpoint 10\.64\.1\.7:54/);
  t.equal(ct.size, 0);
  t.throws(() => new Conntrack({ maxEntries: 0 }), /maxEntries must be an integer/);
  t.throws(() => new Conntrack({ maxEntries: 1.5 }), /maxEntries/);
  t.throws(() => new Conntrack({ timeouts: { udp: -1 } }), /timeouts: udp must be a positive number/);
  t.throws(() => new Conntrack({ timeouts: { tcpEstablised: 1 } as never }), /unknown field "tcpEstablised"/);
  t.throws(() => new Conntrack({ seed: 0.5 }), /seed must be an integer/);
});

t.test('hash collisions: a miss, never a wrong match; a colliding insert is refused and counted', async (t) => {
  const ct = new CollidingConntrack({ seed: 5 });
  const a = ct.insert(PROTO_TCP, ip('10.0.0.1'), ip('10.32.0.1'), 1000, 443, ip('10.64.1.2'), ip('10.0.0.1'), 6443, 1000, 0, info(ip('10.64.1.2'), 6443, false));
  t.ok(a);
  // 10.0.1.1 ^ 10.32.1.1 has the same low byte as 10.0.0.1 ^ 10.32.0.1: same hash, different tuple
  t.equal(ct.lookup(PROTO_TCP, ip('10.0.1.1'), ip('10.32.1.1'), 1000, 443, 1), null, 'same hash, other tuple: miss');
  t.equal(ct.lookup(PROTO_TCP, ip('10.0.0.1'), ip('10.32.0.1'), 1000, 443, 1), a);
  const b = ct.insert(PROTO_TCP, ip('10.0.1.1'), ip('10.32.1.1'), 1000, 443, ip('10.64.1.3'), ip('10.0.1.1'), 6443, 1000, 1, info(ip('10.64.1.3'), 6443, false));
  t.equal(b, null, 'refused');
  t.equal(ct.collisions, 1);
  t.equal(ct.clashes, 0);
  t.equal(ct.size, 1);
  t.ok(ct.isTupleInUse(PROTO_TCP, ip('10.0.1.1'), ip('10.32.1.1'), 1000, 443), 'a taken hash makes the tuple unusable');
  // the two keys of one flow colliding with each other
  const c = ct.insert(PROTO_UDP, ip('10.0.0.9'), ip('10.0.0.8'), 1, 2, ip('10.0.0.8'), ip('10.0.0.9'), 3, 4, 1, info(ip('10.0.0.8'), 3, false));
  t.equal(c, null);
  t.equal(ct.collisions, 2);
  t.equal(a!.live, true, 'the live flow was never overwritten');
});

t.test('isTupleInUse: the masquerade port allocation question', async (t) => {
  const ct = new Conntrack({ seed: 6 });
  dnsFlow(ct, 0).expires = 30_000;
  t.ok(ct.isTupleInUse(PROTO_UDP, ENDPOINT, MASQ, 53, 44560), 'reply tuple in use');
  t.ok(ct.isTupleInUse(PROTO_UDP, CLIENT, CLUSTER_IP, 44560, 53), 'original tuple in use');
  t.notOk(ct.isTupleInUse(PROTO_UDP, ENDPOINT, MASQ, 53, 44561), 'next port is free');
  t.notOk(ct.isTupleInUse(PROTO_TCP, ENDPOINT, MASQ, 53, 44560), 'other protocol is free');
  t.ok(ct.isTupleInUse(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, 29_999), 'still alive');
  t.notOk(ct.isTupleInUse(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, 30_000), 'expired: removed, free');
  t.equal(ct.size, 0);
});

t.test('eviction at maxEntries: counted, both keys removed, recently used flows spared', async (t) => {
  const ct = new Conntrack({ maxEntries: 4, seed: 7 });
  const flows: ConntrackEntry[] = [];
  for (let i = 0; i < 4; i++) flows.push(dnsFlow(ct, i, 50000 + i));
  t.equal(ct.size, 4);
  // flow 0 is used (reply direction only), flows 1..3 are idle
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 50000, 10), flows[0]);
  const e4 = dnsFlow(ct, 11, 50004);
  t.equal(ct.size, 4, 'still at maxEntries');
  t.equal(ct.keyCount, 8);
  t.equal(ct.evictions, 1);
  t.equal(flows[0].live, true, 'the used flow is spared');
  t.equal(flows[1].live, false, 'the least recently used flow is evicted');
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 50001, 53, 12), null, 'its original key is gone');
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 50001, 12), null, 'its reply key (the twin) is gone');
  t.notOk(ct.isTupleInUse(PROTO_UDP, ENDPOINT, MASQ, 53, 50001), 'its SNAT port is free again');
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 50004, 53, 12), e4);
  // next inserts take the other idle flows, then the one used before (its second chance spent)
  dnsFlow(ct, 13, 50005);
  dnsFlow(ct, 14, 50006);
  t.equal(flows[2].live, false);
  t.equal(flows[3].live, false);
  t.equal(flows[0].live, true);
  dnsFlow(ct, 15, 50007);
  t.equal(flows[0].live, false, 'not used since its second chance: evicted');
  t.equal(ct.evictions, 4);
  t.equal(ct.size, 4);
  t.equal(ct.keyCount, 8);
  // every flow still tracked is found from both directions
  for (const e of ct.entries()) {
    t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, e.origSport, 53, 16), e);
    t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, e.replyDport, 16), e);
  }
});

t.test('a full table never evicts an assured flow: new flows take the others\' slots, then are refused (netfilter\'s early drop)', async (t) => {
  const ct = new Conntrack({ maxEntries: 4, seed: 11 });
  const flows = [0, 1, 2, 3].map((i) => dnsFlow(ct, 0, 51000 + i));
  // a UDP stream: a reply, then traffic more than 2 s after the start (nf_conntrack_udp_packet)
  const assure = (e: ConntrackEntry, at: number) => {
    ct.update(e, CT_DIR_ORIGINAL, 0, 60, at);
    ct.update(e, CT_DIR_REPLY, 0, 60, at + 1);
    ct.update(e, CT_DIR_ORIGINAL, 0, 60, at + 3000);
  };
  assure(flows[0], 0);
  assure(flows[1], 0);
  t.same(flows.map((e) => e.assured), [true, true, false, false]);
  // both assured flows looked up long ago, the others just now: an LRU would take the assured ones
  t.ok(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 51002, 53, 3500));
  t.ok(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 51003, 53, 3500));
  const a = dnsFlow(ct, 3600, 51010);
  const b = dnsFlow(ct, 3601, 51011);
  t.same(flows.map((e) => e.live), [true, true, false, false], 'the flows not assured made room, though used more recently');
  t.equal(ct.evictions, 2);
  assure(a, 3600);
  assure(b, 3601);
  // every flow assured: a new one is refused, nothing is pushed out
  t.equal(ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 51012, 53, ENDPOINT, MASQ, 53, 51012, 7000, info(ENDPOINT, 53)), null, 'refused');
  t.equal(ct.lastInsertFull, true, 'because the table is full');
  t.equal(ct.full, 1);
  t.equal(ct.evictions, 2, 'no eviction');
  t.equal(ct.size, 4);
  t.ok([flows[0], flows[1], a, b].every((e) => e.live), 'every assured flow still tracked');
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 51000, 7000), flows[0], 'and found from its reply direction');
  // a refusal for a taken key is not a full table
  t.equal(ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 51000, 53, ENDPOINT, MASQ, 53, 51000, 7000, info(ENDPOINT, 53)), null);
  t.equal(ct.lastInsertFull, false, 'a clash');
  // once an assured flow's timer runs out (a UDP stream: 120 s), its slot is free again
  t.ok(dnsFlow(ct, 200_000, 51013).live, 'a new flow after they expired');
  t.ok(ct.expired >= 1);
});

t.test('eviction prefers an expired flow and counts it as expired', async (t) => {
  const ct = new Conntrack({ maxEntries: 2, seed: 8 });
  const a = dnsFlow(ct, 0, 1);
  const b = dnsFlow(ct, 0, 2);
  a.expires = 5; // dead at 5
  b.expires = 100_000;
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 2, 53, 1), b);
  dnsFlow(ct, 10, 3);
  t.equal(a.live, false);
  t.equal(b.live, true);
  t.equal(ct.expired, 1);
  t.equal(ct.evictions, 0);
});

t.test('a full table of busy flows still accepts new ones (bounded second chances)', async (t) => {
  const ct = new Conntrack({ maxEntries: 100, seed: 9 });
  for (let i = 0; i < 100; i++) dnsFlow(ct, 0, 1000 + i);
  for (const e of ct.entries()) ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, e.origSport, 53, 1);
  const n = dnsFlow(ct, 2, 5000);
  t.equal(n.live, true);
  t.equal(ct.size, 100);
  t.equal(ct.evictions, 1);
});

t.test('delete, deleteWhere', async (t) => {
  const ct = new Conntrack({ seed: 10 });
  const es = [dnsFlow(ct, 0, 1), dnsFlow(ct, 0, 2), dnsFlow(ct, 0, 3), dnsFlow(ct, 0, 4)];
  t.equal(ct.delete(es[1]), true);
  t.equal(ct.delete(es[1]), false, 'already gone');
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 2, 53, 1), null);
  t.equal(ct.deleteWhere((e) => e.origSport % 2 === 1), 2);
  t.same([...ct.entries()].map((e) => e.origSport), [4]);
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 4, 1), es[3], 'the survivor moved slots and is still found');
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 4, 53, 1), es[3]);
  t.equal(ct.size, 1);
  t.equal(ct.keyCount, 2);
  ct.clear();
  t.equal(ct.size, 0);
  t.equal(ct.keyCount, 0);
  t.equal(es[3].live, false);
});

t.test('removeByEndpoint: the stale-entry fix', async (t) => {
  const ct = new Conntrack({ seed: 11 });
  const ep2 = ip('10.64.2.9');
  const toEp = dnsFlow(ct, 0, 1);
  const toEpTcp = ct.insert(PROTO_TCP, CLIENT, CLUSTER_IP, 1, 53, ENDPOINT, MASQ, 53, 1, 0, info(ENDPOINT, 53))!;
  const toEpOtherPort = ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 2, 9153, ENDPOINT, MASQ, 9153, 2, 0, info(ENDPOINT, 9153))!;
  const toEp2 = ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 3, 53, ep2, MASQ, 53, 3, 0, info(ep2, 53))!;
  const toEpAgain = dnsFlow(ct, 0, 4);
  t.equal(ct.removeByEndpoint(PROTO_UDP, ENDPOINT, 53), 2);
  t.equal(toEp.live, false);
  t.equal(toEpAgain.live, false);
  t.equal(toEpTcp.live, true, 'other protocol kept');
  t.equal(toEpOtherPort.live, true, 'other port kept');
  t.equal(toEp2.live, true, 'other endpoint kept');
  t.equal(ct.lookup(PROTO_UDP, CLIENT, CLUSTER_IP, 1, 53, 1), null, 'the next datagram misses and is load-balanced afresh');
  t.equal(ct.removeStale((e) => e.replySrc !== ep2), 1);
  t.equal(toEp2.live, false);
  t.equal(ct.size, 2);
});

t.test('expire sweeps, fully or in slices', async (t) => {
  let clock = 0;
  const ct = new Conntrack({ seed: 12, clock: () => clock });
  for (let i = 0; i < 10; i++) {
    const e = dnsFlow(ct, 0, 100 + i);
    e.expires = i < 6 ? 1000 : 5000;
  }
  t.equal(ct.expire(999), 0);
  clock = 1000;
  t.equal(ct.expire(), 6, 'default now is the clock');
  t.equal(ct.size, 4);
  t.equal(ct.expired, 6);
  for (const e of ct.entries()) t.equal(e.expires, 5000);

  const ct2 = new Conntrack({ seed: 13 });
  for (let i = 0; i < 10; i++) dnsFlow(ct2, 0, 100 + i).expires = i % 2 === 0 ? 10 : 99_999;
  let removed = 0;
  for (let round = 0; round < 10 && ct2.size > 5; round++) removed += ct2.expire(10, 3);
  t.equal(removed, 5, 'partial sweeps add up to the whole');
  t.equal(ct2.size, 5);
  for (const e of ct2.entries()) t.equal(e.expires, 99_999);
});

t.test('entries() gives every live flow once, skipping expired ones with now', async (t) => {
  const ct = new Conntrack({ seed: 14 });
  for (let i = 0; i < 5; i++) dnsFlow(ct, 0, 10 + i).expires = 100 * (i + 1);
  t.same([...ct.entries()].map((e) => e.origSport).sort(), [10, 11, 12, 13, 14]);
  t.same([...ct.entries(250)].map((e) => e.origSport).sort(), [12, 13, 14]);
});

t.test('snapshot and restore round trip', async (t) => {
  const ct = new Conntrack({ seed: 15 });
  const u = dnsFlow(ct, 1000);
  ct.update(u, CT_DIR_ORIGINAL, 0, 73, 1000);
  ct.update(u, CT_DIR_REPLY, 0, 140, 1005);
  const tcp = ct.insert(PROTO_TCP, CLIENT, ip('10.32.0.1'), 40000, 443, ip('10.64.0.2'), CLIENT, 6443, 40000, 1000, info(ip('10.64.0.2'), 6443, false, 'default/kubernetes:https', 0))!;
  ct.update(tcp, CT_DIR_ORIGINAL, 0x02, 60, 1000);
  ct.update(tcp, CT_DIR_REPLY, 0x12, 60, 1001);
  ct.update(tcp, CT_DIR_ORIGINAL, 0x10, 52, 1002);
  const icmp = ct.insert(PROTO_ICMP, CLIENT, ENDPOINT, 77, 77, ENDPOINT, CLIENT, 77, 77, 1000, info(ENDPOINT, 0, false, '', -1))!;
  ct.update(icmp, CT_DIR_ORIGINAL, 0, 84, 1000);
  const dead = dnsFlow(ct, 0, 9);
  dead.expires = 2000;

  const now = 3000;
  const items = ct.snapshot(now);
  t.equal(items.length, 3, 'expired flows are not saved');
  const json = JSON.parse(JSON.stringify(items)) as ConntrackSnapshotItem[];
  const udpItem = json.find((i) => i.proto === PROTO_UDP)!;
  t.same(udpItem, {
    proto: 17,
    origSrc: '172.16.1.35',
    origDst: '10.32.0.10',
    origSport: 44560,
    origDport: 53,
    replySrc: '10.64.1.7',
    replyDst: '10.64.1.1',
    replySport: 53,
    replyDport: 44560,
    state: '',
    remainingMs: 28_005,
    ageMs: 2000,
    seenReply: true,
    assured: false,
    origPackets: 1,
    origBytes: 73,
    replyPackets: 1,
    replyBytes: 140,
    serviceName: 'kube-system/kube-dns:dns',
    serviceIndex: 2,
    masquerade: true,
  });

  // a new process: its clock started elsewhere
  const later = 50_000_000;
  const ct2 = new Conntrack({ seed: 99 });
  t.equal(ct2.restore(json, later), 3);
  t.equal(ct2.size, 3);
  t.equal(ct2.list(later), ct.list(now), 'conntrack -L reads the same');
  t.same(ct2.snapshot(later), items, 'snapshot of the restored table is the original snapshot');
  const u2 = ct2.lookup(PROTO_UDP, ENDPOINT, MASQ, 53, 44560, later);
  t.ok(u2);
  t.equal(u2!.expires, later + 28_005);
  t.equal(u2!.created, later - 2000);
  const tcp2 = ct2.lookup(PROTO_TCP, CLIENT, ip('10.32.0.1'), 40000, 443, later)!;
  t.equal(tcp2.assured, true);
  t.equal(tcp2.state, 3);
  // service names are shared, not one string per flow
  const more = [udpItem, { ...udpItem, origSport: 1, replyDport: 1 }].map((i) => JSON.parse(JSON.stringify(i)) as ConntrackSnapshotItem);
  const ct3 = new Conntrack();
  t.equal(ct3.restore(more, 0), 2);
  const [x, y] = [...ct3.entries()];
  t.equal(x.serviceName, y.serviceName);
  // an item that clashes with a flow already there is skipped
  t.equal(ct3.restore([udpItem], 0), 0);
});

t.test('restore refuses malformed input, naming the item and field, and loads nothing', async (t) => {
  const ct = new Conntrack({ seed: 16 });
  dnsFlow(ct, 0);
  const good = ct.snapshot(0)[0];
  const fresh = () => new Conntrack();
  const bad = (patch: Record<string, unknown>) => [good, { ...good, origSport: 1, replyDport: 1, ...patch }];
  t.throws(() => fresh().restore({}), /expected an array/);
  t.throws(() => fresh().restore([good, 5]), /item 1: expected an object/);
  t.throws(() => fresh().restore(bad({ origSrc: '10.0.0' })), /item 1: origSrc must be an IPv4 address, got "10\.0\.0"/);
  t.throws(() => fresh().restore(bad({ replyDport: 70000 })), /item 1: replyDport must be an integer from 0 to 65535, got 70000/);
  t.throws(() => fresh().restore(bad({ proto: 47 })), /item 1: proto 47 is not tracked/);
  t.throws(() => fresh().restore(bad({ proto: 6, state: 'SYN_SEEN' })), /item 1: state "SYN_SEEN" is not a TCP state/);
  t.throws(() => fresh().restore(bad({ remainingMs: 'soon' })), /item 1: remainingMs must be a finite number/);
  t.throws(() => fresh().restore(bad({ assured: 1 })), /item 1: assured must be true or false/);
  t.throws(() => fresh().restore(bad({ serviceName: null })), /item 1: serviceName must be a string/);
  const c = fresh();
  t.throws(() => c.restore(bad({ masquerade: 'yes' })));
  t.equal(c.size, 0, 'nothing loaded');
});

t.test('other protocols: ICMP echo by identifier, SCTP', async (t) => {
  const ct = new Conntrack({ seed: 17 });
  const a = ip('10.99.0.1');
  const b = ip('10.99.0.2');
  const echo = ct.insert(PROTO_ICMP, a, b, 17185, 17185, b, a, 17185, 17185, 0, info(b, 0, false, '', -1))!;
  t.ok(echo);
  t.equal(ct.lookup(PROTO_ICMP, a, b, 17185, 17185, 1), echo, 'echo request');
  t.equal(ct.lastDirection, CT_DIR_ORIGINAL);
  t.equal(ct.lookup(PROTO_ICMP, b, a, 17185, 17185, 1), echo, 'echo reply');
  t.equal(ct.lastDirection, CT_DIR_REPLY);
  t.equal(ct.lookup(PROTO_ICMP, a, b, 17186, 17186, 1), null, 'another identifier is another flow');
  t.equal(ct.removeByEndpoint(PROTO_ICMP, b, 12345), 1, 'ICMP endpoints match on the address alone');

  const s = ct.insert(PROTO_SCTP, CLIENT, CLUSTER_IP, 5000, 3868, ENDPOINT, MASQ, 3868, 5000, 0, info(ENDPOINT, 3868))!;
  t.equal(ct.lookup(PROTO_SCTP, ENDPOINT, MASQ, 3868, 5000, 1), s);
  t.equal(ct.lookup(PROTO_UDP, ENDPOINT, MASQ, 3868, 5000, 1), null);
});
