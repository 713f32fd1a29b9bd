/**
 * node --import tsx bench/pinned-overhead.ts [--time ms]
 *
 * What the pinned connection table costs on the packet path: ns per packet
 * through Pipeline.process, established flow and new flow, with the plain
 * Conntrack and with the PinnedConntrack (records in /dev/shm), side by side
 * in one process (10 services, UDP, DNAT + masquerade, as bench:packet).
 * Prints a table; writes no results file (bench:packet is the reference).
 */
import { Bench } from 'tinybench';
import { mkdtempSync, rmSync } from 'node:fs';
import { syntheticRuleSet } from './gen.ts';
import { argNum } from './common.ts';
import { compile } from '../control/compile.ts';
import { Pipeline, V_FORWARD } from '../dataplane/pipeline.ts';
import { Conntrack } from '../dataplane/conntrack.ts';
import { openPinnedConntrack } from '../dataplane/conntrack-pinned.ts';
import { Rng } from '../dataplane/select.ts';
import { parseIPv4, PROTO_UDP } from '../dataplane/addr.ts';
import { writeIpv4Header, ipv4FillChecksum } from '../dataplane/wire/ipv4.ts';
import { writeUdpHeader, udpFillChecksum } from '../dataplane/wire/udp.ts';

const time = argNum('time', 1000);
function udpPacket(buf: Uint8Array, off: number, src: number, dst: number, sport: number, dport: number): number {
  const len = 20 + 8 + 64;
  writeIpv4Header(buf, off, len, 1, 0x4000, 64, PROTO_UDP, src, dst);
  writeUdpHeader(buf, off + 20, sport, dport, 8 + 64);
  for (let i = 0; i < 64; i++) buf[off + 28 + i] = i;
  ipv4FillChecksum(buf, off);
  udpFillChecksum(buf, off);
  return len;
}

const n = 10;
const rs = syntheticRuleSet(n, { endpoints: 3, protocol: 'UDP', port: 53, targetPort: 5353 });
const tables = compile(rs);
const dir = mkdtempSync('/dev/shm/tp-pin-bench-');
const MAX = 1 << 20;
const pinned = openPinnedConntrack({ dir, name: 'bench.ct', maxEntries: MAX }).conntrack;
const variants: Array<[string, Conntrack]> = [['plain', new Conntrack({ maxEntries: MAX })], ['pinned', pinned]];
const SLOT = 128;
const K = 4096;
const E = 1024;
const LEN = 92;
const B = 256;
const vips = rs.services.map((s) => parseIPv4(s.clusterIP!));
const bench = new Bench({ time, warmupTime: 200 });
for (const [name, ct] of variants) {
  const pl = new Pipeline({ conntrack: ct, rng: new Rng(1) });
  const rng = new Rng(7);
  const newT = new Uint8Array(K * SLOT);
  let flow = 0;
  const fillNew = () => {
    for (let i = 0; i < K; i++) {
      udpPacket(newT, i * SLOT, parseIPv4('192.168.0.0') + (flow >>> 14), vips[rng.below(n)], 1024 + (flow & 16383), 53);
      flow++;
    }
  };
  fillNew();
  const work = new Uint8Array(SLOT);
  let now = 0;
  const estT = new Uint8Array(E * SLOT);
  for (let i = 0; i < E; i++) {
    const len = udpPacket(estT, i * SLOT, parseIPv4('172.31.0.1') + i, vips[i % n], 40000, 53);
    work.set(estT.subarray(i * SLOT, i * SLOT + len));
    if (pl.process(work, 0, len, tables, now) !== V_FORWARD) throw new Error('setup flow not forwarded');
  }
  let ei = 0;
  let ni = 0;
  bench.add(`${name} established`, () => {
    now += 1;
    for (let k = 0; k < B; k++) {
      const o = (ei++ & (E - 1)) * SLOT;
      for (let j = 0; j < LEN; j++) work[j] = estT[o + j];
      pl.process(work, 0, LEN, tables, now);
    }
  });
  bench.add(`${name} new flow`, () => {
    now += 1;
    for (let k = 0; k < B; k++) {
      if (ni === K) {
        fillNew();
        ni = 0;
      }
      const o = ni++ * SLOT;
      for (let j = 0; j < LEN; j++) work[j] = newT[o + j];
      pl.process(work, 0, LEN, tables, now);
    }
  });
}
try {
  await bench.run();
  for (const t of bench.tasks) console.log(`${t.name.padEnd(20)} ${((t.result!.latency.p50! * 1e6) / B).toFixed(0)} ns/packet`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
