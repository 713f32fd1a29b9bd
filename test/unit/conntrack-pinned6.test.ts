import t from 'tap';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { CT_DIR_ORIGINAL, CT_DIR_REPLY } from '../../dataplane/conntrack.ts';
import { Conntrack6, CT6_ORIG_DST, CT6_ORIG_SRC, CT6_REPLY_DST, CT6_REPLY_SRC, PROTO_ICMPV6, type ConntrackInfo6 } from '../../dataplane/conntrack6.ts';
import {
  checkHeader,
  openPinnedConntrack,
  PIN_HEADER_SIZE,
  PIN_LAYOUT_V4,
  pinFileSize,
  PinnedStore,
  wordsChecksum,
  writeHeader,
} from '../../dataplane/conntrack-pinned.ts';
import { openPinnedConntrack6, PIN6_RECORD_SIZE, PIN_LAYOUT_V6, PinnedConntrack6, readRecord6 } from '../../dataplane/conntrack-pinned6.ts';

const A = (s: string): Uint32Array => parseIPv6(s)!;
const CLIENT = '2001:db8::35';
const VIP = 'fd00:10:32::a';
const POD = 'fd00:10:64::7';
const MASQ = 'fd00:10:64::1';
const PROV = { bootId: '0b2d1a4e-6f0c-4b8e-9f57-3c2a1d0e9b88', netns: 'net:[4026532281]' };
const NAME = 'default/web:http';
const info: ConntrackInfo6 = { serviceName: NAME, serviceIndex: 3, masquerade: true };
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const R = PIN6_RECORD_SIZE;

function tuple(os: string, od: string, rs: string, rd: string): Uint32Array {
  const w = new Uint32Array(16);
  w.set(A(os), CT6_ORIG_SRC);
  w.set(A(od), CT6_ORIG_DST);
  w.set(A(rs), CT6_REPLY_SRC);
  w.set(A(rd), CT6_REPLY_DST);
  return w;
}
function pkt(src: string, dst: string): Uint32Array {
  const w = new Uint32Array(8);
  w.set(A(src), 0);
  w.set(A(dst), 4);
  return w;
}

/** an IPv6 table over a plain buffer with the header of PROV; conntrack time t is boot time t + 1_000_000 */
function table(capacity = 4) {
  const buf = new ArrayBuffer(pinFileSize(capacity, PIN_LAYOUT_V6));
  writeHeader(buf, capacity, PROV, 1_765_000_000_000, 4242, PIN_LAYOUT_V6);
  const store = new PinnedStore(buf, capacity, 1_000_000, PIN_LAYOUT_V6);
  const ct = new PinnedConntrack6({ maxEntries: capacity, clock: () => 1000, seed: 7 }, store);
  return { ct, store };
}

function tcpFlow(ct: Conntrack6, sport: number, now: number) {
  const e = ct.insert6(PROTO_TCP, tuple(CLIENT, VIP, POD, MASQ), sport, 80, 8080, sport, now, info);
  if (e === null) throw new Error('refused');
  return e;
}

function establish(ct: Conntrack6, e: ReturnType<typeof tcpFlow>, now: number) {
  ct.update(e, CT_DIR_ORIGINAL, 0x02, 80, now); // SYN
  ct.update(e, CT_DIR_REPLY, 0x12, 80, now + 1); // SYN/ACK
  ct.update(e, CT_DIR_ORIGINAL, 0x10, 72, now + 2); // ACK: ESTABLISHED
}

t.test('IPv6 record layout: literal bytes of an established, masqueraded TCP flow', (t) => {
  const { ct, store } = table();
  const e = tcpFlow(ct, 40000, 1000);
  establish(ct, e, 1000);
  const rec = store.u8.subarray(PIN_HEADER_SIZE, PIN_HEADER_SIZE + R);
  const w = new Int32Array(rec.buffer, rec.byteOffset, R / 4);
  const expected =
    '08000000' + // seq: 4 whole writes (insert + 3 updates), each +2
    '5fde3b70' + // checksum of bytes 8..91, a known answer
    '06000000' + // TCP
    '409c' + '5000' + // 40000 -> 80
    '901f' + '409c' + // 8080 -> 40000
    '03000000' + // service index 3
    '438058b0' + // FNV-1a("default/web:http") = 0xb0588043
    'b80d0120' + '00000000' + '00000000' + '35000000' + // 2001:db8::35, network-order words stored little-endian
    '100000fd' + '00003200' + '00000000' + '0a000000' + // fd00:10:32::a: words fd000010 00320000 0 a
    '100000fd' + '00006400' + '00000000' + '07000000' + // fd00:10:64::7 (the endpoint)
    '100000fd' + '00006400' + '00000000' + '01000000' + // fd00:10:64::1 (the masquerade address)
    '03' + '07' + '0000' + // ESTABLISHED (3), seen reply | assured | masquerade
    '0000002a12cfb941' + // deadline 1002 + 5 days + boot offset 1 000 000, float64
    '00000000508c2e41' + // created 1000 + 1 000 000
    '0000000000000040' + '0000000000006340' + // original: 2 packets, 152 bytes
    '000000000000f03f' + '0000000000005440'; // reply: 1 packet, 80 bytes
  t.equal(hex(rec), expected);
  t.equal(w[1], wordsChecksum(w, 2, 23), 'the checksum covers bytes 8..91');
  const back = readRecord6(store.w, store.f, 0);
  t.not(typeof back, 'string');
  if (typeof back !== 'string') {
    t.equal(back.proto, PROTO_TCP);
    t.same([...back.words], [...tuple(CLIENT, VIP, POD, MASQ)]);
    t.same([back.origSport, back.origDport, back.replySport, back.replyDport], [40000, 80, 8080, 40000]);
    t.equal(back.state, 3);
    t.equal(back.flags, 7);
  }
  t.end();
});

t.test('IPv6 header: the magic "TPC6" and a record size of 144', (t) => {
  const buf = new ArrayBuffer(pinFileSize(2, PIN_LAYOUT_V6));
  t.equal(buf.byteLength, 256 + 2 * 144);
  writeHeader(buf, 2, PROV, 0, 0x01020304, PIN_LAYOUT_V6);
  const h = new Uint8Array(buf, 0, 148);
  t.equal(hex(h.subarray(0, 24)), '54504336' + '01000000' + '00010000' + '90000000' + '02000000' + '00000000');
  t.equal(Buffer.from(h.subarray(0, 4)).toString('latin1'), 'TPC6');
  t.equal(hex(h.subarray(136, 140)), '04030201');
  t.equal(hex(h.subarray(144, 148)), '01000000', 'open');
  t.ok(checkHeader(new Uint8Array(buf), PROV, PIN_LAYOUT_V6).ok);
  t.end();
});

t.test('a removal moves the last IPv6 record into the hole and empties the last one', (t) => {
  const { ct, store } = table();
  const a = tcpFlow(ct, 1, 1000);
  tcpFlow(ct, 2, 1000);
  const c = tcpFlow(ct, 3, 1000);
  const recC = hex(store.u8.subarray(PIN_HEADER_SIZE + 2 * R, PIN_HEADER_SIZE + 3 * R)).slice(8);
  t.ok(ct.delete(a));
  t.equal(c._slot, 0);
  t.equal(hex(store.u8.subarray(PIN_HEADER_SIZE, PIN_HEADER_SIZE + R)).slice(8), recC, 'record 0 is the third flow (seq aside)');
  t.equal(hex(store.u8.subarray(PIN_HEADER_SIZE + 2 * R, PIN_HEADER_SIZE + 3 * R)), '00'.repeat(R), 'record 2 emptied');
  t.equal(readRecord6(store.w, store.f, 2), 'empty');
  // eviction: a full table reuses a slot, and the new flow's record overwrites the old one
  tcpFlow(ct, 4, 1000);
  tcpFlow(ct, 5, 1000);
  const f6 = tcpFlow(ct, 6, 1000);
  t.equal(ct.size, 4);
  const back = readRecord6(store.w, store.f, f6._slot);
  t.equal(typeof back !== 'string' && back.origSport, 6, 'the evicted flow\'s record holds the new flow');
  t.end();
});

t.test('IPv6 recovery: flows, states, deadlines and counters come back; torn, damaged and expired records are skipped and counted', (t) => {
  const { ct, store } = table(8);
  const flows = [1, 2, 3, 4, 5].map((p) => tcpFlow(ct, p, 1000));
  for (const e of flows) establish(ct, e, 1000);
  const u = ct.insert6(PROTO_UDP, tuple(CLIENT, VIP, POD, MASQ), 5353, 53, 53, 5353, 1000, info)!;
  ct.update(u, CT_DIR_ORIGINAL, 0, 40, 1000); // UDP: 30 s
  const ping = ct.insert6(PROTO_ICMPV6, tuple(CLIENT, VIP, POD, MASQ), 77, 77, 77, 77, 1000, info)!;
  ct.update(ping, CT_DIR_ORIGINAL, 0, 64, 1000);
  ct.update(ping, CT_DIR_REPLY, 0, 64, 1000);
  ct.update(ping, CT_DIR_REPLY, 0, 64, 1000);
  ping.expires = 1000 + 60_000; // an echo flow lives 30 s: made to outlive the 31 s gap below
  store.writeDynamic(ping._slot, ping);
  const listing = ct.list(1000);
  // the image a crash leaves behind, damaged in three records
  const image = store.u8.slice();
  const w = new Int32Array(image.buffer);
  const rec = (i: number) => PIN_HEADER_SIZE / 4 + (i * R) / 4;
  w[rec(1)] |= 1; // torn: seq odd
  w[rec(2) + 10] ^= 0x100; // a bit of the original source flipped: checksum mismatch
  w[rec(3) + 23] |= 0x8000; // a flag that does not exist: damaged
  t.equal(readRecord6(w, new Float64Array(image.buffer), 1), 'torn');
  t.equal(readRecord6(w, new Float64Array(image.buffer), 2), 'damaged');
  t.equal(readRecord6(w, new Float64Array(image.buffer), 3), 'damaged');

  // a new process, 31 s later by the boot clock: the UDP flow ran out
  const buf2 = new ArrayBuffer(pinFileSize(8, PIN_LAYOUT_V6));
  writeHeader(buf2, 8, PROV, 0, 1, PIN_LAYOUT_V6);
  const store2 = new PinnedStore(buf2, 8, 1_000_000 + 1000 - 50 + 31_000, PIN_LAYOUT_V6);
  const ct2 = new PinnedConntrack6({ maxEntries: 8, clock: () => 50, seed: 99 }, store2);
  const r = ct2.recover(image, [NAME]);
  t.same(r, { records: 7, restored: 3, torn: 1, damaged: 2, expired: 1, clashes: 0, unresolvedNames: 0 });
  const tcp2 = ct2.list(50).split('\n').filter((l) => l.startsWith('tcp'));
  const tcp1 = listing.split('\n').filter((l) => l.startsWith('tcp'));
  t.equal(tcp2.length, 2);
  for (const l of tcp2) {
    const sport = /sport=(\d+)/.exec(l)![1];
    const before = tcp1.find((x) => x.includes(`sport=${sport} `))!;
    const secs = (s: string) => Number(s.split(/\s+/)[2]);
    t.equal(secs(l), secs(before) - 31, `flow ${sport}: 31 s less to live`);
    t.equal(l.replace(/^tcp\s+6 \d+ /, ''), before.replace(/^tcp\s+6 \d+ /, ''), `flow ${sport}: same tuples, state and flags`);
  }
  const e = ct2.lookup6(PROTO_TCP, pkt(POD, MASQ), 0, 4, 8080, 5, 50);
  t.ok(e, 'the reply direction is found in the rebuilt index');
  t.equal(e!.serviceName, NAME);
  t.equal(e!.origPackets, 2);
  t.equal(e!.replyBytes, 80);
  t.ok(e!.masquerade);
  const p = ct2.lookup6(PROTO_ICMPV6, pkt(CLIENT, VIP), 0, 4, 77, 77, 50);
  t.ok(p, 'the ICMPv6 echo flow comes back');
  t.equal(ct2.protoOf(p!), PROTO_ICMPV6);
  t.equal(p!.replyPackets, 2);
  // the new table's records are whole again, the ICMPv6 one under 58
  const recs = [0, 1, 2].map((i) => readRecord6(store2.w, store2.f, i));
  t.same(recs.map((x) => (typeof x === 'string' ? x : x.proto)).sort(), [PROTO_TCP, PROTO_TCP, PROTO_ICMPV6].sort());
  t.equal(readRecord6(store2.w, store2.f, 3), 'empty');
  t.end();
});

t.test('the SIGTERM snapshot restored into a pinned IPv6 table is written to its records', (t) => {
  const plain = new Conntrack6({ clock: () => 1000, seed: 3 });
  const e = plain.insert6(PROTO_TCP, tuple(CLIENT, VIP, POD, MASQ), 4321, 80, 8080, 4321, 1000, info)!;
  establish(plain, e, 1000);
  const items = JSON.parse(JSON.stringify(plain.snapshot(1002)));
  const { ct, store } = table();
  t.equal(ct.restore(items, 1000), 1);
  const back = readRecord6(store.w, store.f, 0);
  t.ok(typeof back !== 'string' && back.state === 3 && back.origPackets === 2 && back.flags === 7, 'state, flags and counters are in the record');
  t.end();
});

t.test('a store of the other family is refused; so is a smaller capacity', (t) => {
  const v4 = new PinnedStore(new ArrayBuffer(pinFileSize(4)), 4, 0);
  t.throws(() => new PinnedConntrack6({ maxEntries: 4 }, v4), /holds IPv4 records, this table IPv6 flows/);
  const small = new PinnedStore(new ArrayBuffer(pinFileSize(2, PIN_LAYOUT_V6)), 2, 0, PIN_LAYOUT_V6);
  t.throws(() => new PinnedConntrack6({ maxEntries: 4 }, small), /holds 2 records, the table up to 4/);
  t.end();
});

t.test('header checks of an IPv6 file: another boot, namespace, layout version, family, a damaged header', (t) => {
  const buf = new ArrayBuffer(pinFileSize(2, PIN_LAYOUT_V6));
  writeHeader(buf, 2, PROV, 0, 1, PIN_LAYOUT_V6);
  const bytes = new Uint8Array(buf);
  const reason = (b: Uint8Array, p = PROV, layout = PIN_LAYOUT_V6) => {
    const c = checkHeader(b, p, layout);
    return c.ok ? 'ok' : c.reason;
  };
  t.equal(reason(bytes), 'ok');
  t.match(reason(bytes, { ...PROV, bootId: 'ffffffff-0000-0000-0000-000000000000' }), /another boot/);
  t.match(reason(bytes, { ...PROV, netns: 'net:[4026531840]' }), /another network namespace/);
  const v2 = bytes.slice();
  v2[4] = 2;
  t.match(reason(v2), /layout version 2; this tunproxy reads version 1/);
  const bad = bytes.slice();
  bad[16] = 3;
  t.match(reason(bad), /header checksum mismatch/);
  t.match(reason(bytes.slice(0, bytes.length - 1)), /truncated/);
  t.match(reason(bytes, PROV, PIN_LAYOUT_V4), /an IPv6 connection table where an IPv4 one belongs/);
  const v4 = new ArrayBuffer(pinFileSize(2));
  writeHeader(v4, 2, PROV, 0, 1);
  t.match(reason(new Uint8Array(v4)), /an IPv4 connection table where an IPv6 one belongs/);
  t.end();
});

t.test('openPinnedConntrack6: a .ct6 file left by a killed process is recovered beside the IPv4 one; foreign ones are set aside, never trusted', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-pin6-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const a4 = openPinnedConntrack({ dir, name: 'tun0.ct', maxEntries: 16, clock: () => 10, provenance: PROV });
  const a = openPinnedConntrack6({ dir, name: 'tun0.ct6', maxEntries: 16, clock: () => 10, provenance: PROV });
  t.same(a.found, { status: 'none' });
  t.equal(a4.conntrack.size, 0);
  const e = tcpFlow(a.conntrack, 777, 10);
  a.conntrack.update(e, CT_DIR_ORIGINAL, 0x02, 80, 10);
  a.conntrack.update(e, CT_DIR_REPLY, 0x12, 80, 10);
  // no close, no save: the process "died" here; the file holds what was written
  t.equal(readFileSync(a.path).length, pinFileSize(16, PIN_LAYOUT_V6));
  const b = openPinnedConntrack6({ dir, name: 'tun0.ct6', maxEntries: 16, clock: () => 0, provenance: PROV, serviceNames: [NAME] });
  t.equal(b.found.status, 'recovered');
  if (b.found.status === 'recovered') {
    t.equal(b.found.recovery.restored, 1);
    t.equal(b.found.header.pid, process.pid);
  }
  t.equal(b.conntrack.size, 1);
  const back = [...b.conntrack.entries()][0];
  t.equal(back.state, 2, 'SYN_RECV');
  t.equal(b.conntrack.address(back, CT6_REPLY_SRC), POD);
  t.same(readdirSync(dir).sort(), ['tun0.ct', 'tun0.ct6'], 'the new files replaced the old ones; no temporary left');

  // the same file seen from another namespace: set aside, an empty table
  const c = openPinnedConntrack6({ dir, name: 'tun0.ct6', maxEntries: 16, provenance: { ...PROV, netns: 'net:[1]' } });
  t.equal(c.found.status, 'set-aside');
  if (c.found.status === 'set-aside') {
    t.match(c.found.reason, /another network namespace/);
    t.ok(existsSync(c.found.movedTo));
    t.match(c.found.movedTo, /tun0\.ct6\.set-aside-/);
  }
  t.equal(c.conntrack.size, 0);

  // an IPv4 table where the IPv6 one belongs (a file copied over it, a name mixed up)
  writeFileSync(join(dir, 'tun1.ct6'), readFileSync(join(dir, 'tun0.ct')));
  const d = openPinnedConntrack6({ dir, name: 'tun1.ct6', maxEntries: 4, provenance: PROV });
  t.equal(d.found.status, 'set-aside');
  if (d.found.status === 'set-aside') t.match(d.found.reason, /an IPv4 connection table where an IPv6 one belongs/);
  t.equal(d.conntrack.size, 0);

  // garbage
  writeFileSync(join(dir, 'tun2.ct6'), '{"not":"a table"}');
  const g = openPinnedConntrack6({ dir, name: 'tun2.ct6', maxEntries: 4, provenance: PROV });
  t.equal(g.found.status, 'set-aside');
  t.end();
});

t.test('a flow the IPv6 packet path creates (insert6Keyed, with the keys it hashed) is pinned too', async (t) => {
  const { validateRuleSet } = await import('../../control/validate.ts');
  const { compile } = await import('../../control/compile.ts');
  const { Pipeline, V_FORWARD } = await import('../../dataplane/pipeline.ts');
  const { Rng } = await import('../../dataplane/select.ts');
  const { writeIpv6Header, l4Checksum6 } = await import('../../dataplane/wire/ipv6.ts');
  const r = validateRuleSet({
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' },
    services: [{ namespace: 'default', name: 'dns', clusterIP: 'fd00:10:96::a', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack', ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }], endpoints: [{ address: 'fd00:10:64:1::7' }] }],
  });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  const { ct, store } = table(4);
  const pl = new Pipeline({ rng: new Rng(1), conntrack6: ct });
  const p = new Uint8Array(53);
  writeIpv6Header(p, 0, 13, 17, 64, parseIPv6('2001:db8::35')!, 0, parseIPv6('fd00:10:96::a')!, 0);
  p.set([0x9c, 0x40, 0, 53, 0, 13], 40);
  p.set(Buffer.from('hello'), 48);
  const k = l4Checksum6(p, 0, 40, 13, 6, 17);
  p[46] = k >> 8; p[47] = k;
  t.equal(pl.process(p, 0, p.length, compile(r.model), 1000), V_FORWARD);
  t.equal(ct.size, 1, 'one flow');
  const w = new Int32Array(store.buffer);
  const rec = readRecord6(w, new Float64Array(store.buffer), 0);
  if (typeof rec === 'string') throw new Error(`record 0 is ${rec}`);
  t.equal(rec.proto, PROTO_UDP);
  t.same([...rec.words.subarray(CT6_ORIG_SRC, CT6_ORIG_SRC + 4)], [...parseIPv6('2001:db8::35')!], 'the record holds the client');
  t.same([...rec.words.subarray(CT6_REPLY_SRC, CT6_REPLY_SRC + 4)], [...parseIPv6('fd00:10:64:1::7')!], 'and the endpoint');
  t.same([rec.origSport, rec.origDport, rec.replySport], [40000, 53, 5353]);
});
