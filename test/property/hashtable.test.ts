/**
 * The int-pair hash table (dataplane/hashtable.ts), the one table behind the
 * VIP index and the connection table's key index, agrees with a Map under
 * every mix of set, insert, replace and delete, in tables small enough that
 * probe runs cluster and wrap around the end.
 */
import t from 'tap';
import fc from 'fast-check';
import { IntPairTable, VipIndex } from '../../dataplane/hashtable.ts';
import { TupleIndex } from '../../dataplane/conntrack-index.ts';

for (const prehashed of [false, true]) t.test(`the int-pair table agrees with a Map (clustered, wrapping runs; backward-shift deletion)${prehashed ? ', keys used as their own hash' : ''}`, async (t) => {
  // 8 × 4 keys (addresses signed and unsigned, like VIP keys) into 16 slots: at most 8 held at once;
  // used as their own hash, their homes are 0, 1, 15, 15, 0, 1, 1, 1: runs across the table's end
  const A = [0, 1, -1, 0x7fffffff, -0x80000000, 0xc0a80001, 17, 0x0a600001];
  const key = fc.tuple(fc.constantFrom(...A), fc.integer({ min: 0, max: 3 }));
  const op = fc.oneof(
    fc.record({ kind: fc.constant('set' as const), k: key, v: fc.integer({ min: 0, max: 1 << 30 }) }),
    fc.record({ kind: fc.constant('insert' as const), k: key, v: fc.integer({ min: 0, max: 1000 }) }),
    fc.record({ kind: fc.constant('replace' as const), k: key, v: fc.integer({ min: 0, max: 1000 }) }),
    fc.record({ kind: fc.constant('delete' as const), k: key }),
  );
  let deletes = 0;
  fc.assert(
    fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
      const tb = new IntPairTable(8, { prehashed });
      if (tb.capacity !== 16 || tb.maxKeys !== 8) throw new Error(`capacity ${tb.capacity}, maxKeys ${tb.maxKeys}`);
      const m = new Map<string, number>();
      const id = (a: number, b: number) => `${a | 0},${b}`;
      for (const o of ops) {
        const [a, b] = o.k;
        const k = id(a, b);
        if (o.kind === 'set' || o.kind === 'insert') {
          if (!m.has(k) && m.size >= 8) continue;
          if (o.kind === 'insert' && m.has(k)) continue;
          if (o.kind === 'set') tb.set(a, b, o.v);
          else tb.insert(a, b, o.v);
          m.set(k, o.v);
        } else if (o.kind === 'replace') {
          const had = m.has(k);
          if (tb.replace(a, b, o.v) !== had) throw new Error('replace result');
          if (had) m.set(k, o.v);
        } else {
          if (tb.delete(a, b) !== m.delete(k)) throw new Error('delete result');
          deletes++;
        }
        if (tb.size !== m.size) throw new Error(`size ${tb.size} vs ${m.size}`);
        for (const x of A) for (let y = 0; y < 4; y++) {
          const want = m.get(id(x, y)) ?? -1;
          if (tb.get(x, y) !== want) throw new Error(`get(${x}, ${y}) = ${tb.get(x, y)}, want ${want}`);
        }
        if ([...tb.entries()].length !== m.size) throw new Error('entries');
      }
      // a copy and a table over the same slots read the same
      const c = tb.copy(40);
      const f = IntPairTable.fromSlots(tb.rawSlots, tb.size, prehashed);
      for (const [k, v] of m) {
        const [x, y] = k.split(',').map(Number);
        if (c.get(x, y) !== v || f.get(x, y) !== v) throw new Error(`copy/fromSlots lost ${k}`);
      }
      return true;
    }),
    { numRuns: 1000, seed: 11 },
  );
  t.ok(deletes > 1000, `deletions exercised (${deletes})`);
});

t.test('one table: the VIP index is the int-pair table, the conntrack index holds one', async (t) => {
  t.equal(VipIndex, IntPairTable);
  const ix = new TupleIndex(40);
  t.equal(ix.capacity, 64, '40 keys at most 0.7 full: 64 slots');
  t.ok(ix.maxKeys >= 40);
  ix.insert(-3, 1, 7);
  t.equal(ix.find(-3, 1), 7);
  t.ok(ix.setValue(-3, 1, 9));
  t.equal(ix.find(-3, 1), 9);
  t.ok(ix.remove(-3, 1));
  t.equal(ix.find(-3, 1), -1);
  t.equal(ix.size, 0);
  const full = new IntPairTable(2);
  for (let i = 0; i < full.maxKeys; i++) full.set(i, 0, i);
  t.throws(() => full.set(99, 0, 1), /full/, 'past maxKeys: a clear error, not a corrupt table');
});

t.test('a new table writes none of its slots: a large one costs no memory until keys fill it', async (t) => {
  const rss0 = process.memoryUsage().rss;
  // 8 M slots of 16 bytes: 128 MB of zeroed memory the kernel gives page by page when first written
  const tb = new IntPairTable(1 << 22, { prehashed: true });
  const grew = (process.memoryUsage().rss - rss0) / 2 ** 20;
  t.equal(tb.capacity, 1 << 23);
  t.ok(grew < 32, `RSS grew ${grew.toFixed(1)} MB for a table of ${(tb.bytes / 2 ** 20).toFixed(0)} MB`);
  t.equal(tb.get(12345, 6), -1, 'empty');
  tb.set(12345, 6, 0);
  t.equal(tb.get(12345, 6), 0, 'the value 0 is a value, not a free slot');
  t.same([...tb.entries()], [[12345, 6, 0]]);
  t.ok(tb.delete(12345, 6));
  t.equal(tb.size, 0);
});
