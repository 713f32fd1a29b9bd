/**
 * The pinned IPv6 records follow the IPv6 table, as the IPv4 ones follow
 * theirs: after any sequence of inserts (TCP, UDP, ICMPv6 echo), packets,
 * deletes, expiry sweeps and evictions of a full table, record i is exactly
 * the flow in slot i (protocol as the outside sees it, the 16 address words,
 * ports, state, flags, deadline, counters), the records past the last flow
 * are empty, and a table recovered from the file's bytes (as after kill -9)
 * lists the same flows as the table that wrote them.
 */
import t from 'tap';
import fc from 'fast-check';
import { PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { CT_DIR_ORIGINAL, CT_DIR_REPLY, type ConntrackEntry } from '../../dataplane/conntrack.ts';
import { CT6_WORDS, PROTO_ICMPV6 } from '../../dataplane/conntrack6.ts';
import { FLAG_ASSURED, FLAG_MASQUERADE, FLAG_SEEN_REPLY, pinFileSize, PinnedStore, writeHeader } from '../../dataplane/conntrack-pinned.ts';
import { PIN_LAYOUT_V6, PinnedConntrack6, readRecord6 } from '../../dataplane/conntrack-pinned6.ts';

const PROV = { bootId: 'b', netns: 'n' };
const CAP = 24;
const OFFSET = 5_000_000;

type Op =
  | { k: 'insert'; proto: number; src: number; sport: number; ep: number; masq: boolean }
  | { k: 'packet'; pick: number; dir: number; flags: number }
  | { k: 'delete'; pick: number }
  | { k: 'advance'; ms: number }
  | { k: 'expire' };

const TCP_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14];
const arbOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ k: fc.constant('insert' as const), proto: fc.constantFrom(PROTO_TCP, PROTO_UDP, PROTO_ICMPV6), src: fc.integer({ min: 1, max: 6 }), sport: fc.integer({ min: 1024, max: 1040 }), ep: fc.integer({ min: 1, max: 3 }), masq: fc.boolean() }) },
  { weight: 6, arbitrary: fc.record({ k: fc.constant('packet' as const), pick: fc.nat(), dir: fc.integer({ min: 0, max: 1 }), flags: fc.constantFrom(...TCP_FLAGS) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('advance' as const), ms: fc.integer({ min: 1, max: 200_000 }) }) },
  { weight: 1, arbitrary: fc.constant({ k: 'expire' as const }) },
);

function check(ct: PinnedConntrack6, store: PinnedStore): string | null {
  const entries = [...ct.entries()];
  for (const e of entries) {
    const r = readRecord6(store.w, store.f, e._slot);
    if (typeof r === 'string') return `slot ${e._slot}: record ${r}`;
    const flags = (e.seenReply ? FLAG_SEEN_REPLY : 0) | (e.assured ? FLAG_ASSURED : 0) | (e.masquerade ? FLAG_MASQUERADE : 0);
    const want = [ct.protoOf(e), ...ct.entryWords(e), e.origSport, e.origDport, e.replySport, e.replyDport, e.state, flags, e.expires + OFFSET, e.origPackets, e.origBytes, e.replyPackets, e.replyBytes];
    const got = [r.proto, ...r.words, r.origSport, r.origDport, r.replySport, r.replyDport, r.state, r.flags, r.deadline, r.origPackets, r.origBytes, r.replyPackets, r.replyBytes];
    if (JSON.stringify(want) !== JSON.stringify(got)) return `slot ${e._slot}: want ${JSON.stringify(want)} got ${JSON.stringify(got)}`;
  }
  for (let i = entries.length; i < CAP; i++) if (readRecord6(store.w, store.f, i) !== 'empty') return `slot ${i} past the last flow is not empty`;
  return null;
}

t.test('IPv6 records mirror the table; a recovered table lists the same flows', (t) => {
  fc.assert(
    fc.property(fc.array(arbOp, { minLength: 1, maxLength: 120 }), (ops) => {
      const clock = { t: 1000 };
      const buf = new ArrayBuffer(pinFileSize(CAP, PIN_LAYOUT_V6));
      writeHeader(buf, CAP, PROV, 0, 1, PIN_LAYOUT_V6);
      const store = new PinnedStore(buf, CAP, OFFSET, PIN_LAYOUT_V6);
      const ct = new PinnedConntrack6({ maxEntries: CAP, clock: () => clock.t, seed: 3 }, store);
      const live = (): ConntrackEntry[] => [...ct.entries()];
      const tw = new Uint32Array(CT6_WORDS);
      for (const op of ops) {
        const now = clock.t;
        if (op.k === 'insert') {
          // client 2001:db8::<src>, ClusterIP fd00:10:32::10, endpoint fd00:10:64::<ep>, masquerade fd00:10:64::1
          tw.fill(0);
          tw[0] = 0x20010db8; tw[3] = op.src;
          tw[4] = 0xfd000010; tw[5] = 0x00320000; tw[7] = 0x10;
          tw[8] = 0xfd000010; tw[9] = 0x00640000; tw[11] = 0x100 + op.ep;
          if (op.masq) { tw[12] = 0xfd000010; tw[13] = 0x00640000; tw[15] = 1; } else tw.copyWithin(12, 0, 4);
          const icmp = op.proto === PROTO_ICMPV6;
          const e = ct.insert6(op.proto, tw, op.sport, icmp ? op.sport : 80, icmp ? op.sport : 8080, op.sport, now, { serviceName: 'default/web:http', serviceIndex: 0, masquerade: op.masq });
          if (e !== null) ct.update(e, CT_DIR_ORIGINAL, op.proto === PROTO_TCP ? 0x02 : 0, 80, now);
        } else if (op.k === 'packet') {
          const l = live();
          if (l.length === 0) continue;
          const e = l[op.pick % l.length];
          ct.update(e, op.dir === 0 ? CT_DIR_ORIGINAL : CT_DIR_REPLY, e.proto === PROTO_TCP ? op.flags : 0, 72, now);
        } else if (op.k === 'delete') {
          const l = live();
          if (l.length > 0) ct.delete(l[op.pick % l.length]);
        } else if (op.k === 'advance') clock.t += op.ms;
        else ct.expire(now);
        const bad = check(ct, store);
        if (bad !== null) throw new Error(`after ${JSON.stringify(op)}: ${bad}`);
      }
      // kill -9 here: a new table from the bytes
      const store2 = new PinnedStore(new ArrayBuffer(pinFileSize(CAP, PIN_LAYOUT_V6)), CAP, OFFSET, PIN_LAYOUT_V6);
      const ct2 = new PinnedConntrack6({ maxEntries: CAP, clock: () => clock.t, seed: 77 }, store2);
      const r = ct2.recover(new Uint8Array(buf), ['default/web:http']);
      const now = clock.t;
      const alive = [...ct.entries(now)];
      if (r.restored !== alive.length) throw new Error(`restored ${r.restored}, ${alive.length} alive (${JSON.stringify(r)})`);
      const lines = (c: PinnedConntrack6) => c.list(now, { counters: true }).split('\n').sort().join('\n');
      if (lines(ct2) !== lines(ct)) throw new Error(`listings differ:\n${lines(ct)}\n---\n${lines(ct2)}`);
      const bad = check(ct2, store2);
      if (bad !== null) throw new Error(`recovered table: ${bad}`);
    }),
    { numRuns: 400 },
  );
  t.pass('400 random histories');
  t.end();
});
