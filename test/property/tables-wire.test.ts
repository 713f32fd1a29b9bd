/**
 * The compiled tables between threads (dataplane/tables-wire.ts): a snapshot
 * put on shared memory, encoded, and materialized again in slices gives the
 * same entries, sets and verdicts as the snapshot the compiler made, over
 * random sequences of full and incremental changes; entries the incremental
 * path kept are reused, not rebuilt; the views of the snapshot before the
 * one in force are recycled, and the one in force reads as it did.
 */
import t from 'tap';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { arbRuleSet, changeServices, packetFor } from '../support/arbitraries.ts';
import { RuleSetHolder } from '../../control/runtime.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { compile, patchTables } from '../../control/compile.ts';
import { compiledVerdict } from '../../dataplane/tables.ts';
import type { EndpointSet, ServicePortEntry, Tables } from '../../dataplane/tables.ts';
import { TablesEncoder, TablesMaterializer, shareTables } from '../../dataplane/tables-wire.ts';
import type { Materialized } from '../../dataplane/tables-wire.ts';
import type { RuleSet } from '../../control/types.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;

function plainSet(s: EndpointSet | null) {
  if (s === null) return null;
  return { endpoints: s.endpoints.map((e) => ({ addr: e.addr, port: e.port, nodeLocal: e.nodeLocal, text: e.text })), flatStart: s.flatStart, maglev: s.maglev === null ? null : Array.from(s.maglev), index: [...s.index.entries()].sort((a, b) => a[0] - b[0]) };
}
/** every field of the interface, read through getters where the entry is a view */
function plain(e: ServicePortEntry) {
  return {
    index: e.index, live: e.live, name: e.name, uid: e.uid, protocol: e.protocol, clusterIP: e.clusterIP, port: e.port, nodePort: e.nodePort,
    hasEndpoints: e.hasEndpoints, externalPolicyLocal: e.externalPolicyLocal, hasExternalEndpoints: e.hasExternalEndpoints, affinityMs: e.affinityMs,
    internal: plainSet(e.internal), cluster: plainSet(e.cluster), local: plainSet(e.local),
    externalIPs: [...e.externalIPs], loadBalancerIPs: [...e.loadBalancerIPs], lbSourceIPs: [...e.lbSourceIPs], servingKept: [...e.servingKept], sourceRanges: e.sourceRanges && e.sourceRanges.map((r) => ({ net: r.net, mask: r.mask, bits: r.bits })),
  };
}
function sameTables(a: Tables, b: Tables): string | null {
  if (a.generation !== b.generation || a.liveServicePorts !== b.liveServicePorts || a.services.length !== b.services.length) return 'shape differs';
  for (let i = 0; i < a.services.length; i++) {
    const x = JSON.stringify(plain(a.services[i]));
    const y = JSON.stringify(plain(b.services[i]));
    if (x !== y) return `entry ${i} differs:\n${x}\n${y}`;
    // the set objects are shared within an entry as the compiler shares them
    const s = a.services[i];
    const m = b.services[i];
    if ((s.internal === s.cluster) !== (m.internal === m.cluster) || (s.internal === s.local) !== (m.internal === m.local) || (s.cluster === s.local) !== (m.cluster === m.local)) return `entry ${i}: set sharing differs`;
  }
  return null;
}

/** Ten packets of the rule set decided alike by the compiled and the materialized tables, else an error naming the packet. */
function sameVerdicts(compiled: Tables, materialized: Tables, rs: RuleSet, seed: number): void {
  for (const p of fc.sample(packetFor(rs), { numRuns: 10, seed })) {
    const x = JSON.stringify(compiledVerdict(compiled, p));
    const y = JSON.stringify(compiledVerdict(materialized, p));
    if (x !== y) throw new Error(`verdicts differ for ${JSON.stringify(p)}:\n${x}\n${y}`);
  }
}

function roundTrip(enc: TablesEncoder, t0: Tables, prev: Materialized | null, budgetMs = 0.05, spare: Materialized | null = null): { m: Materialized; mat: TablesMaterializer } {
  const wire = enc.encode(t0);
  // through a structured clone, as postMessage does: the arrays stay shared
  const cloned = structuredClone(wire);
  if (!(cloned.serviceRows.buffer instanceof SharedArrayBuffer)) throw new Error('the rows did not stay on shared memory');
  const mat = new TablesMaterializer(cloned, prev, spare);
  while (!mat.step(budgetMs));
  return { m: mat.result(), mat };
}

t.test('golden rule set, random and maglev: the materialized snapshot is the compiled one', async (t) => {
  for (const lb of ['random', 'maglev'] as const) {
    const h = new RuleSetHolder({ prepare: shareTables });
    h.apply({ ...golden, node: { ...golden.node, loadBalancing: lb } });
    const enc = new TablesEncoder();
    const { m, mat } = roundTrip(enc, h.current!, null);
    t.equal(sameTables(h.current!, m.tables), null, `${lb}: same entries`);
    t.ok(mat.slices >= 1 && mat.built === h.current!.services.length, `${lb}: ${mat.built} entries built in ${mat.slices} slice(s)`);
    t.ok(h.current!.serviceRows.buffer instanceof SharedArrayBuffer, 'the holder keeps the shared arrays');
    const rows = h.current!.serviceRows;
    const old = rows[0];
    rows[0] = 0x5a5a;
    t.equal(m.tables.serviceRows[0], 0x5a5a, 'no copy: the same memory on both sides');
    rows[0] = old;
  }
});

t.test('the compiler makes its arrays on shared memory: shareTables copies none of them, full or patched', async (t) => {
  const arrays = (x: Tables) => [x.serviceRows, x.endpointFlat, x.nodePorts, x.vipIndex.rawSlots, x.vipAddrs.rawSlots];
  const names = ['serviceRows', 'endpointFlat', 'nodePorts', 'vipIndex', 'vipAddrs'];
  const check = (what: string, x: Tables): void => {
    const shared = shareTables(x);
    arrays(x).forEach((a, i) => t.ok(a.buffer instanceof SharedArrayBuffer, `${what}: ${names[i]} on a SharedArrayBuffer`));
    // identity, not t.equal: a failure would print a diff of every int
    arrays(shared).forEach((a, i) => t.ok(a === arrays(x)[i], `${what}: ${names[i]} kept, not copied`));
  };
  const modelOf = (rs: RuleSet) => {
    const v = validateRuleSet(rs);
    if (!v.ok) throw new Error(JSON.stringify(v.errors));
    return v.model;
  };
  const m0 = modelOf(golden);
  const t0 = compile(m0, { generation: 1 });
  check('full compile', t0);
  // the control worker's patches (not in place): one service more (new keys: new rows and indexes), one service's endpoints changed (the same keys)
  const extra = { namespace: 'wire', name: 'extra', clusterIP: '10.96.250.1', ports: [{ name: 'p', protocol: 'TCP' as const, port: 80 }], endpoints: [{ address: '10.64.250.1', ports: { p: 8080 } }] };
  const m1 = modelOf({ ...golden, services: [...golden.services, extra] } as RuleSet);
  const p1 = patchTables(t0, m0.node, [], [m1.services[m1.services.length - 1]], 2, false);
  check('patched, new keys', p1.tables);
  const m2 = modelOf({ ...golden, services: [...golden.services, { ...extra, endpoints: [{ address: '10.64.250.2', ports: { p: 8080 } }] }] } as RuleSet);
  const p2 = patchTables(p1.tables, m0.node, p1.entries[0], [m2.services[m2.services.length - 1]], 3, false);
  check('patched, same keys', p2.tables);
});

t.test('many entries: built in slices of bounded time', async (t) => {
  const services = Array.from({ length: 5000 }, (_, i) => ({ namespace: 'bulk', name: `s${i}`, clusterIP: `10.96.${i >> 8}.${i & 255}`, ports: [{ name: 'p', protocol: 'TCP' as const, port: 80 }], endpoints: [{ address: `10.64.${(i >> 8) & 255}.${i & 255}`, ports: { p: 8080 } }] }));
  const h = new RuleSetHolder({ prepare: shareTables });
  h.apply({ ...golden, services: [...golden.services, ...services] } as RuleSet);
  const { m, mat } = roundTrip(new TablesEncoder(), h.current!, null, 0.2);
  t.equal(sameTables(h.current!, m.tables), null, 'same entries');
  t.ok(mat.slices > 1, `${mat.slices} slices`);
  t.comment(`longest slice ${mat.maxSliceMs.toFixed(2)} ms for a budget of 0.2 ms`);
});

t.test('a few services changed among many: encoded by difference, materialized the same', async (t) => {
  const bulk = (i: number, ep: number) => ({ namespace: 'bulk', name: `s${i}`, clusterIP: `10.96.${i >> 8}.${i & 255}`, ports: [{ name: 'p', protocol: (i % 3 ? 'TCP' : 'UDP') as 'TCP' | 'UDP', port: 80 }], sessionAffinity: (i % 5 ? 'None' : 'ClientIP') as 'None' | 'ClientIP', endpoints: [{ address: `10.64.${(ep >> 8) & 255}.${ep & 255}`, ports: { p: 8080 }, nodeLocal: ep % 2 === 0 }] });
  for (const lb of ['random', 'maglev'] as const) {
    let rs = { ...golden, node: { ...golden.node, loadBalancing: lb, ...(lb === 'maglev' ? { maglevTableSize: 251 } : {}) }, services: [...golden.services, ...Array.from({ length: 2000 }, (_, i) => bulk(i, i))] } as RuleSet;
    const h = new RuleSetHolder({ prepare: shareTables });
    const enc = new TablesEncoder();
    h.apply(rs);
    let prev = roundTrip(enc, h.current!, null).m;
    let differences = 0;
    for (let k = 0; k < 30; k++) {
      const services = rs.services.slice();
      for (let j = 0; j < 3; j++) {
        const i = golden.services.length + ((k * 97 + j * 31) % 2000);
        services[i] = bulk(i - golden.services.length, 3000 + k * 3 + j) as RuleSet['services'][number];
      }
      if (k % 10 === 9) services.push(bulk(5000 + k, 7000 + k) as RuleSet['services'][number]);
      rs = { ...rs, services };
      const r = h.apply(rs);
      const { m, mat } = roundTrip(enc, h.current!, prev);
      if (enc.lastMode === 'difference') differences++;
      const d = sameTables(h.current!, m.tables);
      if (d !== null) throw new Error(`${lb}, change ${k} (${r.mode}, ${enc.lastMode}): ${d}`);
      if (r.mode === 'incremental' && mat.built > 8) throw new Error(`change ${k}: ${mat.built} views made for a change of a few services`);
      prev = m;
    }
    t.ok(differences >= 20, `${lb}: ${differences} of 30 encoded by difference, every snapshot the same`);
  }
});

t.test('Tables.changed: a patch into the array of entries in force names its positions; without a list that fits, the array is encoded whole', async (t) => {
  const bulk = (i: number, ep: number) => ({ namespace: 'bulk', name: `s${i}`, clusterIP: `10.96.${i >> 8}.${i & 255}`, ports: [{ name: 'p', protocol: 'UDP' as const, port: 53 }], endpoints: [{ address: `10.64.${(ep >> 8) & 255}.${ep & 255}`, ports: { p: 5353 } }] });
  const rs = { ...golden, services: [...golden.services, ...Array.from({ length: 500 }, (_, i) => bulk(i, i))] } as RuleSet;
  const h = new RuleSetHolder({ prepare: shareTables });
  const enc = new TablesEncoder();
  h.apply(rs);
  const first = h.current!;
  let prev = roundTrip(enc, first, null).m;
  const services = rs.services.slice();
  const at = golden.services.length + 7;
  services[at] = bulk(7, 900) as RuleSet['services'][number];
  services.push(bulk(600, 901) as RuleSet['services'][number]);
  h.apply({ ...rs, services });
  const second = h.current!;
  t.equal(second.services, first.services, 'the array of entries in force was written in place');
  t.same(second.changed?.from, first.generation, 'patched from the first');
  const replacedAt = second.services.findIndex((e) => e.live && e.name.startsWith('bulk/s7:'));
  t.ok(replacedAt >= 0, 'the replaced entry found');
  const tombstoneAt = second.services.findIndex((e) => !e.live && e.name.startsWith('bulk/s7:'));
  t.ok(tombstoneAt >= 0 && tombstoneAt < replacedAt, 'its old entry a tombstone (the change adds a service: the general path)');
  t.same([...second.changed!.positions].sort((a, b) => a - b), [tombstoneAt, replacedAt, second.services.length - 1], 'the removed, the replaced and the appended positions');
  const m = roundTrip(enc, second, prev).m;
  t.equal(enc.lastMode, 'difference');
  t.equal(sameTables(second, m.tables), null, 'materialized as compiled');
  prev = m;
  // the same array, a change list from a generation the encoder never saw: encoded whole, not compared with itself
  const third = { ...second, generation: second.generation + 1, changed: { from: 999, positions: [] } };
  const m3 = roundTrip(enc, third, prev).m;
  t.equal(enc.lastMode, 'full', 'a change list from another generation: whole');
  t.equal(sameTables(third, m3.tables), null);
  const fourth = { ...third, generation: third.generation + 1, changed: undefined };
  roundTrip(enc, fourth, m3);
  t.equal(enc.lastMode, 'full', 'the same array and no change list: whole');
});

t.test('random sequences of changes: same verdicts, kept entries reused', async (t) => {
  let reused = 0;
  let built = 0;
  fc.assert(
    fc.property(arbRuleSet({ maxServices: 6 }), arbRuleSet({ maxServices: 6 }), fc.array(fc.tuple(fc.nat(), fc.nat(), fc.boolean()), { minLength: 1, maxLength: 6 }), fc.nat(), (rs, donor, ops, seed) => {
      const h = new RuleSetHolder({ prepare: shareTables });
      const enc = new TablesEncoder();
      h.apply(rs);
      let prev = roundTrip(enc, h.current!, null).m;
      let cur = rs;
      for (const [at, from, endpointsOnly] of ops) {
        const services = cur.services.slice();
        const pick = donor.services[from % donor.services.length];
        const i = at % Math.max(1, services.length);
        if (services.length > 0 && endpointsOnly) services[i] = { ...services[i], endpoints: pick.endpoints };
        else services.push({ ...pick, name: `${pick.name}-${at % 1000}` });
        const next = { ...cur, services };
        try {
          h.apply(next);
        } catch {
          continue;
        }
        cur = next;
        const { m, mat } = roundTrip(enc, h.current!, prev);
        reused += mat.reused;
        built += mat.built;
        const d = sameTables(h.current!, m.tables);
        if (d !== null) throw new Error(d);
        sameVerdicts(h.current!, m.tables, cur, seed);
        prev = m;
      }
      return true;
    }),
    { numRuns: 150, seed: 9 },
  );
  t.comment(`${reused} entries reused, ${built} built`);
  t.ok(reused > built, 'the entries an incremental change kept were reused');
});

/** A random sequence of changes (changeServices) applied to the holder: each one it took, with the rule set then in force (a rejected one skipped). */
function* accepted(h: RuleSetHolder, rs: RuleSet, donor: RuleSet, ops: ReadonlyArray<readonly [number, number, number]>): Generator<{ cur: RuleSet; op: readonly [number, number, number] }> {
  let cur = rs;
  for (const op of ops) {
    const next = changeServices(cur, donor, op);
    try {
      h.apply(next);
    } catch {
      continue;
    }
    cur = next;
    yield { cur, op };
  }
}

t.test('two encoders over the same snapshots: the sets each marks for itself never confuse the other', async (t) => {
  // an EndpointSet carries the mark of the last encoding that gave it an id (wireMarks, wireId): a second
  // encoder overwrites it, and the first must then give the set a new id of its own, not take the other's
  let difference = 0;
  fc.assert(
    fc.property(arbRuleSet({ maxServices: 6 }), arbRuleSet({ maxServices: 6 }), fc.array(fc.tuple(fc.nat(), fc.nat(), fc.nat(3)), { minLength: 2, maxLength: 8 }), fc.nat(), (rs, donor, ops, seed) => {
      const h = new RuleSetHolder({ prepare: shareTables });
      const encs = [new TablesEncoder(), new TablesEncoder()];
      h.apply(rs);
      const prev = encs.map((e) => roundTrip(e, h.current!, null).m);
      for (const { cur, op } of accepted(h, rs, donor, ops)) {
        // in turns, one order then the other, so that each encoder finds the other's marks on the sets it kept
        const order = op[2] % 2 === 0 ? [0, 1] : [1, 0];
        for (const k of order) {
          const { m } = roundTrip(encs[k], h.current!, prev[k]);
          if (encs[k].lastMode === 'difference') difference++;
          const d = sameTables(h.current!, m.tables);
          if (d !== null) throw new Error(`encoder ${k}: ${d}`);
          sameVerdicts(h.current!, m.tables, cur, seed);
          prev[k] = m;
        }
      }
      return true;
    }),
    { numRuns: 100, seed: 13 },
  );
  t.ok(difference > 0, `${difference} encodings by difference among them`);
});

/** Every entry of a snapshot, as text (read through the views). */
const entriesText = (t: Tables): string[] => t.services.map((e) => JSON.stringify(plain(e)));

t.test('full replacements back and forth: from the third snapshot on, every view is recycled and none made', async (t) => {
  const bulk = (i: number, v: number) => ({ namespace: 'bulk', name: `s${i}-${v}`, clusterIP: `10.${96 + v}.${i >> 8}.${i & 255}`, ports: [{ name: 'p', protocol: 'TCP' as const, port: 80 }], endpoints: [{ address: `10.64.${(i >> 8) & 255}.${i & 255}`, ports: { p: 8080 + v } }] });
  const variant = (v: number) => ({ ...golden, services: [...golden.services, ...Array.from({ length: 3000 }, (_, i) => bulk(i, v))] }) as RuleSet;
  const h = new RuleSetHolder({ prepare: shareTables });
  const enc = new TablesEncoder();
  let prev: Materialized | null = null;
  let spare: Materialized | null = null;
  for (let k = 0; k < 5; k++) {
    h.apply(variant(k % 2));
    const inForce = prev === null ? null : entriesText(prev.tables);
    const { m, mat } = roundTrip(enc, h.current!, prev, 0.05, spare);
    t.equal(sameTables(h.current!, m.tables), null, `snapshot ${k}: the compiled entries`);
    if (prev !== null) t.same(entriesText(prev.tables), inForce, `snapshot ${k}: the one in force reads as it did while this one took its spare's views`);
    if (k >= 2) t.match({ built: mat.built, recycled: mat.recycled }, { built: 0, recycled: m.tables.services.length - mat.reused }, `snapshot ${k}: ${mat.recycled} recycled, ${mat.reused} shared, none built`);
    spare = prev;
    prev = m;
  }
});

t.test('random sequences of changes with a spare: the one in force never changes, the new one is the compiled one', async (t) => {
  let recycled = 0;
  fc.assert(
    fc.property(arbRuleSet({ maxServices: 6 }), arbRuleSet({ maxServices: 6 }), fc.array(fc.tuple(fc.nat(), fc.nat(), fc.nat(3)), { minLength: 2, maxLength: 8 }), fc.nat(), (rs, donor, ops, seed) => {
      const h = new RuleSetHolder({ prepare: shareTables });
      const enc = new TablesEncoder();
      h.apply(rs);
      let prev = roundTrip(enc, h.current!, null).m;
      let spare: Materialized | null = null;
      for (const { cur } of accepted(h, rs, donor, ops)) {
        const before = entriesText(prev.tables);
        const { m, mat } = roundTrip(enc, h.current!, prev, 0.05, spare);
        recycled += mat.recycled;
        const d = sameTables(h.current!, m.tables);
        if (d !== null) throw new Error(d);
        const after = entriesText(prev.tables);
        for (let e = 0; e < before.length; e++) if (before[e] !== after[e]) throw new Error(`the snapshot in force changed at entry ${e}:\n${before[e]}\n${after[e]}`);
        sameVerdicts(h.current!, m.tables, cur, seed);
        spare = prev;
        prev = m;
      }
      return true;
    }),
    { numRuns: 150, seed: 11 },
  );
  t.ok(recycled > 0, `${recycled} views recycled`);
});

t.test('encodings by difference append into the same shared memory, and every earlier snapshot still reads as it did', async (t) => {
  const bulk = (i: number, ep: number) => ({ namespace: 'bulk', name: `s${i}`, clusterIP: `10.96.${i >> 8}.${i & 255}`, externalIPs: [`198.18.${i >> 8}.${i & 255}`], ports: [{ name: 'p', protocol: 'TCP' as const, port: 80 }], endpoints: [{ address: `10.64.${(ep >> 8) & 255}.${ep & 255}`, ports: { p: 8080 } }] });
  let rs = { ...golden, services: [...golden.services, ...Array.from({ length: 1000 }, (_, i) => bulk(i, i))] } as RuleSet;
  const h = new RuleSetHolder({ prepare: shareTables });
  const enc = new TablesEncoder();
  h.apply(rs);
  const wires = [enc.encode(h.current!)];
  const snaps: Materialized[] = [new TablesMaterializer(wires[0], null).all()];
  const texts = [entriesText(snaps[0].tables)];
  // what the packet path reads without views: the rows and the endpoint pairs
  const rowsOf = (x: Tables) => ({ rows: Array.from(x.serviceRows.subarray(0, x.services.length * 8)), pairs: Array.from(x.endpointFlat.subarray(0, x.endpointPairs * 2)) });
  const tables = [h.current!];
  const rowTexts = [JSON.stringify(rowsOf(h.current!))];
  let sharedRows = 0;
  let sharedPairs = 0;
  for (let k = 0; k < 6; k++) {
    const services = rs.services.slice();
    // as an agent's one-service updates: one service's endpoints changed, or one service added
    if (k % 2 === 1) {
      const i = golden.services.length + k * 37;
      services[i] = bulk(k * 37, 5000 + k) as RuleSet['services'][number];
    } else services.push(bulk(2000 + k, 6000 + k) as RuleSet['services'][number]);
    rs = { ...rs, services };
    t.equal(h.apply(rs).mode, 'incremental', `change ${k}: incremental`);
    const pt = tables[tables.length - 1];
    if (h.current!.endpointFlat.buffer === pt.endpointFlat.buffer) sharedPairs++;
    if (h.current!.serviceRows.buffer === pt.serviceRows.buffer) sharedRows++;
    tables.push(h.current!);
    rowTexts.push(JSON.stringify(rowsOf(h.current!)));
    const w = enc.encode(h.current!);
    t.equal(enc.lastMode, 'difference', `change ${k}: encoded by difference`);
    const pw = wires[wires.length - 1];
    for (const f of ['entries', 'stamps', 'pool', 'sets', 'names'] as const) {
      t.ok(w[f].buffer === pw[f].buffer || w[f].length > (pw[f].buffer.byteLength / pw[f].BYTES_PER_ELEMENT), `change ${k}: ${f} appended into the last wire form's buffer (or it was full)`);
      t.ok(w[f].length >= pw[f].length, `change ${k}: ${f} only grows`);
    }
    t.ok(w.slots.buffer !== pw.slots.buffer, `change ${k}: the slots are the only per-entry array copied`);
    const m = new TablesMaterializer(w, snaps[snaps.length - 1]).all();
    t.equal(sameTables(h.current!, m.tables), null, `change ${k}: the new snapshot is the compiled one`);
    wires.push(w);
    snaps.push(m);
    texts.push(entriesText(m.tables));
  }
  // the views of snapshots that are in force no more (the packet thread may keep them for a while, a trace or a
  // flow's name may read them late) read what they read when they were made
  for (let k = 0; k < snaps.length; k++) t.same(entriesText(snaps[k].tables), texts[k], `snapshot ${k} reads as it did after ${snaps.length - 1 - k} later encodings`);
  for (let k = 0; k < tables.length; k++) t.equal(JSON.stringify(rowsOf(tables[k])), rowTexts[k], `snapshot ${k}: its rows and endpoint pairs as they were`);
  const shared = wires.filter((w, k) => k > 0 && w.entries.buffer === wires[k - 1].entries.buffer).length;
  t.ok(shared >= 4, `${shared} of 6 encodings wrote into the entries buffer of the one before`);
  // the first patch makes a buffer with room (the full compile's is exact), the later ones append into it;
  // rows only where services were only added (a replaced entry's row is rewritten where it is: copied)
  t.ok(sharedPairs >= 4, `${sharedPairs} of 6 patches appended endpoint pairs into the buffer of the one before`);
  t.ok(sharedRows >= 2, `${sharedRows} of 3 additions appended their rows into the buffer of the one before`);
});
