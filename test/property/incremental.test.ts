/**
 * The incremental path (a few services changed: validate and compile only
 * those) and the full path accept and refuse the same rule sets and give
 * tables that decide every packet the same way.
 */
import t from 'tap';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { arbRuleSet, packetFor } from '../support/arbitraries.ts';
import { RuleSetHolder, diffServices, maxIncremental } from '../../control/runtime.ts';
import { RuleSetError } from '../../control/validate.ts';
import { compiledVerdict } from '../../dataplane/tables.ts';
import { compiledVerdict6 } from '../../dataplane/tables6.ts';
import { packet6For } from '../support/arb-dualstack.ts';
import type { Tables } from '../../dataplane/tables.ts';
import type { RuleSet, Service } from '../../control/types.ts';

type Op = { kind: 'replace' | 'delete' | 'append' | 'insert' | 'endpoints'; at: number; from: number };

function applyOp(rs: RuleSet, donor: RuleSet, op: Op): RuleSet {
  const services = rs.services.slice();
  const pick = donor.services[op.from % donor.services.length];
  const at = services.length === 0 ? 0 : op.at % services.length;
  if (op.kind === 'endpoints' && services.length > 0) {
    // the same service with other endpoints and policies: the keys stay, the entries are rebuilt in place
    const eps = (pick.endpoints ?? []).map((e) => ({ ...e, ports: undefined }));
    services[at] = { ...services[at], endpoints: eps, externalTrafficPolicy: pick.externalTrafficPolicy, sessionAffinity: pick.sessionAffinity };
  } else if (op.kind === 'replace' && services.length > 0) services[at] = pick;
  else if (op.kind === 'delete' && services.length > 0) services.splice(at, 1);
  else if (op.kind === 'insert') services.splice(at, 0, pick);
  else services.push(pick);
  return { ...rs, services };
}

t.test('incremental and full agree over random sequences of service changes', async (t) => {
  let incrementals = 0;
  let rejections = 0;
  let checks = 0;
  let models = 0;
  let v6ports = 0;
  let checks6 = 0;
  let patched6 = 0;
  const op = fc.record({ kind: fc.constantFrom('replace', 'delete', 'append', 'insert', 'endpoints', 'endpoints') as fc.Arbitrary<Op['kind']>, at: fc.nat(), from: fc.nat() });
  fc.assert(
    fc.property(arbRuleSet({ maxServices: 6, dualStack: true }), arbRuleSet({ maxServices: 6, dualStack: true }), fc.array(op, { minLength: 1, maxLength: 8 }), fc.nat(), (rs, donorRaw, ops, seed) => {
      // the donor's services on the same node, so that only services differ
      const donor: RuleSet = { ...donorRaw, node: rs.node, apiVersion: rs.apiVersion };
      const inc = new RuleSetHolder();
      const full = new RuleSetHolder({ incremental: false });
      // the incremental path into copies of the arrays (the control worker's way) rather than in place,
      // with what a change needs built ahead after every apply (as the control worker does when idle)
      const copy = new RuleSetHolder({ inPlace: false });
      inc.apply(rs);
      full.apply(rs);
      copy.apply(rs);
      copy.prepareIncremental();
      let cur = rs;
      for (const o of ops) {
        const next = applyOp(cur, donor, o);
        let a: unknown = null;
        let b: unknown = null;
        // a replacement where it stands: the holder is told the position (the API's PATCH), as the API does
        const at = cur.services.length === 0 ? -1 : o.at % cur.services.length;
        const hint = (o.kind === 'replace' || o.kind === 'endpoints') && at >= 0 ? at : undefined;
        try { const r = inc.apply(next, undefined, hint); if (r.mode === 'incremental') incrementals++; } catch (e) { a = e; }
        try { full.apply(next); } catch (e) { b = e; }
        let c: unknown = null;
        try { copy.apply(next); copy.prepareIncremental(); } catch (e) { c = e; }
        if ((c === null) !== (b === null)) throw new Error(`incremental into copies ${c ? 'refused' : 'accepted'} what full ${b ? 'refused' : 'accepted'}`);
        if ((a === null) !== (b === null)) throw new Error(`incremental ${a ? 'refused' : 'accepted'} what full ${b ? 'refused' : 'accepted'}: ${(a ?? b) as Error}`);
        if (a !== null) {
          if (!(a instanceof RuleSetError) || !(b instanceof RuleSetError)) throw a as Error;
          rejections++;
          continue; // both keep what they had
        }
        cur = next;
        const ti = inc.current!;
        const tf = full.current!;
        if (ti.liveServicePorts !== tf.liveServicePorts) throw new Error(`live service ports ${ti.liveServicePorts} vs ${tf.liveServicePorts}`);
        // the model built for the incremental apply is the one built for the full apply
        const mi = inc.model!;
        const mf = full.model!;
        if (mi.ruleSet !== next || mf.ruleSet !== next) throw new Error('the model is not of the rule set applied');
        if (!isDeepStrictEqual(mi.node, mf.node)) throw new Error('node models differ');
        if (!isDeepStrictEqual(mi.services, mf.services)) throw new Error(`service models differ:\nincremental ${JSON.stringify(mi.services.map((s) => s.key))}\nfull        ${JSON.stringify(mf.services.map((s) => s.key))}`);
        if (!isDeepStrictEqual(mi.ports, mf.ports)) throw new Error('service-port models differ');
        // every service found at its position, through the holder's index (kept across in-place changes)
        next.services.forEach((s, i) => {
          if (inc.indexOf(s.namespace, s.name) !== i) throw new Error(`indexOf(${s.namespace}/${s.name}) = ${inc.indexOf(s.namespace, s.name)}, not ${i}`);
          if (copy.indexOf(s.namespace, s.name) !== i) throw new Error(`prepared ahead: indexOf(${s.namespace}/${s.name}) = ${copy.indexOf(s.namespace, s.name)}, not ${i}`);
        });
        if (inc.indexOf('no-such-namespace', 'x') !== -1) throw new Error('an unknown service has a position');
        models++;
        for (const p of mi.ports) if (p.family === 6) v6ports++;
        const packets = fc.sample(packetFor(cur), { numRuns: 25, seed: seed + checks });
        for (const p of packets) {
          const x = JSON.stringify(compiledVerdict(ti, p));
          const y = JSON.stringify(compiledVerdict(tf, p));
          if (x !== y) throw new Error(`verdicts differ for ${JSON.stringify(p)}:\nincremental ${x}\nfull        ${y}`);
          const z = JSON.stringify(compiledVerdict(copy.current!, p));
          if (z !== y) throw new Error(`verdicts differ for ${JSON.stringify(p)}:\nincremental into copies ${z}\nfull                    ${y}`);
          checks++;
        }
        // IPv6 packets: the IPv6 tables patched (patchTables6) decide as the ones compiled whole
        const v6of = (x: Tables) => x.v6 ?? null;
        if (v6of(ti) !== null && v6of(ti)!.base.services.length > v6of(ti)!.base.liveServicePorts) patched6++;
        if ((v6of(ti) === null) !== (v6of(tf) === null)) throw new Error(`IPv6 tables: incremental ${v6of(ti) ? 'has' : 'has none'}, full ${v6of(tf) ? 'has' : 'has none'}`);
        if (v6of(tf) !== null) {
          for (const p of fc.sample(packet6For(cur), { numRuns: 25, seed: seed + checks6 })) {
            const y = JSON.stringify(compiledVerdict6(v6of(tf)!, p));
            const x = JSON.stringify(compiledVerdict6(v6of(ti)!, p));
            const z = JSON.stringify(compiledVerdict6(v6of(copy.current!)!, p));
            if (x !== y || z !== y) throw new Error(`IPv6 verdicts differ for ${JSON.stringify({ ...p, src: [...p.src], dst: [...p.dst] })}:\nincremental ${x}\ninto copies ${z}\nfull        ${y}`);
            checks6++;
          }
        }
      }
      if (inc.generation !== full.generation) throw new Error('generations differ');
      return true;
    }),
    { numRuns: 300, seed: 77 },
  );
  t.comment(`${incrementals} incremental applies, ${rejections} refusals on both paths, ${checks} packets compared; IPv6: ${checks6} packets, ${patched6} states with patched IPv6 tables`);
  t.ok(incrementals > 300, 'the incremental path was taken');
  t.ok(models > 300, `the models of both paths compared equal (${models} times)`);
  t.ok(rejections > 20, 'refusals were exercised');
  t.ok(v6ports > 300, `dual-stack rule sets: IPv6 service-port models compared equal too (${v6ports})`);
  t.ok(checks6 > 3000, `IPv6 packets decided alike by the patched and the compiled IPv6 tables (${checks6})`);
  t.ok(patched6 > 100, `the IPv6 tables were patched (${patched6} states had IPv6 tombstones)`);
});

t.test('a one-service change on many services is written in place: the arrays are shared, only its row changes', async (t) => {
  const { syntheticRuleSet } = await import('../../bench/gen.ts');
  const rs = syntheticRuleSet(2000);
  const h = new RuleSetHolder();
  h.apply(rs);
  const before = h.current!;
  const rows = before.serviceRows.slice();
  const services = rs.services.slice();
  services[7] = { ...services[7], endpoints: [{ address: '10.127.0.7' }, { address: '10.127.0.8' }] };
  const r = h.apply({ ...rs, services });
  t.equal(r.mode, 'incremental');
  const after = h.current!;
  t.not(after, before, 'a new snapshot object');
  t.equal(after.generation, before.generation + 1);
  t.equal(after.vipIndex, before.vipIndex, 'the VIP index is shared');
  t.equal(after.nodePorts, before.nodePorts, 'the NodePort array is shared');
  t.equal(after.serviceRows, before.serviceRows, 'the rows are shared');
  let changed = 0;
  for (let i = 0; i < rows.length; i++) if (rows[i] !== after.serviceRows[i]) changed++;
  t.ok(changed > 0 && changed <= 8, `only the changed service's row was written (${changed} ints)`);
  t.equal(after.endpointPairs, before.endpointPairs + 2, 'its two endpoints appended');
  t.equal(after.services[7].cluster!.endpoints.map((e) => e.text).join(','), '10.127.0.7:8080,10.127.0.8:8080');
  // the copy path leaves the snapshot in force as it was
  const c = new RuleSetHolder({ inPlace: false });
  c.apply(rs);
  const cb = c.current!;
  const cbRows = cb.serviceRows.slice();
  c.apply({ ...rs, services });
  t.not(c.current!.serviceRows, cb.serviceRows, 'copied');
  t.same(cb.serviceRows, cbRows, 'the snapshot in force is untouched');
});

t.test('diffServices finds replaced, appended, inserted and deleted services', async (t) => {
  const s = (n: string) => ({ namespace: 'a', name: n, ports: [] }) as unknown as Service;
  const [a, b, c, d, x] = ['a', 'b', 'c', 'd', 'x'].map(s);
  t.same(diffServices([a, b, c], [a, x, c]), { removed: [1], added: [1] });
  t.same(diffServices([a, b, c], [a, b, c, x]), { removed: [], added: [3] });
  t.same(diffServices([a, b, c, d], [a, c, d]), { removed: [1], added: [] });
  t.same(diffServices([a, b, c], [a, b]), { removed: [2], added: [] });
  t.same(diffServices([a, b, c], [a, x, b, c]), { removed: [1, 2], added: [1, 2, 3] });
  const many = Array.from({ length: 1000 }, (_, i) => s(`s${i}`));
  t.equal(diffServices(many, many.map((v, i) => (i % 2 ? s(`n${i}`) : v))), null, 'too many changes: the full path');
  t.same(diffServices(many, [...many.slice(0, 500), ...many.slice(501)]), { removed: [500], added: [] });
  // up to a quarter of the services in force (at least 256) go the incremental way
  t.equal(maxIncremental(100), 256);
  t.equal(maxIncremental(1000), 256);
  t.equal(maxIncremental(100_000), 25_000);
  const lots = Array.from({ length: 4000 }, (_, i) => s(`s${i}`));
  const every = (k: number) => lots.map((v, i) => (i % k === 0 ? s(`n${i}`) : v));
  t.equal(diffServices(lots, every(4))!.added.length, 1000, 'a quarter of 4 000 changed: a diff');
  t.equal(diffServices(lots, every(3)), null, 'a third: the full path');
});

t.test('a quarter of the services changed still goes the incremental way, and decides as a full compile', async (t) => {
  const { syntheticRuleSet } = await import('../../bench/gen.ts');
  const n = 2000;
  const rs = syntheticRuleSet(n);
  const more = syntheticRuleSet(n + 40).services.slice(n);
  const inc = new RuleSetHolder();
  const full = new RuleSetHolder({ incremental: false });
  const copy = new RuleSetHolder({ inPlace: false });
  for (const h of [inc, full, copy]) h.apply(rs);
  copy.prepareIncremental();
  // 450 of 2 000 (more than 256, less than a quarter): 400 with other endpoints where they stand, the
  // last 10 removed, 40 new ones appended (the 10 places at the end count as replaced: 460 added, 450 removed)
  const services = rs.services.slice(0, n - 10);
  for (let i = 3; i < 2000 && i < services.length; i += 5) services[i] = { ...services[i], endpoints: [{ address: `10.127.${i >> 8}.${i & 255}` }] };
  const next = { ...rs, services: [...services, ...more] };
  const r = inc.apply(next);
  t.equal(r.mode, 'incremental', `${r.mode}: 450 services changed of ${n}`);
  t.equal(copy.apply(next).mode, 'incremental', 'into copies too');
  full.apply(next);
  t.ok(isDeepStrictEqual(inc.model!.services, full.model!.services), 'the models of both paths are equal');
  t.equal(inc.current!.liveServicePorts, full.current!.liveServicePorts);
  let compared = 0;
  for (const p of fc.sample(packetFor(next), { numRuns: 3000, seed: 11 })) {
    const y = JSON.stringify(compiledVerdict(full.current!, p));
    if (JSON.stringify(compiledVerdict(inc.current!, p)) !== y || JSON.stringify(compiledVerdict(copy.current!, p)) !== y) {
      t.fail(`verdicts differ for ${JSON.stringify(p)}`);
      break;
    }
    compared++;
  }
  t.equal(compared, 3000, 'every sampled packet decided alike by the patched tables (in place and into copies) and the compiled ones');
  // past a quarter: the full path
  const most = next.services.map((sv, i) => (i % 3 === 0 ? { ...sv, endpoints: [{ address: '10.127.255.1' }] } : sv));
  t.equal(inc.apply({ ...next, services: most }).mode, 'full', 'a third of the services changed: the full path');
});
