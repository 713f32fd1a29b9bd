import t from 'tap';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseIPv4, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { Conntrack, CT_DIR_ORIGINAL, CT_DIR_REPLY, type ConntrackInfo } from '../../dataplane/conntrack.ts';
import {
  checkHeader,
  openPinnedConntrack,
  PIN_HEADER_SIZE,
  PIN_RECORD_SIZE,
  pinFileSize,
  PinnedConntrack,
  PinnedStore,
  readRecord,
  serviceNameHash,
  wordsChecksum,
  writeHeader,
} from '../../dataplane/conntrack-pinned.ts';

const ip = (s: string): number => parseIPv4(s);
const CLIENT = ip('172.16.1.35');
const CLUSTER_IP = ip('10.32.0.10');
const ENDPOINT = ip('10.64.1.7');
const MASQ = ip('10.64.1.1');
const PROV = { bootId: '0b2d1a4e-6f0c-4b8e-9f57-3c2a1d0e9b88', netns: 'net:[4026532281]' };
const NAME = 'default/web:http';
const info = (masquerade = true): ConntrackInfo => ({ serviceName: NAME, serviceIndex: 3, endpointAddr: ENDPOINT, endpointPort: 8080, masquerade });
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** a table over a plain buffer with the header of PROV; conntrack time t is boot time t + 1_000_000 */
function table(capacity = 4, now = { t: 1000 }): { ct: PinnedConntrack; store: PinnedStore; now: { t: number } } {
  const buf = new ArrayBuffer(pinFileSize(capacity));
  writeHeader(buf, capacity, PROV, 1_765_000_000_000, 4242);
  const store = new PinnedStore(buf, capacity, 1_000_000);
  const ct = new PinnedConntrack({ maxEntries: capacity, clock: () => now.t, seed: 7 }, store);
  return { ct, store, now };
}

function tcpFlow(ct: Conntrack, sport: number, now: number) {
  const e = ct.insert(PROTO_TCP, CLIENT, CLUSTER_IP, sport, 80, ENDPOINT, MASQ, 8080, sport, now, info());
  if (e === null) throw new Error('refused');
  return e;
}

t.test('record layout: literal bytes of an established, masqueraded TCP flow', (t) => {
  const { ct, store } = table();
  const e = tcpFlow(ct, 40000, 1000);
  ct.update(e, CT_DIR_ORIGINAL, 0x02, 60, 1000); // SYN
  ct.update(e, CT_DIR_REPLY, 0x12, 60, 1001); // SYN/ACK
  ct.update(e, CT_DIR_ORIGINAL, 0x10, 52, 1002); // ACK: ESTABLISHED
  const rec = store.u8.subarray(PIN_HEADER_SIZE, PIN_HEADER_SIZE + PIN_RECORD_SIZE);
  const CHECK = 'cb9ab5e4';
  const expected =
    '08000000' + // seq: 4 whole writes (insert + 3 updates), each +2
    CHECK + // checksum of bytes 8..43, a known answer
    '06000000' + // TCP
    '230110ac' + '0a00200a' + // 172.16.1.35 -> 10.32.0.10 (uint32 little-endian)
    '409c' + '5000' + // 40000 -> 80
    '0701400a' + '0101400a' + // 10.64.1.7 -> 10.64.1.1
    '901f' + '409c' + // 8080 -> 40000
    '03000000' + // service index 3
    '438058b0' + // FNV-1a("default/web:http") = 0xb0588043
    '03' + '07' + '0000' + // ESTABLISHED (3), seen reply | assured | masquerade
    '0000002a12cfb941' + // deadline 1002 + 5 days (432 000 000 ms) + boot offset 1 000 000, float64
    '00000000508c2e41' + // created 1000 + 1 000 000
    '0000000000000040' + '0000000000005c40' + // original: 2 packets, 112 bytes
    '000000000000f03f' + '0000000000004e40'; // reply: 1 packet, 60 bytes
  t.equal(hex(rec), expected);
  const w = new Int32Array(rec.buffer, rec.byteOffset, PIN_RECORD_SIZE / 4);
  t.equal(w[1], wordsChecksum(w, 2, 11), 'the checksum covers bytes 8..43');
  t.equal(e.state, 3);
  t.end();
});

t.test('FNV-1a known answers', (t) => {
  t.equal(serviceNameHash(''), 0);
  t.equal(serviceNameHash('a'), 0xe40c292c); // FNV-1a 32 of "a"
  t.equal(serviceNameHash('foobar'), 0xbf9cf968);
  t.end();
});

t.test('header: literal bytes', (t) => {
  const buf = new ArrayBuffer(pinFileSize(2));
  writeHeader(buf, 2, PROV, 0, 0x01020304);
  const h = new Uint8Array(buf, 0, 148);
  t.equal(hex(h.subarray(0, 24)), '54504354' + '01000000' + '00010000' + '60000000' + '02000000' + '00000000');
  t.equal(Buffer.from(h.subarray(32, 68)).toString('latin1'), PROV.bootId);
  t.equal(Buffer.from(h.subarray(72, 88)).toString('latin1'), PROV.netns);
  t.equal(hex(h.subarray(136, 140)), '04030201');
  t.equal(hex(h.subarray(144, 148)), '01000000', 'open');
  t.end();
});

t.test('a removal moves the last record into the hole and empties the last one', (t) => {
  const { ct, store } = table();
  const a = tcpFlow(ct, 1, 1000);
  tcpFlow(ct, 2, 1000);
  const c = tcpFlow(ct, 3, 1000);
  const recC = hex(store.u8.subarray(PIN_HEADER_SIZE + 2 * PIN_RECORD_SIZE, PIN_HEADER_SIZE + 3 * PIN_RECORD_SIZE)).slice(8);
  t.ok(ct.delete(a));
  t.equal(c._slot, 0);
  t.equal(hex(store.u8.subarray(PIN_HEADER_SIZE, PIN_HEADER_SIZE + PIN_RECORD_SIZE)).slice(8), recC, 'record 0 is the third flow (seq aside)');
  t.equal(hex(store.u8.subarray(PIN_HEADER_SIZE + 2 * PIN_RECORD_SIZE, PIN_HEADER_SIZE + 3 * PIN_RECORD_SIZE)), '00'.repeat(PIN_RECORD_SIZE), 'record 2 emptied');
  t.equal(readRecord(store.w, store.f, 2), 'empty');
  t.end();
});

t.test('recovery: the flows, states, deadlines and counters come back; torn, damaged and expired records are skipped and counted', (t) => {
  const { ct, store } = table(8);
  const flows = [1, 2, 3, 4, 5].map((p) => tcpFlow(ct, p, 1000));
  for (const e of flows) {
    ct.update(e, CT_DIR_ORIGINAL, 0x02, 60, 1000);
    ct.update(e, CT_DIR_REPLY, 0x12, 60, 1000);
    ct.update(e, CT_DIR_ORIGINAL, 0x10, 52, 1000);
  }
  const u = ct.insert(PROTO_UDP, CLIENT, CLUSTER_IP, 5353, 53, ENDPOINT, MASQ, 53, 5353, 1000, { ...info(), endpointPort: 53 });
  ct.update(u!, CT_DIR_ORIGINAL, 0, 40, 1000); // UDP: 30 s
  const listing = ct.list(1000);
  // the image a crash leaves behind, damaged in three records
  const image = store.u8.slice();
  const w = new Int32Array(image.buffer);
  const rec = (i: number) => PIN_HEADER_SIZE / 4 + (i * PIN_RECORD_SIZE) / 4;
  w[rec(1)] |= 1; // torn: seq odd
  w[rec(2) + 3] ^= 0x100; // a bit of the original source flipped: checksum mismatch
  t.equal(readRecord(w, new Float64Array(image.buffer), 1), 'torn');
  t.equal(readRecord(w, new Float64Array(image.buffer), 2), 'damaged');

  // a new process: another clock origin (its time 50 = boot time 1_000_050 + 1000 - 50 ...)
  const buf2 = new ArrayBuffer(pinFileSize(8));
  writeHeader(buf2, 8, PROV, 0, 1);
  const clock2 = { t: 50 };
  const store2 = new PinnedStore(buf2, 8, 1_000_000 + 1000 - 50 + 31_000); // 31 s later: the UDP flow ran out
  const ct2 = new PinnedConntrack({ maxEntries: 8, clock: () => clock2.t, seed: 99 }, store2);
  const r = ct2.recover(image, [NAME]);
  t.same(r, { records: 6, restored: 3, torn: 1, damaged: 1, expired: 1, clashes: 0, unresolvedNames: 0 });
  const lines = listing.split('\n').filter((l) => l.startsWith('tcp'));
  const lines2 = ct2.list(50).split('\n').filter((l) => l.startsWith('tcp'));
  t.equal(lines2.length, 3);
  // the same flows, 31 s older
  for (const l of lines2) {
    const sport = /sport=(\d+)/.exec(l)![1];
    const before = lines.find((x) => x.includes(`sport=${sport} `))!;
    const secs = (s: string) => Number(s.split(/\s+/)[2]);
    t.equal(secs(l), secs(before) - 31, `flow ${sport}: 31 s less to live`);
    t.equal(l.replace(/^tcp\s+6 \d+ /, ''), before.replace(/^tcp\s+6 \d+ /, ''), `flow ${sport}: same tuples, state and flags`);
  }
  const e = ct2.lookup(PROTO_TCP, ENDPOINT, MASQ, 8080, 4, 50);
  t.ok(e, 'the reply direction is found in the rebuilt index');
  t.equal(e!.serviceName, NAME);
  t.equal(e!.origPackets, 2);
  t.equal(e!.replyBytes, 60);
  // the new table's records are whole again
  t.equal((readRecord(store2.w, store2.f, 0) as { proto: number }).proto, PROTO_TCP);
  t.equal(readRecord(store2.w, store2.f, 3), 'empty');
  t.end();
});

t.test('an unknown service name comes back as "" and is counted', (t) => {
  const { ct, store } = table();
  const e = tcpFlow(ct, 9, 1000);
  ct.update(e, CT_DIR_ORIGINAL, 0x02, 60, 1000);
  const ct2 = new PinnedConntrack({ maxEntries: 4, clock: () => 1000, seed: 1 }, new PinnedStore(new ArrayBuffer(pinFileSize(4)), 4, 1_000_000));
  const r = ct2.recover(store.u8, ['other/svc:p']);
  t.equal(r.restored, 1);
  t.equal(r.unresolvedNames, 1);
  t.equal([...ct2.entries()][0].serviceName, '');
  t.end();
});

t.test('header checks: another boot, another namespace, another layout, a damaged header, a truncated file', (t) => {
  const buf = new ArrayBuffer(pinFileSize(2));
  writeHeader(buf, 2, PROV, 0, 1);
  const bytes = new Uint8Array(buf);
  t.ok(checkHeader(bytes, PROV).ok);
  const reason = (b: Uint8Array, p = PROV) => {
    const c = checkHeader(b, p);
    return c.ok ? 'ok' : c.reason;
  };
  t.match(reason(bytes, { ...PROV, bootId: 'ffffffff-0000-0000-0000-000000000000' }), /another boot/);
  t.match(reason(bytes, { ...PROV, netns: 'net:[4026531840]' }), /another network namespace/);
  const v2 = bytes.slice();
  v2[4] = 2;
  t.match(reason(v2), /layout version 2; this tunproxy reads version 1/);
  const bad = bytes.slice();
  bad[16] = 3; // capacity changed without the checksum
  t.match(reason(bad), /header checksum mismatch/);
  t.match(reason(bytes.slice(0, bytes.length - 1)), /truncated/);
  t.match(reason(bytes.slice(0, 100)), /shorter than the 256-byte header/);
  const junk = bytes.slice();
  junk[0] = 0x7b; // '{'
  t.match(reason(junk), /bad magic/);
  t.end();
});

t.test('openPinnedConntrack: a file left by a killed process is recovered; a foreign one is set aside, never trusted', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-pin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const clock = { t: 10 };
  const a = openPinnedConntrack({ dir, name: 'tun0.ct', maxEntries: 16, clock: () => clock.t, provenance: PROV });
  t.same(a.found, { status: 'none' });
  const e = tcpFlow(a.conntrack, 777, 10);
  a.conntrack.update(e, CT_DIR_ORIGINAL, 0x02, 60, 10);
  a.conntrack.update(e, CT_DIR_REPLY, 0x12, 60, 10);
  // no close, no save: the process "died" here; the file holds what was written
  t.equal(readFileSync(a.path).length, pinFileSize(16));
  const b = openPinnedConntrack({ dir, name: 'tun0.ct', maxEntries: 16, clock: () => 0, provenance: PROV, serviceNames: [NAME] });
  t.equal(b.found.status, 'recovered');
  if (b.found.status === 'recovered') t.equal(b.found.recovery.restored, 1);
  t.equal(b.conntrack.size, 1);
  t.equal([...b.conntrack.entries()][0].state, 2, 'SYN_RECV');
  t.same(readdirSync(dir).sort(), ['tun0.ct'], 'the new file replaced the old one; no temporary left');

  // the same file seen from another namespace: set aside, an empty table
  const c = openPinnedConntrack({ dir, name: 'tun0.ct', maxEntries: 16, provenance: { ...PROV, netns: 'net:[1]' } });
  t.equal(c.found.status, 'set-aside');
  if (c.found.status === 'set-aside') {
    t.match(c.found.reason, /another network namespace/);
    t.ok(existsSync(c.found.movedTo));
    t.match(c.found.movedTo, /tun0\.ct\.set-aside-/);
  }
  t.equal(c.conntrack.size, 0);

  // garbage where the table should be
  writeFileSync(join(dir, 'tun1.ct'), '{"not":"a table"}');
  const d = openPinnedConntrack({ dir, name: 'tun1.ct', maxEntries: 4, provenance: PROV });
  t.equal(d.found.status, 'set-aside');
  t.equal(d.conntrack.size, 0);
  t.end();
});

t.test('a smaller capacity than the table is refused', (t) => {
  const store = new PinnedStore(new ArrayBuffer(pinFileSize(2)), 2, 0);
  t.throws(() => new PinnedConntrack({ maxEntries: 4 }, store), /holds 2 records, the table up to 4/);
  t.end();
});
