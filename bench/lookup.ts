/**
 * npm run bench:lookup [-- --sizes 10,100,1000,10000,100000]
 *
 * Median ns per first-packet decision (service lookup + endpoint choice),
 * compiled hash tables vs kube-proxy's rules walked linearly, on the same
 * rule set and the same packets, spread over all services; plus compile
 * time and the compiled tables' heap size. bench/results/lookup.{json,md}.
 */
import { Bench } from 'tinybench';
import { performance } from 'node:perf_hooks';
import { syntheticRuleSet } from './gen.ts';
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
  return { services: n, compiledNs, linearNs, linearRulesVisited: visited, compileMs: median(times), tablesBytes };
}

const rows: Row[] = [];
for (const n of sizes) {
  const r = await measure(n);
  rows.push(r);
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
].join('\n');
writeResults('lookup', rows, md);
