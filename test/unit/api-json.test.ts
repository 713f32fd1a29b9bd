import t from 'tap';
import fc from 'fast-check';
import { jsonErrorOffset, lineColumn } from '../../control/json-error.ts';

const valid = (s: string) => {
  try {
    JSON.parse(s);
    return true;
  } catch {
    return false;
  }
};

t.test('jsonErrorOffset points at the first character that cannot continue the document', async (t) => {
  const cases: Array<[string, number]> = [
    ['{}', -1],
    ['[1,2,{"b":[true,false,null]}]', -1],
    ['  3.5e-2 ', -1],
    ['{"a":}', 5],
    ['[,]', 1],
    ['{"a" 1}', 5],
    ['[1,]', 3],
    ['{"a":1,}', 7],
    ['{', 1],
    ['', 0],
    ['01', 1],
    ['"\\x"', 2],
    ['[1 2]', 3],
    ['{"a":1}}', 7],
    ['"\u0001"', 1],
  ];
  for (const [text, off] of cases) t.equal(jsonErrorOffset(text), off, JSON.stringify(text));
  t.same(lineColumn('{\n "a": [\n  ,]}', 12), { line: 3, column: 3 });
});

t.test('it agrees with JSON.parse on valid documents and on documents with a few characters inserted', async () => {
  fc.assert(fc.property(fc.json(), (j) => jsonErrorOffset(j) === -1), { numRuns: 2000 });
  fc.assert(
    fc.property(fc.json(), fc.nat(), fc.string({ maxLength: 2 }), (j, k, ins) => {
      const p = k % (j.length + 1);
      const s = j.slice(0, p) + ins + j.slice(p);
      return valid(s) === (jsonErrorOffset(s) === -1);
    }),
    { numRuns: 5000 },
  );
});
