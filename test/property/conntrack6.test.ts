/**
 * The IPv6 table against a model (a Map keyed by tuple text) under random
 * inserts, deletes, lookups and expiry, and its invariants under eviction:
 * every live flow is found from both directions by its words, keys = 2 × size.
 */
import t from 'tap';
import fc from 'fast-check';
import { PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { formatIPv6 } from '../../dataplane/addr6.ts';
import { Conntrack6, CT6_ORIG_SRC, CT6_REPLY_SRC, type ConntrackInfo6 } from '../../dataplane/conntrack6.ts';
import type { ConntrackEntry } from '../../dataplane/conntrack.ts';

const info: ConntrackInfo6 = { serviceName: 's', serviceIndex: 0, masquerade: true };
// small address space so that tuples repeat: words differ in any of the four positions
const word = fc.constantFrom(0, 1, 0x20010db8, 0xffffffff);
const addr = fc.tuple(word, word, word, word);
const op = fc.oneof(
  fc.record({ k: fc.constant('insert' as const), proto: fc.constantFrom(PROTO_TCP, PROTO_UDP), a: fc.tuple(addr, addr, addr, addr), p: fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 })), ttl: fc.integer({ min: 1, max: 50 }) }),
  fc.record({ k: fc.constant('delete' as const), i: fc.nat() }),
  fc.record({ k: fc.constant('tick' as const), dt: fc.integer({ min: 1, max: 30 }) }),
);

const key = (proto: number, w: Uint32Array, so: number, dd: number, sp: number, dp: number): string =>
  `${proto} ${formatIPv6(w, so)} ${formatIPv6(w, dd)} ${sp} ${dp}`;

t.test('Conntrack6 agrees with a model (no eviction)', async (t) => {
  fc.assert(fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
    const ct = new Conntrack6({ seed: 11, maxEntries: 1000, timeouts: { udp: 40_000, tcpSynSent: 40_000 } });
    const model = new Map<string, ConntrackEntry>();
    let now = 0;
    const tw = new Uint32Array(16);
    for (const o of ops) {
      if (o.k === 'insert') {
        for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) tw[i * 4 + j] = o.a[i][j];
        const [sp, dp] = o.p;
        const ko = key(o.proto, tw, 0, 4, sp, dp);
        const kr = key(o.proto, tw, 8, 12, dp, sp);
        const taken = model.has(ko) || model.has(kr) || ko === kr;
        const e = ct.insert6(o.proto, tw, sp, dp, dp, sp, now, info);
        if ((e === null) !== taken) return false;
        if (e !== null) {
          ct.update(e, 0, 0x02, 60, now);
          model.set(ko, e);
          model.set(kr, e);
        }
      } else if (o.k === 'delete') {
        const live = [...new Set(model.values())];
        if (live.length === 0) continue;
        const e = live[o.i % live.length];
        const w = ct.entryWords(e);
        model.delete(key(e.proto, w, 0, 4, e.origSport, e.origDport));
        model.delete(key(e.proto, w, 8, 12, e.replySport, e.replyDport));
        ct.delete(e);
      } else {
        now += o.dt * 1000;
        ct.expire(now);
        for (const [k, e] of model) if (e.expires <= now) model.delete(k);
      }
      if (ct.size * 2 !== model.size || ct.keyCount !== model.size) return false;
      for (const e of ct.entries()) {
        const w = ct.entryWords(e);
        if (model.get(key(e.proto, w, 0, 4, e.origSport, e.origDport)) !== e) return false;
        const copy = Uint32Array.from(w);
        if (ct.lookup6(e.proto, copy, CT6_ORIG_SRC, CT6_ORIG_SRC + 4, e.origSport, e.origDport, now) !== e) return false;
        if (ct.lookup6(e.proto, copy, CT6_REPLY_SRC, CT6_REPLY_SRC + 4, e.replySport, e.replyDport, now) !== e) return false;
      }
    }
    return true;
  }), { numRuns: 300, seed: 6 });
  t.pass('300 random runs');
});

t.test('at a small maxEntries, eviction keeps every live flow findable by its words', async (t) => {
  fc.assert(fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
    const ct = new Conntrack6({ seed: 12, maxEntries: 5 });
    let now = 0;
    const tw = new Uint32Array(16);
    for (const o of ops) {
      if (o.k === 'insert') {
        for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) tw[i * 4 + j] = o.a[i][j];
        const e = ct.insert6(o.proto, tw, o.p[0], o.p[1], o.p[1], o.p[0], now, info);
        if (e !== null) ct.update(e, 0, 0x02, 60, now);
      } else if (o.k === 'delete') {
        const live = [...ct.entries()];
        if (live.length) ct.delete(live[o.i % live.length]);
      } else {
        now += o.dt * 1000;
      }
      if (ct.size > 5 || ct.keyCount !== 2 * ct.size) return false;
      for (const e of ct.entries()) {
        const copy = Uint32Array.from(ct.entryWords(e));
        if (ct.lookup6(e.proto, copy, 0, 4, e.origSport, e.origDport, -1) !== e) return false;
        if (ct.lookup6(e.proto, copy, 8, 12, e.replySport, e.replyDport, -1) !== e) return false;
      }
    }
    return true;
  }), { numRuns: 300, seed: 7 });
  t.pass('300 random runs');
});
