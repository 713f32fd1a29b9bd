import t from 'tap';
import fc from 'fast-check';
import { parseIPv4, PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { Conntrack, ConntrackEntry, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_UPDATE_REOPEN } from '../../dataplane/conntrack.ts';
import { TupleIndex } from '../../dataplane/conntrack-index.ts';

/**
 * Model-based: random inserts, lookups, updates, deletes and sweeps with
 * random clock advances, checked after every step against a plain list of
 * the flows the table accepted. A small tuple space makes clashes (a tuple
 * already in use) frequent; a second run uses a hash with many collisions.
 */

type Tuple = [proto: number, src: number, dst: number, sport: number, dport: number];

const ADDRS = ['10.0.0.1', '10.0.0.2', '172.16.1.35', '192.168.7.9'].map(parseIPv4);
const PORTS = [1, 53, 40000];

const tupleArb: fc.Arbitrary<Tuple> = fc
  .tuple(fc.constantFrom(PROTO_TCP, PROTO_UDP, PROTO_ICMP), fc.constantFrom(...ADDRS), fc.constantFrom(...ADDRS), fc.constantFrom(...PORTS), fc.constantFrom(...PORTS))
  .map(([p, s, d, sp, dp]) => [p, s, d, sp, p === PROTO_ICMP ? sp : dp] as Tuple);

type Op =
  | { kind: 'advance'; ms: number }
  | { kind: 'insert'; orig: Tuple; reply: [number, number, number, number] }
  | { kind: 'lookup'; tuple: Tuple }
  | { kind: 'probe'; pick: number; dir: number }
  | { kind: 'update'; pick: number; dir: number; flags: number }
  | { kind: 'delete'; pick: number }
  | { kind: 'expire' };

const FLAGS = [0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x18, 0x00];

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 40_000 }).map((ms) => ({ kind: 'advance' as const, ms })) },
  {
    weight: 5,
    arbitrary: fc
      .tuple(tupleArb, fc.constantFrom(...ADDRS), fc.constantFrom(...ADDRS), fc.constantFrom(...PORTS), fc.constantFrom(...PORTS))
      .map(([orig, rs, rd, rsp, rdp]) => ({ kind: 'insert' as const, orig, reply: [rs, rd, rsp, orig[0] === PROTO_ICMP ? rsp : rdp] as [number, number, number, number] })),
  },
  { weight: 3, arbitrary: tupleArb.map((tuple) => ({ kind: 'lookup' as const, tuple })) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('probe' as const), pick: fc.nat(), dir: fc.integer({ min: 0, max: 1 }) }) },
  {
    weight: 4,
    arbitrary: fc.record({ kind: fc.constant('update' as const), pick: fc.nat(), dir: fc.integer({ min: 0, max: 1 }), flags: fc.constantFrom(...FLAGS) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'expire' as const }) },
);

/** Every tuple of a /24 pair with the same low byte of src ^ dst collides. */
class CollidingConntrack extends Conntrack {
  protected override hashTuple(proto: number, src: number, dst: number, sport: number, dport: number): void {
    this.hash[0] = (src ^ dst) & 0x3;
    this.hash[1] = proto;
  }
}
const collidingHash = (tp: Tuple): string => `${(tp[1] ^ tp[2]) & 0x3},${tp[0]}`;

interface Flow {
  e: ConntrackEntry;
  orig: Tuple;
  reply: Tuple;
}

const same = (a: Tuple, b: Tuple) => a[0] === b[0] && (a[1] | 0) === (b[1] | 0) && (a[2] | 0) === (b[2] | 0) && a[3] === b[3] && a[4] === b[4];

function run(ops: Op[], colliding: boolean): void {
  const ct = colliding ? new CollidingConntrack({ maxEntries: 1000 }) : new Conntrack({ maxEntries: 1000 });
  let now = 0;
  let flows: Flow[] = [];
  const alive = (f: Flow) => f.e.expires > now;
  const fail = (msg: string) => {
    throw new Error(msg);
  };

  for (const op of ops) {
    switch (op.kind) {
      case 'advance':
        now += op.ms;
        break;
      case 'insert': {
        const reply: Tuple = [op.orig[0], ...op.reply];
        const livePeers = flows.filter(alive);
        let expectRefused =
          same(op.orig, reply) || livePeers.some((f) => same(f.orig, op.orig) || same(f.reply, op.orig) || same(f.orig, reply) || same(f.reply, reply));
        if (colliding) {
          const keys = new Set(livePeers.flatMap((f) => [collidingHash(f.orig), collidingHash(f.reply)]));
          const ko = collidingHash(op.orig);
          const kr = collidingHash(reply);
          expectRefused ||= ko === kr || keys.has(ko) || keys.has(kr);
        }
        const e = ct.insert(op.orig[0], op.orig[1], op.orig[2], op.orig[3], op.orig[4], reply[1], reply[2], reply[3], reply[4], now, {
          serviceName: 'ns/svc:p',
          serviceIndex: 1,
          endpointAddr: reply[1],
          endpointPort: reply[3],
          masquerade: false,
        });
        if (expectRefused !== (e === null)) fail(`insert ${JSON.stringify(op)} at ${now}: expected ${expectRefused ? 'refusal' : 'an entry'}`);
        if (e !== null) flows.push({ e, orig: op.orig, reply });
        break;
      }
      case 'lookup': {
        const [p, s, d, sp, dp] = op.tuple;
        const holder = flows.find((f) => f.e.live && (same(f.orig, op.tuple) || same(f.reply, op.tuple)));
        const got = ct.lookup(p, s, d, sp, dp, now);
        if (holder === undefined || !alive(holder)) {
          if (got !== null) fail(`lookup ${JSON.stringify(op.tuple)} at ${now}: found a flow the model does not have alive`);
          if (holder !== undefined && holder.e.live) fail('an expired flow met by lookup was not removed');
        } else {
          if (got !== holder.e) fail(`lookup ${JSON.stringify(op.tuple)} at ${now}: wrong or no entry`);
          if (ct.lastDirection !== (same(holder.orig, op.tuple) ? CT_DIR_ORIGINAL : CT_DIR_REPLY)) fail('wrong direction');
        }
        break;
      }
      case 'probe': {
        if (flows.length === 0) break;
        const f = flows[op.pick % flows.length];
        const tp = op.dir === 0 ? f.orig : f.reply;
        const got = ct.lookup(tp[0], tp[1], tp[2], tp[3], tp[4], now);
        if (alive(f) && f.e.live) {
          if (got !== f.e || ct.lastDirection !== op.dir) fail('a live flow was not found from its direction');
        } else if (got !== null) fail('an expired or removed flow was found');
        break;
      }
      case 'update': {
        const live = flows.filter((f) => f.e.live && alive(f));
        if (live.length === 0) break;
        const f = live[op.pick % live.length];
        const r = ct.update(f.e, op.dir, op.flags, 60, now);
        if (!f.e.live && f.e.proto !== PROTO_TCP) fail('only TCP updates may remove a flow');
        if (r === CT_UPDATE_REOPEN && f.e.live) fail('REOPEN must remove the old flow');
        if (f.e.expires < now) fail('update set a timer in the past');
        break;
      }
      case 'delete': {
        if (flows.length === 0) break;
        const f = flows[op.pick % flows.length];
        const wasLive = f.e.live;
        if (ct.delete(f.e) !== wasLive) fail('delete result');
        break;
      }
      case 'expire': {
        const due = flows.filter((f) => f.e.live && !alive(f)).length;
        const n = ct.expire(now);
        if (n !== due) fail(`expire removed ${n}, ${due} were due`);
        if (ct.size !== flows.filter((f) => f.e.live && alive(f)).length) fail('size after a sweep is not the number of live flows');
        break;
      }
    }

    // a flow leaves the table only by delete, an expiry, or a TCP update (RST unreplied, reopen)
    flows = flows.filter((f) => f.e.live);
    // invariants after every step
    for (const f of flows) {
      if (!alive(f)) continue;
      const o = ct.lookup(f.orig[0], f.orig[1], f.orig[2], f.orig[3], f.orig[4], now);
      if (o !== f.e || ct.lastDirection !== CT_DIR_ORIGINAL) fail(`live flow not found from the original direction at ${now}`);
      const r = ct.lookup(f.reply[0], f.reply[1], f.reply[2], f.reply[3], f.reply[4], now);
      if (r !== f.e || ct.lastDirection !== CT_DIR_REPLY) fail(`live flow not found from the reply direction at ${now}`);
    }
    if (ct.size !== flows.length) fail(`size ${ct.size}, model has ${flows.length} flows in the table`);
    if (ct.keyCount !== 2 * ct.size) fail(`keyCount ${ct.keyCount} for ${ct.size} flows`);
    const listed = new Set(ct.entries());
    if (listed.size !== flows.length || flows.some((f) => !listed.has(f.e))) fail('entries() is not the set of flows in the table');
    const listedAlive = [...ct.entries(now)];
    if (listedAlive.length !== flows.filter(alive).length || listedAlive.some((e) => e.expires <= now)) fail('entries(now) lists an expired flow');
  }
}

t.test('every live flow is found from both directions, no expired one is, size is the live count', async (t) => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 80 }), (ops) => {
      run(ops, false);
    }),
    { numRuns: 200 },
  );
  t.pass('200 random operation sequences');
});

t.test('the same with a hash that collides all the time: collisions refused, never confused', async (t) => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 80 }), (ops) => {
      run(ops, true);
    }),
    { numRuns: 200 },
  );
  t.pass('200 random operation sequences');
});

t.test('at a small maxEntries, eviction keeps the table consistent', async (t) => {
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 }), fc.boolean(), fc.integer({ min: 0, max: 2000 })),
        { minLength: 1, maxLength: 200 },
      ),
      (steps) => {
        const ct = new Conntrack({ maxEntries: 8 });
        const a = parseIPv4('172.16.0.1');
        const vip = parseIPv4('10.32.0.1');
        const ep = parseIPv4('10.64.0.1');
        let now = 0;
        const mine: ConntrackEntry[] = [];
        for (const [sport, natPort, touch, dt] of steps) {
          now += dt;
          if (touch && mine.length > 0) ct.lookup(PROTO_UDP, ep, a, 53, mine[sport % mine.length].replyDport, now);
          const e = ct.insert(PROTO_UDP, a, vip, sport, 53, ep, a, 53, natPort, now, {
            serviceName: 's',
            serviceIndex: 0,
            endpointAddr: ep,
            endpointPort: 53,
            masquerade: true,
          });
          if (e !== null) {
            ct.update(e, CT_DIR_ORIGINAL, 0, 60, now);
            mine.push(e);
          }
          if (ct.size > 8 || ct.keyCount !== 2 * ct.size) throw new Error(`size ${ct.size}, keys ${ct.keyCount}`);
          for (const f of ct.entries()) {
            if (f.expires <= now) continue;
            if (ct.lookup(PROTO_UDP, a, vip, f.origSport, 53, now) !== f) throw new Error('flow lost its original key');
            if (ct.lookup(PROTO_UDP, ep, a, 53, f.replyDport, now) !== f) throw new Error('flow lost its reply key');
          }
          for (const f of mine) {
            if (!f.live && ct.isTupleInUse(PROTO_UDP, ep, a, 53, f.replyDport) && ![...ct.entries()].some((g) => g.replyDport === f.replyDport)) {
              throw new Error('an evicted flow left a key behind');
            }
          }
        }
        if (ct.inserts !== mine.length) throw new Error('inserts counter');
        if (ct.inserts - ct.evictions - ct.expired !== ct.size) throw new Error('inserts - evictions - expired != size');
      },
    ),
    { numRuns: 150 },
  );
  t.pass();
});

t.test('the key index agrees with a Map under clustering and wrap-around', async (t) => {
  // homes 61, 62, 63, 0, 1 (a run across the end of the table) and 29, 30, 31 in a 64-slot table
  const HIS = [-3, -2, -1, 0, 1, 29, 30, 31];
  const key = fc.tuple(fc.constantFrom(...HIS), fc.integer({ min: 0, max: 2 }));
  const opIdx = fc.oneof(
    fc.record({ kind: fc.constant('insert' as const), k: key, v: fc.integer({ min: 0, max: 1000 }) }),
    fc.record({ kind: fc.constant('remove' as const), k: key }),
    fc.record({ kind: fc.constant('set' as const), k: key, v: fc.integer({ min: 0, max: 1000 }) }),
  );
  fc.assert(
    fc.property(fc.array(opIdx, { maxLength: 150 }), (ops) => {
      const ix = new TupleIndex(40);
      const model = new Map<string, number>();
      for (const op of ops) {
        const [hi, lo] = op.k;
        const id = `${hi},${lo}`;
        if (op.kind === 'insert') {
          if (model.has(id) || model.size >= 40) continue;
          ix.insert(hi, lo, op.v);
          model.set(id, op.v);
        } else if (op.kind === 'remove') {
          if (ix.remove(hi, lo) !== model.delete(id)) throw new Error('remove result');
        } else {
          const had = model.has(id);
          if (ix.setValue(hi, lo, op.v) !== had) throw new Error('setValue result');
          if (had) model.set(id, op.v);
        }
        if (ix.size !== model.size) throw new Error('size');
        for (const [k, v] of model) {
          const [h, l] = k.split(',').map(Number);
          if (ix.find(h, l) !== v) throw new Error(`lost ${k}`);
        }
        for (const h of HIS) {
          for (let l = 0; l < 3; l++) if (!model.has(`${h},${l}`) && ix.find(h, l) !== -1) throw new Error(`ghost ${h},${l}`);
        }
      }
    }),
    { numRuns: 1000 },
  );
  t.pass();
});
