/**
 * npm run bench:lookup [-- --sizes 10,100,1000,10000,100000]
 *
 * Median ns per first-packet decision (service lookup + endpoint choice),
 * compiled hash tables vs kube-proxy's rules walked linearly, on the same
 * rule set and the same packets, spread over all services; plus compile
 * time and the compiled tables' heap size; and the compiled IPv6 lookup on
 * the same services in IPv6 (compiledNsV6, compileMsV6).
 * bench/results/lookup.{json,md}.
 */
import { Bench } from 'tinybench';
import { performance } from 'node:perf_hooks';
import { syntheticRuleSet } from './gen.ts';
import { parseIPv6 } from '../dataplane/addr6.ts';
import { lookup6 } from '../dataplane/tables6.ts';
import { argList, median, gc, machine, writeResults, fmt } from './common.ts';
import { compile } from '../control/compile.ts';
import { writeIptables } from '../control/iptables/writer.ts';
import { linearFromText } from '../control/iptables/linear.ts';
import { LookupResult, lookup, LOOKUP_DNAT } from '../dataplane/tables.ts';
import { Rng, selectEndpoint } from '../dataplane/select.ts';
import { parseIPv4, PROTO_TCP } from '../dataplane/addr.ts';
import type { PacketTuple } from '../dataplane/verdict.ts';

const sizes = argList('sizes', [10, 100, 1000, 10000, 100000]);
const PACKETS = 4096;

interface Row {
  services: number;
  compiledNs: number;
  linearNs: number;
  linearRulesVisited: number;
  compileMs: number;
  tablesBytes: number;
  /** the same services in IPv6 (tables.v6): ns per first-packet decision, 128-bit destination */
  compiledNsV6: number;
  /** compile time of that rule set (its IPv6 half) */
  compileMsV6: number;
}

/** The IPv6 row: the same services as single-stack IPv6 services (gen.ts family 'ipv6'), lookup6 + endpoint choice. */
async function measure6(n: number): Promise<{ compiledNsV6: number; compileMsV6: number }> {
  const rs = syntheticRuleSet(n, { endpoints: 3, family: 'ipv6' });
  const times: number[] = [];
  for (let i = 0; i < (n >= 100000 ? 3 : 5); i++) {
    const t0 = performance.now();
    compile(rs);
    times.push(performance.now() - t0);
  }
  const t6 = compile(rs).v6!;
  const rng = new Rng(n);
  const words = new Uint32Array(PACKETS * 8);
  const sports = new Int32Array(PACKETS);
  const client = parseIPv6('2001:db8:77::2')!;
  for (let i = 0; i < PACKETS; i++) {
    words.set(client, i * 8);
    words.set(parseIPv6(rs.services[rng.below(n)].clusterIP!)!, i * 8 + 4);
    sports[i] = 1024 + rng.below(60000);
  }
  const out = new LookupResult();
  let sink = 0;
  let ci = 0;
  const batch = 256;
  const bench = new Bench({ time: n >= 10000 ? 1500 : 400, warmupTime: 100 });
  bench.add('compiled v6', () => {
    for (let k = 0; k < batch; k++) {
      const i = ci++ & (PACKETS - 1);
      const o = i * 8;
      if (lookup6(t6, PROTO_TCP, words, o, o + 4, 80, out) === LOOKUP_DNAT) {
        const client32 = (words[o] ^ words[o + 1] ^ words[o + 2] ^ words[o + 3]) >>> 0;
        const dst32 = (words[o + 4] ^ words[o + 5] ^ words[o + 6] ^ words[o + 7]) >>> 0;
        sink += t6.base.endpointFlat[2 * selectEndpoint(t6.base, out, PROTO_TCP, client32, dst32, sports[i], 80, 0, rng, null) + 1];
      } else sink--;
    }
  });
  await bench.run();
  if (sink < 0) throw new Error('an IPv6 lookup did not DNAT');
  return { compiledNsV6: (bench.tasks[0].result!.latency.p50! * 1e6) / batch, compileMsV6: median(times) };
}

async function measure(n: number): Promise<Row> {
  const rs = syntheticRuleSet(n, { endpoints: 3 });
  // compile: time and heap
  const times: number[] = [];
  for (let i = 0; i < (n >= 100000 ? 3 : 5); i++) {
    const t0 = performance.now();
    compile(rs);
    times.push(performance.now() - t0);
  }
  gc();
  const h0 = process.memoryUsage().heapUsed;
  let tables = compile(rs);
  gc();
  const tablesBytes = Math.max(0, process.memoryUsage().heapUsed - h0);

  // the same packets for both: new flows from outside the cluster to services spread over the whole set
  const rng = new Rng(n);
  const pkts: PacketTuple[] = [];
  const client = parseIPv4('192.168.77.2');
  for (let i = 0; i < PACKETS; i++) {
    const svc = rng.below(n);
    pkts.push({ proto: PROTO_TCP, src: client, dst: parseIPv4(rs.services[svc].clusterIP!), sport: 1024 + rng.below(60000), dport: 80 });
  }
  const linear = linearFromText(writeIptables(rs), { localAddresses: rs.node.addresses });

  const out = new LookupResult();
  let sink = 0;
  let ci = 0;
  const compiledBatch = 256;
  const linearBatch = n >= 10000 ? 1 : n >= 1000 ? 8 : 64;
  let li = 0;
  let visitedBefore = 0;
  let lookupsLinear = 0;
  const bench = new Bench({ time: n >= 10000 ? 1500 : 400, warmupTime: 100 });
  bench.add('compiled', () => {
    for (let k = 0; k < compiledBatch; k++) {
      const p = pkts[ci++ & (PACKETS - 1)];
      if (lookup(tables, p.proto, p.src, p.dst, p.dport, out) === LOOKUP_DNAT) {
        sink += tables.endpointFlat[2 * selectEndpoint(tables, out, p.proto, p.src, p.dst, p.sport, p.dport, 0, rng, null) + 1];
      }
    }
  });
  bench.add('linear', () => {
    for (let k = 0; k < linearBatch; k++) {
      const p = pkts[li++ & (PACKETS - 1)];
      sink += linear.sample(p, 0).endpointPort;
      lookupsLinear++;
    }
  });
  visitedBefore = linear.rulesVisited;
  await bench.run();
  const [c, l] = bench.tasks;
  const compiledNs = (c.result!.latency.p50! * 1e6) / compiledBatch;
  const linearNs = (l.result!.latency.p50! * 1e6) / linearBatch;
  const visited = (linear.rulesVisited - visitedBefore) / Math.max(1, lookupsLinear);
  if (sink === -1) console.log(sink);
  tables = null as never;
  return { services: n, compiledNs, linearNs, linearRulesVisited: visited, compileMs: median(times), tablesBytes, ...(await measure6(n)) };
}

const rows: Row[] = [];
for (const n of sizes) {
  const r = await measure(n);
  rows.push(r);
  console.error(`${n} services: IPv6 compiled ${r.compiledNsV6.toFixed(1)} ns, IPv6 compile ${r.compileMsV6.toFixed(1)} ms`);
  console.error(`${n} services: compiled ${r.compiledNs.toFixed(1)} ns, linear ${r.linearNs.toFixed(0)} ns (${r.linearRulesVisited.toFixed(0)} rules), compile ${r.compileMs.toFixed(1)} ms, ${(r.tablesBytes / 1e6).toFixed(1)} MB`);
  gc();
}
const md = [
  `# Lookup: compiled tables vs kube-proxy's chains walked linearly`,
  '',
  `One run on ${machine()}. Command: \`npm run bench:lookup${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}\`.`,
  `Each service: one TCP port, 3 endpoints; first packets from outside the cluster to services drawn uniformly over all of them (decision + endpoint choice; medians of tinybench samples).`,
  '',
  '| services | compiled ns/lookup | linear ns/lookup | linear ÷ compiled | rules visited (linear) | compile ms | tables MB |',
  '|---:|---:|---:|---:|---:|---:|---:|',
  ...rows.map((r) => `| ${fmt(r.services)} | ${r.compiledNs.toFixed(1)} | ${fmt(r.linearNs)} | ${fmt(r.linearNs / r.compiledNs)}× | ${fmt(r.linearRulesVisited)} | ${r.compileMs.toFixed(1)} | ${(r.tablesBytes / 1e6).toFixed(1)} |`),
  '',
  'IPv6: the same services as single-stack IPv6 services (bench/gen.ts `family: \'ipv6\'`); the compiled IPv6 tables (128-bit destination → id, then the same index).',
  '',
  '| services | compiled IPv6 ns/lookup | × IPv4 | compile ms (IPv6 rule set) |',
  '|---:|---:|---:|---:|',
  ...rows.map((r) => `| ${fmt(r.services)} | ${r.compiledNsV6.toFixed(1)} | ${(r.compiledNsV6 / r.compiledNs).toFixed(2)} | ${r.compileMsV6.toFixed(1)} |`),
  '',
].join('\n');
writeResults('lookup', rows, md);
