/**
 * The control worker's copies of the tables' arrays reuse the shared
 * buffers the packet thread has let go of (dataplane/shared-arrays.ts
 * SharedBufferPool, given back by control/worker/remote.ts once a newer
 * snapshot is in force there). The pool on its own, then the two threads'
 * messages in one process (test/support/threads.ts) with a holder that
 * copies (tunproxy run's): one-service changes take buffers again, the
 * snapshot in force never changes under the next change, and every snapshot
 * installed decides packets as a fresh compile of its rule set.
 */
import t from 'tap';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { Dataplane } from '../../control/dataplane.ts';
import { RuleSetHolder } from '../../control/runtime.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { compile, prepareCopies } from '../../control/compile.ts';
import { shareTables } from '../../dataplane/tables-wire.ts';
import { compiledVerdict } from '../../dataplane/tables.ts';
import type { Tables } from '../../dataplane/tables.ts';
import { SharedBufferPool, sharedBuffers } from '../../dataplane/shared-arrays.ts';
import type { RuleSet, Service } from '../../control/types.ts';
import { arbRuleSet, changeServices, packetFor } from '../support/arbitraries.ts';
import { twoThreads } from '../support/threads.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;

t.test('the pool: a buffer of the same size taken again, zeroed past what the caller keeps; given once; bounded, oldest out first', async (t) => {
  const pool = new SharedBufferPool();
  const a = pool.take(64);
  t.equal(a.byteLength, 64);
  t.equal(pool.reused, 0, 'nothing held: a new buffer');
  new Uint8Array(a).fill(7);
  pool.give(a);
  pool.give(a);
  t.equal(pool.bytes, 64, 'a buffer given twice is held once');
  t.not(pool.take(32), a, 'another size: a new buffer');
  const b = pool.take(64, 16);
  t.equal(b, a, 'the same size: the held buffer');
  t.equal(pool.reused, 1);
  t.equal(pool.bytes, 0);
  t.same(Array.from(new Uint8Array(b)), [...Array(16).fill(7), ...Array(48).fill(0)], 'zero from keepFrom on, the first part left for the caller');
  t.not(pool.take(64), a, 'taken: not held any more');

  const half = SharedBufferPool.MAX_BYTES / 2;
  const old = new SharedArrayBuffer(half);
  const mid = new SharedArrayBuffer(half - 64);
  pool.give(a);
  pool.give(old);
  pool.give(mid);
  t.equal(pool.bytes, SharedBufferPool.MAX_BYTES, 'full');
  const late = new SharedArrayBuffer(128);
  pool.give(late);
  t.equal(pool.count(64), 0, 'the oldest (the 64 bytes) left first...');
  t.equal(pool.count(half), 0, '...and the next oldest, until the new one fits');
  t.equal(pool.count(half - 64), 1, 'the newer kept');
  t.equal(pool.take(128), late);
  pool.give(new SharedArrayBuffer(SharedBufferPool.MAX_BYTES + 8));
  t.equal(pool.count(SharedBufferPool.MAX_BYTES + 8), 0, 'a buffer past MAX_BYTES is not kept');

  pool.clear();
  t.equal(pool.bytes, 0, 'cleared');
  pool.give(mid);
  t.equal(pool.count(half - 64), 1, 'a buffer held before a clear can be given again');
  pool.ensure(4096, 3);
  t.equal(pool.count(4096), 3, 'ensure: three made');
  t.equal(pool.made, 3);
  pool.ensure(4096, 2);
  t.equal(pool.made, 3, 'ensure: none made when enough are held');
  t.same(Array.from(new Uint8Array(pool.take(4096, 0))).filter((x) => x !== 0), [], 'a buffer made ahead is zero');
});

/**
 * Every byte of the arrays the packet path reads, to tell whether a snapshot
 * changed: the endpoint pairs up to its own count (past it, the array's room
 * is where the next snapshot appends, compile.ts patchTables).
 */
function bytesOf(tb: Tables): string {
  const parts = [tb.serviceRows, tb.endpointFlat.subarray(0, tb.endpointPairs * 2), tb.nodePorts, tb.localAddrs, tb.vipIndex.rawSlots, tb.vipAddrs.rawSlots];
  return parts.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64')).join('|');
}

/** Packets of the rule set decided alike by a fresh compile of it and by `installed`, else an error naming the packet. */
function sameAsFresh(rs: RuleSet, installed: Tables, seed: number, runs = 40): void {
  const v = validateRuleSet(rs);
  if (!v.ok) throw new Error(`the rule set is not valid: ${v.errors[0].path}: ${v.errors[0].message}`);
  const fresh = compile(v.model, { generation: installed.generation });
  for (const p of fc.sample(packetFor(rs), { numRuns: runs, seed })) {
    const x = JSON.stringify(compiledVerdict(fresh, p));
    const y = JSON.stringify(compiledVerdict(installed, p));
    if (x !== y) throw new Error(`generation ${installed.generation}: verdicts differ for ${JSON.stringify(p)}:\n${x}\n${y}`);
  }
}

/** tunproxy run's threads in one process: a holder that copies (as the control worker's), the remote side, the packet thread's host. */
function lab(t: { teardown(fn: () => void): void }) {
  const dp = new Dataplane({ clock: () => 1000 });
  const { remote } = twoThreads(t, dp);
  const holder = new RuleSetHolder({ prepare: shareTables });
  sharedBuffers.clear();
  t.teardown(() => sharedBuffers.clear());
  /** send what the holder has now, as the control worker's swap listener does; the tables installed */
  const send = async (): Promise<Tables> => {
    await remote.sendTables(holder.current!, null);
    return dp.tables!;
  };
  return { dp, holder, send };
}

function bulk(n: number): Service[] {
  return Array.from({ length: n }, (_, i) => ({ namespace: 'bulk', name: `s${i}`, clusterIP: `10.100.${i >> 8}.${i & 255}`, ports: [{ name: 'p', protocol: 'UDP' as const, port: 53, nodePort: 30000 + i }], endpoints: [{ address: `10.64.2.${(i % 250) + 1}`, ports: { p: 5353 } }] }));
}

t.test('one-service changes take the buffers of the snapshots before the one in force, and the one in force never changes', async (t) => {
  const { dp, holder, send } = lab(t);
  let rs: RuleSet = { ...golden, services: [...golden.services, ...bulk(400)] };
  holder.apply(rs);
  await send();
  for (let k = 0; k < 16; k++) {
    const services = rs.services.slice();
    const i = golden.services.length + ((k * 37) % 400);
    // replacements (the same keys: the rows copied) and additions (new keys: the VIP indexes and NodePorts copied)
    if (k % 2 === 0) services[i] = { ...services[i], endpoints: [{ address: `10.64.3.${k + 1}`, ports: { p: 5353 } }] };
    else services.push({ namespace: 'added', name: `a${k}`, clusterIP: `10.101.0.${k}`, ports: [{ name: 'p', protocol: 'UDP' as const, port: 53, nodePort: 31000 + k }], endpoints: [{ address: `10.64.4.${k + 1}`, ports: { p: 5353 } }] });
    const next = { ...rs, services };
    const inForce = dp.tables!;
    const before = bytesOf(inForce);
    // the next snapshot is made while this one is in force: its copies take buffers from the pool
    const r = holder.apply(next);
    t.equal(r.mode, 'incremental', `change ${k}: incremental`);
    t.equal(bytesOf(inForce), before, `change ${k}: the snapshot in force (generation ${inForce.generation}) reads as it did while the next was made`);
    const installed = await send();
    t.equal(installed.generation, r.generation, `change ${k}: installed`);
    sameAsFresh(next, installed, k);
    rs = next;
  }
  t.ok(sharedBuffers.reused >= 8, `${sharedBuffers.reused} buffers taken again (${sharedBuffers.given} given back)`);
});

t.test('prepareCopies: the first changes after a full apply take buffers made ahead for every copy they make', async (t) => {
  const { holder } = lab(t);
  const rs: RuleSet = { ...golden, services: [...golden.services, ...bulk(2000)] };
  holder.apply(rs);
  prepareCopies(holder.current!);
  const made = sharedBuffers.made;
  t.ok(made >= 3, `${made} buffers made ahead`);
  prepareCopies(holder.current!);
  t.equal(sharedBuffers.made, made, 'made once: held ones are enough');
  const held = sharedBuffers.bytes;
  // a replacement: the rows copied
  const replaced = rs.services.slice();
  const i = golden.services.length + 7;
  replaced[i] = { ...replaced[i], endpoints: [{ address: '10.64.9.9', ports: { p: 5353 } }] };
  const r0 = sharedBuffers.reused;
  t.equal(holder.apply({ ...rs, services: replaced }).mode, 'incremental');
  t.equal(sharedBuffers.reused - r0, 1, 'the replacement took one buffer made ahead (the rows)');
  // an addition, with a removal: the rows, both VIP indexes and the NodePort array copied
  prepareCopies(holder.current!);
  const added = replaced.slice();
  added.splice(added.length - 3, 1);
  added.push({ namespace: 'added', name: 'x', clusterIP: '10.101.9.9', ports: [{ name: 'p', protocol: 'UDP' as const, port: 53, nodePort: 32500 }], endpoints: [{ address: '10.64.9.8', ports: { p: 5353 } }] });
  const r1 = sharedBuffers.reused;
  t.equal(holder.apply({ ...rs, services: added }).mode, 'incremental');
  t.equal(sharedBuffers.reused - r1, 4, 'the addition took four (rows, two VIP indexes, NodePorts)');
  t.ok(sharedBuffers.bytes < held, 'the pool gave them out');
  sameAsFresh({ ...rs, services: added }, holder.current!, 5);
});

t.test('a snapshot still waiting on the packet thread keeps its buffers: two sent before either is installed', async (t) => {
  const { dp, holder, send } = lab(t);
  let rs: RuleSet = { ...golden, services: [...golden.services, ...bulk(100)] };
  holder.apply(rs);
  await send();
  for (let k = 0; k < 6; k++) {
    const a = rs.services.slice();
    a[golden.services.length + k] = { ...a[golden.services.length + k], endpoints: [{ address: `10.64.5.${k + 1}`, ports: { p: 5353 } }] };
    const first = { ...rs, services: a };
    holder.apply(first);
    const p1 = send();
    const b = a.slice();
    b.push({ namespace: 'added', name: `w${k}`, clusterIP: `10.102.0.${k}`, ports: [{ name: 'p', protocol: 'UDP' as const, port: 53 }], endpoints: [{ address: `10.64.6.${k + 1}`, ports: { p: 5353 } }] });
    const second = { ...rs, services: b };
    holder.apply(second);
    const p2 = send();
    await p1;
    const installed = await p2;
    t.equal(installed.generation, holder.current!.generation);
    sameAsFresh(second, installed, k);
    rs = second;
  }
  t.equal(dp.tables!.generation, holder.current!.generation);
});

t.test('random sequences of changes through the two threads: every snapshot installed decides as a fresh compile, the one in force never changes', async (t) => {
  await fc.assert(
    fc.asyncProperty(arbRuleSet({ maxServices: 8 }), arbRuleSet({ maxServices: 8 }), fc.array(fc.tuple(fc.nat(), fc.nat(), fc.nat(3)), { minLength: 3, maxLength: 10 }), fc.nat(), async (rs, donor, ops, seed) => {
      const teardown: Array<() => void> = [];
      const { dp, holder, send } = lab({ teardown: (fn) => teardown.push(fn) });
      try {
        holder.apply(rs);
        await send();
        let cur = rs;
        for (const op of ops) {
          const next = changeServices(cur, donor, op);
          const inForce = dp.tables!;
          const before = bytesOf(inForce);
          try {
            holder.apply(next);
          } catch {
            continue;
          }
          if (bytesOf(inForce) !== before) throw new Error(`the snapshot in force (generation ${inForce.generation}) changed while the next was made`);
          sameAsFresh(next, await send(), seed, 10);
          cur = next;
        }
        return true;
      } finally {
        for (const fn of teardown) fn();
      }
    }),
    { numRuns: 80, seed: 23 },
  );
  t.pass('80 random sequences');
});
