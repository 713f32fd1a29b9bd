/**
 * The state directory's journal (control/persist-journal.ts): over random
 * sequences of service changes, a record replays to the very rule set it
 * was made from, order included, and the state directory (the file and its
 * journal, written by StateStore through whole writes and appends) reads
 * back as the last rule set saved.
 */
import t from 'tap';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { arbRuleSet } from '../support/arbitraries.ts';
import { replayRecords, serviceChange } from '../../control/persist-journal.ts';
import type { ServiceChange } from '../../control/persist-journal.ts';
import { StateStore } from '../../control/persist.ts';
import { validateRuleSet } from '../../control/validate.ts';
import type { RuleSet, Service } from '../../control/types.ts';

type Op = { kind: 'replace' | 'delete' | 'append' | 'insert' | 'move' | 'copy' | 'node' | 'swapRemove' | 'cut'; at: number; from: number };
const op = fc.record({ kind: fc.constantFrom('replace', 'delete', 'append', 'insert', 'move', 'copy', 'node', 'swapRemove', 'cut') as fc.Arbitrary<Op['kind']>, at: fc.nat(), from: fc.nat() });

/** The next rule set: services shared with `rs` except those the change makes (as the API builds it). */
function applyOp(rs: RuleSet, donor: RuleSet, o: Op, n: number): RuleSet {
  const services = rs.services.slice();
  const pick: Service = { ...donor.services[o.from % donor.services.length], name: `s${n}` };
  const at = services.length === 0 ? 0 : o.at % services.length;
  if (o.kind === 'replace' && services.length > 0) services[at] = { ...pick, name: services[at].name, namespace: services[at].namespace };
  else if (o.kind === 'delete' && services.length > 0) services.splice(at, 1);
  else if (o.kind === 'insert') services.splice(at, 0, pick);
  else if (o.kind === 'move' && services.length > 0) services.push(...services.splice(at, 1));
  else if (o.kind === 'swapRemove' && services.length > 0) {
    // the kube agent's removal: the last service takes the removed one's place
    const last = services.pop()!;
    if (at < services.length) services[at] = last;
  } else if (o.kind === 'cut') services.length = Math.min(services.length, at % 3);
  else if (o.kind === 'copy') return { ...rs, services: services.map((s) => ({ ...s })) }; // every service a new object, equal in value
  else if (o.kind === 'node') return { ...rs, node: { ...rs.node, name: `node-${n}` } };
  else services.push(pick);
  return { ...rs, services };
}

const unique = (rs: RuleSet): boolean => new Set(rs.services.map((s) => `${s.namespace}/${s.name}`)).size === rs.services.length;

t.test('a record replays to the very rule set it was made from', async (t) => {
  let records = 0;
  let refused = 0;
  fc.assert(
    fc.property(arbRuleSet({ maxServices: 8, dualStack: true }), arbRuleSet({ maxServices: 4 }), fc.array(fc.tuple(op, fc.boolean()), { minLength: 1, maxLength: 10 }), fc.integer({ min: 1, max: 12 }), (rs, donor, ops, max) => {
      if (donor.services.length === 0 || !unique(rs)) return;
      let cur = rs;
      let start: readonly Service[] = rs.services;
      const made: ServiceChange[] = [];
      ops.forEach(([o, positional], i) => {
        const next = applyOp(cur, donor, o, i);
        const c = serviceChange(cur, next, max, positional);
        if (c === null) {
          refused++;
          // the API's and the kube agent's changes are records when the limit allows them: a move names its service twice (deleted, appended)
          // (a cut names no service in the positional form; by key it deletes each service it cuts)
          const need: Partial<Record<Op['kind'], number>> = { replace: 1, delete: 1, append: 1, move: 2, ...(positional ? { cut: 0 } : {}) };
          if ((need[o.kind] ?? Infinity) <= max) throw new Error(`no record for a ${o.kind} (limit ${max})`);
          if (o.kind === 'swapRemove' && positional && max >= 1) throw new Error('no positional record for a swap-remove');
          made.length = 0; // written whole: the records start again from here
          start = next.services;
        } else {
          records++;
          if (c.upsert.length + c.delete.length + (c.put?.length ?? 0) > max) throw new Error(`${c.upsert.length + c.delete.length} services named, the limit is ${max}`);
          const r = replayRecords(cur.services, [c]);
          if (r.length !== next.services.length || r.some((s, k) => s !== next.services[k])) throw new Error(`a ${o.kind} replayed to another rule set`);
          made.push(c);
          // all the records since the last whole write, replayed in one go, give the same list
          const all = replayRecords(start, made);
          if (all.length !== next.services.length || all.some((s, k) => s !== next.services[k])) throw new Error(`the records since the last whole write replay to another list (after a ${o.kind})`);
        }
        cur = next;
      });
    }),
    { numRuns: 300 },
  );
  t.ok(records > 300, `${records} records replayed, ${refused} changes written whole`);
});

t.test('the state directory reads back as the last rule set saved, through whole writes and appends', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-journal-prop-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let run = 0;
  let appends = 0;
  let saves = 0;
  await fc.assert(
    fc.asyncProperty(arbRuleSet({ maxServices: 6, dualStack: true }), arbRuleSet({ maxServices: 4 }), fc.array(op, { minLength: 1, maxLength: 8 }), async (rs, donor, ops) => {
      if (donor.services.length === 0) return;
      const first = validateRuleSet(rs);
      if (!first.ok) return;
      const store = new StateStore(join(dir, String(run++)), 'tun0.', { bootId: 'b', netns: 'n' }, { compactAfterMs: 60_000 });
      store.init();
      try {
        let cur = first.ruleSet;
        let g = 1;
        await store.saveRuleSet(cur, g);
        for (const [i, o] of ops.entries()) {
          const v = validateRuleSet(applyOp(cur, donor, o, i));
          if (!v.ok) continue; // the API would refuse it: nothing saved
          cur = v.ruleSet;
          await store.saveRuleSet(cur, ++g);
        }
        const l = new StateStore(store.dir, 'tun0.', { bootId: 'b', netns: 'n' }).loadRuleSet();
        if (l.status !== 'ok') throw new Error(`not read back: ${JSON.stringify(l)}`);
        if (!isDeepStrictEqual(JSON.parse(JSON.stringify(l.ruleSet)), JSON.parse(JSON.stringify(cur)))) throw new Error('read back another rule set');
        if (new StateStore(store.dir, 'tun0.').loadGeneration() !== g) throw new Error(`generation ${new StateStore(store.dir, 'tun0.').loadGeneration()}, expected ${g}`);
        appends += store.appends;
        saves += store.saves;
      } finally {
        await store.close();
      }
    }),
    { numRuns: 60 },
  );
  t.ok(appends > 20 && saves > appends, `${saves} saves, of which ${appends} journal records`);
});
