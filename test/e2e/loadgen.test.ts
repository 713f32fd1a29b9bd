/**
 * The load generator: its packets (literal bytes, checksums that verify), the
 * 5-tuple space, and real runs in a lab of its own (tp-lg<pid>) against the
 * C responder on the plain routed path: every mode answers, counts and time
 * bound a run, an open loop keeps its rate, a silent port loses everything.
 */
import t from 'tap';
import { buildSyn, buildSyn6, buildUdp, buildUdp6, nearCeiling, parseSources, runLoad, tupleAt } from '../../scripts/loadgen.ts';
import { CLIENT_POD_SOURCES6, CLIENT_SOURCES6, e2eLabUp } from '../../bench/e2e-lab.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import type { E2eLab } from '../../bench/e2e-lab.ts';
import { netnsUnavailableReason } from '../../scripts/ns.ts';
import { LoadAgent } from '../../bench/e2e-run.ts';

/** ones' complement sum over the pseudo-header and the L4 bytes: 0xffff when the checksum is right */
function verifies(b: Uint8Array, len: number): boolean {
  const src = (b[12] << 24) | (b[13] << 16) | (b[14] << 8) | b[15];
  const dst = (b[16] << 24) | (b[17] << 16) | (b[18] << 8) | b[19];
  const l4len = len - 20;
  let acc = ((src >>> 16) & 0xffff) + (src & 0xffff) + ((dst >>> 16) & 0xffff) + (dst & 0xffff) + b[9] + l4len;
  for (let i = 20; i < len; i += 2) acc += (b[i] << 8) | (i + 1 < len ? b[i + 1] : 0);
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return acc === 0xffff;
}

t.test('UDP request: literal bytes', async (t) => {
  const b = new Uint8Array(64);
  const n = buildUdp(b, 0xc0a85001, 40000, 0x0a60000a, 53, 0x01020304, 8);
  t.equal(n, 36);
  t.same(
    [...b.subarray(0, 36)],
    [
      0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 80, 1, 10, 96, 0, 10, // IPv4, DF, TTL 64, UDP, checksum left to the kernel
      0x9c, 0x40, 0, 53, 0, 16, b[26], b[27], // 40000 → 53, length 16, checksum
      1, 2, 3, 4, 0, 0, 0, 0, // the request id, then zeros
    ],
  );
  t.ok(verifies(b, n), 'UDP checksum verifies');
});

t.test('TCP SYN: ISN is the request id, MSS option, checksum verifies', async (t) => {
  const b = new Uint8Array(64);
  const n = buildSyn(b, 0x0a780001, 1024, 0x0a60000a, 80, 0xdeadbeef);
  t.equal(n, 44);
  t.same([...b.subarray(20, 34)], [0x04, 0x00, 0x00, 80, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0x60, 0x02]);
  t.same([...b.subarray(40, 44)], [2, 4, 0x05, 0xb4]);
  t.ok(verifies(b, n));
});

/** the same over IPv6's pseudo-header (RFC 8200 §8.1): both addresses, the upper-layer length, the next header */
function verifies6(b: Uint8Array, len: number): boolean {
  let acc = b[6] + (len - 40);
  for (let i = 8; i < 40; i += 2) acc += (b[i] << 8) | b[i + 1];
  for (let i = 40; i < len; i += 2) acc += (b[i] << 8) | (i + 1 < len ? b[i + 1] : 0);
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return acc === 0xffff;
}

const hex = (b: Uint8Array, n: number) => Buffer.from(b.subarray(0, n)).toString('hex');

// the bytes below were read back by `tcpdump -vvv` (link-type RAW): "[udp sum ok]", "cksum 0xff14 (correct)"
t.test('IPv6 UDP request: literal bytes, the checksum over IPv6\'s pseudo-header', async (t) => {
  const b = new Uint8Array(128);
  const n = buildUdp6(b, parseIPv6('fd00:80::1')!, 40000, parseIPv6('fd00:10:96::a')!, 53, 0x01020304, 8);
  t.equal(n, 56);
  t.equal(
    hex(b, n),
    '60000000' + '0010' + '11' + '40' + // version 6, payload length 16, next header UDP, hop limit 64
      'fd000080000000000000000000000001' + 'fd00001000960000000000000000000a' +
      '9c40' + '0035' + '0010' + '6420' + // 40000 → 53, length 16, checksum
      '01020304' + '00000000', // the request id, then zeros
  );
  t.ok(verifies6(b, n), 'UDP checksum verifies');
});

t.test('IPv6 TCP SYN: ISN is the request id, MSS 1440, checksum verifies', async (t) => {
  const b = new Uint8Array(128);
  const n = buildSyn6(b, parseIPv6('fd00:10:64:121::1')!, 1024, parseIPv6('fd00:10:96::a')!, 80, 0xdeadbeef);
  t.equal(n, 64);
  t.equal(hex(b, 8), '6000000000180640', 'payload length 24, next header TCP, hop limit 64');
  t.equal(hex(b.subarray(40), 24), '04000050deadbeef000000006002faf0ff140000020405a0');
  t.ok(verifies6(b, n));
});

t.test('IPv6 sources: a /96 or longer, its last word varies; families must match', async (t) => {
  const s = parseSources('fd00:80::/116');
  t.equal(s.base, 0);
  t.equal(s.count, 4096);
  t.same([...s.base6!], [0xfd000080, 0, 0, 0]);
  t.same(tupleAt(s, 4097), { src: 1, sport: 1025 });
  t.throws(() => parseSources('fd00:80::/64'), /must be \/96 or longer/);
  t.throws(() => parseSources('fd00::zz/120'), /not an IPv6 address or CIDR/);
  const base = { mode: 'new' as const, port: 53, seconds: 1 };
  await t.rejects(async () => runLoad({ ...base, target: 'fd00:10:96::a', sources: '192.168.80.0/20' }), /not of one IP family/);
  await t.rejects(async () => runLoad({ ...base, target: '10.96.0.10', sources: 'fd00:80::/116' }), /not of one IP family/);
  await t.rejects(async () => runLoad({ ...base, target: 'fd00::g', sources: 'fd00:80::/116' }), /target "fd00::g" is not an IPv6 address/);
});

t.test('5-tuple space: addresses first, then ports 1024-65535, never repeating within it', async (t) => {
  const s = parseSources('192.168.80.0/30');
  t.same(s, { base: 0xc0a85000, count: 4 });
  t.same(tupleAt(s, 0), { src: 0xc0a85000, sport: 1024 });
  t.same(tupleAt(s, 3), { src: 0xc0a85003, sport: 1024 });
  t.same(tupleAt(s, 4), { src: 0xc0a85000, sport: 1025 });
  const seen = new Set<string>();
  for (let i = 0; i < 4 * 64512; i += 997) seen.add(JSON.stringify(tupleAt(s, i)));
  t.equal(seen.size, Math.ceil((4 * 64512) / 997));
  t.throws(() => parseSources('nope'), /--sources "nope" is not an IPv4 address or CIDR/);
  t.ok(nearCeiling(85, 100));
  t.notOk(nearCeiling(79, 100));
  t.notOk(nearCeiling(79, null));
});

t.test('bad specs are refused with the field named', async (t) => {
  const base = { mode: 'new' as const, target: '10.0.0.1', port: 53, sources: '10.0.0.2', seconds: 1 };
  await t.rejects(async () => runLoad({ ...base, target: 'x' }), /target "x"/);
  await t.rejects(async () => runLoad({ ...base, port: 0 }), /port 0/);
  await t.rejects(async () => runLoad({ ...base, concurrency: 0 }), /concurrency 0/);
  await t.rejects(async () => runLoad({ ...base, mode: 'bogus' as 'new' }), /mode "bogus"/);
});

const reason = netnsUnavailableReason({ tun: false });
t.test('runs in a lab against the C responder (plain routed path)', { skip: reason ?? false }, async (t) => {
  let lab: E2eLab | null = null;
  let agent: LoadAgent | null = null;
  t.teardown(async () => {
    if (agent) await agent.stop();
    if (lab) await lab.down();
  });
  lab = await e2eLabUp({ prefix: `tp-lg${process.pid}`, endpoints: ['10.64.0.10'], udpPort: 5353, tcpPort: 8080, tun: false });
  agent = await LoadAgent.start(lab.clientNs);
  // timeouts long enough that a busy machine loses nothing: what is asserted is counting, not speed
  const base = { target: '10.64.0.10', sources: '192.168.80.0/20', timeoutMs: 3000 };
  let offset = 0;
  const run = async (spec: Parameters<LoadAgent['run']>[0]) => {
    const r = await agent!.run({ ...spec, tupleOffset: offset });
    offset += r.tuplesUsed;
    return r;
  };

  const nw = await run({ ...base, mode: 'new', port: 5353, seconds: 0.4, concurrency: 8 });
  t.ok(nw.completed > 10, `new flows answered: ${nw.completed}`);
  t.equal(nw.lost, 0);
  t.ok(nw.tuplesUsed >= nw.completed, 'one fresh 5-tuple per request');
  t.ok(nw.rttUs.p50 > 0 && nw.rttUs.p50 <= nw.rttUs.p99 && nw.rttUs.p99 <= nw.rttUs.max, `RTT percentiles ordered: ${JSON.stringify(nw.rttUs)}`);
  t.ok(Math.abs(nw.perSec - nw.completed / nw.seconds) / nw.perSec < 1e-3, 'rate = answered / window');

  const est = await run({ ...base, mode: 'established', port: 5353, seconds: 0.3 });
  t.ok(est.completed > 10, `established answered: ${est.completed}`);
  t.equal(est.tuplesUsed, 0, 'established uses its one 5-tuple only');

  const tcp = await run({ ...base, mode: 'tcp-connect', port: 8080, seconds: 0.3 });
  t.ok(tcp.completed > 5, `SYN-ACKs: ${tcp.completed}`);
  t.equal(tcp.refused, 0);
  const closed = await run({ ...base, mode: 'tcp-connect', port: 8081, seconds: 0.2, concurrency: 2 });
  t.equal(closed.completed, 0, 'no SYN-ACK from a closed port');
  t.ok(closed.refused > 0, `a closed port answers RST: ${closed.refused}`);

  const counted = await run({ ...base, mode: 'new', port: 5353, seconds: 5, count: 50, concurrency: 4, warmupMs: 0 });
  t.equal(counted.completed, 50, 'count bounds the run');
  t.ok(counted.seconds < 4, `and it stops early (${counted.seconds} s of a 5 s window)`);

  const paced = await run({ ...base, mode: 'new', port: 5353, seconds: 1, rate: 2000, warmupMs: 0 });
  t.equal(paced.loop, 'open');
  // never more than the rate; fewer only when the machine starves the sender
  t.ok(paced.sent > 1000 && paced.sent < 2300, `open loop at 2000/s sent ${paced.sent} in 1 s`);

  const silent = await run({ ...base, mode: 'new', port: 9999, seconds: 0.3, concurrency: 4, warmupMs: 0 });
  t.equal(silent.completed, 0, 'nothing answers on a port without a responder');
  t.ok(silent.lost > 0 && silent.lost === silent.sent, `every request lost (${silent.lost}/${silent.sent})`);
});

t.test('IPv6: runs in a dual-stack lab against the C responder (plain routed path)', { skip: reason ?? false }, async (t) => {
  let lab: E2eLab | null = null;
  const agents: LoadAgent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.stop();
    if (lab) await lab.down();
  });
  lab = await e2eLabUp({ prefix: `tp-lg6${process.pid}`, endpoints: ['10.64.0.10'], endpoints6: ['fd00:10:64::a'], ipv6: true, udpPort: 5353, tcpPort: 8080, tun: false });
  for (const [ns, sources] of [[lab.clientNs, CLIENT_SOURCES6], [lab.clientPodNs, CLIENT_POD_SOURCES6]] as const) {
    const agent = await LoadAgent.start(ns);
    agents.push(agent);
    const base = { target: 'fd00:10:64::a', sources, timeoutMs: 3000 };
    const nw = await agent.run({ ...base, mode: 'new', port: 5353, seconds: 0.3, concurrency: 8 });
    t.ok(nw.completed > 10, `${ns}: IPv6 new flows answered: ${nw.completed}`);
    t.equal(nw.lost, 0);
    t.equal(nw.sendErrors, 0);
    const est = await agent.run({ ...base, mode: 'established', port: 5353, seconds: 0.2 });
    t.ok(est.completed > 10, `${ns}: IPv6 established answered: ${est.completed}`);
    const tcp = await agent.run({ ...base, mode: 'tcp-connect', port: 8080, seconds: 0.2, tupleOffset: nw.tuplesUsed });
    t.ok(tcp.completed > 5, `${ns}: IPv6 SYN-ACKs: ${tcp.completed}`);
    const closed = await agent.run({ ...base, mode: 'tcp-connect', port: 8081, seconds: 0.2, concurrency: 2, tupleOffset: nw.tuplesUsed + tcp.tuplesUsed });
    t.equal(closed.completed, 0, 'no SYN-ACK from a closed port');
    t.ok(closed.refused > 0, `a closed port answers RST: ${closed.refused}`);
  }
  // the IPv4 half of the same lab still answers (the responder's one socket serves both families)
  const a4 = agents[0];
  const v4 = await a4.run({ mode: 'new', target: '10.64.0.10', port: 5353, sources: '192.168.80.0/20', seconds: 0.2, concurrency: 8, timeoutMs: 3000 });
  t.ok(v4.completed > 10, `IPv4 in the dual-stack lab: ${v4.completed}`);
});
