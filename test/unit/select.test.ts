import t from 'tap';
import { Rng, buildMaglev, selectEndpoint, AffinityTable, flowHash } from '../../dataplane/select.ts';
import { compile } from '../../control/compile.ts';
import { parseRuleSet } from '../../control/validate.ts';
import { LookupResult, lookup, LOOKUP_DNAT, resultSet } from '../../dataplane/tables.ts';
import type { Tables } from '../../dataplane/tables.ts';

/** The chosen endpoint's index within the looked-up set. */
function pick(t: Tables, out: LookupResult, ...rest: [number, number, number, number, number, number, Rng, AffinityTable | null]): number {
  return selectEndpoint(t, out, ...rest) - out.flatStart;
}
import { parseIPv4, PROTO_TCP } from '../../dataplane/addr.ts';
import type { RuleSet } from '../../control/types.ts';

/** Chi-square statistic against a uniform expectation. */
function chiSquare(counts: number[]): number {
  const total = counts.reduce((a, b) => a + b, 0);
  const e = total / counts.length;
  return counts.reduce((s, c) => s + (c - e) ** 2 / e, 0);
}
// 99.9th percentile of chi-square with k-1 degrees of freedom, k = 2..10
const CHI2_999 = [0, 0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88];

function ruleSet(n: number, opts: Partial<RuleSet['node']> = {}, affinity = false): RuleSet {
  return parseRuleSet({
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.1.35'], clusterCIDR: '10.64.0.0/16', ...opts },
    services: [{
      namespace: 'default', name: 'web', clusterIP: '10.96.0.1', ...(affinity ? { sessionAffinity: 'ClientIP', sessionAffinityTimeoutSeconds: 60 } : {}),
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
      endpoints: Array.from({ length: n }, (_, i) => ({ address: `10.64.${1 + (i >> 8)}.${i & 255}` })),
    }],
  });
}

function chosenCounts(rs: RuleSet, flows: number, seed: number, affinity: AffinityTable | null = null): number[] {
  const tables = compile(rs);
  const out = new LookupResult();
  const rng = new Rng(seed);
  const n = rs.services[0].endpoints!.length;
  const counts = new Array(n).fill(0);
  for (let f = 0; f < flows; f++) {
    const src = parseIPv4('192.0.2.0') + (f % 200);
    const sport = 1024 + ((f * 7919) % 60000);
    if (lookup(tables, PROTO_TCP, src, parseIPv4('10.96.0.1'), 80, out) !== LOOKUP_DNAT) throw new Error('no DNAT');
    counts[selectEndpoint(tables, out, PROTO_TCP, src, parseIPv4('10.96.0.1'), sport, 80, f, rng, affinity) - out.flatStart]++;
  }
  return counts;
}

t.test('random selection is uniform (chi-square, 99.9 %)', async (t) => {
  for (const n of [2, 3, 5, 10]) {
    const counts = chosenCounts(ruleSet(n), 20000, 42 + n);
    t.ok(chiSquare(counts) < CHI2_999[n], `n=${n} counts=${counts} chi2=${chiSquare(counts).toFixed(2)}`);
  }
});

t.test('Rng.below is unbiased and stays in range', async (t) => {
  const r = new Rng(7);
  const counts = new Array(7).fill(0);
  for (let i = 0; i < 70000; i++) {
    const x = r.below(7);
    if (!(x >= 0 && x < 7)) throw new Error(`out of range: ${x}`);
    counts[x]++;
  }
  t.ok(chiSquare(counts) < CHI2_999[7], `counts=${counts}`);
});

t.test('maglev: every slot filled, near-uniform shares, flows spread uniformly', async (t) => {
  const names = ['10.64.1.1:80', '10.64.1.2:80', '10.64.1.3:80', '10.64.1.4:80', '10.64.1.5:80'];
  const table = buildMaglev(names, 1021);
  const share = new Array(5).fill(0);
  for (const x of table) share[x]++;
  t.equal(share.reduce((a, b) => a + b), 1021);
  // Maglev guarantees shares within one slot of each other... up to N slots of imbalance in practice
  t.ok(Math.max(...share) - Math.min(...share) <= names.length, `shares ${share}`);
  const counts = chosenCounts(ruleSet(5, { loadBalancing: 'maglev', maglevTableSize: 1021 }), 20000, 1);
  t.ok(chiSquare(counts) < CHI2_999[5] * 2, `counts=${counts}`);
});

t.test('maglev: a flow keeps its endpoint, and removing one endpoint moves few other flows', async (t) => {
  const m = 65537;
  const names = Array.from({ length: 10 }, (_, i) => `10.64.1.${i + 1}:80`);
  const before = buildMaglev(names, m);
  const after = buildMaglev(names.filter((_, i) => i !== 3), m);
  // map the new indexes back to names
  const kept = names.filter((_, i) => i !== 3);
  let movedOthers = 0;
  let others = 0;
  for (let s = 0; s < m; s++) {
    const was = names[before[s]];
    const now = kept[after[s]];
    if (was === names[3]) continue; // those must move
    others++;
    if (was !== now) movedOthers++;
  }
  const disruption = movedOthers / others;
  t.comment(`maglev disruption when 1 of 10 endpoints leaves: ${(disruption * 100).toFixed(2)} % of the other flows move (ideal 0 %, modulo hashing would move ~90 %)`);
  t.ok(disruption < 0.05, `disruption ${disruption}`);
  // adding one back: same property
  const added = buildMaglev([...names, '10.64.1.11:80'], m);
  let moved = 0;
  for (let s = 0; s < m; s++) if (added[s] !== 10 && added[s] !== before[s]) moved++;
  t.comment(`maglev disruption when an 11th endpoint arrives: ${((moved / m) * 100).toFixed(2)} % of flows move to a different old endpoint`);
  t.ok(moved / m < 0.05);
  // the same flow hash always lands on the same slot
  t.equal(flowHash(6, 1, 2, 3, 4), flowHash(6, 1, 2, 3, 4));
  t.not(flowHash(6, 1, 2, 3, 4), flowHash(6, 1, 2, 3, 5));
});

t.test('ClientIP affinity: the same client sticks to one endpoint until the timeout', async (t) => {
  const rs = ruleSet(5, {}, true);
  const tables = compile(rs);
  const out = new LookupResult();
  const rng = new Rng(3);
  const aff = new AffinityTable();
  const vip = parseIPv4('10.96.0.1');
  const client = parseIPv4('192.0.2.77');
  lookup(tables, PROTO_TCP, client, vip, 80, out);
  const first = pick(tables, out, PROTO_TCP, client, vip, 1000, 80, 0, rng, aff);
  const chosen = new Set<number>();
  // each new connection within the timeout refreshes it
  for (let i = 1; i < 200; i++) chosen.add(pick(tables, out, PROTO_TCP, client, vip, 1000 + i, 80, i * 1000, rng, aff));
  t.same([...chosen], [first], 'all 199 later connections went to the first endpoint');
  t.equal(aff.hits, 199);
  // after 60 s of silence the choice is free again: over many clients, not all land on one endpoint
  const later = 199 * 1000 + 60_001;
  const seen = new Set<number>();
  for (let i = 0; i < 50; i++) seen.add(pick(tables, out, PROTO_TCP, client, vip, 5000 + i, 80, later + i * 61_000, rng, aff));
  t.ok(seen.size > 1, `after expiry the client moved among ${seen.size} endpoints`);
  // different clients spread
  const spread = new Set<number>();
  for (let c = 0; c < 100; c++) spread.add(pick(tables, out, PROTO_TCP, client + 1 + c, vip, 1, 80, 0, rng, aff));
  t.equal(spread.size, 5);
});

t.test('the affinity table takes no memory until its first entry', async (t) => {
  const rs = ruleSet(5, {}, true);
  const tables = compile(rs);
  const out = new LookupResult();
  const aff = new AffinityTable(1 << 20);
  const vip = parseIPv4('10.96.0.1');
  const client = parseIPv4('192.0.2.78');
  // one table made whole is two arrays of 2^20 slots (16 MB): eight of them would be 128 MB, whatever garbage comes and goes
  const before = process.memoryUsage().heapUsed;
  const idle = Array.from({ length: 8 }, () => new AffinityTable(1 << 20));
  const grew = process.memoryUsage().heapUsed - before;
  t.ok(grew < 16 << 20, `8 tables of 2^20 entries with none in them: the heap grew ${(grew / 1048576).toFixed(1)} MB`);
  t.equal(idle[0].size, 0);
  idle[0].clear(); // nothing to clear, no error
  lookup(tables, PROTO_TCP, client, vip, 80, out);
  const first = pick(tables, out, PROTO_TCP, client, vip, 1000, 80, 0, new Rng(4), aff);
  t.equal(aff.size, 1, 'the first new flow of a ClientIP service makes the entry');
  t.equal(pick(tables, out, PROTO_TCP, client, vip, 1001, 80, 10, new Rng(5), aff), first, 'and the next one sticks to it');
  t.equal(aff.hits, 1);
  aff.clear();
  t.equal(aff.size, 0);
});

t.test('affinity survives a recompile but not the endpoint leaving', async (t) => {
  const rs = ruleSet(3, {}, true);
  const out = new LookupResult();
  const rng = new Rng(5);
  const aff = new AffinityTable();
  const vip = parseIPv4('10.96.0.1');
  const client = parseIPv4('192.0.2.9');
  let tables = compile(rs);
  lookup(tables, PROTO_TCP, client, vip, 80, out);
  const first = resultSet(tables, out).endpoints[pick(tables, out, PROTO_TCP, client, vip, 1, 80, 0, rng, aff)];
  tables = compile(rs, { generation: 2 });
  lookup(tables, PROTO_TCP, client, vip, 80, out);
  t.equal(resultSet(tables, out).endpoints[pick(tables, out, PROTO_TCP, client, vip, 2, 80, 10, rng, aff)].text, first.text);
  const rs2 = structuredClone(rs);
  rs2.services[0].endpoints = rs2.services[0].endpoints!.filter((e) => `${e.address}:8080` !== first.text);
  tables = compile(rs2, { generation: 3 });
  lookup(tables, PROTO_TCP, client, vip, 80, out);
  const moved = resultSet(tables, out).endpoints[pick(tables, out, PROTO_TCP, client, vip, 3, 80, 20, rng, aff)];
  t.not(moved.text, first.text);
});
