/**
 * npm run bench:packet [-- --sizes 10,100000 --rounds 3]
 *
 * ns per packet through Pipeline.process for a new flow (lookup, endpoint
 * choice, conntrack insert, DNAT + masquerade rewrite) and for an established
 * flow (conntrack hit, rewrite), at 10 and 100 000 services; the connection
 * table's insert and lookup rates and heap bytes per tracked flow at
 * 1 000 000 flows; and whether the established path allocates (minor GCs
 * counted while it runs). The same for IPv6 (the synthetic services with
 * every address IPv6, through the IPv6 path: newFlowNsV6, establishedNsV6)
 * and the IPv6 connection table's bytes per flow (conntrackBytesPerEntryV6).
 * --rounds rounds of IPv4 and IPv6 side by side, medians over them (below).
 * bench/results/packet.{json,md}.
 */
import { Bench } from 'tinybench';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { syntheticRuleSet } from './gen.ts';
import { argList, argNum, median, gc, machine, writeResults, fmt } from './common.ts';
import { compile } from '../control/compile.ts';
import { Pipeline, V_FORWARD } from '../dataplane/pipeline.ts';
import { Conntrack } from '../dataplane/conntrack.ts';
import { Conntrack6, CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST } from '../dataplane/conntrack6.ts';
import { parseIPv6 } from '../dataplane/addr6.ts';
import { writeIpv6Header, l4Checksum6 } from '../dataplane/wire/ipv6.ts';
import { Rng } from '../dataplane/select.ts';
import { parseIPv4, PROTO_UDP } from '../dataplane/addr.ts';
import { writeIpv4Header, ipv4FillChecksum } from '../dataplane/wire/ipv4.ts';
import { writeUdpHeader, udpFillChecksum } from '../dataplane/wire/udp.ts';
import type { Tables } from '../dataplane/tables.ts';

const sizes = argList('sizes', [10, 100000]);
const FLOWS = 1_000_000;

/** A UDP packet with a 64-byte payload from src:sport to dst:dport, checksums filled. */
function udpPacket(buf: Uint8Array, off: number, src: number, dst: number, sport: number, dport: number): number {
  const len = 20 + 8 + 64;
  writeIpv4Header(buf, off, len, 1, 0x4000, 64, PROTO_UDP, src, dst);
  writeUdpHeader(buf, off + 20, sport, dport, 8 + 64);
  for (let i = 0; i < 64; i++) buf[off + 28 + i] = i;
  ipv4FillChecksum(buf, off);
  udpFillChecksum(buf, off);
  return len;
}

interface PacketRow {
  services: number;
  newFlowNs: number;
  establishedNs: number;
  copyNs: number;
  minorGcsEstablished: number;
  establishedPackets: number;
}

let minorGcs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if ((e as { detail?: { kind?: number } }).detail?.kind === 1) minorGcs++;
}).observe({ entryTypes: ['gc'] });

async function perPacket(n: number): Promise<PacketRow> {
  const rs = syntheticRuleSet(n, { endpoints: 3, protocol: 'UDP', port: 53, targetPort: 5353 });
  const tables: Tables = compile(rs);
  const pl = new Pipeline({ conntrack: new Conntrack({ maxEntries: 1 << 20 }), rng: new Rng(1) });
  const SLOT = 128;
  const K = 4096;
  // templates: new flows to services spread over the whole set, each from its own source port/address
  const rng = new Rng(7);
  // the templates and the packet worked on in one buffer: each packet is copied by copyWithin (a memcpy,
  // no allocation, its cost alike for 92 and 112 bytes, the "copy" column), not byte by byte in JS,
  // which cost ~100 ns a packet and ~20 ns more for IPv6's 20 more bytes: the harness, not the pipeline
  const E = 1024;
  const mem = new Uint8Array((K + E + 1) * SLOT);
  const EST = K * SLOT;
  const WORK = (K + E) * SLOT;
  const newT = mem.subarray(0, EST);
  const vips = rs.services.map((s) => parseIPv4(s.clusterIP!));
  let flow = 0;
  const fillNew = () => {
    for (let i = 0; i < K; i++) {
      const src = parseIPv4('192.168.0.0') + (flow >>> 14);
      udpPacket(newT, i * SLOT, src, vips[rng.below(n)], 1024 + (flow & 16383), 53);
      flow++;
    }
  };
  fillNew();
  const work = mem.subarray(WORK, WORK + SLOT);
  let now = 0;
  let ni = 0;
  // established: 1024 flows set up first, then their packets over and over
  const estT = mem.subarray(EST, WORK);
  for (let i = 0; i < E; i++) {
    const len = udpPacket(estT, i * SLOT, parseIPv4('172.31.0.1') + i, vips[i % n], 40000, 53);
    mem.copyWithin(WORK, EST + i * SLOT, EST + i * SLOT + len);
    if (pl.process(work, 0, len, tables, now) !== V_FORWARD) throw new Error('setup flow not forwarded');
  }
  let ei = 0;
  const LEN = 92;
  const B = 256;
  const bench = new Bench({ time: 1000, warmupTime: 200 });
  bench.add('copy only', () => {
    for (let k = 0; k < B; k++) {
      const o = (ei++ & (E - 1)) * SLOT;
      mem.copyWithin(WORK, EST + o, EST + o + LEN);
    }
  });
  bench.add('established', () => {
    now += 1;
    for (let k = 0; k < B; k++) {
      const o = (ei++ & (E - 1)) * SLOT;
      mem.copyWithin(WORK, EST + o, EST + o + LEN);
      pl.process(work, 0, LEN, tables, now);
    }
  });
  bench.add('new flow', () => {
    now += 1;
    for (let k = 0; k < B; k++) {
      if (ni === K) {
        fillNew();
        ni = 0;
      }
      const o = ni++ * SLOT;
      mem.copyWithin(WORK, o, o + LEN);
      pl.process(work, 0, LEN, tables, now);
    }
  });
  await bench.run();
  const [copy, est, nf] = bench.tasks;
  // allocation on the established path: minor GCs while 5 million established packets go through
  // the flows of the established set were evicted by the new-flow run? set them up again
  for (let i = 0; i < E; i++) {
    mem.copyWithin(WORK, EST + i * SLOT, EST + i * SLOT + LEN);
    pl.process(work, 0, LEN, tables, now);
  }
  gc();
  const newBefore = pl.counters.events[1];
  const before = minorGcs;
  const P = 5_000_000;
  for (let p = 0; p < P; p++) {
    const o = (p & (E - 1)) * SLOT;
    mem.copyWithin(WORK, EST + o, EST + o + LEN);
    pl.process(work, 0, LEN, tables, now + p / 1e6); // 5 s of traffic: the flows stay alive
  }
  await new Promise((r) => setImmediate(r));
  const gcs = minorGcs - before;
  const s = pl.counters.snapshot();
  if (s.events.new_flows !== newBefore) throw new Error(`the established loop created ${s.events.new_flows - newBefore} flows`);
  if (s.drops.malformed > 0) throw new Error('malformed packets in the benchmark');
  return {
    services: n,
    newFlowNs: (nf.result!.latency.p50! * 1e6) / B,
    establishedNs: (est.result!.latency.p50! * 1e6) / B,
    copyNs: (copy.result!.latency.p50! * 1e6) / B,
    minorGcsEstablished: gcs,
    establishedPackets: P,
  };
}

/** An IPv6 UDP packet with a 64-byte payload, checksum filled. */
function udpPacket6(buf: Uint8Array, off: number, src: Uint32Array, dst: Uint32Array, sport: number, dport: number, dstOff = 0): number {
  const len = 40 + 8 + 64;
  writeIpv6Header(buf, off, 8 + 64, PROTO_UDP, 64, src, 0, dst, dstOff);
  const u = off + 40;
  buf[u] = sport >> 8; buf[u + 1] = sport; buf[u + 2] = dport >> 8; buf[u + 3] = dport; buf[u + 4] = 0; buf[u + 5] = 72;
  for (let i = 0; i < 64; i++) buf[u + 8 + i] = i;
  buf[u + 6] = 0; buf[u + 7] = 0;
  const k = l4Checksum6(buf, off, u, 72, 6, PROTO_UDP);
  buf[u + 6] = (k || 0xffff) >> 8;
  buf[u + 7] = k || 0xffff;
  return len;
}

/** perPacket for IPv6: the same services (gen.ts family 'ipv6'), traffic and measurement. */
async function perPacket6(n: number): Promise<PacketRow> {
  const rs = syntheticRuleSet(n, { endpoints: 3, protocol: 'UDP', port: 53, targetPort: 5353, family: 'ipv6' });
  const tables: Tables = compile(rs);
  if (!tables.v6) throw new Error('no IPv6 tables');
  const pl = new Pipeline({ conntrack: new Conntrack({ maxEntries: 16 }), conntrack6: new Conntrack6({ maxEntries: 1 << 20 }), rng: new Rng(1) });
  const SLOT = 128;
  const K = 4096;
  const rng = new Rng(7);
  // one buffer, packets copied by copyWithin, as perPacket
  const E = 1024;
  const mem = new Uint8Array((K + E + 1) * SLOT);
  const EST = K * SLOT;
  const WORK = (K + E) * SLOT;
  const newT = mem.subarray(0, EST);
  const vips = rs.services.map((s) => parseIPv6(s.clusterIP!)!);
  // the ClusterIPs' words in one flat array (as the IPv4 run keeps its ClusterIPs as numbers): picking one
  // at random for a template costs what it costs for IPv4, not a walk to one of 100 000 small objects
  const vipWords = new Uint32Array(n * 4);
  vips.forEach((v, i) => vipWords.set(v, i * 4));
  const src = parseIPv6('2001:db8:168::')!;
  let flow = 0;
  const fillNew = () => {
    for (let i = 0; i < K; i++) {
      src[3] = flow >>> 14;
      const v = rng.below(n);
      udpPacket6(newT, i * SLOT, src, vipWords, 1024 + (flow & 16383), 53, v * 4);
      flow++;
    }
  };
  fillNew();
  const work = mem.subarray(WORK, WORK + SLOT);
  let now = 0;
  let ni = 0;
  const estT = mem.subarray(EST, WORK);
  const client = parseIPv6('2001:db8:172::1')!;
  for (let i = 0; i < E; i++) {
    client[3] = i + 1;
    const len = udpPacket6(estT, i * SLOT, client, vips[i % n], 40000, 53);
    mem.copyWithin(WORK, EST + i * SLOT, EST + i * SLOT + len);
    if (pl.process(work, 0, len, tables, now) !== V_FORWARD) throw new Error('setup flow not forwarded');
  }
  let ei = 0;
  const LEN = 112;
  const B = 256;
  const bench = new Bench({ time: 1000, warmupTime: 200 });
  bench.add('copy only', () => {
    for (let k = 0; k < B; k++) {
      const o = (ei++ & (E - 1)) * SLOT;
      mem.copyWithin(WORK, EST + o, EST + o + LEN);
    }
  });
  bench.add('established', () => {
    now += 1;
    for (let k = 0; k < B; k++) {
      const o = (ei++ & (E - 1)) * SLOT;
      mem.copyWithin(WORK, EST + o, EST + o + LEN);
      pl.process(work, 0, LEN, tables, now);
    }
  });
  bench.add('new flow', () => {
    now += 1;
    for (let k = 0; k < B; k++) {
      if (ni === K) {
        fillNew();
        ni = 0;
      }
      const o = ni++ * SLOT;
      mem.copyWithin(WORK, o, o + LEN);
      pl.process(work, 0, LEN, tables, now);
    }
  });
  await bench.run();
  const [copy, est, nf] = bench.tasks;
  for (let i = 0; i < E; i++) {
    mem.copyWithin(WORK, EST + i * SLOT, EST + i * SLOT + LEN);
    pl.process(work, 0, LEN, tables, now);
  }
  gc();
  const newBefore = pl.counters.events[1];
  const before = minorGcs;
  const P = 5_000_000;
  for (let p = 0; p < P; p++) {
    const o = (p & (E - 1)) * SLOT;
    mem.copyWithin(WORK, EST + o, EST + o + LEN);
    pl.process(work, 0, LEN, tables, now + p / 1e6);
  }
  await new Promise((r) => setImmediate(r));
  const gcs = minorGcs - before;
  const s = pl.counters.snapshot();
  if (s.events.new_flows !== newBefore) throw new Error(`the established loop created ${s.events.new_flows - newBefore} flows`);
  if (s.drops.malformed > 0) throw new Error('malformed packets in the benchmark');
  if (s.events.ipv6_packets === 0) throw new Error('no packet took the IPv6 path');
  return {
    services: n,
    newFlowNs: (nf.result!.latency.p50! * 1e6) / B,
    establishedNs: (est.result!.latency.p50! * 1e6) / B,
    copyNs: (copy.result!.latency.p50! * 1e6) / B,
    minorGcsEstablished: gcs,
    establishedPackets: P,
  };
}

async function conntrackAtScale(): Promise<{ bytesPerEntry: number; lookupsPerSec: number; insertsPerSec: number }> {
  gc();
  const m0 = process.memoryUsage();
  const ct = new Conntrack({ maxEntries: FLOWS + 1000 });
  const client = parseIPv4('100.64.0.0');
  const ep = parseIPv4('10.64.0.10');
  const masq = parseIPv4('10.64.0.1');
  const vip = parseIPv4('10.96.0.10');
  const info = { serviceName: 'ns-0/svc-0:p', serviceIndex: 0, endpointAddr: ep, endpointPort: 8080, masquerade: true };
  const t0 = performance.now();
  for (let i = 0; i < FLOWS; i++) {
    const src = client + (i >>> 14);
    const sport = 1024 + (i & 16383);
    // a distinct reply tuple per flow (64 000 masquerade ports per masquerade address)
    if (ct.insert(PROTO_UDP, src, vip, sport, 53, ep, masq + Math.floor(i / 64000), 8080, 1024 + (i % 64000), 0, info) === null) throw new Error(`insert ${i} refused`);
  }
  const insertsPerSec = FLOWS / ((performance.now() - t0) / 1000);
  gc();
  const m1 = process.memoryUsage();
  const bytes = m1.heapUsed + m1.arrayBuffers - (m0.heapUsed + m0.arrayBuffers);
  if (ct.size !== FLOWS) throw new Error(`size ${ct.size}`);
  // lookups of random existing flows (original direction)
  const rng = new Rng(3);
  const rates: number[] = [];
  for (let r = 0; r < 5; r++) {
    let hits = 0;
    const L = 2_000_000;
    const t1 = performance.now();
    for (let k = 0; k < L; k++) {
      const i = rng.below(FLOWS);
      if (ct.lookup(PROTO_UDP, client + (i >>> 14), vip, 1024 + (i & 16383), 53, 1) !== null) hits++;
    }
    rates.push(L / ((performance.now() - t1) / 1000));
    if (hits !== L) throw new Error(`lookups missed: ${L - hits}`);
  }
  return { bytesPerEntry: bytes / FLOWS, lookupsPerSec: median(rates), insertsPerSec };
}

/** The IPv6 table at FLOWS flows: heap + typed-array bytes per flow, lookups/s. */
async function conntrack6AtScale(): Promise<{ bytesPerEntry: number; lookupsPerSec: number; insertsPerSec: number }> {
  gc();
  const m0 = process.memoryUsage();
  const ct = new Conntrack6({ maxEntries: FLOWS + 1000 });
  const info = { serviceName: 'ns-0/svc-0:p', serviceIndex: 0, masquerade: true };
  const t = new Uint32Array(16);
  t.set(parseIPv6('2001:db8:100::')!, CT6_ORIG_SRC);
  t.set(parseIPv6('fd00:10:96::a')!, CT6_ORIG_DST);
  t.set(parseIPv6('fd00:10:244:1::a')!, CT6_REPLY_SRC);
  t.set(parseIPv6('fd00::1')!, CT6_REPLY_DST);
  const t0 = performance.now();
  for (let i = 0; i < FLOWS; i++) {
    t[CT6_ORIG_SRC + 3] = i >>> 14;
    t[CT6_REPLY_DST + 3] = 1 + Math.floor(i / 64000);
    const sport = 1024 + (i & 16383);
    if (ct.insert6(PROTO_UDP, t, sport, 53, 8080, 1024 + (i % 64000), 0, info) === null) throw new Error(`insert ${i} refused`);
  }
  const insertsPerSec = FLOWS / ((performance.now() - t0) / 1000);
  gc();
  const m1 = process.memoryUsage();
  const bytes = m1.heapUsed + m1.arrayBuffers - (m0.heapUsed + m0.arrayBuffers);
  if (ct.size !== FLOWS) throw new Error(`size ${ct.size}`);
  const rng = new Rng(3);
  const p = new Uint32Array(8);
  p.set(t.subarray(CT6_ORIG_SRC, CT6_ORIG_SRC + 8));
  const rates: number[] = [];
  for (let r = 0; r < 5; r++) {
    let hits = 0;
    const L = 2_000_000;
    const t1 = performance.now();
    for (let k = 0; k < L; k++) {
      const i = rng.below(FLOWS);
      p[3] = i >>> 14;
      if (ct.lookup6(PROTO_UDP, p, 0, 4, 1024 + (i & 16383), 53, 1) !== null) hits++;
    }
    rates.push(L / ((performance.now() - t1) / 1000));
    if (hits !== L) throw new Error(`lookups missed: ${L - hits}`);
  }
  return { bytesPerEntry: bytes / FLOWS, lookupsPerSec: median(rates), insertsPerSec };
}

// each size and the connection-table run in a fresh process, so that one's garbage is not counted in another's GCs
const one = process.argv.indexOf('--one');
if (one >= 0) {
  const what = process.argv[one + 1];
  const r = what === 'conntrack' ? await conntrackAtScale() : what === 'conntrack6' ? await conntrack6AtScale() : what.startsWith('v6:') ? await perPacket6(Number(what.slice(3))) : await perPacket(Number(what));
  process.stdout.write(JSON.stringify(r) + '\n');
  process.exit(0);
}
function child<T>(what: string): T {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url), '--one', what], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`bench:packet --one ${what} failed with ${r.status}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}
// Rounds: each round measures every size in IPv4 and then in IPv6, one fresh process each, side by side;
// a figure is the median over the rounds. The machine drifts over the minutes a run takes (it is shared),
// and one process's memory layout can be lucky or not: IPv4 first and IPv6 minutes later would put the
// drift in the ratio the IPv6 bars are about.
const rounds = Math.max(1, argNum('rounds', 3));
const perRound4: PacketRow[][] = sizes.map(() => []);
const perRound6: PacketRow[][] = sizes.map(() => []);
for (let r = 0; r < rounds; r++) {
  sizes.forEach((n, i) => {
    const a = child<PacketRow>(String(n));
    const b = child<PacketRow>(`v6:${n}`);
    perRound4[i].push(a);
    perRound6[i].push(b);
    console.error(`round ${r + 1}/${rounds}: ${JSON.stringify(a)}\n  ipv6: ${JSON.stringify(b)}`);
  });
}
/** One row of medians over the rounds (minor GCs: the most any round saw). */
function medianRow(rs: PacketRow[]): PacketRow {
  return {
    services: rs[0].services,
    newFlowNs: median(rs.map((r) => r.newFlowNs)),
    establishedNs: median(rs.map((r) => r.establishedNs)),
    copyNs: median(rs.map((r) => r.copyNs)),
    minorGcsEstablished: Math.max(...rs.map((r) => r.minorGcsEstablished)),
    establishedPackets: rs[0].establishedPackets,
  };
}
const rows = perRound4.map(medianRow);
const rows6 = perRound6.map(medianRow);
const ct = child<{ bytesPerEntry: number; lookupsPerSec: number; insertsPerSec: number }>('conntrack');
const ct6 = child<{ bytesPerEntry: number; lookupsPerSec: number; insertsPerSec: number }>('conntrack6');
const json = {
  newFlowNs: Object.fromEntries(rows.map((r) => [String(r.services), r.newFlowNs])),
  establishedNs: Object.fromEntries(rows.map((r) => [String(r.services), r.establishedNs])),
  conntrackBytesPerEntry: ct.bytesPerEntry,
  conntrackLookupsPerSec: ct.lookupsPerSec,
  conntrackInsertsPerSec: ct.insertsPerSec,
  conntrackBytesPerEntryV6: ct6.bytesPerEntry,
  conntrackLookupsPerSecV6: ct6.lookupsPerSec,
  conntrackInsertsPerSecV6: ct6.insertsPerSec,
  copyNs: Object.fromEntries(rows.map((r) => [String(r.services), r.copyNs])),
  minorGcsDuringEstablished: Object.fromEntries(rows.map((r) => [String(r.services), r.minorGcsEstablished])),
  newFlowNsV6: Object.fromEntries(rows6.map((r) => [String(r.services), r.newFlowNs])),
  establishedNsV6: Object.fromEntries(rows6.map((r) => [String(r.services), r.establishedNs])),
  copyNsV6: Object.fromEntries(rows6.map((r) => [String(r.services), r.copyNs])),
  minorGcsDuringEstablishedV6: Object.fromEntries(rows6.map((r) => [String(r.services), r.minorGcsEstablished])),
  rounds,
};
const md = [
  '# Packet path: `Pipeline.process`',
  '',
  `One run on ${machine()}. Command: \`npm run bench:packet\`.`,
  'UDP, 64-byte payload, ClusterIP traffic from outside the cluster (DNAT + masquerade). Per process: the median of tinybench samples of 256 packets;',
  'each packet is first copied from a template (the "copy" column, included in the figures).',
  `${rounds} rounds; each round measures every size in IPv4 and then in IPv6, each in a fresh process, side by side; a figure is the median over the rounds (minor GCs: the most in any round).`,
  '',
  '| services | new flow ns/packet | established ns/packet | copy ns | minor GCs in 5 M established packets |',
  '|---:|---:|---:|---:|---:|',
  ...rows.map((r) => `| ${fmt(r.services)} | ${r.newFlowNs.toFixed(0)} | ${r.establishedNs.toFixed(0)} | ${r.copyNs.toFixed(0)} | ${r.minorGcsEstablished} |`),
  '',
  'IPv6 (the same services and traffic as single-stack IPv6 services, bench/gen.ts `family: ipv6`; 112-byte packets). Bars: established ≤ 1.25× IPv4, new flow ≤ 1.3× IPv4.',
  '',
  '| services | new flow ns/packet | × IPv4 | established ns/packet | × IPv4 | copy ns | minor GCs in 5 M established packets |',
  '|---:|---:|---:|---:|---:|---:|---:|',
  ...rows6.map((r, i) => `| ${fmt(r.services)} | ${r.newFlowNs.toFixed(0)} | ${(r.newFlowNs / rows[i].newFlowNs).toFixed(2)} | ${r.establishedNs.toFixed(0)} | ${(r.establishedNs / rows[i].establishedNs).toFixed(2)} | ${r.copyNs.toFixed(0)} | ${r.minorGcsEstablished} |`),
  '',
  `Connection table at ${fmt(FLOWS)} flows: ${ct.bytesPerEntry.toFixed(0)} bytes per flow (heap + typed arrays), ${fmt(ct.lookupsPerSec / 1e6, 2)} M lookups/s, ${fmt(ct.insertsPerSec / 1e6, 2)} M inserts/s.`,
  `IPv6 connection table (Conntrack6: the same entries, addresses in a side array) at ${fmt(FLOWS)} flows: ${ct6.bytesPerEntry.toFixed(0)} bytes per flow, ${fmt(ct6.lookupsPerSec / 1e6, 2)} M lookups/s, ${fmt(ct6.insertsPerSec / 1e6, 2)} M inserts/s.`,
  '',
].join('\n');
writeResults('packet', json, md);
